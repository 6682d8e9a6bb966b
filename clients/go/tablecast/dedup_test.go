package tablecast

import (
	"fmt"
	"testing"
	"time"
)

// TestSeenIDsWindow: an id is recognised for the whole window and
// forgotten after it, and memory follows the window, not the total.
func TestSeenIDsWindow(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newSeenIDs(time.Minute)
	s.add("a", t0)
	if !s.seen("a", t0.Add(time.Minute)) {
		t.Error("a forgotten at the window's end")
	}
	if s.seen("a", t0.Add(time.Minute+time.Nanosecond)) {
		t.Error("a remembered after the window")
	}
	for i := range 100_000 {
		s.add(fmt.Sprint(i), t0.Add(time.Duration(i)*time.Millisecond))
	}
	if n := s.len(); n != 60_001 {
		t.Errorf("%d ids held after 100 s of one a millisecond with a 1-minute window, want 60,001", n)
	}
	if len(s.order)-s.head != s.len() || cap(s.order) > 4*s.len() {
		t.Errorf("order holds %d (head %d, cap %d) for %d ids", len(s.order), s.head, cap(s.order), s.len())
	}
}

// TestBackoffSchedule: the nth failure waits the nth step, then the last.
func TestBackoffSchedule(t *testing.T) {
	c, err := ConsumerConfig{Durable: "x"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	for delivered, want := range map[uint64]time.Duration{1: time.Second, 2: 5 * time.Second, 3: 30 * time.Second, 4: 2 * time.Minute, 40: 2 * time.Minute} {
		if got := c.backoff(delivered); got != want {
			t.Errorf("after delivery %d: %s, want %s", delivered, got, want)
		}
	}
	if _, err := (ConsumerConfig{Backoff: []time.Duration{}, MaxDeliver: -2}).withDefaults(); err == nil {
		t.Error("no durable, an empty backoff and a negative MaxDeliver accepted")
	}
}
