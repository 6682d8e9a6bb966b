package wsgate

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// Transaction batches: a subscription with "batch": "transaction".
//
// The reader publishes each event as it decodes it, and with its
// transaction markers on (stream.TransactionSubject) one marker after each
// transaction's events. A batched subscription's feed follows its table's
// subjects and its database's marker subject with one ordered consumer, so
// that it sees the marker in its place after the transaction's events. It
// gathers, per subscription, the objects of the events the subscription
// takes (its filter, row policy and projection decide as for event frames)
// and sends them in one transaction frame when the marker comes:
//
//	{"type":"transaction","id":"s1","seq":<the marker's>,"xid":…,"lsn":"…",
//	 "commit_time":"…","events":[{"seq":…,"event":{…}},…]}
//
// A transaction none of whose events the subscription takes sends nothing.
// What a subscription holds is bounded (Config.BatchMaxEvents and
// BatchMaxBytes): a larger transaction is cut into several frames, each
// with "more": true but the last, and seq the last event's of the frame.
// Resuming from any frame's seq ("from") then reads the rest of the
// transaction and no more, since the reader publishes one transaction after
// the other: nothing but the transaction's events lies between them and
// its marker. A resume's history is batched the same way, and its last
// frame is cut with "more": true when the history ends inside a
// transaction (where live delivery takes over, whose frames bring the
// rest).
//
// A batched live view (snapshot.go, view.go) gathers the objects of its
// view's events (enter and leave among them) the same way; while it
// catches up, the markers are held among its live events (heldEvent) and
// decided in their place after its history. Its synced waits for the
// history: rows that end inside a transaction get "more", and the rest of
// the transaction follows, ending with a frame even when the view takes
// none of it (syncedAt).
//
// Events that belong to no transaction (op read, with xid 0: the rows of a
// snapshot) go out as ordinary event frames, after what the batch held.
// Events of a transaction whose marker never comes (published before the
// markers were turned on, or by a reader with them off) are sent when the
// next transaction's first event or marker shows that theirs has ended.

// txMeta is the raw JSON of a transaction's "xid", "lsn" and
// "commit_time", as an event's envelope or a marker carries them.
type txMeta struct{ xid, lsn, at []byte }

// metaOf reads a transaction's xid, LSN and commit time with get (a
// parsed event's or envelope's members).
func metaOf(get func(name string) ([]byte, bool)) (m txMeta, ok bool) {
	var okX, okL, okT bool
	m.xid, okX = get("xid")
	m.lsn, okL = get("lsn")
	m.at, okT = get("commit_time")
	return m, okX && okL && okT
}

// eventMeta reads ev's transaction; ok is false for an event outside any
// (xid 0) or one that does not say.
func eventMeta(ev *query.Event) (txMeta, bool) {
	m, ok := metaOf(ev.Member)
	return m, ok && string(m.xid) != "0"
}

// envMeta reads the transaction of an event's envelope, using row as
// scratch; ok as for eventMeta.
func envMeta(row *query.Row, data []byte) (txMeta, bool) {
	if row.Reset(data) != nil {
		return txMeta{}, false
	}
	m, ok := metaOf(row.Get)
	return m, ok && string(m.xid) != "0"
}

// markerMeta reads a marker's transaction from its body, using row as
// scratch.
func markerMeta(row *query.Row, data []byte) (txMeta, bool) {
	if row.Reset(data) != nil {
		return txMeta{}, false
	}
	return metaOf(row.Get)
}

// keptBatchBytes is the largest buffer a subscription's batch keeps
// between transactions.
const keptBatchBytes = 64 << 10

// batchLimits bound one transaction frame.
type batchLimits struct{ events, bytes int }

func (g *Gateway) batchLimits() batchLimits {
	return batchLimits{events: g.cfg.BatchMaxEvents, bytes: g.cfg.BatchMaxBytes}
}

// txBatch is what a batched subscription has gathered of the transaction
// being delivered: the objects of its events, in commit order.
type txBatch struct {
	xid, lsn, at []byte // the transaction's, copied from its first event
	body         []byte // `{"seq":…,"event":{…}}`, comma separated
	n            int
	lastSeq      uint64 // of the last event gathered
}

// drop forgets what b holds.
func (b *txBatch) drop() { *b = txBatch{} }

// add gathers obj, the object of event seq of transaction m, and appends
// to out the frames to send first: what b held, when it belongs to another
// transaction (whose marker never came) or when obj would take b past lim.
func (b *txBatch) add(out [][]byte, id string, lim batchLimits, seq uint64, m txMeta, obj []byte) [][]byte {
	if b.n > 0 && !bytes.Equal(b.lsn, m.lsn) {
		out = append(out, b.cut(id, b.lastSeq, false))
	}
	if b.n > 0 && (b.n >= lim.events || len(b.body)+1+len(obj) > lim.bytes) {
		out = append(out, b.cut(id, b.lastSeq, true))
	}
	if b.n == 0 {
		b.xid = append(b.xid[:0], m.xid...)
		b.lsn = append(b.lsn[:0], m.lsn...)
		b.at = append(b.at[:0], m.at...)
	} else {
		b.body = append(b.body, ',')
	}
	b.body = append(b.body, obj...)
	b.n++
	b.lastSeq = seq
	return out
}

// end is the marker seq of transaction m: it returns the transaction's
// last frame, or nil when b holds nothing. Events of another transaction
// (whose marker never came) are sent as they are, under their last seq.
func (b *txBatch) end(id string, seq uint64, m txMeta) []byte {
	if b.n == 0 {
		return nil
	}
	if !bytes.Equal(b.lsn, m.lsn) {
		return b.cut(id, b.lastSeq, false)
	}
	return b.cut(id, seq, false)
}

// flush returns what b holds as a frame, nil when it holds nothing: more
// says whether the transaction goes on after it.
func (b *txBatch) flush(id string, more bool) []byte {
	if b.n == 0 {
		return nil
	}
	return b.cut(id, b.lastSeq, more)
}

// cut returns b's transaction frame, under seq, and empties b.
func (b *txBatch) cut(id string, seq uint64, more bool) []byte {
	frame := encodeTransaction(id, seq, b.xid, b.lsn, b.at, more, b.body)
	b.n, b.body = 0, b.body[:0]
	if cap(b.body) > keptBatchBytes {
		// Every batched subscription has one: a large transaction's
		// buffer is not kept for the small ones that mostly follow.
		b.body = nil
	}
	return frame
}

// encodeTransaction builds a transaction frame.
func encodeTransaction(id string, seq uint64, xid, lsn, at []byte, more bool, events []byte) []byte {
	buf := newFrame(len(events) + len(id) + len(xid) + len(lsn) + len(at) + 112)
	buf = append(buf, `{"type":"transaction","id":`...)
	buf = jsonx.AppendString(buf, id)
	buf = append(buf, `,"seq":`...)
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, `,"xid":`...)
	buf = append(buf, xid...)
	buf = append(buf, `,"lsn":`...)
	buf = append(buf, lsn...)
	buf = append(buf, `,"commit_time":`...)
	buf = append(buf, at...)
	if more {
		buf = append(buf, `,"more":true`...)
	}
	buf = append(buf, `,"events":[`...)
	buf = append(buf, events...)
	return finishFrame(append(buf, "]}"...), opText)
}

// appendEventObject appends an event's object in a transaction frame,
// {"seq":…,"event":{…}}, the event seen as view through proj (nil: whole);
// ok is false when it cannot be projected.
func appendEventObject(dst []byte, proj *query.Projection, seq uint64, data []byte, view query.View, row *query.Row) ([]byte, bool) {
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"event":`...)
	if proj == nil && view == query.ViewWhole {
		dst = append(dst, data...)
	} else {
		var err error
		if dst, err = proj.AppendView(dst, data, view, row); err != nil {
			return dst, false
		}
	}
	return append(dst, '}'), true
}

// objectFrame turns an event's object in a transaction frame into the
// event frame of subscription id: {"type":"event","id":…,<obj's members>}.
func objectFrame(id string, obj []byte) []byte {
	buf := newFrame(len(obj) + len(id) + 32)
	buf = append(buf, `{"type":"event","id":`...)
	buf = jsonx.AppendString(buf, id)
	buf = append(buf, ',')
	buf = append(buf, obj[1:]...)
	return finishFrame(buf, opText)
}

// viewBatchFrames decides the event seq for s's view (a batched live view:
// enter and leave events inside the transaction frames), gathers what it
// sends into b, and appends to out the frames to send now.
func (s *sub) viewBatchFrames(out [][]byte, b *txBatch, lim batchLimits, seq uint64, op schema.OpSet, data []byte) [][]byte {
	objs := s.viewFrames(seq, op, data, true)
	if len(objs) == 0 {
		return out
	}
	var row query.Row
	m, inTxn := envMeta(&row, data)
	if !inTxn {
		if frame := b.flush(s.id, false); frame != nil {
			out = append(out, frame)
		}
		for _, obj := range objs {
			out = append(out, objectFrame(s.id, obj))
		}
		return out
	}
	for i, obj := range objs {
		// A key change's leave and enter share the update's seq: a frame
		// cut between them would end at that seq, as the next frame would
		// when it ended with the enter, and a client takes a frame at a
		// seq it has seen for one it has applied. So the enter goes in the
		// leave's frame, past the limits if it must, as one event would.
		l := lim
		if i > 0 {
			l = batchLimits{events: math.MaxInt, bytes: math.MaxInt}
		}
		out = b.add(out, s.id, l, seq, m, obj)
	}
	return out
}

// offerBatched gathers the event being delivered, which s takes, into s's
// batch: unless s is to get it from its resume's history, as sendTo
// decides for a frame.
func (f *feed) offerBatched(s *sub, seq uint64, data []byte, view query.View, proj *query.Projection, row *query.Row) {
	if s.ended.Load() || f.last <= s.boundary || s.catching && s.waiting {
		return
	}
	if proj == nil {
		proj = s.proj.Load()
	}
	m, inTxn := eventMeta(&f.ev)
	if !inTxn {
		// A snapshot's row: after what the batch holds, as it is.
		if frame := s.batch.flush(s.id, false); frame != nil {
			f.sendTo(s, frame)
		}
		if frame := encodeEvent(s.id, proj, seq, data, view, row); frame != nil {
			f.sendTo(s, frame)
		}
		return
	}
	var ok bool
	if f.obj, ok = appendEventObject(f.obj[:0], proj, seq, data, view, row); !ok {
		return
	}
	if s.batch.n == 0 {
		f.pending = append(f.pending, s)
	}
	f.frames = s.batch.add(f.frames[:0], s.id, f.g.batchLimits(), seq, m, f.obj)
	for i, frame := range f.frames {
		f.sendTo(s, frame)
		f.frames[i] = nil
	}
	if cap(f.obj) > 2*f.g.cfg.BatchMaxBytes {
		f.obj = nil
	}
}

// initTx learns, as the feed starts at f.last, whether a transaction of
// its table may be open there (noteEvent follows it from then on): when
// the table's last event is not followed by a marker. When the table's
// last event or the last marker lies beyond f.last (stored meanwhile), the
// transaction of that event is taken as open, which is safe: an open
// boundary ends wherever the stream shows its transaction ended.
func (f *feed) initTx(ctx context.Context) error {
	last, err := f.g.str.GetLastMsgForSubject(ctx, f.subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil
	case err != nil:
		return wrapf(err, "read the last event of %s", f.subject)
	}
	marker, err := f.g.lastSeqOfSubject(ctx, f.marker)
	if err != nil {
		return err
	}
	if last.Sequence < marker && marker <= f.last {
		return nil
	}
	bit := schema.OpBit(subjectOp(last.Subject))
	if bit == 0 || f.ev.Reset(bit, last.Data) != nil {
		return nil
	}
	if m, inTxn := eventMeta(&f.ev); inTxn {
		f.txOpen, f.txLSN = true, bytes.Clone(m.lsn)
	}
	return nil
}

// noteEvent follows the transaction of the event being delivered (f.ev),
// and ends the open boundaries of resumes (see openBoundary) that it shows
// over: an event outside their transaction is the feed's to send, the
// history stopping before it.
func (f *feed) noteEvent() {
	m, inTxn := eventMeta(&f.ev)
	if len(f.opening) > 0 {
		kept := f.opening[:0]
		for _, s := range f.opening {
			switch {
			case s.gone:
			case !inTxn || !bytes.Equal(m.lsn, s.openLSN):
				s.boundary, s.openBoundary = f.prevLast, false
			default:
				kept = append(kept, s)
			}
		}
		clear(f.opening[len(kept):])
		f.opening = kept
	}
	f.txOpen = inTxn
	if inTxn {
		f.txLSN = append(f.txLSN[:0], m.lsn...)
	}
}

// deliverMarker ends the transaction whose marker is seq: every
// subscription that gathered events of it is sent its frame, and the open
// boundaries of resumes end with it (the history sends it).
func (f *feed) deliverMarker(seq uint64, data []byte) {
	f.txOpen = false
	for i, s := range f.opening {
		s.boundary, s.openBoundary = seq, false
		f.opening[i] = nil
	}
	f.opening = f.opening[:0]
	// A view catching up holds the marker among its live events, which
	// are decided after its history (catchUp).
	for _, s := range f.scan {
		if s.snapshot && s.catching && !s.waiting && !s.ended.Load() && f.last > s.boundary {
			f.holdForView(s, heldEvent{seq: seq, data: append([]byte(nil), data...), marker: true})
		}
	}
	if len(f.pending) == 0 && len(f.owing) == 0 {
		return
	}
	m, ok := markerMeta(&f.mark, data)
	if !ok {
		f.g.log.Warn("gateway skips a malformed transaction marker", "subject", f.marker, "seq", seq)
		return
	}
	if len(f.owing) > 0 {
		f.closeOwed(seq, m)
	}
	kept := f.pending[:0]
	for _, s := range f.pending {
		switch {
		case s.gone || s.batch.n == 0:
			continue
		case s.snapshot && s.catching:
			kept = append(kept, s) // its held marker ends it
			continue
		}
		if frame := s.batch.end(s.id, seq, m); frame != nil {
			f.sendTo(s, frame)
		}
	}
	clear(f.pending[len(kept):])
	f.pending = kept
}

// closeOwed sends, for the marker seq of transaction m, the last frame of
// the transaction to each batched view owed one (owedClose) that took
// none of its rest: the frame ending it otherwise comes from its batch.
// A view still catching up has the marker held, and is closed when it is
// released (releaseHeld).
func (f *feed) closeOwed(seq uint64, m txMeta) {
	kept := f.owing[:0]
	for _, s := range f.owing {
		switch {
		case s.gone || s.owedClose == nil:
			continue
		case s.snapshot && s.catching:
			kept = append(kept, s)
			continue
		case !bytes.Equal(m.lsn, s.owedClose):
			kept = append(kept, s) // not its transaction's marker (yet)
			continue
		}
		s.owedClose = nil
		if s.batch.n == 0 {
			f.sendTo(s, encodeTransaction(s.id, seq, m.xid, m.lsn, m.at, false, nil))
		}
	}
	clear(f.owing[len(kept):])
	f.owing = kept
}

// releaseHeld decides a batched view's held event e (catchUp), under the
// feed's mu, and returns the frames to send.
func (f *feed) releaseHeld(s *sub, e heldEvent) [][]byte {
	if e.marker {
		m, ok := markerMeta(&f.mark, e.data)
		if !ok {
			return nil
		}
		if s.owedClose != nil && bytes.Equal(m.lsn, s.owedClose) {
			s.owedClose = nil
			if s.batch.n == 0 {
				return [][]byte{encodeTransaction(s.id, e.seq, m.xid, m.lsn, m.at, false, nil)}
			}
		}
		return frames(s.batch.end(s.id, e.seq, m))
	}
	empty := s.batch.n == 0
	out := s.viewBatchFrames(nil, &s.batch, f.g.batchLimits(), e.seq, e.op, e.data)
	if empty && s.batch.n > 0 {
		f.pending = append(f.pending, s)
	}
	return out
}

// historyBatch renders one message of a batched subscription's history
// into b: it appends to out the frames to send now.
func (s *sub) historyBatch(out [][]byte, b *txBatch, lim batchLimits, marker string, seq uint64, subject string, data []byte, ev *query.Event, scratch *[]byte, mark *query.Row) [][]byte {
	if subject == marker {
		m, ok := markerMeta(mark, data)
		if !ok {
			return out
		}
		if frame := b.end(s.id, seq, m); frame != nil {
			out = append(out, frame)
		}
		return out
	}
	if s.snapshot {
		return s.viewBatchFrames(out, b, lim, seq, schema.OpBit(subjectOp(subject)), data)
	}
	view, proj, row, frame, ok := s.historyDecide(seq, subject, data, ev)
	if frame != nil {
		return append(out, frame) // filter_failed
	}
	if !ok {
		return out
	}
	m, inTxn := eventMeta(ev)
	if !inTxn {
		if frame := b.flush(s.id, false); frame != nil {
			out = append(out, frame)
		}
		if frame := encodeEvent(s.id, proj, seq, data, view, row); frame != nil {
			out = append(out, frame)
		}
		return out
	}
	if *scratch, ok = appendEventObject((*scratch)[:0], proj, seq, data, view, row); !ok {
		return out
	}
	return b.add(out, s.id, lim, seq, m, *scratch)
}
