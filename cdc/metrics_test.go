package cdc

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

// histogram returns the sample count and sum of an unlabelled histogram.
func (r *runningReader) histogram(name string) (uint64, float64) {
	mfs, _ := r.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	return 0, 0
}

// TestPublishLatencyIsTrue: for single-row transactions, each committed
// after a pause of random length (so that the reader is caught at every
// point of its read loop), every publish-latency observation lies between
// zero and what the test itself saw from just before its COMMIT to the
// event stored in JetStream. The reader sees the commit after the test
// sends it, and JetStream acknowledges the event once it is stored.
func TestPublishLatencyIsTrue(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	cfg := db.config()
	cfg.HeartbeatInterval = -1
	n := startNATS(t)
	r := startReader(t, cfg, n)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 8))
	const name = "tablecast_cdc_publish_latency_seconds"
	for i := 1; i <= 30; i++ {
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // the pause between transactions
		count, sum := r.histogram(name)
		tx, err := db.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO items VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		committing := time.Now()
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for n.Count("TABLECAST") < uint64(i) {
			if time.Since(committing) > 20*time.Second {
				t.Fatalf("event %d not stored after 20s", i)
			}
		}
		stored := time.Since(committing)
		waitFor(t, 10*time.Second, "the latency of the transaction to be observed", func() bool {
			c, _ := r.histogram(name)
			return c > count
		})
		c, s := r.histogram(name)
		if c != count+1 {
			t.Fatalf("transaction %d: %d latency observations, want 1", i, c-count)
		}
		if observed := time.Duration((s - sum) * float64(time.Second)); observed < 0 || observed > stored {
			t.Fatalf("transaction %d: publish latency %s, but the test saw it stored %s after it began to commit", i, observed, stored)
		}
	}
}

// TestHeartbeatLagIsTrue: a heartbeat written at a random moment is
// measured as arriving after it was written, and no later than the test
// saw the measurement.
func TestHeartbeatLagIsTrue(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE quiet (id int PRIMARY KEY)`)
	cfg := db.config()
	cfg.HeartbeatInterval = -1 // the test writes the heartbeats
	n := startNATS(t)
	r := startReader(t, cfg, n)
	rng := rand.New(rand.NewPCG(9, 10))
	const name = "tablecast_cdc_heartbeat_lag_seconds"
	last, _ := r.metric(name, "")
	for i := 0; i < 30; i++ {
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		sent := time.Now()
		db.exec(t, `SELECT pg_logical_emit_message(false, $1, $2)`, heartbeatPrefix, r.token+" "+sent.UTC().Format(time.RFC3339Nano))
		var lag float64
		waitFor(t, 10*time.Second, "the heartbeat to be measured", func() bool {
			lag, _ = r.metric(name, "")
			return lag != last
		})
		seen := time.Since(sent)
		// The reader measures on the wall clock (the heartbeat carries a
		// time of day), the test on the monotonic one: a millisecond of
		// slack for the two drifting apart (once 77 µs).
		if d := time.Duration(lag * float64(time.Second)); d < 0 || d > seen+time.Millisecond {
			t.Fatalf("heartbeat %d: lag %s, but the test wrote it %s before it saw the measurement", i, d, seen)
		}
		last = lag
	}
}

// TestCommitReceiptIsTrue: each transaction with events is observed once,
// between 0 and what the test saw from just before its COMMIT to the
// observation; and a transaction committed while no reader ran is
// observed as late as it was: at least the time the reader was away. The
// test and PostgreSQL read one clock.
func TestCommitReceiptIsTrue(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	cfg := db.config()
	cfg.HeartbeatInterval = -1
	n := startNATS(t)
	r := startReader(t, cfg, n)
	rng := rand.New(rand.NewPCG(11, 12))
	const name = "tablecast_cdc_commit_receipt_seconds"
	for i := 1; i <= 20; i++ {
		time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
		count, sum := r.histogram(name)
		committing := time.Now()
		db.exec(t, `INSERT INTO items VALUES ($1)`, i)
		waitFor(t, 10*time.Second, "the receipt of the commit to be observed", func() bool {
			c, _ := r.histogram(name)
			return c > count
		})
		seen := time.Since(committing)
		c, s := r.histogram(name)
		if c != count+1 {
			t.Fatalf("transaction %d: %d observations, want 1", i, c-count)
		}
		// A millisecond of slack: the test's interval runs on the
		// monotonic clock, the observation on the wall clock, and with
		// it whatever the wall clock was stepped by meanwhile.
		step := clockStep(committing)
		if observed := time.Duration((s - sum) * float64(time.Second)); observed < -step || observed > seen+time.Millisecond+step {
			t.Fatalf("transaction %d: commit received %s after it, but the test saw it observed %s after it began to commit", i, observed, seen)
		}
	}

	// Away: the reader stops, a transaction commits, and a new reader
	// starts only after a pause.
	r.stop(t)
	committed := time.Now()
	db.exec(t, `INSERT INTO items VALUES (1000)`)
	const away = 1500 * time.Millisecond
	time.Sleep(away)
	r2 := startReader(t, cfg, n)
	waitFor(t, 20*time.Second, "the late commit to be observed", func() bool {
		c, _ := r2.histogram(name)
		return c > 0
	})
	seen := time.Since(committed)
	c, s := r2.histogram(name)
	if c != 1 {
		t.Fatalf("after the pause: %d observations, want 1", c)
	}
	step := clockStep(committed)
	if observed := time.Duration(s * float64(time.Second)); observed < away-step || observed > seen+time.Millisecond+step {
		t.Fatalf("the transaction committed while no reader ran: received %s after its commit, want between %s and %s", observed, away, seen)
	}
}
