// Column projection: the `select` of a subscription (DESIGN.md, "WebSocket
// protocol — contract (v1)").
//
// NewProjection compiles a client's select list once, when the subscription
// is made or changed. A sink groups subscriptions by Projection.Key and runs
// AppendEvent once per distinct projection per event, so that every
// subscription with the same select list shares the same encoded bytes.
//
// AppendEvent rewrites the envelope without decoding it: it walks the event
// with the scanner of package jsonx (Member, Scanner.SkipValue), copies
// every member it keeps byte for byte, and compares member names with the select
// list by their decoded value, so that "st\u0061tus" is the column status.
// Once dst has room it allocates nothing (TestProjectEventAllocs,
// BenchmarkProjectEvent).

package query

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// Projection is a compiled select list, and the column grant of the
// subscription's identity when one applies (NewGrantedProjection). A nil
// *Projection keeps every column.
//
// A Projection is immutable once compiled: any number of goroutines may call
// its methods at once.
type Projection struct {
	rows colSet // what "data", "old" and "unchanged" keep
	keys colSet // what "key" keeps: every column unless a column grant applies
	key  string
}

// colSet is a set of column names, or every column.
type colSet struct {
	all     bool
	columns []string // sorted, distinct
	// bloom has nameBit(c) set for every column c: most names of a row
	// that are not selected are turned away by one test of it.
	bloom uint64
	// set holds the columns. With bloom in front, a map lookup costs
	// no more than comparing a few names in turn, even for a list of two
	// (BenchmarkProjectEvent), and it stays flat for a list of fifty.
	set map[string]struct{}
}

// everyColumn is the colSet of a nil Projection.
var everyColumn = &colSet{all: true}

// newColSet makes the set of cols, sorted and distinct.
func newColSet(cols []string) colSet {
	c := colSet{columns: cols, set: make(map[string]struct{}, len(cols))}
	for _, name := range cols {
		c.bloom |= nameBit(name)
		c.set[name] = struct{}{}
	}
	return c
}

// sortedDistinct returns a sorted copy of list without duplicates.
func sortedDistinct(list []string) []string {
	cols := slices.Clone(list)
	slices.Sort(cols)
	return slices.Compact(cols)
}

// NewProjection compiles a select list. nil or an empty list returns nil (all
// columns). Duplicates are ignored. Names are exact (case-sensitive) column
// names, compared with the decoded names of the event's row members. A name
// that no row has (a misspelt column) selects nothing; a list of such names
// only projects every row to {}.
func NewProjection(columns []string) *Projection {
	if len(columns) == 0 {
		return nil
	}
	cols := sortedDistinct(columns)
	return &Projection{rows: newColSet(cols), keys: colSet{all: true}, key: projectionKey(cols)}
}

// NewGrantedProjection compiles a select list under a column grant: the
// columns granted (sorted or not; an empty list grants none). "data", "old"
// and "unchanged" keep the selected columns that are granted, or every
// granted column when selected is empty; "key" keeps its granted columns.
// A select list is meant to name granted columns only (the gateway refuses
// any other, as a column that does not exist); one that does not still
// shows no other.
func NewGrantedProjection(selected, granted []string) *Projection {
	keys := sortedDistinct(granted)
	rows := keys
	if len(selected) > 0 {
		rows = slices.DeleteFunc(sortedDistinct(selected), func(c string) bool {
			_, ok := slices.BinarySearch(keys, c)
			return !ok
		})
	}
	return &Projection{rows: newColSet(rows), keys: newColSet(keys), key: grantedKey(rows, keys)}
}

// nameBit returns the bit of colSet.bloom for the name s: one of 64,
// chosen by its length and first and last bytes, which tell apart most
// column names of a table.
func nameBit[S string | []byte](s S) uint64 {
	if len(s) == 0 {
		return 1
	}
	return 1 << ((uint(len(s)) + 7*uint(s[0]) + 31*uint(s[len(s)-1])) & 63)
}

// projectionKey returns the Key of the sorted distinct names cols: the names
// joined with "\x00". PostgreSQL column names are never empty and never hold
// a NUL, and for such names that join is unambiguous. For a list with an
// empty name or a name holding a NUL (which no PostgreSQL column can match,
// but which a client may still send) the join could collide with another
// list's, or with nil's "", so those keys are written differently: a NUL,
// then each name as its length (uvarint) and its bytes. Such a key starts
// with a NUL, which no joined key does.
func projectionKey(cols []string) string {
	plain := true
	for _, c := range cols {
		if c == "" || strings.IndexByte(c, 0) >= 0 {
			plain = false
			break
		}
	}
	if plain {
		return strings.Join(cols, "\x00")
	}
	key := []byte{0}
	for _, c := range cols {
		key = binary.AppendUvarint(key, uint64(len(c)))
		key = append(key, c...)
	}
	return string(key)
}

// grantedKey returns the Key of a projection under a column grant: three
// NULs, then each list (rows, then keys) as its length (uvarint) and each
// name as its length (uvarint) and bytes. No other key starts with three
// NULs: a joined key does not start with one, and in a key of projectionKey's
// second form the NUL is followed by the length of the first name and then
// its bytes, so a third NUL would take a first name that is empty and a
// second one that is empty too, and names are distinct.
func grantedKey(rows, keys []string) string {
	key := []byte{0, 0, 0}
	for _, list := range [2][]string{rows, keys} {
		key = binary.AppendUvarint(key, uint64(len(list)))
		for _, c := range list {
			key = binary.AppendUvarint(key, uint64(len(c)))
			key = append(key, c...)
		}
	}
	return string(key)
}

// Key returns a canonical string for the projection ("" for nil), so that
// subscriptions with the same projection share encoded frames: two
// projections have the same Key exactly when they keep the same columns of
// the rows and of the key. Without a column grant it is the sorted distinct
// names joined with "\x00" (a list holding an empty name or a name with a
// NUL, which no PostgreSQL column has, gets a key of another form that
// starts with a NUL); under a column grant it starts with three NULs.
func (p *Projection) Key() string {
	if p == nil {
		return ""
	}
	return p.key
}

// Columns returns the sorted distinct names "data", "old" and "unchanged"
// keep (nil for nil p).
func (p *Projection) Columns() []string {
	if p == nil {
		return nil
	}
	return slices.Clone(p.rows.columns)
}

// rowCols is the set "data", "old" and "unchanged" keep.
func (p *Projection) rowCols() *colSet {
	if p == nil {
		return everyColumn
	}
	return &p.rows
}

// keyCols is the set "key" keeps.
func (p *Projection) keyCols() *colSet {
	if p == nil {
		return everyColumn
	}
	return &p.keys
}

// selects reports whether the member whose raw name (between its quotes, as
// jsonx.ScanString read it, plain as ScanString reported) is in the set.
func (c *colSet) selects(name []byte, plain bool) bool {
	if c.all {
		return true
	}
	cols := c.columns
	if !plain && !jsonx.IsPlain(name) {
		// Escapes or invalid UTF-8: compare the decoded name.
		lo, hi := 0, len(cols)
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			if jsonx.CompareString(name, cols[m]) > 0 {
				lo = m + 1
			} else {
				hi = m
			}
		}
		return lo < len(cols) && jsonx.CompareString(name, cols[lo]) == 0
	}
	if c.bloom&nameBit(name) == 0 {
		return false
	}
	_, ok := c.set[string(name)] // no allocation: the compiler converts in place
	return ok
}

// View is what of an event a subscription is sent. A row policy judges an
// update's old and new rows apart, and a subscriber may see one and not the
// other (Selector.Decide).
type View uint8

const (
	// ViewWhole: the event as published.
	ViewWhole View = iota
	// ViewNew: an update without "old", its "key" taken from "data".
	ViewNew
	// ViewOldAsDelete: an update's old row as a delete: "op" "delete",
	// without "data" and "unchanged"; "key" and "old" as published.
	ViewOldAsDelete
	// NumViews counts the views.
	NumViews
)

// Envelope members AppendEvent rewrites.
const (
	memberOther = iota
	memberData
	memberOld
	memberUnchanged
	memberKey
	memberOp
)

// envelopeMember classifies a top-level member of the envelope by its raw
// name.
func envelopeMember(name []byte, plain bool) int {
	if plain {
		switch string(name) {
		case "data":
			return memberData
		case "old":
			return memberOld
		case "unchanged":
			return memberUnchanged
		case "key":
			return memberKey
		case "op":
			return memberOp
		}
		return memberOther
	}
	// A name spelt with escapes ("d\u0061ta") is still that name, as
	// encoding/json reads it.
	for _, m := range [...]struct {
		name string
		kind int
	}{{"data", memberData}, {"old", memberOld}, {"unchanged", memberUnchanged}, {"key", memberKey}, {"op", memberOp}} {
		if jsonx.CompareString(name, m.name) == 0 {
			return m.kind
		}
	}
	return memberOther
}

// projectScratch holds the Scanners AppendEvent borrows, so that
// concurrent calls share no state and a warmed call allocates nothing.
var projectScratch = sync.Pool{New: func() any { return new(jsonx.Scanner) }}

// AppendEvent appends to dst the envelope event (one JSON object as published
// by the reader, see schema/event.go AppendEvent) projected by p: the members
// "data" and "old", when they are JSON objects, keep only the selected
// columns, in their original order and bytes; "unchanged", when it is an
// array of strings, keeps only the selected names (an "unchanged" array left
// with no name, or empty to begin with, is dropped entirely, as the reader
// never writes an empty one); every other member ("id", "op", "db",
// "schema", "table", "lsn", "xid", "commit_time", "key", and any unknown
// member) is copied verbatim, in order. "key" is NOT projected: it
// identifies the row. With p == nil, it appends event unchanged.
//
// Member names are compared by their decoded value, as encoding/json reads
// them: "st\u0061tus" is the column status, and "d\u0061ta" the envelope's
// data. A name holding invalid UTF-8 or a lone surrogate reads as U+FFFD
// there, as it does in encoding/json, and is copied as it is. White space
// between the envelope's and the rows' members is dropped; values keep their
// bytes, white space inside them included.
//
// A name that occurs twice is projected occurrence by occurrence: each is
// kept or dropped by its name, in order, so that an output read with
// encoding/json (the last of duplicate names wins) holds the projection of
// what the input holds, with one exception: of two "unchanged" arrays, one
// may be dropped and the other kept.
//
// It returns an error (and dst unchanged) if event is not a single valid
// JSON object, white space around it allowed; it checks the whole event,
// with p == nil too. Nesting deeper than encoding/json allows (10000) is an
// error. On error the bytes of dst's spare capacity, past len(dst), may have
// been written to.
func (p *Projection) AppendEvent(dst, event []byte) ([]byte, error) {
	return p.AppendView(dst, event, ViewWhole, nil)
}

// AppendView is AppendEvent for the view v of the event. For ViewNew, data
// is the event's "data" indexed: the values of "key" are taken from it
// (a key column it lacks, an unchanged TOASTed value, keeps the value of
// "key"). Under a column grant "key" keeps its granted columns.
func (p *Projection) AppendView(dst, event []byte, v View, data *Row) ([]byte, error) {
	sc := projectScratch.Get().(*jsonx.Scanner)
	out, i, err := p.appendEvent(dst, event, sc, v, data)
	projectScratch.Put(sc)
	if err != nil {
		return dst, fmt.Errorf("project event: %w at byte %d", err, i)
	}
	if p == nil && v == ViewWhole {
		// Checked, and written without its white space; the promise is
		// the event's own bytes.
		return append(dst, event...), nil
	}
	return out, nil
}

// appendEvent projects the envelope b into dst as the view v. On error it
// returns the offset of the fault; what it wrote to dst is then garbage.
func (p *Projection) appendEvent(dst, b []byte, sc *jsonx.Scanner, v View, data *Row) ([]byte, int, error) {
	i := jsonx.SkipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return dst, i, jsonx.ErrNotObject
	}
	dst = append(dst, '{')
	i = jsonx.SkipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		i = jsonx.SkipSpace(b, i+1)
		if i != len(b) {
			return dst, i, jsonx.ErrSyntax
		}
		return append(dst, '}'), i, nil
	}
	rows, keys := p.rowCols(), p.keyCols()
	rewrite := p != nil || v != ViewWhole
	first := true
	for {
		raw, plain, vi, err := jsonx.Member(b, i)
		if err != nil {
			return dst, vi, err
		}
		name := b[i : i+len(raw)+2] // quotes included
		i = vi

		mark := len(dst)
		if !first {
			dst = append(dst, ',')
		}
		dst = append(dst, name...)
		dst = append(dst, ':')
		kind := memberOther
		if rewrite {
			kind = envelopeMember(raw, plain)
		}
		isObject := i < len(b) && b[i] == '{'
		var end int
		switch {
		case v == ViewOldAsDelete && (kind == memberData || kind == memberUnchanged),
			v == ViewNew && kind == memberOld:
			// Not part of this view.
			if end, err = sc.SkipValue(b, i); err != nil {
				return dst, end, err
			}
			dst = dst[:mark]
		case v == ViewOldAsDelete && kind == memberOp:
			if end, err = sc.SkipValue(b, i); err != nil {
				return dst, end, err
			}
			dst = append(dst, `"delete"`...)
		case (kind == memberData || kind == memberOld) && isObject && !rows.all:
			dst, end, err = appendRow(dst, b, i, sc, rows, nil)
			if err != nil {
				return dst, end, err
			}
		case kind == memberKey && isObject && (!keys.all || v == ViewNew):
			var from *Row
			if v == ViewNew {
				from = data
			}
			dst, end, err = appendRow(dst, b, i, sc, keys, from)
			if err != nil {
				return dst, end, err
			}
		case kind == memberUnchanged && !rows.all:
			end, err = sc.SkipValue(b, i)
			if err != nil {
				return dst, end, err
			}
			var keep bool
			if dst, keep = rows.appendUnchanged(dst, b[i:end]); !keep {
				dst = dst[:mark]
			}
		default:
			end, err = sc.SkipValue(b, i)
			if err != nil {
				return dst, end, err
			}
			dst = append(dst, b[i:end]...)
		}
		if len(dst) > mark {
			first = false
		}

		var more bool
		if i, more, err = jsonx.Next(b, end, '}'); err != nil {
			return dst, i, err
		}
		if !more {
			i = jsonx.SkipSpace(b, i)
			if i != len(b) {
				return dst, i, jsonx.ErrSyntax
			}
			return append(dst, '}'), i, nil
		}
	}
}

// deepValue is the length from which a member value of a row may nest as
// deeply as jsonx.Scanner.SkipValue allows: each level takes at least two bytes. A row
// inside the envelope is one level deeper than the rows Row indexes, so
// such a row is checked once more, whole, to refuse exactly what
// encoding/json refuses.
const deepValue = 2 * (jsonx.MaxDepth - 1)

// appendRow appends the row object starting at b[i] ('{'), keeping the
// members in cols, and returns the index after it. With from, a kept
// member takes the value of the member of the same name in from, when from
// has one.
func appendRow(dst, b []byte, i int, sc *jsonx.Scanner, cols *colSet, from *Row) ([]byte, int, error) {
	start := i
	dst = append(dst, '{')
	i = jsonx.SkipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return append(dst, '}'), i + 1, nil
	}
	first, deep := true, false
	for {
		raw, plain, vi, err := jsonx.Member(b, i)
		if err != nil {
			return dst, vi, err
		}
		name := b[i : i+len(raw)+2] // quotes included
		i = vi
		end, err := sc.SkipValue(b, i)
		if err != nil {
			return dst, end, err
		}
		if end-i >= deepValue {
			deep = true
		}
		if cols.selects(raw, plain) {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = append(dst, name...)
			dst = append(dst, ':')
			value := b[i:end]
			if from != nil {
				if nv, ok := from.getRaw(raw, plain); ok {
					value = nv
				}
			}
			dst = append(dst, value...)
		}
		var more bool
		if i, more, err = jsonx.Next(b, end, '}'); err != nil {
			return dst, i, err
		}
		if !more {
			if deep {
				if end, err := sc.SkipValue(b, start); err != nil {
					return dst, end, err
				}
			}
			return append(dst, '}'), i, nil
		}
	}
}

// appendUnchanged appends the "unchanged" value v (valid JSON), keeping the
// selected names if it is an array of strings, else verbatim. It reports
// false, having appended nothing that counts, if no name is left.
func (c *colSet) appendUnchanged(dst, v []byte) ([]byte, bool) {
	if v[0] != '[' {
		return append(dst, v...), true
	}
	mark := len(dst)
	dst = append(dst, '[')
	n := 0
	for k := jsonx.SkipSpace(v, 1); v[k] != ']'; {
		if v[k] != '"' {
			// Not an array of strings: not the reader's, copied as is.
			return append(dst[:mark], v...), true
		}
		end, plain, _ := jsonx.ScanString(v, k)
		if c.selects(v[k+1:end-1], plain) {
			if n > 0 {
				dst = append(dst, ',')
			}
			n++
			dst = append(dst, v[k:end]...)
		}
		if k = jsonx.SkipSpace(v, end); v[k] == ',' {
			k = jsonx.SkipSpace(v, k+1)
		}
	}
	if n == 0 {
		return dst[:mark], false
	}
	return append(dst, ']'), true
}
