package wsgate

import (
	"testing"
	"time"
)

// TestHistoryFilterFailedOncePerSecond: a resume whose filter cannot be
// evaluated on the events of its history (they lack the column) says so
// at most once a second, as live delivery does, not once per event.
func TestHistoryFilterFailedOncePerSecond(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	first := e.publish("create", map[string]any{"id": 0, "status": "x"})
	for i := range 49 {
		e.publish("create", map[string]any{"id": i + 1, "status": "x"})
	}
	last := e.publish("create", map[string]any{"id": 50, "status": "x", "created": "2026-01-01T00:00:00Z"})
	c := e.dial("/ws")
	start := time.Now()
	c.subscribe(map[string]any{"id": "m", "table": "public.orders", "from": first - 1,
		"where": map[string]any{"created": map[string]any{"gte": "2020-01-01T00:00:00Z"}}})
	failed := 0
	for {
		f := c.read(10 * time.Second)
		if f.Type == "event" && f.Seq == last {
			break
		}
		if f.Type != "error" || f.Code != string(CodeFilterFailed) {
			t.Fatalf("got %s, want filter_failed or the event %d", f.raw, last)
		}
		failed++
	}
	if most := 1 + int(time.Since(start)/time.Second); failed < 1 || failed > most {
		t.Fatalf("%d filter_failed frames for 50 events in %v, want 1 to %d", failed, time.Since(start), most)
	}
}
