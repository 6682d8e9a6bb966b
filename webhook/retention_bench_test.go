package webhook

import (
	"context"
	"testing"

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
