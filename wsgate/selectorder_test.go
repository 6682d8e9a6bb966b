package wsgate

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
)

// TestSelectAnsweredBeforeItsEvents: the answer to a select comes before
// any event sent with the new projection, even when the feed delivers an
// event the moment the projection is set. The answer was queued after the
// projection was set and its lock let go, so an event could overtake it,
// and a client switching projections at the answer read one wrongly.
func TestSelectAnsweredBeforeItsEvents(t *testing.T) {
	e := startGateway(t, nil)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "ord1", "table": "public.orders", "events": []string{schema.OpCreate}})
	e2eMarkSub(c)
	var published atomic.Uint64
	hookDone := make(chan struct{})
	testHookProjectionSet = func(id string, f *feed) {
		if id != "ord1" {
			return
		}
		defer close(hookDone)
		// An event, handled by the feed before the select's handler goes
		// on.
		seq := e.publish(schema.OpCreate, e2eOrder(7, "open", "1.00", false, "2026-01-01T00:00:00Z", "acme", "n"))
		published.Store(seq)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			f.mu.Lock()
			last := f.last
			f.mu.Unlock()
			if last >= seq {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Error("the feed did not handle the event")
	}
	t.Cleanup(func() { testHookProjectionSet = nil })
	c.send(map[string]any{"type": "select", "id": "ord1", "fields": []string{"id", "status"}})
	answer := c.expect("subscribed", "ord1")
	ev := c.expect("event", "ord1")
	select {
	case <-hookDone:
	case <-time.After(30 * time.Second):
		t.Fatal("the select's handler did not go on")
	}
	if want := published.Load(); ev.Seq != want || ev.Seq <= answer.Seq {
		t.Fatalf("after the answer (seq %d): event at %d, want the one published at %d", answer.Seq, ev.Seq, want)
	}
}
