package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tablecast/tablecast/internal/natstest"
)

// TestRunLetsClientsInOnceTablesAreKnown starts `tablecast run` and dials
// its WebSocket as soon as the port answers: every upgrade before the
// gateway is ready is refused with 503 and a Retry-After, and the first one
// taken may subscribe to a published table at once, which the reader
// registers at start: never unknown_table for a table that exists.
func TestRunLetsClientsInOnceTablesAreKnown(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY, label text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_ready_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_ready",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir()), "run")

	var ws *websocket.Conn
	refused := 0
	deadline := time.Now().Add(time.Minute)
	for ws == nil {
		if time.Now().After(deadline) {
			t.Fatalf("no WebSocket upgrade within a minute (%d refused)", refused)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		w, resp, err := websocket.Dial(ctx, "ws://"+httpAddr+"/ws", nil)
		cancel()
		switch {
		case err == nil:
			ws = w
			t.Cleanup(func() { _ = ws.CloseNow() })
		case resp != nil && (resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == ""):
			t.Fatalf("upgrade before ready answered %s (Retry-After %q), want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
		case resp != nil:
			refused++
			time.Sleep(5 * time.Millisecond)
		default: // not listening yet
			time.Sleep(5 * time.Millisecond)
		}
	}
	wsSend(t, ws, `{"type":"subscribe","id":"s","table":"public.items"}`)
	if f := wsRead(t, ws); f.Type != "subscribed" {
		t.Fatalf("the first client let in: subscribe answered %+v", f)
	}
	t.Logf("%d upgrades refused before the gateway was ready", refused)
	if refused == 0 {
		t.Log("no upgrade was refused: the gateway was ready by the first attempt")
	}
}

// TestCDCReadyOnlyOnceItStreams starts a lone `tablecast cdc` and polls its
// /readyz from the moment it listens: the first 200 must come only once the
// slot exists, and a row inserted right then must be streamed. (A reader
// takes its slot's lease first; before it has, or seen another reader hold
// it, it is neither leader nor standby and not ready.)
func TestCDCReadyOnlyOnceItStreams(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_cdcready_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := natstest.Start(t)
	httpAddr := freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_cdcready",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_URL="+n.URL()), "cdc")
	waitFor(t, 2*time.Minute, "/readyz", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if !exists {
		t.Fatal("/readyz answered 200 before the reader's slot existed")
	}
	if _, err := conn.Exec(ctx, `INSERT INTO items VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the row inserted once ready to be streamed", func() bool { return n.Count("TABLECAST") == 1 })
}
