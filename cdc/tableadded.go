package cdc

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// A table added to a managed publication under a name the stream has
// carried before (a table dropped and created again, or one left out for a
// while and added back) starts with a truncate, cause "table_added": the
// rows the row state, the views and any other copy hold under that name are
// not the table's, and nothing PostgreSQL streams would remove them (a DROP
// TABLE is not decoded). The catch-up snapshot then sends the rows the
// table has.
//
// The truncate's place in the stream is the ALTER PUBLICATION's: pubWatch
// writes a transactional logical decoding message in the same transaction,
// so it comes after every event of the table of that name before, and
// before any of the added table's. Anyone who may execute
// pg_logical_emit_message can write a message with that prefix, so the
// message carries a random nonce that pubWatch records in the state bucket
// first, out of the database's reach, and the reader acts only on a message
// whose nonce is the recorded one.
//
// A table renamed is announced the same way (tablerenamed.go), with cause
// "table_renamed" in the message.

// tableAddedPrefix is the prefix of the message.
const tableAddedPrefix = "tablecast-table-added"

// tableAdded is the message's content, and (without Schema and Name) its
// record in the state bucket.
type tableAdded struct {
	Schema string `json:"schema,omitempty"`
	Name   string `json:"name,omitempty"`
	OID    uint32 `json:"oid"`
	Nonce  string `json:"nonce"`
	// Cause is the truncate's: "" for schema.CauseTableAdded, or
	// schema.CauseTableRenamed, CauseTableDropped or CauseKeyChanged.
	Cause string `json:"cause,omitempty"`
}

// tableAddedKey is the state key of the record for a table name, one per
// name, written again at each addition.
func (r *Reader) tableAddedKey(schemaName, name string) string {
	return "added." + stream.SchemaKey(r.db, r.cfg.Slot, schemaName+"\x00"+name)
}

// streamedBefore reports whether the stream may hold events of a table
// named schemaName.name: the schema registry has a shape for the name
// (every table streamed is registered before its first event). Without a
// registry, it may.
func (r *Reader) streamedBefore(ctx context.Context, schemaName, name string) (bool, error) {
	if r.registry == nil {
		return true, nil
	}
	_, _, found, err := r.registry.Get(ctx, stream.SchemaKey(r.db, schemaName, name))
	if err != nil {
		return false, fmt.Errorf("look up %s.%s in the schema registry: %w", schemaName, name, err)
	}
	return found, nil
}

// recordTableAdded records the nonce of the message announcing a truncate
// of the table name schemaName.name (cause "" for an addition), and returns
// the message's content.
func (r *Reader) recordTableAdded(ctx context.Context, schemaName, name string, oid uint32, cause string) ([]byte, error) {
	rec := tableAdded{OID: oid, Nonce: randomID()}
	b, _ := json.Marshal(rec)
	if _, err := r.state.Put(ctx, r.tableAddedKey(schemaName, name), b); err != nil {
		return nil, fmt.Errorf("record the truncate of %s.%s ahead of its message: %w", schemaName, name, err)
	}
	rec.Schema, rec.Name, rec.Cause = schemaName, name, cause
	msg, _ := json.Marshal(rec)
	return msg, nil
}

// tableAddedRecorded reports whether msg's nonce is the one recorded for
// its table name.
func (r *Reader) tableAddedRecorded(ctx context.Context, msg tableAdded) (bool, error) {
	e, err := r.state.Get(ctx, r.tableAddedKey(msg.Schema, msg.Name))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the record of the addition of %s.%s: %w", msg.Schema, msg.Name, err)
	}
	var rec tableAdded
	if json.Unmarshal(e.Value(), &rec) != nil {
		return false, nil
	}
	return rec.OID == msg.OID && subtle.ConstantTimeCompare([]byte(rec.Nonce), []byte(msg.Nonce)) == 1, nil
}

// handleTableAdded publishes the truncate a message of pubWatch's
// announces, in its place among the transaction's changes (the ALTER
// PUBLICATION's transaction has no other).
func (s *session) handleTableAdded(ctx context.Context, m *pglogrepl.LogicalDecodingMessage) error {
	var msg tableAdded
	// Names are at most 63 bytes (at most 6 characters each in JSON): a
	// longer message is not one of ours, and is not parsed.
	if !m.Transactional || !s.inTxn || len(m.Content) > 2048 || json.Unmarshal(m.Content, &msg) != nil || msg.Schema == "" || msg.Name == "" || msg.Nonce == "" {
		s.r.log.Warn("ignoring a table-added message tablecast did not write", "lsn", m.LSN.String())
		return nil
	}
	cause := schema.CauseTableAdded
	switch msg.Cause {
	case "":
	case schema.CauseTableRenamed, schema.CauseTableDropped, schema.CauseKeyChanged:
		cause = msg.Cause
	default:
		s.r.log.Warn("ignoring a table-added message tablecast did not write: its cause is not one of ours", "lsn", m.LSN.String())
		return nil
	}
	s.ordinal++
	if cause == schema.CauseTableDropped && s.nameHeldByAnother(msg.Schema, msg.Name, msg.OID) {
		// A table created under the name streamed before the message:
		// its rows are the name's now. (The ordinal is taken all the
		// same, so that a replay numbers the events alike.)
		s.r.log.Info("a dropped table's truncate not sent: a table created since holds its name", "table", msg.Schema+"."+msg.Name)
		return nil
	}
	rel := s.namedRelation(&schema.Table{RelationID: msg.OID, Schema: msg.Schema, Name: msg.Name})
	if s.old != nil && s.old.tables.Match(msg.Schema, msg.Name) {
		// The versions kept of the name before are not the table's: the
		// truncate ends them (its columns, and so its key, are not known
		// here, which completes would ask for).
		rel.oldRows = 1
	}
	// A replay of a truncate stored already is not checked again: the
	// record may have been written anew since, by a later addition.
	if !s.alreadyStoredQuietly(eventID{s.txn.CommitLSN, uint64(s.ordinal)}) {
		ok, err := s.r.tableAddedRecorded(ctx, msg)
		if err != nil {
			return err
		}
		if !ok {
			s.r.log.Warn("ignoring a table-added message tablecast did not write: its nonce is not the one recorded", "table", msg.Schema+"."+msg.Name, "lsn", m.LSN.String())
			return nil
		}
	}
	if len(s.windows) > 0 {
		s.noteTruncate(rel)
	}
	return s.publish(ctx, rel, &schema.Change{Op: schema.OpTruncate, Ordinal: s.ordinal, Cause: cause})
}

// nameHeldByAnother reports whether the table last described under the
// name schemaName.name in this session is not the one of OID oid.
func (s *session) nameHeldByAnother(schemaName, name string, oid uint32) bool {
	last, ok := s.nameOIDs[tableKey(schemaName, name)]
	return ok && last != oid
}
