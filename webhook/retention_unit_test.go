package webhook

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// keepingUp is a worker whose consumer hands it events of its table among
// others' (jumps of 3), each with nothing of its own after it: the path of
// every event of an endpoint that keeps up.
func keepingUp() (*worker, *jetstream.MsgMetadata, func()) {
	w := &worker{}
	w.gaps = gapCheck{known: true, caughtUp: true}
	md := &jetstream.MsgMetadata{Consumer: "c", NumDelivered: 1}
	next := func() {
		md.Sequence.Consumer = w.gaps.cseq + 1
		md.Sequence.Stream = w.gaps.pos + 3
		w.checkGap(context.Background(), md)
	}
	return w, md, next
}

// TestCheckGapKeepingUpAllocatesNothing: the check costs an endpoint that
// keeps up no allocation (and no request: it has no Manager to ask).
func TestCheckGapKeepingUpAllocatesNothing(t *testing.T) {
	_, _, next := keepingUp()
	if n := testing.AllocsPerRun(1000, next); n != 0 {
		t.Fatalf("%v allocations per event", n)
	}
}

func BenchmarkCheckGapKeepingUp(b *testing.B) {
	_, _, next := keepingUp()
	b.ReportAllocs()
	for b.Loop() {
		next()
	}
}

// TestRetentionUsed: the fraction of the closest limit that the stream
// stored from an endpoint's oldest unread event on.
func TestRetentionUsed(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	// 1000 messages, 1000 bytes each, seqs 1001-2000, one a minute apart
	// from t0 (seq 1001) to t0+999 min (seq 2000).
	st := jetstream.StreamState{Msgs: 1000, Bytes: 1_000_000, FirstSeq: 1001, LastSeq: 2000, FirstTime: t0, LastTime: t0.Add(999 * time.Minute)}
	now := t0.Add(1000 * time.Minute)
	behind := func(delivered uint64) *jetstream.ConsumerInfo {
		return &jetstream.ConsumerInfo{NumPending: 1, Delivered: jetstream.SequenceInfo{Stream: delivered}}
	}
	for _, c := range []struct {
		name string
		ci   *jetstream.ConsumerInfo
		cfg  jetstream.StreamConfig
		want float64
	}{
		{"nothing unread", &jetstream.ConsumerInfo{Delivered: jetstream.SequenceInfo{Stream: 1100}}, jetstream.StreamConfig{MaxMsgs: 1000}, 0},
		{"no limit", behind(1100), jetstream.StreamConfig{}, 0},
		{"messages", behind(1500), jetstream.StreamConfig{MaxMsgs: 2000}, 0.25},
		{"bytes", behind(1500), jetstream.StreamConfig{MaxBytes: 1_000_000}, 0.5},
		{"age", behind(1500), jetstream.StreamConfig{MaxAge: 1000 * time.Minute}, 0.5},
		{"the closest limit", behind(1500), jetstream.StreamConfig{MaxMsgs: 2000, MaxBytes: 4_000_000, MaxAge: 625 * time.Minute}, 0.8},
		{"held below the delivered position", &jetstream.ConsumerInfo{NumAckPending: 3, Delivered: jetstream.SequenceInfo{Stream: 1900}, AckFloor: jetstream.SequenceInfo{Stream: 1100}},
			jetstream.StreamConfig{MaxMsgs: 1000}, 0.9},
		{"already discarded", behind(900), jetstream.StreamConfig{MaxMsgs: 5000}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := retentionUsed(c.ci, c.cfg, st, now); math.Abs(got-c.want) > 0.001 {
				t.Fatalf("%v, want %v", got, c.want)
			}
		})
	}
}

// TestStartGap: what a consumer just created, whose first position is
// begin, reports before its start, from the stream's state read after.
func TestStartGap(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(48 * time.Hour)
	// Kept: 90,000 to 99,999, stored from t0 on; 1 to 89,999 discarded.
	rolled := jetstream.StreamState{Msgs: 10_000, FirstSeq: 90_000, LastSeq: 99_999, FirstTime: t0, LastTime: t0.Add(24 * time.Hour)}
	fresh := jetstream.StreamState{Msgs: 10, FirstSeq: 1, LastSeq: 10, FirstTime: t0, LastTime: t0.Add(time.Minute)}
	// Everything discarded: the last message, 500, stored at t0.
	empty := jetstream.StreamState{FirstSeq: 501, LastSeq: 500, LastTime: t0}
	before, after := t0.Add(-time.Hour), t0.Add(time.Hour)
	for _, c := range []struct {
		name        string
		start       endpoint.Start
		begin       uint64
		st          jetstream.StreamState
		first, last uint64 // 0: no gap
		storedAfter *time.Time
	}{
		{"seq discarded", endpoint.Start{Seq: 5}, 90_000, rolled, 5, 89_999, nil},
		{"seq kept", endpoint.Start{Seq: 95_000}, 95_000, rolled, 0, 0, nil},
		{"seq the first kept", endpoint.Start{Seq: 90_000}, 90_000, rolled, 0, 0, nil},
		{"seq on a fresh stream", endpoint.Start{Seq: 1}, 1, fresh, 0, 0, nil},
		{"seq past the end", endpoint.Start{Seq: 200_000}, 200_000, rolled, 0, 0, nil},
		// The stream went on discarding after the creation: what the
		// consumer would have delivered is its own jump's.
		{"seq, discarded since", endpoint.Start{Seq: 5}, 90_000, jetstream.StreamState{Msgs: 5000, FirstSeq: 95_000, LastSeq: 99_999, FirstTime: after}, 5, 89_999, nil},
		{"time before the first kept", endpoint.Start{Time: before}, 90_000, rolled, 1, 89_999, &before},
		{"time within what is kept", endpoint.Start{Time: after}, 95_000, rolled, 0, 0, nil},
		{"time when the first kept was stored", endpoint.Start{Time: t0}, 90_000, rolled, 0, 0, nil},
		{"time on a fresh stream", endpoint.Start{Time: before}, 1, fresh, 0, 0, nil},
		{"time, empty stream, discarded after it", endpoint.Start{Time: before}, 501, empty, 1, 500, &before},
		{"time, empty stream, all stored before it", endpoint.Start{Time: after}, 501, empty, 0, 0, nil},
		{"nothing stored yet", endpoint.Start{Time: before}, 1, jetstream.StreamState{}, 0, 0, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			gap, ok := startGap(c.start, c.begin, c.st, now)
			if !ok {
				if c.first != 0 {
					t.Fatalf("no gap, want %d-%d", c.first, c.last)
				}
				return
			}
			if c.first == 0 {
				t.Fatalf("gap %+v, want none", gap)
			}
			if gap.FirstSeq != c.first || gap.LastSeq != c.last || gap.Messages != c.last-c.first+1 || gap.NextSeq != c.last+1 || !gap.AtStart || !gap.FoundAt.Equal(now) {
				t.Fatalf("gap %+v, want %d-%d, next %d, at start", gap, c.first, c.last, c.last+1)
			}
			if (gap.StoredAfter == nil) != (c.storedAfter == nil) || c.storedAfter != nil && !gap.StoredAfter.Equal(*c.storedAfter) {
				t.Fatalf("stored after %v, want %v", gap.StoredAfter, c.storedAfter)
			}
			if c.st.Msgs > 0 && !gap.StoredBefore.Equal(c.st.FirstTime) {
				t.Fatalf("stored before %v, want the first kept's time %v", gap.StoredBefore, c.st.FirstTime)
			}
		})
	}
}
