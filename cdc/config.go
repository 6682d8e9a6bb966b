package cdc

import (
	"errors"
	"fmt"
	"time"

	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Config is what the reader needs to know. The zero value of each optional
// field means the default written beside it.
type Config struct {
	// DatabaseURL is the PostgreSQL connection string (required). The reader
	// adds replication=database itself for its replication connection.
	DatabaseURL string
	// Publication to read; created if missing, FOR TABLE the tables of
	// Tables that can publish their updates and deletes, and marked (by its
	// comment) as managed by tablecast, which then keeps it in step with
	// the catalog. A publication without the mark is read as it is.
	// Default "tablecast".
	Publication string
	// Tables a publication tablecast manages covers, as schema.table, or
	// ["*"] for every table that can publish its updates and deletes (a
	// primary key, or REPLICA IDENTITY FULL or USING INDEX), outside the
	// system schemas and extensions. A named table that cannot is a
	// ConfigError. Default ["*"]. Ignored for a publication tablecast does
	// not manage.
	Tables []string
	// Slot is the logical replication slot; created if missing. Default "tablecast".
	Slot string
	// Stream is the JetStream stream the events must be stored in; an
	// acknowledgement from any other stream is a failure. Default "TABLECAST".
	Stream string
	// Snapshot says what happens when the reader creates the slot:
	// SnapshotInitial (default) publishes the rows already in the
	// published tables as op "read", from the slot's exported snapshot, so
	// snapshot and stream join with no gap and no duplicate; SnapshotNever
	// publishes only changes from then on.
	Snapshot string
	// SchemaBucket is the JetStream key-value bucket of the schema
	// registry. Default "TABLECAST_SCHEMAS".
	SchemaBucket string
	// StatusInterval is how often a standby status update is sent to
	// PostgreSQL even when nothing changed. Default 10s, well under
	// PostgreSQL's wal_sender_timeout (60s by default).
	StatusInterval time.Duration
	// RetryMin and RetryMax bound the backoff between replication sessions.
	// Defaults 500ms and 30s.
	RetryMin, RetryMax time.Duration
	// MaxInFlight bounds events published but not yet acknowledged by
	// JetStream. Default 8192: deep enough to keep JetStream busy at 150k
	// events/s with ~10ms ack latency, small enough to bound memory. On a
	// replicated stream that takes fences, at most
	// stream.FenceRingSize-1 (1023) whatever it says (stream.WithFenceRing).
	MaxInFlight int
	// StallAfter and StallLagBytes define an unhealthy reader: the slot's
	// confirmed position has not moved for StallAfter while PostgreSQL's WAL
	// is at least StallLagBytes ahead of it. Defaults 60s and 16 MiB.
	StallAfter    time.Duration
	StallLagBytes int64
	// HeartbeatInterval is how often the reader writes a heartbeat into the
	// WAL (pg_logical_emit_message), so that the slot advances even when no
	// published table changes, and end-to-end lag is measured. Default 10s;
	// negative disables it.
	HeartbeatInterval time.Duration
	// WatchInterval is how often the slot's lag is read from PostgreSQL for
	// metrics and health. Default 5s.
	WatchInterval time.Duration
	// MaxEventBytes is the largest event the reader publishes whole. An
	// event larger than the NATS server's maximum payload is stored as an
	// object of PayloadBucket and the stream carries a claim to it; one
	// larger than MaxEventBytes is published without its rows ("truncated")
	// and recorded in the dead-letter stream. It also bounds the memory one
	// event takes in the reader. Default DefaultMaxEventBytes, 64 MiB.
	MaxEventBytes int
	// PayloadBucket is the JetStream object store bucket of the events
	// larger than the server's maximum payload, created when first needed.
	// Default stream.DefaultPayloadBucket, "TABLECAST_PAYLOADS".
	PayloadBucket string
	// CatalogInterval is how often the catalog is read to keep a managed
	// publication in step (tables created, or gaining or losing a key).
	// Default 2s: a table that loses its key has its writes refused until
	// it is dropped from the publication, so the round must be short, and
	// one catalog query is cheap.
	CatalogInterval time.Duration
	// TopicRoles are the roles, besides the reader's own and superusers,
	// the DBA lets publish custom-topic messages with
	// pg_logical_emit_message; Doctor warns about any other role that can
	// execute it. Default none.
	TopicRoles []string
	// LeaderLease is how long the lease of a reader that stopped renewing
	// it lasts before a standby reader of the same slot takes the slot
	// over (lease.go); the leader renews it every third of it, and stops
	// streaming once it could not for four fifths of it. A standby takes
	// over within about LeaderLease plus a second of the leader's death.
	// At least 1s. Default DefaultLeaderLease, 5s.
	LeaderLease time.Duration
	// TxMarkers makes the reader publish, at the commit of every
	// transaction that published at least one event or custom-topic
	// message, one transaction marker on stream.TransactionSubject: the
	// transaction's xid, commit LSN and time, and its events counted per
	// table and topic (see MarkerBody). A consumer of a table's events
	// learns from it where the transaction's events end. Default false: it
	// adds a message per transaction, nearly doubling what the stream
	// stores for single-row transactions.
	TxMarkers bool
	// OldRows are the tables whose update and delete events carry the
	// complete old row, and whose updates carry the values PostgreSQL left
	// out as unchanged TOAST, wherever the row state knows the row's
	// previous version (oldrows.go): "schema.table" and "schema.*"
	// patterns, or "*". Only tables whose row state is kept, with a key.
	// Requires RowState. Default none.
	OldRows []string
	// OldRowsCacheBytes bounds the memory of the versions the reader keeps
	// until the row state has applied them; when it is full the reader
	// waits for the state. Default DefaultOldRowsCacheBytes, 64 MiB.
	OldRowsCacheBytes int
	// RowState is the row state kept beside the reader, of the event
	// stream Stream, in "<Stream>_ROWS" (internal/rowstate); required
	// with OldRows.
	RowState RowState
	// SettingName names a Config field ("Slot") the way its user sets it,
	// for messages and advice: the command line passes its environment
	// variables. Default (nil): the field's own name.
	SettingName func(field string) string
}

// withDefaults returns c with every zero optional field set to its default,
// or every problem found at once.
func (c Config) withDefaults() (Config, error) {
	if c.Publication == "" {
		c.Publication = "tablecast"
	}
	if c.Slot == "" {
		c.Slot = "tablecast"
	}
	if c.Snapshot == "" {
		c.Snapshot = SnapshotInitial
	}
	if c.Stream == "" {
		c.Stream = "TABLECAST"
	}
	if len(c.Tables) == 0 {
		c.Tables = []string{"*"}
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = 10 * time.Second
	}
	if c.RetryMin <= 0 {
		c.RetryMin = 500 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 8192
	}
	if c.StallAfter <= 0 {
		c.StallAfter = 60 * time.Second
	}
	if c.StallLagBytes <= 0 {
		c.StallLagBytes = 16 << 20
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 10 * time.Second
	}
	if c.WatchInterval <= 0 {
		c.WatchInterval = 5 * time.Second
	}
	if c.MaxEventBytes <= 0 {
		c.MaxEventBytes = DefaultMaxEventBytes
	}
	if c.PayloadBucket == "" {
		c.PayloadBucket = stream.DefaultPayloadBucket
	}
	if c.CatalogInterval <= 0 {
		c.CatalogInterval = 2 * time.Second
	}
	if c.LeaderLease == 0 {
		c.LeaderLease = DefaultLeaderLease
	}
	if c.OldRowsCacheBytes <= 0 {
		c.OldRowsCacheBytes = DefaultOldRowsCacheBytes
	}

	var errs []error
	if c.DatabaseURL == "" {
		errs = append(errs, fieldErrorf("DatabaseURL", "is empty: set it to a PostgreSQL connection string"))
	}
	errs = append(errs, c.checkSettings()...)
	if len(c.OldRows) > 0 && c.RowState == nil {
		errs = append(errs, fieldErrorf("OldRows", "needs the row state, of which there is none"))
	}
	return c, errors.Join(errs...)
}

// Check returns every problem New would find in c's settings without
// connecting anywhere (a slot name PostgreSQL refuses, a table name that
// is not schema.table, an unknown snapshot mode…), at once, each a
// *ConfigError naming its field; it ignores what is missing (DatabaseURL,
// RowState). A program checks them with the rest of its configuration,
// before it starts anything that New's refusal would only stop again.
func (c Config) Check() error {
	c, _ = c.withDefaults()
	return errors.Join(c.checkSettings()...)
}

// checkSettings is every problem of c's settings themselves, c's defaults
// applied.
func (c Config) checkSettings() []error {
	var errs []error
	if !validIdent(c.Slot) {
		errs = append(errs, fieldErrorf("Slot", "%q: a slot name is 1-63 characters of a-z, 0-9 and _", c.Slot))
	}
	if len(c.Publication) > 63 {
		errs = append(errs, fieldErrorf("Publication", "%q: longer than 63 bytes", c.Publication))
	}
	for _, t := range c.Tables {
		if t == "*" {
			if len(c.Tables) > 1 {
				errs = append(errs, fieldErrorf("Tables", `"*" cannot be combined with table names`))
			}
			continue
		}
		if _, _, err := schema.ParseTableName(t); err != nil {
			errs = append(errs, fieldErrorf("Tables", "%v", err))
		}
	}
	if _, err := rowstate.ParsePatterns(c.OldRows); err != nil {
		errs = append(errs, fieldErrorf("OldRows", "%v", err))
	}
	if c.Snapshot != SnapshotInitial && c.Snapshot != SnapshotNever {
		errs = append(errs, fieldErrorf("Snapshot", "%q: want initial or never", c.Snapshot))
	}
	if c.LeaderLease < time.Second {
		errs = append(errs, fieldErrorf("LeaderLease", "%s: must be at least 1s (a shorter lease is lost to any pause of NATS)", c.LeaderLease))
	}
	if c.RetryMin > c.RetryMax {
		errs = append(errs, fmt.Errorf("retry backoff: minimum %s above maximum %s", c.RetryMin, c.RetryMax))
	}
	return errs
}

// validIdent reports whether s is a valid replication slot name: PostgreSQL
// allows lower-case letters, digits and underscores, at most 63 bytes.
func validIdent(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_') {
			return false
		}
	}
	return true
}

// setting names a Config field for messages and advice (SettingName).
func (c Config) setting(field string) string {
	if c.SettingName != nil {
		if name := c.SettingName(field); name != "" {
			return name
		}
	}
	return field
}
