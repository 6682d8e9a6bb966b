package cdc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/internal/pgtest"
	"github.com/tablecast/tablecast/internal/testrun"
	"github.com/tablecast/tablecast/stream"
)

// This file holds the test environment: the package's own PostgreSQL
// cluster, in-process NATS servers, readers run in goroutines and ways to
// read back what reached JetStream.

// parallelTests is how many of the package's parallel tests run at once.
// They are the ones that spend most of their time waiting (for a reader
// to start, for a publication's change to be noticed, between the
// transactions of a latency test), each with a database, slot and NATS of
// its own, and none that restarts PostgreSQL or changes its settings: go
// test's default, one per core, would run them two at a time. Tests that
// touch the cluster (doctor, settings, restarts, terminated walsenders)
// stay sequential, and go test runs those before any parallel one.
const parallelTests = 4

func TestMain(m *testing.M) {
	testrun.Parallel(parallelTests)
	pgtest.Main(m)
}

const testPrefix = "tc"

// natsEnv is the shared test NATS server with the stream provisioned.
type natsEnv struct {
	*natstest.Server
}

func startNATS(t testing.TB) *natsEnv {
	t.Helper()
	n := &natsEnv{natstest.Start(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: 10 * time.Minute}); err != nil {
		t.Fatalf("provision stream: %v", err)
	}
	return n
}

// startNATSCluster is startNATS on a three-node cluster, the stream (and
// so the reader's buckets) on replicas copies.
func startNATSCluster(t testing.TB, replicas int) *natsEnv {
	t.Helper()
	n := &natsEnv{natstest.StartCluster(t, 3).Server}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: 10 * time.Minute, Replicas: replicas}); err != nil {
		t.Fatalf("provision stream: %v", err)
	}
	return n
}

// event is the envelope as a consumer sees it.
type event struct {
	Subject    string
	Seq        uint64
	ID         string            `json:"id"`
	Op         string            `json:"op"`
	DB         string            `json:"db"`
	Schema     string            `json:"schema"`
	Table      string            `json:"table"`
	LSN        string            `json:"lsn"`
	XID        uint32            `json:"xid"`
	CommitTime string            `json:"commit_time"`
	Key        map[string]any    `json:"key"`
	Data       map[string]any    `json:"data"`
	Old        map[string]any    `json:"old"`
	Unchanged  []string          `json:"unchanged"`
	Cause      string            `json:"cause"`
	Raw        json.RawMessage   `json:"-"`
	Header     map[string]string `json:"-"`
}

// readAll returns every event in the stream, in stream order, once at
// least want of them are there (or fails at the deadline).
func (n *natsEnv) readAll(t testing.TB, want int, within time.Duration) []event {
	t.Helper()
	n.waitCount(t, want, within)
	return n.fetch(t)
}

// waitCount waits until the stream holds at least want events, reading
// none of them: a test that reads the stream only after a pause (for
// duplicates to arrive) saves a read, which for tens of thousands of events
// takes seconds.
func (n *natsEnv) waitCount(t testing.TB, want int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for n.Count("TABLECAST") < uint64(want) {
		if time.Now().After(deadline) {
			t.Fatalf("stream holds %d events after %s, want %d", n.Count("TABLECAST"), within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fetch returns every event the stream holds, decoded.
func (n *natsEnv) fetch(t testing.TB) []event {
	t.Helper()
	var out []event
	for _, m := range n.ReadAll(t, "TABLECAST") {
		var e event
		if !json.Valid(m.Data) {
			t.Fatalf("message %q is not JSON", m.Data)
		}
		if strings.HasPrefix(m.Subject, testPrefix+".topic.") {
			// custom topic: any JSON value, not an envelope
		} else if err := json.Unmarshal(m.Data, &e); err != nil {
			t.Fatalf("event %q is not an envelope: %v", m.Data, err)
		}
		e.Subject, e.Seq, e.Raw = m.Subject, m.Seq, m.Data
		e.Header = map[string]string{"Nats-Msg-Id": m.MsgID}
		for k := range m.Header {
			e.Header[k] = m.Header.Get(k)
		}
		out = append(out, e)
	}
	return out
}

// lastEvent returns the last event the stream holds (what fetch returns
// last), false if it holds none. Waiting for a last event with it reads one
// message a poll, where fetch would read and decode thousands.
func (n *natsEnv) lastEvent(t testing.TB) (event, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := n.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		return event{}, false
	}
	// Every message outside the control subjects is on the prefix's.
	m, err := st.GetLastMsgForSubject(ctx, testPrefix+".>")
	if err != nil {
		return event{}, false
	}
	var e event
	if err := json.Unmarshal(m.Data, &e); err != nil {
		t.Fatalf("event %q is not an envelope: %v", m.Data, err)
	}
	e.Subject, e.Seq, e.Raw = m.Subject, m.Sequence, m.Data
	return e, true
}

// logBuffer is a slog destination tests can search.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if testing.Verbose() {
		os.Stderr.Write(p)
	}
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.buf.String(), s)
}

// runningReader is a Reader running in a goroutine.
type runningReader struct {
	*Reader
	log    *logBuffer
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// startReader runs a reader and waits until it streams, so that the slot
// exists before the test writes anything.
func startReader(t testing.TB, cfg Config, n *natsEnv) *runningReader {
	t.Helper()
	r := launchReader(t, cfg, n)
	waitFor(t, 20*time.Second, "the reader to stream", func() bool { return r.Health().Streaming })
	return r
}

// launchReader runs a reader without waiting for anything.
func launchReader(t testing.TB, cfg Config, n *natsEnv) *runningReader {
	t.Helper()
	if cfg.RetryMin == 0 {
		cfg.RetryMin, cfg.RetryMax = 100*time.Millisecond, 500*time.Millisecond
	}
	lb := &logBuffer{}
	reg := prometheus.NewRegistry()
	r, err := New(cfg, n.NC, n.JS, testPrefix, slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), reg)
	if err != nil {
		t.Fatalf("new reader: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rr := &runningReader{Reader: r, log: lb, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	t.Cleanup(func() { rr.stop(t) })
	return rr
}

// metric returns the value of an unlabelled gauge or counter, or of the
// series with the given label value, and whether it exists.
func (r *runningReader) metric(name, label string) (float64, bool) {
	mfs, _ := r.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

func (r *runningReader) stop(t testing.TB) {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("reader ended with %v", err)
		}
		r.done <- nil // later stops return at once
	case <-time.After(15 * time.Second):
		t.Errorf("reader did not stop within 15s")
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clockStep is how far the wall clock has been stepped or slewed since
// start, against the monotonic clock: what a test comparing wall-clock
// stamps (PostgreSQL's, or a record's) with monotonic intervals must
// allow. It is zero, to the nanosecond, unless the clock was adjusted.
func clockStep(start time.Time) time.Duration {
	now := time.Now()
	return (now.Round(0).Sub(start.Round(0)) - now.Sub(start)).Abs()
}

// testDB is a fresh database with a slot name of its own.
type testDB struct {
	name, url string
	conn      *pgx.Conn
	slot      string
}

var slotSeq struct {
	sync.Mutex
	n int
}

func newTestDB(t testing.TB, setup ...string) *testDB {
	t.Helper()
	c := pgtest.Require(t)
	name, url := c.CreateDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", name, err)
	}
	slotSeq.Lock()
	slotSeq.n++
	slot := fmt.Sprintf("tc_slot_%d_%d", os.Getpid(), slotSeq.n)
	slotSeq.Unlock()
	db := &testDB{name: name, url: url, conn: conn, slot: slot}
	t.Cleanup(func() {
		conn.Close(context.Background())
		// The database is dropped by pgtest; its slot must go first.
		c2, err := pgx.Connect(context.Background(), url)
		if err == nil {
			_, _ = c2.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, slot)
			c2.Close(context.Background())
		}
	})
	for _, sql := range setup {
		db.exec(t, sql)
	}
	return db
}

func (d *testDB) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := d.conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

func (d *testDB) config() Config {
	return Config{DatabaseURL: d.url, Slot: d.slot, Publication: "tc_pub", StallAfter: time.Hour, WatchInterval: 200 * time.Millisecond}
}

// holdConfirmation keeps every reader from confirming to PostgreSQL any
// position past the WAL's current end, until t ends, and returns that
// position: every later start replays what follows, over what the stream
// holds. Tests using it cannot run in parallel (testHookConfirmAtMost is
// every reader's).
func holdConfirmation(t testing.TB, db *testDB) pglogrepl.LSN {
	t.Helper()
	var now string
	if err := db.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	held, err := pglogrepl.ParseLSN(now)
	if err != nil {
		t.Fatal(err)
	}
	testHookConfirmAtMost.Store(uint64(held))
	t.Cleanup(func() { testHookConfirmAtMost.Store(0) })
	return held
}

// slotLSN returns the slot's confirmed_flush_lsn as text.
func (d *testDB) slotLSN(t testing.TB) string {
	t.Helper()
	var lsn *string
	if err := d.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, d.slot).Scan(&lsn); err != nil {
		t.Fatalf("read slot: %v", err)
	}
	if lsn == nil {
		return ""
	}
	return *lsn
}

// waitSlotInactive waits until no walsender holds the slot: a reader's
// replication connection ends with it, but the walsender process exits a
// moment later.
func (d *testDB) waitSlotInactive(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var active bool
		if err := d.conn.QueryRow(context.Background(), `SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1`, d.slot).Scan(&active); err != nil {
			t.Fatalf("read slot: %v", err)
		}
		if !active {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot %s still active 30s after its reader stopped", d.slot)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pgtestCluster(t testing.TB) *pgtest.Cluster { return pgtest.Require(t) }

// reconnect replaces the test's connection, e.g. after PostgreSQL restarted.
func (d *testDB) reconnect(t testing.TB) {
	t.Helper()
	d.conn.Close(context.Background())
	var err error
	for i := 0; i < 100; i++ {
		if d.conn, err = pgx.Connect(context.Background(), d.url); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("reconnect: %v", err)
}
