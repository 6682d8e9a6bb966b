package admin_test

import (
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/admin"
	"github.com/tablecast/tablecast/webhook"
)

// TestDeadLetters lists an endpoint's dead letters page by page and
// replays them: they leave the dead letters for the endpoint's replay
// subject, and a dead letter of another endpoint cannot be replayed here.
func TestDeadLetters(t *testing.T) {
	h := start(t, nil)
	ctx := testCtx(t)
	var e, other map[string]any
	h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "hook", "type": "webhook", "webhook": map[string]any{"url": "https://example.com/h"}}, 0, &e)
	h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "other", "type": "webhook", "webhook": map[string]any{"url": "https://example.com/o"}}, 0, &other)
	id, otherID := e["id"].(string), other["id"].(string)
	put := func(endpointID, eventID string) uint64 {
		msg := &nats.Msg{Subject: h.dl.Subject(endpointID), Data: []byte(`{"id":"` + eventID + `","op":"create","data":{"id":1}}`), Header: nats.Header{}}
		msg.Header.Set(webhook.HeaderEventID, eventID)
		msg.Header.Set(webhook.HeaderEndpoint, "hook")
		msg.Header.Set(webhook.HeaderReason, "answered 503 Service Unavailable")
		msg.Header.Set(webhook.HeaderAttempts, "7")
		msg.Header.Set(webhook.HeaderStreamSeq, "42")
		ack, err := h.js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	seqs := []uint64{put(id, "E1"), put(otherID, "X1"), put(id, "E2"), put(id, "E3")}

	type page struct {
		Items []struct {
			Seq      uint64          `json:"seq"`
			EventID  string          `json:"event_id"`
			Reason   string          `json:"reason"`
			Attempts int             `json:"attempts"`
			Event    json.RawMessage `json:"event"`
		} `json:"items"`
		Next string `json:"next"`
	}
	var p1, p2 page
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters", url.Values{"limit": {"2"}}, nil, 0, &p1)
	if len(p1.Items) != 2 || p1.Items[0].EventID != "E1" || p1.Items[1].EventID != "E2" || p1.Next != strconv.FormatUint(seqs[2], 10) ||
		p1.Items[0].Attempts != 7 || p1.Items[0].Reason != "answered 503 Service Unavailable" || string(p1.Items[0].Event) != `{"id":"E1","op":"create","data":{"id":1}}` {
		t.Fatalf("first page: %+v", p1)
	}
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters", url.Values{"limit": {"2"}, "after": {p1.Next}}, nil, 0, &p2)
	if len(p2.Items) != 1 || p2.Items[0].EventID != "E3" || p2.Next != "" {
		t.Fatalf("second page: %+v", p2)
	}
	if ae := h.fail(ctx, "POST", "/v1/endpoints/"+id+"/dead-letters/replay", nil, map[string]any{"seqs": []uint64{seqs[1]}}, 0); ae.Status != 400 {
		t.Fatalf("replay another endpoint's dead letter: %+v", ae)
	}
	if ae := h.fail(ctx, "GET", "/v1/endpoints/01J0000000000000000000000/dead-letters", nil, nil, 0); ae.Status != 404 {
		t.Fatalf("dead letters of no endpoint: %+v", ae)
	}
	if ae := h.failAs(ctx, h.reader, "POST", "/v1/endpoints/"+id+"/dead-letters/replay", nil, map[string]any{}, 0); ae.Status != 403 {
		t.Fatalf("replay with read access: %+v", ae)
	}

	var r struct {
		Replayed int `json:"replayed"`
	}
	h.call(ctx, "POST", "/v1/endpoints/"+id+"/dead-letters/replay", nil, map[string]any{"seqs": []uint64{seqs[0]}}, 0, &r)
	if r.Replayed != 1 {
		t.Fatalf("replayed %d", r.Replayed)
	}
	h.call(ctx, "POST", "/v1/endpoints/"+id+"/dead-letters/replay", nil, map[string]any{}, 0, &r)
	if r.Replayed != 2 {
		t.Fatalf("replayed %d, want the other two", r.Replayed)
	}
	var left page
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters", nil, nil, 0, &left)
	if len(left.Items) != 0 {
		t.Fatalf("left after replay: %+v", left)
	}
	str, err := h.js.Stream(ctx, h.dl.Stream())
	if err != nil {
		t.Fatal(err)
	}
	var queued []string
	for seq := uint64(1); ; {
		m, err := str.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(h.dl.ReplaySubject(id)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		queued = append(queued, m.Header.Get(webhook.HeaderEventID))
		seq = m.Sequence + 1
	}
	if len(queued) != 3 || queued[0] != "E1" || queued[1] != "E2" || queued[2] != "E3" {
		t.Fatalf("queued for replay: %v", queued)
	}
	var still page
	h.call(ctx, "GET", "/v1/endpoints/"+otherID+"/dead-letters", nil, nil, 0, &still)
	if len(still.Items) != 1 {
		t.Fatalf("the other endpoint's dead letters: %+v", still)
	}

	off := start(t, func(c *admin.Config) { c.DeadLetters = nil })
	var oe map[string]any
	off.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "x", "type": "webhook", "webhook": map[string]any{"url": "https://example.com/x"}}, 0, &oe)
	if ae := off.fail(ctx, "GET", "/v1/endpoints/"+oe["id"].(string)+"/dead-letters", nil, nil, 0); ae.Status != 503 {
		t.Fatalf("without webhooks: %+v", ae)
	}
}
