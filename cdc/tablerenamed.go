package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// A published table that is renamed stays in the publication (which holds
// tables by OID, or all of them), and pgoutput streams its changes under
// the new name from then on. But what the row state, the views and any
// other copy hold under the old name stays there, the rows of no table;
// and the new name holds only the rows changed since the rename, or worse,
// those of a table of that name before (two tables swapping names).
//
// So pubWatch follows the name of every published table by OID (under a
// publication it manages or not: it alters nothing for this), and keeps
// the names in the state bucket, so that a rename made while no reader ran
// is seen too. On a rename it announces, as for a table added
// (tableadded.go) and in one transaction, a truncate, cause
// "table_renamed", of each old name and each new name; then it takes the
// catch-up snapshot of the new name, which sends the table's rows as op
// read. Unlike an addition's, the truncates do not wait for the schema
// registry to know the name: changes written under the new name before
// pubWatch saw the rename (in the rename's own transaction, say) may not
// be registered yet, and the truncate must follow them. A table without a
// primary key has no catch-up: its new name gets no truncate (a copy
// emptied would stay empty), its old name does.

// publishedName is a published table's name, as kept by OID, with its
// event key (keychanged.go; nil in what a version before kept).
type publishedName struct {
	Schema string  `json:"schema"`
	Name   string  `json:"name"`
	Key    *keySig `json:"key,omitempty"`
}

// samePublished reports whether a and b are kept alike.
func samePublished(a, b publishedName) bool {
	return a.Schema == b.Schema && a.Name == b.Name && (a.Key == nil) == (b.Key == nil) && sameKey(a.Key, b.Key)
}

// publishedNamesKey is the state key of the names this reader's pubWatch
// last saw published.
func (r *Reader) publishedNamesKey() string {
	return "names." + stream.SchemaKey(r.db, r.cfg.Slot, "published")
}

// loadPublishedNames reads the names kept, by OID: none when there are
// none, or they cannot be read (logged: renames made while no reader ran
// then go unseen).
func (r *Reader) loadPublishedNames(ctx context.Context) (map[uint32]publishedName, error) {
	out := map[uint32]publishedName{}
	e, err := r.state.Get(ctx, r.publishedNamesKey())
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the names of the published tables: %w", err)
	}
	var stored map[string]publishedName
	if err := json.Unmarshal(e.Value(), &stored); err != nil {
		r.log.Warn("the kept names of the published tables are unreadable: renames made while no reader ran are not followed", "key", r.publishedNamesKey(), "err", err)
		return out, nil
	}
	for k, n := range stored {
		oid, err := strconv.ParseUint(k, 10, 32)
		if err != nil || n.Schema == "" || n.Name == "" {
			continue
		}
		out[uint32(oid)] = n
	}
	return out, nil
}

// storePublishedNames keeps names for the next round, and the next reader.
func (r *Reader) storePublishedNames(ctx context.Context, names map[uint32]publishedName) error {
	stored := make(map[string]publishedName, len(names))
	for oid, n := range names {
		stored[strconv.FormatUint(uint64(oid), 10)] = n
	}
	b, _ := json.Marshal(stored)
	if _, err := r.state.Put(ctx, r.publishedNamesKey(), b); err != nil {
		return fmt.Errorf("keep the names of the published tables: %w", err)
	}
	return nil
}

// rename is one table's, seen by pubWatch.
type rename struct {
	from    publishedName
	to      tableState
	dropped bool // from the publication, at this round
}

// followRenames compares the names of the tables published at this round
// (by OID) with those kept, and announces the renames. A table this round
// dropped from the publication (renamed to a name not configured, say)
// has only its old name truncated. A rename whose announcement fails is
// announced again at the next round (keepNames is not reached).
func (w *pubWatch) followRenames(ctx context.Context, c *pgx.Conn, published map[uint32]tableState, dropped map[uint32]bool) error {
	if w.names == nil {
		names, err := w.r.loadPublishedNames(ctx)
		if err != nil {
			return err
		}
		w.names, w.kept = names, maps.Clone(names)
	}
	if err := w.followDrops(ctx, c, published); err != nil {
		return err
	}
	var renamed []rename
	for _, oid := range slices.Sorted(maps.Keys(published)) {
		t := published[oid]
		if was, ok := w.names[oid]; ok && (was.Schema != t.schema || was.Name != t.name) {
			renamed = append(renamed, rename{from: was, to: t, dropped: dropped[oid]})
		}
	}
	if len(renamed) > 0 {
		if err := w.announceRenames(ctx, c, renamed); err != nil {
			return err
		}
	}
	// Announced: not again, should the rest of the round fail before
	// keepNames. A table renamed has its rows sent again under its new
	// name already: its key, changed or not, is followed from here on.
	skip := maps.Clone(dropped)
	if skip == nil {
		skip = map[uint32]bool{}
	}
	for _, rn := range renamed {
		w.names[rn.to.oid] = publishedName{Schema: rn.to.schema, Name: rn.to.name, Key: rn.to.evKey}
		skip[rn.to.oid] = true
	}
	return w.followKeys(ctx, c, published, skip)
}

// keepNames keeps the names of the tables published once the round is
// done: those published at its start but the ones it dropped, and the
// ones it added. A table added and renamed before the next round is
// followed so.
func (w *pubWatch) keepNames(ctx context.Context, published map[uint32]tableState, dropped map[uint32]bool, added []tableState) {
	names := make(map[uint32]publishedName, len(published)+len(added))
	for oid, t := range published {
		if !dropped[oid] {
			names[oid] = publishedName{Schema: t.schema, Name: t.name, Key: t.evKey}
		}
	}
	for _, t := range added {
		names[t.oid] = publishedName{Schema: t.schema, Name: t.name, Key: t.evKey}
	}
	w.names = names
	if maps.EqualFunc(names, w.kept, samePublished) {
		return
	}
	if err := w.r.storePublishedNames(ctx, names); err != nil {
		// Renames are followed within this run all the same; kept at a
		// later round.
		if !w.keepErr {
			w.r.log.Warn("cannot keep the names of the published tables: a rename made while no reader runs may go unseen", "err", err)
			w.keepErr = true
		}
		return
	}
	// A copy: followRenames and followDrops change w.names in place, and
	// what is kept must not change with it (a rename or a drop would then
	// look kept already, and never be).
	w.kept, w.keepErr = maps.Clone(names), false
}

// announceRenames writes, in one transaction, the messages of the
// truncates of the renamed tables' old and new names, then takes the
// catch-up snapshots of the new names. Each name is truncated once: in a
// swap, one table's old name is the other's new one.
func (w *pubWatch) announceRenames(ctx context.Context, c *pgx.Conn, renamed []rename) error {
	var truncates []truncateOf
	seen := map[string]bool{}
	addTruncate := func(schemaName, name string, oid uint32) {
		if k := tableKey(schemaName, name); !seen[k] {
			seen[k] = true
			truncates = append(truncates, truncateOf{schemaName, name, oid})
		}
	}
	var catchUps []tableState
	for _, rn := range renamed {
		addTruncate(rn.from.Schema, rn.from.Name, rn.to.oid)
		if !rn.to.hasPK || rn.dropped {
			continue
		}
		addTruncate(rn.to.schema, rn.to.name, rn.to.oid)
		catchUps = append(catchUps, rn.to)
	}
	denied, err := w.announceTruncates(ctx, c, schema.CauseTableRenamed, truncates, catchUps)
	switch {
	case denied:
		// The catch-ups still send the tables' rows under their new
		// names.
		w.r.log.Warn("tables renamed without the truncates that clear the rows held under their old names (the role may not execute pg_logical_emit_message): the row state and views keep them",
			"tables", renamedList(renamed))
	case err != nil:
		return fmt.Errorf("announce the renaming of %s: %w", renamedList(renamed), err)
	}
	for _, rn := range renamed {
		switch {
		case denied:
			// Said above.
		case rn.dropped:
			w.r.log.Info("table renamed, and dropped from the publication: the rows held under its old name are truncated",
				"from", rn.from.Schema+"."+rn.from.Name, "to", rn.to.qualified())
		case rn.to.hasPK:
			w.r.log.Info("table renamed: the rows held under its old name are truncated, and its rows are sent again under its new name as op read",
				"from", rn.from.Schema+"."+rn.from.Name, "to", rn.to.qualified())
		default:
			w.r.log.Warn("table renamed, without a primary key: the rows held under its old name are truncated; its new name holds only the rows changed since (a table without a key has no catch-up)",
				"from", rn.from.Schema+"."+rn.from.Name, "to", rn.to.qualified())
		}
	}
	return nil
}

// truncateOf is a truncate pubWatch announces: of the name schema.name,
// on behalf of the table of OID oid.
type truncateOf struct {
	schema, name string
	oid          uint32
}

// announceTruncates records the catch-up snapshots of tables catchUps,
// writes in one transaction the messages of truncates (with cause), and
// then queues the catch-ups. The catch-ups are recorded before the
// messages, so that a crash in between does not lose them; a failure
// forgets them. When the role may not write the messages (denied), the
// catch-ups are queued all the same, and the caller says what that
// leaves.
func (w *pubWatch) announceTruncates(ctx context.Context, c *pgx.Conn, cause string, truncates []truncateOf, catchUps []tableState) (denied bool, err error) {
	var reqs []snapshotRequest
	forget := func() {
		for _, req := range reqs {
			w.r.forgetCatchUp(ctx, req)
		}
	}
	for _, t := range catchUps {
		req := snapshotRequest{id: randomID(), schema: t.schema, name: t.name, table: t.qualified(), catchUp: true, oid: t.oid}
		if req.stateKey, err = w.r.recordCatchUp(ctx, req); err != nil {
			forget()
			return false, err
		}
		reqs = append(reqs, req)
	}
	var msgs [][]byte
	for _, t := range truncates {
		m, err := w.r.recordTableAdded(ctx, t.schema, t.name, t.oid, cause)
		if err != nil {
			forget()
			return false, err
		}
		msgs = append(msgs, m)
	}
	if len(msgs) > 0 {
		args := make([][]any, len(msgs))
		for i, m := range msgs {
			args[i] = []any{tableAddedPrefix, string(m)}
		}
		denied, err = emitTableMessages(ctx, c, `SELECT pg_logical_emit_message(true, $1, $2)`, args)
		if err != nil && !denied {
			forget()
			return false, err
		}
	}
	for _, req := range reqs {
		_, _, _ = w.r.snaps.enqueue(req)
	}
	return denied, nil
}

func renamedList(renamed []rename) []string {
	var out []string
	for _, rn := range renamed {
		out = append(out, rn.from.Schema+"."+rn.from.Name+" → "+rn.to.qualified())
	}
	return out
}
