package cdc

import (
	"fmt"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
)

// TestKeyChangedResendsRows: a published table whose key is redefined
// while it stays published gets a truncate, cause "key_changed", after
// what was streamed keyed anew before the reader saw the change, then its
// rows again under the new key as op read: a primary key replaced by
// another, and one added to a table keyed by every column. A table whose
// primary key is dropped has no catch-up and gets no truncate (the change
// is logged), nor does one whose replica identity changes while its key
// stays. A key changed while no reader ran is seen by the next one.
// Without it the row state and views kept every row under its old key: an
// update keyed anew was a second copy, a delete removed nothing.
func TestKeyChangedResendsRows(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE codes (id int PRIMARY KEY, code text NOT NULL UNIQUE)`,
		`CREATE TABLE fullrows (a int NOT NULL, b text)`,
		`ALTER TABLE fullrows REPLICA IDENTITY FULL`,
		`CREATE TABLE dropkey (id int PRIMARY KEY)`,
		`CREATE TABLE identity (id int PRIMARY KEY, v text)`,
		`CREATE TABLE later (id int PRIMARY KEY, code text NOT NULL UNIQUE)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO codes VALUES (1, 'c1'), (2, 'c2'), (3, 'c3')`)
	db.exec(t, `INSERT INTO fullrows VALUES (1, 'x'), (2, 'y')`)
	db.exec(t, `INSERT INTO dropkey VALUES (1)`)
	db.exec(t, `INSERT INTO identity VALUES (1, 'a')`)
	db.exec(t, `INSERT INTO later VALUES (1, 'l1')`)
	n.waitCount(t, 8, 20*time.Second)
	waitFor(t, 20*time.Second, "the keys of the published tables to be kept", func() bool {
		names, err := r.loadPublishedNames(t.Context())
		if err != nil || len(names) != 5 {
			return false
		}
		for _, nm := range names {
			if nm.Key == nil {
				return false
			}
		}
		return true
	})
	catchUpDone := func(r *runningReader, table string) func() bool {
		return func() bool {
			return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=` + table)
		}
	}

	// An update keyed anew in the change's own transaction: streamed
	// before the truncate, which clears it too.
	db.exec(t, `BEGIN;
		ALTER TABLE codes DROP CONSTRAINT codes_pkey, ADD PRIMARY KEY (code);
		UPDATE codes SET id = 10 WHERE code = 'c1';
		COMMIT`)
	waitFor(t, 30*time.Second, "the catch-up of codes", catchUpDone(r, "public.codes"))
	db.exec(t, `DELETE FROM codes WHERE code = 'c2'`)
	db.exec(t, `ALTER TABLE fullrows ADD PRIMARY KEY (a)`)
	waitFor(t, 30*time.Second, "the catch-up of fullrows", catchUpDone(r, "public.fullrows"))
	db.exec(t, `ALTER TABLE dropkey REPLICA IDENTITY FULL; ALTER TABLE dropkey DROP CONSTRAINT dropkey_pkey`)
	db.exec(t, `ALTER TABLE identity REPLICA IDENTITY FULL`)
	waitFor(t, 20*time.Second, "the key change of dropkey to be logged", func() bool {
		return r.log.contains(`msg="table key changed, without a primary key now`)
	})
	db.exec(t, `UPDATE dropkey SET id = 2`)
	db.exec(t, `UPDATE identity SET v = 'b'`)

	// Changed while no reader ran.
	r.stop(t)
	db.exec(t, `ALTER TABLE later DROP CONSTRAINT later_pkey, ADD PRIMARY KEY (code)`)
	r2 := startReader(t, cfg, n)
	waitFor(t, 30*time.Second, "the catch-up of later", catchUpDone(r2, "public.later"))
	db.exec(t, `INSERT INTO later VALUES (2, 'l2')`)
	waitFor(t, 20*time.Second, "the last events", func() bool {
		return len(eventsOf(t, n, "public.later")) == 4 && len(eventsOf(t, n, "public.identity")) == 2 &&
			len(eventsOf(t, n, "public.dropkey")) == 2
	})

	for table, want := range map[string][]string{
		"public.codes": {"create map[id:1]", "create map[id:2]", "create map[id:3]",
			"update map[code:c1]", "truncate key_changed",
			"read map[code:c1]", "read map[code:c2]", "read map[code:c3]",
			"delete map[code:c2]"},
		"public.fullrows": {"create map[a:1 b:x]", "create map[a:2 b:y]",
			"truncate key_changed", "read map[a:1]", "read map[a:2]"},
		"public.dropkey":  {"create map[id:1]", "update map[id:1]"},
		"public.identity": {"create map[id:1]", "update map[id:1]"},
		"public.later":    {"create map[id:1]", "truncate key_changed", "read map[code:l1]", "create map[code:l2]"},
	} {
		var got []string
		for _, e := range eventsOf(t, n, table) {
			s := e.Op + " " + fmt.Sprint(e.Key)
			if e.Op == schema.OpTruncate {
				s = e.Op + " " + e.Cause
			}
			got = append(got, s)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: events\n%q\nwant\n%q", table, got, want)
		}
	}
	if !r.log.contains(`msg="table key changed: the rows held under the old key are truncated`) || !r.log.contains(`table=public.codes from=(id) to=(code)`) {
		t.Error("the key change of codes was not logged")
	}
}
