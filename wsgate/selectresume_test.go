package wsgate

import (
	"testing"
)

// TestSelectWhileResuming: a select answered while the subscription's
// history is still to be sent. Its subscribed seq N is the last event sent
// with the old projection, every later one has the new: the history's
// events up to N come with the old columns, those after N (live ones
// held meanwhile among them) with the new.
func TestSelectWhileResuming(t *testing.T) {
	e := startGateway(t, nil)
	s0 := e.publish("create", map[string]any{"id": 1, "status": "open", "total": "1.00"})
	reached, release := make(chan struct{}), make(chan struct{})
	testHookReplayConsumer = func() {
		close(reached)
		<-release
	}
	t.Cleanup(func() { testHookReplayConsumer = nil })
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "s", "table": "public.orders", "from": s0 - 1})
	<-reached
	s1 := e.publish("create", map[string]any{"id": 2, "status": "open", "total": "2.00"})
	e.waitFor("the feed to handle the live event", func() bool { return e.plainFeedLast() == s1 })
	c.send(map[string]any{"type": "select", "id": "s", "fields": []string{"id"}})
	n := c.expect("subscribed", "s").Seq
	close(release)
	s2 := e.publish("create", map[string]any{"id": 3, "status": "open", "total": "3.00"})
	for _, seq := range []uint64{s0, s1, s2} {
		f := c.expect("event", "s")
		if f.Seq != seq {
			t.Fatalf("event %d, want %d", f.Seq, seq)
		}
		_, wide := f.event()["data"].(map[string]any)["status"]
		if wide != (seq <= n) {
			t.Fatalf("select answered with seq %d: event %d has status: %v, want %v: %s", n, seq, wide, seq <= n, f.raw)
		}
	}
}

// plainFeedLast is the last message the feed of public.orders handled.
func (e *testEnv) plainFeedLast() uint64 {
	e.gw.feedMu.Lock()
	defer e.gw.feedMu.Unlock()
	for _, f := range e.gw.feeds {
		if f.marker == "" && f.topic == "" {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.last
		}
	}
	return 0
}
