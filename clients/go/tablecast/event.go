package tablecast

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// Op is an event's operation, as in its "op" member and the last token of
// its subject.
type Op string

// The operations of row changes; OpRead is a row sent by a snapshot.
const (
	OpCreate   Op = "create"
	OpUpdate   Op = "update"
	OpDelete   Op = "delete"
	OpTruncate Op = "truncate"
	OpRead     Op = "read"
)

// CauseTableAdded is the Cause of a truncate tablecast sends when it adds
// to its publication a table whose name it streamed before (one dropped
// and created again, or left out for a while): the rows held under that
// name are not the table's, whose rows follow as OpRead.
const CauseTableAdded = "table_added"

// CauseTableRenamed is the Cause of the truncates tablecast sends when a
// table is renamed: one of its old name, whose rows are no table's now,
// and one of its new name when it has a primary key, whose rows follow as
// OpRead.
const CauseTableRenamed = "table_renamed"

// CauseTableDropped is the Cause of the truncate tablecast sends when a
// table is dropped and no table holds its name: the rows held under that
// name are no table's now.
const CauseTableDropped = "table_dropped"

// CauseKeyChanged is the Cause of the truncate tablecast sends when a
// table's key changes (its primary key replaced, or one added): the rows
// held are keyed by the old columns, and its rows follow as OpRead under
// the new key.
const CauseKeyChanged = "key_changed"

// CauseSnapshotRestarted is the Cause of the truncate tablecast sends
// before each table's rows when it takes an interrupted initial snapshot
// again: rows held from the attempt before may have been deleted since,
// and the table's rows follow as OpRead.
const CauseSnapshotRestarted = "snapshot_restarted"

// Claim names the object that holds an event too large for one NATS
// message: the object Object of the JetStream object store Bucket, Size
// bytes long.
type Claim struct {
	Bucket string `json:"bucket"`
	Object string `json:"object"`
	Size   int64  `json:"size"`
}

// Event is one row change, the envelope of docs/contract.md.
type Event struct {
	// ID is the commit LSN (16 hex digits), a dash and the change's
	// ordinal in its transaction: unique, ordered, stable across replays,
	// and the message's Nats-Msg-Id.
	ID string
	Op Op
	// DB, Schema and Table name the table as PostgreSQL does.
	DB, Schema, Table string
	// LSN is the commit's LSN as PostgreSQL writes it (0/16B3748).
	LSN string
	// XID is the transaction's id; 0 for snapshot rows.
	XID uint32
	// CommitTime is the transaction's commit time.
	CommitTime time.Time
	// Key is the row's identity: the primary key's columns (or the replica
	// identity index's); empty for a truncate.
	Key Row
	// Data is the new row (create, update, read); nil otherwise, and for an
	// event whose rows are in an unresolved Claim or were Truncated.
	Data Row
	// Old is what PostgreSQL sent of the old row (deletes, and updates
	// under REPLICA IDENTITY FULL or of the key); nil otherwise.
	Old Row
	// Unchanged lists the columns PostgreSQL did not send because an
	// unchanged TOASTed value was kept; they are absent from Data.
	Unchanged []string
	// Claim is set when the event was too large for one NATS message and
	// its rows are in the object store: Resolver.Resolve (and Consume)
	// replace such an event with the full one, unless the object is gone.
	Claim *Claim
	// Truncated is set when the event was larger than the reader's
	// TABLECAST_MAX_EVENT_BYTES: it carries Key and no rows, and its
	// record is in the dead-letter stream.
	Truncated bool
	// Cause says why tablecast sent a truncate that PostgreSQL did not:
	// CauseTableAdded, CauseTableRenamed, CauseTableDropped,
	// CauseKeyChanged or CauseSnapshotRestarted. Empty for
	// every other event.
	Cause string

	// Subject, Sequence and Delivered are set by Consume: the message's
	// subject, its stream sequence, and how many times JetStream has
	// delivered it (1 the first time).
	Subject   string
	Sequence  uint64
	Delivered uint64

	// Raw is the event's JSON as received (resolved, for a claim).
	Raw json.RawMessage
}

// envelope is the JSON form of an event.
type envelope struct {
	ID         string    `json:"id"`
	Op         Op        `json:"op"`
	DB         string    `json:"db"`
	Schema     string    `json:"schema"`
	Table      string    `json:"table"`
	LSN        string    `json:"lsn"`
	XID        uint32    `json:"xid"`
	CommitTime time.Time `json:"commit_time"`
	Key        Row       `json:"key"`
	Data       Row       `json:"data"`
	Old        Row       `json:"old"`
	Unchanged  []string  `json:"unchanged"`
	Claim      *Claim    `json:"claim"`
	Truncated  bool      `json:"truncated"`
	Cause      string    `json:"cause"`
}

// ErrNotEvent means a message is not a row-change event: not a JSON
// object, or without an id or op (a custom topic's message, say).
var ErrNotEvent = errors.New("not a tablecast event")

// ParseEvent decodes one event. Members it does not know are ignored, so
// that events of a later tablecast still parse.
func ParseEvent(data []byte) (*Event, error) {
	var e envelope
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotEvent, err)
	}
	if e.ID == "" || e.Op == "" {
		return nil, fmt.Errorf("%w: no id or op", ErrNotEvent)
	}
	return &Event{ID: e.ID, Op: e.Op, DB: e.DB, Schema: e.Schema, Table: e.Table, LSN: e.LSN, XID: e.XID, CommitTime: e.CommitTime,
		Key: e.Key, Data: e.Data, Old: e.Old, Unchanged: e.Unchanged, Claim: e.Claim, Truncated: e.Truncated,
		Cause: e.Cause, Raw: append(json.RawMessage(nil), data...)}, nil
}

// IsUnchanged reports whether PostgreSQL left column out of an update
// because its TOASTed value did not change: the column keeps the value it
// had, which this event does not carry.
func (e *Event) IsUnchanged(column string) bool {
	for _, c := range e.Unchanged {
		if c == column {
			return true
		}
	}
	return false
}

// Row is the row the event is about: Data, or for a delete Old (its key
// alone under the default replica identity), or Key when neither was sent.
func (e *Event) Row() Row {
	switch {
	case e.Data != nil:
		return e.Data
	case e.Old != nil:
		return e.Old
	}
	return e.Key
}

// Row is a row image: column name → its value as JSON (see the value
// rules of docs/contract.md). Its accessors say why a value cannot be had:
// ErrNoColumn when the column is not in the row (not sent, projected away,
// unchanged), ErrNull when it is SQL NULL, and a type error otherwise.
type Row map[string]json.RawMessage

// ErrNoColumn means the row does not carry the column.
var ErrNoColumn = errors.New("column not in the row")

// ErrNull means the column is SQL NULL.
var ErrNull = errors.New("column is NULL")

var null = []byte("null")

// Has reports whether the row carries column (NULL included).
func (r Row) Has(column string) bool {
	_, ok := r[column]
	return ok
}

// IsNull reports whether column is in the row and SQL NULL.
func (r Row) IsNull(column string) bool {
	v, ok := r[column]
	return ok && bytes.Equal(bytes.TrimSpace(v), null)
}

// value returns column's JSON, or why there is none.
func (r Row) value(column string) (json.RawMessage, error) {
	v, ok := r[column]
	switch {
	case !ok:
		return nil, fmt.Errorf("column %q: %w", column, ErrNoColumn)
	case bytes.Equal(bytes.TrimSpace(v), null):
		return nil, fmt.Errorf("column %q: %w", column, ErrNull)
	}
	return v, nil
}

func (r Row) decode(column, want string, dst any) error {
	v, err := r.value(column)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(v, dst); err != nil {
		return fmt.Errorf("column %q: %s is not %s", column, truncate(v), want)
	}
	return nil
}

// String returns a text, uuid, enum, numeric or other text-form column.
func (r Row) String(column string) (string, error) {
	var s string
	err := r.decode(column, "a string", &s)
	return s, err
}

// Int64 returns an integer column (smallint, integer, bigint, oid, …).
func (r Row) Int64(column string) (int64, error) {
	v, err := r.value(column)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("column %q: %s is not a 64-bit integer", column, truncate(v))
	}
	return n, nil
}

// Float64 returns a real or double precision column; NaN and ±Infinity,
// which JSON numbers cannot hold, arrive as strings and are returned as
// such floats.
func (r Row) Float64(column string) (float64, error) {
	v, err := r.value(column)
	if err != nil {
		return 0, err
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		switch s {
		case "NaN":
			return math.NaN(), nil
		case "Infinity":
			return math.Inf(1), nil
		case "-Infinity":
			return math.Inf(-1), nil
		}
		return 0, fmt.Errorf("column %q: %s is not a number", column, truncate(v))
	}
	f, err := strconv.ParseFloat(string(bytes.TrimSpace(v)), 64)
	if err != nil {
		return 0, fmt.Errorf("column %q: %s is not a number", column, truncate(v))
	}
	return f, nil
}

// Numeric returns a numeric column exactly, as a rational number (numeric
// travels as a string so that no digit is lost). NaN and infinities have
// no rational value and are an error; read them with String.
func (r Row) Numeric(column string) (*big.Rat, error) {
	s, err := r.String(column)
	if err != nil {
		return nil, err
	}
	q, ok := new(big.Rat).SetString(s)
	if !ok {
		return nil, fmt.Errorf("column %q: %q is not a finite decimal", column, s)
	}
	return q, nil
}

// Bool returns a boolean column.
func (r Row) Bool(column string) (bool, error) {
	var b bool
	err := r.decode(column, "a boolean", &b)
	return b, err
}

// ErrInfinite means a date or timestamp column is infinity or -infinity,
// which time.Time cannot hold.
var ErrInfinite = errors.New("infinite date or time")

// Time returns a timestamp, timestamptz or date column (a date is
// midnight UTC of that day). "infinity" and "-infinity" are ErrInfinite.
func (r Row) Time(column string) (time.Time, error) {
	s, err := r.String(column)
	if err != nil {
		return time.Time{}, err
	}
	switch s {
	case "infinity", "-infinity":
		return time.Time{}, fmt.Errorf("column %q: %s: %w", column, s, ErrInfinite)
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", time.DateOnly} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if t, ok := parsePGTime(s); ok {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("column %q: %q is not a date or timestamp", column, s)
}

// parsePGTime reads what the reader sends as PostgreSQL printed it because
// RFC 3339 cannot say it: BC dates ("0044-03-15 BC", year -43 here, as
// time.Time counts), years past 9999 ("10000-01-01 00:00:00+00"), and
// offsets with seconds ("1850-01-01 00:00:00+00:19:32"). The form is
// PostgreSQL's ISO one: YYYY[Y…]-MM-DD[ HH:MM:SS[.fraction][±HH[:MM[:SS]]]][ BC].
func parsePGTime(s string) (time.Time, bool) {
	s, bc := strings.CutSuffix(s, " BC")
	i := strings.IndexByte(s, '-')
	if i < 4 {
		return time.Time{}, false
	}
	year, ok := digits(s[:i])
	if !ok || len(s) < i+6 || s[i+3] != '-' {
		return time.Time{}, false
	}
	month, ok1 := digits(s[i+1 : i+3])
	day, ok2 := digits(s[i+4 : i+6])
	if !ok1 || !ok2 {
		return time.Time{}, false
	}
	if bc {
		year = 1 - year
	}
	rest := s[i+6:]
	var hour, minute, sec, nsec, offset int
	if rest != "" {
		if len(rest) < 9 || rest[0] != ' ' || rest[3] != ':' || rest[6] != ':' {
			return time.Time{}, false
		}
		var ok3, ok4, ok5 bool
		hour, ok3 = digits(rest[1:3])
		minute, ok4 = digits(rest[4:6])
		sec, ok5 = digits(rest[7:9])
		if !ok3 || !ok4 || !ok5 {
			return time.Time{}, false
		}
		rest = rest[9:]
		if strings.HasPrefix(rest, ".") {
			j := 1
			for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
				j++
			}
			frac := rest[1:j]
			if frac == "" || len(frac) > 9 {
				return time.Time{}, false
			}
			nsec, _ = digits(frac + strings.Repeat("0", 9-len(frac)))
			rest = rest[j:]
		}
		if rest != "" {
			if rest[0] != '+' && rest[0] != '-' {
				return time.Time{}, false
			}
			sign := 1
			if rest[0] == '-' {
				sign = -1
			}
			parts := strings.Split(rest[1:], ":")
			if len(parts) > 3 {
				return time.Time{}, false
			}
			unit := 3600
			for _, p := range parts {
				n, ok := digits(p)
				if !ok || len(p) != 2 {
					return time.Time{}, false
				}
				offset += n * unit
				unit /= 60
			}
			offset *= sign
		}
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	if t.Month() != time.Month(month) || t.Day() != day || t.Hour() != hour || t.Minute() != minute || t.Second() != sec {
		return time.Time{}, false // out of range, not normalized into another day
	}
	return t.Add(-time.Duration(offset) * time.Second), true
}

// digits reads a non-empty run of ASCII digits as a number.
func digits(s string) (int, bool) {
	if s == "" || len(s) > 9 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}

// Bytes returns a bytea column (base64 in the event).
func (r Row) Bytes(column string) ([]byte, error) {
	s, err := r.String(column)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("column %q: not base64: %v", column, err)
	}
	return b, nil
}

// Decode unmarshals a column into dst with encoding/json: a json or jsonb
// column (embedded as it is), an array (a JSON array), or any value into
// a type that fits it.
func (r Row) Decode(column string, dst any) error {
	v, err := r.value(column)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(v, dst); err != nil {
		return fmt.Errorf("column %q: %w", column, err)
	}
	return nil
}

// truncate shortens a value for an error message.
func truncate(v []byte) string {
	if len(v) > 64 {
		return string(v[:64]) + "…"
	}
	return string(v)
}
