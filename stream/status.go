package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StateBucket is the key-value bucket of the readers' bookkeeping: snapshot
// markers, position records, and each reader's status record.
const StateBucket = "TABLECAST_STATE"

// statusKeyPrefix starts the key of every reader's status record.
const statusKeyPrefix = "status."

// ReaderStatusKey is the key of the status record of the reader of slot in
// database db: "status.<db>.<slot>", escaped as SchemaKey escapes.
func ReaderStatusKey(db, slot string) string {
	return statusKeyPrefix + kvKey(db, slot)
}

// ReaderStatus is the small record a reader writes to StateBucket each time
// it reads its slot's figures from PostgreSQL, so that gateways that run
// apart from it can show them. It holds nothing of the rows.
type ReaderStatus struct {
	Database string `json:"database"`
	Slot     string `json:"slot"`
	// Stream is the stream the reader publishes into, Cluster the system
	// identifier of the PostgreSQL it reads ("" until it has connected;
	// both absent from records of versions before them).
	Stream  string `json:"stream,omitempty"`
	Cluster string `json:"cluster,omitempty"`
	// Streaming: a replication session is streaming. Healthy and Reasons
	// are those of the reader's /healthz.
	Streaming bool     `json:"streaming"`
	Healthy   bool     `json:"healthy"`
	Reasons   []string `json:"reasons,omitempty"`
	AckedLSN  string   `json:"acked_lsn"`
	// LagBytes is the WAL between PostgreSQL's current position and the
	// slot's confirmed one; RetainedWALBytes what PostgreSQL keeps for the
	// slot (from its restart_lsn); SafeWALSizeBytes what may still be
	// written before PostgreSQL invalidates the slot, -1 for no limit;
	// WALStatus is pg_replication_slots.wal_status ("" when unknown).
	LagBytes         int64  `json:"lag_bytes"`
	RetainedWALBytes int64  `json:"retained_wal_bytes"`
	SafeWALSizeBytes int64  `json:"safe_wal_size_bytes"`
	WALStatus        string `json:"wal_status"`
	// Tables are the events published per table since the reader started,
	// and their rate over the last interval, by "schema.table" with a part
	// that holds a dot or a quote double-quoted (schema.FormatTableName).
	Tables map[string]TableCount `json:"tables"`
	// Leader is the reader that wrote the record, the slot's leader among
	// the readers sharing it (see cdc's lease); nil from a reader without
	// a lease.
	Leader *LeaderInfo `json:"leader,omitempty"`
	// Started is when the reader started, Updated when it wrote the record;
	// Interval is how often it writes it.
	Started  time.Time     `json:"started"`
	Updated  time.Time     `json:"updated"`
	Interval time.Duration `json:"interval_ns"`
}

// LeaderInfo says which reader process leads a slot: its host and process
// id, and since when it holds the slot's lease.
type LeaderInfo struct {
	Host  string    `json:"host"`
	PID   int       `json:"pid"`
	Since time.Time `json:"since"`
}

// TableCount is a table's events in a ReaderStatus.
type TableCount struct {
	Events int64   `json:"events"`
	Rate   float64 `json:"rate"` // events a second over the last interval
}

// WriteReaderStatus stores st under its key in kv (StateBucket).
func WriteReaderStatus(ctx context.Context, kv jetstream.KeyValue, st *ReaderStatus) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode reader status: %w", err)
	}
	if _, err := kv.Put(ctx, ReaderStatusKey(st.Database, st.Slot), b); err != nil {
		return fmt.Errorf("write reader status of slot %s: %w", st.Slot, err)
	}
	return nil
}

// ReadReaderStatuses returns the status record of every reader that wrote
// one into this NATS. found is false when StateBucket does not exist (no
// reader has run here, or the caller may not see it). A record that does not
// decode is skipped.
func ReadReaderStatuses(ctx context.Context, js jetstream.JetStream) (statuses []ReaderStatus, found bool, err error) {
	kv, err := js.KeyValue(ctx, StateBucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("open bucket %s: %w", StateBucket, err)
	}
	w, err := WatchKV(ctx, js, kv, statusKeyPrefix+">", true)
	if err != nil {
		return nil, true, fmt.Errorf("read reader statuses: %w", err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil, true, fmt.Errorf("read reader statuses: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, true, errors.New("read reader statuses: the watch ended")
			}
			if e == nil {
				return statuses, true, nil // every stored record has come
			}
			var st ReaderStatus
			if json.Unmarshal(e.Value(), &st) == nil {
				statuses = append(statuses, st)
			}
		}
	}
}
