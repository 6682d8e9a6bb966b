package cdc

import (
	"context"
	"testing"
	"time"
)

// TestCatchUpOfATableDroppedAndCreatedAgain: a table dropped and created
// again under the same name while the catch-up of its first version waits
// in the queue (the worker busy with another snapshot) has the rows of its
// new version sent as op read. The second catch-up was taken for the
// first, queued already; that one found its table dropped and was given
// up, and the new table's rows were never sent.
func TestCatchUpOfATableDroppedAndCreatedAgain(t *testing.T) {
	// Not parallel: it sets testHookChunkRead, which every reader reads.
	ctx := context.Background()
	db := newTestDB(t, `CREATE TABLE big (id int PRIMARY KEY)`, `INSERT INTO big SELECT generate_series(1, 10)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)

	// The worker is kept busy inside a snapshot of big meanwhile.
	busy, release := holdFirstChunk(t, "public.big")
	if _, err := RequestSnapshot(ctx, n.NC, testPrefix, cfg.Slot, "public.big"); err != nil {
		t.Fatal(err)
	}
	<-busy
	db.exec(t, `BEGIN; CREATE TABLE orders (id int PRIMARY KEY, v text); INSERT INTO orders VALUES (1, 'old'); COMMIT`)
	waitFor(t, 20*time.Second, "orders to be added", func() bool {
		return r.log.contains(`table added to the publication; its rows are sent as op read" component=cdc slot=` + db.slot + ` table=public.orders`)
	})
	db.exec(t, `BEGIN; DROP TABLE orders; CREATE TABLE orders (id text PRIMARY KEY); INSERT INTO orders VALUES ('a'), ('b'); COMMIT`)
	waitFor(t, 20*time.Second, "orders to be added again", func() bool {
		var in bool
		_ = db.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication_tables WHERE pubname = 'tc_pub' AND tablename = 'orders')`).Scan(&in)
		return in
	})
	release()
	waitFor(t, 20*time.Second, "the rows of the new orders as op read", func() bool {
		got := map[any]bool{}
		for _, e := range eventsOf(t, n, "public.orders") {
			if e.Op == "read" {
				got[e.Key["id"]] = true
			}
		}
		return got["a"] && got["b"]
	})
	waitFor(t, 20*time.Second, "the catch-up of the new orders to end", func() bool {
		return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=public.orders`)
	})
}
