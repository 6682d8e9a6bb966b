package webhook

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// ourGoroutines returns the stacks of the goroutines that run a webhook
// worker or a pull of the NATS client.
func ourGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "tablecast/webhook.(*worker)") || strings.Contains(g, "jetstream.(*pullConsumer).fetch") {
			out = append(out, g)
		}
	}
	return out
}

// TestDormantEndpointsWakeInOrder: idle endpoints go dormant, keeping no
// goroutine; a burst of events wakes each, which delivers every event in
// order, and goes dormant again. There is no sweep: only the endpoints'
// subscriptions wake them. It runs alone (not parallel) to count the
// goroutines.
func TestDormantEndpointsWakeInOrder(t *testing.T) {
	e := newEnv(t, envOptions{noSweep: true, ackWait: 3 * time.Second})
	mods := []func(*endpoint.Webhook){
		nil,
		func(w *endpoint.Webhook) { w.Batch = 10 },
		func(w *endpoint.Webhook) { w.ParallelByKey, w.Concurrency = true, 3 },
	}
	var rs []*receiver
	for i, mod := range mods {
		r := newReceiver(t)
		rs = append(rs, r)
		e.waitConsumer(e.endpoint(fmt.Sprintf("dormant%d", i), r.URL(), mod))
	}
	n := 0
	for round := 1; round <= 2; round++ {
		waitFor(t, time.Minute, "the endpoints to go dormant", func() bool { return e.mgr.sleep.dormantCount() == len(mods) })
		waitFor(t, 10*time.Second, "no goroutine of ours", func() bool { return len(ourGoroutines()) == 0 })
		// A burst: one transaction, then one at a time.
		e.exec(`INSERT INTO orders SELECT g, 'open', g FROM generate_series($1::int, $2::int) g`, n+1, n+50)
		e.insertOrders(n+51, n+60)
		n += 60
		for i, r := range rs {
			got := r.waitAccepted(t, n, time.Minute)
			if i == 2 {
				continue // parallel by key: the order is the row's (TestParallelByKeyKeepsEachRowInOrder)
			}
			checkOrder(t, got, n)
		}
	}
	waitFor(t, time.Minute, "the endpoints to go dormant again", func() bool { return e.mgr.sleep.dormantCount() == len(mods) })
	if g := ourGoroutines(); len(g) != 0 {
		t.Fatalf("dormant endpoints keep goroutines:\n%s", strings.Join(g, "\n\n"))
	}
}

// TestDormancyRace: events published as an endpoint goes dormant are
// delivered: one stored between its last pull and its subscription (seen
// by its last check), one published right after it subscribed (which
// wakes it). Hooks in the worker make each window certain; there is no
// sweep to make up for a wake missed.
func TestDormancyRace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noSweep: true, ackWait: 3 * time.Second})
	r := newReceiver(t)
	ep := e.endpoint("racy", r.URL(), nil)
	e.waitConsumer(ep)
	const rounds = 4 // odd ones before the subscription, even ones after
	var mu sync.Mutex
	attempt, row := 0, 0
	errs := make(chan error, 2*rounds)
	insert := func() {
		row++
		if _, err := e.db.Exec(context.Background(), `INSERT INTO orders VALUES ($1, 'open', 1)`, row); err != nil {
			errs <- err
		}
	}
	e.mgr.hooks.Store(&sleepHooks{
		beforeArm: func(id string) {
			if id != ep.ID {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			attempt++
			if attempt > rounds || attempt%2 == 0 {
				return
			}
			insert()
			// Stored before the subscription: no wake will come for it.
			deadline := time.Now().Add(30 * time.Second)
			for {
				c, err := e.nats.JS.Consumer(context.Background(), "TABLECAST", consumerName(ep.ID))
				if err == nil && c.CachedInfo().NumPending > 0 {
					return
				}
				if time.Now().After(deadline) {
					errs <- fmt.Errorf("row %d not stored within 30s", row)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		},
		armed: func(id string) {
			if id != ep.ID {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if attempt <= rounds && attempt%2 == 0 {
				insert()
			}
		},
	})
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d events accepted", rounds), func() bool {
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		return r.acceptedCount() >= rounds
	})
	checkOrder(t, r.accepted(t), rounds)
	waitFor(t, time.Minute, "the endpoint to go dormant", func() bool { return e.mgr.sleep.dormantCount() == 1 })
}

// dormantWorker reports whether endpoint id's worker is dormant, and
// whether it reads events (has subjects).
func (m *Manager) dormantWorker(id string) (asleep, reads bool) {
	m.mu.Lock()
	w := m.workers[id]
	m.mu.Unlock()
	if w == nil {
		return false, false
	}
	m.sleep.mu.Lock()
	defer m.sleep.mu.Unlock()
	return w.sleep == dormant, len(w.subjects) > 0
}

// TestReplayWakesDormantEndpoint: a replay queued for a dormant endpoint
// wakes it and is delivered, for an endpoint reading events and for one
// linked to nothing (which has only replays to deliver). There is no
// sweep: the replay's publish wakes it.
func TestReplayWakesDormantEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noSweep: true, ackWait: 3 * time.Second})
	r := newReceiver(t)
	var mu sync.Mutex
	failing := map[float64]bool{2: true, 3: true}
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range parseBody(t, d.Body) {
			if failing[ev.Data["id"].(float64)] {
				return 503, nil, 0
			}
		}
		return 200, nil, 0
	})
	ep := e.endpoint("replayed", r.URL(), func(w *endpoint.Webhook) {
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Second)}
	})
	e.waitConsumer(ep)
	e.insertOrders(1, 4)
	r.waitAccepted(t, 2, time.Minute) // rows 1 and 4
	ctx := context.Background()
	var dls []DeadLetter
	waitFor(t, time.Minute, "two dead letters", func() bool {
		var err error
		dls, err = e.mgr.DeadLetters().List(ctx, ep.ID, 0, 10)
		return err == nil && len(dls) == 2
	})
	mu.Lock()
	clear(failing)
	mu.Unlock()
	for i, reads := range []bool{true, false} {
		if !reads {
			// Linked to nothing: a worker with only replays to deliver.
			if _, err := e.store.ModifyEndpoint(ctx, ep.ID, 0, func(cur *endpoint.Endpoint) error {
				cur.Filters = nil
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, time.Minute, "the endpoint to go dormant", func() bool {
			d, rd := e.mgr.dormantWorker(ep.ID)
			return d && rd == reads
		})
		if n, err := e.mgr.DeadLetters().Replay(ctx, ep.ID, dls[i].Seq); err != nil || n != 1 {
			t.Fatalf("Replay = %d, %v", n, err)
		}
		// At least once: a loaded machine may deliver a replay again
		// (its acknowledgement later than the consumer's ack wait).
		waitFor(t, time.Minute, fmt.Sprintf("row %d replayed", 2+i), func() bool {
			for _, ev := range r.accepted(t)[2:] {
				if ev.Data["id"].(float64) == float64(2+i) {
					return true
				}
			}
			return false
		})
	}
	waitFor(t, time.Minute, "the endpoint to go dormant again", func() bool {
		d, _ := e.mgr.dormantWorker(ep.ID)
		return d
	})
}

// TestSweepWakesWhatSubscriptionsMissed: a dormant endpoint whose wake is
// lost (its subscription gone, as a wake dropped from a full channel or
// published while the connection was down) is woken by the sweep and
// delivers.
func TestSweepWakesWhatSubscriptionsMissed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{sweep: 200 * time.Millisecond, ackWait: 3 * time.Second})
	r := newReceiver(t)
	ep := e.endpoint("swept", r.URL(), nil)
	e.waitConsumer(ep)
	for round := 1; round <= 2; round++ {
		waitFor(t, time.Minute, "the endpoint to go dormant", func() bool {
			d, _ := e.mgr.dormantWorker(ep.ID)
			return d
		})
		// Its wakes lost: the subscriptions end, the sleepers do not know.
		e.mgr.sleep.mu.Lock()
		for _, ss := range e.mgr.sleep.subjects {
			if err := ss.sub.Unsubscribe(); err != nil {
				t.Error(err)
			}
		}
		e.mgr.sleep.mu.Unlock()
		e.insertOrders(round, round)
		checkOrder(t, r.waitAccepted(t, round, time.Minute), round)
	}
}
