package stream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// fencedStream makes a stream of its own, replicated three times, on cl
// for a subtest.
func fencedStream(t *testing.T, cl *natstest.Cluster, name string) (stream.StreamConfig, jetstream.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := stream.StreamConfig{Name: strings.ToUpper(name), Prefix: name, Replicas: 3, DuplicateWindow: time.Minute}
	st, err := stream.EnsureStream(ctx, cl.JS, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !stream.CapturesFences(st.CachedInfo().Config.Subjects, 3, name) {
		t.Fatalf("stream %s does not capture the fence ring: %v", cfg.Name, st.CachedInfo().Config.Subjects)
	}
	return cfg, st
}

var discardLog = slog.New(slog.DiscardHandler)

func fenceModes() []struct {
	name  string
	batch bool
} {
	return []struct {
		name  string
		batch bool
	}{{"alone", false}, {"batches", true}}
}

// fencedPublisher is a Publisher of cfg's stream on nc with opts (its
// fence), sending fast batches or not.
func fencedPublisher(t *testing.T, nc *nats.Conn, cfg stream.StreamConfig, batch bool, maxInFlight int, opts ...stream.PublisherOption) *stream.Publisher {
	t.Helper()
	opts = append([]stream.PublisherOption{stream.WithStream(cfg.Name)}, opts...)
	if batch {
		opts = append(opts, stream.WithBatches(stream.ControlSubject(cfg.Prefix)))
	}
	p, err := stream.NewPublisher(nc, nil, maxInFlight, discardLog, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// TestFenceRingPipelinedOnR3: on a stream with three replicas, a
// Publisher fenced by a ring (WithFenceRing) publishes 20,000 messages
// with up to FenceRingSize-1 awaiting acknowledgement, alone or in fast
// batches, and all are stored, in order, none refused. With one fence
// subject (WithFence, what a stream with one replica takes), the same
// pipelined publishing is refused: that is why the ring exists.
func TestFenceRingPipelinedOnR3(t *testing.T) {
	cl := natstest.StartCluster(t, 3)
	const n = 20_000
	for _, mode := range fenceModes() {
		t.Run(mode.name, func(t *testing.T) {
			cfg, st := fencedStream(t, cl, "pipe"+mode.name)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			ring := stream.FenceRingSubjects(cfg.Prefix, "slot")
			began := time.Now()
			seqs, err := stream.StoreFences(ctx, cl.JS, cfg.Name, ring, []byte(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			stored := time.Since(began)
			began = time.Now()
			last, err := stream.LastFences(ctx, st, ring)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("a ring of %d fences stored in %s, read back in %s", len(ring), stored.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
			for i := range seqs {
				if i > 0 && seqs[i] <= seqs[i-1] || last[i] != seqs[i] {
					t.Fatalf("fence %d stored at %d (the one before at %d), read back at %d", i, seqs[i], seqs[max(i-1, 0)], last[i])
				}
			}
			p := fencedPublisher(t, cl.NC, cfg, mode.batch, 8192, stream.WithFenceRing(ring, seqs))
			subject := cfg.Prefix + ".db.public.t.insert"
			began = time.Now()
			for i := 1; i <= n; i++ {
				if _, err := p.Publish(ctx, subject, fmt.Sprintf("m-%d", i), fmt.Appendf(nil, "%d", i)); err != nil {
					t.Fatalf("publish message %d: %v", i, err)
				}
			}
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			for p.Acked() < n {
				select {
				case <-p.Failed():
					t.Fatalf("fenced publisher failed: %v", p.Err())
				case <-ctx.Done():
					t.Fatalf("acknowledged %d of %d", p.Acked(), n)
				case <-time.After(10 * time.Millisecond):
				}
			}
			t.Logf("%d messages stored in %s with at most %d awaiting acknowledgement", n, time.Since(began).Round(time.Millisecond), stream.FenceRingSize-1)
			got := cl.ReadAll(t, cfg.Name)
			if len(got) != n {
				t.Fatalf("stream holds %d events, want %d", len(got), n)
			}
			for i, m := range got {
				if want := fmt.Sprintf("m-%d", i+1); m.MsgID != want {
					t.Fatalf("event %d is %s, want %s", i+1, m.MsgID, want)
				}
				if h := m.Header.Get("Nats-Expected-Last-Subject-Sequence-Subject"); h != ring[i%len(ring)] {
					t.Fatalf("event %d expects the fence on %q, want %q", i+1, h, ring[i%len(ring)])
				}
			}

			// One fence subject for every message: the stream refuses
			// the second expectation in flight on it.
			single := stream.FenceSubject(cfg.Prefix, "single")
			ack, err := cl.JS.Publish(ctx, single, []byte(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			q := fencedPublisher(t, cl.NC, cfg, mode.batch, 8192, stream.WithFence(single, ack.Sequence))
			for i := 1; i <= 2000 && q.Err() == nil; i++ {
				if _, err := q.Publish(ctx, subject, fmt.Sprintf("s-%d", i), []byte("s")); err != nil {
					break
				}
			}
			_ = q.Flush(ctx)
			select {
			case <-q.Failed():
				t.Logf("one fence subject, pipelined: %v", q.Err())
				if !strings.Contains(q.Err().Error(), "10164") {
					t.Fatalf("failed with %v, want a refusal for an expectation in flight (10164)", q.Err())
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("pipelined publishing with one fence subject was not refused on three replicas (acknowledged %d): the ring may no longer be needed", q.Acked())
			}
		})
	}
}

// TestFenceRingPausedLeaderOnR3: publisher A, fenced by the ring's fences,
// is paused with messages on their way (its connection to the cluster
// stalls, as the connection of a stopped process or a frozen VM); B takes
// over, storing a fence on every subject of the ring, and publishes; then A
// wakes up. Every message A sent after its pause is refused, A fails with
// ErrFenced, and the stream holds A's messages from before the pause, then
// B's fences, then B's messages, all of them.
func TestFenceRingPausedLeaderOnR3(t *testing.T) {
	cl := natstest.StartCluster(t, 3)
	for _, mode := range fenceModes() {
		t.Run(mode.name, func(t *testing.T) {
			cfg, _ := fencedStream(t, cl, "paused"+mode.name)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			ring := stream.FenceRingSubjects(cfg.Prefix, "slot")
			subject := cfg.Prefix + ".db.public.t.insert"

			// A reaches the stream through a proxy that can stall.
			px := newStallProxy(t, cl.Nodes[0].Client)
			ncA, err := stream.Connect(ctx, "nats://"+px.addr(), "leader-a", discardLog, nats.DontRandomize())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(ncA.Close)
			seqsA, err := stream.StoreFences(ctx, cl.JS, cfg.Name, ring, []byte(`{"holder":"a"}`))
			if err != nil {
				t.Fatal(err)
			}
			a := fencedPublisher(t, ncA, cfg, mode.batch, 8192, stream.WithFenceRing(ring, seqsA))
			const before = 100
			for i := 1; i <= before; i++ {
				if _, err := a.Publish(ctx, subject, fmt.Sprintf("a-%d", i), []byte("a")); err != nil {
					t.Fatal(err)
				}
			}
			if err := a.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			for a.Acked() < before {
				if a.Err() != nil {
					t.Fatal(a.Err())
				}
				time.Sleep(5 * time.Millisecond)
			}

			// A pauses with a full window on its way.
			px.stall()
			aDone := make(chan struct{})
			go func() {
				defer close(aDone)
				for i := before + 1; i <= before+2000; i++ {
					if _, err := a.Publish(ctx, subject, fmt.Sprintf("a-%d", i), []byte("a")); err != nil {
						return
					}
					if i%100 == 0 {
						_ = a.Flush(ctx)
					}
				}
				_ = a.Flush(ctx)
			}()
			deadline := time.Now().Add(10 * time.Second)
			for a.InFlight() < stream.FenceRingSize-1 {
				if time.Now().After(deadline) {
					t.Fatalf("A has %d messages in flight, want %d", a.InFlight(), stream.FenceRingSize-1)
				}
				time.Sleep(5 * time.Millisecond)
			}

			// B takes over and publishes.
			seqsB, err := stream.StoreFences(ctx, cl.JS, cfg.Name, ring, []byte(`{"holder":"b"}`))
			if err != nil {
				t.Fatal(err)
			}
			b := fencedPublisher(t, cl.NC, cfg, mode.batch, 8192, stream.WithFenceRing(ring, seqsB))
			const fromB = 1000
			for i := 1; i <= fromB; i++ {
				if _, err := b.Publish(ctx, subject, fmt.Sprintf("b-%d", i), []byte("b")); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Flush(ctx); err != nil {
				t.Fatal(err)
			}

			// A wakes up.
			px.resume()
			select {
			case <-a.Failed():
			case <-time.After(30 * time.Second):
				t.Fatalf("the paused publisher was not refused once it woke up (acknowledged %d)", a.Acked())
			}
			// Refused for its fence (ErrFenced), or, when B's messages on
			// the same ring subject are proposed but not yet applied, with
			// 10164 (ErrNegativeAck), as WithFenceRing says: either way A
			// stops, and what the stream holds (below) is what matters.
			if err := a.Err(); !errors.Is(err, stream.ErrFenced) && !(errors.Is(err, stream.ErrNegativeAck) && strings.Contains(err.Error(), "error code 10164")) {
				t.Fatalf("A failed with %v, want ErrFenced, or a refusal with 10164", err)
			}
			t.Logf("A, woken up: %v", a.Err())
			<-aDone
			for b.Acked() < fromB {
				select {
				case <-b.Failed():
					t.Fatalf("B failed: %v", b.Err())
				case <-ctx.Done():
					t.Fatalf("B: %d of %d acknowledged", b.Acked(), fromB)
				case <-time.After(10 * time.Millisecond):
				}
			}
			// Whatever A still had in flight is answered by now (refused);
			// a barrier through A's proxy would be refused too, so wait for
			// the stream to stop growing instead.
			time.Sleep(500 * time.Millisecond)

			got := cl.ReadAll(t, cfg.Name)
			lastFenceB := seqsB[len(seqsB)-1]
			var fromA, afterFence int
			for _, m := range got {
				switch {
				case strings.HasPrefix(m.MsgID, "a-"):
					fromA++
					if m.Seq > seqsB[0] {
						t.Errorf("A's %s stored at %d, after B's first fence at %d", m.MsgID, m.Seq, seqsB[0])
					}
				case m.Seq < lastFenceB:
					t.Errorf("B's %s stored at %d, before its last fence at %d", m.MsgID, m.Seq, lastFenceB)
				default:
					afterFence++
					if want := fmt.Sprintf("b-%d", afterFence); m.MsgID != want {
						t.Fatalf("event at %d is %s, want %s", m.Seq, m.MsgID, want)
					}
				}
			}
			if fromA != before || afterFence != fromB {
				t.Fatalf("stream holds %d of A's events and %d of B's, want %d and %d", fromA, afterFence, before, fromB)
			}
		})
	}
}

// stallProxy forwards one TCP connection at a time to a NATS server; stall
// holds what the client sends until resume, as a paused process's
// connection: its bytes wait in buffers, to arrive late.
type stallProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	gate   chan struct{} // closed while not stalled
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	p := &stallProxy{target: target, gate: make(chan struct{})}
	close(p.gate)
	p.ln = listenForward(t, target, func(c, s net.Conn) {
		go func() { _, _ = io.Copy(c, s) }()
		go p.forward(s, c)
	})
	return p
}

// listenForward accepts connections on a loopback port and, for each,
// dials target and hands both ends to pipe, which starts the copying. Every
// connection is closed when the test ends.
func listenForward(t *testing.T, target string, pipe func(client, server net.Conn)) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			pipe(c, s)
		}
	}()
	return ln
}

func (p *stallProxy) addr() string { return p.ln.Addr().String() }

// forward copies src to dst, waiting at the gate before each write.
func (p *stallProxy) forward(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate := p.gate
			p.mu.Unlock()
			<-gate
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			_ = dst.Close()
			return
		}
	}
}

func (p *stallProxy) stall() {
	p.mu.Lock()
	p.gate = make(chan struct{})
	p.mu.Unlock()
}

func (p *stallProxy) resume() {
	p.mu.Lock()
	close(p.gate)
	p.mu.Unlock()
}
