package admin_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestRetentionGapsShown: the gaps webhook delivery records on an endpoint
// (the stream discarded events before it read them, or before its start)
// are shown on it, as the OpenAPI document describes them; a client
// sending them back changes nothing, and a new endpoint has none.
func TestRetentionGapsShown(t *testing.T) {
	h := start(t, nil)
	ctx := testCtx(t)
	h.call(ctx, "POST", "/v1/filters", nil, map[string]any{"name": "orders", "tables": []string{"public.orders"}}, 0, nil)
	var e map[string]any
	h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{
		"name": "billing", "type": "webhook", "filters": []string{"orders"},
		"webhook":        map[string]any{"url": "https://billing.example.com/hook"},
		"retention_gaps": map[string]any{"count": 5, "messages": 9, "last": map[string]any{"first_seq": 1, "last_seq": 9, "messages": 9, "next_seq": 10, "stored_before": "2026-01-01T00:00:00Z", "found_at": "2026-01-01T00:00:00Z"}},
	}, 0, &e)
	if _, ok := e["retention_gaps"]; ok {
		t.Fatalf("a new endpoint shows retention gaps: %v", e["retention_gaps"])
	}
	id := e["id"].(string)

	after := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	before := after.Add(time.Hour)
	found := before.Add(time.Minute)
	if _, err := h.store.RecordRetentionGap(ctx, id, endpoint.RetentionGap{FirstSeq: 10, LastSeq: 19, Messages: 10, NextSeq: 25, StoredBefore: before, FoundAt: found, AtStart: true}); err != nil {
		t.Fatal(err)
	}
	var atStart struct {
		RetentionGaps struct {
			Last map[string]any `json:"last"`
		} `json:"retention_gaps"`
	}
	if err := json.Unmarshal(h.call(ctx, "GET", "/v1/endpoints/"+id, nil, nil, 0, nil).Body, &atStart); err != nil {
		t.Fatal(err)
	}
	if atStart.RetentionGaps.Last["at_start"] != true {
		t.Fatalf("a gap at the start shown as %v", atStart.RetentionGaps.Last)
	}
	if _, err := h.store.RecordRetentionGap(ctx, id, endpoint.RetentionGap{FirstSeq: 100, LastSeq: 149, Messages: 50, NextSeq: 150, StoredAfter: &after, StoredBefore: before, FoundAt: found}); err != nil {
		t.Fatal(err)
	}
	resp := h.call(ctx, "GET", "/v1/endpoints/"+id, nil, nil, 0, nil)
	var got struct {
		RetentionGaps *endpoint.RetentionGaps `json:"retention_gaps"`
	}
	if err := json.Unmarshal(resp.Body, &got); err != nil {
		t.Fatal(err)
	}
	g := got.RetentionGaps
	if g == nil || g.Count != 2 || g.Messages != 60 || g.Last.FirstSeq != 100 || g.Last.LastSeq != 149 || g.Last.Messages != 50 || g.Last.NextSeq != 150 ||
		g.Last.StoredAfter == nil || !g.Last.StoredAfter.Equal(after) || !g.Last.StoredBefore.Equal(before) || !g.Last.FoundAt.Equal(found) {
		t.Fatalf("retention gaps shown: %s", resp.Body)
	}

	// What GET gave, sent back with other gaps: they are the server's.
	var whole map[string]any
	_ = json.Unmarshal(resp.Body, &whole)
	whole["retention_gaps"].(map[string]any)["count"] = 1
	whole["webhook"].(map[string]any)["timeout"] = "30s"
	h.call(ctx, "PUT", "/v1/endpoints/"+id, nil, whole, resp.Revision(), nil)
	h.call(ctx, "PATCH", "/v1/endpoints/"+id, nil, map[string]any{"retention_gaps": nil, "webhook": map[string]any{"batch": 5}}, 0, nil)
	cur, err := h.store.GetEndpoint(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if cur.RetentionGaps == nil || cur.RetentionGaps.Count != 2 || cur.Webhook.Batch != 5 || cur.Webhook.Timeout.D() != 30*time.Second {
		t.Fatalf("after PUT and PATCH: gaps %+v, webhook %+v", cur.RetentionGaps, cur.Webhook)
	}
}
