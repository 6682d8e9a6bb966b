package cdc

import (
	"fmt"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
)

// TestTableRenamedMovesItsRows: a published table renamed gets a truncate,
// cause "table_renamed", of its old name, whose rows are no table's now,
// and of its new name (after the rows written under it in the rename's own
// transaction), then its rows again under the new name as op read. Two tables swapping names get one
// truncate each and each other's rows. A table without a key has its old
// name truncated and no catch-up. A rename made while no reader ran is
// seen by the next one. Without it the row state and views kept the old
// name's rows for good, and the new name held only the rows changed since.
func TestTableRenamedMovesItsRows(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE orders (id int PRIMARY KEY)`,
		`CREATE TABLE swap_a (id int PRIMARY KEY)`,
		`CREATE TABLE swap_b (id int PRIMARY KEY)`,
		`CREATE TABLE nokey (id int)`,
		`ALTER TABLE nokey REPLICA IDENTITY FULL`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders VALUES (1), (2)`)
	db.exec(t, `INSERT INTO swap_a VALUES (1)`)
	db.exec(t, `INSERT INTO swap_b VALUES (2)`)
	db.exec(t, `INSERT INTO nokey VALUES (1)`)
	n.waitCount(t, 5, 20*time.Second)
	catchUpDone := func(r *runningReader, table string) func() bool {
		return func() bool {
			return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=` + table)
		}
	}
	// The names are kept once a round has seen the tables.
	waitFor(t, 20*time.Second, "the names of the published tables to be kept", func() bool {
		_, err := r.state.Get(t.Context(), r.publishedNamesKey())
		return err == nil
	})

	// A row written under the new name in the rename's transaction: the
	// new name is streamed before its truncate.
	db.exec(t, `BEGIN; ALTER TABLE orders RENAME TO invoices; INSERT INTO invoices VALUES (3); COMMIT`)
	waitFor(t, 30*time.Second, "the catch-up of invoices", catchUpDone(r, "public.invoices"))
	db.exec(t, `BEGIN;
		ALTER TABLE swap_a RENAME TO swap_tmp; ALTER TABLE swap_b RENAME TO swap_a; ALTER TABLE swap_tmp RENAME TO swap_b;
		COMMIT`)
	waitFor(t, 30*time.Second, "the catch-ups of the swapped tables", func() bool {
		return catchUpDone(r, "public.swap_a")() && catchUpDone(r, "public.swap_b")()
	})
	db.exec(t, `BEGIN; ALTER TABLE nokey RENAME TO nokey2; INSERT INTO nokey2 VALUES (2); COMMIT`)
	waitFor(t, 30*time.Second, "the truncate of nokey", func() bool {
		evs := eventsOf(t, n, "public.nokey")
		return len(evs) > 0 && evs[len(evs)-1].Op == schema.OpTruncate
	})
	// Kept: the next reader starts from these names.
	waitFor(t, 20*time.Second, "the new names to be kept", func() bool {
		names, err := r.loadPublishedNames(t.Context())
		if err != nil {
			return false
		}
		found := map[string]bool{}
		for _, nm := range names {
			found[nm.Schema+"."+nm.Name] = true
		}
		return found["public.invoices"] && found["public.nokey2"] && !found["public.orders"]
	})
	r.stop(t)
	db.exec(t, `ALTER TABLE invoices RENAME TO bills`)
	r2 := startReader(t, cfg, n)
	waitFor(t, 30*time.Second, "the catch-up of bills", catchUpDone(r2, "public.bills"))

	for table, want := range map[string][]string{
		"public.orders":   {"create 1", "create 2", "truncate table_renamed"},
		"public.invoices": {"create 3", "truncate table_renamed", "read 1", "read 2", "read 3", "truncate table_renamed"},
		"public.bills":    {"truncate table_renamed", "read 1", "read 2", "read 3"},
		"public.swap_a":   {"create 1", "truncate table_renamed", "read 2"},
		"public.swap_b":   {"create 2", "truncate table_renamed", "read 1"},
		"public.nokey":    {"create 1", "truncate table_renamed"},
		"public.nokey2":   {"create 2"},
	} {
		checkSequence(t, n, table, want)
	}
	if !r.log.contains(`msg="table renamed: the rows held under its old name are truncated`) || !r.log.contains(`from=public.orders to=public.invoices`) {
		t.Error("the rename was not logged")
	}

	// Messages tablecast did not write, saying bills was renamed: one with
	// another nonce, one with a cause not of ours. Neither truncates.
	var oid uint32
	if err := db.conn.QueryRow(t.Context(), `SELECT 'bills'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	for _, forged := range []string{
		fmt.Sprintf(`{"schema":"public","name":"bills","oid":%d,"nonce":"%s","cause":"table_renamed"}`, oid, randomID()),
		fmt.Sprintf(`{"schema":"public","name":"bills","oid":%d,"nonce":"%s","cause":"table_vanished"}`, oid, randomID()),
	} {
		db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast-table-added', $1::text)`, forged)
	}
	db.exec(t, `INSERT INTO bills VALUES (4)`)
	waitFor(t, 20*time.Second, "the row inserted after the forged messages", func() bool {
		evs := eventsOf(t, n, "public.bills")
		return len(evs) > 0 && fmt.Sprint(evs[len(evs)-1].Key["id"]) == "4"
	})
	if got := len(eventsOf(t, n, "public.bills")); got != 5 {
		t.Errorf("bills has %d events after the forged messages, want 5 (no truncate more)", got)
	}
	if !r2.log.contains(`ignoring a table-added message tablecast did not write: its nonce is not the one recorded`) ||
		!r2.log.contains(`ignoring a table-added message tablecast did not write: its cause is not one of ours`) {
		t.Error("the forged messages were not logged as ignored")
	}
}

// TestTableRenamedUnderADBAPublication: under a publication tablecast did
// not create (FOR ALL TABLES), a table renamed gets the same truncates and
// catch-up, and the publication is left as it is.
func TestTableRenamedUnderADBAPublication(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`, `CREATE PUBLICATION tc_pub FOR ALL TABLES`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders VALUES (1), (2)`)
	n.waitCount(t, 2, 20*time.Second)
	waitFor(t, 20*time.Second, "the names of the published tables to be kept", func() bool {
		_, err := r.state.Get(t.Context(), r.publishedNamesKey())
		return err == nil
	})
	db.exec(t, `ALTER TABLE orders RENAME TO invoices`)
	waitFor(t, 30*time.Second, "the catch-up of invoices", func() bool {
		return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=public.invoices`)
	})
	for table, want := range map[string][]string{
		"public.orders":   {"create 1", "create 2", "truncate table_renamed"},
		"public.invoices": {"truncate table_renamed", "read 1", "read 2"},
	} {
		checkSequence(t, n, table, want)
	}
	var all bool
	var comment *string
	if err := db.conn.QueryRow(t.Context(), `SELECT puballtables, obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'tc_pub'`).Scan(&all, &comment); err != nil {
		t.Fatal(err)
	}
	if !all || comment != nil {
		t.Errorf("the DBA's publication was altered: FOR ALL TABLES %v, comment %v", all, comment)
	}
}

// checkSequence checks the events of table, each as "op id" ("op cause"
// for a truncate; the id from data for a table without a key).
func checkSequence(t *testing.T, n *natsEnv, table string, want []string) {
	t.Helper()
	var got []string
	for _, e := range eventsOf(t, n, table) {
		s := e.Op + " " + e.Cause
		if e.Op != schema.OpTruncate {
			s = e.Op + " " + fmt.Sprint(e.Key["id"])
			if len(e.Key) == 0 {
				s = e.Op + " " + fmt.Sprint(e.Data["id"])
			}
		}
		got = append(got, s)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: events\n%q\nwant\n%q", table, got, want)
	}
}

// TestUnreadableKeptNames: a record of the kept names that does not parse
// (written by another hand) is warned of and replaced at the first round;
// the reader streams as before, and renames after it are followed.
func TestUnreadableKeptNames(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders VALUES (1)`)
	n.waitCount(t, 1, 20*time.Second)
	waitFor(t, 20*time.Second, "the names of the published tables to be kept", func() bool {
		_, err := r.state.Get(t.Context(), r.publishedNamesKey())
		return err == nil
	})
	r.stop(t)
	if _, err := r.state.Put(t.Context(), r.publishedNamesKey(), []byte(`{"not":`)); err != nil {
		t.Fatal(err)
	}
	r2 := startReader(t, cfg, n)
	waitFor(t, 20*time.Second, "the warning of the unreadable names", func() bool {
		return r2.log.contains(`msg="the kept names of the published tables are unreadable: renames made while no reader ran are not followed"`)
	})
	waitFor(t, 20*time.Second, "the names to be kept again", func() bool {
		names, err := r2.loadPublishedNames(t.Context())
		return err == nil && len(names) == 1
	})
	db.exec(t, `ALTER TABLE orders RENAME TO invoices`)
	waitFor(t, 30*time.Second, "the catch-up of invoices", func() bool {
		return r2.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=public.invoices`)
	})
	db.exec(t, `INSERT INTO invoices VALUES (2)`)
	waitFor(t, 20*time.Second, "the insert into invoices", func() bool { return len(eventsOf(t, n, "public.invoices")) == 3 })
	checkSequence(t, n, "public.orders", []string{"create 1", "truncate table_renamed"})
	checkSequence(t, n, "public.invoices", []string{"truncate table_renamed", "read 1", "create 2"})
}

// TestKeptNamesAfterAChangeInPlace: the names kept follow a drop or a
// rename noted in place (as followDrops and followRenames do) in the round
// right after one that kept names. The kept copy once shared its map with
// the names being changed, so such a change looked kept already and never
// was: a restart then announced a rename again, and a dropped table's name
// stayed kept.
func TestKeptNamesAfterAChangeInPlace(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.CatalogInterval = time.Hour // no round of the reader's own
	r := startReader(t, cfg, n)
	ctx := t.Context()
	w := &pubWatch{r: r.Reader}
	a := tableState{schema: "public", name: "a", oid: 1}
	b := tableState{schema: "public", name: "b", oid: 2}
	kept := func() map[uint32]publishedName {
		t.Helper()
		names, err := r.loadPublishedNames(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return names
	}

	w.names = map[uint32]publishedName{}
	w.keepNames(ctx, map[uint32]tableState{1: a, 2: b}, nil, nil)
	if got := kept(); len(got) != 2 {
		t.Fatalf("kept %v, want a and b", got)
	}
	// A drop noted in place, then the round's keepNames.
	delete(w.names, 2)
	w.keepNames(ctx, map[uint32]tableState{1: a}, nil, nil)
	if got := kept(); len(got) != 1 || got[1].Name != "a" {
		t.Fatalf("after b's drop, kept %v, want a alone", got)
	}
	// A rename noted in place, right after a round that kept names.
	w.names[1] = publishedName{Schema: "public", Name: "a2"}
	w.keepNames(ctx, map[uint32]tableState{1: {schema: "public", name: "a2", oid: 1}}, nil, nil)
	if got := kept(); len(got) != 1 || got[1].Name != "a2" {
		t.Fatalf("after a's rename, kept %v, want a2", got)
	}
}
