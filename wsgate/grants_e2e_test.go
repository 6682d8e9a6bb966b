package wsgate

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/schema"
)

// What a subscription may see of a row: row policies across tenants, and
// column grants, on every path (live, resume, URL subscription), with
// subscriptions of different identities sharing an id so that frames
// encoded once per group must still differ where the identities do.

// moveRow is a row of public.orders for the tenant-move tests.
func moveRow(id int, tenant, status string) map[string]any {
	return map[string]any{"id": id, "status": status, "total": "10", "paid": true,
		"created": "2026-01-01T00:00:00Z", "tenant": tenant, "notes": "note of " + tenant}
}

// update publishes an update of public.orders in the shop: old is nil
// under the default replica identity (the key unchanged).
func (e *testEnv) update(key map[string]any, data, old map[string]any) uint64 {
	e.t.Helper()
	m := map[string]any{"key": key, "data": data}
	if old != nil {
		m["old"] = old
	}
	return e.publishIn(testDB, "orders", schema.OpUpdate, m)
}

// TestAuthPolicyTenantMove: an update that moves a row from one tenant to
// another under REPLICA IDENTITY FULL carries the old tenant's row in
// "old". Each subscriber sees only the rows its policy allows: both, the
// update as is; only the new one, the update without "old" and with the
// new row's key; only the old one, a delete of the old row; neither,
// nothing.
func TestAuthPolicyTenantMove(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	s := ordersShape()
	s.ReplicaIdentity = "full"
	s.Version = 2
	e.putShape(s)
	tok := func(tenants ...string) string {
		return token(t, map[string]any{
			"tables":   map[string]any{"public.orders": []string{"*"}},
			"policies": map[string]any{"public.orders": map[string]any{"tenant": map[string]any{"in": map[string]any{"claim": "tenants"}}}},
		}, map[string]any{"tenants": tenants})
	}
	tokens := map[string]string{"acme": tok("acme"), "globex": tok("globex"), "both": tok("acme", "globex"), "neither": tok("initech")}
	start := e.e2eStreamLast()

	type sub struct {
		who, path string
		msg       map[string]any // nil for a URL subscription
	}
	subs := []sub{
		// The same id and projection for every identity: one frame group.
		{"acme", "/ws", map[string]any{"id": "s", "table": "public.orders"}},
		{"globex", "/ws", map[string]any{"id": "s", "table": "public.orders"}},
		{"both", "/ws", map[string]any{"id": "s", "table": "public.orders"}},
		{"neither", "/ws", map[string]any{"id": "s", "table": "public.orders"}},
		// An equality index on a column the update changes: the delete is
		// matched on the old row, found under its old value.
		{"acme", "/ws", map[string]any{"id": "s", "table": "public.orders", "where": map[string]any{"status": map[string]any{"eq": "open"}}}},
		{"acme", "/ws", map[string]any{"id": "s", "table": "public.orders", "events": []string{schema.OpUpdate}}},
		{"acme", "/ws", map[string]any{"id": "s", "table": "public.orders", "select": []string{"id", "tenant"}}},
		{"globex", "/ws", map[string]any{"id": "s", "table": "public.orders", "select": []string{"id", "tenant"}}},
		{"acme", "/ws/tables/public.orders", nil},
		{"globex", "/ws/tables/public.orders?select=id,tenant", nil},
	}
	clients := make([]*client, len(subs))
	for i, sb := range subs {
		if sb.msg == nil {
			clients[i] = e.dial(sb.path + map[bool]string{true: "&", false: "?"}[strings.Contains(sb.path, "?")] + "token=" + url.QueryEscape(tokens[sb.who]))
			clients[i].expect("subscribed", URLSubscriptionID)
			continue
		}
		clients[i] = e.dial(sb.path, "Authorization", "Bearer "+tokens[sb.who])
		clients[i].subscribe(sb.msg)
	}

	key := func(id int) map[string]any { return map[string]any{"id": id} }
	// Each update as it is published; what a subscriber gets is written
	// "op id key-tenant data-tenant old-tenant" (- for absent).
	e.update(key(1), moveRow(1, "acme", "paid"), moveRow(1, "acme", "open"))      // stays at acme
	e.update(key(2), moveRow(2, "globex", "paid"), moveRow(2, "acme", "open"))    // acme → globex, status too
	e.update(key(3), moveRow(3, "acme", "open"), moveRow(3, "globex", "open"))    // globex → acme
	e.update(key(4), moveRow(4, "initech", "open"), moveRow(4, "globex", "open")) // globex → initech
	// A composite key (tenant, id): the new tenant gets the new row's key.
	e.update(map[string]any{"tenant": "acme", "id": 5}, moveRow(5, "globex", "open"), moveRow(5, "acme", "open"))
	// The default replica identity: no old row, the new row decides.
	e.update(key(6), moveRow(6, "globex", "open"), nil)
	// A changed key under the default replica identity: old holds the
	// key only, which the policy cannot judge: shown to nobody.
	e.update(map[string]any{"id": 7}, moveRow(8, "acme", "open"), map[string]any{"id": 7})
	e.update(key(twoDBMark), moveRow(twoDBMark, "initech", "open"), nil) // the marker, for "neither"
	for _, tn := range []string{"acme", "globex"} {
		e.update(key(twoDBMark), moveRow(twoDBMark, tn, "open"), moveRow(twoDBMark, tn, "open"))
	}

	acme := []string{"update 1 - acme acme", "delete 2 - - acme", "update 3 - acme -", "delete 5 acme - acme", "update 8 - acme -"}
	globex := []string{"update 2 - globex -", "delete 3 - - globex", "delete 4 - - globex", "update 5 globex globex -", "update 6 - globex -"}
	both := []string{"update 1 - acme acme", "update 2 - globex acme", "update 3 - acme globex", "delete 4 - - globex",
		"update 5 acme globex acme", "update 6 - globex -", "update 8 - acme -"}
	want := [][]string{
		acme, globex, both, {"update 4 - initech -"},
		{"delete 2 - - acme", "update 3 - acme -", "delete 5 acme - acme", "update 8 - acme -"}, // where status = open
		{"update 1 - acme acme", "update 3 - acme -", "update 8 - acme -"},                      // updates only
		acme, globex, acme, globex,
	}
	render := func(f frame) string {
		ev := f.event()
		tenant := func(member string) string {
			if m, ok := ev[member].(map[string]any); ok {
				if tn, ok := m["tenant"].(string); ok {
					return tn
				}
			}
			return "-"
		}
		return fmt.Sprintf("%v %d %s %s %s", ev["op"], e2eRowID(f), tenant("key"), tenant("data"), tenant("old"))
	}
	check := func(name string, c *client, sb sub, want []string) {
		t.Helper()
		var got []string
		for _, f := range untilRow(c, twoDBMark) {
			got = append(got, render(f))
			ev := f.event()
			if ev["op"] == schema.OpDelete && (ev["data"] != nil || ev["unchanged"] != nil) {
				t.Errorf("%s: a delete with new values: %s", name, f.Event)
			}
			if sel := sb.msg["select"]; sel != nil || strings.Contains(sb.path, "select") {
				for _, m := range []string{"data", "old"} {
					if cols := e2eKeys(ev, m); cols != nil && !slices.Equal(cols, []string{"id", "tenant"}) {
						t.Errorf("%s: %s columns %v, want the select", name, m, cols)
					}
				}
			}
		}
		if got == nil {
			got = []string{}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s:\ngot  %q\nwant %q", name, got, want)
		}
	}
	for i, sb := range subs {
		check(fmt.Sprintf("live %d (%s %v %s)", i, sb.who, sb.msg, sb.path), clients[i], sb, want[i])
	}
	for i, sb := range subs {
		name := fmt.Sprintf("resumed %d (%s %v %s)", i, sb.who, sb.msg, sb.path)
		var c *client
		if sb.msg == nil {
			sep := "?"
			if strings.Contains(sb.path, "?") {
				sep = "&"
			}
			c = e.dial(sb.path + sep + "from=" + fmt.Sprint(start) + "&token=" + url.QueryEscape(tokens[sb.who]))
			c.expect("subscribed", URLSubscriptionID)
		} else {
			c = e.dial("/ws", "Authorization", "Bearer "+tokens[sb.who])
			msg := map[string]any{"from": start}
			for k, v := range sb.msg {
				msg[k] = v
			}
			c.subscribe(msg)
		}
		check(name, c, sb, want[i])
	}
}

// TestAuthColumnGrants: a column grant keeps data, old, unchanged and key
// to the granted columns on every path, before the client's select; a
// column not granted is to where and select a column that does not exist,
// while the row policy may read it.
func TestAuthColumnGrants(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	granted := []string{"id", "status", "tenant"}
	narrow := token(t, map[string]any{
		"tables":   map[string]any{"public.orders": []string{"*"}},
		"columns":  map[string]any{"public.*": []string{"id"}, "public.orders": granted},
		"policies": map[string]any{"public.orders": map[string]any{"paid": map[string]any{"is": "true"}}},
	}, nil)
	wide := token(t, map[string]any{"tables": map[string]any{"*": []string{"*"}}}, nil)
	start := e.e2eStreamLast()

	c := e.dial("/ws?token=" + narrow)
	// Refusals: the same words for a column not granted as for one that
	// does not exist.
	for _, tc := range []struct {
		msg  map[string]any
		code ErrorCode
	}{
		{map[string]any{"where": map[string]any{"COL": map[string]any{"gt": 1}}}, CodeInvalidFilter},
		{map[string]any{"where": map[string]any{"or": []any{map[string]any{"id": map[string]any{"eq": 1}}, map[string]any{"COL": map[string]any{"is": "null"}}}}}, CodeInvalidFilter},
		{map[string]any{"select": []string{"id", "COL"}}, CodeInvalidSelect},
	} {
		var msgs []string
		for _, col := range []string{"total", "no_such_column"} {
			m := map[string]any{"type": "subscribe", "id": "x", "table": "public.orders"}
			for k, v := range tc.msg {
				m[k] = v
			}
			b := strings.ReplaceAll(mustJSON(t, m), "COL", col)
			c.sendRaw(b)
			msgs = append(msgs, strings.Replace(c.expectError(tc.code, "x").Message, col, "COL", 1))
		}
		if msgs[0] != msgs[1] {
			t.Errorf("a column not granted is told apart from a missing one: %q vs %q", msgs[0], msgs[1])
		}
	}
	for _, q := range []string{"?total=gte.1", "?select=id,total"} {
		hidden := e.dial("/ws/tables/public.orders" + q + "&token=" + url.QueryEscape(narrow)).expectClose(CloseBadRequest)
		missing := e.dial("/ws/tables/public.orders" + strings.Replace(q, "total", "no_such_column", 1) + "&token=" + url.QueryEscape(narrow)).expectClose(CloseBadRequest)
		if strings.Replace(hidden, "total", "COL", 1) != strings.Replace(missing, "no_such_column", "COL", 1) {
			t.Errorf("URL %s: a column not granted is told apart from a missing one: %q vs %q", q, hidden, missing)
		}
	}

	c.subscribe(map[string]any{"id": "s", "table": "public.orders"})
	sel := e.dial("/ws?token=" + narrow)
	sel.subscribe(map[string]any{"id": "s", "table": "public.orders", "select": []string{"status"}, "where": map[string]any{"status": map[string]any{"neq": "x"}}})
	sel.send(map[string]any{"type": "select", "id": "s", "fields": []string{"total"}})
	sel.expectError(CodeInvalidSelect, "s")
	// The same id, no select, all columns: a frame group of its own.
	w := e.dial("/ws?token=" + wide)
	w.subscribe(map[string]any{"id": "s", "table": "public.orders"})
	u := e.dial("/ws/tables/public.orders?token=" + url.QueryEscape(narrow))
	u.expect("subscribed", URLSubscriptionID)

	full := e2eOrder(1, "paid", "19.90", true, "2026-01-01T00:00:00Z", "acme", "secret note")
	old := e2eOrder(1, "open", "9.90", true, "2026-01-01T00:00:00Z", "acme", "secret note")
	// The key holds a column not granted (a composite key).
	e.publishIn(testDB, "orders", schema.OpUpdate, map[string]any{"key": map[string]any{"id": 1, "total": "9.90"},
		"data": full, "old": old, "unchanged": []string{"notes", "status", "created"}})
	e.publishIn(testDB, "orders", schema.OpCreate, map[string]any{"key": map[string]any{"id": 2},
		"data": e2eOrder(2, "open", "1", false, "2026-01-01T00:00:00Z", "acme", "x")}) // the policy (paid) rules it out
	e.publishIn(testDB, "orders", schema.OpDelete, map[string]any{"key": map[string]any{"id": 3}, "old": e2eOrder(3, "open", "1", true, nil, "acme", "x")})
	e.publishIn(testDB, "orders", schema.OpCreate, map[string]any{"key": map[string]any{"id": twoDBMark}, "data": e2eOrder(twoDBMark, "open", "1", true, nil, "acme", "x")})

	resumed := e.dial("/ws?token=" + narrow)
	resumed.subscribe(map[string]any{"id": "s", "table": "public.orders", "from": start})
	resumedURL := e.dial(fmt.Sprintf("/ws/tables/public.orders?from=%d&token=%s", start, url.QueryEscape(narrow)))
	resumedURL.expect("subscribed", URLSubscriptionID)

	allowed := func(cols []string, of []string) bool {
		for _, c := range cols {
			if !slices.Contains(of, c) {
				return false
			}
		}
		return true
	}
	for name, tc := range map[string]struct {
		c    *client
		rows []string // the columns data and old may hold
	}{
		"live": {c, granted}, "live select": {sel, []string{"status"}}, "url": {u, granted},
		"resumed": {resumed, granted}, "resumed url": {resumedURL, granted},
	} {
		frames := untilRow(tc.c, twoDBMark)
		if got := e2eIDs(frames); !slices.Equal(got, []int{1, 3}) {
			t.Errorf("%s: rows %v, want 1 and 3 (2 is ruled out by a policy on a column not granted)", name, got)
		}
		for _, f := range frames {
			ev := f.event()
			for _, m := range []string{"data", "old"} {
				if cols := e2eKeys(ev, m); !allowed(cols, tc.rows) {
					t.Errorf("%s: %s holds %v: %s", name, m, cols, f.Event)
				}
			}
			if cols := e2eKeys(ev, "key"); !allowed(cols, granted) || !slices.Contains(cols, "id") {
				t.Errorf("%s: key holds %v: %s", name, cols, f.Event)
			}
			if un, ok := ev["unchanged"].([]any); ok {
				for _, col := range un {
					if !slices.Contains(tc.rows, col.(string)) {
						t.Errorf("%s: unchanged names %v: %s", name, col, f.Event)
					}
				}
			}
			if ev := string(f.Event); strings.Contains(ev, "secret note") || strings.Contains(ev, `"19.90"`) || strings.Contains(ev, `"9.90"`) {
				t.Errorf("%s: a value of a column not granted: %s", name, f.Event)
			}
		}
	}
	wideFrames := untilRow(w, twoDBMark)
	if got := e2eIDs(wideFrames); !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("wide: rows %v", got)
	}
	if cols := e2eKeys(wideFrames[0].event(), "data"); len(cols) != len(ordersShape().Columns) {
		t.Fatalf("wide: data columns %v: the narrow grant's frames were shared", cols)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
