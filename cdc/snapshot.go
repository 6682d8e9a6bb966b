package cdc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Snapshot modes (TABLECAST_SNAPSHOT).
const (
	SnapshotInitial = "initial" // rows already in the tables go out as op "read" when the slot is created
	SnapshotNever   = "never"   // only changes from the slot's creation on
)

// stateBucket holds the reader's own bookkeeping: whether the initial
// snapshot that came with a slot was completed, and the slot's position
// record (position.go).
const stateBucket = stream.StateBucket

const (
	snapshotPending = "pending"
	snapshotDone    = "done"
)

// prepareSlot creates the slot when missing, with the initial snapshot
// when configured. A snapshot is complete only once JetStream has
// acknowledged every row; until then a marker says "pending", and a reader
// that finds its slot with a pending snapshot (it crashed midway) drops the
// slot and starts over, rather than stream changes on top of a partial
// copy. The repeated rows of a redone snapshot are at-least-once.
//
// A new slot gets its position record at once (position.go), so that even
// a reader that dies before it first confirms anything skips, when it
// comes back, what the stream holds already.
func (r *Reader) prepareSlot(ctx context.Context, exists bool) error {
	state := r.state
	key := "snapshot." + stream.SchemaKey(r.db, r.cfg.Slot, "")
	key = strings.TrimSuffix(key, ".")

	if exists {
		e, err := state.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return nil
		case err != nil:
			return fmt.Errorf("read snapshot state: %w", err)
		case string(e.Value()) != snapshotPending:
			return nil
		}
		r.log.Warn("the initial snapshot of this slot was interrupted; dropping the slot to take it again")
		if err := dropSlot(ctx, r.cfg.DatabaseURL, r.cfg.Slot); err != nil {
			return err
		}
	}

	rc, err := connectReplication(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer rc.Close(context.Background())
	origin, _, err := r.identifyOrigin(ctx, rc)
	if err != nil {
		return err
	}
	// A slot this reader streamed from and did not drop itself was lost;
	// one whose initial snapshot is still pending was dropped by a reader
	// taking the snapshot again, which died before creating the new one
	// (or lost before any change of it counted): the snapshot taken now
	// brings every row, and nothing is reported lost.
	//
	// An initial snapshot taken again sends a truncate of each table
	// before its rows: rows the attempt before sent may have been deleted
	// since, and those deletes went with the slot dropped to start over.
	retake := r.cfg.Snapshot == SnapshotInitial && r.snapshotPending(ctx, key)
	var lost *positionRecord
	if !exists && !retake {
		lost = r.lostSlotRecord(ctx)
	}
	// Nothing of this origin is after the stream's end as it is now.
	info, err := r.streamInfo(ctx)
	if err != nil {
		return err
	}
	last, created := info.State.LastSeq, info.Created
	action := "NOEXPORT_SNAPSHOT"
	if r.cfg.Snapshot == SnapshotInitial {
		action = "EXPORT_SNAPSHOT"
		if _, err := state.Put(ctx, key, []byte(snapshotPending)); err != nil {
			return fmt.Errorf("record snapshot state: %w", err)
		}
	}
	r.log.Info("creating replication slot (waits for transactions already open to finish)")
	res, err := pglogrepl.CreateReplicationSlot(ctx, rc, r.cfg.Slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{SnapshotAction: action})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" {
			return &slotInUseError{slot: r.cfg.Slot, pid: "(another reader created it just now)"}
		}
		return fmt.Errorf("create replication slot %s: %w", r.cfg.Slot, err)
	}
	r.log.Info("created replication slot", "consistent_point", res.ConsistentPoint)
	point, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return fmt.Errorf("parse consistent point %q: %w", res.ConsistentPoint, err)
	}
	if lost != nil {
		r.reportSlotLoss(lost, origin, point)
	}
	if err := r.writePosition(ctx, origin, uint64(point), last, created); err != nil {
		return err
	}
	if r.cfg.Snapshot != SnapshotInitial {
		return nil
	}
	// The exported snapshot lives as long as rc stays open and idle.
	wm, err := r.snapshot(ctx, res.SnapshotName, uint64(point), r.publisherOptions(info.Config, origin), retake)
	if err != nil {
		return fmt.Errorf("initial snapshot: %w", err)
	}
	if wm.N > 0 && wm.StreamSeq > last {
		// Every later message of the reader is stored after wm.StreamSeq.
		if err := r.writePosition(ctx, origin, uint64(point), wm.StreamSeq, created); err != nil {
			return err
		}
	}
	if _, err := state.Put(ctx, key, []byte(snapshotDone)); err != nil {
		return fmt.Errorf("record snapshot state: %w", err)
	}
	return nil
}

// snapshotPending says whether the marker of the slot's initial snapshot
// (key) says pending.
func (r *Reader) snapshotPending(ctx context.Context, key string) bool {
	e, err := r.state.Get(ctx, key)
	return err == nil && string(e.Value()) == snapshotPending
}

func dropSlot(ctx context.Context, url, slot string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("drop replication slot %s: %w", slot, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			return &slotInUseError{slot: slot, pid: "(active)"}
		}
		return fmt.Errorf("drop replication slot %s: %w", slot, err)
	}
	return nil
}

// snapshotTable is a published table as the snapshot reads it.
type snapshotTable struct {
	schema, name string
	columns      []string // published columns, in order
	rowFilter    string   // the publication's WHERE for the table (PostgreSQL 15), or ""
	keys         keyColumns
	identityCols map[string]bool // the replica identity's columns
	identity     byte
	partitioned  bool // a partitioned table, whose rows are its partitions'
}

// fromTable is the FROM clause that reads the rows of table schemaName.name
// that its changes are published under: ONLY the table itself, not the
// rows of its inheritance children (each streamed under its own name, or
// not at all); a partitioned table's rows are its partitions'.
func fromTable(schemaName, name string, partitioned bool) string {
	if partitioned {
		return " FROM " + pgx.Identifier{schemaName, name}.Sanitize()
	}
	return " FROM ONLY " + pgx.Identifier{schemaName, name}.Sanitize()
}

// table is st's shape with the given columns (in the order a query
// returned them), its key and replica identity marked as the stream marks
// them.
func (st snapshotTable) table(columns []schema.Column) *schema.Table {
	t := &schema.Table{Schema: st.schema, Name: st.name, ReplicaIdentity: st.identity, Columns: columns}
	for i := range t.Columns {
		t.Columns[i].Identity = st.identityCols[t.Columns[i].Name]
	}
	setKey(t, st.keys)
	return t
}

// snapshot publishes every row of every published table, as seen by the
// exported snapshot, as a "read" event; when it is taken again after an
// interrupted attempt (retake), each table's rows come after a truncate
// of cause "snapshot_restarted". Every event has the slot's consistent
// point P as its LSN, and ids are "<P-1>-<n>" with n counting across the
// whole snapshot (schema.Txn.ResetSnapshot). It returns, once JetStream
// has acknowledged them all, the publisher's final watermark, whose
// StreamSeq every later message of the reader follows.
func (r *Reader) snapshot(ctx context.Context, snapshotName string, point uint64, pubOpts []stream.PublisherOption, retake bool) (stream.Watermark, error) {
	var none stream.Watermark
	conn, err := connectSnapshot(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return none, err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return none, fmt.Errorf("begin snapshot transaction: %w", err)
	}
	if _, err := conn.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+strings.ReplaceAll(snapshotName, "'", "''")+"'"); err != nil {
		return none, fmt.Errorf("use exported snapshot %s: %w", snapshotName, err)
	}
	tables, err := publishedTables(ctx, conn, r.cfg.Publication)
	if err != nil {
		return none, err
	}

	pub, err := stream.NewPublisher(r.nc, r.js, r.cfg.MaxInFlight, r.log, pubOpts...)
	if err != nil {
		return none, fmt.Errorf("start publisher: %w", err)
	}
	defer pub.Close()
	var (
		txn     schema.Txn
		ordinal uint32
		total   int // rows
		lastSeq uint64
		ev      eventBuf
		row     []schema.Value
		types   typeResolver
	)
	txn.ResetSnapshot(point, time.Now())
	r.log.Info("initial snapshot started", "tables", len(tables), "at", pglogrepl.LSN(point).String())
	for _, st := range tables {
		began, rows := time.Now(), 0
		quoted := make([]string, len(st.columns))
		for i, c := range st.columns {
			quoted[i] = pgx.Identifier{c}.Sanitize()
		}
		// The publication's row filter applies to the snapshot as to the
		// stream: a row it keeps out must not leave by this path either.
		query := "SELECT " + strings.Join(quoted, ", ") + fromTable(st.schema, st.name, st.partitioned) + rowFilterClause(st.rowFilter, "WHERE")
		// The columns' types first (LIMIT 0), resolved while the
		// connection is idle, then the rows.
		shape := conn.PgConn().ExecParams(ctx, query+" LIMIT 0", nil, nil, nil, nil)
		fds := shape.FieldDescriptions()
		columns := make([]schema.Column, len(fds))
		for i, fd := range fds {
			columns[i] = schema.Column{Name: fd.Name, TypeOID: fd.DataTypeOID, TypeMod: fd.TypeModifier}
		}
		tbl := st.table(columns)
		if _, err := shape.Close(); err != nil {
			return none, fmt.Errorf("read columns of %s.%s: %w", st.schema, st.name, err)
		}
		if err := applyTypes(ctx, conn, &types, tbl.Columns); err != nil {
			return none, fmt.Errorf("look up the column types of %s.%s: %w", st.schema, st.name, err)
		}
		count := r.tableCount(st.schema, st.name)
		if retake {
			ordinal++
			truncate := &schema.Change{Op: schema.OpTruncate, Ordinal: ordinal, Cause: schema.CauseSnapshotRestarted}
			subject := stream.ChangeSubject(r.prefix, r.db, st.schema, st.name, schema.OpTruncate)
			if lastSeq, err = r.publishChange(ctx, pub, subject, tbl, &txn, truncate, &ev); err != nil {
				return none, fmt.Errorf("publish the truncate before the snapshot of %s.%s taken again: %w", st.schema, st.name, err)
			}
			r.m.published[schema.OpTruncate].Inc()
			count.Add(1)
		}
		rr := conn.PgConn().ExecParams(ctx, query, nil, nil, nil, nil)
		subject := stream.ChangeSubject(r.prefix, r.db, st.schema, st.name, schema.OpRead)
		for rr.NextRow() {
			row = row[:0]
			for _, v := range rr.Values() {
				if v == nil {
					row = append(row, schema.Value{Kind: schema.KindNull})
				} else {
					row = append(row, schema.Value{Kind: schema.KindText, Data: v})
				}
			}
			ordinal++
			if lastSeq, err = r.publishChange(ctx, pub, subject, tbl, &txn, &schema.Change{Op: schema.OpRead, Ordinal: ordinal, New: row}, &ev); err != nil {
				rr.Close()
				return none, fmt.Errorf("publish snapshot of %s.%s: %w", st.schema, st.name, err)
			}
			r.m.published[schema.OpRead].Inc()
			count.Add(1)
			rows++
			if rows%100_000 == 0 {
				r.log.Info("snapshot progress", "table", st.schema+"."+st.name, "rows", rows)
			}
		}
		if _, err := rr.Close(); err != nil {
			return none, fmt.Errorf("read %s.%s: %w", st.schema, st.name, err)
		}
		total += rows
		r.log.Info("snapshot of table done", "table", st.schema+"."+st.name, "rows", rows, "took", time.Since(began).Round(time.Millisecond))
	}
	if err := pub.Flush(ctx); err != nil {
		return none, err
	}
	for pub.Acked() < lastSeq {
		select {
		case <-ctx.Done():
			return none, ctx.Err()
		case <-pub.Failed():
			return none, pub.Err()
		case <-pub.Progress():
		}
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return none, fmt.Errorf("end snapshot transaction: %w", err)
	}
	r.log.Info("initial snapshot done", "rows", total)
	return pub.Watermark(), nil
}

// rowFilterClause is " <keyword> (<filter>)", or "" without a filter. The
// filter is PostgreSQL's own text of the publication's WHERE clause.
func rowFilterClause(filter, keyword string) string {
	if filter == "" {
		return ""
	}
	return " " + keyword + " (" + filter + ")"
}

// connectSnapshot opens a regular connection whose text output matches the
// replication connection's, so that snapshot rows and streamed changes
// convert alike.
func connectSnapshot(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fieldErrorf("DatabaseURL", "%s", oneLine(err))
	}
	for k, v := range map[string]string{"DateStyle": "ISO, YMD", "IntervalStyle": "postgres", "extra_float_digits": "3", "TimeZone": "UTC", "application_name": "tablecast-snapshot"} {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open snapshot connection: %w", err)
	}
	return conn, nil
}

// publishedTables lists the publication's tables with their published
// columns (a PostgreSQL 15 column list, or all columns), replica identity
// columns, primary key and replica identity index, in a stable order.
func publishedTables(ctx context.Context, conn *pgx.Conn, publication string) ([]snapshotTable, error) {
	var version int
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return nil, fmt.Errorf("read server version: %w", err)
	}
	attnames, rowfilter := "NULL::text[]", "NULL::text"
	switch {
	case version >= 180000:
		attnames, rowfilter = "pt.attnames", "pt.rowfilter"
	case version >= 150000:
		// pgoutput sends no generated column before PostgreSQL 18, while
		// pg_publication_tables lists them: the snapshot leaves them out
		// too, so that a row has the same columns read as streamed.
		attnames, rowfilter = `(SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
			WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
				AND a.attname = ANY (pt.attnames))`, "pt.rowfilter"
	}
	rows, err := conn.Query(ctx, `
		SELECT pt.schemaname, pt.tablename, c.relreplident::text, coalesce(`+rowfilter+`, ''),
			coalesce(`+attnames+`, ARRAY(
				SELECT a.attname::text FROM pg_attribute a
				WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
				ORDER BY a.attnum)),
			ARRAY(
				SELECT a.attname::text FROM pg_attribute a
				WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND (
					c.relreplident = 'f'
					OR a.attnum = ANY((SELECT i.indkey FROM pg_index i WHERE i.indrelid = c.oid AND
						((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))::int2[]))),`+keyArrays+`,
			c.relkind = 'p'
		FROM pg_publication_tables pt
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		WHERE pt.pubname = $1
		ORDER BY 1, 2`, publication)
	if err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	defer rows.Close()
	var out []snapshotTable
	for rows.Next() {
		var st snapshotTable
		var identity string
		var identityCols []string
		if err := rows.Scan(&st.schema, &st.name, &identity, &st.rowFilter, &st.columns, &identityCols,
			&st.keys.primaryKey, &st.keys.identityIndex, &st.partitioned); err != nil {
			return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
		}
		st.identity = identity[0]
		st.identityCols = map[string]bool{}
		for _, k := range identityCols {
			st.identityCols[k] = true
		}
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	return out, nil
}
