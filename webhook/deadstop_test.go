package webhook

import (
	"context"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestDeadLetteringFinishedAsWorkerStops: a worker stopped while it
// stores the dead letters of a batch given up (a pause, a restart, new
// settings) finishes storing them and acknowledges the events: none is
// left both dead-lettered and to be sent again, where the receiver, well
// by then, would accept it with its dead letter still listed (and a
// replay would send it once more).
func TestDeadLetteringFinishedAsWorkerStops(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	r.setAnswer(func(*delivery, int) (int, map[string]string, time.Duration) { return 500, nil, 0 })
	ep := e.endpoint("stopped", r.URL(), func(w *endpoint.Webhook) {
		w.Batch = 3
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Second)}
	})
	e.waitConsumer(ep)
	// The manager is stopped as the second dead letter of the batch is
	// about to be stored.
	stopped := make(chan struct{})
	stop := e.mgrStop
	hook := func(_, worker context.Context, id string, n int) {
		if id != ep.ID || n != 1 {
			return
		}
		select {
		case <-stopped:
			return
		default:
		}
		close(stopped)
		go stop()
		<-worker.Done()
	}
	e.mgr.beforeDeadLetter.Store(&hook)
	e.exec(`INSERT INTO orders SELECT g, 'open', g FROM generate_series(1, 3) g`)
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatal("no batch was dead-lettered")
	}
	stop()
	r.setAnswer(nil)
	e.startManager(nil, nil)
	// A later event accepted: whatever came before it was settled.
	e.insertOrders(4, 4)
	waitFor(t, time.Minute, "the event after the batch accepted", func() bool {
		for _, ev := range r.accepted(t) {
			if ev.Data["id"].(float64) == 4 {
				return true
			}
		}
		return false
	})
	dls, err := e.mgr.DeadLetters().List(context.Background(), ep.ID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	dead := map[string]int{}
	for _, dl := range dls {
		dead[dl.EventID]++
	}
	accepted := map[string]bool{}
	for _, ev := range r.accepted(t) {
		accepted[ev.ID] = true
		if dead[ev.ID] > 0 {
			t.Errorf("event %s (row %v) accepted and dead-lettered", ev.ID, ev.Data["id"])
		}
	}
	for id, n := range dead {
		if n > 1 {
			t.Errorf("event %s dead-lettered %d times", id, n)
		}
	}
	if got := len(dead) + len(accepted); got != 4 {
		t.Errorf("%d events dead-lettered or accepted (%v, %v), want the 4", got, dead, accepted)
	}
	t.Logf("dead-lettered %d, accepted %d", len(dead), len(accepted))
}
