package stream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const testSubject = "tablecast.shop.public.orders.create"

// storedMsg is one message read back from the stream.
type storedMsg struct {
	seq     uint64
	subject string
	id      string
	data    string
}

// readStream returns every message in the stream, in stream order.
func readStream(tb testing.TB, js jetstream.JetStream, name string) []storedMsg {
	tb.Helper()
	ctx := testContext(tb)
	s, err := js.Stream(ctx, name)
	if err != nil {
		tb.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	total := int(info.State.Msgs)
	out := make([]storedMsg, 0, total)
	if total == 0 {
		return out
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	for len(out) < total {
		batch, err := cons.Fetch(min(total-len(out), 1000), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			tb.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				tb.Fatal(err)
			}
			out = append(out, storedMsg{seq: md.Sequence.Stream, subject: m.Subject(), id: m.Headers().Get(msgIDHeader), data: string(m.Data())})
			got++
		}
		if err := batch.Error(); err != nil {
			tb.Fatalf("fetch: %v", err)
		}
		if got == 0 {
			tb.Fatalf("fetch returned nothing after %d of %d messages", len(out), total)
		}
	}
	return out
}

func newTestPublisher(tb testing.TB, nc *nats.Conn, js jetstream.JetStream, maxInFlight int, opts ...PublisherOption) *Publisher {
	tb.Helper()
	p, err := NewPublisher(nc, js, maxInFlight, quietLogger(), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}

func msgID(n int) string { return "id-" + strconv.Itoa(n) }

// dedupeWindow is the duplicate window of tests that publish ids again and
// expect JetStream to drop them: far longer than such a test runs on a
// loaded machine, unlike the 1 s default.
const dedupeWindow = 10 * time.Minute

// publishN publishes messages first..last with ids msgID(i) and data "msg i",
// checking that Publish numbers them from firstN on.
func publishN(tb testing.TB, p *Publisher, first, last int, firstN uint64) {
	tb.Helper()
	ctx := testContext(tb)
	for i := first; i <= last; i++ {
		n, err := p.Publish(ctx, testSubject, msgID(i), []byte("msg "+strconv.Itoa(i)))
		if err != nil {
			tb.Fatalf("publish %d: %v", i, err)
		}
		if want := firstN + uint64(i-first); n != want {
			tb.Fatalf("publish %d returned n=%d, want %d", i, n, want)
		}
	}
}

func waitAcked(tb testing.TB, p *Publisher, want uint64) {
	tb.Helper()
	waitFor(tb, 30*time.Second, fmt.Sprintf("Acked() == %d (have %d, err %v)", want, p.Acked(), p.Err()), func() bool {
		return p.Acked() == want
	})
}

func TestPublisherInOrder(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, nc, js, 512)

	// Progress must be signalled; count the signals on the side.
	var progressed sync.WaitGroup
	progressed.Add(1)
	go func() {
		defer progressed.Done()
		<-p.Progress()
	}()

	const total = 20000
	buf := make([]byte, 0, 64)
	for i := 1; i <= total; i++ {
		// The caller's buffers are reused: Publish must have copied them.
		buf = append(buf[:0], "msg "...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		n, err := p.Publish(testContext(t), testSubject, msgID(i), buf)
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if n != uint64(i) {
			t.Fatalf("publish %d returned n=%d", i, n)
		}
		clear(buf)
	}
	waitAcked(t, p, total)
	progressed.Wait()
	if err := p.Err(); err != nil {
		t.Fatalf("Err() = %v", err)
	}
	if p.InFlight() != 0 {
		t.Fatalf("InFlight() = %d after everything was acked", p.InFlight())
	}

	msgs := readStream(t, js, DefaultStreamName)
	if len(msgs) != total {
		t.Fatalf("stream holds %d messages, want %d", len(msgs), total)
	}
	for i, m := range msgs {
		n := i + 1
		if m.seq != uint64(n) || m.id != msgID(n) || m.data != "msg "+strconv.Itoa(n) || m.subject != testSubject {
			t.Fatalf("stream message %d = %+v, want seq %d id %s", i, m, n, msgID(n))
		}
	}
}

func TestPublisherDedupe(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{DuplicateWindow: dedupeWindow}); err != nil {
		t.Fatal(err)
	}
	const total = 3000
	p := newTestPublisher(t, nc, js, 256)
	publishN(t, p, 1, total, 1)
	waitAcked(t, p, total)

	// The same ids again, as after a restart of the reader: a new Publisher
	// counts from 1, every ack is a duplicate, the stream does not grow.
	p2 := newTestPublisher(t, nc, js, 256)
	publishN(t, p2, 1, total, 1)
	waitAcked(t, p2, total)
	// And again on the same publisher, continuing its numbering.
	publishN(t, p2, 1, total, total+1)
	waitAcked(t, p2, 2*total)
	if err := p2.Err(); err != nil {
		t.Fatal(err)
	}
	if msgs := readStream(t, js, DefaultStreamName); len(msgs) != total {
		t.Fatalf("stream holds %d messages after republishing, want %d", len(msgs), total)
	}

	// Without an id there is nothing to de-duplicate on.
	for range 2 {
		if _, err := p2.Publish(testContext(t), testSubject, "", []byte("no id")); err != nil {
			t.Fatal(err)
		}
	}
	waitAcked(t, p2, 2*total+2)
	msgs := readStream(t, js, DefaultStreamName)
	if len(msgs) != total+2 || msgs[total].id != "" || msgs[total+1].data != "no id" {
		t.Fatalf("stream holds %d messages after two without an id, want %d", len(msgs), total+2)
	}
}

func TestPublisherBackpressureRealServer(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	for _, window := range []int{1, 7, 64} {
		t.Run(strconv.Itoa(window), func(t *testing.T) {
			p := newTestPublisher(t, nc, js, window)
			publishN(t, p, 1, 3000, 1)
			waitAcked(t, p, 3000)
			p.mu.Lock()
			hw := p.maxInFlight
			p.mu.Unlock()
			if hw > uint64(window) || hw < 1 {
				t.Fatalf("in flight reached %d with maxInFlight %d", hw, window)
			}
			t.Logf("maxInFlight %d: high-water mark %d", window, hw)
		})
	}
}

// fakeJetStream answers publishes on "fake.>" the way the test tells it to:
// it records each message and replies only when asked.
type fakeJetStream struct {
	nc   *nats.Conn
	mu   sync.Mutex
	msgs []*nats.Msg
}

func newFakeJetStream(tb testing.TB, nc *nats.Conn) *fakeJetStream {
	tb.Helper()
	f := &fakeJetStream{nc: nc}
	sub, err := nc.Subscribe("fake.>", func(m *nats.Msg) {
		f.mu.Lock()
		f.msgs = append(f.msgs, m)
		f.mu.Unlock()
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
	return f
}

func (f *fakeJetStream) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.msgs)
}

// reply answers the i-th message received (0-based) with body.
func (f *fakeJetStream) reply(tb testing.TB, i int, body string) {
	tb.Helper()
	f.mu.Lock()
	m := f.msgs[i]
	f.mu.Unlock()
	if err := f.nc.Publish(m.Reply, []byte(body)); err != nil {
		tb.Fatal(err)
	}
}

func okAck(seq int) string { return fmt.Sprintf(`{"stream":"FAKE","seq":%d}`, seq) }

func TestPublisherBackpressureAndOutOfOrderAcks(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	fake := newFakeJetStream(t, nc)
	const window = 4
	p := newTestPublisher(t, nc, js, window, WithStream("FAKE"))

	ctx := testContext(t)
	for i := 1; i <= window; i++ {
		if _, err := p.Publish(ctx, "fake.x", msgID(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the fake to receive 4 messages", func() bool { return fake.count() == window })
	fake.mu.Lock()
	third := fake.msgs[2]
	fake.mu.Unlock()
	if got := third.Header.Get(msgIDHeader); got != msgID(3) {
		t.Fatalf("message 3 carries Nats-Msg-Id %q", got)
	}

	// The window is full: the next Publish blocks until its context ends.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := p.Publish(short, "fake.x", msgID(5), []byte("x"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish on a full window returned %v, want context.DeadlineExceeded", err)
	}
	if p.Err() != nil {
		t.Fatalf("a cancelled Publish failed the publisher: %v", p.Err())
	}

	// Acks out of order: 3 and 2 (a duplicate) do not move the watermark…
	fake.reply(t, 2, okAck(3))
	fake.reply(t, 1, `{"stream":"FAKE","seq":2,"duplicate": true}`)
	fake.reply(t, 1, okAck(2)) // a repeated reply is ignored
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// …until 1 arrives; then it jumps to 3.
	select {
	case <-p.Progress():
		t.Fatalf("Progress signalled while message 1 is unacknowledged (Acked %d)", p.Acked())
	case <-time.After(50 * time.Millisecond):
	}
	if p.Acked() != 0 {
		t.Fatalf("Acked() = %d before message 1 was acknowledged", p.Acked())
	}
	fake.reply(t, 0, okAck(1))
	waitAcked(t, p, 3)
	select {
	case <-p.Progress():
	case <-time.After(5 * time.Second):
		t.Fatal("Progress not signalled")
	}

	// Room again: the fifth message goes out, numbered 5.
	n, err := p.Publish(ctx, "fake.x", msgID(5), []byte("x"))
	if err != nil || n != 5 {
		t.Fatalf("Publish after acks = %d, %v; want 5", n, err)
	}
	fake.reply(t, 3, okAck(4))
	waitAcked(t, p, 4)
}

// TestPublisherRandomAckOrder drives the window through many wrap-arounds
// with acknowledgements in random order, checking the watermark against a
// model after every one.
func TestPublisherRandomAckOrder(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	fake := newFakeJetStream(t, nc)
	const window, total = 5, 300 // a window of 5 uses a ring of 8 slots
	p := newTestPublisher(t, nc, js, window, WithStream("FAKE"))

	published := make(chan error, 1)
	go func() {
		ctx := testContext(t)
		for i := 1; i <= total; i++ {
			if _, err := p.Publish(ctx, "fake.x", msgID(i), []byte(strconv.Itoa(i))); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()

	rng := rand.New(rand.NewPCG(1, 2))
	acked := make([]bool, total+1)
	watermark := 0
	for watermark < total {
		// Wait until the fake holds every message the window allows.
		want := min(watermark+window, total)
		waitFor(t, 5*time.Second, fmt.Sprintf("%d messages at the fake", want), func() bool { return fake.count() >= want })
		var pending []int
		for i := watermark + 1; i <= want; i++ {
			if !acked[i] {
				pending = append(pending, i)
			}
		}
		i := pending[rng.IntN(len(pending))]
		fake.mu.Lock()
		m := fake.msgs[i-1]
		fake.mu.Unlock()
		if string(m.Data) != strconv.Itoa(i) {
			t.Fatalf("message %d at the fake holds %q", i, m.Data)
		}
		fake.reply(t, i-1, okAck(i))
		acked[i] = true
		for watermark < total && acked[watermark+1] {
			watermark++
		}
		waitAcked(t, p, uint64(watermark))
		if p.Err() != nil {
			t.Fatal(p.Err())
		}
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	hw := p.maxInFlight
	p.mu.Unlock()
	if hw != window {
		t.Fatalf("in flight reached %d, want exactly the window %d", hw, window)
	}
}

func TestPublisherNegativeAck(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	fake := newFakeJetStream(t, nc)
	p := newTestPublisher(t, nc, js, 16, WithStream("FAKE"))
	ctx := testContext(t)

	for i := 1; i <= 3; i++ {
		if _, err := p.Publish(ctx, "fake.x", msgID(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "3 messages at the fake", func() bool { return fake.count() == 3 })
	fake.reply(t, 0, okAck(1))
	fake.reply(t, 2, okAck(3))
	fake.reply(t, 1, `{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"FAKE","seq":0}`)

	select {
	case <-p.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("Failed not closed after a negative ack")
	}
	err := p.Err()
	if !errors.Is(err, ErrNegativeAck) {
		t.Fatalf("Err() = %v, want ErrNegativeAck", err)
	}
	t.Logf("error: %v", err)
	if p.Acked() != 1 {
		t.Fatalf("Acked() = %d, want 1: message 2 was refused", p.Acked())
	}
	if _, err := p.Publish(ctx, "fake.x", msgID(4), []byte("x")); !errors.Is(err, ErrNegativeAck) {
		t.Fatalf("Publish after a failure returned %v", err)
	}
}

func TestPublisherAckFromOtherStream(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	fake := newFakeJetStream(t, nc)
	p := newTestPublisher(t, nc, js, 16, WithStream(DefaultStreamName))
	if _, err := p.Publish(testContext(t), "fake.x", msgID(1), []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the message at the fake", func() bool { return fake.count() == 1 })
	fake.reply(t, 0, okAck(1)) // from stream FAKE
	select {
	case <-p.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("an ack from another stream was accepted")
	}
	if !errors.Is(p.Err(), ErrNegativeAck) || p.Acked() != 0 {
		t.Fatalf("Err() = %v, Acked() = %d", p.Err(), p.Acked())
	}
	t.Logf("error: %v", p.Err())
}

// TestPublisherLearnsStream: without WithStream, the stream of the first
// acknowledgement is the only one accepted afterwards.
func TestPublisherLearnsStream(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	fake := newFakeJetStream(t, nc)
	p := newTestPublisher(t, nc, js, 16)
	ctx := testContext(t)
	for i := 1; i <= 3; i++ {
		if _, err := p.Publish(ctx, "fake.x", msgID(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "3 messages at the fake", func() bool { return fake.count() == 3 })
	fake.reply(t, 0, okAck(1))
	fake.reply(t, 1, okAck(2))
	waitAcked(t, p, 2)
	fake.reply(t, 2, `{"stream":"OTHER","seq":3}`)
	select {
	case <-p.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("an ack from a second stream was accepted")
	}
	if !errors.Is(p.Err(), ErrNegativeAck) || p.Acked() != 2 {
		t.Fatalf("Err() = %v, Acked() = %d", p.Err(), p.Acked())
	}
}

func TestPublisherAckTimeout(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	newFakeJetStream(t, nc) // receives, never answers
	p := newTestPublisher(t, nc, js, 16, WithAckTimeout(200*time.Millisecond))

	start := time.Now()
	if _, err := p.Publish(testContext(t), "fake.x", msgID(1), []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("no failure without an ack")
	}
	if !errors.Is(p.Err(), ErrAckTimeout) {
		t.Fatalf("Err() = %v, want ErrAckTimeout", p.Err())
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("timed out after %s, before the 200ms timeout", d)
	}
	if p.Acked() != 0 {
		t.Fatalf("Acked() = %d", p.Acked())
	}
}

func TestPublisherNoStream(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, nc, js, 16)
	if _, err := p.Publish(testContext(t), "elsewhere.shop.public.orders.create", msgID(1), []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("no failure publishing to a subject no stream stores")
	}
	if !errors.Is(p.Err(), ErrNoStream) {
		t.Fatalf("Err() = %v, want ErrNoStream", p.Err())
	}
	t.Logf("error: %v", p.Err())
	if _, err := p.Publish(testContext(t), testSubject, msgID(2), []byte("x")); !errors.Is(err, ErrNoStream) {
		t.Fatalf("Publish after the failure returned %v", err)
	}
}

func TestPublisherServerShutdown(t *testing.T) {
	dir := t.TempDir()
	e := startTestServer(t, dir)
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, nc, js, 256)

	// Publish until the publisher fails.
	type result struct {
		sent int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		ctx := context.Background()
		for i := 1; ; i++ {
			if _, err := p.Publish(ctx, testSubject, msgID(i), []byte("msg "+strconv.Itoa(i))); err != nil {
				done <- result{i - 1, err}
				return
			}
		}
	}()
	waitFor(t, 30*time.Second, "2000 acked messages", func() bool { return p.Acked() >= 2000 })
	e.Shutdown()

	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Publish did not fail after the server shut down")
	}
	select {
	case <-p.Failed():
	default:
		t.Fatal("Failed not closed")
	}
	if p.Err() == nil || !errors.Is(r.err, p.Err()) && r.err.Error() != p.Err().Error() {
		t.Fatalf("Publish returned %v, Err() = %v", r.err, p.Err())
	}
	t.Logf("failed after %d sent, %d acked: %v", r.sent, p.Acked(), p.Err())
	if _, err := p.Publish(context.Background(), testSubject, "late", nil); err == nil {
		t.Fatal("Publish succeeded on a failed publisher")
	}

	// Every message counted as acknowledged must be in the stream. Acks
	// received before the drop may still be delivered after the failure, so
	// take the watermark last: it can only have grown.
	e2 := startTestServer(t, dir)
	_, js2 := connectTest(t, e2.ClientURL())
	stored := make(map[string]bool)
	msgs := readStream(t, js2, DefaultStreamName)
	for _, m := range msgs {
		stored[m.id] = true
	}
	acked := p.Acked()
	if acked == 0 || acked > uint64(r.sent) {
		t.Fatalf("Acked() = %d with %d sent", acked, r.sent)
	}
	for i := 1; i <= int(acked); i++ {
		if !stored[msgID(i)] {
			t.Fatalf("message %d was counted as acknowledged (Acked %d) but is not in the stream", i, acked)
		}
	}
	t.Logf("stream holds %d messages; %d were counted", len(msgs), acked)
}

// TestPublisherIdleReconnect: a connection that drops and comes back while
// nothing is in flight is not a failure; a Publish while it is down is.
func TestPublisherIdleReconnect(t *testing.T) {
	dir := t.TempDir()
	e := startTestServer(t, dir)
	addr := strings.TrimPrefix(e.ClientURL(), "nats://")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, nc, js, 64)
	idle := newTestPublisher(t, nc, js, 64) // publishes only after the reconnect
	publishN(t, p, 1, 100, 1)
	waitAcked(t, p, 100)

	e.Shutdown()
	waitFor(t, 10*time.Second, "the client to notice the server is gone", func() bool { return !nc.IsConnected() })
	start := time.Now()
	_, err := p.Publish(testContext(t), testSubject, msgID(101), []byte("msg 101"))
	if !errors.Is(err, ErrNotConnected) || !errors.Is(p.Err(), ErrNotConnected) {
		t.Fatalf("Publish while disconnected = %v, Err() = %v; want ErrNotConnected", err, p.Err())
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Publish while disconnected took %s to fail", d)
	}
	if idle.Err() != nil {
		t.Fatalf("a drop with nothing in flight failed the idle publisher: %v", idle.Err())
	}

	e2, err := StartEmbedded(EmbeddedConfig{Listen: addr, StoreDir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("restart on %s: %v", addr, err)
	}
	t.Cleanup(e2.Shutdown)
	ctx, cancel := context.WithTimeout(testContext(t), 30*time.Second)
	defer cancel()
	if err := WaitConnected(ctx, nc); err != nil {
		t.Fatalf("WaitConnected: %v", err)
	}
	publishN(t, idle, 101, 200, 1)
	waitAcked(t, idle, 100)
	if idle.Err() != nil {
		t.Fatal(idle.Err())
	}
	if msgs := readStream(t, js, DefaultStreamName); len(msgs) != 200 || msgs[199].id != msgID(200) {
		t.Fatalf("stream holds %d messages after the reconnect, want 200", len(msgs))
	}
}

func TestPublisherClose(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	p := newTestPublisher(t, nc, js, 4)
	p.Close()
	p.Close()
	if _, err := p.Publish(testContext(t), testSubject, "x", nil); !errors.Is(err, ErrPublisherClosed) {
		t.Fatalf("Publish after Close returned %v", err)
	}
	if p.Err() != nil {
		t.Fatalf("Close made Err() = %v", p.Err())
	}
}

func TestNewPublisherValidates(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	for _, n := range []int{0, -1, MaxInFlightLimit + 1} {
		if p, err := NewPublisher(nc, js, n, nil); err == nil {
			p.Close()
			t.Errorf("NewPublisher accepted maxInFlight %d", n)
		}
	}
	if _, err := NewPublisher(nil, js, 1, nil); err == nil {
		t.Error("NewPublisher accepted a nil connection")
	}
}

func TestAckError(t *testing.T) {
	p := &Publisher{}
	p.expectStream("TABLECAST")
	status := func(code, desc string) nats.Header {
		h := nats.Header{}
		h.Set("Status", code)
		if desc != "" {
			h.Set("Description", desc)
		}
		return h
	}
	tests := []struct {
		name    string
		data    string
		header  nats.Header
		wantErr error // nil: success
	}{
		{"stored", `{"stream":"TABLECAST","seq":7}`, nil, nil},
		{"duplicate", `{"stream":"TABLECAST","seq":7,"duplicate": true}`, nil, nil},
		{"domain", `{"stream":"TABLECAST","domain":"hub","seq":7}`, nil, nil},
		{"reordered fields", `{"seq":7,"stream":"TABLECAST"}`, nil, nil},
		{"error", `{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"TABLECAST","seq":0}`, nil, ErrNegativeAck},
		{"other stream", `{"stream":"OTHER","seq":7}`, nil, ErrNegativeAck},
		{"prefix of our name", `{"stream":"TABLECAST2","seq":7}`, nil, ErrNegativeAck},
		{"not json", `hello`, nil, ErrNegativeAck},
		{"no seq", `{"stream":"TABLECAST"}`, nil, ErrNegativeAck},
		{"no responders", ``, status("503", ""), ErrNoStream},
		{"other status", ``, status("408", "Request Timeout"), ErrNegativeAck},
		{"empty", ``, nil, ErrNegativeAck},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.ackError(&nats.Msg{Data: []byte(tt.data), Header: tt.header})
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ackError(%s) = %v, want success", tt.data, err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ackError(%s) = %v, want %v", tt.data, err, tt.wantErr)
			}
		})
	}
}

// TestPublisherStreamSequence: Watermark pairs the watermark with the
// stream sequence its message is stored at, read from the acknowledgement
// (a duplicate reports where the first copy is, which is where its id
// lives), and with when it was reached.
func TestPublisherStreamSequence(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{DuplicateWindow: dedupeWindow}); err != nil {
		t.Fatal(err)
	}
	// Someone else's messages first, so that stream sequences and publisher
	// numbers differ.
	for i := range 7 {
		if _, err := js.Publish(testContext(t), testSubject, []byte("other "+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	p := newTestPublisher(t, nc, js, 4)
	if wm := p.Watermark(); wm != (Watermark{}) {
		t.Fatalf("Watermark() = %+v before any ack, want the zero value", wm)
	}
	for i := 1; i <= 100; i++ {
		before := time.Now()
		publishN(t, p, i, i, uint64(i))
		waitAcked(t, p, uint64(i))
		after := time.Now()
		if wm := p.Watermark(); wm.N != uint64(i) || wm.StreamSeq != uint64(7+i) || wm.At.Before(before) || wm.At.After(after) {
			t.Fatalf("Watermark() = %+v after message %d (published at %s, seen acked at %s), want %d, %d, between the two",
				wm, i, before, after, i, 7+i)
		}
	}
	// Message 50 again: dropped as a duplicate, reported at its first copy.
	publishN(t, p, 50, 50, 101)
	waitAcked(t, p, 101)
	if wm := p.Watermark(); wm.N != 101 || wm.StreamSeq != 7+50 {
		t.Fatalf("Watermark() = %+v after a duplicate of message 50, want 101, %d", wm, 7+50)
	}
	// An acknowledgement that is not the template still gives its sequence.
	fake := newFakeJetStream(t, nc)
	pf := newTestPublisher(t, nc, js, 4, WithStream("FAKE"))
	for i := 1; i <= 3; i++ {
		if _, err := pf.Publish(testContext(t), "fake.x", msgID(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the fake to receive 3 messages", func() bool { return fake.count() == 3 })
	fake.reply(t, 0, `{"stream":"FAKE","domain":"hub","seq":41}`)
	fake.reply(t, 1, `{"seq":42,"stream":"FAKE"}`)
	fake.reply(t, 2, `{"stream":"FAKE","seq":17,"duplicate": true}`)
	waitAcked(t, pf, 3)
	if wm := pf.Watermark(); wm.N != 3 || wm.StreamSeq != 17 {
		t.Fatalf("Watermark() = %+v, want 3, 17", wm)
	}
}

// TestPublisherHeaders: WithHeader puts its header on every message, with
// or without an id; names JetStream owns, or that nats.go cannot send, are
// refused up front.
func TestPublisherHeaders(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	fake := newFakeJetStream(t, nc)
	p := newTestPublisher(t, nc, js, 4, WithStream("FAKE"), WithHeader("Tablecast-Origin", "7/1/shop/tablecast"))
	for _, id := range []string{"a", ""} {
		if _, err := p.Publish(testContext(t), "fake.x", id, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the fake to receive 2 messages", func() bool { return fake.count() == 2 })
	fake.mu.Lock()
	first, second := fake.msgs[0], fake.msgs[1]
	fake.mu.Unlock()
	if first.Header.Get("Tablecast-Origin") != "7/1/shop/tablecast" || first.Header.Get(msgIDHeader) != "a" {
		t.Errorf("message with an id has headers %v", first.Header)
	}
	if second.Header.Get("Tablecast-Origin") != "7/1/shop/tablecast" || second.Header.Get(msgIDHeader) != "" {
		t.Errorf("message without an id has headers %v", second.Header)
	}
	for _, h := range [][2]string{{"Nats-Msg-Id", "x"}, {"nats-expected-stream", "x"}, {"Bad Name", "x"}, {"Bad:Name", "x"}, {"", "x"}, {"Ok", "line\r\nInjected: 1"}} {
		if p, err := NewPublisher(nc, js, 4, quietLogger(), WithHeader(h[0], h[1])); err == nil {
			p.Close()
			t.Errorf("NewPublisher accepted header %q: %q", h[0], h[1])
		}
		if p, err := NewPublisher(nc, js, 4, quietLogger(), WithMark(h[0], h[1])); err == nil {
			p.Close()
			t.Errorf("NewPublisher accepted mark %q: %q", h[0], h[1])
		}
	}
}

// TestPublisherMark: the mark goes only on the messages of PublishMarked,
// with or without an id, beside every other header; a publisher without a
// mark sends PublishMarked's messages as Publish does; a mark that is also
// a header of every message is refused.
func TestPublisherMark(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	fake := newFakeJetStream(t, nc)
	const origin = "7/1/shop/tablecast"
	p := newTestPublisher(t, nc, js, 4, WithStream("FAKE"), WithHeader(OriginHeader, origin), WithMark(KeyDeferrableHeader, "true"))
	bare := newTestPublisher(t, nc, js, 4, WithStream("FAKE"))
	ctx := testContext(t)
	sends := []struct {
		p      *Publisher
		id     string
		marked bool
	}{{p, "a", true}, {p, "b", false}, {p, "", true}, {p, "", false}, {bare, "c", true}}
	for _, s := range sends {
		publish := s.p.Publish
		if s.marked {
			publish = s.p.PublishMarked
		}
		if _, err := publish(ctx, "fake.x", s.id, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the fake to receive every message", func() bool { return fake.count() == len(sends) })
	fake.mu.Lock()
	msgs := slices.Clone(fake.msgs)
	fake.mu.Unlock()
	for i, s := range sends {
		h := msgs[i].Header
		wantMark, wantOrigin := "", origin
		if s.marked && s.p == p {
			wantMark = "true"
		}
		if s.p == bare {
			wantOrigin = ""
		}
		if h.Get(KeyDeferrableHeader) != wantMark || h.Get(OriginHeader) != wantOrigin || h.Get(msgIDHeader) != s.id {
			t.Errorf("message %d (id %q, marked %v): headers %v", i, s.id, s.marked, h)
		}
	}
	if p, err := NewPublisher(nc, js, 4, quietLogger(), WithHeader(OriginHeader, origin), WithMark("tablecast-origin", "x")); err == nil {
		p.Close()
		t.Error("NewPublisher accepted a mark that every message carries already")
	}
}

func TestParseDigits(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"7}", 7, true}, {"123,\"duplicate\": true}", 123, true}, {"18446744073709551615}", 0, false},
		{"}", 0, false}, {"", 0, false}, {"12", 0, false}, {"-1}", 0, false},
	} {
		got, ok := parseDigits([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseDigits(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestAckSeqAllocatesNothing: reading the stream sequence of a usual
// acknowledgement costs no allocation on the acknowledgement path.
func TestAckSeqAllocatesNothing(t *testing.T) {
	p := &Publisher{}
	p.expectStream("TABLECAST")
	for _, data := range []string{`{"stream":"TABLECAST","seq":123456}`, `{"stream":"TABLECAST","domain":"hub","seq":9,"duplicate": true}`} {
		m := &nats.Msg{Data: []byte(data)}
		var seq uint64
		allocs := testing.AllocsPerRun(1000, func() { seq, _ = p.ackSeq(m) })
		if allocs != 0 || seq == 0 {
			t.Errorf("ackSeq(%s) = %d with %.1f allocations, want a sequence and none", data, seq, allocs)
		}
	}
}

// TestPublisherWaitsForASlowJetStream: a JetStream that stores slower than
// messages come, but stores, is waited for: the oldest message waits far
// longer than the ack timeout, behind the others, while the
// acknowledgements keep coming, and the Publisher does not fail. It failed
// when the timeout ran from each message's sending: under load the reader
// then started over, four times a minute, sending its whole window again
// into the JetStream that could not keep up.
func TestPublisherWaitsForASlowJetStream(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	fake := newFakeJetStream(t, nc)
	const timeout, n = 300 * time.Millisecond, 20
	p := newTestPublisher(t, nc, js, 64, WithAckTimeout(timeout))
	for i := 1; i <= n; i++ {
		if _, err := p.Publish(testContext(t), "fake.x", msgID(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the messages to arrive", func() bool { return fake.count() == n })
	start := time.Now()
	for i := 0; i < n; i++ {
		time.Sleep(timeout / 3)
		fake.reply(t, i, okAck(i+1))
	}
	waitFor(t, 5*time.Second, "every acknowledgement", func() bool { return p.Acked() == n || p.Err() != nil })
	if err := p.Err(); err != nil {
		t.Fatalf("failed while the acknowledgements kept coming: %v", err)
	}
	if d := time.Since(start); d < 2*timeout {
		t.Fatalf("the last message waited %s, not beyond the %s timeout: the test proves nothing", d, timeout)
	}
}

// TestPublisherAckTimeoutOnceAcknowledgementsStop: a message whose
// acknowledgement never comes fails the Publisher, within about the ack
// timeout of the last acknowledgement that moved the watermark, even
// though the messages after it are acknowledged (out of order).
func TestPublisherAckTimeoutOnceAcknowledgementsStop(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	fake := newFakeJetStream(t, nc)
	const timeout = 300 * time.Millisecond
	p := newTestPublisher(t, nc, js, 64, WithAckTimeout(timeout))
	for i := 1; i <= 6; i++ {
		if _, err := p.Publish(testContext(t), "fake.x", msgID(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the messages to arrive", func() bool { return fake.count() == 6 })
	answered := time.Now() // the watermark moves after it
	fake.reply(t, 0, okAck(1))
	fake.reply(t, 1, okAck(2))
	waitFor(t, 5*time.Second, "the watermark at 2", func() bool { return p.Acked() == 2 })
	// The third is never answered; the later ones keep coming.
	for i := 3; i < 6; i++ {
		fake.reply(t, i, okAck(i+1))
	}
	select {
	case <-p.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("no failure with message 3 never acknowledged")
	}
	if !errors.Is(p.Err(), ErrAckTimeout) || !strings.Contains(p.Err().Error(), "message 3 ") {
		t.Fatalf("Err() = %v, want ErrAckTimeout for message 3", p.Err())
	}
	if d := time.Since(answered); d < timeout {
		t.Fatalf("failed %s after the watermark moved, before the %s timeout", d, timeout)
	}
	if p.Acked() != 2 {
		t.Fatalf("Acked() = %d, want 2", p.Acked())
	}
}
