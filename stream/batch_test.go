package stream

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/tmpfs"
)

// batchOptions are a Publisher's options for the default stream with
// batches.
func batchOptions() []PublisherOption {
	return []PublisherOption{WithStream(DefaultStreamName), WithBatches(ControlSubject(DefaultPrefix))}
}

// TestPublisherBatchesInOrder: with batches, every message is stored once
// and in order, the watermark reaches the last one (flow acknowledgements
// let a window far smaller than a batch move on, and the end of each batch
// says where its last message is), JetStream answers far fewer times than
// there are messages, and nothing is stored on the control subject.
func TestPublisherBatchesInOrder(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	const total, window = 3000, 64
	p := newTestPublisher(t, nc, js, window, batchOptions()...)
	if !p.Batching() {
		t.Fatal("Batching() is false with WithBatches")
	}
	inBefore := nc.Stats().InMsgs

	publishN(t, p, 1, 1000, 1)
	if !p.Unflushed() {
		t.Fatal("Unflushed() is false after 1000 messages")
	}
	if err := p.Flush(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if p.Unflushed() {
		t.Fatal("Unflushed() is true after Flush")
	}
	waitAcked(t, p, 1000)
	publishN(t, p, 1001, total, 1001)
	if err := p.Flush(testContext(t)); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, p, total)
	replies := nc.Stats().InMsgs - inBefore

	msgs := readStream(t, js, DefaultStreamName)
	if len(msgs) != total {
		t.Fatalf("stream holds %d messages, want %d", len(msgs), total)
	}
	for i, m := range msgs {
		if m.id != msgID(i+1) || m.data != "msg "+strconv.Itoa(i+1) || m.subject != testSubject {
			t.Fatalf("message %d is %+v", i+1, m)
		}
	}
	// Once the last batch has ended, the watermark knows exactly where
	// its message is.
	waitFor(t, 10*time.Second, "the last batch's end to be acknowledged", func() bool {
		return p.Watermark().StreamSeq == msgs[total-1].seq
	})
	if replies > total/4 {
		t.Fatalf("JetStream answered %d times for %d messages in batches", replies, total)
	}
}

// TestPublisherBatchDuplicates: messages JetStream already holds count as
// stored, in the middle of a batch and when a whole batch repeats, and are
// not stored again.
func TestPublisherBatchDuplicates(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{DuplicateWindow: dedupeWindow}); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	p1 := newTestPublisher(t, nc, js, 16, batchOptions()...)
	publishN(t, p1, 1, 10, 1)
	if err := p1.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, p1, 10)

	p2 := newTestPublisher(t, nc, js, 16, batchOptions()...)
	publishN(t, p2, 6, 15, 1) // 6..10 are stored already
	if err := p2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, p2, 10)

	p3 := newTestPublisher(t, nc, js, 16, batchOptions()...)
	publishN(t, p3, 1, 5, 1) // a batch of nothing but duplicates
	if err := p3.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, p3, 5)
	if err := p3.Err(); err != nil {
		t.Fatalf("a batch of duplicates failed the publisher: %v", err)
	}

	msgs := readStream(t, js, DefaultStreamName)
	if len(msgs) != 15 {
		t.Fatalf("stream holds %d messages, want 15", len(msgs))
	}
	for i, m := range msgs {
		if m.id != msgID(i+1) {
			t.Fatalf("message %d has id %s", i+1, m.id)
		}
	}
}

// TestPublisherBatchRefusedMessage: JetStream refuses one message in the
// middle of a batch (too large for the stream). The Publisher fails naming
// that message, the watermark stops before it, and none of the messages
// published after it is stored: the order of the stream never has a later
// message ahead of a refused one. (Acknowledged one by one, the messages
// after it would be stored.)
func TestPublisherBatchRefusedMessage(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: DefaultStreamName, Subjects: []string{"tablecast.>", ControlSubject(DefaultPrefix)},
		AllowBatchPublish: true, MaxMsgSize: 1024, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, nc, js, 64, batchOptions()...)
	for i := 1; i <= 10; i++ {
		data := []byte("msg " + strconv.Itoa(i))
		if i == 6 {
			data = []byte(strings.Repeat("x", 2000))
		}
		if _, err := p.Publish(ctx, testSubject, msgID(i), data); err != nil {
			if i > 6 && errors.Is(err, ErrNegativeAck) {
				break // the refusal of message 6 came back before this one went
			}
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if err := p.Flush(ctx); err != nil && !errors.Is(err, ErrNegativeAck) {
		t.Fatal(err)
	}
	select {
	case <-p.Failed():
	case <-time.After(10 * time.Second):
		t.Fatalf("the publisher did not fail (acked %d)", p.Acked())
	}
	if err := p.Err(); !errors.Is(err, ErrNegativeAck) || !strings.Contains(err.Error(), "message 6 ") {
		t.Fatalf("failed with %v; want a negative acknowledgement of message 6", err)
	}
	waitAcked(t, p, 5)
	// Whatever JetStream had queued is dealt with once a barrier is.
	if err := Barrier(ctx, nc, ControlSubject(DefaultPrefix)); err != nil {
		t.Fatal(err)
	}
	msgs := readStream(t, js, DefaultStreamName)
	if len(msgs) != 5 {
		t.Fatalf("stream holds %d messages after the refusal of message 6, want 5: %+v", len(msgs), msgs)
	}
	for i, m := range msgs {
		if m.id != msgID(i+1) {
			t.Fatalf("message %d has id %s", i+1, m.id)
		}
	}
}

// TestPublisherBatchConnectionLost: the server goes away in the middle of
// a batch; the Publisher fails (its acknowledgements are lost with the
// connection), and what the restarted server holds is a prefix of what was
// sent, in order.
func TestPublisherBatchConnectionLost(t *testing.T) {
	dir := t.TempDir()
	e := startTestServer(t, dir)
	url := e.ClientURL()
	nc, js := connectTest(t, url)
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, nc, js, 512, batchOptions()...)
	ctx := testContext(t)
	var sent atomic.Int64
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for i := 1; ; i++ {
			if _, err := p.Publish(ctx, testSubject, msgID(i), []byte("msg "+strconv.Itoa(i))); err != nil {
				return
			}
			sent.Store(int64(i))
		}
	}()
	waitFor(t, 30*time.Second, "a few thousand messages acknowledged", func() bool { return p.Acked() > 3000 })
	e.Shutdown()
	select {
	case <-p.Failed():
	case <-time.After(20 * time.Second):
		t.Fatal("the publisher did not fail when the server went away")
	}
	<-stopped
	if err := p.Err(); !errors.Is(err, ErrConnectionLost) && !errors.Is(err, ErrNotConnected) && !errors.Is(err, nats.ErrConnectionClosed) {
		t.Logf("failed with %v", err)
	}
	acked := p.Acked()

	e2, err := StartEmbedded(EmbeddedConfig{Listen: strings.TrimPrefix(url, "nats://"), StoreDir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e2.Shutdown)
	nc2, js2 := connectTest(t, e2.ClientURL())
	_ = nc2
	msgs := readStream(t, js2, DefaultStreamName)
	if uint64(len(msgs)) < acked {
		t.Fatalf("the stream holds %d messages, fewer than the %d acknowledged", len(msgs), acked)
	}
	if int64(len(msgs)) > sent.Load() {
		t.Fatalf("the stream holds %d messages, more than the %d sent", len(msgs), sent.Load())
	}
	for i, m := range msgs {
		if m.id != msgID(i+1) {
			t.Fatalf("message %d has id %s: not a prefix of what was sent", i+1, m.id)
		}
	}
}

// TestBarrier: the barrier returns once JetStream has stored every message
// the connection sent before it; it is stored nowhere, and a core
// subscriber of the events' subjects does not see it.
func TestBarrier(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)
	st, err := EnsureStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	watcher, _ := connectTest(t, e.ClientURL())
	var seen atomic.Int64
	var other atomic.Value
	sub, err := watcher.Subscribe("tablecast.>", func(m *nats.Msg) {
		seen.Add(1)
		if m.Subject != testSubject {
			other.Store(m.Subject)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}

	const total = 20000
	for i := range total {
		if err := nc.Publish(testSubject, []byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := Barrier(ctx, nc, ControlSubject(DefaultPrefix)); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != total {
		t.Fatalf("the stream holds %d messages when the barrier returns, want all %d sent before it", info.State.Msgs, total)
	}
	waitFor(t, 10*time.Second, "the core subscriber to see every message", func() bool { return seen.Load() >= total })
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}
	if s := other.Load(); s != nil || seen.Load() != total {
		t.Fatalf("the core subscriber saw %d messages (one on %v), want exactly the %d events", seen.Load(), s, total)
	}

	// No stream captures the subject: said so.
	if err := Barrier(ctx, nc, "_TABLECAST.nowhere.stream"); !errors.Is(err, ErrNoStream) {
		t.Fatalf("barrier on a subject no stream captures: %v, want ErrNoStream", err)
	}
}

// TestPublisherFlushWithoutBatches: Flush of a Publisher without batches
// does nothing and fails nothing.
func TestPublisherFlushWithoutBatches(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, nc, js, 16)
	publishN(t, p, 1, 3, 1)
	if err := p.Flush(context.Background()); err != nil || p.Unflushed() || p.Batching() {
		t.Fatalf("Flush = %v, Unflushed %v, Batching %v", err, p.Unflushed(), p.Batching())
	}
	waitAcked(t, p, 3)
}

// TestPublisherBatchSilentStoreFailure: JetStream fails to write a message
// to a full disk and answers nothing for it, then stores the next one once
// space is free again. The answer for the later message (with batches, the
// acknowledgement of a later batch or of a later message sent alone) must
// not count the lost one as stored: the watermark stays below it, and the
// Publisher fails for want of its acknowledgement, so that the caller
// publishes it again. (Taking news of a later batch for news of every
// earlier one would confirm the lost message to PostgreSQL.)
func TestPublisherBatchSilentStoreFailure(t *testing.T) {
	dir := tmpfs.Mount(t, 16<<20)
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: dir, Logger: quietLogger(), MinFree: -1, CheckInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	nc, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)
	if _, err := EnsureStream(ctx, js, StreamConfig{MaxBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, nc, js, 64, append(batchOptions(), WithAckTimeout(2*time.Second))...)
	publish := func(i int, size int) {
		t.Helper()
		data := []byte(strings.Repeat("x", size))
		if _, err := p.Publish(ctx, testSubject, msgID(i), data); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		// Each message goes alone or in a batch of its own: the next one
		// after a Flush goes alone.
		if err := p.Flush(ctx); err != nil {
			t.Fatalf("flush after %d: %v", i, err)
		}
	}
	publish(1, 100)
	waitAcked(t, p, 1)

	filler := tmpfs.Fill(t, dir, 0)
	publish(2, 256<<10) // no room on the disk: not stored, and no answer
	waitFor(t, 10*time.Second, "JetStream to fail writing message 2", func() bool {
		st, err := js.Stream(ctx, DefaultStreamName)
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.LastSeq == 1 && e.Server().Healthz(&server.HealthzOptions{}).Error != ""
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	publish(3, 100)
	publish(4, 100)
	for _, i := range []int{5, 6, 7} { // and a batch
		if _, err := p.Publish(ctx, testSubject, msgID(i), []byte("msg")); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Failed():
	case <-time.After(20 * time.Second):
	}
	msgs := readStream(t, js, DefaultStreamName)
	stored := 0 // the prefix of what was published that the stream holds
	for stored < len(msgs) && msgs[stored].id == msgID(stored+1) {
		stored++
	}
	if acked := p.Acked(); acked > uint64(stored) {
		t.Fatalf("the watermark is at %d while the stream holds messages 1..%d in order (%d in all): a lost message counts as stored", acked, stored, len(msgs))
	}
	if p.Err() == nil {
		t.Fatalf("the publisher did not fail with message %d unacknowledged (acked %d)", stored+1, p.Acked())
	}
	t.Logf("the stream holds %d messages, 1..%d in order; the publisher failed: %v", len(msgs), stored, p.Err())
}
