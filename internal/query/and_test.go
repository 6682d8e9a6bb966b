package query

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// andColumns are the columns the And tests compile against, a column
// called "or" among them.
var andColumns = map[string]ColumnType{
	"id":        TypeInteger,
	"tenant_id": TypeText,
	"org_id":    TypeInteger,
	"status":    TypeText,
	"region":    TypeText,
	"or":        TypeText, // a column called "or"
}

// mustWhere parses a JSON where.
func mustWhere(t testing.TB, where string) *Where {
	t.Helper()
	w, err := ParseWhere(json.RawMessage(where))
	if err != nil {
		t.Fatalf("ParseWhere(%s): %v", where, err)
	}
	return w
}

// TestAnd: the AND of two wheres holds the terms of both, in order, so
// that conditions never collide: the same operator on a column twice, two
// "or" groups, a column called "or" beside a group, and members a where
// repeats all simply stand side by side. Operands keep their bytes (no
// HTML escaping).
func TestAnd(t *testing.T) {
	cases := []struct{ a, b, want string }{
		{``, ``, `null`},
		{`null`, ` {"id": {"eq": 1}} `, `{"id": {"eq": 1}}`},
		{`{"id": {"eq": 1}}`, ``, `{"id": {"eq": 1}}`},
		{`{"id": {"eq": 1}}`, `{"status": {"eq": "x"}}`, `{"id": {"eq": 1}, "status": {"eq": "x"}}`},
		{`{"id": {"gt": 1}}`, `{"id": {"lt": 9}}`, `{"id": {"gt": 1}, "id": {"lt": 9}}`},
		{`{"id": {"gt": 1}}`, `{"id": {"gt": 5, "lt": 9}}`, `{"id": {"gt": 1}, "id": {"gt": 5, "lt": 9}}`},
		{`{"or": [{"id": {"eq": 1}}, {"id": {"eq": 2}}]}`, `{"or": [{"status": {"eq": "a"}}, {"status": {"eq": "b"}}]}`,
			`{"or": [{"id": {"eq": 1}}, {"id": {"eq": 2}}], "or": [{"status": {"eq": "a"}}, {"status": {"eq": "b"}}]}`},
		{`{"or": {"eq": "x"}}`, `{"or": {"neq": "y"}}`, `{"or": {"eq": "x"}, "or": {"neq": "y"}}`},
		{`{"or": {"eq": "x"}}`, `{"or": [{"id": {"eq": 1}}]}`, `{"or": {"eq": "x"}, "or": [{"id": {"eq": 1}}]}`},
		{`{"id": {"eq": 1}, "id": {"eq": 2}}`, `{}`, `{"id": {"eq": 1}, "id": {"eq": 2}}`},
		{`{}`, `{"status": {"eq": "<&>"}}`, `{"status": {"eq": "<&>"}}`},
	}
	for _, tc := range cases {
		got := And(mustWhere(t, tc.a), mustWhere(t, tc.b)).String()
		var want bytes.Buffer
		if err := json.Compact(&want, []byte(tc.want)); err != nil {
			t.Fatal(err)
		}
		if got != want.String() {
			t.Errorf("And(%s, %s) = %s; want %s", tc.a, tc.b, got, want.String())
		}
		if strings.Contains(got, `\u003c`) {
			t.Errorf("And escaped HTML: %s", got)
		}
	}
	a, b := mustWhere(t, `{"id": {"eq": 1}}`), mustWhere(t, `{"id": {"eq": 2}}`)
	And(a, b)
	if a.String() != `{"id":{"eq":1}}` || b.String() != `{"id":{"eq":2}}` {
		t.Errorf("And changed its operands: %s, %s", a, b)
	}
}

// TestAndMeansAnd checks on random filters and rows that And(a, b)
// matches exactly the rows a and b both match.
func TestAndMeansAnd(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 1))
	cols := []string{"id", "org_id", "status", "or"}
	literal := func(col string) any {
		if col == "id" || col == "org_id" {
			return rng.IntN(4)
		}
		return []string{"a", "b", "c"}[rng.IntN(3)]
	}
	var group func(depth int) map[string]any
	group = func(depth int) map[string]any {
		g := map[string]any{}
		for range 1 + rng.IntN(3) {
			if depth < 3 && rng.IntN(4) == 0 {
				var ors []any
				for range 1 + rng.IntN(3) {
					ors = append(ors, group(depth+1))
				}
				g["or"] = ors
				continue
			}
			col := cols[rng.IntN(len(cols))]
			ops, _ := g[col].(map[string]any)
			if ops == nil {
				ops = map[string]any{}
			}
			switch op := []string{"eq", "neq", "lt", "gte", "in"}[rng.IntN(5)]; op {
			case "in":
				ops[op] = []any{literal(col), literal(col)}
			default:
				ops[op] = literal(col)
			}
			g[col] = ops
		}
		return g
	}
	compile := func(w *Where) *Filter {
		f, err := Compile(w, "public.orders", andColumns)
		if err != nil {
			t.Fatalf("compile %s: %v", w, err)
		}
		return f
	}
	match := func(f *Filter, row *Row) bool {
		ok, err := f.Match(row)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	var rows []*Row
	for range 40 {
		var r Row
		obj := fmt.Sprintf(`{"id": %d, "org_id": %d, "status": %q, "or": %q}`, rng.IntN(4), rng.IntN(4), literal("status"), literal("or"))
		if err := r.Reset([]byte(obj)); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, &r)
	}
	for i := range 300 {
		a, _ := json.Marshal(group(0))
		b, _ := json.Marshal(group(0))
		wa, wb := mustWhere(t, string(a)), mustWhere(t, string(b))
		ab := And(wa, wb)
		fa, fb := compile(wa), compile(wb)
		fab := compile(ab)
		for _, r := range rows {
			if want, got := match(fa, r) && match(fb, r), match(fab, r); got != want {
				t.Fatalf("case %d: And(%s, %s) = %s matches %v, want %v", i, a, b, ab, got, want)
			}
		}
	}
}

// FuzzAnd: when a, b and And(a, b) all compile, the result
// matches exactly the rows both match.
func FuzzAnd(f *testing.F) {
	f.Add(`{"id": {"gt": 1}}`, `{"id": {"gt": 2, "lt": 9}}`)
	f.Add(`{"or": [{"id": {"eq": 1}}, {"status": {"eq": "a"}}]}`, `{"or": [{"org_id": {"in": [1, 2]}}], "status": {"neq": "b"}}`)
	f.Add(`{"or": {"eq": "a"}}`, `{"or": {"eq": "b"}}`)
	var rows []*Row
	for _, obj := range []string{
		`{"id": 1, "org_id": 1, "status": "a", "or": "a", "tenant_id": "acme", "region": "eu"}`,
		`{"id": 2, "org_id": 2, "status": "b", "or": "b", "tenant_id": "evil", "region": "us"}`,
		`{"id": 9, "org_id": null, "status": null, "or": null, "tenant_id": null, "region": null}`,
	} {
		var r Row
		if err := r.Reset([]byte(obj)); err != nil {
			f.Fatal(err)
		}
		rows = append(rows, &r)
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		fa, err := CompileWhere(json.RawMessage(a), "t", andColumns)
		if err != nil {
			return
		}
		fb, err := CompileWhere(json.RawMessage(b), "t", andColumns)
		if err != nil {
			return
		}
		wa, _ := ParseWhere(json.RawMessage(a)) // compiles, so parses
		wb, _ := ParseWhere(json.RawMessage(b))
		ab := And(wa, wb)
		fab, err := Compile(ab, "t", andColumns)
		if err != nil {
			return // deeper or larger than the compiler allows: refused, never widened
		}
		for _, r := range rows {
			ma, errA := fa.Match(r)
			mb, errB := fb.Match(r)
			mab, errAB := fab.Match(r)
			if errA != nil || errB != nil || errAB != nil {
				continue
			}
			if mab != (ma && mb) {
				t.Fatalf("And(%s, %s) = %s: match %v, want %v", a, b, ab, mab, ma && mb)
			}
		}
	})
}
