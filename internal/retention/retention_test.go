package retention

import (
	"context"
	"errors"
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
