package schema

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on names.
const (
	// MaxIdentLen is PostgreSQL's identifier limit (NAMEDATALEN-1 bytes):
	// no database, schema, table or column name is longer.
	MaxIdentLen = 63
	// MaxTopicLen is the longest custom topic name, in bytes. A topic name
	// becomes NATS subject tokens, and JetStream limits whole subjects, so
	// names stay well inside that.
	MaxTopicLen = 128
)

// QuoteName quotes a name a client wrote (a table, a column, a topic, an
// id) for a message: Go-quoted, and cut at 64 bytes on a character
// boundary, marked "…", so that messages stay small.
func QuoteName(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}

// ParseTableName splits "schema.table" into its parts. A part is taken as
// written (no case folding: it must match the catalog; spaces and unicode
// are fine), or double-quoted as in SQL when it holds a dot or a quote (""
// for a quote inside): `"My Schema"."orders.v2"`.
func ParseTableName(s string) (schemaName, table string, err error) {
	schemaName, rest, err := identPart(s)
	if err == nil && (rest == "" || rest[0] != '.') {
		err = fmt.Errorf("want schema.table")
	}
	if err == nil {
		table, rest, err = identPart(rest[1:])
	}
	if err == nil && rest != "" {
		err = fmt.Errorf("unexpected %q after the table name", rest)
	}
	if err != nil {
		return "", "", fmt.Errorf("table %q: %w", s, err)
	}
	return schemaName, table, nil
}

// identPart reads one identifier from the start of s.
func identPart(s string) (ident, rest string, err error) {
	if strings.HasPrefix(s, `"`) {
		var b strings.Builder
		for i := 1; i < len(s); i++ {
			if s[i] != '"' {
				b.WriteByte(s[i])
				continue
			}
			if i+1 < len(s) && s[i+1] == '"' {
				b.WriteByte('"')
				i++
				continue
			}
			if b.Len() == 0 {
				return "", "", fmt.Errorf("empty quoted name")
			}
			return b.String(), s[i+1:], nil
		}
		return "", "", fmt.Errorf("unterminated quote")
	}
	end := strings.IndexAny(s, `."`)
	if end < 0 {
		end = len(s)
	}
	if end == 0 {
		return "", "", fmt.Errorf("want schema.table")
	}
	if end < len(s) && s[end] != '.' {
		return "", "", fmt.Errorf("a quote inside %q: double-quote the whole part", s)
	}
	return s[:end], s[end:], nil
}

// FormatTableName is the inverse of ParseTableName: "schema.table", a part
// double-quoted when it holds a dot or a quote.
func FormatTableName(schemaName, table string) string {
	return quoteIdentPart(schemaName) + "." + quoteIdentPart(table)
}

// NamePart is one dot-separated part of a name read by SplitName.
type NamePart struct {
	Name   string
	Quoted bool // written in double quotes, so taken literally (a "*" in quotes is a name)
}

// SplitName splits a dotted name into its parts, each read as
// ParseTableName reads a part: as written, or double-quoted when it holds
// a dot or a quote ("" for a quote inside). It checks only the quoting; how
// many parts make a name is for the caller.
func SplitName(s string) ([]NamePart, error) {
	var parts []NamePart
	rest := s
	for {
		quoted := strings.HasPrefix(rest, `"`)
		ident, after, err := identPart(rest)
		if err != nil {
			return nil, fmt.Errorf("name %q: %w", s, err)
		}
		parts = append(parts, NamePart{Name: ident, Quoted: quoted})
		if after == "" {
			return parts, nil
		}
		if after[0] != '.' {
			return nil, fmt.Errorf("name %q: unexpected %q after a part", s, after)
		}
		rest = after[1:]
	}
}

// ParseQualifiedName reads a table name that may name its database:
// "db.schema.table", or "schema.table" (db is then ""), each part as
// ParseTableName reads it: `"my.db".public."orders.v2"`.
func ParseQualifiedName(s string) (db, schemaName, table string, err error) {
	parts, err := SplitName(s)
	if err != nil {
		return "", "", "", err
	}
	switch len(parts) {
	case 2:
		return "", parts[0].Name, parts[1].Name, nil
	case 3:
		return parts[0].Name, parts[1].Name, parts[2].Name, nil
	}
	return "", "", "", fmt.Errorf("table %q: want schema.table or database.schema.table", s)
}

// FormatQualifiedName is the inverse of ParseQualifiedName:
// "db.schema.table", or "schema.table" when db is "", a part double-quoted
// when it holds a dot or a quote.
func FormatQualifiedName(db, schemaName, table string) string {
	if db == "" {
		return FormatTableName(schemaName, table)
	}
	return quoteIdentPart(db) + "." + FormatTableName(schemaName, table)
}

func quoteIdentPart(s string) string {
	if s != "" && !strings.ContainsAny(s, `."`) {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// TopicNameProblem returns what is wrong with a topic name for the
// WebSocket gateway, or "". Its subject encodes any name (<prefix>.topic.
// <name>, one token), but grants name topics by patterns in which dots
// make a hierarchy and '*' is a wildcard ("room.*"): a name must not start
// or end with a dot or hold two in a row (an empty level), nor hold white
// space, control characters or the wildcards '*' and '>'. The outbox
// publishes other names too, for NATS subscribers.
func TopicNameProblem(name string) string {
	var problem string
	switch {
	case name == "":
		return "topic name is empty"
	case len(name) > MaxTopicLen:
		problem = " is longer than " + strconv.Itoa(MaxTopicLen) + " bytes"
	case !utf8.ValidString(name):
		problem = " is not valid UTF-8"
	case strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		problem = " holds white space or a control character"
	case strings.ContainsAny(name, "*>"):
		problem = ` holds a NATS wildcard ('*' or '>')`
	case name[0] == '.' || name[len(name)-1] == '.':
		problem = " starts or ends with '.'"
	case strings.Contains(name, ".."):
		problem = ` holds ".." (an empty token)`
	default:
		return ""
	}
	return "topic " + QuoteName(name) + problem
}
