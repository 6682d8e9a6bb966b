package webhook

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestLostDeliveryWaitedFor: a message JetStream gave the endpoint that
// never arrived (a pull that ended as it came: JetStream gives it again
// only after the ack wait) is delivered before the messages read after
// it, which wait for it, rather than after them.
func TestLostDeliveryWaitedFor(t *testing.T) {
	t.Parallel()
	e, r := loseRowOne(t, "lost")
	e.insertOrders(2, 3)
	got := r.waitAccepted(t, 3, time.Minute)
	checkOrder(t, got, 3)
	if !e.log.contains("did not arrive; later ones wait") {
		t.Fatalf("the missing delivery was not noticed; log:\n%s", e.log.String())
	}
}

// TestLostDeliveryWaitedForAcrossRestart: the worker that waits for a lost
// message stops (the process restarts) before it comes again; the worker
// that follows finds it still given out, to no one that holds it, and
// waits for it too, rather than deliver what the first gave back (at
// once) and what is new ahead of it. So does a worker that finds messages
// a process that died left unacknowledged, however few.
func TestLostDeliveryWaitedForAcrossRestart(t *testing.T) {
	t.Parallel()
	e, r := loseRowOne(t, "lost-restart")
	e.insertOrders(2, 3)
	waitFor(t, 30*time.Second, "rows 2 and 3 to wait for row 1", func() bool { return e.log.contains("did not arrive; later ones wait") })
	e.stopManager()
	if n := len(r.requests()); n != 0 {
		t.Fatalf("%d requests before row 1 came again; want none", n)
	}
	e.startManager(nil, nil)
	e.insertOrders(4, 5)
	got := r.waitAccepted(t, 5, time.Minute)
	checkOrder(t, got, 5)
}

// loseRowOne starts a pipeline with an endpoint named name (batches of 10,
// an ack wait of 3 s) and its receiver, inserts row 1 and drops its first
// delivery on the way, as if it had not arrived.
func loseRowOne(t *testing.T, name string) (*env, *receiver) {
	t.Helper()
	e := newEnv(t, envOptions{ackWait: 3 * time.Second})
	r := newReceiver(t)
	ep := e.endpoint(name, r.URL(), func(w *endpoint.Webhook) { w.Batch = 10 })
	e.waitConsumer(ep)
	var dropped atomic.Bool
	e.mgr.hooks.Store(&sleepHooks{lost: func(id string, meta *jetstream.MsgMetadata) bool {
		// The first message read, on its first delivery: row 1.
		return id == ep.ID && meta.NumDelivered == 1 && dropped.CompareAndSwap(false, true)
	}})
	e.insertOrders(1, 1)
	waitFor(t, 30*time.Second, "row 1's first delivery to be lost", dropped.Load)
	return e, r
}
