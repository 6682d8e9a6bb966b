package admin_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/admin"
	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestEveryOperation calls every operation of the API, checking each
// answer, and against the OpenAPI document every request and answer; at
// the end, every operation of the document has been answered with
// success at least once.
func TestEveryOperation(t *testing.T) {
	h := start(t, nil)
	ctx := testCtx(t)

	// Filters and rules first, so that endpoints can link them.
	var f map[string]any
	resp := h.call(ctx, "POST", "/v1/filters", nil, map[string]any{
		"name": "paid-orders", "tables": []string{"public.orders"}, "operations": []string{"update", "create"},
		"where": map[string]any{"status": map[string]any{"eq": "paid"}}, "select": []string{"id", "status"},
	}, 0, &f)
	if resp.Status != 201 || resp.Header.Get("Location") != "/v1/filters/paid-orders" || resp.Revision() == 0 {
		t.Fatalf("create filter: %d %v", resp.Status, resp.Header)
	}
	if ops := f["operations"].([]any); len(ops) != 2 || ops[0] != "create" || ops[1] != "update" {
		t.Fatalf("operations not in canonical order: %v", ops)
	}
	h.call(ctx, "POST", "/v1/filters", nil, map[string]any{"name": "everything", "tables": []string{"*"}}, 0, nil)
	var r map[string]any
	h.call(ctx, "POST", "/v1/rules", nil, map[string]any{"name": "order-paid", "table": "public.orders", "changed": []string{"status"},
		"new": map[string]any{"status": map[string]any{"eq": "paid"}}}, 0, &r)
	if ops := r["operations"].([]any); len(ops) != 1 || ops[0] != "update" {
		t.Fatalf("a rule on changed columns defaults to updates: %v", ops)
	}

	// An endpoint: created with its whole secret, read back masked.
	var e map[string]any
	resp = h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{
		"name": "billing", "type": "webhook", "filters": []string{"paid-orders"},
		"webhook": map[string]any{"url": "https://billing.example.com/hook", "headers": map[string]string{"Authorization": "Bearer xyz"}},
	}, 0, &e)
	id := e["id"].(string)
	secret := e["webhook"].(map[string]any)["secret"].(string)
	if resp.Status != 201 || resp.Header.Get("Location") != "/v1/endpoints/"+id || !strings.HasPrefix(secret, "whsec_") || len(endpoint.SecretKey(secret)) != 32 {
		t.Fatalf("create endpoint: %d %v %v", resp.Status, resp.Header, e)
	}
	var got endpointJSON
	resp = h.call(ctx, "GET", "/v1/endpoints/"+id, nil, nil, 0, &got)
	if bytes.Contains(resp.Body, []byte(secret)) || !bytes.Contains(resp.Body, []byte(endpoint.MaskSecret(secret))) {
		t.Fatalf("GET shows the secret: %s", resp.Body)
	}
	// So is a credential header, the URL's check sends user:password to.
	if bytes.Contains(resp.Body, []byte("Bearer xyz")) || !bytes.Contains(resp.Body, []byte(`"Authorization":"`+endpoint.MaskHeader("Bearer xyz")+`"`)) {
		t.Fatalf("GET shows the Authorization header: %s", resp.Body)
	}
	rev := resp.Revision()
	if rev != got.Revision || got.State != "active" || !slices.Equal(got.Filters, []string{"paid-orders"}) {
		t.Fatalf("got %+v (ETag revision %d)", got, rev)
	}

	// PUT what GET gave, changed: the masked secret keeps the secret.
	var whole map[string]any
	_ = json.Unmarshal(resp.Body, &whole)
	whole["webhook"].(map[string]any)["timeout"] = "30s"
	resp = h.call(ctx, "PUT", "/v1/endpoints/"+id, nil, whole, rev, &got)
	if resp.Revision() <= rev || bytes.Contains(resp.Body, []byte(secret)) {
		t.Fatalf("PUT: %s", resp.Body)
	}
	if cur, _ := h.store.GetEndpoint(ctx, id); cur.Webhook.Secret != secret || cur.Webhook.Timeout.D().Seconds() != 30 || cur.Webhook.Headers["Authorization"] != "Bearer xyz" {
		t.Fatalf("after PUT: %+v", cur.Webhook)
	}
	// PATCH: a merge patch; a new secret is shown whole, once.
	newSecret := endpoint.GenerateSecret()
	resp = h.call(ctx, "PATCH", "/v1/endpoints/"+id, nil, map[string]any{"webhook": map[string]any{"batch": 10, "secret": newSecret, "headers": map[string]any{"Authorization": nil, "X-Team": "billing"}}}, 0, &e)
	wh := e["webhook"].(map[string]any)
	if wh["secret"] != newSecret || wh["batch"].(float64) != 10 || wh["timeout"] != "30s" {
		t.Fatalf("PATCH: %s", resp.Body)
	}
	if hd := wh["headers"].(map[string]any); len(hd) != 1 || hd["X-Team"] != "billing" {
		t.Fatalf("PATCH headers: %v", hd)
	}

	h.call(ctx, "POST", "/v1/endpoints/"+id+"/pause", nil, nil, 0, &got)
	if got.State != "paused" {
		t.Fatalf("pause: %+v", got)
	}
	h.call(ctx, "POST", "/v1/endpoints/"+id+"/resume", nil, nil, 0, &got)
	if got.State != "active" {
		t.Fatalf("resume: %+v", got)
	}

	// Links, both ways.
	h.call(ctx, "PUT", "/v1/endpoints/"+id+"/rules/order-paid", nil, nil, 0, &got)
	h.call(ctx, "PUT", "/v1/endpoints/"+id+"/filters/everything", nil, nil, 0, &got)
	if !slices.Equal(got.Filters, []string{"everything", "paid-orders"}) || !slices.Equal(got.Rules, []string{"order-paid"}) {
		t.Fatalf("links: %+v", got)
	}
	var items struct {
		Items []map[string]any `json:"items"`
	}
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/filters", nil, nil, 0, &items)
	if len(items.Items) != 2 || items.Items[0]["name"] != "everything" {
		t.Fatalf("endpoint filters: %v", items)
	}
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/rules", nil, nil, 0, &items)
	if len(items.Items) != 1 || items.Items[0]["name"] != "order-paid" {
		t.Fatalf("endpoint rules: %v", items)
	}
	var eps struct {
		Items []endpointJSON `json:"items"`
	}
	h.call(ctx, "GET", "/v1/filters/paid-orders/endpoints", nil, nil, 0, &eps)
	if len(eps.Items) != 1 || eps.Items[0].ID != id {
		t.Fatalf("filter endpoints: %+v", eps)
	}
	h.call(ctx, "GET", "/v1/rules/order-paid/endpoints", nil, nil, 0, &eps)
	if len(eps.Items) != 1 || eps.Items[0].ID != id {
		t.Fatalf("rule endpoints: %+v", eps)
	}
	h.call(ctx, "DELETE", "/v1/endpoints/"+id+"/filters/everything", nil, nil, 0, &got)
	if ae := h.fail(ctx, "DELETE", "/v1/endpoints/"+id+"/filters/everything", nil, nil, 0); ae.Status != 404 {
		t.Fatalf("unlink what is not linked: %v", ae)
	}
	if ae := h.fail(ctx, "PUT", "/v1/endpoints/"+id+"/filters/nope", nil, nil, 0); ae.Status != 404 {
		t.Fatalf("link a filter that does not exist: %v", ae)
	}

	// A WebSocket endpoint, and the listings.
	var ws endpointJSON
	h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "live-orders", "type": "websocket", "filters": []string{"everything"}}, 0, &ws)
	var page pageJSON
	h.call(ctx, "GET", "/v1/endpoints", url.Values{"order_by": {"name"}}, nil, 0, &page)
	if page.Total != 2 || page.Items[0].Name != "billing" || page.Items[1].Name != "live-orders" || page.NextCursor != nil || page.PrevCursor != nil {
		t.Fatalf("list: %+v", page)
	}
	h.call(ctx, "GET", "/v1/endpoints", url.Values{"type": {"websocket"}}, nil, 0, &page)
	if page.Total != 1 || page.Items[0].ID != ws.ID {
		t.Fatalf("list websocket: %+v", page)
	}
	h.call(ctx, "GET", "/v1/endpoints", url.Values{"filter": {"paid-orders"}, "state": {"active"}, "name_prefix": {"bill"}}, nil, 0, &page)
	if page.Total != 1 || page.Items[0].ID != id {
		t.Fatalf("list by filter: %+v", page)
	}
	var fpage struct {
		Items []map[string]any `json:"items"`
		Total int              `json:"total"`
	}
	h.call(ctx, "GET", "/v1/filters", url.Values{"order": {"desc"}, "order_by": {"name"}}, nil, 0, &fpage)
	if fpage.Total != 2 || fpage.Items[0]["name"] != "paid-orders" {
		t.Fatalf("list filters: %+v", fpage)
	}
	h.call(ctx, "GET", "/v1/rules", nil, nil, 0, &fpage)
	if fpage.Total != 1 {
		t.Fatalf("list rules: %+v", fpage)
	}

	// Filters and rules: get, replace, patch.
	resp = h.call(ctx, "GET", "/v1/filters/paid-orders", nil, nil, 0, &f)
	f["select"] = []string{"id"}
	resp = h.call(ctx, "PUT", "/v1/filters/paid-orders", nil, f, resp.Revision(), &f)
	h.call(ctx, "PATCH", "/v1/filters/paid-orders", nil, map[string]any{"description": "orders once paid"}, resp.Revision(), &f)
	if f["description"] != "orders once paid" || len(f["select"].([]any)) != 1 {
		t.Fatalf("filter after PUT and PATCH: %v", f)
	}
	resp = h.call(ctx, "GET", "/v1/rules/order-paid", nil, nil, 0, &r)
	r["description"] = "an order is paid"
	h.call(ctx, "PUT", "/v1/rules/order-paid", nil, r, resp.Revision(), &r)
	h.call(ctx, "PATCH", "/v1/rules/order-paid", nil, map[string]any{"select": []string{"id"}}, 0, &r)
	if r["description"] != "an order is paid" || len(r["select"].([]any)) != 1 {
		t.Fatalf("rule after PUT and PATCH: %v", r)
	}

	// Deleting what is linked: refused, naming the endpoints; forced: done.
	ae := h.fail(ctx, "DELETE", "/v1/filters/everything", nil, nil, 0)
	if ae.Status != 409 || ae.Code != "linked" || len(ae.Endpoints) != 1 || ae.Endpoints[0].Name != "live-orders" || !strings.Contains(ae.Message, "live-orders") {
		t.Fatalf("delete a linked filter: %+v", ae)
	}
	h.call(ctx, "DELETE", "/v1/filters/everything", url.Values{"force": {"true"}}, nil, 0, nil)
	h.call(ctx, "GET", "/v1/endpoints/"+ws.ID, nil, nil, 0, &got)
	if len(got.Filters) != 0 {
		t.Fatalf("forced delete left the link: %+v", got)
	}
	h.call(ctx, "DELETE", "/v1/endpoints/"+id+"/rules/order-paid", nil, nil, 0, nil)
	h.call(ctx, "DELETE", "/v1/rules/order-paid", nil, nil, 0, nil)

	// Dead letters: none yet.
	var dls struct {
		Items []map[string]any `json:"items"`
	}
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters", nil, nil, 0, &dls)
	var replayed struct {
		Replayed int `json:"replayed"`
	}
	h.call(ctx, "POST", "/v1/endpoints/"+id+"/dead-letters/replay", nil, map[string]any{}, 0, &replayed)
	if len(dls.Items) != 0 || replayed.Replayed != 0 {
		t.Fatalf("dead letters of a new endpoint: %v, replayed %d", dls.Items, replayed.Replayed)
	}
	// One, read by its seq, then replayed.
	ack, err := h.js.Publish(ctx, h.dl.Subject(id), []byte(`{"id":"E1","op":"create","data":{"id":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	var dl map[string]any
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters/"+strconv.FormatUint(ack.Sequence, 10), nil, nil, 0, &dl)
	h.call(ctx, "POST", "/v1/endpoints/"+id+"/dead-letters/replay", nil, map[string]any{}, 0, &replayed)
	if dl["event"].(map[string]any)["id"] != "E1" || replayed.Replayed != 1 {
		t.Fatalf("a dead letter: %v, replayed %d", dl, replayed.Replayed)
	}

	// Deleting endpoints, one and many.
	h.call(ctx, "DELETE", "/v1/endpoints/"+ws.ID, nil, nil, 0, nil)
	var del struct {
		Deleted  []string `json:"deleted"`
		NotFound []string `json:"not_found"`
	}
	h.call(ctx, "POST", "/v1/endpoints/delete", nil, map[string]any{"ids": []string{id, ws.ID}}, 0, &del)
	if !slices.Equal(del.Deleted, []string{id}) || !slices.Equal(del.NotFound, []string{ws.ID}) {
		t.Fatalf("delete many: %+v", del)
	}
	if ae := h.fail(ctx, "GET", "/v1/endpoints/"+id, nil, nil, 0); ae.Status != 404 {
		t.Fatalf("deleted endpoint: %v", ae)
	}

	resp, err = (&admin.Client{BaseURL: h.base, HTTP: &http.Client{Transport: h.check}}).Do(ctx, "GET", "/v1/openapi.json", nil, nil, 0)
	if err != nil || !bytes.Equal(resp.Body, admin.OpenAPI()) || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("openapi.json: %v", err)
	}

	if missing := h.check.unexercised(); len(missing) > 0 {
		t.Errorf("operations of the document never answered with success: %v", missing)
	}
	if n := requests(t, h, "POST /v1/endpoints", "201"); n != 2 {
		t.Errorf("tablecast_admin_requests_total{route=\"POST /v1/endpoints\",status=\"201\"} = %v, want 2", n)
	}
	if n := requests(t, h, "DELETE /v1/filters/{name}", "409"); n != 1 {
		t.Errorf("tablecast_admin_requests_total{route=\"DELETE /v1/filters/{name}\",status=\"409\"} = %v, want 1", n)
	}
}

// requests reads tablecast_admin_requests_total for a route and status.
func requests(t *testing.T, h *harness, route, status string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tablecast_admin_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["route"] == route && labels["status"] == status {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
