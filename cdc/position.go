package cdc

// Exactly once into the stream, whatever the length of an outage.
//
// The slot replays from its confirmed position, and the reader confirms at
// most once a second, so a restart replays events JetStream already stored.
// JetStream's duplicate window drops the repeats only while it remembers
// their ids; after a longer outage the reader itself must know what the
// stream holds. It does so with three things:
//
//   - Every message it publishes carries stream.OriginHeader:
//     "<system identifier>/<timeline>/<database>/<slot>" (IDENTIFY_SYSTEM),
//     and one origin publishes its event ids (commit LSN, ordinal) in
//     strictly increasing order, snapshots included (schema.Txn.ResetSnapshot).
//   - A position record per slot in the state bucket: the origin, an LSN
//     confirmed to PostgreSQL, and a stream sequence at or before which lies
//     the last message of ours with an id at or below that LSN, so that every
//     message of ours beyond it lies after that sequence. It is written after
//     the status update that confirmed the LSN (never ahead of the slot), at
//     most once a second, and when the slot is created.
//   - At the start of every session, the reader reads the headers of the
//     stream from that sequence on and takes the last message of its origin:
//     every event up to its id is stored already and is skipped, as is every
//     event committed before the record's LSN (for a PostgreSQL that lost
//     the slot's latest position in a crash and replays from before it).
//
// No record, a record of another origin (a restored cluster reuses LSNs on
// a new timeline; a new cluster starts them again), or a record of another
// stream (deleted and created again, or beyond its end) skip nothing, and
// say why. Before it reads the stream, a session lets whatever an earlier
// one left in flight be stored (settle): read first, those messages would
// be missed and stored again by the replay, however long after. What the
// duplicate window still guards is what that barrier cannot order (see
// settle).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// recordTimeout bounds one write of the position record, which the read
// loop waits for: a NATS that does not answer within it leaves the record
// as it was (older, so still correct) rather than stall the stream.
const recordTimeout = 5 * time.Second

// eventID is an event id as numbers, ordered as the reader publishes.
type eventID struct{ lsn, ord uint64 }

func (a eventID) after(b eventID) bool { return a.lsn > b.lsn || a.lsn == b.lsn && a.ord > b.ord }

func (a eventID) String() string {
	return fmt.Sprintf("%016X-%04X", a.lsn, a.ord)
}

// positionRecord is what the state bucket holds per slot.
type positionRecord struct {
	Origin string `json:"origin"`
	// LSN was confirmed to PostgreSQL: every event committed before it is
	// stored.
	LSN string `json:"lsn"`
	// StreamSeq: every message of this origin with an id beyond LSN is
	// stored after it.
	StreamSeq     uint64    `json:"stream_seq"`
	Stream        string    `json:"stream"`
	StreamCreated time.Time `json:"stream_created"`
}

// positionKey is the record's key in the state bucket.
func positionKey(db, slot string) string {
	return "position." + strings.TrimSuffix(stream.SchemaKey(db, slot, ""), ".")
}

// gapKey is the key in the state bucket of the slot's gapRecord.
func gapKey(db, slot string) string {
	return "gap." + strings.TrimSuffix(stream.SchemaKey(db, slot, ""), ".")
}

// gapRecord is a refusedRange kept in the state bucket until it is
// published over, so that a process stopped (or a standby taking over)
// before then does not skip the refused event: the last message of the
// origin the stream holds says nothing of what lies before it.
type gapRecord struct {
	Origin  string `json:"origin"`
	From    string `json:"from"`
	Through string `json:"through"`
}

// identifyOrigin asks PostgreSQL, over a replication connection, for the
// origin the reader's messages carry, and the position its WAL has reached:
// no change the reader published from it can carry a later LSN.
func (r *Reader) identifyOrigin(ctx context.Context, conn *pgconn.PgConn) (origin string, walEnd uint64, err error) {
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return "", 0, fmt.Errorf("identify system: %w", err)
	}
	r.clusterID.Store(&sys.SystemID)
	return sys.SystemID + "/" + strconv.Itoa(int(sys.Timeline)) + "/" + stream.Token(r.db) + "/" + r.cfg.Slot, uint64(sys.XLogPos), nil
}

// streamInfo reads the stream's configuration and state.
func (r *Reader) streamInfo(ctx context.Context) (*jetstream.StreamInfo, error) {
	st, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", r.cfg.Stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the state of stream %s: %w", r.cfg.Stream, err)
	}
	return info, nil
}

// publisherOptions are those of the reader's publishers on a stream with
// configuration cfg: every message carries the origin, and they send fast
// batches when the stream takes them and captures the control subject
// their batches end on (stream.EnsureStream makes it so; a NATS server
// before 2.14 knows no batches).
func (r *Reader) publisherOptions(cfg jetstream.StreamConfig, origin string) []stream.PublisherOption {
	opts := []stream.PublisherOption{stream.WithStream(r.cfg.Stream), stream.WithHeader(stream.OriginHeader, origin),
		stream.WithMark(stream.KeyDeferrableHeader, "true")}
	switch {
	case r.fences.ring != nil:
		opts = append(opts, stream.WithFenceRing(stream.FenceRingSubjects(r.prefix, r.cfg.Slot), r.fences.ring))
	case r.fences.on:
		opts = append(opts, stream.WithFence(stream.FenceSubject(r.prefix, r.cfg.Slot), r.fences.seq))
	}
	// An operator may limit the stream's messages below NATS's maximum
	// payload: larger events travel as claims (a session refused one reads
	// the limit anew when it starts again).
	opts = append(opts, stream.WithMaxMessageSize(int64(cfg.MaxMsgSize)))
	if cfg.AllowBatchPublish && slices.Contains(cfg.Subjects, stream.ControlSubject(r.prefix)) {
		opts = append(opts, stream.WithBatches(stream.ControlSubject(r.prefix)))
	}
	return opts
}

// writePosition stores the slot's position record.
func (r *Reader) writePosition(ctx context.Context, origin string, lsn, streamSeq uint64, created time.Time) error {
	b, err := json.Marshal(positionRecord{Origin: origin, LSN: pglogrepl.LSN(lsn).String(), StreamSeq: streamSeq, Stream: r.cfg.Stream, StreamCreated: created})
	if err != nil {
		return fmt.Errorf("encode position record: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	if _, err := r.state.Put(ctx, positionKey(r.db, r.cfg.Slot), b); err != nil {
		return fmt.Errorf("write position record at %s: %w", pglogrepl.LSN(lsn), err)
	}
	return nil
}

// scanFilters are the subjects the reader publishes on: its database's
// changes and the custom topics.
func (r *Reader) scanFilters() []string {
	changes := r.prefix + "." + stream.Token(r.db) + ".>"
	topics := r.prefix + ".topic.>"
	if changes == topics { // a database named "topic"
		return []string{topics}
	}
	return []string{changes, topics}
}

// resumePoint is what a session learns, before it streams, of what the
// stream already holds of its origin.
type resumePoint struct {
	skip        bool
	skipThrough eventID // with skip: every event up to it is stored
	// floor is a stream sequence every message of ours beyond the slot's
	// position lies after: where the next record's scan may start.
	floor uint64
	// recordLSN is the LSN of the record read, 0 without a valid one: no
	// record is written below it.
	recordLSN     uint64
	streamCreated time.Time
	// streamConfig is the stream's configuration as it was read.
	streamConfig jetstream.StreamConfig
}

// resume reads the slot's position record and the stream after it, and
// says which events the session must not publish again. walEnd is how far
// the server's WAL had come before the stream was read.
//
// Others may publish into the stream (custom topics) with our origin: a
// service forwarding events with their headers, or one forging them. Our
// own messages always carry an event id, at or below walEnd, and strictly
// increasing; so the highest such id is what the stream holds of ours (a
// forwarded copy repeats an id we stored, never a later one), a message
// with any other id is not ours, and neither is a record or an id beyond
// walEnd (forged, or of a PostgreSQL restored from a copy of its disk,
// which reuses the LSNs on the same timeline). Taken for ours, a message
// of the first kind would stop every session, one of the second would
// skip every change until the WAL got there.
func (r *Reader) resume(ctx context.Context, origin string, walEnd, start uint64) (rp resumePoint, err error) {
	defer func() {
		if err == nil {
			err = r.limitSkip(ctx, &rp, origin, start, walEnd)
		}
	}()
	info, err := r.streamInfo(ctx)
	if err != nil {
		return resumePoint{}, err
	}
	last, first, created := info.State.LastSeq, info.State.FirstSeq, info.Created
	// Without a usable record nothing is skipped, and nothing of this
	// origin is known before the stream's end: a new record scans from it.
	rp = resumePoint{floor: last, streamCreated: created, streamConfig: info.Config}
	key := positionKey(r.db, r.cfg.Slot)
	e, err := r.state.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		r.log.Warn("no position record for this slot: a replay repeats what the stream already holds beyond the duplicate window", "key", key)
		return rp, nil
	}
	if err != nil {
		return rp, fmt.Errorf("read position record %s: %w", key, err)
	}
	var rec positionRecord
	recLSN := pglogrepl.LSN(0)
	if err := json.Unmarshal(e.Value(), &rec); err == nil {
		recLSN, err = pglogrepl.ParseLSN(rec.LSN)
		if err != nil {
			recLSN = 0
		}
	}
	switch {
	case recLSN == 0:
		r.log.Warn("unreadable position record: skipping nothing", "key", key, "value", string(e.Value()))
		return rp, nil
	case rec.Origin != origin:
		r.log.Warn("position record is of another origin (a restored or different PostgreSQL reuses LSNs): skipping nothing",
			"record_origin", rec.Origin, "origin", origin)
		return rp, nil
	case rec.Stream != r.cfg.Stream || !rec.StreamCreated.Equal(created):
		r.log.Warn("position record is of another stream (deleted and created again?): skipping nothing",
			"record_stream", rec.Stream, "record_stream_created", rec.StreamCreated, "stream", r.cfg.Stream, "stream_created", created)
		return rp, nil
	case rec.StreamSeq > last:
		r.log.Warn("position record lies beyond the stream's end (the stream was reset?): skipping nothing",
			"record_stream_seq", rec.StreamSeq, "stream_last_seq", last)
		return rp, nil
	case uint64(recLSN) > walEnd:
		r.log.Warn("position record lies beyond the server's WAL (PostgreSQL restored from a copy of its disk?): skipping nothing",
			"record_lsn", rec.LSN, "wal_end", pglogrepl.LSN(walEnd).String())
		return rp, nil
	}
	rp.floor, rp.recordLSN = rec.StreamSeq, uint64(recLSN)
	rp.skip, rp.skipThrough = true, eventID{uint64(recLSN) - 1, math.MaxUint64}
	if first > rec.StreamSeq+1 {
		r.log.Warn("the stream no longer holds every message after the position record (limits or a purge removed them); what they held may be published again",
			"record_stream_seq", rec.StreamSeq, "stream_first_seq", first)
	}
	began := time.Now()
	var notID, beyond []string // ids refused, the first few of each
	note := func(ids []string, id string) []string {
		if len(ids) < 3 {
			ids = append(ids, id)
		}
		return ids
	}
	found, err := stream.ScanLastWithHeader(ctx, r.js, r.cfg.Stream, rec.StreamSeq+1, last, r.scanFilters(), stream.OriginHeader, origin,
		func(msgID string) bool {
			lsn, ord, ok := schema.ParseEventID(msgID)
			switch {
			case !ok:
				notID = note(notID, msgID)
				return false
			case lsn > walEnd:
				beyond = note(beyond, msgID)
				return false
			}
			if id := (eventID{lsn, ord}); id.after(rp.skipThrough) {
				rp.skipThrough = id
			}
			return true
		})
	if err != nil {
		return rp, err
	}
	if found.Refused > 0 {
		switch {
		case len(notID) > 0:
			r.log.Warn("messages in the stream carry this reader's origin but not an event id (another client copied or forged the header): they are not taken for ours",
				"refused", found.Refused, "ids", notID, "beyond_wal", beyond)
		case len(beyond) > 0:
			r.log.Warn("messages in the stream carry this reader's origin and an id beyond the server's WAL (forged, or PostgreSQL restored from a copy of its disk): they are not taken for ours",
				"refused", found.Refused, "ids", beyond, "wal_end", pglogrepl.LSN(walEnd).String())
		default:
			r.log.Warn("messages in the stream carry this reader's origin but no Nats-Msg-Id (another client copied the header): they are not taken for ours",
				"refused", found.Refused)
		}
	}
	r.log.Info("resuming: the stream holds this slot's events up to an id, which are not published again",
		"through", rp.skipThrough.String(), "record_lsn", rec.LSN, "scanned", found.Scanned,
		"from_seq", rec.StreamSeq+1, "to_seq", last, "took", time.Since(began).Round(time.Millisecond))
	return rp, nil
}

// refusedRange is where the stream may hold a gap: a session's publisher
// was refused a message (or got no acknowledgement for it, or found no
// stream for its subject), and JetStream may still have stored messages
// sent after it, in later batches or alone. Every event committed before
// from was acknowledged; the session published nothing beyond through.
type refusedRange struct{ from, through uint64 }

// noteRefusal records, when the session's publisher failed in a way that
// may have left a gap, where the gap may lie (Reader.unsure): JetStream
// refused a message with later ones sent, which it may store, or it
// acknowledged a message beyond one it never answered (a write that failed
// silently). The last message of ours the stream holds then says nothing
// of the messages before it. A session that merely waited too long for
// acknowledgements (a slow or paused server) leaves no gap: settle lets
// the server store what it holds, in order, before the next session reads
// the stream. Nor does one that found no stream answering (no responders):
// that is a replicated stream electing its leader, and the messages sent
// after it find none either; taken for a gap, every failover would publish
// again what the old leader had stored, after the duplicate window
// (TestSoakNATSClusterNodeLoss stored 234 events twice).
func (s *session) noteRefusal() {
	err := s.pub.Err()
	if err == nil || errors.Is(err, stream.ErrFenced) {
		return
	}
	refused := errors.Is(err, stream.ErrNegativeAck)
	if !(refused && s.pub.InFlight() > 1) && !s.pub.StoredPastWatermark() {
		return
	}
	from, through := s.confirmed, max(s.walEnd, s.txn.CommitLSN)
	if u := s.r.unsure; u.through != 0 {
		// An earlier gap not published over yet.
		from, through = min(from, u.from), max(through, u.through)
	}
	s.r.unsure = refusedRange{from: from, through: through}
	// Kept beyond this process: the session ended, ctx may have too.
	ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
	defer cancel()
	if err := s.r.writeGap(ctx, s.origin, s.r.unsure); err != nil {
		s.r.log.Error("cannot record where the stream may hold a gap; a restart before the next session publishes over it would skip the refused event",
			"from", pglogrepl.LSN(from).String(), "through", pglogrepl.LSN(through).String(), "err", err)
	}
}

// writeGap stores u as the slot's gapRecord.
func (r *Reader) writeGap(ctx context.Context, origin string, u refusedRange) error {
	b, err := json.Marshal(gapRecord{Origin: origin, From: pglogrepl.LSN(u.from).String(), Through: pglogrepl.LSN(u.through).String()})
	if err != nil {
		return fmt.Errorf("encode gap record: %w", err)
	}
	if _, err := r.state.Put(ctx, gapKey(r.db, r.cfg.Slot), b); err != nil {
		return fmt.Errorf("write gap record: %w", err)
	}
	return nil
}

// readGap merges into r.unsure the slot's gapRecord of origin, if any: an
// earlier process's, or another reader's that held the slot. A record it
// cannot read says a gap may lie anywhere from start, the session's
// starting point, to walEnd, which is what it merges then, and writes
// back in place of the record.
func (r *Reader) readGap(ctx context.Context, origin string, start, walEnd uint64) error {
	e, err := r.state.Get(ctx, gapKey(r.db, r.cfg.Slot))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("read gap record: %w", err)
	}
	var u refusedRange
	var rec gapRecord
	err = json.Unmarshal(e.Value(), &rec)
	if err == nil && rec.Origin != origin {
		return nil // another origin's (a PostgreSQL that failed over)
	}
	if err == nil {
		from, err1 := pglogrepl.ParseLSN(rec.From)
		through, err2 := pglogrepl.ParseLSN(rec.Through)
		u, err = refusedRange{from: uint64(from), through: uint64(through)}, errors.Join(err1, err2)
		if err == nil && (from == 0 || through < from) {
			err = fmt.Errorf("range %s to %s", rec.From, rec.Through)
		}
	}
	if err != nil {
		// Taken as no gap, it would let the session skip the refused
		// event it stands for: the whole range the session might skip
		// is taken instead, which publishes it all again.
		r.log.Warn("unreadable gap record: publishing again everything this session would have skipped", "key", e.Key(), "err", err)
		u = refusedRange{from: max(start, 1), through: max(walEnd, start, 1)}
		if err := r.writeGap(ctx, origin, u); err != nil {
			return err
		}
	}
	if r.unsure.through != 0 {
		u.from, u.through = min(u.from, r.unsure.from), max(u.through, r.unsure.through)
	}
	r.unsure = u
	return nil
}

// limitSkip keeps a session from skipping events beyond a possible gap
// (noteRefusal): what it skipped would be the refused message. The
// messages JetStream stored after it are published again, and dropped as
// repeats within the duplicate window (they are published again at once).
// Once the slot has been confirmed past the gap, it is filled.
func (r *Reader) limitSkip(ctx context.Context, rp *resumePoint, origin string, start, walEnd uint64) error {
	if err := r.readGap(ctx, origin, start, walEnd); err != nil {
		return err
	}
	u := r.unsure
	switch {
	case u.through == 0:
		return nil
	case start > u.through:
		r.unsure = refusedRange{}
		if err := r.state.Delete(ctx, gapKey(r.db, r.cfg.Slot)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("delete gap record: %w", err)
		}
		return nil
	}
	limit := eventID{u.from - 1, math.MaxUint64}
	if rp.skip && rp.skipThrough.after(limit) {
		r.log.Warn("JetStream refused an event of the last session and may have stored later ones: those are published again (the duplicate window drops them), rather than take the refused one for stored",
			"stored_through", rp.skipThrough.String(), "published_again_from", pglogrepl.LSN(u.from).String())
		rp.skipThrough = limit
	}
	return nil
}

// settle returns once nothing the reader published before, in an earlier
// session or an earlier process, can still be stored: it sends a barrier
// through the stream (stream.Barrier), which JetStream refuses only after
// every message it received before it. A session that ended with messages
// in flight (a refused message, an acknowledgement that did not come in
// time, PostgreSQL gone) leaves them in the server's queue or on the wire;
// read before they are stored, the stream would not show them, and the
// replay would store them a second time. Reading does not wait for them:
// JetStream reads a connection in order, but queues the messages for the
// stream to store while it answers the requests that read the stream (its
// info, consumers) from workers of its own; the barrier goes through the
// stream's queue behind them (TestSettleBeforeReadingStream). The
// duplicate window then only guards what the barrier cannot order: the
// messages of a connection that dropped and that the server had not
// finished reading, and those of a stream with replicas not yet applied
// when its leader refused the barrier.
func (r *Reader) settle(ctx context.Context) error {
	bctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	err := stream.Barrier(bctx, r.nc, stream.ControlSubject(r.prefix))
	switch {
	case errors.Is(err, stream.ErrNoStream):
		// A stream made by hand, without the control subject: as before
		// barriers, the duplicate window alone guards the race.
		if !r.noBarrierWarned {
			r.log.Warn("the stream does not capture the control subject, so what a failed session left in flight is guarded only by the duplicate window; run tablecast with this stream once to update it",
				"stream", r.cfg.Stream, "subject", stream.ControlSubject(r.prefix))
			r.noBarrierWarned = true
		}
		return nil
	case err != nil:
		return fmt.Errorf("settle what was published before reading the stream: %w", err)
	}
	return nil
}

// settleTimeout bounds the wait for the barrier: the time JetStream takes
// for what it has queued before it. Longer than a publisher's ack timeout,
// since the queue may hold a whole window of messages of a publisher that
// failed for want of their acknowledgements; a session that cannot settle
// fails and the next one tries again, behind the same queue.
const settleTimeout = 2 * stream.DefaultAckTimeout

// alreadyStored reports whether the stream holds the event with this id
// already, as learnt at the session's start, and counts it: the reader then
// does not publish it again. Ids only grow, so the first id beyond ends the
// skipping.
func (s *session) alreadyStored(lsn uint64, ordinal uint32) bool {
	return s.alreadyStoredID(eventID{lsn, uint64(ordinal)})
}

// replaying reports whether the next event of the current transaction is
// one the stream holds already, without counting it: what comes before it
// (a Relation message) was handled when the transaction was first streamed.
func (s *session) replaying() bool {
	return s.alreadyStoredQuietly(eventID{s.txn.CommitLSN, uint64(s.ordinal) + 1})
}

// alreadyStoredQuietly reports whether the stream holds id already,
// without counting it or ending the skip.
func (s *session) alreadyStoredQuietly(id eventID) bool {
	return s.skipping && !id.after(s.skipThrough)
}

// alreadyStoredID is alreadyStored of any id, a transaction marker's
// (schema.MarkerOrdinal) included.
func (s *session) alreadyStoredID(id eventID) bool {
	if !s.skipping {
		return false
	}
	if !id.after(s.skipThrough) {
		s.r.m.skipped.Inc()
		s.skipped++
		return true
	}
	s.skipping = false
	if s.skipped > 0 {
		s.r.log.Info("caught up with what the stream held; publishing again", "skipped", s.skipped, "first", id.String())
	}
	return false
}

// recordPosition writes the position record for the LSN last confirmed to
// PostgreSQL, at most once a second. Failing is not fatal: the record left
// in place is older, which costs only a longer scan at the next start.
func (s *session) recordPosition(ctx context.Context, now time.Time) {
	if s.sent <= s.recorded || now.Sub(s.lastRecord) < statusMinInterval || ctx.Err() != nil {
		return
	}
	s.lastRecord = now
	if err := s.r.writePosition(ctx, s.origin, s.sent, s.sentFloor, s.streamCreated); err != nil {
		if !s.recordFailing {
			s.r.log.Warn("cannot write the position record; a restart will read more of the stream", "err", err)
			s.recordFailing = true
		}
		return
	}
	if s.recordFailing {
		s.r.log.Info("position record written again")
		s.recordFailing = false
	}
	s.recorded = s.sent
}
