package stream

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// topicToken is the second token of a custom topic subject:
// <prefix>.topic.<name>.
const topicToken = "topic"

// emptyToken stands for the empty name. A lone '%' is never produced for any
// other name, because '%' itself is always escaped as %25, so it cannot be
// mistaken for one; and a NATS token may not be empty.
const emptyToken = "%"

const hexUpper = "0123456789ABCDEF"

// needsEscape reports, for every byte value, whether AppendToken escapes it
// when it appears as a single-byte character: the bytes NATS reserves in a
// subject token ('.', '*', '>', white space), every other control byte, DEL,
// and '%', the escape character itself. Bytes >= 0x80 are decided by UTF-8
// validity instead (see AppendToken).
var needsEscape = func() (t [256]bool) {
	for b := 0; b < 0x20; b++ {
		t[b] = true
	}
	for _, b := range []byte{' ', '.', '*', '>', '%', 0x7f} {
		t[b] = true
	}
	return t
}()

// AppendToken appends name to dst as one NATS subject token.
//
// Every byte NATS reserves in a token ('.', '*', '>', white space including
// \t \r \n, any other byte below 0x20, and 0x7f) and '%' itself is written as
// %XX with upper-case hex digits, e.g. "order.items" becomes "order%2Eitems".
// Multi-byte UTF-8 passes through unchanged (it is valid in a subject); a byte
// that is not part of valid UTF-8 is escaped, so the token is always valid
// UTF-8. The empty name, which a PostgreSQL identifier never is, is written as
// a lone "%" (see [DecodeToken]).
//
// AppendToken allocates only when dst lacks room.
func AppendToken(dst []byte, name string) []byte {
	if name == "" {
		return append(dst, emptyToken...)
	}
	for i := 0; i < len(name); {
		c := name[i]
		if c < utf8.RuneSelf {
			if needsEscape[c] {
				dst = append(dst, '%', hexUpper[c>>4], hexUpper[c&0x0f])
			} else {
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(name[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, '%', hexUpper[c>>4], hexUpper[c&0x0f])
		} else {
			dst = append(dst, name[i:i+size]...)
		}
		i += size
	}
	return dst
}

// Token returns name encoded as one subject token; see [AppendToken].
func Token(name string) string {
	return string(AppendToken(make([]byte, 0, len(name)+8), name))
}

// ErrMalformedToken is wrapped by the errors of [DecodeToken].
var ErrMalformedToken = errors.New("malformed subject token")

// DecodeToken is the inverse of [AppendToken]: it turns a subject token back
// into the name it encodes. A '%' must be followed by two hex digits (either
// case), except that the lone token "%" is the empty name. A token holding a
// byte that AppendToken would have escaped, such as a raw '.' or the wildcard
// '*', is an error too.
func DecodeToken(tok string) (string, error) {
	if tok == emptyToken {
		return "", nil
	}
	if tok == "" {
		return "", fmt.Errorf("%w: empty token", ErrMalformedToken)
	}
	escapes := 0
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c == '%' {
			if i+2 >= len(tok) {
				return "", fmt.Errorf("%w %q: truncated escape at byte %d", ErrMalformedToken, tok, i)
			}
			if unhex(tok[i+1]) < 0 || unhex(tok[i+2]) < 0 {
				return "", fmt.Errorf("%w %q: invalid escape %q at byte %d", ErrMalformedToken, tok, tok[i:i+3], i)
			}
			escapes++
			i += 2
			continue
		}
		if c < utf8.RuneSelf && needsEscape[c] {
			return "", fmt.Errorf("%w %q: unescaped %q at byte %d", ErrMalformedToken, tok, c, i)
		}
	}
	if escapes == 0 {
		return tok, nil
	}
	var b strings.Builder
	b.Grow(len(tok) - 2*escapes)
	for i := 0; i < len(tok); i++ {
		if tok[i] == '%' {
			b.WriteByte(byte(unhex(tok[i+1])<<4 | unhex(tok[i+2])))
			i += 2
			continue
		}
		b.WriteByte(tok[i])
	}
	return b.String(), nil
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	case 'a' <= c && c <= 'f':
		return int(c - 'a' + 10)
	}
	return -1
}

// AppendChangeSubject appends the subject of a row change,
// <prefix>.<db>.<schema>.<table>.<op>, to dst and returns the extended slice.
// db, schema and table are encoded with [AppendToken]; prefix (checked once
// with [ValidatePrefix]) and op (one of schema.OpCreate …) are used verbatim.
// It allocates nothing when dst has room, which makes it fit for the per-row
// hot path: keep one buffer and pass buf[:0].
func AppendChangeSubject(dst []byte, prefix, db, schema, table, op string) []byte {
	dst = append(dst, prefix...)
	dst = append(dst, '.')
	dst = AppendToken(dst, db)
	dst = append(dst, '.')
	dst = AppendToken(dst, schema)
	dst = append(dst, '.')
	dst = AppendToken(dst, table)
	dst = append(dst, '.')
	return append(dst, op...)
}

// ChangeSubject returns the subject of a row change; see [AppendChangeSubject].
func ChangeSubject(prefix, db, schema, table, op string) string {
	n := len(prefix) + len(db) + len(schema) + len(table) + len(op) + 4
	return string(AppendChangeSubject(make([]byte, 0, n+8), prefix, db, schema, table, op))
}

// TableSubjects returns the subject that matches every change to one table:
// <prefix>.<db>.<schema>.<table>.>. An empty db matches the table in any
// database ("*").
func TableSubjects(prefix, db, schema, table string) string {
	b := make([]byte, 0, len(prefix)+len(db)+len(schema)+len(table)+12)
	b = append(b, prefix...)
	b = append(b, '.')
	if db == "" {
		b = append(b, '*')
	} else {
		b = AppendToken(b, db)
	}
	b = append(b, '.')
	b = AppendToken(b, schema)
	b = append(b, '.')
	b = AppendToken(b, table)
	b = append(b, ".>"...)
	return string(b)
}

// transactionToken is the last token of a database's transaction marker
// subject. AppendToken never writes it: a '%' it writes is always followed
// by two hex digits, or stands alone. So no schema, table or topic name,
// nor the database named "topic", can give a subject equal to a marker's.
const transactionToken = "%tx"

// TransactionSubject returns the subject of the transaction markers of
// database db: <prefix>.<db>.%tx. It has three tokens after the prefix's,
// so that neither event wildcards (<prefix>.<db>.*.*.*) nor a schema's or
// table's (<prefix>.<db>.<schema>.>) match it, while <prefix>.<db>.> (every
// message of the database) does.
func TransactionSubject(prefix, db string) string {
	b := make([]byte, 0, len(prefix)+len(db)+len(transactionToken)+10)
	b = append(b, prefix...)
	b = append(b, '.')
	b = AppendToken(b, db)
	b = append(b, '.')
	b = append(b, transactionToken...)
	return string(b)
}

// TopicSubject returns the subject of a custom topic: <prefix>.topic.<name>,
// the name encoded with [AppendToken].
func TopicSubject(prefix, topic string) string {
	b := make([]byte, 0, len(prefix)+len(topicToken)+len(topic)+10)
	b = append(b, prefix...)
	b = append(b, '.')
	b = append(b, topicToken...)
	b = append(b, '.')
	b = AppendToken(b, topic)
	return string(b)
}

// ErrInvalidPrefix is wrapped by the errors of [ValidatePrefix].
var ErrInvalidPrefix = errors.New("invalid subject prefix")

// ValidatePrefix checks that prefix can start every subject: one or more
// non-empty tokens separated by '.', none holding a wildcard ('*', '>'), white
// space or another control byte, the whole valid UTF-8, and not starting with
// '$', which NATS reserves for its own subjects ($JS, $SYS).
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return fmt.Errorf("%w: empty", ErrInvalidPrefix)
	}
	if !utf8.ValidString(prefix) {
		return fmt.Errorf("%w %q: not valid UTF-8", ErrInvalidPrefix, prefix)
	}
	if prefix[0] == '$' {
		return fmt.Errorf("%w %q: subjects starting with '$' are reserved for NATS itself", ErrInvalidPrefix, prefix)
	}
	for i, tok := range strings.Split(prefix, ".") {
		if tok == "" {
			return fmt.Errorf("%w %q: token %d is empty (leading, trailing or doubled '.')", ErrInvalidPrefix, prefix, i+1)
		}
		for j := 0; j < len(tok); j++ {
			switch c := tok[j]; {
			case c == '*' || c == '>':
				return fmt.Errorf("%w %q: token %d holds the wildcard %q", ErrInvalidPrefix, prefix, i+1, c)
			case c <= ' ' || c == 0x7f:
				return fmt.Errorf("%w %q: token %d holds white space or control byte %q", ErrInvalidPrefix, prefix, i+1, c)
			}
		}
	}
	return nil
}

// KeyDeferrableHeader marks the events of a table whose key is a primary key
// declared DEFERRABLE ("true"): inside a transaction, more than one row may
// hold such a key at once, so that a consumer keeping rows by key (the row
// state) must look at what the key holds before an insert or a delete, not
// only at what the transaction wrote. The reader sets it on creates, updates
// and deletes (their claims and truncated forms too), not on snapshot rows
// or truncates.
const KeyDeferrableHeader = "Tablecast-Key-Deferrable"
