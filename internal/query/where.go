package query

import (
	"encoding/json"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// Where is a where clause as a tree, whatever form it was written in: a
// JSON where object (ParseWhere), the filter parameters of a URL
// (ParseURLWhere), or a row policy built from a token's claims. Every Term
// must hold. Compile turns it into a Filter for a table. A nil *Where holds
// for every row.
//
// A Where is a value to build and read; once handed to Compile or shared
// between goroutines it must not change.
type Where struct {
	Terms []Term

	// bad is, for a group of an "or" array that is not an object, the
	// group as written (ParseWhere); Compile refuses it where it stands.
	bad json.RawMessage
}

// Term is one member of a where object: a condition on a column, or a
// group of alternatives.
type Term struct {
	// Column and Ops are a condition on a column: every operator holds.
	Column string
	Ops    []Operator
	// Or, when not nil, makes the term a group instead of a condition: at
	// least one of its Wheres holds.
	Or []*Where

	// bad is, for a condition that is not an object of operators, the
	// condition as written (ParseWhere); Compile refuses it where it
	// stands. For an "or" group nested deeper than Compile allows, it is
	// the group as written, and Or is empty.
	bad json.RawMessage
}

// Operator is one operator of a condition with its operand.
type Operator struct {
	// Name is the operator as written: eq, neq, lt, lte, gt, gte, in, nin
	// or is (Compile refuses any other).
	Name string
	// Value is the operand, JSON: a literal, an array of literals for in
	// and nin, "null", "not_null", "true" or "false" for is.
	Value json.RawMessage
}

// ParseWhere reads a JSON where object (the `where` of a subscribe
// message): each member a column with an object of operators, or "or"
// with an array of such objects. A nil, empty or null where is nil: no
// condition. The Where refers to where's bytes, which must not change
// while it is in use.
//
// Only JSON itself is checked here, with a *FilterError when where is not
// valid JSON or not an object; every other problem (an unknown operator, a
// condition that is not an object, an operand of the wrong type) is
// Compile's to report, in the order the where is written.
func ParseWhere(where json.RawMessage) (*Where, error) {
	w := where[jsonx.SkipSpace(where, 0):]
	for len(w) > 0 && (w[len(w)-1] == ' ' || w[len(w)-1] == '\t' || w[len(w)-1] == '\n' || w[len(w)-1] == '\r') {
		w = w[:len(w)-1]
	}
	if len(w) == 0 || string(w) == "null" {
		return nil, nil
	}
	if !jsonx.Valid(w) {
		return nil, filterErrorf("where is not valid JSON")
	}
	if w[0] != '{' {
		return nil, filterErrorf("where must be a JSON object of column conditions")
	}
	return parseGroup(w, 0), nil
}

// parseGroup reads an object of conditions (valid JSON) at the nesting
// depth of "or" groups depth.
func parseGroup(obj []byte, depth int) *Where {
	var r Row
	_ = r.Reset(obj) // valid JSON, as deep as Row allows: it cannot fail
	w := &Where{Terms: make([]Term, 0, len(r.members))}
	for _, m := range r.members {
		name := jsonx.DecodeString(m.name)
		// "or" with an array is a group even if the table has a column
		// called or: a column's condition is always an object.
		if name == "or" && m.value[0] == '[' {
			t := Term{Or: []*Where{}}
			if depth+1 > MaxOrDepth {
				// Compile refuses it, whatever it holds.
				t.bad = m.value
			} else {
				for _, e := range elements(m.value) {
					g := &Where{bad: e}
					if e[0] == '{' {
						g = parseGroup(e, depth+1)
					}
					t.Or = append(t.Or, g)
				}
			}
			w.Terms = append(w.Terms, t)
			continue
		}
		t := Term{Column: name}
		if m.value[0] != '{' {
			t.bad = m.value
			w.Terms = append(w.Terms, t)
			continue
		}
		var ops Row
		_ = ops.Reset(m.value) // valid JSON
		t.Ops = make([]Operator, len(ops.members))
		for i, o := range ops.members {
			t.Ops[i] = Operator{Name: jsonx.DecodeString(o.name), Value: o.value}
		}
		w.Terms = append(w.Terms, t)
	}
	return w
}

// elements returns the elements of a JSON array (valid JSON), nil for a
// value that is not an array.
func elements(arr []byte) [][]byte {
	if len(arr) == 0 || arr[0] != '[' {
		return nil
	}
	i := jsonx.SkipSpace(arr, 1)
	if i < len(arr) && arr[i] == ']' {
		return [][]byte{}
	}
	var sc jsonx.Scanner
	var out [][]byte
	for {
		end, err := sc.SkipValue(arr, i)
		if err != nil {
			return nil
		}
		out = append(out, arr[i:end])
		var more bool
		if i, more, err = jsonx.Next(arr, end, ']'); err != nil {
			return nil
		}
		if !more {
			return out
		}
	}
}

// AppendJSON appends the where object w stands for (null for nil): its
// terms in order, compact, each operand as it is.
func (w *Where) AppendJSON(dst []byte) []byte {
	switch {
	case w == nil:
		return append(dst, "null"...)
	case w.bad != nil:
		return append(dst, w.bad...)
	}
	dst = append(dst, '{')
	for i := range w.Terms {
		t := &w.Terms[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		if t.Or != nil {
			dst = append(dst, `"or":`...)
		} else {
			dst = jsonx.AppendString(dst, t.Column)
			dst = append(dst, ':')
		}
		switch {
		case t.bad != nil:
			dst = append(dst, t.bad...)
		case t.Or != nil:
			dst = append(dst, '[')
			for j, g := range t.Or {
				if j > 0 {
					dst = append(dst, ',')
				}
				dst = g.AppendJSON(dst)
			}
			dst = append(dst, ']')
		default:
			dst = append(dst, '{')
			for j, o := range t.Ops {
				if j > 0 {
					dst = append(dst, ',')
				}
				dst = jsonx.AppendString(dst, o.Name)
				dst = append(dst, ':')
				dst = append(dst, o.Value...)
			}
			dst = append(dst, '}')
		}
	}
	return append(dst, '}')
}

// String returns the where object w stands for (AppendJSON).
func (w *Where) String() string { return string(w.AppendJSON(nil)) }

// And returns a where that holds exactly when both a and b hold: the terms
// of both, a's first. A nil where is no condition. Neither a nor b changes;
// the result may share their terms.
func And(a, b *Where) *Where {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	terms := make([]Term, 0, len(a.Terms)+len(b.Terms))
	return &Where{Terms: append(append(terms, a.Terms...), b.Terms...)}
}
