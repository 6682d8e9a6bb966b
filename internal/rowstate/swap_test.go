package rowstate_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/internal/testrun"
)

// TestKeysSwappedInOneStatement: under a deferrable key, one UPDATE can
// move a row onto a key another row still holds, which moves off it later
// in the same statement (rows renumbered, two keys swapped). Each key then
// holds the row that moved onto it (such a key is no replica identity:
// the table is published under REPLICA IDENTITY FULL): the later move off the key must not
// delete the row that moved on.
func TestKeysSwappedInOneStatement(t *testing.T) {
	e := newEnv(t, `CREATE TABLE slots (id int PRIMARY KEY DEFERRABLE, name text NOT NULL);
ALTER TABLE slots REPLICA IDENTITY FULL;
INSERT INTO slots SELECT g, 'n' || g FROM generate_series(1, 10) g;`)
	_, _ = e.maintainer()
	e.settled("initial snapshot", "slots")
	e.exec(`UPDATE slots SET id = 3 - id WHERE id IN (1, 2)`) // a swap
	e.exec(`UPDATE slots SET id = id + 1 WHERE id >= 5`)      // a shift, onto rows not moved yet
	e.exec(`BEGIN; UPDATE slots SET id = 100 WHERE id = 3; UPDATE slots SET name = 'x' WHERE id = 4; COMMIT`)
	e.settled("after keys moved onto keys held", "slots")
}

// deferredSlots is the table of the deferred-key tests, slots (id under a
// deferrable primary key, name), REPLICA IDENTITY FULL as such a key needs,
// rows 1 to n named "n<id>", with a maintainer keeping its state, settled.
func deferredSlots(t *testing.T, n int) *env {
	t.Helper()
	e, _ := deferredSlotsOf(t, n, rowstate.Config{})
	return e
}

// deferredSlotsOf is deferredSlots with cfg's batch bounds; it returns the
// maintainer too.
func deferredSlotsOf(t *testing.T, n int, cfg rowstate.Config) (*env, *rowstate.Maintainer) {
	t.Helper()
	e := newEnv(t, fmt.Sprintf(`CREATE TABLE slots (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, name text NOT NULL);
ALTER TABLE slots REPLICA IDENTITY FULL;
INSERT INTO slots SELECT g, 'n' || g FROM generate_series(1, %d) g;`, n))
	m, _ := e.maintainerOf(cfg)
	e.settled("initial snapshot", "slots")
	return e, m
}

// TestRowsInsertedOntoKeysHeld: under a deferred key, a transaction may
// insert a row onto a key another row still holds and then delete, move or
// change that other row (a row replaced by inserting its new version
// first). The key keeps the inserted row: the other row's delete or move
// off, told apart by the old row PostgreSQL sends whole, is not the key's
// row leaving. Each transaction runs alone and with its neighbours in one
// batch, and a long one spans batches.
func TestRowsInsertedOntoKeysHeld(t *testing.T) {
	e := deferredSlots(t, 2000)
	steps := []string{
		// The new version inserted first, the old one deleted.
		`BEGIN; INSERT INTO slots VALUES (3, 'new3'); DELETE FROM slots WHERE id = 3 AND name = 'n3'; COMMIT`,
		// The old one moved off the key instead.
		`BEGIN; INSERT INTO slots VALUES (4, 'new4'); UPDATE slots SET id = 4000 WHERE name = 'n4'; COMMIT`,
		// The old one changed in place, then deleted.
		`BEGIN; INSERT INTO slots VALUES (5, 'new5'); UPDATE slots SET name = 'n5x' WHERE name = 'n5'; DELETE FROM slots WHERE name = 'n5x'; COMMIT`,
		// The new one changed in place, then the old one deleted.
		`BEGIN; INSERT INTO slots VALUES (6, 'new6'); UPDATE slots SET name = 'new6x' WHERE name = 'new6'; DELETE FROM slots WHERE name = 'n6'; COMMIT`,
		// A row moved onto a key held, whose row is then deleted.
		`BEGIN; UPDATE slots SET id = 7 WHERE name = 'n8'; DELETE FROM slots WHERE name = 'n7'; COMMIT`,
		// Without the deferred key's help: a row inserted and deleted again.
		`BEGIN; INSERT INTO slots VALUES (9000, 'x'); DELETE FROM slots WHERE id = 9000; COMMIT`,
	}
	for _, step := range steps {
		e.exec(step)
		e.settled(step, "slots")
	}
	// All at once, on other keys: one batch may hold several transactions.
	e.exec(`BEGIN; INSERT INTO slots VALUES (13, 'new13'); DELETE FROM slots WHERE id = 13 AND name = 'n13'; COMMIT;
BEGIN; INSERT INTO slots VALUES (14, 'new14'); UPDATE slots SET id = 4014 WHERE name = 'n14'; COMMIT;
BEGIN; UPDATE slots SET id = 15 WHERE name = 'n16'; DELETE FROM slots WHERE name = 'n15'; COMMIT`)
	e.settled("after several such transactions at once", "slots")
	// A transaction of 3,000 changes, longer than a batch: every row from
	// 100 replaced by a new version inserted before the old one goes.
	e.exec(`BEGIN; INSERT INTO slots SELECT g, 'v2-' || g FROM generate_series(100, 1599) g;
DELETE FROM slots WHERE id BETWEEN 100 AND 1599 AND name NOT LIKE 'v2-%'; COMMIT`)
	e.settled("after a long transaction replacing rows", "slots")
}

// TestRowsLeavingKeysTheyCameOnto: under a deferrable key, the row that
// came onto a key another row held leaves it first (deleted, or moved on),
// and the key keeps the row it had displaced, with its values as they are
// then. The state held the values of the row that left.
func TestRowsLeavingKeysTheyCameOnto(t *testing.T) {
	e := deferredSlots(t, 100)
	steps := []string{
		// Moved onto a key held, then deleted.
		`BEGIN; UPDATE slots SET id = 21 WHERE name = 'n22'; DELETE FROM slots WHERE name = 'n22'; COMMIT`,
		// Moved onto a key held, then moved on to a free key.
		`BEGIN; UPDATE slots SET id = 23 WHERE name = 'n24'; UPDATE slots SET id = 1024 WHERE name = 'n24'; COMMIT`,
		// Moved onto a key held and back where it came from.
		`BEGIN; UPDATE slots SET id = 25 WHERE name = 'n26'; UPDATE slots SET id = 26 WHERE name = 'n26'; COMMIT`,
		// Inserted onto a key whose row the transaction changed, then
		// deleted.
		`BEGIN; UPDATE slots SET name = 'n27x' WHERE id = 27; INSERT INTO slots VALUES (27, 'new27'); DELETE FROM slots WHERE name = 'new27'; COMMIT`,
		// The row displaced changes while displaced, then the one that
		// came leaves: the key holds the changed row.
		`BEGIN; UPDATE slots SET id = 28 WHERE name = 'n29'; UPDATE slots SET name = 'n28x' WHERE name = 'n28'; DELETE FROM slots WHERE name = 'n29'; COMMIT`,
		// Two rows onto one key, leaving in the order they came.
		`BEGIN; UPDATE slots SET id = 30 WHERE name = 'n31'; UPDATE slots SET id = 30 WHERE name = 'n32'; DELETE FROM slots WHERE name = 'n31'; DELETE FROM slots WHERE name = 'n32'; COMMIT`,
		// Two rows onto one key, leaving in the other order.
		`BEGIN; UPDATE slots SET id = 33 WHERE name = 'n34'; UPDATE slots SET id = 33 WHERE name = 'n35'; DELETE FROM slots WHERE name = 'n35'; DELETE FROM slots WHERE name = 'n34'; COMMIT`,
		// The row restored is then deleted in the same transaction, and
		// the key taken by a row inserted: nothing of the first is left.
		`BEGIN; UPDATE slots SET id = 36 WHERE name = 'n37'; DELETE FROM slots WHERE name = 'n37'; DELETE FROM slots WHERE name = 'n36'; INSERT INTO slots VALUES (36, 'new36'); COMMIT`,
		// Inserted onto a key whose row no change of the transaction wrote,
		// then deleted: the key holds its row again.
		`BEGIN; INSERT INTO slots VALUES (40, 'new40'); DELETE FROM slots WHERE name = 'new40'; COMMIT`,
		// The same, the row displaced changed meanwhile, and the one
		// inserted moved on to a free key.
		`BEGIN; INSERT INTO slots VALUES (41, 'new41'); UPDATE slots SET name = 'n41x' WHERE name = 'n41'; UPDATE slots SET id = 4141 WHERE name = 'new41'; COMMIT`,
		// Inserted, changed in place, then deleted.
		`BEGIN; INSERT INTO slots VALUES (42, 'new42'); UPDATE slots SET name = 'new42x' WHERE name = 'new42'; DELETE FROM slots WHERE name = 'new42x'; COMMIT`,
	}
	for _, step := range steps {
		e.exec(step)
		e.settled(step, "slots")
	}
}

// TestKeysSharedAtRandom: random transactions under a deferred key, each
// replacing rows the ways applications do (the new version inserted or
// moved onto the key first; the old one changed, then deleted or moved to
// a free key; the new one changed too), interleaved with plain changes of
// other rows, in batches of several transactions. After each batch the
// row state holds the table. The maintainer's batches are cut at 7 events,
// inside transactions. The seed is logged: TABLECAST_SEED=n repeats a run.
func TestKeysSharedAtRandom(t *testing.T) {
	seed := testrun.Seed(t)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	const rows = 200
	e := newEnv(t, fmt.Sprintf(`CREATE TABLE slots (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, name text NOT NULL, n int NOT NULL DEFAULT 0);
ALTER TABLE slots REPLICA IDENTITY FULL;
INSERT INTO slots (id, name) SELECT g, 'r' || g FROM generate_series(1, %d) g;`, rows))
	_, _ = e.maintainerOf(rowstate.Config{BatchEvents: 7})
	e.settled("initial snapshot", "slots")
	// The table as the test knows it: id → name. Names are unique.
	table := map[int]string{}
	for i := 1; i <= rows; i++ {
		table[i] = fmt.Sprintf("r%d", i)
	}
	names := 0
	newName := func() string { names++; return fmt.Sprintf("s%d-%d", seed%1000, names) }
	freeKey := func(taken map[int]bool) int {
		for {
			k := 1000 + rng.IntN(100000)
			if _, ok := table[k]; !ok && !taken[k] {
				return k
			}
		}
	}
	for round := 0; round < 12; round++ {
		var sql strings.Builder
		for tx := 0; tx < 1+rng.IntN(4); tx++ {
			sql.WriteString("BEGIN;\n")
			taken := map[int]bool{} // keys this transaction uses
			keys := make([]int, 0, len(table))
			for k := range table {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
			for _, k := range keys[:1+rng.IntN(6)] {
				taken[k] = true
				oldName := table[k]
				nw := newName()
				var steps []string
				// The new version comes onto the key: inserted (after the
				// old one changed in the same transaction, or not), or
				// moved from another row's key (which is freed).
				if other := keys[len(keys)-1-rng.IntN(len(keys)/2)]; rng.IntN(3) == 0 && !taken[other] {
					taken[other] = true
					steps = append(steps, fmt.Sprintf("UPDATE slots SET id = %d, name = '%s' WHERE name = '%s';", k, nw, table[other]))
					delete(table, other)
				} else {
					if rng.IntN(2) == 0 {
						renamed := newName()
						steps = append(steps, fmt.Sprintf("UPDATE slots SET name = '%s', n = n + 1 WHERE name = '%s';", renamed, oldName))
						oldName = renamed
					}
					steps = append(steps, fmt.Sprintf("INSERT INTO slots (id, name) VALUES (%d, '%s');", k, nw))
				}
				// Changes of either version in place, then one goes: the
				// old one, or the new one first.
				var tail []string
				for c := rng.IntN(3); c > 0; c-- {
					if rng.IntN(2) == 0 {
						renamed := newName()
						tail = append(tail, fmt.Sprintf("UPDATE slots SET name = '%s', n = n + 1 WHERE name = '%s';", renamed, oldName))
						oldName = renamed
					} else {
						tail = append(tail, fmt.Sprintf("UPDATE slots SET n = n + 1 WHERE name = '%s';", nw))
					}
				}
				leaving, staying := oldName, nw
				if rng.IntN(3) == 0 {
					leaving, staying = nw, oldName
				}
				if rng.IntN(2) == 0 {
					tail = append(tail, fmt.Sprintf("DELETE FROM slots WHERE name = '%s';", leaving))
				} else {
					to := freeKey(taken)
					taken[to] = true
					tail = append(tail, fmt.Sprintf("UPDATE slots SET id = %d WHERE name = '%s';", to, leaving))
					table[to] = leaving
				}
				table[k] = staying
				for _, s := range append(steps, tail...) {
					sql.WriteString(s + "\n")
				}
			}
			// A plain change of a row not replaced.
			for _, k := range keys[6:] {
				if !taken[k] {
					fmt.Fprintf(&sql, "UPDATE slots SET n = n + 1 WHERE id = %d;\n", k)
					break
				}
			}
			sql.WriteString("COMMIT;\n")
		}
		e.exec(sql.String())
		e.settled(fmt.Sprintf("round %d (seed %d)", round, seed), "slots")
	}
}

// TestDeferrableRowsReadAhead: a batch of changes under a deferrable key
// reads the rows its changes look up ahead, in one request, not one request
// each, and the state is the table. 200 rows are inserted onto keys rows of
// an earlier transaction hold, half of them then deleted, the other half's
// old rows deleted instead; then 100 rows move onto free keys.
func TestDeferrableRowsReadAhead(t *testing.T) {
	e, m := deferredSlotsOf(t, 400, rowstate.Config{BatchEvents: 1000, BatchWait: 200 * time.Millisecond})
	one0, ahead0 := m.LookupsForTest()
	var sql strings.Builder
	sql.WriteString("BEGIN;\n")
	for k := 1; k <= 200; k++ {
		fmt.Fprintf(&sql, "INSERT INTO slots VALUES (%d, 'new%d');\n", k, k)
		if k%2 == 0 {
			fmt.Fprintf(&sql, "DELETE FROM slots WHERE name = 'new%d';\n", k)
		} else {
			fmt.Fprintf(&sql, "DELETE FROM slots WHERE name = 'n%d';\n", k)
		}
	}
	sql.WriteString("UPDATE slots SET id = id + 1000 WHERE id > 300;\nCOMMIT;")
	e.exec(sql.String())
	e.settled("after rows inserted onto keys held", "slots")
	one, ahead := m.LookupsForTest()
	t.Logf("rows read ahead %v, one by one %v", ahead-ahead0, one-one0)
	// 200 inserts, 200 deletes and 100 moves look up 400 rows (a delete
	// looks up the row its insert wrote, which recent has): every one read
	// ahead, however the events fall into batches, none alone.
	if ahead-ahead0 < 400 || one-one0 > 0 {
		t.Errorf("rows read ahead %v, one by one %v; want 400 or more read ahead, none alone", ahead-ahead0, one-one0)
	}
	// A truncate in the batch: the rows read ahead before it are gone. A
	// row inserted after it displaces nothing, and its delete leaves no
	// row behind.
	e.exec(`BEGIN; INSERT INTO slots VALUES (5000, 'x'); TRUNCATE slots; INSERT INTO slots VALUES (2, 'after2'), (3, 'after3');
DELETE FROM slots WHERE name = 'after2'; COMMIT`)
	e.settled("after a truncate in the batch", "slots")
}
