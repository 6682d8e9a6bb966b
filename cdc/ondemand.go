package cdc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// On-demand snapshots of one table while streaming goes on, without holding
// a long transaction, and without ever sending a row older than a change
// already sent (the watermark technique of Netflix's DBLog):
//
//  1. A snapshot is asked for over NATS: `tablecast snapshot schema.table`
//     sends a request on SnapshotSubject, outside the stream's subjects,
//     and the streaming reader answers it (RequestSnapshot). Whoever can
//     publish there can ask; a request written into the WAL, where any
//     database role can write one, is ignored. The publication manager
//     asks too, for a table it adds while streaming (a catch-up).
//  2. The reader's snapshot worker reads the table in primary-key order,
//     chunkRows at a time. For each chunk it writes a low watermark into
//     the WAL, SELECTs the chunk, and writes a high watermark.
//     Between the two, before the SELECT, it waits for every transaction
//     open when the low watermark was written to end (awaitOpenTransactions).
//  3. The session, reading the stream, notes the keys of that table changed
//     between the low and the high watermark. At the high watermark it
//     publishes the chunk's rows as op "read", except those whose keys
//     changed in between: their newer state is already in the stream. A
//     change committed after the high watermark comes after the read rows.
//
// A watermark's id is 128 random bits the worker draws for its chunk and
// never shows anyone (it is not the request's id), and the session acts on
// a watermark only for a chunk its own worker registered, a low one once
// and a high one only after it: a role that writes WAL messages can forge
// neither.
//
// A read row's lsn is the high watermark's LSN H, and its id is built on
// H-1 and the row's ordinal in the chunk (schema.Txn.ResetSnapshot): ids
// stay increasing, between the changes committed before the watermark and
// those committed after it, and a chunk replayed after a reconnect has the
// same ids, so that what the stream holds already is not published again.
// A requested snapshot lost to a crash of the reader is not resumed: run
// the command again. A catch-up is recorded in the state bucket before its
// table is added, and taken again after a crash.

const (
	// snapshotRequestPrefix marked the requests of an earlier version,
	// written into the WAL; they are ignored with a warning now.
	snapshotRequestPrefix = "tablecast-snapshot"
	watermarkPrefix       = "tablecast-watermark"
	// chunkRows bounds one chunk: the rows the reader holds at once, and
	// the keys it watches between the watermarks.
	chunkRows = 2048
	// maxQueuedRequests bounds the requested snapshots waiting for the
	// worker; catch-ups are not counted, one per table at most.
	maxQueuedRequests = 16
	// snapshotAnswerTimeout bounds how long RequestSnapshot waits for the
	// reader's answer; the reader answers after a catalog look-up.
	snapshotAnswerTimeout = 10 * time.Second
	// catchUpRetry is the pause before a failed catch-up is tried again.
	catchUpRetry = 5 * time.Second
)

// SnapshotSubject is the NATS subject on which the reader of slot, under
// subject prefix, answers snapshot requests. It lies outside the stream's
// "<prefix>.>", so a request is never stored as an event: its first token
// is _TABLECAST, which no subject prefix may start with.
func SnapshotSubject(prefix, slot string) string {
	return controlToken + "." + prefix + "." + slot + ".snapshot"
}

// controlToken is the first token of tablecast's control subjects.
const controlToken = "_TABLECAST"

// ErrNoReader is returned by RequestSnapshot when no reader answers.
var ErrNoReader = errors.New("no reader answered the snapshot request")

// snapshotRequest is a snapshot waiting for the worker.
type snapshotRequest struct {
	id           string // random; shown to whoever asked, never used in the WAL
	schema, name string
	table        string // schema.table, for logs
	catchUp      bool   // asked by the publication manager for a table it added
	stateKey     string // the catch-up's record in the state bucket
	// oid is the table's OID, once known: a snapshot follows the table
	// through a rename (the swap of a table filled beforehand for the one
	// it replaces) rather than lose the rows it has not read yet.
	oid uint32
}

// snapshotQuery is the body of a request on SnapshotSubject.
type snapshotQuery struct {
	Table string `json:"table"` // schema.table, as TABLECAST_TABLES takes it
}

// snapshotAnswer is the reader's answer: an id, or a code and a message.
type snapshotAnswer struct {
	ID    string `json:"id,omitempty"`
	Table string `json:"table,omitempty"`
	Ahead int    `json:"ahead,omitempty"` // snapshots queued before it
	Code  string `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
}

// Codes of a refused snapshot request.
const (
	refusedInvalidTable = "invalid_table"
	refusedUnknownTable = "unknown_table"
	refusedNoKey        = "no_primary_key"
	refusedKeyWithheld  = "key_not_published"
	refusedQueueFull    = "queue_full"
	refusedInternal     = "internal"
)

// refusal is why a table cannot be snapshotted on demand.
type refusal struct{ code, msg string }

func (e *refusal) Error() string { return e.msg }

// SnapshotTicket is the reader's answer to an accepted request.
type SnapshotTicket struct {
	ID    string // the request's id, as the reader logs it
	Table string // schema.table
	Ahead int    // snapshots queued before it
}

// RequestSnapshot asks the reader of slot, streaming under subject prefix,
// to snapshot one table ("schema.table") while it streams, over nc. The
// reader checks that the table exists, is published and has a primary key,
// and queues it. A refusal (no such table, no primary key, …) is a
// ConfigError; no answer is ErrNoReader.
func RequestSnapshot(ctx context.Context, nc *nats.Conn, prefix, slot, table string) (SnapshotTicket, error) {
	if _, _, err := schema.ParseTableName(table); err != nil {
		return SnapshotTicket{}, &ConfigError{msg: err.Error()}
	}
	body, _ := json.Marshal(snapshotQuery{Table: table})
	subject := SnapshotSubject(prefix, slot)
	rctx, cancel := context.WithTimeout(ctx, snapshotAnswerTimeout)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, subject, body)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return SnapshotTicket{}, fmt.Errorf("%w: nothing listens on %s", ErrNoReader, subject)
	case err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		return SnapshotTicket{}, fmt.Errorf("%w within %s on %s: a reader answers only while it streams", ErrNoReader, snapshotAnswerTimeout, subject)
	case err != nil:
		return SnapshotTicket{}, fmt.Errorf("send snapshot request on %s: %w", subject, err)
	}
	var ans snapshotAnswer
	if err := json.Unmarshal(msg.Data, &ans); err != nil {
		return SnapshotTicket{}, fmt.Errorf("read the reader's answer %q: %w", msg.Data, err)
	}
	switch ans.Code {
	case "":
		return SnapshotTicket{ID: ans.ID, Table: ans.Table, Ahead: ans.Ahead}, nil
	case refusedQueueFull, refusedInternal:
		return SnapshotTicket{}, fmt.Errorf("the reader refused the snapshot: %s", ans.Error)
	default:
		return SnapshotTicket{}, &ConfigError{msg: ans.Error}
	}
}

// serveSnapshotRequests answers requests on SnapshotSubject until the
// subscription is drained. A reader that is not streaming (a second one
// waiting for the slot, or one between sessions) stays silent, so the
// reader that holds the slot is the one that answers; one about to stream
// (starting, or reconnecting) waits a little for it first.
func (r *Reader) serveSnapshotRequests(ctx context.Context) (*nats.Subscription, error) {
	subject := SnapshotSubject(r.prefix, r.cfg.Slot)
	sub, err := r.nc.Subscribe(subject, func(m *nats.Msg) {
		if m.Reply == "" {
			return
		}
		for deadline := time.Now().Add(snapshotAnswerTimeout / 2); !r.streaming.Load(); {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		ans := r.answerSnapshot(ctx, m.Data)
		b, _ := json.Marshal(ans)
		if err := m.Respond(b); err != nil {
			r.log.Warn("cannot answer a snapshot request", "err", err)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("listen for snapshot requests on %s: %w", subject, err)
	}
	// The server has the subscription once Flush returns: a request sent
	// once the reader streams finds it. (Without NATS now, the client
	// subscribes again when it reconnects.)
	if err := r.nc.FlushTimeout(5 * time.Second); err != nil {
		r.log.Warn("NATS did not confirm the subscription for snapshot requests", "subject", subject, "err", err)
	}
	return sub, nil
}

func (r *Reader) answerSnapshot(ctx context.Context, body []byte) snapshotAnswer {
	var q snapshotQuery
	if err := json.Unmarshal(body, &q); err != nil {
		return snapshotAnswer{Code: refusedInvalidTable, Error: "a snapshot request is JSON: {\"table\":\"schema.table\"}"}
	}
	schemaName, name, err := schema.ParseTableName(q.Table)
	if err != nil {
		return snapshotAnswer{Code: refusedInvalidTable, Error: err.Error()}
	}
	table := schemaName + "." + name
	qctx, cancel := context.WithTimeout(ctx, snapshotAnswerTimeout)
	defer cancel()
	conn, err := connectSnapshot(qctx, r.cfg.DatabaseURL)
	if err != nil {
		return snapshotAnswer{Code: refusedInternal, Error: "the reader cannot reach PostgreSQL: " + oneLine(err)}
	}
	defer conn.Close(context.Background())
	plan, err := chunkPlan(qctx, conn, r.cfg.Publication, schemaName, name, 0)
	if err != nil {
		var ref *refusal
		if errors.As(err, &ref) {
			return snapshotAnswer{Code: ref.code, Error: ref.msg}
		}
		return snapshotAnswer{Code: refusedInternal, Error: oneLine(err)}
	}
	req := snapshotRequest{id: randomID(), schema: schemaName, name: name, table: table, oid: plan.oid}
	id, ahead, err := r.snaps.enqueue(req)
	if err != nil {
		return snapshotAnswer{Code: refusedQueueFull, Error: err.Error()}
	}
	r.log.Info("on-demand snapshot requested", "table", table, "id", id, "ahead", ahead)
	return snapshotAnswer{ID: id, Table: table, Ahead: ahead}
}

// randomID is 128 random bits in hex: unguessable.
func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// tablePlan is what chunking a table needs.
type tablePlan struct {
	schema, name string // as the table is named now
	oid          uint32
	columns      []string // published columns
	rowFilter    string   // the publication's WHERE for the table, or ""
	keys         []string // primary key columns, in index order
	table        snapshotTable
}

// chunkPlan checks that the table can be snapshotted on demand and says
// how. The table is schemaName.name, or the table of OID oid when it is
// not 0, whatever its name now. Its refusals are *refusal errors.
func chunkPlan(ctx context.Context, conn *pgx.Conn, publication, schemaName, name string, oid uint32) (tablePlan, error) {
	p := tablePlan{schema: schemaName, name: name, oid: oid}
	table := schemaName + "." + name
	if oid != 0 {
		found, err := p.follow(ctx, conn)
		if err != nil {
			return p, err
		}
		if !found {
			return p, &refusal{refusedUnknownTable, fmt.Sprintf("table %s is not in publication %s: it was dropped", table, publication)}
		}
		schemaName, name, table = p.schema, p.name, p.schema+"."+p.name
	} else {
		var found *uint32
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1)::oid`, pgx.Identifier{schemaName, name}.Sanitize()).Scan(&found); err != nil {
			return p, fmt.Errorf("look up table %s: %w", table, err)
		}
		if found == nil {
			return p, &refusal{refusedUnknownTable, fmt.Sprintf("table %s is not in publication %s: there is no such table", table, publication)}
		}
		p.oid = *found
	}
	rows, err := conn.Query(ctx, `SELECT a.attname::text FROM pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.ord`,
		pgx.Identifier{schemaName, name}.Sanitize())
	if err != nil {
		return p, fmt.Errorf("read primary key of %s: %w", table, err)
	}
	p.keys, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return p, fmt.Errorf("read primary key of %s: %w", table, err)
	}
	if len(p.keys) == 0 {
		return p, &refusal{refusedNoKey, fmt.Sprintf("table %s has no primary key: an on-demand snapshot reads in key order", table)}
	}
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
		return p, &refusal{refusedUnknownTable, fmt.Sprintf("table %s is not in publication %s", table, publication)}
	}
	for _, k := range p.keys {
		if !slices.Contains(p.columns, k) {
			return p, &refusal{refusedKeyWithheld, fmt.Sprintf("primary key column %q of %s is not in the publication's column list", k, table)}
		}
	}
	return p, nil
}

// follow sets the plan's schema and name to those its table (p.oid) has
// now; found is false once the table is dropped.
func (p *tablePlan) follow(ctx context.Context, conn *pgx.Conn) (found bool, err error) {
	err = conn.QueryRow(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = $1`, p.oid).Scan(&p.schema, &p.name)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("look up table %s.%s by its OID: %w", p.schema, p.name, err)
	}
	return true, nil
}

// chunk is one chunk of an on-demand snapshot, registered by the worker
// before its low watermark (table and keys) and filled before its high
// watermark (columns, rows, filled); the session reads it under
// snapshots.mu.
type chunk struct {
	schema  string
	name    string
	table   string   // schema.table, as QualifiedName writes it
	relid   uint32   // the table's OID, which its changes in the stream carry
	keys    []string // primary key column names
	columns []schema.Column
	keyIdx  []int      // positions of the key columns in columns
	rows    [][][]byte // text values; nil is NULL
	// shape is the table's as the rows were read, for the schema registry:
	// a table created again, or altered with no change streamed since, is
	// registered with it before its rows are published.
	shape    schema.Shape
	filled   bool // rows are read: its high watermark may come
	consumed chan struct{}
}

// snapshots is the reader's on-demand snapshot state shared by the worker,
// the session, the NATS responder and the publication manager.
type snapshots struct {
	mu     sync.Mutex
	queue  []snapshotRequest
	wake   chan struct{}     // cap 1: the queue grew
	chunks map[string]*chunk // by watermark id, from its SELECT to its publication
}

func newSnapshots() *snapshots {
	return &snapshots{wake: make(chan struct{}, 1), chunks: map[string]*chunk{}}
}

// enqueue queues req unless its table is queued already, and returns the
// id it goes by and how many snapshots are queued before it. Requested
// snapshots beyond maxQueuedRequests are refused.
func (q *snapshots) enqueue(req snapshotRequest) (id string, ahead int, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	requested := 0
	for i, queued := range q.queue {
		if sameTable(queued, req) {
			if req.catchUp && !queued.catchUp { // a catch-up keeps its record
				q.queue[i].catchUp, q.queue[i].stateKey = true, req.stateKey
			}
			return queued.id, i, nil
		}
		if !queued.catchUp {
			requested++
		}
	}
	if !req.catchUp && requested >= maxQueuedRequests {
		return "", 0, fmt.Errorf("%d snapshots are queued already; ask again when they are done", requested)
	}
	q.queue = append(q.queue, req)
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return req.id, len(q.queue) - 1, nil
}

// sameTable says whether two requests are for the same table: the same
// name and, when both know it, the same OID. A table dropped and created
// again under its name is another table: the request queued for the first
// ends when it finds its table gone, and must not stand for the second.
func sameTable(a, b snapshotRequest) bool {
	return a.schema == b.schema && a.name == b.name && (a.oid == 0 || b.oid == 0 || a.oid == b.oid)
}

// requeue puts back, first in the queue, a request the worker was running
// when it was stopped, unless its table is queued again already.
func (q *snapshots) requeue(req snapshotRequest) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, queued := range q.queue {
		if sameTable(queued, req) {
			if req.catchUp && !queued.catchUp { // a catch-up keeps its record
				q.queue[i].catchUp, q.queue[i].stateKey = true, req.stateKey
			}
			return
		}
	}
	q.queue = append([]snapshotRequest{req}, q.queue...)
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// next waits for the first queued request.
func (q *snapshots) next(ctx context.Context) (snapshotRequest, bool) {
	for {
		q.mu.Lock()
		if len(q.queue) > 0 {
			req := q.queue[0]
			q.queue = q.queue[1:]
			q.mu.Unlock()
			return req, true
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return snapshotRequest{}, false
		case <-q.wake:
		}
	}
}

// snapshotWorker runs queued snapshots one after another.
func (r *Reader) snapshotWorker(ctx context.Context) {
	for {
		req, ok := r.snaps.next(ctx)
		if !ok {
			return
		}
		err := r.runOnDemand(ctx, req)
		var ref *refusal
		switch {
		case ctx.Err() != nil:
			// The leadership ended (NATS away longer than the lease, say)
			// or the process stops. The snapshots still queued wait for
			// the next leadership; this one, accepted as they were, waits
			// with them rather than vanish, and starts over: its chunks
			// not yet stored are gone with the session.
			r.snaps.requeue(req)
			what := "on-demand snapshot"
			if req.catchUp {
				what = "catch-up snapshot"
			}
			r.log.Warn(what+" interrupted: the reader stopped, or stopped leading; it is taken again from its start if it leads again", "table", req.table, "id", req.id)
			return
		case err == nil && req.catchUp:
			r.forgetCatchUp(ctx, req)
		case err == nil:
		case req.catchUp && errors.As(err, &ref):
			// The table left the publication or lost its key meanwhile;
			// the publication manager asks again if it comes back.
			r.log.Warn("catch-up snapshot dropped", "table", req.table, "reason", ref.msg)
			r.forgetCatchUp(ctx, req)
		case req.catchUp:
			r.log.Error("catch-up snapshot failed; trying again", "table", req.table, "id", req.id, "err", err, "retry_in", catchUpRetry)
			time.AfterFunc(catchUpRetry, func() { _, _, _ = r.snaps.enqueue(req) })
		default:
			r.log.Error("on-demand snapshot failed; request it again", "table", req.table, "id", req.id, "err", err)
		}
	}
}

func (r *Reader) runOnDemand(ctx context.Context, req snapshotRequest) error {
	conn, err := connectSnapshot(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	plan, err := chunkPlan(ctx, conn, r.cfg.Publication, req.schema, req.name, req.oid)
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
	var first, next string
	queries := func() {
		from := fromTable(plan.schema, plan.name, plan.table.partitioned)
		order := fmt.Sprintf(" ORDER BY %s LIMIT %d", strings.Join(keyList, ", "), chunkRows)
		first = "SELECT " + strings.Join(quoted, ", ") + from + rowFilterClause(plan.rowFilter, "WHERE") + order
		next = "SELECT " + strings.Join(quoted, ", ") + from + " WHERE (" + strings.Join(keyList, ", ") + ") > (" + strings.Join(params, ", ") + ")" +
			rowFilterClause(plan.rowFilter, "AND") + order
	}
	queries()

	var types typeResolver
	what := "on-demand snapshot"
	if req.catchUp {
		what = "catch-up snapshot"
	}
	r.log.Info(what+" started", "table", req.table, "id", req.id)
	began, total := time.Now(), 0
	var after [][]byte
	renamed := 0 // renames met by the chunk being read
	for n := 1; ; n++ {
		if n > 1 || renamed > 0 {
			// Followed by its OID: renamed meanwhile, the rest of its rows
			// go out under its new name; dropped, there are none left.
			was := plan.schema + "." + plan.name
			found, err := plan.follow(ctx, conn)
			if err != nil {
				return err
			}
			if !found {
				r.log.Warn(what+" ended early: the table was dropped", "table", was, "id", req.id, "rows", total)
				return nil
			}
			if now := plan.schema + "." + plan.name; now != was {
				r.log.Info(what+" goes on under the table's new name", "table", was, "renamed_to", now, "id", req.id)
				queries()
			}
		}
		wm := randomID() // unguessable, and never shown: see the top of this file
		c := &chunk{schema: plan.schema, name: plan.name, table: plan.schema + "." + plan.name, relid: plan.oid, keys: plan.keys, consumed: make(chan struct{})}
		r.snaps.mu.Lock()
		r.snaps.chunks[wm] = c
		r.snaps.mu.Unlock()
		drop := func() {
			r.snaps.mu.Lock()
			delete(r.snaps.chunks, wm)
			r.snaps.mu.Unlock()
		}
		if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(false, $1, $2)`, watermarkPrefix, wm+":low"); err != nil {
			drop()
			return fmt.Errorf("write low watermark: %w", err)
		}
		if err := r.awaitOpenTransactions(ctx, conn, req.table); err != nil {
			drop()
			return err
		}
		sql, args := first, [][]byte(nil)
		if after != nil {
			sql, args = next, after
		}
		// The rows and the table's shape are read in one transaction: the
		// SELECT's lock on the table keeps any ALTER from committing
		// before the shape is read, so the shape is the rows'.
		if _, err := conn.Exec(ctx, `BEGIN`); err != nil {
			drop()
			return fmt.Errorf("begin reading chunk %d of %s: %w", n, req.table, err)
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
			drop()
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "42P01" && renamed < 3 { // undefined_table
				// Renamed (or dropped) after it was looked up: again.
				if _, err := conn.Exec(ctx, `ROLLBACK`); err != nil {
					return fmt.Errorf("end reading chunk %d of %s: %w", n, req.table, err)
				}
				renamed++
				continue
			}
			return fmt.Errorf("read chunk %d of %s: %w", n, req.table, err)
		}
		renamed = 0
		st := plan.table
		st.schema, st.name = plan.schema, plan.name
		shape, err := r.catalogShape(ctx, conn, &types, st)
		if err != nil {
			drop()
			return fmt.Errorf("read chunk %d of %s: %w", n, req.table, err)
		}
		if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
			drop()
			return fmt.Errorf("end reading chunk %d of %s: %w", n, req.table, err)
		}
		if err := applyTypes(ctx, conn, &types, columns); err != nil {
			drop()
			return fmt.Errorf("look up the column types of %s: %w", req.table, err)
		}
		r.snaps.mu.Lock()
		c.columns, c.keyIdx, c.rows, c.shape, c.filled = columns, keyIdx, rows, shape, true
		r.snaps.mu.Unlock()
		if hook := testHookChunkRead; hook != nil {
			hook(plan.schema + "." + plan.name)
		}
		if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(false, $1, $2)`, watermarkPrefix, wm+":high"); err != nil {
			drop()
			return fmt.Errorf("write high watermark: %w", err)
		}
		select { // one chunk at a time: memory stays bounded
		case <-c.consumed:
		case <-ctx.Done():
			drop()
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
	r.log.Info(what+" done", "table", req.table, "id", req.id, "rows", total, "took", time.Since(began).Round(time.Millisecond))
	return nil
}

// awaitOpenTransactions waits until every transaction that was open when
// it was called has ended. PostgreSQL makes a transaction visible a moment
// after it writes its commit record, and, with synchronous_commit on or a
// synchronous standby, only once the record is flushed or replicated: a
// transaction whose commit record lies before the low watermark can still
// be invisible to a SELECT that starts after it. Its change then reaches
// the stream before the window opens, and the chunk's older row after it:
// a stale read. Waiting for the transactions open at the watermark (their
// commit records, if any, may lie before it) closes that gap. A long open
// transaction delays the chunk, as it delays the creation of a slot; the
// log says so every few seconds. "Ended" is "visible to a new snapshot"
// (pg_visible_in_snapshot): pg_xact_status says committed as soon as the
// commit is recorded, before other sessions see it.
func (r *Reader) awaitOpenTransactions(ctx context.Context, conn *pgx.Conn, table string) error {
	// The transactions open now: those a snapshot taken now does not see
	// (its running list, and every id from its xmax on), up to an id
	// assigned after it, which is later than all of them.
	var snap, next string
	if err := conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap); err != nil {
		return fmt.Errorf("read the transactions open at the low watermark: %w", err)
	}
	if err := conn.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&next); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
			return fmt.Errorf("read the transactions open at the low watermark: %w", err)
		}
		// A standby assigns no transaction ids (logical decoding on a
		// standby, PostgreSQL 16+): the snapshot's running list is
		// what can be waited for there.
		if parts := strings.Split(snap, ":"); len(parts) == 3 {
			next = parts[1]
		}
	}
	open, err := openTransactions(snap, next)
	if err != nil {
		return err
	}
	began, told := time.Now(), time.Now()
	pause := time.Millisecond
	for len(open) > 0 {
		var still []int64
		if err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(x), '{}') FROM unnest($1::bigint[]) x
			WHERE NOT pg_visible_in_snapshot(x::text::xid8, pg_current_snapshot())`, open).Scan(&still); err != nil {
			return fmt.Errorf("wait for the transactions open at the low watermark: %w", err)
		}
		if open = still; len(open) == 0 {
			break
		}
		if time.Since(told) > 5*time.Second {
			r.log.Warn("a snapshot chunk waits for transactions open at its low watermark to end", "table", table,
				"transactions", fmt.Sprint(open), "waiting", time.Since(began).Round(time.Second))
			told = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
	return nil
}

// openTransactions lists the transaction ids a snapshot ("xmin:xmax:xip,…",
// pg_snapshot's text) does not see, below next: its running ones and every
// id from xmax to next.
func openTransactions(snap, next string) ([]int64, error) {
	parts := strings.Split(snap, ":")
	n, err := strconv.ParseInt(next, 10, 64)
	if len(parts) != 3 || err != nil {
		return nil, fmt.Errorf("read snapshot %q and transaction id %q", snap, next)
	}
	xmax, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("read snapshot %q: %w", snap, err)
	}
	var open []int64
	if parts[2] != "" {
		for _, f := range strings.Split(parts[2], ",") {
			x, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("read snapshot %q: %w", snap, err)
			}
			open = append(open, x)
		}
	}
	for x := xmax; x < n; x++ {
		open = append(open, x)
	}
	return open, nil
}

// window is the session's view of one chunk between its watermarks: the
// primary keys of its table that changed meanwhile.
type window struct {
	table   string   // schema.table, for logs
	relid   uint32   // the table's OID: a rename does not change it
	keys    []string // primary key column names
	changed map[string]struct{}
	// holdLSN is the highest position the reader may confirm while the
	// window is open: what it could confirm before the low watermark
	// came (session.walBefore). Not the watermark's own LSN: PostgreSQL
	// gives a logical message the LSN where its record ends, and on a
	// replay skips a record that starts before the confirmed position, so
	// confirming that LSN made a session restarted inside the window miss
	// the low watermark, meet the high one alone and skip the chunk, and
	// the snapshot waited for it for good. Every message before the low
	// watermark was sent as its record, or an earlier one, was decoded: its
	// LSN, and every keepalive's, is at most where the watermark's record
	// starts.
	holdLSN uint64
	// truncated: the table was truncated inside the window, so every row
	// the chunk read is either gone or written again by a change the
	// stream holds.
	truncated bool
}

// pendingChunk is a published chunk awaiting JetStream's acknowledgement.
// Until then the worker keeps it, so that a session restarted in between
// publishes it again at the replayed high watermark (same ids: what the
// stream already holds is not stored again).
type pendingChunk struct {
	id  string
	seq uint64
	// holdLSN is its window's: until the chunk is stored, the reader
	// confirms nothing past it, so that a session restarted meanwhile
	// opens the window again and publishes the chunk again.
	holdLSN uint64
}

// onDemandMessage handles watermarks seen in the stream, and ignores
// snapshot requests written into the WAL.
func (s *session) onDemandMessage(ctx context.Context, prefix string, content []byte, lsn uint64) error {
	if prefix == snapshotRequestPrefix {
		s.r.log.Warn("ignoring a snapshot request found in the WAL: any database role can write one; snapshots are requested over NATS (tablecast snapshot)",
			"lsn", pglogrepl.LSN(lsn).String())
		return nil
	}
	id, kind, ok := cutLast(string(content), ":")
	if !ok {
		return nil
	}
	s.r.snaps.mu.Lock()
	c := s.r.snaps.chunks[id]
	filled := c != nil && c.filled
	s.r.snaps.mu.Unlock()
	if c == nil {
		return nil // another reader's watermark, one forged, or a chunk published before a reconnect
	}
	switch kind {
	case "low":
		if s.windows[id] != nil {
			// The worker writes one low watermark per chunk, and a replay
			// starts a new session: a second one is forged.
			s.r.log.Warn("ignoring a repeated low watermark", "table", c.table, "lsn", pglogrepl.LSN(lsn).String())
			return nil
		}
		s.windows[id] = &window{table: c.table, relid: c.relid, keys: c.keys, holdLSN: s.walBefore, changed: map[string]struct{}{}}
	case "high":
		w := s.windows[id]
		if w == nil {
			// Cannot happen while confirming stops at open windows and
			// at chunks not yet stored (confirmLimit): a replay always
			// starts at or before the low watermark.
			s.r.log.Error("snapshot chunk without its low watermark; skipped", "table", c.table)
			return nil
		}
		if !filled {
			s.r.log.Warn("ignoring a high watermark written before its chunk was read", "table", c.table, "lsn", pglogrepl.LSN(lsn).String())
			return nil
		}
		delete(s.windows, id)
		if err := s.publishChunk(ctx, c, w, lsn); err != nil {
			return err
		}
		s.pendingChunks = append(s.pendingChunks, pendingChunk{id: id, seq: s.lastSeq, holdLSN: w.holdLSN})
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

// confirmLimit is the highest LSN the reader may confirm: the holdLSN of
// the oldest open window, or of a chunk published and not yet stored, just
// before its low watermark, so that a replay always sees it.
// (Transactions committed inside the window are acknowledged before the
// chunk's rows, which follow them: confirming them meanwhile made a
// session restarted in between start past the low watermark, skip the
// chunk, and leave the worker waiting for it for good.) A window whose
// chunk the worker gave up (its query failed: the table was dropped, say)
// is closed: no high watermark will come for it, and it would hold the
// slot's position for the rest of the session.
func (s *session) confirmLimit() uint64 {
	limit := uint64(math.MaxUint64)
	for _, p := range s.pendingChunks {
		limit = min(limit, p.holdLSN)
	}
	if len(s.windows) == 0 {
		return limit
	}
	s.r.snaps.mu.Lock()
	defer s.r.snaps.mu.Unlock()
	for id, w := range s.windows {
		if s.r.snaps.chunks[id] == nil {
			delete(s.windows, id)
			continue
		}
		limit = min(limit, w.holdLSN)
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
		if w.relid != rel.table.RelationID {
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

// noteTruncate records, in every open window on rel's table, that the
// table was truncated.
func (s *session) noteTruncate(rel *relation) {
	for _, w := range s.windows {
		if w.relid == rel.table.RelationID {
			w.truncated = true
		}
	}
}

// testHookChunkRead, when set (tests), runs once a chunk's rows are read,
// before its high watermark is written.
var testHookChunkRead func(table string)

// publishChunk publishes the chunk's rows whose keys did not change inside
// its window, as op "read".
func (s *session) publishChunk(ctx context.Context, c *chunk, w *window, lsn uint64) error {
	if w.truncated {
		s.r.log.Debug("snapshot chunk: the table was truncated meanwhile; its rows are left to the stream", "table", c.table, "skipped", len(c.rows))
		return nil
	}
	schemaName, name := c.schema, c.name
	tbl := &schema.Table{Schema: schemaName, Name: name, Columns: c.columns}
	var txn schema.Txn
	txn.ResetSnapshot(lsn, time.Now())
	if !s.alreadyStoredQuietly(eventID{txn.CommitLSN - 1, 1}) {
		// Before its rows, as a Relation message comes before its changes.
		if err := s.r.putShape(ctx, c.shape, lsn); err != nil {
			return fmt.Errorf("register the shape of %s: %w", c.table, err)
		}
	}
	subject := stream.ChangeSubject(s.r.prefix, s.r.db, schemaName, name, schema.OpRead)
	count := s.r.tableCount(schemaName, name)
	row := make([]schema.Value, len(c.columns))
	var key []byte
	skipped := 0
	opted := s.old != nil && s.old.tables.Match(schemaName, name) && len(c.keyIdx) > 0
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
		rc := schema.Change{Op: schema.OpRead, Ordinal: uint32(n + 1), New: row}
		seq, err := s.r.publishChange(ctx, s.pub, subject, tbl, &txn, &rc, &s.ev)
		if err != nil {
			return fmt.Errorf("publish snapshot chunk of %s: %w", c.table, err)
		}
		s.lastSeq = seq // before remember, which may wait and confirm meanwhile
		if opted {
			// The row's version for its next update or delete.
			var ev []byte
			if s.ev.whole {
				ev = s.ev.buf
			}
			if err := s.remember(ctx, tbl, eventID{txn.CommitLSN - 1, uint64(n + 1)}, &rc, nil, ev); err != nil {
				return err
			}
		}
		s.ev.release()
		s.r.m.published[schema.OpRead].Inc()
		count.Add(1)
	}
	if skipped > 0 {
		s.r.log.Debug("snapshot chunk: rows changed meanwhile left to the stream", "table", c.table, "skipped", skipped)
	}
	return nil
}
