package cdc

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/internal/pgtest"
)

// TestSlotLostIsReported: a slot the reader streamed from is dropped while
// the reader is away, and changes are committed meanwhile. The reader
// creates the slot again and streams on, and says what is missing: the last
// position it confirmed, the new slot's, and the cause, in /healthz's
// slot_lost, in tablecast_cdc_slots_lost_total and in its log.
func TestSlotLostIsReported(t *testing.T) {
	n := startNATS(t)
	db := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO t VALUES (1), (2), (3)`)
	n.readAll(t, 3, 20*time.Second)
	if h := r.Health(); h.SlotLost != nil {
		t.Fatalf("slot_lost before any loss: %+v", h.SlotLost)
	}
	r.stop(t)

	db.exec(t, `INSERT INTO t VALUES (4)`)
	db.waitSlotInactive(t)
	db.exec(t, `SELECT pg_drop_replication_slot($1)`, db.slot)
	db.exec(t, `INSERT INTO t VALUES (5)`)

	r = startReader(t, cfg, n)
	db.exec(t, `INSERT INTO t VALUES (6)`)
	evs := n.readAll(t, 4, 20*time.Second)
	var ids []float64
	for _, e := range evs {
		ids = append(ids, e.Data["id"].(float64))
	}
	if fmt.Sprint(ids) != "[1 2 3 6]" {
		t.Fatalf("stream holds rows %v, want [1 2 3 6] (4 and 5 were committed while no slot kept them)", ids)
	}
	loss := r.Health().SlotLost
	if loss == nil {
		t.Fatal("the slot was lost and /healthz does not say so")
	}
	if !strings.Contains(loss.Cause, "dropped") || loss.LastConfirmed == "" || loss.NewSlotFrom == "" || loss.Snapshot {
		t.Errorf("slot_lost = %+v, want a drop on the same PostgreSQL, both positions, no snapshot", loss)
	}
	if v, _ := r.metric("tablecast_cdc_slots_lost_total", ""); v != 1 {
		t.Errorf("tablecast_cdc_slots_lost_total = %v, want 1", v)
	}
	if !r.log.contains("the replication slot was lost and has been created again") {
		t.Error("the log does not report the lost slot")
	}

	// A restart of the new slot is no loss.
	r.stop(t)
	r = startReader(t, cfg, n)
	if loss := r.Health().SlotLost; loss != nil {
		t.Errorf("after a plain restart, slot_lost = %+v", loss)
	}
}

// TestSlotDroppedWhileStreaming: a slot dropped under a running reader
// (its walsender ended first, as `tablecast slot drop --force` does) is
// created again by that reader, which reports the loss and streams on; it
// ended the process, and every standby in turn, as a configuration error.
func TestSlotDroppedWhileStreaming(t *testing.T) {
	n := startNATS(t)
	db := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO t VALUES (1), (2)`)
	n.readAll(t, 2, 20*time.Second)

	waitFor(t, 20*time.Second, "the slot to be dropped", func() bool {
		_, _ = db.conn.Exec(t.Context(), `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, db.slot)
		_, err := db.conn.Exec(t.Context(), `SELECT pg_drop_replication_slot($1)`, db.slot)
		return err == nil
	})
	waitFor(t, 30*time.Second, "the reader to report the lost slot", func() bool { return r.Health().SlotLost != nil })
	waitFor(t, 20*time.Second, "the reader to stream again", func() bool { return r.Health().Streaming })
	db.exec(t, `INSERT INTO t VALUES (3)`)
	evs := n.readAll(t, 3, 20*time.Second)
	if id := evs[2].Data["id"]; id != float64(3) {
		t.Fatalf("the row written after the slot was created again: id %v, want 3", id)
	}
	select {
	case err := <-r.done:
		t.Fatalf("the reader stopped: %v", err)
	default:
	}
	if loss := r.Health().SlotLost; !strings.Contains(loss.Cause, "dropped") || loss.LastConfirmed == "" || loss.NewSlotFrom == "" {
		t.Errorf("slot_lost = %+v, want a drop on the same PostgreSQL with both positions", loss)
	}
	if !r.log.contains("the replication slot is gone while streaming: creating it again") ||
		!r.log.contains("the replication slot was lost and has been created again") {
		t.Error("the log does not report the slot dropped while streaming")
	}
}

// TestFailoverLosesTheSlot: PostgreSQL fails over to a physical standby
// (pg_basebackup, then pg_ctl promote). Before PostgreSQL 17 the standby has
// no copy of the slot: the reader, pointed at the new primary, says the
// slot was lost to a promotion (the new timeline), and streams on from
// there.
func TestFailoverLosesTheSlot(t *testing.T) {
	n := startNATS(t)
	db := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO t VALUES (1)`)
	n.readAll(t, 1, 20*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	standby, err := pgtest.Require(t).StartStandby(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Close()
	r.stop(t)
	db.exec(t, `INSERT INTO t VALUES (2)`)
	var primaryLSN string
	if err := db.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&primaryLSN); err != nil {
		t.Fatal(err)
	}
	standbyURL := strings.Replace(db.url, fmt.Sprintf(":%d/", pgtest.Require(t).Port), fmt.Sprintf(":%d/", standby.Port), 1)
	sc, err := pgx.Connect(ctx, standbyURL)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close(context.Background())
	waitFor(t, time.Minute, "the standby to replay the primary's WAL", func() bool {
		var caught bool
		_ = sc.QueryRow(ctx, `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`, primaryLSN).Scan(&caught)
		return caught
	})
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}

	cfg.DatabaseURL = standbyURL
	r = startReader(t, cfg, n)
	t.Cleanup(func() {
		r.stop(t)
		_, _ = sc.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, db.slot)
	})
	if _, err := sc.Exec(ctx, `INSERT INTO t VALUES (3)`); err != nil {
		t.Fatal(err)
	}
	evs := n.readAll(t, 2, 20*time.Second)
	if got := evs[len(evs)-1].Data["id"]; got != float64(3) {
		t.Fatalf("last event is row %v, want 3 from the new primary", got)
	}
	loss := r.Health().SlotLost
	if loss == nil {
		t.Fatal("the slot was lost in a failover and /healthz does not say so")
	}
	if !strings.Contains(loss.Cause, "promoted (timeline 2, was 1)") {
		t.Errorf("slot_lost cause %q, want the promotion named", loss.Cause)
	}
	t.Logf("slot_lost: %+v", loss)
}
