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
		Raw: append(json.RawMessage(nil), data...)}, nil
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
	return time.Time{}, fmt.Errorf("column %q: %q is not a date or timestamp", column, s)
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
