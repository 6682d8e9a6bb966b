package query

import (
	"fmt"
	"testing"

	"github.com/tablecast/tablecast/schema"
)

// TestDecide: a row policy judges an update's old and new rows apart;
// what each subscriber gets follows from which of the two it may see.
func TestDecide(t *testing.T) {
	types := map[string]ColumnType{"id": TypeInteger, "tenant": TypeText, "status": TypeText}
	compile := func(where string) *Filter {
		if where == "" {
			return nil
		}
		f, err := CompileWhere([]byte(where), "public.orders", types)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	const acme = `{"tenant":{"eq":"acme"}}`
	row := func(tenant, status string) string {
		return fmt.Sprintf(`{"id":1,"tenant":%q,"status":%q}`, tenant, status)
	}
	const none = "none"
	cases := []struct {
		name          string
		policy, where string
		ops           schema.OpSet
		bit           schema.OpSet
		data, old     string // "" for none
		want          string // a view's name, or none, or withheld
	}{
		{"stays in the tenant", acme, "", schema.AllOps, schema.BitUpdate, row("acme", "a"), row("acme", "b"), "whole"},
		{"moves out", acme, "", schema.AllOps, schema.BitUpdate, row("globex", "a"), row("acme", "a"), "old as delete"},
		{"moves in", acme, "", schema.AllOps, schema.BitUpdate, row("acme", "a"), row("globex", "a"), "new"},
		{"elsewhere", acme, "", schema.AllOps, schema.BitUpdate, row("globex", "a"), row("initech", "a"), none},
		{"moves out, deletes not taken", acme, "", schema.BitUpdate, schema.BitUpdate, row("globex", "a"), row("acme", "a"), none},
		{"moves out, only deletes taken", acme, "", schema.BitDelete, schema.BitUpdate, row("globex", "a"), row("acme", "a"), "old as delete"},
		{"moves in, only deletes taken", acme, "", schema.BitDelete, schema.BitUpdate, row("acme", "a"), row("globex", "a"), none},
		{"moves out, where on the old row", acme, `{"status":{"eq":"open"}}`, schema.AllOps, schema.BitUpdate, row("globex", "paid"), row("acme", "open"), "old as delete"},
		{"moves out, where rules the old row out", acme, `{"status":{"eq":"paid"}}`, schema.AllOps, schema.BitUpdate, row("globex", "paid"), row("acme", "open"), none},
		{"moves in, where on the new row", acme, `{"status":{"eq":"paid"}}`, schema.AllOps, schema.BitUpdate, row("acme", "paid"), row("globex", "open"), "new"},
		{"old row of the key only", acme, "", schema.AllOps, schema.BitUpdate, row("acme", "a"), `{"id":1}`, "new"},
		{"old row of the key only, new row elsewhere", acme, "", schema.AllOps, schema.BitUpdate, row("globex", "a"), `{"id":1}`, none},
		{"no old row: the new row decides", acme, "", schema.AllOps, schema.BitUpdate, row("acme", "a"), "", "whole"},
		{"no old row, elsewhere", acme, "", schema.AllOps, schema.BitUpdate, row("globex", "a"), "", none},
		{"new row cannot be judged", acme, "", schema.AllOps, schema.BitUpdate, `{"id":1}`, row("acme", "a"), "withheld"},
		{"no policy: as published", "", "", schema.AllOps, schema.BitUpdate, row("globex", "a"), row("acme", "a"), "whole"},
		{"no policy, where on the new row", "", `{"tenant":{"eq":"acme"}}`, schema.AllOps, schema.BitUpdate, row("globex", "a"), row("acme", "a"), none},
		{"create", acme, "", schema.AllOps, schema.BitCreate, row("acme", "a"), "", "whole"},
		{"delete of the key only", acme, "", schema.AllOps, schema.BitDelete, `{"id":1}`, "", "withheld"},
		{"truncate", acme, "", schema.AllOps, schema.BitTruncate, "", "", "whole"},
	}
	names := map[View]string{ViewWhole: "whole", ViewNew: "new", ViewOldAsDelete: "old as delete"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := Selector{Ops: tc.ops, Where: compile(tc.where), Policy: compile(tc.policy)}
			ev := Event{op: tc.bit}
			ev.hasRow = tc.data != "" && ev.row.Reset([]byte(tc.data)) == nil
			ev.hasOld = tc.old != "" && ev.old.Reset([]byte(tc.old)) == nil
			view, ok, err := s.Decide(&ev)
			got := names[view]
			switch {
			case err == ErrWithheld:
				got = "withheld"
			case err != nil:
				t.Fatalf("decide: %v", err)
			case !ok:
				got = none
			}
			if got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}
