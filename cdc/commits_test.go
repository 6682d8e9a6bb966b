package cdc

import (
	"testing"
	"time"
)

func TestCommitTracker(t *testing.T) {
	var c commitTracker
	now := time.Now()
	c.add(3, 100, now) // txn ending at LSN 100, last event seq 3
	c.add(3, 150, now) // an empty transaction: no new events
	c.add(7, 200, now)
	c.add(9, 300, now)

	steps := []struct {
		acked uint64
		want  uint64 // 0: nothing new to confirm
		empty bool
	}{
		{acked: 2, want: 0},
		{acked: 3, want: 150},
		{acked: 6, want: 0},
		{acked: 8, want: 200},
		{acked: 9, want: 300, empty: true},
		{acked: 9, want: 0, empty: true},
	}
	for _, s := range steps {
		var observed int
		got := c.advance(s.acked, now, func(time.Duration) { observed++ })
		if got != s.want || c.empty() != s.empty {
			t.Fatalf("advance(%d) = %d, empty %v; want %d, empty %v", s.acked, got, c.empty(), s.want, s.empty)
		}
		if (got != 0) != (observed > 0) {
			t.Fatalf("advance(%d): observed %d latencies for result %d", s.acked, observed, got)
		}
	}
}

func TestCommitTrackerCompacts(t *testing.T) {
	var c commitTracker
	now := time.Now()
	for i := uint64(1); i <= 100000; i++ {
		c.add(i, i*10, now)
		if i%3 == 0 {
			if got := c.advance(i-1, now, nil); got != (i-1)*10 {
				t.Fatalf("advance(%d) = %d, want %d", i-1, got, (i-1)*10)
			}
		}
	}
	if len(c.queue) > 4096 {
		t.Fatalf("queue holds %d entries for %d pending: never compacted", len(c.queue), len(c.queue)-c.head)
	}
}
