package stream

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/tmpfs"
)

// startStorageServer starts an embedded server storing in dir that checks
// its storage every 50ms.
func startStorageServer(t *testing.T, listen, dir string, maxStore, minFree int64) *Embedded {
	t.Helper()
	e, err := StartEmbedded(EmbeddedConfig{Listen: listen, StoreDir: dir, MaxStore: maxStore, MinFree: minFree,
		CheckInterval: 50 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

// collector reads the stream with an ordered consumer, as a backend service
// or the gateway does, and keeps the message ids in the order received.
type collector struct {
	mu  sync.Mutex
	ids []string
}

func collect(t *testing.T, js jetstream.JetStream) *collector {
	t.Helper()
	c := &collector{}
	cons, err := js.OrderedConsumer(testContext(t), DefaultStreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		c.mu.Lock()
		c.ids = append(c.ids, m.Headers().Get(msgIDHeader))
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return c
}

func (c *collector) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ids...)
}

// checkIDs fails unless ids are exactly msgID(1)..msgID(n), in order.
func checkIDs(t *testing.T, what string, ids []string, n int) {
	t.Helper()
	if len(ids) != n {
		t.Fatalf("%s: %d messages, want %d", what, len(ids), n)
	}
	for i, id := range ids {
		if id != msgID(i+1) {
			t.Fatalf("%s: message %d is %s, want %s (lost, repeated or out of order)", what, i+1, id, msgID(i+1))
		}
	}
}

// TestEmbeddedRecoversFromFullDisk fills the embedded server's disk (a
// small tmpfs) while a writer publishes as the CDC reader does: a Publisher
// with a deep window, paced, and after each failure a new one from the last
// acknowledged message. JetStream stops storing and stays stopped while the
// disk is full: the status says so with the server's reason, and nothing is
// acknowledged. Once a filler file is deleted (with a Publisher in the
// middle of sending) the server restarts by itself on the same port, and
// the stream, and a consumer that was reading all along on a connection
// that reconnected by itself, hold every message exactly once, in order.
func TestEmbeddedRecoversFromFullDisk(t *testing.T) {
	t.Parallel() // see parallelTests
	dir := tmpfs.Mount(t, 48<<20)
	// The minimum free space (8 MiB) is above what the filler below leaves
	// (4 MiB), so that the server cannot be restarted before the filler is
	// removed, whatever space JetStream frees after its failed write.
	e := startStorageServer(t, "127.0.0.1:-1", filepath.Join(dir, "nats"), 0, 8<<20)
	nc, js := connectTest(t, e.ClientURL())
	// The writer below sends again what was in flight when its publisher
	// failed, and counts on the duplicate window to drop what had been
	// stored: a window of a minute, not the default second, which a busy
	// machine can take between a failure and the next publisher (it stored
	// 479 messages twice once).
	if _, err := EnsureStream(testContext(t), js, StreamConfig{DuplicateWindow: time.Minute}); err != nil {
		t.Fatal(err)
	}
	reader := collect(t, js)
	filler := tmpfs.Fill(t, dir, 4<<20)
	// The test's own context, not testContext's minute: the whole test
	// takes longer than a minute on a loaded machine.
	ctx := t.Context()
	payload := []byte(strings.Repeat("x", 4096))

	const total = 6000 // 24 MiB
	var acked, failures atomic.Int64
	// What each publisher ended with, for the failure message: a writer too
	// slow to finish is otherwise a count and nothing more.
	var histMu sync.Mutex
	var hist []string
	done := make(chan error, 1)
	go func() {
		next := 1
		for next <= total {
			if err := WaitConnected(ctx, nc); err != nil {
				done <- err
				return
			}
			p, err := NewPublisher(nc, js, 8192, quietLogger(), WithAckTimeout(2*time.Second), WithStream(DefaultStreamName))
			if err != nil {
				done <- err
				return
			}
			first := next
			for i := first; i <= total && p.Err() == nil; i++ {
				if _, err := p.Publish(ctx, testSubject, msgID(i), payload); err != nil {
					if p.Err() == nil { // the test ended: ctx is done
						p.Close()
						done <- err
						return
					}
					break
				}
				time.Sleep(time.Millisecond) // still sending when the ack timeout strikes
			}
			for p.Err() == nil && p.InFlight() > 0 {
				time.Sleep(5 * time.Millisecond)
			}
			next = first + int(p.Acked())
			// The acknowledged count first: a failure seen by the test
			// must find this publisher's acknowledgements counted, or
			// those received before the disk filled look like some
			// received after it.
			acked.Store(int64(next - 1))
			if p.Err() != nil {
				failures.Add(1)
			}
			histMu.Lock()
			hist = append(hist, fmt.Sprintf("%s publisher from %d: %d acked, err %v", time.Now().Format("15:04:05.000"), first, p.Acked(), p.Err()))
			histMu.Unlock()
			p.Close()
		}
		done <- nil
	}()

	waitFor(t, time.Minute, "the status to say the storage is full", func() bool {
		return e.Status().JetStream == JetStreamStorageFull
	})
	st := e.Status()
	if st.Healthy || len(st.Reasons) == 0 || !strings.HasPrefix(st.Reasons[0], "JetStream storage full: ") ||
		!strings.Contains(st.Reasons[0], "no space left on device") {
		t.Fatalf("status while full: %+v", st)
	}
	// Stuck while the disk is full: publishers fail, nothing is stored.
	// Failures are counted from here: one before the disk filled (acks
	// slow on a loaded machine) made the count of those before it look
	// like acknowledgements on the full disk (750 and 843 in two CI runs).
	base := failures.Load()
	waitFor(t, time.Minute, "a publisher to fail", func() bool { return failures.Load() >= base+1 })
	stuckAt := acked.Load()
	waitFor(t, time.Minute, "two more publishers to fail", func() bool { return failures.Load() >= base+3 })
	if a := acked.Load(); a != stuckAt {
		t.Fatalf("%d messages acknowledged on a full disk", a-stuckAt)
	}
	t.Logf("disk full after %d messages", stuckAt)

	// Free the space while a publisher is sending.
	time.Sleep(time.Second)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the server to be restarted and healthy", func() bool {
		st := e.Status()
		return st.Healthy && st.Restarts > 0
	})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(6 * time.Minute): // paced at 1 ms a message: slow on a loaded machine (2,807 of 6,000 in 4 minutes once)
		histMu.Lock()
		last := hist[max(0, len(hist)-20):]
		histMu.Unlock()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		t.Fatalf("the writer did not finish; %d of %d acknowledged, %d publishers failed; status %+v; process: %d goroutines, %d GCs, %s heap; the last publishers:\n%s",
			acked.Load(), total, failures.Load(), e.Status(), runtime.NumGoroutine(), ms.NumGC, FormatBytes(int64(ms.HeapAlloc)), strings.Join(last, "\n"))
	}

	ids := func(msgs []storedMsg) []string {
		out := make([]string, len(msgs))
		for i, m := range msgs {
			out[i] = m.id
		}
		return out
	}
	checkIDs(t, "stream", ids(readStream(t, js, DefaultStreamName)), total)
	waitFor(t, time.Minute, "the consumer to read every message", func() bool { return len(reader.got()) >= total })
	checkIDs(t, "consumer reading throughout", reader.got(), total)
}

// TestEmbeddedRestartLeavesNoGap: a message published while the disk is
// full is dropped without an answer. When space is back and the server
// restarts, the Publisher that sent it must not go on to store a later
// message ahead of it (which is what restarting JetStream alone, under the
// open connection, does): the restart ends its connection, and the
// Publisher fails with the message still in flight.
func TestEmbeddedRestartLeavesNoGap(t *testing.T) {
	dir := tmpfs.Mount(t, 32<<20)
	e := startStorageServer(t, "127.0.0.1:-1", filepath.Join(dir, "nats"), 0, 1<<20)
	nc, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	filler := tmpfs.Fill(t, dir, 2<<20)
	payload := []byte(strings.Repeat("x", 4096))
	// Publish until the server says its storage is full: a publish that
	// times out on a loaded machine is no proof of a full disk.
	full := func() bool { return e.Status().JetStream == JetStreamStorageFull }
	deadline := time.Now().Add(time.Minute)
	for i := 1; !full(); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("after %d publishes the status does not say the storage is full", i)
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := js.Publish(pctx, testSubject, payload, jetstream.WithMsgID("fill-"+msgID(i)))
		cancel()
		if err != nil {
			// The status follows the server's error report: give it a
			// moment before publishing again.
			for wait := time.Now().Add(2 * time.Second); !full() && time.Now().Before(wait); {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	stored := streamMsgs(t, js)

	p := newTestPublisher(t, nc, js, 8192, WithAckTimeout(time.Minute), WithStream(DefaultStreamName))
	if _, err := p.Publish(ctx, testSubject, "dropped", payload); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the server to be restarted and healthy", func() bool {
		st := e.Status()
		return st.Healthy && st.Restarts > 0
	})
	if err := WaitConnected(ctx, nc); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, testSubject, "after", payload); err == nil {
		waitFor(t, 10*time.Second, "the Publisher to fail or the stream to grow", func() bool { return p.Err() != nil || streamMsgs(t, js) > stored })
	}
	if n := streamMsgs(t, js); n != stored {
		t.Fatalf("the stream went from %d to %d messages: a message was stored after one that was dropped", stored, n)
	}
	if p.Err() == nil {
		t.Fatal("the Publisher went on after the restart with a message in flight that JetStream had dropped")
	}
}

// TestEmbeddedKeepsMaxStoreOnNearlyFullDisk restarts the server on a disk
// with 2 MiB free, next to 8 MiB it already stores. Its store stays the
// configured 1 GiB: sized from the free space, it would be smaller than
// what it holds and refuse every new message even after space is freed.
func TestEmbeddedKeepsMaxStoreOnNearlyFullDisk(t *testing.T) {
	t.Parallel() // see parallelTests
	dir := tmpfs.Mount(t, 64<<20)
	store := filepath.Join(dir, "nats")
	const maxStore = 1 << 30
	e := startStorageServer(t, "127.0.0.1:-1", store, maxStore, -1)
	_, js := connectTest(t, e.ClientURL())
	// Each publish is bounded by jetstream's default timeout; the 6,000 of
	// them are not bounded together (testContext's minute), which a loaded
	// machine can exceed.
	ctx := t.Context()
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	payload := []byte(strings.Repeat("x", 4096))
	n := 0
	publish := func(count int) {
		t.Helper()
		for range count {
			n++
			began := time.Now()
			if _, err := js.Publish(ctx, testSubject, payload, jetstream.WithMsgID(msgID(n))); err != nil {
				t.Fatalf("publish %d: %v after %s; process: %d goroutines", n, err, time.Since(began), runtime.NumGoroutine())
			}
		}
	}
	publish(2000) // 8 MiB
	e.Shutdown()

	filler := tmpfs.Fill(t, dir, 2<<20)
	e2 := startStorageServer(t, "127.0.0.1:-1", store, maxStore, -1)
	if got := e2.Server().JetStreamConfig().MaxStore; got != maxStore {
		t.Fatalf("restarted with %s free: JetStream's store is %d bytes, want the configured %d", FormatBytes(tmpfs.Free(t, dir)), got, maxStore)
	}
	if st := e2.Status(); st.StoreMaxBytes != maxStore {
		t.Fatalf("status says the store is %d bytes, want %d", st.StoreMaxBytes, maxStore)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	_, js = connectTest(t, e2.ClientURL())
	publish(4000) // 16 MiB more, on the space freed
	if msgs := readStream(t, js, DefaultStreamName); len(msgs) != n {
		t.Fatalf("stream holds %d messages, want %d", len(msgs), n)
	}
}

// TestEmbeddedDefaultMaxStore: without MaxStore the store is
// DefaultMaxStore, whatever the disk has free.
func TestEmbeddedDefaultMaxStore(t *testing.T) {
	e := startTestServer(t, "")
	if got := e.Server().JetStreamConfig().MaxStore; got != DefaultMaxStore {
		t.Fatalf("JetStream's store is %d bytes, want DefaultMaxStore %d", got, DefaultMaxStore)
	}
}

// TestEmbeddedLowSpaceUnhealthy: less free space than the minimum is
// unhealthy, with the reason, while JetStream still stores; freeing space
// makes it healthy again.
func TestEmbeddedLowSpaceUnhealthy(t *testing.T) {
	dir := tmpfs.Mount(t, 32<<20)
	e := startStorageServer(t, "127.0.0.1:-1", filepath.Join(dir, "nats"), 0, 8<<20)
	if st := e.Status(); !st.Healthy || st.FreeBytes < 8<<20 {
		t.Fatalf("status with the disk empty: %+v", st)
	}
	filler := tmpfs.Fill(t, dir, 4<<20)
	waitFor(t, 10*time.Second, "the status to notice the low space", func() bool { return !e.Status().Healthy })
	st := e.Status()
	if st.JetStream != JetStreamOK || len(st.Reasons) != 1 || !strings.Contains(st.Reasons[0], "below the minimum of 8.0 MiB") {
		t.Fatalf("status with 4 MiB free: %+v", st)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the status to be healthy again", func() bool { return e.Status().Healthy })
}

// TestEmbeddedRestartsDisabledJetStream: JetStream disabling itself (as
// nats-server does on some write failures) is noticed and undone: clients
// reconnect, and the stream's messages are still there.
func TestEmbeddedRestartsDisabledJetStream(t *testing.T) {
	e := startStorageServer(t, "127.0.0.1:-1", t.TempDir(), 0, -1)
	nc, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, testSubject, []byte("before"), jetstream.WithMsgID(msgID(1))); err != nil {
		t.Fatal(err)
	}
	if err := e.Server().ShutdownJetStream(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "JetStream to be restarted", func() bool {
		st := e.Status()
		return st.Healthy && st.Restarts > 0 && e.Server().JetStreamEnabled()
	})
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := WaitConnected(pctx, nc); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(pctx, testSubject, []byte("after"), jetstream.WithMsgID(msgID(2))); err != nil {
		t.Fatalf("publish after the restart: %v", err)
	}
	if msgs := readStream(t, js, DefaultStreamName); len(msgs) != 2 || msgs[0].data != "before" {
		t.Fatalf("stream after the restart: %+v", msgs)
	}
}

// TestEmbeddedNoRestartForStreamChurn: streams created and deleted while
// the storage is checked every millisecond never restart the server. The
// server's health check names a stream directory whose stream is not
// registered yet, or any more; that passes by itself.
func TestEmbeddedNoRestartForStreamChurn(t *testing.T) {
	t.Parallel() // see parallelTests
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Logger: quietLogger(),
		CheckInterval: time.Millisecond, MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	_, js := connectTest(t, e.ClientURL())
	// One stream stays, as the event stream does: nats-server removes the
	// emptied streams directory behind a delete of the last stream, and a
	// stream created at that moment fails (with or without the monitor).
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		ctx, cancel := context.WithTimeout(testContext(t), 5*time.Second)
		name := fmt.Sprintf("CHURN%d", i)
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name}}); err != nil {
			cancel()
			t.Fatalf("create stream %d: %v (restarts %d)", i, err, e.Status().Restarts)
		}
		if err := js.DeleteStream(ctx, name); err != nil {
			cancel()
			t.Fatalf("delete stream %d: %v (restarts %d)", i, err, e.Status().Restarts)
		}
		cancel()
	}
	if st := e.Status(); st.Restarts != 0 || !st.Healthy {
		t.Fatalf("status after creating and deleting 500 streams: %+v", st)
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 256 << 20: "256.0 MiB", 8 << 30: "8.0 GiB", -2048: "-2.0 KiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// BenchmarkStorageCheck measures one check of the storage monitor (statfs,
// JetStream's usage and health check), which runs once a second.
func BenchmarkStorageCheck(b *testing.B) {
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: b.TempDir(), Logger: quietLogger(), CheckInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Shutdown)
	_, js := connectTest(b, e.ClientURL())
	if _, err := EnsureStream(testContext(b), js, StreamConfig{}); err != nil {
		b.Fatal(err)
	}
	if _, err := OpenRegistry(testContext(b), js, "", 1); err != nil {
		b.Fatal(err)
	}
	m := &storageMonitor{e: e}
	b.ReportAllocs()
	for b.Loop() {
		m.check(time.Now())
	}
}
