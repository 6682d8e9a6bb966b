package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream's answers while a cluster elects a leader or a node restarts
// (nats-server's error codes).
const (
	errCodeClusterNoPeers    jetstream.ErrorCode = 10005 // no suitable peers for placement
	errCodeClusterNotAvail   jetstream.ErrorCode = 10008 // JetStream system temporarily unavailable
	errCodeClusterNotLeader  jetstream.ErrorCode = 10009 // cluster can not handle request
	errCodeStreamOffline     jetstream.ErrorCode = 10118
	errCodeConsumerOffline   jetstream.ErrorCode = 10119
	errCodeStreamOfflineWhy  jetstream.ErrorCode = 10194
	errCodeConsumerOfflineWy jetstream.ErrorCode = 10195
)

// Transient reports whether err is an answer JetStream gives for a while
// and then stops giving by itself: no answer in time (a request lost while
// a stream or the cluster's meta group elects a leader), no responders (the
// client is between servers), or a cluster that says it cannot handle the
// request yet. A caller that got one may ask again.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected) {
		return true
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode {
		case errCodeClusterNoPeers, errCodeClusterNotAvail, errCodeClusterNotLeader,
			errCodeStreamOffline, errCodeConsumerOffline, errCodeStreamOfflineWhy, errCodeConsumerOfflineWy:
			return true
		}
	}
	return false
}

// retryWithin is how long the set-up calls (streams, buckets) ask again
// after transient answers before they give up with the last one.
const retryWithin = 2 * time.Minute

// attemptTimeout bounds each of those calls.
const attemptTimeout = 4 * time.Second

// RetryTransient calls fn until it returns nil or an error that is not
// Transient, for at most two minutes while ctx lasts: for the calls that
// set up streams and buckets, which a JetStream cluster may leave
// unanswered while it elects a leader.
func RetryTransient(ctx context.Context, fn func(context.Context) error) error {
	return retry(ctx, retryWithin, fn)
}

// retry calls fn until it returns nil or an error that is not Transient,
// with a growing pause between calls, for at most within (while ctx lasts).
// Its error is fn's last, said to have lasted when it was transient.
func retry(ctx context.Context, within time.Duration, fn func(context.Context) error) error {
	deadline := time.Now().Add(within)
	pause := 50 * time.Millisecond
	for {
		// Each call has a deadline of its own: a request the cluster
		// dropped is not answered later, however long one waits.
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := fn(actx)
		cancel()
		if err == nil || !Transient(err) || ctx.Err() != nil {
			return err
		}
		if time.Now().Add(pause).After(deadline) {
			return fmt.Errorf("JetStream gave no usable answer for %s: %w", within, err)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}
