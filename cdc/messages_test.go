package cdc

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tablecast/tablecast/schema"
)

// TestTransactionalOutbox: pg_logical_emit_message(true, 'tablecast:<topic>',
// …) is published on the topic's subject in its place among the
// transaction's changes, and never when the transaction rolls back.
func TestTransactionalOutbox(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)

	db.exec(t, `BEGIN; INSERT INTO orders VALUES (1);
		SELECT pg_logical_emit_message(true, 'tablecast:order.events', '{"order":1,"event":"placed"}'); COMMIT`)
	db.exec(t, `BEGIN; INSERT INTO orders VALUES (2);
		SELECT pg_logical_emit_message(true, 'tablecast:order.events', '{"order":2}'); ROLLBACK`)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:plain', 'not json at all')`)
	db.exec(t, `SELECT pg_logical_emit_message(false, 'tablecast:plain', '{"outside":"a transaction"}')`)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'another-tool', '{"x":1}')`)
	db.exec(t, `INSERT INTO orders VALUES (3)`)

	evs := n.readAll(t, 4, 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	evs = n.fetch(t)
	if len(evs) != 4 {
		var subjects []string
		for _, e := range evs {
			subjects = append(subjects, e.Subject)
		}
		t.Fatalf("stream holds %d messages %v, want 4: insert 1, its message, the plain message, insert 3", len(evs), subjects)
	}
	if evs[1].Subject != "tc.topic.order%2Eevents" || string(evs[1].Raw) != `{"order":1,"event":"placed"}` {
		t.Errorf("outbox message: %s %s, want tc.topic.order%%2Eevents with the message's JSON", evs[1].Subject, evs[1].Raw)
	}
	if !strings.HasPrefix(evs[1].Header["Nats-Msg-Id"], evs[0].ID[:17]) || !strings.HasSuffix(evs[1].Header["Nats-Msg-Id"], "-0002") {
		t.Errorf("outbox message id %s: want its transaction's commit LSN and ordinal 0002 (after %s)", evs[1].Header["Nats-Msg-Id"], evs[0].ID)
	}
	if evs[2].Subject != "tc.topic.plain" || string(evs[2].Raw) != `"not json at all"` {
		t.Errorf("non-JSON message: %s %s, want it carried as a JSON string", evs[2].Subject, evs[2].Raw)
	}
	if evs[3].Data["id"] != float64(3) {
		t.Errorf("last event %s, want insert 3", evs[3].Raw)
	}
	if !r.log.contains("ignoring a non-transactional message") {
		t.Error("no warning about the non-transactional message")
	}
	if v, _ := r.metric("tablecast_cdc_topic_messages_published_total", ""); v != 2 {
		t.Errorf("topic messages metric %v, want 2", v)
	}
}

// TestHeartbeat: on a quiet database the heartbeat still moves the slot,
// measures end-to-end lag, and the slot's WAL health shows in metrics.
func TestHeartbeat(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE quiet (id int PRIMARY KEY)`)
	cfg := db.config()
	cfg.HeartbeatInterval = 100 * time.Millisecond
	n := startNATS(t)
	r := startReader(t, cfg, n)

	var before string
	if err := db.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the slot to pass the WAL position of a quiet moment", func() bool {
		var past bool
		_ = db.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn > $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2`, before, db.slot).Scan(&past)
		return past
	})
	waitFor(t, 10*time.Second, "a heartbeat lag measurement", func() bool {
		v, _ := r.metric("tablecast_cdc_heartbeat_lag_seconds", "")
		return v > 0 && v < 10
	})
	waitFor(t, 10*time.Second, "slot WAL metrics", func() bool {
		reserved, _ := r.metric("tablecast_cdc_slot_wal_status", "reserved")
		_, retained := r.metric("tablecast_cdc_slot_retained_wal_bytes", "")
		safe, _ := r.metric("tablecast_cdc_slot_safe_wal_size_bytes", "")
		return reserved == 1 && retained && safe == -1 // max_slot_wal_keep_size is unlimited here
	})
	if msgs := n.fetch(t); len(msgs) != 0 {
		t.Fatalf("heartbeats were published: %d messages", len(msgs))
	}
}

// TestOutboxMessageNotJSONText: content that parses as JSON but is not
// JSON text (invalid UTF-8, which RFC 8259 excludes and WebSocket text
// frames refuse, or nested deeper than JSON readers take once the gateway
// wraps it in a frame) is carried as a JSON string, as other content that
// is not JSON is, rather than published as it is.
func TestOutboxMessageNotJSONText(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t)
	n := startNATS(t)
	startReader(t, db.config(), n)

	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:bin', '\x2261ff6222'::bytea)`) // "a\xffb"
	deep := strings.Repeat("[", schema.MaxEmbeddedJSONDepth+1) + strings.Repeat("]", schema.MaxEmbeddedJSONDepth+1)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:deep', $1::text)`, deep)
	ok := strings.Repeat("[", schema.MaxEmbeddedJSONDepth) + strings.Repeat("]", schema.MaxEmbeddedJSONDepth)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:deep', $1::text)`, ok)

	n.waitCount(t, 3, 15*time.Second)
	msgs := n.ReadAll(t, "TABLECAST")
	if len(msgs) != 3 {
		t.Fatalf("stream holds %d messages, want 3", len(msgs))
	}
	for i, want := range []string{`"\"a\ufffdb\""`, `"` + deep + `"`, ok} {
		if got := string(msgs[i].Data); got != want {
			t.Errorf("message %d on %s: %.80q, want %.80q", i, msgs[i].Subject, got, want)
		}
		if !utf8.Valid(msgs[i].Data) {
			t.Errorf("message %d is not valid UTF-8", i)
		}
	}
}
