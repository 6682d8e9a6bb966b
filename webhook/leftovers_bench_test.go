package webhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// BenchmarkLeftovers measures one pass of leftovers (leftovers.go) with
// 2,000 endpoints in the registry, each with its two consumers as a worker
// makes them (4,000 consumers), a tenth of them with dead letters:
// leftovers=0 with nothing to remove, the listing every pass makes;
// leftovers=20 with 20 endpoints deleted while no Manager ran, each
// leaving two consumers, two dead letters and a queued replay, which the
// pass removes. retention-watch is, beside, one pass of the retention
// watch (retention.go), which lists the event stream's consumers' state
// every minute. No PostgreSQL: NATS in process, the endpoint store and a
// registry following it, and a Manager that does not run (the passes are
// called as Run calls them). requests/pass counts the JetStream API
// requests of a pass (the server's count), allocs/op those of the whole
// process, the embedded NATS server's included.
//
//	go test -run '^$' -bench Leftovers -benchtime=5x -benchmem ./webhook/
func BenchmarkLeftovers(b *testing.B) {
	const live, events = 2000, 200
	n := natstest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: time.Minute}); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	store, err := endpoint.Open(ctx, n.JS, endpoint.Config{Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(store.Close)
	registry := match.NewRegistry(log)
	done := make(chan struct{})
	go func() { defer close(done); registry.Run(ctx, store) }()
	b.Cleanup(func() { cancel(); <-done })
	m, err := New(ctx, n.JS, Config{Prefix: testPrefix, Registry: registry, Tables: catalog.New(testPrefix, log), States: store, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	d := m.DeadLetters()
	// Each stream sets a limit of its own: nats-server allows 1,000
	// consumers on one that sets none unless configured otherwise (as the
	// embedded server is), and the benchmark runs on either.
	for _, name := range []string{"TABLECAST", d.Stream()} {
		str, err := n.JS.Stream(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		cfg := str.CachedInfo().Config
		cfg.MaxConsumers = 4 * live
		if name == "TABLECAST" {
			cfg.MaxBytes = 1 << 30 // a limit, or the retention watch has nothing to do
		}
		if _, err := n.JS.UpdateStream(ctx, cfg); err != nil {
			b.Fatalf("raise the consumers allowed on stream %s: %v", name, err)
		}
	}
	if _, err := store.CreateFilter(ctx, &endpoint.Filter{Name: "orders", Tables: []string{"public.orders"}}); err != nil {
		b.Fatal(err)
	}
	// Events on the endpoints' subject, which every consumer has pending.
	subject := testPrefix + ".db.public.orders.insert"
	for i := range events {
		if _, err := n.JS.Publish(ctx, subject, []byte(fmt.Sprintf(`{"id":%d}`, i))); err != nil {
			b.Fatal(err)
		}
	}
	// things makes what a Manager makes for endpoint id: its two
	// consumers, and dead letters (a queued replay too) when letters.
	things := func(id string, letters bool) error {
		if _, err := n.JS.CreateConsumer(ctx, "TABLECAST", jetstream.ConsumerConfig{Durable: consumerName(id), FilterSubjects: []string{subject},
			AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: maxHeld, PriorityPolicy: jetstream.PriorityPolicyPinned,
			PriorityGroups: []string{priorityGroup}, PinnedTTL: DefaultPinnedTTL}); err != nil {
			return err
		}
		if _, err := n.JS.CreateConsumer(ctx, d.Stream(), jetstream.ConsumerConfig{Durable: replayConsumerName(id), FilterSubject: d.ReplaySubject(id),
			AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			return err
		}
		if letters {
			for _, subj := range []string{d.Subject(id), d.Subject(id), d.ReplaySubject(id)} {
				if _, err := n.JS.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: []byte(`{}`), Header: nats.Header{HeaderEndpointID: {id}}}); err != nil {
					return err
				}
			}
		}
		return nil
	}
	create := func(name string) string {
		ep, err := store.CreateEndpoint(ctx, &endpoint.Endpoint{Name: name, Type: endpoint.TypeWebhook, Filters: []string{"orders"},
			Webhook: &endpoint.Webhook{URL: "http://127.0.0.1:1/hook"}})
		if err != nil {
			b.Fatal(err)
		}
		return ep.ID
	}
	ids := make([]string, live)
	for i := range ids {
		ids[i] = create(fmt.Sprintf("live%d", i))
	}
	// The consumers are made eight at a time: the server stores each as
	// it is created, and one at a time takes minutes.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < live && errs[w] == nil; i += 8 {
				errs[w] = things(ids[i], i%10 == 0)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	waitFor(b, time.Minute, "the registry to hold every endpoint", func() bool { return len(registry.Entries()) == live })

	requests := func() uint64 {
		info, err := n.JS.AccountInfo(ctx)
		if err != nil {
			b.Fatal(err)
		}
		return info.API.Total
	}
	// leftovers=0 is the listing alone, which every pass makes;
	// leftovers=20 adds what finding and removing 20 endpoints' costs.
	for _, gone := range []int{0, 20} {
		b.Run(fmt.Sprintf("leftovers=%d", gone), func(b *testing.B) {
			var total uint64
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				for k := range gone {
					id := create(fmt.Sprintf("gone%d-%d-%d", gone, i, k))
					if err := things(id, true); err != nil {
						b.Fatal(err)
					}
					if err := store.DeleteEndpoint(ctx, id, 0); err != nil {
						b.Fatal(err)
					}
				}
				waitFor(b, time.Minute, "the registry to drop the deleted endpoints", func() bool { return len(registry.Entries()) == live })
				before := requests()
				b.StartTimer()
				removed, err := m.removeLeftovers(ctx, time.Now().Add(DefaultLeftoverAge+time.Minute))
				b.StopTimer()
				total += requests() - before - 1 // the count's own request
				if err != nil {
					b.Fatal(err)
				}
				if len(removed) != gone {
					b.Fatalf("a pass removed the leftovers of %d endpoints, want %d", len(removed), gone)
				}
				for _, r := range removed {
					if len(r.consumers) != 2 || r.deadLetters != 2 || r.replays != 1 {
						b.Fatalf("a pass removed %+v, want two consumers, two dead letters and a replay", r)
					}
				}
				b.StartTimer()
			}
			b.StopTimer()
			b.ReportMetric(float64(total)/float64(b.N), "requests/pass")
		})
	}
	b.Run("retention-watch", func(b *testing.B) {
		var total uint64
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			before := requests()
			b.StartTimer()
			err := m.checkRetention(ctx)
			b.StopTimer()
			total += requests() - before - 1
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		b.StopTimer()
		if n := testutil.CollectAndCount(m.met.retention); n != live {
			b.Fatalf("the watch set the gauge of %d endpoints, want every one (%d)", n, live)
		}
		b.ReportMetric(float64(total)/float64(b.N), "requests/pass")
	})
}
