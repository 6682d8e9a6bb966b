package stream_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// BenchmarkFenceRing measures what fencing costs publishing into a stream
// with three replicas on a three-node cluster (nats-server processes on
// loopback): messages of 300 bytes with message ids, acknowledged alone or
// in fast batches, unfenced with the reader's default window of 8,192
// messages and with the fence ring's FenceRingSize-1, and fenced by a ring
// (WithFenceRing, which keeps the window at FenceRingSize-1). Every message is
// acknowledged before the clock stops.
//
//	go test -run='^$' -bench=FenceRing -benchtime=50000x ./stream/
func BenchmarkFenceRing(b *testing.B) {
	cl := natstest.StartCluster(b, 3)
	payload := make([]byte, 300)
	for i := range payload {
		payload[i] = 'x'
	}
	streams := 0
	for _, batch := range []bool{false, true} {
		for _, c := range []struct {
			name   string
			window int
			ring   bool
		}{{"unfenced/window=8192", 8192, false}, {"unfenced/window=ring", stream.FenceRingSize - 1, false}, {"ring", 8192, true}} {
			mode := "alone"
			if batch {
				mode = "batches"
			}
			b.Run(mode+"/"+c.name, func(b *testing.B) {
				streams++
				prefix := fmt.Sprintf("bench%d", streams)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				defer cancel()
				cfg := stream.StreamConfig{Name: fmt.Sprintf("BENCH%d", streams), Prefix: prefix, Replicas: 3, DuplicateWindow: 2 * time.Minute}
				if _, err := stream.EnsureStream(ctx, cl.JS, cfg); err != nil {
					b.Fatal(err)
				}
				opts := []stream.PublisherOption{stream.WithStream(cfg.Name)}
				if batch {
					opts = append(opts, stream.WithBatches(stream.ControlSubject(prefix)))
				}
				if c.ring {
					ring := stream.FenceRingSubjects(prefix, "slot")
					seqs, err := stream.StoreFences(ctx, cl.JS, cfg.Name, ring, []byte(`{}`))
					if err != nil {
						b.Fatal(err)
					}
					opts = append(opts, stream.WithFenceRing(ring, seqs))
				}
				p, err := stream.NewPublisher(cl.NC, nil, c.window, discardLog, opts...)
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				subject := stream.ChangeSubject(prefix, "shop", "public", "orders", schema.OpUpdate)
				id := make([]byte, 0, 32)
				b.SetBytes(int64(len(payload)))
				b.ResetTimer()
				start := time.Now()
				for i := range b.N {
					id = strconv.AppendInt(append(id[:0], "00000000016B3748-"...), int64(i), 10)
					if _, err := p.Publish(ctx, subject, string(id), payload); err != nil {
						b.Fatal(err)
					}
				}
				if err := p.Flush(ctx); err != nil {
					b.Fatal(err)
				}
				for p.Acked() < uint64(b.N) {
					select {
					case <-p.Progress():
					case <-p.Failed():
						b.Fatal(p.Err())
					case <-time.After(30 * time.Second):
						b.Fatalf("acked %d of %d", p.Acked(), b.N)
					}
				}
				elapsed := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			})
		}
	}
}
