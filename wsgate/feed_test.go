package wsgate

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/schema"
)

// TestSubDecide: a row policy judges an update's old and new rows apart;
// what each subscriber gets follows from which of the two it may see.
func TestSubDecide(t *testing.T) {
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
	names := map[eventView]string{viewWhole: "whole", viewNew: "new", viewOldAsDelete: "old as delete"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &sub{ops: tc.ops, filter: compile(tc.where)}
			s.policy.Store(compile(tc.policy))
			var data, old Row
			hasRow := tc.data != "" && data.Reset([]byte(tc.data)) == nil
			hasOld := tc.old != "" && old.Reset([]byte(tc.old)) == nil
			view, ok, err := s.decide(tc.bit, &data, hasRow, &old, hasOld)
			got := names[view]
			switch {
			case err == errWithheld:
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

// BenchmarkFanoutTenantMove: 1,000 subscriptions with the same id under
// the row policies of ten tenants; an update moves a row from tenant t1 to
// t2. With its old row (REPLICA IDENTITY FULL) the policy judges both
// rows: t1's 100 subscribers get a delete, t2's an update without "old",
// each view encoded once. Without it (the default replica identity) only
// the new row is judged, as before row policies judged old rows.
func BenchmarkFanoutTenantMove(b *testing.B) {
	cfg, _ := Config{}.withDefaults()
	g := &Gateway{cfg: cfg, log: cfg.Logger, met: newMetrics(nil), poll: nopoll{}, conns: map[*conn]struct{}{}}
	tbl := newTableInfo("tablecast", ordersShape())
	f := &feed{g: g, subject: tbl.subject, groups: map[string]*frameGroup{}}
	for i := range 1000 {
		c := &conn{g: g, nc: &discardConn{}, fd: -1}
		policy, err := CompileWhere(fmt.Appendf(nil, `{"tenant":{"eq":"t%d"}}`, i%10), tbl.name, tbl.types)
		if err != nil {
			b.Fatal(err)
		}
		s := &sub{c: c, id: "s1", table: tbl, ops: schema.AllOps}
		s.policy.Store(policy)
		f.attach(s, nil)
	}
	const row = `"id":42,"status":"paid","total":"19.90","paid":true,"created":"2026-11-22T07:00:00Z","notes":null`
	head := `{"id":"00000000016B3748-0003","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{` + row + `,"tenant":"t2"}`
	var seq uint64
	for name, event := range map[string][]byte{
		"move":   []byte(head + `,"old":{` + row + `,"tenant":"t1"}}`),
		"no old": []byte(head + `}`),
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				seq++
				f.mu.Lock()
				f.deliverEvent(seq, "tablecast.shop.public.orders.update", event)
				f.mu.Unlock()
			}
		})
	}
}

// TestFeedPolicySetAfterAttach: a row policy given to a subscription after
// it joined its feed (as new grants do) judges an update's old row too:
// the feed reads old rows whatever its subscriptions' policies were.
func TestFeedPolicySetAfterAttach(t *testing.T) {
	cfg, _ := Config{}.withDefaults()
	g := &Gateway{cfg: cfg, log: cfg.Logger, met: newMetrics(nil), poll: nopoll{}, conns: map[*conn]struct{}{}}
	tbl := newTableInfo("tablecast", ordersShape())
	f := &feed{g: g, subject: tbl.subject, groups: map[string]*frameGroup{}}
	subs := map[string]*sub{}
	for i, tenant := range []string{"acme", "globex"} {
		s := &sub{c: &conn{g: g, nc: &discardConn{}, fd: -1}, id: fmt.Sprint("s", i), table: tbl, ops: schema.AllOps}
		f.attach(s, nil)
		policy, err := CompileWhere(fmt.Appendf(nil, `{"tenant":{"eq":%q}}`, tenant), tbl.name, tbl.types)
		if err != nil {
			t.Fatal(err)
		}
		f.setGrants(s, policy, s.proj.Load())
		subs[tenant] = s
	}
	event := []byte(`{"id":"1","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z",` +
		`"key":{"id":1},"data":{"id":1,"tenant":"globex","notes":"new"},"old":{"id":1,"tenant":"acme","notes":"old"}}`)
	f.mu.Lock()
	f.deliverEvent(7, "tablecast.shop.public.orders.update", event)
	f.mu.Unlock()
	for tenant, want := range map[string]struct {
		view      eventView
		has, hasn string
	}{
		"acme":   {viewOldAsDelete, `"op":"delete"`, `"globex"`},
		"globex": {viewNew, `"tenant":"globex"`, `"acme"`},
	} {
		gr := subs[tenant].grp
		if gr.seq != 7 || gr.done != 1<<want.view {
			t.Fatalf("%s: views encoded %b, want only view %d", tenant, gr.done, want.view)
		}
		frame := string(gr.views[want.view-1])
		if !strings.Contains(frame, want.has) || strings.Contains(frame, want.hasn) {
			t.Errorf("%s: frame %q", tenant, frame)
		}
	}
}
