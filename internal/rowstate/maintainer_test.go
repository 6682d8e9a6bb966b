package rowstate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/cdc"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/internal/pgtest"
	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const prefix = "tc"

// env is a database streamed by a real reader into a real JetStream.
type env struct {
	t    testing.TB
	nats *natstest.Server
	db   string
	conn *pgx.Conn
}

var slotN struct {
	sync.Mutex
	n int
}

func newEnv(t testing.TB, setup string) *env {
	t.Helper()
	c := pgtest.Require(t)
	name, url := c.CreateDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, setup); err != nil {
		t.Fatalf("setup: %v", err)
	}
	n := natstest.Start(t)
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: prefix, DuplicateWindow: time.Minute}); err != nil {
		t.Fatal(err)
	}
	slotN.Lock()
	slotN.n++
	slot := fmt.Sprintf("rs_slot_%d_%d", os.Getpid(), slotN.n)
	slotN.Unlock()
	r, err := cdc.New(cdc.Config{DatabaseURL: url, Slot: slot, Publication: "rs_pub", StallAfter: time.Hour,
		RetryMin: 100 * time.Millisecond, RetryMax: 500 * time.Millisecond}, n.NC, n.JS, prefix, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = r.Run(rctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		c2, err := pgx.Connect(context.Background(), url)
		if err == nil {
			_, _ = c2.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot)
			c2.Close(context.Background())
		}
	})
	waitFor(t, 30*time.Second, "the reader to stream", func() bool { return r.Health().Streaming })
	return &env{t: t, nats: n, db: name, conn: conn}
}

func (e *env) exec(sql string) {
	e.t.Helper()
	if _, err := e.conn.Exec(context.Background(), sql); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// maintainer runs a maintainer until the returned stop is called.
func (e *env) maintainer() (m *rowstate.Maintainer, stop func()) {
	e.t.Helper()
	return e.maintainerOf(rowstate.Config{})
}

// maintainerOf is maintainer with cfg's batch bounds.
func (e *env) maintainerOf(cfg rowstate.Config) (m *rowstate.Maintainer, stop func()) {
	e.t.Helper()
	m, err := rowstate.New(rowstate.Config{DB: e.db, Prefix: prefix, RetryMin: 50 * time.Millisecond, BatchEvents: cfg.BatchEvents, BatchWait: cfg.BatchWait}, e.nats.NC)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(stop)
	return m, stop
}

// caughtUp waits until m has applied every event in the stream.
func (e *env) caughtUp(m *rowstate.Maintainer) {
	e.t.Helper()
	waitFor(e.t, 30*time.Second, "the row state to catch up", func() bool {
		s, err := e.nats.JS.Stream(context.Background(), "TABLECAST")
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		return err == nil && m.Applied() >= info.State.LastSeq
	})
}

// rows reads the table from the row state: key → data.
func (e *env) rows(table string) (map[string]string, uint64) {
	e.t.Helper()
	out, n, err := e.tryRows(table)
	if err != nil {
		e.t.Fatalf("scan %s: %v", table, err)
	}
	return out, n
}

func (e *env) tryRows(table string) (map[string]string, uint64, error) {
	ctx := context.Background()
	rows, err := e.nats.JS.Stream(ctx, rowstate.RowsStreamName("TABLECAST"))
	if err != nil {
		return nil, 0, err
	}
	out := map[string]string{}
	n, err := rowstate.Scan(ctx, rows, prefix, e.db, "public", table, func(r rowstate.Row) error {
		if r.Deleted {
			delete(out, string(r.Key))
		} else {
			out[string(r.Key)] = canon(e.t, r.Data)
		}
		return nil
	})
	return out, n, err
}

// want reads the table from PostgreSQL: key → data.
func (e *env) want(table string) map[string]string {
	e.t.Helper()
	rs, err := e.conn.Query(context.Background(), fmt.Sprintf(`SELECT json_build_object('id', id)::text, row_to_json(t)::text FROM %s t`, table))
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	for rs.Next() {
		var k, v string
		if err := rs.Scan(&k, &v); err != nil {
			e.t.Fatal(err)
		}
		out[canon(e.t, []byte(k))] = canon(e.t, []byte(v))
	}
	if err := rs.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func canon(t testing.TB, raw []byte) string {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// settled waits until the state of the table equals PostgreSQL's, then
// checks it (reporting the differences when it never does).
func (e *env) settled(what, table string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, _, err := e.tryRows(table)
		want := e.want(table)
		if err == nil && diff(got, want) == 0 || time.Now().After(deadline) {
			if err != nil {
				e.t.Fatalf("%s: %v", what, err)
			}
			sameRows(e.t, what, got, want)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func diff(got, want map[string]string) int {
	n := 0
	for k, w := range want {
		if got[k] != w {
			n++
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			n++
		}
	}
	return n
}

func sameRows(t testing.TB, what string, got, want map[string]string) {
	t.Helper()
	bad := 0
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			if bad++; bad <= 5 {
				t.Errorf("%s: row %s: state has %.200q, PostgreSQL %.200q", what, k, g, w)
			}
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			if bad++; bad <= 5 {
				t.Errorf("%s: row %s is in the state (%.100q) but not in PostgreSQL", what, k, g)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%s: %d rows differ (state %d rows, PostgreSQL %d)", what, bad, len(got), len(want))
	}
}

func waitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const items = `CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, big text);
INSERT INTO items SELECT g, 'n' || g, NULL FROM generate_series(1, 300) g;`

// bigText is a value PostgreSQL stores out of line (TOAST), so that an
// update leaving it alone does not send it.
const bigText = `(SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, 300) g)`

// TestStateFollowsTheTable: the rows in the state equal the table's after
// the initial snapshot, inserts, updates (one changing a key, one leaving
// a TOASTed value out), deletes and a truncate; they survive a restart of
// the maintainer with changes made while it was down; and a state deleted
// whole is rebuilt from the event stream.
func TestStateFollowsTheTable(t *testing.T) { stateFollowsTheTable(t) }

func stateFollowsTheTable(t *testing.T) {
	e := newEnv(t, items)
	_, stop := e.maintainer()
	e.settled("initial snapshot", "items")

	e.exec(`INSERT INTO items SELECT g, 'n' || g, NULL FROM generate_series(301, 400) g`)
	e.exec(`UPDATE items SET big = ` + bigText + ` WHERE id IN (5, 6)`)
	e.exec(`UPDATE items SET name = 'renamed' WHERE id BETWEEN 1 AND 50`) // big unchanged (TOAST) on 5 and 6
	e.exec(`UPDATE items SET id = 1000 + id WHERE id IN (6, 7)`)          // key changes
	e.exec(`DELETE FROM items WHERE id BETWEEN 100 AND 150`)
	e.exec(`BEGIN; DELETE FROM items WHERE id = 200; INSERT INTO items VALUES (200, 'again', NULL); COMMIT`)
	e.settled("after changes", "items")
	got, _ := e.rows("items")
	if !hasBig(got, 5) {
		t.Fatalf("row 5 lost its TOASTed value: %.200q", got[`{"id":5}`])
	}

	stop()
	e.exec(`UPDATE items SET name = 'while down' WHERE id > 300`)
	e.exec(`DELETE FROM items WHERE id < 20`)
	_, stop = e.maintainer()
	e.settled("after a restart", "items")

	e.exec(`TRUNCATE items`)
	e.exec(`INSERT INTO items VALUES (1, 'after truncate', NULL)`)
	e.settled("after a truncate", "items")

	stop()
	if err := e.nats.JS.DeleteStream(context.Background(), rowstate.RowsStreamName("TABLECAST")); err != nil {
		t.Fatal(err)
	}
	_, _ = e.maintainer()
	e.settled("rebuilt from the event stream", "items")
}

func hasBig(rows map[string]string, id int) bool {
	var row struct{ Big *string }
	_ = json.Unmarshal([]byte(rows[fmt.Sprintf(`{"id":%d}`, id)]), &row)
	return row.Big != nil && len(*row.Big) > 1000
}

// TestScanIsExactUnderWrites: scans taken while a writer changes the
// table, keys included, finish (a scan does not chase the writer), give each
// row at most once and none newer than the sequence N they return; each,
// completed with the events after N as a live view applies them, equals
// the table. Every scan is checked again once the writer stops, so that a
// row a scan lacks and no event after N brings is found.
func TestScanIsExactUnderWrites(t *testing.T) {
	e := newEnv(t, items)
	m, _ := e.maintainer()
	e.caughtUp(m)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writer := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(ctx, e.conn.Config().ConnString())
		if err != nil {
			writer <- err
			return
		}
		defer conn.Close(context.Background())
		for i := 0; ctx.Err() == nil; i++ {
			id := i%400 + 1
			var sql string
			switch i % 4 {
			case 0:
				sql = fmt.Sprintf(`INSERT INTO items VALUES (%d, 'w%d', NULL) ON CONFLICT (id) DO UPDATE SET name = 'w%d'`, id, i, i)
			case 1:
				sql = fmt.Sprintf(`UPDATE items SET name = 'u%d' WHERE id = %d`, i, id)
			case 2:
				sql = fmt.Sprintf(`DELETE FROM items WHERE id = %d`, (id*7)%400+1)
			case 3:
				sql = fmt.Sprintf(`UPDATE items SET id = %d WHERE id = %d AND NOT EXISTS (SELECT 1 FROM items WHERE id = %d)`, 401+id%50, id, 401+id%50)
			}
			if _, err := conn.Exec(ctx, sql); err != nil && ctx.Err() == nil {
				writer <- err
				return
			}
		}
		writer <- nil
	}()
	type taken struct {
		rows map[string]string
		tr   scanTrace
	}
	var scans []taken
	for round := 0; round < 8; round++ {
		rows, tr := e.tracedRows("items", false)
		scans = append(scans, taken{rows, tr})
		t.Logf("scan %d: %d rows, %s", round, len(rows), tr)
		time.Sleep(100 * time.Millisecond) // the writer goes on meanwhile
	}
	cancel()
	if err := <-writer; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("writer: %v", err)
	}
	// The state equal to the table: the reader has streamed every change.
	e.settled("at rest", "items")
	e.caughtUp(m)
	want := e.want("items")
	var history *rowHistory
	explain := func(key string) string {
		if history == nil {
			history = e.rowHistory("items")
		}
		return history.explain(key)
	}
	for i, sc := range scans {
		applyEvents(t, e, sc.rows, sc.tr.n)
		sameRowsExplained(t, fmt.Sprintf("scan %d (%s) with the events after", i, sc.tr), sc.rows, want, explain)
	}
}

// boundedRows scans the table, failing on a row given twice, a tombstone,
// or a row newer than the sequence the scan returns.
func (e *env) boundedRows(table string) (map[string]string, uint64) {
	e.t.Helper()
	rows, err := e.nats.JS.Stream(context.Background(), rowstate.RowsStreamName("TABLECAST"))
	if err != nil {
		e.t.Fatal(err)
	}
	return e.boundedRowsOf(rows, table)
}

// boundedRowsOf is boundedRows reading the rows stream through rows.
func (e *env) boundedRowsOf(rows jetstream.Stream, table string) (map[string]string, uint64) {
	e.t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	var newest uint64
	var bad error
	n, err := rowstate.Scan(ctx, rows, prefix, e.db, "public", table, func(r rowstate.Row) error {
		key := canon(e.t, r.Key)
		switch {
		case r.Deleted:
			bad = fmt.Errorf("a tombstone of %s", key)
		case out[key] != "":
			bad = fmt.Errorf("row %s twice", key)
		}
		newest = max(newest, r.Seq)
		out[key] = canon(e.t, r.Data)
		return bad
	})
	if err != nil {
		e.t.Fatalf("scan %s: %v", table, err)
	}
	if newest > n {
		e.t.Fatalf("scan %s as of %d gave a row of event %d", table, n, newest)
	}
	return out, n
}

// applyEvents applies the table's events after n to rows, up to the end of
// the stream, as a live view does: an update of a row rows lacks sets it
// (the scan left out a row changed while it ran: an enter), a delete of one
// it lacks does nothing. A create of a row rows holds fails the test: the
// scan gave a row newer than n, or twice.
func applyEvents(t testing.TB, e *env, rows map[string]string, n uint64) {
	t.Helper()
	ctx := context.Background()
	s, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq <= n {
		return
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{stream.TableSubjects(prefix, e.db, "public", "items")},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: n + 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	it, err := cons.Messages()
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("read the events after %d: %v", n, err)
		}
		meta, _ := msg.Metadata()
		var ev struct {
			Op   string          `json:"op"`
			Key  json.RawMessage `json:"key"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		key := canon(t, ev.Key)
		switch ev.Op {
		case "create":
			if _, ok := rows[key]; ok {
				t.Fatalf("event %d creates row %s, which the scan as of %d holds", meta.Sequence.Stream, key, n)
			}
			rows[key] = canon(t, ev.Data)
		case "update":
			delete(rows, key)
			var d struct{ ID int }
			_ = json.Unmarshal(ev.Data, &d)
			rows[fmt.Sprintf(`{"id":%d}`, d.ID)] = canon(t, ev.Data)
		case "delete":
			delete(rows, key)
		case "truncate":
			clear(rows)
		}
		if meta.Sequence.Stream >= info.State.LastSeq || meta.NumPending == 0 {
			return
		}
	}
}

// TestAppliedIDIsRecorded: the maintainer tells the id of the last event
// it applied (the one at Applied), and records it on the database's marker,
// so that a maintainer started again knows it before applying anything.
func TestAppliedIDIsRecorded(t *testing.T) {
	e := newEnv(t, items)
	m, stop := e.maintainer()
	e.exec(`UPDATE items SET name = 'x' WHERE id BETWEEN 1 AND 10`)
	ctx := context.Background()
	events, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	var last *jetstream.RawStreamMsg
	waitFor(t, 30*time.Second, "the stream to hold the updates", func() bool {
		last, err = events.GetLastMsgForSubject(ctx, prefix+".>")
		return err == nil && strings.Contains(string(last.Data), `"op":"update"`) && strings.Contains(string(last.Data), `"key":{"id":10}`)
	})
	e.caughtUp(m)
	want := last.Header.Get("Nats-Msg-Id")
	if _, _, ok := schema.ParseEventID(want); !ok {
		t.Fatalf("last event's id %q", want)
	}
	if got := m.LastApplied(); got.ID != want || got.Seq != last.Sequence || m.AppliedID() != want {
		t.Fatalf("applied %+v (AppliedID %q), want %d %q", got, m.AppliedID(), last.Sequence, want)
	}
	stop()
	rows, err := e.nats.JS.Stream(ctx, rowstate.RowsStreamName("TABLECAST"))
	if err != nil {
		t.Fatal(err)
	}
	marker, err := rowstate.ReadDBMarker(ctx, rows, prefix, e.db)
	if err != nil || marker.AppliedID != want || marker.Applied != last.Sequence {
		t.Fatalf("marker %+v (%v), want applied %d, id %q", marker, err, last.Sequence, want)
	}
	m, _ = e.maintainer()
	waitFor(t, 30*time.Second, "the maintainer to open the state", m.Ready)
	if got := m.LastApplied(); got.ID != want || got.Seq != last.Sequence {
		t.Fatalf("after a restart, applied %+v, want %d %q", got, last.Sequence, want)
	}
}
