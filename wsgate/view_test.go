package wsgate

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/internal/query"
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
	type row struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
	}
	// A step: insert (name, id), delete name, rename name to to, or move
	// name onto key id.
	type step struct {
		op   string
		name string
		to   string
		id   int
	}
	initial := []row{{1, "n1"}, {2, "n2"}, {3, "n3"}, {4, "n4"}, {5, "n5"}}
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
			match := func(r row) bool {
				return tc.where == "" || !strings.Contains(tc.where, `"`+r.Name+`"`)
			}
			s := &sub{id: "v", snapshot: true, view: map[uint64]struct{}{}}
			if tc.where != "" {
				f, err := query.CompileWhere(json.RawMessage(tc.where), "public.t", map[string]query.ColumnType{"id": query.TypeInteger, "name": query.TypeText})
				if err != nil {
					t.Fatal(err)
				}
				s.filter = f
			}
			var table []row // rows in PostgreSQL; under a deferred key two may share an id
			client := map[int]row{}
			for _, r := range initial {
				table = append(table, r)
				if match(r) {
					client[r.ID] = r
					s.view[viewKey(fmt.Appendf(nil, `{"id":%d}`, r.ID))] = struct{}{}
				}
			}
			find := func(name string) int {
				for i, r := range table {
					if r.Name == name {
						return i
					}
				}
				t.Fatalf("no row %s", name)
				return -1
			}
			send := func(op schema.OpSet, ev map[string]any) {
				env, _ := json.Marshal(ev)
				s.viewDecide(op, env, func(view string, env []byte) {
					var got struct {
						Op   string           `json:"op"`
						Key  struct{ ID int } `json:"key"`
						Data *row             `json:"data"`
					}
					if err := json.Unmarshal(env, &got); err != nil {
						t.Fatal(err)
					}
					if view == "leave" || got.Op == "delete" {
						delete(client, got.Key.ID)
					} else {
						client[got.Key.ID] = *got.Data
					}
				})
			}
			for _, st := range tc.steps {
				switch st.op {
				case "insert":
					r := row{st.id, st.name}
					table = append(table, r)
					send(schema.BitCreate, map[string]any{"op": "create", "key": map[string]int{"id": r.ID}, "data": r})
				case "delete":
					i := find(st.name)
					old := table[i]
					table = append(table[:i], table[i+1:]...)
					send(schema.BitDelete, map[string]any{"op": "delete", "key": map[string]int{"id": old.ID}, "old": old})
				case "rename", "move":
					i := find(st.name)
					old := table[i]
					if st.op == "rename" {
						table[i].Name = st.to
					} else {
						table[i].ID = st.id
					}
					send(schema.BitUpdate, map[string]any{"op": "update", "key": map[string]int{"id": old.ID}, "data": table[i], "old": old})
				}
			}
			want := map[int]row{}
			for _, r := range table {
				if _, twice := want[r.ID]; twice {
					t.Fatalf("the steps leave two rows on key %d", r.ID)
				}
				if match(r) {
					want[r.ID] = r
				}
			}
			if fmt.Sprint(client) != fmt.Sprint(want) {
				t.Fatalf("the client holds %v, the table (in the view) is %v", client, want)
			}
		})
	}
}
