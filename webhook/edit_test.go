package webhook

import (
	"context"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestEditKeepsRequestBeingRetried: an edit of an endpoint (its timeout,
// here) replaces its worker. A request being retried goes on as it was:
// the same events under the same webhook-id, no later event merged in, its
// attempts and max_age counted from its first attempt. Before, each edit
// started the request over: edits more often than max_age kept a failing
// event retried for ever, never dead-lettered, and the request after an
// edit took the events queued behind it, under another webhook-id.
func TestEditKeepsRequestBeingRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r, failing := newFailingReceiver(t)
	// Each edit comes before the worker it makes has been given max_age.
	const maxAge, editEvery = 4 * time.Second, 2500 * time.Millisecond
	ep := e.endpoint("edited", r.URL(), func(w *endpoint.Webhook) {
		w.Batch = 10
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(maxAge)}
	})
	e.waitConsumer(ep)
	e.insertOrders(1, 1)
	waitFor(t, 30*time.Second, "the first request to be retried", func() bool { return len(r.requests()) >= 2 })
	e.insertOrders(2, 6) // queued behind it
	ctx := context.Background()
	var dead []DeadLetter
	edits := 0
	for ; len(dead) == 0; edits++ {
		if edits > 12 { // 30 s of edits, over seven times max_age
			t.Fatalf("no dead letter after %d edits of the endpoint, one every %s, %s after its first attempt; its max_age is %s", edits, editEvery, time.Since(r.requests()[0].At).Round(time.Second), maxAge)
		}
		cur, err := e.store.GetEndpoint(ctx, ep.ID)
		if err != nil {
			t.Fatal(err)
		}
		cur.Webhook.Timeout = endpoint.Duration(time.Duration(5+edits%2) * time.Second)
		if _, err := e.store.UpdateEndpoint(ctx, cur, 0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(editEvery)
		if dead, err = e.mgr.DeadLetters().List(ctx, ep.ID, 0, 10); err != nil {
			t.Fatal(err)
		}
	}
	failing.Store(false)
	reqs := r.requests()
	first := reqs[0]
	attempts := 0
	for _, d := range reqs {
		if d.ID != first.ID {
			continue
		}
		attempts++
		if string(d.Body) != string(first.Body) {
			t.Fatalf("request %s sent again with another body: %s, first %s", d.ID, d.Body, first.Body)
		}
	}
	for _, d := range reqs {
		for _, ev := range parseBody(t, d.Body) {
			if ev.Data["id"].(float64) == 1 && d.ID != first.ID {
				t.Fatalf("event 1 sent under webhook-id %s, first under %s (body %s)", d.ID, first.ID, d.Body)
			}
		}
	}
	// Each attempt the receiver answered is counted, but for one an edit
	// may have stopped as it was answered (at most one an edit).
	if len(dead) != 1 || dead[0].Attempts > attempts || dead[0].Attempts < attempts-edits || dead[0].FirstTry.Sub(first.At).Abs() > time.Second {
		t.Fatalf("dead letters %+v; want one for event 1, after the %d attempts received (%d edits), the first at %s", dead, attempts, edits, first.At)
	}
	got := r.waitAccepted(t, 5, time.Minute)
	for i, ev := range got {
		if ev.Data["id"].(float64) != float64(i+2) {
			t.Fatalf("accepted %v, want rows 2 to 6 in order", got)
		}
	}
}
