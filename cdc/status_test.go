package cdc

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"testing"
	"time"

	"github.com/tablecast/tablecast/stream"
)

// TestStatusRecord: the reader keeps a status record in the state bucket
// for gateways that run apart from it: its slot's figures as PostgreSQL
// reports them, and the events it published per table, snapshot rows
// included, with their rate.
func TestStatusRecord(t *testing.T) {
	db := newTestDB(t, twoTables)
	db.exec(t, `INSERT INTO orders VALUES (100, 'old', 1, false, NULL)`) // in the initial snapshot
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotInitial
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO orders SELECT g, 'open', 1, false, NULL FROM generate_series(1, 5) g`)
	db.exec(t, `INSERT INTO "Customer Notes" VALUES (1, 'x')`)
	n.readAll(t, 7, 15*time.Second)

	var st stream.ReaderStatus
	waitFor(t, 15*time.Second, "a status record with every event counted", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		all, found, err := stream.ReadReaderStatuses(ctx, n.JS)
		if err != nil || !found || len(all) != 1 {
			return false
		}
		st = all[0]
		return st.Tables["public.orders"].Events == 6 && st.Tables["public.Customer Notes"].Events == 1
	})
	var lag, retained int64
	var walStatus string
	if err := db.conn.QueryRow(context.Background(), `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
		pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status FROM pg_replication_slots WHERE slot_name = $1`, db.slot).Scan(&lag, &retained, &walStatus); err != nil {
		t.Fatal(err)
	}
	if st.Database != db.name || st.Slot != db.slot || !st.Streaming || !st.Healthy || st.WALStatus != walStatus || st.SafeWALSizeBytes != -1 {
		t.Errorf("record %+v: want database %s, slot %s, streaming, healthy, wal_status %s, no safe size limit", st, db.name, db.slot, walStatus)
	}
	if st.RetainedWALBytes <= 0 || st.LagBytes < 0 || st.AckedLSN != r.Health().AckedLSN && st.AckedLSN == "0/0" {
		t.Errorf("record figures lag %d retained %d acked %s: want WAL retained and a position", st.LagBytes, st.RetainedWALBytes, st.AckedLSN)
	}
	if host, _ := os.Hostname(); st.Leader == nil || st.Leader.PID != os.Getpid() || st.Leader.Host != host || st.Leader.Since.After(st.Updated) {
		t.Errorf("record's leader %+v: want this process (%d) on %s, leading since before the record", st.Leader, os.Getpid(), host)
	}
	if st.Updated.Before(st.Started) || st.Interval != cfg.WatchInterval || time.Since(st.Updated) > time.Minute {
		t.Errorf("record times: started %s updated %s interval %s", st.Started, st.Updated, st.Interval)
	}
	// Each record's rate is the events of its interval over its length:
	// followed on every write, through a burst.
	kv, err := n.JS.KeyValue(context.Background(), stream.StateBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(context.Background(), stream.ReaderStatusKey(db.name, db.slot))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	db.exec(t, `INSERT INTO orders SELECT g, 'open', 1, false, NULL FROM generate_series(1000, 1199) g`)
	var prev *stream.ReaderStatus
	sawRate := false
	watching := time.Now()
	deadline := time.After(15 * time.Second)
	for prev == nil || prev.Tables["public.orders"].Events < 206 {
		select {
		case <-deadline:
			t.Fatalf("no record counted the burst within 15s; last %+v", prev)
		case e := <-w.Updates():
			if e == nil {
				continue
			}
			var cur stream.ReaderStatus
			if err := json.Unmarshal(e.Value(), &cur); err != nil {
				t.Fatal(err)
			}
			if prev != nil {
				was, is := prev.Tables["public.orders"], cur.Tables["public.orders"]
				interval := cur.Updated.Sub(prev.Updated)
				want := float64(is.Events-was.Events) / interval.Seconds()
				// The reader times its intervals on the monotonic clock;
				// Updated is wall time, which NTP may slew by up to 500
				// ppm (a CI run saw 1.3 ppm fail a tolerance of 1 ppm),
				// or step (a run saw 1 ms in 212).
				slack := 1e-3 + clockStep(watching).Seconds()/interval.Seconds()
				if math.Abs(is.Rate-want) > slack*math.Max(1, want) {
					t.Errorf("rate %v over %s with %d events, want %v", is.Rate, cur.Updated.Sub(prev.Updated), is.Events-was.Events, want)
				}
				sawRate = sawRate || is.Rate > 0
			}
			prev = &cur
		}
	}
	if !sawRate {
		t.Error("no record showed a rate for the burst")
	}
	if got := prev.Tables["public.orders"].Events; got != 206 {
		t.Errorf("orders counted %d events, want 206", got)
	}
}

// TestStatusRecordDottedNames: the record counts each table under its own
// name even when a schema or table name holds a dot: schema "a.b" with
// table "c" and schema "a" with table "b.c" read alike once joined with a
// dot, so a part with a dot is double-quoted as the contract writes table
// names.
func TestStatusRecordDottedNames(t *testing.T) {
	db := newTestDB(t, `CREATE SCHEMA "a.b"; CREATE SCHEMA a;
CREATE TABLE "a.b".c (id int PRIMARY KEY); CREATE TABLE a."b.c" (id int PRIMARY KEY)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	waitFor(t, 10*time.Second, "streaming", func() bool { return r.Health().Streaming })
	db.exec(t, `INSERT INTO "a.b".c SELECT generate_series(1, 2)`)
	db.exec(t, `INSERT INTO a."b.c" SELECT generate_series(1, 3)`)
	n.readAll(t, 5, 15*time.Second)
	var st stream.ReaderStatus
	waitFor(t, 15*time.Second, "a status record with every event counted", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		all, found, err := stream.ReadReaderStatuses(ctx, n.JS)
		if err != nil || !found || len(all) != 1 {
			return false
		}
		st = all[0]
		total := int64(0)
		for _, c := range st.Tables {
			total += c.Events
		}
		return total == 5
	})
	if got := st.Tables[`"a.b".c`].Events; got != 2 {
		t.Errorf(`"a.b".c counted %d events, want 2; record's tables %v`, got, st.Tables)
	}
	if got := st.Tables[`a."b.c"`].Events; got != 3 {
		t.Errorf(`a."b.c" counted %d events, want 3; record's tables %v`, got, st.Tables)
	}
}
