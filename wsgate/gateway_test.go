package wsgate

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
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

// TestEventAgeMetric: each message a live feed receives is counted in
// tablecast_gateway_event_age_seconds, with its age from JetStream storing
// it: never negative, and never more than the time from before it was
// published to the histogram's reading. (A message the ordered consumer
// delivers again after a reset is counted again.)
func TestEventAgeMetric(t *testing.T) {
	e := startGateway(t, nil)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "s1", "table": "public.orders"})
	before := time.Now()
	for i := range 3 {
		e.publish("create", map[string]any{"id": i + 1, "status": "open"})
	}
	for range 3 {
		c.expect("event", "s1")
	}
	var m dto.Metric
	bound := time.Since(before).Seconds()
	if err := e.gw.met.eventAge.Write(&m); err != nil {
		t.Fatal(err)
	}
	n, sum := m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
	if n < 3 {
		t.Fatalf("%d ages observed for 3 events received", n)
	}
	if sum < 0 || sum > float64(n)*bound {
		t.Fatalf("%d ages add up to %gs: not within 0 and %d × the %gs from before publishing to reading them", n, sum, n, bound)
	}
}
