package cdc

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
)

// TestTableDroppedTruncatesItsRows: a published table dropped gets a
// truncate of its name, cause "table_dropped", after all of its events,
// so that the rows the row state and views hold under the name go too. A
// table dropped while no reader ran is seen by the next one. None is sent
// for a table dropped and created again in one transaction (its addition's
// truncate and catch-up follow), for a table only left out of the
// publication (it still exists), or, by the reader, when a table created
// since under the name streamed before the message, nor for a forged
// message (another nonce). Before, the rows of a
// dropped table stayed in every copy for good.
func TestTableDroppedTruncatesItsRows(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE gone (id int PRIMARY KEY)`,
		`CREATE TABLE again (id int PRIMARY KEY)`,
		`CREATE TABLE stays (id int PRIMARY KEY)`,
		`CREATE TABLE later (id int PRIMARY KEY)`,
		`CREATE TABLE phoenix (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	for _, table := range []string{"gone", "again", "stays", "later", "phoenix"} {
		db.exec(t, `INSERT INTO `+table+` VALUES (1), (2)`)
	}
	n.waitCount(t, 10, 20*time.Second)
	waitFor(t, 20*time.Second, "the names of the published tables to be kept", func() bool {
		names, err := r.loadPublishedNames(t.Context())
		return err == nil && len(names) == 5
	})
	lastIs := func(table, id string) func() bool {
		return func() bool {
			evs := eventsOf(t, n, table)
			return len(evs) > 0 && fmt.Sprint(evs[len(evs)-1].Key["id"]) == id
		}
	}
	truncated := func(table string) func() bool {
		return func() bool {
			evs := eventsOf(t, n, table)
			return len(evs) > 0 && evs[len(evs)-1].Op == schema.OpTruncate
		}
	}

	// Left out of the publication for want of a key: not dropped.
	db.exec(t, `ALTER TABLE stays DROP CONSTRAINT stays_pkey`)
	waitFor(t, 20*time.Second, "stays to leave the publication", func() bool { return !slices.Contains(db.published(t, "tc_pub"), "public.stays") })

	// Dropped and created again in one transaction: added, not dropped.
	db.exec(t, `BEGIN; DROP TABLE again; CREATE TABLE again (id int PRIMARY KEY); INSERT INTO again VALUES (3); COMMIT`)
	waitFor(t, 30*time.Second, "the catch-up of the new again", func() bool {
		return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=public.again`)
	})

	// Dropped: its name truncated once, after its last event.
	db.exec(t, `BEGIN; INSERT INTO gone VALUES (3); DROP TABLE gone; COMMIT`)
	waitFor(t, 20*time.Second, "the truncate of gone", truncated("public.gone"))

	// Dropped while no reader ran.
	waitFor(t, 20*time.Second, "gone to leave the kept names", func() bool {
		names, err := r.loadPublishedNames(t.Context())
		if err != nil {
			return false
		}
		for _, nm := range names {
			if nm.Name == "gone" {
				return false
			}
		}
		return true
	})
	r.stop(t)
	db.exec(t, `DROP TABLE later`)
	r2 := startReader(t, cfg, n)
	waitFor(t, 30*time.Second, "the truncate of later", truncated("public.later"))

	// The reader's guard: a truncate of a dropped phoenix, announced (as
	// pubWatch would under a publication FOR ALL TABLES) after a new
	// phoenix streamed, is not sent.
	var oldOID uint32
	if err := db.conn.QueryRow(t.Context(), `SELECT 'phoenix'::regclass::oid`).Scan(&oldOID); err != nil {
		t.Fatal(err)
	}
	msg, err := r2.recordTableAdded(t.Context(), "public", "phoenix", oldOID, schema.CauseTableDropped)
	if err != nil {
		t.Fatal(err)
	}
	db.exec(t, `BEGIN; DROP TABLE phoenix; CREATE TABLE phoenix (id int PRIMARY KEY); INSERT INTO phoenix VALUES (7); COMMIT`)
	waitFor(t, 30*time.Second, "the catch-up of the new phoenix", func() bool {
		return r2.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=public.phoenix`)
	})
	db.exec(t, `INSERT INTO phoenix VALUES (8)`)
	waitFor(t, 20*time.Second, "the insert into the new phoenix", lastIs("public.phoenix", "8"))
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast-table-added', $1::text)`, string(msg))
	// And one any role could write: the new phoenix's name and OID, cause
	// table_dropped, a nonce of its own. Nothing is truncated.
	var newOID uint32
	if err := db.conn.QueryRow(t.Context(), `SELECT 'phoenix'::regclass::oid`).Scan(&newOID); err != nil {
		t.Fatal(err)
	}
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast-table-added', $1::text)`,
		fmt.Sprintf(`{"schema":"public","name":"phoenix","oid":%d,"nonce":"%s","cause":"table_dropped"}`, newOID, randomID()))
	waitFor(t, 20*time.Second, "the guarded truncate to be passed over", func() bool {
		return r2.log.contains(`msg="a dropped table's truncate not sent: a table created since holds its name" component=cdc slot=` + db.slot + ` table=public.phoenix`)
	})
	db.exec(t, `INSERT INTO phoenix VALUES (9)`)
	waitFor(t, 20*time.Second, "the insert after the guarded truncate", lastIs("public.phoenix", "9"))

	for table, want := range map[string][]string{
		"public.gone":    {"create 1", "create 2", "create 3", "truncate table_dropped"},
		"public.later":   {"create 1", "create 2", "truncate table_dropped"},
		"public.again":   {"create 1", "create 2", "truncate table_added", "read 3"},
		"public.stays":   {"create 1", "create 2"},
		"public.phoenix": {"create 1", "create 2", "truncate table_added", "read 7", "create 8", "create 9"},
	} {
		checkSequence(t, n, table, want)
	}
	if !r.log.contains(`msg="tables dropped: the rows held under their names are truncated" component=cdc slot=` + db.slot + ` tables=[public.gone]`) {
		t.Error("the drop was not logged")
	}
	if !r2.log.contains(`ignoring a table-added message tablecast did not write: its nonce is not the one recorded" component=cdc slot=` + db.slot + ` table=public.phoenix`) {
		t.Error("the forged drop of phoenix was not logged as ignored")
	}
}
