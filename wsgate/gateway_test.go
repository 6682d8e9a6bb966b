package wsgate

import (
	"testing"
	"time"
)

func TestSubscribeReceivesEvents(t *testing.T) {
	e := startGateway(t, nil)
	c := e.dial("/ws")
	sub := c.subscribe(map[string]any{"id": "s1", "table": "public.orders"})
	seq := e.publish("create", map[string]any{"id": 1, "status": "open", "total": "19.90"})
	if seq <= sub.Seq {
		t.Fatalf("event seq %d not after subscribed seq %d", seq, sub.Seq)
	}
	f := c.expect("event", "s1")
	if f.Seq != seq {
		t.Fatalf("event frame seq %d, want %d", f.Seq, seq)
	}
	ev := f.event()
	if ev["op"] != "create" || ev["data"].(map[string]any)["status"] != "open" {
		t.Fatalf("event %s", f.Event)
	}
	c.send(map[string]any{"type": "unsubscribe", "id": "s1"})
	c.expect("unsubscribed", "s1")
	e.publish("create", map[string]any{"id": 2, "status": "open"})
	c.expectQuiet(300 * time.Millisecond)
}
