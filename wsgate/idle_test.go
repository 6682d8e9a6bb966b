package wsgate

import (
	"errors"
	"io"
	"net/http"
	"os"
	"testing"
	"time"
)

// expectClosedWithin reads c until the gateway closes it, failing if it is
// still open after d.
func (c *rawConn) expectClosedWithin(d time.Duration, what string) {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c.br)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.t.Fatalf("%s: still open after %v", what, d)
	}
}

// TestIdleConnectionsClosed: a kept-alive HTTP connection that sends
// nothing after its request is closed after IdleTimeout, one that never
// finishes its first request after HeaderTimeout, and one that opens a
// second request and stalls after HeaderTimeout too, so that nobody holds
// a descriptor for free.
func TestIdleConnectionsClosed(t *testing.T) {
	t.Parallel()
	const idle, header = 300 * time.Millisecond, 500 * time.Millisecond
	e := startGateway(t, func(c *Config) { c.IdleTimeout, c.HeaderTimeout = idle, header })
	const n = 50
	get := "GET /healthz HTTP/1.1\r\nHost: " + e.addr + "\r\n\r\n"
	kept := make([]*rawConn, n)
	for i := range kept {
		kept[i] = rawDialFrom(t, e.addr, "")
		resp := kept[i].roundTrip(get)
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("GET /healthz answered %s (close %v), want a kept-alive 200", resp.Status, resp.Close)
		}
	}
	silent := rawDialFrom(t, e.addr, "")
	half := rawDialFrom(t, e.addr, "")
	if _, err := io.WriteString(half.nc, "GET /healthz HTTP/1.1\r\nHo"); err != nil {
		t.Fatal(err)
	}
	second := rawDialFrom(t, e.addr, "")
	if resp := second.roundTrip(get); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz answered %s", resp.Status)
	}
	if _, err := io.WriteString(second.nc, "GET /healthz HTTP/1.1\r\nHo"); err != nil {
		t.Fatal(err)
	}
	// Every window is far shorter than the time allowed.
	for _, c := range kept {
		c.expectClosedWithin(idle+10*time.Second, "idle kept-alive connection")
	}
	silent.expectClosedWithin(header+10*time.Second, "connection that sent nothing")
	half.expectClosedWithin(header+10*time.Second, "connection with half a request")
	second.expectClosedWithin(header+10*time.Second, "kept-alive connection with half a second request")
}

// TestUnauthenticatedPerAddress: one source address holds at most
// MaxUnauthenticatedPerAddr connections that have not authenticated:
// handshakes in progress and plain HTTP connections; the next one is
// answered 429 while another address still gets in, and a slot frees when
// a connection closes. An authenticated (here anonymous) WebSocket
// connection no longer counts.
func TestUnauthenticatedPerAddress(t *testing.T) {
	t.Parallel()
	const limit = 5
	e := startGateway(t, func(c *Config) { c.MaxUnauthenticatedPerAddr = limit })
	get := "GET /healthz HTTP/1.1\r\nHost: " + e.addr + "\r\n\r\n"

	// Upgraded connections do not count: more than the limit of them. Nor
	// do those refused after the upgrade, once closed.
	for range 2 * limit {
		e2eExpectPong(e.dial("/ws"))
		e2eDial(t, e, "/ws", "Origin", "http://evil.example").expectClose(CloseForbiddenOrigin)
	}
	held := make([]*rawConn, 0, limit)
	for i := range limit {
		c := rawDialFrom(t, e.addr, "127.0.0.1")
		if i%2 == 0 { // a kept-alive HTTP connection
			if resp := c.roundTrip(get); resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /healthz %d answered %s", i, resp.Status)
			}
		} // else a connection that has sent nothing yet
		held = append(held, c)
	}
	// The gateway accepts connections in order and counts each as it
	// accepts it: the held ones are counted before the next one is seen.
	over := rawDialFrom(t, e.addr, "127.0.0.1")
	_ = over.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if resp := over.readResponse(); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("connection %d from 127.0.0.1 answered %s, want 429", limit+1, resp.Status)
	}
	over.expectClosedWithin(10*time.Second, "refused connection")
	if resp := rawDialFrom(t, e.addr, "127.0.0.2").roundTrip(get); resp.StatusCode != http.StatusOK {
		t.Fatalf("another address answered %s, want 200", resp.Status)
	}
	// A WebSocket upgrade from the full address is refused as well.
	ws := rawDialFrom(t, e.addr, "127.0.0.1")
	if resp := ws.roundTrip(wsRequest("/ws", e.addr, "", "")); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("upgrade from a full address answered %s, want 429", resp.Status)
	}

	// One closes: its slot is free again.
	_ = held[0].nc.Close()
	e.waitFor("slot released", func() bool { return e.gw.unauth.Count(held[1].nc.LocalAddr()) == limit-1 })
	if resp := rawDialFrom(t, e.addr, "127.0.0.1").roundTrip(get); resp.StatusCode != http.StatusOK {
		t.Fatalf("after a close, 127.0.0.1 answered %s, want 200", resp.Status)
	}
}
