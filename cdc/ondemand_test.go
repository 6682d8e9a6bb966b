package cdc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// TestOnDemandSnapshot: a snapshot of one table, requested while a writer
// updates, inserts and deletes its rows, publishes every row in key-ordered
// chunks, never a row older than a change already in the stream and never
// a deleted row again; replaying the stream rebuilds the table exactly.
func TestOnDemandSnapshot(t *testing.T) {
	const rows = 5000 // three chunks
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)`,
		fmt.Sprintf(`INSERT INTO items SELECT g, 0 FROM generate_series(1, %d) g`, rows))
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)

	writer, err := pgx.Connect(context.Background(), db.url)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(context.Background())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(5, 6))
		next := rows
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			var sql string
			switch {
			case i%10 == 0:
				sql = fmt.Sprintf(`DELETE FROM items WHERE id = %d`, 1+rng.IntN(rows))
			case i%5 == 0:
				next++
				sql = fmt.Sprintf(`INSERT INTO items VALUES (%d, 0)`, next)
			default:
				sql = fmt.Sprintf(`UPDATE items SET v = v + 1 WHERE id = %d`, 1+rng.IntN(next))
			}
			if _, err := writer.Exec(context.Background(), sql); err != nil {
				t.Errorf("writer: %v", err)
				return
			}
		}
	}()

	time.Sleep(100 * time.Millisecond)
	if _, err := RequestSnapshot(context.Background(), n.NC, testPrefix, cfg.Slot, "public.items"); err != nil {
		t.Fatalf("request snapshot: %v", err)
	}
	waitFor(t, 60*time.Second, "the on-demand snapshot to finish", func() bool { return r.log.contains("on-demand snapshot done") })
	close(stop)
	wg.Wait()
	db.exec(t, `INSERT INTO items VALUES (-1, -1)`) // marker: the last event
	waitFor(t, 60*time.Second, "the marker row", func() bool {
		e, ok := n.lastEvent(t)
		return ok && e.Key["id"] == float64(-1)
	})

	type rowState struct {
		v       float64
		deleted bool
	}
	state := map[float64]*rowState{}
	reads := 0
	for _, e := range n.fetch(t) {
		id := e.Key["id"].(float64)
		st := state[id]
		switch e.Op {
		case "read":
			reads++
			if st != nil && (st.deleted || e.Data["v"].(float64) < st.v) {
				t.Fatalf("stale read of row %v: v=%v after the stream had v=%v deleted=%v", id, e.Data["v"], st.v, st.deleted)
			}
			if !strings.HasSuffix(e.Subject, ".items.read") {
				t.Fatalf("read event on %s", e.Subject)
			}
			fallthrough
		case "create", "update":
			state[id] = &rowState{v: e.Data["v"].(float64)}
		case "delete":
			state[id] = &rowState{deleted: true}
		}
	}
	if reads == 0 {
		t.Fatal("the snapshot published no rows")
	}
	table := map[float64]float64{}
	rs, err := db.conn.Query(context.Background(), `SELECT id, v FROM items`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id, v int
		if err := rs.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		table[float64(id)] = float64(v)
	}
	live := 0
	for id, st := range state {
		if st.deleted {
			if _, ok := table[id]; ok {
				t.Errorf("row %v is in the table but the stream ends with its delete", id)
			}
			continue
		}
		live++
		if v, ok := table[id]; !ok || v != st.v {
			t.Errorf("row %v: stream says v=%v, table says %v (present %v)", id, st.v, v, ok)
		}
	}
	if live != len(table) {
		t.Fatalf("stream rebuilds %d rows, the table has %d", live, len(table))
	}
	t.Logf("%d rows read by the snapshot; %d rows in the table", reads, len(table))
}

// TestRequestSnapshotRefusesBadTables: clear errors for tables that cannot
// be snapshotted.
func TestRequestSnapshotRefusesBadTables(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE nokey (v int)`, `CREATE TABLE keyed (id int PRIMARY KEY)`, `CREATE TABLE unpublished (id int PRIMARY KEY)`)
	db.exec(t, `CREATE PUBLICATION tc_pub FOR TABLE nokey, keyed`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	startReader(t, cfg, n)
	for table, want := range map[string]string{
		"public.nokey":       "has no primary key",
		"public.unpublished": "is not in publication",
		"public.missing":     "is not in publication",
		"nodot":              "want schema.table",
	} {
		_, err := RequestSnapshot(context.Background(), n.NC, testPrefix, db.slot, table)
		if !IsConfigError(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("RequestSnapshot(%s) = %v, want a ConfigError with %q", table, err, want)
		}
	}
	if _, err := RequestSnapshot(context.Background(), n.NC, testPrefix, db.slot, "public.keyed"); err != nil {
		t.Errorf("RequestSnapshot(public.keyed) = %v", err)
	}
}

// TestSnapshotWaitsForCommitsNotYetVisible: a transaction can be decoded
// (its commit record is flushed) before other sessions see it, here held
// invisible by a synchronous standby that never answers. Its update reaches
// the stream before a snapshot chunk's low watermark, while the chunk's
// SELECT would still read the row as it was: a stale read, published after
// the newer change. The chunk must wait for the transactions open at its low
// watermark to end, and read the row as the update left it.
func TestSnapshotWaitsForCommitsNotYetVisible(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)`,
		`INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)

	// A synchronous standby that does not exist: a session with
	// synchronous_commit on waits, committed but invisible, until its wait
	// is cancelled. (pgtest runs with synchronous_commit off: other
	// sessions are not affected.)
	db.exec(t, `ALTER SYSTEM SET synchronous_standby_names = 'tablecast_phantom_standby'`)
	db.exec(t, `SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), db.url)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), `ALTER SYSTEM RESET synchronous_standby_names`)
		_, _ = c.Exec(context.Background(), `SELECT pg_reload_conf()`)
	})
	writer, err := pgx.Connect(context.Background(), db.url)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(context.Background())
	var pid int
	if err := writer.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Exec(context.Background(), `SET synchronous_commit = on`); err != nil {
		t.Fatal(err)
	}
	updated := make(chan error, 1)
	go func() {
		_, err := writer.Exec(context.Background(), `UPDATE items SET v = 1 WHERE id = 5`)
		updated <- err
	}()
	waitFor(t, 20*time.Second, "the update to reach the stream while its session waits", func() bool {
		for _, e := range eventsOf(t, n, "public.items") {
			if e.Op == "update" && e.Key["id"] == float64(5) {
				return true
			}
		}
		return false
	})
	var visible int
	if err := db.conn.QueryRow(context.Background(), `SELECT v FROM items WHERE id = 5`).Scan(&visible); err != nil || visible != 0 {
		t.Fatalf("the update is visible (v=%d, %v) before its wait ends: the test cannot hold a commit invisible", visible, err)
	}

	if _, err := RequestSnapshot(context.Background(), n.NC, testPrefix, cfg.Slot, "public.items"); err != nil {
		t.Fatalf("request snapshot: %v", err)
	}
	// Let the chunk reach its SELECT (or its wait), then end the
	// writer's wait: its transaction becomes visible.
	waitFor(t, 20*time.Second, "the snapshot to start", func() bool { return r.log.contains("on-demand snapshot started") })
	time.Sleep(500 * time.Millisecond)
	db.exec(t, `SELECT pg_cancel_backend($1)`, pid)
	if err := <-updated; err != nil {
		t.Logf("the writer's wait ended with %v", err)
	}
	waitFor(t, 30*time.Second, "the on-demand snapshot to finish", func() bool { return r.log.contains("on-demand snapshot done") })

	var last map[string]any
	for _, e := range eventsOf(t, n, "public.items") {
		if e.Key["id"] == float64(5) {
			last = map[string]any{"op": e.Op, "v": e.Data["v"]}
		}
	}
	if last["op"] != "read" || last["v"] != float64(1) {
		t.Fatalf("row 5's last event is %v, want a read with v=1: the snapshot read the row as it was before a change already streamed", last)
	}
}

func TestOpenTransactions(t *testing.T) {
	for _, c := range []struct {
		snap, next string
		want       string
	}{
		{"100:100:", "100", "[]"},
		{"100:100:", "103", "[100 101 102]"},
		{"90:104:90,97", "106", "[90 97 104 105]"},
	} {
		got, err := openTransactions(c.snap, c.next)
		if err != nil || fmt.Sprint(got) != c.want {
			t.Errorf("openTransactions(%q, %q) = %v, %v; want %s", c.snap, c.next, got, err, c.want)
		}
	}
	for _, bad := range [][2]string{{"100:100", "101"}, {"a:b:", "1"}, {"1:2:x", "3"}, {"1:2:", "z"}} {
		if _, err := openTransactions(bad[0], bad[1]); err == nil {
			t.Errorf("openTransactions(%q, %q): no error", bad[0], bad[1])
		}
	}
}

// TestFailedChunkReleasesTheSlot: a chunk whose query fails after its low
// watermark was streamed (here its table is dropped while the chunk waits
// for the transaction that drops it) opens a window no high watermark closes; the reader must not
// hold the slot's position at it for the rest of the session.
func TestFailedChunkReleasesTheSlot(t *testing.T) {
	t.Parallel() // see parallelTests
	ctx := context.Background()
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `INSERT INTO items VALUES (1)`, `CREATE TABLE other (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	locker, err := pgx.Connect(ctx, db.url)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(ctx)
	if _, err := locker.Exec(ctx, `BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	if _, err := RequestSnapshot(ctx, n.NC, testPrefix, cfg.Slot, "public.items"); err != nil {
		t.Fatal(err)
	}
	// The lock gave the locker a transaction id: the chunk waits for it
	// to end, past its low watermark.
	waitFor(t, 15*time.Second, "the chunk to wait for the locker", func() bool {
		var waiting int
		_ = db.conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tablecast-snapshot' AND query LIKE '%pg_visible_in_snapshot%'`).Scan(&waiting)
		return waiting > 0
	})
	db.exec(t, `INSERT INTO other VALUES (1)`) // streamed after the low watermark
	n.readAll(t, 1, 15*time.Second)
	if _, err := locker.Exec(ctx, `DROP TABLE items; COMMIT`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the snapshot to end", func() bool { return r.log.contains("on-demand snapshot ended early: the table was dropped") })
	db.exec(t, `INSERT INTO other VALUES (2)`)
	var now string
	if err := db.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	want, _ := pglogrepl.ParseLSN(now)
	n.readAll(t, 2, 15*time.Second)
	waitFor(t, 15*time.Second, "the slot to confirm the last insert", func() bool {
		got, err := pglogrepl.ParseLSN(db.slotLSN(t))
		return err == nil && got >= want
	})
}

// TestTruncateInsideAChunk: a table truncated after a chunk read its rows
// and before the chunk's high watermark has none of them sent: they would
// follow the truncate in the stream, rows that no longer exist.
func TestTruncateInsideAChunk(t *testing.T) {
	ctx := context.Background()
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `INSERT INTO items SELECT generate_series(1, 5)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	truncater, err := pgx.Connect(ctx, db.url)
	if err != nil {
		t.Fatal(err)
	}
	defer truncater.Close(ctx)
	var once sync.Once
	testHookChunkRead = func(table string) {
		once.Do(func() {
			if _, err := truncater.Exec(ctx, `TRUNCATE items`); err != nil {
				t.Errorf("truncate: %v", err)
			}
		})
	}
	t.Cleanup(func() { testHookChunkRead = nil })
	if _, err := RequestSnapshot(ctx, n.NC, testPrefix, cfg.Slot, "public.items"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the snapshot to end", func() bool { return r.log.contains("on-demand snapshot done") })
	db.exec(t, `INSERT INTO items VALUES (6)`)
	evs := n.readAll(t, 2, 15*time.Second)
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s:%v", e.Op, e.Key["id"]))
	}
	if strings.Join(got, " ") != "truncate:<nil> create:6" {
		t.Fatalf("events %v, want the truncate and the insert after it, no read of a row the truncate removed", got)
	}
}
