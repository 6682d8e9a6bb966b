package wsgate

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/retention"
)

// Messages the stream discards before they are sent.
//
// The reasoning shared with the webhooks is in internal/retention; what
// follows is how the gateway's consumers apply it.
//
// The stream keeps what its limits allow (TABLECAST_STREAM_MAX_BYTES,
// TABLECAST_STREAM_MAX_AGE) and drops its oldest messages first. A consumer
// whose next message has been dropped meanwhile says nothing: it moves on to
// the oldest message left. The gateway's consumers (a feed's ordered
// consumer, a resume's pull consumer) are each filtered to one table or
// topic, so the stream sequences they deliver jump over every other
// subject's messages: a jump on its own proves nothing either way. What
// JetStream does tell:
//
//  1. The stream's first sequence F only grows, and a message removed by
//     the limits lies below every F read after its removal. So for a reader
//     that has handled every message of its subject up to pos and then
//     receives seq > pos+1: a message of its subject in between can have
//     been dropped only if F, read after seq was delivered, is past pos+1.
//     F <= pos+1 proves the jump clean (firstSeqAfter).
//
//  2. NumPending on a delivered message counts the messages of the
//     consumer's subject that the stream held after it, not yet delivered,
//     at the moment of delivery. Drops go oldest first and the delivered
//     message was still there, so none of those can have been dropped
//     before it: NumPending 0 means that at that moment the consumer had
//     every message of its subject. A resume stops there (nothing after it
//     was lost). A feed notes it: its next jump skips only messages stored
//     after that moment, which are other subjects', or its own stored and
//     then dropped before delivery. For that, the stream would have to
//     drop everything it held in between (ours was the newest): a whole
//     MAX_BYTES of newer writes, or MAX_AGE, while the ordered consumer
//     did not deliver a message it had been told of. It delivers at once
//     while it has pull requests outstanding, and the feed renews them at
//     once: its callback only queues the message (inbox.go). They run out
//     only when the feed's inbox is full and the callback waits (a stall,
//     which the feed notes: a NumPending 0 given before the stall ended
//     is not trusted), or for the round trip of a renewal, shorter than
//     any retention worth configuring. So a feed that keeps up checks
//     nothing and costs nothing, and a quiet table in a stream that rolls
//     over raises no false alarm. A feed that was behind (NumPending > 0,
//     or a stall), or whose ordered consumer was recreated (after a
//     disconnection or missed heartbeats: the message metadata names
//     another consumer), checks every jump with (1).
//
//  3. A resume is behind by design, and its history is bounded: every
//     message of its range was stored before its consumer was created. The
//     consumer's NumPending at creation counts exactly the subject's
//     messages after from (the stream's first sequence, read after the
//     creation, is at most from+1: none was dropped yet). As long as no
//     newer message of the subject has been stored (its last message, read
//     before the creation, is still the last), every later NumPending counts
//     only those, and created − delivered − NumPending of the last message
//     is exactly the number dropped (replayCheck). That settles a jump
//     without (1), which would raise a false alarm for a quiet table whose
//     stream rolls past the resume's position while it is replayed; when
//     the subject did get new messages, (1) decides.
//
// The limits are the only thing that removes messages here (the gateway
// never sets MaxMsgsPerSubject, which drops per subject, and topics are
// purged only when destroyed, which ends their subscriptions). A resume or
// feed that finds messages dropped answers history_unavailable, then
// unsubscribed, to every subscription concerned: never a silent gap.

// historyGoneError: the stream dropped messages of a subscription's subject
// before they were sent.
type historyGoneError struct{ msg string }

func (e *historyGoneError) Error() string { return e.msg }

// historyGone describes messages of what (a table or topic) after seq that
// the stream dropped unsent.
func historyGone(what string, after uint64, why string) *historyGoneError {
	return &historyGoneError{msg: "events of " + what + " after seq " + strconv.FormatUint(after, 10) +
		" were discarded by the stream (its size or age limit) before they could be sent" + why +
		"; reload, then subscribe again without from"}
}

// checkWithin is how long a check of the stream keeps asking (see
// retention.CheckWithin).
const checkWithin = retention.CheckWithin

// firstSeqAfter returns the stream's first sequence, read now: after the
// delivery of every message already received (retention.FirstSeq).
func (g *Gateway) firstSeqAfter(ctx context.Context) (uint64, error) {
	first, err := retention.FirstSeq(ctx, g.str, requestTimeout)
	if err != nil {
		return 0, wrapf(err, "read stream %s", g.cfg.Stream)
	}
	return first, nil
}

// lastSeqOf returns the sequence of the newest message of the subjects
// the stream holds, 0 when it holds none.
func (g *Gateway) lastSeqOf(ctx context.Context, subjects ...string) (uint64, error) {
	var last uint64
	for _, subject := range subjects {
		seq, err := g.lastSeqOfSubject(ctx, subject)
		if err != nil {
			return 0, err
		}
		last = max(last, seq)
	}
	return last, nil
}

// lastSeqOfSubject returns the sequence of the newest message of subject
// the stream holds, 0 when it holds none. A failed read is retried as in
// firstSeqAfter.
func (g *Gateway) lastSeqOfSubject(ctx context.Context, subject string) (uint64, error) {
	ctx, stop := context.WithTimeout(ctx, checkWithin)
	defer stop()
	backoff := 10 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, requestTimeout)
		msg, err := g.str.GetLastMsgForSubject(actx, subject)
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return 0, nil
		case err == nil:
			return msg.Sequence, nil
		}
		select {
		case <-ctx.Done():
			return 0, wrapf(err, "read the last message of %s", subject)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// feedCheck is what a feed knows for judging its consumer's jumps (2
// above). Only the feed's goroutine uses it.
type feedCheck struct {
	caughtUp bool   // the last message came with NumPending 0, after any stall
	consumer string // the consumer that delivered it

	// A first sequence read after the consumer had delivered every message
	// up to a consumer sequence: valid for all of them.
	cover retention.Cover
}

// discarded reports whether messages of the feed's subject between last
// (handled) and seq (being handled) were dropped by the stream before the
// consumer delivered them, as the error to send; nil when the jump is
// clean.
func (f *feed) discarded(last, seq uint64, meta *jetstream.MsgMetadata, stall stallMark) *historyGoneError {
	ck := &f.check
	wasCaughtUp, prevConsumer := ck.caughtUp, ck.consumer
	ck.consumer = meta.Consumer
	ck.caughtUp = meta.NumPending == 0 && (stall.consumer != meta.Consumer || meta.Sequence.Consumer > stall.upTo)
	if seq == last+1 || (wasCaughtUp && meta.Consumer == prevConsumer) {
		return nil
	}
	first, err := f.firstSeqCovering(meta)
	if err != nil {
		// Cannot tell: say so rather than risk a gap.
		return historyGone(f.name, last, " or could not be checked ("+err.Error()+")")
	}
	if _, _, lost := retention.Lost(last, seq, first); !lost {
		return nil
	}
	f.g.log.Warn("gateway feed fell behind the stream's retention: its subscriptions get history_unavailable",
		"subject", f.subject, "after_seq", last, "next_seq", seq, "stream_first_seq", first)
	return historyGone(f.name, last, " (the gateway fell behind the stream)")
}

// firstSeqCovering returns a first sequence of the stream read after meta's
// message was delivered (retention.Cover): a feed catching up on a backlog
// reads once per backlog, not once per message.
func (f *feed) firstSeqCovering(meta *jetstream.MsgMetadata) (uint64, error) {
	first, err := f.check.cover.FirstCovering(f.g.ctx, meta, f.cons, f.g.str, requestTimeout)
	if err != nil {
		return 0, wrapf(err, "read stream %s", f.g.cfg.Stream)
	}
	return first, nil
}
