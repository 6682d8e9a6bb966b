package match

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

func ordersTable(identity string) *catalog.Table {
	full := identity == "full"
	return catalog.NewTable("tablecast", schema.Shape{DB: "shop", Schema: "public", Table: "orders", ReplicaIdentity: identity,
		Columns: []schema.ShapeColumn{
			{Name: "id", TypeOID: 20, Key: true, Identity: true},
			{Name: "status", TypeOID: 25, Identity: full},
			{Name: "total", TypeOID: 1700, Identity: full},
		}})
}

func event(t *testing.T, op string, env string) *query.Event {
	t.Helper()
	var ev query.Event
	if err := ev.Reset(schema.OpBit(op), []byte(env)); err != nil {
		t.Fatalf("reset %s: %v", env, err)
	}
	return &ev
}

func TestFilterDecide(t *testing.T) {
	tbl := ordersTable("default")
	m := New([]*endpoint.Filter{{Name: "paid", Tables: []string{"public.orders"}, Operations: []string{"create", "update"},
		Where: json.RawMessage(`{"status":{"eq":"paid"}}`)}}, nil, nil)
	for _, c := range []struct {
		op, env string
		pass    bool
	}{
		{"create", `{"op":"create","data":{"id":1,"status":"paid","total":"5"}}`, true},
		{"create", `{"op":"create","data":{"id":1,"status":"open","total":"5"}}`, false},
		{"update", `{"op":"update","data":{"id":1,"status":"paid","total":"5"}}`, true},
		{"delete", `{"op":"delete","key":{"id":1}}`, false},
		{"truncate", `{"op":"truncate","key":{}}`, false},
	} {
		if d := m.Decide(tbl, event(t, c.op, c.env)); d.Pass != c.pass || d.Projection != nil {
			t.Errorf("%s: decision %+v, want pass %v and every column", c.env, d, c.pass)
		}
	}
	other := catalog.NewTable("tablecast", schema.Shape{DB: "shop", Schema: "public", Table: "users", Columns: []schema.ShapeColumn{{Name: "id", TypeOID: 20, Key: true}}})
	if d := m.Decide(other, event(t, "create", `{"data":{"id":1}}`)); d.Pass {
		t.Errorf("an event of a table no pattern matches passed")
	}
}

func TestRuleChange(t *testing.T) {
	full, def := ordersTable("full"), ordersTable("default")
	rules := []*endpoint.Rule{{Name: "status", Table: "shop.public.orders", Operations: []string{"update"}, Changed: []string{"status"}}}
	m := New(nil, rules, nil)
	cases := []struct {
		name           string
		tbl            *catalog.Table
		env            string
		pass, unjudged bool
	}{
		{"changed", full, `{"data":{"id":1,"status":"paid","total":"5"},"old":{"id":1,"status":"open","total":"5"}}`, true, false},
		{"same value", full, `{"data":{"id":1,"status":"open","total":"6"},"old":{"id":1,"status":"open","total":"5"}}`, false, false},
		{"toasted (absent from data)", full, `{"data":{"id":1,"total":"6"},"old":{"id":1,"status":"open","total":"5"},"unchanged":["status"]}`, false, false},
		{"no old row", def, `{"data":{"id":1,"status":"paid","total":"5"}}`, false, true},
	}
	for _, c := range cases {
		d := m.Decide(c.tbl, event(t, "update", c.env))
		if d.Pass != c.pass || d.Unjudged != c.unjudged {
			t.Errorf("%s: %+v, want pass %v unjudged %v", c.name, d, c.pass, c.unjudged)
		}
	}
	// The key is sent whenever it changes: an update without an old row
	// did not change it.
	mk := New(nil, []*endpoint.Rule{{Name: "id", Table: "public.orders", Changed: []string{"id"}, Operations: []string{"update"}}}, nil)
	if d := mk.Decide(def, event(t, "update", `{"data":{"id":1,"status":"x","total":"1"}}`)); d.Pass || d.Unjudged {
		t.Errorf("key rule on update without old: %+v, want not passed and judged", d)
	}
	if d := mk.Decide(def, event(t, "update", `{"data":{"id":2,"status":"x","total":"1"},"old":{"id":1}}`)); !d.Pass {
		t.Errorf("key rule on a key change: %+v, want passed", d)
	}
}

func TestRuleOldNew(t *testing.T) {
	full := ordersTable("full")
	m := New(nil, []*endpoint.Rule{{Name: "paid", Table: "public.orders", Operations: []string{"update", "delete"},
		Old: json.RawMessage(`{"status":{"eq":"open"}}`), New: json.RawMessage(`{"status":{"eq":"paid"}}`)}}, nil)
	for _, c := range []struct {
		op, env string
		pass    bool
	}{
		{"update", `{"data":{"id":1,"status":"paid","total":"5"},"old":{"id":1,"status":"open","total":"5"}}`, true},
		{"update", `{"data":{"id":1,"status":"paid","total":"5"},"old":{"id":1,"status":"paid","total":"4"}}`, false},
		{"update", `{"data":{"id":1,"status":"void","total":"5"},"old":{"id":1,"status":"open","total":"5"}}`, false},
		{"delete", `{"old":{"id":1,"status":"open","total":"5"},"key":{"id":1}}`, false}, // new: a delete has no new row
	} {
		if d := m.Decide(full, event(t, c.op, c.env)); d.Pass != c.pass {
			t.Errorf("%s %s: %+v, want pass %v", c.op, c.env, d, c.pass)
		}
	}
	big := New(nil, []*endpoint.Rule{{Name: "big", Table: "public.orders", Operations: []string{"create"},
		New: json.RawMessage(`{"total":{"gte":"100"}}`)}}, nil)
	if !big.Decide(full, event(t, "create", `{"data":{"id":1,"status":"x","total":"150.00"}}`)).Pass {
		t.Error("big order not passed")
	}
	if big.Decide(full, event(t, "create", `{"data":{"id":1,"status":"x","total":"99.99"}}`)).Pass {
		t.Error("small order passed")
	}
}

func TestProjectionUnion(t *testing.T) {
	tbl := ordersTable("default")
	m := New([]*endpoint.Filter{
		{Name: "a", Tables: []string{"*"}, Select: []string{"id"}},
		{Name: "b", Tables: []string{"public.*"}, Where: json.RawMessage(`{"status":{"eq":"paid"}}`), Select: []string{"status"}},
	}, nil, nil)
	out := func(env string) string {
		ev := event(t, "create", env)
		d := m.Decide(tbl, ev)
		if !d.Pass {
			t.Fatalf("%s not passed", env)
		}
		b, err := d.Projection.AppendEvent(nil, []byte(env))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := out(`{"data":{"id":1,"status":"open","total":"5"}}`); got != `{"data":{"id":1}}` {
		t.Errorf("one filter passes: %s", got)
	}
	if got := out(`{"data":{"id":1,"status":"paid","total":"5"}}`); got != `{"data":{"id":1,"status":"paid"}}` {
		t.Errorf("two filters pass: %s", got)
	}
	m2 := New(append(m.Filters(), &endpoint.Filter{Name: "c", Tables: []string{"*"}}), nil, nil)
	if d := m2.Decide(tbl, event(t, "create", `{"data":{"id":1,"status":"open","total":"5"}}`)); !d.Pass || d.Projection != nil {
		t.Errorf("a filter selecting every column passes: %+v, want every column", d)
	}
}

func TestRecompileOnShapeChange(t *testing.T) {
	m := New([]*endpoint.Filter{{Name: "f", Tables: []string{"*"}, Where: json.RawMessage(`{"status":{"eq":"paid"}}`)}}, nil, nil)
	tbl := ordersTable("default")
	if !m.Decide(tbl, event(t, "create", `{"data":{"id":1,"status":"paid"}}`)).Pass {
		t.Fatal("not passed")
	}
	dropped := catalog.NewTable("tablecast", schema.Shape{DB: "shop", Schema: "public", Table: "orders",
		Columns: []schema.ShapeColumn{{Name: "id", TypeOID: 20, Key: true}}})
	if tm := m.Table(dropped); len(tm.Parts) != 0 {
		t.Fatalf("filter on a dropped column still compiled: %d parts", len(tm.Parts))
	}
	if m.Table(tbl) == m.Table(dropped) {
		t.Fatal("same TableMatch for two shapes")
	}
}

func TestSubjects(t *testing.T) {
	got := Subjects("tc", []*endpoint.Filter{
		{Tables: []string{"public.orders", "shop.public.orders"}, Operations: []string{"create", "update"}},
		{Tables: []string{"public.a.b"}, Operations: []string{"delete"}}, // database public, schema a
	}, []*endpoint.Rule{{Table: "public.users", Operations: []string{"update"}}})
	want := []string{"tc.*.public.orders.create", "tc.*.public.orders.update", "tc.*.public.users.update", "tc.public.a.b.delete"}
	if !slices.Equal(got, want) {
		t.Errorf("Subjects = %q, want %q", got, want)
	}
	// Overlapping: "*.public.*.create" and "shop.*.*.*" overlap without either
	// covering the other; they are joined.
	got = Subjects("tc", []*endpoint.Filter{
		{Tables: []string{"public.*"}, Operations: []string{"create"}},
		{Tables: []string{"shop.*.*"}},
		{Tables: []string{"public.orders"}},
	}, nil)
	want = []string{"tc.*.*.*.*"}
	if !slices.Equal(got, want) {
		t.Errorf("overlapping Subjects = %q, want %q", got, want)
	}
	got = Subjects("tc", []*endpoint.Filter{{Tables: []string{"public.or.ders"}}}, nil) // database "public"
	if want := []string{"tc.public.or.ders.*"}; !slices.Equal(got, want) {
		t.Errorf("Subjects = %q, want %q", got, want)
	}
	got = Subjects("tc", []*endpoint.Filter{{Tables: []string{`public."or.ders"`}}}, nil)
	if want := []string{"tc.*.public.or%2Eders.*"}; !slices.Equal(got, want) {
		t.Errorf("escaped Subjects = %q, want %q", got, want)
	}
	if got := Subjects("tc", nil, nil); len(got) != 0 {
		t.Errorf("no filters: %q", got)
	}
}

// TestSubjectsDisjoint checks on many random sets that no two subjects
// overlap and that every input tuple is covered.
func TestSubjectsDisjoint(t *testing.T) {
	vals := []string{"*", "a", "b"}
	ops := []string{"create", "update", "delete"}
	seed := uint32(1)
	next := func(n int) int { seed = seed*1664525 + 1013904223; return int(seed>>16) % n }
	for round := 0; round < 300; round++ {
		var in []subjectTuple
		for k := 0; k < 1+next(6); k++ {
			in = append(in, subjectTuple{vals[next(3)], vals[next(3)], vals[next(3)], ops[next(3)]})
		}
		out := disjoint(slices.Clone(in))
		for i := range out {
			for j := range out {
				if i != j && out[i].overlaps(out[j]) {
					t.Fatalf("%v: %v and %v overlap", in, out[i], out[j])
				}
			}
		}
		for _, x := range in {
			if !slices.ContainsFunc(out, func(o subjectTuple) bool { return o.covers(x) }) {
				t.Fatalf("%v: %v not covered by %v", in, x, out)
			}
		}
	}
}

// TestSubjectsBounded: the most an endpoint may link gives a consumer at
// most maxSubjects subject filters, that still read every event its
// filters and rules may pass.
func TestSubjectsBounded(t *testing.T) {
	var filters []*endpoint.Filter
	var want []subjectTuple
	for i := range endpoint.MaxLinks {
		f := &endpoint.Filter{Operations: []string{"update", "delete"}}
		for j := range endpoint.MaxFilterTables {
			f.Tables = append(f.Tables, fmt.Sprintf("s%d.t%d", i, j))
			for _, op := range f.Operations {
				want = append(want, subjectTuple{anyToken, fmt.Sprint("s", i), fmt.Sprint("t", j), op})
			}
		}
		filters = append(filters, f)
	}
	var rules []*endpoint.Rule
	for i := range endpoint.MaxLinks {
		rules = append(rules, &endpoint.Rule{Table: fmt.Sprintf("public.r%d", i), Operations: []string{"update"}})
		want = append(want, subjectTuple{anyToken, "public", fmt.Sprint("r", i), "update"})
	}
	got := Subjects("tc", filters, rules)
	if len(got) > maxSubjects {
		t.Fatalf("%d subjects, want at most %d", len(got), maxSubjects)
	}
	var out []subjectTuple
	for _, s := range got {
		parts := strings.Split(s, ".")
		if len(parts) != 5 || parts[0] != "tc" {
			t.Fatalf("subject %q", s)
		}
		out = append(out, subjectTuple(parts[1:]))
	}
	for i := range out {
		for j := range out {
			if i != j && out[i].overlaps(out[j]) {
				t.Fatalf("%v and %v overlap", out[i], out[j])
			}
		}
	}
	for _, x := range want {
		if !slices.ContainsFunc(out, func(o subjectTuple) bool { return o.covers(x) }) {
			t.Fatalf("%v not covered by %v", x, got)
		}
	}
}

type fakeSource struct {
	eps     chan endpoint.Event[endpoint.Endpoint]
	filters chan endpoint.Event[endpoint.Filter]
	rules   chan endpoint.Event[endpoint.Rule]
}

func (f *fakeSource) WatchEndpoints(context.Context) <-chan endpoint.Event[endpoint.Endpoint] {
	return f.eps
}
func (f *fakeSource) WatchFilters(context.Context) <-chan endpoint.Event[endpoint.Filter] {
	return f.filters
}
func (f *fakeSource) WatchRules(context.Context) <-chan endpoint.Event[endpoint.Rule] { return f.rules }

func waitTake(t *testing.T, l *Listener) []string {
	t.Helper()
	select {
	case <-l.C():
		return l.Take()
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled")
	}
	return nil
}

func TestRegistry(t *testing.T) {
	src := &fakeSource{make(chan endpoint.Event[endpoint.Endpoint]), make(chan endpoint.Event[endpoint.Filter]), make(chan endpoint.Event[endpoint.Rule])}
	r := NewRegistry(nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, src); close(done) }()
	defer func() { cancel(); close(src.eps); close(src.filters); close(src.rules); <-done }()

	filter := &endpoint.Filter{Name: "paid", Tables: []string{"*"}, Where: json.RawMessage(`{"status":{"eq":"paid"}}`)}
	src.filters <- endpoint.Event[endpoint.Filter]{Kind: endpoint.EventPut, Key: "paid", Value: filter}
	src.eps <- endpoint.Event[endpoint.Endpoint]{Kind: endpoint.EventPut, Key: "E1", Value: &endpoint.Endpoint{ID: "E1", Name: "one", Revision: 1, Filters: []string{"paid"}}}
	src.eps <- endpoint.Event[endpoint.Endpoint]{Kind: endpoint.EventPut, Key: "E2", Value: &endpoint.Endpoint{ID: "E2", Name: "two", Revision: 2}}
	for _, l := range []any{src.eps, src.filters, src.rules} {
		switch ch := l.(type) {
		case chan endpoint.Event[endpoint.Endpoint]:
			ch <- endpoint.Event[endpoint.Endpoint]{Kind: endpoint.EventLoaded}
		case chan endpoint.Event[endpoint.Filter]:
			ch <- endpoint.Event[endpoint.Filter]{Kind: endpoint.EventLoaded}
		case chan endpoint.Event[endpoint.Rule]:
			ch <- endpoint.Event[endpoint.Rule]{Kind: endpoint.EventLoaded}
		}
	}
	<-r.Ready()
	l := r.Listen()
	defer l.Close()
	if got := waitTake(t, l); !slices.Equal(got, []string{"E1", "E2"}) {
		t.Fatalf("first Take = %q", got)
	}
	tbl := ordersTable("default")
	if e := r.GetByName("one"); e == nil || !e.Matcher.Decide(tbl, event(t, "create", `{"data":{"id":1,"status":"paid"}}`)).Pass {
		t.Fatalf("endpoint one does not pass a paid order: %+v", e)
	}

	// A touch (same meaning, new revision) changes nothing; a change of the
	// filter recompiles the endpoints linking it, alone.
	touched := *filter
	touched.Revision = 9
	src.filters <- endpoint.Event[endpoint.Filter]{Kind: endpoint.EventPut, Key: "paid", Value: &touched}
	changed := *filter
	changed.Where = json.RawMessage(`{"status":{"eq":"open"}}`)
	src.filters <- endpoint.Event[endpoint.Filter]{Kind: endpoint.EventPut, Key: "paid", Value: &changed}
	if got := waitTake(t, l); !slices.Equal(got, []string{"E1"}) {
		t.Fatalf("after a filter change, Take = %q", got)
	}
	if r.Get("E1").Matcher.Decide(tbl, event(t, "create", `{"data":{"id":1,"status":"paid"}}`)).Pass {
		t.Fatal("old filter still applies")
	}

	// A reset that no longer holds E2 removes it, once loaded.
	src.eps <- endpoint.Event[endpoint.Endpoint]{Kind: endpoint.EventReset}
	src.eps <- endpoint.Event[endpoint.Endpoint]{Kind: endpoint.EventPut, Key: "E1", Value: &endpoint.Endpoint{ID: "E1", Name: "one", Revision: 1, Filters: []string{"paid"}}}
	if r.Get("E2") == nil {
		t.Fatal("E2 gone before the reset loaded")
	}
	src.eps <- endpoint.Event[endpoint.Endpoint]{Kind: endpoint.EventLoaded}
	if got := waitTake(t, l); !slices.Equal(got, []string{"E2"}) {
		t.Fatalf("after a reset, Take = %q", got)
	}
	if r.Get("E2") != nil {
		t.Fatal("E2 still there")
	}
	// A deleted filter: the endpoint matches nothing.
	src.filters <- endpoint.Event[endpoint.Filter]{Kind: endpoint.EventDelete, Key: "paid"}
	if got := waitTake(t, l); !slices.Equal(got, []string{"E1"}) {
		t.Fatalf("after a filter deletion, Take = %q", got)
	}
	if !r.Get("E1").Matcher.Empty() {
		t.Fatal("matcher not empty")
	}
}
