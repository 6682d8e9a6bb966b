package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// The benchmarks run the whole pipeline (PostgreSQL, the reader, JetStream
// in process, the webhook workers, an HTTP receiver on loopback), so their
// figures are end to end; run them with -benchtime=1x:
//
//	go test -run '^$' -bench . -benchtime=1x ./webhook/

// BenchmarkDeliveries measures events delivered a second to one receiver,
// one endpoint, in order, with batch 1 and batch 100, from the INSERT of
// the events to the receiver accepting the last one. stored-events/s is
// the reader's own rate over the same INSERT (to its last event stored in
// the stream): an endpoint keeps up with the reader when the two are
// close. after-stored-events/s is the endpoint's rate over the events left
// once the reader has stored the last one, and accepted-when-stored-% the
// share of the events the receiver had accepted by then: an endpoint that
// JetStream serves little while it stores (see maxHeld) delivers most of
// its events after.
func BenchmarkDeliveries(b *testing.B) {
	for _, c := range []struct{ batch, events int }{{1, 5000}, {100, 50000}} {
		b.Run(fmt.Sprintf("batch=%d", c.batch), func(b *testing.B) {
			events := c.events
			e := newEnv(b, envOptions{})
			r := newReceiver(b)
			ep := e.endpoint("bench", r.URL(), func(w *endpoint.Webhook) { w.Batch = c.batch })
			e.waitConsumer(ep)
			str, err := e.nats.JS.Stream(context.Background(), "TABLECAST")
			if err != nil {
				b.Fatal(err)
			}
			info, err := str.Info(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			last := info.State.LastSeq
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				type mark struct {
					at       time.Duration
					accepted int
				}
				stored := make(chan mark, 1)
				go func(want uint64) {
					for {
						info, err := str.Info(context.Background())
						if err == nil && info.State.LastSeq >= want {
							stored <- mark{time.Since(start), r.acceptedCount() - i*events}
							return
						}
						time.Sleep(5 * time.Millisecond)
					}
				}(last + uint64(events))
				e.exec(`INSERT INTO orders SELECT g, 'open', g FROM generate_series($1::int, $2::int) g`, i*events+1, (i+1)*events)
				r.waitCount(b, (i+1)*events, 5*time.Minute)
				took := time.Since(start)
				m := <-stored
				b.ReportMetric(float64(events)/took.Seconds(), "events/s")
				b.ReportMetric(float64(events)/m.at.Seconds(), "stored-events/s")
				// The rate once the reader has stored every event: what the
				// endpoint delivers when JetStream is not storing meanwhile.
				b.ReportMetric(100*float64(m.accepted)/float64(events), "accepted-when-stored-%")
				if took > m.at {
					b.ReportMetric(float64(events-m.accepted)/(took-m.at).Seconds(), "after-stored-events/s")
				}
				last += uint64(events)
			}
		})
	}
}

// BenchmarkFanOut measures deliveries a second with 100 endpoints each
// receiving every event.
func BenchmarkFanOut(b *testing.B) {
	const endpoints, events = 100, 200
	e := newEnv(b, envOptions{})
	r := newReceiver(b)
	var eps []*endpoint.Endpoint
	for k := 0; k < endpoints; k++ {
		eps = append(eps, e.endpoint(fmt.Sprintf("fan%d", k), r.URL(), nil))
	}
	for _, ep := range eps {
		e.waitConsumer(ep)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		e.exec(`INSERT INTO orders SELECT g, 'open', g FROM generate_series($1::int, $2::int) g`, i*events+1, (i+1)*events)
		r.waitCount(b, (i+1)*events*endpoints, 10*time.Minute)
		b.ReportMetric(float64(events*endpoints)/time.Since(start).Seconds(), "deliveries/s")
	}
}

// BenchmarkCommitToWebhook measures the time from a change's commit (its
// commit_time) to the receiver getting it, at 1,000 changes a second for
// 10 seconds, one change per transaction committed with synchronous_commit
// on.
func BenchmarkCommitToWebhook(b *testing.B) {
	const rate, seconds = 1000, 10
	e := newEnv(b, envOptions{})
	r := newReceiver(b)
	lat := recordLatency(r)
	ep := e.endpoint("latency", r.URL(), nil)
	e.waitConsumer(ep)
	// pgtest's cluster runs with synchronous_commit off, which leaves a
	// commit's WAL to the WAL writer (every 200 ms) before the walsender
	// may send it: the inserting session commits as applications do.
	e.exec(`SET synchronous_commit = on`)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lat.reset()
		base := i * rate * seconds
		tick := time.NewTicker(time.Second / rate)
		for k := 1; k <= rate*seconds; k++ {
			<-tick.C
			e.exec(`INSERT INTO orders VALUES ($1, 'open', 1)`, base+k)
		}
		tick.Stop()
		r.waitAccepted(b, base+rate*seconds, 5*time.Minute)
		l := lat.sorted()
		b.ReportMetric(float64(l[len(l)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(l[len(l)*99/100].Microseconds())/1000, "p99-ms")
	}
}

// BenchmarkIdleEndpointMemory measures the memory (heap and goroutine
// stacks, of this process: the webhook workers, and the in-process NATS
// server's consumers) each idle webhook endpoint costs: KiB/endpoint counts
// the heap's spans in use, live-KiB/endpoint the objects alive in them.
func BenchmarkIdleEndpointMemory(b *testing.B) {
	const endpoints = 200
	e := newEnv(b, envOptions{})
	r := newReceiver(b)
	measure := func() (heap, live, stack uint64, goroutines int) {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse, ms.HeapAlloc, ms.StackInuse, runtime.NumGoroutine()
	}
	// One endpoint first: the filter, connections and pools it brings
	// are not per endpoint.
	first := e.endpoint("idle0", r.URL(), nil)
	e.waitConsumer(first)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		heap0, live0, stack0, g0 := measure()
		var eps []*endpoint.Endpoint
		for k := 0; k < endpoints; k++ {
			eps = append(eps, e.endpoint(fmt.Sprintf("idle%d-%d", i, k+1), r.URL(), nil))
		}
		for _, ep := range eps {
			e.waitConsumer(ep)
		}
		waitFor(b, time.Minute, "the workers", func() bool { return e.mgr.Workers() >= (i+1)*endpoints+1 })
		// Idle: every worker dormant (see dormant.go).
		waitFor(b, time.Minute, "the workers to go dormant", func() bool { return e.mgr.sleep.dormantCount() >= (i+1)*endpoints+1 })
		heap1, live1, stack1, g1 := measure()
		b.ReportMetric(float64(heap1+stack1-heap0-stack0)/endpoints/1024, "KiB/endpoint")
		// The objects alive (without the heap's partly used spans, which
		// vary from run to run) and the stacks.
		b.ReportMetric(float64(live1+stack1-live0-stack0)/endpoints/1024, "live-KiB/endpoint")
		b.ReportMetric(float64(stack1-stack0)/endpoints/1024, "stack-KiB/endpoint")
		b.ReportMetric(float64(g1-g0)/endpoints, "goroutines/endpoint")
	}
}

// BenchmarkDormantWake measures the time from a change's commit to the
// receiver getting it when the endpoint was dormant (see dormant.go): the
// wake, and the worker's first pull. pin=kept wakes it right after it went
// dormant; pin=lapsed after its consumer's pin expired (PinnedTTL), when
// the first pull is refused and the next one pinned. Compare with
// BenchmarkCommitToWebhook, where the endpoint is never idle.
func BenchmarkDormantWake(b *testing.B) {
	const samples = 5
	for _, lapsed := range []bool{false, true} {
		name := "pin=kept"
		if lapsed {
			name = "pin=lapsed"
		}
		b.Run(name, func(b *testing.B) {
			// The pin is kept for PinnedTTL after the last pull: 10 s
			// outlasts the pull before the endpoint went dormant (2 s).
			ttl := 10 * time.Second
			if lapsed {
				ttl = time.Second
			}
			e := newEnv(b, envOptions{noSweep: true, pinnedTTL: ttl})
			r := newReceiver(b)
			lat := recordLatency(r)
			e.waitConsumer(e.endpoint("wake", r.URL(), nil))
			e.exec(`SET synchronous_commit = on`)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				lat.reset()
				for k := 1; k <= samples; k++ {
					waitFor(b, time.Minute, "the endpoint to go dormant", func() bool { return e.mgr.sleep.dormantCount() == 1 })
					if lapsed {
						time.Sleep(2 * time.Second) // past PinnedTTL
					}
					e.exec(`INSERT INTO orders VALUES ($1, 'open', 1)`, i*samples+k)
					r.waitAccepted(b, i*samples+k, time.Minute)
				}
				l := lat.sorted()
				b.ReportMetric(float64(l[len(l)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(l[len(l)-1].Microseconds())/1000, "max-ms")
			}
		})
	}
}

// latencies are the times from each delivered event's commit to its
// arrival at a receiver (recordLatency).
type latencies struct {
	mu  sync.Mutex
	lat []time.Duration
}

// recordLatency makes r answer 204 and record, for each request of one
// event, the time from its commit_time to the request.
func recordLatency(r *receiver) *latencies {
	l := &latencies{}
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		var ev struct {
			CommitTime time.Time `json:"commit_time"`
		}
		if json.Unmarshal(d.Body, &ev) == nil {
			l.mu.Lock()
			l.lat = append(l.lat, d.At.Sub(ev.CommitTime))
			l.mu.Unlock()
		}
		return 204, nil, 0
	})
	return l
}

func (l *latencies) reset() {
	l.mu.Lock()
	l.lat = l.lat[:0]
	l.mu.Unlock()
}

// sorted returns the latencies recorded so far, in increasing order.
func (l *latencies) sorted() []time.Duration {
	l.mu.Lock()
	out := slices.Clone(l.lat)
	l.mu.Unlock()
	slices.Sort(out)
	return out
}

// BenchmarkSustainedRate runs a steady write load beside one batching
// endpoint (batch 100): 100-row transactions at each rate of
// WEBHOOK_RATES (rows a second, default 10000,20000,30000) for
// WEBHOOK_SECONDS (default 20). BenchmarkDeliveries times a burst, where
// the reader catches up on a backlog of WAL as fast as the cores let it
// and the endpoint competes with it; this is the steady state a busy
// primary produces. Every 100 ms it samples the rows committed, the
// events stored and the events the receiver accepted, and reports:
//   - rows/s: the rate the writer reached;
//   - reader-backlog-max: events committed but not yet stored, at worst;
//   - endpoint-backlog-p50/-max: events stored but not yet accepted;
//   - endpoint-backlog-1st/-2nd: its mean over the first and the second
//     half of the load: a backlog that grows with time is an endpoint
//     that does not keep up;
//   - drain-ms: from the reader's last event stored to the receiver's last
//     accepted.
//
// With WEBHOOK_NO_ENDPOINT=1 it runs the reader alone: its own sustainable
// rate on the same machine, to set the endpoint's against.
func BenchmarkSustainedRate(b *testing.B) {
	rates := []int{10000, 20000, 30000}
	if s := os.Getenv("WEBHOOK_RATES"); s != "" {
		rates = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 100 {
				b.Fatalf("WEBHOOK_RATES=%q: want rows a second, at least 100 each", s)
			}
			rates = append(rates, n)
		}
	}
	seconds := 20
	if s := os.Getenv("WEBHOOK_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 2 {
			b.Fatalf("WEBHOOK_SECONDS=%q: want whole seconds, at least 2", s)
		}
		seconds = n
	}
	const txRows = 100
	for _, rate := range rates {
		b.Run(fmt.Sprintf("rows-per-s=%d", rate), func(b *testing.B) {
			e := newEnv(b, envOptions{})
			r := newReceiver(b)
			// WEBHOOK_NO_ENDPOINT=1: the reader alone, for its own
			// sustainable rate on the same machine.
			alone := os.Getenv("WEBHOOK_NO_ENDPOINT") == "1"
			if !alone {
				ep := e.endpoint("sustained", r.URL(), func(w *endpoint.Webhook) { w.Batch = 100 })
				e.waitConsumer(ep)
			}
			str, err := e.nats.JS.Stream(context.Background(), "TABLECAST")
			if err != nil {
				b.Fatal(err)
			}
			stored := func() int {
				info, err := str.Info(context.Background())
				if err != nil {
					return -1
				}
				return int(info.State.LastSeq)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				base := i * rate * seconds // the ids written before
				seq0, acc0 := stored(), r.acceptedCount()
				var committed atomic.Int64
				writeErr := make(chan error, 1)
				start := time.Now()
				go func() {
					// Transactions at their times on a fixed schedule: a
					// slow commit is followed by the ones due meanwhile.
					every := time.Second * txRows / time.Duration(rate)
					total := rate * seconds / txRows
					for k := 0; k < total; k++ {
						if d := time.Until(start.Add(time.Duration(k) * every)); d > 0 {
							time.Sleep(d)
						}
						from := base + k*txRows + 1
						if _, err := e.db.Exec(context.Background(), `INSERT INTO orders SELECT g, 'open', g FROM generate_series($1::int, $2::int) g`, from, from+txRows-1); err != nil {
							writeErr <- err
							return
						}
						committed.Add(txRows)
					}
					writeErr <- nil
				}()
				var readerMax, endpointMax int
				var backlog []int
				tick := time.NewTicker(100 * time.Millisecond)
				want := rate * seconds
				var wrote time.Duration
				var storedAt time.Time
				for done := false; !done; {
					select {
					case err := <-writeErr:
						if err != nil {
							b.Fatal(err)
						}
						wrote = time.Since(start)
						done = true
					case <-tick.C:
						s := stored()
						if s < 0 {
							continue
						}
						s -= seq0
						a := r.acceptedCount() - acc0
						if alone {
							a = s
						}
						readerMax = max(readerMax, int(committed.Load())-s)
						endpointMax = max(endpointMax, s-a)
						backlog = append(backlog, s-a)
					}
				}
				tick.Stop()
				waitFor(b, 5*time.Minute, "the reader to store every row", func() bool {
					if stored()-seq0 >= want {
						storedAt = time.Now()
						return true
					}
					return false
				})
				if !alone {
					r.waitCount(b, acc0+want, 5*time.Minute)
				}
				drain := time.Since(storedAt)
				half := len(backlog) / 2
				mean := func(v []int) float64 {
					sum := 0
					for _, x := range v {
						sum += x
					}
					return float64(sum) / float64(max(1, len(v)))
				}
				sorted := slices.Clone(backlog)
				slices.Sort(sorted)
				b.ReportMetric(float64(rate*seconds)/wrote.Seconds(), "rows/s")
				b.ReportMetric(float64(readerMax), "reader-backlog-max")
				b.ReportMetric(float64(sorted[len(sorted)/2]), "endpoint-backlog-p50")
				b.ReportMetric(float64(endpointMax), "endpoint-backlog-max")
				b.ReportMetric(mean(backlog[:half]), "endpoint-backlog-1st")
				b.ReportMetric(mean(backlog[half:]), "endpoint-backlog-2nd")
				b.ReportMetric(float64(drain.Milliseconds()), "drain-ms")
			}
		})
	}
}
