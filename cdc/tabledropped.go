package cdc

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/schema"
)

// A published table that is dropped leaves nothing in the stream: pgoutput
// has no message for a DROP TABLE. What the row state, the views and any
// other copy hold under its name would stay there, the rows of no table,
// until a table of that name is added.
//
// So pubWatch, which keeps the names of the published tables by OID
// (tablerenamed.go), announces the truncate of a kept name, cause
// "table_dropped", once its OID is gone from the catalog and no published
// table holds the name. A table only left out of the publication (by a
// DBA, or by tablecast for want of a key) still exists and gets none: its
// copies are merely no longer kept up.
//
// Under a publication FOR ALL TABLES, a table created under the name
// streams at once, perhaps before the round that sees the drop. Two guards
// keep the truncate from wiping its rows: the message is written only if,
// in its own statement, no table of the name exists; and the reader does
// not send the truncate when the last table it saw described under the
// name is another one (a table created and written to between that
// statement and its commit).

// droppedName is a kept name whose table is gone.
type droppedName struct {
	oid  uint32
	name publishedName
}

// followDrops announces the truncates of the kept names whose tables were
// dropped. A failed announcement is tried again at the next round.
func (w *pubWatch) followDrops(ctx context.Context, c *pgx.Conn, published map[uint32]tableState) error {
	var oids []uint32
	var schemas, names []string
	for _, oid := range slices.Sorted(maps.Keys(w.names)) {
		if _, ok := published[oid]; !ok {
			n := w.names[oid]
			oids, schemas, names = append(oids, oid), append(schemas, n.Schema), append(names, n.Name)
		}
	}
	if len(oids) == 0 {
		return nil
	}
	// Gone: no relation of the OID, and no table of the name (one created
	// again under it, published or not yet, is added, not dropped).
	rows, err := c.Query(ctx, `SELECT k.oid::int8 FROM unnest($1::oid[], $2::text[], $3::text[]) AS k(oid, nsp, rel)
		WHERE NOT EXISTS (SELECT FROM pg_class WHERE oid = k.oid)
		  AND NOT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		                  WHERE n.nspname = k.nsp AND c.relname = k.rel AND c.relkind IN ('r', 'p'))`, oids, schemas, names)
	if err != nil {
		return fmt.Errorf("look up the tables no longer published: %w", err)
	}
	goneOIDs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (uint32, error) {
		var oid int64
		err := r.Scan(&oid)
		return uint32(oid), err
	})
	if err != nil {
		return fmt.Errorf("look up the tables no longer published: %w", err)
	}
	if len(goneOIDs) == 0 {
		return nil
	}
	slices.Sort(goneOIDs)
	gone := make([]droppedName, 0, len(goneOIDs))
	for _, oid := range goneOIDs {
		gone = append(gone, droppedName{oid: oid, name: w.names[oid]})
	}
	if err := w.announceDrops(ctx, c, gone); err != nil {
		return err
	}
	// Announced: not again, should the rest of the round fail before
	// keepNames.
	for _, d := range gone {
		delete(w.names, d.oid)
	}
	return nil
}

// announceDrops writes, in one transaction, the messages of the truncates
// of the dropped tables' names, each only if no table holds the name then.
func (w *pubWatch) announceDrops(ctx context.Context, c *pgx.Conn, gone []droppedName) error {
	msgs := make([][]byte, 0, len(gone))
	for _, d := range gone {
		m, err := w.r.recordTableAdded(ctx, d.name.Schema, d.name.Name, d.oid, schema.CauseTableDropped)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	names := make([]string, 0, len(gone))
	for _, d := range gone {
		names = append(names, d.name.Schema+"."+d.name.Name)
	}
	args := make([][]any, len(msgs))
	for i, m := range msgs {
		args[i] = []any{tableAddedPrefix, string(m), gone[i].name.Schema, gone[i].name.Name}
	}
	denied, err := emitTableMessages(ctx, c, `SELECT pg_logical_emit_message(true, $1, $2)
		WHERE NOT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		                  WHERE n.nspname = $3 AND c.relname = $4 AND c.relkind IN ('r', 'p'))`, args)
	switch {
	case denied:
		w.r.log.Warn("tables dropped without the truncates that clear the rows held under their names (the role may not execute pg_logical_emit_message): the row state and views keep them",
			"tables", names)
		return nil
	case err != nil:
		return fmt.Errorf("announce the drop of %v: %w", names, err)
	}
	w.r.log.Info("tables dropped: the rows held under their names are truncated", "tables", names)
	return nil
}

// emitTableMessages writes pubWatch's messages of a round (renames' or
// drops') in one transaction, running stmt once with each of args.
// denied reports that the role may not execute pg_logical_emit_message
// (the connection still up): the caller warns and goes on without them.
func emitTableMessages(ctx context.Context, c *pgx.Conn, stmt string, args [][]any) (denied bool, err error) {
	err = pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		for _, a := range args {
			if _, err := tx.Exec(ctx, stmt, a...); err != nil {
				denied = isPrivilegeError(err)
				return err
			}
		}
		return nil
	})
	return denied && !c.IsClosed() && ctx.Err() == nil, err
}
