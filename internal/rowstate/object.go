package rowstate

import (
	"github.com/tablecast/tablecast/internal/jsonx"
)

// objectReader walks the top-level members of one JSON object, in order,
// without decoding their values: the maintainer rewrites envelopes and rows
// member by member, copying the bytes it keeps.
type objectReader struct {
	b     []byte
	i     int
	first bool
	done  bool
	scan  jsonx.Scanner

	name  []byte // the member's raw name, between its quotes
	plain bool   // name holds no escapes
	value []byte // its raw value
	err   error
}

// reset starts reading obj, which must be a JSON object.
func (r *objectReader) reset(obj []byte) error {
	r.b, r.first, r.done, r.err = obj, true, false, nil
	r.i = jsonx.SkipSpace(obj, 0)
	if r.i >= len(obj) || obj[r.i] != '{' {
		r.done = true
		return jsonx.ErrNotObject
	}
	r.i = jsonx.SkipSpace(obj, r.i+1)
	if r.i < len(obj) && obj[r.i] == '}' {
		r.done = true
	}
	return nil
}

// next moves to the next member; false at the end or on an error (err).
func (r *objectReader) next() bool {
	if r.done {
		return false
	}
	if !r.first {
		var more bool
		var err error
		if r.i, more, err = jsonx.Next(r.b, r.i, '}'); err != nil {
			r.err, r.done = err, true
			return false
		}
		if !more {
			r.done = true
			return false
		}
	}
	r.first = false
	name, plain, v, err := jsonx.Member(r.b, r.i)
	if err != nil {
		r.err, r.done = err, true
		return false
	}
	end, err := r.scan.SkipValue(r.b, v)
	if err != nil {
		r.err, r.done = err, true
		return false
	}
	r.name, r.plain, r.value, r.i = name, plain, r.b[v:end], end
	return true
}

// is reports whether the current member is named s.
func (r *objectReader) is(s string) bool {
	if r.plain {
		return string(r.name) == s
	}
	return jsonx.CompareString(r.name, s) == 0
}

// member is one member of an object: its raw name and value.
type member struct {
	name  []byte
	plain bool
	value []byte
}

// members appends the members of obj to dst.
func members(dst []member, obj []byte) ([]member, error) {
	var r objectReader
	if err := r.reset(obj); err != nil {
		return dst, err
	}
	for r.next() {
		dst = append(dst, member{name: r.name, plain: r.plain, value: r.value})
	}
	return dst, r.err
}

// find returns the value of the member named like name (raw, as read).
func find(ms []member, name []byte, plain bool) ([]byte, bool) {
	for k := len(ms) - 1; k >= 0; k-- {
		m := &ms[k]
		if sameName(m.name, m.plain, name, plain) {
			return m.value, true
		}
	}
	return nil, false
}

// findDecoded returns the value of the member whose decoded name is name.
func findDecoded(ms []member, name string) ([]byte, bool) {
	for k := len(ms) - 1; k >= 0; k-- {
		m := &ms[k]
		if m.plain && string(m.name) == name || !m.plain && jsonx.CompareString(m.name, name) == 0 {
			return m.value, true
		}
	}
	return nil, false
}

// sameName compares two raw member names by their decoded values.
func sameName(a []byte, ap bool, b []byte, bp bool) bool {
	if ap && bp {
		return string(a) == string(b)
	}
	return jsonx.CompareString(a, jsonx.DecodeString(b)) == 0
}

// appendObject appends the members as a JSON object.
func appendObject(dst []byte, ms []member) []byte {
	dst = append(dst, '{')
	for k, m := range ms {
		if k > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, m.name...)
		dst = append(dst, '"', ':')
		dst = append(dst, m.value...)
	}
	return append(dst, '}')
}
