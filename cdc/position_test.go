package cdc

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go"

	"github.com/tablecast/tablecast/stream"
)

// TestPositionRecordOfAnotherOrigin: a PostgreSQL restored from a backup
// (a new timeline) or replaced by another cluster reuses LSNs the stream
// has seen. A position record of another origin, however far ahead it
// claims to be, skips nothing; and in a stream shared with others, only the
// reader's own messages say what it has stored.
func TestPositionRecordOfAnotherOrigin(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	db.exec(t, `INSERT INTO items SELECT generate_series(1, 10)`)
	n.readAll(t, 10, 15*time.Second)

	// Every message carries the origin IDENTIFY_SYSTEM gives.
	var sysid string
	var timeline int
	if err := db.conn.QueryRow(context.Background(), `SELECT system_identifier::text, (SELECT timeline_id FROM pg_control_checkpoint()) FROM pg_control_system()`).Scan(&sysid, &timeline); err != nil {
		t.Fatal(err)
	}
	origin := fmt.Sprintf("%s/%d/%s/%s", sysid, timeline, stream.Token(db.name), db.slot)
	for _, m := range n.ReadAll(t, "TABLECAST") {
		if got := m.Header.Get(stream.OriginHeader); got != origin {
			t.Fatalf("message %d carries %s %q, want %q", m.Seq, stream.OriginHeader, got, origin)
		}
	}

	// The reader keeps its position record up to date.
	kv, err := n.JS.KeyValue(context.Background(), stateBucket)
	if err != nil {
		t.Fatal(err)
	}
	key := positionKey(db.name, db.slot)
	readRecord := func() positionRecord {
		t.Helper()
		e, err := kv.Get(context.Background(), key)
		if err != nil {
			t.Fatalf("read position record %s: %v", key, err)
		}
		var rec positionRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			t.Fatalf("position record %s: %v", e.Value(), err)
		}
		return rec
	}
	walNow := func() pglogrepl.LSN {
		t.Helper()
		var s string
		if err := db.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		lsn, _ := pglogrepl.ParseLSN(s)
		return lsn
	}
	// recordPast waits for the reader's record of a position past lsn.
	recordPast := func(lsn pglogrepl.LSN) positionRecord {
		t.Helper()
		var rec positionRecord
		waitFor(t, 20*time.Second, "a position record past "+lsn.String(), func() bool {
			rec = readRecord()
			at, _ := pglogrepl.ParseLSN(rec.LSN)
			return rec.Origin == origin && at >= lsn
		})
		return rec
	}
	recordPast(walNow())
	if rec := readRecord(); rec.StreamSeq != 10 || rec.Stream != "TABLECAST" {
		t.Errorf("position record %+v: want stream TABLECAST, sequence 10 (the last event, all confirmed)", rec)
	}
	r.stop(t)

	// The record of the same slot name on a later timeline, far ahead.
	ahead := walNow() + 64<<20
	rec := readRecord()
	rec.Origin = fmt.Sprintf("%s/%d/%s/%s", sysid, timeline+1, stream.Token(db.name), db.slot)
	rec.LSN = ahead.String()
	b, _ := json.Marshal(rec)
	if _, err := kv.Put(context.Background(), key, b); err != nil {
		t.Fatal(err)
	}
	db.exec(t, `INSERT INTO items SELECT generate_series(11, 20)`)
	r2 := startReader(t, db.config(), n)
	evs := n.readAll(t, 20, 15*time.Second)
	assertExactlyInOrder(t, evs, 20)
	if !r2.log.contains("position record is of another origin") {
		t.Error("no log line about the record of another origin")
	}
	recordPast(walNow())
	r2.stop(t)

	// Now the record is ours; another origin's message after it, with an
	// id far ahead, must not count as ours.
	foreign := nats.NewMsg(testPrefix + ".topic.elsewhere")
	foreign.Header.Set(stream.OriginHeader, rec.Origin)
	foreign.Header.Set(nats.MsgIdHdr, fmt.Sprintf("%016X-0001", uint64(ahead)))
	foreign.Data = []byte(`{}`)
	if _, err := n.JS.PublishMsg(context.Background(), foreign); err != nil {
		t.Fatal(err)
	}
	db.exec(t, `INSERT INTO items SELECT generate_series(21, 30)`)
	startReader(t, db.config(), n)
	n.readAll(t, 31, 15*time.Second)
	var rows []event
	for _, e := range n.fetch(t) {
		if e.Table == "items" {
			rows = append(rows, e)
		}
	}
	assertExactlyInOrder(t, rows, 30)
}

// TestOthersMessagesWithOurOrigin: a service with publish rights (custom
// topics) that forwards events with their headers, or one that forges
// them, puts messages carrying the reader's origin into the stream. One
// whose id is not an event id must not stop every later session, and one
// whose id lies beyond anything PostgreSQL has written must not make the
// reader skip every change until the WAL gets there: our own ids are
// never beyond the server's WAL, and always event ids.
func TestOthersMessagesWithOurOrigin(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	db.exec(t, `INSERT INTO items SELECT generate_series(1, 10)`)
	n.readAll(t, 10, 15*time.Second)

	kv, err := n.JS.KeyValue(context.Background(), stateBucket)
	if err != nil {
		t.Fatal(err)
	}
	key := positionKey(db.name, db.slot)
	walNow := func() pglogrepl.LSN {
		t.Helper()
		var s string
		if err := db.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		lsn, _ := pglogrepl.ParseLSN(s)
		return lsn
	}
	// recordPast waits for the reader's record of a position past lsn.
	recordPast := func(lsn pglogrepl.LSN) positionRecord {
		t.Helper()
		var rec positionRecord
		waitFor(t, 20*time.Second, "a position record past "+lsn.String(), func() bool {
			e, err := kv.Get(context.Background(), key)
			if err != nil {
				return false
			}
			rec = positionRecord{}
			_ = json.Unmarshal(e.Value(), &rec)
			at, _ := pglogrepl.ParseLSN(rec.LSN)
			return at >= lsn
		})
		return rec
	}
	rec := recordPast(walNow())
	r.stop(t)
	forward := func(id string) {
		t.Helper()
		m := nats.NewMsg(testPrefix + ".topic.forwarded")
		m.Header.Set(stream.OriginHeader, rec.Origin)
		m.Header.Set(nats.MsgIdHdr, id)
		m.Data = []byte(`{}`)
		if _, err := n.JS.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	rows := func() []event {
		var out []event
		for _, e := range n.fetch(t) {
			if e.Table == "items" {
				out = append(out, e)
			}
		}
		return out
	}

	// A forwarded copy with an id of the service's own.
	forward("forwarded-1")
	db.exec(t, `INSERT INTO items SELECT generate_series(11, 20)`)
	r2 := startReader(t, db.config(), n)
	n.readAll(t, 21, 15*time.Second)
	assertExactlyInOrder(t, rows(), 20)
	if !r2.log.contains("not an event id") {
		t.Error("no warning about the message with our origin and another id")
	}
	recordPast(walNow())
	r2.stop(t)

	// A forged id far beyond the WAL.
	forward(fmt.Sprintf("%016X-0001", uint64(walNow()+1<<30)))
	db.exec(t, `INSERT INTO items SELECT generate_series(21, 30)`)
	r3 := startReader(t, db.config(), n)
	n.readAll(t, 32, 15*time.Second)
	assertExactlyInOrder(t, rows(), 30)
	if !r3.log.contains("beyond the server's WAL") {
		t.Error("no warning about the message with an id beyond the WAL")
	}
}

// TestUnreadableGapRecordSkipsNothing: a gap record the reader cannot read
// (written by something else, or damaged) says a refused event may lie
// somewhere it does not say. Ignored, it let the next session skip what
// the stream seemed to hold, the refused event among it; now that session
// skips nothing (the duplicate window drops what it publishes again), and
// the record is replaced by one the next sessions read.
func TestUnreadableGapRecordSkipsNothing(t *testing.T) {
	// Not parallel: it sets testHookConfirmAtMost, which every reader reads.
	ctx := context.Background()
	db := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	// Nothing after this is confirmed: every start replays it all.
	held := holdConfirmation(t, db)
	db.exec(t, `INSERT INTO t VALUES (1)`)
	db.exec(t, `INSERT INTO t VALUES (2)`)
	n.waitCount(t, 2, 15*time.Second)
	kv, err := n.JS.KeyValue(ctx, stateBucket)
	if err != nil {
		t.Fatal(err)
	}
	// With a position record, a start knows what the stream holds and
	// would skip it.
	waitFor(t, 15*time.Second, "the position record", func() bool {
		_, err := kv.Get(ctx, positionKey(db.name, db.slot))
		return err == nil
	})
	r.stop(t)
	db.waitSlotInactive(t)

	var sysid string
	var timeline int
	if err := db.conn.QueryRow(ctx, `SELECT system_identifier::text, (SELECT timeline_id FROM pg_control_checkpoint()) FROM pg_control_system()`).Scan(&sysid, &timeline); err != nil {
		t.Fatal(err)
	}
	origin := fmt.Sprintf("%s/%d/%s/%s", sysid, timeline, stream.Token(db.name), db.slot)
	key := gapKey(db.name, db.slot)
	for i, bad := range []string{`not json`, `{"origin":"` + origin + `","from":"x","through":"0/1"}`} {
		if _, err := kv.Put(ctx, key, []byte(bad)); err != nil {
			t.Fatal(err)
		}
		r := startReader(t, cfg, n)
		db.exec(t, `INSERT INTO t VALUES ($1)`, 3+i)
		n.waitCount(t, 3+i, 15*time.Second)
		if v, _ := r.metric("tablecast_cdc_events_skipped_total", ""); v != 0 {
			t.Errorf("record %q: the session skipped %v events, want none", bad, v)
		}
		if !r.log.contains(`unreadable gap record: publishing again everything this session would have skipped`) {
			t.Errorf("record %q: no warning", bad)
		}
		e, err := kv.Get(ctx, key)
		if err != nil {
			t.Fatalf("record %q: the gap record: %v", bad, err)
		}
		var rec gapRecord
		_ = json.Unmarshal(e.Value(), &rec)
		from, err1 := pglogrepl.ParseLSN(rec.From)
		through, err2 := pglogrepl.ParseLSN(rec.Through)
		if rec.Origin != origin || err1 != nil || err2 != nil || from == 0 || from > held || through < from {
			t.Errorf("record %q replaced by %s, want this origin's range from at most %s", bad, e.Value(), held)
		}
		r.stop(t)
		db.waitSlotInactive(t)
	}
	// Nothing was stored twice: what the sessions published again, the
	// duplicate window dropped.
	if evs := n.fetch(t); len(evs) != 4 {
		t.Errorf("the stream holds %d events, want the 4 inserts", len(evs))
	}
}
