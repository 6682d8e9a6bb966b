package rowstate

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// change is one event of the stream, parsed for applying.
type change struct {
	seq       uint64
	op        string
	schema    string
	table     string
	env       []byte // the envelope, claims resolved
	key       []byte // "key": the row's key (the old one when PostgreSQL sent the old row)
	data      []byte // "data", or nil
	old       []byte // "old" as PostgreSQL sent it, or nil
	unchanged []byte // "unchanged", or nil
	truncated bool   // "truncated": the reader kept no row
	claimed   bool   // "claim": the event is in an object
	lsn       []byte // "lsn": the transaction's commit LSN, unquoted
	// deferrable: the table's key is a deferrable primary key
	// (stream.KeyDeferrableHeader), which more than one row may hold
	// inside a transaction.
	deferrable bool
}

// parseChange reads what applying needs of an envelope.
func parseChange(seq uint64, op string, env []byte) (change, error) {
	c := change{seq: seq, op: op, env: env}
	var r objectReader
	if err := r.reset(env); err != nil {
		return c, fmt.Errorf("event %d: %w", seq, err)
	}
	for r.next() {
		switch {
		case r.is("key"):
			c.key = r.value
		case r.is("data"):
			c.data = r.value
		case r.is("old"):
			c.old = r.value
		case r.is("unchanged"):
			c.unchanged = r.value
		case r.is("truncated"):
			c.truncated = c.truncated || string(r.value) == "true"
		case r.is("claim"):
			c.truncated = true // the row is in an object, too large for a row message
			c.claimed = true
		case r.is("lsn"):
			if v := r.value; len(v) > 2 && v[0] == '"' {
				c.lsn = v[1 : len(v)-1] // an LSN ("0/16B3748") needs no escapes
			}
		case r.is("schema"):
			c.schema = decodeJSONString(r.value)
		case r.is("table"):
			c.table = decodeJSONString(r.value)
		}
	}
	if r.err != nil {
		return c, fmt.Errorf("event %d: %w", seq, r.err)
	}
	if c.schema == "" || c.table == "" {
		return c, fmt.Errorf("event %d names no table", seq)
	}
	for _, obj := range [][]byte{c.key, c.data, c.old} {
		if obj != nil && obj[0] != '{' {
			return c, fmt.Errorf("event %d: a row that is not an object", seq)
		}
	}
	return c, nil
}

func decodeJSONString(v []byte) string {
	if len(v) < 2 || v[0] != '"' {
		return ""
	}
	return jsonx.DecodeString(v[1 : len(v)-1])
}

// keyed reports whether the change identifies a row: a non-empty key.
func (c *change) keyed() bool {
	return len(bytes.TrimSpace(c.key)) > 2
}

// newKey returns the key of the row after the change (NewKey). Without an
// old row from PostgreSQL the key did not change, and it is the event's key.
func (c *change) newKey() ([]byte, error) {
	if c.old == nil || c.data == nil {
		return c.key, nil
	}
	return NewKey(c.key, c.data)
}

// NewKey returns the key of a row after an update whose event carries key
// (the old key, as the reader writes keys) and data (the new row): the key
// columns' values in data (a column data lacks, an unchanged TOASTed one,
// keeps its value), in the order of key, written as the reader writes
// keys. A row whose key did not change gets key's bytes.
func NewKey(key, data []byte) ([]byte, error) {
	keys, err := members(nil, key)
	if err != nil {
		return nil, err
	}
	row, err := members(nil, data)
	if err != nil {
		return nil, err
	}
	changed := false
	for i := range keys {
		if v, ok := find(row, keys[i].name, keys[i].plain); ok && !bytes.Equal(v, keys[i].value) {
			keys[i].value, changed = v, true
		}
	}
	if !changed {
		return key, nil
	}
	return appendObject(nil, keys), nil
}

// sameRow reports whether rows a and b (JSON objects) are one row's
// values: every column both have holds the same value in each. Columns one
// of them lacks (added or dropped since, left out as unchanged TOAST) are
// not compared; rows with no column in common are not the same.
func sameRow(a, b []byte) bool {
	am, err := members(nil, a)
	if err != nil {
		return false
	}
	bm, err := members(nil, b)
	if err != nil {
		return false
	}
	common := 0
	for i := range am {
		v, ok := find(bm, am[i].name, am[i].plain)
		if !ok {
			continue
		}
		if !bytes.Equal(v, am[i].value) {
			return false
		}
		common++
	}
	return common > 0
}

// fillUnchanged returns data with the values PostgreSQL left out as
// unchanged TOAST (names, a JSON array) taken from prev, the row's previous
// version; a name prev lacks stays out.
func fillUnchanged(data, unchanged, prev []byte) ([]byte, error) {
	names, err := stringList(unchanged)
	if err != nil {
		return nil, fmt.Errorf("unchanged: %w", err)
	}
	if len(names) == 0 || prev == nil {
		return data, nil
	}
	prevMembers, err := members(nil, prev)
	if err != nil {
		return nil, fmt.Errorf("previous row: %w", err)
	}
	ms, err := members(nil, data)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	for _, n := range names {
		if v, ok := findDecoded(prevMembers, n); ok {
			ms = append(ms, member{name: appendRawName(nil, n), plain: true, value: v})
		}
	}
	return appendObject(nil, ms), nil
}

// appendRawName appends a name as it stands between quotes in JSON.
func appendRawName(dst []byte, name string) []byte {
	q := jsonx.AppendString(nil, name)
	return append(dst, q[1:len(q)-1]...)
}

// stringList decodes a JSON array of strings.
func stringList(v []byte) ([]string, error) {
	i := jsonx.SkipSpace(v, 0)
	if i >= len(v) || v[i] != '[' {
		return nil, errors.New("not an array")
	}
	var out []string
	i = jsonx.SkipSpace(v, i+1)
	if i < len(v) && v[i] == ']' {
		return out, nil
	}
	for {
		if i >= len(v) || v[i] != '"' {
			return nil, errors.New("not an array of strings")
		}
		end, _, ok := jsonx.ScanString(v, i)
		if !ok {
			return nil, errors.New("bad string")
		}
		out = append(out, jsonx.DecodeString(v[i+1:end-1]))
		i = jsonx.SkipSpace(v, end)
		if i < len(v) && v[i] == ',' {
			i = jsonx.SkipSpace(v, i+1)
			continue
		}
		if i < len(v) && v[i] == ']' {
			return out, nil
		}
		return nil, errors.New("not an array of strings")
	}
}
