package wsgate

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/stream"
)

// publishClaimed publishes an event of public.orders the way the reader
// publishes one too large for a NATS message: the full event as an object
// of the payload bucket (unless stored is false: an object that expired),
// and in the stream its envelope without data plus the claim. It returns
// the stream sequence, the full event and the message as stored.
func (e *testEnv) publishClaimed(op string, row map[string]any, stored bool) (seq uint64, full, stub []byte) {
	e.t.Helper()
	n := e.ids.Add(1)
	id := fmt.Sprintf("%016X-%04X", n, 1)
	env := map[string]any{"id": id, "op": op, "db": testDB, "schema": "public", "table": "orders",
		"lsn": "0/1", "xid": n, "commit_time": "2026-11-22T07:00:00.123456Z", "key": map[string]any{"id": row["id"]}}
	env["data"] = row
	full, _ = json.Marshal(env)
	delete(env, "data")
	name := stream.PayloadObjectName(testDB, id)
	env["claim"] = stream.Claim{Bucket: stream.DefaultPayloadBucket, Object: name, Size: int64(len(full))}
	stub, _ = json.Marshal(env)
	ctx := testCtx(e.t)
	store, err := stream.OpenPayloadStore(ctx, e.nats.JS, stream.PayloadStoreConfig{})
	if err != nil {
		e.t.Fatal(err)
	}
	if stored {
		if err := store.Put(ctx, name, full); err != nil {
			e.t.Fatal(err)
		}
	}
	return e.publishRaw(stream.ChangeSubject("tablecast", testDB, "public", "orders", op), id, stub), full, stub
}

// TestClaimedEventResolved: a claimed event reaches clients whole, live and
// on resume; filters and projections apply to its resolved row; its frame
// is larger than the send queue limit, which bounds a backlog and not one
// event.
func TestClaimedEventResolved(t *testing.T) {
	e := startGateway(t, func(c *Config) { c.SendQueueBytes = 64 << 10 })
	live, paid, open := e.dial("/ws"), e.dial("/ws"), e.dial("/ws")
	live.subscribe(map[string]any{"id": "all", "table": "public.orders"})
	paid.subscribe(map[string]any{"id": "paid", "table": "public.orders", "where": map[string]any{"status": map[string]any{"eq": "paid"}}, "select": []string{"id", "status"}})
	open.subscribe(map[string]any{"id": "open", "table": "public.orders", "where": map[string]any{"status": map[string]any{"eq": "open"}}})

	before := e.publish("create", map[string]any{"id": 0, "status": "new"})
	notes := strings.Repeat("a \"long\" note\n", 70_000) // ~1 MB of JSON
	bigSeq, full, _ := e.publishClaimed("create", map[string]any{"id": 1, "status": "paid", "notes": notes}, true)
	after := e.publish("create", map[string]any{"id": 2, "status": "open"})

	if f := live.expect("event", "all"); f.Seq != before {
		t.Fatalf("live: first event seq %d, want %d", f.Seq, before)
	}
	if f := live.expect("event", "all"); f.Seq != bigSeq || string(f.Event) != string(full) {
		t.Fatalf("live: event seq %d of %d bytes, want seq %d, the full event of %d bytes", f.Seq, len(f.Event), bigSeq, len(full))
	}
	if f := paid.expect("event", "paid"); f.Seq != bigSeq || fmt.Sprint(f.event()["data"]) != "map[id:1 status:paid]" {
		t.Fatalf("filtered and projected: %.300s", f.raw)
	}
	if f := open.expect("event", "open"); f.Seq != after {
		t.Fatalf("a subscription whose filter the resolved row fails got seq %d (%.200s), want only %d", f.Seq, f.raw, after)
	}

	resume := e.dial("/ws")
	resume.subscribe(map[string]any{"id": "again", "table": "public.orders", "from": before})
	if f := resume.expect("event", "again"); f.Seq != bigSeq || string(f.Event) != string(full) {
		t.Fatalf("resume: event seq %d of %d bytes, want seq %d, the full event", f.Seq, len(f.Event), bigSeq)
	}
	if f := resume.expect("event", "again"); f.Seq != after {
		t.Fatalf("resume: seq %d after the big event, want %d", f.Seq, after)
	}
	if got := e.metric(e.gw.met.claims.WithLabelValues("resolved")); got != 2 {
		t.Errorf("%v claims resolved, want 2 (the feed's and the resume's)", got)
	}
}

// TestClaimGoneDeliveredAsReceived: when the claimed object is gone, the
// event is delivered as received, claim and all, rather than not at all.
func TestClaimGoneDeliveredAsReceived(t *testing.T) {
	e := startGateway(t, nil)
	live := e.dial("/ws")
	sub := live.subscribe(map[string]any{"id": "all", "table": "public.orders"})
	seq, _, stub := e.publishClaimed("update", map[string]any{"id": 5, "status": "paid"}, false)
	if f := live.expect("event", "all"); f.Seq != seq || string(f.Event) != string(stub) {
		t.Fatalf("live: %.300s; want the message as received: %s", f.raw, stub)
	}
	resume := e.dial("/ws")
	resume.subscribe(map[string]any{"id": "again", "table": "public.orders", "from": sub.Seq})
	if f := resume.expect("event", "again"); f.Seq != seq || string(f.Event) != string(stub) {
		t.Fatalf("resume: %.300s; want the message as received", f.raw)
	}
	if got := e.metric(e.gw.met.claims.WithLabelValues("gone")); got != 2 {
		t.Errorf("%v claims counted gone, want 2", got)
	}
}

// TestBigFrameHeldWhileResuming: a live event larger than the send queue
// limit, arriving while a client resumes (its live frames are held until
// the history is sent), is held and delivered in its place; the limit on
// held frames bounds a backlog, not one event.
func TestBigFrameHeldWhileResuming(t *testing.T) {
	e := startGateway(t, func(c *Config) {
		c.SendQueueBytes = 64 << 10
		c.WriteTimeout = time.Minute
	})
	// History far larger than the socket buffers: the resume cannot finish
	// while the client does not read.
	seqs, err := e.publishAsync(400, 64_000)
	if err != nil {
		t.Fatal(err)
	}
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "r", "table": "public.orders", "from": seqs[0] - 1})
	f := e.onlyFeed()
	e.waitFor("the subscription to be resuming", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.scan) == 1 && f.scan[0].catching
	})
	bigSeq, full, _ := e.publishClaimed("create", map[string]any{"id": 1, "notes": strings.Repeat("n", 500_000)}, true)
	e.waitFor("the feed to handle the big event", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.last >= bigSeq
	})
	for i, want := range seqs {
		if got := c.read(30 * time.Second); got.Type != "event" || got.Seq != want {
			t.Fatalf("history %d: %.200s, want event seq %d", i, got.raw, want)
		}
	}
	if got := c.read(30 * time.Second); got.Type != "event" || got.Seq != bigSeq || string(got.Event) != string(full) {
		t.Fatalf("after the history: %.200s, want the big event (seq %d) whole", got.raw, bigSeq)
	}
}

// onlyFeed returns the gateway's one running feed.
func (e *testEnv) onlyFeed() *feed {
	e.t.Helper()
	e.gw.feedMu.Lock()
	defer e.gw.feedMu.Unlock()
	if len(e.gw.feeds) != 1 {
		e.t.Fatalf("%d feeds, want 1", len(e.gw.feeds))
	}
	for _, f := range e.gw.feeds {
		return f
	}
	return nil
}

// TestSmallFramesAfterABigOne: frames queued while a frame larger than the
// send queue limit is still being written (the client reads slowly) count
// against the limit by their own size, not the big frame's.
func TestSmallFramesAfterABigOne(t *testing.T) {
	e := startGateway(t, func(c *Config) {
		c.SendQueueBytes = 64 << 10
		c.WriteTimeout = time.Minute
	})
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "s", "table": "public.orders"})
	f := e.onlyFeed()
	// Far more than the socket buffers take: it stays in flight while the
	// client does not read.
	bigSeq, full, _ := e.publishClaimed("create", map[string]any{"id": 1, "notes": strings.Repeat("n", 16<<20)}, true)
	var small []uint64
	for i := range 20 {
		small = append(small, e.publish("create", map[string]any{"id": 2 + i, "status": "open"}))
	}
	e.waitFor("the feed to queue every event", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.last >= small[len(small)-1]
	})
	if got := c.read(time.Minute); got.Seq != bigSeq || string(got.Event) != string(full) {
		t.Fatalf("first: %.200s, want the big event (seq %d) whole", got.raw, bigSeq)
	}
	for _, want := range small {
		if got := c.read(10 * time.Second); got.Type != "event" || got.Seq != want {
			t.Fatalf("%.200s, want event seq %d", got.raw, want)
		}
	}
}

// TestForgedClaimNotResolved: the gateway resolves only the claims the
// reader writes: in the payload bucket, naming the object of the event that
// carries the claim. A claim in another event's envelope (which could send
// one table's row to another's subscribers) or to another bucket goes out
// as received.
func TestForgedClaimNotResolved(t *testing.T) {
	e := startGateway(t, nil)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "all", "table": "public.orders"})
	_, secret, _ := e.publishClaimed("create", map[string]any{"id": 1, "notes": "secret"}, true)
	c.expect("event", "all")

	var target map[string]any
	_ = json.Unmarshal(secret, &target)
	forge := func(claim stream.Claim) []byte {
		n := e.ids.Add(1)
		id := fmt.Sprintf("%016X-%04X", n, 1)
		b, _ := json.Marshal(map[string]any{"id": id, "op": "create", "db": testDB, "schema": "public", "table": "orders",
			"lsn": "0/1", "xid": n, "commit_time": "2026-11-22T07:00:00Z", "key": map[string]any{"id": 2}, "claim": claim})
		e.publishRaw(stream.ChangeSubject("tablecast", testDB, "public", "orders", "create"), id, b)
		return b
	}
	other := stream.Claim{Bucket: stream.DefaultPayloadBucket, Object: stream.PayloadObjectName(testDB, target["id"].(string)), Size: int64(len(secret))}
	for _, claim := range []stream.Claim{other, {Bucket: "OTHER", Object: other.Object, Size: other.Size}} {
		stub := forge(claim)
		if f := c.expect("event", "all"); string(f.Event) != string(stub) {
			t.Fatalf("a forged claim (%+v) was resolved: %.200s", claim, f.raw)
		}
	}
	if got := e.metric(e.gw.met.claims.WithLabelValues("failed")); got != 2 {
		t.Errorf("%v claims counted failed, want 2", got)
	}
}
