package cdc

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// TestPreparedTransactions: a transaction prepared for two-phase commit
// is streamed when, and only if, it is committed: nothing at PREPARE
// TRANSACTION, its changes at COMMIT PREPARED (after what committed in
// between, in commit order), nothing for ROLLBACK PREPARED. A reader that
// restarts while one is prepared, after confirming later commits to the
// slot, still streams it once it is committed, exactly once.
func TestPreparedTransactions(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, note text)`)
	gid := func(s string) string { return db.name + "_" + s }
	t.Cleanup(func() {
		// A prepared transaction outlives its session and would keep the
		// test's database from being dropped.
		for _, g := range []string{"a", "b", "c"} {
			_, _ = db.conn.Exec(context.Background(), fmt.Sprintf(`ROLLBACK PREPARED '%s'`, gid(g)))
		}
	})
	n := startNATS(t)
	r := startReader(t, db.config(), n)

	ids := func(evs []event) []string {
		var out []string
		for _, e := range evs {
			out = append(out, fmt.Sprintf("%s:%v", e.Op, e.Key["id"]))
		}
		return out
	}
	quiet := func(want int, what string) {
		t.Helper()
		time.Sleep(500 * time.Millisecond)
		if evs := n.fetch(t); len(evs) != want {
			t.Fatalf("%s: stream holds %v, want %d events", what, ids(evs), want)
		}
	}

	db.exec(t, fmt.Sprintf(`BEGIN; INSERT INTO items VALUES (1, 'prepared'); UPDATE items SET note = 'prepared, updated' WHERE id = 1; PREPARE TRANSACTION '%s'`, gid("a")))
	quiet(0, "after PREPARE TRANSACTION")
	db.exec(t, `INSERT INTO items VALUES (2, 'committed while 1 was prepared')`)
	n.waitCount(t, 1, 15*time.Second)
	db.exec(t, fmt.Sprintf(`COMMIT PREPARED '%s'`, gid("a")))
	n.waitCount(t, 3, 15*time.Second)

	db.exec(t, fmt.Sprintf(`BEGIN; INSERT INTO items VALUES (3, 'rolled back'); PREPARE TRANSACTION '%s'`, gid("b")))
	db.exec(t, fmt.Sprintf(`ROLLBACK PREPARED '%s'`, gid("b")))
	db.exec(t, `INSERT INTO items VALUES (4, 'after the rollback')`)
	n.waitCount(t, 4, 15*time.Second)
	quiet(4, "after ROLLBACK PREPARED")
	evs := n.fetch(t)
	if got, want := fmt.Sprint(ids(evs)), "[create:2 create:1 update:1 create:4]"; got != want {
		t.Fatalf("events %s, want %s: a prepared transaction arrives at its COMMIT PREPARED, in commit order, and never when rolled back", got, want)
	}
	if evs[1].ID[:17] != evs[2].ID[:17] || evs[1].LSN != evs[2].LSN || evs[1].XID != evs[2].XID {
		t.Errorf("the prepared transaction's two events: ids %s, %s, lsn %s, %s, xid %d, %d; want one transaction",
			evs[1].ID, evs[2].ID, evs[1].LSN, evs[2].LSN, evs[1].XID, evs[2].XID)
	}
	if evs[2].Data["note"] != "prepared, updated" {
		t.Errorf("update inside the prepared transaction: data %v", evs[2].Data)
	}

	// Prepared across a restart: row 5 is prepared, row 6 commits after it
	// and is confirmed to the slot, the reader stops, and 5 commits.
	db.exec(t, fmt.Sprintf(`BEGIN; INSERT INTO items VALUES (5, 'prepared across a restart'); PREPARE TRANSACTION '%s'`, gid("c")))
	db.exec(t, `INSERT INTO items VALUES (6, 'committed after 5 was prepared')`)
	n.waitCount(t, 5, 15*time.Second)
	row6 := n.fetch(t)[4]
	commit6, err := pglogrepl.ParseLSN(row6.LSN)
	if err != nil || row6.Key["id"] != 6.0 {
		t.Fatalf("fifth event %v (lsn %q): want row 6", row6.Key, row6.LSN)
	}
	waitFor(t, 15*time.Second, "the slot to confirm row 6", func() bool {
		lsn, err := pglogrepl.ParseLSN(db.slotLSN(t))
		return err == nil && lsn > commit6
	})
	r.stop(t)
	db.waitSlotInactive(t)
	db.exec(t, fmt.Sprintf(`COMMIT PREPARED '%s'`, gid("c")))
	startReader(t, db.config(), n)
	n.waitCount(t, 6, 15*time.Second)
	quiet(6, "after the restart")
	evs = n.fetch(t)
	if got, want := fmt.Sprint(ids(evs[4:])), "[create:6 create:5]"; got != want {
		t.Fatalf("after the restart: events %s, want %s", got, want)
	}
}
