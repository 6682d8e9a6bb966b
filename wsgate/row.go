package wsgate

import (
	"bytes"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/tablecast/tablecast/schema"
)

// Row is one row image of an event: its "data", or for a delete its "old"
// or "key" object. The gateway indexes it once per event with Reset and
// shares it, read-only, with every subscription's Filter.
//
// Reset records each top-level member's name and raw value bytes without
// decoding anything; values are interpreted only when a filter asks for
// them. Once its internal slices have grown to the widest row seen, Reset
// allocates nothing.
//
// The Row refers to the bytes given to Reset: they must not change while
// the Row is in use. Get and Filter.Match only read, so any number of
// goroutines may call them at once; Reset must not run concurrently with
// them.
type Row struct {
	members []member
	stack   []byte // open containers while skipping a nested value
}

// member is one top-level member of the indexed object.
type member struct {
	name  []byte // raw name between its quotes, escapes not resolved
	value []byte // raw JSON value
	plain bool   // name has no escapes and is ASCII: compares byte for byte
}

// maxRowDepth is how deeply values may nest, encoding/json's own limit, so
// that every object encoding/json accepts is accepted here too.
const maxRowDepth = 10000

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

var (
	errNotObject = fmt.Errorf("not a JSON object")
	errSyntax    = fmt.Errorf("invalid JSON")
	errTooDeep   = fmt.Errorf("JSON nested deeper than %d", maxRowDepth)
)

func (r *Row) index(b []byte) (int, error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return i, errNotObject
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		i = skipSpace(b, i+1)
		if i != len(b) {
			return i, errSyntax
		}
		return i, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return i, errSyntax
		}
		end, plain, ok := scanString(b, i)
		if !ok {
			return i, errSyntax
		}
		name := b[i+1 : end-1]
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return i, errSyntax
		}
		i = skipSpace(b, i+1)
		end, err := r.skipValue(b, i)
		if err != nil {
			return end, err
		}
		r.members = append(r.members, member{name: name, value: b[i:end], plain: plain})
		i = skipSpace(b, end)
		if i >= len(b) {
			return i, errSyntax
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			i = skipSpace(b, i+1)
			if i != len(b) {
				return i, errSyntax
			}
			return i, nil
		default:
			return i, errSyntax
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
		} else if compareJSONString(m.name, column) == 0 {
			return m.value, true
		}
	}
	return nil, false
}

// getRaw is Get for a member name as scanString read it: raw, between its
// quotes, plain as scanString reported.
func (r *Row) getRaw(name []byte, plain bool) ([]byte, bool) {
	if !plain && !isPlainText(name) {
		return r.Get(decodeJSONString(name)) // escapes: rare enough to allocate
	}
	for k := len(r.members) - 1; k >= 0; k-- {
		m := &r.members[k]
		if m.plain {
			if bytes.Equal(m.name, name) {
				return m.value, true
			}
		} else if compareJSONString(m.name, name) == 0 {
			return m.value, true
		}
	}
	return nil, false
}

// Len returns the number of members indexed (duplicates included).
func (r *Row) Len() int { return len(r.members) }

// skipValue checks the JSON value starting at b[i] and returns the index
// after it.
func (r *Row) skipValue(b []byte, i int) (int, error) {
	stack := r.stack[:0]
value:
	if i >= len(b) {
		return i, errSyntax
	}
	switch b[i] {
	case '{', '[':
		if len(stack) == maxRowDepth-1 { // the row object itself is one level
			return i, errTooDeep
		}
		stack = append(stack, b[i])
		r.stack = stack[:0] // keep what append grew for the next value
		close := byte('}')
		if b[i] == '[' {
			close = ']'
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == close {
			stack = stack[:len(stack)-1]
			i++
			goto next
		}
		if close == ']' {
			goto value
		}
		goto key
	case '"':
		end, _, ok := scanString(b, i)
		if !ok {
			return i, errSyntax
		}
		i = end
	case 't':
		if !hasLiteral(b, i, "true") {
			return i, errSyntax
		}
		i += 4
	case 'f':
		if !hasLiteral(b, i, "false") {
			return i, errSyntax
		}
		i += 5
	case 'n':
		if !hasLiteral(b, i, "null") {
			return i, errSyntax
		}
		i += 4
	default:
		end, ok := schema.ScanJSONNumber(b, i)
		if !ok {
			return i, errSyntax
		}
		i = end
	}
next: // after a value
	if len(stack) == 0 {
		return i, nil
	}
	i = skipSpace(b, i)
	if i >= len(b) {
		return i, errSyntax
	}
	if stack[len(stack)-1] == '[' {
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
			goto value
		case ']':
			stack = stack[:len(stack)-1]
			i++
			goto next
		}
		return i, errSyntax
	}
	switch b[i] {
	case ',':
		i = skipSpace(b, i+1)
		goto key
	case '}':
		stack = stack[:len(stack)-1]
		i++
		goto next
	}
	return i, errSyntax
key:
	if i >= len(b) || b[i] != '"' {
		return i, errSyntax
	}
	end, _, ok := scanString(b, i)
	if !ok {
		return i, errSyntax
	}
	i = skipSpace(b, end)
	if i >= len(b) || b[i] != ':' {
		return i, errSyntax
	}
	i = skipSpace(b, i+1)
	goto value
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

func hasLiteral(b []byte, i int, lit string) bool {
	return len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit
}

// scanString reads the JSON string whose opening quote is b[i] and returns
// the index after its closing quote, and whether it is plain: no escapes,
// ASCII only, so that its bytes are its decoded value.
func scanString(b []byte, i int) (end int, plain, ok bool) {
	plain = true
	for i++; i < len(b); i++ {
		c := b[i]
		switch {
		case c == '"':
			return i + 1, plain, true
		case c < 0x20:
			return i, false, false
		case c >= utf8.RuneSelf:
			plain = false
		case c == '\\':
			plain = false
			if i+1 >= len(b) {
				return i, false, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if i+6 > len(b) || hexValue(b[i+2:i+6]) < 0 {
					return i, false, false
				}
				i += 5
			default:
				return i, false, false
			}
		}
	}
	return i, false, false
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// hexValue returns the value of four hex digits, or -1.
func hexValue(h []byte) rune {
	var v rune
	for _, c := range h[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		v = v<<4 | rune(c)
	}
	return v
}

// stringReader yields, byte by byte, the UTF-8 text a raw JSON string body
// (between its quotes, already checked by scanString) decodes to, exactly
// as encoding/json decodes it: escapes resolved, invalid UTF-8 and unpaired
// surrogates as U+FFFD. It lets a string be compared without decoding it
// into a buffer.
type stringReader struct {
	s        []byte
	i        int
	rune     [utf8.UTFMax]byte
	pos, end int8 // unread bytes of rune
}

func (r *stringReader) next() (byte, bool) {
	if r.pos < r.end {
		c := r.rune[r.pos]
		r.pos++
		return c, true
	}
	if r.i >= len(r.s) {
		return 0, false
	}
	c := r.s[r.i]
	var rr rune
	switch {
	case c < utf8.RuneSelf && c != '\\':
		r.i++
		return c, true
	case c == '\\':
		e := r.s[r.i+1]
		r.i += 2
		switch e {
		case 'b':
			return '\b', true
		case 'f':
			return '\f', true
		case 'n':
			return '\n', true
		case 'r':
			return '\r', true
		case 't':
			return '\t', true
		case 'u':
		default: // '"', '\\', '/'
			return e, true
		}
		rr = hexValue(r.s[r.i:])
		r.i += 4
		if utf16.IsSurrogate(rr) {
			rr1 := rune(-1)
			if r.i+6 <= len(r.s) && r.s[r.i] == '\\' && r.s[r.i+1] == 'u' {
				rr1 = hexValue(r.s[r.i+2:])
			}
			if dec := utf16.DecodeRune(rr, rr1); dec != utf8.RuneError {
				rr = dec
				r.i += 6
			} else {
				rr = utf8.RuneError
			}
		}
	default:
		var size int
		rr, size = utf8.DecodeRune(r.s[r.i:])
		r.i += size
	}
	r.end = int8(utf8.EncodeRune(r.rune[:], rr))
	r.pos = 1
	return r.rune[0], true
}

// compareJSONString compares the decoded value of the raw JSON string body
// raw with s, bytewise, allocating nothing.
func compareJSONString[S string | []byte](raw []byte, s S) int {
	r := stringReader{s: raw}
	for i := 0; ; i++ {
		c, ok := r.next()
		switch {
		case !ok && i == len(s):
			return 0
		case !ok:
			return -1
		case i == len(s):
			return 1
		case c != s[i]:
			if c < s[i] {
				return -1
			}
			return 1
		}
	}
}

// decodeJSONString returns the decoded value of a raw JSON string body.
func decodeJSONString(raw []byte) string {
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw)
	}
	buf := make([]byte, 0, len(raw))
	r := stringReader{s: raw}
	for c, ok := r.next(); ok; c, ok = r.next() {
		buf = append(buf, c)
	}
	return string(buf)
}

// isPlainText reports whether a raw JSON string body is its own decoded
// value: no escapes and valid UTF-8.
func isPlainText(raw []byte) bool {
	return bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw)
}
