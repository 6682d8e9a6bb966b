package stream_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// TestFetchStalledGivesUpOnlyWithoutProgress: reading a claimed object
// gives up when nothing arrives for the stall bound, not when the whole
// read takes longer than it. A 7 MiB object through a link throttled to
// 1 MiB/s takes about 7 s and is read whole with a bound of 1 s (a
// deadline on the whole read would turn it into a stub, and so did the
// object store's own reader, which gives a read 5 s in all); the same read
// through a link that freezes part way fails soon after the bound, naming
// the missing progress.
func TestFetchStalledGivesUpOnlyWithoutProgress(t *testing.T) {
	n := natstest.Start(t)
	ctx := ctxFor(t)
	store, err := stream.OpenPayloadStore(ctx, n.JS, stream.PayloadStoreConfig{MaxAge: time.Hour, MaxPayload: n.NC.MaxPayload()})
	if err != nil {
		t.Fatal(err)
	}
	event := []byte(`{"id":"0000000000000001-0001","data":{"notes":"` + strings.Repeat("n", 7<<20) + `"}}`)
	name := stream.PayloadObjectName("shop", "0000000000000001-0001")
	if err := store.Put(ctx, name, event); err != nil {
		t.Fatal(err)
	}
	claim := stream.Claim{Bucket: store.Bucket(), Object: name, Size: int64(len(event))}
	const stall = time.Second

	t.Run("slow", func(t *testing.T) {
		p := newThrottle(t, strings.TrimPrefix(n.URL(), "nats://"), 1<<20)
		js := connectThrough(t, p.addr())
		start := time.Now()
		got, err := stream.NewResolver(js).FetchStalled(ctx, claim, stall)
		took := time.Since(start)
		if err != nil || !bytes.Equal(got, event) {
			t.Fatalf("FetchStalled through a slow link: %d bytes, %v after %s; want the %d stored", len(got), err, took, len(event))
		}
		if took < 5*time.Second+stall {
			t.Fatalf("the read took %s, not longer than the stall bound and the JetStream client's default timeout: the test proves nothing", took)
		}
		// The read leaves no consumer behind: large events are read many
		// a minute.
		if _, info := objectStream(t, ctx, n.JS, store); info.State.Consumers != 0 {
			t.Fatalf("the object stream has %d consumers after the read; want none", info.State.Consumers)
		}
	})
	t.Run("frozen", func(t *testing.T) {
		p := newThrottle(t, strings.TrimPrefix(n.URL(), "nats://"), 1<<20)
		js := connectThrough(t, p.addr())
		go func() {
			for p.sent.Load() < 1<<20 {
				time.Sleep(10 * time.Millisecond)
			}
			p.freeze()
		}()
		start := time.Now()
		got, err := stream.NewResolver(js).FetchStalled(ctx, claim, stall)
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "no progress") || errors.Is(err, stream.ErrClaimGone) {
			t.Fatalf("FetchStalled through a frozen link: %d bytes, %v; want the missing progress named", len(got), err)
		}
		if took > 15*time.Second { // it gives up after the stall bound, not at the context's minute
			t.Fatalf("gave up after %s", took)
		}
		t.Logf("gave up after %s: %v", took, err)
	})
}

// TestFetchStalledObjectWithChunksMissing: an object whose description
// is stored but some of whose chunks are not (deleted, or not yet on the
// replica that answers) is never returned with other bytes in their place.
// A chunk missing in the middle makes the next ones come in its place, one
// short of the object's count; the last one missing leaves the read
// short too. Either way it asks again until the stall bound, and gives up
// naming it.
func TestFetchStalledObjectWithChunksMissing(t *testing.T) {
	for _, c := range []struct {
		name    string
		missing func(first, last uint64) uint64 // which chunk's sequence is deleted
	}{
		{"middle", func(first, last uint64) uint64 { return first + 1 }},
		{"last", func(first, last uint64) uint64 { return last }},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := natstest.StartStock(t)
			ctx := ctxFor(t)
			store, err := stream.OpenPayloadStore(ctx, n.JS, stream.PayloadStoreConfig{MaxPayload: n.NC.MaxPayload()})
			if err != nil {
				t.Fatal(err)
			}
			event := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: eight chunks
			name := stream.PayloadObjectName("shop", "0000000000000001-0001")
			if err := store.Put(ctx, name, event); err != nil {
				t.Fatal(err)
			}
			objs, info := objectStream(t, ctx, n.JS, store)
			// The bucket holds this object alone: its chunks, then its
			// description.
			first, last := info.State.FirstSeq, info.State.LastSeq-1
			if last-first < 3 {
				t.Fatalf("the object has %d chunks; want several", last-first+1)
			}
			if err := objs.DeleteMsg(ctx, c.missing(first, last)); err != nil {
				t.Fatal(err)
			}
			claim := stream.Claim{Bucket: store.Bucket(), Object: name, Size: int64(len(event))}
			got, err := stream.NewResolver(n.JS).FetchStalled(ctx, claim, time.Second)
			if got != nil || err == nil || !strings.Contains(err.Error(), "no progress") {
				t.Fatalf("FetchStalled of an object missing a chunk: %d bytes, %v", len(got), err)
			}
		})
	}
}

// objectStream returns the stream of store's bucket and its state now.
func objectStream(t *testing.T, ctx context.Context, js jetstream.JetStream, store *stream.PayloadStore) (jetstream.Stream, *jetstream.StreamInfo) {
	t.Helper()
	objs, err := js.Stream(ctx, "OBJ_"+store.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	info, err := objs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return objs, info
}

func connectThrough(t *testing.T, addr string) jetstream.JetStream {
	nc, err := nats.Connect("nats://"+addr, nats.MaxReconnects(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// throttle forwards TCP connections to a NATS server, passing what the
// server sends at most rate bytes a second, and nothing once frozen.
type throttle struct {
	ln     net.Listener
	rate   int
	sent   atomic.Int64
	mu     sync.Mutex
	frozen bool
}

func newThrottle(t *testing.T, target string, rate int) *throttle {
	p := &throttle{rate: rate}
	p.ln = listenForward(t, target, func(c, s net.Conn) {
		go func() { _, _ = io.Copy(s, c) }()
		go p.forward(c, s)
	})
	return p
}

func (p *throttle) addr() string { return p.ln.Addr().String() }

func (p *throttle) freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// forward copies src to dst in pieces of a fiftieth of the rate, one
// every 20 ms.
func (p *throttle) forward(dst, src net.Conn) {
	buf := make([]byte, p.rate/50)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			for {
				p.mu.Lock()
				frozen := p.frozen
				p.mu.Unlock()
				if !frozen {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			p.sent.Add(int64(n))
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			_ = dst.Close()
			return
		}
	}
}
