package stream

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// StoreFences stores data as a fence on each of subjects, in their order,
// in the stream named streamName, and returns the stream sequence of each.
// It returns once every fence is stored. The fences are sent without
// waiting for each other's acknowledgement, but JetStream stores one
// connection's messages in the order it receives them.
//
// Once it returns, whatever a publisher fenced out by the previous fences
// sends is refused. On a replicated stream, each fence but the last is
// also applied (out of the stream leader's proposal pipeline) by then,
// because the stream applies in order and acknowledges a message only once
// it is applied; the last one is by the time anything sent after it is
// acknowledged. That is why the ring's first subject is fenced first: the
// Publisher's first message expects it, and its last subject is expected
// only once that first message is acknowledged (WithFenceRing).
func StoreFences(ctx context.Context, js jetstream.JetStream, streamName string, subjects []string, data []byte) ([]uint64, error) {
	futures := make([]jetstream.PubAckFuture, len(subjects))
	for i, subject := range subjects {
		f, err := js.PublishAsync(subject, data, jetstream.WithExpectStream(streamName))
		if err != nil {
			return nil, fmt.Errorf("publish fence on %s: %w", subject, err)
		}
		futures[i] = f
	}
	seqs := make([]uint64, len(subjects))
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Stream != streamName {
				return nil, fmt.Errorf("publish fence on %s: stored by stream %s, not %s", subjects[i], ack.Stream, streamName)
			}
			seqs[i] = ack.Sequence
		case err := <-f.Err():
			return nil, fmt.Errorf("publish fence on %s: %w", subjects[i], err)
		case <-ctx.Done():
			return nil, fmt.Errorf("publish fence on %s: %w", subjects[i], ctx.Err())
		}
	}
	return seqs, nil
}

// LastFences returns the stream sequence of the last message st holds on
// each of subjects (0 for a subject it holds none on): the fences a
// publisher that stores none of its own expects. It reads a few subjects at
// a time: one after the other, a ring of FenceRingSize would take a second
// on a replicated stream.
func LastFences(ctx context.Context, st jetstream.Stream, subjects []string) ([]uint64, error) {
	const concurrent = 16
	seqs := make([]uint64, len(subjects))
	errs := make([]error, len(subjects))
	sem := make(chan struct{}, concurrent)
	var wg sync.WaitGroup
	for i, subject := range subjects {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			m, err := st.GetLastMsgForSubject(ctx, subject)
			switch {
			case errors.Is(err, jetstream.ErrMsgNotFound):
			case err != nil:
				errs[i] = fmt.Errorf("read the last fence on %s: %w", subject, err)
			default:
				seqs[i] = m.Sequence
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return seqs, nil
}
