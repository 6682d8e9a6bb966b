package jsonx

import (
	"slices"
	"unicode/utf8"
)

// AppendString appends s as a JSON string (quoted and escaped, valid UTF-8
// output; invalid UTF-8 bytes become \ufffd), allocating only when dst
// lacks room.
//
// The output is byte for byte what encoding/json writes with HTML escaping
// off: '"', '\\' and control characters are escaped (\b \f \n \r \t, others
// \u00XX), as are U+2028 and U+2029, which JavaScript source does not
// allow unescaped before ES2019; '<', '>' and '&' are not.
func AppendString(dst []byte, s string) []byte { return appendJSONString(dst, s) }

// AppendStringBytes is AppendString for a byte slice.
func AppendStringBytes(dst []byte, s []byte) []byte { return appendJSONString(dst, s) }

const lowerHex = "0123456789abcdef"

func appendJSONString[S string | []byte](dst []byte, s S) []byte {
	dst = slices.Grow(dst, len(s)+2)
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		// Skip eight plain ASCII bytes at a time: no byte < 0x20, '"',
		// '\\' or >= 0x80. Each test sets a byte's high bit iff the
		// byte matches, with no false positives when none does.
		for i+8 <= len(s) {
			w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
				uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
			q, b := w^swarQuote, w^swarSlash
			if (w|(w-swarSpace)|((q-swarOnes)&^q)|((b-swarOnes)&^b))&swarHigh != 0 {
				break
			}
			i += 8
		}
		// Then one at a time up to the byte that stopped the word loop.
		for i < len(s) && s[i] >= 0x20 && s[i] < utf8.RuneSelf && s[i] != '"' && s[i] != '\\' {
			i++
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', lowerHex[c>>4], lowerHex[c&0xf])
			}
			i++
			start = i
			continue
		}
		// Two- and three-byte sequences (Latin, Greek, Cyrillic, CJK…) are
		// checked here; four-byte and invalid ones go to package utf8.
		if c >= 0xc2 && c <= 0xdf && i+1 < len(s) && s[i+1]&0xc0 == 0x80 {
			i += 2
			continue
		}
		if c >= 0xe0 && c <= 0xef && i+2 < len(s) && s[i+2]&0xc0 == 0x80 {
			c1 := s[i+1]
			lo, hi := byte(0x80), byte(0xbf)
			switch c {
			case 0xe0:
				lo = 0xa0 // shorter forms are overlong
			case 0xed:
				hi = 0x9f // U+D800–U+DFFF are surrogates
			}
			if c1 >= lo && c1 <= hi {
				if c == 0xe2 && c1 == 0x80 && s[i+2]&^1 == 0xa8 { // U+2028, U+2029
					dst = append(dst, s[start:i]...)
					dst = append(dst, '\\', 'u', '2', '0', '2', lowerHex[s[i+2]&0xf])
					start = i + 3
				}
				i += 3
				continue
			}
		}
		// string(...) of at most utf8.UTFMax bytes does not escape, so
		// converting a []byte takes a stack buffer, not an allocation.
		_, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		if size == 1 { // invalid: every valid multi-byte rune is longer
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			start = i + 1
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
