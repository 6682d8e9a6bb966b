package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestWebSocketEndpointFollowsChanges connects to /ws/endpoints/<name> on
// a real `tablecast run` and changes the endpoint through the admin API:
// a filter linked, another linked on a table not yet covered, a filter
// redefined, filters unlinked, then the endpoint paused and deleted. After
// each change it checks exactly which events arrive, and that pausing and
// deleting close the connection with 4410 and the reason documented.
func TestWebSocketEndpointFollowsChanges(t *testing.T) {
	c := pgtestRequire(t)
	dbName, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE orders (id int PRIMARY KEY, status text); CREATE TABLE items (id int PRIMARY KEY, name text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_wsfollow_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)
	store, err := endpoint.Open(ctx, n.JS, endpoint.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, f := range []*endpoint.Filter{
		{Name: "paid", Tables: []string{"public.orders"}, Where: json.RawMessage(`{"status":{"eq":"paid"}}`)},
		{Name: "open", Tables: []string{"public.orders"}, Where: json.RawMessage(`{"status":{"eq":"open"}}`)},
		{Name: "items", Tables: []string{"public.items"}},
	} {
		if _, err := store.CreateFilter(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	ep, err := store.CreateEndpoint(ctx, &endpoint.Endpoint{Name: "live", Type: endpoint.TypeWebSocket,
		Filters: []string{"paid"}, WebSocket: &endpoint.WebSocket{}})
	if err != nil {
		t.Fatal(err)
	}
	httpAddr, adminAddr := freeAddr(t), freeAddr(t)
	env := append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_wsfollow", "TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_ADMIN_ADDR="+adminAddr)
	startProcess(t, env, "run")
	waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	admin := func(method, path, body string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+adminAddr+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/merge-patch+json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		var out bytes.Buffer
		_, _ = out.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, out.String())
		}
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	ordersID, itemsID := dbName+".public.orders", dbName+".public.items"

	// dial connects to the endpoint, retrying while the gateway has yet
	// to see it active, and returns the connection after its subscribed.
	dial := func() *websocket.Conn {
		t.Helper()
		for k := 0; ; k++ {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			ws, _, err := websocket.Dial(dctx, "ws://"+httpAddr+"/ws/endpoints/live", nil)
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			_, b, err := ws.Read(dctx)
			cancel()
			if err == nil {
				var f wsFrame
				_ = json.Unmarshal(b, &f)
				if f.Type != "subscribed" || f.ID != ordersID {
					t.Fatalf("/ws/endpoints/live: %s", b)
				}
				t.Cleanup(func() { _ = ws.CloseNow() })
				return ws
			}
			if k > 100 {
				t.Fatalf("/ws/endpoints/live: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// next reads the next frame: an event as "<table> <id> <status or
	// name>", anything else as "<type> <id>".
	next := func(ws *websocket.Conn) string {
		t.Helper()
		f := wsRead(t, ws)
		if f.Type != "event" {
			return f.Type + " " + f.ID
		}
		var ev struct {
			Table string         `json:"table"`
			Data  map[string]any `json:"data"`
		}
		if err := json.Unmarshal(f.Event, &ev); err != nil {
			t.Fatal(err)
		}
		v := ev.Data["status"]
		if f.ID == itemsID {
			v = ev.Data["name"]
		}
		return fmt.Sprintf("%s %v %v", ev.Table, ev.Data["id"], v)
	}
	// upTo reads frames up to the event of orders row end (paid: passed
	// by every definition below), and returns them in order.
	upTo := func(ws *websocket.Conn, end int) []string {
		t.Helper()
		var got []string
		for {
			f := next(ws)
			got = append(got, f)
			if f == fmt.Sprintf("orders %d paid", end) {
				return got
			}
			if len(got) > 1000 {
				t.Fatalf("no end %d in %v", end, got)
			}
		}
	}
	// applied waits for a change to apply: it commits a probe row of
	// orders with status probe and an end row, until the probe arrives
	// (present) or does not (!present) before the end.
	probeID := 1000
	applied := func(ws *websocket.Conn, probe string, present bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			probeID += 2
			exec(fmt.Sprintf(`BEGIN; INSERT INTO orders VALUES (%d, '%s'), (%d, 'paid'); COMMIT`, probeID, probe, probeID+1))
			got := upTo(ws, probeID+1)
			if slices.Contains(got, fmt.Sprintf("orders %d %s", probeID, probe)) == present {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the change did not apply: %v", got)
			}
		}
	}
	check := func(what string, got, want []string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Fatalf("%s: got %q, want %q", what, got, want)
		}
	}

	ws := dial()
	exec(`BEGIN; INSERT INTO orders VALUES (1, 'paid'), (2, 'open'), (3, 'paid'); COMMIT`)
	check("filter paid", upTo(ws, 3), []string{"orders 1 paid", "orders 3 paid"})

	admin("PUT", "/v1/endpoints/"+ep.ID+"/filters/open", "")
	applied(ws, "open", true)
	exec(`BEGIN; INSERT INTO orders VALUES (10, 'paid'), (11, 'open'), (12, 'done'), (13, 'paid'); COMMIT`)
	check("filters paid and open", upTo(ws, 13), []string{"orders 10 paid", "orders 11 open", "orders 13 paid"})

	// A filter of a table not yet covered: a subscription of its own.
	admin("PUT", "/v1/endpoints/"+ep.ID+"/filters/items", "")
	if f := next(ws); f != "subscribed "+itemsID {
		t.Fatalf("after linking items: %s, want subscribed %s", f, itemsID)
	}
	exec(`BEGIN; INSERT INTO items VALUES (1, 'a'); INSERT INTO orders VALUES (20, 'open'), (21, 'paid'); COMMIT`)
	got := upTo(ws, 21)
	if !slices.Contains(got, "items 1 a") {
		got = append(got, next(ws)) // the two tables' feeds are not ordered together
	}
	slices.Sort(got)
	check("filters paid, open and items", got, []string{"items 1 a", "orders 20 open", "orders 21 paid"})

	// A linked filter redefined.
	admin("PATCH", "/v1/filters/open", `{"where":{"status":{"eq":"hold"}}}`)
	applied(ws, "hold", true)
	exec(`BEGIN; INSERT INTO orders VALUES (30, 'open'), (31, 'hold'), (32, 'paid'); COMMIT`)
	check("filter open redefined", upTo(ws, 32), []string{"orders 31 hold", "orders 32 paid"})

	// The only filter of a table unlinked: its subscription ends.
	admin("DELETE", "/v1/endpoints/"+ep.ID+"/filters/items", "")
	if f := next(ws); f != "unsubscribed "+itemsID {
		t.Fatalf("after unlinking items: %s, want unsubscribed %s", f, itemsID)
	}
	exec(`BEGIN; INSERT INTO items VALUES (2, 'b'); INSERT INTO orders VALUES (40, 'paid'); COMMIT`)
	check("items unlinked", upTo(ws, 40), []string{"orders 40 paid"})

	admin("DELETE", "/v1/endpoints/"+ep.ID+"/filters/open", "")
	applied(ws, "hold", false)
	exec(`BEGIN; INSERT INTO orders VALUES (50, 'hold'), (51, 'paid'); COMMIT`)
	check("open unlinked", upTo(ws, 51), []string{"orders 51 paid"})

	closedWith := func(ws *websocket.Conn, reason string) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, b, err := ws.Read(rctx)
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("read %s, %v; want a close", b, err)
		}
		if ce.Code != 4410 || ce.Reason != reason {
			t.Fatalf("closed with %d %q, want 4410 %q", ce.Code, ce.Reason, reason)
		}
	}
	admin("POST", "/v1/endpoints/"+ep.ID+"/pause", "")
	closedWith(ws, "the WebSocket endpoint is paused")

	admin("POST", "/v1/endpoints/"+ep.ID+"/resume", "")
	ws = dial()
	admin("DELETE", "/v1/endpoints/"+ep.ID, "")
	closedWith(ws, "the WebSocket endpoint was deleted")
}
