package rowstate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/auth/authtest"
	"github.com/tablecast/tablecast/internal/rowstate"
)

// eventOf returns the stream sequence of the last event of row id of table
// items, 0 when there is none.
func (e *env) eventOf(id int) uint64 {
	e.t.Helper()
	want := fmt.Sprintf(`{"id":%d}`, id)
	var seq uint64
	for _, m := range e.nats.ReadAll(e.t, "TABLECAST") {
		var ev struct {
			Table string          `json:"table"`
			Key   json.RawMessage `json:"key"`
		}
		if json.Unmarshal(m.Data, &ev) == nil && ev.Table == "items" && len(ev.Key) > 0 && canon(e.t, ev.Key) == want {
			seq = m.Seq
		}
	}
	return seq
}

// consistent checks that a scan of items, completed with the events after
// the sequence it returns, equals the table: whatever the maintainer has
// failed to write, the rows as of its marker are the table as of there.
func (e *env) consistent(what string) uint64 {
	e.t.Helper()
	got, n := e.boundedRows("items")
	applyEvents(e.t, e, got, n)
	sameRows(e.t, what, got, e.want("items"))
	return n
}

// TestRefusedRowHoldsTheMarker: when the rows stream refuses a row in the
// middle of a batch (here: larger than the stream's maximum message size),
// the maintainer does not record the batch as applied, the state stays the
// table as of its marker, and once the stream takes the row again the
// state catches up with the table.
func TestRefusedRowHoldsTheMarker(t *testing.T) { refusedRowHoldsTheMarker(t) }

func refusedRowHoldsTheMarker(t *testing.T) {
	e := newEnv(t, items)
	m, _ := e.maintainer()
	e.caughtUp(m)
	r := refuseBigRows(e)
	if !r.cfg.AllowBatchPublish {
		t.Fatal("the rows stream does not take fast batches: the maintainer writes rows one acknowledged publish each")
	}
	r.commit("UPDATE items SET name = 'after' WHERE id = 1;")
	// The maintainer tries the batch again and again meanwhile.
	time.Sleep(2 * time.Second)
	r.check(m)
	r.lift(m)
}

// TestRefusedRowHoldsTheMarkerAcrossBatches: the maintainer applies a
// batch while the stream stores the one before it. When that one has a
// refused row, the rows of the batch after it are stored all the same;
// that batch's marker must not be, since a scan as of it would lack the
// refused row. Ten events a batch put the refused row's batch among
// others of the transaction.
func TestRefusedRowHoldsTheMarkerAcrossBatches(t *testing.T) {
	e := newEnv(t, items)
	m, _ := e.maintainerOf(rowstate.Config{BatchEvents: 10})
	e.caughtUp(m)
	r := refuseBigRows(e)
	r.commit("")
	time.Sleep(2 * time.Second)
	stored := 0
	for id := 1052; id <= 1100; id++ {
		if r.rowAt(id) > 0 {
			stored++
		}
	}
	if stored == 0 {
		t.Fatal("no row after the refused one was stored: the test no longer sets up a batch stored after a refused one")
	}
	r.check(m)
	r.lift(m)
}

// refusal is a rows stream that refuses row messages over 2 KiB, and a
// transaction with one such row (1051) among small ones.
type refusal struct {
	e    *env
	rows jetstream.Stream
	cfg  jetstream.StreamConfig // the rows stream's, with the limit
	big  uint64                 // the event of the refused row
}

func refuseBigRows(e *env) *refusal {
	e.t.Helper()
	ctx := context.Background()
	rows, err := e.nats.JS.Stream(ctx, rowstate.RowsStreamName("TABLECAST"))
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := rows.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	r := &refusal{e: e, rows: rows, cfg: info.Config}
	r.cfg.MaxMsgSize = 2048
	if _, err := e.nats.JS.UpdateStream(ctx, r.cfg); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// commit commits the transaction (small rows, one too large for the
// stream, small rows, then extra) and waits for its events.
func (r *refusal) commit(extra string) {
	e := r.e
	e.t.Helper()
	e.exec(`BEGIN;
INSERT INTO items SELECT g, 'n' || g, NULL FROM generate_series(1001, 1050) g;
INSERT INTO items VALUES (1051, 'big', ` + bigText + `);
INSERT INTO items SELECT g, 'n' || g, NULL FROM generate_series(1052, 1100) g;
` + extra + `
COMMIT`)
	waitFor(e.t, 30*time.Second, "the transaction's events", func() bool {
		r.big = e.eventOf(1051)
		return r.big > 0 && e.eventOf(1100) > 0
	})
}

// check checks the state while the row is refused: applied before its
// event, and a scan as of before it that, with the events after it, is
// the table.
func (r *refusal) check(m *rowstate.Maintainer) {
	e, t, big := r.e, r.e.t, r.big
	t.Helper()
	if a := m.Applied(); a >= big {
		t.Fatalf("the row state is recorded as applied up to event %d, past event %d whose row the stream refused", a, big)
	}
	// The scan's position is checked before its rows: a scan past the
	// refused event also lacks its row, and would be reported as that.
	got, n := e.boundedRows("items")
	if n >= big {
		t.Fatalf("a scan is as of event %d, past event %d whose row the stream refused (the state has applied up to %d)", n, big, m.Applied())
	}
	applyEvents(t, e, got, n)
	sameRows(t, fmt.Sprintf("while a row is refused (scan as of event %d, the refused row's event %d)", n, big), got, e.want("items"))
}

// rowAt returns the stream sequence of the row of items whose id is id in
// the rows stream (0: none).
func (r *refusal) rowAt(id int) uint64 {
	msg, err := r.rows.GetLastMsgForSubject(context.Background(), rowstate.RowSubject(prefix, r.e.db, "public", "items",
		rowstate.KeyToken([]byte(fmt.Sprintf(`{"id":%d}`, id)))))
	if err != nil {
		return 0
	}
	return msg.Sequence
}

// lift lets the stream take the row, and waits for the state to catch up
// with the table.
func (r *refusal) lift(m *rowstate.Maintainer) {
	e := r.e
	e.t.Helper()
	r.cfg.MaxMsgSize = -1
	if _, err := e.nats.JS.UpdateStream(context.Background(), r.cfg); err != nil {
		e.t.Fatal(err)
	}
	e.settled("once the stream takes the row", "items")
	e.caughtUp(m)
	e.consistent("caught up")
}

func (e *env) lastEvent() uint64 {
	s, err := e.nats.JS.Stream(context.Background(), "TABLECAST")
	if err != nil {
		return 0
	}
	info, err := s.Info(context.Background())
	if err != nil {
		return 0
	}
	return info.State.LastSeq
}

// TestLostRowFailsTheBatch: a row message lost on its way to the stream
// (as with a connection that drops mid-batch) fails its batch; the
// maintainer applies the batch again, and the state equals the table. With
// ten events a batch, the batch after the one with the lost row is applied
// and sent while that one is being stored.
func TestLostRowFailsTheBatch(t *testing.T) {
	t.Run("one batch", func(t *testing.T) { lostRowFailsTheBatch(t, rowstate.Config{}) })
	t.Run("ten events a batch", func(t *testing.T) { lostRowFailsTheBatch(t, rowstate.Config{BatchEvents: 10}) })
}

func lostRowFailsTheBatch(t *testing.T, cfg rowstate.Config) {
	e := newEnv(t, items)
	m, _ := e.maintainerOf(cfg)
	e.caughtUp(m)
	// Lose the third row of the next batches of at least three rows, twice.
	var lost atomic.Int32
	restore := rowstate.LoseRowsForTest(func(bseq uint64) bool {
		return bseq == 3 && lost.Add(1) <= 2
	})
	defer restore()
	e.exec(`UPDATE items SET name = 'lost?' WHERE id <= 100`)
	waitFor(t, 30*time.Second, "rows to be lost", func() bool { return lost.Load() >= 2 })
	e.settled("after lost rows", "items")
	e.caughtUp(m)
	e.consistent("after lost rows")
}

// TestLostBatchEndCostsSeconds: a batch whose end never reaches the
// stream gets no reply at all, as when the stream's leader dies with the
// batch (its new leader never heard of it) while the connection stays up.
// The maintainer holds its marker while it waits, gives the batch up for
// the stream's silence since the batch's end (5 s), not for a wait from
// the batch's start (the 30 s this replaced), writes the rows again, and
// the state equals the table. The reason is asserted from the
// maintainer's log, not from a clock. With ten events a batch, the batches
// after the lost end are applied while it is awaited, and none of their
// markers may be written before it.
func TestLostBatchEndCostsSeconds(t *testing.T) {
	t.Run("one batch", func(t *testing.T) { lostBatchEndCostsSeconds(t, 0) })
	t.Run("ten events a batch", func(t *testing.T) { lostBatchEndCostsSeconds(t, 10) })
}

func lostBatchEndCostsSeconds(t *testing.T, batchEvents int) {
	e := newEnv(t, items)
	logger, logs := authtest.NewLogger()
	m, err := rowstate.New(rowstate.Config{DB: e.db, Prefix: prefix, RetryMin: 50 * time.Millisecond,
		Logger: logger, BatchEvents: batchEvents}, e.nats.NC)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	e.caughtUp(m)
	var lost atomic.Int32
	restore := rowstate.LoseBatchEndsForTest(func() bool { return lost.Add(1) == 1 })
	defer restore()
	before := m.Applied()
	e.exec(`UPDATE items SET name = 'end lost' WHERE id <= 100`)
	waitFor(t, 30*time.Second, "a batch's end to be lost", func() bool { return lost.Load() >= 1 })
	time.Sleep(time.Second)
	if got := m.Applied(); got != before {
		t.Fatalf("applied moved from %d to %d while the batch's acknowledgement was awaited", before, got)
	}
	e.caughtUp(m)
	e.settled("after a lost batch end", "items")
	e.consistent("after a lost batch end")
	const reason = "the stream sent nothing for 5s after the batch's end or its last reply"
	if !strings.Contains(logs.String(), reason) {
		t.Fatalf("the maintainer did not give the batch up for the stream's silence (%q); it logged:\n%s", reason, logs.String())
	}
}

// TestNATSRestartsUnderWrites: NATS restarted twice while rows change
// (batches cut short by the restart, rows and replies lost with the
// connection): every scan is the table as of its marker, and at rest the
// state equals the table.
func TestNATSRestartsUnderWrites(t *testing.T) {
	e := newEnv(t, items)
	m, _ := e.maintainer()
	e.caughtUp(m)
	ctx, cancel := context.WithCancel(context.Background())
	writer := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(ctx, e.conn.Config().ConnString())
		if err != nil {
			writer <- err
			return
		}
		defer conn.Close(context.Background())
		for i := 0; ctx.Err() == nil; i++ {
			sql := fmt.Sprintf(`INSERT INTO items SELECT g, 'w%d', NULL FROM generate_series(%d, %d) g ON CONFLICT (id) DO UPDATE SET name = excluded.name`,
				i, i%20*25+1, i%20*25+50)
			if _, err := conn.Exec(ctx, sql); err != nil && ctx.Err() == nil {
				writer <- err
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		writer <- nil
	}()
	for range 2 {
		time.Sleep(700 * time.Millisecond)
		e.nats.Stop()
		time.Sleep(200 * time.Millisecond)
		e.nats.Restart()
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	if err := <-writer; err != nil && ctx.Err() == nil {
		t.Fatalf("writer: %v", err)
	}
	e.caughtUp(m)
	e.settled("after NATS restarts", "items")
	e.caughtUp(m)
	e.consistent("after NATS restarts")
}

// BenchmarkMaintainer measures the maintainer alone: each iteration builds
// the state of a table of 50,000 rows (inserted, then each updated once) from
// the event stream, into a rows stream deleted before it, and reports the
// events applied per second. The maintainer shares the process with
// JetStream (embedded, file storage), as in tablecast.
// TABLECAST_BENCH_DEFERRABLE=1 gives the table a deferrable primary key, whose
// changes the maintainer looks up one by one.
func BenchmarkMaintainer(b *testing.B) {
	n := 50_000
	if v, err := strconv.Atoi(os.Getenv("TABLECAST_BENCH_ROWS")); err == nil && v > 0 {
		n = v // a larger table: TABLECAST_BENCH_ROWS=n
	}
	setup := `CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, big text);`
	if os.Getenv("TABLECAST_BENCH_DEFERRABLE") == "1" {
		// Under a deferrable key (TABLECAST_BENCH_DEFERRABLE=1) the
		// maintainer looks up each change's row.
		setup = `CREATE TABLE items (id int PRIMARY KEY DEFERRABLE, name text NOT NULL, big text);
ALTER TABLE items REPLICA IDENTITY FULL;`
	}
	e := newEnv(b, setup)
	e.exec(fmt.Sprintf(`INSERT INTO items SELECT g, 'n' || g, NULL FROM generate_series(1, %d) g`, n))
	e.exec(`UPDATE items SET name = name || 'x'`)
	waitFor(b, time.Minute, "the events", func() bool { return e.nats.Count("TABLECAST") >= uint64(2*n) })
	events := e.lastEvent()
	ctx := context.Background()
	if path := os.Getenv("TABLECAST_BENCH_CPUPROFILE"); path != "" {
		// The maintainer's part alone, without the setup's.
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		_ = e.nats.JS.DeleteStream(ctx, rowstate.RowsStreamName("TABLECAST"))
		b.StartTimer()
		m, stop := e.maintainer()
		waitFor(b, 5*time.Minute, "the state", func() bool { return m.Applied() >= events })
		stop()
	}
	b.ReportMetric(float64(b.N)*float64(events)/b.Elapsed().Seconds(), "events/s")
}

// TestWithoutBatches: on a server without fast batches the maintainer
// writes each row with its own acknowledgement, with the same guarantees:
// the state follows the table, and a refused row holds the marker.
func TestWithoutBatches(t *testing.T) {
	restore := rowstate.WithoutBatchesForTest()
	defer restore()
	t.Run("follows the table", stateFollowsTheTable)
	// On this path the rows after a refused one are stored: its session
	// writes no marker above them (TestRefusedRowLeavesNoMarkerAboveIt).
	t.Run("refused row", refusedRowHoldsTheMarker)
}

// TestRefusedRowLeavesNoMarkerAboveIt: on a stream without fast batches
// the rows after a refused one are stored all the same. A later session
// whose batches end before those rows must not record its position after
// them: a scan would then count their events in its N and miss the refused
// row, with no event after N to bring it back. The first maintainer takes
// the whole transaction in one batch and stores the rows after the refused
// one; the next takes ten events a batch, so that its first batches end
// before them.
func TestRefusedRowLeavesNoMarkerAboveIt(t *testing.T) {
	restore := rowstate.WithoutBatchesForTest()
	defer restore()
	e := newEnv(t, items)
	m, stop := e.maintainerOf(rowstate.Config{BatchWait: 500 * time.Millisecond})
	e.caughtUp(m)
	r := refuseBigRows(e)
	r.commit("")
	waitFor(t, 30*time.Second, "the rows after the refused one to be stored", func() bool { return r.rowAt(1100) > 0 })
	stop()
	after := r.rowAt(1100)

	m, _ = e.maintainerOf(rowstate.Config{BatchEvents: 10})
	// Its batches before the refused row rewrite nothing (the rows hold
	// those versions), and it tries the refused row again and again.
	time.Sleep(2 * time.Second)
	if r.rowAt(1100) != after {
		t.Fatalf("the row after the refused one was written again: the test no longer sets up rows stored above a hole")
	}
	r.check(m)
	r.lift(m)
}
