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
