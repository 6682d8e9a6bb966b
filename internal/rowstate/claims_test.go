package rowstate_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/rowstate"
)

// hugeText is a value larger than the embedded NATS server's maximum
// payload (8 MiB), so that an event carrying it is stored as a claim.
const hugeText = `(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300000) g)`

// TestClaimedUpdateMovesTheKey: an update whose event is stored as a claim
// (the row larger than NATS's maximum payload) and that changes the row's
// key leaves nothing under the old key: the state holds the table's keys,
// the moved row under its new key (as a row too large to keep) where that
// key fits in a message. A primary key changed by the update, and a table
// whose key is every column (REPLICA IDENTITY FULL, no primary key), whose
// key changes with any column.
func TestClaimedUpdateMovesTheKey(t *testing.T) {
	e := newEnv(t, `CREATE TABLE big (id int PRIMARY KEY, body text);
CREATE TABLE whole (v text, n int);
ALTER TABLE whole REPLICA IDENTITY FULL;
INSERT INTO big VALUES (1, 'small'), (5, 'small');
INSERT INTO whole VALUES ('a', 1), ('b', 2);`)
	_, _ = e.maintainer()
	e.exec(`UPDATE big SET id = 2, body = ` + hugeText + ` WHERE id = 1`)
	e.exec(`UPDATE whole SET v = ` + hugeText + ` WHERE v = 'a'`)
	e.exec(`UPDATE whole SET n = 3 WHERE v = 'b'`)
	keysSettle(t, e, "big", `{"id":2} {"id":5}`)
	// The moved row's new key (the whole row) is too large for a row
	// message: it is left out, and nothing stays under its old key.
	keysSettle(t, e, "whole", `{"n":3,"v":"b"}`)

	e.exec(`DELETE FROM big WHERE id = 2`)
	e.exec(`DELETE FROM whole WHERE n = 1`)
	keysSettle(t, e, "big", `{"id":5}`)
	keysSettle(t, e, "whole", `{"n":3,"v":"b"}`)
}

// keysSettle waits until the state holds exactly the keys want of table
// (stateKeys), and fails naming those it holds when it never does.
func keysSettle(t *testing.T, e *env, table, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := stateKeys(t, e, table)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the state holds keys %s (%v), want %s", table, got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stateKeys lists the keys of the rows (data or too large to keep, not
// tombstones) the state holds for table, sorted, space-separated.
// The state may not exist yet: an error then.
func stateKeys(t *testing.T, e *env, table string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := e.nats.JS.Stream(ctx, rowstate.RowsStreamName("TABLECAST"))
	if err != nil {
		return "", err
	}
	keys := map[string]bool{}
	if _, err := rowstate.Scan(ctx, rows, prefix, e.db, "public", table, func(r rowstate.Row) error {
		keys[canon(t, r.Key)] = !r.Deleted
		return nil
	}); err != nil {
		return "", fmt.Errorf("scan %s: %w", table, err)
	}
	var out []string
	for k, live := range keys {
		if live {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return strings.Join(out, " "), nil
}

// fiveMiB is a value of 5 MiB: an event carrying one fits in the embedded
// server's 8 MiB, one carrying two does not.
const fiveMiB = `(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 160000) g)`

// TestFilledRowLargerThanAMessage: an update that sets one large value
// and leaves another out as unchanged TOAST has an event that fits in a
// message, but the row with the value filled in does not. The state keeps
// it as a row too large to keep (as it keeps a claimed row) and goes on
// applying: the server refused the row at every attempt, and the state
// applied nothing after it. A later update that leaves those values out
// keeps it so (the row without them is not the table's); one that sets
// them all brings its data back.
func TestFilledRowLargerThanAMessage(t *testing.T) {
	e := newEnv(t, `CREATE TABLE two (id int PRIMARY KEY, a text, b text, n int);
ALTER TABLE two ALTER COLUMN a SET STORAGE EXTERNAL, ALTER COLUMN b SET STORAGE EXTERNAL;`)
	_, _ = e.maintainer()
	e.exec(`INSERT INTO two VALUES (1, ` + fiveMiB + `, NULL, 0)`)
	e.exec(`UPDATE two SET b = ` + fiveMiB + ` WHERE id = 1`)
	e.exec(`INSERT INTO two VALUES (2, 'x', 'y', 0)`)
	rowsSettle(t, e, "two", `{"id":1}=truncated {"id":2}={"a":"x","b":"y","id":2,"n":0}`)
	e.exec(`UPDATE two SET n = 1 WHERE id = 1`)
	e.exec(`UPDATE two SET n = 1 WHERE id = 2`)
	rowsSettle(t, e, "two", `{"id":1}=truncated {"id":2}={"a":"x","b":"y","id":2,"n":1}`)
	e.exec(`UPDATE two SET a = 's', b = 't', n = 2 WHERE id = 1`)
	rowsSettle(t, e, "two", `{"id":1}={"a":"s","b":"t","id":1,"n":2} {"id":2}={"a":"x","b":"y","id":2,"n":1}`)
}

// rowsSettle waits until the state holds exactly the rows want of table:
// key=data (or key=truncated for a row kept without its data), sorted by
// key, space-separated.
func rowsSettle(t *testing.T, e *env, table, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := stateRows(t, e, table)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the state holds %.300s (%v), want %s", table, got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func stateRows(t *testing.T, e *env, table string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := e.nats.JS.Stream(ctx, rowstate.RowsStreamName("TABLECAST"))
	if err != nil {
		return "", err
	}
	got := map[string]string{}
	if _, err := rowstate.Scan(ctx, rows, prefix, e.db, "public", table, func(r rowstate.Row) error {
		switch {
		case r.Deleted:
			delete(got, canon(t, r.Key))
		case r.Data == nil:
			got[canon(t, r.Key)] = "truncated"
		default:
			got[canon(t, r.Key)] = canon(t, r.Data)
		}
		return nil
	}); err != nil {
		return "", fmt.Errorf("scan %s: %w", table, err)
	}
	var out []string
	for k, v := range got {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return strings.Join(out, " "), nil
}
