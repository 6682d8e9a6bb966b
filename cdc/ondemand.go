package cdc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// On-demand snapshots of one table while streaming goes on, without holding
// a long transaction, and without ever sending a row older than a change
// already sent (the watermark technique of Netflix's DBLog):
//
//  1. `tablecast snapshot schema.table` writes a request into the WAL
//     (RequestSnapshot), so it needs nothing but the database.
//  2. The reader sees the request in the stream and its snapshot worker
//     reads the table in primary-key order, chunkRows at a time. For each
//     chunk it writes a low watermark into the WAL, SELECTs the chunk, and
//     writes a high watermark.
//  3. The session, reading the stream, notes the keys of that table changed
//     between the low and the high watermark. At the high watermark it
//     publishes the chunk's rows as op "read", except those whose keys
//     changed in between: their newer state is already in the stream. A
//     change committed after the high watermark comes after the read rows.
//
// A read row's lsn is the high watermark's LSN H, and its id is built on
// H-1 and the row's ordinal in the chunk (schema.Txn.ResetSnapshot): ids
// stay increasing, between the changes committed before the watermark and
// those committed after it, and a chunk replayed after a reconnect has the
// same ids, so that what the stream holds already is not published again.
// A request lost to a crash of the reader is not resumed: run the command
// again.

const (
	snapshotRequestPrefix = "tablecast-snapshot"
	watermarkPrefix       = "tablecast-watermark"
	// chunkRows bounds one chunk: the rows the reader holds at once, and
	// the keys it watches between the watermarks.
	chunkRows = 2048
)

// snapshotRequest is the content of a request message.
type snapshotRequest struct {
	ID     string `json:"id"`
	Schema string `json:"schema"`
	Name   string `json:"name"`
	Table  string `json:"table"` // schema.table, for logs
}

// RequestSnapshot asks the running reader of the publication to snapshot
// one table ("schema.table") while it streams. It checks that the table
// exists, is published and has a primary key, and returns the request's id.
func RequestSnapshot(ctx context.Context, databaseURL, publication, table string) (string, error) {
	schemaName, name, err := schema.ParseTableName(table)
	if err != nil {
		return "", &ConfigError{msg: err.Error()}
	}
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return "", &ConfigError{msg: "connect to PostgreSQL: " + oneLine(err)}
	}
	defer conn.Close(context.Background())
	if _, err := chunkPlan(ctx, conn, publication, schemaName, name); err != nil {
		return "", err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	req := snapshotRequest{ID: hex.EncodeToString(b[:]), Schema: schemaName, Name: name, Table: schemaName + "." + name}
	content, _ := json.Marshal(req)
	if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, snapshotRequestPrefix, string(content)); err != nil {
		return "", fmt.Errorf("write snapshot request: %w", err)
	}
	return req.ID, nil
}

// tablePlan is what chunking a table needs.
type tablePlan struct {
	schema, name string
	columns      []string // published columns
	rowFilter    string   // the publication's WHERE for the table, or ""
	keys         []string // primary key columns, in index order
	table        snapshotTable
}

func chunkPlan(ctx context.Context, conn *pgx.Conn, publication, schemaName, name string) (tablePlan, error) {
	p := tablePlan{schema: schemaName, name: name}
	tables, err := publishedTables(ctx, conn, publication)
	if err != nil {
		return p, err
	}
	found := false
	for _, t := range tables {
		if t.schema == schemaName && t.name == name {
			p.columns, p.rowFilter, p.table, found = t.columns, t.rowFilter, t, true
		}
	}
	if !found {
		return p, configErrorf("table %s.%s is not in publication %s (or does not exist)", schemaName, name, publication)
	}
	rows, err := conn.Query(ctx, `SELECT a.attname::text FROM pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.ord`,
		pgx.Identifier{schemaName, name}.Sanitize())
	if err != nil {
		return p, fmt.Errorf("read primary key of %s.%s: %w", schemaName, name, err)
	}
	p.keys, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return p, fmt.Errorf("read primary key of %s.%s: %w", schemaName, name, err)
	}
	if len(p.keys) == 0 {
		return p, configErrorf("table %s.%s has no primary key: an on-demand snapshot reads in key order", schemaName, name)
	}
	for _, k := range p.keys {
		published := false
		for _, c := range p.columns {
			published = published || c == k
		}
		if !published {
			return p, configErrorf("primary key column %q of %s.%s is not in the publication's column list", k, schemaName, name)
		}
	}
	return p, nil
}

// chunk is one chunk of an on-demand snapshot, registered by the worker
// before its low watermark (table and keys) and filled before its high
// watermark (columns, rows); the session reads it under snapshots.mu.
type chunk struct {
	schema   string
	name     string
	table    string   // schema.table, as QualifiedName writes it
	keys     []string // primary key column names
	columns  []schema.Column
	keyIdx   []int      // positions of the key columns in columns
	rows     [][][]byte // text values; nil is NULL
	consumed chan struct{}
}

// snapshots is the reader's on-demand snapshot state shared by the worker
// and the session.
type snapshots struct {
	requests chan snapshotRequest
	mu       sync.Mutex
	chunks   map[string]*chunk // by watermark id, from its SELECT to its publication
}

func newSnapshots() *snapshots {
	return &snapshots{requests: make(chan snapshotRequest, 16), chunks: map[string]*chunk{}}
}

// worker runs requested snapshots one after another.
func (r *Reader) snapshotWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-r.snaps.requests:
			if err := r.runOnDemand(ctx, req); err != nil && ctx.Err() == nil {
				r.log.Error("on-demand snapshot failed; request it again", "table", req.Table, "id", req.ID, "err", err)
			}
		}
	}
}

func (r *Reader) runOnDemand(ctx context.Context, req snapshotRequest) error {
	conn, err := connectSnapshot(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	plan, err := chunkPlan(ctx, conn, r.cfg.Publication, req.Schema, req.Name)
	if err != nil {
		return err
	}
	quoted := make([]string, len(plan.columns))
	for i, c := range plan.columns {
		quoted[i] = pgx.Identifier{c}.Sanitize()
	}
	keyList := make([]string, len(plan.keys))
	params := make([]string, len(plan.keys))
	for i, k := range plan.keys {
		keyList[i] = pgx.Identifier{k}.Sanitize()
		params[i] = fmt.Sprintf("$%d", i+1)
	}
	from := " FROM " + pgx.Identifier{plan.schema, plan.name}.Sanitize()
	order := fmt.Sprintf(" ORDER BY %s LIMIT %d", strings.Join(keyList, ", "), chunkRows)
	first := "SELECT " + strings.Join(quoted, ", ") + from + rowFilterClause(plan.rowFilter, "WHERE") + order
	next := "SELECT " + strings.Join(quoted, ", ") + from + " WHERE (" + strings.Join(keyList, ", ") + ") > (" + strings.Join(params, ", ") + ")" +
		rowFilterClause(plan.rowFilter, "AND") + order

	var types typeResolver
	r.log.Info("on-demand snapshot started", "table", req.Table, "id", req.ID)
	began, total := time.Now(), 0
	var after [][]byte
	for n := 1; ; n++ {
		wm := fmt.Sprintf("%s:%d", req.ID, n)
		c := &chunk{schema: plan.schema, name: plan.name, table: plan.schema + "." + plan.name, keys: plan.keys, consumed: make(chan struct{})}
		r.snaps.mu.Lock()
		r.snaps.chunks[wm] = c
		r.snaps.mu.Unlock()
		if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(false, $1, $2)`, watermarkPrefix, wm+":low"); err != nil {
			return fmt.Errorf("write low watermark: %w", err)
		}
		sql, args := first, [][]byte(nil)
		if after != nil {
			sql, args = next, after
		}
		rr := conn.PgConn().ExecParams(ctx, sql, args, nil, nil, nil)
		var (
			columns []schema.Column
			keyIdx  []int
			rows    [][][]byte
		)
		for _, fd := range rr.FieldDescriptions() {
			columns = append(columns, schema.Column{Name: fd.Name, TypeOID: fd.DataTypeOID, TypeMod: fd.TypeModifier})
		}
		for _, k := range plan.keys {
			for i, col := range columns {
				if col.Name == k {
					keyIdx = append(keyIdx, i)
				}
			}
		}
		// Keyed as the stream and the initial snapshot key the table.
		columns = plan.table.table(columns).Columns
		for rr.NextRow() {
			vals := rr.Values()
			row := make([][]byte, len(vals))
			for i, v := range vals {
				if v != nil {
					row[i] = append([]byte{}, v...)
				}
			}
			rows = append(rows, row)
		}
		if _, err := rr.Close(); err != nil {
			r.snaps.mu.Lock()
			delete(r.snaps.chunks, wm)
			r.snaps.mu.Unlock()
			return fmt.Errorf("read chunk %d of %s: %w", n, req.Table, err)
		}
		if err := applyTypes(ctx, conn, &types, columns); err != nil {
			r.snaps.mu.Lock()
			delete(r.snaps.chunks, wm)
			r.snaps.mu.Unlock()
			return fmt.Errorf("look up the column types of %s: %w", req.Table, err)
		}
		r.snaps.mu.Lock()
		c.columns, c.keyIdx, c.rows = columns, keyIdx, rows
		r.snaps.mu.Unlock()
		if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(false, $1, $2)`, watermarkPrefix, wm+":high"); err != nil {
			return fmt.Errorf("write high watermark: %w", err)
		}
		select { // one chunk at a time: memory stays bounded
		case <-c.consumed:
		case <-ctx.Done():
			return ctx.Err()
		}
		total += len(c.rows)
		if len(c.rows) < chunkRows {
			break
		}
		last := c.rows[len(c.rows)-1]
		after = make([][]byte, len(c.keyIdx))
		for i, k := range c.keyIdx {
			after[i] = last[k]
		}
	}
	r.log.Info("on-demand snapshot done", "table", req.Table, "id", req.ID, "rows", total, "took", time.Since(began).Round(time.Millisecond))
	return nil
}

// window is the session's view of one chunk between its watermarks: the
// primary keys of its table that changed meanwhile.
type window struct {
	table   string   // schema.table
	keys    []string // primary key column names
	lowLSN  uint64   // the reader confirms nothing past it while the window is open
	changed map[string]struct{}
}

// pendingChunk is a published chunk awaiting JetStream's acknowledgement.
// Until then the worker keeps it, so that a session restarted in between
// publishes it again at the replayed high watermark (same ids: what the
// stream already holds is not stored again).
type pendingChunk struct {
	id  string
	seq uint64
}

// onDemandMessage handles requests and watermarks seen in the stream.
func (s *session) onDemandMessage(ctx context.Context, prefix string, content []byte, lsn uint64) error {
	switch prefix {
	case snapshotRequestPrefix:
		var req snapshotRequest
		if err := json.Unmarshal(content, &req); err != nil || req.Schema == "" || req.Name == "" {
			s.r.log.Warn("ignoring a malformed snapshot request", "content", string(content))
			return nil
		}
		select {
		case s.r.snaps.requests <- req:
		default:
			s.r.log.Warn("too many snapshot requests queued; request it again later", "table", req.Table)
		}
		return nil
	case watermarkPrefix:
	default:
		return nil
	}
	id, kind, ok := cutLast(string(content), ":")
	if !ok {
		return nil
	}
	s.r.snaps.mu.Lock()
	c := s.r.snaps.chunks[id]
	s.r.snaps.mu.Unlock()
	if c == nil {
		return nil // another reader's watermark, or a chunk published before a reconnect
	}
	switch kind {
	case "low":
		s.windows[id] = &window{table: c.table, keys: c.keys, lowLSN: lsn, changed: map[string]struct{}{}}
	case "high":
		w := s.windows[id]
		delete(s.windows, id)
		if w == nil {
			// Cannot happen while confirming stops at open windows: a
			// replay always starts at or before the low watermark.
			s.r.log.Error("snapshot chunk without its low watermark; skipped", "table", c.table, "watermark", id)
			return nil
		}
		if err := s.publishChunk(ctx, c, w, lsn); err != nil {
			return err
		}
		s.pendingChunks = append(s.pendingChunks, pendingChunk{id: id, seq: s.lastSeq})
		return nil
	}
	return nil
}

// releaseChunks hands back to the worker every published chunk whose
// events JetStream has all acknowledged.
func (s *session) releaseChunks(acked uint64) {
	for len(s.pendingChunks) > 0 && s.pendingChunks[0].seq <= acked {
		id := s.pendingChunks[0].id
		s.pendingChunks = s.pendingChunks[1:]
		s.r.snaps.mu.Lock()
		c := s.r.snaps.chunks[id]
		delete(s.r.snaps.chunks, id)
		s.r.snaps.mu.Unlock()
		if c != nil {
			close(c.consumed)
		}
	}
}

// confirmLimit is the highest LSN the reader may confirm: the low
// watermark of the oldest open window, so that a replay always sees it.
func (s *session) confirmLimit() uint64 {
	limit := uint64(math.MaxUint64)
	for _, w := range s.windows {
		limit = min(limit, w.lowLSN)
	}
	return limit
}

func cutLast(s, sep string) (string, string, bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return "", "", false
	}
	return s[:i], s[i+len(sep):], true
}

// noteChange records, in every open window on rel's table, the primary key
// of a row image a change carried.
func (s *session) noteChange(rel *relation, vals []schema.Value) {
	if len(s.windows) == 0 || vals == nil {
		return
	}
	for _, w := range s.windows {
		if w.table != rel.table.QualifiedName() {
			continue
		}
		var key []byte
		for _, k := range w.keys {
			for i, c := range rel.table.Columns {
				if c.Name == k && i < len(vals) {
					key = append(key, vals[i].Data...)
					key = append(key, 0)
				}
			}
		}
		w.changed[string(key)] = struct{}{}
	}
}

// publishChunk publishes the chunk's rows whose keys did not change inside
// its window, as op "read".
func (s *session) publishChunk(ctx context.Context, c *chunk, w *window, lsn uint64) error {
	schemaName, name := c.schema, c.name
	tbl := &schema.Table{Schema: schemaName, Name: name, Columns: c.columns}
	var txn schema.Txn
	txn.ResetSnapshot(lsn, time.Now())
	subject := stream.ChangeSubject(s.r.prefix, s.r.db, schemaName, name, schema.OpRead)
	row := make([]schema.Value, len(c.columns))
	var key []byte
	skipped := 0
	for n, vals := range c.rows {
		key = key[:0]
		for _, k := range c.keyIdx {
			key = append(key, vals[k]...)
			key = append(key, 0)
		}
		if _, changed := w.changed[string(key)]; changed {
			skipped++
			continue
		}
		if s.alreadyStored(txn.CommitLSN-1, uint32(n+1)) {
			continue
		}
		for i, v := range vals {
			if v == nil {
				row[i] = schema.Value{Kind: schema.KindNull}
			} else {
				row[i] = schema.Value{Kind: schema.KindText, Data: v}
			}
		}
		s.buf = schema.AppendEvent(s.buf[:0], s.r.db, tbl, &txn, &schema.Change{Op: schema.OpRead, Ordinal: uint32(n + 1), New: row})
		s.ids = txn.AppendID(s.ids[:0], uint32(n+1))
		seq, err := s.pub.Publish(ctx, subject, string(s.ids), s.buf)
		if err != nil {
			return fmt.Errorf("publish snapshot chunk of %s: %w", c.table, err)
		}
		s.lastSeq = seq
		s.r.m.published[schema.OpRead].Inc()
	}
	if skipped > 0 {
		s.r.log.Debug("snapshot chunk: rows changed meanwhile left to the stream", "table", c.table, "skipped", skipped)
	}
	return nil
}
