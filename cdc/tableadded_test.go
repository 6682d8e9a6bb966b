package cdc

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// TestTableAddedAgainStartsWithATruncate: a table added to the publication
// under a name the stream carried before starts with a truncate, cause
// "table_added", placed after every event of the table of that name before
// and before the added table's first: a table dropped and created again,
// and one left out (it lost its key) while a row was deleted, then added
// back. Without it the row state and views kept the old rows the new table
// lacks. A table never streamed gets none, and a message with the prefix
// that tablecast did not write (its nonce not the recorded one) is ignored.
func TestTableAddedAgainStartsWithATruncate(t *testing.T) {
	t.Parallel() // see parallelTests
	ctx := context.Background()
	db := newTestDB(t,
		`CREATE TABLE orders (id int PRIMARY KEY, v text)`,
		`CREATE TABLE kept (id int PRIMARY KEY)`,
		`CREATE SCHEMA "My Schema"`,
		`CREATE TABLE "My Schema"."ordérs.v2" (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders VALUES (1, 'a'), (2, 'b')`)
	db.exec(t, `UPDATE orders SET v = 'c' WHERE id = 2`)
	db.exec(t, `INSERT INTO kept VALUES (1), (2), (3)`)
	db.exec(t, `INSERT INTO "My Schema"."ordérs.v2" VALUES (7)`)
	n.waitCount(t, 7, 20*time.Second)

	catchUpDone := func(table string) func() bool {
		return func() bool {
			return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=` + table)
		}
	}
	db.exec(t, `BEGIN; CREATE TABLE fresh (id int PRIMARY KEY); INSERT INTO fresh VALUES (1); COMMIT`)
	waitFor(t, 30*time.Second, "the catch-up of fresh", catchUpDone("public.fresh"))

	// Dropped and created again in one transaction: a round between the
	// two would send the dropped table's truncate too (tabledropped.go).
	db.exec(t, `BEGIN; DROP TABLE orders; CREATE TABLE orders (id text PRIMARY KEY); INSERT INTO orders VALUES ('x'); COMMIT`)
	waitFor(t, 30*time.Second, "the catch-up of the new orders", catchUpDone("public.orders"))
	db.exec(t, `INSERT INTO orders VALUES ('y')`)
	// A name to quote, and to encode in its subject.
	db.exec(t, `BEGIN; DROP TABLE "My Schema"."ordérs.v2"; CREATE TABLE "My Schema"."ordérs.v2" (id int PRIMARY KEY); INSERT INTO "My Schema"."ordérs.v2" VALUES (8); COMMIT`)
	waitFor(t, 30*time.Second, "the catch-up of the new ordérs.v2", catchUpDone(`"My Schema.ordérs.v2"`))

	// kept loses its key, so tablecast takes it out of the publication;
	// a row deleted meanwhile is not streamed.
	db.exec(t, `ALTER TABLE kept DROP CONSTRAINT kept_pkey`)
	waitFor(t, 20*time.Second, "kept to leave the publication", func() bool { return !slices.Contains(db.published(t, "tc_pub"), "public.kept") })
	db.exec(t, `DELETE FROM kept WHERE id = 2`)
	db.exec(t, `ALTER TABLE kept ADD PRIMARY KEY (id)`)
	waitFor(t, 30*time.Second, "the catch-up of kept", catchUpDone("public.kept"))

	checkTruncates := func() {
		t.Helper()
		for table, want := range map[string][]string{
			"public.fresh":        {"read 1"},
			"public.orders":       {"create 1", "create 2", "update 2", "truncate table_added", "read x", "create y"},
			"public.kept":         {"create 1", "create 2", "create 3", "truncate table_added", "read 1", "read 3"},
			"My Schema.ordérs.v2": {"create 7", "truncate table_added", "read 8"},
		} {
			var got []string
			for _, e := range eventsOf(t, n, table) {
				s := e.Op + " " + e.Cause
				if e.Op != schema.OpTruncate {
					s = e.Op + " " + fmt.Sprint(e.Key["id"])
					if e.Cause != "" {
						t.Errorf("%s event %s with cause %q", e.Op, e.ID, e.Cause)
					}
				} else {
					schemaName, name, _ := strings.Cut(table, ".")
					if want := stream.ChangeSubject(testPrefix, db.name, schemaName, name, schema.OpTruncate); e.Subject != want {
						t.Errorf("truncate on %s, want %s", e.Subject, want)
					}
					if e.Header["Nats-Msg-Id"] != e.ID || len(e.Key) != 0 || e.Data != nil {
						t.Errorf("truncate %s: msg id %s, key %v, data %v", e.ID, e.Header["Nats-Msg-Id"], e.Key, e.Data)
					}
				}
				got = append(got, s)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s: events\n%q\nwant\n%q", table, got, want)
			}
		}
	}
	checkTruncates()

	// A message with the prefix that tablecast did not write: the right
	// table and OID, another nonce.
	var oid uint32
	if err := db.conn.QueryRow(ctx, `SELECT 'orders'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	forged := fmt.Sprintf(`{"schema":"public","name":"orders","oid":%d,"nonce":"%s"}`, oid, randomID())
	tx, err := db.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_logical_emit_message(true, 'tablecast-table-added', $1::text)`, forged); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO orders VALUES ('z')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast-table-added', 'not json')`)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast-table-added', $1::text)`, `{"schema":"public","name":"orders","pad":"`+strings.Repeat("x", 1<<20)+`"}`)
	db.exec(t, `INSERT INTO orders VALUES ('end')`)
	waitFor(t, 20*time.Second, "the row inserted after the forged messages", func() bool {
		evs := eventsOf(t, n, "public.orders")
		return len(evs) > 0 && evs[len(evs)-1].Key["id"] == "end"
	})
	var truncates int
	for _, e := range eventsOf(t, n, "public.orders") {
		if e.Op == schema.OpTruncate {
			truncates++
		}
	}
	if truncates != 1 {
		t.Errorf("%d truncates of orders after the forged messages, want 1", truncates)
	}
	if !r.log.contains(`ignoring a table-added message tablecast did not write: its nonce is not the one recorded`) ||
		!r.log.contains(`msg="ignoring a table-added message tablecast did not write" component=cdc`) {
		t.Error("the forged messages were not logged as ignored")
	}
}

// TestTableAddedAgainForgetsOldVersions: under old rows, the versions the
// reader keeps of a table dropped (to complete its updates' old rows) are
// not the new table's: an update of a row of the table created again,
// before its catch-up reads it, carries what PostgreSQL sent, not the
// dropped table's row under the same key.
func TestTableAddedAgainForgetsOldVersions(t *testing.T) {
	// Not parallel: it sets testHookChunkRead, which every reader reads.
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY, v text)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	cfg.OldRows = []string{"public.orders"}
	cfg.RowState = &fakeRowState{ready: true} // applies nothing: versions come from the cache alone
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders VALUES (1, 'old1'), (2, 'old2')`)
	db.exec(t, `UPDATE orders SET v = 'old1b' WHERE id = 1`)
	evs := n.readAll(t, 3, 20*time.Second)
	if got := evs[2].Old["v"]; got != "old1" {
		t.Fatalf("update of the first orders: old v %v, want old1 (from the cache)", got)
	}

	held, release := holdFirstChunk(t, "public.orders")
	db.exec(t, `BEGIN; DROP TABLE orders; CREATE TABLE orders (id int PRIMARY KEY, v text); INSERT INTO orders VALUES (2, 'new2'); COMMIT`)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the catch-up of the new orders did not start")
	}
	db.exec(t, `UPDATE orders SET v = 'upd2' WHERE id = 2`)
	waitFor(t, 20*time.Second, "the update of the new orders", func() bool {
		evs := eventsOf(t, n, "public.orders")
		return evs[len(evs)-1].Op == "update"
	})
	release()
	waitFor(t, 30*time.Second, "the catch-up of the new orders", func() bool {
		return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=public.orders`)
	})
	var upd event
	for _, e := range eventsOf(t, n, "public.orders") {
		if e.Op == "update" {
			upd = e // the last
		}
	}
	if upd.Old != nil {
		t.Errorf("update of the new orders carries old %v, want none (PostgreSQL sent none, and the row had no version before in the new table)", upd.Old)
	}
	if upd.Data["v"] != "upd2" {
		t.Errorf("update of the new orders: data %v", upd.Data)
	}
}

// TestTableAddedWithoutEmitPrivilege: a reader whose role may not execute
// pg_logical_emit_message adds a table created again all the same, with a
// warning, and streams its changes: the message that starts it with a
// truncate is left out, not the table. A rename and a drop are warned of
// once each, without their truncates, and streaming goes on.
func TestTableAddedWithoutEmitPrivilege(t *testing.T) {
	t.Parallel() // see parallelTests
	ctx := context.Background()
	role := fmt.Sprintf("tc_noemit_%d", os.Getpid())
	db := newTestDB(t)
	newRole(t, db, role).Close(ctx)
	t.Cleanup(func() { _, _ = db.conn.Exec(context.Background(), `DROP OWNED BY `+role) })
	for _, sql := range []string{
		`ALTER ROLE ` + role + ` REPLICATION`,
		`REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC`,
		`REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, bytea) FROM PUBLIC`,
		`GRANT CREATE ON DATABASE ` + db.name + ` TO ` + role,
		`CREATE TABLE orders (id int PRIMARY KEY, v text)`,
		`ALTER TABLE orders OWNER TO ` + role,
	} {
		db.exec(t, sql)
	}
	n := startNATS(t)
	cfg := db.config()
	cfg.DatabaseURL = strings.Replace(db.url, "postgres://postgres@", "postgres://"+role+"@", 1)
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders VALUES (1, 'a')`)
	n.waitCount(t, 1, 20*time.Second)

	db.exec(t, `BEGIN; DROP TABLE orders; CREATE TABLE orders (id int PRIMARY KEY, v text); ALTER TABLE orders OWNER TO `+role+`; COMMIT`)
	waitFor(t, 30*time.Second, "the new orders in the publication", func() bool { return slices.Contains(db.published(t, "tc_pub"), "public.orders") })
	db.exec(t, `INSERT INTO orders VALUES (2, 'b')`)
	waitFor(t, 20*time.Second, "the insert into the new orders", func() bool {
		evs := eventsOf(t, n, "public.orders")
		return len(evs) == 2 && evs[1].Op == "create" && evs[1].Data["v"] == "b"
	})
	if !r.log.contains(`msg="table added without the truncate that clears the rows of the table of that name before (the role may not execute pg_logical_emit_message): the row state and views may keep rows the table does not have" component=cdc slot=` + db.slot + ` table=public.orders`) {
		t.Error("no warning that the table was added without its truncate")
	}
	// Renamed: streamed under its new name, without the truncates, said once.
	db.exec(t, `ALTER TABLE orders RENAME TO orders2`)
	waitFor(t, 20*time.Second, "the warning of the rename without truncates", func() bool {
		return r.log.contains(`msg="tables renamed without the truncates that clear the rows held under their old names (the role may not execute pg_logical_emit_message): the row state and views keep them"`)
	})
	db.exec(t, `INSERT INTO orders2 VALUES (3, 'c')`)
	waitFor(t, 20*time.Second, "the insert into orders2", func() bool {
		evs := eventsOf(t, n, "public.orders2")
		return len(evs) == 1 && evs[0].Op == "create" && evs[0].Data["v"] == "c"
	})
	time.Sleep(3 * cfg.CatalogInterval)
	if c := strings.Count(r.log.String(), `msg="tables renamed without the truncates`); c != 1 {
		t.Errorf("the rename without truncates warned %d times, want once", c)
	}
	// Dropped: no truncate, said once, and the reader streams on.
	db.exec(t, `DROP TABLE orders2`)
	waitFor(t, 20*time.Second, "the warning of the drop without its truncate", func() bool {
		return r.log.contains(`msg="tables dropped without the truncates that clear the rows held under their names (the role may not execute pg_logical_emit_message): the row state and views keep them" component=cdc slot=` + db.slot + ` tables=[public.orders2]`)
	})
	db.exec(t, `CREATE TABLE later (id int PRIMARY KEY); ALTER TABLE later OWNER TO `+role)
	waitFor(t, 30*time.Second, "later in the publication", func() bool { return slices.Contains(db.published(t, "tc_pub"), "public.later") })
	db.exec(t, `INSERT INTO later VALUES (1)`)
	waitFor(t, 20*time.Second, "the insert into later", func() bool { return len(eventsOf(t, n, "public.later")) == 1 })
	time.Sleep(3 * cfg.CatalogInterval)
	if c := strings.Count(r.log.String(), `msg="tables dropped without the truncates`); c != 1 {
		t.Errorf("the drop without its truncate warned %d times, want once", c)
	}
	if evs := eventsOf(t, n, "public.orders2"); len(evs) != 1 {
		t.Errorf("orders2 has %d events after its drop, want its one insert (no truncate)", len(evs))
	}
}

// TestTableAddedTruncateReplayedOnce: a reader that starts again before it
// confirmed the addition replays its message; the truncate the stream
// holds is not stored twice, and is not checked again against the record,
// which a later addition of the name may have written anew (here: another
// nonce), so the replay neither warns of a forgery nor loses its place.
func TestTableAddedTruncateReplayedOnce(t *testing.T) {
	// Not parallel: it holds every reader's confirmation.
	ctx := context.Background()
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders VALUES (1)`)
	n.waitCount(t, 1, 20*time.Second)
	holdConfirmation(t, db)
	db.exec(t, `BEGIN; DROP TABLE orders; CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (2); COMMIT`)
	waitFor(t, 30*time.Second, "the catch-up of the new orders", func() bool {
		return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=public.orders`)
	})
	db.exec(t, `INSERT INTO orders VALUES (3)`)
	n.waitCount(t, 4, 20*time.Second) // create 1, truncate, read 2, create 3
	r.stop(t)
	db.waitSlotInactive(t)
	kv, err := n.JS.KeyValue(ctx, stateBucket)
	if err != nil {
		t.Fatal(err)
	}
	key := r.tableAddedKey("public", "orders")
	e, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatalf("the record of the addition: %v", err)
	}
	if _, err := kv.Put(ctx, key, []byte(strings.Replace(string(e.Value()), `"nonce":"`, `"nonce":"later`, 1))); err != nil {
		t.Fatal(err)
	}

	r2 := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders VALUES (4)`)
	waitFor(t, 20*time.Second, "the insert after the replay", func() bool {
		evs := eventsOf(t, n, "public.orders")
		return len(evs) > 0 && evs[len(evs)-1].Key["id"] == float64(4)
	})
	var got []string
	for _, e := range eventsOf(t, n, "public.orders") {
		got = append(got, e.Op+" "+fmt.Sprint(e.Key["id"]))
	}
	if want := []string{"create 1", "truncate <nil>", "read 2", "create 3", "create 4"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events of orders after the replay\n%q\nwant\n%q", got, want)
	}
	if v, _ := r2.metric("tablecast_cdc_events_skipped_total", ""); v < 2 {
		t.Errorf("the second reader skipped %v events: it did not replay the truncate and the insert the stream held", v)
	}
	if r2.log.contains("ignoring a table-added message") {
		t.Error("the replayed message, whose truncate the stream holds, was checked against the record written since")
	}
}
