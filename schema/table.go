package schema

import "github.com/tablecast/tablecast/internal/jsonx"

// Column is one column of a published table, as PostgreSQL describes it in a
// pgoutput Relation message.
type Column struct {
	Name    string
	TypeOID uint32
	// ValueOID is the built-in type whose JSON rules apply to the column's
	// values (the base type of a domain, text for an enum, the built-in array
	// of an array of domains…); 0 means TypeOID. The reader sets it for types
	// that are not built in.
	ValueOID uint32
	TypeMod  int32
	// Key is true for the columns of the event's key: the primary key, or
	// the replica identity index's columns, whatever the replica identity
	// (all columns only for a table with neither under REPLICA IDENTITY
	// FULL).
	Key bool
	// Identity is true for replica-identity columns as pgoutput flags them
	// (all columns under REPLICA IDENTITY FULL, none under NOTHING): what
	// PostgreSQL sends of an old row that is not sent whole.
	Identity bool
}

// Table is the shape of one published table at one point in the stream.
type Table struct {
	// RelationID is PostgreSQL's OID of the relation; stable for the table's
	// life, reused by pgoutput to refer to it in every change.
	RelationID uint32
	Schema     string
	Name       string
	// ReplicaIdentity is pgoutput's byte: 'd' default, 'f' full, 'i' index,
	// 'n' nothing.
	ReplicaIdentity byte
	Columns         []Column
	// KeyDeferrable is true when the event key is a primary key declared
	// DEFERRABLE: inside a transaction more than one row may hold it.
	KeyDeferrable bool

	cache tableCache
}

// QualifiedName returns "schema.table" without quoting, the form users write
// in TABLECAST_TABLES and subscriptions.
func (t *Table) QualifiedName() string { return t.Schema + "." + t.Name }

// encoding caches, built on first use by the single goroutine that encodes
// events of this table (the reader's); a Table handed to other goroutines
// afterwards is only read.
type tableCache struct {
	names [][]byte // `"col":` per column
	hdrDB string
	hdr   []byte // `"db":"…","schema":"…","table":"…"`
}

func (t *Table) jsonNames() [][]byte {
	if len(t.cache.names) != len(t.Columns) {
		t.cache.names = make([][]byte, len(t.Columns))
		for i := range t.Columns {
			n := jsonx.AppendString(nil, t.Columns[i].Name)
			t.cache.names[i] = append(n, ':')
		}
	}
	return t.cache.names
}

func (t *Table) header(db string) []byte {
	if t.cache.hdr == nil || t.cache.hdrDB != db {
		h := append([]byte(nil), `"db":`...)
		h = jsonx.AppendString(h, db)
		h = append(h, `,"schema":`...)
		h = jsonx.AppendString(h, t.Schema)
		h = append(h, `,"table":`...)
		h = jsonx.AppendString(h, t.Name)
		t.cache.hdr, t.cache.hdrDB = h, db
	}
	return t.cache.hdr
}
