package cdc

import (
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
	p.held = true
	p.mu.Unlock()
}

func (p *holdingProxy) release() {
	p.mu.Lock()
	p.held = false
	p.resume.Broadcast()
	p.mu.Unlock()
}

// TestSettleBeforeReadingStream: a session fails with thousands of events
// sent that the server has not stored yet (it has not even read them). The
// next session must not read the stream before they are stored, or it
// would publish them a second time, with the duplicate window far too short
// to drop them: the replay reaches them only after re-reading the large
// transaction they belong to (which starts with rows of a table nobody
// publishes, so that the walsender takes a while to decode it again). The
// barrier (settle) orders the next session's look after them; every event
// is then in the stream exactly once, in order.
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
	r := launchReaderOn(t, db.config(), nc, js)
	waitFor(t, 20*time.Second, "the reader to stream", func() bool { return r.Health().Streaming })

	// One transaction (two statements, no parameters: the simple protocol).
	db.exec(t, fmt.Sprintf(`INSERT INTO filler SELECT generate_series(1, 300000); INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, %d) g`, rows))
	waitFor(t, 60*time.Second, "a third of the transaction stored", func() bool { return n.Count("TABLECAST") >= rows/3 })
	proxy.hold()
	// The publisher gives up waiting for acknowledgements, or the reader
	// its lease, which it cannot renew either: the session ends, and the
	// next one starts, all while the server reads nothing.
	waitFor(t, 30*time.Second, "the session to fail", func() bool {
		return r.log.contains("replication session ended") || r.log.contains("lost the lease")
	})
	time.Sleep(500 * time.Millisecond)
	held := n.Count("TABLECAST")
	proxy.release()

	n.waitCount(t, rows, 120*time.Second)
	time.Sleep(time.Second) // a duplicate would be stored by now
	evs := n.fetch(t)
	assertExactlyInOrder(t, evs, rows)
	t.Logf("the server held %d events when the session failed; %d in the stream, each once", held, len(evs))
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
