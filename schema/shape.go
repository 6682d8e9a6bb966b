package schema

// Shape is a table's shape as the schema registry holds it: what consumers
// (the gateway, backend services) need to interpret its events.
type Shape struct {
	DB     string `json:"db"`
	Schema string `json:"schema"`
	Table  string `json:"table"`
	// Version counts the shape's changes, from 1. It changes when a column
	// is added, dropped, renamed or changes type, or the key or the
	// replica identity or OldRows changes.
	Version int `json:"version"`
	// LSN is the commit LSN of the first transaction seen with this shape
	// (or the position streaming started from, for the first version).
	LSN             string `json:"lsn"`
	ReplicaIdentity string `json:"replica_identity"` // default, full, index, nothing
	// OldRows: the reader completes the table's updates and deletes with
	// the whole previous row from the row state (cdc.Config.OldRows)
	// wherever the state knows it, whatever the replica identity.
	OldRows bool          `json:"old_rows,omitempty"`
	Columns []ShapeColumn `json:"columns"`
}

// ShapeColumn is one column of a Shape.
type ShapeColumn struct {
	Name    string `json:"name"`
	Type    string `json:"type"` // PostgreSQL's type name; empty if unknown
	TypeOID uint32 `json:"type_oid"`
	// ValueOID is the built-in type whose JSON rules the values follow (a
	// domain's base type, …) when it differs from TypeOID; consumers
	// compare values by it.
	ValueOID uint32 `json:"value_type_oid,omitempty"`
	// Key: part of the events' key (the primary key, or the replica
	// identity index, whatever the replica identity).
	Key bool `json:"key,omitempty"`
	// Identity: part of the replica identity, what PostgreSQL sends of an
	// old row that it does not send whole (every column under FULL).
	Identity bool `json:"identity,omitempty"`
}

// ReplicaIdentityName spells out pgoutput's replica identity byte.
func ReplicaIdentityName(b byte) string {
	switch b {
	case 'd':
		return "default"
	case 'f':
		return "full"
	case 'i':
		return "index"
	case 'n':
		return "nothing"
	}
	return string(rune(b))
}

// ShapeOf describes t. typeName names a type OID ("" if unknown).
func ShapeOf(db string, t *Table, typeName func(uint32) string) Shape {
	s := Shape{DB: db, Schema: t.Schema, Table: t.Name, ReplicaIdentity: ReplicaIdentityName(t.ReplicaIdentity),
		Columns: make([]ShapeColumn, len(t.Columns))}
	for i, c := range t.Columns {
		s.Columns[i] = ShapeColumn{Name: c.Name, TypeOID: c.TypeOID, ValueOID: c.ValueOID, Key: c.Key, Identity: c.Identity}
		if typeName != nil {
			s.Columns[i].Type = typeName(c.TypeOID)
		}
	}
	return s
}

// SameAs reports whether s and o describe the same shape, whatever their
// versions and LSNs.
func (s Shape) SameAs(o Shape) bool {
	if s.DB != o.DB || s.Schema != o.Schema || s.Table != o.Table || s.ReplicaIdentity != o.ReplicaIdentity || s.OldRows != o.OldRows || len(s.Columns) != len(o.Columns) {
		return false
	}
	for i := range s.Columns {
		a, b := s.Columns[i], o.Columns[i]
		if a.Name != b.Name || a.TypeOID != b.TypeOID || a.ValueOID != b.ValueOID || a.Key != b.Key || a.Identity != b.Identity {
			return false
		}
	}
	return true
}
