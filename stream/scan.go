package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// OriginHeader names where a message comes from: the CDC reader sets it on
// everything it publishes to "<system identifier>/<timeline>/<database>/<slot>"
// of the PostgreSQL it reads, so that after a restart it finds its own
// messages in a stream other writers share.
const OriginHeader = "Tablecast-Origin"

// scanBatch is how many headers one fetch of a scan asks for: large enough
// that a scan of a second of a busy reader's events (tens of thousands) is
// a handful of round trips, small enough to bound what is buffered.
const scanBatch = 4096

// LastWithHeader is what ScanLastWithHeader found.
type LastWithHeader struct {
	// MsgID is the Nats-Msg-Id of the last message carrying the header
	// value, and Seq its stream sequence; "" and 0 when none does.
	MsgID string
	Seq   uint64
	// Scanned counts the messages read.
	Scanned int
	// Refused counts the messages carrying the header value that accept
	// refused or that had no Nats-Msg-Id.
	Refused int
}

// ScanLastWithHeader reads the headers (never the payloads) of the messages
// of stream streamName from sequence from to sequence to, both included, on
// the subjects matching one of filters (every subject when there is none),
// and returns the last of them whose header key is value and whose
// Nats-Msg-Id accept takes (nil takes any). A message with the header value
// and no Nats-Msg-Id is never taken: whoever shares the stream may copy a
// header (a service forwarding events), and such a copy must not hide the
// last message of the header's owner. It reads through
// a short-lived consumer of its own, deleted when it returns; messages
// stored beyond to while it runs are not read. It stops with ctx's error
// once ctx ends, between two messages.
func ScanLastWithHeader(ctx context.Context, js jetstream.JetStream, streamName string, from, to uint64, filters []string, key, value string, accept func(msgID string) bool) (LastWithHeader, error) {
	var out LastWithHeader
	if from == 0 {
		from = 1
	}
	if from > to {
		return out, nil
	}
	cfg := jetstream.ConsumerConfig{
		Description:       "tablecast: the reader looks for its own messages after a restart",
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		AckPolicy:         jetstream.AckNonePolicy,
		HeadersOnly:       true,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: time.Minute, // removed by the server should we die mid-scan
	}
	switch len(filters) {
	case 0:
	case 1:
		cfg.FilterSubject = filters[0]
	default:
		cfg.FilterSubjects = filters
	}
	cons, err := js.CreateConsumer(ctx, streamName, cfg)
	if err != nil {
		return out, fmt.Errorf("scan stream %s from sequence %d: create consumer: %w", streamName, from, err)
	}
	name := cons.CachedInfo().Name
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, streamName, name)
	}()
	pending := cons.CachedInfo().NumPending
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, scanBatch)), jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			return out, fmt.Errorf("scan stream %s: fetch after %d messages: %w", streamName, out.Scanned, err)
		}
		got := 0
		in := batch.Messages()
	read:
		for {
			// An ended ctx ends the scan between two messages: a reader
			// that lost its lease stops at once, rather than once a scan
			// of thousands of headers on a loaded machine is done.
			if err := ctx.Err(); err != nil {
				return out, fmt.Errorf("scan stream %s: after %d messages: %w", streamName, out.Scanned, err)
			}
			var m jetstream.Msg
			select {
			case msg, ok := <-in:
				if !ok {
					break read
				}
				m = msg
			case <-ctx.Done():
				continue // said above
			}
			got++
			md, err := m.Metadata()
			if err != nil {
				return out, fmt.Errorf("scan stream %s: %w", streamName, err)
			}
			if md.Sequence.Stream > to {
				return out, nil
			}
			out.Scanned++
			if h := m.Headers(); h.Get(key) == value {
				if id := h.Get(msgIDHeader); id != "" && (accept == nil || accept(id)) {
					out.MsgID, out.Seq = id, md.Sequence.Stream
				} else {
					out.Refused++
				}
			}
			pending = md.NumPending
			if md.Sequence.Stream == to {
				pending = 0
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return out, fmt.Errorf("scan stream %s: fetch after %d messages: %w", streamName, out.Scanned, err)
		}
		if got == 0 {
			return out, fmt.Errorf("scan stream %s: nothing delivered after %d messages, %d more expected", streamName, out.Scanned, pending)
		}
	}
	return out, nil
}
