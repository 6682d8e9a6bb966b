package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Exactly once into the stream across outages longer than JetStream's
// duplicate window: the reader is killed while JetStream holds events it has
// not yet confirmed to PostgreSQL, and stays away until JetStream has
// forgotten their ids, so that only the reader itself can tell that the
// replay repeats them.

// outageReader is a `tablecast cdc` process that a test kills and starts
// again.
type outageReader struct {
	t   *testing.T
	env []string
	cmd *exec.Cmd
	// exited is closed once cmd has exited, with exitErr what Wait said.
	exited  chan struct{}
	exitErr error
	n       *natsServer
	conn    *pgx.Conn // a connection of the test's own, for the slot's state
	slot    string
	// lastStored is the commit LSN of the last event stored when the
	// reader was last killed.
	lastStored uint64
}

func (r *outageReader) start() {
	r.t.Helper()
	cmd := exec.Command(binary(r.t), "cdc")
	cmd.Env = append(baseEnv(), r.env...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.cmd, r.exited = cmd, make(chan struct{})
	// Waited for at once, so that a reader that exits by itself is told
	// from one that runs but streams nothing.
	go func(exited chan struct{}) {
		r.exitErr = cmd.Wait()
		close(exited)
	}(r.exited)
	waitSlotActive(r.t, r.conn, r.slot)
}

func (r *outageReader) kill() {
	r.t.Helper()
	select {
	case <-r.exited:
		r.t.Fatalf("the reader (pid %d) exited by itself: %v", r.cmd.Process.Pid, r.exitErr)
	default:
	}
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		r.t.Fatalf("kill the reader: %v", err)
	}
	<-r.exited
	// The slot is free once PostgreSQL has noticed; until then its
	// confirmed position may still move with a status update in flight.
	waitFor(r.t, time.Minute, "PostgreSQL to release the slot", func() bool {
		var active bool
		err := r.conn.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, r.slot).Scan(&active)
		return err == nil && !active
	})
}

func (r *outageReader) stop() {
	if r.cmd == nil {
		return
	}
	select {
	case <-r.exited:
	default:
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		<-r.exited
	}
}

// describe says, for a failure, whether the reader still runs and where
// it stands.
func (r *outageReader) describe() string {
	if r.cmd == nil {
		return "no reader started"
	}
	select {
	case <-r.exited:
		return fmt.Sprintf("the reader (pid %d) had exited by itself: %v", r.cmd.Process.Pid, r.exitErr)
	default:
	}
	_, _, what := r.position()
	return fmt.Sprintf("the reader (pid %d) still runs: %s", r.cmd.Process.Pid, what)
}

// unconfirmed reports whether JetStream holds an event the slot has not
// confirmed: one the slot would replay. Every message in the stream is
// the reader's, so the last one says how far it got.
func (r *outageReader) unconfirmed() (bool, string) {
	ok, _, what := r.position()
	return ok, what
}

// position returns unconfirmed's answer with the slot's confirmed LSN.
func (r *outageReader) position() (unconfirmed bool, confirmedLSN uint64, what string) {
	r.t.Helper()
	var confirmed *string
	err := r.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, r.slot).Scan(&confirmed)
	if errors.Is(err, pgx.ErrNoRows) || err == nil && confirmed == nil {
		return false, 0, "" // the slot is not made yet, or has no consistent point yet
	}
	if err != nil {
		r.t.Fatalf("read slot: %v", err)
	}
	c, err := pglogrepl.ParseLSN(*confirmed)
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := r.n.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		return false, uint64(c), ""
	}
	// The last event: a fence (stream.FenceSubject), stored when the
	// restarted reader took its lease over, may come after it.
	m, err := st.GetLastMsgForSubject(ctx, "tc.>")
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, uint64(c), ""
	}
	if err != nil {
		r.t.Fatalf("read the stream's last event: %v", err)
	}
	id := m.Header.Get(jetstream.MsgIDHeader)
	lsn, _, ok := schema.ParseEventID(id)
	if !ok {
		r.t.Fatalf("last event %d has id %q", m.Sequence, id)
	}
	r.lastStored = max(r.lastStored, lsn)
	return lsn >= uint64(c), uint64(c), fmt.Sprintf("last stored id %s, slot confirmed %s", id, *confirmed)
}

// outage kills the reader while JetStream holds events the slot has not
// confirmed, keeps it down for down, and starts it again. Before it kills,
// the reader has confirmed beyond everything stored at the previous kill:
// it went through the replay and streams new changes. It returns false,
// with the reader running again, when the reader happened to confirm
// everything stored before it died, which makes the outage a plain restart.
func (r *outageReader) outage(down time.Duration) bool {
	r.t.Helper()
	past := r.lastStored
	waitFor(r.t, 2*time.Minute, "new events stored but not confirmed", func() bool {
		ok, confirmed, _ := r.position()
		return ok && confirmed > past
	})
	r.kill()
	ok, what := r.unconfirmed()
	if !ok {
		r.start()
		return false
	}
	r.t.Logf("reader killed (%s); down for %s", what, down)
	time.Sleep(down) // the outage itself
	r.start()
	return true
}

// assertIDsIncrease checks that the stream holds each event id once, in
// increasing order: exactly once, in the one reader's publishing order.
func assertIDsIncrease(t *testing.T, n *natsServer) int {
	t.Helper()
	var prevLSN, prevOrd uint64
	msgs := n.ReadAll(t, "TABLECAST")
	for i, m := range msgs {
		lsn, ord, ok := schema.ParseEventID(m.MsgID)
		if !ok {
			t.Fatalf("message %d has id %q", m.Seq, m.MsgID)
		}
		if i > 0 && (lsn < prevLSN || lsn == prevLSN && ord <= prevOrd) {
			t.Fatalf("message %d has id %s after %s: stored twice or out of order", m.Seq, m.MsgID, msgs[i-1].MsgID)
		}
		if m.Header.Get("Tablecast-Origin") == "" {
			t.Fatalf("message %d carries no Tablecast-Origin", m.Seq)
		}
		prevLSN, prevOrd = lsn, ord
	}
	return len(msgs)
}

// TestExactlyOnceBeyondDuplicateWindow: with a duplicate window of one
// second, the reader is killed three times under load while JetStream
// holds events it has not confirmed, and stays down for five windows each
// time. Every committed change must be in the stream exactly once, in
// commit order.
func TestExactlyOnceBeyondDuplicateWindow(t *testing.T) {
	t.Parallel() // see "Parallel tests" in main_test.go
	const window = time.Second
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_once_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)
	r := &outageReader{t: t, n: n, conn: connect(t, url), slot: slot, env: []string{
		"TABLECAST_DATABASE_URL=" + url, "TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_SLOT=" + slot,
		"TABLECAST_PUBLICATION=tc_once", "TABLECAST_HTTP_ADDR=127.0.0.1:0", "TABLECAST_DUPLICATE_WINDOW=" + window.String(),
		// Info: each session's start says through which id it found the
		// stream holding its events, and the first one it published
		// again, which is what tells a loss from a reader that stopped.
		"TABLECAST_SUBJECT_PREFIX=tc", "TABLECAST_LOG_LEVEL=info",
		// The default lease (5s): a killed reader's is taken over at once
		// all the same, its process being gone from this machine (cdc's
		// holderGone), while a lease of 1s, renewed within 800 ms, is
		// lost to the pauses of a loaded machine, over and over.
	}}
	r.start()
	t.Cleanup(r.stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("at the failure, %s", r.describe())
		}
	})

	load := startOrderedLoad(t, conn, time.Millisecond)
	for outages := 0; outages < 3; {
		if r.outage(5 * window) {
			outages++
		}
	}
	committed := load.stop(t)

	want := checkExactlyOnce(t, n, committed, 3*time.Minute)
	t.Logf("%d events, each once, in commit order, across 3 outages of 5 duplicate windows", want)
}

// change is one committed row change of the ordered load.
type change struct {
	op string
	id int
}

// orderedLoad commits small transactions on tables a and b over one
// connection, so that commit order is the order it records; one in ten
// is rolled back.
type orderedLoad struct {
	mu        sync.Mutex
	committed map[string][]change
	err       error
	pace      time.Duration // pause after each commit
	quit      chan struct{}
	done      chan struct{}
}

func startOrderedLoad(t *testing.T, conn *pgx.Conn, pace time.Duration) *orderedLoad {
	l := &orderedLoad{committed: map[string][]change{}, pace: pace, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(5, 6))
		next := map[string]int{"a": 0, "b": 0}
		type pending struct {
			table string
			c     change
		}
		for i := 0; ; i++ {
			select {
			case <-l.quit:
				return
			default:
			}
			tx, err := conn.Begin(ctx)
			if err != nil {
				l.err = err
				return
			}
			var ps []pending
			for j := 0; j < 1+rng.IntN(4); j++ {
				table := []string{"a", "b"}[rng.IntN(2)]
				if next[table] > 0 && rng.IntN(4) == 0 {
					id := 1 + rng.IntN(next[table])
					if _, err := tx.Exec(ctx, "UPDATE "+table+" SET v = v WHERE id = $1", id); err != nil {
						l.err = err
						return
					}
					ps = append(ps, pending{table, change{"update", id}})
					continue
				}
				next[table]++
				if _, err := tx.Exec(ctx, "INSERT INTO "+table+" VALUES ($1, $2)", next[table], strconv.Itoa(i)); err != nil {
					l.err = err
					return
				}
				ps = append(ps, pending{table, change{"create", next[table]}})
			}
			if rng.IntN(10) == 0 {
				if err := tx.Rollback(ctx); err != nil {
					l.err = err
					return
				}
				for _, p := range ps {
					if p.c.op == "create" {
						next[p.table]--
					}
				}
				continue
			}
			if err := tx.Commit(ctx); err != nil {
				l.err = err
				return
			}
			if l.pace > 0 {
				time.Sleep(l.pace) // a steady load, not a flood the reader trails
			}
			l.mu.Lock()
			for _, p := range ps {
				l.committed[p.table] = append(l.committed[p.table], p.c)
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// stop ends the load and returns every committed change, per table in
// commit order.
func (l *orderedLoad) stop(t *testing.T) map[string][]change {
	t.Helper()
	close(l.quit)
	<-l.done
	if l.err != nil {
		t.Fatalf("load: %v", l.err)
	}
	return l.committed
}

// assertCommitted checks that the stream holds exactly the committed
// changes, each once, per table in commit order.
func assertCommitted(t *testing.T, n *natsServer, committed map[string][]change) {
	t.Helper()
	evs := n.events(t)
	got := map[string][]change{}
	ids := map[string]bool{}
	for _, e := range evs {
		id := e["id"].(string)
		if ids[id] {
			t.Fatalf("event id %s stored twice", id)
		}
		ids[id] = true
		row := e["data"].(map[string]any)
		got[e["table"].(string)] = append(got[e["table"].(string)], change{e["op"].(string), int(row["id"].(float64))})
	}
	// The first difference of each table is named, counts differing or
	// not: the stream's events a prefix of the committed changes is a
	// reader that stopped (or has yet to catch up), a difference before
	// their end is a change lost, repeated or out of order.
	for _, table := range slices.Sorted(maps.Keys(committed)) {
		cs, g := committed[table], got[table]
		for i := range min(len(g), len(cs)) {
			if g[i] != cs[i] {
				t.Fatalf("table %s: change %d is %v, want %v (commit order broken, lost or repeated; %d events in the stream, %d changes committed)",
					table, i, g[i], cs[i], len(g), len(cs))
			}
		}
		switch {
		case len(g) < len(cs):
			t.Fatalf("table %s: the stream holds the first %d of the %d changes committed, in order; the first missing is change %d, %v",
				table, len(g), len(cs), len(g), cs[len(g)])
		case len(g) > len(cs):
			t.Fatalf("table %s: the stream holds the %d changes committed, in order, then %d more, the first %v",
				table, len(cs), len(g)-len(cs), g[len(cs)])
		}
	}
}

// TestSoakOutageBeyondDuplicateWindow (make soak): under a pgbench-like
// writer (TPC-B transactions on four connections), the reader is killed
// twice while JetStream holds events it has not confirmed, and stays down
// for longer than the default duplicate window each time. Every committed
// transaction is in the stream exactly once, in commit order, and replaying
// the stream gives every account its balance.
func TestSoakOutageBeyondDuplicateWindow(t *testing.T) {
	if os.Getenv("TABLECAST_SOAK") == "" {
		t.Skip("a soak test: TABLECAST_SOAK=1 (make soak)")
	}
	const (
		accounts, tellers, clients = 10_000, 10, 4
		outages                    = 2
	)
	down := stream.DefaultDuplicateWindow + 15*time.Second
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), fmt.Sprintf(`
		CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int NOT NULL);
		CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int NOT NULL, tbalance int NOT NULL);
		CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84));
		CREATE TABLE pgbench_history (hid bigint PRIMARY KEY, tid int, bid int, aid int, delta int, mtime timestamp);
		INSERT INTO pgbench_branches VALUES (1, 0);
		INSERT INTO pgbench_tellers SELECT g, 1, 0 FROM generate_series(1, %d) g;
		INSERT INTO pgbench_accounts SELECT g, 1, 0, '' FROM generate_series(1, %d) g;`, tellers, accounts)); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_soak_once_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)
	r := &outageReader{t: t, n: n, conn: connect(t, url), slot: slot, env: []string{
		"TABLECAST_DATABASE_URL=" + url, "TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_SLOT=" + slot,
		"TABLECAST_PUBLICATION=tc_soak_once", "TABLECAST_HTTP_ADDR=127.0.0.1:0", "TABLECAST_SNAPSHOT=never",
		"TABLECAST_SUBJECT_PREFIX=tc", "TABLECAST_LOG_LEVEL=warn", // the default duplicate window
	}}
	r.start()
	t.Cleanup(r.stop)

	var (
		mu        sync.Mutex
		committed = map[int64]int{} // history id → its delta
		quit      = make(chan struct{})
		wg        sync.WaitGroup
		loadErr   error
	)
	for cl := 0; cl < clients; cl++ {
		wc := connect(t, url)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(uint64(cl), 11))
			for i := int64(1); ; i++ {
				select {
				case <-quit:
					return
				default:
				}
				hid := int64(cl)<<40 | i
				aid, tid, delta := 1+rng.IntN(accounts), 1+rng.IntN(tellers), rng.IntN(10001)-5000
				batch := &pgx.Batch{}
				batch.Queue(`UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2`, delta, aid)
				batch.Queue(`SELECT abalance FROM pgbench_accounts WHERE aid = $1`, aid)
				batch.Queue(`UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2`, delta, tid)
				batch.Queue(`UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = 1`, delta)
				batch.Queue(`INSERT INTO pgbench_history VALUES ($1, $2, 1, $3, $4, now())`, hid, tid, aid, delta)
				err := pgx.BeginFunc(ctx, wc, func(tx pgx.Tx) error { return tx.SendBatch(ctx, batch).Close() })
				if err != nil {
					mu.Lock()
					loadErr = err
					mu.Unlock()
					return
				}
				mu.Lock()
				committed[hid] = delta
				mu.Unlock()
			}
		}()
	}
	for done := 0; done < outages; {
		if r.outage(down) {
			done++
		}
	}
	close(quit)
	wg.Wait()
	if loadErr != nil {
		t.Fatalf("load: %v", loadErr)
	}

	want := uint64(4 * len(committed))
	waitFor(t, 10*time.Minute, fmt.Sprintf("%d events in the stream", want), func() bool {
		got := n.count(t)
		if got > want {
			t.Fatalf("stream holds %d events, more than the %d of the %d committed transactions", got, want, len(committed))
		}
		return got == want
	})
	assertIDsIncrease(t, n)
	history := map[int64]bool{}
	balance := map[int]float64{}
	for _, e := range n.events(t) {
		data := e["data"].(map[string]any)
		switch e["table"] {
		case "pgbench_history":
			hid := int64(data["hid"].(float64))
			if _, ok := committed[hid]; !ok || history[hid] {
				t.Fatalf("history row %d: committed %v, seen before %v", hid, ok, history[hid])
			}
			history[hid] = true
		case "pgbench_accounts":
			balance[int(data["aid"].(float64))] = data["abalance"].(float64)
		}
	}
	if len(history) != len(committed) {
		t.Fatalf("%d history rows in the stream, %d transactions committed", len(history), len(committed))
	}
	rows, err := conn.Query(context.Background(), `SELECT aid, abalance FROM pgbench_accounts WHERE abalance <> 0 OR aid = ANY($1)`, slices.Collect(maps.Keys(balance)))
	if err != nil {
		t.Fatal(err)
	}
	var aid, abalance int
	checked := 0
	if _, err := pgx.ForEachRow(rows, []any{&aid, &abalance}, func() error {
		if balance[aid] != float64(abalance) {
			return fmt.Errorf("account %d: the stream's last update says %v, the table %d", aid, balance[aid], abalance)
		}
		checked++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d transactions (%d events), %d outages of %s: each once, in commit order; %d balances agree", len(committed), want, outages, down, checked)
}
