package wsgate

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

var (
	errShuttingDown = errors.New("gateway shutting down")
	errSubEnded     = errors.New("subscription ended")
)

func wrapf(err error, format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, err)...)
}

// replayBatch is how many messages of history a resume reads at a time:
// enough to make a fetch worth its round trip, few enough that the rate
// limit (a batch's worth of tokens is taken before each fetch) stays smooth.
const replayBatch = 128

// replayFetchWait bounds a fetch of history. A fetch returns as soon as its
// batch is full, and the replay stops reading it at the boundary or when
// the consumer has nothing more; it runs out only when messages the
// consumer was counting on were dropped meanwhile. (A fetch that gives up
// early loses the messages delivered after: a consumer without acks does
// not send them again. Hence a fetch with a wait, rather than one without,
// whose client side gives up after a second without a message.)
const replayFetchWait = 5 * time.Second

// replayConsumerIdle is the InactiveThreshold of a resume's consumer: the
// server deletes it once no fetch has waited on it for this long. A resume
// deletes its consumer as it ends (dropConsumer), so this is only the
// backstop, for a gateway that stops mid-resume and a delete NATS keeps
// refusing. It must outlast every pause between two fetches of a running
// resume: a wait for the rate limit (one batch's worth of tokens) or for
// room in the client's send queue (WriteTimeout, 10 s by default).
const replayConsumerIdle = time.Minute

// replayRequestTimeout bounds one request of a resume about its consumer
// (creating it, deleting it): far beyond a loopback round trip, short
// enough that a NATS that does not answer fails the resume rather than
// hold it.
const replayRequestTimeout = 5 * time.Second

// replayConsumerName names a resume's consumer: unique, and telling in
// the server's list of consumers.
func replayConsumerName() string {
	return "tablecast_resume_" + rand.Text()
}

// dropConsumer deletes a consumer of the gateway's (what says whose, for
// the log: "a resume's", "a feed's"), which may not exist (its creation
// failed). A delete that fails is tried again in the background, a second
// after the first and twice as long after each next one, until the
// consumer is gone or idle (its InactiveThreshold) has passed, by when the
// server has deleted it itself; likewise once the gateway is closing.
func (g *Gateway) dropConsumer(name, what string, idle time.Duration) {
	if g.deleteConsumer(name, what) {
		return
	}
	go func() {
		giveUp := time.Now().Add(idle)
		for wait := time.Second; time.Now().Add(wait).Before(giveUp); wait *= 2 {
			select {
			case <-g.ctx.Done():
				return
			case <-time.After(wait):
			}
			if g.deleteConsumer(name, what) {
				return
			}
		}
		g.log.Warn("gateway leaves "+what+" consumer to the server, which deletes it once idle",
			"consumer", name, "inactive_threshold", idle)
	}()
}

// deleteConsumer makes one attempt at deleting a consumer of the
// gateway's, and reports whether it is gone.
func (g *Gateway) deleteConsumer(name, what string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), replayRequestTimeout)
	defer cancel()
	err := g.str.DeleteConsumer(ctx, name)
	if err == nil || errors.Is(err, jetstream.ErrConsumerNotFound) {
		return true
	}
	g.log.Warn("gateway cannot delete "+what+" consumer; trying again", "consumer", name, "err", err)
	return false
}

// openBoundaryPoll is how often a resume whose boundary is open (batch.go)
// looks for the rest of its transaction once it has read all the stream
// holds: the reader stores a transaction's events at the pace it decodes
// them, so the rest is usually there within milliseconds.
const openBoundaryPoll = 20 * time.Millisecond

// testHookReplayConsumer, when set (by tests), runs once a resume's consumer
// exists and the start of its history has been checked, before anything is
// read.
var testHookReplayConsumer func()

// testHookSnapshotRead, when set, is called once a view's rows are read and
// where the history folded into them ends is known.
var testHookSnapshotRead func()

// testHookReplayFetch, when set (by tests), is asked before each fetch of
// a resume's history: a non-nil batch it returns is read instead of
// fetching, as a fetch that came back short would be.
var testHookReplayFetch func(cons jetstream.Consumer) jetstream.MessageBatch

// checkHistory refuses a resume whose history is gone: from must lie within
// the stream, whose first message must be at most from+1. Anything else
// would be a silent gap.
func (g *Gateway) checkHistory(ctx context.Context, id string, from uint64) *ProtocolError {
	info, err := g.str.Info(ctx)
	if err != nil {
		return &ProtocolError{Code: CodeInternal, ID: id, Message: "cannot read the stream to resume: " + err.Error()}
	}
	first, last := info.State.FirstSeq, info.State.LastSeq
	switch {
	case from > last:
		return &ProtocolError{Code: CodeHistoryUnavailable, ID: id, Message: "from " + strconv.FormatUint(from, 10) +
			" is past the stream's last sequence " + strconv.FormatUint(last, 10) + " (the stream was reset): reload and subscribe without from"}
	case from+1 < first:
		return &ProtocolError{Code: CodeHistoryUnavailable, ID: id, Message: "events after " + strconv.FormatUint(from, 10) +
			" are no longer in the stream, which now starts at " + strconv.FormatUint(first, 10) + ": reload and subscribe without from"}
	}
	return nil
}

// catchUp sends s the matching messages of the stream after from up to its
// boundary (where live delivery took over), then releases the live frames
// held meanwhile. It first waits for its turn (see replays): until then the
// subscription's live frames are dropped and the boundary follows the feed,
// so the history read covers them. No message is sent twice and none is
// skipped: history ends at the boundary, live frames start after it; and a
// message the stream drops before it is sent ends the subscription with
// history_unavailable (retention.go).
func (g *Gateway) catchUp(s *sub, from uint64) {
	f := s.f.Load()
	ctx, cancel := context.WithCancel(g.ctx)
	defer cancel()
	err := errSubEnded
	if turn := g.replays.wait(s, cancel); turn != nil {
		var synced *syncedAt // a view's, sent by its history
		if s.snapshot {
			n, err := g.sendSnapshot(ctx, s)
			if err != nil {
				g.replays.done(turn)
				g.snapshotFailed(s, err)
				return
			}
			from = n
			// Every event that changed a row while the rows were read
			// is stored by now: the history up to the last one is
			// folded into the rows, and synced follows (syncedAt).
			to, err := g.lastSeqOf(ctx, f.subjects...)
			if err != nil {
				g.replays.done(turn)
				g.snapshotFailed(s, wrapf(err, "read where the rows of %s were read to", s.table.Name))
				return
			}
			if testHookSnapshotRead != nil {
				testHookSnapshotRead()
			}
			synced = &syncedAt{seq: n, to: to, rows: rowsWriter{s: s}}
			if s.batched {
				synced.lsn = g.txAt(ctx, n)
			}
		}
		f.mu.Lock()
		s.waiting = false
		// History runs to where live delivery stands; or to from, when
		// the feed is not there yet (live frames up to it are the
		// client's already: they are dropped, see sendTo).
		s.boundary = max(f.last, from)
		if synced != nil {
			s.boundary = max(s.boundary, synced.to)
		}
		if s.batched && f.txOpen && s.boundary == f.last {
			// Inside a transaction: the history runs to its end.
			s.openBoundary, s.openLSN = true, bytes.Clone(f.txLSN)
			f.opening = append(f.opening, s)
		}
		f.mu.Unlock()
		err = g.replay(ctx, s, from, synced)
		g.replays.done(turn)
		if s.done.Load() {
			err = errSubEnded
		}
		if err == nil && synced != nil && synced.more {
			// The history ended before the marker of the transaction
			// synced said more of: live delivery ends it (closeOwed).
			f.mu.Lock()
			s.owedClose = synced.lsn
			f.owing = append(f.owing, s)
			f.mu.Unlock()
		}
	}
	var gone *historyGoneError
	switch {
	case errors.Is(err, errSubEnded):
		// Unsubscribed, the connection closed, or the feed found messages
		// dropped after the boundary (endAll): then the error is sent here,
		// after every history frame.
		f.mu.Lock()
		msg, ended := s.endMsg, s.ended.Load() && !s.gone
		f.mu.Unlock()
		if ended {
			g.endResume(s, CodeHistoryUnavailable, msg)
		}
		return
	case errors.As(err, &gone):
		g.met.historyLost.Inc()
		g.log.Info("gateway resume found history discarded", "subscription", s.id, "remote", s.c.nc.RemoteAddr().String(), "err", err)
		g.endResume(s, CodeHistoryUnavailable, gone.msg)
		return
	case err != nil:
		if s.c.isClosing() {
			return
		}
		g.log.Warn("gateway resume failed", "subscription", s.id, "remote", s.c.nc.RemoteAddr().String(), "err", err)
		g.endResume(s, CodeInternal, "resume failed: "+err.Error()+"; subscribe again with from")
		return
	}
	// The live frames held meanwhile go out one at a time, paced to the
	// client like the history (a frame may wait for room in the send
	// queue), and without the feed's lock while they wait. Frames arriving
	// meanwhile are still held behind them, so the order stays; the last
	// one out ends the catching up, under the lock. When the feed finds
	// messages dropped by the stream (endAll), what is still held is
	// dropped and the subscription ends with history_unavailable.
	for {
		f.mu.Lock()
		if s.gone {
			f.mu.Unlock()
			return
		}
		if s.ended.Load() {
			msg := s.endMsg
			s.held, s.heldBytes, s.heldBig = nil, 0, 0
			f.mu.Unlock()
			g.endResume(s, CodeHistoryUnavailable, msg)
			return
		}
		if s.snapshot {
			if len(s.heldEv) == 0 {
				s.heldEv, s.heldBytes, s.catching = nil, 0, false
				s.projBefore.Store(nil)
				f.mu.Unlock()
				return
			}
			e := s.heldEv[0]
			s.heldEv[0] = heldEvent{}
			s.heldEv = s.heldEv[1:]
			s.heldBytes -= len(e.data)
			var frames [][]byte
			if s.batched {
				frames = f.releaseHeld(s, e)
			} else {
				frames = s.viewFrames(e.seq, e.op, e.data, false)
			}
			f.mu.Unlock()
			for _, frame := range frames {
				if !s.c.enqueueFor(s, frame, true) && s.c.isClosing() {
					return
				}
			}
			continue
		}
		if len(s.held) == 0 {
			s.held, s.heldBytes, s.heldBig, s.catching = nil, 0, 0, false
			s.projBefore.Store(nil)
			f.mu.Unlock()
			return
		}
		frame := s.held[0]
		s.held[0] = nil
		s.held = s.held[1:]
		if len(frame) > f.g.cfg.SendQueueBytes {
			s.heldBig--
		} else {
			s.heldBytes -= len(frame)
		}
		f.mu.Unlock()
		if !s.c.enqueueFor(s, frame, true) {
			if s.c.isClosing() {
				return
			}
			// Ended meanwhile: the next round says how.
		}
	}
}

// endResume ends a resuming subscription with an error, then unsubscribed.
func (g *Gateway) endResume(s *sub, code ErrorCode, msg string) {
	s.c.sendError(s.id, code, msg)
	s.c.dropSub(s)
	s.c.send(AppendUnsubscribed(nil, s.id))
}

// replay sends the history of s after from through its boundary, paced by
// the gateway's replay rate and by the client (a frame waits for room in
// the send queue).
//
// A batched subscription's history is sent in transaction frames
// (batch.go); when it ends inside a transaction, what it gathered of it is
// sent with "more": true, and live delivery sends the rest. A batched
// view's synced (non-nil) goes out before the history's first frame, or
// at its end (see syncedAt).
func (g *Gateway) replay(ctx context.Context, s *sub, from uint64, synced *syncedAt) (err error) {
	f := s.f.Load()
	f.mu.Lock()
	// An open boundary (batch.go) ends where the transaction it began in
	// is seen to end, which the feed sees at the same message: at its
	// marker, or before an event of another transaction.
	boundary, open, openLSN := s.boundary, s.openBoundary, s.openLSN
	f.mu.Unlock()
	var txb *txBatch
	more := true // whether a transaction the history ends inside goes on live
	var scratchEv query.Event
	if s.batched {
		txb = &txBatch{}
	}
	if s.batched || synced != nil {
		defer func() {
			if err != nil {
				return
			}
			if synced != nil && !synced.sent && !synced.send(s, "", nil, &scratchEv) {
				err = errSubEnded
				if !s.done.Load() {
					err = errors.New("connection closed")
				}
				return
			}
			if txb == nil {
				return
			}
			if frame := txb.flush(s.id, more); frame != nil && !s.c.enqueueFor(s, frame, true) {
				err = errSubEnded
				if !s.done.Load() {
					err = errors.New("connection closed")
				}
			}
		}()
	}
	if from >= boundary && !open {
		return nil
	}
	newest, err := g.lastSeqOf(ctx, f.subjects...)
	if err != nil {
		return wrapf(err, "read history after %d", from)
	}
	// The consumer is named here, and deleted by that name however the
	// resume ends, a failed creation included: one whose answer did not
	// come may exist all the same. Its creation is not cut short by the
	// subscription's end either: an answer abandoned midway leaves a
	// consumer made, and a delete sent then may be handled before the
	// creation (the server answers API requests from several workers).
	name := replayConsumerName()
	defer g.dropConsumer(name, "a resume's", replayConsumerIdle)
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), replayRequestTimeout)
	cons, err := g.str.CreateConsumer(cctx, jetstream.ConsumerConfig{
		Name:              name,
		FilterSubjects:    f.subjects,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from + 1,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: replayConsumerIdle,
		MemoryStorage:     true,
	})
	ccancel()
	if err != nil {
		return wrapf(err, "read history after %d", from)
	}
	// The consumer's start is fixed now: if the stream lost messages
	// after from meanwhile, say so rather than skip them.
	if perr := g.checkHistory(ctx, s.id, from); perr != nil {
		if perr.Code == CodeHistoryUnavailable {
			return &historyGoneError{msg: perr.Message}
		}
		return errors.New(perr.Message)
	}
	if testHookReplayConsumer != nil {
		testHookReplayConsumer()
	}
	rc := replayCheck{g: g, subjects: f.subjects, what: f.name, total: cons.CachedInfo().NumPending, newest: newest}
	if rc.total == 0 && !open {
		return nil
	}
	pos := from // every message of the subject up to pos is sent (or unwanted)
	var ev query.Event
	var claimEnv, mark query.Row
	var scratch []byte
	lim := g.batchLimits()
	msgs := make([]jetstream.Msg, 0, replayBatch)
	metas := make([]*jetstream.MsgMetadata, 0, replayBatch)
	idle := false // an open boundary's last fetch found nothing
	for {
		if s.done.Load() {
			return errSubEnded
		}
		if idle {
			select {
			case <-ctx.Done():
				return wrapf(ctx.Err(), "read history after %d", pos)
			case <-time.After(openBoundaryPoll):
			}
		} else if err := g.replays.rate.take(ctx, replayBatch); err != nil {
			return wrapf(err, "read history after %d", pos)
		}
		var batch jetstream.MessageBatch
		if testHookReplayFetch != nil {
			batch = testHookReplayFetch(cons)
		}
		switch {
		case batch != nil:
			// The test's.
		case open:
			// Reading beyond what the stream holds, a fetch that waits
			// would take messages stored after the loop below stops
			// reading it, and lose them: one that does not wait takes
			// only what is there.
			batch, err = cons.FetchNoWait(replayBatch)
		default:
			batch, err = cons.Fetch(replayBatch, jetstream.FetchMaxWait(replayFetchWait))
		}
		if err != nil {
			return wrapf(err, "read history after %d", pos)
		}
		msgs, metas = msgs[:0], metas[:0]
		in := batch.Messages()
	read:
		for {
			var msg jetstream.Msg
			select {
			case m, ok := <-in:
				if !ok {
					break read
				}
				msg = m
			case <-ctx.Done():
				// The subscription ended, or the gateway is closing: the
				// fetch may wait up to replayFetchWait for messages of no
				// use now, and the consumer's delete with it.
				return wrapf(ctx.Err(), "read history after %d", pos)
			}
			meta, err := msg.Metadata()
			if err != nil {
				return wrapf(err, "read history after %d", pos)
			}
			if meta.Sequence.Consumer != rc.delivered+1 {
				// Not the stream's doing: messages lost on their way here.
				return fmt.Errorf("read history after %d: message %d of the consumer came after %d", pos, meta.Sequence.Consumer, rc.delivered)
			}
			rc.delivered++
			msgs, metas = append(msgs, msg), append(metas, meta)
			// Past the boundary, messages are live delivery's; with
			// none pending, there is nothing more to wait for. Not so
			// with an open boundary: its fetch does not wait, and ends
			// by itself once it has given what the stream holds, which
			// may be more than NumPending said (messages stored while
			// it was answered); whatever of it was left unread would be
			// lost, the consumer having delivered it.
			if !open && (meta.Sequence.Stream > boundary || meta.NumPending == 0) {
				break read
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return wrapf(err, "read history after %d", pos)
		}
		g.met.replayed.Add(float64(len(msgs)))
		var pending uint64 // the consumer's NumPending after the batch
		wasIdle := idle
		idle = open && len(msgs) == 0
		jumps, prev := len(msgs) == 0 && !open, pos
		for _, m := range metas {
			jumps = jumps || m.Sequence.Stream > prev+1
			prev, pending = m.Sequence.Stream, m.NumPending
		}
		if jumps {
			if err := rc.batch(ctx, pending); err != nil {
				return wrapf(err, "read history after %d", pos)
			}
		}
		for i, msg := range msgs {
			seq := metas[i].Sequence.Stream
			if seq > pos+1 && !rc.clean(pos) {
				return historyGone(rc.what, pos, "")
			}
			if seq > boundary && !open {
				return nil
			}
			if s.c.isClosing() {
				return errors.New("connection closed")
			}
			data := msg.Data()
			isMarker := f.marker != "" && msg.Subject() == f.marker
			if s.topic == "" && !isMarker {
				data = g.resolve(msg.Subject(), seq, data, &claimEnv)
			}
			closing := false // the open boundary ends with this message
			if seq > boundary {
				if isMarker {
					closing = true
				} else if bit := schema.OpBit(subjectOp(msg.Subject())); bit != 0 && ev.Reset(bit, data) == nil {
					if m, inTxn := eventMeta(&ev); !inTxn || !bytes.Equal(m.lsn, openLSN) {
						// The feed sends it. What the history holds goes
						// on there when it is of the same transaction.
						more = inTxn && txb.n > 0 && bytes.Equal(txb.lsn, m.lsn)
						return nil
					}
				}
			}
			if synced.folds(seq) {
				folded, err := synced.fold(s, seq, msg.Subject(), data, isMarker, &scratchEv)
				if err != nil {
					if errors.Is(err, errSubEnded) && !s.done.Load() {
						return errors.New("connection closed")
					}
					return err
				}
				if folded {
					pos = seq
					if seq == boundary && !open {
						return nil
					}
					continue
				}
			}
			if synced != nil && !synced.sent && !synced.send(s, msg.Subject(), data, &scratchEv) {
				if s.done.Load() {
					return errSubEnded
				}
				return errors.New("connection closed")
			}
			var frames [][]byte
			if txb != nil {
				frames = s.historyBatch(nil, txb, lim, f.marker, seq, msg.Subject(), data, &ev, &scratch, &mark)
				if isMarker && synced != nil && synced.more {
					if m, ok := markerMeta(&mark, data); ok {
						frames = synced.closing(s, seq, m, frames)
					}
				}
			} else if s.snapshot {
				frames = s.viewFrames(seq, schema.OpBit(subjectOp(msg.Subject())), data, false)
			} else if frame := s.historyFrame(seq, msg.Subject(), data, &ev); frame != nil {
				frames = [][]byte{frame}
			}
			for _, frame := range frames {
				if s.done.Load() {
					return errSubEnded
				}
				if !s.c.enqueueFor(s, frame, true) {
					if s.done.Load() {
						return errSubEnded // unsubscribed, or ended by new grants or by the feed
					}
					return errors.New("connection closed")
				}
			}
			pos = seq
			if seq == boundary && !open || closing {
				return nil
			}
		}
		switch {
		case len(msgs) == 0 && !open:
			// An empty fetch does not say that nothing is left: one
			// whose answer was slow (a loaded server) comes back empty
			// once its wait, or the client's own timer, runs out, and
			// what the server delivered after that is gone with it.
			// Ending the history here would skip the rest of it up to
			// the boundary (live delivery starts after it), cutting a
			// transaction with more and never sending its rest. The
			// consumer says which it was.
			left, err := rc.left(ctx, cons)
			if err != nil {
				return wrapf(err, "read history after %d", pos)
			}
			if left {
				g.log.Info("gateway resume's fetch came back empty with history left; fetching again",
					"subscription", s.id, "after", pos, "boundary", boundary)
				continue
			}
			// Nothing left of the subject after pos: none of it may
			// have been dropped on the way to the boundary.
			if !rc.clean(pos) {
				return historyGone(rc.what, pos, "")
			}
			return nil
		case len(msgs) == 0:
			if !rc.clean(pos) {
				return historyGone(rc.what, pos, "")
			}
			if !wasIdle {
				// The same holds of a fetch that does not wait (its
				// client gives up after a second): what it lost would
				// show only with the next message, which may be long
				// in coming. Asked once as the boundary goes idle.
				if _, err := rc.left(ctx, cons); err != nil {
					return wrapf(err, "read history after %d", pos)
				}
			}
		case pending == 0 && !open:
			// The consumer had every message of the subject, and none
			// after pos can have been dropped before it (retention.go, 2).
			return nil
		}
		// An open boundary waits for the end of its transaction.
	}
}

// replayCheck judges the jumps of a resume's consumer (retention.go, 3).
type replayCheck struct {
	g         *Gateway
	subjects  []string
	what      string
	total     uint64 // NumPending at creation: the subject's messages after from
	newest    uint64 // the subject's last message before the creation
	delivered uint64 // messages the consumer has delivered

	exact bool   // the last batch is accounted for: nothing was dropped up to it
	first uint64 // else: the stream's first sequence, read after the batch
}

// batch settles the last batch, whose last message came with NumPending
// pending (0 for an empty batch): counted exactly when the subject got no
// new message since the consumer was created, else by the stream's first
// sequence.
func (rc *replayCheck) batch(ctx context.Context, pending uint64) error {
	ctx, cancel := context.WithTimeout(ctx, checkWithin)
	defer cancel()
	last, err := rc.g.lastSeqOf(ctx, rc.subjects...)
	if err != nil {
		return err
	}
	rc.exact = last == rc.newest && rc.delivered+pending == rc.total
	if rc.exact {
		return nil
	}
	rc.first, err = rc.g.firstSeqAfter(ctx)
	return err
}

// left asks the consumer, after a fetch that brought nothing, whether it
// has more for the resume: true when it holds messages not yet delivered
// (the fetch gave up before they came). Messages it delivered that the
// resume never received (to a fetch that had given up) are lost to it: an
// error, which fails the resume rather than leave a gap.
func (rc *replayCheck) left(ctx context.Context, cons jetstream.Consumer) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, replayRequestTimeout)
	defer cancel()
	info, err := cons.Info(ctx)
	if err != nil {
		return false, fmt.Errorf("read the resume's consumer: %w", err)
	}
	if info.Delivered.Consumer != rc.delivered {
		return false, fmt.Errorf("the consumer delivered %d messages, %d of them received", info.Delivered.Consumer, rc.delivered)
	}
	return info.NumPending > 0, nil
}

// clean reports whether no message of the subject after pos, up to the
// last of the batch, was dropped.
func (rc *replayCheck) clean(pos uint64) bool { return rc.exact || rc.first <= pos+1 }

// historyFrame renders one message of the history for s, or nil when s
// does not want it. ev is scratch for indexing the event.
func (s *sub) historyFrame(seq uint64, subject string, data []byte, ev *query.Event) []byte {
	if s.topic != "" {
		return encodeMessage(s.id, s.topic, seq, topicPayload(data))
	}
	view, proj, row, frame, ok := s.historyDecide(seq, subject, data, ev)
	if frame != nil || !ok {
		return frame
	}
	return encodeEvent(s.id, proj, seq, data, view, row)
}

// historyDecide indexes a table's event of the history into ev and
// decides whether s takes it: then ok, and the view, projection and row
// to encode it with; or a filter_failed frame to send instead (see
// historyFailed).
func (s *sub) historyDecide(seq uint64, subject string, data []byte, ev *query.Event) (view query.View, proj *query.Projection, row *query.Row, frame []byte, ok bool) {
	bit := schema.OpBit(subjectOp(subject))
	if bit == 0 || ev.Reset(bit, data) != nil {
		return view, nil, nil, nil, false
	}
	view, proj, ok, err := s.decide(ev)
	if err == query.ErrWithheld {
		return view, nil, nil, nil, false
	}
	if err != nil {
		return view, nil, nil, s.historyFailed(seq, err), false
	}
	if !ok {
		return view, nil, nil, nil, false
	}
	row, _ = ev.Row()
	if proj == nil {
		proj = s.projectionAt(seq)
	}
	return view, proj, row, nil, true
}

// historyFailed is the filter_failed frame of the event seq of s's history,
// which its filter could not evaluate (err); nil within a second of the
// last one s was sent, by its history or live: at most one a second, as
// feed.filterFailed sends them, not one per event of a long history.
func (s *sub) historyFailed(seq uint64, err error) []byte {
	f := s.f.Load()
	now := time.Now()
	f.mu.Lock()
	due := now.Sub(s.failedAt) >= time.Second
	if due {
		s.failedAt = now
	}
	f.mu.Unlock()
	if !due {
		return nil
	}
	f.g.met.errorFrames.WithLabelValues(string(CodeFilterFailed)).Inc()
	msg := "event seq " + strconv.FormatUint(seq, 10) + " not delivered: " + err.Error()
	return finishFrame(AppendError(newFrame(len(msg)+64), s.id, CodeFilterFailed, msg), opText)
}
