package query

import (
	"strconv"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// A sink indexes subscriptions by one equality condition of their filter,
// so that matching an event costs in proportion to the subscriptions it
// may match, not to all subscriptions of the table: for
// `{"tenant":{"eq":"acme"}}` the subscription is found under the event's
// "tenant" value. Keys are canonical forms: a text value's decoded bytes, an
// integer's decimal digits, a boolean's "t" or "f". Only those types are
// indexed; others (numeric, timestamps, json …) have more than one spelling
// of one value and are matched by scanning.

// EqKey returns a condition the filter cannot match without: a top-level
// eq on an indexable column (text, integer, boolean), with the literal's
// key. ok is false when there is none: the filter must be tried on every
// event.
func (f *Filter) EqKey() (column string, typ ColumnType, key string, ok bool) {
	if f == nil {
		return "", 0, "", false
	}
	for i := range f.root.conds {
		k := &f.root.conds[i]
		if k.op != opEq {
			continue
		}
		switch k.typ {
		case TypeText:
			return k.column, k.typ, string(k.lit.s), true
		case TypeInteger:
			if k.lit.intOK && !k.needDec {
				return k.column, k.typ, strconv.FormatInt(k.lit.i, 10), true
			}
		case TypeBool:
			if k.lit.b {
				return k.column, k.typ, "t", true
			}
			return k.column, k.typ, "f", true
		}
	}
	return "", 0, "", false
}

// AppendIndexKey appends the key of a row's raw JSON value (not null) for a
// column of type typ, the key EqKey gives a literal equal to it. ok is
// false for a value that is not of the type: the caller then evaluates the
// filters in full, which report it.
func AppendIndexKey(dst []byte, typ ColumnType, raw []byte) ([]byte, bool) {
	switch typ {
	case TypeText:
		if len(raw) < 2 || raw[0] != '"' {
			return dst, false
		}
		body := raw[1 : len(raw)-1]
		if jsonx.IsPlain(body) {
			return append(dst, body...), true
		}
		return append(dst, jsonx.DecodeString(body)...), true
	case TypeInteger:
		i, ok := parseInt64(raw)
		if !ok {
			return dst, false
		}
		return strconv.AppendInt(dst, i, 10), true
	case TypeBool:
		switch string(raw) {
		case "true":
			return append(dst, 't'), true
		case "false":
			return append(dst, 'f'), true
		}
	}
	return dst, false
}

// MatchesAll reports whether the filter has no condition at all.
func (f *Filter) MatchesAll() bool {
	return f == nil || len(f.root.conds) == 0 && len(f.root.ors) == 0
}
