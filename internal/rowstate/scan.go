package rowstate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ScanBatch is how many messages of the rows stream a scan asks for at a
// time. A scan asks for the next batch only when fn has taken the last
// one, so a reader that waits (a gateway waiting for room in a client's
// send queue) holds at most one batch: about 256 × a row's size, small
// enough for a thousand scans at once, large enough that a request's round
// trip costs little per row.
const ScanBatch = 256

// scanAttempts bounds the reads of a scan that start again after their
// consumer failed (lost under load, a request timing out) without the scan
// moving forward.
const scanAttempts = 5

// Scan reads the rows of a table from the state and returns the event
// sequence N they are as of. fn gets each row at most once, in the order of
// the rows stream, never a tombstone; Row's slices are valid during fn only.
// ErrNoState when no maintainer has written the database's state.
//
// What fn gets is the table as of event N, except the rows changed by
// events after N while the scan ran: such a row comes at its version as of
// N, or not at all. A reader applies the rows, then every event after N,
// taking an update or key change of a row it does not hold as setting it
// (a live view's "enter") and a delete of one it does not hold as nothing;
// it then holds the table, with no gap, no duplicate and no event applied
// twice to a row.
//
// Why. The rows stream holds one message per subject: rewriting a row
// removes its message and appends the new version at the stream's end. A
// scan that read to the end would meet every row rewritten meanwhile again,
// and under a steady writer never finish. So a scan is bounded: it first
// reads the database's marker, at stream position P, saying the events up
// to A are applied; then it reads the table's messages in stream order and
// stops at the first message after P, or when no message of the table at
// most P is left (read: the stream counts none after the last one read
// when a consumer is made). N is A, or the largest event sequence of a row
// read, when larger (rows a maintainer wrote before it stopped, without
// their marker, and a new session left in place).
//
//  1. Every row read has a version at most N: it was read at a position at
//     most P, and a maintainer writes a batch's rows, waits until they are
//     stored, then the marker; so a row before P is of an event at most A,
//     or is counted in N. No event after N is in the rows, so none is
//     applied twice.
//  2. A row read is the row as of N: an event at most N that changed it
//     later was written before P (as in 1.), where it replaced the message
//     read before the scan began. The events after N bring its later
//     changes, as they would to any row held.
//  3. A row of the table as of N that is not read had its message at most
//     P removed before the scan reached it: it was rewritten after P, by an
//     event after N (rows are written in event order), which the reader
//     applies: an update or key change brings it whole (events carry the
//     whole new row; a live view sends it as an enter), a delete removes
//     it, and it is not in the view to begin with. Rows written after P are
//     never read: nothing the events after N also bring comes twice.
//  4. A row deleted as of N has a tombstone or nothing; tombstones are not
//     given to fn. A key change is a tombstone of the old key and the new
//     row under the new one, both of one event: 1. to 3. hold for each.
//  5. A truncate at most A purged the table's rows before P: rows read
//     were written after it. A truncate after N purges rows during the
//     scan, which then reads fewer of them; the truncate is among the
//     events after N and empties what the reader holds. Either way nothing
//     special is needed, and a scan is never read again for a truncate.
//
// Limits. 3. leans on events carrying whole rows: a row left out whose
// event after N has "unchanged" (TOASTed columns PostgreSQL did not send)
// comes without those columns, as any enter does. 1. and 3. lean on a
// maintainer's writes being stored in the order it makes them, which one
// connection's publishes are. A write refused while later ones are stored
// (the next batch's, sent while its own was being stored; on a stream
// without fast batches, its own batch's) leaves a row missing below rows
// of later events: no marker is written
// after those rows until the row is written too (the maintainer's
// careful position), so N never counts them. The marker,
// read from a replica that lags, is an older one: an earlier P, for which
// all of the above holds as well.
//
// The scan reads with a consumer of its own, which asks for more only as
// fn takes what it has; it asks the stream for no wildcard subject's last
// message (a walk over every row's subject). A consumer that fails under
// load, or whose running count says no message of the table is left
// before one after P came (see read), is replaced by one that starts after
// the last message read, so no row comes twice.
func Scan(ctx context.Context, rows jetstream.Stream, prefix, db, schemaName, table string, fn func(Row) error) (uint64, error) {
	var marker *jetstream.RawStreamMsg
	var err error
	for attempt := 0; ; attempt++ {
		// A look-up timing out under load is tried again.
		marker, err = rows.GetLastMsgForSubject(ctx, DBMarkerSubject(prefix, db))
		if err == nil || errors.Is(err, jetstream.ErrMsgNotFound) || attempt >= 3 || ctx.Err() != nil {
			break
		}
	}
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, ErrNoState
	case err != nil:
		return 0, fmt.Errorf("read the row state's position of database %s: %w", db, err)
	}
	sc := scan{rows: rows, schema: schemaName, table: table, fn: fn,
		filter:   TableRowsFilter(prefix, db, schemaName, table),
		rowsBase: TableRowFilter(prefix, db, schemaName, table),
		end:      marker.Sequence, n: parseUint(marker.Header.Get(HeaderSeq))}
	sc.rowsBase = sc.rowsBase[:len(sc.rowsBase)-1]
	stalled := 0
	for {
		before := sc.pos
		done, err := sc.read(ctx)
		switch {
		case done:
			return sc.n, nil
		case err == nil:
			// The running count said nothing is left: a new consumer
			// counts afresh. Each such consumer has taken at least one
			// message, so this ends.
			stalled = 0
			continue
		}
		var cut *cutShortError
		if !errors.As(err, &cut) || ctx.Err() != nil {
			return 0, err
		}
		if sc.pos == before {
			if stalled++; stalled >= scanAttempts {
				return 0, err
			}
		} else {
			stalled = 0
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Duration(stalled) * 100 * time.Millisecond):
		}
	}
}

// scan is the state of one Scan.
type scan struct {
	rows          jetstream.Stream
	schema, table string
	fn            func(Row) error
	filter        string // the table's rows and its marker
	rowsBase      string // "<…table>.r.": the subjects of the table's rows

	end uint64 // P: the position of the marker read first
	pos uint64 // the stream position of the last message read
	n   uint64 // N so far
}

// cutShortError: the rows were not all read, for a reason a new consumer
// may not meet.
type cutShortError struct{ err error }

func (e *cutShortError) Error() string { return e.err.Error() }
func (e *cutShortError) Unwrap() error { return e.err }

// scanWait bounds the wait for the next message of a scan's consumer. The
// message ending the scan is in the stream already, so a longer wait means
// the consumer is lost or starved under load: a new one is tried.
const scanWait = 5 * time.Second

// read reads with a new consumer from after pos until the end (done),
// until the consumer's running count says no message of the table is left
// (false, nil: to be read again with a new consumer), or until the
// consumer fails (a cutShortError).
//
// The consumer reads the table's subjects alone: a consumer of several
// filters is read by the server an order of magnitude slower. So the end
// is known from a count of the table's messages after pos, or from a
// message after P. The count a consumer is made with is the stream's own:
// 0 there means no message of the table after pos at all, and the scan is
// done. The count that comes with each message delivered is not exact,
// and can be too low: the server lowers it at once when a message of the
// filter is removed, but raises it for a message stored only when the
// stream tells the consumer of it, later. A row the maintainer writes
// after P and writes again before the consumer hears of the first write
// (two events of one row in a batch, or batches close together) lowers
// the count with nothing yet to make up for it; under load those add up,
// and the count reads 0 with rows at most P still to come (rows never
// rewritten, which no event after N brings back). So a running 0 only
// sends the scan to a new consumer, whose count is exact. The count may
// also be too high (a message counted, then removed): the wait for the
// next message runs out, and a new consumer counts afresh.
func (sc *scan) read(ctx context.Context) (done bool, err error) {
	what := fmt.Sprintf("read the rows of %s.%s", sc.schema, sc.table)
	cons, err := sc.rows.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject:     sc.filter,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       sc.pos + 1,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute, // a consumer left behind goes away
		MemoryStorage:     true,
	})
	if err != nil {
		return false, &cutShortError{fmt.Errorf("%s: %w", what, err)}
	}
	name := cons.CachedInfo().Name
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = sc.rows.DeleteConsumer(dctx, name)
	}()
	if cons.CachedInfo().NumPending == 0 {
		return true, nil
	}
	// The consumer is asked for more as the scan takes what it has: at
	// most ScanBatch messages wait here while fn waits for its reader.
	it, err := cons.Messages(jetstream.PullMaxMessages(ScanBatch))
	if err != nil {
		return false, &cutShortError{fmt.Errorf("%s: %w", what, err)}
	}
	defer it.Stop()
	defer context.AfterFunc(ctx, it.Stop)()
	var delivered uint64 // the consumer's sequence of the last message read
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		msg, err := it.Next(jetstream.NextMaxWait(scanWait))
		if err != nil {
			return false, &cutShortError{fmt.Errorf("%s after %d (the end at %d): %w", what, sc.pos, sc.end, err)}
		}
		meta, err := msg.Metadata()
		if err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		if meta.Sequence.Consumer != delivered+1 {
			// Messages lost on their way here: a consumer without
			// acknowledgements does not send them again.
			return false, &cutShortError{fmt.Errorf("%s: message %d of the consumer came after %d", what, meta.Sequence.Consumer, delivered)}
		}
		delivered++
		if meta.Sequence.Stream > sc.end {
			return true, nil
		}
		sc.pos = meta.Sequence.Stream
		if err := sc.take(msg.Subject(), msg.Headers(), msg.Data()); err != nil {
			return false, err
		}
		if meta.NumPending == 0 {
			return false, nil
		}
	}
}

// take handles one message at a position at most P.
func (sc *scan) take(subject string, h nats.Header, data []byte) error {
	if len(subject) <= len(sc.rowsBase) || subject[:len(sc.rowsBase)] != sc.rowsBase {
		// The table's marker (its last truncate): nothing to give fn.
		return nil
	}
	r, err := DecodeRow(h, data)
	if err != nil {
		return fmt.Errorf("read the rows of %s.%s: %w", sc.schema, sc.table, err)
	}
	sc.n = max(sc.n, r.Seq)
	if r.Deleted {
		return nil
	}
	return sc.fn(r)
}
