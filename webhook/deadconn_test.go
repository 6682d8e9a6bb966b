package webhook

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/testcert"
)

// blackhole is a TCP relay in front of a receiver whose connections can
// go silent, as a connection does when a load balancer or a NAT on the
// way forgets it: what the client sends is taken and dropped, nothing
// comes back, and the connection stays open. Connections made after that
// are relayed as usual.
type blackhole struct {
	addr  string
	conns atomic.Int64
	mu    sync.Mutex
	live  []*atomic.Bool // each relayed connection's silence
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{addr: ln.Addr().String()}
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			c.Close()
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
				c.Close()
				continue
			}
			b.conns.Add(1)
			mu.Lock()
			open = append(open, c, s)
			mu.Unlock()
			silent := new(atomic.Bool)
			b.mu.Lock()
			b.live = append(b.live, silent)
			b.mu.Unlock()
			relay := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if n > 0 && !silent.Load() {
						if _, err := dst.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}
			go relay(s, c)
			go relay(c, s)
		}
	}()
	return b
}

// silence makes every connection relayed so far go silent.
func (b *blackhole) silence() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.live {
		s.Store(true)
	}
}

// TestHTTP2DeadConnectionLeft: an HTTP/2 receiver whose connection goes
// silent (forgotten on the way, the receiver itself well) gets its next
// events over a new connection, within the endpoint's retry max_age, not
// dead-lettered after attempts that all went to the dead one. net/http
// keeps an HTTP/2 connection whose requests timed out in use, as long as
// it has room for streams (hundreds of attempts, hours of backoff), and
// every endpoint to that host shares it.
func TestHTTP2DeadConnectionLeft(t *testing.T) {
	t.Parallel()
	cert := testcert.New(t, "127.0.0.1")
	e := newEnv(t, envOptions{roots: cert.Pool})
	r := newTLSReceiver(t, cert)
	b := newBlackhole(t, r.addr)
	ep := e.endpoint("deadconn", "https://"+b.addr+"/hook", func(w *endpoint.Webhook) {
		w.Timeout = endpoint.Duration(time.Second)
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Minute)}
	})
	e.waitConsumer(ep)
	e.insertOrders(1, 1)
	r.waitCount(t, 1, time.Minute)
	if d := r.requests()[0]; d.ProtoMajor != 2 {
		t.Fatalf("delivered over HTTP/%d; the test needs HTTP/2", d.ProtoMajor)
	}
	b.silence()
	e.insertOrders(2, 3)
	ctx := context.Background()
	waitFor(t, 3*time.Minute, "the events after the silence accepted or dead-lettered", func() bool {
		dls, err := e.mgr.DeadLetters().List(ctx, ep.ID, 0, 10)
		return r.acceptedCount() >= 3 || (err == nil && len(dls) > 0)
	})
	dls, err := e.mgr.DeadLetters().List(ctx, ep.ID, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) > 0 {
		t.Fatalf("%d dead-lettered (%q after %d attempts) over %d connections, the receiver well all along", len(dls), dls[0].Reason, dls[0].Attempts, b.conns.Load())
	}
	checkOrder(t, r.accepted(t), 3)
	if c := b.conns.Load(); c < 2 {
		t.Errorf("%d connections; want a new one after the first went silent", c)
	}
}
