package stream

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkConsumerPaths measures the ways an event stored in the stream
// can reach a subscriber of its table in the same process (the gateway's
// place): how long after JetStream stored a ten-event transaction's last
// event the subscriber's callback has it (p50, p99), and what the path
// costs the stream's ingest. The reader's publisher (fast batches, ids,
// fence) writes one transaction a millisecond at most, and the subscriber
// has a connection of its own, in process:
//
//   - ordered: an ordered pull consumer filtered on the table, as the
//     gateway's feeds use;
//   - push: an ordered push consumer (nats.go's older JetStream API);
//   - republish: the stream republishes every stored event on a core NATS
//     subject (RePublish), which the subscriber follows without a consumer
//     (and without JetStream's flow control: a subscriber that falls behind
//     loses messages and must find the gaps from Nats-Last-Sequence).
//
// The ingest cases publish thousand-event transactions back to back, with
// no subscriber, into a stream without RePublish and with it: what
// republishing costs every event whether or not anyone follows it.
//
//	go test -run='^$' -bench=ConsumerPaths -benchtime=30000x ./stream/
func BenchmarkConsumerPaths(b *testing.B) {
	for _, c := range []struct {
		name      string
		path      string // "ordered", "push", "republish", or "" for none
		republish bool
		rows      int
		paced     bool
	}{
		{"paced/ordered", "ordered", false, 10, true},
		{"paced/push", "push", false, 10, true},
		{"paced/republish", "republish", true, 10, true},
		{"ingest/plain", "", false, 1000, false},
		{"ingest/republish", "", true, 1000, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := startTestServer(b, "")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			_, js, p := benchPublisher(b, e, nats.InProcessServer(e))
			if c.republish {
				str, err := js.Stream(ctx, DefaultStreamName)
				if err != nil {
					b.Fatal(err)
				}
				cfg := str.CachedInfo().Config
				cfg.RePublish = &jetstream.RePublish{Source: "tablecast.>", Destination: "republished.tablecast.>"}
				if _, err := js.UpdateStream(ctx, cfg); err != nil {
					b.Fatalf("set RePublish: %v", err)
				}
			}
			lat := &lastEventAges{every: c.rows}
			if c.path != "" {
				stop := followTable(b, ctx, e, c.path, "tablecast.shop.public.orders.>", lat)
				defer stop()
			}
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			publishTransactions(b, p, c.rows, c.paced)
			if c.path != "" {
				lat.wait(b, b.N)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			reportThroughput(b, elapsed, processCPU()-cpu)
			if c.path != "" {
				lat.report(b)
			}
		})
	}
}

// followTable subscribes to subjects by path (see BenchmarkConsumerPaths)
// on a connection of its own, noting each message's store time in lat; it
// returns what ends the subscription.
func followTable(b *testing.B, ctx context.Context, e *Embedded, path, subjects string, lat *lastEventAges) func() {
	b.Helper()
	nc, err := Connect(ctx, e.ClientURL(), "paths-bench-follower", quietLogger(), nats.InProcessServer(e))
	if err != nil {
		b.Fatal(err)
	}
	var stop func()
	switch path {
	case "ordered":
		js, err := jetstream.New(nc)
		if err != nil {
			b.Fatal(err)
		}
		cons, err := js.OrderedConsumer(ctx, DefaultStreamName, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{subjects},
			DeliverPolicy:  jetstream.DeliverNewPolicy,
		})
		if err != nil {
			b.Fatal(err)
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			if meta, err := m.Metadata(); err == nil {
				lat.note(meta.Timestamp)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		stop = cc.Stop
	case "push":
		js, err := nc.JetStream()
		if err != nil {
			b.Fatal(err)
		}
		sub, err := js.Subscribe(subjects, func(m *nats.Msg) {
			if meta, err := m.Metadata(); err == nil {
				lat.note(meta.Timestamp)
			}
		}, nats.OrderedConsumer(), nats.DeliverNew(), nats.BindStream(DefaultStreamName))
		if err != nil {
			b.Fatal(err)
		}
		stop = func() { _ = sub.Unsubscribe() }
	case "republish":
		sub, err := nc.Subscribe("republished."+subjects, func(m *nats.Msg) {
			if ts, err := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer)); err == nil {
				lat.note(ts)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			b.Fatal(err)
		}
		stop = func() { _ = sub.Unsubscribe() }
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return func() { stop(); nc.Close() }
}

// lastEventAges keeps, for every transaction of `every` events, how long
// after JetStream stored its last event the subscriber had it.
type lastEventAges struct {
	every int

	mu   sync.Mutex
	got  int
	ages []time.Duration
	more chan struct{}
}

func (l *lastEventAges) note(stored time.Time) {
	age := time.Since(stored)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got++
	if l.got%l.every == 0 {
		l.ages = append(l.ages, age)
	}
	if l.more != nil {
		close(l.more)
		l.more = nil
	}
}

// wait waits until n messages arrived, failing b when none arrives for ten
// seconds.
func (l *lastEventAges) wait(b *testing.B, n int) {
	b.Helper()
	for {
		l.mu.Lock()
		got := l.got
		if got >= n {
			l.mu.Unlock()
			return
		}
		more := make(chan struct{})
		l.more = more
		l.mu.Unlock()
		select {
		case <-more:
		case <-time.After(10 * time.Second):
			b.Fatalf("the subscriber had %d of %d events", got, n)
		}
	}
}

func (l *lastEventAges) report(b *testing.B) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ages) == 0 {
		return
	}
	slices.Sort(l.ages)
	b.ReportMetric(float64(l.ages[len(l.ages)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(l.ages[len(l.ages)*99/100].Microseconds()), "p99-µs")
}
