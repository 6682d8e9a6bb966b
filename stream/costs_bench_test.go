package stream

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
		name               string
		ids, fenced, async bool
	}{{"plain", false, false, false}, {"ids", true, false, false}, {"fence", false, true, false}, {"ids+fence", true, true, false}, {"ids+fence+async", true, true, true}} {
		b.Run(c.name, func(b *testing.B) {
			nc, js := benchSetup(b)
			if c.async {
				setAsyncPersist(b, js)
			}
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

// BenchmarkAtomicBatchCosts measures, for comparison with StoreCosts, what
// a message costs the process when each transaction is published as one of
// JetStream's atomic batches (allow_atomic: stored all or nothing at its
// commit, one acknowledgement per batch) instead of in fast batches: the
// same payload and message ids, batches of 10 and of 1,000 messages (the
// transaction sizes of bench-latency.sh and bench-cdc.sh; 1,000 is the
// server's largest atomic batch), up to eight batches in flight. The
// publisher does not use them: see the README's performance section.
//
//	go test -run='^$' -bench=AtomicBatchCosts -benchtime=300000x ./stream/
func BenchmarkAtomicBatchCosts(b *testing.B) {
	for _, size := range []int{10, 1000} {
		b.Run("batch="+strconv.Itoa(size), func(b *testing.B) {
			e := startTestServer(b, "")
			nc, js := connectTest(b, e.ClientURL())
			ctx := context.Background()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
				Name: "ATOMIC", Subjects: []string{"atomic.>"}, Storage: jetstream.FileStorage,
				Duplicates: time.Second, AllowAtomicPublish: true,
			}); err != nil {
				b.Fatal(err)
			}
			const inFlight = 8
			acks := make(chan error, inFlight)
			inbox := nats.NewInbox()
			sub, err := nc.Subscribe(inbox, func(m *nats.Msg) {
				var ack struct {
					Error *struct {
						Description string `json:"description"`
					} `json:"error"`
				}
				if err := json.Unmarshal(m.Data, &ack); err != nil {
					acks <- fmt.Errorf("commit answer %q: %w", m.Data, err)
					return
				}
				if ack.Error != nil {
					acks <- fmt.Errorf("commit refused: %s", ack.Error.Description)
					return
				}
				acks <- nil
			})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Unsubscribe()
			subject := "atomic.shop.public.orders.update"
			msg := &nats.Msg{Subject: subject, Data: benchPayload, Header: nats.Header{}}
			id := make([]byte, 0, 32)
			pending := 0
			wait := func() {
				select {
				case err := <-acks:
					if err != nil {
						b.Fatal(err)
					}
					pending--
				case <-time.After(10 * time.Second):
					b.Fatalf("no commit answer in 10s, %d batches in flight", pending)
				}
			}
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			for done, batch := 0, 0; done < b.N; batch++ {
				n := min(size, b.N-done)
				if pending == inFlight {
					wait()
				}
				batchID := "b" + strconv.Itoa(batch)
				for k := 1; k <= n; k++ {
					id = strconv.AppendInt(append(id[:0], "00000000016B3748-"...), int64(done+k), 10)
					msg.Header.Set("Nats-Batch-Id", batchID)
					msg.Header.Set("Nats-Batch-Sequence", strconv.Itoa(k))
					msg.Header.Set("Nats-Msg-Id", string(id))
					msg.Reply = ""
					if k == n {
						msg.Header.Set("Nats-Batch-Commit", "1")
						msg.Reply = inbox
					}
					if err := nc.PublishMsg(msg); err != nil {
						b.Fatal(err)
					}
					msg.Header.Del("Nats-Batch-Commit")
				}
				pending++
				done += n
			}
			for pending > 0 {
				wait()
			}
			elapsed := time.Since(start)
			b.StopTimer()
			reportThroughput(b, elapsed, processCPU()-cpu)
			info, err := js.Stream(ctx, "ATOMIC")
			if err != nil {
				b.Fatal(err)
			}
			if got := info.CachedInfo().State.Msgs; got != uint64(b.N) {
				b.Fatalf("stream holds %d messages, want %d", got, b.N)
			}
		})
	}
}

// setAsyncPersist switches the stream to JetStream's asynchronous
// persistence (persist_mode async, nats-server 2.12+): a message is
// acknowledged once in the store's memory, written to its file by a
// flusher a few milliseconds later. The reader does not use it (see the
// README's performance section); the case measures what it would save.
func setAsyncPersist(b *testing.B, js jetstream.JetStream) {
	b.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, DefaultStreamName)
	if err != nil {
		b.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.PersistMode = jetstream.AsyncPersistMode
	// The mode is chosen when a stream is created, not changed after.
	if err := js.DeleteStream(ctx, cfg.Name); err != nil {
		b.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		b.Fatalf("switch the stream to async persistence: %v", err)
	}
}
