package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// pubWatch keeps a publication tablecast manages in step with the catalog,
// every CatalogInterval on a regular connection (an event trigger would
// need a superuser): it adds the tables that appeared or became able to
// publish their updates and deletes, each with a catch-up snapshot of the
// rows it already had, and drops at once a table that lost its key, since
// PostgreSQL refuses its writes while it is published. A DBA's publication
// it only reads, and logs the tables whose writes it breaks. Under either,
// it follows renamed tables (tablerenamed.go). Every round logs only what
// changed since the last one. Only its goroutine uses it.
type pubWatch struct {
	r      *Reader
	conn   lazyConn
	role   string
	listed map[string]bool // tableKey set of the configured tables; nil for "*"
	quoted []string        // the configured tables, quoted

	first    bool
	leftOut  map[string]leftOut       // as last logged
	broken   map[string]leftOut       // a DBA publication's tables whose writes PostgreSQL refuses, as last logged
	failures map[string]string        // by table: the last error altering the publication for it, as logged
	gone     bool                     // the publication was missing at the last round
	kind     string                   // "managed" or "unmanaged", as last logged
	names    map[uint32]publishedName // the published tables' names by OID, as last seen (tablerenamed.go); nil until read
	kept     map[uint32]publishedName // as last kept in the state bucket
	keepErr  bool                     // keeping them failed at the last round (logged)
}

func newPubWatch(r *Reader) (*pubWatch, error) {
	listed, err := listedSet(r.cfg.Tables)
	if err != nil {
		return nil, tablesErrorf("%v", err)
	}
	var quoted []string
	if listed != nil {
		for _, t := range r.cfg.Tables {
			s, n, _ := schema.ParseTableName(t)
			quoted = append(quoted, pgx.Identifier{s, n}.Sanitize())
		}
	}
	return &pubWatch{r: r, conn: lazyConn{url: r.cfg.DatabaseURL}, listed: listed, quoted: quoted, first: true,
		leftOut: map[string]leftOut{}, broken: map[string]leftOut{}, failures: map[string]string{}}, nil
}

// run does a round every CatalogInterval until ctx ends.
func (w *pubWatch) run(ctx context.Context) {
	defer w.conn.close()
	tick := time.NewTicker(w.r.cfg.CatalogInterval)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := w.round(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !failing:
			w.r.log.Warn("cannot read the catalog to keep the publication in step; retrying", "err", oneLine(err))
			failing = true
		case err == nil && failing:
			w.r.log.Info("reading the catalog again")
			failing = false
		}
	}
}

// round reads the catalog once and acts on it.
func (w *pubWatch) round(ctx context.Context) error {
	name := w.r.cfg.Publication
	var added []tableState
	err := w.conn.do(ctx, max(w.r.cfg.CatalogInterval, 10*time.Second), func(ctx context.Context, c *pgx.Conn) error {
		if w.role == "" {
			if err := c.QueryRow(ctx, `SELECT current_user::text`).Scan(&w.role); err != nil {
				return fmt.Errorf("read the current role: %w", err)
			}
		}
		pub, err := readPublication(ctx, c, name)
		if err != nil {
			return err
		}
		if !pub.exists {
			if !w.gone {
				w.r.log.Error("the publication no longer exists; nothing is streamed until it does, and before PostgreSQL 18 a change written meanwhile to a table it published stops the stream for good (README: What PostgreSQL needs)", "publication", name)
				w.gone = true
			}
			return nil
		}
		w.gone = false
		if !pub.managed {
			return w.watchUnmanaged(ctx, c, pub)
		}
		if w.kind != "managed" {
			w.kind = "managed"
			w.broken = map[string]leftOut{}
		}
		sc := scopeAll
		if w.listed != nil {
			sc = scopeListed
		}
		tables, err := readTables(ctx, c, name, sc, w.quoted)
		if err != nil {
			return err
		}
		p := planSync(name, w.role, tables, w.listed)
		if len(p.drop)+len(p.add) > 0 {
			// Never queue behind DDL holding the table: try again next round.
			if _, err := c.Exec(ctx, `SET lock_timeout = '2s'`); err != nil {
				return fmt.Errorf("set lock_timeout: %w", err)
			}
		}
		quotedPub := pgx.Identifier{name}.Sanitize()
		dropped := map[uint32]bool{}
		for _, t := range p.drop {
			if err := w.alter(ctx, c, t, "ALTER PUBLICATION "+quotedPub+" DROP TABLE ONLY "+t.quoted(), nil); errors.Is(err, errSkipped) {
				continue
			} else if err != nil {
				return err
			}
			dropped[t.oid] = true
			if lo, ok := p.leftOut[t.key()]; ok {
				w.r.log.Warn("table dropped from the publication: PostgreSQL refuses its UPDATE and DELETE while a publication publishes them; it is added again once it has a replica identity",
					"table", t.qualified(), "reason", lo.reason, "fix", lo.fix)
				w.leftOut[t.key()] = lo // logged
			} else {
				w.r.log.Info("table dropped from the publication: not among the configured tables", "table", t.qualified())
			}
		}
		// Renames before additions: a table added under a renamed table's
		// old name starts after the old name's truncate.
		published := map[uint32]tableState{}
		for _, t := range tables {
			if t.inPub {
				published[t.oid] = t
			}
		}
		if err := w.followRenames(ctx, c, published, dropped); err != nil {
			return err
		}
		for _, t := range p.add {
			ok, err := w.add(ctx, c, quotedPub, t)
			if err != nil {
				return err
			}
			if ok {
				added = append(added, t)
			}
		}
		w.keepNames(ctx, published, dropped, added)
		w.logLeftOut(p.leftOut)
		return nil
	})
	if len(added) > 0 {
		if err := w.r.registerNewTables(ctx); err != nil && ctx.Err() == nil {
			w.r.log.Warn("cannot register the added tables ahead of their first change", "err", err)
		}
	}
	w.first = false
	return err
}

// alter runs one ALTER PUBLICATION for table t. A refusal (not the owner,
// a lock timeout, a table dropped meanwhile) is logged once and tried
// again next round; a lost connection is returned. With announce, it
// writes in the same transaction the message announcing the table's
// addition (tableadded.go), with that content.
func (w *pubWatch) alter(ctx context.Context, c *pgx.Conn, t tableState, sql string, announce []byte) error {
	var err error
	if announce == nil {
		_, err = c.Exec(ctx, sql)
	} else {
		denied := false
		err = pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, tableAddedPrefix, string(announce))
			denied = isPrivilegeError(err)
			return err
		})
		if denied && !c.IsClosed() && ctx.Err() == nil {
			// Added all the same: its rows matter more than the ones
			// left under its name (on-demand snapshots need the function
			// too, which tablecast doctor checks).
			w.r.log.Warn("table added without the truncate that clears the rows of the table of that name before (the role may not execute pg_logical_emit_message): the row state and views may keep rows the table does not have",
				"table", t.qualified())
			_, err = c.Exec(ctx, sql)
		}
	}
	if err == nil {
		delete(w.failures, t.key())
		return nil
	}
	if c.IsClosed() || ctx.Err() != nil {
		return err
	}
	msg := oneLine(err)
	if w.failures[t.key()] != msg {
		w.r.log.Error("cannot alter the publication; trying again", "table", t.qualified(), "statement", sql, "err", msg)
		w.failures[t.key()] = msg
	}
	return errSkipped
}

// errSkipped is alter's refusal; the round goes on with other tables.
var errSkipped = errors.New("skipped")

// add adds t to the publication, with a catch-up snapshot of the rows it
// already has, recorded before the table is added so that a crash in
// between does not lose it. A table whose name the stream has carried
// before starts with a truncate, before its catch-up (tableadded.go). It
// reports whether the table was added (not when the ALTER was refused, to
// be tried again next round).
func (w *pubWatch) add(ctx context.Context, c *pgx.Conn, quotedPub string, t tableState) (bool, error) {
	req := snapshotRequest{id: randomID(), schema: t.schema, name: t.name, table: t.qualified(), catchUp: true, oid: t.oid}
	if t.hasPK {
		var err error
		if req.stateKey, err = w.r.recordCatchUp(ctx, req); err != nil {
			return false, err
		}
	}
	announce, err := w.announcement(ctx, t)
	if err == nil {
		err = w.alter(ctx, c, t, "ALTER PUBLICATION "+quotedPub+" ADD TABLE ONLY "+t.quoted(), announce)
	}
	if err != nil {
		if req.stateKey != "" {
			w.r.forgetCatchUp(ctx, req)
		}
		if errors.Is(err, errSkipped) {
			return false, nil
		}
		return false, err
	}
	delete(w.leftOut, t.key())
	switch {
	case t.hasPK:
		w.r.log.Info("table added to the publication; its rows are sent as op read", "table", t.qualified())
	default:
		w.r.log.Warn("table added to the publication without a primary key: its changes are streamed, its rows from before are not sent (a snapshot reads in key order)", "table", t.qualified())
	}
	if req.stateKey != "" {
		_, _, _ = w.r.snaps.enqueue(req)
	}
	return true, nil
}

// logLeftOut logs the tables newly left out, or left out for a new reason.
func (w *pubWatch) logLeftOut(now map[string]leftOut) {
	for _, k := range sortedKeys(now) {
		lo := now[k]
		if prev, ok := w.leftOut[k]; ok && prev == lo {
			continue
		}
		w.r.log.Warn("table left out of the publication", "table", lo.table, "reason", lo.reason, "fix", lo.fix)
	}
	w.leftOut = now
}

// watchUnmanaged logs, at the first round and when they change, the
// tables of a DBA's publication on which PostgreSQL refuses UPDATE and
// DELETE: tablecast may not alter it, but must say so.
func (w *pubWatch) watchUnmanaged(ctx context.Context, c *pgx.Conn, pub pubInfo) error {
	name := w.r.cfg.Publication
	if w.kind != "unmanaged" {
		w.kind = "unmanaged"
		w.leftOut = map[string]leftOut{}
	}
	now := map[string]leftOut{}
	tables, err := readTables(ctx, c, name, scopePublished, nil)
	if err != nil {
		return err
	}
	published := map[uint32]tableState{}
	for _, t := range tables {
		published[t.oid] = t
		if !pub.update && !pub.delete {
			continue
		}
		if what, fix := writeGap(t); what != "" {
			now[t.key()] = leftOut{table: t.qualified(), reason: what, fix: fix}
		}
	}
	if pub.update || pub.delete {
		// A column list or row filter that does not cover the replica
		// identity breaks the writes just the same.
		covs, err := readCoverage(ctx, c, name)
		if err != nil {
			return err
		}
		for _, cv := range covs {
			k := tableKey(cv.schema, cv.name)
			if _, ok := now[k]; ok {
				continue
			}
			if what, fix := cv.gap(name); what != "" {
				now[k] = leftOut{table: cv.schema + "." + cv.name, reason: what, fix: fix}
			}
		}
	}
	// Renames are followed here too: tablecast alters nothing of the
	// publication for them, it writes messages and takes snapshots.
	if err := w.followRenames(ctx, c, published, nil); err != nil {
		return err
	}
	w.keepNames(ctx, published, nil, nil)
	for _, k := range sortedKeys(now) {
		b := now[k]
		if prev, ok := w.broken[k]; ok && prev == b {
			continue
		}
		w.r.log.Error("the publication breaks the application's writes: PostgreSQL refuses UPDATE and DELETE on this table while it is published (tablecast does not alter a publication it did not create; tablecast doctor says more)",
			"publication", name, "table", b.table, "reason", b.reason, "fix", b.fix)
	}
	if w.first && len(now) == 0 && (pub.allTables || pub.inSchema) {
		w.r.log.Warn("the publication covers tables created later: one without a primary key or replica identity will refuse UPDATE and DELETE (tablecast doctor says how to let tablecast manage it)",
			"publication", name)
	}
	w.broken = now
	return nil
}

// catchUpRecord is a catch-up's record in the state bucket.
type catchUpRecord struct {
	Schema string `json:"schema"`
	Name   string `json:"name"`
	// OID is the table's, which the snapshot follows should it be renamed
	// (absent in records of older versions, which follow the name).
	OID uint32 `json:"oid,omitempty"`
}

// catchUpKeyPrefix starts the state keys of this reader's catch-ups.
func (r *Reader) catchUpKeyPrefix() string {
	return "catchup." + stream.SchemaKey(r.db, r.cfg.Slot, "") // ends in '.'
}

// recordCatchUp records a catch-up snapshot to take, and returns its key.
func (r *Reader) recordCatchUp(ctx context.Context, req snapshotRequest) (string, error) {
	key := "catchup." + stream.SchemaKey(r.db, r.cfg.Slot, req.schema+"\x00"+req.name)
	b, _ := json.Marshal(catchUpRecord{Schema: req.schema, Name: req.name, OID: req.oid})
	if _, err := r.state.Put(ctx, key, b); err != nil {
		return "", fmt.Errorf("record the catch-up snapshot of %s: %w", req.table, err)
	}
	return key, nil
}

// forgetCatchUp deletes a catch-up's record once it is done or moot,
// unless the record is now another table's: one created under the same
// name after the first was dropped, whose catch-up is still to come.
func (r *Reader) forgetCatchUp(ctx context.Context, req snapshotRequest) {
	if req.stateKey == "" {
		return
	}
	var opts []jetstream.KVDeleteOpt
	if e, err := r.state.Get(ctx, req.stateKey); err == nil {
		var rec catchUpRecord
		if json.Unmarshal(e.Value(), &rec) == nil && rec.OID != 0 && req.oid != 0 && rec.OID != req.oid {
			return
		}
		opts = append(opts, jetstream.LastRevision(e.Revision()))
	}
	if err := r.state.Delete(ctx, req.stateKey, opts...); err != nil && ctx.Err() == nil {
		r.log.Warn("cannot clear the record of a catch-up snapshot; it will be taken again at the next start", "table", req.table, "err", err)
	}
}

// resumeCatchUps queues the catch-ups a previous run recorded and did not
// finish.
func (r *Reader) resumeCatchUps(ctx context.Context) error {
	keys, err := stream.ListKVKeys(ctx, r.js, r.state, r.catchUpKeyPrefix()+">")
	if err != nil {
		return fmt.Errorf("list recorded catch-up snapshots: %w", err)
	}
	for _, k := range keys {
		e, err := r.state.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read recorded catch-up snapshot %s: %w", k, err)
		}
		var rec catchUpRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.Schema == "" || rec.Name == "" {
			r.log.Warn("dropping an unreadable catch-up record", "key", k)
			_ = r.state.Delete(ctx, k)
			continue
		}
		req := snapshotRequest{id: randomID(), schema: rec.Schema, name: rec.Name, table: rec.Schema + "." + rec.Name, catchUp: true, stateKey: k, oid: rec.OID}
		r.log.Info("resuming a catch-up snapshot a previous run did not finish", "table", req.table)
		_, _, _ = r.snaps.enqueue(req)
	}
	return nil
}

// announcement returns the content of the message announcing t's addition
// (its nonce recorded), or nil when the stream never carried its name or
// the table has no catch-up (no primary key): its rows before are not
// sent, and a copy emptied by a truncate would stay empty.
func (w *pubWatch) announcement(ctx context.Context, t tableState) ([]byte, error) {
	if !t.hasPK {
		return nil, nil
	}
	before, err := w.r.streamedBefore(ctx, t.schema, t.name)
	if err != nil || !before {
		return nil, err
	}
	return w.r.recordTableAdded(ctx, t.schema, t.name, t.oid, "")
}
