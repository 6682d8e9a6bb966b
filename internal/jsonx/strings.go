package jsonx

import (
	"bytes"
	"unicode/utf16"
	"unicode/utf8"
)

// Reading strings. The functions here take a raw string body: the bytes
// between a string's quotes, as ScanString found them (so already checked).

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

// stringReader yields, byte by byte, the UTF-8 text a raw string body
// decodes to, exactly as encoding/json decodes it: escapes resolved,
// invalid UTF-8 and unpaired surrogates as U+FFFD. It lets a string be
// compared without decoding it into a buffer.
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

// CompareString compares the decoded value of the raw string body raw with
// s, bytewise, allocating nothing.
func CompareString[S string | []byte](raw []byte, s S) int {
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

// DecodeString returns the decoded value of a raw string body.
func DecodeString(raw []byte) string {
	if IsPlain(raw) {
		return string(raw)
	}
	buf := make([]byte, 0, len(raw))
	r := stringReader{s: raw}
	for c, ok := r.next(); ok; c, ok = r.next() {
		buf = append(buf, c)
	}
	return string(buf)
}

// IsPlain reports whether a raw string body is its own decoded value: no
// escapes and valid UTF-8.
func IsPlain(raw []byte) bool {
	return bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw)
}

// EqualCompact reports whether the JSON raw, once its insignificant white
// space is removed, is the bytes compact.
func EqualCompact(raw, compact []byte) bool {
	j := 0
	inString, escaped := false, false
	for _, c := range raw {
		switch {
		case !inString:
			if c == ' ' || c == '\t' || c == '\n' || c == '\r' {
				continue
			}
			inString = c == '"'
		case escaped:
			escaped = false
		case c == '\\':
			escaped = true
		case c == '"':
			inString = false
		}
		if j >= len(compact) || compact[j] != c {
			return false
		}
		j++
	}
	return j == len(compact)
}
