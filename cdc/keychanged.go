package cdc

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/schema"
)

// A published table whose key is redefined while it stays published (its
// primary key dropped and another added, a primary key added to a table
// keyed by its replica identity index or by every column) keeps its name,
// and pgoutput streams its changes keyed by the new columns from then on.
// But the row state, the views and any other copy hold its rows under
// their old keys: an update keyed anew matches none of them (a second
// copy of the row), a delete removes none, and the copies keep rows the
// table no longer has.
//
// So pubWatch keeps each published table's event key (keys.go's eventKey)
// beside its name, and on a change announces, as for a rename
// (tablerenamed.go), a truncate of the table, cause "key_changed", then
// takes its catch-up snapshot, which sends its rows again under the new
// key as op read. The truncate follows whatever was streamed keyed anew
// before pubWatch saw the change, so that it clears those too. A table
// without a primary key has no catch-up: it gets no truncate (a copy
// emptied would stay empty), and the change is logged.

// keySig is a table's event key as pubWatch saw it: its columns, or
// every column; neither for a table without one.
type keySig struct {
	Columns []string `json:"columns,omitempty"`
	Every   bool     `json:"every,omitempty"`
}

// newKeySig returns the event key of a table with replica identity
// replident and the catalog's keys k.
func newKeySig(replident byte, k keyColumns) *keySig {
	cols, every := eventKey(replident, k)
	return &keySig{Columns: cols, Every: every}
}

// sameKey reports whether a and b are the same key; nil (a name kept by a
// version that kept no keys) is the same as any.
func sameKey(a, b *keySig) bool {
	if a == nil || b == nil {
		return true
	}
	return a.Every == b.Every && slices.Equal(a.Columns, b.Columns)
}

func (k *keySig) String() string {
	switch {
	case k == nil:
		return "unknown"
	case k.Every:
		return "every column"
	case len(k.Columns) == 0:
		return "none"
	}
	return "(" + strings.Join(k.Columns, ", ") + ")"
}

// keyChange is one table's, seen by pubWatch.
type keyChange struct {
	from *keySig
	to   tableState
}

// followKeys compares the event keys of the tables published at this
// round with those kept, and announces the changes. Tables renamed or
// dropped from the publication at this round are left out: their names
// are truncated already. A change whose announcement fails is announced
// again at the next round.
func (w *pubWatch) followKeys(ctx context.Context, c *pgx.Conn, published map[uint32]tableState, skip map[uint32]bool) error {
	var changed []keyChange
	for _, oid := range slices.Sorted(maps.Keys(published)) {
		t := published[oid]
		if was, ok := w.names[oid]; ok && !skip[oid] && !sameKey(was.Key, t.evKey) {
			changed = append(changed, keyChange{from: was.Key, to: t})
		}
	}
	if len(changed) == 0 {
		return nil
	}
	var truncates []truncateOf
	var catchUps []tableState
	for _, kc := range changed {
		if kc.to.hasPK {
			truncates = append(truncates, truncateOf{kc.to.schema, kc.to.name, kc.to.oid})
			catchUps = append(catchUps, kc.to)
		}
	}
	denied, err := w.announceTruncates(ctx, c, schema.CauseKeyChanged, truncates, catchUps)
	if err != nil {
		return fmt.Errorf("announce the new keys of %s: %w", keyChangeList(changed), err)
	}
	for _, kc := range changed {
		switch {
		case !kc.to.hasPK:
			w.r.log.Warn("table key changed, without a primary key now: the row state and views keep its rows under the old key (a table without a primary key has no catch-up; truncate the table's copies, or give it a primary key)",
				"table", kc.to.qualified(), "from", kc.from.String(), "to", kc.to.evKey.String())
		case denied:
			w.r.log.Warn("table key changed without the truncate that clears the rows held under the old key (the role may not execute pg_logical_emit_message): the row state and views keep them; its rows are sent again under the new key",
				"table", kc.to.qualified(), "from", kc.from.String(), "to", kc.to.evKey.String())
		default:
			w.r.log.Info("table key changed: the rows held under the old key are truncated, and its rows are sent again under the new key as op read",
				"table", kc.to.qualified(), "from", kc.from.String(), "to", kc.to.evKey.String())
		}
		// Announced: not again, should the rest of the round fail before
		// keepNames.
		n := w.names[kc.to.oid]
		n.Key = kc.to.evKey
		w.names[kc.to.oid] = n
	}
	return nil
}

func keyChangeList(changed []keyChange) []string {
	var out []string
	for _, kc := range changed {
		out = append(out, kc.to.qualified())
	}
	return out
}
