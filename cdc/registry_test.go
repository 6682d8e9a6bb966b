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
	holdConfirmation(t, db)
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
	got := shapeHistory(t, r2.registry, db.name, "t")
	if want := []string{"1:id:int4", "2:id:int4,c:text"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("registry history %v, want %v", got, want)
	}
}

// shapeHistory is the registry's history of a table, one "version:columns"
// per entry, each column as name:type.
func shapeHistory(t testing.TB, reg *stream.Registry, db, table string) []string {
	t.Helper()
	hist, err := reg.History(context.Background(), stream.SchemaKey(db, "public", table))
	if err != nil {
		t.Fatalf("registry history of %s: %v", table, err)
	}
	var got []string
	for _, h := range hist {
		var s schema.Shape
		if err := json.Unmarshal(h, &s); err != nil {
			t.Fatalf("registry value %s: %v", h, err)
		}
		var cols []string
		for _, c := range s.Columns {
			cols = append(cols, c.Name+":"+c.Type)
		}
		got = append(got, fmt.Sprintf("%d:%s", s.Version, strings.Join(cols, ",")))
	}
	return got
}

// TestSnapshotRegistersTheShapeOfItsRows: rows sent as op read carry the
// table's columns as they are when read; the registry describes them
// before any change of the table is streamed. A table dropped and created
// again under its name (its rows sent by a catch-up) used to keep the
// dropped table's shape in the registry, and an altered table whose rows
// an on-demand snapshot sent its shape before the ALTER, until the next
// change. A table with a domain and an enum column gets no new version
// when its next change comes: the shape read from the catalog is the one
// pgoutput describes.
func TestSnapshotRegistersTheShapeOfItsRows(t *testing.T) {
	t.Parallel() // see parallelTests
	ctx := context.Background()
	db := newTestDB(t,
		`CREATE DOMAIN price AS numeric(10,2) CHECK (VALUE >= 0)`,
		`CREATE TYPE mood AS ENUM ('ok', 'sad')`,
		`CREATE TABLE orders (id int PRIMARY KEY, v text)`,
		`CREATE TABLE items (id int PRIMARY KEY, p price, m mood)`,
		`INSERT INTO items VALUES (1, 2.50, 'ok')`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders VALUES (1, 'old')`)
	db.exec(t, `INSERT INTO items VALUES (2, 3, 'sad')`)
	n.waitCount(t, 2, 20*time.Second)

	// Created again: its rows come by a catch-up, no change is streamed.
	db.exec(t, `BEGIN; DROP TABLE orders; CREATE TABLE orders (id text PRIMARY KEY, w int, t timestamptz); INSERT INTO orders VALUES ('a', 1, now()); COMMIT`)
	waitFor(t, 30*time.Second, "the catch-up of the new orders to end", func() bool {
		return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=public.orders`)
	})
	reads := 0
	for _, e := range eventsOf(t, n, "public.orders") {
		if e.Op == "read" {
			reads++
			if _, ok := e.Data["w"]; !ok {
				t.Errorf("read event %s without the new table's column w: %v", e.ID, e.Data)
			}
		}
	}
	if reads != 1 {
		t.Fatalf("%d read events of the new orders, want 1", reads)
	}
	want := []string{"1:id:int4,v:text", "2:id:text,w:int4,t:timestamptz"}
	if got := shapeHistory(t, r.registry, db.name, "orders"); !slices.Equal(got, want) {
		t.Fatalf("registry history of the new orders before any change\n%v\nwant\n%v", got, want)
	}

	// Altered, then snapshotted on demand with no change streamed since.
	db.exec(t, `ALTER TABLE items ADD COLUMN note text DEFAULT 'n'`)
	if _, err := RequestSnapshot(ctx, n.NC, testPrefix, cfg.Slot, "public.items"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the on-demand snapshot of items to end", func() bool {
		return r.log.contains(`msg="on-demand snapshot done" component=cdc slot=` + db.slot + ` table=public.items`)
	})
	want = []string{"1:id:int4,p:public.price,m:public.mood", "2:id:int4,p:public.price,m:public.mood,note:text"}
	if got := shapeHistory(t, r.registry, db.name, "items"); !slices.Equal(got, want) {
		t.Fatalf("registry history of items after its on-demand snapshot\n%v\nwant\n%v", got, want)
	}
	// The next changes find the shape registered: no new version.
	db.exec(t, `INSERT INTO items VALUES (3, 4, 'ok', 'x')`)
	db.exec(t, `INSERT INTO orders VALUES ('b', 2, now())`)
	waitFor(t, 20*time.Second, "the two changes", func() bool {
		// orders: the old insert, the truncate of its addition, the read, the insert.
		return len(eventsOf(t, n, "public.items")) == 4 && len(eventsOf(t, n, "public.orders")) == 4
	})
	if got := shapeHistory(t, r.registry, db.name, "items"); !slices.Equal(got, want) {
		t.Errorf("registry history of items after a change\n%v\nwant\n%v", got, want)
	}
	want = []string{"1:id:int4,v:text", "2:id:text,w:int4,t:timestamptz"}
	if got := shapeHistory(t, r.registry, db.name, "orders"); !slices.Equal(got, want) {
		t.Errorf("registry history of orders after a change\n%v\nwant\n%v", got, want)
	}
}
