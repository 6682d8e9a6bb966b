package rowstate_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/rowstate"
)

// TestTruncateHoldsWhenABatchIsAppliedAgain: a batch that fails after it
// applied a truncate (a row after it refused by the stream) is applied
// again from the state's marker; the rows its events before the truncate
// wrote, which the truncate purged, stay purged. They were written back
// (the state held no later version of them), and the truncate, recorded
// already, was not applied again: rows the table no longer had stayed in
// the state for good.
func TestTruncateHoldsWhenABatchIsAppliedAgain(t *testing.T) {
	e := newEnv(t, items)
	rows, takeLargeRows := refuseLargeRows(e)
	e.exec(`BEGIN;
UPDATE items SET name = 'pre' WHERE id <= 5;
TRUNCATE items;
INSERT INTO items SELECT g, 'n' || g, NULL FROM generate_series(1001, 1010) g;
INSERT INTO items VALUES (1051, 'big', ` + bigText + `);
COMMIT`)
	waitFor(t, 30*time.Second, "the transaction's events", func() bool { return e.eventOf(1051) > 0 })
	slowRetryMaintainer(e, 0)
	subj := rowstate.RowSubject(prefix, e.db, "public", "items", rowstate.KeyToken([]byte(`{"id":1010}`)))
	waitFor(t, 30*time.Second, "the first attempt to store rows after the truncate", func() bool {
		_, err := rows.GetLastMsgForSubject(context.Background(), subj)
		return err == nil
	})
	time.Sleep(time.Second) // its batch fails on the row refused
	takeLargeRows()
	e.settled("once the stream takes the row", "items")
}

// refuseLargeRows builds e's row state, stops its maintainer, and has the
// rows stream refuse rows larger than 2 KiB until takeLargeRows: a batch
// with such a row fails after the rows before it were stored, and is
// applied again.
func refuseLargeRows(e *env) (rows jetstream.Stream, takeLargeRows func()) {
	e.t.Helper()
	m, stop := e.maintainer()
	e.caughtUp(m)
	stop()
	ctx := context.Background()
	rows, err := e.nats.JS.Stream(ctx, rowstate.RowsStreamName("TABLECAST"))
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := rows.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := info.Config
	cfg.MaxMsgSize = 2048
	if _, err := e.nats.JS.UpdateStream(ctx, cfg); err != nil {
		e.t.Fatal(err)
	}
	return rows, func() {
		cfg.MaxMsgSize = -1
		if _, err := e.nats.JS.UpdateStream(ctx, cfg); err != nil {
			e.t.Fatal(err)
		}
	}
}

// slowRetryMaintainer starts a maintainer that waits 5 s before it tries
// a failed batch again (the test lets the stream take every row before the
// second attempt), until the test ends; batchEvents bounds its batches (0:
// the default).
func slowRetryMaintainer(e *env, batchEvents int) {
	e.t.Helper()
	m, err := rowstate.New(rowstate.Config{DB: e.db, Prefix: prefix, RetryMin: 5 * time.Second, RetryMax: 5 * time.Second, BatchEvents: batchEvents}, e.nats.NC)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = m.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); wg.Wait() })
}

// TestSharedKeyHoldsWhenABatchIsAppliedAgain: under a deferred key, a
// transaction inserts a row onto a key another row holds, then a row the
// stream refuses (its batch fails), then deletes the other row. The delete,
// applied by the maintainer's next session, must still find that the key's
// row is the inserted one, not tombstone it: when the insert's batch is
// applied again (the state holds the row already, and it is not written
// back), and when the insert's batch was applied whole before (a batch per
// event): the next session begins inside the transaction.
func TestSharedKeyHoldsWhenABatchIsAppliedAgain(t *testing.T) {
	for _, tc := range []struct {
		name        string
		batchEvents int
	}{{"the insert applied again", 0}, {"a session begun inside the transaction", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, `CREATE TABLE slots (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, name text NOT NULL, big text);
ALTER TABLE slots REPLICA IDENTITY FULL;
INSERT INTO slots SELECT g, 'n' || g, NULL FROM generate_series(1, 10) g;`)
			rows, takeLargeRows := refuseLargeRows(e)
			e.exec(`BEGIN;
INSERT INTO slots VALUES (3, 'new3', NULL);
INSERT INTO slots VALUES (51, 'big', ` + bigText + `);
DELETE FROM slots WHERE name = 'n3';
COMMIT`)
			slowRetryMaintainer(e, tc.batchEvents)
			subj := rowstate.RowSubject(prefix, e.db, "public", "slots", rowstate.KeyToken([]byte(`{"id":3}`)))
			waitFor(t, 30*time.Second, "the first attempt to store the inserted row", func() bool {
				msg, err := rows.GetLastMsgForSubject(context.Background(), subj)
				return err == nil && strings.Contains(string(msg.Data), "new3")
			})
			time.Sleep(time.Second) // its batch fails on the row refused
			takeLargeRows()
			e.settled("once the stream takes the row", "slots")
		})
	}
}
