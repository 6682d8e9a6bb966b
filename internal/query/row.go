package query

import (
	"bytes"
	"fmt"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// Row is one row image of an event: its "data", or for a delete its "old"
// or "key" object (or any JSON object: a where, an envelope). A sink
// indexes it once per event with Reset and shares it, read-only, with
// every subscription's Filter.
//
// Reset records each top-level member's name and raw value bytes without
// decoding anything (package jsonx reads them); values are interpreted only
// when a filter asks for them. Once its internal slices have grown to the
// widest and deepest row seen, Reset allocates nothing.
//
// The Row refers to the bytes given to Reset: they must not change while
// the Row is in use. Get and Filter.Match only read, so any number of
// goroutines may call them at once; Reset must not run concurrently with
// them.
type Row struct {
	members []member
	scan    jsonx.Scanner // checks member values
}

// member is one top-level member of the indexed object.
type member struct {
	name  []byte // raw name between its quotes, escapes not resolved
	value []byte // raw JSON value
	plain bool   // name has no escapes and is ASCII: compares byte for byte
}

// Reset indexes obj, a JSON object. It returns an error, and leaves the Row
// empty, if obj is not exactly one valid JSON object (white space around it
// allowed).
//
// As with encoding/json, a name that occurs twice means its last value.
// Strings are not checked for valid UTF-8; invalid bytes read as U+FFFD,
// again as encoding/json decodes them.
func (r *Row) Reset(obj []byte) error {
	r.members = r.members[:0]
	i, err := r.index(obj)
	if err != nil {
		r.members = r.members[:0]
		return fmt.Errorf("row: %w at byte %d", err, i)
	}
	return nil
}

func (r *Row) index(b []byte) (int, error) {
	i := jsonx.SkipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return i, jsonx.ErrNotObject
	}
	i = jsonx.SkipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		i = jsonx.SkipSpace(b, i+1)
		if i != len(b) {
			return i, jsonx.ErrSyntax
		}
		return i, nil
	}
	for {
		name, plain, v, err := jsonx.Member(b, i)
		if err != nil {
			return v, err
		}
		end, err := r.scan.SkipValue(b, v)
		if err != nil {
			return end, err
		}
		r.members = append(r.members, member{name: name, value: b[v:end], plain: plain})
		var more bool
		if i, more, err = jsonx.Next(b, end, '}'); err != nil {
			return i, err
		}
		if !more {
			i = jsonx.SkipSpace(b, i)
			if i != len(b) {
				return i, jsonx.ErrSyntax
			}
			return i, nil
		}
	}
}

// Get returns the raw JSON value of the member named column (null for a
// NULL value) and whether the row has it.
func (r *Row) Get(column string) (raw []byte, ok bool) {
	// From the end: the last of duplicate names wins, as in encoding/json.
	for k := len(r.members) - 1; k >= 0; k-- {
		m := &r.members[k]
		if m.plain {
			if string(m.name) == column {
				return m.value, true
			}
		} else if jsonx.CompareString(m.name, column) == 0 {
			return m.value, true
		}
	}
	return nil, false
}

// getRaw is Get for a member name as jsonx.ScanString read it: raw,
// between its quotes, plain as ScanString reported.
func (r *Row) getRaw(name []byte, plain bool) ([]byte, bool) {
	if !plain && !jsonx.IsPlain(name) {
		return r.Get(jsonx.DecodeString(name)) // escapes: rare enough to allocate
	}
	for k := len(r.members) - 1; k >= 0; k-- {
		m := &r.members[k]
		if m.plain {
			if bytes.Equal(m.name, name) {
				return m.value, true
			}
		} else if jsonx.CompareString(m.name, name) == 0 {
			return m.value, true
		}
	}
	return nil, false
}

// Len returns the number of members indexed (duplicates included).
func (r *Row) Len() int { return len(r.members) }
