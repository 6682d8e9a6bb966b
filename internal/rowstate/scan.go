package rowstate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrTruncatedMeanwhile: the table was truncated while its rows were
// read; read them again.
var ErrTruncatedMeanwhile = errors.New("the table was truncated while its rows were read")

// Scan reads the rows of a table from the state and returns the event
// sequence N they are as of: applying what fn receives in order (a row
// sets its key, a tombstone removes it) gives the table's rows as of event
// N exactly, so that the events after N complete them. fn gets the rows in
// the order of the rows stream, as they stand when the scan reaches them;
// a row changed meanwhile comes again later, and a row deleted meanwhile
// comes as a tombstone (tombstones of rows deleted before the scan began
// are left out). Row's slices are valid during fn only. ErrNoState when no
// maintainer has written the database's state.
func Scan(ctx context.Context, rows jetstream.Stream, prefix, db, schemaName, table string, fn func(Row) error) (uint64, error) {
	var marker DBMarker
	var status TableStatus
	var err error
	for attempt := 0; ; attempt++ {
		// A look-up timing out under load is tried again.
		if marker, err = ReadDBMarker(ctx, rows, prefix, db); err == nil {
			status, err = ReadTableStatus(ctx, rows, prefix, db, schemaName, table)
		}
		if err == nil || errors.Is(err, ErrNoState) || attempt >= 3 || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return 0, err
	}
	began := marker.Applied
	n := began
	// A read cut short (the consumer lost under load) starts again from
	// the stream's start: rows come again, which fn takes as they are,
	// and tombstones after began still come.
	for attempt := 0; ; attempt++ {
		var err error
		n, err = scanOnce(ctx, rows, prefix, db, schemaName, table, began, n, status, fn)
		var cut *cutShortError
		if !errors.As(err, &cut) || attempt >= 5 || ctx.Err() != nil {
			return n, err
		}
	}
}

// cutShortError: the rows were not all read, for a reason another try may
// not meet.
type cutShortError struct{ err error }

func (e *cutShortError) Error() string { return e.err.Error() }
func (e *cutShortError) Unwrap() error { return e.err }

func scanOnce(ctx context.Context, rows jetstream.Stream, prefix, db, schemaName, table string, began, n uint64, status TableStatus, fn func(Row) error) (uint64, error) {
	cons, err := rows.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{TableRowsFilter(prefix, db, schemaName, table), DBMarkerSubject(prefix, db)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return n, &cutShortError{fmt.Errorf("read the rows of %s.%s: %w", schemaName, table, err)}
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return n, &cutShortError{fmt.Errorf("read the rows of %s.%s: %w", schemaName, table, err)}
	}
	defer it.Stop()
	defer context.AfterFunc(ctx, it.Stop)()
	markerSubj := DBMarkerSubject(prefix, db)
	tableSubj := TableMarkerSubject(prefix, db, schemaName, table)
	var pos uint64 // the stream sequence of the last message read
	stalls := 0    // waits in a row without a message
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		msg, err := it.Next(jetstream.NextMaxWait(time.Second))
		if errors.Is(err, nats.ErrTimeout) {
			// The consumer's count promised more, which was replaced
			// meanwhile: done when the stream has nothing beyond.
			end, err := lastPosition(ctx, rows, prefix, db, schemaName, table)
			if err != nil {
				return n, &cutShortError{err}
			}
			if end <= pos {
				return n, nil
			}
			// More is there but the consumer does not deliver it (it
			// stalls under load): read again with a new one.
			if stalls++; stalls >= 3 {
				return n, &cutShortError{fmt.Errorf("read the rows of %s.%s: the consumer stalled at %d of %d", schemaName, table, pos, end)}
			}
			continue
		}
		stalls = 0
		if err != nil {
			return n, &cutShortError{fmt.Errorf("read the rows of %s.%s: %w", schemaName, table, err)}
		}
		meta, err := msg.Metadata()
		if err != nil {
			return 0, fmt.Errorf("read the rows of %s.%s: %w", schemaName, table, err)
		}
		pos = meta.Sequence.Stream
		h := msg.Headers()
		seq := parseUint(h.Get(HeaderSeq))
		switch msg.Subject() {
		case markerSubj:
			n = max(n, seq)
		case tableSubj:
			if seq > status.Truncated {
				return 0, ErrTruncatedMeanwhile
			}
		default:
			r, err := DecodeRow(h, msg.Data())
			if err != nil {
				return 0, fmt.Errorf("read the rows of %s.%s: %w", schemaName, table, err)
			}
			n = max(n, r.Seq)
			if !r.Deleted || r.Seq > began {
				if err := fn(r); err != nil {
					return 0, err
				}
			}
		}
		if meta.NumPending == 0 {
			// The consumer's count of what is left is not exact while
			// rows are replaced ahead of it: ask the stream.
			end, err := lastPosition(ctx, rows, prefix, db, schemaName, table)
			if err != nil {
				return n, &cutShortError{err}
			}
			if end <= meta.Sequence.Stream {
				return n, nil
			}
		}
	}
}

// lastPosition is the stream sequence of the last message of the table or
// of the database's marker.
func lastPosition(ctx context.Context, rows jetstream.Stream, prefix, db, schemaName, table string) (uint64, error) {
	var end uint64
	for _, subj := range []string{TableRowsFilter(prefix, db, schemaName, table), DBMarkerSubject(prefix, db)} {
		msg, err := rows.GetLastMsgForSubject(ctx, subj)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return 0, fmt.Errorf("read the rows of %s.%s: %w", schemaName, table, err)
		default:
			end = max(end, msg.Sequence)
		}
	}
	return end, nil
}
