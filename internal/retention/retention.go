// Package retention tells whether a JetStream consumer that jumped in
// stream sequences skipped messages the stream's limits discarded before
// it could deliver them. The gateway (its feeds and resumes) and the
// webhook endpoints share it.
//
// The stream keeps what its limits allow (TABLECAST_STREAM_MAX_BYTES,
// TABLECAST_STREAM_MAX_AGE) and drops its oldest messages first. A
// consumer whose next message has been dropped meanwhile says nothing: it
// moves on to the oldest message left. Consumers filtered to some subjects
// deliver stream sequences that jump over every other subject's messages,
// so a jump on its own proves nothing either way. What JetStream does
// tell:
//
//  1. The stream's first sequence F only grows, and a message removed by
//     the limits lies below every F read after its removal. So for a
//     reader that has handled every message of its subjects up to last
//     and then receives seq > last+1: a message of its subjects in between
//     can have been dropped only if F, read after seq was delivered, is
//     past last+1 (Lost). F <= last+1 proves the jump clean.
//
//  2. A first sequence read after a consumer had delivered every message
//     up to a consumer sequence holds for all of them (Cover): a reader
//     catching up on a backlog reads it once per backlog it was handed,
//     not once per message.
//
//  3. NumPending on a delivered message counts the messages of the
//     consumer's subjects that the stream held after it, not yet
//     delivered, at the moment of delivery. NumPending 0 means that at
//     that moment the consumer had every message of its subjects; a reader
//     that goes on taking what the consumer gives as soon as it is stored
//     need not check its next jump (each reader says when it does not:
//     see wsgate/retention.go and webhook/retention.go).
//
//  4. A consumer created with a start the stream has discarded begins at
//     the stream's first sequence F, without a word. What was discarded
//     from the start on is judged from the stream's state (BeforeStart).
//     From sequence S below F: S to F-1. From time T: the stream stores in
//     order of time, so every message it discarded was stored before (or
//     when) its first message kept was; when that was at or before T,
//     nothing stored from T on is missing. Otherwise, with anything
//     discarded (F past 1), messages stored from T on may have been: the
//     stream keeps no time for what it discarded, so which of them, if
//     any, cannot be told. The range is then every message discarded, from
//     1, the only lower bound the stream justifies (a better one would be
//     the stream's last sequence at T, which nothing kept): an upper bound.
//     An empty stream tells by when its last message was stored.
package retention

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// CheckWithin is how long a read of the stream's first sequence keeps
// asking: long enough for a JetStream cluster to elect a new leader for
// the stream after losing a node (requests go unanswered meanwhile), so
// that a node's loss is not taken for discarded history.
const CheckWithin = time.Minute

// Stream is what a first sequence is read from: a jetstream.Stream.
type Stream interface {
	Info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error)
}

// Consumer is what a delivered count is read from: a jetstream.Consumer.
type Consumer interface {
	Info(ctx context.Context) (*jetstream.ConsumerInfo, error)
}

// FirstSeq returns the stream's first sequence, read now: after the
// delivery of every message already received. A failed read is retried,
// each with a deadline of requestTimeout (a request a cluster dropped is
// never answered), until ctx ends or for CheckWithin at most.
func FirstSeq(ctx context.Context, str Stream, requestTimeout time.Duration) (uint64, error) {
	st, err := State(ctx, str, requestTimeout)
	if err != nil {
		return 0, fmt.Errorf("read the stream's first sequence: %w", err)
	}
	return st.FirstSeq, nil
}

// State returns the stream's state, read now, retried as FirstSeq is.
func State(ctx context.Context, str Stream, requestTimeout time.Duration) (jetstream.StreamState, error) {
	ctx, stop := context.WithTimeout(ctx, CheckWithin)
	defer stop()
	backoff := 10 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, requestTimeout)
		info, err := str.Info(actx)
		cancel()
		if err == nil {
			return info.State, nil
		}
		select {
		case <-ctx.Done():
			return jetstream.StreamState{}, fmt.Errorf("read the stream's state: %w", err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// Lost returns the stream sequences from..to that lie between last (the
// reader handled every message of its subjects up to it) and seq (the
// next it was delivered) and that the stream discarded: those that may
// have held messages of the reader's subjects. first is the stream's first
// sequence read after seq was delivered. lost is false when none was
// discarded: the jump is clean.
func Lost(last, seq, first uint64) (from, to uint64, lost bool) {
	if seq <= last+1 || first <= last+1 {
		return 0, 0, false
	}
	return last + 1, min(first, seq) - 1, true
}

// Cover is a first sequence of the stream read after consumer Consumer
// had delivered every message up to consumer sequence Seq: valid for each
// of them. The zero Cover covers nothing.
type Cover struct {
	Consumer string
	Seq      uint64
	First    uint64
}

// FirstCovering returns a first sequence of the stream read after meta's
// message was delivered: c's when it covers it, else one read now. A read
// is made of the consumer's delivered count first, then of the stream, and
// kept in c: the first sequence then covers every message delivered
// before.
func (c *Cover) FirstCovering(ctx context.Context, meta *jetstream.MsgMetadata, cons Consumer, str Stream, requestTimeout time.Duration) (uint64, error) {
	if c.Seq != 0 && c.Consumer == meta.Consumer && meta.Sequence.Consumer <= c.Seq {
		return c.First, nil
	}
	ctx, cancel := context.WithTimeout(ctx, CheckWithin)
	defer cancel()
	cctx, ccancel := context.WithTimeout(ctx, requestTimeout)
	ci, cerr := cons.Info(cctx)
	ccancel()
	first, err := FirstSeq(ctx, str, requestTimeout)
	if err != nil {
		return 0, err
	}
	if cerr == nil {
		*c = Cover{Consumer: ci.Name, Seq: ci.Delivered.Consumer, First: first}
	}
	return first, nil
}

// BeforeStart returns the stream sequences from..to that the stream had
// discarded from a consumer's start on before the consumer began (see the
// package doc, 4): the start is startSeq, or, when 0, startTime. begin is
// the consumer's first position (as created: its delivered stream
// sequence plus one), or math.MaxUint64 for one not created yet; st is the
// stream's state read after its creation. Messages discarded from begin on
// are the consumer's to deliver, and judged by its jumps (Lost). upper is
// set for a start by time: any of the range, or none, was stored from the
// start time on. lost is false when nothing was discarded from the start.
func BeforeStart(startSeq uint64, startTime time.Time, begin uint64, st jetstream.StreamState) (from, to uint64, upper, lost bool) {
	end := min(begin, st.FirstSeq)
	if end <= 1 {
		return 0, 0, false, false // nothing discarded before it
	}
	switch {
	case startSeq != 0:
		if startSeq >= end {
			return 0, 0, false, false
		}
		return startSeq, end - 1, false, true
	case startTime.IsZero():
		return 0, 0, false, false
	case st.Msgs > 0 && !startTime.Before(st.FirstTime), st.Msgs == 0 && st.LastTime.Before(startTime):
		return 0, 0, false, false // every message discarded was stored before the start
	}
	return 1, end - 1, true, true
}
