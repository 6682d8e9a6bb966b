package stream

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
)

// BenchmarkPacedTransactions measures the CPU a stored event costs when
// events come as a primary commits them at a moderate rate rather than in a
// burst: transactions of ten events, each ended by a flush (as the reader
// ends its batch once the walsender falls silent), one transaction a
// millisecond at most. At such rates the cost is in wake-ups and system
// calls per transaction, not in the events, so it is far above the burst
// figure of BenchmarkStoreCosts. The client reaches the embedded server
// through a loopback socket or in process (as `tablecast run` does), with
// the reader's options (fast batches, ids, fence). The burst cases publish
// thousand-event transactions back to back, as a reader catching up does.
//
//	go test -run='^$' -bench=PacedTransactions -benchtime=20000x ./stream/
func BenchmarkPacedTransactions(b *testing.B) {
	for _, c := range []struct {
		name      string
		rows      int
		paced     bool
		inProcess bool
	}{
		{"paced/socket", 10, true, false}, {"paced/in-process", 10, true, true},
		{"burst/socket", 1000, false, false}, {"burst/in-process", 1000, false, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := startTestServer(b, "")
			var opts []nats.Option
			if c.inProcess {
				opts = append(opts, nats.InProcessServer(e))
			}
			_, _, p := benchPublisher(b, e, opts...)
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			publishTransactions(b, p, c.rows, c.paced)
			elapsed := time.Since(start)
			b.StopTimer()
			reportThroughput(b, elapsed, processCPU()-cpu)
		})
	}
}

// benchPublisher connects to e (with opts), makes sure of the stream and
// returns a publisher with the reader's options (fast batches, ids,
// fence); all are closed as b ends.
func benchPublisher(b *testing.B, e *Embedded, opts ...nats.Option) (*nats.Conn, jetstream.JetStream, *Publisher) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, e.ClientURL(), "bench-publisher", quietLogger(), opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		b.Fatal(err)
	}
	p, err := NewPublisher(nc, js, 4096, quietLogger(),
		WithBatches(ControlSubject("")), WithFence(FenceSubject("", "slot"), 0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return nc, js, p
}

// publishTransactions publishes b.N events of public.orders through p in
// transactions of rows events, each ended by a flush, one a millisecond at
// most when paced, and waits until all are acknowledged.
func publishTransactions(b *testing.B, p *Publisher, rows int, paced bool) {
	b.Helper()
	subject := ChangeSubject("tablecast", "shop", "public", "orders", schema.OpCreate)
	id := make([]byte, 0, 32)
	n := 0
	for n < b.N {
		next := time.Now().Add(time.Millisecond)
		for r := 0; r < rows && n < b.N; r++ {
			id = strconv.AppendInt(append(id[:0], "00000000016B3748-"...), int64(n), 10)
			if _, err := p.Publish(context.Background(), subject, string(id), benchPayload); err != nil {
				b.Fatal(err)
			}
			n++
		}
		if err := p.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
		if paced {
			time.Sleep(time.Until(next))
		}
	}
	benchAcked(b, p, uint64(b.N))
}
