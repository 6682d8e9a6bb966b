package admin_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/admin"
	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/endpoint"
)

// route is one operation, with a body that would succeed.
type route struct {
	method, path string
	body         any
	write        bool
}

// everyRoute is every operation of the API on an endpoint id, a filter
// and a rule that exist.
func everyRoute(id string) []route {
	ep := map[string]any{"name": "x2", "type": "websocket"}
	flt := map[string]any{"name": "f", "tables": []string{"*"}}
	rule := map[string]any{"name": "r", "table": "public.orders"}
	return []route{
		{"GET", "/v1/endpoints", nil, false},
		{"POST", "/v1/endpoints", ep, true},
		{"POST", "/v1/endpoints/delete", map[string]any{"ids": []string{id}}, true},
		{"GET", "/v1/endpoints/" + id, nil, false},
		{"PUT", "/v1/endpoints/" + id, map[string]any{"name": "x", "type": "websocket"}, true},
		{"PATCH", "/v1/endpoints/" + id, map[string]any{"name": "x"}, true},
		{"DELETE", "/v1/endpoints/" + id, nil, true},
		{"POST", "/v1/endpoints/" + id + "/pause", nil, true},
		{"POST", "/v1/endpoints/" + id + "/resume", nil, true},
		{"GET", "/v1/endpoints/" + id + "/filters", nil, false},
		{"PUT", "/v1/endpoints/" + id + "/filters/f", nil, true},
		{"DELETE", "/v1/endpoints/" + id + "/filters/f", nil, true},
		{"GET", "/v1/endpoints/" + id + "/rules", nil, false},
		{"PUT", "/v1/endpoints/" + id + "/rules/r", nil, true},
		{"DELETE", "/v1/endpoints/" + id + "/rules/r", nil, true},
		{"GET", "/v1/filters", nil, false},
		{"POST", "/v1/filters", map[string]any{"name": "f2", "tables": []string{"*"}}, true},
		{"GET", "/v1/filters/f", nil, false},
		{"PUT", "/v1/filters/f", flt, true},
		{"PATCH", "/v1/filters/f", map[string]any{"description": "d"}, true},
		{"DELETE", "/v1/filters/f", nil, true},
		{"GET", "/v1/filters/f/endpoints", nil, false},
		{"GET", "/v1/rules", nil, false},
		{"POST", "/v1/rules", map[string]any{"name": "r2", "table": "public.orders"}, true},
		{"GET", "/v1/rules/r", nil, false},
		{"PUT", "/v1/rules/r", rule, true},
		{"PATCH", "/v1/rules/r", map[string]any{"description": "d"}, true},
		{"DELETE", "/v1/rules/r", nil, true},
		{"GET", "/v1/rules/r/endpoints", nil, false},
	}
}

// TestAuthorization calls every route without credentials (401), with a
// bad one (401), with a valid one that lacks the admin grant (403), and
// with a read-only one (reads pass, every write is 403), and checks that
// nothing the refused calls asked for was written.
func TestAuthorization(t *testing.T) {
	h := start(t, nil)
	ctx := testCtx(t)
	e, err := h.store.CreateEndpoint(ctx, &endpoint.Endpoint{Name: "x", Type: endpoint.TypeWebSocket})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.CreateFilter(ctx, &endpoint.Filter{Name: "f", Tables: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.CreateRule(ctx, &endpoint.Rule{Name: "r", Table: "public.orders"}); err != nil {
		t.Fatal(err)
	}
	expired := token(t, map[string]any{"sub": "operator", "exp": time.Now().Add(-time.Hour).Unix(), "tablecast": map[string]any{"admin": []any{"write"}}})
	forged := strings.TrimSuffix(h.writer, h.writer[len(h.writer)-4:]) + "AAAA"
	before := lastSeqs(t, h.nats.JS)
	for _, r := range everyRoute(e.ID) {
		for _, tc := range []struct {
			who, tok string
			status   int
		}{
			{"no credential", "", 401},
			{"an expired token", expired, 401},
			{"a forged token", forged, 401},
			{"an unknown API key", "tck_not-a-key-of-this-server-0123456789abcdef", 401},
			{"a token without the admin grant", h.noAdmin, 403},
			{"a read-only token", h.reader, 403},
			{"a read-only API key", readerKey, 403},
		} {
			if tc.status == 403 && !r.write && tc.tok != h.noAdmin {
				continue // readers read: below
			}
			ae := h.failAs(ctx, tc.tok, r.method, r.path, nil, r.body, 0)
			if ae.Status != tc.status {
				t.Errorf("%s %s with %s: %d %s, want %d", r.method, r.path, tc.who, ae.Status, ae.Message, tc.status)
			}
		}
	}
	if after := lastSeqs(t, h.nats.JS); after != before {
		t.Fatalf("refused requests wrote to the buckets: %v → %v", before, after)
	}
	// 401 says how to authenticate.
	resp, err := http.Get(h.base + "/v1/endpoints")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("401 without WWW-Authenticate: %d %v", resp.StatusCode, resp.Header)
	}
	// Another scheme than Bearer is refused, not ignored.
	req, _ := http.NewRequest("GET", h.base+"/v1/endpoints", nil)
	req.SetBasicAuth("admin", "admin")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("Basic credentials: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// Readers read everything; writers (a token, an API key) write.
	for _, r := range everyRoute(e.ID) {
		if r.write {
			continue
		}
		if _, err := h.client(h.reader).Do(ctx, r.method, r.path, nil, nil, 0); err != nil {
			t.Errorf("%s %s as a reader: %v", r.method, r.path, err)
		}
	}
	if _, err := h.client(writerKey).Do(ctx, "POST", "/v1/endpoints/"+e.ID+"/pause", nil, nil, 0); err != nil {
		t.Fatalf("pause with the writer API key: %v", err)
	}
	if _, err := h.client(h.writer).Do(ctx, "POST", "/v1/endpoints/"+e.ID+"/resume", nil, nil, 0); err != nil {
		t.Fatalf("resume with the writer token: %v", err)
	}
}

// TestAnonymous: without authentication configured every request is let
// in (the command allows that only on loopback); with anonymous grants
// (which cannot hold admin), a request without a credential is 401.
func TestAnonymous(t *testing.T) {
	open := start(t, func(c *admin.Config) { c.Auth = nil })
	ctx := testCtx(t)
	if _, err := open.client("").Do(ctx, "POST", "/v1/filters", nil, map[string]any{"name": "f", "tables": []string{"*"}}, 0); err != nil {
		t.Fatalf("no authentication configured: %v", err)
	}
	g, err := auth.ParseGrants([]byte(`{"tables": {"public.prices": ["*"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	authn, err := auth.New(auth.Config{AnonymousGrants: g})
	if err != nil {
		t.Fatal(err)
	}
	public := start(t, func(c *admin.Config) { c.Auth = authn })
	if ae := public.failAs(ctx, "", "GET", "/v1/endpoints", nil, nil, 0); ae.Status != 401 {
		t.Fatalf("anonymous grants without admin: %d, want 401", ae.Status)
	}
}
