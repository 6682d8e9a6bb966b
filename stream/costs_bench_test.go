package stream

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
)

// BenchmarkStoreCosts measures what each part of an event's message costs
// the process (the embedded server storing it and the publisher), in the
// reader's configuration: fast batches into a file-store stream, with and
// without the message id (the duplicate index) and the fence headers.
//
//	go test -run='^$' -bench=StoreCosts -benchtime=300000x ./stream/
func BenchmarkStoreCosts(b *testing.B) {
	for _, c := range []struct {
		name        string
		ids, fenced bool
	}{{"plain", false, false}, {"ids", true, false}, {"fence", false, true}, {"ids+fence", true, true}} {
		b.Run(c.name, func(b *testing.B) {
			nc, js := benchSetup(b)
			opts := []PublisherOption{WithBatches(ControlSubject(""))}
			if c.fenced {
				opts = append(opts, WithFence(FenceSubject("", "slot"), 0))
			}
			p, err := NewPublisher(nc, js, 4096, quietLogger(), opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			ctx := context.Background()
			subject := ChangeSubject("tablecast", "shop", "public", "orders", schema.OpUpdate)
			id := make([]byte, 0, 32)
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			for i := range b.N {
				var msgID string
				if c.ids {
					id = strconv.AppendInt(append(id[:0], "00000000016B3748-"...), int64(i), 10)
					msgID = string(id)
				}
				if _, err := p.Publish(ctx, subject, msgID, benchPayload); err != nil {
					b.Fatal(err)
				}
			}
			if err := p.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			benchAcked(b, p, uint64(b.N))
			elapsed := time.Since(start)
			b.StopTimer()
			reportThroughput(b, elapsed, processCPU()-cpu)
		})
	}
}
