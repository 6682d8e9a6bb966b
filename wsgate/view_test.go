package wsgate

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/internal/testrun"
	"github.com/tablecast/tablecast/schema"
)

// TestViewKeysMovedOntoKeysHeld: under a deferrable key (published under
// REPLICA IDENTITY FULL, so updates carry the whole old row) one statement
// moves a row onto a key another row still holds, which moves off it later
// in the transaction: a swap, a renumbering. The other row's move off is
// not the row the client now holds at that key: its leave took that row
// out of the view, and a swapped or renumbered table lost rows. A client
// applying the frames must end with the table, also when the row that
// held the key was outside the view's where.
func TestViewKeysMovedOntoKeysHeld(t *testing.T) {
	type row struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
	}
	// moves updates rows of table, each from its key to its new one, in
	// order, as PostgreSQL sends them, through s's view, and applies what
	// the client is told to client.
	moves := func(s *sub, table, client map[int]row, steps [][2]int) {
		before := map[int]row{}
		for k, r := range table {
			before[k] = r
		}
		for _, m := range steps {
			delete(table, m[0])
		}
		for _, m := range steps {
			// Each row from the key it had when the statement began.
			old := before[m[0]]
			nw := row{m[1], old.Name}
			table[m[1]] = nw
			env, _ := json.Marshal(map[string]any{"op": "update", "key": map[string]int{"id": m[0]}, "data": nw, "old": old})
			s.viewDecide(schema.BitUpdate, env, func(view string, env []byte) {
				var ev struct {
					Key  struct{ ID int } `json:"key"`
					Data *row             `json:"data"`
				}
				if err := json.Unmarshal(env, &ev); err != nil {
					t.Fatal(err)
				}
				if view == "leave" {
					delete(client, ev.Key.ID)
				} else {
					client[ev.Key.ID] = *ev.Data
				}
			})
		}
	}
	for _, tc := range []struct {
		name  string
		where string
		rows  []row
		steps [][2]int
	}{
		{"swap", "", []row{{1, "a"}, {2, "b"}, {3, "c"}}, [][2]int{{1, 2}, {2, 1}}},
		{"renumbered onto rows not moved yet", "", []row{{1, "a"}, {2, "b"}, {3, "c"}}, [][2]int{{1, 2}, {2, 3}, {3, 4}}},
		{"swap with a row outside the where", `{"name":{"neq":"b"}}`, []row{{1, "a"}, {2, "b"}}, [][2]int{{1, 2}, {2, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &sub{id: "v", snapshot: true, view: map[uint64]struct{}{}}
			if tc.where != "" {
				f, err := query.CompileWhere(json.RawMessage(tc.where), "public.t", map[string]query.ColumnType{"id": query.TypeInteger, "name": query.TypeText})
				if err != nil {
					t.Fatal(err)
				}
				s.filter = f
			}
			table, client := map[int]row{}, map[int]row{}
			for _, r := range tc.rows {
				table[r.ID] = r
				if tc.where == "" || r.Name != "b" {
					client[r.ID] = r
					s.view[viewKey(fmt.Appendf(nil, `{"id":%d}`, r.ID))] = struct{}{}
				}
			}
			moves(s, table, client, tc.steps)
			want := map[int]row{}
			for k, r := range table {
				if tc.where == "" || r.Name != "b" {
					want[k] = r
				}
			}
			// fmt prints maps in the order of their keys.
			if fmt.Sprint(client) != fmt.Sprint(want) {
				t.Fatalf("the client holds %v, the table (in the view) is %v", client, want)
			}
		})
	}
}

// TestViewRowsInsertedOntoKeysHeld: under a deferred key a transaction may
// insert a row onto a key another row still holds, or move one onto it,
// and then delete, move or change the other row (a row replaced by
// inserting its new version first). Each change is sent as PostgreSQL
// sends it under REPLICA IDENTITY FULL (old rows whole); a client applying
// what the view tells it must end with the table's rows that match.
func TestViewRowsInsertedOntoKeysHeld(t *testing.T) {
	// A step: insert (name, id), delete name, rename name to to, or move
	// name onto key id.
	type step struct {
		op   string
		name string
		to   string
		id   int
	}
	for _, tc := range []struct {
		name  string
		where string
		steps []step
	}{
		{"new version inserted, old deleted", "", []step{{op: "insert", name: "new3", id: 3}, {op: "delete", name: "n3"}}},
		{"new version inserted, old moved off", "", []step{{op: "insert", name: "new3", id: 3}, {op: "move", name: "n3", id: 30}}},
		{"new version inserted, old changed then deleted", "", []step{{op: "insert", name: "new3", id: 3}, {op: "rename", name: "n3", to: "n3x"}, {op: "delete", name: "n3x"}}},
		{"new version inserted and changed, old deleted", "", []step{{op: "insert", name: "new3", id: 3}, {op: "rename", name: "new3", to: "new3x"}, {op: "delete", name: "n3"}}},
		{"moved onto a key held, whose row is deleted", "", []step{{op: "move", name: "n4", id: 3}, {op: "delete", name: "n3"}}},
		{"two rows inserted onto one key in turn", "", []step{{op: "insert", name: "a3", id: 3}, {op: "delete", name: "n3"}, {op: "insert", name: "b3", id: 3}, {op: "delete", name: "a3"}}},
		{"inserted row outside the where", `{"name":{"neq":"new3"}}`, []step{{op: "insert", name: "new3", id: 3}, {op: "delete", name: "n3"}}},
		{"displaced row outside the where", `{"name":{"neq":"n3"}}`, []step{{op: "insert", name: "new3", id: 3}, {op: "delete", name: "n3"}}},
		{"a row inserted and deleted again", "", []step{{op: "insert", name: "x", id: 9}, {op: "delete", name: "x"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newViewModel(t, tc.where, func(r viewModelRow) bool {
				return tc.where == "" || !strings.Contains(tc.where, `"`+r.Name+`"`)
			})
			for i := 1; i <= 5; i++ {
				m.seed(viewModelRow{ID: i, Name: fmt.Sprintf("n%d", i)})
			}
			for _, st := range tc.steps {
				switch st.op {
				case "insert":
					m.insert(viewModelRow{ID: st.id, Name: st.name})
				case "delete":
					m.delete(st.name)
				case "rename":
					m.update(st.name, func(r *viewModelRow) { r.Name = st.to })
				case "move":
					m.update(st.name, func(r *viewModelRow) { r.ID = st.id })
				}
			}
			m.check()
		})
	}
}

// TestViewKeysSharedAtRandom: random transactions under a deferred key, as
// rowstate's TestKeysSharedAtRandom writes them (the new version inserted
// or moved onto a key first; either version changed; the old one deleted
// or moved to a free key), through a view whose where rows enter and
// leave as they change. After each transaction the client holds the
// table's rows that match. The seed is logged: TABLECAST_SEED=n repeats a
// run.
func TestViewKeysSharedAtRandom(t *testing.T) {
	seed := testrun.Seed(t)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	m := newViewModel(t, `{"n":{"lt":3}}`, func(r viewModelRow) bool { return r.N < 3 })
	for i := 1; i <= 100; i++ {
		m.seed(viewModelRow{ID: i, Name: fmt.Sprintf("r%d", i), N: rng.IntN(4)})
	}
	names := 0
	newName := func() string { names++; return fmt.Sprintf("s%d", names) }
	for tx := 0; tx < 500; tx++ {
		keys := m.keys()
		rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		taken := map[int]bool{}
		free := func() int {
			for {
				k := 1000 + rng.IntN(100000)
				if !taken[k] && !m.holds(k) {
					taken[k] = true
					return k
				}
			}
		}
		for _, k := range keys[:1+rng.IntN(4)] {
			if taken[k] {
				continue
			}
			taken[k] = true
			old := m.nameAt(k)
			nw := newName()
			if other := keys[len(keys)-1-rng.IntN(len(keys)/2)]; rng.IntN(3) == 0 && !taken[other] {
				taken[other] = true
				m.update(m.nameAt(other), func(r *viewModelRow) { r.ID, r.Name = k, nw })
			} else {
				m.insert(viewModelRow{ID: k, Name: nw, N: rng.IntN(4)})
			}
			for c := rng.IntN(3); c > 0; c-- {
				if rng.IntN(2) == 0 {
					renamed := newName()
					m.update(old, func(r *viewModelRow) { r.Name, r.N = renamed, rng.IntN(4) })
					old = renamed
				} else {
					m.update(nw, func(r *viewModelRow) { r.N = rng.IntN(4) })
				}
			}
			if rng.IntN(2) == 0 {
				m.delete(old)
			} else {
				to := free()
				m.update(old, func(r *viewModelRow) { r.ID = to })
			}
		}
		m.check()
	}
}

// viewModelRow is a row of viewModel's table.
type viewModelRow struct {
	ID   int    `json:"id"`
	Name string `json:"name"` // unique: it names the row
	N    int    `json:"n"`
}

// viewModel drives a view (sub.viewDecide) with the events PostgreSQL sends
// of a table with a deferred key under REPLICA IDENTITY FULL (old rows
// whole), where two rows may hold one key inside a transaction, and keeps
// what a client applying the view's frames holds.
type viewModel struct {
	t      *testing.T
	s      *sub
	match  func(viewModelRow) bool // the view's where, in Go
	table  []viewModelRow
	client map[int]viewModelRow
	tx     int // the transaction's number: its events' lsn
	// trail holds, by key, what was sent of it and what the client was
	// told, for the message of a failed check.
	trail map[int][]string
}

func newViewModel(t *testing.T, where string, match func(viewModelRow) bool) *viewModel {
	s := &sub{id: "v", snapshot: true, view: map[uint64]struct{}{}, table: &catalog.Table{Shape: schema.Shape{ReplicaIdentity: "full"}}}
	if where != "" {
		f, err := query.CompileWhere(json.RawMessage(where), "public.t", map[string]query.ColumnType{"id": query.TypeInteger, "name": query.TypeText, "n": query.TypeInteger})
		if err != nil {
			t.Fatal(err)
		}
		s.filter = f
	}
	return &viewModel{t: t, s: s, match: match, client: map[int]viewModelRow{}}
}

// seed adds a row the client holds from the view's snapshot when it
// matches.
func (m *viewModel) seed(r viewModelRow) {
	m.table = append(m.table, r)
	if m.match(r) {
		m.client[r.ID] = r
		m.s.view[viewKey(fmt.Appendf(nil, `{"id":%d}`, r.ID))] = struct{}{}
	}
}

func (m *viewModel) find(name string) int {
	for i, r := range m.table {
		if r.Name == name {
			return i
		}
	}
	m.t.Fatalf("no row %s", name)
	return -1
}

func (m *viewModel) insert(r viewModelRow) {
	m.table = append(m.table, r)
	m.send(schema.BitCreate, map[string]any{"op": "create", "key": map[string]int{"id": r.ID}, "data": r})
}

func (m *viewModel) delete(name string) {
	i := m.find(name)
	old := m.table[i]
	m.table = append(m.table[:i], m.table[i+1:]...)
	m.send(schema.BitDelete, map[string]any{"op": "delete", "key": map[string]int{"id": old.ID}, "old": old})
}

func (m *viewModel) update(name string, change func(*viewModelRow)) {
	i := m.find(name)
	old := m.table[i]
	change(&m.table[i])
	m.send(schema.BitUpdate, map[string]any{"op": "update", "key": map[string]int{"id": old.ID}, "data": m.table[i], "old": old})
}

func (m *viewModel) send(op schema.OpSet, ev map[string]any) {
	ev["lsn"] = fmt.Sprintf("0/%X", m.tx)
	env, _ := json.Marshal(ev)
	if m.trail == nil {
		m.trail = map[int][]string{}
	}
	note := func(id int, what string) { m.trail[id] = append(m.trail[id], fmt.Sprintf("tx %d: %s", m.tx, what)) }
	note(ev["key"].(map[string]int)["id"], "sent "+string(env))
	if d, ok := ev["data"].(viewModelRow); ok && op == schema.BitUpdate {
		note(d.ID, "sent "+string(env))
	}
	m.s.viewDecide(op, env, func(view string, env []byte) {
		var got struct {
			Op   string           `json:"op"`
			Key  struct{ ID int } `json:"key"`
			Data *viewModelRow    `json:"data"`
		}
		if err := json.Unmarshal(env, &got); err != nil {
			m.t.Fatal(err)
		}
		note(got.Key.ID, fmt.Sprintf("told %q %s", view, env))
		if view == "leave" || got.Op == "delete" {
			delete(m.client, got.Key.ID)
		} else {
			m.client[got.Key.ID] = *got.Data
		}
	})
}

// keys returns the keys of the table, in order.
func (m *viewModel) keys() []int {
	var out []int
	for _, r := range m.table {
		out = append(out, r.ID)
	}
	slices.Sort(out)
	return out
}

func (m *viewModel) holds(id int) bool {
	return slices.ContainsFunc(m.table, func(r viewModelRow) bool { return r.ID == id })
}

// nameAt returns the name of the row of key id (one transaction leaves one).
func (m *viewModel) nameAt(id int) string {
	for _, r := range m.table {
		if r.ID == id {
			return r.Name
		}
	}
	m.t.Fatalf("no row of key %d", id)
	return ""
}

// check ends the transaction, and fails the test unless the client holds
// the table's rows that match (at the end of a transaction each key has
// one row).
func (m *viewModel) check() {
	m.t.Helper()
	m.tx++
	want := map[int]viewModelRow{}
	for _, r := range m.table {
		if _, twice := want[r.ID]; twice {
			m.t.Fatalf("the steps leave two rows on key %d", r.ID)
		}
		if m.match(r) {
			want[r.ID] = r
		}
	}
	var bad []string
	for id := range m.trail {
		if g, w := m.client[id], want[id]; g != w {
			bad = append(bad, fmt.Sprintf("key %d: the client holds %v, the table %v:\n\t%s", id, g, w, strings.Join(m.trail[id], "\n\t")))
		}
	}
	if fmt.Sprint(m.client) != fmt.Sprint(want) {
		m.t.Fatalf("the client holds %v, the table (in the view) is %v\n%s", m.client, want, strings.Join(bad, "\n"))
	}
}
