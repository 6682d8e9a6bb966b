package wsgate

import (
	"hash/maphash"
	"strconv"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/schema"
)

// Views. A subscription with "snapshot" keeps a view for its client: the
// keys of the rows it holds (the snapshot's, then changed by each event).
// Its events are decided on the view rather than on the event alone:
//
//   - a create, read or update whose new row matches (row policy and
//     where) is sent; an update of a row the view did not hold with
//     "view":"enter" (it moved into the filter or the policy);
//   - an update whose new row does not match is sent, when the view held
//     the row, as "view":"leave": the envelope without data, old and
//     unchanged, its key the row's;
//   - an update that changes the key is a leave of the old key (when held)
//     and then an enter of the new row (when it matches), both with the
//     update's seq;
//   - a delete is sent when the view held the row, whatever its columns;
//   - a truncate is sent, and empties the view.
//
// So the old version of a row is never needed: the view says whether the
// client holds it.

// viewSeed seeds the hashes of the keys views hold, anew in each process,
// so that nobody can choose keys that collide.
var viewSeed = maphash.MakeSeed()

// viewKey is what a view holds of a row's key (its JSON, as the events and
// the row state write it): a 64-bit hash. The keys themselves cost about 50
// bytes a row and view (1,000 views of 10,000 rows took 1.6 GB), the hash
// about 16. Two keys of one view share a hash with a chance of about n²/2⁶⁵
// for n rows (10⁻¹² for 10,000, 10⁻⁶ for ten million); the view would then
// take one row for the other: a delete of a row the client never had may
// be sent, or an update of it without "view":"enter".
func viewKey(key []byte) uint64 { return maphash.Bytes(viewSeed, key) }

// heldEvent is a live event held for a view while it catches up, or for a
// batched view, a transaction marker (marker).
type heldEvent struct {
	seq    uint64
	op     schema.OpSet
	data   []byte
	marker bool
}

// viewFrames decides the event seq (op, the envelope data) for s's view,
// updates the view, and returns the frames to send in order; with obj, the
// objects of a transaction frame instead (batch.go).
func (s *sub) viewFrames(seq uint64, op schema.OpSet, data []byte, obj bool) [][]byte {
	proj := s.projectionAt(seq)
	var out [][]byte
	s.viewDecide(op, data, func(view string, env []byte) {
		if f := encodeView(s.id, proj, seq, view, env, obj); f != nil {
			out = append(out, f)
		}
	})
	return out
}

// viewDecide decides an event (op, the envelope data) for s's view,
// updates the view, and gives emit, in order, what the client is told:
// the envelope to send and its view ("", "enter" or "leave").
func (s *sub) viewDecide(op schema.OpSet, data []byte, emit func(view string, env []byte)) {
	if op == 0 {
		return
	}
	var env query.Row
	if env.Reset(data) != nil {
		return
	}
	if s.view == nil {
		s.view = map[uint64]struct{}{}
	}
	if op == schema.BitTruncate {
		clear(s.view)
		s.displaced, s.txShown = nil, nil
		emit("", data)
		return
	}
	key, ok := env.Get("key")
	if !ok || key[0] != '{' {
		return
	}
	tracked := s.trackShown(&env)
	_, held := s.view[viewKey(key)]
	if op == schema.BitDelete {
		if tracked && s.anotherRow(key, &env) {
			s.countOff(key) // a row the key displaced is deleted
			return
		}
		delete(s.txShown, viewKey(key))
		if held && !s.otherRowLeaves(key, &env) {
			delete(s.view, viewKey(key))
			delete(s.displaced, viewKey(key))
			emit("", data)
		}
		return
	}
	rowData, ok := env.Get("data")
	if !ok || rowData[0] != '{' {
		return // a row too large for the stream: nothing to judge
	}
	var row query.Row
	if row.Reset(rowData) != nil {
		return
	}
	match := true
	if policy := s.policy.Load(); policy != nil {
		ok, err := policy.Match(&row)
		match = ok && err == nil
	}
	if match && s.filter != nil {
		ok, err := s.filter.Match(&row)
		match = ok && err == nil
	}
	newKey := key
	if _, hasOld := env.Get("old"); hasOld && op == schema.BitUpdate {
		if k, err := rowstate.NewKey(key, rowData); err == nil {
			newKey = k
		}
	}
	moved := string(newKey) != string(key)
	another := tracked && op == schema.BitUpdate && s.anotherRow(key, &env)
	if another && !moved {
		return // a row the key displaced changed: the key's row is another
	}
	if tracked {
		s.noteShown(op, key, newKey, moved, another, rowData, &env)
	}
	if moved || !match {
		if another {
			s.countOff(key) // a row the key displaced moves off: the key keeps its row
		} else if held && moved && s.otherRowLeaves(key, &env) {
			// Another row holds the key now: the client keeps it.
		} else if held {
			delete(s.view, viewKey(key))
			delete(s.displaced, viewKey(key))
			emit("leave", leaveEnvelope(data, key))
		}
		if !match {
			if _, onto := s.view[viewKey(newKey)]; moved && onto {
				// A row out of the view moved onto a key the client
				// holds, whose row moves off later (a deferrable key):
				// the key's row leaves the view.
				delete(s.view, viewKey(newKey))
				delete(s.displaced, viewKey(newKey))
				emit("leave", leaveEnvelope(data, newKey))
			}
			return
		}
		_, held = s.view[viewKey(newKey)]
		if held && moved {
			// Under a deferrable key a row moves onto a key another row
			// still holds, which moves off later in the transaction (a
			// swap, a renumbering): the client's row of the key becomes
			// this one, and the other's move off leaves it.
			s.displace(newKey)
		}
	}
	if held && op == schema.BitCreate {
		// Under a deferrable key a row is inserted onto a key another row
		// still holds, which is deleted or moves off later (a row replaced
		// by inserting its new version first): likewise.
		s.displace(newKey)
	}
	s.view[viewKey(newKey)] = struct{}{}
	if held || op != schema.BitUpdate {
		// A create or read adds a row (or reads it again), an update of
		// a row held changes it: as they are; a row moved onto a key held
		// (above) under the key it changes.
		if moved {
			emit("", withKey(withoutMembers(data, "old", "key"), newKey))
			return
		}
		emit("", data)
		return
	}
	enter := withoutMembers(data, "old")
	if string(newKey) != string(key) {
		enter = withKey(withoutMembers(data, "old", "key"), newKey)
	}
	emit("enter", enter)
}

// displace records that a row came onto key, held by another row (a
// deferrable key): sub.displaced.
func (s *sub) displace(key []byte) {
	if s.displaced == nil {
		s.displaced = map[uint64]int{}
	}
	s.displaced[viewKey(key)]++
}

// countOff records that a row key displaced has left it.
func (s *sub) countOff(key []byte) {
	switch n := s.displaced[viewKey(key)]; {
	case n > 1:
		s.displaced[viewKey(key)] = n - 1
	case n == 1:
		delete(s.displaced, viewKey(key))
	}
}

// maxTxShown bounds sub.txShown: past it, the rest of a transaction's rows
// are not tracked (their keys are told apart only as sub.displaced counts).
const maxTxShown = 4096

// trackShown reports whether s tells the rows sharing a key apart by their
// values (txShown): the table is published under REPLICA IDENTITY FULL,
// which a deferrable key needs (no other replica identity can be one), so
// its updates and deletes carry whole old rows, written as its data. (Old
// rows the reader completes are not: a key shared is never theirs.) It
// starts txShown afresh at each transaction (the event's lsn).
func (s *sub) trackShown(env *query.Row) bool {
	if s.table == nil || s.table.Shape.ReplicaIdentity != "full" {
		return false
	}
	lsn, _ := env.Get("lsn")
	if string(lsn) != string(s.txLSN) {
		clear(s.txShown)
		s.txLSN = append(s.txLSN[:0], lsn...)
	}
	return true
}

// anotherRow reports whether the old row of an update or delete of key is
// not the row that came onto key in this transaction (txShown): it is a row
// that key displaced, whose change or removal the client is not told of.
func (s *sub) anotherRow(key []byte, env *query.Row) bool {
	h, ok := s.txShown[viewKey(key)]
	if !ok {
		return false
	}
	old, ok := env.Get("old")
	return ok && old[0] == '{' && maphash.Bytes(viewSeed, old) != h
}

// noteShown records in txShown the row an event leaves on its key: a row
// inserted or moved onto newKey, or changed there after it came; a row that
// moved off key (another is false: it was key's row) is no longer there.
// Values left out as unchanged TOAST would not hash as the whole old row
// does: such a row is not tracked.
func (s *sub) noteShown(op schema.OpSet, key, newKey []byte, moved, another bool, rowData []byte, env *query.Row) {
	if moved && !another {
		delete(s.txShown, viewKey(key))
	}
	_, had := s.txShown[viewKey(newKey)]
	if op != schema.BitCreate && !moved && !had {
		return // a change of a row that did not come onto its key in this transaction
	}
	if u, ok := env.Get("unchanged"); ok && len(u) > 2 {
		delete(s.txShown, viewKey(newKey))
		return
	}
	if s.txShown == nil {
		s.txShown = map[uint64]uint64{}
	}
	if had || len(s.txShown) < maxTxShown {
		s.txShown[viewKey(newKey)] = maphash.Bytes(viewSeed, rowData)
	}
}

// otherRowLeaves reports whether the row whose delete or update moves it
// off key, which the view holds, is not the row the client holds there:
// another row came onto the key while this one held it (displaced), or
// the old row PostgreSQL sent whole (REPLICA IDENTITY FULL, which a
// deferrable key needs) does not match the where, so the client never held
// it. It counts the first case off. (When the row that came onto the key
// leaves first, the client keeps its values: the values of the row it
// displaced are not known to the view, though the row state holds that
// row again.)
func (s *sub) otherRowLeaves(key []byte, env *query.Row) bool {
	if s.displaced[viewKey(key)] > 0 {
		s.countOff(key)
		return true
	}
	old, ok := env.Get("old")
	if !ok || old[0] != '{' {
		return false
	}
	var row query.Row
	if row.Reset(old) != nil {
		return false
	}
	// An error (a column the old row lacks: it is the key alone) says
	// nothing: only a where that judges the old row out does. (Not the
	// row policy, which a refreshed token may have changed since.)
	if s.filter != nil {
		if ok, err := s.filter.Match(&row); err == nil && !ok {
			return true
		}
	}
	return false
}

func frames(f []byte) [][]byte {
	if f == nil {
		return nil
	}
	return [][]byte{f}
}

// encodeView encodes an event frame of a view: view ("enter", "leave" or
// "" for none) after its seq. With obj, the event's object in a
// transaction frame instead: {"seq":…,"view":…,"event":{…}}.
func encodeView(id string, proj *query.Projection, seq uint64, view string, env []byte, obj bool) []byte {
	var buf []byte
	if obj {
		buf = make([]byte, 0, len(env)+48)
		buf = append(buf, `{"seq":`...)
	} else {
		buf = newFrame(len(env) + len(id) + 64)
		buf = append(buf, `{"type":"event","id":`...)
		buf = jsonx.AppendString(buf, id)
		buf = append(buf, `,"seq":`...)
	}
	buf = strconv.AppendUint(buf, seq, 10)
	if view != "" {
		buf = append(buf, `,"view":"`...)
		buf = append(buf, view...)
		buf = append(buf, '"')
	}
	buf = append(buf, `,"event":`...)
	var err error
	if buf, err = proj.AppendView(buf, env, query.ViewWhole, nil); err != nil {
		return nil
	}
	if obj {
		return append(buf, '}')
	}
	return finishFrame(append(buf, '}'), opText)
}

// leaveEnvelope is env without data, old and unchanged, with key as the
// row's key.
func leaveEnvelope(env, key []byte) []byte {
	return withKey(withoutMembers(env, "data", "old", "unchanged", "key"), key)
}

// withKey appends "key":key to the object obj, which has no key.
func withKey(obj, key []byte) []byte {
	out := obj[:len(obj)-1]
	if len(out) > 1 {
		out = append(out, ',')
	}
	out = append(out, `"key":`...)
	out = append(out, key...)
	return append(out, '}')
}

// withoutMembers returns the object env without the named top-level
// members (env is valid: the feed indexed it).
func withoutMembers(env []byte, names ...string) []byte {
	out := make([]byte, 0, len(env))
	out = append(out, '{')
	var sc jsonx.Scanner
	i := jsonx.SkipSpace(env, 0) + 1
	i = jsonx.SkipSpace(env, i)
	first := true
	for i < len(env) && env[i] != '}' {
		name, _, v, err := jsonx.Member(env, i)
		if err != nil {
			break
		}
		end, err := sc.SkipValue(env, v)
		if err != nil {
			break
		}
		drop := false
		for _, n := range names {
			if jsonx.CompareString(name, n) == 0 {
				drop = true
			}
		}
		if !drop {
			if !first {
				out = append(out, ',')
			}
			first = false
			out = append(out, env[i:end]...)
		}
		var more bool
		if i, more, err = jsonx.Next(env, end, '}'); err != nil || !more {
			break
		}
	}
	return append(out, '}')
}

// holdForView holds e for s, a view catching up, under the feed's mu.
// What a view holds is bounded as the send queue is: beyond it the client
// is closed with 4008 and reads the view again. Markers count too: a
// database busy with other tables sends a batched view little but them.
func (f *feed) holdForView(s *sub, e heldEvent) {
	s.heldEv = append(s.heldEv, e)
	s.heldBytes += len(e.data) + 64
	if s.heldBytes > f.g.cfg.SendQueueBytes {
		s.heldEv, s.heldBytes = nil, 0
		f.g.met.slowCloses.Inc()
		s.c.closeWith(CloseSlowConsumer, "slow consumer: too many live events while catching up; subscribe again")
	}
}

// offerView handles the event being delivered for a view: decided now when
// the view is live, held raw while it catches up (decided in order after
// its history, catchUp).
func (f *feed) offerView(s *sub, seq uint64, data []byte) {
	switch {
	case s.ended.Load():
		return
	case f.last <= s.boundary, s.catching && s.waiting:
		return // the history will send it
	case s.catching:
		f.holdForView(s, heldEvent{seq: seq, op: f.ev.Op(), data: append([]byte(nil), data...)})
		return
	}
	if s.batched {
		empty := s.batch.n == 0
		f.frames = s.viewBatchFrames(f.frames[:0], &s.batch, f.g.batchLimits(), seq, f.ev.Op(), data)
		if empty && s.batch.n > 0 {
			f.pending = append(f.pending, s)
		}
		for i, frame := range f.frames {
			s.c.enqueue(frame, false)
			f.frames[i] = nil
		}
		return
	}
	for _, frame := range s.viewFrames(seq, f.ev.Op(), data, false) {
		s.c.enqueue(frame, false)
	}
}
