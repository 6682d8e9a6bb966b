package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// Events larger than NATS's maximum payload, against a stock nats-server
// (1 MiB), which the reader reaches by URL as any external NATS.

// bigBodySQL makes a text of 9,000,000 bytes plus characters JSON must
// escape or that take several bytes: the row whose event (~9 MB) is nine
// times a stock server's maximum payload.
const bigBodySQL = `(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 281250) g) || E'"quoted" \\ back\nnewline\ttab é ✓'`

const oversizeTables = `CREATE TABLE big (id int PRIMARY KEY, body text);
	CREATE TABLE a (id int PRIMARY KEY, v text);
	CREATE TABLE b (id int PRIMARY KEY, v text)`

// lockedBuffer collects a process's stderr for the test to search, and
// echoes it when the test runs verbose.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if testing.Verbose() {
		os.Stderr.Write(p)
	}
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startLogged starts the binary like startProcess, its stderr collected.
func startLogged(t *testing.T, env []string, args ...string) *lockedBuffer {
	logs, _ := startCmd(t, env, args...)
	return logs
}

// startCmd is startLogged, returning the process too.
func startCmd(t *testing.T, env []string, args ...string) (*lockedBuffer, *exec.Cmd) {
	t.Helper()
	return startBinary(t, binary(t), env, args...)
}

// startBinary is startCmd with the binary at path.
func startBinary(t *testing.T, path string, env []string, args ...string) (*lockedBuffer, *exec.Cmd) {
	t.Helper()
	logs := &lockedBuffer{}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("tablecast %s did not exit cleanly on SIGTERM: %v\n%s", args[0], err, logs.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("tablecast %s did not stop within 20s of SIGTERM", args[0])
		}
	})
	return logs, cmd
}

// oversizeSetup creates the tables, a stock NATS and the environment of a
// tablecast process reading the database through it.
func oversizeSetup(t *testing.T, name string) (conn *pgx.Conn, n *natstest.Server, env []string, slot, httpAddr string) {
	t.Helper()
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn = connect(t, url)
	if _, err := conn.Exec(context.Background(), oversizeTables); err != nil {
		t.Fatal(err)
	}
	slot = fmt.Sprintf("tc_%s_%d", name, os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n = natstest.StartStock(t)
	if mp := n.NC.MaxPayload(); mp != 1<<20 {
		t.Fatalf("stock NATS has a maximum payload of %d, want 1 MiB", mp)
	}
	httpAddr = freeAddr(t)
	env = append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_"+name, "TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_SNAPSHOT=never")
	return conn, n, env, slot, httpAddr
}

// waitSlotActive waits until the reader holds its slot and the slot is past its
// consistent point. A slot shows as active while PostgreSQL still builds it,
// waiting for transactions of the whole cluster (other tests' too) to end;
// its confirmed position is set only once it is consistent. A change
// committed before then is in the initial snapshot (op "read"), or nowhere
// with TABLECAST_SNAPSHOT=never, not streamed as a change.
func waitSlotActive(t *testing.T, conn *pgx.Conn, slot string) {
	t.Helper()
	waitFor(t, time.Minute, "the reader to hold its slot, past its consistent point", func() bool {
		return slotHeld(conn, slot)
	})
}

// slotHeld says whether a reader holds slot and the slot has a consistent
// point (see waitSlotActive).
func slotHeld(conn *pgx.Conn, slot string) bool {
	var held bool
	_ = conn.QueryRow(context.Background(), `SELECT active AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&held)
	return held
}

func execSQL(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func walLSN(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var lsn string
	if err := conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	return lsn
}

// storedEvents waits for want messages in the stream and returns them.
func storedEvents(t *testing.T, n *natstest.Server, want int, within time.Duration) []natstest.Stored {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("%d events in the stream (it holds %d)", want, n.Count("TABLECAST")), func() bool {
		return n.Count("TABLECAST") >= uint64(want)
	})
	return n.ReadAll(t, "TABLECAST")
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%.300s: %v", b, err)
	}
	return m
}

// rowIDs lists "table:id" of each event, in stream order.
func rowIDs(t *testing.T, msgs []natstest.Stored) []string {
	t.Helper()
	var out []string
	for _, m := range msgs {
		e := decode(t, m.Data)
		out = append(out, fmt.Sprintf("%s:%s:%v", e["table"], e["op"], e["key"].(map[string]any)["id"]))
	}
	return out
}

// TestOversizeRowThroughStockNATS: a 9 MB row, nine times a stock
// nats-server's maximum payload, between ordinary rows of other tables in
// the same transaction and followed by more transactions. Everything
// arrives, in commit order; the big row's event is a claim that resolves
// to exactly the row; the slot's confirmed position moves past it; /healthz
// stays healthy and `tablecast tail` prints the full event.
func TestOversizeRowThroughStockNATS(t *testing.T) {
	conn, n, env, slot, httpAddr := oversizeSetup(t, "big")
	startLogged(t, env, "cdc")
	waitSlotActive(t, conn, slot)

	execSQL(t, conn, `BEGIN; INSERT INTO a VALUES (1, 'before'); INSERT INTO big VALUES (1, `+bigBodySQL+`); INSERT INTO a VALUES (2, 'after'); COMMIT`)
	afterBig := walLSN(t, conn)
	execSQL(t, conn, `INSERT INTO b VALUES (1, 'next transaction')`)
	execSQL(t, conn, `BEGIN; INSERT INTO a VALUES (3, 'later'); UPDATE b SET v = 'updated' WHERE id = 1; COMMIT`)
	var body string
	if err := conn.QueryRow(context.Background(), `SELECT body FROM big WHERE id = 1`).Scan(&body); err != nil {
		t.Fatal(err)
	}

	msgs := storedEvents(t, n, 6, 2*time.Minute)
	want := []string{"a:create:1", "big:create:1", "a:create:2", "b:create:1", "a:create:3", "b:update:1"}
	if got := rowIDs(t, msgs); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("stream holds %v, want %v in that order", got, want)
	}

	stub := msgs[1]
	if len(stub.Data) > 1024 {
		t.Errorf("the claim message has %d bytes; want a small envelope", len(stub.Data))
	}
	env1 := decode(t, stub.Data)
	for _, m := range []string{"data", "old", "unchanged"} {
		if _, ok := env1[m]; ok {
			t.Errorf("the claim message carries %q", m)
		}
	}
	claim, ok, err := stream.ParseClaim(stub.Data)
	if err != nil || !ok {
		t.Fatalf("no claim in %s: %v", stub.Data, err)
	}
	if claim.Bucket != "TABLECAST_PAYLOADS" || claim.Object != env1["db"].(string)+"/"+stub.MsgID {
		t.Errorf("claim %+v: want bucket TABLECAST_PAYLOADS, object <db>/<event id>", claim)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	full, err := stream.ResolveEvent(ctx, n.JS, stub.Data)
	if err != nil {
		t.Fatalf("resolve the claim: %v", err)
	}
	if int64(len(full)) != claim.Size {
		t.Errorf("the object has %d bytes, the claim says %d", len(full), claim.Size)
	}
	ev := decode(t, full)
	if got := ev["data"].(map[string]any)["body"]; got != body {
		t.Fatalf("the resolved event's body differs from the row's (%d bytes, want %d)", len(fmt.Sprint(got)), len(body))
	}
	for _, m := range []string{"id", "op", "db", "schema", "table", "lsn", "xid", "commit_time", "key"} {
		if fmt.Sprint(ev[m]) != fmt.Sprint(env1[m]) {
			t.Errorf("%s: the claim says %v, the full event %v", m, env1[m], ev[m])
		}
	}

	waitFor(t, time.Minute, "the slot's confirmed position to pass the big row's transaction", func() bool {
		var past bool
		_ = conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2`, afterBig, slot).Scan(&past)
		return past
	})
	if code, h, err := httpGet("http://" + httpAddr + "/healthz"); err != nil || code != 200 {
		t.Errorf("/healthz: %d %s %v", code, h, err)
	}

	code, out, stderr := runBinary(t, time.Minute, env, "tail", "--all", "-n", "1", "public.big")
	if code != 0 {
		t.Fatalf("tail exited %d: %s", code, stderr)
	}
	if strings.TrimSuffix(out, "\n") != string(full) {
		t.Errorf("tail printed %d bytes, want the full event of %d", len(out), len(full))
	}
}

// TestOversizeRowBeyondLimit: a row whose event is larger than
// TABLECAST_MAX_EVENT_BYTES is published without its rows, with its key
// and "truncated", a dead-letter record names it, the log warns naming
// table and key, and later changes flow. A row between the server's
// maximum payload and the limit is a claim.
func TestOversizeRowBeyondLimit(t *testing.T) {
	conn, n, env, slot, _ := oversizeSetup(t, "cap")
	logs := startLogged(t, append(env, "TABLECAST_MAX_EVENT_BYTES=4194304", "TABLECAST_STREAM_MAX_AGE=1h"), "cdc")
	waitSlotActive(t, conn, slot)

	execSQL(t, conn, `INSERT INTO big VALUES (7, `+bigBodySQL+`)`)
	execSQL(t, conn, `INSERT INTO big VALUES (8, repeat('y', 2000000))`)
	execSQL(t, conn, `INSERT INTO a VALUES (1, 'after')`)

	msgs := storedEvents(t, n, 3, 2*time.Minute)
	if got, want := strings.Join(rowIDs(t, msgs), " "), "big:create:7 big:create:8 a:create:1"; got != want {
		t.Fatalf("stream holds %s, want %s", got, want)
	}
	tr := decode(t, msgs[0].Data)
	if tr["truncated"] != true || fmt.Sprint(tr["key"]) != "map[id:7]" {
		t.Errorf("event %s: want truncated with key {id: 7}", msgs[0].Data)
	}
	for _, m := range []string{"data", "old", "unchanged", "claim"} {
		if _, ok := tr[m]; ok {
			t.Errorf("the truncated event carries %q", m)
		}
	}
	if _, ok, _ := stream.ParseClaim(msgs[1].Data); !ok {
		t.Errorf("the 2 MB row's event is not a claim: %.200s", msgs[1].Data)
	}
	if bucket := natsStream(t, n.JS, "OBJ_TABLECAST_PAYLOADS"); bucket.MaxAge != time.Hour+time.Minute || bucket.Replicas != 1 {
		t.Errorf("payload bucket keeps objects for %s (%d replicas); want the stream's max age of 1h plus a minute, 1 replica", bucket.MaxAge, bucket.Replicas)
	}

	dl := n.ReadAll(t, "TABLECAST_DEADLETTER")
	if len(dl) != 1 {
		t.Fatalf("dead-letter stream holds %d records, want 1", len(dl))
	}
	rec := decode(t, dl[0].Data)
	wantSubject := "tablecast_deadletter." + tr["db"].(string) + ".public.big"
	size, _ := rec["size"].(float64)
	if dl[0].Subject != wantSubject || rec["id"] != tr["id"] || rec["table"] != "big" || fmt.Sprint(rec["key"]) != "map[id:7]" ||
		size < 9_000_000 || size > 9_001_000 || !strings.Contains(fmt.Sprint(rec["reason"]), "limit") {
		t.Errorf("dead-letter record on %s: %s; want on %s the event's id, table, key, size and a reason", dl[0].Subject, dl[0].Data, wantSubject)
	}
	if !strings.Contains(logs.String(), "table=public.big") || !strings.Contains(logs.String(), `key="{\"id\":7}"`) {
		t.Errorf("no warning naming the table and the key in the log:\n%s", logs.String())
	}
}

// TestOversizeRowOverWebSocket: gateway clients get the big row's full
// event, live and on resume, filtered and projected on its resolved row,
// although the frame is larger than their send queue limit.
func TestOversizeRowOverWebSocket(t *testing.T) {
	conn, _, env, slot, httpAddr := oversizeSetup(t, "ws")
	// A send queue smaller than the event: the limit bounds a backlog, not
	// one event.
	startLogged(t, append(env, "TABLECAST_WS_SEND_QUEUE=1048576"), "run")
	waitSlotActive(t, conn, slot)
	waitFor(t, time.Minute, "/readyz", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})

	dial := func() *websocket.Conn {
		ws := wsDial(t, "ws://"+httpAddr+"/ws")
		ws.SetReadLimit(64 << 20)
		return ws
	}
	live, picky := dial(), dial()
	wsSend(t, live, `{"type":"subscribe","id":"live","table":"public.big"}`)
	wsSend(t, picky, `{"type":"subscribe","id":"picky","table":"public.big","where":{"id":{"eq":1}},"select":["id"]}`)
	for _, ws := range []*websocket.Conn{live, picky} {
		if f := wsRead(t, ws); f.Type != "subscribed" {
			t.Fatalf("subscribe answered %+v", f)
		}
	}

	execSQL(t, conn, `INSERT INTO big VALUES (0, 'small')`)
	execSQL(t, conn, `INSERT INTO big VALUES (1, `+bigBodySQL+`)`)
	execSQL(t, conn, `INSERT INTO big VALUES (2, 'small again')`)
	var body string
	if err := conn.QueryRow(context.Background(), `SELECT body FROM big WHERE id = 1`).Scan(&body); err != nil {
		t.Fatal(err)
	}

	// checkBig checks an event frame of the big row: resolved, with its
	// body unless projected away.
	checkBig := func(who string, f wsFrame, projected bool) {
		t.Helper()
		var ev struct {
			Data  map[string]any   `json:"data"`
			Claim *json.RawMessage `json:"claim"`
		}
		if err := json.Unmarshal(f.Event, &ev); err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		wantData := ev.Data["body"] == body && len(ev.Data) == 2
		if projected {
			wantData = len(ev.Data) == 1
		}
		if f.Type != "event" || ev.Claim != nil || ev.Data["id"] != float64(1) || !wantData {
			t.Fatalf("%s: got a %s frame of %d bytes, want the big row's full event (claim %v, %d columns)", who, f.Type, len(f.Event), ev.Claim != nil, len(ev.Data))
		}
	}
	first := wsRead(t, live)
	if f := decode(t, first.Event); f["data"].(map[string]any)["id"] != float64(0) {
		t.Fatalf("live: first event %s, want row 0", first.Event)
	}
	checkBig("live", wsRead(t, live), false)
	if f := wsRead(t, live); decode(t, f.Event)["data"].(map[string]any)["id"] != float64(2) {
		t.Fatalf("live: third event %s, want row 2", f.Event)
	}
	checkBig("filtered and projected", wsRead(t, picky), true)

	// Resume from the event before the big one.
	resume := dial()
	wsSend(t, resume, fmt.Sprintf(`{"type":"subscribe","id":"again","table":"public.big","from":%d}`, first.Seq))
	if f := wsRead(t, resume); f.Type != "subscribed" {
		t.Fatalf("resume answered %+v", f)
	}
	checkBig("resume", wsRead(t, resume), false)
	if f := wsRead(t, resume); decode(t, f.Event)["data"].(map[string]any)["id"] != float64(2) {
		t.Fatalf("resume: event after the big one %s, want row 2", f.Event)
	}
}

// natsStream reads a stream's settings, for tests of what the reader
// provisions.
func natsStream(t *testing.T, js jetstream.JetStream, name string) jetstream.StreamConfig {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo().Config
}

// TestMaxEventBytesConfig: TABLECAST_MAX_EVENT_BYTES is listed by help and
// in the README, and a value that would strip ordinary rows, or that is not
// a number, is refused with the variable's name.
func TestMaxEventBytesConfig(t *testing.T) {
	_, help, _ := runBinary(t, time.Minute, nil, "help")
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(help, "TABLECAST_MAX_EVENT_BYTES") || !strings.Contains(help, "67108864") ||
		!strings.Contains(string(readme), "| `TABLECAST_MAX_EVENT_BYTES` | `67108864` |") {
		t.Errorf("TABLECAST_MAX_EVENT_BYTES and its default are missing from help or from the README's table")
	}
	for _, v := range []string{"1000", "lots"} {
		code, _, stderr := runBinary(t, time.Minute, []string{"TABLECAST_DATABASE_URL=postgres://postgres@127.0.0.1:1/x", "TABLECAST_MAX_EVENT_BYTES=" + v}, "cdc")
		if last := lastLine(stderr); code == 0 || !strings.Contains(last, "TABLECAST_MAX_EVENT_BYTES") {
			t.Errorf("TABLECAST_MAX_EVENT_BYTES=%s: exit %d, last line %q; want a refusal naming the variable", v, code, last)
		}
	}
}
