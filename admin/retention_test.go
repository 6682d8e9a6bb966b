package admin_test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/admin"
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

// TestCreateEndpointStartDiscarded: the answer to the creation of a webhook
// endpoint whose start the stream has discarded already says so, as the
// OpenAPI document describes it, and the endpoint is created all the
// same; a start within what the stream keeps, "now", or a WebSocket
// endpoint gets no such word, and a GET never shows it.
func TestCreateEndpointStartDiscarded(t *testing.T) {
	var js jetstream.JetStream
	h := start(t, func(cfg *admin.Config) {
		cfg.StreamState = func(ctx context.Context) (jetstream.StreamState, error) {
			str, err := js.Stream(ctx, "EVENTS")
			if err != nil {
				return jetstream.StreamState{}, err
			}
			return str.CachedInfo().State, nil
		}
	})
	js = h.js
	ctx := testCtx(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"events.>"}, MaxMsgs: 10}); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Second)
	for i := range 30 {
		if _, err := js.Publish(ctx, "events.x", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	within := time.Now().Add(time.Second) // after the first message kept was stored
	h.call(ctx, "POST", "/v1/filters", nil, map[string]any{"name": "orders", "tables": []string{"public.orders"}}, 0, nil)
	for _, c := range []struct {
		name  string
		start any
		want  string // start_discarded; "" none
	}{
		{"byseq", map[string]any{"from": map[string]any{"seq": 5}}, `{"first_seq":5,"last_seq":20,"messages":16,"stream_first_seq":21}`},
		{"bytime", map[string]any{"from": map[string]any{"time": before.UTC().Format(time.RFC3339Nano)}}, `{"first_seq":1,"last_seq":20,"messages":20,"stream_first_seq":21,"upper_bound":true}`},
		{"kept", map[string]any{"from": map[string]any{"seq": 25}}, ""},
		{"within", map[string]any{"from": map[string]any{"time": within.UTC().Format(time.RFC3339Nano)}}, ""},
		{"now", map[string]any{"from": "now"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{
				"name": c.name, "type": "webhook", "filters": []string{"orders"},
				"webhook": map[string]any{"url": "https://billing.example.com/hook", "start": c.start},
			}, 0, nil)
			var got struct {
				ID             string          `json:"id"`
				StartDiscarded json.RawMessage `json:"start_discarded"`
			}
			if err := json.Unmarshal(resp.Body, &got); err != nil {
				t.Fatal(err)
			}
			if string(got.StartDiscarded) != c.want {
				t.Fatalf("start_discarded %s, want %q", got.StartDiscarded, c.want)
			}
			if _, err := h.store.GetEndpoint(ctx, got.ID); err != nil {
				t.Fatalf("the endpoint was not created: %v", err)
			}
			again := h.call(ctx, "GET", "/v1/endpoints/"+got.ID, nil, nil, 0, nil)
			if strings.Contains(string(again.Body), "start_discarded") {
				t.Fatalf("GET shows start_discarded: %s", again.Body)
			}
			// The creation's answer sent back as it is changes nothing.
			var whole map[string]any
			_ = json.Unmarshal(resp.Body, &whole)
			h.call(ctx, "PUT", "/v1/endpoints/"+got.ID, nil, whole, again.Revision(), nil)
		})
	}
	resp := h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "feed", "type": "websocket"}, 0, nil)
	if strings.Contains(string(resp.Body), "start_discarded") {
		t.Fatalf("a WebSocket endpoint's creation answered %s", resp.Body)
	}
}
