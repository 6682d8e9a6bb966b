package wsgate

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var errShuttingDown = errors.New("gateway shutting down")

func wrapf(err error, format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, err)...)
}

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
// boundary (where live delivery took over), reading them with a consumer of
// its own and pacing itself to the client, then releases the live frames
// held meanwhile. No message is sent twice and none is skipped: history
// ends at the boundary, live frames start after it.
func (g *Gateway) catchUp(s *sub, from uint64) {
	f := s.f.Load()
	if err := g.replay(s, from); err != nil {
		if s.c.isClosing() {
			return
		}
		g.log.Warn("gateway resume failed", "subscription", s.id, "remote", s.c.nc.RemoteAddr().String(), "err", err)
		s.c.sendError(s.id, CodeInternal, "resume failed: "+err.Error()+"; subscribe again with from")
		s.c.dropSub(s)
		s.c.send(AppendUnsubscribed(nil, s.id))
		return
	}
	// The live frames held meanwhile go out one at a time, paced to the
	// client like the history (a frame may wait for room in the send
	// queue), and without the feed's lock while they wait. Frames arriving
	// meanwhile are still held behind them, so the order stays; the last
	// one out ends the catching up, under the lock.
	for {
		f.mu.Lock()
		if s.gone {
			f.mu.Unlock()
			return
		}
		if len(s.held) == 0 {
			s.held, s.heldBytes, s.heldBig, s.catching = nil, 0, 0, false
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
			return
		}
	}
}

// replay sends the history of s after from through its boundary.
func (g *Gateway) replay(s *sub, from uint64) error {
	f := s.f.Load()
	f.mu.Lock()
	boundary := s.boundary
	f.mu.Unlock()
	if from >= boundary {
		return nil
	}
	ctx, cancel := context.WithCancel(g.ctx)
	defer cancel()
	cons, err := g.str.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject:     f.subject,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from + 1,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
	})
	if err != nil {
		return wrapf(err, "read history after %d", from)
	}
	name := cons.CachedInfo().Name
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		_ = g.str.DeleteConsumer(dctx, name)
	}()
	// The consumer's start is fixed now: if the stream lost messages
	// after from meanwhile, say so rather than skip them.
	if perr := g.checkHistory(ctx, s.id, from); perr != nil {
		return errors.New(perr.Message)
	}
	if cons.CachedInfo().NumPending == 0 {
		return nil
	}
	var env, row, claimEnv Row
	for {
		batch, err := cons.Fetch(512, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return wrapf(err, "read history after %d", from)
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			meta, err := msg.Metadata()
			if err != nil {
				return wrapf(err, "read history after %d", from)
			}
			seq := meta.Sequence.Stream
			if seq > boundary {
				return nil
			}
			if s.c.isClosing() {
				return errors.New("connection closed")
			}
			data := msg.Data()
			if s.topic == "" {
				data = g.resolve(msg.Subject(), seq, data, &claimEnv)
			}
			if frame := s.historyFrame(seq, msg.Subject(), data, &env, &row); frame != nil {
				if !s.c.enqueueFor(s, frame, true) {
					if s.ended.Load() {
						return nil // unsubscribed, or ended by new grants
					}
					return errors.New("connection closed")
				}
			}
			if seq == boundary || meta.NumPending == 0 {
				return nil
			}
		}
		if err := batch.Error(); err != nil {
			return wrapf(err, "read history after %d", from)
		}
		if got == 0 {
			return fmt.Errorf("read history after %d: the stream sent nothing within 5s", from)
		}
	}
}

// historyFrame renders one message of the history for s, or nil when s
// does not want it.
func (s *sub) historyFrame(seq uint64, subject string, data []byte, env, row *Row) []byte {
	if s.topic != "" {
		return encodeMessage(s.id, s.topic, seq, topicPayload(data))
	}
	bit := opBit(subjectOp(subject))
	if bit == 0 || env.Reset(data) != nil {
		return nil
	}
	hasRow := eventRow(env, row, bit)
	var old *Row
	hasOld := false
	if bit == bitUpdate {
		old = oldRows.Get().(*Row)
		defer oldRows.Put(old)
		hasOld = oldRow(env, old)
	}
	view, ok, err := s.decide(bit, row, hasRow, old, hasOld)
	if err == errWithheld {
		return nil
	}
	if err != nil {
		msg := "event seq " + strconv.FormatUint(seq, 10) + " not delivered: " + err.Error()
		return finishFrame(AppendError(newFrame(len(msg)+64), s.id, CodeFilterFailed, msg), opText)
	}
	if !ok {
		return nil
	}
	return encodeEvent(s.id, s.proj.Load(), seq, data, view, row)
}

// oldRows are the scratch Rows historyFrame indexes an update's old row in.
var oldRows = sync.Pool{New: func() any { return new(Row) }}
