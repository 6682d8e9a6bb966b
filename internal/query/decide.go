package query

import (
	"errors"

	"github.com/tablecast/tablecast/schema"
)

// Event is one row change, indexed once for every subscription that may
// get it: its operation, the row it is matched on and, for an update,
// the old row PostgreSQL sent. Reset it for each event; it refers to the
// event's bytes and keeps its buffers, so that a warmed Event allocates
// nothing. Between Resets any number of goroutines may read it (Decide,
// Row, Old).
type Event struct {
	op     schema.OpSet // one operation
	env    Row          // the envelope
	row    Row          // the row the event is matched on
	hasRow bool
	old    Row // an update's old row
	hasOld bool
}

// Reset indexes data, the envelope of an event of operation op (one bit:
// schema.OpBit of the subject's last token). It returns an error when data
// is not a JSON object; the Event then holds no row.
func (e *Event) Reset(op schema.OpSet, data []byte) error {
	e.op, e.hasRow, e.hasOld = op, false, false
	if err := e.env.Reset(data); err != nil {
		return err
	}
	e.hasRow = eventRow(&e.env, &e.row, op)
	// Indexed whether or not a subscription has a row policy now: a
	// policy may be set at any time, and must never meet an update whose
	// old row it cannot see.
	e.hasOld = op == schema.BitUpdate && oldRow(&e.env, &e.old)
	return nil
}

// Member returns the raw JSON of a member of the event's envelope ("lsn",
// "xid", "commit_time" …); ok is false when it has none of that name.
func (e *Event) Member(name string) (raw []byte, ok bool) { return e.env.Get(name) }

// Op returns the event's operation.
func (e *Event) Op() schema.OpSet { return e.op }

// Row returns the row the event is matched on: "data" for create, update
// and read; "old", or else "key", for delete. ok is false when there is
// none (truncate) or it is malformed.
func (e *Event) Row() (row *Row, ok bool) { return &e.row, e.hasRow }

// Old returns an update's old row, when PostgreSQL sent one (REPLICA
// IDENTITY FULL, or a changed key); ok is false otherwise.
func (e *Event) Old() (old *Row, ok bool) { return &e.old, e.hasOld }

// oldRow indexes an update's "old" row into row; false when PostgreSQL
// sent none (the default replica identity, the key unchanged) or it is
// malformed.
func oldRow(env, row *Row) bool {
	obj, ok := env.Get("old")
	return ok && obj[0] == '{' && row.Reset(obj) == nil
}

// eventRow indexes the row an event is matched on into row: "data" for
// create, update and read; "old", or else "key", for delete. It reports
// false when there is none (truncate) or it is malformed.
func eventRow(env, row *Row, op schema.OpSet) bool {
	var obj []byte
	var ok bool
	switch op {
	case schema.BitTruncate:
		return false
	case schema.BitDelete:
		if obj, ok = env.Get("old"); !ok || obj[0] != '{' {
			obj, ok = env.Get("key")
		}
	default:
		obj, ok = env.Get("data")
	}
	return ok && obj[0] == '{' && row.Reset(obj) == nil
}

// Selector is what one subscriber takes of a table's events: the
// operations it asked for (and may read), its own where, and the row policy
// of its grants. Every sink decides with it which events a subscriber gets:
// the gateway's live delivery and resumes alike.
type Selector struct {
	// Ops are the operations the subscriber gets.
	Ops schema.OpSet
	// Where is the subscriber's own filter; nil for none.
	Where *Filter
	// Policy is the row policy of its grants; nil for none.
	Policy *Filter
}

// ErrWithheld is Decide's error for an event whose row the row policy
// cannot judge (a delete under the default replica identity carries only
// the key): it is not sent, and the row policy's columns should be made
// part of the replica identity (REPLICA IDENTITY FULL).
var ErrWithheld = errors.New("withheld by the row policy")

// Decide says what the subscriber is sent of ev: nothing (ok false), or
// the event seen as view. A truncate has no row and goes to every
// subscriber that asks for truncates.
//
// The row policy comes first: a row it does not let through, or cannot
// judge (ErrWithheld), is never sent. When PostgreSQL sent an update's
// old row (REPLICA IDENTITY FULL, or a changed key), the policy judges the
// old and the new row apart, since the update may move the row from what
// one subscriber may see to what another may: allowed both, the
// subscriber gets the update whole; only the new row, the update without
// "old" (ViewNew); only the old row, a delete of it (ViewOldAsDelete), if
// it takes deletes, matched on the old row as deletes are; neither,
// nothing. An old row the policy cannot judge (only the key, without the
// policy's columns) counts as not allowed.
//
// Any other error is the subscriber's where failing on the row (an
// *EvalError): the event is not sent, and the subscriber may be told.
func (s Selector) Decide(ev *Event) (view View, ok bool, err error) {
	bit := ev.op
	if bit == schema.BitTruncate {
		return ViewWhole, s.Ops&bit != 0, nil
	}
	split := bit == schema.BitUpdate && ev.hasOld && s.Policy != nil
	if s.Ops&bit == 0 && (!split || s.Ops&schema.BitDelete == 0) {
		return ViewWhole, false, nil
	}
	if s.Policy == nil {
		ok, err := s.matchWhere(bit, &ev.row, ev.hasRow)
		return ViewWhole, ok, err
	}
	if !ev.hasRow {
		return ViewWhole, false, ErrWithheld
	}
	newOK, err := s.Policy.Match(&ev.row)
	if err != nil {
		// A delete under the default replica identity carries only the
		// key: without the policy's columns it is withheld, never leaked.
		return ViewWhole, false, ErrWithheld
	}
	if !split {
		if !newOK {
			return ViewWhole, false, nil
		}
		ok, err := s.matchWhere(bit, &ev.row, true)
		return ViewWhole, ok, err
	}
	oldOK, err := s.Policy.Match(&ev.old)
	oldOK = oldOK && err == nil
	switch {
	case newOK && s.Ops&schema.BitUpdate == 0:
		return ViewWhole, false, nil
	case newOK:
		view := ViewWhole
		if !oldOK {
			view = ViewNew
		}
		ok, err := s.matchWhere(schema.BitUpdate, &ev.row, true)
		return view, ok, err
	case oldOK && s.Ops&schema.BitDelete != 0:
		ok, err := s.matchWhere(schema.BitDelete, &ev.old, true)
		return ViewOldAsDelete, ok, err
	}
	return ViewWhole, false, nil
}

// matchWhere matches the subscriber's where on the row an event of
// operation bit is judged on.
func (s Selector) matchWhere(bit schema.OpSet, row *Row, hasRow bool) (bool, error) {
	if s.Where == nil {
		return true, nil
	}
	if !hasRow {
		return false, nil
	}
	ok, err := s.Where.Match(row)
	if err != nil && bit == schema.BitDelete {
		// Under the default replica identity a delete carries only the
		// key. When the subscriber's filter cannot rule the row out from
		// what is there, the delete is sent: the subscriber may hold the
		// row, and a stale row is worse than a delete of a row it never
		// had. (Row policies, which guard data, withhold such deletes
		// instead.)
		var ee *EvalError
		if errors.As(err, &ee) && ee.Missing {
			return true, nil
		}
	}
	return ok, err
}
