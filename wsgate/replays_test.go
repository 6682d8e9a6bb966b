package wsgate

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReplayStormTakesTurns: 100 "from": 0 subscriptions on one connection
// and 10 on another, with live events published while they replay. No more
// resumes read history at once than the limits allow (the gateway's own
// count, and NATS's count of consumers), and every subscription gets every
// event exactly once, in order, history then live.
func TestReplayStormTakesTurns(t *testing.T) {
	const maxTotal, maxPerConn = 3, 2
	e := startGateway(t, func(c *Config) { c.MaxReplays, c.MaxReplaysPerConn = maxTotal, maxPerConn })
	history := e.mustPublishAsync(100, 200)

	// NATS's own count: the feed's consumer plus one per resume reading.
	var maxConsumers atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		str, err := e.nats.JS.Stream(context.Background(), "TABLECAST")
		if err != nil {
			t.Error(err)
			return
		}
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if info, err := str.Info(context.Background()); err == nil && int64(info.State.Consumers) > maxConsumers.Load() {
				maxConsumers.Store(int64(info.State.Consumers))
			}
		}
	}()

	a, b := e.dial("/ws"), e.dial("/ws")
	subs := map[*client]int{a: 100, b: 10}
	for c, n := range subs {
		for i := range n {
			c.send(map[string]any{"type": "subscribe", "id": fmt.Sprint("r", i), "table": "public.orders", "from": 0})
		}
	}
	live := e.mustPublishAsync(30, 200) // while the resumes run or wait
	want := append(append([]uint64{}, history...), live...)

	var wg sync.WaitGroup
	for c, n := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make(map[string][]uint64, n)
			complete := 0
			for complete < n {
				f, err := c.tryRead(30 * time.Second)
				if err != nil {
					t.Errorf("read: %v (%d of %d subscriptions complete)", err, complete, n)
					return
				}
				switch f.Type {
				case "subscribed":
				case "event":
					prev := got[f.ID]
					if len(prev) == len(want) || f.Seq != want[len(prev)] {
						t.Errorf("%s: event seq %d after %d events; want seq %d", f.ID, f.Seq, len(prev), want[min(len(prev), len(want)-1)])
						return
					}
					if got[f.ID] = append(prev, f.Seq); len(got[f.ID]) == len(want) {
						complete++
					}
				default:
					t.Errorf("unexpected frame %s", f.raw)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	if t.Failed() {
		return
	}
	for _, c := range []*client{a, b} {
		if got := c.sync(); len(got) != 0 {
			t.Fatalf("frames after every event: %v", got)
		}
	}
	total, perConn := e.gw.replays.peaks()
	t.Logf("resumes at once: %d in all, %d on one connection; NATS consumers at once: %d", total, perConn, maxConsumers.Load())
	if total > maxTotal || perConn > maxPerConn {
		t.Fatalf("%d resumes ran at once (%d on one connection); the limits are %d and %d", total, perConn, maxTotal, maxPerConn)
	}
	if got := maxConsumers.Load(); got > maxTotal+1 {
		t.Fatalf("NATS saw %d consumers at once: more resumes than %d read at once", got, maxTotal)
	}
	e.waitFor("no resume running or waiting", func() bool {
		return e.metric(e.gw.met.replaysRunning) == 0 && e.metric(e.gw.met.replaysWaiting) == 0
	})
}

// TestWaitingResumeUnsubscribed: a resume still waiting its turn that is
// unsubscribed, or whose connection closes, leaves the line without
// holding it up; those behind it run.
func TestWaitingResumeUnsubscribed(t *testing.T) {
	e := startGateway(t, func(c *Config) { c.MaxReplays, c.MaxReplaysPerConn, c.ReplayRate = 1, 1, 1 })
	history := e.mustPublishAsync(200, 0)
	a := e.dial("/ws")
	// r0 runs at a message a second (a batch's tokens first): it holds the one turn.
	a.subscribe(map[string]any{"id": "r0", "table": "public.orders", "from": 0})
	b := e.dial("/ws")
	b.subscribe(map[string]any{"id": "w1", "table": "public.orders", "from": 0})
	b.subscribe(map[string]any{"id": "w2", "table": "public.orders", "from": 0})
	e.waitFor("two resumes waiting", func() bool { return e.metric(e.gw.met.replaysWaiting) == 2 })
	b.send(map[string]any{"type": "unsubscribe", "id": "w1"})
	b.expect("unsubscribed", "w1")
	_ = b.ws.CloseNow()
	e.waitFor("the line empty", func() bool { return e.metric(e.gw.met.replaysWaiting) == 0 })
	a.send(map[string]any{"type": "unsubscribe", "id": "r0"})
	for {
		if f := a.read(10 * time.Second); f.Type == "unsubscribed" {
			break
		} else if f.Type != "event" || f.ID != "r0" {
			t.Fatalf("unexpected frame %s", f.raw)
		}
	}
	e.waitFor("no resume running", func() bool { return e.metric(e.gw.met.replaysRunning) == 0 })
	e.gw.replays.rate = newTokenBucket(1e6, replayBatch)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "next", "table": "public.orders", "from": 0})
	for _, s := range history {
		if f := c.expect("event", "next"); f.Seq != s {
			t.Fatalf("seq %d, want %d", f.Seq, s)
		}
	}
}
