package schema

import (
	"fmt"
	"strings"
)

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

func quoteIdentPart(s string) string {
	if s != "" && !strings.ContainsAny(s, `."`) {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
