package cdc

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// TestSchemaChangesDuringLoad: ADD, RENAME, ALTER TYPE and DROP COLUMN
// while rows are being inserted. Every event carries the columns of the
// shape in force when it was committed, shapes never go back, and the
// registry holds each shape with a growing version.
func TestSchemaChangesDuringLoad(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY, a int, b text)`)
	n := startNATS(t)
	startReader(t, db.config(), n)

	loadConn, err := pgx.Connect(context.Background(), db.url)
	if err != nil {
		t.Fatal(err)
	}
	defer loadConn.Close(context.Background())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var inserted int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				inserted = i - 1
				return
			default:
			}
			if _, err := loadConn.Exec(context.Background(), `INSERT INTO t (id) VALUES ($1)`, i); err != nil {
				t.Errorf("load insert %d: %v", i, err)
				inserted = i - 1
				return
			}
		}
	}()
	for _, ddl := range []string{
		`ALTER TABLE t ADD COLUMN c numeric`,
		`ALTER TABLE t RENAME COLUMN b TO bb`,
		`ALTER TABLE t ALTER COLUMN a TYPE text`,
		`ALTER TABLE t DROP COLUMN c`,
	} {
		time.Sleep(150 * time.Millisecond)
		db.exec(t, ddl)
	}
	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()

	evs := n.readAll(t, inserted, 60*time.Second)
	// Column names by shape; ALTER TYPE keeps the names (the registry
	// below checks the type), so events show four shapes.
	shapes := [][]string{{"a", "b", "id"}, {"a", "b", "c", "id"}, {"a", "bb", "c", "id"}, {"a", "bb", "id"}}
	last := 0
	for _, e := range evs {
		var cols []string
		for k := range e.Data {
			cols = append(cols, k)
		}
		sort.Strings(cols)
		s := slices.IndexFunc(shapes, func(sh []string) bool { return slices.Equal(sh, cols) })
		if s < 0 {
			t.Fatalf("event %s has columns %v, which no shape had", e.ID, cols)
		}
		if s < last {
			t.Fatalf("event %s has columns %v after an event with %v: an old shape after a new one", e.ID, cols, shapes[last])
		}
		last = s
	}
	if last != len(shapes)-1 {
		t.Fatalf("last event has columns %v, want the final shape %v", shapes[last], shapes[len(shapes)-1])
	}

	reg, err := stream.OpenRegistry(context.Background(), n.JS, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	hist, err := reg.History(context.Background(), stream.SchemaKey(db.name, "public", "t"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, h := range hist {
		var s schema.Shape
		if err := json.Unmarshal(h, &s); err != nil {
			t.Fatalf("registry value %s: %v", h, err)
		}
		if s.Version != i+1 {
			t.Errorf("registry entry %d has version %d, want %d", i, s.Version, i+1)
		}
		var cols []string
		for _, c := range s.Columns {
			cols = append(cols, c.Name+":"+c.Type)
		}
		got = append(got, strings.Join(cols, ","))
	}
	want := []string{
		"id:int4,a:int4,b:text",
		"id:int4,a:int4,b:text,c:numeric",
		"id:int4,a:int4,bb:text,c:numeric",
		"id:int4,a:text,bb:text,c:numeric",
		"id:int4,a:text,bb:text",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("registry history\n%v\nwant\n%v", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestReplayKeepsTheLatestShape: a reader that replays changes the stream
// holds already (a restart before it confirmed them) meets the Relation
// messages of shapes the registry has left behind; it does not write them
// again, so the registry never goes back to an old shape.
func TestReplayKeepsTheLatestShape(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	// Nothing of what follows is confirmed to PostgreSQL: the second
	// reader replays it.
	var now string
	if err := db.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	held, _ := pglogrepl.ParseLSN(now)
	testHookConfirmAtMost.Store(uint64(held))
	t.Cleanup(func() { testHookConfirmAtMost.Store(0) })
	db.exec(t, `INSERT INTO t VALUES (1)`)
	db.exec(t, `ALTER TABLE t ADD COLUMN c text`)
	db.exec(t, `INSERT INTO t VALUES (2, 'x')`)
	n.waitCount(t, 2, 15*time.Second)
	r.stop(t)
	db.waitSlotInactive(t)

	r2 := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO t VALUES (3, 'y')`)
	n.waitCount(t, 3, 15*time.Second)
	if v, _ := r2.metric("tablecast_cdc_events_skipped_total", ""); v != 2 {
		t.Fatalf("the second reader skipped %v events, want the 2 it replayed", v)
	}
	hist, err := r2.registry.History(context.Background(), stream.SchemaKey(db.name, "public", "t"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hist {
		var s schema.Shape
		if err := json.Unmarshal(h, &s); err != nil {
			t.Fatalf("registry value %s: %v", h, err)
		}
		var cols []string
		for _, c := range s.Columns {
			cols = append(cols, c.Name)
		}
		got = append(got, fmt.Sprintf("%d:%s", s.Version, strings.Join(cols, ",")))
	}
	if want := []string{"1:id", "2:id,c"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("registry history %v, want %v", got, want)
	}
}
