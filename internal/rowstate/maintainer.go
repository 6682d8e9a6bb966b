package rowstate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Maintainer applies the event stream of one database to its row state:
// the rows stream, one message per row.
type Maintainer struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	log    *slog.Logger
	m      *metrics
	tables Patterns
	claims *stream.Resolver // reads the objects of claimed updates

	applied atomic.Uint64
	ready   atomic.Bool
	// last is the event applied last: its sequence and id, stored
	// together so that a reader never pairs one event's id with
	// another's sequence.
	last atomic.Pointer[AppliedEvent]
}

// AppliedEvent is the last event a maintainer applied: every event of the
// database up to Seq is in the state.
type AppliedEvent struct {
	// Seq is its event stream sequence; 0 before any.
	Seq uint64
	// ID is its event id (Nats-Msg-Id), "" when not known: no event
	// applied yet, or a state recorded before ids were.
	ID string
}

// maxPending bounds the row messages a batch has in flight: a batch holds
// at most BatchEvents changes, and a change writes at most two rows.
const maxPending = 1 << 13

// New checks cfg and returns a maintainer that reads and writes with nc.
func New(cfg Config, nc *nats.Conn) (*Maintainer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending))
	if err != nil {
		return nil, fmt.Errorf("row state: %w", err)
	}
	tables, _ := ParsePatterns(cfg.Tables)
	return &Maintainer{cfg: cfg, nc: nc, js: js, log: cfg.Logger.With("component", "rowstate", "database", cfg.DB),
		m: newMetrics(cfg.Registerer), tables: tables, claims: stream.NewResolver(js)}, nil
}

// Ready reports whether the state exists: readers may scan it (they get
// the rows as of where it is applied, and the events after).
func (m *Maintainer) Ready() bool { return m.ready.Load() }

// Applied returns the event stream sequence up to which the state is
// applied (as of the last batch written).
func (m *Maintainer) Applied() uint64 { return m.applied.Load() }

// AppliedID returns the id of the last event the state applied (as of the
// last batch written), "" when not known. The ids of one reader increase,
// so a reader compares the ids of its own events with it (parsed:
// schema.ParseEventID) to learn which of them the state holds.
func (m *Maintainer) AppliedID() string { return m.LastApplied().ID }

// LastApplied returns the last event the state applied, sequence and id
// together; the zero AppliedEvent while the state is not Ready.
func (m *Maintainer) LastApplied() AppliedEvent {
	if !m.ready.Load() {
		return AppliedEvent{}
	}
	if p := m.last.Load(); p != nil {
		return *p
	}
	return AppliedEvent{}
}

// Run applies the event stream to the state until ctx ends, starting again
// from the state's own position after any failure (NATS gone, a write
// refused). It returns nil when ctx ends.
func (m *Maintainer) Run(ctx context.Context) error {
	backoff := m.cfg.RetryMin
	for {
		began := time.Now()
		err := m.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		m.m.restarts.Inc()
		if time.Since(began) > time.Minute {
			backoff = m.cfg.RetryMin
		}
		m.log.Warn("row state maintainer stopped; starting again from its last position", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, m.cfg.RetryMax)
	}
}

// session is one run of the maintainer, from its position in the state.
type session struct {
	m            *Maintainer
	rows, events jetstream.Stream

	position  uint64 // every event up to it is applied
	lastID    string // the id of the event at position, "" when not known
	start     uint64 // the state was built from after this sequence
	careful   uint64 // events up to it may be in the state already (an interrupted batch)
	delivered uint64 // stream sequence of the last event received

	batch map[string]version // rows written by the batch being applied, by subject
	// inflight holds the rows of the batch ended last, by subject, until
	// the stream is known to have stored them (settle): the next batch is
	// applied meanwhile, and reads them here rather than from the stream.
	inflight map[string]version
	// ended is that batch's last event, recorded as the state's position
	// once it is stored when marked (its marker was written with it).
	ended endedBatch
	w     rowWriter            // writes the rows of a batch
	bases map[[2]string]string // tableRowsBase + ".r." of each table met, by schema and table
	// truncates holds, by schema and table, the last truncate applied
	// (truncatedAt), for the events a session may apply again.
	truncates map[[2]string]uint64
	// tx holds, by subject, the rows the transaction being applied (its
	// commit LSN txLSN) has written so far, across batches, up to
	// maxTxRows rows and maxTxBytes of their data (txBytes): whether a row
	// came onto a key in the same transaction (heldByAnother) is known
	// without a lookup.
	tx      map[string]version
	txLSN   []byte
	txBytes int
	// beneath holds, by subject, the rows a row that came onto the key
	// in the transaction being applied displaced there (the last one
	// displaced last), as the state held them: when the row that came
	// leaves first, the key takes the last of them back. Up to maxTxRows
	// rows (beneathRows) and maxTxBytes of their data (beneathBytes).
	beneath      map[string][]version
	beneathRows  int
	beneathBytes int
	// pre holds the rows read ahead for the batch being applied, by
	// subject (prefetch.go): what the rows stream held when it began.
	pre map[string]version
	// firstLSN is the commit LSN of the first change the session applied:
	// the session may have begun inside that transaction, whose rows
	// written before are in the stream alone (HeaderLSN), read from there
	// up to maxTxRows times (firstReads).
	firstLSN   []byte
	firstReads int
}

// endedBatch is a batch of rows ended and not yet known to be stored.
type endedBatch struct {
	pending bool
	marked  bool   // its marker went with it
	last    uint64 // its last event
	lastID  string // that event's id
}

// maxTxRows and maxTxBytes bound session.tx: past them, a larger
// transaction's rows are not remembered (a deferrable key's rows are then
// told apart only where HeaderDisplaced marks a key shared).
const (
	maxTxRows  = 4096
	maxTxBytes = 16 << 20
)

// version is a row as the state holds it.
type version struct {
	seq       uint64
	data      []byte // nil for a tombstone or a truncated row
	deleted   bool
	displaced int // HeaderDisplaced
	// lsn is the commit LSN of the transaction whose create or update
	// wrote the version (HeaderLSN); nil for others (reads, tombstones,
	// versions written before the header was).
	lsn []byte
}

// sameTx reports whether v was written by a create or update of the
// transaction of c.
func (v version) sameTx(c *change) bool { return v.lsn != nil && bytes.Equal(v.lsn, c.lsn) }

// exists reports whether v is a row (not a tombstone, nor nothing).
func (v version) exists() bool { return v.seq != 0 && !v.deleted }

// truncated reports whether v is a row kept without its data (too large).
func (v version) truncated() bool { return !v.deleted && v.data == nil }

// heldByAnother reports whether the row of update or delete c, whose key
// the state holds at version v, is not the row v is. Under a deferrable key
// a row may come onto a key another row still holds (inserted, or moved
// onto it) and the other row leave later in the transaction; PostgreSQL
// sends such tables' old rows whole (REPLICA IDENTITY FULL: a deferrable
// key is no replica identity), so the rows are told apart by their values,
// on a key known to be shared (HeaderDisplaced) or one whose row a change
// of the same transaction wrote. Without an old row it is v's row.
func heldByAnother(v version, c *change) bool {
	if !v.exists() || v.displaced == 0 && !v.sameTx(c) {
		return false
	}
	return c.old != nil && v.data != nil && !sameRow(c.old, v.data)
}

// afterLeave returns the version of the key at subj, where the state holds
// cur, after the row of c (a delete, or an update moving it off the key)
// leaves it: a tombstone, unless other rows hold the key too (above); the
// key then keeps cur's row, or, when cur's row is the one leaving, the row
// it displaced (beneath). The version carries c's seq either way, so that
// a reader applying the events after a scan does not apply c to the row
// kept.
func (s *session) afterLeave(subj string, cur version, c *change) version {
	switch {
	case heldByAnother(cur, c):
		// A row the key displaced leaves.
		s.dropBeneath(subj, c.old)
		return version{seq: c.seq, data: cur.data, displaced: max(cur.displaced-1, 0), lsn: cur.lsn}
	case cur.exists() && cur.displaced > 0:
		if under, ok := s.popBeneath(subj); ok {
			// The row that came onto the key leaves before the one it
			// displaced: the key holds that one again.
			// Marked as this transaction's, so that its later changes in
			// it are told apart from a row inserted onto it (sameTx).
			return version{seq: c.seq, data: under.data, displaced: cur.displaced - 1, lsn: c.lsn}
		}
		if c.old != nil && cur.data != nil {
			// The row that came onto the key leaves before the one it
			// displaced, whose values the state no longer has (it was
			// displaced in a batch applied again, or in a transaction
			// past beneath's bounds).
			s.m.log.Warn("row state: under a deferrable key, a row that moved onto a key another row held left it first; the key keeps the values of the row that left until its own row changes",
				"seq", c.seq, "schema", c.schema, "table", c.table)
		}
		return version{seq: c.seq, data: cur.data, displaced: cur.displaced - 1, lsn: cur.lsn}
	}
	return version{seq: c.seq, deleted: true}
}

func (m *Maintainer) runOnce(ctx context.Context) error {
	if err := m.waitActive(ctx); err != nil {
		return err
	}
	rows, err := EnsureStreams(ctx, m.js, m.cfg.Streams)
	if err != nil {
		return err
	}
	events, err := m.js.Stream(ctx, m.cfg.Events)
	if err != nil {
		return fmt.Errorf("open event stream %s: %w", m.cfg.Events, err)
	}
	w, err := newRowWriter(m.nc, m.js, rows, m.cfg)
	if err != nil {
		return err
	}
	defer w.close()
	s := &session{m: m, rows: rows, events: events, w: w, bases: map[[2]string]string{}, tx: map[string]version{}}
	if err := s.open(ctx); err != nil {
		return err
	}
	return s.follow(ctx)
}

func (m *Maintainer) waitActive(ctx context.Context) error {
	for m.cfg.Active != nil && !m.cfg.Active() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// open learns where the state stands. A fresh state is built from the
// first event the stream holds: from every row when the stream holds the
// reader's initial snapshot (it does unless its limits dropped events).
// When it does not, the state lacks the rows whose events are gone until
// a snapshot of their table (tablecast snapshot) brings them in; that is
// logged.
func (s *session) open(ctx context.Context) error {
	m := s.m
	marker, err := ReadDBMarker(ctx, s.rows, m.cfg.Prefix, m.cfg.DB)
	switch {
	case errors.Is(err, ErrNoState):
		info, err := s.events.Info(ctx)
		if err != nil {
			return fmt.Errorf("read event stream %s: %w", m.cfg.Events, err)
		}
		if info.State.FirstSeq > 1 {
			s.start = info.State.FirstSeq - 1
			m.log.Warn("row state: the event stream no longer holds its first events; rows whose events are gone are missing until a snapshot of their table",
				"stream_first_seq", info.State.FirstSeq)
		}
		s.position = s.start
		if err := s.writeDBMarker(ctx); err != nil {
			return err
		}
		m.log.Info("row state: building from the event stream", "from", s.start+1)
	case err != nil:
		return err
	default:
		s.start, s.position, s.lastID = marker.Start, marker.Applied, marker.AppliedID
		// A batch whose rows were written but not its marker is applied
		// again; rows the state holds at a later version than an event
		// are not written back (careful).
		if s.careful, err = s.unmarked(ctx, marker.At); err != nil {
			return err
		}
	}
	s.delivered = s.position
	m.last.Store(&AppliedEvent{Seq: s.position, ID: s.lastID})
	m.ready.Store(true)
	m.applied.Store(s.position)
	m.m.applied.Set(float64(s.position))
	return nil
}

// lastMsg reads the last message of subject (wildcards allowed) from the
// rows stream, with its stream sequence: on a replicated stream from its
// leader, since a direct get may be answered by a replica behind writes
// the maintainer was acknowledged for (lastFromLeader).
func (s *session) lastMsg(ctx context.Context, subject string) (uint64, nats.Header, []byte, error) {
	if s.rows.CachedInfo().Config.Replicas > 1 {
		return lastFromLeader(ctx, s.m.nc, s.rows.CachedInfo().Config.Name, subject)
	}
	msg, err := s.rows.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		return 0, nil, nil, err
	}
	return msg.Sequence, msg.Header, msg.Data, nil
}

// unmarked returns the largest event sequence of the messages the rows
// stream holds for the database after its marker (at, the marker's
// position), 0 when there are none: the rows (and truncates) of batches
// an earlier session wrote without writing their marker. Not only the last
// one counts: a row refused is followed by stored rows of later events
// (those of the next batch, which was sent while its batch was being
// stored; on a stream without fast batches, those of its own), and the session
// after it may rewrite rows of earlier events after those. A marker may
// not be written below the largest (applyBatch).
func (s *session) unmarked(ctx context.Context, at uint64) (uint64, error) {
	filter := DBFilter(s.m.cfg.Prefix, s.m.cfg.DB)
	replicated := s.rows.CachedInfo().Config.Replicas > 1
	lastSeq, h, _, err := s.lastMsg(ctx, filter)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read the row state's last message: %w", err)
	case lastSeq <= at:
		return 0, nil // the marker is the last message: the common case
	}
	largest := parseUint(h.Get(HeaderSeq))
	what := fmt.Sprintf("read the rows written after the row state's position (%d to %d)", at+1, lastSeq)
	cons, err := s.rows.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    at + 1,
		HeadersOnly:    true,
	})
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextMaxWait(scanWait))
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		largest = max(largest, parseUint(msg.Headers().Get(HeaderSeq)))
		// Nothing else writes the database's rows now; the count is
		// the end should the last message have gone (a tombstone's
		// time to live). Not on a replicated stream: the consumer may
		// run on a replica behind the leader, whose count would end the
		// read before the leader's last message (a last message gone
		// there fails the read, and the next session reads again).
		if meta.Sequence.Stream >= lastSeq || !replicated && meta.NumPending == 0 {
			return largest, nil
		}
	}
}

// follow applies the event stream from the state's position on.
func (s *session) follow(ctx context.Context) error {
	m := s.m
	filter := m.cfg.Prefix + "." + stream.Token(m.cfg.DB) + ".>"
	cons, err := s.events.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    s.position + 1,
	})
	if err != nil {
		return fmt.Errorf("follow the events of %s: %w", m.cfg.DB, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * m.cfg.BatchEvents))
	if err != nil {
		return fmt.Errorf("follow the events of %s: %w", m.cfg.DB, err)
	}
	defer it.Stop()
	m.log.Info("row state: applying events", "from", s.position+1)
	idle := time.Now()
	var suspect uint64 // an event the stream held at the last idle check
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.ended.pending && m.cfg.Active != nil && !m.cfg.Active() {
			if err := s.settle(ctx); err != nil {
				return err
			}
		}
		if err := m.waitActive(ctx); err != nil {
			return err
		}
		msgs, err := s.take(it)
		if err != nil {
			return err
		}
		if len(msgs) > 0 {
			idle, suspect = time.Now(), 0
			if err := s.applyBatch(ctx, msgs); err != nil {
				return err
			}
			continue
		}
		// Nothing more within BatchWait: the batch ended last is waited
		// for now, so that the position recorded keeps up.
		if err := s.settle(ctx); err != nil {
			return err
		}
		// A consumer can stall for good: when the node holding it dies
		// (the event stream's leader, on a cluster), its open pull request
		// goes with it, and the iterator learns of it only from two missed
		// heartbeats (10 s or more). take's Next waits 1 s, and each Next
		// watches the heartbeats only while it waits, so the loss is never
		// seen. The reader, which waits for the state to apply its events
		// before it looks up old rows, would then wait too. So while nothing comes, the stream is
		// asked every stallCheck for its last event of the database; one
		// it already held at the previous check and still not delivered
		// ends the session, and the next follows with a new consumer.
		if time.Since(idle) < stallCheck {
			continue
		}
		idle = time.Now()
		if suspect > s.delivered {
			return fmt.Errorf("the event stream holds event %d of %s, and its consumer delivered nothing past %d for %s: following again", suspect, m.cfg.DB, s.delivered, 2*stallCheck)
		}
		suspect = 0
		if last, err := s.events.GetLastMsgForSubject(ctx, filter); err == nil && last.Sequence > s.delivered {
			suspect = last.Sequence
		}
	}
}

// stallCheck is how long the maintainer waits with nothing delivered before
// it asks the stream whether events are waiting (see follow): a stalled
// consumer is found within twice this.
const stallCheck = 5 * time.Second

// take waits up to a second for the first event (BatchWait while a batch
// ended is still being stored), then takes what arrives within BatchWait
// of the last, up to BatchEvents.
func (s *session) take(it jetstream.MessagesContext) ([]jetstream.Msg, error) {
	var out []jetstream.Msg
	wait := time.Second
	if s.ended.pending {
		wait = s.m.cfg.BatchWait
	}
	for len(out) < s.m.cfg.BatchEvents {
		msg, err := it.Next(jetstream.NextMaxWait(wait))
		if errors.Is(err, nats.ErrTimeout) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("receive events: %w", err)
		}
		out = append(out, msg)
		wait = s.m.cfg.BatchWait
	}
	return out, nil
}

// applyBatch writes the rows of a batch of events, waits for the stream to
// store them, then records the batch's last sequence on the database's
// marker.
func (s *session) applyBatch(ctx context.Context, msgs []jetstream.Msg) error {
	s.batch = make(map[string]version, len(msgs))
	s.prefetch(ctx, msgs)
	var last uint64
	var lastID string
	for _, msg := range msgs {
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("read an event's metadata: %w", err)
		}
		seq := meta.Sequence.Stream
		if seq <= s.delivered {
			continue // a repeat, after the ordered consumer was recreated
		}
		if err := s.checkGap(ctx, seq); err != nil {
			return err
		}
		s.delivered = seq
		if err := s.apply(ctx, seq, msg.Subject(), msg.Data(), msg.Headers().Get(stream.KeyDeferrableHeader) == "true"); err != nil {
			return fmt.Errorf("apply event %d: %w", seq, err)
		}
		last, lastID = seq, msg.Headers().Get(nats.MsgIdHdr)
		s.m.m.events.Inc()
	}
	if last == 0 {
		return nil
	}
	// The batch before this one was being stored while this one was
	// applied; this one's marker may only follow it once it is.
	if err := s.settle(ctx); err != nil {
		return err
	}
	// An earlier session stored rows of events up to careful, and maybe
	// not every row before them: a refused row's successors of another
	// batch (or on a stream without fast batches, of the same) are stored
	// all the same. A marker now would sit after those rows, and a scan
	// would count them in its N, past an event whose row is missing. The
	// position is recorded once this session has written the rows of
	// every event up to careful.
	marked := last >= s.careful
	var marker *nats.Msg
	if marked {
		marker = s.dbMarker(last, lastID)
	}
	if err := s.w.end(ctx, marker); err != nil {
		return err
	}
	s.inflight, s.batch = s.batch, nil
	s.ended = endedBatch{pending: true, marked: marked, last: last, lastID: lastID}
	if !s.w.pipelined() {
		return s.settle(ctx)
	}
	return nil
}

// settle waits until the batch ended last is stored, and records its
// position when its marker went with it.
func (s *session) settle(ctx context.Context) error {
	if !s.ended.pending {
		return nil
	}
	if err := s.w.wait(ctx); err != nil {
		return err
	}
	b := s.ended
	s.ended, s.inflight = endedBatch{}, nil
	if !b.marked {
		return nil
	}
	s.position, s.lastID = b.last, b.lastID
	s.m.last.Store(&AppliedEvent{Seq: b.last, ID: b.lastID})
	s.m.applied.Store(b.last)
	s.m.m.applied.Set(float64(b.last))
	return nil
}

// checkGap logs events of the database dropped by the stream's limits
// before the maintainer applied them: the rows they changed are stale
// until a snapshot of their table.
func (s *session) checkGap(ctx context.Context, seq uint64) error {
	if seq <= s.delivered+1 {
		return nil
	}
	info, err := s.events.Info(ctx)
	if err != nil {
		return fmt.Errorf("read event stream: %w", err)
	}
	if info.State.FirstSeq > s.delivered+1 {
		s.m.log.Error("row state: the event stream dropped events before they were applied (its limits); rows they changed are stale until a snapshot of their table",
			"after", s.delivered, "stream_first_seq", info.State.FirstSeq)
	}
	return nil
}

// apply writes what one event changes.
func (s *session) apply(ctx context.Context, seq uint64, subject string, env []byte, deferrable bool) error {
	m := s.m
	op := subject[strings.LastIndexByte(subject, '.')+1:]
	switch op {
	case schema.OpCreate, schema.OpRead, schema.OpUpdate, schema.OpDelete, schema.OpTruncate:
	default:
		return nil // not a row change (a custom topic's message, a record of the reader's)
	}
	c, err := parseChange(seq, op, env)
	if err != nil {
		// Not an event of a table: nothing of the state to change.
		m.log.Warn("row state: skipping a message that is not a row change", "seq", seq, "subject", subject, "err", err)
		return nil
	}
	c.deferrable = deferrable
	if !m.tables.Match(c.schema, c.table) {
		return nil
	}
	if op == schema.OpTruncate {
		return s.truncate(ctx, c)
	}
	if !c.keyed() {
		return nil // a table without a key has no row state
	}
	if !bytes.Equal(c.lsn, s.txLSN) {
		if len(s.tx) > 64 {
			s.tx = map[string]version{} // clearing a map costs its largest size
		} else {
			clear(s.tx)
		}
		s.txLSN, s.txBytes = append(s.txLSN[:0], c.lsn...), 0
		if s.beneathRows > 0 {
			s.beneath, s.beneathRows, s.beneathBytes = nil, 0, 0
		}
		if s.firstLSN == nil {
			s.firstLSN = append([]byte{}, c.lsn...)
		}
	}
	if seq <= s.careful {
		// Applied again after an interrupted batch: a truncate after this
		// event, already applied, purged what it wrote, and a row it
		// finds missing is not one to write back.
		at, err := s.truncatedAt(ctx, c.schema, c.table)
		if err != nil {
			return err
		}
		if at > seq {
			return nil
		}
	}
	oldSubj := s.rowSubject(c.schema, c.table, c.key)
	if op == schema.OpDelete {
		// Only the rows written lately are looked at (no lookup per
		// delete, but in the transaction a session began inside, and
		// under a deferrable key): a row that came onto a key held did so
		// earlier in the same transaction.
		cur, err := s.lately(ctx, oldSubj, &c)
		if err != nil {
			return err
		}
		return s.put(ctx, oldSubj, c.key, s.afterLeave(oldSubj, cur, &c))
	}
	key, err := c.newKey()
	if err != nil {
		return fmt.Errorf("key: %w", err)
	}
	if c.claimed && op == schema.OpUpdate {
		// The claim's message carries the old key and no row: the new
		// key, when the update changed it, is only in the object.
		if key, err = s.claimedKey(ctx, c); err != nil {
			return err
		}
	}
	v := version{seq: seq, data: c.data}
	if op != schema.OpRead {
		v.lsn = c.lsn
	}
	if c.truncated || c.data == nil {
		v.data = nil
	} else if c.unchanged != nil {
		prev, err := s.current(ctx, oldSubj)
		if err != nil {
			return err
		}
		if prev.displaced > 0 && c.old != nil {
			// The key holds another row too (HeaderDisplaced): the old
			// row PostgreSQL sent (REPLICA IDENTITY FULL) is this one's.
			prev.data = c.old
		}
		if prev.exists() && prev.data == nil && len(bytes.TrimSpace(c.unchanged)) > 2 {
			// The row is kept without its data (too large): the values
			// left out are not known, and the row without them is not
			// the table's. It stays a row too large to keep.
			v.data = nil
		} else if v.data, err = fillUnchanged(c.data, c.unchanged, prev.data); err != nil {
			return err
		}
	}
	if v.data != nil && len(key)+len(v.data)+rowMessageRoom > int(m.nc.MaxPayload()) {
		// The row, its unchanged values filled in, is larger than a
		// message, though its event was not: the server would refuse it
		// at every attempt, and the state would never pass this event.
		// It is kept as a row too large to keep, as a claimed one is.
		v.data = nil
	}
	newSubj := oldSubj
	if string(key) != string(c.key) {
		newSubj = s.rowSubject(c.schema, c.table, key)
		// Under a deferrable key a row may move onto a key another row
		// still holds, or off a key another row has moved onto since
		// (HeaderDisplaced): the key then keeps the other row.
		old, err := s.lookUp(ctx, oldSubj, &c)
		if err != nil {
			return err
		}
		if err := s.put(ctx, oldSubj, c.key, s.afterLeave(oldSubj, old, &c)); err != nil {
			return err
		}
		onto, err := s.lookUp(ctx, newSubj, &c)
		if err != nil {
			return err
		}
		if onto.exists() {
			v.displaced = onto.displaced + 1
			s.pushBeneath(newSubj, onto, seq)
		}
	} else if prev, err := s.sharedWith(ctx, oldSubj, &c); err != nil {
		return err
	} else if prev.exists() {
		if op == schema.OpUpdate && heldByAnother(prev, &c) {
			// A row the key displaced changed: the key keeps its row.
			s.changeBeneath(oldSubj, c.old, v)
			return s.put(ctx, oldSubj, c.key, version{seq: seq, data: prev.data, displaced: prev.displaced, lsn: prev.lsn})
		}
		v.displaced = prev.displaced // a row updated while others share its key
		if op == schema.OpCreate && (prev.sameTx(&c) || c.deferrable) {
			// Inserted onto a key a row holds (of the same transaction,
			// or any under a deferrable key): the key holds both until
			// one leaves.
			v.displaced++
			s.pushBeneath(oldSubj, prev, seq)
		}
	}
	if c.claimed && newSubj != oldSubj && len(key)+rowMessageRoom > int(m.nc.MaxPayload()) {
		// A new key read from a claim's object that alone does not fit
		// in a message (a table whose key is every column): the server
		// would refuse the row, and the state could never pass this
		// event. A key the event's message carried fits.
		return nil
	}
	return s.put(ctx, newSubj, key, v)
}

// rowMessageRoom is what a row message needs beside its key: its other
// members and its headers.
const rowMessageRoom = 1024

// claimedKey returns the key of the row after claimed update c, read from
// the event in the claim's object; c's key when the object is gone (it
// expired with the stream's max age), logged.
func (s *session) claimedKey(ctx context.Context, c change) ([]byte, error) {
	full, err := s.m.claims.Resolve(ctx, c.env)
	switch {
	case errors.Is(err, stream.ErrClaimGone):
		s.m.log.Warn("row state: the object of a claimed update is gone; its row stays under the key the claim names",
			"seq", c.seq, "schema", c.schema, "table", c.table, "err", err)
		return c.key, nil
	case err != nil:
		return nil, fmt.Errorf("read the claim of event %d: %w", c.seq, err)
	}
	fc, err := parseChange(c.seq, c.op, full)
	if err != nil {
		return nil, fmt.Errorf("the claim of event %d: %w", c.seq, err)
	}
	if !fc.keyed() {
		return c.key, nil
	}
	key, err := fc.newKey()
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	return key, nil
}

// recent returns the row at subj written by this batch, by the batch before
// it while it is being stored, or, earlier, by the transaction being
// applied.
func (s *session) recent(subj string) (version, bool) {
	if v, ok := s.batch[subj]; ok {
		return v, true
	}
	if v, ok := s.inflight[subj]; ok {
		return v, true
	}
	v, ok := s.tx[subj]
	return v, ok
}

// lately returns the row at subj when this batch or the transaction of c
// wrote it (recent), or nothing: then no change of c's transaction wrote it,
// unless the session began inside the transaction, whose rows it looks up
// in the stream. Under a deferrable key it is the row the key holds
// (heldNow).
func (s *session) lately(ctx context.Context, subj string, c *change) (version, error) {
	if c.deferrable {
		return s.heldNow(ctx, subj, c)
	}
	if v, ok := s.recent(subj); ok {
		return v, nil
	}
	if c.lsn == nil || !bytes.Equal(c.lsn, s.firstLSN) || s.firstReads >= maxTxRows {
		return version{}, nil
	}
	s.firstReads++
	v, err := s.current(ctx, subj)
	if err != nil || !v.sameTx(c) {
		return version{}, err
	}
	return v, nil
}

// sharedWith returns, for a change c that keeps its row's key, the row the
// state holds there when written lately: an update's, as lately; a
// create's or read's only when recent (their rows are not looked up),
// but under a deferrable key, whose row a create may come onto: the row
// the key holds (heldNow).
func (s *session) sharedWith(ctx context.Context, subj string, c *change) (version, error) {
	if c.op != schema.OpUpdate && !c.deferrable {
		v, _ := s.recent(subj)
		return v, nil
	}
	return s.lately(ctx, subj, c)
}

// heldNow returns the row the state holds at subj for c, a change of a
// table whose key is deferrable: looked up, since a row of an earlier
// transaction may be the one a row c inserts displaces. Rows share such a
// key only inside a transaction (PostgreSQL checks it at its end), so a
// count of rows displaced there (HeaderDisplaced) left on a row of an
// earlier one is not taken.
func (s *session) heldNow(ctx context.Context, subj string, c *change) (version, error) {
	v, err := s.current(ctx, subj)
	if err == nil && !v.sameTx(c) {
		v.displaced = 0
	}
	return v, err
}

// lookUp is current, or heldNow for a change under a deferrable key.
func (s *session) lookUp(ctx context.Context, subj string, c *change) (version, error) {
	if c.deferrable {
		return s.heldNow(ctx, subj, c)
	}
	return s.current(ctx, subj)
}

// current returns the row the state holds at subj: written lately
// (recent), read ahead for the batch (prefetch.go), or in the rows stream.
func (s *session) current(ctx context.Context, subj string) (version, error) {
	if v, ok := s.recent(subj); ok {
		return v, nil
	}
	if v, ok := s.pre[subj]; ok {
		return v, nil
	}
	s.m.m.lookupsOne.Inc()
	_, h, data, err := s.lastMsg(ctx, subj)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return version{}, nil
	case err != nil:
		return version{}, fmt.Errorf("look up row %s: %w", subj, err)
	}
	v, err := versionOf(h, data)
	if err != nil {
		return version{}, fmt.Errorf("row %s: %w", subj, err)
	}
	return v, nil
}

// put writes a row version (or tombstone) to the rows stream, without
// waiting for it to be stored (flush). An event the state may already
// hold (careful) is not written over a later version; the version the
// state holds is then the one remembered (recent), so that the rest of the
// transaction, applied again, is decided on what the state holds.
func (s *session) put(ctx context.Context, subj string, key []byte, v version) error {
	if v.seq <= s.careful {
		have, err := s.current(ctx, subj)
		if err != nil {
			return err
		}
		if have.seq >= v.seq {
			if have.seq == v.seq {
				have.lsn = v.lsn // written by this event, before
			}
			s.remember(subj, have)
			return nil
		}
	}
	if err := s.w.write(subj, key, v); err != nil {
		return err
	}
	s.remember(subj, v)
	s.m.m.rows.Inc()
	return nil
}

// remember records v as the version at subj the batch and the transaction
// have written (recent).
func (s *session) remember(subj string, v version) {
	s.batch[subj] = v
	if _, ok := s.tx[subj]; ok || len(s.tx) < maxTxRows && s.txBytes+len(v.data) <= maxTxBytes {
		s.tx[subj] = v
		s.txBytes += len(v.data)
	}
}

// flush waits until every row written is stored. A refused write is not
// retried here: the session ends and the next one applies the batch again
// from the marker.
func (s *session) flush(ctx context.Context) error {
	if err := s.settle(ctx); err != nil {
		return err
	}
	if err := s.w.end(ctx, nil); err != nil {
		return err
	}
	return s.w.wait(ctx)
}

// rowSubject is RowSubject, with the table's part of it made once per
// session.
func (s *session) rowSubject(schemaName, table string, key []byte) string {
	base, ok := s.bases[[2]string{schemaName, table}]
	if !ok {
		base = tableRowsBase(s.m.cfg.Prefix, s.m.cfg.DB, schemaName, table) + ".r."
		s.bases[[2]string{schemaName, table}] = base
	}
	return base + KeyToken(key)
}

// truncate removes every row of the table, then records the truncate on
// the table's marker (readers of the state learn of it there).
func (s *session) truncate(ctx context.Context, c change) error {
	m := s.m
	if err := s.flush(ctx); err != nil {
		return err
	}
	if c.seq <= s.careful {
		at, err := s.truncatedAt(ctx, c.schema, c.table)
		if err != nil {
			return err
		}
		if at >= c.seq {
			return nil
		}
	}
	if err := s.rows.Purge(ctx, jetstream.WithPurgeSubject(TableRowFilter(m.cfg.Prefix, m.cfg.DB, c.schema, c.table))); err != nil {
		return fmt.Errorf("truncate %s.%s: %w", c.schema, c.table, err)
	}
	prefix := strings.TrimSuffix(TableRowFilter(m.cfg.Prefix, m.cfg.DB, c.schema, c.table), ">")
	for _, rows := range []map[string]version{s.batch, s.inflight, s.tx, s.pre} {
		for subj := range rows {
			if strings.HasPrefix(subj, prefix) {
				delete(rows, subj)
			}
		}
	}
	data, _ := json.Marshal(TableStatus{Truncated: c.seq})
	msg := &nats.Msg{Subject: TableMarkerSubject(m.cfg.Prefix, m.cfg.DB, c.schema, c.table), Header: nats.Header{}, Data: data}
	msg.Header.Set(HeaderSeq, strconv.FormatUint(c.seq, 10))
	if _, err := m.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(RowsStreamName(m.cfg.Events))); err != nil {
		return fmt.Errorf("record the truncate of %s.%s: %w", c.schema, c.table, err)
	}
	if s.truncates != nil {
		s.truncates[[2]string{c.schema, c.table}] = c.seq
	}
	return nil
}

// truncatedAt returns the event sequence of the last truncate of a table
// the state has applied (0: none), read from its marker once a session.
func (s *session) truncatedAt(ctx context.Context, schemaName, table string) (uint64, error) {
	if at, ok := s.truncates[[2]string{schemaName, table}]; ok {
		return at, nil
	}
	st, err := ReadTableStatus(ctx, s.rows, s.m.cfg.Prefix, s.m.cfg.DB, schemaName, table)
	if err != nil {
		return 0, err
	}
	if s.truncates == nil {
		s.truncates = map[[2]string]uint64{}
	}
	s.truncates[[2]string{schemaName, table}] = st.Truncated
	return st.Truncated, nil
}

// dbMarker is the database's marker for the position applied (the event
// id lastID, "" when not known).
func (s *session) dbMarker(applied uint64, lastID string) *nats.Msg {
	msg := &nats.Msg{Subject: DBMarkerSubject(s.m.cfg.Prefix, s.m.cfg.DB), Header: nats.Header{}}
	msg.Header.Set(HeaderSeq, strconv.FormatUint(applied, 10))
	msg.Header.Set(HeaderStart, strconv.FormatUint(s.start, 10))
	if lastID != "" {
		msg.Header.Set(HeaderAppliedID, lastID)
	}
	return msg
}

// writeDBMarker records the state's position.
func (s *session) writeDBMarker(ctx context.Context) error {
	msg := s.dbMarker(s.position, s.lastID)
	if _, err := s.m.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(RowsStreamName(s.m.cfg.Events))); err != nil {
		return fmt.Errorf("record the row state's position %d: %w", s.position, err)
	}
	return nil
}

// pushBeneath records v, the row the state held at subj, as displaced by
// the row event seq brings onto the key (beneath). An event applied again
// (careful) records nothing: the state it reads v from may be later than
// the event, and a row restored from it could be the wrong one; the key
// then keeps the values of a row that leaves first, as without beneath.
func (s *session) pushBeneath(subj string, v version, seq uint64) {
	if seq <= s.careful || v.data == nil || s.beneathRows >= maxTxRows || s.beneathBytes+len(v.data) > maxTxBytes {
		return
	}
	if s.beneath == nil {
		s.beneath = map[string][]version{}
	}
	s.beneath[subj] = append(s.beneath[subj], v)
	s.beneathRows++
	s.beneathBytes += len(v.data)
}

// popBeneath takes the row displaced last at subj (beneath).
func (s *session) popBeneath(subj string) (version, bool) {
	under := s.beneath[subj]
	if len(under) == 0 {
		return version{}, false
	}
	v := under[len(under)-1]
	if len(under) == 1 {
		delete(s.beneath, subj)
	} else {
		s.beneath[subj] = under[:len(under)-1]
	}
	return v, true
}

// dropBeneath forgets the displaced row at subj whose values are old: it
// left the key.
func (s *session) dropBeneath(subj string, old []byte) {
	under := s.beneath[subj]
	for i := len(under) - 1; i >= 0 && old != nil; i-- {
		if sameRow(old, under[i].data) {
			s.beneath[subj] = append(under[:i], under[i+1:]...)
			if len(s.beneath[subj]) == 0 {
				delete(s.beneath, subj)
			}
			return
		}
	}
}

// changeBeneath replaces the displaced row at subj whose values are old
// with its new version v: it changed in place.
func (s *session) changeBeneath(subj string, old []byte, v version) {
	under := s.beneath[subj]
	for i := len(under) - 1; i >= 0 && old != nil; i-- {
		if sameRow(old, under[i].data) {
			if v.data == nil {
				// Kept without its data: it cannot be restored.
				s.beneath[subj] = append(under[:i], under[i+1:]...)
				if len(s.beneath[subj]) == 0 {
					delete(s.beneath, subj)
				}
				return
			}
			under[i] = v
			return
		}
	}
}
