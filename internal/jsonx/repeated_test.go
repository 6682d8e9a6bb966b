package jsonx

import (
	"strings"
	"testing"
)

func TestFindRepeated(t *testing.T) {
	for _, c := range []struct {
		doc       string
		err       error
		name, top string
		topNil    bool
	}{
		{doc: `{"a":1,"b":{"a":2},"c":[{"a":3}]}`},
		{doc: `{"a":1,"a":2}`, err: ErrRepeated, name: "a", topNil: true},
		{doc: `{"a":{"eq":1,"eq":2}}`, err: ErrRepeated, name: "eq", top: "a"},
		{doc: `{"x":1,"or":[{"k":{"gt":1}},{"k":{"gt":1,"gt":2}}]}`, err: ErrRepeated, name: "gt", top: "or"},
		// Names compare as their decoded text.
		{doc: `{"st\u0061tus":1,"status":2}`, err: ErrRepeated, name: "status", topNil: true},
		{doc: `{"\u00e9":1,"é":2}`, err: ErrRepeated, name: "é", topNil: true},
		{doc: `[{"a":1},{"a":2}]`},
		{doc: `[{"a":1,"a":2}]`, err: ErrRepeated, name: "a", topNil: true},
		// Siblings may reuse a name; a repeat before a syntax error is found.
		{doc: `{"a":{"n":1},"b":{"n":1}}`},
		{doc: `{"a":1,"a":`, err: ErrRepeated, name: "a", topNil: true},
		{doc: `{"a":1,"b"}`, err: ErrSyntax},
		{doc: strings.Repeat(`{"a":`, 6) + `1` + strings.Repeat(`}`, 6), err: ErrTooDeep},
	} {
		rep, err := FindRepeated([]byte(c.doc), 0, 4)
		if err != c.err {
			t.Errorf("%s: error %v, want %v", c.doc, err, c.err)
			continue
		}
		if err != ErrRepeated {
			continue
		}
		if rep.Name != c.name || (rep.Top == nil) != c.topNil || !c.topNil && string(rep.Top) != c.top {
			t.Errorf("%s: %q in %q (nil %v), want %q in %q", c.doc, rep.Name, rep.Top, rep.Top == nil, c.name, c.top)
		}
	}
}
