package webhook

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
