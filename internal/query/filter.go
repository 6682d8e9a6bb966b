// Row filters: a compiled where (DESIGN.md, "WebSocket protocol — contract
// (v1)").
//
// Compile turns a where into a Filter once, when the subscription is made:
// every literal is parsed to its column's type then, so that Match, which
// runs for every event and every subscription, only reads the event's raw
// JSON values and compares. Match allocates nothing
// for the comparisons that matter on the fan-out path (integer, numeric,
// text, boolean and timestamp columns; BenchmarkMatch, TestMatchAllocs).
//
// Values are compared the way PostgreSQL compares them, as far as the JSON
// form of the event allows (schema.AppendValue):
//
//   - integers exactly as int64, falling back to an exact decimal compare
//     for what int64 cannot hold (xid8, a literal such as 10.5);
//   - floats as float64, NaN equal to NaN and above every other value,
//     "Infinity" and "-Infinity" at the ends;
//   - numeric and money exactly, as decimals (1.50 equals 1.5), never
//     through float64; NaN above Infinity, as PostgreSQL orders them;
//   - timestamps as instants: "2026-11-22T08:00:00+01:00" equals
//     "2026-11-22T07:00:00Z"; "-infinity" and "infinity" at the ends;
//   - dates by calendar day, BC dates and years past 9999 included;
//   - text bytewise after JSON unescaping (the C collation, not the
//     database's);
//   - booleans with false before true;
//   - json and jsonb for equality only, by value as jsonb compares
//     (jsonvalue.go): members in any order, numbers by value.
//
// NULL follows SQL: every comparison with a NULL value is false, so a NULL
// matches neither {"eq": x} nor {"neq": x}; only {"is": "null"} matches it.
// A value that cannot be evaluated (its column is absent from the row, or
// its JSON is not of the column's type) is an *EvalError rather than a
// guess. Conditions combine with three-valued logic: in an AND a false
// condition decides the result even when another cannot be evaluated, in an
// OR a true one does; otherwise the error is returned.

package query

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// EvalError is a row value a filter cannot evaluate: the column is absent
// from the row (dropped since the filter was compiled, or an unchanged
// TOASTed value that the event does not carry), or its JSON is not of the
// column's type. A sink reports it to the one subscription whose
// filter failed.
type EvalError struct {
	Column  string
	Missing bool   // the column is absent from the row
	Value   string // the raw JSON value, cut to 64 bytes; empty if Missing
	Type    ColumnType
}

func (e *EvalError) Error() string {
	if e.Missing {
		return fmt.Sprintf("column %q is not in the row (dropped, or an unchanged TOASTed value)", e.Column)
	}
	return fmt.Sprintf("value %s in column %q is not %s (%s)", e.Value, e.Column, typeNoun(e.Type), e.Type)
}

// Filter is a compiled where. It is immutable: any number of goroutines may
// call Match at once. A nil *Filter matches every row.
type Filter struct {
	root    group
	columns []string // sorted, distinct
}

// group is conditions ANDed together.
type group struct {
	conds []cond
	ors   [][]group // each an OR of groups
}

// cond is one operator on one column.
type cond struct {
	column  string
	typ     ColumnType
	op      op
	needDec bool     // integer column with a literal int64 cannot hold: compare as decimals
	lit     scalar   // eq … gte
	list    []scalar // in, nin: sorted by compareScalar, for binary search
}

// scalar is a typed value: a literal parsed at compile time, or a row value
// parsed at match time, when its slices point into the row (or a stack
// buffer) and nothing is allocated.
type scalar struct {
	i     int64 // integer, when intOK
	intOK bool
	dec   decimal // integer (when needed) and numeric
	f     float64
	b     bool
	t     instant // timestamp, date
	s     []byte  // text and other: decoded text if plain, else a raw JSON string body; json: compact JSON
	canon []byte  // json: canonicalJSON of it
	plain bool
}

// Columns lists the columns the filter reads, sorted, so that a sink
// can check them against a changed table shape.
func (f *Filter) Columns() []string {
	if f == nil {
		return nil
	}
	return slices.Clone(f.columns)
}

// Match evaluates the filter on a row. It returns an *EvalError when the
// outcome depends on a value it cannot evaluate (see EvalError).
func (f *Filter) Match(row *Row) (bool, error) {
	if f == nil {
		return true, nil
	}
	return f.root.match(row)
}

func (g *group) match(row *Row) (bool, error) {
	var undecided error
	for i := range g.conds {
		ok, err := g.conds[i].match(row)
		if err != nil {
			if undecided == nil {
				undecided = err
			}
			continue
		}
		if !ok {
			return false, nil
		}
	}
	for _, or := range g.ors {
		ok, err := matchAny(or, row)
		if err != nil {
			if undecided == nil {
				undecided = err
			}
			continue
		}
		if !ok {
			return false, nil
		}
	}
	if undecided != nil {
		return false, undecided
	}
	return true, nil
}

func matchAny(groups []group, row *Row) (bool, error) {
	var undecided error
	for i := range groups {
		ok, err := groups[i].match(row)
		if err != nil {
			if undecided == nil {
				undecided = err
			}
			continue
		}
		if ok {
			return true, nil
		}
	}
	return false, undecided
}

// moneyDigits bounds the digits of a money value copied without its group
// separators: money is an int64 of cents, at most 19 digits.
const moneyDigits = 24

func (k *cond) match(row *Row) (bool, error) {
	raw, ok := row.Get(k.column)
	if !ok {
		return false, &EvalError{Column: k.column, Missing: true}
	}
	if raw[0] == 'n' { // SQL NULL
		return k.op == opIsNull, nil
	}
	switch k.op {
	case opIsNull:
		return false, nil
	case opNotNull:
		return true, nil
	case opIsTrue, opIsFalse:
		switch string(raw) {
		case "true":
			return k.op == opIsTrue, nil
		case "false":
			return k.op == opIsFalse, nil
		}
		return false, k.evalError(raw)
	}
	if k.typ == TypeJSON {
		equal, ok := equalJSON(raw, &k.lit)
		if !ok {
			return false, k.evalError(raw)
		}
		return equal == (k.op == opEq), nil
	}
	var scratch [moneyDigits]byte
	v, ok := k.parseValue(raw, &scratch)
	if !ok {
		return false, k.evalError(raw)
	}
	switch k.op {
	case opIn, opNin:
		return k.search(&v) == (k.op == opIn), nil
	}
	c := compareScalar(k.typ, &v, &k.lit)
	switch k.op {
	case opEq:
		return c == 0, nil
	case opNeq:
		return c != 0, nil
	case opLt:
		return c < 0, nil
	case opLte:
		return c <= 0, nil
	case opGt:
		return c > 0, nil
	default: // opGte
		return c >= 0, nil
	}
}

func (k *cond) evalError(raw []byte) error {
	return &EvalError{Column: k.column, Value: shorten(raw), Type: k.typ}
}

// search reports whether v equals a value of the sorted list.
func (k *cond) search(v *scalar) bool {
	lo, hi := 0, len(k.list)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch c := compareScalar(k.typ, v, &k.list[m]); {
		case c == 0:
			return true
		case c > 0:
			lo = m + 1
		default:
			hi = m
		}
	}
	return false
}

// parseValue reads a row's non-null raw JSON value as the column's type,
// allocating nothing; digits of a money value may be copied into scratch.
// (It returns the scalar rather than filling one through a pointer so that
// escape analysis can keep scratch on the caller's stack.)
func (k *cond) parseValue(raw []byte, scratch *[moneyDigits]byte) (v scalar, ok bool) {
	isString := raw[0] == '"'
	var body []byte
	if isString {
		body = raw[1 : len(raw)-1]
	}
	switch k.typ {
	case TypeInteger:
		if isString {
			return v, false
		}
		v.i, v.intOK = parseInt64(raw)
		if !v.intOK || k.needDec {
			v.dec, ok = parseDecimal(raw)
			return v, ok
		}
		return v, true
	case TypeFloat:
		if isString {
			switch {
			case equalFold(body, "NaN"):
				v.f = math.NaN()
			case equalFold(body, "Infinity"):
				v.f = math.Inf(1)
			case equalFold(body, "-Infinity"):
				v.f = math.Inf(-1)
			default:
				return v, false
			}
			return v, true
		}
		if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
			return v, false
		}
		// A JSON number is valid input; a range error still yields the
		// nearest float (±Inf, 0), which is the best reading of it.
		v.f, _ = strconv.ParseFloat(string(raw), 64)
		return v, true
	case TypeDecimal:
		if !isString {
			if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
				return v, false
			}
			v.dec, ok = parseDecimal(raw)
			return v, ok
		}
		if v.dec, ok = parseDecimal(body); !ok {
			v.dec, ok = parseMoney(body, scratch)
		}
		return v, ok
	case TypeBool:
		switch string(raw) {
		case "true":
			v.b = true
			return v, true
		case "false":
			return v, true
		}
		return v, false
	case TypeTimestamp, TypeDate:
		if !isString {
			return v, false
		}
		v.t, ok = parseInstant(body, k.typ == TypeDate)
		return v, ok
	case TypeText:
		if !isString {
			return v, false
		}
		v.s, v.plain = body, jsonx.IsPlain(body)
		return v, true
	default: // TypeOther: the text of a string, the JSON of anything else
		if isString {
			v.s, v.plain = body, jsonx.IsPlain(body)
		} else {
			v.s, v.plain = raw, true
		}
		return v, true
	}
}

// compareScalar compares a (a row value or a literal) with literal b.
func compareScalar(typ ColumnType, a, b *scalar) int {
	switch typ {
	case TypeInteger:
		if a.intOK && b.intOK {
			return cmp.Compare(a.i, b.i)
		}
		return compareDecimal(&a.dec, &b.dec)
	case TypeFloat:
		return compareFloat(a.f, b.f)
	case TypeDecimal:
		return compareDecimal(&a.dec, &b.dec)
	case TypeBool:
		switch {
		case a.b == b.b:
			return 0
		case b.b:
			return -1
		}
		return 1
	case TypeTimestamp, TypeDate:
		return compareInstant(a.t, b.t)
	case TypeJSON:
		if jsonx.EqualCompact(a.s, b.s) {
			return 0
		}
		return bytes.Compare(a.s, b.s)
	}
	if a.plain {
		return bytes.Compare(a.s, b.s)
	}
	return jsonx.CompareString(a.s, b.s)
}

// compareFloat orders floats as PostgreSQL does: NaN equals NaN and is
// above everything else, -0 equals 0.
func compareFloat(a, b float64) int {
	an, bn := a != a, b != b
	switch {
	case an || bn:
		return cmp.Compare(btoi(an), btoi(bn))
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if lowerASCII(b[i]) != lowerASCII(s[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// parseInt64 parses a JSON integer that fits an int64.
func parseInt64(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 19 || b[0] == '0' && len(b) > 1 {
		return 0, false
	}
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		u = u*10 + uint64(c-'0') // 19 digits cannot overflow uint64
	}
	switch {
	case neg && u <= 1<<63:
		return -int64(u-1) - 1, true
	case !neg && u < 1<<63:
		return int64(u), true
	}
	return 0, false
}
