package webhook

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/retention"
)

// Events the stream discards before an endpoint reads them.
//
// An endpoint that is paused, disabled, or slower than what comes, falls
// behind its consumer's stream; when the stream's limits drop messages it
// has not read, the consumer moves on to the oldest message left and says
// nothing. A worker checks its consumer's jumps in stream sequences as
// internal/retention explains, in the dispatcher (one goroutine, which owns
// gapCheck):
//
//   - Only first deliveries (NumDelivered 1) move the consumer's position:
//     a redelivery is of a message it had already read. The jump from the
//     position (pos) to the next first delivery (seq) is the consumer's own
//     only when the worker saw every delivery in between, by consumer
//     sequence (the consumer sequence counts redeliveries too). After a
//     break (another process was the pinned reader meanwhile, which checked
//     what it read, or the consumer was recreated), the check starts again
//     from the next delivery.
//
//   - A jump is clean when it is by one, or when the stream's first
//     sequence, read after seq was delivered, is at most pos+1 (one read
//     covers every message the consumer had delivered before it:
//     retention.Cover). Otherwise the stream discarded pos+1 up to the
//     first sequence (or seq) before the consumer reached them: a gap. The
//     range may hold other tables' messages only, but after the fact
//     nothing tells them apart.
//
//   - The read is skipped when the message at pos came with NumPending 0
//     and the worker has not stalled since (caughtUp): at that moment the
//     consumer had every message of the endpoint's subjects, and from then
//     on the worker took each new one as it was stored. It pulls again as
//     soon as a pull ends; dormant, the wake comes as the event is
//     published, and the sweep (replayPoll) makes up for a wake lost. A
//     message of its subjects could be dropped before it is pulled only if
//     the stream took in a whole TABLECAST_STREAM_MAX_BYTES of newer
//     messages, or reached TABLECAST_STREAM_MAX_AGE, in those seconds. So
//     an endpoint that keeps up reads nothing, and a quiet table in a
//     stream that rolls over raises no false alarm. A stall is any time the
//     worker could not take what came: it waited for its receiver with as
//     many messages as it may hold, its consumer had given out as many as
//     MaxAckPending allows, a pull failed, the connection to NATS was lost
//     (the count of reconnections changed), or the worker stopped (paused,
//     disabled, or the process ended). After a stall every jump is checked
//     until a message comes with NumPending 0 again.
//
//   - A worker that replaces another in this process at once (the
//     endpoint's settings changed) takes over its position and whether it
//     was caught up, when its subjects are the same; one that follows a
//     pause or a disabling takes over its position only (the pause was a
//     stall). Otherwise it starts from its consumer's delivered position.
//     Either way, when its consumer has nothing waiting and the stream
//     dropped nothing after the position, it starts caught up (settle).
//
// A gap is logged (error), counted (tablecast_webhook_retention_gaps_total,
// tablecast_webhook_retention_gap_messages_total) and recorded on the
// endpoint (retention_gaps), and delivery goes on with seq: the events are
// gone, and holding the endpoint would lose the next ones too.
//
// Messages a consumer had delivered and that were then dropped while
// waiting to be delivered again are not in any jump: JetStream ends them as
// it drops them, and they never come back. A worker delivers what it holds
// from memory, so this takes a stop while messages are held (the worker
// gives them back: they wait for the next one), or a process dying. The
// worker that follows in this process takes over the sequences given back
// (givenBack): JetStream delivers the messages to deliver again before any
// new one, so those still missing when the first new one comes, and below
// the stream's first sequence, were dropped: part of the gap found then.
// Messages held by a process that died come back after the ack wait (15 s
// by default); one dropped meanwhile is not seen: the stream would have to
// take in a whole TABLECAST_STREAM_MAX_BYTES within it.

// gapCheck is what a worker knows for judging its consumer's jumps. Only
// the dispatcher uses it (and the worker that follows, once this one is
// done).
type gapCheck struct {
	known    bool      // pos and cseq are set
	cseq     uint64    // consumer sequence of the last delivery seen, or of the start
	pos      uint64    // stream sequence the consumer had read up to
	posTime  time.Time // when the message at pos was stored; zero if not known
	caughtUp bool      // the message at pos came with NumPending 0, and no stall since
	cover    retention.Cover

	// reconnects is the connection's count of reconnections when last
	// looked at: a change is a stall.
	reconnects uint64
	// inherited: pos and cseq come from the worker this one replaced.
	inherited bool
	// givenBack are the stream sequences of the messages the worker before
	// gave back as it stopped and that have not come again, in order.
	givenBack []uint64
}

// inherit takes over prev's position, as the worker that follows prev
// (see above); caughtUp too when handover (prev was replaced at once).
func (g *gapCheck) inherit(prev *gapCheck, handover bool) {
	if !prev.known {
		return
	}
	*g = gapCheck{known: true, cseq: prev.cseq, pos: prev.pos, posTime: prev.posTime, caughtUp: handover && prev.caughtUp,
		reconnects: prev.reconnects, inherited: true, givenBack: prev.givenBack}
}

// start sets the position from the consumer's info, read before the
// worker's first pull, unless the position taken over from the worker
// before is still the consumer's (nothing was delivered since).
func (g *gapCheck) start(info *jetstream.ConsumerInfo, reconnects uint64) {
	if g.inherited && info != nil && info.Delivered.Consumer == g.cseq {
		g.inherited = false
		return
	}
	*g = gapCheck{reconnects: reconnects}
	if info != nil {
		g.known, g.cseq, g.pos = true, info.Delivered.Consumer, info.Delivered.Stream
	}
}

// settle makes a worker that starts (or follows a pause) caught up when
// it is: its consumer had nothing of its subjects after its position when
// it was looked up (info, read before), and the stream's first sequence,
// read after, shows nothing after the position dropped. One read per start,
// and only for an endpoint with nothing waiting: one on a quiet table then
// raises no false alarm as the stream rolls past where it stands.
func (w *worker) settle(ctx context.Context, info *jetstream.ConsumerInfo) {
	g := &w.gaps
	if !g.known || g.caughtUp || info == nil || info.NumPending != 0 {
		return
	}
	str, err := w.m.eventStream(ctx)
	if err != nil {
		return
	}
	w.m.firstSeqReads.Add(1)
	first, err := retention.FirstSeq(ctx, str, requestTimeout)
	if err == nil && first <= g.pos+1 {
		g.caughtUp = true
	}
}

// stalled notes a stall: the next jump is checked.
func (g *gapCheck) stalled() { g.caughtUp = false }

// checkGap judges the jump to msg's message (see above), and reports a gap.
// It is called by the dispatcher for each message, in the order delivered.
func (w *worker) checkGap(ctx context.Context, meta *jetstream.MsgMetadata) {
	g := &w.gaps
	continuous := g.known && meta.Sequence.Consumer == g.cseq+1
	g.known, g.cseq = true, meta.Sequence.Consumer
	seq := meta.Sequence.Stream
	if !continuous {
		g.givenBack = nil // another reader may have had them
	}
	if meta.NumDelivered > 1 {
		// Read before: it does not move the consumer's position.
		if i, found := slices.BinarySearch(g.givenBack, seq); found {
			g.givenBack = slices.Delete(g.givenBack, i, i+1)
		}
		return
	}
	last, lastTime, wasCaughtUp := g.pos, g.posTime, g.caughtUp
	missing := g.givenBack
	g.givenBack = nil
	g.pos, g.posTime, g.caughtUp = seq, meta.Timestamp, meta.NumPending == 0
	jump := continuous && seq > last+1 && !wasCaughtUp
	if !jump && len(missing) == 0 {
		return
	}
	first, err := w.firstSeqCovering(ctx, meta)
	if err != nil {
		if ctx.Err() == nil {
			w.log().Error("cannot check whether the event stream discarded events before the webhook endpoint read them",
				"after_seq", last, "next_seq", seq, "err", err)
		}
		return
	}
	gap := endpoint.RetentionGap{NextSeq: seq, StoredBefore: meta.Timestamp.UTC(), FoundAt: time.Now().UTC()}
	// Messages given back and not delivered again were ended by JetStream:
	// dropped, if below the first sequence.
	for _, s := range missing {
		if s >= first {
			break
		}
		if gap.Messages == 0 {
			gap.FirstSeq = s
		}
		gap.LastSeq = s
		gap.Messages++
	}
	givenBackLost := gap.Messages > 0
	if from, to, lost := retention.Lost(last, seq, first); jump && lost {
		if gap.Messages == 0 {
			gap.FirstSeq = from
		}
		gap.LastSeq = to
		gap.Messages += to - from + 1
	}
	if gap.Messages == 0 {
		return
	}
	if !lastTime.IsZero() && !givenBackLost {
		t := lastTime.UTC()
		gap.StoredAfter = &t // else some were stored before it
	}
	w.reportGap(gap, first)
}

// firstSeqCovering returns a first sequence of the event stream read after
// meta's message was delivered (retention.Cover).
func (w *worker) firstSeqCovering(ctx context.Context, meta *jetstream.MsgMetadata) (uint64, error) {
	str, err := w.m.eventStream(ctx)
	if err != nil {
		return 0, err
	}
	g := &w.gaps
	if g.cover.Seq == 0 || g.cover.Consumer != meta.Consumer || meta.Sequence.Consumer > g.cover.Seq {
		w.m.firstSeqReads.Add(1)
	}
	return g.cover.FirstCovering(ctx, meta, w.cons, str, requestTimeout)
}

// requestTimeout bounds each request of a retention check.
const requestTimeout = 5 * time.Second

// eventStream returns the event stream's handle, looked up at its first
// use.
func (m *Manager) eventStream(ctx context.Context) (jetstream.Stream, error) {
	m.eventsMu.Lock()
	defer m.eventsMu.Unlock()
	if m.events != nil {
		return m.events, nil
	}
	ctx, cancel := context.WithTimeout(ctx, retention.CheckWithin)
	defer cancel()
	backoff := 10 * time.Millisecond
	for {
		rctx, rcancel := context.WithTimeout(ctx, requestTimeout)
		str, err := m.js.Stream(rctx, m.eventsStr)
		rcancel()
		if err == nil {
			m.events = str
			return str, nil
		}
		if !sleep(ctx, backoff) {
			return nil, fmt.Errorf("look up stream %s: %w", m.eventsStr, err)
		}
		backoff = min(2*backoff, time.Second)
	}
}

// reportGap logs, counts and records a gap; delivery goes on. A gap at
// the endpoint's start is recorded first, and logged and counted only by
// the process whose record was written (see checkStart), or when it could
// not be written: better twice than not at all.
func (w *worker) reportGap(gap endpoint.RetentionGap, first uint64) {
	report := func() {
		name := w.name()
		attrs := []any{"first_seq", gap.FirstSeq, "last_seq", gap.LastSeq, "messages", gap.Messages, "next_seq", gap.NextSeq,
			"stored_before", gap.StoredBefore, "stream_first_seq", first}
		if gap.StoredAfter != nil {
			attrs = append(attrs, "stored_after", *gap.StoredAfter)
		}
		msg := "the event stream discarded messages before the webhook endpoint read them: events of the endpoint among them are lost to it; delivery goes on after them"
		if gap.AtStart {
			attrs = append(attrs, "at_start", true)
			msg = "the event stream had discarded messages from the webhook endpoint's start position when its consumer was created: events of the endpoint among them are lost to it; delivery begins after them"
			if gap.StoredAfter != nil {
				msg += ". The range is an upper bound: the stream keeps no time for what it discarded, and any of those messages, or none, were stored after the endpoint's start time (stored_after)"
			}
		}
		w.log().Error(msg, attrs...)
		w.m.met.gaps.WithLabelValues(name).Inc()
		w.m.met.gapMessages.WithLabelValues(name).Add(float64(gap.Messages))
	}
	if !gap.AtStart {
		report()
	}
	// Recorded on the endpoint, where every process's admin API shows it,
	// beside delivery: the write must not hold the endpoint up.
	w.m.wg.Add(1)
	go func() {
		defer w.m.wg.Done()
		ctx, cancel := context.WithTimeout(w.parent, time.Minute)
		defer cancel()
		known := false
		w.m.gapMu.Lock()
		w.retryUntil(ctx, "cannot record a retention gap on the webhook endpoint; retrying", func() (bool, error) {
			_, err := w.m.cfg.States.RecordRetentionGap(ctx, w.id, gap)
			known = errors.Is(err, endpoint.ErrGapKnown)
			return err == nil || known || errors.Is(err, endpoint.ErrNotFound), err
		}, "first_seq", gap.FirstSeq, "last_seq", gap.LastSeq)
		w.m.gapMu.Unlock()
		if gap.AtStart && !known {
			report()
		}
	}()
}

// Before the endpoint's start.
//
// An endpoint starts at a stream sequence, at a time, or "now" (its
// creation time). When its consumer is created, the stream may have
// discarded messages from there on already: a start given far back, or an
// endpoint created while no process delivered webhooks, the first one
// starting after the stream's limits had discarded what was stored since.
// JetStream then starts the consumer at the first message it still has and
// says nothing. The worker that creates the consumer compares the start
// with the stream's state, read once right after, as internal/retention
// explains (BeforeStart): from a sequence, the range is sure; from a time,
// it is every message discarded, from 1, an upper bound, and stored_after
// is the start time (the endpoint's events among them were stored after
// it). Messages discarded from the consumer's first position on (the state
// is read after the creation) are the consumer's to deliver: its jump over
// them is judged as any other (gapCheck), not here.
//
// Only the creator judges: a consumer found has delivered from its start,
// or was created by a process that judged it. As an endpoint appears,
// every process may create its consumer at once (creating one that exists
// with the same settings succeeds) and find the same gap: the gap is
// recorded first, and logged and counted by the process whose record was
// written (the store answers the others endpoint.ErrGapKnown: a gap at the
// start comes before any other). A consumer a worker creates anew because
// its own was deleted under it starts over from a start the endpoint had
// read from: it is not judged. (One deleted while no process ran cannot be
// told from a first creation, and is judged: an endpoint that has gaps
// recorded reports no more at its start.) A process that dies between
// creating the consumer and recording the gap does not report it.

// checkStart reports a gap before the start of the consumer this worker
// has just created (see above); info is what the creation answered.
func (w *worker) checkStart(ctx context.Context, info *jetstream.ConsumerInfo) {
	if info == nil || info.Config.DeliverPolicy != jetstream.DeliverByStartSequencePolicy && info.Config.OptStartTime == nil {
		return
	}
	str, err := w.m.eventStream(ctx)
	var st jetstream.StreamState
	if err == nil {
		w.m.firstSeqReads.Add(1)
		st, err = retention.State(ctx, str, requestTimeout)
	}
	if err != nil {
		if ctx.Err() == nil {
			w.log().Error("cannot check whether the event stream had discarded events from the webhook endpoint's start", "err", err)
		}
		return
	}
	var start endpoint.Start
	if info.Config.DeliverPolicy == jetstream.DeliverByStartSequencePolicy {
		start.Seq = info.Config.OptStartSeq
	} else {
		start.Time = *info.Config.OptStartTime
	}
	if gap, ok := startGap(start, info.Delivered.Stream+1, st, time.Now()); ok {
		w.reportGap(gap, st.FirstSeq)
	}
}

// startGap returns the gap before start (Seq or Time) of a consumer whose
// first position is begin, from the stream's state read after its
// creation (see above); ok is false when there is none.
func startGap(start endpoint.Start, begin uint64, st jetstream.StreamState, now time.Time) (gap endpoint.RetentionGap, ok bool) {
	from, to, upper, lost := retention.BeforeStart(start.Seq, start.Time, begin, st)
	if !lost {
		return gap, false
	}
	// Every message discarded was stored before (or when) the first kept
	// was, or before now when none is kept.
	storedBefore := st.FirstTime
	if st.Msgs == 0 {
		storedBefore = now
	}
	gap = endpoint.RetentionGap{FirstSeq: from, LastSeq: to, Messages: to - from + 1, NextSeq: to + 1,
		StoredBefore: storedBefore.UTC(), FoundAt: now.UTC(), AtStart: true}
	if upper {
		after := start.Time.UTC()
		gap.StoredAfter = &after
	}
	return gap, true
}

// Before it happens: every retentionWatch the Manager compares each
// endpoint's unread events with the stream's limits, paused and disabled
// endpoints included (watchRetention). One listing of the event stream's
// consumers (a request per 256) and one read of the stream tell, for each
// endpoint, where its oldest unread event stands (its consumer's delivered
// position, or its acknowledgement floor while some are held) and how much
// the stream stored from there on: the messages, their bytes and their age,
// estimated from the stream's first and last sequences and times as if its
// messages were alike. The largest fraction of a limit is the gauge
// tablecast_webhook_retention_used_ratio; past one half the endpoint is
// warned about in the log, once until it falls back below.

// retentionWatch is how often the watch runs: the stream fills in hours
// at the least (6 GiB at tens of MB/s), so a minute warns in time and
// costs each process two requests a minute for up to 256 endpoints.
const retentionWatch = time.Minute

// retentionWarn is the fraction of a limit past which an endpoint is
// warned about: half, which leaves as long again to act.
const retentionWarn = 0.5

// watchRetention is one pass of the watch, which Run makes every
// watchEvery.
func (m *Manager) watchRetention(ctx context.Context) {
	if err := m.checkRetention(ctx); err != nil && ctx.Err() == nil {
		m.log.Debug("cannot compare the webhook endpoints' unread events with the stream's limits", "err", err)
	}
}

// checkRetention sets each endpoint's gauge and warns about those past
// retentionWarn.
func (m *Manager) checkRetention(ctx context.Context) error {
	str, err := m.eventStream(ctx)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	info, err := str.Info(rctx)
	cancel()
	if err != nil {
		return fmt.Errorf("read stream %s: %w", m.eventsStr, err)
	}
	cfg, st := info.Config, info.State
	if cfg.MaxAge <= 0 && cfg.MaxBytes <= 0 && cfg.MaxMsgs <= 0 {
		return nil
	}
	now := time.Now()
	list := str.ListConsumers(ctx)
	seen := map[string]bool{}
	for ci := range list.Info() {
		id, ok := strings.CutPrefix(ci.Name, consumerName(""))
		if !ok {
			continue
		}
		e := m.cfg.Registry.Get(id)
		if e == nil || e.Endpoint.Type != endpoint.TypeWebhook {
			continue
		}
		seen[id] = true
		used := retentionUsed(ci, cfg, st, now)
		name := e.Endpoint.Name
		// Set only under the name the Manager knows the endpoint by: one
		// deleted or renamed since the Registry was read would keep a
		// series no one drops.
		m.mu.Lock()
		if m.series[id] == name {
			m.met.retention.WithLabelValues(name).Set(used)
		}
		m.mu.Unlock()
		switch {
		case used >= retentionWarn && !m.atRisk[id]:
			m.atRisk[id] = true
			m.log.Warn("webhook endpoint falling behind the event stream's retention: its unread events will be discarded when the stream reaches its limits",
				"endpoint", name, "endpoint_id", id, "state", e.Endpoint.State, "retention_used", fmt.Sprintf("%.2f", used),
				"unread", ci.NumPending+uint64(ci.NumAckPending), "stream_max_age", cfg.MaxAge, "stream_max_bytes", cfg.MaxBytes)
		case used < retentionWarn:
			delete(m.atRisk, id)
		}
	}
	if err := list.Err(); err != nil {
		return fmt.Errorf("list the consumers of stream %s: %w", m.eventsStr, err)
	}
	for id := range m.atRisk {
		if !seen[id] {
			delete(m.atRisk, id)
		}
	}
	return nil
}

// retentionUsed is the fraction of the stream's closest limit that the
// messages stored from ci's oldest unread event on take (see above),
// between 0 and 1.
func retentionUsed(ci *jetstream.ConsumerInfo, cfg jetstream.StreamConfig, st jetstream.StreamState, now time.Time) float64 {
	if ci.NumPending == 0 && ci.NumAckPending == 0 || st.Msgs == 0 || st.LastSeq < st.FirstSeq {
		return 0
	}
	from := ci.Delivered.Stream + 1
	if ci.NumAckPending > 0 {
		from = ci.AckFloor.Stream + 1
	}
	if from < st.FirstSeq {
		return 1 // the stream discards past it already
	}
	if from > st.LastSeq {
		return 0
	}
	span := float64(st.LastSeq - st.FirstSeq + 1)
	after := float64(st.LastSeq - from + 1) // messages stored from it on
	used := 0.0
	if cfg.MaxMsgs > 0 {
		used = max(used, after/float64(cfg.MaxMsgs))
	}
	if cfg.MaxBytes > 0 {
		used = max(used, float64(st.Bytes)*after/span/float64(cfg.MaxBytes))
	}
	if cfg.MaxAge > 0 && !st.FirstTime.IsZero() {
		stored := st.FirstTime
		if span > 1 {
			stored = stored.Add(time.Duration(float64(st.LastTime.Sub(st.FirstTime)) * float64(from-st.FirstSeq) / (span - 1)))
		}
		used = max(used, float64(now.Sub(stored))/float64(cfg.MaxAge))
	}
	return min(used, 1)
}
