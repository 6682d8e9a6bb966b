package wsgate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// publishAsync publishes n create events of public.orders as fast as
// JetStream takes them (in windows of 500 unacknowledged), returning their
// sequences. It may run on any goroutine: failures are returned.
func (e *testEnv) publishAsync(n int, pad int) ([]uint64, error) {
	subject := stream.ChangeSubject("tablecast", testDB, "public", "orders", "create")
	filler := strings.Repeat("x", pad)
	seqs := make([]uint64, 0, n)
	for len(seqs) < n {
		futures := make([]jetstream.PubAckFuture, 0, 500)
		for i := len(seqs); i < n && len(futures) < 500; i++ {
			k := e.ids.Add(1)
			id := fmt.Sprintf("%016X-%04X", k, 1)
			body := fmt.Sprintf(`{"id":%q,"op":"create","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":%d,"commit_time":"2026-11-22T07:00:00Z","key":{"id":%d},"data":{"id":%d,"status":"open","tenant":"t%d","notes":%q}}`,
				id, k, k, k, k%7, filler)
			msg := &nats.Msg{Subject: subject, Data: []byte(body), Header: nats.Header{jetstream.MsgIDHeader: []string{id}}}
			f, err := e.nats.JS.PublishMsgAsync(msg)
			if err != nil {
				return seqs, err
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case ack := <-f.Ok():
				seqs = append(seqs, ack.Sequence)
			case err := <-f.Err():
				return seqs, err
			case <-time.After(30 * time.Second):
				return seqs, fmt.Errorf("publish not acked within 30s")
			}
		}
	}
	return seqs, nil
}

func (e *testEnv) mustPublishAsync(n, pad int) []uint64 {
	e.t.Helper()
	seqs, err := e.publishAsync(n, pad)
	if err != nil {
		e.t.Fatal(err)
	}
	return seqs
}

// TestResumeAfterDrop drops a client in the middle of 10,000 events that are
// still being published, reconnects it with "from" its last seq, and checks
// that it gets every event exactly once, in order.
func TestResumeAfterDrop(t *testing.T) {
	e := startGateway(t, nil)
	c := e.dial("/ws")
	first := c.subscribe(map[string]any{"id": "s1", "table": "public.orders"})

	const total = 10000
	published := make(chan []uint64, 1)
	go func() {
		seqs, err := e.publishAsync(total, 0)
		if err != nil {
			t.Errorf("publish: %v", err)
		}
		published <- seqs
	}()

	var got []uint64
	for len(got) < 2500 {
		f := c.expect("event", "s1")
		got = append(got, f.Seq)
	}
	_ = c.ws.CloseNow() // dropped, with events still in flight

	c2 := e.dial("/ws")
	last := got[len(got)-1]
	sub := c2.subscribe(map[string]any{"id": "s1", "table": "public.orders", "from": last})
	if sub.Seq != last {
		t.Fatalf("subscribed seq %d, want the from %d", sub.Seq, last)
	}
	want := <-published
	for len(got) < total {
		f := c2.read(20 * time.Second)
		if f.Type != "event" {
			t.Fatalf("unexpected frame %s", f.raw)
		}
		got = append(got, f.Seq)
	}
	c2.expectQuiet(300 * time.Millisecond)
	seen := map[uint64]bool{}
	for i, s := range got {
		if seen[s] {
			t.Fatalf("seq %d delivered twice", s)
		}
		seen[s] = true
		if i > 0 && s <= got[i-1] {
			t.Fatalf("seq %d after %d: out of order", s, got[i-1])
		}
	}
	for _, s := range want {
		if s > first.Seq && !seen[s] {
			t.Fatalf("seq %d lost", s)
		}
	}
}

// TestResumeWithFilterAndHistoryGone resumes a filtered subscription from
// history, then asks for history the stream no longer holds.
func TestResumeWithFilterAndHistoryGone(t *testing.T) {
	e := startGateway(t, nil)
	seqs := e.mustPublishAsync(700, 0) // tenants t0..t6 in turn
	c := e.dial("/ws")
	from := seqs[99]
	c.subscribe(map[string]any{"id": "r", "table": "public.orders", "from": from,
		"where": map[string]any{"tenant": map[string]any{"eq": "t3"}}, "select": []string{"id"}})
	var want []uint64
	for i, s := range seqs[100:] {
		if uint64(i+100+1+0)%7 == 3 { // ids start at 1: id k has tenant t(k%7)
			want = append(want, s)
		}
	}
	for _, s := range want {
		f := c.expect("event", "r")
		if f.Seq != s {
			t.Fatalf("got seq %d, want %d", f.Seq, s)
		}
		if d := f.event()["data"].(map[string]any); len(d) != 1 {
			t.Fatalf("projection not applied on resume: %s", f.Event)
		}
	}
	// Live events follow the history with no gap.
	live := e.publish("create", map[string]any{"id": 3, "tenant": "t3"})
	if f := c.expect("event", "r"); f.Seq != live {
		t.Fatalf("live event seq %d, want %d", f.Seq, live)
	}

	// Drop the oldest messages: history before them is gone.
	str, err := e.nats.JS.Stream(testCtx(t), "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	if err := str.Purge(testCtx(t), jetstream.WithPurgeSequence(seqs[500])); err != nil {
		t.Fatal(err)
	}
	c.send(map[string]any{"type": "subscribe", "id": "old", "table": "public.orders", "from": seqs[10]})
	f := c.expectError(CodeHistoryUnavailable, "old")
	if !strings.Contains(f.Message, "no longer") {
		t.Fatalf("message %q", f.Message)
	}
	c.send(map[string]any{"type": "subscribe", "id": "future", "table": "public.orders", "from": seqs[len(seqs)-1] + 1000})
	c.expectError(CodeHistoryUnavailable, "future")
	// From exactly the first retained message's predecessor is fine.
	c.subscribe(map[string]any{"id": "edge", "table": "public.orders", "from": seqs[500] - 1, "events": []string{"delete"}})
}

// TestSlowConsumer: a client that stops reading is closed with 4008 while a
// fast client on the same table receives everything. The publisher is paced
// to the fast client (which runs under the race detector too), so "fast"
// means keeping up, not outrunning JetStream.
func TestSlowConsumer(t *testing.T) {
	e := startGateway(t, func(c *Config) {
		c.SendQueueBytes = 1 << 20
		c.WriteTimeout = 60 * time.Second
	})
	fast := e.dial("/ws")
	slow := e.dial("/ws")
	fast.subscribe(map[string]any{"id": "f", "table": "public.orders"})
	slow.subscribe(map[string]any{"id": "s", "table": "public.orders"})

	const n, window = 6000, 100 // 4 KiB each: 24 MB, far more than socket buffers hold
	var fastGot atomic.Int64
	done := make(chan error, 1)
	go func() {
		for fastGot.Load() < n {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			typ, b, err := fast.ws.Read(ctx)
			cancel()
			if err != nil {
				done <- fmt.Errorf("fast client: %v after %d events", err, fastGot.Load())
				return
			}
			if typ == websocket.MessageText && strings.HasPrefix(string(b), `{"type":"event"`) {
				fastGot.Add(1)
			}
		}
		done <- nil
	}()
	var finished error
	fastDone := false
	for sent := 0; sent < n; sent += window {
		if _, err := e.publishAsync(window, 4096); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for !fastDone && fastGot.Load() < int64(sent) {
			select {
			case finished = <-done:
				// Stopped early with an error, or done with every event
				// (which needs no more waiting).
				if fastDone = true; finished != nil {
					t.Fatalf("fast client stopped: %v", finished)
				}
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("fast client has %d of %d events after 60s", fastGot.Load(), sent)
			}
		}
	}
	if !fastDone {
		finished = <-done
	}
	if finished != nil {
		t.Fatal(finished)
	}
	e.waitFor("slow consumer close", func() bool { return e.metric(e.gw.met.slowCloses) == 1 })
	reason := slow.expectClose(CloseSlowConsumer)
	if !strings.Contains(reason, "seq") {
		t.Fatalf("reason %q does not tell how to resume", reason)
	}
}

// TestEqualityIndex: subscriptions with an eq filter are found by value, so
// each gets exactly its own rows, and a scan subscription still sees all.
func TestEqualityIndex(t *testing.T) {
	e := startGateway(t, nil)
	const conns, per = 3, 40
	clients := make([]*client, conns)
	for i := range clients {
		clients[i] = e.dial("/ws")
		for j := 0; j < per; j++ {
			k := i*per + j
			clients[i].subscribe(map[string]any{"id": fmt.Sprint("s", k), "table": "public.orders",
				"where": map[string]any{"id": map[string]any{"eq": k}, "status": map[string]any{"neq": "x"}}})
		}
	}
	all := e.dial("/ws")
	all.subscribe(map[string]any{"id": "all", "table": "public.orders", "where": map[string]any{"id": map[string]any{"gte": 0}}})

	e.gw.feedMu.Lock()
	var f *feed
	for _, v := range e.gw.feeds {
		f = v
	}
	e.gw.feedMu.Unlock()
	f.mu.Lock()
	indexed, scanned := len(f.eqs), len(f.scan)
	f.mu.Unlock()
	if indexed != 1 || scanned != 1 {
		t.Fatalf("%d indexes and %d scanned subscriptions, want 1 and 1", indexed, scanned)
	}

	for k := conns*per - 1; k >= 0; k-- {
		e.publish("create", map[string]any{"id": k, "status": "open"})
	}
	for i, c := range clients {
		for j := per - 1; j >= 0; j-- {
			k := i*per + j
			f := c.expect("event", fmt.Sprint("s", k))
			if id := f.event()["data"].(map[string]any)["id"]; id != float64(k) {
				t.Fatalf("subscription s%d got row %v", k, id)
			}
		}
		c.expectQuiet(100 * time.Millisecond)
	}
	for k := 0; k < conns*per; k++ {
		all.expect("event", "all")
	}
}

// TestSubscribedSeqIsLive: an event published right after subscribed is
// always delivered (no subscribe race), for a fresh feed and a shared one.
func TestSubscribedSeqIsLive(t *testing.T) {
	e := startGateway(t, nil)
	for i := 0; i < 20; i++ {
		c := e.dial("/ws")
		id := fmt.Sprint("s", i)
		sub := c.subscribe(map[string]any{"id": id, "table": "public.orders"})
		seq := e.publish("update", map[string]any{"id": i})
		if f := c.expect("event", id); f.Seq != seq || seq <= sub.Seq {
			t.Fatalf("round %d: event seq %d (published %d, subscribed %d)", i, f.Seq, seq, sub.Seq)
		}
		_ = c.ws.CloseNow()
		if i%2 == 0 {
			// Let the feed stop so the next round starts a fresh one.
			e.waitFor("feed stopped", func() bool { return e.metric(e.gw.met.feeds) == 0 })
		}
	}
	_ = context.Background
}

// TestResumeAheadOfFeed: a resume from a seq that the table's feed has not
// reached yet (the feed is behind the stream) gets each event after from
// once: not again the ones up to from when the feed catches up.
func TestResumeAheadOfFeed(t *testing.T) {
	e := startGateway(t, nil)
	a := e.dial("/ws")
	a.subscribe(map[string]any{"id": "a", "table": "public.orders"})
	e.gw.feedMu.Lock()
	f := e.gw.feeds["t\x00"+stream.TableSubjects("tablecast", testDB, "public", "orders")]
	e.gw.feedMu.Unlock()
	f.in.mu.Lock() // the feed takes nothing in: it falls behind the stream
	locked := true
	defer func() {
		if locked {
			f.in.mu.Unlock()
		}
	}()
	seqs := e.mustPublishAsync(6, 0)
	b := e.dial("/ws")
	b.subscribe(map[string]any{"id": "b", "table": "public.orders", "from": seqs[2]})
	f.in.mu.Unlock()
	locked = false
	for _, s := range seqs[3:] {
		if f := b.expect("event", "b"); f.Seq != s {
			t.Fatalf("got seq %d, want %d", f.Seq, s)
		}
	}
	for _, s := range seqs {
		if f := a.expect("event", "a"); f.Seq != s {
			t.Fatalf("live subscriber: got seq %d, want %d", f.Seq, s)
		}
	}
	if got := b.sync(); len(got) != 0 {
		t.Fatalf("unexpected frames %v", got)
	}
}

// flakyConsumers is the gateway's stream as NATS may present it: a
// consumer created but answered with an error (the answer came too late),
// and deletes refused.
type flakyConsumers struct {
	loseCreate    bool         // answer each creation with an error, after making it
	created       atomic.Int32 // consumers made
	refuseDeletes atomic.Int32 // deletes still to refuse
	deletes       atomic.Int32 // deletes of resumes' consumers asked for, refused ones included
}

func (fc *flakyConsumers) wrap(js jetstream.JetStream) jetstream.JetStream {
	return flakyJetStream{JetStream: js, fc: fc}
}

type flakyJetStream struct {
	jetstream.JetStream
	fc *flakyConsumers
}

func (js flakyJetStream) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	st, err := js.JetStream.Stream(ctx, name)
	if err != nil || name != "TABLECAST" {
		return st, err
	}
	return flakyStream{Stream: st, fc: js.fc}, nil
}

type flakyStream struct {
	jetstream.Stream
	fc *flakyConsumers
}

func (s flakyStream) CreateConsumer(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	cons, err := s.Stream.CreateConsumer(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.fc.created.Add(1)
	if s.fc.loseCreate {
		return nil, fmt.Errorf("no answer in time: %w", context.DeadlineExceeded)
	}
	return cons, nil
}

func (s flakyStream) DeleteConsumer(ctx context.Context, name string) error {
	if !strings.HasPrefix(name, "tablecast_resume_") {
		// A feed's, deleted as its last subscription goes.
		return s.Stream.DeleteConsumer(ctx, name)
	}
	s.fc.deletes.Add(1)
	if s.fc.refuseDeletes.Add(-1) >= 0 {
		return errors.New("refused by the test")
	}
	return s.Stream.DeleteConsumer(ctx, name)
}

// TestResumeDeletesItsConsumer: a resume deletes the consumer it read the
// history from, whatever happened to its requests: when the answer to its
// creation was lost (the consumer was made all the same), and when NATS
// refused its first deletes (it tries again). Left behind, the consumer
// would stay a minute, until its InactiveThreshold.
func TestResumeDeletesItsConsumer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		loseCreate    bool
		refuseDeletes int32
	}{
		{name: "creation answered too late", loseCreate: true},
		{name: "deletes refused", refuseDeletes: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fc := &flakyConsumers{loseCreate: tc.loseCreate}
			fc.refuseDeletes.Store(tc.refuseDeletes)
			e := startGatewayThrough(t, fc.wrap, nil)
			from := e.publish(schema.OpCreate, map[string]any{"id": 1}) - 1
			e.publish(schema.OpCreate, map[string]any{"id": 2})
			c := e.dial("/ws")
			c.subscribe(map[string]any{"id": "r", "table": "public.orders", "from": from})
			if tc.loseCreate {
				if f := c.expectError(CodeInternal, "r"); !strings.Contains(f.Message, "resume failed") {
					t.Fatalf("got %s, want the resume's failure", f.raw)
				}
				c.expect("unsubscribed", "r")
			} else {
				for range 2 {
					c.expect("event", "r")
				}
			}
			ctx := testCtx(t)
			st, err := e.nats.JS.Stream(ctx, "TABLECAST")
			if err != nil {
				t.Fatal(err)
			}
			e.waitFor("the resume's consumer deleted", func() bool {
				list := st.ListConsumers(ctx)
				for info := range list.Info() {
					if info.Config.OptStartSeq == from+1 {
						return false
					}
				}
				return list.Err() == nil
			})
			if n := fc.created.Load(); n != 1 {
				t.Fatalf("%d consumers made, want 1", n)
			}
			if n := fc.deletes.Load(); n != tc.refuseDeletes+1 {
				t.Fatalf("%d deletes asked for, want %d (%d refused)", n, tc.refuseDeletes+1, tc.refuseDeletes)
			}
		})
	}
}
