// Column projection: the `select` of a subscription (DESIGN.md, "WebSocket
// protocol — contract (v1)").
//
// NewProjection compiles a client's select list once, when the subscription
// is made or changed. The gateway groups subscriptions by Projection.Key and
// runs AppendEvent once per distinct projection per event, so that every
// subscription with the same select list shares the same encoded bytes.
//
// AppendEvent rewrites the envelope without decoding it: it walks the event
// with the row scanner of row.go (scanString, Row.skipValue), copies every
// member it keeps byte for byte, and compares member names with the select
// list by their decoded value, so that "st\u0061tus" is the column status.
// Once dst has room it allocates nothing (TestProjectEventAllocs,
// BenchmarkProjectEvent).

package wsgate

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Projection is a compiled select list. A nil *Projection keeps every column.
//
// A Projection is immutable once compiled: any number of goroutines may call
// its methods at once.
type Projection struct {
	columns []string // sorted, distinct
	key     string
	// bloom has nameBit(c) set for every column c: most names of a row
	// that are not selected are turned away by one test of it.
	bloom uint64
	// set holds the columns. With bloom in front, a map lookup costs
	// no more than comparing a few names in turn, even for a list of two
	// (BenchmarkProjectEvent), and it stays flat for a list of fifty.
	set map[string]struct{}
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
	cols := slices.Clone(columns)
	slices.Sort(cols)
	cols = slices.Compact(cols)
	p := &Projection{columns: cols, key: projectionKey(cols)}
	for _, c := range cols {
		p.bloom |= nameBit(c)
	}
	p.set = make(map[string]struct{}, len(cols))
	for _, c := range cols {
		p.set[c] = struct{}{}
	}
	return p
}

// nameBit returns the bit of Projection.bloom for the name s: one of 64,
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

// Key returns a canonical string for the projection (sorted, distinct names
// joined with "\x00"; "" for nil), so that subscriptions with the same
// projection share encoded frames. Two projections have the same Key exactly
// when they have the same Columns: a list holding an empty name or a name
// with a NUL, which no PostgreSQL column has, gets a key of another form that
// starts with a NUL.
func (p *Projection) Key() string {
	if p == nil {
		return ""
	}
	return p.key
}

// Columns returns the sorted distinct names (nil for nil p).
func (p *Projection) Columns() []string {
	if p == nil {
		return nil
	}
	return slices.Clone(p.columns)
}

// selects reports whether the member whose raw name (between its quotes, as
// scanString read it, plain as scanString reported) is selected.
func (p *Projection) selects(name []byte, plain bool) bool {
	cols := p.columns
	if !plain && !isPlainText(name) {
		// Escapes or invalid UTF-8: compare the decoded name.
		lo, hi := 0, len(cols)
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			if compareJSONString(name, cols[m]) > 0 {
				lo = m + 1
			} else {
				hi = m
			}
		}
		return lo < len(cols) && compareJSONString(name, cols[lo]) == 0
	}
	if p.bloom&nameBit(name) == 0 {
		return false
	}
	_, ok := p.set[string(name)] // no allocation: the compiler converts in place
	return ok
}

// Envelope members AppendEvent projects.
const (
	memberOther     = iota
	memberRow       // "data" or "old"
	memberUnchanged // "unchanged"
)

// envelopeMember classifies a top-level member of the envelope by its raw
// name.
func envelopeMember(name []byte, plain bool) int {
	if plain {
		switch string(name) {
		case "data", "old":
			return memberRow
		case "unchanged":
			return memberUnchanged
		}
		return memberOther
	}
	// A name spelt with escapes ("d\u0061ta") is still that name, as
	// encoding/json reads it.
	switch {
	case compareJSONString(name, "data") == 0, compareJSONString(name, "old") == 0:
		return memberRow
	case compareJSONString(name, "unchanged") == 0:
		return memberUnchanged
	}
	return memberOther
}

// projectScratch holds the Rows whose skipValue stacks AppendEvent borrows,
// so that concurrent calls share no state and a warmed call allocates
// nothing.
var projectScratch = sync.Pool{New: func() any { return new(Row) }}

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
	sc := projectScratch.Get().(*Row)
	out, i, err := p.appendEvent(dst, event, sc)
	projectScratch.Put(sc)
	if err != nil {
		return dst, fmt.Errorf("project event: %w at byte %d", err, i)
	}
	if p == nil {
		// Checked, and written without its white space; the promise is
		// the event's own bytes.
		return append(dst, event...), nil
	}
	return out, nil
}

// appendEvent projects the envelope b into dst. On error it returns the
// offset of the fault; what it wrote to dst is then garbage.
func (p *Projection) appendEvent(dst, b []byte, sc *Row) ([]byte, int, error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return dst, i, errNotObject
	}
	dst = append(dst, '{')
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		i = skipSpace(b, i+1)
		if i != len(b) {
			return dst, i, errSyntax
		}
		return append(dst, '}'), i, nil
	}
	first := true
	for {
		if i >= len(b) || b[i] != '"' {
			return dst, i, errSyntax
		}
		end, plain, ok := scanString(b, i)
		if !ok {
			return dst, i, errSyntax
		}
		name := b[i:end] // quotes included
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return dst, i, errSyntax
		}
		i = skipSpace(b, i+1)

		mark := len(dst)
		if !first {
			dst = append(dst, ',')
		}
		dst = append(dst, name...)
		dst = append(dst, ':')
		kind := memberOther
		if p != nil {
			kind = envelopeMember(name[1:len(name)-1], plain)
		}
		var err error
		switch {
		case kind == memberRow && i < len(b) && b[i] == '{':
			dst, end, err = p.appendRow(dst, b, i, sc)
			if err != nil {
				return dst, end, err
			}
		case kind == memberUnchanged:
			end, err = sc.skipValue(b, i)
			if err != nil {
				return dst, end, err
			}
			var keep bool
			if dst, keep = p.appendUnchanged(dst, b[i:end]); !keep {
				dst = dst[:mark]
			}
		default:
			end, err = sc.skipValue(b, i)
			if err != nil {
				return dst, end, err
			}
			dst = append(dst, b[i:end]...)
		}
		if len(dst) > mark {
			first = false
		}

		i = skipSpace(b, end)
		if i >= len(b) {
			return dst, i, errSyntax
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			i = skipSpace(b, i+1)
			if i != len(b) {
				return dst, i, errSyntax
			}
			return append(dst, '}'), i, nil
		default:
			return dst, i, errSyntax
		}
	}
}

// deepValue is the length from which a member value of a row may nest as
// deeply as Row.skipValue allows: each level takes at least two bytes. A row
// inside the envelope is one level deeper than the rows Row indexes, so
// such a row is checked once more, whole, to refuse exactly what
// encoding/json refuses.
const deepValue = 2 * (maxRowDepth - 1)

// appendRow appends the row object starting at b[i] ('{'), keeping the
// selected members, and returns the index after it.
func (p *Projection) appendRow(dst, b []byte, i int, sc *Row) ([]byte, int, error) {
	start := i
	dst = append(dst, '{')
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return append(dst, '}'), i + 1, nil
	}
	first, deep := true, false
	for {
		if i >= len(b) || b[i] != '"' {
			return dst, i, errSyntax
		}
		end, plain, ok := scanString(b, i)
		if !ok {
			return dst, i, errSyntax
		}
		name := b[i:end]
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return dst, i, errSyntax
		}
		i = skipSpace(b, i+1)
		end, err := sc.skipValue(b, i)
		if err != nil {
			return dst, end, err
		}
		if end-i >= deepValue {
			deep = true
		}
		if p.selects(name[1:len(name)-1], plain) {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = append(dst, name...)
			dst = append(dst, ':')
			dst = append(dst, b[i:end]...)
		}
		i = skipSpace(b, end)
		if i >= len(b) {
			return dst, i, errSyntax
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			if deep {
				if end, err := sc.skipValue(b, start); err != nil {
					return dst, end, err
				}
			}
			return append(dst, '}'), i + 1, nil
		default:
			return dst, i, errSyntax
		}
	}
}

// appendUnchanged appends the "unchanged" value v (valid JSON), keeping the
// selected names if it is an array of strings, else verbatim. It reports
// false, having appended nothing that counts, if no name is left.
func (p *Projection) appendUnchanged(dst, v []byte) ([]byte, bool) {
	if v[0] != '[' {
		return append(dst, v...), true
	}
	mark := len(dst)
	dst = append(dst, '[')
	n := 0
	for k := skipSpace(v, 1); v[k] != ']'; {
		if v[k] != '"' {
			// Not an array of strings: not the reader's, copied as is.
			return append(dst[:mark], v...), true
		}
		end, plain, _ := scanString(v, k)
		if p.selects(v[k+1:end-1], plain) {
			if n > 0 {
				dst = append(dst, ',')
			}
			n++
			dst = append(dst, v[k:end]...)
		}
		if k = skipSpace(v, end); v[k] == ',' {
			k = skipSpace(v, k+1)
		}
	}
	if n == 0 {
		return dst[:mark], false
	}
	return append(dst, ']'), true
}
