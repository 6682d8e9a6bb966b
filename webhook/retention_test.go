package webhook

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/stream"
)

// Tests of events the stream discards before an endpoint reads them
// (retention.go): a gap is reported, with its range, and delivery goes on;
// a quiet table in a stream that rolls over, and an endpoint that keeps
// up, raise no alarm and read nothing.

// limitStream keeps at most maxMsgs messages in the event stream: beyond,
// JetStream drops the oldest.
func (e *env) limitStream(maxMsgs int64) {
	e.t.Helper()
	ctx := context.Background()
	str, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := str.CachedInfo().Config
	cfg.MaxMsgs = maxMsgs
	if _, err := e.nats.JS.UpdateStream(ctx, cfg); err != nil {
		e.t.Fatalf("limit the stream: %v", err)
	}
}

// firstSeq returns the event stream's first sequence.
func (e *env) firstSeq() uint64 {
	e.t.Helper()
	str, err := e.nats.JS.Stream(context.Background(), "TABLECAST")
	if err != nil {
		e.t.Fatal(err)
	}
	return str.CachedInfo().State.FirstSeq
}

// lastOrderSeq returns the stream sequence of the last event of orders.
func (e *env) lastOrderSeq(db string) uint64 {
	e.t.Helper()
	ctx := context.Background()
	str, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := str.GetLastMsgForSubject(ctx, stream.ChangeSubject(testPrefix, db, "public", "orders", "create"))
	if err != nil {
		e.t.Fatal(err)
	}
	return m.Sequence
}

// publishOrder stores the insert of row id of orders, as the reader
// writes it, and returns its stream sequence. (Once the stream has rolled
// past the reader's fence the reader can no longer publish: the tests
// publish what follows themselves.)
func (e *env) publishOrder(db string, id int) uint64 {
	e.t.Helper()
	body := fmt.Sprintf(`{"id":"ffff%012d-0001","op":"create","db":%q,"schema":"public","table":"orders","key":{"id":%d},"data":{"id":%d,"status":"open","total":"%d"}}`,
		id, db, id, id, id*10)
	ack, err := e.nats.JS.Publish(context.Background(), stream.ChangeSubject(testPrefix, db, "public", "orders", "create"), []byte(body))
	if err != nil {
		e.t.Fatalf("publish order %d: %v", id, err)
	}
	return ack.Sequence
}

// noise stores n events of another table, which the endpoints do not
// take: they roll the stream over.
func (e *env) noise(db string, n int) {
	e.t.Helper()
	subject := stream.ChangeSubject(testPrefix, db, "public", "noise", "create")
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		f, err := e.nats.JS.PublishAsync(subject, []byte(`{"op":"create","data":{"n":`+strconv.Itoa(i)+`}}`))
		if err != nil {
			e.t.Fatal(err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			e.t.Fatal(err)
		case <-time.After(30 * time.Second):
			e.t.Fatal("publish not acknowledged within 30s")
		}
	}
}

// firstEvent inserts row 1 of orders, waits for it, and returns its
// database's name (the events the tests publish name it).
func (e *env) firstEvent(r *receiver) string {
	e.t.Helper()
	e.insertOrders(1, 1)
	got := r.waitAccepted(e.t, 1, time.Minute)
	return got[0].DB
}

// waitStopped waits until the endpoint's worker has stopped and given
// back what it held: its last pull may bring events until it expires.
func (e *env) waitStopped(ep *endpoint.Endpoint) {
	e.t.Helper()
	waitFor(e.t, 30*time.Second, "the worker to stop", func() bool { return e.mgr.Workers() == 0 })
	e.mgr.mu.Lock()
	w := e.mgr.last[ep.ID]
	e.mgr.mu.Unlock()
	if w == nil {
		return
	}
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		e.t.Fatal("the worker did not stop within 30s")
	}
}

func (e *env) gaps(ep *endpoint.Endpoint) *endpoint.RetentionGaps {
	e.t.Helper()
	cur, err := e.store.GetEndpoint(context.Background(), ep.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	return cur.RetentionGaps
}

// TestRetentionGapAfterPause: an endpoint paused while the stream drops
// the events it had not read reports the gap, with the range of stream
// sequences dropped, once resumed, and delivers the events after it.
func TestRetentionGapAfterPause(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("paused", r.URL(), nil)
	e.waitConsumer(ep)
	db := e.firstEvent(r)
	s1 := e.lastOrderSeq(db)
	e.limitStream(20)
	ctx := context.Background()
	if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StatePaused, ""); err != nil {
		t.Fatal(err)
	}
	e.waitStopped(ep)

	var dropped []uint64
	for id := 2; id <= 6; id++ {
		dropped = append(dropped, e.publishOrder(db, id))
	}
	e.noise(db, 30)
	var kept []uint64
	for id := 7; id <= 9; id++ {
		kept = append(kept, e.publishOrder(db, id))
	}
	first := e.firstSeq()
	if first <= dropped[len(dropped)-1] || first > kept[0] {
		t.Fatalf("stream first seq %d: want the orders %v dropped, %v kept", first, dropped, kept)
	}

	if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	got := r.waitAccepted(t, 4, time.Minute)
	var ids []int
	for _, ev := range got {
		ids = append(ids, int(ev.Data["id"].(float64)))
	}
	if fmt.Sprint(ids) != "[1 7 8 9]" {
		t.Fatalf("rows %v delivered, want [1 7 8 9]: the events after the gap, in order", ids)
	}

	if v := e.metric(e.mgr.met.gaps, "paused"); v != 1 {
		t.Errorf("gaps metric %v, want 1", v)
	}
	wantFirst, wantLast := s1+1, first-1
	if v := e.metric(e.mgr.met.gapMessages, "paused"); v != float64(wantLast-wantFirst+1) {
		t.Errorf("gap messages metric %v, want %d", v, wantLast-wantFirst+1)
	}
	var g *endpoint.RetentionGaps
	waitFor(t, 30*time.Second, "the gap recorded on the endpoint", func() bool { g = e.gaps(ep); return g != nil })
	if g.Count != 1 || g.Messages != wantLast-wantFirst+1 || g.Last.Messages != g.Messages {
		t.Errorf("gaps recorded: count %d, messages %d; want 1, %d", g.Count, g.Messages, wantLast-wantFirst+1)
	}
	last := g.Last
	if last.FirstSeq != wantFirst || last.LastSeq != wantLast || last.NextSeq != kept[0] {
		t.Errorf("gap recorded %d-%d, next %d; want %d-%d (after row 1 at %d, up to the stream's first %d), next %d",
			last.FirstSeq, last.LastSeq, last.NextSeq, wantFirst, wantLast, s1, first, kept[0])
	}
	if last.FirstSeq > dropped[0] || last.LastSeq < dropped[len(dropped)-1] {
		t.Errorf("gap %d-%d does not hold the orders dropped, %v", last.FirstSeq, last.LastSeq, dropped)
	}
	if last.StoredAfter == nil || last.StoredBefore.Before(*last.StoredAfter) || last.FoundAt.Before(last.StoredBefore) {
		t.Errorf("gap's times: stored after %v, before %v, found at %v", last.StoredAfter, last.StoredBefore, last.FoundAt)
	}
	if want := fmt.Sprintf("first_seq=%d last_seq=%d messages=%d next_seq=%d", wantFirst, wantLast, wantLast-wantFirst+1, kept[0]); !e.log.contains(want) {
		t.Errorf("no error logged with %q", want)
	}
}

// TestRetentionGapGivenBack: events an endpoint held as it was paused
// (its receiver failing them) are given back; when the stream drops them
// before it resumes, JetStream never delivers them again: the gap names
// them, and the events after are delivered.
func TestRetentionGapGivenBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("held", r.URL(), func(w *endpoint.Webhook) { w.Batch = 10 })
	e.waitConsumer(ep)
	db := e.firstEvent(r)
	e.limitStream(20)
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) { return 500, nil, 0 })
	var held []uint64
	for id := 2; id <= 4; id++ {
		held = append(held, e.publishOrder(db, id))
	}
	waitFor(t, 30*time.Second, "the held events tried", func() bool { return len(r.requests()) >= 2 })
	ctx := context.Background()
	if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StatePaused, ""); err != nil {
		t.Fatal(err)
	}
	e.waitStopped(ep)
	r.setAnswer(nil)
	e.noise(db, 30)
	next := e.publishOrder(db, 5)
	if first := e.firstSeq(); first <= held[len(held)-1] || first > next {
		t.Fatalf("stream first seq %d: want the orders %v dropped, %d kept", first, held, next)
	}
	if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	got := r.waitAccepted(t, 2, time.Minute)
	var ids []int
	for _, ev := range got {
		ids = append(ids, int(ev.Data["id"].(float64)))
	}
	if fmt.Sprint(ids) != "[1 5]" {
		t.Fatalf("rows %v accepted, want [1 5]", ids)
	}
	var g *endpoint.RetentionGaps
	waitFor(t, 30*time.Second, "the gap recorded on the endpoint", func() bool { g = e.gaps(ep); return g != nil })
	if g.Count != 1 || g.Last.FirstSeq != held[0] || g.Last.LastSeq > next-1 || g.Last.NextSeq != next {
		t.Errorf("gap recorded %+v; want from %d (the first held), before %d", g.Last, held[0], next)
	}
	if g.Last.Messages < uint64(len(held)) {
		t.Errorf("gap of %d messages, want at least the %d held", g.Last.Messages, len(held))
	}
	if v := e.metric(e.mgr.met.gaps, "held"); v != 1 {
		t.Errorf("gaps metric %v, want 1", v)
	}
}

// TestRetentionQuietTableNoFalseAlarm: an endpoint on a table that gets an
// event now and then, dormant between them, while other tables' events
// roll the stream over many times: no gap, and nothing read to tell.
func TestRetentionQuietTableNoFalseAlarm(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("quiet", r.URL(), nil)
	e.waitConsumer(ep)
	db := e.firstEvent(r)
	e.limitStream(20)
	reads := e.mgr.firstSeqReads.Load() // the first event's jump, from the consumer's start, may be read
	for id := 2; id <= 4; id++ {
		if id == 3 {
			// Paused and resumed at once: the worker that follows starts
			// caught up (one read), and stays so while the stream rolls.
			ctx := context.Background()
			if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StatePaused, ""); err != nil {
				t.Fatal(err)
			}
			e.waitStopped(ep)
			if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StateActive, ""); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 30*time.Second, "the worker to start", func() bool { return e.mgr.Workers() == 1 })
			waitFor(t, 30*time.Second, "the worker's start read", func() bool { return e.mgr.firstSeqReads.Load() == reads+1 })
			reads++
		}
		waitFor(t, 30*time.Second, "the endpoint to go dormant", func() bool { return e.mgr.sleep.dormantCount() == 1 })
		before := e.firstSeq()
		e.noise(db, 50)
		if e.firstSeq() <= before+20 {
			t.Fatalf("the stream did not roll over: first seq %d, was %d", e.firstSeq(), before)
		}
		e.publishOrder(db, id)
		r.waitAccepted(t, id, time.Minute)
	}
	checkOrder(t, r.accepted(t), 4)
	if v := e.metric(e.mgr.met.gaps, "quiet"); v != 0 {
		t.Errorf("gaps metric %v, want 0", v)
	}
	if g := e.gaps(ep); g != nil {
		t.Errorf("gap recorded: %+v", *g)
	}
	if n := e.mgr.firstSeqReads.Load() - reads; n != 0 {
		t.Errorf("%d reads of the stream's first sequence for an endpoint that kept up", n)
	}
}

// TestRetentionKeepingUpNoAlarm: an endpoint that keeps up with its events,
// among many more of another table that roll the stream over: no gap,
// and nothing read to tell.
func TestRetentionKeepingUpNoAlarm(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("busy", r.URL(), nil)
	e.waitConsumer(ep)
	db := e.firstEvent(r)
	e.limitStream(30)
	reads := e.mgr.firstSeqReads.Load()
	start := e.firstSeq()
	const n = 150
	for id := 2; id <= n; id++ {
		e.noise(db, 7)
		e.publishOrder(db, id)
		r.waitCount(t, id, time.Minute)
	}
	if rolled := e.firstSeq() - start; rolled < 500 {
		t.Fatalf("the stream rolled over %d messages only", rolled)
	}
	checkOrder(t, r.accepted(t), n)
	if v := e.metric(e.mgr.met.gaps, "busy"); v != 0 {
		t.Errorf("gaps metric %v, want 0", v)
	}
	if g := e.gaps(ep); g != nil {
		t.Errorf("gap recorded: %+v", *g)
	}
	if k := e.mgr.firstSeqReads.Load() - reads; k != 0 {
		t.Errorf("%d reads of the stream's first sequence for an endpoint that kept up", k)
	}
}

// TestRetentionWarning: a paused endpoint whose unread events come to take
// more than half of the stream's limit is warned about, with the gauge,
// before anything is discarded; resumed and caught up, its gauge is 0.
func TestRetentionWarning(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{watch: 50 * time.Millisecond})
	r := newReceiver(t)
	ep := e.endpoint("late", r.URL(), nil)
	e.waitConsumer(ep)
	db := e.firstEvent(r)
	e.limitStream(60)
	ctx := context.Background()
	if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StatePaused, ""); err != nil {
		t.Fatal(err)
	}
	e.waitStopped(ep)
	gauge := func() float64 { return testutil.ToFloat64(e.mgr.met.retention.WithLabelValues("late")) }
	s2 := e.publishOrder(db, 2)
	e.noise(db, 10) // 11 of 60 from the oldest unread on: not yet
	time.Sleep(300 * time.Millisecond)
	if v := gauge(); v < 0.1 || v >= retentionWarn {
		t.Fatalf("gauge %v with 11 messages of 60 from the oldest unread on", v)
	}
	if e.log.contains("falling behind the event stream's retention") {
		t.Fatal("warned at a sixth of the limit")
	}
	e.noise(db, 25) // 36 of 60
	waitFor(t, 30*time.Second, "the warning", func() bool { return e.log.contains("falling behind the event stream's retention") })
	if v := gauge(); v < retentionWarn || v >= 1 {
		t.Errorf("gauge %v with 36 messages of 60 from the oldest unread on", v)
	}
	if first := e.firstSeq(); first > s2 {
		t.Fatalf("the stream discarded the unread event already (first seq %d)", first)
	}
	if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	r.waitAccepted(t, 2, time.Minute)
	waitFor(t, 30*time.Second, "the gauge back to 0", func() bool { return gauge() == 0 })
	if g := e.gaps(ep); g != nil {
		t.Errorf("gap recorded: %+v", *g)
	}
}
