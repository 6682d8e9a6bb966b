package schema

import (
	"strconv"
	"time"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// Value kinds of one column in a row image, as pgoutput tags them.
const (
	KindNull      = 'n' // SQL NULL
	KindUnchanged = 'u' // unchanged TOASTed value: PostgreSQL did not send it
	KindText      = 't' // text-format value
	// KindJSON is a value already encoded as the envelope encodes it (a
	// version of the row the reader kept, or read from the row state), and
	// written as it is: how a reader that knows a row's previous version
	// completes "old" and fills unchanged TOASTed values into "data".
	KindJSON = 'j'
)

// Value is one column of a row image. Data aliases the decoder's buffer and
// is only valid until the next message is read.
type Value struct {
	Kind byte
	Data []byte
}

// Txn holds what every event of one transaction shares. Call Reset at the
// transaction's Begin; the formatted parts are then computed once for all of
// its events instead of once per event.
type Txn struct {
	CommitLSN  uint64
	XID        uint32
	CommitTime time.Time

	idPrefix []byte // `"id":"<16 hex>-`
	tail     []byte // `,"lsn":"X/Y","xid":N,"commit_time":"…"`
}

// Reset prepares t for a new transaction.
func (t *Txn) Reset(commitLSN uint64, xid uint32, commitTime time.Time) {
	t.CommitLSN, t.XID, t.CommitTime = commitLSN, xid, commitTime

	t.idPrefix = append(t.idPrefix[:0], `"id":"`...)
	t.idPrefix = appendHex(t.idPrefix, commitLSN, 16)
	t.idPrefix = append(t.idPrefix, '-')

	t.tail = append(t.tail[:0], `,"lsn":"`...)
	t.tail = AppendLSN(t.tail, commitLSN)
	t.tail = append(t.tail, `","xid":`...)
	t.tail = strconv.AppendUint(t.tail, uint64(xid), 10)
	t.tail = append(t.tail, `,"commit_time":"`...)
	t.tail = commitTime.UTC().AppendFormat(t.tail, time.RFC3339Nano)
	t.tail = append(t.tail, '"')
}

// ResetSnapshot prepares t for the rows a snapshot reads at position point
// (the slot's consistent point, or an on-demand chunk's high watermark).
// They carry point as their lsn, no xid, and ids built on point-1 instead of
// a commit LSN: a transaction committed after point may have its commit
// record start at point itself, and the reader's ids must stay unique and
// increasing, so the snapshot's rows sort after every change committed
// before point and before every change committed from it on.
func (t *Txn) ResetSnapshot(point uint64, at time.Time) {
	t.Reset(point, 0, at)
	t.idPrefix = append(t.idPrefix[:0], `"id":"`...)
	t.idPrefix = appendHex(t.idPrefix, point-1, 16)
	t.idPrefix = append(t.idPrefix, '-')
}

// AppendID appends the event id of the change with the given ordinal:
// the commit LSN as 16 hex digits, a dash, the ordinal as at least 4 hex
// digits. Stable across replays of the same transaction.
func (t *Txn) AppendID(dst []byte, ordinal uint32) []byte {
	dst = append(dst, t.idPrefix[len(`"id":"`):]...)
	return appendHex(dst, uint64(ordinal), 4)
}

// MarkerOrdinal is the ordinal of a transaction marker's id
// (AppendMarkerID): beyond every ordinal of a change (a uint32), so that the
// marker's id sorts after every event of its transaction and clashes with
// none of them.
const MarkerOrdinal = 1 << 32

// AppendMarkerID appends the id of the transaction's marker: the commit LSN
// as 16 hex digits, a dash, MarkerOrdinal in hex (9 digits). ParseEventID
// reads it as an event id of ordinal MarkerOrdinal.
func (t *Txn) AppendMarkerID(dst []byte) []byte {
	dst = append(dst, t.idPrefix[len(`"id":"`):]...)
	return appendHex(dst, MarkerOrdinal, 4)
}

// ParseEventID splits an event id as AppendID writes it into its commit LSN
// and ordinal. ok is false for anything else: the LSN must be 16 hex
// digits and the ordinal 4 to 16.
func ParseEventID(id string) (lsn, ordinal uint64, ok bool) {
	if len(id) < 16+1+4 || len(id) > 16+1+16 || id[16] != '-' {
		return 0, 0, false
	}
	lsn, ok = parseHex(id[:16])
	if !ok {
		return 0, 0, false
	}
	ordinal, ok = parseHex(id[17:])
	return lsn, ordinal, ok
}

func parseHex(s string) (uint64, bool) {
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(c)
	}
	return v, true
}

// Change is one row change to encode.
type Change struct {
	Op      string
	Ordinal uint32
	// New is the new row image (create, update, read); nil otherwise.
	New []Value
	// Old is the old row image when PostgreSQL sent one; nil otherwise.
	// OldKeyOnly says it holds only the replica-identity columns (pgoutput's
	// 'K' tuple, written with the Identity and Key columns: the key lies
	// within the identity whenever PostgreSQL sends such a tuple), the other
	// columns being placeholders that are not written.
	Old        []Value
	OldKeyOnly bool
	// Cause, on a truncate tablecast sends itself rather than PostgreSQL,
	// says why (CauseTableAdded, CauseTableRenamed, CauseTableDropped,
	// CauseKeyChanged, CauseSnapshotRestarted); "" otherwise.
	Cause string
}

// AppendEvent appends the JSON envelope of one change of table tbl in
// database db to dst. The column values of c must match tbl's columns.
func AppendEvent(dst []byte, db string, tbl *Table, txn *Txn, c *Change) []byte {
	dst, _ = appendEvent(dst, db, tbl, txn, c, -1)
	return dst
}

// AppendEventLimited is AppendEvent for events that may be too large to
// keep: it appends the event when it takes at most limit bytes, and returns
// its size either way. For a larger event it stops building it as soon as
// it is past the limit and measures the rest one value at a time, without
// keeping it: dst comes back as it was, and while the call runs it holds at
// most limit bytes of the event plus one column value's encoding.
func AppendEventLimited(dst []byte, db string, tbl *Table, txn *Txn, c *Change, limit int) (out []byte, size int) {
	start := len(dst)
	out, size = appendEvent(dst, db, tbl, txn, c, start+limit)
	if size > limit {
		return out[:start], size
	}
	return out, size
}

// AppendEventHead appends the envelope of a change without its row images:
// every member up to and including "key", without "data", "old" and
// "unchanged", and without the closing brace. The caller appends what
// stands for the rows ("claim", "truncated") and the brace.
func AppendEventHead(dst []byte, db string, tbl *Table, txn *Txn, c *Change) []byte {
	dst = AppendEventHeadWithoutKey(dst, db, tbl, txn, c)
	dst = append(dst, `,"key":`...)
	return AppendEventKey(dst, tbl, c)
}

// AppendEventHeadWithoutKey is AppendEventHead without "key", for a
// change whose key alone is too large for a message: the caller says so
// in the envelope.
func AppendEventHeadWithoutKey(dst []byte, db string, tbl *Table, txn *Txn, c *Change) []byte {
	dst = append(dst, '{')
	dst = append(dst, txn.idPrefix...)
	dst = appendHex(dst, uint64(c.Ordinal), 4)
	dst = append(dst, `","op":"`...)
	dst = append(dst, c.Op...)
	dst = append(dst, `",`...)
	dst = append(dst, tbl.header(db)...)
	return append(dst, txn.tail...)
}

// AppendEventKey appends the "key" of a change's event: the key columns
// (Column.Key) from the old image when there is one (the row as it was),
// else from the new one, as a JSON object.
func AppendEventKey(dst []byte, tbl *Table, c *Change) []byte {
	dst = append(dst, '{')
	keySrc := c.New
	if c.Old != nil {
		keySrc = c.Old
	}
	dst, _ = appendRow(dst, tbl, keySrc, rowKey, -1, 0)
	return append(dst, '}')
}

// appendEvent appends the event. With end >= 0, once len(dst) passes end
// the rest of the event is measured rather than kept (see
// AppendEventLimited). size is the event's full size.
func appendEvent(dst []byte, db string, tbl *Table, txn *Txn, c *Change, end int) (out []byte, size int) {
	start := len(dst)
	dst = AppendEventHead(dst, db, tbl, txn, c)
	var over int // bytes measured beyond end and not kept
	if c.Cause != "" {
		dst = append(dst, `,"cause":`...)
		dst = jsonx.AppendString(dst, c.Cause)
	}
	if c.New != nil {
		dst = append(dst, `,"data":{`...)
		dst, over = appendRow(dst, tbl, c.New, rowAll, end, over)
		dst = append(dst, '}')
	}
	if c.Old != nil {
		dst = append(dst, `,"old":{`...)
		which := rowAll
		if c.OldKeyOnly {
			which = rowIdentity
		}
		dst, over = appendRow(dst, tbl, c.Old, which, end, over)
		dst = append(dst, '}')
	}
	if c.New != nil {
		first := true
		for i := range c.New {
			if c.New[i].Kind != KindUnchanged || i >= len(tbl.Columns) {
				continue
			}
			if first {
				dst = append(dst, `,"unchanged":[`...)
				first = false
			} else {
				dst = append(dst, ',')
			}
			dst = jsonx.AppendString(dst, tbl.Columns[i].Name)
		}
		if !first {
			dst = append(dst, ']')
		}
	}
	dst = append(dst, '}')
	return dst, len(dst) - start + over
}

// Which columns appendRow writes.
const (
	rowAll      = iota
	rowKey      // the key's
	rowIdentity // the replica identity's, and the key's
)

// appendRow writes the members of one row object (without braces): the
// columns which says. Unchanged TOASTed values are left out, never
// written as null.
//
// With end >= 0, a value that takes dst past end is measured and dropped
// again, as is every value after it, so that dst stops growing: over, the
// bytes measured and dropped so far, comes back increased by theirs.
func appendRow(dst []byte, tbl *Table, row []Value, which int, end, over int) ([]byte, int) {
	names := tbl.jsonNames()
	first := true
	for i := range row {
		if i >= len(tbl.Columns) {
			break
		}
		col := &tbl.Columns[i]
		if which == rowKey && !col.Key || which == rowIdentity && !col.Key && !col.Identity {
			continue
		}
		v := &row[i]
		if v.Kind == KindUnchanged {
			continue
		}
		mark := len(dst)
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, names[i]...)
		switch {
		case v.Kind == KindNull:
			dst = append(dst, "null"...)
		case v.Kind == KindJSON:
			dst = append(dst, v.Data...)
		case col.ValueOID != 0:
			dst = AppendValue(dst, col.ValueOID, v.Data)
		default:
			dst = AppendValue(dst, col.TypeOID, v.Data)
		}
		if end >= 0 && (over > 0 || len(dst) > end) {
			over += len(dst) - mark
			dst = dst[:mark]
		}
	}
	return dst, over
}

// AppendLSN appends lsn in PostgreSQL's X/Y form.
func AppendLSN(dst []byte, lsn uint64) []byte {
	dst = appendHexMin(dst, lsn>>32)
	dst = append(dst, '/')
	return appendHexMin(dst, lsn&0xFFFFFFFF)
}

const hexDigits = "0123456789ABCDEF"

// appendHex appends v as upper-case hex, zero-padded to at least width digits.
func appendHex(dst []byte, v uint64, width int) []byte {
	var buf [16]byte
	i := len(buf)
	for v != 0 || len(buf)-i < width {
		i--
		buf[i] = hexDigits[v&0xF]
		v >>= 4
	}
	return append(dst, buf[i:]...)
}

func appendHexMin(dst []byte, v uint64) []byte { return appendHex(dst, v, 1) }
