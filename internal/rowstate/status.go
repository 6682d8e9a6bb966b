package rowstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// TableStatus is the marker of a table in the rows stream
// (TableMarkerSubject), written when the table is truncated.
type TableStatus struct {
	// Truncated is the event sequence of the table's last truncate: every
	// row before it is gone.
	Truncated uint64 `json:"truncated,omitempty"`
}

// ReadTableStatus reads a table's marker from the rows stream; the zero
// TableStatus when it has none.
func ReadTableStatus(ctx context.Context, rows jetstream.Stream, prefix, db, schemaName, table string) (TableStatus, error) {
	var st TableStatus
	msg, err := rows.GetLastMsgForSubject(ctx, TableMarkerSubject(prefix, db, schemaName, table))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return st, nil
	case err != nil:
		return st, fmt.Errorf("read the row state's marker of %s.%s: %w", schemaName, table, err)
	}
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		return st, fmt.Errorf("malformed row state marker of %s.%s: %q", schemaName, table, msg.Data)
	}
	return st, nil
}

// DBMarker is how far the state of a database is applied.
type DBMarker struct {
	// Applied: every event of the database up to it is in the rows stream.
	Applied uint64
	// Start is the event sequence the state was built from: events up to
	// it were gone from the event stream when the state was first built.
	Start uint64
	// AppliedID is the event id of the event at Applied; "" when not
	// recorded.
	AppliedID string
	// At is the marker's own position in the rows stream.
	At uint64
}

// ErrNoState: no maintainer has written the state of the database.
var ErrNoState = errors.New("no row state for the database")

// ReadDBMarker reads the marker of database db; ErrNoState when there is
// none.
func ReadDBMarker(ctx context.Context, rows jetstream.Stream, prefix, db string) (DBMarker, error) {
	msg, err := rows.GetLastMsgForSubject(ctx, DBMarkerSubject(prefix, db))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return DBMarker{}, ErrNoState
	case err != nil:
		return DBMarker{}, fmt.Errorf("read the row state's position of database %s: %w", db, err)
	}
	return DBMarker{Applied: parseUint(msg.Header.Get(HeaderSeq)), Start: parseUint(msg.Header.Get(HeaderStart)),
		AppliedID: msg.Header.Get(HeaderAppliedID), At: msg.Sequence}, nil
}
