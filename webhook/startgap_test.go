package webhook

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
)

// Tests of a start position the stream had discarded when an endpoint's
// consumer is created (retention.go, checkStart): the gap is reported
// once, whichever processes create the consumer, and delivery begins with
// the first event kept; a start within what is kept, and a fresh stream,
// report nothing.

// process is another tablecast process delivering webhooks: a Manager of
// its own, with its own registry, metrics and log, on the same NATS and
// endpoint store.
type process struct {
	mgr *Manager
	reg *prometheus.Registry
	log *logBuffer
	// stop stops the process and waits until it has (its workers, and
	// their records of gaps, too).
	stop func()
}

// startProcess starts another process; it stops at the test's end.
func (e *env) startProcess() *process {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p := &process{reg: prometheus.NewRegistry(), log: &logBuffer{}, stop: func() { cancel(); wg.Wait() }}
	e.t.Cleanup(p.stop)
	log := slog.New(slog.NewTextHandler(p.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	registry := match.NewRegistry(log)
	cfg := e.mgrCfg
	cfg.Registry, cfg.Registerer, cfg.Logger = registry, p.reg, log.With("component", "webhook")
	mgr, err := New(ctx, e.nats.JS, cfg)
	if err != nil {
		e.t.Fatalf("new manager: %v", err)
	}
	p.mgr = mgr
	wg.Add(2)
	go func() { defer wg.Done(); registry.Run(ctx, e.store) }()
	go func() { defer wg.Done(); mgr.Run(ctx) }()
	return p
}

// database returns the name of the test's database, which the events'
// subjects name.
func (e *env) database() string {
	e.t.Helper()
	var db string
	if err := e.db.QueryRow(context.Background(), `SELECT current_database()`).Scan(&db); err != nil {
		e.t.Fatal(err)
	}
	return db
}

// rows returns the ids of the rows of the events accepted, in order.
func rows(t *testing.T, r *receiver) []int {
	t.Helper()
	var ids []int
	for _, ev := range r.accepted(t) {
		ids = append(ids, int(ev.Data["id"].(float64)))
	}
	return ids
}

// TestStartGapDiscarded: endpoints created after the stream discarded
// where they start, by sequence or by a time before its first message
// kept, report a gap at their start, once, although two processes deliver
// webhooks, and deliver from the first event kept; endpoints starting
// within what is kept, or "now", report nothing. A process started later,
// which finds their consumers, reports nothing more, though the stream
// has rolled past every start meanwhile.
func TestStartGapDiscarded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	other := e.startProcess()
	db := e.database()
	e.limitStream(20)
	before := time.Now()
	e.noise(db, 3) // a start by time finds more discarded than one by sequence
	var dropped []uint64
	for id := 1; id <= 5; id++ {
		dropped = append(dropped, e.publishOrder(db, id))
	}
	e.noise(db, 30)
	within := time.Now()
	var kept []uint64
	for id := 6; id <= 7; id++ {
		kept = append(kept, e.publishOrder(db, id))
	}
	first := e.firstSeq()
	if first <= dropped[len(dropped)-1] || first > kept[0] {
		t.Fatalf("stream first seq %d: want the orders %v dropped, %v kept", first, dropped, kept)
	}

	type endpointCase struct {
		name        string
		start       endpoint.Start
		from, to    uint64 // the gap; 0: none
		storedAfter *time.Time
		rows        string // delivered
	}
	cases := []endpointCase{
		{"byseq", endpoint.Start{Seq: dropped[0]}, dropped[0], first - 1, nil, "[6 7]"},
		{"bytime", endpoint.Start{Time: before}, 1, first - 1, &before, "[6 7]"},
		{"within", endpoint.Start{Time: within}, 0, 0, nil, "[6 7]"},
		{"now", endpoint.Start{}, 0, 0, nil, "[]"},
	}
	eps := map[string]*endpoint.Endpoint{}
	recv := map[string]*receiver{}
	for _, c := range cases {
		r := newReceiver(t)
		eps[c.name] = e.endpoint(c.name, r.URL(), func(w *endpoint.Webhook) { w.Start = c.start })
		recv[c.name] = r
	}
	// The events kept are delivered; then one of their own after the
	// creation shows that an endpoint delivers what comes. (Published
	// before, it would discard a message the consumers had to deliver:
	// a gap of its own.)
	for _, c := range cases {
		e.waitConsumer(eps[c.name])
		if c.rows != "[]" {
			recv[c.name].waitAccepted(t, 2, time.Minute)
		}
	}
	e.publishOrder(db, 8)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, ep := recv[c.name], eps[c.name]
			want := len(c.rows)/2 + 1 // with row 8
			if c.rows == "[]" {
				want = 1
			}
			r.waitAccepted(t, want, time.Minute)
			wantRows := c.rows[:len(c.rows)-1] + " 8]"
			if c.rows == "[]" {
				wantRows = "[8]"
			}
			if got := fmt.Sprint(rows(t, r)); got != wantRows {
				t.Fatalf("rows %s delivered, want %s", got, wantRows)
			}
			gaps := e.metric(e.mgr.met.gaps, c.name) + e.metric(other.mgr.met.gaps, c.name)
			messages := e.metric(e.mgr.met.gapMessages, c.name) + e.metric(other.mgr.met.gapMessages, c.name)
			if c.from == 0 {
				if g := e.gaps(ep); g != nil || gaps != 0 {
					t.Fatalf("gap reported (metric %v): %+v", gaps, g)
				}
				return
			}
			var g *endpoint.RetentionGaps
			waitFor(t, 30*time.Second, "the gap recorded on the endpoint", func() bool { g = e.gaps(ep); return g != nil })
			waitFor(t, 10*time.Second, "the gap counted", func() bool {
				return e.metric(e.mgr.met.gaps, c.name)+e.metric(other.mgr.met.gaps, c.name) > 0
			})
			n := c.to - c.from + 1
			last := g.Last
			if g.Count != 1 || g.Messages != n || !last.AtStart || last.FirstSeq != c.from || last.LastSeq != c.to || last.Messages != n || last.NextSeq != first {
				t.Errorf("gaps recorded %+v; want one at the start, %d-%d, next %d", *g, c.from, c.to, first)
			}
			if (last.StoredAfter == nil) != (c.storedAfter == nil) || c.storedAfter != nil && !last.StoredAfter.Equal(c.storedAfter.UTC()) {
				t.Errorf("stored after %v, want %v", last.StoredAfter, c.storedAfter)
			}
			if last.StoredBefore.Before(before) || last.FoundAt.Before(last.StoredBefore) {
				t.Errorf("gap's times: stored before %v, found at %v", last.StoredBefore, last.FoundAt)
			}
			line := fmt.Sprintf("first_seq=%d last_seq=%d messages=%d next_seq=%d", c.from, c.to, n, first)
			var logged []string
			for _, l := range []*logBuffer{e.log, other.log} {
				for _, s := range strings.Split(l.String(), "\n") {
					if strings.Contains(s, "endpoint="+c.name+" ") && strings.Contains(s, line) {
						logged = append(logged, s)
					}
				}
			}
			if len(logged) != 1 {
				t.Fatalf("%q logged %d times, want once", line, len(logged))
			}
			if upper := strings.Contains(logged[0], "The range is an upper bound"); upper != (c.storedAfter != nil) {
				t.Errorf("the log says the range is an upper bound: %v; want %v (a start by time)", upper, c.storedAfter != nil)
			}
			if gaps != 1 || messages != float64(n) {
				t.Errorf("metrics: %v gaps, %v messages over both processes; want 1, %d", gaps, messages, n)
			}
		})
	}

	// The stream rolls past every start; a process started now finds
	// the consumers, and reports nothing. (No event follows: that process
	// could not tell a jump over the roll from a gap, see settle.)
	e.noise(db, 30)
	late := e.startProcess()
	waitFor(t, 30*time.Second, "the late process's workers to start", func() bool {
		return strings.Count(late.log.String(), "webhook delivery started") == len(cases)
	})
	time.Sleep(500 * time.Millisecond) // a report is written beside delivery
	for _, c := range cases {
		if v := e.metric(late.mgr.met.gaps, c.name); v != 0 {
			t.Errorf("%s: the late process counted %v gaps", c.name, v)
		}
		if g := e.gaps(eps[c.name]); c.from == 0 && g != nil || c.from != 0 && (g == nil || g.Count != 1) {
			t.Errorf("%s: gaps recorded %+v after the late process started", c.name, g)
		}
	}
	if late.log.contains("discarded messages") {
		t.Errorf("the late process reported a gap:\n%s", late.log.String())
	}
}

// TestStartGapFreshStream: on a stream that discarded nothing, endpoints
// starting at its first sequence, or at a time before its first message,
// report nothing and get every event.
func TestStartGapFreshStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	db := e.database()
	for id := 1; id <= 3; id++ {
		e.publishOrder(db, id)
	}
	if first := e.firstSeq(); first != 1 {
		t.Fatalf("stream first seq %d, want 1", first)
	}
	for name, start := range map[string]endpoint.Start{"fromone": {Seq: 1}, "fromtime": {Time: time.Now().Add(-72 * time.Hour)}} {
		r := newReceiver(t)
		ep := e.endpoint(name, r.URL(), func(w *endpoint.Webhook) { w.Start = start })
		r.waitAccepted(t, 3, time.Minute)
		time.Sleep(300 * time.Millisecond) // a report is written beside delivery
		if got := fmt.Sprint(rows(t, r)); got != "[1 2 3]" {
			t.Errorf("%s: rows %s delivered, want [1 2 3]", name, got)
		}
		if g := e.gaps(ep); g != nil || e.metric(e.mgr.met.gaps, name) != 0 {
			t.Errorf("%s: gap reported: %+v", name, g)
		}
	}
	if e.log.contains("discarded messages") {
		t.Errorf("a gap logged")
	}
}

// lineUp holds the workers about to create an endpoint's consumer
// (Manager.beforeCreate) until every process's has come, and lets them go
// together: their creations reach the server at the same instant.
type lineUp struct {
	mu      sync.Mutex
	want    int
	arrived map[string]int
	ready   map[string]chan struct{}
}

func (l *lineUp) arrive(id string) {
	l.mu.Lock()
	if l.ready[id] == nil {
		l.ready[id] = make(chan struct{})
	}
	ch := l.ready[id]
	l.arrived[id]++
	if l.arrived[id] == l.want {
		close(ch)
	}
	l.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(20 * time.Second): // the test fails on the count
	}
}

func (l *lineUp) count(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.arrived[id]
}

// TestStartGapCreatedAtOnce: three processes create the consumers of
// endpoints made at once, on a stream that had discarded where they
// start, at the same instant (lined up before the creation). Each
// endpoint has its one consumer as configured (start, filter, ack wait,
// max ack pending), no process is refused its creation, the gap at its
// start is recorded once and logged and counted once across the
// processes, and the receiver gets every event kept once, in order.
func TestStartGapCreatedAtOnce(t *testing.T) {
	t.Parallel()
	const processes, endpoints = 3, 4
	e := newEnv(t, envOptions{})
	procs := []*process{{mgr: e.mgr, reg: e.reg, log: e.log, stop: e.stopManager}}
	for range processes - 1 {
		procs = append(procs, e.startProcess())
	}
	line := &lineUp{want: processes, arrived: map[string]int{}, ready: map[string]chan struct{}{}}
	hook := line.arrive
	for _, p := range procs {
		p.mgr.beforeCreate.Store(&hook)
	}
	db := e.database()
	e.limitStream(20)
	before := time.Now()
	e.noise(db, 3)
	var dropped []uint64
	for id := 1; id <= 5; id++ {
		dropped = append(dropped, e.publishOrder(db, id))
	}
	e.noise(db, 30)
	kept := []uint64{e.publishOrder(db, 6), e.publishOrder(db, 7)}
	first := e.firstSeq()
	if first <= dropped[len(dropped)-1] || first > kept[0] {
		t.Fatalf("stream first seq %d: want the orders %v dropped, %v kept", first, dropped, kept)
	}

	// Half start by sequence, half by a time before the first event kept.
	eps := make([]*endpoint.Endpoint, endpoints)
	recv := make([]*receiver, endpoints)
	for i := range eps {
		start := endpoint.Start{Seq: dropped[0]}
		if i%2 == 1 {
			start = endpoint.Start{Time: before}
		}
		recv[i] = newReceiver(t)
		eps[i] = e.endpoint(fmt.Sprintf("atonce%d", i), recv[i].URL(), func(w *endpoint.Webhook) { w.Start = start })
	}
	for i := range eps {
		recv[i].waitAccepted(t, 2, time.Minute)
	}
	e.publishOrder(db, 8)
	for i := range eps {
		recv[i].waitAccepted(t, 3, time.Minute)
	}
	ctx := context.Background()
	for i, ep := range eps {
		if n := line.count(ep.ID); n != processes {
			t.Fatalf("%s: %d processes came to create its consumer, want %d", ep.Name, n, processes)
		}
		c, err := e.nats.JS.Consumer(ctx, "TABLECAST", consumerName(ep.ID))
		if err != nil {
			t.Fatal(err)
		}
		cfg := c.CachedInfo().Config
		entry := e.mgrCfg.Registry.Get(ep.ID)
		subjects := match.Subjects(testPrefix, entry.Matcher.Filters(), entry.Matcher.Rules())
		startOK := cfg.DeliverPolicy == jetstream.DeliverByStartSequencePolicy && cfg.OptStartSeq == dropped[0]
		if i%2 == 1 {
			startOK = cfg.DeliverPolicy == jetstream.DeliverByStartTimePolicy && cfg.OptStartTime != nil && cfg.OptStartTime.Equal(before)
		}
		if !startOK || !slices.Equal(cfg.FilterSubjects, subjects) || cfg.AckWait != DefaultAckWait || cfg.MaxAckPending != maxHeld ||
			cfg.PinnedTTL != DefaultPinnedTTL || !slices.Equal(cfg.PriorityGroups, []string{priorityGroup}) {
			t.Errorf("%s: consumer %+v; want its start, filter %v, ack wait %s, max ack pending %d", ep.Name, cfg, subjects, DefaultAckWait, maxHeld)
		}
	}
	// One consumer an endpoint, and none other.
	str, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	var consumers []string
	lister := str.ConsumerNames(ctx)
	for name := range lister.Name() {
		consumers = append(consumers, name)
	}
	if err := lister.Err(); err != nil {
		t.Fatal(err)
	}
	if len(consumers) != endpoints {
		t.Errorf("consumers of the stream: %v, want one for each of the %d endpoints", consumers, endpoints)
	}

	// Every gap is recorded before the processes stop: a process stopping
	// waits for its records, and one that could not record reports.
	for _, ep := range eps {
		waitFor(t, 30*time.Second, "the gap recorded on "+ep.Name, func() bool { return e.gaps(ep) != nil })
	}
	for _, p := range procs {
		p.stop()
	}
	for i, ep := range eps {
		t.Run(ep.Name, func(t *testing.T) {
			if got := fmt.Sprint(rows(t, recv[i])); got != "[6 7 8]" {
				t.Errorf("rows %s delivered, want [6 7 8] once each", got)
			}
			from, storedAfter := dropped[0], (*time.Time)(nil)
			if i%2 == 1 {
				from, storedAfter = 1, &before
			}
			n := first - from
			g := e.gaps(ep)
			last := g.Last
			if g.Count != 1 || g.Messages != n || !last.AtStart || last.FirstSeq != from || last.LastSeq != first-1 || last.NextSeq != first ||
				(last.StoredAfter == nil) != (storedAfter == nil) || storedAfter != nil && !last.StoredAfter.Equal(before.UTC()) {
				t.Errorf("gaps recorded %+v (last %+v); want one at the start, %d-%d, next %d", *g, last, from, first-1, first)
			}
			var gaps, messages float64
			line := fmt.Sprintf("first_seq=%d last_seq=%d messages=%d next_seq=%d", from, first-1, n, first)
			logged := 0
			for _, p := range procs {
				gaps += e.metric(p.mgr.met.gaps, ep.Name)
				messages += e.metric(p.mgr.met.gapMessages, ep.Name)
				for _, s := range strings.Split(p.log.String(), "\n") {
					if strings.Contains(s, "endpoint="+ep.Name+" ") && strings.Contains(s, "discarded messages") {
						logged++
						if !strings.Contains(s, line) {
							t.Errorf("gap logged as %q, want %q", s, line)
						}
					}
				}
			}
			if gaps != 1 || messages != float64(n) || logged != 1 {
				t.Errorf("over the %d processes: %v gaps counted, %v messages, logged %d times; want 1, %d, once", processes, gaps, messages, logged, n)
			}
		})
	}
	for i, p := range procs {
		if p.log.contains("cannot set up the webhook endpoint's consumer") {
			t.Errorf("process %d was refused a consumer:\n%s", i, p.log.String())
		}
	}
}
