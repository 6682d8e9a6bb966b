package admin_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/schema"
)

// testTables are the streamed tables of the bad-input test: public.orders
// under the default replica identity, public.audit under FULL.
type testTables []*catalog.Table

func (t testTables) Tables() []*catalog.Table { return t }

func newTestTables() testTables {
	shape := func(table, ri string) *catalog.Table {
		identity := ri == "full"
		return catalog.NewTable("tablecast", schema.Shape{DB: "app", Schema: "public", Table: table, Version: 1, ReplicaIdentity: ri, Columns: []schema.ShapeColumn{
			{Name: "id", Type: "integer", TypeOID: 23, Key: true, Identity: true},
			{Name: "status", Type: "text", TypeOID: 25, Identity: identity},
			{Name: "total", Type: "numeric", TypeOID: 1700, Identity: identity},
		}})
	}
	return testTables{shape("orders", "default"), shape("audit", "full")}
}

// badCase is a request that must be refused with status, naming field
// (when not empty) among the error's fields, its message or that field's
// problem holding says.
type badCase struct {
	method, path string
	query        url.Values
	body         any
	ifMatch      string
	status       int
	field        string
	says         string
	code         string // the error's code, when it matters
}

// with returns a copy of base with path (dot-separated members) set to v.
func with(base map[string]any, path string, v any) map[string]any {
	out := deepCopy(base).(map[string]any)
	m := out
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
	return out
}

func deepCopy(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = deepCopy(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = deepCopy(e)
		}
		return out
	}
	return v
}

// TestBadInput sends, for every field of endpoints, filters and rules,
// and every query parameter and header the API reads, a value that is
// wrong in a request that is otherwise right (the good request is then
// accepted): each is refused with a 4xx whose error body names the field
// and the problem, and none writes anything to any bucket.
func TestBadInput(t *testing.T) {
	n := natstest.Start(t)
	h := startWith(t, n, n.JS, endpoint.Config{Tables: newTestTables()}, nil)
	ctx := testCtx(t)
	h.call(ctx, "POST", "/v1/filters", nil, map[string]any{"name": "taken", "tables": []string{"*"}}, 0, nil)
	h.call(ctx, "POST", "/v1/rules", nil, map[string]any{"name": "taken", "table": "public.orders"}, 0, nil)
	var ex endpointJSON
	h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "taken", "type": "websocket"}, 0, &ex)

	hook := map[string]any{"name": "hook", "type": "webhook", "webhook": map[string]any{"url": "https://example.com/hook"}}
	flt := map[string]any{"name": "flt", "tables": []any{"public.orders"}, "operations": []any{"update"}, "where": map[string]any{"status": map[string]any{"eq": "paid"}}, "select": []any{"id"}}
	rule := map[string]any{"name": "rl", "table": "public.audit", "changed": []any{"status"}, "old": map[string]any{"status": map[string]any{"eq": "new"}}, "new": map[string]any{"status": map[string]any{"eq": "paid"}}}
	long := strings.Repeat("x", 101)

	var cases []badCase
	ep := func(field, says string, body map[string]any) {
		cases = append(cases, badCase{method: "POST", path: "/v1/endpoints", body: body, status: 400, field: field, says: says})
	}
	ep("name", "required", with(hook, "name", ""))
	ep("name", "longer than 100", with(hook, "name", long))
	ep("name", "may hold only", with(hook, "name", "has space"))
	ep("name", "parent path", with(hook, "name", ".."))
	ep("filters[0]", "current or the parent", with(hook, "filters", []any{"."}))
	ep("name", "a string", with(hook, "name", 12))
	ep("type", "required", with(hook, "type", ""))
	ep("type", "webhook or websocket", with(hook, "type", "email"))
	ep("state", "active, paused or disabled", with(hook, "state", "sleeping"))
	ep("state", "set by tablecast itself", with(hook, "state", "disabled"))
	ep("filters[0]", "may hold only", with(hook, "filters", []any{"no good"}))
	ep("filters[1]", "twice", with(hook, "filters", []any{"taken", "taken"}))
	ep("filters", "", with(hook, "filters", "taken"))
	ep("filters[0]", "nope", with(hook, "filters", []any{"nope"}))
	ep("rules[0]", "nope", with(hook, "rules", []any{"nope"}))
	ep("webhook", "required", with(hook, "webhook", nil))
	ep("webhook", "only for an endpoint of type webhook", with(hook, "type", "websocket"))
	ep("webhook.url", "required", with(hook, "webhook.url", ""))
	ep("webhook.url", "http:// or https://", with(hook, "webhook.url", "ftp://example.com/x"))
	ep("webhook.url", "no host", with(hook, "webhook.url", "https:///x"))
	ep("webhook.url", "credentials", with(hook, "webhook.url", "https://u:p@example.com/x"))
	ep("webhook.url", "fragment", with(hook, "webhook.url", "https://example.com/x#y"))
	ep("webhook.url", "longer than", with(hook, "webhook.url", "https://example.com/"+strings.Repeat("a", 2048)))
	ep("webhook.method", "POST or PUT", with(hook, "webhook.method", "GET"))
	ep("webhook.headers.Host", "may not be set", with(hook, "webhook.headers", map[string]any{"Host": "evil.example.com"}))
	ep("webhook.headers.Content-Length", "may not be set", with(hook, "webhook.headers", map[string]any{"Content-Length": "1"}))
	ep("webhook.headers.Webhook-Signature", "may not be set", with(hook, "webhook.headers", map[string]any{"Webhook-Signature": "v1,x"}))
	ep("webhook.headers.Bad Name", "not a header name", with(hook, "webhook.headers", map[string]any{"Bad Name": "x"}))
	ep("webhook.headers.X-Split", "control character", with(hook, "webhook.headers", map[string]any{"X-Split": "a\r\nInjected: yes"}))
	// Header injection: a line break or NUL in a header's name or value, or
	// in the URL, is refused (never sent as a header line of its own).
	ep("webhook.headers.X-A\r\nInjected", "not a header name", with(hook, "webhook.headers", map[string]any{"X-A\r\nInjected": "x"}))
	ep("webhook.headers.X-A\nInjected: yes\nX-B", "not a header name", with(hook, "webhook.headers", map[string]any{"X-A\nInjected: yes\nX-B": "x"}))
	ep("webhook.headers.X-Nul", "control character", with(hook, "webhook.headers", map[string]any{"X-Nul": "a\x00b"}))
	ep("webhook.headers.X-Lf", "control character", with(hook, "webhook.headers", map[string]any{"X-Lf": "a\nInjected: yes"}))
	ep("webhook.headers.X-Api-Key", "masked", with(hook, "webhook.headers", map[string]any{"X-Api-Key": endpoint.MaskHeader("a key of some length")}))
	ep("webhook.headers.x-dup", "the same header", with(hook, "webhook.headers", map[string]any{"X-Dup": "1", "x-dup": "2"}))
	ep("webhook.url", "", with(hook, "webhook.url", "https://example.com/a\r\nInjected: yes"))
	ep("webhook.url", "", with(hook, "webhook.url", "https://example.com/a\x00"))
	ep("name", "may hold only", with(hook, "name", "a\x00b"))
	ep("name", "may hold only", with(hook, "name", "a\r\nb"))
	// Numbers beyond every range, and beyond int64 and float64.
	ep("webhook.concurrency", "", with(hook, "webhook.concurrency", json.Number("1e400")))
	ep("webhook.batch", "", with(hook, "webhook.batch", json.Number("9223372036854775808")))
	ep("webhook.batch_bytes", "", with(hook, "webhook.batch_bytes", json.Number("-9223372036854775809")))
	ep("webhook.start.from.seq", "", with(hook, "webhook.start", map[string]any{"from": map[string]any{"seq": json.Number("18446744073709551616")}}))
	ep("revision", "", with(hook, "revision", json.Number("1e30")))
	ep("webhook.secret", "whsec_", with(hook, "webhook.secret", "plain"))
	ep("webhook.secret", "bytes", with(hook, "webhook.secret", "whsec_"+"YWJj"))
	ep("webhook.secret", "masked", with(hook, "webhook.secret", endpoint.MaskSecret(endpoint.GenerateSecret())))
	ep("webhook.timeout", "1s to 1m", with(hook, "webhook.timeout", "500ms"))
	ep("webhook.timeout", "1s to 1m", with(hook, "webhook.timeout", "2m"))
	ep("webhook.timeout", "duration", with(hook, "webhook.timeout", "ten"))
	ep("webhook.concurrency", "1 to 100", with(hook, "webhook.concurrency", 101))
	ep("webhook.concurrency", "", with(hook, "webhook.concurrency", "many"))
	ep("webhook.batch", "1 to 100", with(hook, "webhook.batch", -1))
	ep("webhook.batch", "", with(hook, "webhook.batch", 1.5))
	ep("webhook.batch_bytes", "1024 (1 KiB) to 16777216 (16 MiB)", with(hook, "webhook.batch_bytes", 1023))
	ep("webhook.batch_bytes", "1024 (1 KiB) to 16777216 (16 MiB)", with(hook, "webhook.batch_bytes", 16<<20+1))
	ep("webhook.batch_bytes", "1024 (1 KiB) to 16777216 (16 MiB)", with(hook, "webhook.batch_bytes", 0))
	ep("webhook.batch_bytes", "whole number", with(hook, "webhook.batch_bytes", "1MiB"))
	ep("webhook.retry.max_age", "to 720h", with(hook, "webhook.retry.max_age", "1000h"))
	ep("webhook.retry.initial", "to 1h", with(hook, "webhook.retry.initial", "10ms"))
	ep("webhook.retry.max", "from retry.initial", with(hook, "webhook.retry", map[string]any{"initial": "10m", "max": "1m"}))
	ep("webhook.retry.tries", "", with(hook, "webhook.retry.tries", 3))
	ep("webhook.parallel_by_key", "", with(hook, "webhook.parallel_by_key", "yes"))
	ep("webhook.start.from", "", with(hook, "webhook.start", map[string]any{"from": "yesterday"}))
	ep("webhook.start.from.seq", "", with(hook, "webhook.start", map[string]any{"from": map[string]any{"seq": 0}}))
	ep("webhook.start.from.time", "", with(hook, "webhook.start", map[string]any{"from": map[string]any{"time": "last tuesday"}}))
	ep("webhook.start.from.time", "2000", with(hook, "webhook.start", map[string]any{"from": map[string]any{"time": "1990-01-01T00:00:00Z"}}))
	ep("webhook.colour", "", with(hook, "webhook.colour", "red"))
	ep("colour", "", with(hook, "colour", "red"))
	ep("id", "", with(hook, "id", ex.ID))
	cases = append(cases,
		badCase{method: "POST", path: "/v1/endpoints", body: with(hook, "name", "taken"), status: 409, field: "name", says: "taken"},
		// A body that is not JSON is bad_request, not invalid (a value),
		// as the contract's codes say; so is one nested deeper than a
		// JSON decoder follows.
		badCase{method: "POST", path: "/v1/endpoints", body: []byte(`{"name": "x", "type": `), status: 400, says: "not JSON", code: "bad_request"},
		badCase{method: "POST", path: "/v1/filters", body: []byte(`{"name":`), status: 400, says: "not JSON", code: "bad_request"},
		badCase{method: "POST", path: "/v1/rules", body: []byte(`{"name": "r"} x`), status: 400, says: "not JSON", code: "bad_request"},
		badCase{method: "PUT", path: "/v1/filters/taken", body: []byte(`nope`), status: 400, says: "not JSON", code: "bad_request"},
		badCase{method: "POST", path: "/v1/endpoints", body: []byte(`[1, 2]`), status: 400},
		// Duplicate members, at the top and deeper, and nesting deeper than
		// any decoder should follow.
		badCase{method: "POST", path: "/v1/endpoints", body: []byte(`{"name": "a", "name": "b", "type": "websocket"}`), status: 400, says: "twice"},
		badCase{method: "POST", path: "/v1/endpoints", body: []byte(`{"name": "a", "type": "webhook", "webhook": {"url": "https://example.com/", "url": "http://127.0.0.1/"}}`), status: 400, says: "twice"},
		badCase{method: "POST", path: "/v1/endpoints", body: []byte(`{"name": "a", "type": "websocket", "description": ` + strings.Repeat("[", 200000) + strings.Repeat("]", 200000) + `}`), status: 400, code: "bad_request"},
		badCase{method: "PATCH", path: "/v1/endpoints/" + ex.ID, body: map[string]any{"type": "webhook"}, status: 400, field: "type"},
		badCase{method: "PATCH", path: "/v1/endpoints/" + ex.ID, body: map[string]any{"name": nil}, status: 400, field: "name"},
		badCase{method: "PATCH", path: "/v1/endpoints/" + ex.ID, body: map[string]any{"name": "new"}, ifMatch: `"abc"`, status: 400, says: "If-Match"},
		badCase{method: "PATCH", path: "/v1/endpoints/" + ex.ID, body: map[string]any{"name": "new"}, ifMatch: `"1"`, status: 409, says: "revision"},
		badCase{method: "PUT", path: "/v1/endpoints/" + ex.ID, body: map[string]any{"name": "new", "type": "websocket", "revision": ex.Revision + 7}, status: 409, says: "revision"},
		badCase{method: "POST", path: "/v1/endpoints/delete", body: map[string]any{"ids": []any{}}, status: 400, field: "ids", says: "at least one"},
		badCase{method: "POST", path: "/v1/endpoints/delete", body: map[string]any{"ids": "x"}, status: 400, field: "ids"},
	)

	fl := func(field, says string, body map[string]any) {
		cases = append(cases, badCase{method: "POST", path: "/v1/filters", body: body, status: 400, field: field, says: says})
	}
	fl("name", "required", with(flt, "name", ""))
	fl("name", "may hold only", with(flt, "name", "a/b"))
	fl("name", "parent path", with(flt, "name", ".."))
	fl("name", "current or the parent", with(flt, "name", "."))
	fl("description", "longer than 1000", with(flt, "description", strings.Repeat("d", 1001)))
	fl("tables", "required", with(flt, "tables", []any{}))
	fl("tables[0]", "", with(flt, "tables", []any{"a.b.c.d"}))
	fl("tables[1]", "twice", with(flt, "tables", []any{"public.orders", "public.orders"}))
	fl("operations[0]", "create, update, delete", with(flt, "operations", []any{"upsert"}))
	fl("where", "nope", with(flt, "where", map[string]any{"nope": map[string]any{"eq": 1}}))
	fl("where", "", with(flt, "where", map[string]any{"status": map[string]any{"zz": 1}}))
	fl("where", "", with(flt, "where", "status = 'paid'"))
	fl("select", "nope", with(flt, "select", []any{"id", "nope"}))
	fl("select[0]", "empty", with(flt, "select", []any{""}))
	fl("colour", "", with(flt, "colour", "red"))
	cases = append(cases,
		badCase{method: "POST", path: "/v1/filters", body: with(flt, "name", "taken"), status: 409, field: "name", says: "taken"},
		badCase{method: "PATCH", path: "/v1/filters/taken", body: map[string]any{"name": "renamed"}, status: 400, field: "name"},
		// A member given twice inside a where: shown as one, it would be
		// applied as both (a filter that matches nothing).
		badCase{method: "POST", path: "/v1/filters", body: []byte(`{"name": "dup", "tables": ["public.orders"], "where": {"status": {"eq": "paid", "eq": "new"}}}`), status: 400, field: "where.status", says: `member "eq" is given twice`},
		badCase{method: "POST", path: "/v1/filters", body: []byte(`{"name": "dup", "tables": ["public.orders"], "where": {"status": {"eq": "paid"}, "st\u0061tus": {"eq": "new"}}}`), status: 400, field: "where", says: `member "status" is given twice`},
		badCase{method: "POST", path: "/v1/filters", body: []byte(`{"name": "dup", "tables": ["public.orders"], "where": {"or": [{"status": {"eq": "paid"}}, {"id": {"gt": 1, "gt": 2}}]}}`), status: 400, field: "where.or", says: `member "gt" is given twice`},
		badCase{method: "POST", path: "/v1/rules", body: []byte(`{"name": "dup", "table": "public.audit", "new": {"status": {"eq": "paid", "eq": "x"}}}`), status: 400, field: "new.status", says: "given twice"},
		badCase{method: "POST", path: "/v1/rules", body: []byte(`{"name": "dup", "table": "public.audit", "changed": ["status"], "old": {"status": {"eq": "new"}, "status": {"eq": "x"}}}`), status: 400, field: "old", says: "given twice"},
	)

	rl := func(field, says string, body map[string]any) {
		cases = append(cases, badCase{method: "POST", path: "/v1/rules", body: body, status: 400, field: field, says: says})
	}
	rl("name", "required", with(rule, "name", ""))
	rl("name", "parent path", with(rule, "name", ".."))
	rl("description", "longer than 1000", with(rule, "description", strings.Repeat("d", 1001)))
	rl("table", "required", with(rule, "table", ""))
	rl("table", "no wildcard", with(rule, "table", "public.*"))
	rl("table", "", with(rule, "table", "a.b.c.d"))
	rl("operations[0]", "create, update, delete", with(rule, "operations", []any{"insert"}))
	rl("operations", "cannot apply", with(rule, "operations", []any{"create"}))
	rl("where", "nope", with(rule, "where", map[string]any{"nope": map[string]any{"eq": 1}}))
	rl("changed[0]", "does not exist", with(rule, "changed", []any{"nope"}))
	rl("old", "", with(rule, "old", map[string]any{"status": map[string]any{"zz": 1}}))
	rl("new", "nope", with(rule, "new", map[string]any{"nope": map[string]any{"eq": 1}}))
	rl("select[0]", "does not exist", with(rule, "select", []any{"nope"}))
	// Old-row conditions on a table without REPLICA IDENTITY FULL: the
	// error names the table and the ALTER TABLE that allows them.
	rl("old", `ALTER TABLE "public"."orders" REPLICA IDENTITY FULL`, with(with(rule, "table", "public.orders"), "changed", []any{}))
	rl("changed[0]", `ALTER TABLE "public"."orders" REPLICA IDENTITY FULL`, with(with(rule, "table", "public.orders"), "old", nil))
	rl("colour", "", with(rule, "colour", "red"))

	for _, q := range []struct{ k, v, says string }{
		{"limit", "0", "1 to 1000"}, {"limit", "1001", "1 to 1000"}, {"limit", "ten", "whole number"},
		{"offset", "-1", ""}, {"order_by", "size", "created_at or name"}, {"order", "up", "asc or desc"},
		{"cursor", "garbage", ""}, {"colour", "red", "unknown query parameter"},
		{"type", "email", ""}, {"state", "sleeping", ""},
	} {
		cases = append(cases, badCase{method: "GET", path: "/v1/endpoints", query: url.Values{q.k: {q.v}}, status: 400, field: q.k, says: q.says})
	}
	// A cursor of another listing.
	var p pageJSON
	h.call(ctx, "GET", "/v1/endpoints", url.Values{"limit": {"1"}, "order_by": {"name"}}, nil, 0, &p)
	h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "second", "type": "websocket"}, 0, nil)
	h.call(ctx, "GET", "/v1/endpoints", url.Values{"limit": {"1"}, "order_by": {"name"}}, nil, 0, &p)
	if p.NextCursor == nil {
		t.Fatalf("no next cursor: %+v", p)
	}
	cases = append(cases, badCase{method: "GET", path: "/v1/endpoints", query: url.Values{"cursor": {*p.NextCursor}}, status: 400, field: "cursor"})

	before := lastSeqs(t, h.nats.JS)
	for _, c := range cases {
		what := fmt.Sprintf("%s %s %v %s", c.method, c.path, c.query, shortBody(c.body))
		ae := h.failIfMatch(ctx, c.ifMatch, c.method, c.path, c.query, c.body)
		if ae.Status != c.status {
			t.Errorf("%s: %d %s, want %d", what, ae.Status, ae, c.status)
			continue
		}
		text := ae.Message
		if c.field == "" {
			for _, f := range ae.Fields {
				text += " " + f.Problem
			}
		} else {
			found := false
			for _, f := range ae.Fields {
				if f.Field == c.field && f.Problem != "" {
					found = true
					text += " " + f.Problem
				}
			}
			if !found {
				t.Errorf("%s: the error does not name %s: %s", what, c.field, ae)
				continue
			}
		}
		if c.code != "" && ae.Code != c.code {
			t.Errorf("%s: code %s, want %s: %s", what, ae.Code, c.code, ae)
		}
		if !strings.Contains(text, c.says) {
			t.Errorf("%s: the error does not say %q: %s", what, c.says, ae)
		}
	}
	if after := lastSeqs(t, h.nats.JS); after != before {
		t.Fatalf("refused requests wrote to the buckets: %v → %v", before, after)
	}

	// The bodies the bad ones were made from are good.
	var made endpointJSON
	h.call(ctx, "POST", "/v1/endpoints", nil, hook, 0, &made)
	var wh struct {
		BatchBytes int `json:"batch_bytes"`
	}
	if err := json.Unmarshal(made.Webhook, &wh); err != nil || wh.BatchBytes != endpoint.DefaultBatchBytes {
		t.Errorf("batch_bytes of a webhook created without it: %s; want the default %d", made.Webhook, endpoint.DefaultBatchBytes)
	}
	h.call(ctx, "PATCH", "/v1/endpoints/"+made.ID, nil, map[string]any{"webhook": map[string]any{"batch_bytes": 64 << 10}}, 0, &made)
	if err := json.Unmarshal(made.Webhook, &wh); err != nil || wh.BatchBytes != 64<<10 {
		t.Errorf("batch_bytes once set to 64 KiB: %s", made.Webhook)
	}
	h.call(ctx, "POST", "/v1/filters", nil, flt, 0, nil)
	h.call(ctx, "POST", "/v1/rules", nil, rule, 0, nil)
}

func shortBody(b any) string {
	s := fmt.Sprint(b)
	if raw, ok := b.([]byte); ok {
		s = string(raw)
	}
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}
