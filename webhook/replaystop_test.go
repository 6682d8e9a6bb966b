package webhook

import (
	"context"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestReplaySettledAsWorkerStops: a worker stopped right after a replayed
// dead letter was delivered still removes it from the replays queued:
// acknowledged but left there, it was never sent again nor removed, and
// the endpoint, always finding a replay queued, never went dormant (a
// pull for it every few seconds, for good).
func TestReplaySettledAsWorkerStops(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	r.setAnswer(func(*delivery, int) (int, map[string]string, time.Duration) { return 500, nil, 0 })
	ep := e.endpoint("replaystop", r.URL(), func(w *endpoint.Webhook) {
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Second)}
	})
	e.waitConsumer(ep)
	e.insertOrders(1, 1)
	ctx := context.Background()
	dl := e.mgr.DeadLetters()
	waitFor(t, time.Minute, "the event dead-lettered", func() bool {
		dls, err := dl.List(ctx, ep.ID, 0, 10)
		return err == nil && len(dls) == 1
	})
	r.setAnswer(nil)
	stopped := make(chan struct{})
	stop := e.mgrStop
	hook := func(worker context.Context, id string) {
		if id != ep.ID {
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
	e.mgr.afterReplay.Store(&hook)
	if n, err := dl.Replay(ctx, ep.ID); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatal("the replay was not delivered")
	}
	stop()
	if got := r.acceptedCount(); got != 1 {
		t.Fatalf("%d events accepted, want the replay's", got)
	}
	if dl.queued(ctx, ep.ID) {
		t.Fatal("the replay delivered is still queued as the worker stopped")
	}
}
