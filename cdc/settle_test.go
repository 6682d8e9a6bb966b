package cdc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// holdingProxy stands between the reader and NATS and, while held, keeps
// what the reader sends from reaching the server, in order, for as long as
// the test likes: the server then receives it all at once. It plays a
// server that is slow to read, or that has queued what it read.
type holdingProxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu     sync.Mutex
	held   bool
	resume *sync.Cond
	// heldData is what the client sent since the last hold, while held.
	heldData []byte
}

func startHoldingProxy(t testing.TB, target string) *holdingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdingProxy{t: t, ln: ln, target: target}
	p.resume = sync.NewCond(&p.mu)
	t.Cleanup(func() {
		p.release()
		_ = ln.Close()
	})
	go p.accept()
	return p
}

func (p *holdingProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *holdingProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		go func() {
			_, _ = io.Copy(c, s)
			_ = c.Close()
		}()
		// Client to server: read all the time (so the client never blocks
		// on a full socket), forward only while not held.
		chunks := make(chan []byte, 1<<16)
		go func() {
			defer close(chunks)
			for {
				buf := make([]byte, 32<<10)
				n, err := c.Read(buf)
				if n > 0 {
					p.mu.Lock()
					if p.held {
						p.heldData = append(p.heldData, buf[:n]...)
					}
					p.mu.Unlock()
					chunks <- buf[:n]
				}
				if err != nil {
					return
				}
			}
		}()
		go func() {
			defer s.Close()
			for b := range chunks {
				p.mu.Lock()
				for p.held {
					p.resume.Wait()
				}
				p.mu.Unlock()
				if _, err := s.Write(b); err != nil {
					return
				}
			}
		}()
	}
}

func (p *holdingProxy) hold() {
	p.mu.Lock()
	p.held, p.heldData = true, nil
	p.mu.Unlock()
}

// heldContains reports whether the client sent s while held.
func (p *holdingProxy) heldContains(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Contains(p.heldData, []byte(s))
}

func (p *holdingProxy) release() {
	p.mu.Lock()
	p.held = false
	p.resume.Broadcast()
	p.mu.Unlock()
}

// TestSettleBeforeReadingStream: a session fails with thousands of events
// sent that the server has not stored yet. The next session must not read
// the stream before they are stored, or it would publish them a second
// time, with the duplicate window far too short to drop them: the replay
// reaches them only after re-reading the large transaction they belong to
// (which starts with rows of a table nobody publishes, so that the
// walsender takes a while to decode it again).
//
// The proxy holds the failed session's publishes and the next session's
// first request, then lets the server read them at once. The server reads
// a connection in order, but it only queues the publishes for the stream's
// own goroutine to store, while it answers the requests that read the
// stream (stream info, consumers) from a separate pool of workers: without
// the barrier (settle), the next session learns the stream's end while
// thousands of the held events are still queued, and publishes them again.
// The barrier goes through the stream's queue behind them; every event is
// then in the stream exactly once, in order.
func TestSettleBeforeReadingStream(t *testing.T) {
	// The reader holds at most 8,192 events in flight: when a third of the
	// rows are stored and the proxy holds, it cannot have sent more than
	// rows/3 + 8,192 of them, so the session fails mid-transaction with
	// thousands held. More rows add only time.
	const rows = 30_000
	// filler has no key, so the managed publication leaves it out.
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, pad text)`, `CREATE TABLE filler (v int)`)
	n := &natsEnv{natstest.Start(t)}
	ctx := context.Background()
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	target := n.NC.ConnectedAddr()
	proxy := startHoldingProxy(t, target)
	nc, err := stream.Connect(ctx, proxy.url(), "reader", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	cfg := db.config()
	// A lease that outlasts the hold: the session must end for want of
	// acknowledgements (stream.DefaultAckTimeout) and the next one start at
	// once. A reader that lost its lease would take the slot again only
	// once the lease expired, seconds after the server stored everything.
	cfg.LeaderLease = time.Minute
	r := launchReaderOn(t, cfg, nc, js)
	waitFor(t, 20*time.Second, "the reader to stream", func() bool { return r.Health().Streaming })

	// One transaction (two statements, no parameters: the simple protocol).
	db.exec(t, fmt.Sprintf(`INSERT INTO filler SELECT generate_series(1, 300000); INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, %d) g`, rows))
	waitFor(t, 60*time.Second, "a third of the transaction stored", func() bool { return n.Count("TABLECAST") >= rows/3 })
	proxy.hold()
	waitFor(t, 30*time.Second, "the session to fail", func() bool { return r.log.contains("replication session ended") })
	// The next session's first request goes behind the held publishes:
	// settle's barrier (it expects a last sequence no stream reaches), or
	// without it resume's look at the stream.
	waitFor(t, 10*time.Second, "the next session to look at the stream", func() bool {
		return proxy.heldContains("Nats-Expected-Last-Sequence") || proxy.heldContains("$JS.API.STREAM.INFO.TABLECAST")
	})
	held := n.Count("TABLECAST")
	proxy.release()

	n.waitCount(t, rows, 120*time.Second)
	time.Sleep(time.Second) // a duplicate would be stored by now
	evs := n.fetch(t)
	assertExactlyInOrder(t, evs, rows)
	t.Logf("the stream held %d events when the next session looked; %d in the stream, each once", held, len(evs))
}

// TestNATSRestartMidBatch: NATS restarts while the reader is half way
// through a large transaction, published in batches; with a duplicate
// window too short to help, every event is stored once and in order.
func TestNATSRestartMidBatch(t *testing.T) {
	// The reader holds at most 8,192 events in flight: when a quarter of
	// the rows are stored and NATS stops, it cannot have sent more than
	// rows/4 + 8,192 of them, so the restart lands mid-transaction. More
	// rows add only time.
	const rows = 20_000
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, pad text)`)
	n := &natsEnv{natstest.Start(t)}
	ctx := context.Background()
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	r := startReader(t, db.config(), n)
	db.exec(t, `INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, $1) g`, rows)
	waitFor(t, 60*time.Second, "a quarter of the transaction stored", func() bool { return n.Count("TABLECAST") >= rows/4 })
	n.Stop()
	n.Restart()
	n.waitCount(t, rows, 120*time.Second)
	time.Sleep(time.Second)
	evs := n.fetch(t)
	assertExactlyInOrder(t, evs, rows)
	if !r.log.contains("replication session ended") {
		t.Error("the restart did not end a session: nothing was in flight when NATS went away")
	}
}

// launchReaderOn is launchReader with a NATS connection of the test's
// choosing.
func launchReaderOn(t testing.TB, cfg Config, nc *nats.Conn, js jetstream.JetStream) *runningReader {
	t.Helper()
	if cfg.RetryMin == 0 {
		cfg.RetryMin, cfg.RetryMax = 100*time.Millisecond, 500*time.Millisecond
	}
	lb := &logBuffer{}
	reg := prometheus.NewRegistry()
	r, err := New(cfg, nc, js, testPrefix, slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), reg)
	if err != nil {
		t.Fatalf("new reader: %v", err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	rr := &runningReader{Reader: r, log: lb, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(rctx) }()
	t.Cleanup(func() { rr.stop(t) })
	return rr
}
