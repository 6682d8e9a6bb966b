package admin_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/admin"
	"github.com/tablecast/tablecast/stream"
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
	// A misspelt or repeated parameter is refused, never ignored (which
	// would list from the first dead letter).
	// As every bad query parameter is, it is bad_request (the contract's
	// errors), as in the other listings.
	for _, q := range []url.Values{{"afetr": {p1.Next}}, {"cursor": {"99999999999999999999"}}, {"after": {p1.Next, "0"}}, {"limit": {"1", "1000"}},
		{"after": {"abc"}}, {"limit": {"0"}}} {
		if ae := h.fail(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters", q, nil, 0); ae.Status != 400 || ae.Code != "bad_request" || len(ae.Fields) == 0 {
			t.Errorf("dead letters listed with %v: %+v, want 400 bad_request naming the parameter", q, ae)
		}
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

// TestDeadLetterWholeBody: one dead letter is read by its seq with its
// event whole, also when the event was too large for a NATS message and
// its body is held in an object (the list shows only the claim of it, and
// says so per item); a seq that is not one of the endpoint's dead letters
// is 404, as is one whose object is gone.
func TestDeadLetterWholeBody(t *testing.T) {
	h := start(t, nil)
	ctx := testCtx(t)
	var e, other map[string]any
	h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "hook", "type": "webhook", "webhook": map[string]any{"url": "https://example.com/h"}}, 0, &e)
	h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "other", "type": "webhook", "webhook": map[string]any{"url": "https://example.com/o"}}, 0, &other)
	id, otherID := e["id"].(string), other["id"].(string)
	publish := func(endpointID, eventID string, data []byte, object string) uint64 {
		msg := &nats.Msg{Subject: h.dl.Subject(endpointID), Data: data, Header: nats.Header{}}
		msg.Header.Set(webhook.HeaderEndpointID, endpointID)
		msg.Header.Set(webhook.HeaderEventID, eventID)
		msg.Header.Set(webhook.HeaderEndpoint, "hook")
		msg.Header.Set(webhook.HeaderReason, "answered 503 Service Unavailable")
		msg.Header.Set(webhook.HeaderAttempts, "3")
		if object != "" {
			msg.Header.Set(webhook.HeaderBodyObject, object)
		}
		ack, err := h.js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	small := []byte(`{"id":"S1","op":"create","data":{"id":1}}`)
	smallSeq := publish(id, "S1", small, "")
	// As the webhook worker stores an event larger than a NATS message:
	// the body in an object, the record holding its claim.
	big := []byte(`{"id":"B1","op":"create","data":{"id":2,"pad":"` + strings.Repeat("x", int(h.nats.NC.MaxPayload())+1000) + `"}}`)
	ps, err := stream.OpenPayloadStore(ctx, h.js, stream.PayloadStoreConfig{Bucket: h.dl.BodyBucket(), MaxPayload: h.nats.NC.MaxPayload()})
	if err != nil {
		t.Fatal(err)
	}
	const object = "webhook-test-B1"
	if err := ps.Put(ctx, object, big); err != nil {
		t.Fatal(err)
	}
	claim := append(stream.AppendClaim([]byte(`{"claim":`), stream.Claim{Bucket: h.dl.BodyBucket(), Object: object, Size: int64(len(big))}), '}')
	bigSeq := publish(id, "B1", claim, object)
	otherSeq := publish(otherID, "X1", small, "")

	type deadLetter struct {
		Seq        uint64          `json:"seq"`
		EventID    string          `json:"event_id"`
		Attempts   int             `json:"attempts"`
		BodyObject *bool           `json:"body_object"`
		Event      json.RawMessage `json:"event"`
	}
	var page struct {
		Items []deadLetter `json:"items"`
	}
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters", nil, nil, 0, &page)
	if len(page.Items) != 2 || page.Items[0].BodyObject == nil || *page.Items[0].BodyObject || page.Items[1].BodyObject == nil || !*page.Items[1].BodyObject {
		t.Fatalf("list: %+v; want body_object false, then true", page.Items)
	}
	if c, ok, err := stream.ParseClaim(page.Items[1].Event); err != nil || !ok || c.Object != object {
		t.Fatalf("the list's event of a dead letter held in an object is %.200s; want its claim", page.Items[1].Event)
	}

	var one deadLetter
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters/"+strconv.FormatUint(bigSeq, 10), nil, nil, 0, &one)
	if one.Seq != bigSeq || one.EventID != "B1" || one.Attempts != 3 || one.BodyObject == nil || !*one.BodyObject || !bytes.Equal(one.Event, big) {
		t.Fatalf("dead letter %d: seq %d, event %s, attempts %d, body_object %v, event of %d bytes; want B1's whole event of %d bytes",
			bigSeq, one.Seq, one.EventID, one.Attempts, one.BodyObject, len(one.Event), len(big))
	}
	// Read access is enough.
	if _, err := h.client(h.reader).Do(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters/"+strconv.FormatUint(smallSeq, 10), nil, nil, 0); err != nil {
		t.Fatalf("read one dead letter with read access: %v", err)
	}
	h.call(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters/"+strconv.FormatUint(smallSeq, 10), nil, nil, 0, &one)
	if one.EventID != "S1" || one.BodyObject == nil || *one.BodyObject || !bytes.Equal(one.Event, small) {
		t.Fatalf("small dead letter: %+v", one)
	}

	for name, path := range map[string]string{
		"another endpoint's":    "/v1/endpoints/" + id + "/dead-letters/" + strconv.FormatUint(otherSeq, 10),
		"no record":             "/v1/endpoints/" + id + "/dead-letters/" + strconv.FormatUint(otherSeq+100, 10),
		"not a seq":             "/v1/endpoints/" + id + "/dead-letters/first",
		"seq 0":                 "/v1/endpoints/" + id + "/dead-letters/0",
		"an unknown endpoint's": "/v1/endpoints/01J0000000000000000000000/dead-letters/" + strconv.FormatUint(smallSeq, 10),
	} {
		if ae := h.fail(ctx, "GET", path, nil, nil, 0); ae.Status != 404 || ae.Code != "not_found" {
			t.Errorf("%s: %+v; want 404 not_found", name, ae)
		}
	}
	if ae := h.failAs(ctx, h.noAdmin, "GET", "/v1/endpoints/"+id+"/dead-letters/"+strconv.FormatUint(smallSeq, 10), nil, nil, 0); ae.Status != 403 {
		t.Errorf("without the admin grant: %+v", ae)
	}

	if err := ps.Delete(ctx, object); err != nil {
		t.Fatal(err)
	}
	if ae := h.fail(ctx, "GET", "/v1/endpoints/"+id+"/dead-letters/"+strconv.FormatUint(bigSeq, 10), nil, nil, 0); ae.Status != 404 || !strings.Contains(ae.Message, "cannot be read") {
		t.Errorf("a dead letter whose object is gone: %+v; want 404 saying its body cannot be read", ae)
	}
}
