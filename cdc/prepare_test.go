package cdc

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestBucketsDeletedWhileStreaming: the lease and state buckets deleted
// together under a streaming reader (an operator clearing what they took
// for a stuck lease) are created again, and the rows written after reach
// the stream. The reader lost its lease with the bucket, and every
// leadership after failed to read the state bucket, which only a streaming
// reader created again: it stood by for good, healthy.
func TestBucketsDeletedWhileStreaming(t *testing.T) {
	n := startNATS(t)
	db := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	cfg.LeaderLease = 2 * time.Second
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO t VALUES (1)`)
	n.readAll(t, 1, 20*time.Second)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for _, b := range []string{LeaseBucket, stateBucket} {
		if err := n.JS.DeleteKeyValue(ctx, b); err != nil {
			t.Fatalf("delete bucket %s: %v", b, err)
		}
	}
	// The lease is lost with its bucket; the next leadership creates both.
	waitFor(t, time.Minute, "both buckets back and the reader streaming", func() bool {
		for _, b := range []string{LeaseBucket, stateBucket} {
			if _, err := n.JS.KeyValue(ctx, b); err != nil {
				return false
			}
		}
		return r.log.contains("lost the lease") && r.Health().Streaming
	})
	db.exec(t, `INSERT INTO t VALUES (2)`)
	evs := n.readAll(t, 2, time.Minute)
	if id := evs[1].Data["id"]; id != float64(2) {
		t.Fatalf("second event: id %v, want 2", id)
	}
	if !r.log.contains("the state bucket was deleted while the reader ran; created it again") {
		t.Error("the state bucket's return is not logged")
	}
}

// TestPrepareFailureBacksOffAndIsUnhealthy: a reader whose initial
// snapshot cannot read a published table (its role may not SELECT it)
// tries again less and less often, says why, and is unhealthy once that
// has lasted TABLECAST_STALL_AFTER. It dropped and created its slot every
// half second without end, healthy, logging that it stood by.
func TestPrepareFailureBacksOffAndIsUnhealthy(t *testing.T) {
	n := startNATS(t)
	db := newTestDB(t,
		`CREATE TABLE open (id int PRIMARY KEY)`,
		`CREATE TABLE closed (id int PRIMARY KEY)`,
		`CREATE PUBLICATION tc_pub FOR TABLE open, closed`)
	_, cfg := replicationRole(t, db, "tc_noread_", `GRANT SELECT ON open TO %s`)
	cfg.Snapshot = SnapshotInitial
	cfg.StallAfter = 2 * time.Second
	cfg.RetryMin, cfg.RetryMax = 100*time.Millisecond, 800*time.Millisecond
	r := launchReader(t, cfg, n)
	waitFor(t, 30*time.Second, "the reader to be unhealthy", func() bool {
		h := r.Health()
		return !h.Healthy && len(h.Reasons) == 1 && strings.Contains(h.Reasons[0], "cannot start streaming") &&
			strings.Contains(h.Reasons[0], "permission denied")
	})
	waitFor(t, 30*time.Second, "retries at the longest wait", func() bool {
		return r.log.contains(`retry_in=800ms`)
	})
	var waits []string
	for _, m := range regexp.MustCompile(`msg="cannot start streaming; retrying".* retry_in=(\S+)`).FindAllStringSubmatch(r.log.String(), -1) {
		waits = append(waits, m[1])
	}
	if len(waits) < 4 || strings.Join(waits[:4], " ") != "100ms 200ms 400ms 800ms" {
		t.Errorf("waits between failed starts %v, want 100ms 200ms 400ms 800ms first", waits)
	}
	if r.log.contains("no longer the slot's leader") {
		t.Error("a failed start is logged as losing the leadership")
	}
	if r.Health().Streaming {
		t.Error("streaming without its initial snapshot")
	}
}
