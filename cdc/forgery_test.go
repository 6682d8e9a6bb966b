package cdc

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pg_logical_emit_message is executable by every role by default, so
// anything tablecast acts on in the WAL's messages must be something no
// role can forge.

// newRole creates a login role with no privileges on any table, dropped
// when the test ends, and returns a connection of it to db.
func newRole(t *testing.T, db *testDB, name string) *pgx.Conn {
	t.Helper()
	db.exec(t, `DROP ROLE IF EXISTS `+name)
	db.exec(t, `CREATE ROLE `+name+` LOGIN`)
	conn, err := pgx.Connect(context.Background(), strings.Replace(db.url, "postgres://postgres@", "postgres://"+name+"@", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close(context.Background())
		c, err := pgx.Connect(context.Background(), pgtestCluster(t).URL("postgres"))
		if err == nil {
			_, _ = c.Exec(context.Background(), `DROP ROLE IF EXISTS `+name)
			c.Close(context.Background())
		}
	})
	return conn
}

// TestSnapshotRequestInWALIgnored: a role with no privileges writes a
// snapshot request, and watermarks, into the WAL: nothing is published
// (no op read), and the request is named in a warning.
func TestSnapshotRequestInWALIgnored(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `INSERT INTO items SELECT generate_series(1, 100)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)
	nobody := newRole(t, db, "tc_forger")
	if _, err := nobody.Exec(context.Background(), `SELECT 1 FROM items`); err == nil {
		t.Fatal("the role may read items; it should have no privileges")
	}
	for _, msg := range []struct{ transactional, prefix, content string }{
		// The form requests had when they travelled in the WAL.
		{"true", "tablecast-snapshot", `{"id":"0123456789abcdef","schema":"public","name":"items","table":"public.items"}`},
		{"false", "tablecast-snapshot", `{"id":"fedcba9876543210","schema":"public","name":"items","table":"public.items"}`},
		// Watermarks of a chunk the forger made up, and of one it guessed.
		{"false", "tablecast-watermark", "0123456789abcdef:1:low"},
		{"false", "tablecast-watermark", "0123456789abcdef:1:high"},
		{"false", "tablecast-watermark", "00000000000000000000000000000000:high"},
	} {
		if _, err := nobody.Exec(context.Background(), `SELECT pg_logical_emit_message(`+msg.transactional+`, $1, $2)`, msg.prefix, msg.content); err != nil {
			t.Fatalf("emit %s: %v", msg.prefix, err)
		}
	}
	waitFor(t, 20*time.Second, "the warning", func() bool {
		return r.log.count("ignoring a snapshot request found in the WAL") == 2
	})
	db.exec(t, `INSERT INTO items VALUES (0)`) // the last event
	waitFor(t, 20*time.Second, "the insert", func() bool { return len(n.fetch(t)) > 0 })
	// The worker had time to start a forged snapshot: it would have before
	// the insert reached the stream.
	if r.log.contains("on-demand snapshot started") {
		t.Error("a snapshot started")
	}
	for _, e := range n.fetch(t) {
		if e.Op != "create" {
			t.Errorf("event %s: only the insert should be published", e.Raw)
		}
	}
}

// TestWatermarksCannotBeForged: the session acts only on watermarks of
// chunks its own worker registered, a low one once and a high one only
// after the chunk was read; chunk ids are 128 random bits, not derived from
// anything a requester sees.
func TestWatermarksCannotBeForged(t *testing.T) {
	lb := &logBuffer{}
	r := &Reader{log: slog.New(slog.NewTextHandler(lb, nil)), snaps: newSnapshots()}
	s := &session{r: r, windows: map[string]*window{}}
	id := randomID()
	if len(id) != 32 || id == randomID() {
		t.Fatalf("chunk id %q: want 32 random hex digits", id)
	}
	r.snaps.chunks[id] = &chunk{table: "public.items", keys: []string{"id"}, consumed: make(chan struct{})}
	ctx := context.Background()

	s.walBefore = 90
	if err := s.onDemandMessage(ctx, watermarkPrefix, []byte(id+":low"), 100); err != nil {
		t.Fatal(err)
	}
	// A second low watermark would move the window's start past changes
	// already made in it, letting an older row through.
	s.walBefore = 190
	if err := s.onDemandMessage(ctx, watermarkPrefix, []byte(id+":low"), 200); err != nil {
		t.Fatal(err)
	}
	if w := s.windows[id]; w == nil || w.holdLSN != 90 {
		t.Fatalf("window %+v after a repeated low watermark, want it opened at the first (holding 90)", w)
	}
	// A high watermark before the chunk's rows are read would publish an
	// empty chunk and end the snapshot early.
	if err := s.onDemandMessage(ctx, watermarkPrefix, []byte(id+":high"), 300); err != nil {
		t.Fatal(err)
	}
	if s.windows[id] == nil || len(s.pendingChunks) != 0 {
		t.Fatal("a high watermark before the chunk was read closed the window")
	}
	// Watermarks of chunks it did not register do nothing.
	for _, c := range []string{"x:low", "x:high", randomID() + ":low", ":low", "nonsense"} {
		if err := s.onDemandMessage(ctx, watermarkPrefix, []byte(c), 400); err != nil {
			t.Fatal(err)
		}
	}
	if len(s.windows) != 1 {
		t.Fatalf("%d windows open, want 1", len(s.windows))
	}
	for _, want := range []string{"ignoring a repeated low watermark", "ignoring a high watermark written before its chunk was read"} {
		if !lb.contains(want) {
			t.Errorf("no warning %q", want)
		}
	}
}
