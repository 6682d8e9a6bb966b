package wsgate

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// BenchmarkFanoutTenantMove: 1,000 subscriptions with the same id under
// the row policies of ten tenants; an update moves a row from tenant t1 to
// t2. With its old row (REPLICA IDENTITY FULL) the policy judges both
// rows: t1's 100 subscribers get a delete, t2's an update without "old",
// each view encoded once. Without it (the default replica identity) only
// the new row is judged, as before row policies judged old rows.
func BenchmarkFanoutTenantMove(b *testing.B) {
	cfg, _ := Config{}.withDefaults()
	g := &Gateway{cfg: cfg, log: cfg.Logger, met: newMetrics(nil), poll: nopoll{}, conns: map[*conn]struct{}{}}
	tbl := catalog.NewTable("tablecast", ordersShape())
	f := &feed{g: g, subject: tbl.Subject, groups: map[string]*frameGroup{}}
	for i := range 1000 {
		c := &conn{g: g, nc: &discardConn{}, fd: -1}
		policy, err := query.CompileWhere(fmt.Appendf(nil, `{"tenant":{"eq":"t%d"}}`, i%10), tbl.Name, tbl.Types)
		if err != nil {
			b.Fatal(err)
		}
		s := &sub{c: c, id: "s1", table: tbl, ops: schema.AllOps}
		s.policy.Store(policy)
		f.attach(s, nil, false)
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
	tbl := catalog.NewTable("tablecast", ordersShape())
	f := &feed{g: g, subject: tbl.Subject, groups: map[string]*frameGroup{}}
	subs := map[string]*sub{}
	for i, tenant := range []string{"acme", "globex"} {
		s := &sub{c: &conn{g: g, nc: &discardConn{}, fd: -1}, id: fmt.Sprint("s", i), table: tbl, ops: schema.AllOps}
		f.attach(s, nil, false)
		policy, err := query.CompileWhere(fmt.Appendf(nil, `{"tenant":{"eq":%q}}`, tenant), tbl.Name, tbl.Types)
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
		view      query.View
		has, hasn string
	}{
		"acme":   {query.ViewOldAsDelete, `"op":"delete"`, `"globex"`},
		"globex": {query.ViewNew, `"tenant":"globex"`, `"acme"`},
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
