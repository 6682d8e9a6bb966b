package stream

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tablecast/tablecast/schema"
)

// benchPayload is a typical event: about 300 bytes of JSON.
var benchPayload = func() []byte {
	b := []byte(`{"id":"00000000016B3748-0003","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"id":42,"status":"paid","total":"19.90"},"old":{"id":42,"status":"open","total":"19.90"},"unchanged":["notes"]`)
	for len(b) < 299 {
		b = append(b, ' ')
	}
	return append(b, '}')
}()

func benchSetup(b *testing.B) (*nats.Conn, jetstream.JetStream) {
	b.Helper()
	e := startTestServer(b, "")
	nc, js := connectTest(b, e.ClientURL())
	if _, err := EnsureStream(context.Background(), js, StreamConfig{}); err != nil {
		b.Fatal(err)
	}
	return nc, js
}

// BenchmarkPublisher measures end-to-end throughput into an embedded
// JetStream with file storage: every message is acknowledged before the
// clock stops. allocs/op includes the benchmark's own msg id string.
//
//	go test -run='^$' -bench=Publisher -benchtime=200000x ./stream/
func BenchmarkPublisher(b *testing.B) {
	for _, window := range []int{256, 1024, 4096} {
		b.Run("inflight="+strconv.Itoa(window), func(b *testing.B) {
			nc, js := benchSetup(b)
			p, err := NewPublisher(nc, js, window, quietLogger())
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			ctx := context.Background()
			subject := ChangeSubject("tablecast", "shop", "public", "orders", schema.OpUpdate)
			id := make([]byte, 0, 32)

			b.ReportAllocs()
			b.SetBytes(int64(len(benchPayload)))
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			for i := range b.N {
				id = strconv.AppendInt(append(id[:0], "00000000016B3748-"...), int64(i), 10)
				if _, err := p.Publish(ctx, subject, string(id), benchPayload); err != nil {
					b.Fatal(err)
				}
			}
			benchAcked(b, p, uint64(b.N))
			elapsed := time.Since(start)
			b.StopTimer()
			reportThroughput(b, elapsed, processCPU()-cpu)
		})
	}
}

// BenchmarkPublisherEchoAck measures the Publisher's own ceiling: the
// server only routes, and a core NATS responder acknowledges every message
// at once, so JetStream's per-message write does not bound the figure.
func BenchmarkPublisherEchoAck(b *testing.B) {
	e := startTestServer(b, "")
	nc, js := connectTest(b, e.ClientURL())
	responder, _ := connectTest(b, e.ClientURL())
	ack := []byte(`{"stream":"TABLECAST","seq":1}`)
	sub, err := responder.Subscribe("tablecast.>", func(m *nats.Msg) { _ = responder.Publish(m.Reply, ack) })
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		b.Fatal(err)
	}
	if err := responder.Flush(); err != nil {
		b.Fatal(err)
	}
	p, err := NewPublisher(nc, js, 256, quietLogger())
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	subject := ChangeSubject("tablecast", "shop", "public", "orders", schema.OpUpdate)
	id := make([]byte, 0, 32)

	b.ReportAllocs()
	b.SetBytes(int64(len(benchPayload)))
	b.ResetTimer()
	start, cpu := time.Now(), processCPU()
	for i := range b.N {
		id = strconv.AppendInt(append(id[:0], "00000000016B3748-"...), int64(i), 10)
		if _, err := p.Publish(ctx, subject, string(id), benchPayload); err != nil {
			b.Fatal(err)
		}
	}
	benchAcked(b, p, uint64(b.N))
	elapsed := time.Since(start)
	b.StopTimer()
	reportThroughput(b, elapsed, processCPU()-cpu)
}

// BenchmarkJetStreamPublishAsync is the alternative Publisher did not take:
// jetstream.PublishMsgAsync, with the futures consumed in order by a second
// goroutine. Kept as the baseline BenchmarkPublisher is measured against.
func BenchmarkJetStreamPublishAsync(b *testing.B) {
	const window = 4096
	e := startTestServer(b, "")
	nc, _ := connectTest(b, e.ClientURL())
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(window))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := EnsureStream(context.Background(), js, StreamConfig{}); err != nil {
		b.Fatal(err)
	}
	subject := ChangeSubject("tablecast", "shop", "public", "orders", schema.OpUpdate)
	futures := make(chan jetstream.PubAckFuture, window)
	acked := make(chan error, 1)
	go func() {
		for f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				acked <- err
				return
			}
		}
		acked <- nil
	}()

	b.ReportAllocs()
	b.SetBytes(int64(len(benchPayload)))
	b.ResetTimer()
	start, cpu := time.Now(), processCPU()
	id := make([]byte, 0, 32)
	for i := range b.N {
		id = strconv.AppendInt(append(id[:0], "00000000016B3748-"...), int64(i), 10)
		f, err := js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: benchPayload}, jetstream.WithMsgID(string(id)), jetstream.WithStallWait(time.Minute))
		if err != nil {
			b.Fatal(err)
		}
		futures <- f
	}
	close(futures)
	if err := <-acked; err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	reportThroughput(b, elapsed, processCPU()-cpu)
}

// reportThroughput reports messages per second and the CPU time the whole
// process (client and embedded server) spent per message.
// benchAcked waits until p's first n messages are acknowledged, waking on
// p's progress (which it consumes) so that the clock stops without a poll's
// delay; it fails b when p fails or makes no progress for ten seconds.
func benchAcked(b *testing.B, p *Publisher, n uint64) {
	b.Helper()
	for p.Acked() < n {
		select {
		case <-p.Progress():
		case <-p.Failed():
			b.Fatal(p.Err())
		case <-time.After(10 * time.Second):
			b.Fatalf("acked %d of %d", p.Acked(), n)
		}
	}
}

func reportThroughput(b *testing.B, elapsed, cpu time.Duration) {
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/msg")
	}
}

// BenchmarkDuplicateIndex measures what JetStream's duplicate window costs
// the server's heap per message id it remembers: the same messages are
// published with and without a Nats-Msg-Id into a fresh server each, and
// the difference in the live heap each added (server and client are in
// this process) is divided by their number. At a sustained rate R, the
// index holds R × TABLECAST_DUPLICATE_WINDOW ids.
//
//	go test -run='^$' -bench=DuplicateIndex -benchtime=1x ./stream/
func BenchmarkDuplicateIndex(b *testing.B) {
	const msgs = 300_000
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	// growth returns how much live heap a server holding msgs messages
	// adds, with or without ids.
	growth := func(withIDs bool) float64 {
		before := heap()
		e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: b.TempDir(), Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		defer e.Shutdown()
		ctx := context.Background()
		nc, err := Connect(ctx, e.ClientURL(), "bench", quietLogger())
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		if _, err := EnsureStream(ctx, js, StreamConfig{DuplicateWindow: time.Hour}); err != nil {
			b.Fatal(err)
		}
		p, err := NewPublisher(nc, js, 4096, quietLogger())
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		subject := ChangeSubject("tablecast", "shop", "public", "orders", schema.OpUpdate)
		id := make([]byte, 0, 32)
		for i := range msgs {
			var msgID string
			if withIDs {
				id = strconv.AppendInt(append(id[:0], "00000000016B3748-"...), int64(i), 10)
				msgID = string(id)
			}
			if _, err := p.Publish(ctx, subject, msgID, benchPayload); err != nil {
				b.Fatal(err)
			}
		}
		benchAcked(b, p, msgs)
		return float64(heap()) - float64(before)
	}
	for range b.N {
		without := growth(false)
		with := growth(true)
		b.ReportMetric((with-without)/msgs, "heap-B/id")
	}
}
