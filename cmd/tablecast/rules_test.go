package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestRuleSubscriptions subscribes over WebSocket to rules on a table
// with REPLICA IDENTITY FULL, on a real gateway, and checks that each
// gets exactly the changes its rule fires on: changed columns, a where
// on the old row, a where on the new row; and that a WebSocket endpoint
// (/ws/endpoints/<name>) gets the events of its filter or its rule, with
// the columns of the one that passed.
func TestRuleSubscriptions(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric); ALTER TABLE orders REPLICA IDENTITY FULL`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_rules_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)
	store, err := endpoint.Open(ctx, n.JS, endpoint.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, r := range []*endpoint.Rule{
		{Name: "status-change", Table: "public.orders", Changed: []string{"status"}},
		{Name: "was-open", Table: "public.orders", Old: json.RawMessage(`{"status":{"eq":"open"}}`)},
		{Name: "big", Table: "public.orders", New: json.RawMessage(`{"total":{"gte":"100"}}`), Select: []string{"id", "total"}},
	} {
		if _, err := store.CreateRule(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := store.CreateFilter(ctx, &endpoint.Filter{Name: "paid", Tables: []string{"public.*"},
		Where: json.RawMessage(`{"status":{"eq":"paid"}}`), Select: []string{"id", "status"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.CreateEndpoint(ctx, &endpoint.Endpoint{Name: "screen", Type: endpoint.TypeWebSocket,
		Filters: []string{"paid"}, Rules: []string{"big"}, WebSocket: &endpoint.WebSocket{}}); err != nil {
		t.Fatal(err)
	}
	httpAddr := freeAddr(t)
	env := append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_rules", "TABLECAST_HTTP_ADDR="+httpAddr)
	startProcess(t, env, "run")
	waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})

	subs := map[string]*websocket.Conn{}
	for _, rule := range []string{"status-change", "was-open", "big"} {
		ws := wsDial(t, "ws://"+httpAddr+"/ws")
		for k := 0; ; k++ {
			wsSend(t, ws, fmt.Sprintf(`{"type":"subscribe","id":"r%d","rule":%q}`, k, rule))
			f := wsRead(t, ws)
			if f.Type == "subscribed" {
				break
			}
			if f.Code != "unknown_rule" || k > 100 {
				t.Fatalf("subscribe to rule %s answered %+v", rule, f)
			}
			time.Sleep(50 * time.Millisecond) // the gateway has yet to see the rule
		}
		subs[rule] = ws
	}
	// The WebSocket endpoint: one subscription, the table's, with the
	// events of its filter and its rule.
	for k := 0; ; k++ {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ws, _, err := websocket.Dial(dctx, "ws://"+httpAddr+"/ws/endpoints/screen", nil)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		_, b, err := ws.Read(dctx)
		cancel()
		if err == nil {
			var f wsFrame
			_ = json.Unmarshal(b, &f)
			if f.Type != "subscribed" || f.ID == "" {
				t.Fatalf("/ws/endpoints/screen: %s", b)
			}
			t.Cleanup(func() { _ = ws.CloseNow() })
			subs["screen"] = ws
			break
		}
		if k > 100 {
			t.Fatalf("/ws/endpoints/screen: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the gateway has yet to see the endpoint
	}
	ws := wsDial(t, "ws://"+httpAddr+"/ws")
	wsSend(t, ws, `{"type":"subscribe","id":"x","rule":"no-such-rule"}`)
	if f := wsRead(t, ws); f.Type != "error" || f.Code != "unknown_rule" {
		t.Fatalf("subscribe to a missing rule answered %+v", f)
	}

	for _, sql := range []string{
		`INSERT INTO orders VALUES (1, 'open', 50)`,                 // none
		`INSERT INTO orders VALUES (2, 'open', 150)`,                // big
		`UPDATE orders SET total = 60 WHERE id = 1`,                 // was-open
		`UPDATE orders SET status = 'paid' WHERE id = 1`,            // status-change, was-open
		`UPDATE orders SET total = 200 WHERE id = 2`,                // was-open, big
		`UPDATE orders SET status = 'paid', total = 1 WHERE id = 2`, // status-change, was-open (big: the new total is 1)
		`DELETE FROM orders WHERE id = 1`,                           // none: the old status is paid
		`INSERT INTO orders VALUES (3, 'open', 10)`,                 // none
		`DELETE FROM orders WHERE id = 3`,                           // was-open
		`INSERT INTO orders VALUES (99, 'open', 1000)`,              // big
		`UPDATE orders SET status = 'done' WHERE id = 99`,           // all three: the end
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	want := map[string][]string{
		"status-change": {"update 1 paid 60", "update 2 paid 1", "update 99 done 1000"},
		"was-open":      {"update 1 open 60", "update 1 paid 60", "update 2 open 200", "update 2 paid 1", "delete 3 open 10", "update 99 done 1000"},
		"big":           {"create 2 - 150", "update 2 - 200", "create 99 - 1000", "update 99 - 1000"},
		"screen":        {"create 2 - 150", "update 1 paid <nil>", "update 2 - 200", "update 2 paid <nil>", "delete 1 paid <nil>", "create 99 - 1000", "update 99 - 1000"},
	}
	for rule, ws := range subs {
		var got []string
		for {
			f := wsRead(t, ws)
			if f.Type != "event" {
				t.Fatalf("rule %s: %+v", rule, f)
			}
			var ev struct {
				Op   string         `json:"op"`
				Data map[string]any `json:"data"`
				Old  map[string]any `json:"old"`
			}
			if err := json.Unmarshal(f.Event, &ev); err != nil {
				t.Fatal(err)
			}
			row := ev.Data
			if ev.Op == "delete" {
				row = ev.Old
			}
			status, ok := row["status"].(string)
			if !ok {
				status = "-"
			}
			got = append(got, fmt.Sprintf("%s %v %s %v", ev.Op, row["id"], status, row["total"]))
			if row["id"] == float64(99) && ev.Op == "update" {
				break
			}
		}
		if !slices.Equal(got, want[rule]) {
			t.Errorf("rule %s got\n%q\nwant\n%q", rule, got, want[rule])
		}
	}
}

// TestRuleSubscriptionsUnderGrants: a rule subscription gets only what the
// client's grants let it see: the rows its row policy allows (an update
// that moves a row into them without its old row, none that moves a row
// out of them), the columns it is
// granted; a rule that reads a column it may not read is refused.
func TestRuleSubscriptionsUnderGrants(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE orders (id int PRIMARY KEY, region text, status text, total numeric); ALTER TABLE orders REPLICA IDENTITY FULL`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_rulegrants_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)
	store, err := endpoint.Open(ctx, n.JS, endpoint.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, r := range []*endpoint.Rule{
		{Name: "status-change", Table: "public.orders", Changed: []string{"status"}},
		{Name: "big", Table: "public.orders", New: json.RawMessage(`{"total":{"gte":"100"}}`)},
	} {
		if _, err := store.CreateRule(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	key := "tck_rule-grants-test-east-0123456789abcdef"
	keys, _ := json.Marshal([]map[string]any{{"name": "east", "hash": fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(key))),
		"claims": map[string]any{"tablecast": map[string]any{
			"tables":   map[string]any{"public.orders": []string{"*"}},
			"columns":  map[string]any{"public.orders": []string{"id", "region", "status"}},
			"policies": map[string]any{"public.orders": map[string]any{"region": map[string]any{"eq": "east"}}},
		}}}})
	keysFile := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(keysFile, keys, 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_rulegrants", "TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_API_KEYS_FILE="+keysFile), "run")
	waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	ws := wsDial(t, "ws://"+httpAddr+"/ws?token="+key)
	subscribe := func(id, rule string) wsFrame {
		for k := 0; ; k++ {
			wsSend(t, ws, fmt.Sprintf(`{"type":"subscribe","id":"%s%d","rule":%q}`, id, k, rule))
			f := wsRead(t, ws)
			if f.Code != "unknown_rule" || k > 100 {
				return f
			}
			time.Sleep(50 * time.Millisecond) // the gateway has yet to see the rule
		}
	}
	if f := subscribe("b", "big"); f.Type != "error" || f.Code != "not_allowed" {
		t.Fatalf("a rule reading a column not granted: %+v", f)
	}
	if f := subscribe("s", "status-change"); f.Type != "subscribed" {
		t.Fatalf("subscribe: %+v", f)
	}
	for _, sql := range []string{
		`INSERT INTO orders VALUES (1, 'east', 'open', 1), (2, 'west', 'open', 1)`,
		`UPDATE orders SET status = 'paid'`,                               // row 1 only: row 2 is west
		`UPDATE orders SET region = 'east', status = 'done' WHERE id = 2`, // moves into east: without its old row
		`UPDATE orders SET region = 'west', status = 'gone' WHERE id = 1`, // moves out: nothing (the rule takes updates, not the delete its old row would be seen as)
		`INSERT INTO orders VALUES (99, 'east', 'open', 1)`,
		`UPDATE orders SET status = 'end' WHERE id = 99`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	var got []string
	for {
		f := wsRead(t, ws)
		if f.Type != "event" {
			t.Fatalf("%+v", f)
		}
		var ev struct {
			Op   string         `json:"op"`
			Data map[string]any `json:"data"`
			Old  map[string]any `json:"old"`
		}
		if err := json.Unmarshal(f.Event, &ev); err != nil {
			t.Fatal(err)
		}
		row := ev.Data
		if ev.Op == "delete" {
			row = ev.Old
		}
		_, total := row["total"]
		got = append(got, fmt.Sprintf("%s %v %v old=%v total=%v", ev.Op, row["id"], row["status"], ev.Old != nil, total))
		if row["id"] == float64(99) {
			break
		}
	}
	want := []string{"update 1 paid old=true total=false", "update 2 done old=false total=false", "update 99 end old=true total=false"}
	if !slices.Equal(got, want) {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}
