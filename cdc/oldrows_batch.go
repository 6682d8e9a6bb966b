package cdc

// Reading old rows from the row state in batches.
//
// A row the cache lacks costs a direct get, one round trip to NATS, which
// would pace the stream (a few thousand changes a second). So, with old
// rows on, the session reads ahead: once a change needs a row the cache
// lacks, it keeps that change and the row changes after it (copies of their
// messages) instead of publishing them, up to readAheadChanges or
// readAheadBytes, until any other message arrives (a commit, a relation,
// a truncate, a logical message…) or PostgreSQL pauses; then it reads every
// row they need in one multi-last direct get and publishes them in order.
// The row state lookup rules are those of oldrows.go: the batch is read
// once the state may be asked, and a row read is taken only while no change
// of the batch has published a later version of it (the cache then holds
// that one).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/schema"
)

const (
	// readAheadChanges bounds the changes kept to read their rows at once.
	// The server answers a multi-last direct get with at most 1024
	// messages; 256 makes the round trip cost little per change, and keeps
	// the events' latency (held until the batch is read) short.
	readAheadChanges = 256
	// readAheadBytes bounds the memory of the messages kept.
	readAheadBytes = 4 << 20
	// batchGetTimeout bounds one batch read from the row state.
	batchGetTimeout = 10 * time.Second
)

// readAhead is the session's batch of changes kept to read their rows at
// once.
type readAhead struct {
	msgs     [][]byte            // the pgoutput messages kept, copied
	bytes    int                 // their size
	subjects []string            // the rows to read
	want     map[string]struct{} // subjects, as a set
	dec      rowMessage          // decodes a change to learn its key
	key      []byte
	// got holds the rows read, by subject: the data, nil for no row (none,
	// a tombstone, or one kept without its data).
	got map[string][]byte
}

func (a *readAhead) pending() bool { return a != nil && len(a.msgs) > 0 }

// queueRow handles a row change when old rows are on: at once when nothing
// is kept and it needs no row the cache lacks, else kept for the batch.
func (s *session) queueRow(ctx context.Context, wal []byte) error {
	o := s.old
	a := &o.ahead
	if a.want == nil {
		a.want, a.got = map[string]struct{}{}, map[string][]byte{}
	}
	if subj := s.missingRow(wal); subj != "" {
		if _, ok := a.want[subj]; !ok {
			a.want[subj] = struct{}{}
			a.subjects = append(a.subjects, subj)
		}
	} else if len(a.msgs) == 0 {
		return s.handleRow(ctx, wal)
	}
	a.msgs = append(a.msgs, append([]byte(nil), wal...))
	a.bytes += len(wal)
	if len(a.msgs) >= readAheadChanges || a.bytes >= readAheadBytes {
		return s.flushRows(ctx)
	}
	return nil
}

// missingRow returns the row state subject of the previous version a
// change needs when the cache lacks it, else "".
func (s *session) missingRow(wal []byte) string {
	o := s.old
	a := &o.ahead
	if len(wal) < 5 || wal[0] == 'I' {
		return ""
	}
	rel, ok := s.relations[binary.BigEndian.Uint32(wal[1:5])]
	if !ok || !o.opted(rel) {
		return ""
	}
	if a.dec.decode(wal) != nil || a.dec.old != nil && !a.dec.oldKeyOnly {
		return "" // a decoding error is handleRow's to report
	}
	c := schema.Change{New: a.dec.new, Old: a.dec.old, OldKeyOnly: a.dec.oldKeyOnly}
	a.key = schema.AppendEventKey(a.key[:0], rel.table, &c)
	t := o.table(s.r, rel.table)
	if _, ok := t.rows[string(a.key)]; ok || t.trunc != nil {
		return ""
	}
	return t.base + rowstate.KeyToken(a.key)
}

// flushRows reads the rows the kept changes need, then handles the
// changes in order.
func (s *session) flushRows(ctx context.Context) error {
	o := s.old
	if o == nil || len(o.ahead.msgs) == 0 {
		return nil
	}
	a := &o.ahead
	if len(a.subjects) > 0 {
		if err := s.waitState(ctx, "lookup", o.lookupReady); err != nil {
			return err
		}
		if err := s.readRows(ctx, a.subjects); err != nil {
			return err
		}
	}
	msgs := a.msgs
	for i, m := range msgs {
		if err := s.handleRow(ctx, m); err != nil {
			return err
		}
		msgs[i] = nil
	}
	a.msgs, a.bytes, a.subjects = msgs[:0], 0, a.subjects[:0]
	clear(a.want)
	clear(a.got)
	return nil
}

// readRows reads the last message of each subject from the row state in
// one multi-last direct get, into o.ahead.got. A subject the answer does
// not cover (the server cut it short) is left out: its change reads it
// alone.
//
// Any replica of the row state answers a direct get, and on a replicated
// stream one may lag behind the writes the maintainer was acknowledged
// for: its answer could hold an older version of a row, or none. So the
// read takes the database's marker too, which the maintainer writes after
// each batch's rows: an answer whose marker is behind what the state had
// applied when the read began is read again, until a replica that is
// current answers.
func (s *session) readRows(ctx context.Context, subjects []string) error {
	need, _, _ := s.old.state.LastApplied()
	marker := rowstate.DBMarkerSubject(s.r.prefix, s.r.db)
	withMarker := append(subjects[:len(subjects):len(subjects)], marker)
	wait := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		current, err := s.readRowsOnce(ctx, subjects, withMarker, marker, need)
		if err != nil || current {
			return err
		}
		s.r.m.oldRowsStale.Inc()
		if attempt == staleReadAttempts {
			return fmt.Errorf("read %d rows from the row state: %d answers in a row came from a replica behind event %d", len(subjects), attempt, need)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// staleReadAttempts bounds the reads answered by a lagging replica before
// the session gives up (and starts again): about 5 s of them.
const staleReadAttempts = 30

// readRowsOnce sends one read (readRows) of withMarker (subjects and the
// marker) and takes its answer, unless the marker in it is behind need;
// current says whether it was taken.
func (s *session) readRowsOnce(ctx context.Context, subjects, withMarker []string, marker string, need uint64) (current bool, err error) {
	s.r.m.oldRowsBatches.Inc()
	rctx, cancel := context.WithTimeout(ctx, batchGetTimeout)
	defer cancel()
	got := map[string][]byte{}
	var applied uint64
	none, cutShort, err := rowstate.ReadLast(rctx, s.r.nc, rowstate.RowsStreamName(s.r.cfg.Stream), withMarker, func(subj string, h nats.Header, data []byte) error {
		if subj == marker {
			applied, _ = strconv.ParseUint(h.Get(rowstate.HeaderSeq), 10, 64)
			return nil
		}
		row, err := rowstate.DecodeRow(h, data)
		if err != nil {
			return err
		}
		if row.Deleted {
			row.Data = nil
		}
		got[subj] = row.Data
		return nil
	})
	switch {
	case err != nil:
		return false, fmt.Errorf("read %d rows from the row state: %w", len(subjects), err)
	case none, applied < need:
		// None of them, not even the marker, or a marker behind what the
		// state had applied: a replica behind.
		return false, nil
	}
	return true, s.old.tookRows(subjects, got, !cutShort)
}

// tookRows records the rows read; with all, a subject without a message
// has no row.
func (o *oldRows) tookRows(subjects []string, got map[string][]byte, all bool) error {
	if o.ahead.got == nil {
		o.ahead.got = map[string][]byte{}
	}
	for _, subj := range subjects {
		data, ok := got[subj]
		if !ok && !all {
			continue
		}
		o.ahead.got[subj] = data
	}
	return nil
}

// errNoPrefetch: the batch did not read the row.
var errNoPrefetch = errors.New("not read ahead")

// prefetched returns the row of subj read by the batch.
func (o *oldRows) prefetched(subj string) ([]byte, error) {
	data, ok := o.ahead.got[subj]
	if !ok {
		return nil, errNoPrefetch
	}
	return data, nil
}

// published forgets the rows read ahead of key in t: a change of the
// batch published a later version.
func (o *oldRows) published(t *tableRows, key []byte) {
	if len(o.ahead.got) > 0 {
		delete(o.ahead.got, t.base+rowstate.KeyToken(key))
	}
}
