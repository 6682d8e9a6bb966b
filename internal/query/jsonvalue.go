package query

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// A json or jsonb column is compared as PostgreSQL compares jsonb: by
// value. The reader sends PostgreSQL's text of it, whose members jsonb
// orders by length and then bytes and whose numbers keep their spelling
// ("1.50"), while a client writes its literal in its own order and
// spelling. So equal values are found equal whatever the order of an
// object's members, the spelling of a number (1.0 and 1) or the escapes
// of a string; arrays keep their order, and of an object's members with
// one name the last counts, as jsonb keeps it.

// canonicalJSON appends to dst a form of the JSON value raw that two values
// share exactly when they are equal as jsonb values: members sorted by
// name, numbers as their significant digits and exponent, strings
// re-encoded. ok is false when
// raw is not JSON.
func canonicalJSON(dst, raw []byte) ([]byte, bool) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return dst, false
	}
	return appendCanonical(dst, v), true
}

func appendCanonical(dst []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(dst, "null"...)
	case bool:
		return strconv.AppendBool(dst, v)
	case json.Number:
		// Its significant digits and the power of ten of the first,
		// read without computing the value, which an exponent such as
		// 1e999999999 in a client's literal would make costly.
		d, ok := parseDecimal([]byte(v))
		if !ok || d.rank != decFinite {
			return append(append(dst, 'n'), v...) // beyond numeric's range: as spelled
		}
		n := d.digits()
		for n > 0 && d.digit(n-1) == '0' {
			n--
		}
		dst = append(dst, 'n')
		if n == 0 {
			return append(dst, '0')
		}
		if d.neg {
			dst = append(dst, '-')
		}
		for k := range n {
			dst = append(dst, d.digit(k))
		}
		dst = append(dst, 'e')
		return strconv.AppendInt(dst, d.top, 10)
	case string:
		return jsonx.AppendString(dst, v)
	case []any:
		dst = append(dst, '[')
		for i, e := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendCanonical(dst, e)
		}
		return append(dst, ']')
	case map[string]any:
		names := make([]string, 0, len(v))
		for name := range v {
			names = append(names, name)
		}
		slices.Sort(names)
		dst = append(dst, '{')
		for i, name := range names {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = jsonx.AppendString(dst, name)
			dst = append(dst, ':')
			dst = appendCanonical(dst, v[name])
		}
		return append(dst, '}')
	}
	return dst
}

// equalJSON reports whether the row's raw JSON value equals the literal
// lit (parsed by parseLiteral: its compact text and its canonical form);
// ok is false when raw is not JSON.
func equalJSON(raw []byte, lit *scalar) (equal, ok bool) {
	if jsonx.EqualCompact(raw, lit.s) {
		return true, true // written as the literal is: the usual case
	}
	canon, ok := canonicalJSON(nil, raw)
	if !ok {
		return false, false
	}
	return bytes.Equal(canon, lit.canon), true
}
