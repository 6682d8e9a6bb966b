package webhook

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// slowCreation is a JetStream whose consumer creations reach the server
// only when released: a creation in flight, whose caller may give up
// waiting before the server has made the consumer. Deletions are
// reported on deleted.
type slowCreation struct {
	jetstream.JetStream
	started chan struct{} // closed as the first creation is sent
	release chan struct{} // closed to let creations through
	deleted chan string   // the consumers deleted
	once    sync.Once
}

func (s *slowCreation) CreateConsumer(ctx context.Context, str string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	s.once.Do(func() { close(s.started) })
	type result struct {
		c   jetstream.Consumer
		err error
	}
	done := make(chan result, 1)
	go func() {
		<-s.release
		// The request was sent: the server makes the consumer whether
		// or not its caller still waits for the answer.
		c, err := s.JetStream.CreateConsumer(context.Background(), str, cfg)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *slowCreation) DeleteConsumer(ctx context.Context, str, name string) error {
	err := s.JetStream.DeleteConsumer(ctx, str, name)
	select {
	case s.deleted <- name:
	default:
	}
	return err
}

// TestDeletedWhileCreatingConsumer deletes an endpoint while its worker's
// creation of its consumer is on its way to the server: the consumer must
// not outlive the endpoint (nothing would read or delete it until the
// leftovers' look, an hour later).
func TestDeletedWhileCreatingConsumer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.stopManager()
	js := &slowCreation{JetStream: e.nats.JS, started: make(chan struct{}), release: make(chan struct{}), deleted: make(chan string, 4)}
	m, err := New(e.mgrCtx, js, e.mgrCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.mgrCtx)
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	r := newReceiver(t)
	ep := e.endpoint("deleted-while-creating", r.URL(), nil)
	select {
	case <-js.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the endpoint's consumer was never created")
	}
	if err := e.store.DeleteEndpoint(context.Background(), ep.ID, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the worker to stop", func() bool { return m.Workers() == 0 })
	// Let the creation land once the deletion has looked for the consumer
	// (or after a second, if the deletion waits for the creation).
	select {
	case <-js.deleted:
	case <-time.After(time.Second):
	}
	close(js.release)
	waitFor(t, 10*time.Second, "the deletion to be done", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.last[ep.ID] == nil
	})
	_, err = e.nats.JS.Consumer(context.Background(), "TABLECAST", consumerName(ep.ID))
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("the consumer of the deleted endpoint: %v, want it deleted", err)
	}
}

// TestPausedEndpointSeriesGone: the metrics' series of an endpoint go with
// its name, renamed or deleted, also while it is paused (no worker runs,
// but the retention watch keeps its gauge).
func TestPausedEndpointSeriesGone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{watch: 50 * time.Millisecond})
	e.limitStream(1000)
	ctx := context.Background()
	r := newReceiver(t)
	ep := e.endpoint("series-before", r.URL(), nil)
	e.waitConsumer(ep)
	e.exec(`INSERT INTO orders VALUES (1, 'open', 1)`)
	r.waitAccepted(t, 1, 30*time.Second)
	if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StatePaused, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the worker to stop", func() bool { return e.mgr.Workers() == 0 })
	e.exec(`INSERT INTO orders VALUES (2, 'open', 1)`) // unread: the retention gauge is above 0
	waitFor(t, 10*time.Second, "the paused endpoint's retention gauge", func() bool {
		return slices.Equal(e.seriesNames(), []string{"series-before"})
	})

	ep.Name = "series-after"
	if _, err := e.store.UpdateEndpoint(ctx, ep, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the series under the new name only", func() bool {
		return slices.Equal(e.seriesNames(), []string{"series-after"})
	})

	if err := e.store.DeleteEndpoint(ctx, ep.ID, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the deletion to be done", func() bool {
		e.mgr.mu.Lock()
		defer e.mgr.mu.Unlock()
		return e.mgr.last[ep.ID] == nil
	})
	time.Sleep(200 * time.Millisecond) // retention watches that might set the gauge again
	if names := e.seriesNames(); len(names) != 0 {
		t.Fatalf("series of the deleted endpoint are left, by name: %v", names)
	}
}

// seriesNames returns the endpoint names the Manager's metrics have
// series of, sorted.
func (e *env) seriesNames() []string {
	e.t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "endpoint" && !slices.Contains(names, l.GetValue()) {
					names = append(names, l.GetValue())
				}
			}
		}
	}
	slices.Sort(names)
	return names
}
