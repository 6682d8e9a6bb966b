package rowstate

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"

	"github.com/tablecast/tablecast/stream"
)

// Headers of the state's messages.
const (
	// HeaderSeq is the event stream sequence a message reflects: for a
	// row, the change that made the row what the message holds; for a
	// database's marker, the last event of the database applied.
	HeaderSeq = "Tablecast-Seq"
	// HeaderDeleted marks a tombstone: the row was deleted by the change
	// of HeaderSeq. A tombstone expires after TombstoneTTL.
	HeaderDeleted = "Tablecast-Deleted"
	// HeaderDisplaced counts, on a row, the other rows that held its key
	// when it moved onto it and have not moved off yet: under a deferrable
	// key, one statement moves rows onto keys others still hold (a swap, a
	// renumbering), and the key's uniqueness holds again at commit. The
	// move off of such a key leaves the row that moved on.
	HeaderDisplaced = "Tablecast-Displaced"
	// HeaderLSN is, on a row written by a create or an update, the commit
	// LSN of its transaction (the event's lsn): a later change of the same
	// transaction knows the row was written by it (under a deferrable key,
	// a row inserted onto a key another row still held).
	HeaderLSN = "Tablecast-Lsn"
	// HeaderStart is the event sequence the state was built from (0: the
	// stream's start), on the database's marker.
	HeaderStart = "Tablecast-Start"
	// HeaderAppliedID is the event id of the event at HeaderSeq, on the
	// database's marker: a reader compares the ids of its own events with
	// it, since it learns their ids, not their sequences, as it publishes.
	HeaderAppliedID = "Tablecast-Applied-Id"
)

// RowsStreamName is the stream of the rows, beside the event stream named
// events: "<events>_ROWS".
func RowsStreamName(events string) string { return stream.RowsStreamName(events) }

// RowsSubjects is what the rows stream holds: "<prefix>_rows.>".
func RowsSubjects(prefix string) string { return prefix + "_rows.>" }

func appendTable(dst []byte, db, schemaName, table string) []byte {
	dst = stream.AppendToken(dst, db)
	dst = append(dst, '.')
	dst = stream.AppendToken(dst, schemaName)
	dst = append(dst, '.')
	return stream.AppendToken(dst, table)
}

// tableRowsBase is "<prefix>_rows.<db>.<schema>.<table>".
func tableRowsBase(prefix, db, schemaName, table string) string {
	b := append([]byte(prefix), "_rows."...)
	return string(appendTable(b, db, schemaName, table))
}

// RowSubject is the subject of one row: "<prefix>_rows.<db>.<schema>.<table>.r.<key token>"
// (KeyToken).
func RowSubject(prefix, db, schemaName, table, token string) string {
	return tableRowsBase(prefix, db, schemaName, table) + ".r." + token
}

// TableRowFilter matches every row of a table, not its marker:
// "<prefix>_rows.<db>.<schema>.<table>.r.>".
func TableRowFilter(prefix, db, schemaName, table string) string {
	return tableRowsBase(prefix, db, schemaName, table) + ".r.>"
}

// TableMarkerSubject holds a table's status (TableStatus):
// "<prefix>_rows.<db>.<schema>.<table>.t".
func TableMarkerSubject(prefix, db, schemaName, table string) string {
	return tableRowsBase(prefix, db, schemaName, table) + ".t"
}

// DBMarkerSubject holds how far the state of database db is applied:
// "<prefix>_rows.<db>._applied" (a database's tables have longer subjects).
func DBMarkerSubject(prefix, db string) string {
	b := append([]byte(prefix), "_rows."...)
	b = stream.AppendToken(b, db)
	return string(append(b, "._applied"...))
}

// DBBatchEndSubject is where the maintainer of database db ends its fast
// batches of rows: "<prefix>_rows.<db>._batch". The rows stream captures it
// but never stores what is sent there (the end of a batch carries no
// message of its own).
func DBBatchEndSubject(prefix, db string) string {
	b := append([]byte(prefix), "_rows."...)
	b = stream.AppendToken(b, db)
	return string(append(b, "._batch"...))
}

// DBFilter matches every message of database db's state.
func DBFilter(prefix, db string) string {
	b := append([]byte(prefix), "_rows."...)
	b = stream.AppendToken(b, db)
	return string(append(b, ".>"...))
}

// maxPlainKey bounds the keys written into a subject as they are; a longer
// one is written as its SHA-256. NATS reads a subject within a protocol
// line (4 KiB by default), and a short subject keeps the server's subject
// index small.
const maxPlainKey = 96

// KeyToken is the subject token of a row's key, given the key as the
// reader writes it (the event's "key" object, which it always writes the
// same way for the same row): "k" and the key's bytes in base64url, or, for
// a key longer than maxPlainKey bytes, "h" and the hex SHA-256 of them.
func KeyToken(key []byte) string {
	if len(key) <= maxPlainKey {
		return "k" + base64.RawURLEncoding.EncodeToString(key)
	}
	sum := sha256.Sum256(key)
	return "h" + hex.EncodeToString(sum[:])
}

// parseUint reads a decimal header value; 0 when absent or malformed.
func parseUint(s string) uint64 {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// TableRowsFilter matches every row of a table and its marker:
// "<prefix>_rows.<db>.<schema>.<table>.>".
func TableRowsFilter(prefix, db, schemaName, table string) string {
	return tableRowsBase(prefix, db, schemaName, table) + ".>"
}
