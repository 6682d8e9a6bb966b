package wsgate

import (
	"context"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// Tests of messages the stream drops before the gateway sends them
// (retention.go): a resume or a live feed overtaken by the stream's limits
// answers history_unavailable, never a gap; a quiet table in a stream that
// rolls over raises no false alarm.

// limitStream gives the stream a size limit: beyond it, JetStream drops the
// oldest messages.
func (e *testEnv) limitStream(maxBytes int64) {
	e.t.Helper()
	if _, err := stream.EnsureStream(testCtx(e.t), e.nats.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: "tablecast",
		DuplicateWindow: time.Minute, MaxBytes: maxBytes}); err != nil {
		e.t.Fatal(err)
	}
}

// streamState returns the stream's first and last sequences.
func (e *testEnv) streamState() (first, last uint64) {
	e.t.Helper()
	str, err := e.nats.JS.Stream(testCtx(e.t), "TABLECAST")
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := str.Info(testCtx(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.FirstSeq, info.State.LastSeq
}

// roll publishes events of another table (public.items) in messages of
// 4 KiB until done reports true, checked after every MiB: the stream drops
// its oldest messages to make room for them.
func (e *testEnv) roll(done func() bool) {
	e.t.Helper()
	subject := stream.ChangeSubject("tablecast", testDB, "public", "items", "create")
	body := []byte(`{"op":"create","data":{"pad":"` + strings.Repeat("y", 4000) + `"}}`)
	for !done() {
		futures := make([]jetstream.PubAckFuture, 0, 256)
		for range 256 {
			f, err := e.nats.JS.PublishMsgAsync(&nats.Msg{Subject: subject, Data: body})
			if err != nil {
				e.t.Fatal(err)
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				e.t.Fatal(err)
			case <-time.After(30 * time.Second):
				e.t.Fatal("publish not acked within 30s")
			}
		}
	}
}

// rollPast rolls the stream until its first sequence is past seq.
func (e *testEnv) rollPast(seq uint64) {
	e.t.Helper()
	e.roll(func() bool { first, _ := e.streamState(); return first > seq })
}

// dialSmallBuffer dials with a 64 KiB socket receive buffer, so that a
// client that stops reading holds back the gateway after a few MiB (what
// the gateway's socket buffers) rather than tens (what loopback autotuning
// would take).
func (e *testEnv) dialSmallBuffer(path string) *client {
	e.t.Helper()
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { setRcvBuf(fd, 32<<10) })
	}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+e.addr+path, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		e.t.Fatalf("dial %s: %v", path, err)
	}
	ws.SetReadLimit(64 << 20)
	e.t.Cleanup(func() { _ = ws.CloseNow() })
	return &client{t: e.t, ws: ws}
}

// readInOrder reads c's frames for subscription id, each event's seq the
// next of want (from index next), until want is exhausted or the
// subscription ends with history_unavailable and unsubscribed. It returns
// the index of the next event not received, and whether the history was
// reported unavailable. An event out of turn, a gap, fails the test.
func readInOrder(c *client, id string, want []uint64, next int) (int, bool) {
	c.t.Helper()
	for next < len(want) {
		f := c.read(30 * time.Second)
		switch {
		case f.Type == "event" && f.ID == id:
			if f.Seq != want[next] {
				c.t.Fatalf("gap: event seq %d after %d; want %d (%d events skipped)", f.Seq, want[max(next, 1)-1], want[next], countBelow(want[next:], f.Seq))
			}
			next++
		case f.Type == "error" && f.Code == string(CodeHistoryUnavailable) && f.ID == id:
			if !strings.Contains(f.Message, "discarded") {
				c.t.Fatalf("history_unavailable without saying why: %s", f.raw)
			}
			c.expect("unsubscribed", id)
			return next, true
		default:
			c.t.Fatalf("unexpected frame %s", f.raw)
		}
	}
	return next, false
}

func countBelow(seqs []uint64, seq uint64) int {
	n := 0
	for _, s := range seqs {
		if s < seq {
			n++
		}
	}
	return n
}

// TestResumeNeverSkipsWhileStreamRollsOver: a client resumes from the start
// of 12,000 events, reads 500 and stops reading, so that the gateway's
// resume is held in the middle of the history; meanwhile writes to another
// table make the stream drop the oldest 10,000 events, which the resume
// has not read yet. The client then gets every event after from with no
// gap, or history_unavailable then unsubscribed; never a skip.
func TestResumeNeverSkipsWhileStreamRollsOver(t *testing.T) {
	e := startGateway(t, func(c *Config) {
		c.SendQueueBytes = 64 << 10
		c.WriteTimeout = time.Minute // the pause must not cost the client its connection
	})
	e.limitStream(24 << 20)
	seqs := e.mustPublishAsync(12000, 1000) // 12.5 MiB
	c := e.dialSmallBuffer("/ws")
	c.subscribe(map[string]any{"id": "r", "table": "public.orders", "from": seqs[0] - 1})
	next, _ := readInOrder(c, "r", seqs[:500], 0)

	// The client reads nothing now: a few MiB wait in socket buffers, the
	// resume waits for room, and the stream drops what it has not read.
	e.rollPast(seqs[10000])

	next, gone := readInOrder(c, "r", seqs, next)
	t.Logf("resume: %d of %d events, then history_unavailable=%v", next, len(seqs), gone)
	if !gone && next != len(seqs) {
		t.Fatalf("%d of %d events and no history_unavailable", next, len(seqs))
	}
	if e.metric(e.gw.met.historyLost) != 1 && gone {
		t.Fatalf("history_discarded_total %v, want 1", e.metric(e.gw.met.historyLost))
	}
	// The connection stays usable.
	c.subscribe(map[string]any{"id": "again", "table": "public.orders"})
}

// TestFeedBehindRetentionEndsSubscriptions: a table's feed stops handling
// events (its goroutine stalled, its inbox full) while 2,000 are published
// and the stream then drops most of them before the feed got them. Its
// subscribers get the events the feed had, then history_unavailable and
// unsubscribed; never the events after the hole as if nothing was missing.
func TestFeedBehindRetentionEndsSubscriptions(t *testing.T) {
	e := startGateway(t, func(c *Config) { c.feedInboxBytes = 16 << 10 })
	e.limitStream(1 << 20)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "live", "table": "public.orders"})
	other := e.dial("/ws")
	other.subscribe(map[string]any{"id": "paid", "table": "public.orders", "where": map[string]any{"status": map[string]any{"eq": "open"}}})
	first := e.publish("create", map[string]any{"id": 1, "status": "open"})
	c.expect("event", "live")
	other.expect("event", "paid")

	e.gw.feedMu.Lock()
	f := e.gw.feeds["t\x00"+stream.TableSubjects("tablecast", testDB, "public", "orders")]
	e.gw.feedMu.Unlock()
	// The feed's goroutine waits; its inbox fills, then the consumer's
	// callback waits, and the consumer delivers what its pull requests
	// allow: the rest waits in the stream.
	f.mu.Lock()
	locked := true
	defer func() {
		if locked {
			f.mu.Unlock()
		}
	}()
	seqs := e.mustPublishAsync(2000, 100)
	e.rollPast(seqs[1500])
	after := e.mustPublishAsync(10, 0)
	f.mu.Unlock()
	locked = false

	want := append(append([]uint64{}, seqs...), after...)
	for _, cl := range []*client{c, other} {
		id := map[*client]string{c: "live", other: "paid"}[cl]
		n, gone := readInOrder(cl, id, want, 0)
		if !gone {
			t.Fatalf("%s: all %d events, yet the stream dropped some before the feed had them", id, n)
		}
		t.Logf("%s: %d events, then history_unavailable", id, n)
		cl.sync()
	}
	if got := e.metric(e.gw.met.subscriptions); got != 0 {
		t.Fatalf("%v subscriptions left", got)
	}
	// A new subscription starts afresh and gets what follows.
	c.subscribe(map[string]any{"id": "again", "table": "public.orders"})
	seq := e.publish("create", map[string]any{"id": 2})
	if f := c.expect("event", "again"); f.Seq != seq || f.Seq <= first {
		t.Fatalf("got seq %d, want %d", f.Seq, seq)
	}
}

// TestQuietTableOnRollingStream: a table with no changes while the stream
// rolls over three times (other tables' writes) keeps its subscribers, with
// no false alarm, and they get its next change.
func TestQuietTableOnRollingStream(t *testing.T) {
	e := startGateway(t, nil)
	e.limitStream(1 << 20)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "quiet", "table": "public.orders"})
	s1 := e.publish("create", map[string]any{"id": 1})
	c.expect("event", "quiet")
	_, last := e.streamState()
	e.rollPast(last + 3*(1<<20)/4096) // three times what the stream holds
	s2 := e.publish("create", map[string]any{"id": 2})
	if f := c.expect("event", "quiet"); f.Seq != s2 {
		t.Fatalf("got seq %d, want %d", f.Seq, s2)
	}
	if got := c.sync(); len(got) != 0 {
		t.Fatalf("unexpected frames %v", got)
	}
	if first, _ := e.streamState(); first <= s1 {
		t.Fatalf("the stream did not roll over: first seq %d, the table's event %d", first, s1)
	}
}

// TestQuietTableResumeNoFalseAlarm: a resume whose position the stream
// drops while it is being replayed, when the table had nothing in the
// dropped part (other tables' messages only), gets the table's next event
// and goes live: the resume counts what it was owed, rather than assume
// the worst of the jump.
func TestQuietTableResumeNoFalseAlarm(t *testing.T) {
	e := startGateway(t, nil)
	s0 := e.publish("create", map[string]any{"id": 1})
	subject := stream.ChangeSubject("tablecast", testDB, "public", "items", "create")
	for range 100 {
		e.publishRaw(subject, "", []byte(`{}`))
	}
	s1 := e.publish("create", map[string]any{"id": 2})
	str, err := e.nats.JS.Stream(testCtx(t), "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	cfg := str.CachedInfo().Config
	cfg.MaxMsgs = 102 // what it holds: one more message drops the oldest
	if _, err := e.nats.JS.UpdateStream(testCtx(t), cfg); err != nil {
		t.Fatal(err)
	}
	testHookReplayConsumer = func() {
		// The resume's consumer is at s0+1; drop s0 and the 49 other
		// messages after it before the consumer reads anything.
		for range 50 {
			e.publishRaw(subject, "", []byte(`{}`))
		}
	}
	defer func() { testHookReplayConsumer = nil }()
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "r", "table": "public.orders", "from": s0})
	if f := c.expect("event", "r"); f.Seq != s1 {
		t.Fatalf("got seq %d, want %d", f.Seq, s1)
	}
	if first, _ := e.streamState(); first <= s0+1 {
		t.Fatalf("the stream did not drop the resume's position: first seq %d, from %d", first, s0)
	}
	s2 := e.publish("create", map[string]any{"id": 3})
	if f := c.expect("event", "r"); f.Seq != s2 {
		t.Fatalf("live event seq %d, want %d", f.Seq, s2)
	}
	if got := c.sync(); len(got) != 0 {
		t.Fatalf("unexpected frames %v", got)
	}
}

// TestFeedStallAfterCaughtUp: the feed's consumer delivers event after
// event, each the newest (NumPending 0), while the feed's goroutine and
// then its inbox are stuck, until the consumer's pull requests are used
// up; the next events wait in the stream, which drops them. The feed must
// not take the last NumPending 0 for "caught up": it was given before the
// stall ended. Its subscriber gets history_unavailable, not a gap.
func TestFeedStallAfterCaughtUp(t *testing.T) {
	e := startGateway(t, func(c *Config) { c.feedInboxBytes = 1 })
	e.limitStream(1 << 20)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "live", "table": "public.orders"})
	first := e.publish("create", map[string]any{"id": 1})
	c.expect("event", "live")

	e.gw.feedMu.Lock()
	f := e.gw.feeds["t\x00"+stream.TableSubjects("tablecast", testDB, "public", "orders")]
	e.gw.feedMu.Unlock()
	queued := func() int { f.in.mu.Lock(); defer f.in.mu.Unlock(); return len(f.in.q) }
	f.mu.Lock()
	locked := true
	defer func() {
		if locked {
			f.mu.Unlock()
		}
	}()
	want := []uint64{e.publish("create", map[string]any{"id": 2})} // taken by the feed's goroutine, which waits
	e.waitFor("the goroutine stuck", func() bool { return queued() == 0 })
	want = append(want, e.publish("create", map[string]any{"id": 3})) // in the inbox, now full
	e.waitFor("the inbox full", func() bool { return queued() == 1 })
	want = append(want, e.publish("create", map[string]any{"id": 4})) // the callback waits with it
	e.waitFor("the callback stuck", func() bool { f.in.mu.Lock(); defer f.in.mu.Unlock(); return f.in.stall.consumer != "" })

	// One event at a time, each delivered before the next is stored, until
	// the pull requests run out.
	ctx := testCtx(t)
	var held uint64
	for i := 0; held == 0; i++ {
		if i > 5000 {
			t.Fatal("the consumer's pull requests never ran out")
		}
		seq := e.publish("create", map[string]any{"id": 10 + i})
		e.waitFor("delivered or held", func() bool {
			ci, err := f.cons.Info(ctx)
			switch {
			case err != nil:
				return false
			case ci.Delivered.Stream >= seq:
				want = append(want, seq)
				return true
			case ci.NumWaiting == 0 && ci.NumPending > 0:
				held = seq
				return true
			}
			return false
		})
	}
	e.mustPublishAsync(200, 100)
	e.rollPast(held + 200)
	after := e.publish("create", map[string]any{"id": 5})
	f.mu.Unlock()
	locked = false

	n, gone := readInOrder(c, "live", append(want, held, after), 0)
	t.Logf("%d events (%d delivered while stuck, first seq %d), then history_unavailable=%v", n, len(want), first, gone)
	if !gone || n != len(want) {
		t.Fatalf("%d events, history_unavailable %v; want %d events then history_unavailable", n, gone, len(want))
	}
}
