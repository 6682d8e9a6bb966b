package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// startStockNATS is startNATS on a stock nats-server: a maximum payload of
// 1 MiB.
func startStockNATS(t testing.TB) *natsEnv {
	t.Helper()
	n := &natsEnv{natstest.StartStock(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: 10 * time.Minute}); err != nil {
		t.Fatalf("provision stream: %v", err)
	}
	return n
}

func resolve(t testing.TB, n *natsEnv, msg []byte) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full, err := stream.ResolveEvent(ctx, n.JS, msg)
	if err != nil {
		t.Fatalf("resolve %.200s: %v", msg, err)
	}
	return full
}

// TestOversizeEvents: every path that publishes (the initial snapshot, row
// changes, custom topic messages) gets past events larger than a stock
// server's 1 MiB: as claims up to MaxEventBytes, truncated and
// dead-lettered beyond it; a topic message too large for NATS is
// dead-lettered with a claim to its content. Nothing stops the reader.
func TestOversizeEvents(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE docs (id int PRIMARY KEY, body text)`,
		`INSERT INTO docs VALUES (1, repeat('s', 2000000))`)
	n := startStockNATS(t)
	cfg := db.config()
	cfg.MaxEventBytes = 3 << 20
	r := startReader(t, cfg, n)

	db.exec(t, `INSERT INTO docs VALUES (2, repeat('t', 4000000))`)
	db.exec(t, `UPDATE docs SET body = repeat('u', 2500000) WHERE id = 1`)
	bigTopic := `"` + strings.Repeat("m", 1500000) + `"`
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:big', $1::text)`, bigTopic)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:big', '{"small":true}')`)
	db.exec(t, `INSERT INTO docs VALUES (3, 'small')`)

	evs := n.readAll(t, 5, 60*time.Second)
	if len(evs) != 5 {
		t.Fatalf("stream holds %d messages, want 5", len(evs))
	}
	type want struct {
		subject, op, body string
		id                float64
		claim, truncated  bool
	}
	wants := []want{
		{"docs.read", "read", strings.Repeat("s", 2000000), 1, true, false},
		{"docs.create", "create", "", 2, false, true},
		{"docs.update", "update", strings.Repeat("u", 2500000), 1, true, false},
		{"topic.big", "", "", 0, false, false},
		{"docs.create", "create", "small", 3, false, false},
	}
	for i, w := range wants {
		e := evs[i]
		if !strings.HasSuffix(e.Subject, w.subject) {
			t.Fatalf("message %d on %s, want …%s", i, e.Subject, w.subject)
		}
		if w.op == "" {
			if string(e.Raw) != `{"small":true}` {
				t.Errorf("topic message %s, want the small one (the large one is dead-lettered)", e.Raw)
			}
			continue
		}
		var raw map[string]json.RawMessage
		_ = json.Unmarshal(e.Raw, &raw)
		_, hasClaim := raw["claim"]
		_, hasTruncated := raw["truncated"]
		if e.Op != w.op || e.Key["id"] != w.id || hasClaim != w.claim || hasTruncated != w.truncated || (e.Data != nil) != (!w.claim && !w.truncated) {
			t.Errorf("message %d: %.300s; want op %s key %v claim %v truncated %v", i, e.Raw, w.op, w.id, w.claim, w.truncated)
			continue
		}
		if w.claim {
			var full event
			if err := json.Unmarshal(resolve(t, n, e.Raw), &full); err != nil {
				t.Fatal(err)
			}
			if full.ID != e.ID || full.Op != w.op || full.Data["body"] != w.body {
				t.Errorf("message %d resolves to id %s op %s and a body of %d bytes; want %s %s and %d bytes", i, full.ID, full.Op, len(full.Data["body"].(string)), e.ID, w.op, len(w.body))
			}
		}
		if w.truncated && string(e.Raw[len(e.Raw)-len(`,"truncated":true}`):]) != `,"truncated":true}` {
			t.Errorf("truncated event %s", e.Raw)
		}
	}

	dl := n.ReadAll(t, "TABLECAST_DEADLETTER")
	if len(dl) != 2 {
		t.Fatalf("dead-letter stream holds %d records, want 2", len(dl))
	}
	var row, topic map[string]any
	_ = json.Unmarshal(dl[0].Data, &row)
	_ = json.Unmarshal(dl[1].Data, &topic)
	if dl[0].Subject != "tc_deadletter."+db.name+".public.docs" || row["id"] != evs[1].ID || row["size"].(float64) < 4000000 || dl[0].MsgID != evs[1].ID {
		t.Errorf("row record on %s: %s", dl[0].Subject, dl[0].Data)
	}
	if dl[1].Subject != "tc_deadletter.topic.big" || topic["topic"] != "big" || topic["size"] != float64(len(bigTopic)) {
		t.Errorf("topic record on %s: %s", dl[1].Subject, dl[1].Data)
	}
	if got := resolve(t, n, dl[1].Data); string(got) != bigTopic {
		t.Errorf("the topic record's claim resolves to %d bytes, want the message's %d", len(got), len(bigTopic))
	}
	for outcome, want := range map[string]float64{"claim": 2, "truncated": 1, "topic_dead_letter": 1} {
		if got, _ := r.metric("tablecast_cdc_oversize_events_total", outcome); got != want {
			t.Errorf("tablecast_cdc_oversize_events_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
	if h := r.Health(); !h.Healthy {
		t.Errorf("unhealthy: %v", h.Reasons)
	}
}

// TestHealthReportsRepeatedFailures: a reader that cannot get one event
// into JetStream fails every session at the same place; the slot's lag is
// small, yet /healthz must turn unhealthy with the reason, and healthy
// again once the event passes. Here the stream keeps one message per
// subject and refuses new ones (an operator's limit no claim gets round,
// as one on the size would be).
func TestHealthReportsRepeatedFailures(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, pad text)`)
	n := &natsEnv{natstest.Start(t)}
	ctx := context.Background()
	sc := jetstream.StreamConfig{Name: "TABLECAST", Subjects: []string{testPrefix + ".>"}, Duplicates: 10 * time.Minute,
		Discard: jetstream.DiscardNew, DiscardNewPerSubject: true, MaxMsgsPerSubject: 1}
	if _, err := n.JS.CreateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	r := startReader(t, db.config(), n)
	db.exec(t, `INSERT INTO items VALUES (1, 'x')`)
	n.readAll(t, 1, 30*time.Second)
	db.exec(t, `INSERT INTO items VALUES (2, 'y')`)
	waitFor(t, 60*time.Second, "unhealthy", func() bool { return !r.Health().Healthy })
	h := r.Health()
	reasons := strings.Join(h.Reasons, "; ")
	if !strings.Contains(reasons, "stuck") || !strings.Contains(reasons, "public.items") || !strings.Contains(reasons, "maximum") {
		t.Errorf("unhealthy for %q; want it stuck, naming the table and JetStream's refusal", reasons)
	}

	sc.MaxMsgsPerSubject, sc.DiscardNewPerSubject = -1, false
	if _, err := n.JS.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	n.readAll(t, 2, 60*time.Second)
	waitFor(t, 30*time.Second, "healthy again", func() bool { return r.Health().Healthy })
}

// TestHealthReportsUndecodableChanges: a publication dropped while a
// table it published changes leaves changes PostgreSQL (before 18) cannot
// decode: every session fails on them. Those sessions first replay a
// transaction the stream holds and PostgreSQL was not told of (the usual
// case after a restart), which is no progress: /healthz must say the
// reader is stuck, and the sessions must back off.
func TestHealthReportsUndecodableChanges(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	holdConfirmation(t, db)
	db.exec(t, `INSERT INTO items VALUES (1)`)
	n.waitCount(t, 1, 15*time.Second)
	db.exec(t, `DROP PUBLICATION tc_pub`)
	db.exec(t, `INSERT INTO items VALUES (2)`)
	waitFor(t, 20*time.Second, "unhealthy", func() bool { return !r.Health().Healthy })
	if reasons := strings.Join(r.Health().Reasons, "; "); !strings.Contains(reasons, "stuck") || !strings.Contains(reasons, "does not exist") {
		t.Errorf("unhealthy for %q; want it stuck, with PostgreSQL's error", reasons)
	}
	waitFor(t, 20*time.Second, "the backoff to grow", func() bool { return r.log.contains("retry_in=200ms") })
}

// TestStreamMaxMessageSize: an operator limits the size of the event
// stream's messages (nats stream edit --max-msg-size) while the reader
// runs. An event within the server's maximum payload but beyond that limit
// is refused by the stream; it must travel as a claim, as one too large for
// NATS does, rather than stop the reader at it for good. And the event
// after it, which JetStream stored (the refused one went alone, the next
// started a batch), must not make the next session take the refused one
// for stored: that lost it.
func TestStreamMaxMessageSize(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE docs (id int PRIMARY KEY, body text)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	db.exec(t, `INSERT INTO docs VALUES (1, 'small')`)
	n.readAll(t, 1, 15*time.Second)

	ctx := context.Background()
	st, err := n.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxMsgSize = 4096
	if _, err := n.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// Two transactions the reader publishes in one burst.
	db.exec(t, `BEGIN; INSERT INTO docs VALUES (2, repeat('b', 20000)); COMMIT; BEGIN; INSERT INTO docs VALUES (3, 'small'); COMMIT`)
	waitFor(t, 15*time.Second, "rows 1 to 3 in the stream", func() bool {
		got := map[float64]bool{}
		for _, e := range n.fetch(t) {
			got[e.Key["id"].(float64)] = true
		}
		return len(got) == 3
	})
	time.Sleep(500 * time.Millisecond) // for repeats to arrive
	evs := n.fetch(t)
	ids := map[float64]int{}
	for _, e := range evs {
		ids[e.Key["id"].(float64)]++
		if e.Key["id"] != 2.0 {
			continue
		}
		var full event
		if err := json.Unmarshal(resolve(t, n, e.Raw), &full); err != nil {
			t.Fatal(err)
		}
		if full.Data["body"] != strings.Repeat("b", 20000) {
			t.Fatalf("row 2 resolves to %.200s, want its body", resolve(t, n, e.Raw))
		}
	}
	if len(evs) != 3 || ids[1] != 1 || ids[2] != 1 || ids[3] != 1 {
		t.Fatalf("stream holds rows %v (row: count), want rows 1 to 3 once each", ids)
	}
	if !r.log.contains("published again") {
		t.Error("no warning that the events after the refused one are published again")
	}
}

// TestOversizeKeyOfEveryColumn: a table without a primary key under
// REPLICA IDENTITY FULL has every column as its key, so a row too large
// for NATS has a key too large for NATS as well. Its claim (and, past the
// reader's limit, its truncated event and dead-letter record) must still
// fit in a message, leaving the key out and saying so, rather than be
// refused by NATS at every attempt, which stopped the reader at that row
// for good. A key that fits stays.
func TestOversizeKeyOfEveryColumn(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE blobs (body text)`, `ALTER TABLE blobs REPLICA IDENTITY FULL`)
	n := startStockNATS(t)
	cfg := db.config()
	cfg.MaxEventBytes = 8 << 20
	r := startReader(t, cfg, n)

	db.exec(t, `INSERT INTO blobs VALUES (repeat('k', 1500000))`) // key of 1.5 MB: claim without key
	db.exec(t, `INSERT INTO blobs VALUES (repeat('f', 400000))`)  // key and data: 0.8 MB, whole
	// key, data and old: 1.2 MB, a claim whose key of 0.4 MB fits
	db.exec(t, `UPDATE blobs SET body = repeat('g', 400000) WHERE body LIKE 'f%'`)
	db.exec(t, `INSERT INTO blobs VALUES (repeat('z', 5000000))`) // past the limit: truncated without key
	db.exec(t, `INSERT INTO blobs VALUES ('small')`)

	evs := n.readAll(t, 5, 60*time.Second)
	if len(evs) != 5 {
		t.Fatalf("stream holds %d messages, want 5", len(evs))
	}
	wants := []struct {
		op                string
		body              string
		keyLeftOut, claim bool
		truncated         bool
	}{
		{"create", strings.Repeat("k", 1500000), true, true, false},
		{"create", strings.Repeat("f", 400000), false, false, false},
		{"update", strings.Repeat("g", 400000), false, true, false},
		{"create", "", true, false, true},
		{"create", "small", false, false, false},
	}
	for i, w := range wants {
		e := evs[i]
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(e.Raw, &raw); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		_, hasKey := raw["key"]
		_, hasClaim := raw["claim"]
		leftOut := string(raw["key_left_out"]) == "true"
		truncated := string(raw["truncated"]) == "true"
		if e.Op != w.op || hasKey == w.keyLeftOut || leftOut != w.keyLeftOut || hasClaim != w.claim || truncated != w.truncated {
			t.Errorf("message %d: %.300s; want op %s key_left_out %v claim %v truncated %v", i, e.Raw, w.op, w.keyLeftOut, w.claim, w.truncated)
			continue
		}
		full := e
		if w.claim {
			if err := json.Unmarshal(resolve(t, n, e.Raw), &full); err != nil {
				t.Fatal(err)
			}
		}
		if w.truncated {
			continue
		}
		// The event itself (resolved) always carries its key.
		if full.Data["body"] != w.body || full.Key["body"] != firstNonEmpty(full.Old["body"], w.body) {
			t.Errorf("message %d resolves to a body of %d bytes and a key of %d; want %d bytes and the key of the row", i,
				len(fmt.Sprint(full.Data["body"])), len(fmt.Sprint(full.Key["body"])), len(w.body))
		}
	}
	dl := n.ReadAll(t, "TABLECAST_DEADLETTER")
	if len(dl) != 1 {
		t.Fatalf("dead-letter stream holds %d records, want 1", len(dl))
	}
	var rec map[string]json.RawMessage
	if err := json.Unmarshal(dl[0].Data, &rec); err != nil {
		t.Fatal(err)
	}
	if _, hasKey := rec["key"]; hasKey || string(rec["key_left_out"]) != "true" || string(rec["id"]) != `"`+evs[3].ID+`"` {
		t.Errorf("dead-letter record %.300s: want the event's id and key_left_out instead of its key", dl[0].Data)
	}
	if h := r.Health(); !h.Healthy {
		t.Errorf("unhealthy: %v", h.Reasons)
	}
}

func firstNonEmpty(v any, s string) any {
	if v != nil {
		return v
	}
	return s
}

// TestGapSurvivesARestart: as TestStreamMaxMessageSize, an event refused by
// the stream with later ones stored after it, but the process stops before
// its next session publishes over the gap (a deploy, a crash, a standby
// taking over). Its successor knew nothing of the gap, took the later
// events, stored, for proof that the refused one was, and skipped it: lost.
// The gap is now kept in the state bucket until published over.
func TestGapSurvivesARestart(t *testing.T) {
	// Not parallel: it sets testHookRefusalNoted, which every reader reads.
	db := newTestDB(t, `CREATE TABLE docs (id int PRIMARY KEY, body text)`)
	n := startNATS(t)
	cfg := db.config()
	noted := make(chan struct{})
	var once sync.Once
	testHookRefusalNoted = func(ctx context.Context, slot string) {
		if slot != cfg.Slot {
			return
		}
		once.Do(func() { close(noted) })
		<-ctx.Done() // the process stops here
	}
	t.Cleanup(func() { testHookRefusalNoted = nil })
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO docs VALUES (1, 'small')`)
	n.readAll(t, 1, 15*time.Second)
	ids := func() map[float64]int {
		got := map[float64]int{}
		for _, e := range n.fetch(t) {
			got[e.Key["id"].(float64)]++
		}
		return got
	}

	// A row the reader takes to fit, which the stream refuses, and 300 rows
	// of the same transaction after it. The first message after a pause
	// goes alone and the next ones in a batch, which JetStream stores
	// whatever became of the first. Only when one of those was sent before
	// the refusal came back can the stream hold a gap; if none was (a
	// loaded machine), the session starts again knowing the limit, and a
	// lower limit and a smaller row try again.
	ctx := context.Background()
	refused := 0
	for attempt, sz := range []struct{ limit, body int }{{4096, 20000}, {2048, 3000}, {1024, 1500}} {
		st, err := n.JS.Stream(ctx, "TABLECAST")
		if err != nil {
			t.Fatal(err)
		}
		scfg := st.CachedInfo().Config
		scfg.MaxMsgSize = int32(sz.limit)
		if _, err := n.JS.UpdateStream(ctx, scfg); err != nil {
			t.Fatal(err)
		}
		first := 1000 * (attempt + 1)
		db.exec(t, `INSERT INTO docs SELECT $1::int + g, CASE WHEN g = 0 THEN repeat('b', $2) ELSE 'small' END FROM generate_series(0, 300) g ORDER BY g`, first, sz.body)
		gap := false
		waitFor(t, 30*time.Second, "a gap, or every row of the attempt", func() bool {
			select {
			case <-noted:
				gap = true
				return true
			default:
			}
			got := ids()
			return got[float64(first)] > 0 && got[float64(first+300)] > 0
		})
		if gap {
			refused = first
			break
		}
		t.Logf("attempt %d: the refusal came back before a later row was sent; no gap", attempt+1)
	}
	if refused == 0 {
		t.Fatal("no attempt left a gap in the stream")
	}
	got := ids()
	later := 0 // rows after the refused one that the stream holds
	for id := refused + 1; id <= refused+300; id++ {
		later += got[float64(id)]
	}
	if got[float64(refused)] != 0 || later == 0 {
		t.Fatalf("before the restart the stream holds row %d %d times and %d of the rows after it; want it refused, and some after it stored",
			refused, got[float64(refused)], later)
	}
	t.Logf("row %d refused, %d rows after it stored", refused, later)
	r.stop(t)
	db.waitSlotInactive(t)

	r2 := startReader(t, cfg, n)
	waitFor(t, 20*time.Second, "the refused row in the stream", func() bool { return ids()[float64(refused)] > 0 })
	waitFor(t, 20*time.Second, "the last row in the stream", func() bool { return ids()[float64(refused+300)] > 0 })
	got = ids()
	for id := refused; id <= refused+300; id++ {
		if got[float64(id)] < 1 {
			t.Fatalf("row %d is not in the stream", id)
		}
	}
	if got[float64(refused)] != 1 {
		t.Fatalf("the refused row %d is in the stream %d times, want once", refused, got[float64(refused)])
	}
	if !r2.log.contains("published again") {
		t.Error("the second reader did not say it publishes again the events after the gap")
	}
	// Published over: the record is gone once a session starts past it.
	var after string
	if err := db.conn.QueryRow(ctx, `WITH i AS (INSERT INTO docs VALUES (1, 'again') ON CONFLICT (id) DO UPDATE SET body = 'again') SELECT pg_current_wal_lsn()::text`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the slot confirmed past the last row", func() bool {
		var past bool
		_ = db.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2`, after, db.slot).Scan(&past)
		return past
	})
	if _, err := r2.state.Get(ctx, gapKey(r2.db, cfg.Slot)); err != nil {
		t.Fatalf("the gap record before a session starts past it: %v", err)
	}
	r2.stop(t)
	db.waitSlotInactive(t)
	startReader(t, cfg, n)
	waitFor(t, 20*time.Second, "the gap record to be deleted", func() bool {
		_, err := r2.state.Get(ctx, gapKey(r2.db, cfg.Slot))
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
}
