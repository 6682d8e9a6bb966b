package cdc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

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
		evs := n.fetch(t)
		return len(evs) > 0 && evs[len(evs)-1].Key["id"] == float64(-1)
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
