package wsgate

import (
	"bytes"
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/schema"
)

// Snapshots. A subscription with "snapshot" starts from the rows of its
// table that match it now, read from the row state in JetStream
// (internal/rowstate) rather than from PostgreSQL: rows frames, then
// synced with the event sequence N the rows are as of, then every matching
// event after N, as a resume "from": N would send them. A snapshot takes
// its turn with the resumes (replays.go): until then, and while the rows
// are read, the subscription's live frames are dropped and its boundary
// follows the feed, so the history read after the rows covers them.
//
// The rows are read in the order of the rows stream, each at most once, up
// to where the state stood when the read began (rowstate.Scan): a row
// changed after N while they were read comes at its version as of N, or not
// at all, and its events after N bring it (an update of a row the view does
// not hold is an enter). The keys sent are the view's at synced. A rows
// frame waits until the connection has at most snapshotAhead queued, and
// the rows are read a batch at a time as frames go out: a table is sent as
// fast as its client reads, never buffered whole, and a client that reads
// nothing for the write timeout is closed with 4008.

// snapshotFrameBytes and snapshotFrameRows bound a rows frame: large
// enough that framing costs little, small enough that a frame never holds
// up the send queue (4 MiB by default) for long.
const (
	snapshotFrameBytes = 64 << 10
	snapshotFrameRows  = 1000
)

// snapshotAhead bounds what a snapshot keeps queued ahead of its client:
// a few rows frames, enough to keep the socket busy while the next batch
// of rows is read, and no more. A table smaller than the send queue would
// otherwise be queued whole for a client that reads slower than the rows
// are read, and a thousand snapshots at once would hold a thousand tables.
const snapshotAhead = 4 * snapshotFrameBytes

// hasKey reports whether the table's events carry a key that tells its
// rows apart: a primary key or a replica identity index. A table with
// neither has no key, or under REPLICA IDENTITY FULL every column as its
// key, which two equal rows share.
func hasKey(sh schema.Shape) bool {
	keys := 0
	for _, c := range sh.Columns {
		if c.Key {
			keys++
		}
	}
	return keys > 0 && (sh.ReplicaIdentity != "full" || keys < len(sh.Columns))
}

// errNoRowState: the database has no row state.
var errNoRowState = errors.New("no row state for the table's database: it is off or not built yet")

// rowsStream returns the stream of the row state.
func (g *Gateway) rowsStream(ctx context.Context) (jetstream.Stream, error) {
	rows, err := g.js.Stream(ctx, rowstate.RowsStreamName(g.cfg.Stream))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, errNoRowState
	}
	return rows, err
}

// checkRowState refuses a snapshot of a table whose database has no row
// state.
func (g *Gateway) checkRowState(ctx context.Context, s *sub) *ProtocolError {
	rows, err := g.rowsStream(ctx)
	if err == nil {
		_, err = rowstate.ReadDBMarker(ctx, rows, g.cfg.Prefix, s.table.DB)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errNoRowState), errors.Is(err, rowstate.ErrNoState):
		return &ProtocolError{Code: CodeSnapshotUnavailable, ID: s.id, Message: "cannot send the rows of " + s.table.Name + ": " + errNoRowState.Error()}
	}
	return &ProtocolError{Code: CodeInternal, ID: s.id, Message: "cannot read the rows of " + s.table.Name + ": " + err.Error()}
}

// sendSnapshot sends s the rows of its table that match it, then synced,
// and returns the sequence they are as of.
func (g *Gateway) sendSnapshot(ctx context.Context, s *sub) (uint64, error) {
	rows, err := g.rowsStream(ctx)
	if err != nil {
		return 0, err
	}
	t := s.table
	sel := query.Selector{Ops: schema.BitRead, Where: s.filter, Policy: s.policy.Load()}
	proj := s.proj.Load()
	sent := map[uint64]struct{}{}
	var ev query.Event
	var env, frame []byte // env: the row as an envelope, to decide and project
	n := 0
	start := func() {
		frame = append(newFrame(snapshotFrameBytes+4096), `{"type":"rows","id":`...)
		frame = jsonx.AppendString(frame, s.id)
		frame = append(frame, `,"rows":[`...)
		n = 0
	}
	flush := func() error {
		if n == 0 {
			return nil
		}
		out := finishFrame(append(frame, "]}"...), opText)
		start()
		if !s.c.enqueueAhead(s, out, true, snapshotAhead) {
			return errSubEnded
		}
		return nil
	}
	add := func(entry []byte) error {
		if n > 0 {
			frame = append(frame, ',')
		}
		n++
		var err error
		if frame, err = proj.AppendView(frame, entry, query.ViewWhole, nil); err != nil {
			return err
		}
		if len(frame) >= snapshotFrameBytes || n >= snapshotFrameRows {
			return flush()
		}
		return nil
	}
	start()
	seq, err := rowstate.Scan(ctx, rows, g.cfg.Prefix, t.DB, t.Shape.Schema, t.Shape.Table, func(r rowstate.Row) error {
		if s.done.Load() || s.c.isClosing() {
			return errSubEnded
		}
		if r.Data == nil {
			return nil // a row too large to keep: nothing to judge
		}
		env = append(env[:0], `{"key":`...)
		env = append(env, r.Key...)
		env = append(env, `,"data":`...)
		env = append(env, r.Data...)
		env = append(env, '}')
		if ev.Reset(schema.BitRead, env) != nil {
			return nil
		}
		if _, ok, err := sel.Decide(&ev); !ok || err != nil {
			return nil
		}
		sent[viewKey(r.Key)] = struct{}{}
		return add(env)
	})
	if err != nil {
		return 0, err
	}
	if err := flush(); err != nil {
		return 0, err
	}
	if s.batched {
		// A batched view's synced waits for the start of its history,
		// which shows whether the rows end inside a transaction
		// (syncedAt).
		s.view = sent
		return seq, nil
	}
	if !s.c.enqueueFor(s, finishFrame(AppendSynced(newFrame(64), s.id, seq, false), opText), true) {
		return 0, errSubEnded
	}
	s.view = sent
	return seq, nil
}

// syncedAt is the synced of a batched view, sent by its history (replay)
// before its first frame: the rows are as of event seq, of the
// transaction lsn (nil: none, or unknown). When the history's first
// message is an event of that transaction, the rows end inside it: synced
// says "more" and the history's frames of the transaction follow, the
// last of them without "more" (with no events, when the view takes none
// of them), so that a client can show its rows with the whole transaction
// applied, never a part of it.
type syncedAt struct {
	seq  uint64
	lsn  []byte
	sent bool // synced is queued
	more bool // it said "more": the transaction's last frame is owed
}

// txAt reads the transaction of the event stored at seq: its LSN, or nil
// for a message that is not an event of a transaction (a snapshot's row),
// or that the stream no longer holds.
func (g *Gateway) txAt(ctx context.Context, seq uint64) []byte {
	msg, err := g.str.GetMsg(ctx, seq)
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			g.log.Debug("gateway cannot read the event a snapshot is as of", "seq", seq, "err", err)
		}
		return nil
	}
	bit := schema.OpBit(subjectOp(msg.Subject))
	var ev query.Event
	if bit == 0 || ev.Reset(bit, msg.Data) != nil {
		return nil
	}
	m, inTxn := eventMeta(&ev)
	if !inTxn {
		return nil
	}
	return bytes.Clone(m.lsn)
}

// send queues y's synced, saying more when the history's first message
// (subject, data; nil subject: there is none) is an event of y's
// transaction; ev is scratch.
func (y *syncedAt) send(s *sub, subject string, data []byte, ev *query.Event) bool {
	if y.lsn != nil && subject != "" {
		if bit := schema.OpBit(subjectOp(subject)); bit != 0 && ev.Reset(bit, data) == nil {
			m, inTxn := eventMeta(ev)
			y.more = inTxn && bytes.Equal(m.lsn, y.lsn)
		}
	}
	y.sent = true
	return s.c.enqueueFor(s, finishFrame(AppendSynced(newFrame(80), s.id, y.seq, y.more), opText), true)
}

// closing returns, for the marker seq of the transaction y's synced said
// "more" of, the transaction's last frame when the history has none to
// send (the view took none of its events after synced).
func (y *syncedAt) closing(s *sub, seq uint64, m txMeta, frames [][]byte) [][]byte {
	if !y.more || !bytes.Equal(m.lsn, y.lsn) {
		return frames
	}
	y.more = false
	if len(frames) > 0 {
		return frames
	}
	return [][]byte{encodeTransaction(s.id, seq, m.xid, m.lsn, m.at, false, nil)}
}

// snapshotFailed ends a snapshot that could not be sent.
func (g *Gateway) snapshotFailed(s *sub, err error) {
	switch {
	case s.c.isClosing():
	case s.done.Load():
		f := s.f.Load()
		f.mu.Lock()
		msg, ended := s.endMsg, s.ended.Load() && !s.gone
		f.mu.Unlock()
		if ended {
			g.endResume(s, CodeHistoryUnavailable, msg)
		}
	case errors.Is(err, errNoRowState), errors.Is(err, rowstate.ErrNoState):
		g.endResume(s, CodeSnapshotUnavailable, "cannot send the rows of "+s.table.Name+": "+err.Error()+"; subscribe again")
	default:
		g.log.Warn("gateway snapshot failed", "subscription", s.id, "table", s.table.Qualified, "err", err)
		g.endResume(s, CodeInternal, "snapshot failed: "+err.Error()+"; subscribe again")
	}
}
