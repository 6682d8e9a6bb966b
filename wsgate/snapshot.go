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
// at all. The history then brings them up to date before synced
// (syncedAt). The keys sent are the view's at synced. A rows
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

// sendSnapshot sends s the rows of its table that match it and returns
// the sequence they are as of (see rowstate.Scan).
func (g *Gateway) sendSnapshot(ctx context.Context, s *sub) (uint64, error) {
	rows, err := g.rowsStream(ctx)
	if err != nil {
		return 0, err
	}
	t := s.table
	sel := query.Selector{Ops: schema.BitRead, Where: s.filter, Policy: s.policy.Load()}
	sent := map[uint64]struct{}{}
	var ev query.Event
	var raw, env []byte // the row as an envelope, to decide and project
	// The row state keeps each row as its last event wrote it: a row not
	// changed since a column was dropped (or renamed) still holds it. Rows
	// are sent with the table's columns as the schema registry has them.
	current := shapeColumns(t.Shape)
	w := rowsWriter{s: s}
	seq, err := rowstate.Scan(ctx, rows, g.cfg.Prefix, t.DB, t.Shape.Schema, t.Shape.Table, func(r rowstate.Row) error {
		if s.done.Load() || s.c.isClosing() {
			return errSubEnded
		}
		if testHookSnapshotRow != nil {
			testHookSnapshotRow()
		}
		if r.Data == nil {
			return nil // a row too large to keep: nothing to judge
		}
		raw = append(raw[:0], `{"key":`...)
		raw = append(raw, r.Key...)
		raw = append(raw, `,"data":`...)
		raw = append(raw, r.Data...)
		raw = append(raw, '}')
		var err error
		if env, err = current.AppendEvent(env[:0], raw); err != nil {
			return nil
		}
		if ev.Reset(schema.BitRead, env) != nil {
			return nil
		}
		if _, ok, err := sel.Decide(&ev); !ok || err != nil {
			return nil
		}
		sent[viewKey(r.Key)] = struct{}{}
		return w.setChecked(env)
	})
	if err != nil {
		return 0, err
	}
	if err := w.flush(); err != nil {
		return 0, err
	}
	// Synced is sent by the history, which first brings the rows up to
	// where the stream stood once they were read, and shows whether a
	// batched view's end inside a transaction (syncedAt).
	s.view, s.displaced, s.txShown = sent, nil, nil
	return seq, nil
}

// shapeColumns is the projection onto the columns of sh (every column of
// a shape without any).
func shapeColumns(sh schema.Shape) *query.Projection {
	cols := make([]string, len(sh.Columns))
	for i, c := range sh.Columns {
		cols[i] = c.Name
	}
	return query.NewProjection(cols)
}

// testHookSnapshotRow, when set, is called for each row a snapshot reads.
var testHookSnapshotRow func()

// rowsWriter gathers a view's rows entries into rows frames and queues
// them, each once the connection has at most snapshotAhead queued.
type rowsWriter struct {
	s     *sub
	frame []byte
	n     int // entries in frame
}

// set adds the entry {"key":…,"data":…} of a row, projected.
func (w *rowsWriter) set(entry []byte) error {
	w.begin()
	var err error
	if w.frame, err = w.s.proj.Load().AppendView(w.frame, entry, query.ViewWhole, nil); err != nil {
		return err
	}
	return w.added()
}

// setChecked is set for an entry that is valid JSON, projected onto the
// table's columns already: without a projection of the subscription's, it
// goes into the frame as it is, rather than through a second pass.
func (w *rowsWriter) setChecked(entry []byte) error {
	if w.s.proj.Load() != nil {
		return w.set(entry)
	}
	w.begin()
	w.frame = append(w.frame, entry...)
	return w.added()
}

// remove adds the entry taking out the row of key.
func (w *rowsWriter) remove(key []byte) error {
	w.begin()
	w.frame = append(w.frame, `{"key":`...)
	w.frame = append(w.frame, key...)
	w.frame = append(w.frame, `,"removed":true}`...)
	return w.added()
}

// begin starts a frame, or the next entry of one.
func (w *rowsWriter) begin() {
	if w.n > 0 {
		w.frame = append(w.frame, ',')
		return
	}
	w.frame = append(newFrame(snapshotFrameBytes+4096), `{"type":"rows","id":`...)
	w.frame = jsonx.AppendString(w.frame, w.s.id)
	w.frame = append(w.frame, `,"rows":[`...)
}

func (w *rowsWriter) added() error {
	if w.n++; len(w.frame) >= snapshotFrameBytes || w.n >= snapshotFrameRows {
		return w.flush()
	}
	return nil
}

// flush queues the frame begun, if any.
func (w *rowsWriter) flush() error {
	if w.n == 0 {
		return nil
	}
	out := finishFrame(append(w.frame, "]}"...), opText)
	w.frame, w.n = nil, 0
	if !w.s.c.enqueueAhead(w.s, out, true, snapshotAhead) {
		return errSubEnded
	}
	return nil
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

// syncedAt is the synced of a view, sent by its history (replay) once the
// rows are brought up to date, before the history's first frame.
//
// The rows read are as of N except those changed after N while they were
// read (rowstate.Scan): such a row comes at its version as of N or not at
// all. Shown as they are, they could lack a row that exists (or hold it
// as it was before a transaction the other rows show), part of a later
// transaction. So the history up to to, the stream's last message of the
// table once the rows were read, is applied to the rows before synced
// (fold): as rows entries that set or take out rows, decided on the view as
// its events would be. Every row changed while the rows were read was
// changed by an event at most to, so the rows become exactly the table as
// of to (or of the message before a truncate among them: a truncate cannot
// be told as rows, and goes out after synced as the event that empties
// the view), and synced says it.
//
// A batched view's rows are as of event seq, of the transaction lsn (nil:
// none, or unknown). When the history's first message after them is an
// event of that transaction, the rows end inside it: synced says "more"
// and the history's frames of the transaction follow, the last of them
// without "more" (with no events, when the view takes none of them), so
// that a client can show its rows with the whole transaction applied,
// never a part of it.
type syncedAt struct {
	seq  uint64
	lsn  []byte // a batched view's
	to   uint64 // the history up to to is folded into the rows
	rows rowsWriter
	sent bool // synced is queued
	more bool // it said "more": the transaction's last frame is owed
}

// folds says whether the history's message seq is to be folded into the
// rows rather than sent.
func (y *syncedAt) folds(seq uint64) bool {
	return y != nil && !y.sent && seq <= y.to
}

// fold applies the history's message seq (subject, data; marker: a
// transaction marker) to the rows, as rows entries, and makes synced say
// seq. It returns false for a message that cannot be folded (a truncate):
// folding ends, and the message goes out after synced. ev is scratch.
func (y *syncedAt) fold(s *sub, seq uint64, subject string, data []byte, marker bool, ev *query.Event) (bool, error) {
	if marker {
		y.seq, y.lsn = seq, nil // between transactions
		return true, nil
	}
	bit := schema.OpBit(subjectOp(subject))
	if bit == schema.BitTruncate {
		y.to = 0
		return false, nil
	}
	y.seq = seq
	if s.batched {
		y.lsn = nil
		if bit != 0 && ev.Reset(bit, data) == nil {
			if m, inTxn := eventMeta(ev); inTxn {
				y.lsn = bytes.Clone(m.lsn)
			}
		}
	}
	var err error
	var entry []byte
	s.viewDecide(bit, data, func(view string, env []byte) {
		var row query.Row
		if err != nil || row.Reset(env) != nil {
			return
		}
		key, ok := row.Get("key")
		if !ok {
			return
		}
		if view == "leave" || bit == schema.BitDelete {
			err = y.rows.remove(key)
			return
		}
		d, ok := row.Get("data")
		if !ok {
			return
		}
		entry = append(append(append(append(entry[:0], `{"key":`...), key...), `,"data":`...), d...)
		if u, ok := row.Get("unchanged"); ok {
			// The values PostgreSQL left out of data are the row's as the
			// client holds it: said as the event says it, else the client
			// would set a row without them.
			entry = append(append(entry, `,"unchanged":`...), u...)
		}
		err = y.rows.set(append(entry, '}'))
	})
	return true, err
}

// send queues y's synced, after the rows folded in, saying more when the
// history's first message (subject, data; "" subject: there is none) is
// an event of y's transaction, or when there is none and the rows end
// inside a transaction: live delivery then ends it (closeOwed); ev is
// scratch.
func (y *syncedAt) send(s *sub, subject string, data []byte, ev *query.Event) bool {
	if y.rows.flush() != nil {
		return false
	}
	switch {
	case y.lsn == nil:
	case subject == "":
		// The history ends inside the transaction (at its boundary, the
		// stream's end or the rows' own position beyond what live
		// delivery has seen): its marker is still to come, live.
		y.more = true
	default:
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
