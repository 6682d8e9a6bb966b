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
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			nc, err := Connect(ctx, e.ClientURL(), "paced-bench", quietLogger(), opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
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
			defer p.Close()
			subject := ChangeSubject("tablecast", "shop", "public", "orders", schema.OpCreate)
			id := make([]byte, 0, 32)
			n := 0
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			for n < b.N {
				next := time.Now().Add(time.Millisecond)
				for r := 0; r < c.rows && n < b.N; r++ {
					id = strconv.AppendInt(append(id[:0], "00000000016B3748-"...), int64(n), 10)
					if _, err := p.Publish(context.Background(), subject, string(id), benchPayload); err != nil {
						b.Fatal(err)
					}
					n++
				}
				if err := p.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
				if c.paced {
					time.Sleep(time.Until(next))
				}
			}
			benchAcked(b, p, uint64(b.N))
			elapsed := time.Since(start)
			b.StopTimer()
			reportThroughput(b, elapsed, processCPU()-cpu)
		})
	}
}
