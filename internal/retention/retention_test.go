package retention

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestLost(t *testing.T) {
	for _, c := range []struct {
		name             string
		last, seq, first uint64
		from, to         uint64
		lost             bool
	}{
		{"next in line", 10, 11, 50, 0, 0, false},
		{"jump over messages still held", 10, 20, 5, 0, 0, false},
		{"jump, first just after last", 10, 20, 11, 0, 0, false},
		{"first past last+1", 10, 20, 15, 11, 14, true},
		{"first past seq: up to seq", 10, 20, 30, 11, 19, true},
		{"a redelivery below last", 10, 8, 30, 0, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			from, to, lost := Lost(c.last, c.seq, c.first)
			if from != c.from || to != c.to || lost != c.lost {
				t.Fatalf("Lost(%d, %d, %d) = %d, %d, %v; want %d, %d, %v", c.last, c.seq, c.first, from, to, lost, c.from, c.to, c.lost)
			}
		})
	}
}

// fakeStream and fakeConsumer count their reads (pure logic: no server).
type fakeStream struct {
	first uint64
	reads int
	fail  int // reads that fail first
}

func (s *fakeStream) Info(context.Context, ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error) {
	s.reads++
	if s.fail > 0 {
		s.fail--
		return nil, errors.New("no responders")
	}
	return &jetstream.StreamInfo{State: jetstream.StreamState{FirstSeq: s.first}}, nil
}

type fakeConsumer struct{ delivered uint64 }

func (c *fakeConsumer) Info(context.Context) (*jetstream.ConsumerInfo, error) {
	return &jetstream.ConsumerInfo{Name: "c", Delivered: jetstream.SequenceInfo{Consumer: c.delivered}}, nil
}

func meta(consumer string, cseq uint64) *jetstream.MsgMetadata {
	return &jetstream.MsgMetadata{Consumer: consumer, Sequence: jetstream.SequencePair{Consumer: cseq}}
}

// TestCoverReadsOncePerBacklog: one read covers every message the consumer
// had delivered before it; a later delivery, or another consumer, reads
// again.
func TestCoverReadsOncePerBacklog(t *testing.T) {
	ctx := context.Background()
	str := &fakeStream{first: 7, fail: 2}
	cons := &fakeConsumer{delivered: 100}
	var c Cover
	for cseq := uint64(90); cseq <= 100; cseq++ {
		first, err := c.FirstCovering(ctx, meta("c", cseq), cons, str, time.Second)
		if err != nil || first != 7 {
			t.Fatalf("first %d, %v", first, err)
		}
	}
	if str.reads != 3 { // two failures retried, then one read for all
		t.Fatalf("%d reads, want 3", str.reads)
	}
	str.first = 9
	if first, _ := c.FirstCovering(ctx, meta("c", 101), cons, str, time.Second); first != 9 || str.reads != 4 {
		t.Fatalf("a delivery after the cover: first %d after %d reads", first, str.reads)
	}
	if _, _ = c.FirstCovering(ctx, meta("other", 5), cons, str, time.Second); str.reads != 5 {
		t.Fatalf("another consumer's delivery read nothing")
	}
}

func TestBeforeStart(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	// Kept: 90,000 to 99,999, stored from t0 on.
	rolled := jetstream.StreamState{Msgs: 10_000, FirstSeq: 90_000, LastSeq: 99_999, FirstTime: t0, LastTime: t0.Add(time.Hour)}
	empty := jetstream.StreamState{FirstSeq: 501, LastSeq: 500, LastTime: t0}
	const notYet = math.MaxUint64 // no consumer yet
	for _, c := range []struct {
		name        string
		seq         uint64
		at          time.Time
		begin       uint64
		st          jetstream.StreamState
		from, to    uint64
		upper, lost bool
	}{
		{"seq discarded", 5, time.Time{}, 90_000, rolled, 5, 89_999, false, true},
		{"seq discarded, no consumer yet", 5, time.Time{}, notYet, rolled, 5, 89_999, false, true},
		{"seq kept", 95_000, time.Time{}, 95_000, rolled, 0, 0, false, false},
		{"seq kept, no consumer yet", 95_000, time.Time{}, notYet, rolled, 0, 0, false, false},
		{"seq, the consumer's first discarded since", 5, time.Time{}, 90_000, jetstream.StreamState{Msgs: 1, FirstSeq: 95_000, FirstTime: t0}, 5, 89_999, false, true},
		{"time before the first kept", 0, t0.Add(-time.Second), notYet, rolled, 1, 89_999, true, true},
		{"time at the first kept", 0, t0, 90_000, rolled, 0, 0, false, false},
		{"time, empty stream, stored after it", 0, t0.Add(-time.Second), 501, empty, 1, 500, true, true},
		{"time, empty stream, stored before it", 0, t0.Add(time.Second), 501, empty, 0, 0, false, false},
		{"fresh stream", 1, time.Time{}, 1, jetstream.StreamState{Msgs: 3, FirstSeq: 1, LastSeq: 3, FirstTime: t0}, 0, 0, false, false},
		{"nothing stored", 0, t0, notYet, jetstream.StreamState{}, 0, 0, false, false},
		{"no start", 0, time.Time{}, notYet, rolled, 0, 0, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			from, to, upper, lost := BeforeStart(c.seq, c.at, c.begin, c.st)
			if from != c.from || to != c.to || upper != c.upper || lost != c.lost {
				t.Fatalf("BeforeStart = %d, %d, %v, %v; want %d, %d, %v, %v", from, to, upper, lost, c.from, c.to, c.upper, c.lost)
			}
		})
	}
}
