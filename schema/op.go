package schema

// Operation names: the envelope's "op", the last token of a change subject,
// the words of a subscription's "events" and of a grant's operations.
const (
	OpCreate   = "create"
	OpUpdate   = "update"
	OpDelete   = "delete"
	OpTruncate = "truncate"
	OpRead     = "read" // a row sent by a snapshot
)

// CauseTableAdded is the "cause" of a truncate tablecast sends when it adds
// to its publication a table whose name it has streamed before (one
// dropped and created again, or left out for a while): the rows consumers
// hold under that name are not the table's, whose rows its catch-up
// snapshot sends next.
const CauseTableAdded = "table_added"

// CauseTableRenamed is the "cause" of the truncates tablecast sends when a
// table of its publication is renamed: one of the old name, whose rows
// are no table's now, and one of the new name when the table has a
// primary key, whose rows its catch-up snapshot sends next.
const CauseTableRenamed = "table_renamed"

// CauseTableDropped is the "cause" of the truncate tablecast sends when a
// table of its publication is dropped, and no table holds its name: the
// rows consumers hold under that name are no table's now.
const CauseTableDropped = "table_dropped"

// CauseKeyChanged is the "cause" of the truncate tablecast sends when the
// key of a table of its publication changes (its primary key replaced, or
// one added to a table keyed by its replica identity): the rows consumers
// hold are keyed by the old columns, and its catch-up snapshot sends them
// next under the new key.
const CauseKeyChanged = "key_changed"

// CauseSnapshotRestarted is the "cause" of the truncate tablecast sends
// before each table's rows when it takes an interrupted initial snapshot
// again: the rows consumers hold from the attempt before may include rows
// deleted since, whose deletes went with the slot dropped to start over;
// the table's rows follow.
const CauseSnapshotRestarted = "snapshot_restarted"

// OpSet is a set of operations: bit i is the i-th of create, update,
// delete, truncate, read. It is what a subscription asks for, what grants
// allow, and, one bit at a time, the kind of an event being matched.
type OpSet uint8

// The set of each operation alone, and of all five.
const (
	BitCreate OpSet = 1 << iota
	BitUpdate
	BitDelete
	BitTruncate
	BitRead

	AllOps = BitCreate | BitUpdate | BitDelete | BitTruncate | BitRead
)

// opNames are the operations in the order of their bits.
var opNames = [...]string{OpCreate, OpUpdate, OpDelete, OpTruncate, OpRead}

// OpBit returns the set of the operation op alone, and the empty set for a
// name that is not an operation.
func OpBit(op string) OpSet {
	switch op {
	case OpCreate:
		return BitCreate
	case OpUpdate:
		return BitUpdate
	case OpDelete:
		return BitDelete
	case OpTruncate:
		return BitTruncate
	case OpRead:
		return BitRead
	}
	return 0
}

// OpsOf returns the set of the named operations, names that are not
// operations ignored. nil names every operation (a subscription without
// "events" wants them all); an empty, non-nil list names none.
func OpsOf(names []string) OpSet {
	if names == nil {
		return AllOps
	}
	var s OpSet
	for _, op := range names {
		s |= OpBit(op)
	}
	return s
}

// Has reports whether the set holds op (one of OpCreate … OpRead).
func (s OpSet) Has(op string) bool {
	b := OpBit(op)
	return b != 0 && s&b != 0
}

// Names lists the operations of the set in the canonical order: create,
// update, delete, truncate, read. nil for the empty set.
func (s OpSet) Names() []string {
	var out []string
	for i, op := range opNames {
		if s&(1<<i) != 0 {
			out = append(out, op)
		}
	}
	return out
}
