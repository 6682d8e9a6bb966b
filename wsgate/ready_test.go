package wsgate

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tablecast/tablecast/stream"
)

// expectNotReady checks that a WebSocket upgrade of path is refused with
// 503 and a Retry-After, through the gateway's own upgrader and through
// net/http (a kept-alive connection).
func (e *testEnv) expectNotReady(path string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, "ws://"+e.addr+path, nil)
	if err == nil {
		_ = ws.CloseNow()
		e.t.Fatalf("%s upgraded before the gateway was ready", path)
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "2" {
		e.t.Fatalf("%s before ready: %v (response %+v), want 503 with Retry-After: 2", path, err, resp)
	}

	// A second request on a kept-alive connection goes through net/http.
	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(nc)
	if _, err := nc.Write([]byte("GET / HTTP/1.1\r\nHost: " + e.addr + "\r\n\r\n")); err != nil {
		e.t.Fatal(err)
	}
	first, err := http.ReadResponse(br, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	first.Body.Close()
	upgrade := "GET " + path + " HTTP/1.1\r\nHost: " + e.addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := nc.Write([]byte(upgrade)); err != nil {
		e.t.Fatal(err)
	}
	second, err := http.ReadResponse(br, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	second.Body.Close()
	if second.StatusCode != http.StatusServiceUnavailable || second.Header.Get("Retry-After") != "2" {
		e.t.Fatalf("%s on a kept-alive connection before ready: %s, want 503 with Retry-After: 2", path, second.Status)
	}
}

// TestUpgradeRefusedUntilCatalogLoaded: a gateway whose catalog load is
// held back refuses WebSocket upgrades with 503 and Retry-After, rather
// than tell a client that a table which exists is unknown; once loaded, a
// subscription to that table is taken.
func TestUpgradeRefusedUntilCatalogLoaded(t *testing.T) {
	hold := make(chan struct{})
	e := startGatewayLoading(t, func(c *Config) { c.holdCatalog = hold })
	e.expectNotReady("/ws")
	e.expectNotReady("/ws/tables/public.orders")
	if e.gw.Ready() {
		t.Fatal("Ready before the catalog was loaded")
	}
	close(hold)
	e.waitFor("gateway ready", e.gw.Ready)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "s", "table": "public.orders"})
	u := e.dial("/ws/tables/public.orders")
	u.expect("subscribed", URLSubscriptionID)
}

// TestStartAfterWaitsForTheRegistry: a gateway told to wait (StartAfter,
// as tablecast run does for its reader) is not ready until then, and then
// only once its tables reflect the schema registry as it stands: a table
// registered just before is known to the first client let in.
func TestStartAfterWaitsForTheRegistry(t *testing.T) {
	after := make(chan struct{})
	e := startGatewayLoading(t, func(c *Config) { c.StartAfter = after })
	e.waitFor("the catalog loaded", func() bool { return e.gw.cat.Table("public", "orders") != nil })
	e.expectNotReady("/ws")
	// The reader registers its tables, then lets the gateway go.
	reg, err := stream.OpenRegistry(testCtx(t), e.nats.JS, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"items", "lines", "returns"} {
		shape := ordersShape()
		shape.Table = name
		b, _ := json.Marshal(shape)
		if err := reg.Put(testCtx(t), stream.SchemaKey(shape.DB, shape.Schema, shape.Table), b, 0); err != nil {
			t.Fatal(err)
		}
	}
	close(after)
	e.waitFor("gateway ready", e.gw.Ready)
	c := e.dial("/ws")
	for _, name := range []string{"items", "lines", "returns"} {
		c.subscribe(map[string]any{"id": name, "table": "public." + name})
	}
}
