package cdc

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/pgtest"
)

// TestSlotInvalidationWarnings: with max_slot_wal_keep_size set and the
// reader unable to publish (NATS gone), the slot falls behind; the reader
// warns while there is time to act, and turns unhealthy with the way out
// once PostgreSQL invalidates the slot.
func TestSlotInvalidationWarnings(t *testing.T) {
	c := pgtest.New(t) // a private cluster: this test changes its settings
	url := c.URL("postgres")
	conn := c.Connect(t, url)
	ctx := context.Background()
	for _, sql := range []string{
		`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`,
		`SELECT pg_reload_conf()`,
		`CREATE TABLE junk (g int PRIMARY KEY)`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	n := startNATS(t)
	cfg := Config{DatabaseURL: url, Slot: "tc_invalidate", Publication: "tc_pub", Snapshot: SnapshotNever, WatchInterval: 100 * time.Millisecond, StallAfter: time.Hour}
	r := startReader(t, cfg, n)
	n.Stop()

	next := 0
	writeWAL := func(checkpoint bool) {
		t.Helper()
		sqls := []string{`INSERT INTO junk SELECT generate_series($1::int, $1::int + 20000)`, `SELECT pg_switch_wal()`}
		if checkpoint {
			sqls = append(sqls, `CHECKPOINT`)
		}
		for _, sql := range sqls {
			var args []any
			if strings.Contains(sql, "$1") {
				args = []any{next}
				next += 20001
			}
			if _, err := conn.Exec(ctx, sql, args...); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	// Phase 1, no checkpoint: PostgreSQL removes WAL (and invalidates a
	// slot) only at a checkpoint, so the slot is past its budget but not
	// lost yet: the reader must warn now, while there is time to act.
	waitFor(t, 60*time.Second, "a warning before invalidation", func() bool {
		writeWAL(false)
		return r.log.contains("close to invalidation")
	})
	if r.log.contains("replication slot invalidated") {
		t.Fatal("invalidation reported before any checkpoint")
	}
	// Phase 2: checkpoints remove the WAL the slot needs.
	waitFor(t, 60*time.Second, "the slot to be invalidated", func() bool {
		writeWAL(true)
		var status string
		_ = conn.QueryRow(ctx, `SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = 'tc_invalidate'`).Scan(&status)
		return status == "lost"
	})
	waitFor(t, 10*time.Second, "the reader to turn unhealthy", func() bool {
		h := r.Health()
		return !h.Healthy && strings.Contains(strings.Join(h.Reasons, ";"), "invalidated")
	})
	if !r.log.contains("replication slot invalidated") {
		t.Error("no error when the slot was invalidated")
	}
	if v, _ := r.metric("tablecast_cdc_slot_wal_status", "lost"); v != 1 {
		t.Errorf("wal_status metric lost=%v, want 1", v)
	}
	// The slot is useless now: drop it so the cluster can be closed.
	r.stop(t)
	_, _ = conn.Exec(ctx, `SELECT pg_drop_replication_slot('tc_invalidate')`)
}
