package wsgate

// End-to-end tests of the WebSocket protocol contract (DESIGN.md, "WebSocket
// protocol — contract (v1)"): a real gateway on a real NATS, clients using
// github.com/coder/websocket, and, where a test needs frames that library
// will not write (fragments, unmasked or reserved-bit frames, half a frame),
// a raw TCP client that does the handshake itself.
//
// Events come from NATS asynchronously, so "these and only these arrived" is
// decided with a marker rather than a quiet period: every client that checks
// what it received holds a subscription "mark" to read events of the marker
// row only. A feed handles its table's events one at a time in stream order
// and queues every frame of an event before handling the next, and a
// connection writes its frames in the order queued; so once the marker
// event (published last) arrives, every frame of the events before it has
// arrived too. No other subscription asks for read events of the marker
// row, so nothing of the marker is left in flight.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// e2eMarkID is the id of the marker row; no other row of these tests has it.
const e2eMarkID = 1000000

// e2eDial connects a client for t (which may be a subtest of the test that
// started the gateway, so that a subtest's failure stays in the subtest).
// hdr holds header name, value pairs.
func e2eDial(t testing.TB, e *testEnv, path string, hdr ...string) *client {
	t.Helper()
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+e.addr+path, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	ws.SetReadLimit(64 << 20)
	t.Cleanup(func() { _ = ws.CloseNow() })
	return &client{t: t, ws: ws}
}

// e2eOrder is a row of public.orders; nil values are SQL NULL.
func e2eOrder(id int, status, total, paid, created, tenant, notes any) map[string]any {
	return map[string]any{"id": id, "status": status, "total": total, "paid": paid,
		"created": created, "tenant": tenant, "notes": notes}
}

// e2eMarkSub subscribes c to the marker.
func e2eMarkSub(c *client) {
	c.t.Helper()
	c.subscribe(map[string]any{"id": "mark", "table": "public.orders", "events": []string{schema.OpRead},
		"where": map[string]any{"id": map[string]any{"eq": e2eMarkID}}})
}

// e2eFlush publishes the marker row and returns, for each client (each with
// a mark subscription), the frames it received before the marker's event.
func (e *testEnv) e2eFlush(clients ...*client) [][]frame {
	e.t.Helper()
	seq := e.publish(schema.OpRead, e2eOrder(e2eMarkID, "marker", "1", true, "2026-01-01T00:00:00Z", "marker", "marker"))
	out := make([][]frame, len(clients))
	for i, c := range clients {
		out[i] = e2eUntilMark(c, seq)
	}
	return out
}

// e2eUntilMark reads c's frames up to the mark subscription's event seq.
func e2eUntilMark(c *client, seq uint64) []frame {
	c.t.Helper()
	var got []frame
	for {
		f := c.read(10 * time.Second)
		if f.Type == "event" && f.ID == "mark" {
			if f.Seq != seq {
				c.t.Fatalf("marker event seq %d, want %d", f.Seq, seq)
			}
			return got
		}
		if f.Type == "event" && e2eRowID(f) == e2eMarkID {
			c.t.Fatalf("subscription %q received the marker row: %s", f.ID, f.raw)
		}
		got = append(got, f)
	}
}

// e2eRowID returns the id of an event frame's row (from key, data or old),
// -1 if it has none (truncate).
func e2eRowID(f frame) int {
	ev := f.event()
	for _, k := range []string{"key", "data", "old"} {
		if m, ok := ev[k].(map[string]any); ok {
			if v, ok := m["id"].(float64); ok {
				return int(v)
			}
		}
	}
	return -1
}

// e2eEventsByID groups event frames by subscription id, failing on any
// other frame.
func e2eEventsByID(t testing.TB, frames []frame) map[string][]frame {
	t.Helper()
	out := map[string][]frame{}
	for _, f := range frames {
		if f.Type != "event" {
			t.Fatalf("unexpected frame %s", f.raw)
		}
		out[f.ID] = append(out[f.ID], f)
	}
	return out
}

func e2eIDs(frames []frame) []int {
	ids := []int{}
	for _, f := range frames {
		ids = append(ids, e2eRowID(f))
	}
	return ids
}

// e2eKeys returns the sorted member names of the object m[name], or nil if
// m has no such object.
func e2eKeys(m map[string]any, name string) []string {
	obj, ok := m[name].(map[string]any)
	if !ok {
		return nil
	}
	keys := []string{}
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// e2eStreamLast returns the stream's last sequence.
func (e *testEnv) e2eStreamLast() uint64 {
	e.t.Helper()
	ctx := testCtx(e.t)
	st, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.LastSeq
}

// e2eExpectPong checks that the connection still answers: a ping is
// answered by a pong with no other frame before it.
func e2eExpectPong(c *client) {
	c.t.Helper()
	if got := c.sync(); len(got) != 0 {
		c.t.Fatalf("unexpected frames before pong: %v", e2eRaws(got))
	}
}

func e2eRaws(frames []frame) []string {
	var out []string
	for _, f := range frames {
		out = append(out, f.raw)
	}
	return out
}

// TestE2ESubscribeSeq: subscribed carries the stream position; events
// published before it are not sent, events after it have greater seqs; a
// second subscriber of a running feed gets the position too.
func TestE2ESubscribeSeq(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	e.publish(schema.OpCreate, e2eOrder(1, "open", "1", false, nil, "acme", nil))
	before := e.publish(schema.OpCreate, e2eOrder(2, "open", "1", false, nil, "acme", nil))

	c := e.dial("/ws")
	sub := c.subscribe(map[string]any{"id": "s1", "table": "public.orders", "events": []string{schema.OpCreate}})
	if last := e.e2eStreamLast(); sub.Seq != last || sub.Seq != before {
		t.Fatalf("subscribed seq %d, want the stream position %d", sub.Seq, last)
	}
	e2eMarkSub(c)
	after := e.publish(schema.OpCreate, e2eOrder(3, "paid", "2", true, nil, "acme", nil))
	got := e2eEventsByID(t, e.e2eFlush(c)[0])
	if ids := e2eIDs(got["s1"]); !slices.Equal(ids, []int{3}) {
		t.Fatalf("s1 received rows %v, want [3] (nothing published before subscribing)", ids)
	}
	if f := got["s1"][0]; f.Seq != after || f.Seq <= sub.Seq {
		t.Fatalf("event seq %d, want %d, after subscribed seq %d", f.Seq, after, sub.Seq)
	}

	// The feed is running now: a second subscriber gets its position.
	c2 := e.dial("/ws")
	sub2 := c2.subscribe(map[string]any{"id": "s1", "table": "public.orders", "events": []string{schema.OpCreate}})
	if last := e.e2eStreamLast(); sub2.Seq != last {
		t.Fatalf("second subscribed seq %d, want the stream position %d", sub2.Seq, last)
	}
	e2eMarkSub(c2)
	next := e.publish(schema.OpCreate, e2eOrder(4, "paid", "2", true, nil, "acme", nil))
	for i, frames := range e.e2eFlush(c, c2) {
		got := e2eEventsByID(t, frames)
		if len(got["s1"]) != 1 || got["s1"][0].Seq != next || e2eRowID(got["s1"][0]) != 4 {
			t.Fatalf("client %d: s1 received %v, want row 4 at seq %d", i+1, e2eRaws(frames), next)
		}
	}
}

// TestE2ESelect: select is answered with subscribed, and later events carry
// the new projection (data, old and unchanged); an empty list restores all
// columns; a bad select leaves the projection as it was.
func TestE2ESelect(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "s1", "table": "public.orders", "events": []string{schema.OpCreate, schema.OpUpdate}})
	e2eMarkSub(c)
	// Another connection with a subscription of the same id and
	// projection (they share encoded frames) is not affected by select.
	other := e.dial("/ws")
	other.subscribe(map[string]any{"id": "s1", "table": "public.orders", "events": []string{schema.OpCreate, schema.OpUpdate}})
	e2eMarkSub(other)
	all := []string{"created", "id", "notes", "paid", "status", "tenant", "total"}
	var others []frame
	flush := func() []frame {
		t.Helper()
		fr := e.e2eFlush(c, other)
		others = append(others, fr[1]...)
		return fr[0]
	}
	row := e2eOrder(1, "open", "19.90", false, "2026-01-01T00:00:00Z", "acme", "n")

	first := e.publish(schema.OpCreate, row)
	got := e2eEventsByID(t, flush())["s1"]
	if len(got) != 1 || !slices.Equal(e2eKeys(got[0].event(), "data"), all) {
		t.Fatalf("before select: %v", e2eRaws(got))
	}

	c.send(map[string]any{"type": "select", "id": "s1", "fields": []string{"id", "status"}})
	resel := c.expect("subscribed", "s1")
	if resel.Seq < first || resel.Seq > e.e2eStreamLast() {
		t.Fatalf("subscribed seq %d after select: want between the last event sent (%d) and the stream position (%d)",
			resel.Seq, first, e.e2eStreamLast())
	}
	partial := map[string]any{"id": 1, "status": "paid", "total": "19.90", "paid": true, "created": "2026-01-01T00:00:00Z", "tenant": "acme"}
	upd := e.publish(schema.OpUpdate, partial, "old", `{"id":1,"status":"open","total":"19.90","paid":false,"created":"2026-01-01T00:00:00Z","tenant":"acme","notes":"n"}`,
		"unchanged", `["notes"]`)
	got = e2eEventsByID(t, flush())["s1"]
	if len(got) != 1 || got[0].Seq != upd || got[0].Seq <= resel.Seq {
		t.Fatalf("after select: %v, want the update at seq %d", e2eRaws(got), upd)
	}
	ev := got[0].event()
	if k := e2eKeys(ev, "data"); !slices.Equal(k, []string{"id", "status"}) {
		t.Errorf("data columns %v, want [id status]: %s", k, got[0].Event)
	}
	if k := e2eKeys(ev, "old"); !slices.Equal(k, []string{"id", "status"}) {
		t.Errorf("old columns %v, want [id status]: %s", k, got[0].Event)
	}
	if _, ok := ev["unchanged"]; ok {
		t.Errorf("unchanged [notes] kept though notes is not selected: %s", got[0].Event)
	}

	// A selected unchanged column stays listed; the others go.
	c.send(map[string]any{"type": "select", "id": "s1", "fields": []string{"id", "notes"}})
	c.expect("subscribed", "s1")
	e.publish(schema.OpUpdate, partial, "unchanged", `["notes","tenant"]`)
	got = e2eEventsByID(t, flush())["s1"]
	if len(got) != 1 {
		t.Fatalf("after second select: %v", e2eRaws(got))
	}
	ev = got[0].event()
	if k := e2eKeys(ev, "data"); !slices.Equal(k, []string{"id"}) {
		t.Errorf("data columns %v, want [id]: %s", k, got[0].Event)
	}
	if u, _ := json.Marshal(ev["unchanged"]); string(u) != `["notes"]` {
		t.Errorf("unchanged %s, want [\"notes\"]", u)
	}

	// A bad select is refused and changes nothing.
	c.send(map[string]any{"type": "select", "id": "s1", "fields": []string{"id", "nope"}})
	if f := c.expectError(CodeInvalidSelect, "s1"); !contains(f.Message, "nope") {
		t.Errorf("invalid_select message %q does not name the column", f.Message)
	}
	e.publish(schema.OpCreate, row)
	got = e2eEventsByID(t, flush())["s1"]
	if len(got) != 1 || !slices.Equal(e2eKeys(got[0].event(), "data"), []string{"id", "notes"}) {
		t.Fatalf("after a refused select, want the projection [id notes] kept: %v", e2eRaws(got))
	}

	// An empty list restores every column.
	c.send(map[string]any{"type": "select", "id": "s1", "fields": []string{}})
	c.expect("subscribed", "s1")
	e.publish(schema.OpCreate, row)
	got = e2eEventsByID(t, flush())["s1"]
	if len(got) != 1 || !slices.Equal(e2eKeys(got[0].event(), "data"), all) {
		t.Fatalf(`after "fields":[]: %v, want every column`, e2eRaws(got))
	}

	c.send(map[string]any{"type": "select", "id": "nope", "fields": []string{"id"}})
	c.expectError(CodeInvalidSubscription, "nope")
	c.send(map[string]any{"type": "select", "id": "s1"})
	c.expectError(CodeInvalidSelect, "s1")
	e2eExpectPong(c)
	// The other connection's s1 kept every column throughout.
	got = e2eEventsByID(t, others)["s1"]
	if len(got) != 5 {
		t.Fatalf("other connection received %d events, want 5", len(got))
	}
	for _, f := range got {
		ev := f.event()
		if _, ok := ev["data"].(map[string]any)["total"]; !ok {
			t.Errorf("other connection's event projected by this connection's select: %s", f.Event)
		}
	}
}

// TestE2EUnsubscribe: unsubscribed, then no more events; the id is free
// again; unsubscribing an unknown id and reusing a live id are refused.
func TestE2EUnsubscribe(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "s1", "table": "public.orders", "where": map[string]any{"id": map[string]any{"lt": e2eMarkID}}})
	e2eMarkSub(c)

	c.send(map[string]any{"type": "subscribe", "id": "s1", "table": "public.orders"})
	if f := c.expectError(CodeInvalidSubscription, "s1"); !contains(f.Message, "s1") {
		t.Errorf("duplicate id message %q does not name the id", f.Message)
	}
	c.send(map[string]any{"type": "subscribe", "id": "mark", "topic": "chat"})
	c.expectError(CodeInvalidSubscription, "mark")

	e.publish(schema.OpCreate, e2eOrder(1, "open", "1", false, nil, nil, nil))
	if got := e2eEventsByID(t, e.e2eFlush(c)[0]); len(got["s1"]) != 1 {
		t.Fatalf("s1 received %d events, want 1", len(got["s1"]))
	}

	c.send(map[string]any{"type": "unsubscribe", "id": "s1"})
	c.expect("unsubscribed", "s1")
	e.publish(schema.OpCreate, e2eOrder(2, "open", "1", false, nil, nil, nil))
	if got := e.e2eFlush(c)[0]; len(got) != 0 {
		t.Fatalf("frames after unsubscribe: %v", e2eRaws(got))
	}

	c.send(map[string]any{"type": "unsubscribe", "id": "s1"})
	c.expectError(CodeInvalidSubscription, "s1")
	c.send(map[string]any{"type": "unsubscribe", "id": "never"})
	c.expectError(CodeInvalidSubscription, "never")

	// The id is free again, and the new subscription gets events.
	c.subscribe(map[string]any{"id": "s1", "table": "public.orders", "events": []string{schema.OpCreate}})
	e.publish(schema.OpCreate, e2eOrder(3, "open", "1", false, nil, nil, nil))
	if got := e2eEventsByID(t, e.e2eFlush(c)[0]); !slices.Equal(e2eIDs(got["s1"]), []int{3}) {
		t.Fatalf("resubscribed s1 received %v, want [3]", e2eIDs(got["s1"]))
	}
}

// TestE2EPing: the ping message is answered by {"type":"pong"}, a WebSocket
// ping by a pong control frame.
func TestE2EPing(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	c.send(map[string]any{"type": "ping"})
	if f := c.read(10 * time.Second); f.raw != `{"type":"pong"}` {
		t.Fatalf("ping answered with %s", f.raw)
	}

	// A WebSocket ping is answered with a pong control frame (coder's
	// Ping returns once the reader has seen it).
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		errc <- c.ws.Ping(ctx)
	}()
	deadline := time.After(10 * time.Second)
	for done := false; !done; {
		e2eExpectPong(c)
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("websocket ping: %v", err)
			}
			done = true
		case <-deadline:
			t.Fatal("no pong control frame")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestE2ECloseHandshake: a client's close frame is answered with a close
// frame echoing its code (RFC 6455 §5.5.1: an endpoint that receives a
// close must send one back), with a reason, then the connection ends; a
// close with a code no endpoint may send is a protocol error.
func TestE2ECloseHandshake(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	closePayload := func(code uint16, reason string) []byte {
		return append(binary.BigEndian.AppendUint16(nil, code), reason...)
	}
	for _, tc := range []struct {
		name    string
		payload []byte
		code    CloseCode
	}{
		{"1000", closePayload(1000, ""), CloseNormal},
		{"1000 with reason", closePayload(1000, "bye"), CloseNormal},
		{"no code", nil, CloseNormal},
		{"1001", closePayload(1001, ""), CloseGoingAway}, // a browser leaving the page
		{"1001 with reason", closePayload(1001, "navigating away"), CloseGoingAway},
		{"4000", closePayload(4000, ""), 4000},
		{"1005 reserved", closePayload(1005, ""), CloseProtocolError},
		{"999 invalid", closePayload(999, ""), CloseProtocolError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e2eRawDial(t, e.addr, "/ws", "")
			r.write(e2eMasked(0x80|opClose, tc.payload))
			r.expectClose(tc.code, 5*time.Second)
		})
	}
	e.waitFor("closed connections released", func() bool { return e.gw.Connections() == 0 })
}

// e2eFilterCase is one where of TestE2EFilterOperators and the rows it
// must deliver.
type e2eFilterCase struct {
	where string
	want  []int
}

// TestE2EFilterOperators: every operator on every column type, NULL, and
// or groups, end to end: five rows are published and each subscription
// must receive exactly the rows its where matches.
func TestE2EFilterOperators(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	rows := []map[string]any{
		e2eOrder(1, "open", "9.5", false, "2026-01-01T00:00:00Z", "acme", "n1"),
		e2eOrder(2, "paid", "10", true, "2026-01-01T01:00:00+01:00", "acme", "n2"),
		e2eOrder(3, "paid", "19.90", true, "2026-06-01T12:00:00.5Z", "globex", "n3"),
		e2eOrder(4, nil, nil, nil, nil, nil, nil),
		e2eOrder(5, "shipped", "100.00", false, "2025-12-31T23:59:59Z", "acme", "n5"),
	}
	all := []int{1, 2, 3, 4, 5}
	notNull := []int{1, 2, 3, 5}
	none := []int{}
	cases := []e2eFilterCase{
		// integer
		{`{"id":{"eq":3}}`, []int{3}},
		{`{"id":{"eq":"3"}}`, []int{3}},
		{`{"id":{"eq":2.0}}`, []int{2}},
		{`{"id":{"neq":3}}`, []int{1, 2, 4, 5}},
		{`{"id":{"lt":3}}`, []int{1, 2}},
		{`{"id":{"lte":3}}`, []int{1, 2, 3}},
		{`{"id":{"gt":3}}`, []int{4, 5}},
		{`{"id":{"gt":"2.5"}}`, []int{3, 4, 5}},
		{`{"id":{"gte":3}}`, []int{3, 4, 5}},
		{`{"id":{"in":[1,5,7]}}`, []int{1, 5}},
		{`{"id":{"nin":[1,5]}}`, []int{2, 3, 4}},
		{`{"id":{"is":"not_null"}}`, all},
		{`{"id":{"is":"null"}}`, none},
		// numeric, as decimals
		{`{"total":{"eq":"19.9"}}`, []int{3}},
		{`{"total":{"eq":"10"}}`, []int{2}},
		{`{"total":{"eq":10}}`, []int{2}},
		{`{"total":{"neq":"10"}}`, []int{1, 3, 5}},
		{`{"total":{"lt":"10"}}`, []int{1}},
		{`{"total":{"lte":"10.0"}}`, []int{1, 2}},
		{`{"total":{"gt":"9.5"}}`, []int{2, 3, 5}},
		{`{"total":{"gt":"1e1"}}`, []int{3, 5}},
		{`{"total":{"gte":"19.9"}}`, []int{3, 5}},
		{`{"total":{"in":["9.50","100"]}}`, []int{1, 5}},
		{`{"total":{"nin":["10","19.9"]}}`, []int{1, 5}},
		{`{"total":{"is":"null"}}`, []int{4}},
		{`{"total":{"is":"not_null"}}`, notNull},
		// text, bytewise
		{`{"status":{"eq":"paid"}}`, []int{2, 3}},
		{`{"status":{"neq":"paid"}}`, []int{1, 5}},
		{`{"status":{"lt":"paid"}}`, []int{1}},
		{`{"status":{"lte":"paid"}}`, []int{1, 2, 3}},
		{`{"status":{"gt":"paid"}}`, []int{5}},
		{`{"status":{"gte":"paid"}}`, []int{2, 3, 5}},
		{`{"status":{"in":["open","shipped"]}}`, []int{1, 5}},
		{`{"status":{"nin":["open"]}}`, []int{2, 3, 5}},
		{`{"status":{"is":"null"}}`, []int{4}},
		{`{"status":{"is":"not_null"}}`, notNull},
		{`{"tenant":{"eq":"acme"}}`, []int{1, 2, 5}},
		{`{"tenant":{"eq":"ACME"}}`, none},
		{`{"tenant":{"neq":"acme"}}`, []int{3}},
		// boolean
		{`{"paid":{"eq":true}}`, []int{2, 3}},
		{`{"paid":{"eq":"false"}}`, []int{1, 5}},
		{`{"paid":{"neq":true}}`, []int{1, 5}},
		{`{"paid":{"lt":true}}`, []int{1, 5}},
		{`{"paid":{"lte":false}}`, []int{1, 5}},
		{`{"paid":{"gt":false}}`, []int{2, 3}},
		{`{"paid":{"gte":false}}`, notNull},
		{`{"paid":{"in":[true]}}`, []int{2, 3}},
		{`{"paid":{"nin":[true]}}`, []int{1, 5}},
		{`{"paid":{"is":"true"}}`, []int{2, 3}},
		{`{"paid":{"is":"false"}}`, []int{1, 5}},
		{`{"paid":{"is":"null"}}`, []int{4}},
		{`{"paid":{"is":"not_null"}}`, notNull},
		// timestamp, as instants
		{`{"created":{"eq":"2026-01-01T00:00:00Z"}}`, []int{1, 2}},
		{`{"created":{"eq":"2026-01-01T01:00:00+01:00"}}`, []int{1, 2}},
		{`{"created":{"eq":"2026-01-01 00:00:00+00"}}`, []int{1, 2}},
		{`{"created":{"neq":"2026-01-01T00:00:00Z"}}`, []int{3, 5}},
		{`{"created":{"lt":"2026-01-01T00:00:00Z"}}`, []int{5}},
		{`{"created":{"lt":"2026-06-01T14:00:00.5+02:00"}}`, []int{1, 2, 5}},
		{`{"created":{"lte":"2026-01-01T01:00:00+01:00"}}`, []int{1, 2, 5}},
		{`{"created":{"gt":"2026-01-01T00:00:00Z"}}`, []int{3}},
		{`{"created":{"gt":"2026-06-01T12:00:00Z"}}`, []int{3}},
		{`{"created":{"gte":"2026-06-01T12:00:00.500Z"}}`, []int{3}},
		{`{"created":{"in":["2025-12-31T23:59:59Z","2026-06-01T14:00:00.5+02:00"]}}`, []int{3, 5}},
		{`{"created":{"nin":["2026-01-01T01:00:00+01:00"]}}`, []int{3, 5}},
		{`{"created":{"is":"null"}}`, []int{4}},
		{`{"created":{"is":"not_null"}}`, notNull},
		// NULL matches no comparison
		{`{"status":{"neq":"zzz"}}`, notNull},
		{`{"or":[{"status":{"neq":"paid"}},{"status":{"eq":"paid"}}]}`, notNull},
		// AND and or groups
		{`{"status":{"eq":"paid"},"total":{"gte":"10"}}`, []int{2, 3}},
		{`{"total":{"gt":"9.5","lt":"100"}}`, []int{2, 3}},
		{`{"or":[{"status":{"eq":"open"}},{"total":{"gte":"100"}}]}`, []int{1, 5}},
		{`{"tenant":{"eq":"acme"},"or":[{"paid":{"is":"true"}},{"status":{"eq":"shipped"}}]}`, []int{2, 5}},
		{`{"or":[{"status":{"is":"null"}},{"or":[{"id":{"eq":1}},{"id":{"eq":3}}]}]}`, []int{1, 3, 4}},
		{`{"or":[{"status":{"eq":"nope"}},{"tenant":{"eq":"nope"}}]}`, none},
		{`{"or":[{"status":{"is":"null"}},{"status":{"eq":"open"}}]}`, []int{1, 4}},
	}

	// Up to 60 subscriptions per connection (the default limit is 100),
	// named by their index in cases.
	const perConn = 60
	var clients []*client
	for start := 0; start < len(cases); start += perConn {
		c := e.dial("/ws")
		e2eMarkSub(c)
		clients = append(clients, c)
		end := min(start+perConn, len(cases))
		for i := start; i < end; i++ {
			c.sendRaw(`{"type":"subscribe","id":"` + fmt.Sprint("f", i) + `","table":"public.orders",` +
				`"events":["create","update","delete"],"where":` + cases[i].where + `}`)
		}
		for i := start; i < end; i++ {
			if f := c.read(10 * time.Second); f.Type != "subscribed" || f.ID != fmt.Sprint("f", i) {
				t.Fatalf("subscribe %s: %s", cases[i].where, f.raw)
			}
		}
	}
	for _, r := range rows {
		e.publish(schema.OpCreate, r)
	}
	got := map[string][]int{}
	for _, frames := range e.e2eFlush(clients...) {
		for id, evs := range e2eEventsByID(t, frames) {
			got[id] = e2eIDs(evs)
		}
	}
	for i, tc := range cases {
		t.Run(tc.where, func(t *testing.T) {
			ids := got[fmt.Sprint("f", i)]
			if ids == nil {
				ids = []int{}
			}
			if !slices.Equal(ids, tc.want) {
				t.Errorf("rows %v, want %v", ids, tc.want)
			}
		})
	}
}

// e2eOps describes the events of frames as op:status (status of the row
// the event is matched on; empty for truncate).
func e2eOps(frames []frame) []string {
	out := []string{}
	for _, f := range frames {
		ev := f.event()
		row, _ := ev["data"].(map[string]any)
		if row == nil {
			row, _ = ev["old"].(map[string]any)
		}
		status, _ := row["status"].(string)
		out = append(out, fmt.Sprint(ev["op"], ":", status))
	}
	return out
}

// TestE2EEventKinds: "events" selects the operations; updates are matched on
// data, deletes on old, or on key when there is no old; a truncate goes to
// every subscription that asks for truncates, whatever its where.
func TestE2EEventKinds(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	e2eMarkSub(c)
	subs := []struct {
		id     string
		events []string
		where  map[string]any
		want   []string
	}{
		{"upd", []string{schema.OpUpdate}, nil, []string{"update:open", "update:paid"}},
		{"cd", []string{schema.OpCreate, schema.OpDelete}, nil, []string{"create:paid", "delete:paid", "delete:open"}},
		{"trunc-paid", []string{schema.OpTruncate}, map[string]any{"status": map[string]any{"eq": "paid"}}, []string{"truncate:"}},
		{"trunc-gt", []string{schema.OpTruncate}, map[string]any{"total": map[string]any{"gt": "100"}}, []string{"truncate:"}},
		{"all-paid", nil, map[string]any{"status": map[string]any{"eq": "paid"}},
			[]string{"create:paid", "update:paid", "delete:paid", "read:paid", "truncate:"}},
		{"create-paid", []string{schema.OpCreate}, map[string]any{"status": map[string]any{"eq": "paid"}}, []string{"create:paid"}},
		{"upd-paid", []string{schema.OpUpdate}, map[string]any{"status": map[string]any{"neq": "open"}}, []string{"update:paid"}},
		{"del-paid", []string{schema.OpDelete}, map[string]any{"status": map[string]any{"in": []string{"paid"}}}, []string{"delete:paid"}},
	}
	for _, s := range subs {
		msg := map[string]any{"id": s.id, "table": "public.orders"}
		if s.events != nil {
			msg["events"] = s.events
		}
		if s.where != nil {
			msg["where"] = s.where
		}
		c.subscribe(msg)
	}
	e.publish(schema.OpCreate, e2eOrder(1, "paid", "1", true, nil, "acme", nil))
	e.publish(schema.OpUpdate, e2eOrder(1, "open", "1", true, nil, "acme", nil))
	e.publish(schema.OpUpdate, e2eOrder(1, "paid", "1", true, nil, "acme", nil))
	e.publish(schema.OpDelete, e2eOrder(1, "paid", "1", true, nil, "acme", nil))
	e.publish(schema.OpDelete, e2eOrder(2, "open", "1", true, nil, "acme", nil))
	e.publish(schema.OpRead, e2eOrder(3, "paid", "1", true, nil, "acme", nil))
	e.publish(schema.OpTruncate, nil)
	got := e2eEventsByID(t, e.e2eFlush(c)[0])
	for _, s := range subs {
		if ops := e2eOps(got[s.id]); !slices.Equal(ops, s.want) {
			t.Errorf("%s received %v, want %v", s.id, ops, s.want)
		}
	}

	// A delete without old is matched on its key.
	c.subscribe(map[string]any{"id": "key", "table": "public.orders", "events": []string{schema.OpDelete},
		"where": map[string]any{"id": map[string]any{"in": []int{12}}}})
	e.publish(schema.OpDelete, nil, "key", `{"id":12}`)
	e.publish(schema.OpDelete, nil, "key", `{"id":13}`)
	var events []frame
	for _, f := range e.e2eFlush(c)[0] {
		if f.Type != "event" {
			t.Errorf("unexpected frame %s", f.raw)
			continue
		}
		events = append(events, f)
	}
	got = e2eEventsByID(t, events)
	if ids := e2eIDs(got["key"]); !slices.Equal(ids, []int{12}) {
		t.Errorf("key-only deletes: key received %v, want [12]", ids)
	} else if _, ok := got["key"][0].event()["old"]; ok {
		t.Errorf("a key-only delete gained an old row: %s", got["key"][0].Event)
	}
	if ids := e2eIDs(got["cd"]); !slices.Equal(ids, []int{12, 13}) {
		t.Errorf("key-only deletes: cd (no filter) received %v, want [12 13]", ids)
	}
	// all-paid and del-paid filter deletes on status, which a key-only
	// delete does not carry: it cannot be ruled out, so it is delivered
	// (the client may hold the row).
	for _, id := range []string{"all-paid", "del-paid"} {
		if ids := e2eIDs(got[id]); !slices.Equal(ids, []int{12, 13}) {
			t.Errorf("key-only deletes: %s received %v, want [12 13]", id, ids)
		}
	}
	if len(got) != 4 {
		t.Errorf("key-only deletes went to %d subscriptions, want key, cd, all-paid, del-paid: %v", len(got), e2eRaws(events))
	}
}

// TestE2EProjection: select on subscribe keeps only the selected columns in
// data and old, lists only selected names in unchanged, keeps key whole and
// the rest of the envelope as published.
func TestE2EProjection(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	e2eMarkSub(c)
	ev := []string{schema.OpUpdate, schema.OpDelete}
	c.subscribe(map[string]any{"id": "p", "table": "public.orders", "events": ev, "select": []string{"status", "total"}})
	c.subscribe(map[string]any{"id": "q", "table": "public.orders", "events": ev, "select": []string{"id", "notes"}})
	c.subscribe(map[string]any{"id": "r", "table": "public.orders", "events": ev})
	c.subscribe(map[string]any{"id": "empty", "table": "public.orders", "events": ev, "select": []string{}})

	data := map[string]any{"id": 7, "status": "paid", "total": "5.00", "paid": true, "created": "2026-01-01T00:00:00Z", "tenant": "acme"}
	old := `{"id":7,"status":"open","total":"5.00","paid":false,"created":"2026-01-01T00:00:00Z","tenant":"acme","notes":"hello"}`
	e.publish(schema.OpUpdate, data, "old", old, "unchanged", `["notes"]`)
	e.publish(schema.OpDelete, e2eOrder(8, "open", "3", false, nil, "acme", "bye"))
	got := e2eEventsByID(t, e.e2eFlush(c)[0])
	for _, id := range []string{"p", "q", "r", "empty"} {
		if len(got[id]) != 2 {
			t.Fatalf("%s received %v, want the update and the delete", id, e2eRaws(got[id]))
		}
	}
	full := got["r"][0].event()
	check := func(id string, i int, member string, want []string) {
		t.Helper()
		ev := got[id][i].event()
		if k := e2eKeys(ev, member); !slices.Equal(k, want) {
			t.Errorf("%s event %d: %s has %v, want %v: %s", id, i, member, k, want, got[id][i].Event)
		}
	}
	check("p", 0, "data", []string{"status", "total"})
	check("p", 0, "old", []string{"status", "total"})
	check("p", 0, "key", []string{"id"})
	check("p", 1, "old", []string{"status", "total"})
	check("p", 1, "key", []string{"id"})
	check("q", 0, "data", []string{"id"})
	check("q", 0, "old", []string{"id", "notes"})
	check("q", 1, "old", []string{"id", "notes"})
	check("r", 0, "data", []string{"created", "id", "paid", "status", "tenant", "total"})
	check("empty", 0, "old", []string{"created", "id", "notes", "paid", "status", "tenant", "total"})

	p := got["p"][0].event()
	if v := p["data"].(map[string]any); v["status"] != "paid" || v["total"] != "5.00" {
		t.Errorf("projected values changed: %s", got["p"][0].Event)
	}
	if _, ok := p["unchanged"]; ok {
		t.Errorf("p: unchanged [notes] kept though notes is not selected: %s", got["p"][0].Event)
	}
	if u, _ := json.Marshal(got["q"][0].event()["unchanged"]); string(u) != `["notes"]` {
		t.Errorf("q: unchanged %s, want [\"notes\"]", u)
	}
	if u, _ := json.Marshal(full["unchanged"]); string(u) != `["notes"]` {
		t.Errorf("r: unchanged %s, want [\"notes\"]", u)
	}
	// Every other member of the envelope is as published.
	for _, k := range []string{"id", "op", "db", "schema", "table", "lsn", "xid", "commit_time", "key"} {
		if !reflect.DeepEqual(p[k], full[k]) || full[k] == nil {
			t.Errorf("envelope member %q: projected %v, published %v", k, p[k], full[k])
		}
	}
}

// TestE2EURLSubscription: /ws/tables/… subscribes without a message, with
// the id "url"; a bad URL is closed with 4400 and a reason.
func TestE2EURLSubscription(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	type pub struct {
		op  string
		row map[string]any
	}
	row := func(id int, status string, total, notes any) map[string]any {
		return e2eOrder(id, status, total, true, "2026-01-01T00:00:00Z", "acme", notes)
	}
	cases := []struct {
		query string
		pubs  []pub // the last one must match
		want  []string
		cols  []string // data columns of every event; nil: all
	}{
		{"?events=create,update&select=id,status&status=eq.paid",
			[]pub{{schema.OpCreate, row(1, "paid", "1", nil)}, {schema.OpCreate, row(2, "open", "1", nil)},
				{schema.OpUpdate, row(3, "paid", "1", nil)}, {schema.OpDelete, row(4, "paid", "1", nil)},
				{schema.OpRead, row(5, "paid", "1", nil)}, {schema.OpTruncate, nil}, {schema.OpUpdate, row(6, "paid", "1", nil)}},
			[]string{"create:1", "update:3", "update:6"}, []string{"id", "status"}},
		{"",
			[]pub{{schema.OpCreate, row(1, "paid", "1", nil)}, {schema.OpTruncate, nil}, {schema.OpDelete, row(2, "open", "1", nil)}},
			[]string{"create:1", "truncate:-1", "delete:2"}, nil},
		{"?id=in.(2,4)&events=create",
			[]pub{{schema.OpCreate, row(1, "a", "1", nil)}, {schema.OpCreate, row(2, "a", "1", nil)},
				{schema.OpUpdate, row(4, "a", "1", nil)}, {schema.OpCreate, row(3, "a", "1", nil)}, {schema.OpCreate, row(4, "a", "1", nil)}},
			[]string{"create:2", "create:4"}, nil},
		{`?status=in.("a,b",open)&select=`,
			[]pub{{schema.OpCreate, row(1, "a,b", "1", nil)}, {schema.OpCreate, row(2, "a", "1", nil)},
				{schema.OpCreate, row(3, "paid", "1", nil)}, {schema.OpCreate, row(4, "open", "1", nil)}},
			[]string{"create:1", "create:4"}, nil},
		{"?status=nin.(open)&notes=is.null",
			[]pub{{schema.OpCreate, row(1, "paid", "1", nil)}, {schema.OpCreate, row(2, "open", "1", nil)},
				{schema.OpCreate, row(3, "paid", "1", "x")}, {schema.OpCreate, row(4, "shipped", "1", nil)}},
			[]string{"create:1", "create:4"}, nil},
		{"?total=gt.9.5&total=lt.100",
			[]pub{{schema.OpCreate, row(1, "a", "9.5", nil)}, {schema.OpCreate, row(2, "a", "10", nil)},
				{schema.OpCreate, row(3, "a", "100.0", nil)}, {schema.OpCreate, row(4, "a", nil, nil)}, {schema.OpCreate, row(5, "a", "99.99", nil)}},
			[]string{"create:2", "create:5"}, nil},
		{"?created=gte." + url.QueryEscape("2026-01-01T01:00:00+01:00") + "&paid=is.true&select=id",
			[]pub{{schema.OpCreate, e2eOrder(1, "a", "1", true, "2025-12-31T23:00:00Z", "acme", nil)},
				{schema.OpCreate, e2eOrder(2, "a", "1", false, "2026-01-01T00:00:00Z", "acme", nil)},
				{schema.OpCreate, e2eOrder(3, "a", "1", true, "2026-01-01T00:00:00Z", "acme", nil)}},
			[]string{"create:3"}, []string{"id"}},
	}
	for _, tc := range cases {
		path := "/ws/tables/public.orders" + tc.query
		c := e.dial(path)
		sub := c.expect("subscribed", URLSubscriptionID)
		if last := e.e2eStreamLast(); sub.Seq != last {
			t.Errorf("%s: subscribed seq %d, want the stream position %d", path, sub.Seq, last)
		}
		var last uint64
		for _, p := range tc.pubs {
			last = e.publish(p.op, p.row)
		}
		var got []string
		for {
			f := c.read(10 * time.Second)
			if f.Type != "event" || f.ID != URLSubscriptionID {
				t.Fatalf("%s: unexpected frame %s", path, f.raw)
			}
			ev := f.event()
			got = append(got, fmt.Sprint(ev["op"], ":", e2eRowID(f)))
			if tc.cols != nil && ev["data"] != nil && !slices.Equal(e2eKeys(ev, "data"), tc.cols) {
				t.Errorf("%s: data columns %v, want %v", path, e2eKeys(ev, "data"), tc.cols)
			}
			if f.Seq >= last {
				break
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: received %v, want %v", path, got, tc.want)
		}
		_ = c.ws.Close(websocket.StatusNormalClosure, "")
	}

	bad := []struct{ path, reason string }{
		{"/ws/tables/public.orders?nope=eq.1", `"nope"`},
		{"/ws/tables/public.nope", `public.nope`},
		{"/ws/tables/orders", "schema.table"},
		{"/ws/tables/public.orders?status=like.paid", `"like"`},
		{"/ws/tables/public.orders?status=paid", "operator"},
		{"/ws/tables/public.orders?status=eq", "value"},
		{"/ws/tables/public.orders?events=insert", `"insert"`},
		{"/ws/tables/public.orders?select=id,nope", `"nope"`},
		{"/ws/tables/public.orders?id=eq.abc", `abc`},
		{"/ws/tables/public.orders?paid=eq.yes", `yes`},
		{"/ws/tables/public.orders?id=in.1,2", "parentheses"},
		{"/ws/tables/public.orders?id=in.()", "empty"},
		{"/ws/tables/public.orders?total=gte.1&total=gte.2", "two"},
		{"/ws/tables/public.orders?from=abc", "from"},
		{"/ws/tables/public.orders?events=create&events=update", "events"},
		{"/ws/tables/public.orders?" + url.QueryEscape(strings.Repeat("é", 100)) + "=eq.1", "é"},
	}
	for _, tc := range bad {
		t.Run(tc.path, func(t *testing.T) {
			c := e2eDial(t, e, tc.path)
			reason := c.expectClose(CloseBadRequest)
			if !contains(reason, tc.reason) {
				t.Errorf("close reason %q does not say %q", reason, tc.reason)
			}
			if len(reason) > 123 || !utf8.ValidString(reason) {
				t.Errorf("close reason %q: want valid UTF-8 of at most 123 bytes", reason)
			}
		})
	}
}

// TestE2ECustomTopics: topics, create-topic, destroy-topic and publish, from
// WebSocket to WebSocket and from NATS to WebSocket.
func TestE2ECustomTopics(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	// A row change first, so that purging a topic's messages never moves
	// the stream's first sequence.
	e.publish(schema.OpCreate, e2eOrder(1, "open", "1", false, nil, nil, nil))
	a := e.dial("/ws")
	b := e.dial("/ws")

	a.send(map[string]any{"type": "topics"})
	f := a.expect("topics", "")
	if !slices.Contains(f.Tables, "public.orders") || f.Topics == nil || len(f.Topics) != 0 {
		t.Fatalf("topics frame %s, want public.orders and no topics", f.raw)
	}

	a.send(map[string]any{"type": "create-topic", "topic": "chat"})
	if f := a.expect("topics", ""); !slices.Contains(f.Topics, "chat") || !slices.Contains(f.Tables, "public.orders") {
		t.Fatalf("create-topic answered %s, want a topics frame with chat", f.raw)
	}
	a.send(map[string]any{"type": "create-topic", "topic": "chat"})
	if f := a.expectError(CodeTopicExists, ""); !contains(f.Message, "chat") {
		t.Errorf("topic_exists message %q does not name the topic", f.Message)
	}
	a.send(map[string]any{"type": "create-topic", "topic": "chat.room-1"})
	if f := a.expect("topics", ""); !slices.Equal(f.Topics, []string{"chat", "chat.room-1"}) {
		t.Fatalf("topics %v, want [chat chat.room-1]", f.Topics)
	}

	b.send(map[string]any{"type": "subscribe", "id": "b0", "topic": "nope"})
	b.expectError(CodeUnknownTopic, "b0")
	b.send(map[string]any{"type": "subscribe", "id": "b0", "topic": "chat", "where": map[string]any{"id": map[string]any{"eq": 1}}})
	b.expectError(CodeInvalidSubscription, "b0")
	b.send(map[string]any{"type": "topics"})
	if f := b.expect("topics", ""); !slices.Equal(f.Topics, []string{"chat", "chat.room-1"}) {
		t.Fatalf("other connection's topics %v", f.Topics)
	}
	sb := b.subscribe(map[string]any{"id": "b1", "topic": "chat"})
	if last := e.e2eStreamLast(); sb.Seq != last {
		t.Errorf("topic subscribed seq %d, want the stream position %d", sb.Seq, last)
	}
	a.subscribe(map[string]any{"id": "a1", "topic": "chat"})
	b.send(map[string]any{"type": "select", "id": "b1", "fields": []string{"x"}})
	b.expectError(CodeInvalidSubscription, "b1")

	// WebSocket → WebSocket: data arrives as sent, byte for byte.
	datas := []string{`{"hello": "world", "n": [1, 2.50, 1e3]}`, `null`, `"text"`, `42`, `[]`}
	for _, d := range datas {
		a.sendRaw(`{"type":"publish","topic":"chat","data":` + d + `}`)
	}
	var prev uint64 = sb.Seq
	for _, d := range datas {
		f := b.expect("message", "b1")
		if string(f.Data) != d || f.Topic != "chat" || f.Seq <= prev {
			t.Fatalf("b received %s, want data %s on chat after seq %d", f.raw, d, prev)
		}
		var members map[string]json.RawMessage
		_ = json.Unmarshal([]byte(f.raw), &members)
		if len(members) != 5 {
			t.Errorf("message frame %s: want exactly type, id, topic, seq, data", f.raw)
		}
		e.e2eCheckStored(f.Seq, stream.TopicSubject("tablecast", "chat"))
		if g := a.expect("message", "a1"); g.Seq != f.Seq || string(g.Data) != d {
			t.Fatalf("publisher's own subscription received %s, want seq %d", g.raw, f.Seq)
		}
		prev = f.Seq
	}

	// NATS → WebSocket: JSON as is, anything else as a JSON string; another
	// topic's messages stay there.
	ctx := testCtx(t)
	other, err := e.nats.JS.Publish(ctx, stream.TopicSubject("tablecast", "chat.room-1"), []byte(`{"room":1}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct{ payload, want string }{
		{`{"from":"backend"}`, `{"from":"backend"}`},
		{`hello, not "JSON"`, `"hello, not \"JSON\""`},
		{``, `""`},
	} {
		ack, err := e.nats.JS.Publish(ctx, stream.TopicSubject("tablecast", "chat"), []byte(p.payload))
		if err != nil {
			t.Fatal(err)
		}
		f := b.expect("message", "b1")
		if f.Seq != ack.Sequence || string(f.Data) != p.want {
			t.Fatalf("NATS payload %q arrived as %s, want data %s at seq %d (chat.room-1 is seq %d)",
				p.payload, f.raw, p.want, ack.Sequence, other.Sequence)
		}
		a.expect("message", "a1")
	}
	if err := e.nats.NC.Publish(stream.TopicSubject("tablecast", "chat"), []byte(`{"core":true}`)); err != nil {
		t.Fatal(err)
	}
	if f := b.expect("message", "b1"); string(f.Data) != `{"core":true}` {
		t.Fatalf("core NATS message arrived as %s", f.raw)
	}
	a.expect("message", "a1")

	a.send(map[string]any{"type": "publish", "topic": "nope", "data": 1})
	a.expectError(CodeUnknownTopic, "")
	a.send(map[string]any{"type": "destroy-topic", "topic": "nope"})
	a.expectError(CodeUnknownTopic, "")

	// destroy-topic: its subscribers are told and unsubscribed.
	a.send(map[string]any{"type": "unsubscribe", "id": "a1"})
	a.expect("unsubscribed", "a1")
	a.send(map[string]any{"type": "destroy-topic", "topic": "chat"})
	if f := a.expect("topics", ""); !slices.Equal(f.Topics, []string{"chat.room-1"}) {
		t.Fatalf("destroy-topic answered with topics %v, want [chat.room-1]", f.Topics)
	}
	if f := b.expectError(CodeUnknownTopic, "b1"); !contains(f.Message, "chat") {
		t.Errorf("message %q does not name the topic", f.Message)
	}
	b.expect("unsubscribed", "b1")
	e2eExpectPong(b)
	b.send(map[string]any{"type": "unsubscribe", "id": "b1"})
	b.expectError(CodeInvalidSubscription, "b1")
	a.send(map[string]any{"type": "publish", "topic": "chat", "data": 1})
	a.expectError(CodeUnknownTopic, "")
	b.send(map[string]any{"type": "subscribe", "id": "b1", "topic": "chat"})
	b.expectError(CodeUnknownTopic, "b1")

	// Created again, it starts empty (the old messages were purged, even
	// for a client resuming from before them) and works.
	a.send(map[string]any{"type": "create-topic", "topic": "chat"})
	a.expect("topics", "")
	b.subscribe(map[string]any{"id": "b1", "topic": "chat"})
	b.subscribe(map[string]any{"id": "b2", "topic": "chat", "from": sb.Seq})
	a.sendRaw(`{"type":"publish","topic":"chat","data":{"again":true}}`)
	for _, id := range []string{"b1", "b2"} {
		if f := b.read(10 * time.Second); f.Type != "message" || string(f.Data) != `{"again":true}` {
			t.Fatalf("after re-creating: %s, want %s's message {\"again\":true}", f.raw, id)
		}
	}
	e2eExpectPong(a)
}

// e2eCheckStored checks that seq is a message of the stream on subject.
func (e *testEnv) e2eCheckStored(seq uint64, subject string) {
	e.t.Helper()
	ctx := testCtx(e.t)
	st, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := st.GetMsg(ctx, seq)
	if err != nil {
		e.t.Fatalf("stream message %d: %v", seq, err)
	}
	if m.Subject != subject {
		e.t.Fatalf("stream message %d is on %s, want %s", seq, m.Subject, subject)
	}
}

// TestE2EBadMessages: every malformed or refused message is answered by an
// error frame with its code (and the message's id when it had one), and the
// connection stays: the next ping is answered, with nothing else before it.
func TestE2EBadMessages(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	long := strings.Repeat("x", MaxIDLen+1)
	sub := func(extra string) string {
		return `{"type":"subscribe","id":"e1","table":"public.orders"` + extra + `}`
	}
	cases := []struct {
		name, msg string
		code      ErrorCode
		id        string // the error's id; a subscribe with an id is retried with it
		says      string
	}{
		{"not JSON", `{"type":"ping"`, CodeInvalidMessage, "", "JSON"},
		{"not JSON word", `hello`, CodeInvalidMessage, "", "JSON"},
		{"array", `[{"type":"ping"}]`, CodeInvalidMessage, "", "object"},
		{"string", `"ping"`, CodeInvalidMessage, "", "object"},
		{"trailing data", `{"type":"ping"} {}`, CodeInvalidMessage, "", ""},
		{"field twice", `{"type":"ping","type":"topics"}`, CodeInvalidMessage, "", "twice"},
		{"no type", `{"id":"x"}`, CodeInvalidMessage, "x", `"type"`},
		{"type not a string", `{"type":1}`, CodeInvalidMessage, "", `"type"`},
		{"unknown type", `{"type":"subscribe-all","id":"u1"}`, CodeUnknownType, "u1", "subscribe-all"},
		{"id a number", `{"type":"subscribe","id":5,"table":"public.orders"}`, CodeInvalidMessage, "", `"id"`},
		{"events a string", sub(`,"events":"create"`), CodeInvalidMessage, "e1", `"events"`},
		{"events holds a number", sub(`,"events":["create",1]`), CodeInvalidMessage, "e1", `"events"`},
		{"from a string", sub(`,"from":"x"`), CodeInvalidMessage, "e1", `"from"`},
		{"from negative", sub(`,"from":-1`), CodeInvalidMessage, "e1", `"from"`},
		{"from a fraction", sub(`,"from":1.5`), CodeInvalidMessage, "e1", `"from"`},
		{"where an array", sub(`,"where":[]`), CodeInvalidMessage, "e1", `"where"`},
		{"select a string", sub(`,"select":"id"`), CodeInvalidMessage, "e1", `"select"`},
		{"table a number", `{"type":"subscribe","id":"e1","table":1}`, CodeInvalidMessage, "e1", `"table"`},
		{"empty id", `{"type":"subscribe","id":"","table":"public.orders"}`, CodeInvalidSubscription, "", `id ""`},
		{"no id with a bad filter", `{"type":"subscribe","table":"public.orders","where":{"nope":{"eq":1}}}`, CodeInvalidFilter, "~1", "nope"},
		{"id too long", `{"type":"subscribe","id":"` + long + `","table":"public.orders"}`, CodeInvalidSubscription, "", "64"},
		{"table and topic", sub(`,"topic":"chat"`), CodeInvalidSubscription, "e1", "topic"},
		{"neither table nor topic", `{"type":"subscribe","id":"e1"}`, CodeInvalidSubscription, "e1", "table"},
		{"table without schema", `{"type":"subscribe","id":"e1","table":"orders"}`, CodeInvalidSubscription, "e1", "schema.table"},
		{"unknown event", sub(`,"events":["insert"]`), CodeInvalidSubscription, "e1", `"insert"`},
		{"unknown table", `{"type":"subscribe","id":"e1","table":"public.nope"}`, CodeUnknownTable, "e1", "public.nope"},
		{"unknown topic", `{"type":"subscribe","id":"e1","topic":"nope"}`, CodeUnknownTopic, "e1", "nope"},
		{"unknown column in where", sub(`,"where":{"totl":{"gte":"10"}}`), CodeInvalidFilter, "e1", `"totl"`},
		{"unknown column in or", sub(`,"where":{"or":[{"id":{"eq":1}},{"totl":{"eq":1}}]}`), CodeInvalidFilter, "e1", `"totl"`},
		{"unknown column in select", sub(`,"select":["id","nope"]`), CodeInvalidSelect, "e1", `"nope"`},
		{"empty column in select", sub(`,"select":[""]`), CodeInvalidSelect, "e1", "empty"},
		{"unknown operator", sub(`,"where":{"status":{"like":"p%"}}`), CodeInvalidFilter, "e1", `"like"`},
		{"condition not an object", sub(`,"where":{"status":"paid"}`), CodeInvalidFilter, "e1", "status"},
		{"no operator", sub(`,"where":{"status":{}}`), CodeInvalidFilter, "e1", "status"},
		{"operator twice", sub(`,"where":{"status":{"eq":"paid","eq":"open"}}`), CodeInvalidFilter, "e1", `two "eq"`},
		{"text for integer", sub(`,"where":{"id":{"eq":"abc"}}`), CodeInvalidFilter, "e1", "abc"},
		{"bool for integer", sub(`,"where":{"id":{"eq":true}}`), CodeInvalidFilter, "e1", "id"},
		{"text for numeric", sub(`,"where":{"total":{"gte":"abc"}}`), CodeInvalidFilter, "e1", "abc"},
		{"yes for boolean", sub(`,"where":{"paid":{"eq":"yes"}}`), CodeInvalidFilter, "e1", "yes"},
		{"number for boolean", sub(`,"where":{"paid":{"eq":1}}`), CodeInvalidFilter, "e1", "paid"},
		{"number for text", sub(`,"where":{"status":{"eq":5}}`), CodeInvalidFilter, "e1", "status"},
		{"bad timestamp", sub(`,"where":{"created":{"gt":"yesterday"}}`), CodeInvalidFilter, "e1", "yesterday"},
		{"number for timestamp", sub(`,"where":{"created":{"gt":1700000000}}`), CodeInvalidFilter, "e1", "created"},
		{"wrong type in a list", sub(`,"where":{"id":{"in":[1,"x"]}}`), CodeInvalidFilter, "e1", `"x"`},
		{"null literal", sub(`,"where":{"status":{"eq":null}}`), CodeInvalidFilter, "e1", `"is"`},
		{"empty in list", sub(`,"where":{"id":{"in":[]}}`), CodeInvalidFilter, "e1", "in"},
		{"in not a list", sub(`,"where":{"id":{"in":1}}`), CodeInvalidFilter, "e1", "in"},
		{"is bogus", sub(`,"where":{"status":{"is":"empty"}}`), CodeInvalidFilter, "e1", "empty"},
		{"is true on text", sub(`,"where":{"status":{"is":"true"}}`), CodeInvalidFilter, "e1", "status"},
		{"or not a list of objects", sub(`,"where":{"or":[1]}`), CodeInvalidFilter, "e1", "or"},
		{"or empty", sub(`,"where":{"or":[]}`), CodeInvalidFilter, "e1", "or"},
		{"select without fields", `{"type":"select","id":"e1"}`, CodeInvalidSelect, "e1", `"fields"`},
		{"select of nothing", `{"type":"select","id":"e1","fields":["id"]}`, CodeInvalidSubscription, "e1", "e1"},
		{"unsubscribe without id", `{"type":"unsubscribe"}`, CodeInvalidSubscription, "", `"id"`},
		{"create-topic without topic", `{"type":"create-topic"}`, CodeInvalidMessage, "", `"topic"`},
		{"create-topic bad name", `{"type":"create-topic","topic":"a..b"}`, CodeInvalidMessage, "", "a..b"},
		{"create-topic wildcard", `{"type":"create-topic","topic":"a.*"}`, CodeInvalidMessage, "", "wildcard"},
		{"publish without data", `{"type":"publish","topic":"chat"}`, CodeInvalidMessage, "", `"data"`},
		{"publish to unknown topic", `{"type":"publish","topic":"nope","data":1}`, CodeUnknownTopic, "", "nope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &client{t: t, ws: c.ws}
			c.sendRaw(tc.msg)
			f := c.expectError(tc.code, tc.id)
			if f.ID != tc.id {
				t.Errorf("error frame %s: want id %q", f.raw, tc.id)
			}
			if !contains(f.Message, tc.says) {
				t.Errorf("error message %q does not say %q", f.Message, tc.says)
			}
			e2eExpectPong(c)
			// A refused subscribe leaves nothing behind: its id is free.
			if tc.id != "" && strings.Contains(tc.msg, `"subscribe"`) {
				c.subscribe(map[string]any{"id": tc.id, "table": "public.orders"})
				c.send(map[string]any{"type": "unsubscribe", "id": tc.id})
				c.expect("unsubscribed", tc.id)
			}
		})
	}
}

// TestE2EFilterFailureContained: when a shape change drops a column a
// filter reads, that subscription alone gets filter_failed (and stays);
// others on the same table, connection or gateway keep receiving.
func TestE2EFilterFailureContained(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	e2eMarkSub(c)
	ev := []string{schema.OpCreate}
	c.subscribe(map[string]any{"id": "notes-eq", "table": "public.orders", "events": ev, "where": map[string]any{"notes": map[string]any{"eq": "x"}}})
	c.subscribe(map[string]any{"id": "notes-neq", "table": "public.orders", "events": ev, "where": map[string]any{"notes": map[string]any{"neq": "zzz"}}})
	c.subscribe(map[string]any{"id": "paid", "table": "public.orders", "events": ev, "where": map[string]any{"status": map[string]any{"eq": "paid"}}})
	c.subscribe(map[string]any{"id": "plain", "table": "public.orders", "events": ev})
	c2 := e.dial("/ws")
	e2eMarkSub(c2)
	c2.subscribe(map[string]any{"id": "other", "table": "public.orders", "events": ev})

	e.publish(schema.OpCreate, e2eOrder(1, "paid", "1", true, nil, "acme", "x"))
	for i, frames := range e.e2eFlush(c, c2) {
		if got := e2eEventsByID(t, frames); len(got) != 4-3*i {
			t.Fatalf("client %d before the shape change: %v", i+1, e2eRaws(frames))
		}
	}

	// Version 2 of the table has no notes column: the reader's events
	// stop carrying it.
	shape := ordersShape()
	shape.Version = 2
	shape.Columns = slices.DeleteFunc(shape.Columns, func(col schema.ShapeColumn) bool { return col.Name == "notes" })
	e.putShape(shape)
	bad := e.publish(schema.OpCreate, map[string]any{"id": 2, "status": "paid", "total": "1", "paid": true, "created": nil, "tenant": "acme"})

	frames := e.e2eFlush(c, c2)
	failed := map[string]frame{}
	var events []frame
	for _, f := range frames[0] {
		switch {
		case f.Type == "error" && f.Code == string(CodeFilterFailed):
			if _, dup := failed[f.ID]; dup {
				t.Errorf("two filter_failed frames for %s", f.ID)
			}
			failed[f.ID] = f
		case f.Type == "event":
			events = append(events, f)
		default:
			t.Errorf("unexpected frame %s", f.raw)
		}
	}
	for _, id := range []string{"notes-eq", "notes-neq"} {
		f, ok := failed[id]
		switch {
		case !ok:
			t.Errorf("%s: no filter_failed frame (got %v)", id, e2eRaws(frames[0]))
		case !contains(f.Message, "notes") || !contains(f.Message, fmt.Sprint(bad)):
			t.Errorf("%s: filter_failed message %q does not name the column and the event's seq %d", id, f.Message, bad)
		}
	}
	if len(failed) != 2 {
		t.Errorf("filter_failed for %d subscriptions, want 2: %v", len(failed), e2eRaws(frames[0]))
	}
	got := e2eEventsByID(t, events)
	if len(got) != 2 || !slices.Equal(e2eIDs(got["paid"]), []int{2}) || !slices.Equal(e2eIDs(got["plain"]), []int{2}) {
		t.Errorf("same connection received %v, want row 2 for paid and plain only", e2eRaws(events))
	}
	if got := e2eEventsByID(t, frames[1]); len(got) != 1 || !slices.Equal(e2eIDs(got["other"]), []int{2}) {
		t.Errorf("other connection received %v, want row 2", e2eRaws(frames[1]))
	}

	// The failing subscriptions stay: an event they can evaluate arrives.
	e.publish(schema.OpCreate, e2eOrder(3, "open", "1", true, nil, "acme", "x"))
	got = e2eEventsByID(t, e.e2eFlush(c)[0])
	for _, id := range []string{"notes-eq", "notes-neq", "plain"} {
		if !slices.Equal(e2eIDs(got[id]), []int{3}) {
			t.Errorf("%s after the failure: received %v, want [3]", id, e2eIDs(got[id]))
		}
	}
	c.send(map[string]any{"type": "unsubscribe", "id": "notes-eq"})
	c.expect("unsubscribed", "notes-eq")
}

// TestE2EOrigins: a browser's Origin must be the gateway's own host, or one
// of AllowedOrigins when they are set; a request without Origin is not a
// browser's and is let in. A refused origin is closed with 4003.
func TestE2EOrigins(t *testing.T) {
	t.Parallel()
	def := startGateway(t, nil)
	listed := startGateway(t, func(c *Config) { c.AllowedOrigins = []string{"https://app.example"} })
	cases := []struct {
		name   string
		e      *testEnv
		path   string
		origin string
		ok     bool
	}{
		{"default/no origin", def, "/ws", "", true},
		{"default/same host", def, "/ws", "http://" + def.addr, true},
		{"default/evil", def, "/ws", "http://evil.example", false},
		{"default/other port", def, "/ws", "http://127.0.0.1:1", false},
		{"default/evil url subscription", def, "/ws/tables/public.orders", "http://evil.example", false},
		{"listed/no origin", listed, "/ws", "", true},
		{"listed/listed", listed, "/ws", "https://app.example", true},
		{"listed/url subscription", listed, "/ws/tables/public.orders", "https://app.example", true},
		{"listed/evil", listed, "/ws", "http://evil.example", false},
		{"listed/http of listed host", listed, "/ws", "http://app.example", false},
		{"listed/same host", listed, "/ws", "http://" + listed.addr, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.origin != "" {
				hdr = []string{"Origin", tc.origin}
			}
			c := e2eDial(t, tc.e, tc.path, hdr...)
			if !tc.ok {
				if reason := c.expectClose(CloseForbiddenOrigin); !contains(reason, "origin") {
					t.Errorf("close reason %q does not mention the origin", reason)
				}
				return
			}
			if tc.path != "/ws" {
				c.expect("subscribed", URLSubscriptionID)
			}
			e2eExpectPong(c)
		})
	}
}

// TestE2EBadFrames: the WebSocket layer. Oversized, binary and malformed
// frames close the connection with their code and a reason; fragments are
// reassembled; half a frame is given ReadTimeout and no more, while other
// clients are served. After all of it the gateway still serves, and holds
// no connection it closed.
func TestE2EBadFrames(t *testing.T) {
	t.Parallel()
	const readTimeout = 500 * time.Millisecond
	e := startGateway(t, func(c *Config) { c.ReadTimeout = readTimeout })
	ping := []byte(`{"type":"ping"}`)

	t.Run("1 MiB message", func(t *testing.T) {
		c := e2eDial(t, e, "/ws")
		big := []byte(`{"type":"ping","pad":"` + strings.Repeat("x", 1<<20) + `"}`)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = c.ws.Write(ctx, websocket.MessageText, big) // fails once the gateway closes
		}()
		if reason := c.expectClose(CloseMessageTooBig); !contains(reason, "64 KiB") {
			t.Errorf("close reason %q does not say the limit", reason)
		}
	})
	t.Run("binary message", func(t *testing.T) {
		c := e2eDial(t, e, "/ws")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.ws.Write(ctx, websocket.MessageBinary, ping); err != nil {
			t.Fatal(err)
		}
		c.expectClose(CloseUnsupportedData)
	})
	t.Run("fragmented message", func(t *testing.T) {
		r := e2eRawDial(t, e.addr, "/ws", "")
		msg := []byte(`{"type":"subscribe","id":"frag","table":"public.orders","select":["id"]}`)
		r.write(e2eMasked(opText, msg[:10]))
		r.write(e2eMasked(0x80|opPing, []byte("hi"))) // control frames may come between fragments
		r.write(e2eMasked(opContinuation, msg[10:40]))
		r.write(e2eMasked(0x80|opContinuation, msg[40:]))
		if f := r.read(5 * time.Second); f.op != opPong || string(f.payload) != "hi" || !f.fin {
			t.Fatalf("ping between fragments answered with %+v, want pong \"hi\"", f)
		}
		if f := r.readText(5 * time.Second); f.Type != "subscribed" || f.ID != "frag" {
			t.Fatalf("fragmented subscribe answered with %s", f.raw)
		}
		// Fragments that are single bytes, some empty.
		r.write(e2eMasked(opText, ping[:1]))
		r.write(e2eMasked(opContinuation, nil))
		for i := 1; i < len(ping)-1; i++ {
			r.write(e2eMasked(opContinuation, ping[i:i+1]))
		}
		r.write(e2eMasked(0x80|opContinuation, ping[len(ping)-1:]))
		if f := r.readText(5 * time.Second); f.Type != "pong" {
			t.Fatalf("fragmented ping answered with %s", f.raw)
		}
		// A whole message in one frame still works afterwards.
		r.write(e2eMasked(0x80|opText, ping))
		if f := r.readText(5 * time.Second); f.Type != "pong" {
			t.Fatalf("ping answered with %s", f.raw)
		}
	})
	t.Run("fragmented message over the limit", func(t *testing.T) {
		r := e2eRawDial(t, e.addr, "/ws", "")
		frag := []byte(strings.Repeat(" ", 30<<10)) // 3 × 30 KiB > 64 KiB
		go func() {
			// Write errors are expected once the gateway has closed.
			_ = r.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, _ = r.nc.Write(e2eMasked(opText, append([]byte(`{"type":"ping"}`), frag...)))
			_, _ = r.nc.Write(e2eMasked(opContinuation, frag))
			_, _ = r.nc.Write(e2eMasked(0x80|opContinuation, frag))
		}()
		if reason := r.expectClose(CloseMessageTooBig, 10*time.Second); !contains(reason, "64 KiB") {
			t.Errorf("close reason %q does not say the limit", reason)
		}
	})
	t.Run("half a frame then silence", func(t *testing.T) {
		r := e2eRawDial(t, e.addr, "/ws", "")
		start := time.Now()
		r.write(e2eMasked(0x80|opText, ping)[:3]) // header, and 1 byte of the mask key
		type closed struct {
			reason string
			at     time.Time
		}
		done := make(chan closed, 1)
		go func() {
			f, err := r.readClose(readTimeout + 5*time.Second)
			if err != nil {
				t.Error(err)
			}
			done <- closed{f, time.Now()}
		}()

		// Meanwhile another client is served: messages and events.
		c := e2eDial(t, e, "/ws")
		e2eMarkSub(c)
		e2eExpectPong(c)
		served := time.Now()
		if served.Sub(start) > readTimeout {
			t.Logf("the other client took %v (the stalled connection may have been closed first)", served.Sub(start))
		}

		res := <-done
		if elapsed := res.at.Sub(start); elapsed < readTimeout*8/10 || elapsed > readTimeout+3*time.Second {
			t.Errorf("stalled connection closed after %v, want about ReadTimeout (%v)", elapsed, readTimeout)
		}
		if !strings.HasPrefix(res.reason, "1002 ") || !contains(res.reason, "incomplete") {
			t.Errorf("closed with %q, want 1002 and a reason that says the frame was incomplete", res.reason)
		}
		if served.After(res.at) {
			t.Errorf("the other client was served at %v, after the stalled connection was closed at %v: it waited",
				served.Sub(start), res.at.Sub(start))
		}
	})
	t.Run("half a payload then silence", func(t *testing.T) {
		r := e2eRawDial(t, e.addr, "/ws", "")
		frame := e2eMasked(0x80|opText, ping)
		r.write(frame[:len(frame)-4])
		if reason := r.expectClose(CloseProtocolError, readTimeout+3*time.Second); !contains(reason, "incomplete") {
			t.Errorf("close reason %q does not say the frame was incomplete", reason)
		}
	})
	for _, tc := range []struct {
		name   string
		frames [][]byte
		code   CloseCode
		says   string
	}{
		{"unmasked frame", [][]byte{e2eFrame(0x80|opText, false, ping)}, CloseProtocolError, "masked"},
		{"reserved bit 1", [][]byte{e2eMasked(0x80|0x40|opText, ping)}, CloseProtocolError, "reserved"},
		{"reserved bit 3", [][]byte{e2eMasked(0x80|0x10|opText, ping)}, CloseProtocolError, "reserved"},
		{"reserved bit on ping", [][]byte{e2eMasked(0x80|0x20|opPing, nil)}, CloseProtocolError, "reserved"},
		{"unknown opcode", [][]byte{e2eMasked(0x80|0x3, ping)}, CloseProtocolError, "opcode"},
		{"continuation without a message", [][]byte{e2eMasked(0x80|opContinuation, ping)}, CloseProtocolError, "continuation"},
		{"new message inside a fragmented one", [][]byte{e2eMasked(opText, ping[:5]), e2eMasked(0x80|opText, ping)}, CloseProtocolError, "fragmented"},
		{"fragmented ping", [][]byte{e2eMasked(opPing, nil)}, CloseProtocolError, "control"},
		{"ping over 125 bytes", [][]byte{e2eMasked(0x80|opPing, make([]byte, 126))}, CloseProtocolError, "control"},
		{"binary fragment", [][]byte{e2eMasked(opBinary, ping)}, CloseUnsupportedData, "JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e2eRawDial(t, e.addr, "/ws", "")
			for _, f := range tc.frames {
				r.write(f)
			}
			if reason := r.expectClose(tc.code, 5*time.Second); !contains(reason, tc.says) {
				t.Errorf("close reason %q does not say %q", reason, tc.says)
			}
		})
	}

	c := e.dial("/ws")
	e2eExpectPong(c)
	e.waitFor("closed connections released", func() bool { return e.gw.Connections() == 1 })
}

// A raw WebSocket client, for frames coder/websocket will not write.

type e2eRaw struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

// e2eRawDial opens a WebSocket connection by hand; origin is sent when not
// empty.
func e2eRawDial(t testing.TB, addr, path, origin string) *e2eRaw {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return e2eRawUpgrade(t, nc, bufio.NewReader(nc), addr, path, origin)
}

// e2eRawUpgrade sends the WebSocket handshake on nc (read through br) and
// checks the answer.
func e2eRawUpgrade(t testing.TB, nc net.Conn, br *bufio.Reader, addr, path, origin string) *e2eRaw {
	t.Helper()
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n"
	if origin != "" {
		req += "Origin: " + origin + "\r\n"
	}
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(nc, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("handshake answered %s %v", resp.Status, resp.Header)
	}
	_ = nc.SetDeadline(time.Time{})
	return &e2eRaw{t: t, nc: nc, br: br}
}

// e2eFrame returns a final or non-final frame; b0 is the first byte (FIN,
// RSV bits, opcode).
func e2eFrame(b0 byte, masked bool, payload []byte) []byte {
	out := []byte{b0}
	var m byte
	if masked {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		out = append(out, m|byte(n))
	case n <= 0xFFFF:
		out = append(out, m|126)
		out = binary.BigEndian.AppendUint16(out, uint16(n))
	default:
		out = append(out, m|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	if !masked {
		return append(out, payload...)
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	out = append(out, key[:]...)
	for i, b := range payload {
		out = append(out, b^key[i%4])
	}
	return out
}

// e2eMasked returns a masked frame, as clients must send.
func e2eMasked(b0 byte, payload []byte) []byte { return e2eFrame(b0, true, payload) }

func (r *e2eRaw) write(b []byte) {
	r.t.Helper()
	_ = r.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

type e2eRawFrame struct {
	fin     bool
	op      byte
	payload []byte
}

// readFrame reads one server frame, which must be unmasked and use no RSV
// bit.
func (r *e2eRaw) readFrame(timeout time.Duration) (e2eRawFrame, error) {
	_ = r.nc.SetReadDeadline(time.Now().Add(timeout))
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return e2eRawFrame{}, err
	}
	if h[1]&0x80 != 0 || h[0]&0x70 != 0 {
		return e2eRawFrame{}, fmt.Errorf("server frame header % x: masked or RSV bits set", h)
	}
	n := uint64(h[1] & 0x7F)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return e2eRawFrame{}, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return e2eRawFrame{}, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 16<<20 {
		return e2eRawFrame{}, fmt.Errorf("server frame of %d bytes", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r.br, p); err != nil {
		return e2eRawFrame{}, err
	}
	return e2eRawFrame{fin: h[0]&0x80 != 0, op: h[0] & 0x0F, payload: p}, nil
}

func (r *e2eRaw) read(timeout time.Duration) e2eRawFrame {
	r.t.Helper()
	f, err := r.readFrame(timeout)
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	return f
}

// readText reads a text frame holding a protocol frame.
func (r *e2eRaw) readText(timeout time.Duration) frame {
	r.t.Helper()
	f := r.read(timeout)
	if f.op != opText || !f.fin {
		r.t.Fatalf("got frame %+v, want a text frame", f)
	}
	var out frame
	if err := json.Unmarshal(f.payload, &out); err != nil {
		r.t.Fatalf("text frame %q: %v", f.payload, err)
	}
	out.raw = string(f.payload)
	return out
}

// readClose reads up to a close frame, then checks that the gateway ends
// the TCP connection; it returns the close frame's code and reason as
// "code reason".
func (r *e2eRaw) readClose(timeout time.Duration) (string, error) {
	for {
		f, err := r.readFrame(timeout)
		if err != nil {
			return "", fmt.Errorf("connection ended with %v before a close frame", err)
		}
		if f.op != opClose {
			continue
		}
		if len(f.payload) < 2 {
			return "", errors.New("close frame without a code")
		}
		code := binary.BigEndian.Uint16(f.payload)
		_ = r.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := r.br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return "", fmt.Errorf("after close %d: TCP connection not closed (%v)", code, err)
		}
		return fmt.Sprintf("%d %s", code, f.payload[2:]), nil
	}
}

// expectClose reads up to a close frame with code and a reason, and returns
// the reason.
func (r *e2eRaw) expectClose(code CloseCode, timeout time.Duration) string {
	r.t.Helper()
	got, err := r.readClose(timeout)
	if err != nil {
		r.t.Fatal(err)
	}
	c, reason, _ := strings.Cut(got, " ")
	if c != fmt.Sprint(int(code)) {
		r.t.Fatalf("closed with %s, want %d", got, code)
	}
	if reason == "" {
		r.t.Fatalf("close %d without a reason", code)
	}
	return reason
}

// TestE2EEmptyMessage: an empty text message is not JSON; like any bad
// message it gets an error frame and the connection stays.
func TestE2EEmptyMessage(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	c.sendRaw("")
	f, err := c.tryRead(2 * time.Second)
	if err != nil {
		t.Fatalf("empty message: no answer within 2s (%v), want an invalid_message error frame", err)
	}
	if f.Type != "error" || f.Code != string(CodeInvalidMessage) {
		t.Fatalf("empty message answered with %s, want an invalid_message error frame", f.raw)
	}
	e2eExpectPong(c)
}

// TestE2ETooManySubscriptions: a connection holds at most MaxSubscriptions;
// the next subscribe is refused, and unsubscribing makes room.
func TestE2ETooManySubscriptions(t *testing.T) {
	t.Parallel()
	e := startGateway(t, func(c *Config) { c.MaxSubscriptions = 2 })
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "s1", "table": "public.orders"})
	c.subscribe(map[string]any{"id": "s2", "table": "public.orders"})
	c.send(map[string]any{"type": "subscribe", "id": "s3", "table": "public.orders"})
	c.expectError(CodeTooManySubscriptions, "s3")
	other := e.dial("/ws")
	other.subscribe(map[string]any{"id": "s3", "table": "public.orders"}) // the limit is per connection
	c.send(map[string]any{"type": "unsubscribe", "id": "s1"})
	c.expect("unsubscribed", "s1")
	c.subscribe(map[string]any{"id": "s3", "table": "public.orders"})
}

// TestE2ETopicNames: topic names with characters that NATS subjects and
// key-value keys reserve or escape go through create, topics, subscribe,
// publish and destroy unchanged.
func TestE2ETopicNames(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	for i, name := range []string{"50%off", "café", "a/b", "x=y", "a.b.c", "UPPER_lower-09", "a%2Eb", "=41", "ü.ß", "tab\\le"} {
		c.send(map[string]any{"type": "create-topic", "topic": name})
		if f := c.expect("topics", ""); !slices.Contains(f.Topics, name) {
			t.Fatalf("create-topic %q: topics %q", name, f.Topics)
		}
		id := fmt.Sprint("t", i)
		c.subscribe(map[string]any{"id": id, "topic": name})
		c.send(map[string]any{"type": "publish", "topic": name, "data": name})
		want, _ := json.Marshal(name)
		if f := c.expect("message", id); f.Topic != name || string(f.Data) != string(want) {
			t.Fatalf("topic %q: message %s", name, f.raw)
		}
		c.send(map[string]any{"type": "destroy-topic", "topic": name})
		// The error and unsubscribed of the subscription and the topics
		// answer may come in either order (the destroying connection is
		// also the subscriber).
		var sawTopics, sawErr, sawUnsub bool
		for !sawTopics || !sawErr || !sawUnsub {
			f := c.read(10 * time.Second)
			switch {
			case f.Type == "topics" && !slices.Contains(f.Topics, name):
				sawTopics = true
			case f.Type == "error" && f.Code == string(CodeUnknownTopic) && f.ID == id && !sawUnsub:
				sawErr = true
			case f.Type == "unsubscribed" && f.ID == id && sawErr:
				sawUnsub = true
			default:
				t.Fatalf("destroy-topic %q: unexpected frame %s", name, f.raw)
			}
		}
	}
	e2eExpectPong(c)
}

// TestE2EShutdown: shutting the gateway down closes every connection with
// 1001 and a reason, so that clients reconnect elsewhere and resume.
func TestE2EShutdown(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c1 := e.dial("/ws")
	c1.subscribe(map[string]any{"id": "s1", "table": "public.orders"})
	c2 := e.dial("/ws/tables/public.orders")
	c2.expect("subscribed", URLSubscriptionID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e.gw.Shutdown(ctx)
	c1.expectClose(CloseGoingAway)
	c2.expectClose(CloseGoingAway)
}

// e2ePublishRaw publishes a create event of public.orders whose data is the
// JSON text data, byte for byte, and returns its stream sequence.
func (e *testEnv) e2ePublishRaw(id int, data string) uint64 {
	e.t.Helper()
	n := e.ids.Add(1)
	eid := fmt.Sprintf("%016X-%04X", n, 1)
	env := fmt.Sprintf(`{"id":%q,"op":"create","db":%q,"schema":"public","table":"orders","lsn":"0/1","xid":%d,`+
		`"commit_time":"2026-11-22T07:00:00Z","key":{"id":%d},"data":%s}`, eid, testDB, n, id, data)
	return e.publishRaw(stream.ChangeSubject("tablecast", testDB, "public", "orders", schema.OpCreate), eid, []byte(env))
}

// TestE2EFilterEscapedText: text values are compared by their decoded
// value, however the event's JSON spells them, on the indexed (eq) path and
// the scanned one.
func TestE2EFilterEscapedText(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	c := e.dial("/ws")
	e2eMarkSub(c)
	subs := []struct {
		id, where string
		want      []int
	}{
		{"eq", `{"status":{"eq":"paid"}}`, []int{1, 2}},
		{"in", `{"status":{"in":["paid"]}}`, []int{1, 2}},
		{"gte-lte", `{"status":{"gte":"paid","lte":"paid"}}`, []int{1, 2}},
		{"neq", `{"status":{"neq":"paid"}}`, []int{3, 4}},
		{"accent", `{"tenant":{"eq":"café"}}`, []int{1, 3}},
		{"accent-range", `{"tenant":{"gte":"café","lt":"cafë"}}`, []int{1, 3}},
		{"angle", `{"tenant":{"eq":"a<b"}}`, []int{2, 4}},
	}
	for _, s := range subs {
		c.sendRaw(`{"type":"subscribe","id":"` + s.id + `","table":"public.orders","events":["create"],"where":` + s.where + `}`)
		c.expect("subscribed", s.id)
	}
	e.e2ePublishRaw(1, `{"id":1,"status":"p\u0061id","tenant":"caf\u00e9"}`)
	e.e2ePublishRaw(2, `{"id":2,"status":"paid","tenant":"a\u003cb"}`)
	e.e2ePublishRaw(3, `{"id":3,"status":"open","tenant":"café"}`)
	e.e2ePublishRaw(4, `{"id":4,"status":"pa\"id","tenant":"a<b"}`)
	got := e2eEventsByID(t, e.e2eFlush(c)[0])
	for _, s := range subs {
		if ids := e2eIDs(got[s.id]); !slices.Equal(ids, s.want) {
			t.Errorf("%s %s: rows %v, want %v", s.id, s.where, ids, s.want)
		}
	}
}

// TestE2EUpgradeAfterKeepAlive: a WebSocket upgrade sent on a connection
// that first served a plain HTTP request (HTTP/1.1 keep-alive) is upgraded
// like any other, URL subscription and origin check included.
func TestE2EUpgradeAfterKeepAlive(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	for _, tc := range []struct {
		path, origin string
		code         CloseCode // 0: accepted
	}{
		{"/ws", "", 0},
		{"/ws/tables/public.orders?status=eq.paid", "", 0},
		{"/ws", "http://evil.example", CloseForbiddenOrigin},
		{"/ws/tables/public.orders?nope=eq.1", "", CloseBadRequest},
	} {
		t.Run(tc.path+" "+tc.origin, func(t *testing.T) {
			nc, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = nc.Close() })
			_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(nc, "GET / HTTP/1.1\r\nHost: "+e.addr+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(nc)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Close {
				t.Fatalf("GET / answered %s (close %v)", resp.Status, resp.Close)
			}
			r := e2eRawUpgrade(t, nc, br, e.addr, tc.path, tc.origin)
			if tc.code != 0 {
				r.expectClose(tc.code, 5*time.Second)
				return
			}
			if strings.HasPrefix(tc.path, URLSubscriptionPrefix) {
				if f := r.readText(5 * time.Second); f.Type != "subscribed" || f.ID != URLSubscriptionID {
					t.Fatalf("URL subscription answered %s", f.raw)
				}
			}
			r.write(e2eMasked(0x80|opText, []byte(`{"type":"ping"}`)))
			if f := r.readText(5 * time.Second); f.Type != "pong" {
				t.Fatalf("ping answered %s", f.raw)
			}
		})
	}
}

// TestE2EManyStalledClients: half a frame followed by silence holds that
// connection for ReadTimeout at most, and nobody else: with more stalled
// connections than the gateway reads at once (1024), a new client's ping
// is still answered at once, not when the stalled ones time out.
func TestE2EManyStalledClients(t *testing.T) {
	t.Parallel()
	const readTimeout = 3 * time.Second
	e := startGateway(t, func(c *Config) { c.ReadTimeout = readTimeout })
	const stalled = 1100
	half := e2eMasked(0x80|opText, []byte(`{"type":"ping"}`))[:3]
	for i := 0; i < stalled; i++ {
		e2eRawDial(t, e.addr, "/ws", "").write(half)
	}
	c := e2eDial(t, e, "/ws")
	start := time.Now()
	c.send(map[string]any{"type": "ping"})
	f, err := c.tryRead(2 * readTimeout)
	if err != nil || f.Type != "pong" {
		t.Fatalf("ping answered with %s, %v", f.raw, err)
	}
	if d := time.Since(start); d > readTimeout/2 {
		t.Errorf("ping answered after %v: it waited for %d stalled connections (ReadTimeout %v)", d.Round(time.Millisecond), stalled, readTimeout)
	}
}
