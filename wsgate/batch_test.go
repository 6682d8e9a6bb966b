package wsgate

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// txRow is one event of a test transaction.
type txRow struct {
	table, op string
	row       map[string]any
}

// testTx is a transaction published as the reader publishes it with
// transaction markers on: its events, then its marker.
type testTx struct {
	lsn  uint64
	xid  int
	at   string
	seqs []uint64 // of its events, in order
	mark uint64   // of its marker; 0 until published
}

// lsnText is an LSN as events carry it.
func lsnText(lsn uint64) string { return string(schema.AppendLSN(nil, lsn)) }

// beginTx starts a test transaction with a fresh commit LSN and xid.
func (e *testEnv) beginTx() *testTx {
	n := e.ids.Add(1)
	return &testTx{lsn: 0x1000000 + n*0x1000, xid: int(1000 + n), at: fmt.Sprintf("2026-12-05T09:00:%02d.5Z", n%60)}
}

// events publishes rows as events of tx.
func (e *testEnv) events(tx *testTx, rows ...txRow) {
	e.t.Helper()
	for _, r := range rows {
		ord := len(tx.seqs) + 1
		id := fmt.Sprintf("%016X-%04X", tx.lsn, ord)
		env := map[string]any{"id": id, "op": r.op, "db": testDB, "schema": "public", "table": r.table,
			"lsn": lsnText(tx.lsn), "xid": tx.xid, "commit_time": tx.at, "key": map[string]any{"id": r.row["id"]}}
		if r.op == schema.OpDelete {
			env["old"] = r.row
		} else {
			env["data"] = r.row
		}
		b, _ := json.Marshal(env)
		tx.seqs = append(tx.seqs, e.publishRaw(stream.ChangeSubject("tablecast", testDB, "public", r.table, r.op), id, b))
	}
}

// commit publishes tx's marker.
func (e *testEnv) commit(tx *testTx) {
	e.t.Helper()
	// The gateway reads only xid, lsn and commit_time.
	body := fmt.Sprintf(`{"xid":%d,"lsn":%q,"commit_time":%q,"events":%d,"tables":[]}`, tx.xid, lsnText(tx.lsn), tx.at, len(tx.seqs))
	tx.mark = e.publishRaw(stream.TransactionSubject("tablecast", testDB), fmt.Sprintf("%016X-100000000", tx.lsn), []byte(body))
}

// txFrame is a transaction frame, decoded.
type txFrame struct {
	Type       string `json:"type"`
	ID         string `json:"id"`
	Seq        uint64 `json:"seq"`
	XID        int    `json:"xid"`
	LSN        string `json:"lsn"`
	CommitTime string `json:"commit_time"`
	More       bool   `json:"more"`
	Events     []struct {
		Seq   uint64         `json:"seq"`
		Event map[string]any `json:"event"`
	} `json:"events"`
	raw string
}

// expectTx reads a transaction frame of sub id.
func (c *client) expectTx(id string) txFrame {
	c.t.Helper()
	f := c.expect("transaction", id)
	var tf txFrame
	if err := json.Unmarshal([]byte(f.raw), &tf); err != nil {
		c.t.Fatalf("transaction frame %s: %v", f.raw, err)
	}
	tf.raw = f.raw
	return tf
}

// check checks that f is a frame of tx holding the events seqs, in order,
// under seq, with more as given.
func (f txFrame) check(t *testing.T, tx *testTx, seq uint64, more bool, seqs ...uint64) {
	t.Helper()
	var got []uint64
	for _, ev := range f.Events {
		got = append(got, ev.Seq)
		if ev.Event["lsn"] != lsnText(tx.lsn) {
			t.Fatalf("frame %s holds an event of another transaction", f.raw)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(seqs) || f.Seq != seq || f.More != more || f.XID != tx.xid || f.LSN != lsnText(tx.lsn) || f.CommitTime != tx.at {
		t.Fatalf("frame seq %d xid %d lsn %s commit_time %s more %v events %v\nwant seq %d xid %d lsn %s commit_time %s more %v events %v\n%s",
			f.Seq, f.XID, f.LSN, f.CommitTime, f.More, got, seq, tx.xid, lsnText(tx.lsn), tx.at, more, seqs, f.raw)
	}
}

func itemsShape() schema.Shape {
	s := ordersShape()
	s.Table = "items"
	return s
}

func order(id int, status string) map[string]any {
	return map[string]any{"id": id, "status": status, "total": "1.00"}
}

func withMarkers(c *Config) { c.TxMarkers = true }

// TestBatchTransaction: a batched subscription gets each transaction's
// events of its table in one frame, in commit order, with the
// transaction's xid, lsn and commit time and the marker's seq; a filtered
// one only the events it matches, and nothing for a transaction with none;
// a subscription without batch gets event frames as before.
func TestBatchTransaction(t *testing.T) {
	e := startGateway(t, withMarkers)
	e.putShape(itemsShape())
	all, paid, plain := e.dial("/ws"), e.dial("/ws"), e.dial("/ws")
	all.subscribe(map[string]any{"id": "all", "table": "public.orders", "batch": "transaction"})
	paid.subscribe(map[string]any{"id": "paid", "table": "public.orders", "batch": "transaction", "where": map[string]any{"status": map[string]any{"eq": "paid"}}, "select": []string{"id", "status"}})
	plain.subscribe(map[string]any{"id": "plain", "table": "public.orders"})

	t1 := e.beginTx()
	e.events(t1,
		txRow{"orders", "create", order(1, "open")}, txRow{"orders", "create", order(2, "paid")}, txRow{"orders", "create", order(3, "open")},
		txRow{"items", "create", order(1, "x")}, txRow{"items", "create", order(2, "x")},
		txRow{"orders", "update", order(1, "paid")})
	e.commit(t1)
	t2 := e.beginTx() // items only: nothing for orders
	e.events(t2, txRow{"items", "delete", order(1, "x")})
	e.commit(t2)
	t3 := e.beginTx() // no paid order
	e.events(t3, txRow{"orders", "create", order(4, "open")})
	e.commit(t3)

	f := all.expectTx("all")
	f.check(t, t1, t1.mark, false, t1.seqs[0], t1.seqs[1], t1.seqs[2], t1.seqs[5])
	if f.Events[3].Event["op"] != "update" || f.Events[0].Event["data"].(map[string]any)["status"] != "open" {
		t.Fatalf("events out of commit order: %s", f.raw)
	}
	all.expectTx("all").check(t, t3, t3.mark, false, t3.seqs[0])

	f = paid.expectTx("paid")
	f.check(t, t1, t1.mark, false, t1.seqs[1], t1.seqs[5])
	if data := f.Events[0].Event["data"].(map[string]any); len(data) != 2 || data["status"] != "paid" {
		t.Fatalf("select not applied to the batched events: %s", f.raw)
	}
	paid.expectQuiet(300 * time.Millisecond)

	for _, seq := range []uint64{t1.seqs[0], t1.seqs[1], t1.seqs[2], t1.seqs[5], t3.seqs[0]} {
		if got := plain.expect("event", "plain"); got.Seq != seq {
			t.Fatalf("plain subscription got event %d, want %d", got.Seq, seq)
		}
	}
	plain.expectQuiet(200 * time.Millisecond)

	// Resuming from before t1 batches the history the same way.
	again := e.dial("/ws")
	again.subscribe(map[string]any{"id": "again", "table": "public.orders", "batch": "transaction", "from": t1.seqs[0] - 1})
	again.expectTx("again").check(t, t1, t1.mark, false, t1.seqs[0], t1.seqs[1], t1.seqs[2], t1.seqs[5])
	again.expectTx("again").check(t, t3, t3.mark, false, t3.seqs[0])
	again.expectQuiet(200 * time.Millisecond)

	// A URL subscription takes batch=transaction.
	url := e.dial("/ws/tables/public.orders?batch=transaction&status=eq.open")
	url.expect("subscribed", URLSubscriptionID)
	t4 := e.beginTx()
	e.events(t4, txRow{"orders", "create", order(5, "open")}, txRow{"orders", "create", order(6, "paid")}, txRow{"orders", "create", order(7, "open")})
	e.commit(t4)
	url.expectTx(URLSubscriptionID).check(t, t4, t4.mark, false, t4.seqs[0], t4.seqs[2])
}

// TestBatchCutAndResume: a transaction larger than the limit arrives in
// several frames, in order, every event once, each frame but the last with
// more; resuming from any frame's seq sends the rest exactly once, and
// from the last frame's seq nothing of it.
func TestBatchCutAndResume(t *testing.T) {
	const rows, limit = 1000, 150
	e := startGateway(t, func(c *Config) { c.TxMarkers, c.BatchMaxEvents = true, limit })
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "b", "table": "public.orders", "batch": "transaction"})
	tx := e.beginTx()
	batch := make([]txRow, rows)
	for i := range batch {
		batch[i] = txRow{"orders", "create", order(i+1, "open")}
	}
	e.events(tx, batch...)
	e.commit(tx)

	var parts []txFrame
	for {
		f := c.expectTx("b")
		parts = append(parts, f)
		if !f.More {
			break
		}
	}
	if len(parts) != (rows+limit-1)/limit {
		t.Fatalf("%d frames, want %d", len(parts), (rows+limit-1)/limit)
	}
	for i, p := range parts {
		from := i * limit
		to := min(from+limit, rows)
		seq := tx.seqs[to-1]
		if i == len(parts)-1 {
			seq = tx.mark
		}
		p.check(t, tx, seq, i < len(parts)-1, tx.seqs[from:to]...)
	}

	// Resume from a middle part's seq: the rest, once.
	mid := parts[3]
	r := e.dial("/ws")
	r.subscribe(map[string]any{"id": "r", "table": "public.orders", "batch": "transaction", "from": mid.Seq})
	var got []uint64
	for {
		f := r.expectTx("r")
		for _, ev := range f.Events {
			got = append(got, ev.Seq)
		}
		if !f.More {
			if f.Seq != tx.mark {
				t.Fatalf("last frame seq %d, want the marker's %d", f.Seq, tx.mark)
			}
			break
		}
	}
	if want := tx.seqs[4*limit:]; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("resumed from %d: events %v…, want %v…", mid.Seq, got[:3], want[:3])
	}
	r.expectQuiet(200 * time.Millisecond)

	// From the last frame's seq: nothing of it; the next transaction.
	last := e.dial("/ws")
	last.subscribe(map[string]any{"id": "l", "table": "public.orders", "batch": "transaction", "from": tx.mark})
	next := e.beginTx()
	e.events(next, txRow{"orders", "delete", order(1, "open")})
	e.commit(next)
	last.expectTx("l").check(t, next, next.mark, false, next.seqs[0])

	// The byte limit cuts too: frames of a few events each.
	e2 := startGateway(t, func(c *Config) { c.TxMarkers, c.BatchMaxBytes = true, 1000 })
	c2 := e2.dial("/ws")
	c2.subscribe(map[string]any{"id": "b", "table": "public.orders", "batch": "transaction"})
	tx2 := e2.beginTx()
	e2.events(tx2, batch[:20]...)
	e2.commit(tx2)
	n, frames := 0, 0
	for {
		f := c2.expectTx("b")
		frames++
		if len(f.raw) > 1000+200 {
			t.Fatalf("frame of %d bytes over a limit of 1000 (and its head)", len(f.raw))
		}
		for _, ev := range f.Events {
			if ev.Seq != tx2.seqs[n] {
				t.Fatalf("event %d of the frames has seq %d, want %d", n, ev.Seq, tx2.seqs[n])
			}
			n++
		}
		if !f.More {
			break
		}
	}
	if n != 20 || frames < 3 {
		t.Fatalf("%d events in %d frames, want 20 in several", n, frames)
	}
}

// TestBatchResumeInsideTransaction: a resume whose history reaches the
// feed while a transaction is still being published (its marker not yet
// stored) does not cut it: the history runs to its marker, and the frame
// holds the whole transaction once.
func TestBatchResumeInsideTransaction(t *testing.T) {
	e := startGateway(t, withMarkers)
	live := e.dial("/ws")
	live.subscribe(map[string]any{"id": "live", "table": "public.orders", "batch": "transaction"})
	t1 := e.beginTx()
	e.events(t1, txRow{"orders", "create", order(1, "open")})
	e.commit(t1)
	live.expectTx("live")

	t2 := e.beginTx()
	e.events(t2, txRow{"orders", "create", order(2, "open")}, txRow{"orders", "create", order(3, "open")})
	// The feed has handled the transaction's first events.
	e.waitFor("the feed to handle the open transaction", func() bool {
		e.gw.feedMu.Lock()
		defer e.gw.feedMu.Unlock()
		for _, f := range e.gw.feeds {
			if f.marker != "" {
				f.mu.Lock()
				last := f.last
				f.mu.Unlock()
				return last == t2.seqs[1]
			}
		}
		return false
	})
	r := e.dial("/ws")
	r.subscribe(map[string]any{"id": "r", "table": "public.orders", "batch": "transaction", "from": t1.seqs[0] - 1})
	r.expectTx("r").check(t, t1, t1.mark, false, t1.seqs[0])
	e.events(t2, txRow{"orders", "update", order(2, "paid")})
	e.commit(t2)
	r.expectTx("r").check(t, t2, t2.mark, false, t2.seqs...)
	live.expectTx("live").check(t, t2, t2.mark, false, t2.seqs...)
	t3 := e.beginTx()
	e.events(t3, txRow{"orders", "create", order(4, "open")})
	e.commit(t3)
	r.expectTx("r").check(t, t3, t3.mark, false, t3.seqs[0])
	r.expectQuiet(200 * time.Millisecond)
}

// TestBatchWithoutMarkers: events whose transaction has no marker (stored
// before markers were turned on) are sent when the next transaction shows
// theirs ended; snapshot rows (xid 0) go as event frames.
func TestBatchWithoutMarkers(t *testing.T) {
	e := startGateway(t, withMarkers)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "b", "table": "public.orders", "batch": "transaction"})
	old := e.beginTx()
	e.events(old, txRow{"orders", "create", order(1, "open")}, txRow{"orders", "create", order(2, "open")})
	time.Sleep(200 * time.Millisecond)
	if got := c.sync(); len(got) != 0 {
		t.Fatalf("a frame before the transaction ended: %s", got[0].raw)
	}
	t2 := e.beginTx()
	e.events(t2, txRow{"orders", "create", order(3, "open")})
	c.expectTx("b").check(t, old, old.seqs[1], false, old.seqs...)
	e.commit(t2)
	c.expectTx("b").check(t, t2, t2.mark, false, t2.seqs[0])
	read := e.publish("read", order(9, "open"), "xid", "0")
	if f := c.expect("event", "b"); f.Seq != read {
		t.Fatalf("snapshot row sent as %s", f.raw)
	}
}

// TestBatchRefused: batch needs the markers, takes one value, and
// applies to table subscriptions.
func TestBatchRefused(t *testing.T) {
	off := startGateway(t, func(c *Config) { c.TxMarkersOff = "markers are off here" })
	c := off.dial("/ws")
	c.send(map[string]any{"type": "subscribe", "id": "b", "table": "public.orders", "batch": "transaction"})
	if f := c.expectError(CodeBatchUnavailable, "b"); f.Message != "markers are off here" {
		t.Errorf("batch_unavailable says %q", f.Message)
	}
	reason := off.dial("/ws/tables/public.orders?batch=transaction").expectClose(CloseBadRequest)
	if !strings.Contains(reason, "markers are off here") {
		t.Errorf("URL subscription closed with %q", reason)
	}

	on := startGateway(t, withMarkers)
	c = on.dial("/ws")
	for _, tc := range []struct {
		msg  map[string]any
		code ErrorCode
		says string
	}{
		{map[string]any{"table": "public.orders", "batch": "transactions"}, CodeInvalidMessage, `"batch"`},
		{map[string]any{"table": "public.orders", "batch": true}, CodeInvalidMessage, `"batch"`},
		{map[string]any{"topic": "t", "batch": "transaction"}, CodeInvalidSubscription, `table subscriptions only`},
	} {
		tc.msg["type"], tc.msg["id"] = "subscribe", "x"
		c.send(tc.msg)
		if f := c.expectError(tc.code, "x"); !strings.Contains(f.Message, tc.says) {
			t.Errorf("%v: error %q does not mention %s", tc.msg, f.Message, tc.says)
		}
	}
	reason = on.dial("/ws/tables/public.orders?batch=yes").expectClose(CloseBadRequest)
	if !strings.Contains(reason, `"batch"`) {
		t.Errorf("URL subscription with batch=yes closed with %q", reason)
	}
}

// feedLast returns the stream sequence the batched feed has handled.
func (e *testEnv) feedLast() uint64 {
	e.gw.feedMu.Lock()
	defer e.gw.feedMu.Unlock()
	for _, f := range e.gw.feeds {
		if f.marker != "" {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.last
		}
	}
	return 0
}

// TestBatchViewCatchingUp: a batched live view's rows are brought up to
// what the stream held of the table when they were read (here, part of a
// transaction: synced says more), then the events after synced come in
// transaction frames, enter and leave inside them, also when live
// transactions arrive while the history is replayed (held, markers among
// them, and decided after it): each transaction once, whole.
func TestBatchViewCatchingUp(t *testing.T) {
	e := startGateway(t, withMarkers)
	ctx := testCtx(t)
	// From now on the view's history runs from the row state's position.
	e.rowStateBehind(t, ctx, txRow{"orders", "create", order(1, "open")}, txRow{"orders", "create", order(2, "paid")})

	// The feed of batched subscriptions, inside a transaction.
	live := e.dial("/ws")
	live.subscribe(map[string]any{"id": "live", "table": "public.orders", "batch": "transaction"})
	t2 := e.beginTx()
	e.events(t2, txRow{"orders", "update", order(1, "paid")}, txRow{"orders", "create", order(3, "open")})
	e.waitFor("the feed to handle the open transaction", func() bool { return e.feedLast() == t2.seqs[1] })

	reached, release := make(chan struct{}), make(chan struct{})
	testHookReplayConsumer = func() {
		close(reached)
		<-release
	}
	t.Cleanup(func() { testHookReplayConsumer = nil })
	v := e.dial("/ws")
	v.subscribe(map[string]any{"id": "v", "table": "public.orders", "batch": "transaction", "snapshot": true,
		"where": map[string]any{"status": map[string]any{"eq": "paid"}}})
	rows := v.expect("rows", "v")
	if !strings.Contains(rows.raw, `"id":2`) || strings.Contains(rows.raw, `"id":1`) {
		t.Fatalf("rows %s, want row 2 alone", rows.raw)
	}
	<-reached
	e.events(t2, txRow{"orders", "create", order(5, "paid")})
	e.commit(t2)
	t3 := e.beginTx()
	e.events(t3, txRow{"orders", "update", order(2, "open")}, txRow{"orders", "create", order(4, "paid")}, txRow{"orders", "create", order(6, "open")})
	e.commit(t3)
	e.waitFor("the feed to handle the live transaction", func() bool { return e.feedLast() == t3.mark })
	close(release)

	// What the stream held of the table when the rows were read (t2's
	// first two events) is applied to them: row 1's update makes it
	// enter. The rows end inside t2: synced says more, at its second
	// event, and the rest of t2 follows, whole.
	if rows := v.expect("rows", "v"); rows.raw != `{"type":"rows","id":"v","rows":[{"key":{"id":1},"data":{"id":1,"status":"paid","total":"1.00"}}]}` {
		t.Fatalf("rows brought up to t2's first events: %s", rows.raw)
	}
	if s := v.expect("synced", "v"); !strings.Contains(s.raw, `"more":true`) || !strings.Contains(s.raw, fmt.Sprintf(`"seq":%d`, t2.seqs[1])) {
		t.Fatalf("synced inside t2 %s, want seq %d and more", s.raw, t2.seqs[1])
	}
	f := v.expectTx("v")
	f.check(t, t2, t2.mark, false, t2.seqs[2])
	f = v.expectTx("v")
	f.check(t, t3, t3.mark, false, t3.seqs[0], t3.seqs[1])
	if !strings.Contains(f.raw, `{"seq":`+fmt.Sprint(t3.seqs[0])+`,"view":"leave"`) {
		t.Fatalf("row 2's update is not a leave: %s", f.raw)
	}
	live.expectTx("live").check(t, t2, t2.mark, false, t2.seqs...)
	live.expectTx("live").check(t, t3, t3.mark, false, t3.seqs...)

	// Live: an update that makes a row enter, and a delete of a row the
	// view holds.
	t4 := e.beginTx()
	e.events(t4, txRow{"orders", "update", order(6, "paid")}, txRow{"orders", "delete", order(4, "paid")})
	e.commit(t4)
	f = v.expectTx("v")
	f.check(t, t4, t4.mark, false, t4.seqs...)
	if !strings.Contains(f.raw, `{"seq":`+fmt.Sprint(t4.seqs[0])+`,"view":"enter"`) {
		t.Fatalf("row 6's update is not an enter: %s", f.raw)
	}
}

// TestBatchViewSyncedInsideTransaction: the rows of a batched view that
// end inside a transaction (the row state had applied part of it) are
// followed by synced with "more", then the rest of that transaction, its
// last frame without "more" and with the marker's seq: with no events when
// the view takes none of them, so that a client always learns where the
// transaction ends. Rows that end with a transaction get synced without
// "more".
func TestBatchViewSyncedInsideTransaction(t *testing.T) {
	e := startGateway(t, withMarkers)
	ctx := testCtx(t)
	m := newRowState(t, e)
	stopState := runRowState(t, ctx, m)

	t1 := e.beginTx()
	e.events(t1, txRow{"orders", "create", order(1, "open")})
	e.commit(t1)
	t2 := e.beginTx()
	e.events(t2, txRow{"orders", "create", order(2, "open")}, txRow{"orders", "create", order(3, "paid")})
	e.waitFor("the row state to apply part of the second transaction", e.stateApplied(ctx, t2.seqs[1]))
	stopState()

	// Both views' rows read (and what the stream held then), the rest
	// of the transaction is stored: a row the filtered view does not take.
	var read atomic.Int32
	release := make(chan struct{})
	testHookSnapshotRead = func() {
		read.Add(1)
		<-release
	}
	t.Cleanup(func() { testHookSnapshotRead = nil })
	all, open := e.dial("/ws"), e.dial("/ws")
	all.subscribe(map[string]any{"id": "all", "table": "public.orders", "batch": "transaction", "snapshot": true})
	open.subscribe(map[string]any{"id": "open", "table": "public.orders", "batch": "transaction", "snapshot": true,
		"where": map[string]any{"status": map[string]any{"eq": "open"}}})
	for _, c := range []*client{all, open} {
		if rows := c.expect("rows", ""); strings.Count(rows.raw, `"key"`) != map[*client]int{all: 3, open: 2}[c] {
			t.Fatalf("rows %s", rows.raw)
		}
	}
	e.waitFor("both views to have read their rows", func() bool { return read.Load() == 2 })
	e.events(t2, txRow{"orders", "create", order(4, "paid")})
	e.commit(t2)
	testHookSnapshotRead = nil
	close(release)
	want := fmt.Sprintf(`{"type":"synced","id":%%q,"seq":%d,"more":true}`, t2.seqs[1])
	for _, c := range []*client{all, open} {
		if s := c.expect("synced", ""); s.raw != fmt.Sprintf(want, s.ID) {
			t.Fatalf("got %s, want %s", s.raw, fmt.Sprintf(want, s.ID))
		}
	}
	all.expectTx("all").check(t, t2, t2.mark, false, t2.seqs[2])
	open.expectTx("open").check(t, t2, t2.mark, false)

	t3 := e.beginTx()
	e.events(t3, txRow{"orders", "create", order(5, "open")})
	e.commit(t3)
	all.expectTx("all").check(t, t3, t3.mark, false, t3.seqs[0])
	open.expectTx("open").check(t, t3, t3.mark, false, t3.seqs[0])

	// Rows that end with a transaction: synced without more.
	runRowState(t, ctx, m)
	e.waitFor("the row state to apply every transaction", e.stateApplied(ctx, t3.seqs[0]))
	later := e.dial("/ws")
	later.subscribe(map[string]any{"id": "later", "table": "public.orders", "batch": "transaction", "snapshot": true})
	later.expect("rows", "later")
	if s := later.expect("synced", "later"); strings.Contains(s.raw, "more") {
		t.Fatalf("synced at a transaction's end says more: %s", s.raw)
	}
	t4 := e.beginTx()
	e.events(t4, txRow{"orders", "delete", order(1, "open")})
	e.commit(t4)
	later.expectTx("later").check(t, t4, t4.mark, false, t4.seqs[0])
	all.expectTx("all").check(t, t4, t4.mark, false, t4.seqs[0])
	open.expectTx("open").check(t, t4, t4.mark, false, t4.seqs[0])
}

// TestBatchResumeWhileTransactionIsStored: resumes that start inside a
// transaction the reader is still storing (open boundaries, whose fetches
// do not wait) each get the rest of it, every event once, in order, and
// its marker, however the stored messages fall between their fetches.
func TestBatchResumeWhileTransactionIsStored(t *testing.T) {
	const rows, resumes = 1500, 6
	e := startGateway(t, withMarkers)
	live := e.dial("/ws")
	live.subscribe(map[string]any{"id": "live", "table": "public.orders", "batch": "transaction"})
	tx := e.beginTx()
	e.events(tx, txRow{"orders", "create", order(1, "open")}, txRow{"orders", "create", order(2, "open")})
	from := tx.seqs[0]
	e.waitFor("the feed to handle the open transaction", func() bool { return e.feedLast() == tx.seqs[1] })

	stored := make(chan struct{})
	go func() {
		defer close(stored)
		for i := 3; i <= rows; i++ {
			e.events(tx, txRow{"orders", "create", order(i, "open")})
		}
		e.commit(tx)
	}()
	var clients []*client
	for i := range resumes {
		time.Sleep(time.Duration(i) * 15 * time.Millisecond)
		c := e.dial("/ws")
		c.subscribe(map[string]any{"id": "r", "table": "public.orders", "batch": "transaction", "from": from})
		clients = append(clients, c)
	}
	<-stored
	for i, c := range clients {
		var got []uint64
		for {
			f := c.expectTx("r")
			for _, ev := range f.Events {
				got = append(got, ev.Seq)
			}
			if !f.More {
				if f.Seq != tx.mark {
					t.Fatalf("resume %d: last frame seq %d, want the marker's %d", i, f.Seq, tx.mark)
				}
				break
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(tx.seqs[1:]) {
			t.Fatalf("resume %d: %d events after %d, want %d, each once and in order", i, len(got), from, len(tx.seqs)-1)
		}
	}
}

// newRowState makes a row state of testDB beside the gateway of e.
func newRowState(t *testing.T, e *testEnv) *rowstate.Maintainer {
	t.Helper()
	m, err := rowstate.New(rowstate.Config{DB: testDB, Logger: testLogger()}, e.nats.NC)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// stateApplied says, when called, whether the row state has applied the
// events up to seq.
func (e *testEnv) stateApplied(ctx context.Context, seq uint64) func() bool {
	return func() bool {
		rows, err := e.gw.rowsStream(ctx)
		if err != nil {
			return false
		}
		mk, err := rowstate.ReadDBMarker(ctx, rows, "tablecast", testDB)
		return err == nil && mk.Applied >= seq
	}
}

// runRowState runs m until the returned stop is called, or the test ends;
// stop returns once m has stopped.
func runRowState(t *testing.T, ctx context.Context, m *rowstate.Maintainer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// rowStateBehind commits one transaction of rows, waits for a row state
// of testDB to apply it, and stops that row state: what is committed
// after it is history that a view's rows, read from the row state, must be
// brought up to.
func (e *testEnv) rowStateBehind(t *testing.T, ctx context.Context, rows ...txRow) *testTx {
	t.Helper()
	stop := runRowState(t, ctx, newRowState(t, e))
	tx := e.beginTx()
	e.events(tx, rows...)
	e.commit(tx)
	e.waitFor("the row state to apply the first transaction", e.stateApplied(ctx, tx.mark))
	stop()
	return tx
}

// emptyBatch is a fetch that came back with nothing.
type emptyBatch struct{}

func (emptyBatch) Messages() <-chan jetstream.Msg {
	ch := make(chan jetstream.Msg)
	close(ch)
	return ch
}
func (emptyBatch) Error() error { return nil }

// TestBatchResumeFetchComesBackEmpty: a fetch of a resume's history that
// comes back empty while history is left (a loaded server answering after
// the fetch gave up) does not end the history there. Ended there, its last
// frame was cut inside a transaction with more, the rest of the history
// was never sent, and live delivery went on after the boundary with
// another transaction. What the server delivered to a fetch that had
// given up is lost to the resume: that fails it (internal), so that the
// client resumes again, rather than leave a gap.
func TestBatchResumeFetchComesBackEmpty(t *testing.T) {
	e := startGateway(t, withMarkers)
	live := e.dial("/ws")
	live.subscribe(map[string]any{"id": "live", "table": "public.orders", "batch": "transaction"})
	// Three events and a marker each: the first fetch (replayBatch
	// messages, from the second event of the first) ends inside one.
	var txs []*testTx
	for i := range 50 {
		tx := e.beginTx()
		e.events(tx, txRow{"orders", "create", order(3*i+1, "open")}, txRow{"orders", "create", order(3*i+2, "open")}, txRow{"orders", "create", order(3*i+3, "open")})
		e.commit(tx)
		txs = append(txs, tx)
	}
	e.waitFor("the feed to handle the transactions", func() bool { return e.feedLast() == txs[len(txs)-1].mark })
	from := txs[0].seqs[0]

	t.Cleanup(func() { testHookReplayFetch = nil })
	for _, lost := range []bool{false, true} {
		var fetches atomic.Int32
		testHookReplayFetch = func(cons jetstream.Consumer) jetstream.MessageBatch {
			if fetches.Add(1) != 2 {
				return nil
			}
			if lost {
				// Delivered after the fetch gave up: gone.
				b, err := cons.Fetch(replayBatch, jetstream.FetchMaxWait(time.Second))
				if err != nil {
					t.Error(err)
					return emptyBatch{}
				}
				for range b.Messages() {
				}
			}
			return emptyBatch{}
		}
		c := e.dial("/ws")
		c.subscribe(map[string]any{"id": "r", "table": "public.orders", "batch": "transaction", "from": from})
		f := c.expectTx("r")
		f.check(t, txs[0], txs[0].mark, false, txs[0].seqs[1:]...)
		next := 1
		for next < len(txs) {
			f := c.read(10 * time.Second)
			if lost && f.Type == "error" {
				if f.Code != string(CodeInternal) || f.ID != "r" {
					t.Fatalf("lost deliveries: got %s, want internal for r", f.raw)
				}
				c.expect("unsubscribed", "r")
				break
			}
			if f.Type != "transaction" {
				t.Fatalf("got %s, want transaction %d of %d", f.raw, next+1, len(txs))
			}
			var tf txFrame
			if err := json.Unmarshal([]byte(f.raw), &tf); err != nil {
				t.Fatal(err)
			}
			tf.raw = f.raw
			tf.check(t, txs[next], txs[next].mark, false, txs[next].seqs...)
			next++
		}
		if lost && next == len(txs) {
			t.Fatalf("every transaction came although a fetch's deliveries were lost")
		}
		if !lost && fetches.Load() < 3 {
			t.Fatalf("%d fetches: the history ended at the empty one", fetches.Load())
		}
		testHookReplayFetch = nil
		if !lost {
			// Live delivery goes on after the history.
			tx := e.beginTx()
			e.events(tx, txRow{"orders", "create", order(1000, "open")})
			e.commit(tx)
			c.expectTx("r").check(t, tx, tx.mark, false, tx.seqs...)
		}
		_ = c.ws.Close(websocket.StatusNormalClosure, "")
	}
}

// TestViewRowsRewrittenWhileRead: rows the row state rewrites while a
// view's rows are read (their messages before the read's end removed
// before it reached them) are not read at all. Shown as read, the view
// would hold the first transaction without some of its rows: neither it
// nor the second, a part of a transaction. The history up to where the
// stream stood when the rows were read is applied to them before synced:
// synced comes at the second transaction's end (a batched view's at its
// marker), and the rows are exactly the table then. So for views with and
// without batches.
func TestViewRowsRewrittenWhileRead(t *testing.T) {
	for _, batched := range []bool{true, false} {
		t.Run(fmt.Sprintf("batched=%t", batched), func(t *testing.T) { testViewRowsRewrittenWhileRead(t, batched) })
	}
}

func testViewRowsRewrittenWhileRead(t *testing.T, batched bool) {
	e := startGateway(t, withMarkers)
	ctx := testCtx(t)
	m := newRowState(t, e)
	runRowState(t, ctx, m)
	// More rows than a scan asks for at once, so that the last ones are
	// still on the server when they are rewritten.
	const n = 3 * rowstate.ScanBatch
	want := map[string]string{} // the view after t2: key → data
	t1 := e.beginTx()
	for id := 1; id <= n; id++ {
		e.events(t1, txRow{"orders", "create", order(id, "paid")})
	}
	e.commit(t1)
	e.waitFor("the row state to apply the first transaction", e.stateApplied(ctx, t1.mark))

	// t2, applied to the row state once the view has read its first
	// row: the last third of the rows leave, the one before changes, one
	// row is deleted.
	t2 := e.beginTx()
	var once sync.Once
	testHookSnapshotRow = func() {
		once.Do(func() {
			e.events(t2, txRow{"orders", "delete", order(1, "paid")})
			for id := n/3 + 1; id <= n; id++ {
				if id > 2*n/3 {
					e.events(t2, txRow{"orders", "update", order(id, "open")})
				} else {
					e.events(t2, txRow{"orders", "update", map[string]any{"id": id, "status": "paid", "total": "2.00"}})
				}
			}
			e.commit(t2)
			e.waitFor("the row state to apply the second transaction", e.stateApplied(ctx, t2.mark))
		})
	}
	t.Cleanup(func() { testHookSnapshotRow = nil })
	for id := 2; id <= 2*n/3; id++ {
		total := "1.00"
		if id > n/3 {
			total = "2.00"
		}
		want[fmt.Sprintf(`{"id":%d}`, id)] = fmt.Sprintf(`{"id":%d,"status":"paid","total":%q}`, id, total)
	}

	v := e.dial("/ws")
	sub := map[string]any{"id": "v", "table": "public.orders", "snapshot": true,
		"where": map[string]any{"status": map[string]any{"eq": "paid"}}}
	if batched {
		sub["batch"] = "transaction"
	}
	v.subscribe(sub)
	got := map[string]string{}
	removed := 0
	for {
		f := v.read(30 * time.Second)
		if f.Type == "synced" {
			end := t2.seqs[len(t2.seqs)-1] // an unbatched view reads no markers
			if batched {
				end = t2.mark
			}
			if f.Seq != end || strings.Contains(f.raw, "more") {
				t.Fatalf("synced %s, want the second transaction's end %d (the first's marker: %d), without more", f.raw, end, t1.mark)
			}
			break
		}
		if f.Type != "rows" {
			t.Fatalf("got %s before synced", f.raw)
		}
		var rf struct {
			Rows []struct {
				Key     json.RawMessage `json:"key"`
				Data    json.RawMessage `json:"data"`
				Removed bool            `json:"removed"`
			} `json:"rows"`
		}
		if err := json.Unmarshal([]byte(f.raw), &rf); err != nil {
			t.Fatal(err)
		}
		for _, r := range rf.Rows {
			if r.Removed {
				delete(got, string(r.Key))
				removed++
				continue
			}
			got[string(r.Key)] = string(r.Data)
		}
	}
	if len(got) != len(want) {
		t.Errorf("synced with %d rows, want %d", len(got), len(want))
	}
	for k, d := range want {
		if got[k] != d {
			t.Errorf("row %s at synced: %q, want %q", k, got[k], d)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("row %s at synced, which the table no longer matches", k)
		}
	}
	if removed == 0 {
		t.Errorf("no row taken out: the rows were not read before the second transaction was applied")
	}

	// The events after synced go on as transactions.
	t3 := e.beginTx()
	e.events(t3, txRow{"orders", "update", order(n, "paid")})
	e.commit(t3)
	if !batched {
		if f := v.expect("event", "v"); f.Seq != t3.seqs[0] || !strings.Contains(f.raw, `"view":"enter"`) {
			t.Fatalf("row %d's update: %s, want an enter with seq %d", n, f.raw, t3.seqs[0])
		}
		return
	}
	f := v.expectTx("v")
	f.check(t, t3, t3.mark, false, t3.seqs[0])
	if !strings.Contains(f.raw, `"view":"enter"`) {
		t.Fatalf("row %d's update is not an enter: %s", n, f.raw)
	}
}

// TestBatchViewTruncateWhileRead: a truncate among what the stream held
// when a batched view's rows were read cannot be told as rows entries:
// the rows are brought up to the message before it, synced says so, and
// the truncate follows in its transaction's frame, emptying the view.
func TestBatchViewTruncateWhileRead(t *testing.T) {
	e := startGateway(t, withMarkers)
	ctx := testCtx(t)
	e.rowStateBehind(t, ctx, txRow{"orders", "create", order(1, "paid")}, txRow{"orders", "create", order(2, "open")})
	t2 := e.beginTx()
	e.events(t2, txRow{"orders", "update", order(2, "paid")})
	e.commit(t2)
	t3 := e.beginTx()
	e.events(t3, txRow{"orders", "truncate", map[string]any{}}, txRow{"orders", "create", order(3, "paid")})
	e.commit(t3)

	v := e.dial("/ws")
	v.subscribe(map[string]any{"id": "v", "table": "public.orders", "batch": "transaction", "snapshot": true,
		"where": map[string]any{"status": map[string]any{"eq": "paid"}}})
	if rows := v.expect("rows", "v"); !strings.Contains(rows.raw, `"id":1`) || strings.Contains(rows.raw, `"id":2`) {
		t.Fatalf("rows %s, want row 1 alone", rows.raw)
	}
	// t2, stored when the rows were read: row 2 enters, as rows.
	if rows := v.expect("rows", "v"); rows.raw != `{"type":"rows","id":"v","rows":[{"key":{"id":2},"data":{"id":2,"status":"paid","total":"1.00"}}]}` {
		t.Fatalf("rows brought up to t2: %s", rows.raw)
	}
	if s := v.expect("synced", "v"); s.Seq != t2.mark || strings.Contains(s.raw, "more") {
		t.Fatalf("synced %s, want t2's marker %d, before the truncate, without more", s.raw, t2.mark)
	}
	f := v.expectTx("v")
	f.check(t, t3, t3.mark, false, t3.seqs...)
	if !strings.Contains(f.raw, `"op":"truncate"`) {
		t.Fatalf("t3's frame without its truncate: %s", f.raw)
	}
}

// TestBatchViewSyncedBeyondFeed: a batched view whose rows end inside a
// transaction at a position live delivery has not reached (the gateway's
// feed behind the stream) has a history that ends there, before the
// transaction's marker. Its synced still says more, and live delivery
// ends the transaction: with its rest, or with an empty last frame for a
// view that takes none of it.
func TestBatchViewSyncedBeyondFeed(t *testing.T) {
	var holdAfter atomic.Uint64 // the feed handles nothing after it (0: all)
	release := make(chan struct{})
	testHookFeedHandle = func(seq uint64) {
		if h := holdAfter.Load(); h != 0 && seq > h {
			<-release
		}
	}
	t.Cleanup(func() { testHookFeedHandle = nil }) // after the gateway stops
	e := startGateway(t, withMarkers)
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	ctx := testCtx(t)
	m := newRowState(t, e)
	runRowState(t, ctx, m)

	// A feed of the table, which then stops after t1.
	live := e.dial("/ws")
	live.subscribe(map[string]any{"id": "live", "table": "public.orders", "batch": "transaction"})
	t1 := e.beginTx()
	e.events(t1, txRow{"orders", "create", order(1, "open")})
	e.commit(t1)
	live.expectTx("live").check(t, t1, t1.mark, false, t1.seqs...)
	holdAfter.Store(t1.mark)
	t2 := e.beginTx()
	e.events(t2, txRow{"orders", "create", order(2, "open")}, txRow{"orders", "create", order(3, "paid")})
	e.waitFor("the row state to apply t2's first events", e.stateApplied(ctx, t2.seqs[1]))

	all, open := e.dial("/ws"), e.dial("/ws")
	all.subscribe(map[string]any{"id": "all", "table": "public.orders", "batch": "transaction", "snapshot": true})
	open.subscribe(map[string]any{"id": "open", "table": "public.orders", "batch": "transaction", "snapshot": true,
		"where": map[string]any{"status": map[string]any{"eq": "open"}}})
	want := fmt.Sprintf(`{"type":"synced","id":%%q,"seq":%d,"more":true}`, t2.seqs[1])
	for _, c := range []*client{all, open} {
		if rows := c.expect("rows", ""); strings.Count(rows.raw, `"key"`) != map[*client]int{all: 3, open: 2}[c] {
			t.Fatalf("rows %s", rows.raw)
		}
		if s := c.expect("synced", ""); s.raw != fmt.Sprintf(want, s.ID) {
			t.Fatalf("got %s, want %s", s.raw, fmt.Sprintf(want, s.ID))
		}
	}
	// The rest of t2, then t3, reach the feed.
	e.events(t2, txRow{"orders", "create", order(4, "paid")})
	e.commit(t2)
	t3 := e.beginTx()
	e.events(t3, txRow{"orders", "create", order(5, "open")})
	e.commit(t3)
	free()
	all.expectTx("all").check(t, t2, t2.mark, false, t2.seqs[2])
	open.expectTx("open").check(t, t2, t2.mark, false)
	all.expectTx("all").check(t, t3, t3.mark, false, t3.seqs[0])
	open.expectTx("open").check(t, t3, t3.mark, false, t3.seqs[0])
}

// TestViewHistoryDroppedWhileBehind: the events a view's rows must be
// brought up to (the row state behind the stream) are gone from the
// stream, dropped by its limits. Never a synced with the rows as they
// were read: the view ends with history_unavailable, to subscribe again.
func TestViewHistoryDroppedWhileBehind(t *testing.T) {
	for _, batched := range []bool{true, false} {
		t.Run(fmt.Sprintf("batched=%t", batched), func(t *testing.T) {
			e := startGateway(t, withMarkers)
			ctx := testCtx(t)
			e.rowStateBehind(t, ctx, txRow{"orders", "create", order(1, "paid")})
			t2 := e.beginTx()
			e.events(t2, txRow{"orders", "create", order(2, "paid")}, txRow{"orders", "create", order(3, "paid")})
			e.commit(t2)
			t3 := e.beginTx()
			e.events(t3, txRow{"orders", "update", map[string]any{"id": 2, "status": "paid", "total": "2.00"}})
			e.commit(t3)
			str, err := e.nats.JS.Stream(ctx, "TABLECAST")
			if err != nil {
				t.Fatal(err)
			}
			if err := str.Purge(ctx, jetstream.WithPurgeSequence(t3.seqs[0])); err != nil {
				t.Fatal(err)
			}

			v := e.dial("/ws")
			sub := map[string]any{"id": "v", "table": "public.orders", "snapshot": true}
			if batched {
				sub["batch"] = "transaction"
			}
			v.subscribe(sub)
			if rows := v.expect("rows", "v"); !strings.Contains(rows.raw, `"id":1`) || strings.Contains(rows.raw, `"id":2`) {
				t.Fatalf("rows %s, want row 1 alone (the row state's)", rows.raw)
			}
			v.expectError(CodeHistoryUnavailable, "v")
		})
	}
}

// TestBatchViewKeyChangeInOneFrame: a key change's leave and enter share
// the update's seq, so a batched view's frame cut between them (the enter
// past TABLECAST_WS_BATCH_BYTES) ended at that seq, and so did the next
// one when another event of the transaction followed the enter: a client,
// which takes a frame at a seq it has seen as one it has applied, dropped
// the enter, and its view lost the row. The two go in one frame.
func TestBatchViewKeyChangeInOneFrame(t *testing.T) {
	s := &sub{id: "v", snapshot: true, batched: true, view: map[uint64]struct{}{viewKey([]byte(`{"id":1}`)): {}}}
	tx := `"lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00Z"`
	pad := strings.Repeat("x", 300)
	events := []struct {
		seq uint64
		op  schema.OpSet
		env string
	}{
		{10, schema.BitCreate, `{"op":"create",` + tx + `,"key":{"id":5},"data":{"id":5}}`},
		{11, schema.BitUpdate, `{"op":"update",` + tx + `,"key":{"id":1},"data":{"id":2,"pad":"` + pad + `"},"old":{"id":1}}`},
		{12, schema.BitCreate, `{"op":"create",` + tx + `,"key":{"id":6},"data":{"id":6,"pad":"` + pad + `"}}`},
	}
	lim := batchLimits{events: 1000, bytes: 400}
	var b txBatch
	var out [][]byte
	for _, e := range events {
		out = s.viewBatchFrames(out, &b, lim, e.seq, e.op, []byte(e.env))
	}
	out = append(out, b.end(s.id, 13, txMeta{lsn: []byte(`"0/16B3748"`)}))
	var prev uint64
	for _, f := range out {
		var tf struct {
			Seq    uint64 `json:"seq"`
			Events []struct {
				Seq  uint64 `json:"seq"`
				View string `json:"view"`
			} `json:"events"`
		}
		if err := json.Unmarshal(frameText(f), &tf); err != nil {
			t.Fatalf("frame %q: %v", frameText(f), err)
		}
		if tf.Seq <= prev {
			t.Errorf("frame at seq %d after one at %d: a client drops it (%s)", tf.Seq, prev, frameText(f))
		}
		prev = tf.Seq
		for k, ev := range tf.Events {
			if ev.View == "leave" && (k+1 == len(tf.Events) || tf.Events[k+1].View != "enter") {
				t.Errorf("the key change's leave ends a frame without its enter: %s", frameText(f))
			}
		}
	}
}

// frameText is the payload of an unmasked frame the gateway built.
func frameText(f []byte) []byte {
	switch n := f[1] & 0x7F; n {
	case 126:
		return f[4:]
	case 127:
		return f[10:]
	default:
		return f[2:]
	}
}

// TestViewFoldKeepsUnchanged: an update among the events folded into a
// view's rows before synced that leaves a TOASTed value unchanged lacks it
// in data; its rows entry says so ("unchanged"), as the event would, so
// that a client keeps the value of the row it holds rather than a row
// without the column.
func TestViewFoldKeepsUnchanged(t *testing.T) {
	e := startGateway(t, withMarkers)
	ctx := testCtx(t)
	e.rowStateBehind(t, ctx, txRow{"orders", "create", order(1, "open")})
	tx := e.beginTx()
	id := fmt.Sprintf("%016X-0001", tx.lsn)
	env := fmt.Sprintf(`{"id":%q,"op":"update","db":%q,"schema":"public","table":"orders","lsn":%q,"xid":%d,"commit_time":%q,"key":{"id":1},"data":{"id":1,"status":"paid"},"unchanged":["total"]}`,
		id, testDB, lsnText(tx.lsn), tx.xid, tx.at)
	tx.seqs = append(tx.seqs, e.publishRaw(stream.ChangeSubject("tablecast", testDB, "public", "orders", schema.OpUpdate), id, []byte(env)))
	e.commit(tx)

	v := e.dial("/ws")
	v.subscribe(map[string]any{"id": "v", "table": "public.orders", "snapshot": true})
	if rows := v.expect("rows", "v"); !strings.Contains(rows.raw, `"total":"1.00"`) {
		t.Fatalf("rows %s, want row 1 whole", rows.raw)
	}
	if rows := v.expect("rows", "v"); rows.raw != `{"type":"rows","id":"v","rows":[{"key":{"id":1},"data":{"id":1,"status":"paid"},"unchanged":["total"]}]}` {
		t.Fatalf("rows brought up to date %s, want the update with its unchanged column named", rows.raw)
	}
	v.expect("synced", "v")
}

// viewHeldBytes is what the batched feed holds for its views catching up:
// the bytes counted and the events (markers among them) held.
func (e *testEnv) viewHeldBytes() (bytes, events int) {
	e.gw.feedMu.Lock()
	defer e.gw.feedMu.Unlock()
	for _, f := range e.gw.feeds {
		if f.marker == "" {
			continue
		}
		f.mu.Lock()
		for _, s := range f.scan {
			if s.snapshot {
				bytes += s.heldBytes
				events += len(s.heldEv)
			}
		}
		f.mu.Unlock()
	}
	return bytes, events
}

// TestBatchViewHeldMarkersBounded: a batched view catching up holds the
// database's transaction markers among its live events. Transactions of
// the database's other tables bring markers and nothing else, and those
// held must be bounded like the view's held events are (the send queue's
// bytes, beyond which the client is closed with 4008 and reads the view
// again), never growing with the database's transactions while the
// view's history is replayed.
func TestBatchViewHeldMarkersBounded(t *testing.T) {
	const queue = 16 << 10
	e := startGateway(t, func(c *Config) { c.TxMarkers, c.SendQueueBytes = true, queue })
	e.putShape(itemsShape())
	ctx := testCtx(t)
	e.rowStateBehind(t, ctx, txRow{"orders", "create", order(1, "paid")})
	// History after the rows: the view replays it.
	t2 := e.beginTx()
	e.events(t2, txRow{"orders", "create", order(2, "paid")})
	e.commit(t2)

	// Keeps the batched feed while the view is closed.
	live := e.dial("/ws")
	live.subscribe(map[string]any{"id": "live", "table": "public.orders", "batch": "transaction"})
	reached, release := make(chan struct{}), make(chan struct{})
	testHookReplayConsumer = func() {
		close(reached)
		<-release
	}
	t.Cleanup(func() { testHookReplayConsumer = nil })
	v := e.dial("/ws")
	v.subscribe(map[string]any{"id": "v", "table": "public.orders", "batch": "transaction", "snapshot": true})
	v.expect("rows", "v")
	<-reached
	// Transactions of items only: the view's feed sees their markers.
	var last uint64
	for i := range 400 {
		tx := e.beginTx()
		e.events(tx, txRow{"items", "create", order(i, "x")})
		e.commit(tx)
		last = tx.mark
	}
	e.waitFor("the feed to handle the markers", func() bool { return e.feedLast() == last })
	held, n := e.viewHeldBytes()
	close(release)
	if held > queue {
		t.Fatalf("the view catching up holds %d markers, %d bytes, over the send queue's %d", n, held, queue)
	}
	v.expectClose(CloseSlowConsumer)
}
