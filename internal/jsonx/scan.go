package jsonx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// MaxDepth is how deeply a JSON document may nest, encoding/json's own
// limit, so that everything encoding/json accepts is accepted here too.
const MaxDepth = 10000

// Errors of the scanner. Each is returned as it is, beside the offset of
// the fault, so that callers can compare them and say where.
var (
	ErrNotObject = errors.New("not a JSON object")
	ErrSyntax    = errors.New("invalid JSON")
	ErrTooDeep   = fmt.Errorf("JSON nested deeper than %d", MaxDepth)
)

// SWAR constants: one byte value repeated in each byte of a word.
const (
	swarOnes  = 0x0101010101010101
	swarHigh  = 0x8080808080808080
	swarQuote = '"' * swarOnes
	swarSlash = '\\' * swarOnes
	swarSpace = 0x20 * swarOnes
)

// SkipSpace returns the index of the first byte at or after b[i] that is
// not JSON white space.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// hasLiteral reports whether lit starts at b[i].
func hasLiteral(b []byte, i int, lit string) bool {
	return len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit
}

// ScanString reads the JSON string whose opening quote is b[i] and returns
// the index after its closing quote, and whether it is plain: no escapes,
// ASCII only, so that its bytes are its decoded value. ok is false when
// there is no valid string there (a control character, a bad escape, no
// closing quote). Invalid UTF-8 is not checked, as encoding/json does not.
//
// It skips eight bytes at a time while none of them ends the run of plain
// bytes: a quote, a backslash, a control character or, while the string is
// still plain, a byte of a multi-byte character.
func ScanString(b []byte, i int) (end int, plain, ok bool) {
	plain = true
	i++
	for {
		for i+8 <= len(b) {
			w := binary.LittleEndian.Uint64(b[i:])
			// Each test sets a byte's high bit when the byte is < 0x20,
			// '"' or '\\' (or >= 0x80 while plain), with false positives
			// only above a byte that is one.
			q, s := w^swarQuote, w^swarSlash
			m := (w-swarSpace)&^w | (q-swarOnes)&^q | (s-swarOnes)&^s
			if plain {
				m |= w
			}
			if m&swarHigh != 0 {
				break
			}
			i += 8
		}
		// One byte at a time through the word that stopped the loop, then
		// back to words.
		stop := min(i+8, len(b))
		for i < stop {
			c := b[i]
			if c < 0x20 || c == '"' || c == '\\' {
				break
			}
			if c >= utf8.RuneSelf {
				plain = false
			}
			i++
		}
		if i >= len(b) {
			return i, false, false
		}
		if i == stop {
			continue
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, plain, true
		case c < 0x20:
			return i, false, false
		}
		// A backslash.
		plain = false
		if i+1 >= len(b) {
			return i, false, false
		}
		switch b[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			if i+6 > len(b) || hexValue(b[i+2:i+6]) < 0 {
				return i, false, false
			}
			i += 6
		default:
			return i, false, false
		}
	}
}

// ScanNumber reads the JSON number starting at b[i] and returns the index
// after it, and whether it is one (RFC 8259 §6).
func ScanNumber(b []byte, i int) (int, bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return i, false
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return j, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return j, false
		}
		i = j
	}
	return i, true
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// Scanner checks JSON values without decoding them. It keeps the stack of
// the containers open in the value being checked: the innermost 64 in one
// word, the others (deeper nesting) in a slice that it keeps for the next
// value, so that a warmed Scanner allocates nothing. The zero value is
// ready for use. A Scanner must not be used by two goroutines at once.
type Scanner struct {
	deep []uint64 // the open containers beyond the innermost 64, 64 a word
}

// SkipValue checks the JSON value starting at b[i], a value inside an object
// or an array, and returns the index after it. The value may nest
// MaxDepth-1 containers deep, so that its document, which holds it in one
// more, nests as deeply as encoding/json allows. On error the index is the
// offset of the fault.
func (s *Scanner) SkipValue(b []byte, i int) (int, error) {
	return s.skip(b, i, MaxDepth-1)
}

// Valid reports whether b is exactly one JSON value, with optional white
// space around it, as json.Valid does (neither checks UTF-8), but in one
// pass without json.Valid's function call per byte (BenchmarkValid).
func Valid(b []byte) bool {
	var s Scanner
	end, err := s.skip(b, SkipSpace(b, 0), MaxDepth)
	return err == nil && SkipSpace(b, end) == len(b)
}

// ValidNested is Valid for a value nesting at most limit containers: one
// to be embedded that deep in another document, which must itself stay
// within MaxDepth.
func ValidNested(b []byte, limit int) bool {
	var s Scanner
	end, err := s.skip(b, SkipSpace(b, 0), limit)
	return err == nil && SkipSpace(b, end) == len(b)
}

// skip checks the value at b[i], nesting at most limit containers.
func (s *Scanner) skip(b []byte, i, limit int) (int, error) {
	// The open containers, innermost in the lowest bit of top: 1 array,
	// 0 object. Every 64 levels, top is pushed onto s.deep.
	var top uint64
	depth := 0
	s.deep = s.deep[:0]
value:
	if i >= len(b) {
		return i, ErrSyntax
	}
	switch b[i] {
	case '{', '[':
		if depth == limit {
			return i, ErrTooDeep
		}
		if depth > 0 && depth%64 == 0 {
			s.deep = append(s.deep, top)
			top = 0
		}
		isArray := b[i] == '['
		top <<= 1
		if isArray {
			top |= 1
		}
		depth++
		i = SkipSpace(b, i+1)
		if i < len(b) && (isArray && b[i] == ']' || !isArray && b[i] == '}') {
			i++
			goto pop
		}
		if isArray {
			goto value
		}
		goto key
	case '"':
		end, _, ok := ScanString(b, i)
		if !ok {
			return i, ErrSyntax
		}
		i = end
	case 't':
		if !hasLiteral(b, i, "true") {
			return i, ErrSyntax
		}
		i += 4
	case 'f':
		if !hasLiteral(b, i, "false") {
			return i, ErrSyntax
		}
		i += 5
	case 'n':
		if !hasLiteral(b, i, "null") {
			return i, ErrSyntax
		}
		i += 4
	default:
		end, ok := ScanNumber(b, i)
		if !ok {
			return i, ErrSyntax
		}
		i = end
	}
next: // after a value
	if depth == 0 {
		return i, nil
	}
	i = SkipSpace(b, i)
	if i >= len(b) {
		return i, ErrSyntax
	}
	if top&1 != 0 {
		switch b[i] {
		case ',':
			i = SkipSpace(b, i+1)
			goto value
		case ']':
			i++
			goto pop
		}
		return i, ErrSyntax
	}
	switch b[i] {
	case ',':
		i = SkipSpace(b, i+1)
		goto key
	case '}':
		i++
		goto pop
	}
	return i, ErrSyntax
pop: // after a container's closing bracket
	top >>= 1
	depth--
	if depth > 0 && depth%64 == 0 {
		top = s.deep[len(s.deep)-1]
		s.deep = s.deep[:len(s.deep)-1]
	}
	goto next
key: // at an object member's name
	if i >= len(b) || b[i] != '"' {
		return i, ErrSyntax
	}
	end, _, ok := ScanString(b, i)
	if !ok {
		return i, ErrSyntax
	}
	i = SkipSpace(b, end)
	if i >= len(b) || b[i] != ':' {
		return i, ErrSyntax
	}
	i = SkipSpace(b, i+1)
	goto value
}

// Member reads the name of an object member, and its colon, at b[i]: it
// returns the name's raw body (between its quotes), whether the name is
// plain (ScanString), and the index of the member's value, white space
// skipped. On error the index is the offset of the fault.
func Member(b []byte, i int) (name []byte, plain bool, value int, err error) {
	if i >= len(b) || b[i] != '"' {
		return nil, false, i, ErrSyntax
	}
	end, plain, ok := ScanString(b, i)
	if !ok {
		return nil, false, i, ErrSyntax
	}
	name = b[i+1 : end-1]
	i = SkipSpace(b, end)
	if i >= len(b) || b[i] != ':' {
		return nil, false, i, ErrSyntax
	}
	return name, plain, SkipSpace(b, i+1), nil
}

// Next reads what follows a value at b[i] inside a container whose closing
// bracket is end ('}' or ']'): white space, then a comma (more is true, and
// next is the index of the following member or element, white space
// skipped) or end (more is false, and next is the index just after it).
// On error next is the offset of the fault.
func Next(b []byte, i int, end byte) (next int, more bool, err error) {
	i = SkipSpace(b, i)
	switch {
	case i >= len(b):
		return i, false, ErrSyntax
	case b[i] == ',':
		return SkipSpace(b, i+1), true, nil
	case b[i] == end:
		return i + 1, false, nil
	}
	return i, false, ErrSyntax
}
