package cdc

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
)

// TestInitialSnapshot: rows already in the tables go out as "read" events
// from the slot's exported snapshot, and rows written while the snapshot
// is taken arrive as changes: replaying the stream rebuilds the tables
// exactly, and no row is both read and created.
func TestInitialSnapshot(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE items (id int PRIMARY KEY, v text)`,
		`INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 3000) g`,
		`CREATE DOMAIN posint AS int CHECK (VALUE > 0)`,
		// g is not published (PostgreSQL 15 to 17 send no generated
		// column), so the snapshot leaves it out too.
		`CREATE TABLE "Other Table" (k text PRIMARY KEY, n numeric, d posint, ds posint[], g text GENERATED ALWAYS AS (k || '!') STORED)`,
		`INSERT INTO "Other Table" VALUES ('a', 1.5, 7, '{1,2}'), ('b', NULL, NULL, NULL)`)
	n := startNATS(t)

	// Writes racing the snapshot.
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
		for i := 3001; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := writer.Exec(context.Background(), fmt.Sprintf(`INSERT INTO items VALUES (%d, 'new'); UPDATE items SET v = 'changed' WHERE id = %d`, i, i-3000)); err != nil {
				t.Errorf("writer: %v", err)
				return
			}
		}
	}()
	r := startReader(t, db.config(), n)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	var total int
	if err := db.conn.QueryRow(context.Background(), `SELECT count(*) FROM items`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	db.exec(t, `INSERT INTO "Other Table" VALUES ('end', 0)`) // a marker: last event
	waitFor(t, 60*time.Second, "the marker row", func() bool {
		e, ok := n.lastEvent(t)
		return ok && e.Table == "Other Table" && e.Op == "create"
	})
	evs := n.fetch(t)

	state := map[string]map[string]any{}
	read, created := map[string]bool{}, map[string]bool{}
	var readLSN string
	for _, e := range evs {
		if e.Table != "items" {
			continue
		}
		id := fmt.Sprint(e.Key["id"])
		switch e.Op {
		case "read":
			if readLSN == "" {
				readLSN = e.LSN
			}
			if e.LSN != readLSN || e.Subject != "tc."+db.name+".public.items.read" {
				t.Fatalf("read event %s: lsn %s subject %s; want the snapshot's LSN %s and a .read subject", e.ID, e.LSN, e.Subject, readLSN)
			}
			if read[id] {
				t.Fatalf("row %s read twice", id)
			}
			read[id] = true
		case "create":
			created[id] = true
		}
		if read[id] && created[id] {
			t.Fatalf("row %s both read by the snapshot and created by the stream", id)
		}
		state[id] = e.Data
	}
	if len(read) < 3000 {
		t.Fatalf("snapshot read %d rows of items, want at least the 3000 that were there", len(read))
	}
	rows, err := db.conn.Query(context.Background(), `SELECT id, v FROM items`)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for rows.Next() {
		var id int
		var v string
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		want++
		got := state[fmt.Sprint(id)]
		if got == nil || got["v"] != v {
			t.Errorf("row %d: stream says %v, table says %q", id, got, v)
		}
	}
	if len(state) != want || want != total {
		t.Fatalf("stream rebuilds %d rows, table has %d (%d counted before)", len(state), want, total)
	}

	var other []event
	for _, e := range evs {
		if e.Table == "Other Table" && e.Op == "read" {
			other = append(other, e)
		}
	}
	if len(other) != 2 || other[0].Data["k"] != "a" || other[0].Data["n"] != "1.5" || other[1].Data["n"] != nil {
		t.Fatalf("snapshot of \"Other Table\": %v", other)
	}
	// A domain over int is a number, an array of it a JSON array, as in
	// streamed changes.
	if d := string(other[0].Raw); !strings.Contains(d, `"d":7,"ds":[1,2]`) {
		t.Errorf("snapshot row %s: want the domain as a number and its array as a JSON array", d)
	}
	// The same columns read as streamed: the marker row was created.
	if end := evs[len(evs)-1]; fmt.Sprint(slices.Sorted(maps.Keys(other[0].Data))) != fmt.Sprint(slices.Sorted(maps.Keys(end.Data))) {
		t.Errorf("snapshot row %s and streamed row %s have different columns", other[0].Raw, end.Raw)
	}
	if !r.log.contains("initial snapshot done") {
		t.Error("no log line for the finished snapshot")
	}
}

// TestSnapshotNever: with TABLECAST_SNAPSHOT=never, rows already there are
// not published.
func TestSnapshotNever(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `INSERT INTO items VALUES (1), (2)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	startReader(t, cfg, n)
	db.exec(t, `INSERT INTO items VALUES (3)`)
	evs := n.readAll(t, 1, 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	evs = n.fetch(t)
	if len(evs) != 1 || evs[0].Op != "create" || evs[0].Data["id"] != float64(3) {
		t.Fatalf("got %d events (first %s), want only the insert of row 3", len(evs), evs[0].Raw)
	}
}

// TestInterruptedSnapshotIsRedone: a reader that finds its slot with a
// snapshot still marked pending (it died midway) drops the slot and takes
// the snapshot again instead of streaming on top of a partial copy. Rows
// deleted in between were sent by the first attempt, and their deletes
// went with the slot dropped: each table's rows taken again come after a
// truncate (cause "snapshot_restarted"), so that what the stream says the
// table holds is what it holds.
func TestInterruptedSnapshotIsRedone(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `INSERT INTO items SELECT generate_series(1, 100)`,
		`CREATE TABLE other (id int PRIMARY KEY)`, `INSERT INTO other VALUES (1)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	n.readAll(t, 101, 30*time.Second)
	r.stop(t)

	kv, err := n.JS.KeyValue(context.Background(), stateBucket)
	if err != nil {
		t.Fatal(err)
	}
	marked := 0
	for k := range markers(t, kv) {
		if _, err := kv.Put(context.Background(), k, []byte(snapshotPending)); err != nil {
			t.Fatal(err)
		}
		marked++
	}
	if marked != 1 {
		t.Fatalf("%d snapshot markers, want 1", marked)
	}
	// Deleted and changed while the snapshot is pending: in the WAL of
	// the slot about to be dropped.
	db.exec(t, `DELETE FROM items WHERE id <= 10`)
	db.exec(t, `UPDATE items SET id = 1000 WHERE id = 50`)
	db.exec(t, `DELETE FROM other`)
	r2 := startReader(t, db.config(), n)
	evs := n.readAll(t, 101+2+90, 30*time.Second)
	if !r2.log.contains("initial snapshot of this slot was interrupted") {
		t.Error("no log line about the interrupted snapshot")
	}
	second := evs[101:]
	if second[0].Op != "truncate" || second[0].Cause != schema.CauseSnapshotRestarted || second[0].LSN == evs[0].LSN {
		t.Fatalf("second snapshot begins %s; want a truncate, cause %s, from a new slot", second[0].Raw, schema.CauseSnapshotRestarted)
	}
	// Applied in order, the whole stream holds each table's rows as
	// PostgreSQL does.
	applied := func(evs []event) map[string]map[float64]bool {
		rows := map[string]map[float64]bool{"items": {}, "other": {}}
		for _, e := range evs {
			switch e.Op {
			case "truncate":
				rows[e.Table] = map[float64]bool{}
			case "read", "create", "update":
				rows[e.Table][e.Key["id"].(float64)] = true
			case "delete":
				delete(rows[e.Table], e.Key["id"].(float64))
			}
		}
		return rows
	}
	want := func() map[string]map[float64]bool {
		rows := map[string]map[float64]bool{"items": {}, "other": {}}
		for _, table := range []string{"items", "other"} {
			q, err := db.conn.Query(context.Background(), `SELECT id FROM `+table)
			if err != nil {
				t.Fatal(err)
			}
			ids, err := pgx.CollectRows(q, pgx.RowTo[int32])
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				rows[table][float64(id)] = true
			}
		}
		return rows
	}
	if got, want := applied(evs), want(); !reflect.DeepEqual(got, want) {
		t.Errorf("the stream applied holds %v; the tables hold %v", got, want)
	}
	truncates := 0
	for _, e := range second {
		if e.Op == "truncate" {
			truncates++
		}
	}
	if truncates != 2 {
		t.Errorf("%d truncates in the snapshot taken again, want one a table", truncates)
	}

	// A reader that dropped the slot to take the snapshot again and died
	// before creating the new one: the next takes it, and reports no slot
	// lost (nothing was: the snapshot brings every row).
	r2.stop(t)
	for k := range markers(t, kv) {
		if _, err := kv.Put(context.Background(), k, []byte(snapshotPending)); err != nil {
			t.Fatal(err)
		}
	}
	db.waitSlotInactive(t)
	db.exec(t, `SELECT pg_drop_replication_slot($1)`, db.slot)
	db.exec(t, `DELETE FROM items WHERE id <= 20`)
	r3 := startReader(t, db.config(), n)
	before := len(evs)
	evs = n.readAll(t, before+1+80+1, 30*time.Second)
	if evs[before].Op != "truncate" || evs[before].Cause != schema.CauseSnapshotRestarted || evs[before].LSN == second[0].LSN {
		t.Errorf("third snapshot begins %s; want a truncate from a new slot", evs[before].Raw)
	}
	if got, want := applied(evs), want(); !reflect.DeepEqual(got, want) {
		t.Errorf("after the third snapshot, the stream applied holds %v; the tables hold %v", got, want)
	}
	if loss := r3.Health().SlotLost; loss != nil || r3.log.contains("replication slot was lost") {
		t.Errorf("the slot dropped to take its snapshot again was reported lost: %+v", loss)
	}
}

// markers returns the keys of the state bucket's snapshot markers.
func markers(t *testing.T, kv jetstream.KeyValue) map[string]bool {
	t.Helper()
	keys, err := kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for k := range keys.Keys() {
		if strings.HasPrefix(k, "snapshot.") {
			out[k] = true
		}
	}
	return out
}
