package rowstate_test

import "testing"

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

// TestRowsInsertedOntoKeysHeld: under a deferred key, a transaction may
// insert a row onto a key another row still holds and then delete, move or
// change that other row (a row replaced by inserting its new version
// first). The key keeps the inserted row: the other row's delete or move
// off, told apart by the old row PostgreSQL sends whole, is not the key's
// row leaving. Each transaction runs alone and with its neighbours in one
// batch, and a long one spans batches.
func TestRowsInsertedOntoKeysHeld(t *testing.T) {
	e := newEnv(t, `CREATE TABLE slots (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, name text NOT NULL);
ALTER TABLE slots REPLICA IDENTITY FULL;
INSERT INTO slots SELECT g, 'n' || g FROM generate_series(1, 2000) g;`)
	_, _ = e.maintainer()
	e.settled("initial snapshot", "slots")
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
