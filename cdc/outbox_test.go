package cdc

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tablecast/tablecast/schema"
)

// TestTopicNameTooLong: a custom topic message whose name is longer than
// topic names may be (schema.MaxTopicLen) is ignored with a warning, like
// one with an empty name. Published, its subject outgrew the line NATS
// reads a message's subject on (4 KiB by default): the server closed the
// reader's connection, and every replay met the same message, so one
// statement any role may run stopped the stream for good.
func TestTopicNameTooLong(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	db.exec(t, `BEGIN`)
	db.exec(t, `INSERT INTO items VALUES (1)`)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:'||repeat('x', 5000), '{}')`)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:'||repeat('y', $1::int), '{}')`, schema.MaxTopicLen)
	db.exec(t, `INSERT INTO items VALUES (2)`)
	db.exec(t, `COMMIT`)
	db.exec(t, `INSERT INTO items VALUES (3)`)
	evs := n.readAll(t, 4, 20*time.Second)
	var got []string
	for _, e := range evs {
		got = append(got, strings.TrimPrefix(e.Subject, testPrefix+"."+db.name+"."))
	}
	want := "public.items.create tc.topic." + strings.Repeat("y", schema.MaxTopicLen) + " public.items.create public.items.create"
	if strings.Join(got, " ") != want {
		t.Fatalf("subjects %v, want the three inserts and the message with the longest name allowed", got)
	}
	if !r.log.contains("ignoring a message whose topic name is longer than") {
		t.Fatal("no warning for the message with a name too long")
	}
}

// TestTopicContentNotUTF8: a custom topic message holding bytes that are not
// UTF-8 is not JSON (RFC 8259 wants UTF-8), even when its bytes parse: it
// is carried as a JSON string, so consumers that decode strictly (and
// WebSocket text frames) can read it.
func TestTopicContentNotUTF8(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	startReader(t, cfg, n)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:bytes', '\x7b2261223a22ff227d'::bytea)`) // {"a":"\xff"}
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:bytes', '{"b":"é"}')`)
	evs := n.readAll(t, 2, 20*time.Second)
	for _, e := range evs {
		if !utf8.Valid(e.Raw) || !json.Valid(e.Raw) {
			t.Errorf("message %q on %s is not UTF-8 JSON", e.Raw, e.Subject)
		}
	}
	var s string
	if err := json.Unmarshal(evs[0].Raw, &s); err != nil || s != "{\"a\":\"\uFFFD\"}" {
		t.Errorf("first message %q: want the content as a JSON string (%v)", evs[0].Raw, err)
	}
	if string(evs[1].Raw) != `{"b":"é"}` {
		t.Errorf("second message %q: want it as written", evs[1].Raw)
	}
}

// TestTopicNameWebSocketCannotServe: a message on a topic name the
// WebSocket gateway refuses (white space, a wildcard, a dot at either end)
// is published for NATS subscribers, and the reader warns once per name
// that WebSocket clients cannot subscribe to it, rather than leave the
// writer to find out from a client's error.
func TestTopicNameWebSocketCannotServe(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	for _, topic := range []string{"order events", "a*", ".x", "order events", "fine.name"} {
		db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:'||$1::text, '{}')`, topic)
	}
	evs := n.readAll(t, 5, 20*time.Second)
	var got []string
	for _, e := range evs {
		got = append(got, strings.TrimPrefix(e.Subject, testPrefix+".topic."))
	}
	if want := "order%20events a%2A %2Ex order%20events fine%2Ename"; strings.Join(got, " ") != want {
		t.Fatalf("subjects %v, want %s", got, want)
	}
	waitFor(t, 10*time.Second, "the warnings", func() bool {
		return r.log.count("WebSocket clients cannot subscribe to") == 3
	})
	for _, problem := range []string{"holds white space", "holds a NATS wildcard", "starts or ends with"} {
		if !r.log.contains(problem) {
			t.Errorf("no warning saying the name %s", problem)
		}
	}
	if r.log.contains(`topic.fine%2Ename`) {
		t.Error("a name the gateway serves was warned of")
	}
}
