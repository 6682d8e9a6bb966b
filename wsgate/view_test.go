package wsgate

import (
	"encoding/json"
	"fmt"
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
