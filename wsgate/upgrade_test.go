package wsgate

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestUpgradeRequestLimits: whatever a client sends before it is known,
// the gateway reads a bounded amount of it and answers as HTTP servers do:
// 414 for a request line too long, 431 for headers too large or too many,
// 400 for a malformed handshake, 426 for another WebSocket version. The
// huge requests are streamed much larger than the limits, while the answer
// is read: the gateway must answer without waiting for their end.
func TestUpgradeRequestLimits(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	host := e.addr
	okHead := "Host: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	const huge = 64 << 20 // streamed, never held by the test
	for _, tc := range []struct {
		name   string
		head   string
		stream func(w io.Writer) // endless input after head, until the gateway closes
		status int
	}{
		{"huge request line", "GET /ws?x=", streamRepeat("a", huge), http.StatusRequestURITooLong},
		{"huge request line, other path", "GET /metrics?x=", streamRepeat("a", huge), http.StatusRequestURITooLong},
		{"request line without end", "", streamRepeat("GET ", huge), http.StatusRequestURITooLong},
		{"huge header", "GET /ws HTTP/1.1\r\n" + okHead + "X-Pad: ", streamRepeat("b", huge), http.StatusRequestHeaderFieldsTooLarge},
		{"huge header, other path", "GET / HTTP/1.1\r\nHost: " + host + "\r\nX-Pad: ", streamRepeat("b", huge), http.StatusRequestHeaderFieldsTooLarge},
		{"endless headers", "GET /ws HTTP/1.1\r\n" + okHead, streamRepeat("X-A: b\r\n", huge), http.StatusRequestHeaderFieldsTooLarge},
		{"endless long headers", "GET /ws HTTP/1.1\r\n" + okHead, streamRepeat("X-A: "+strings.Repeat("c", 4000)+"\r\n", huge), http.StatusRequestHeaderFieldsTooLarge},
		{"101 headers", "GET /ws HTTP/1.1\r\n" + okHead + strings.Repeat("X-A: b\r\n", 96) + "\r\n", nil, http.StatusRequestHeaderFieldsTooLarge},
		{"cookie too large", "GET /ws HTTP/1.1\r\n" + okHead + "Cookie: a=" + strings.Repeat("c", 5000) + "\r\nCookie: b=" + strings.Repeat("c", 5000) + "\r\n\r\n", nil, http.StatusRequestHeaderFieldsTooLarge},
		{"subprotocols too large", "GET /ws HTTP/1.1\r\n" + okHead + "Sec-WebSocket-Protocol: tablecast.v1, token." + strings.Repeat("t", 5000) + "\r\nSec-WebSocket-Protocol: x" + strings.Repeat("p", 4000) + "\r\n\r\n", nil, http.StatusRequestHeaderFieldsTooLarge},
		{"no Host", "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", nil, http.StatusBadRequest},
		{"two Hosts", "GET /ws HTTP/1.1\r\n" + okHead + "Host: " + host + "\r\n\r\n", nil, http.StatusBadRequest},
		{"no Upgrade", "GET /ws HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", nil, http.StatusBadRequest},
		{"key too long", "GET /ws HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + strings.Repeat("QUFB", 40) + "\r\nSec-WebSocket-Version: 13\r\n\r\n", nil, http.StatusBadRequest},
		{"bad key", "GET /ws HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", nil, http.StatusBadRequest},
		{"version 8", "GET /ws HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", nil, http.StatusUpgradeRequired},
		{"HTTP/1.0", "GET /ws HTTP/1.0\r\n" + okHead + "\r\n", nil, http.StatusBadRequest},
		{"folded header", "GET /ws HTTP/1.1\r\n" + okHead + "X-A: b\r\n c\r\n\r\n", nil, http.StatusBadRequest},
		{"control character", "GET /ws HTTP/1.1\r\n" + okHead + "X-A: b\x00c\r\n\r\n", nil, http.StatusBadRequest},
		{"unknown endpoint", "GET /ws/nope HTTP/1.1\r\n" + okHead + "\r\n", nil, http.StatusNotFound},
		{"token in a long query", "GET /ws?token=" + strings.Repeat("t", 6000) + " HTTP/1.1\r\n" + okHead + "\r\n", nil, http.StatusSwitchingProtocols},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDialFrom(t, e.addr, "")
			_ = c.nc.SetDeadline(time.Now().Add(20 * time.Second))
			writeErr := make(chan error, 1)
			go func() {
				_, err := io.WriteString(c.nc, tc.head)
				if err == nil && tc.stream != nil {
					tc.stream(c.nc)
				}
				writeErr <- err
			}()
			resp := c.readResponse()
			if resp.StatusCode != tc.status {
				t.Fatalf("answered %s, want %d", resp.Status, tc.status)
			}
			if tc.status == http.StatusSwitchingProtocols {
				return
			}
			if !resp.Close {
				t.Errorf("a refused request must close the connection; answer %v", resp.Header)
			}
			if tc.status == http.StatusUpgradeRequired && resp.Header.Get("Sec-WebSocket-Version") != "13" {
				t.Errorf("426 without Sec-WebSocket-Version: 13")
			}
			// The gateway then closes the connection: the writer stops.
			_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, c.br); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("connection not closed after the answer")
			}
			_ = c.nc.Close()
			<-writeErr
		})
	}
	t.Run("kept-alive request with a huge header", func(t *testing.T) {
		// Later requests of a kept-alive connection are read by net/http:
		// bounded by the same limit (and its 4 KiB of slack), answered 431.
		c := rawDialFrom(t, e.addr, "")
		if resp := c.roundTrip("GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n"); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET / answered %s", resp.Status)
		}
		go func() {
			_, _ = io.WriteString(c.nc, "GET /ws HTTP/1.1\r\n"+okHead+"X-Pad: ")
			streamRepeat("b", huge)(c.nc)
		}()
		if resp := c.readResponse(); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("answered %s, want 431", resp.Status)
		}
	})
	t.Run("other methods", func(t *testing.T) {
		// Answered by the gateway as the contract says, with the method
		// that is allowed, not by the WebSocket library.
		for _, m := range []string{"POST", "PUT", "DELETE", "HEAD", "OPTIONS"} {
			for _, path := range []string{"/ws", "/ws/tables/public.orders"} {
				c := rawDialFrom(t, e.addr, "")
				resp := c.roundTrip(m + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 0\r\n\r\n")
				if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
					t.Errorf("%s %s answered %s, Allow %q; want 405 with Allow: GET", m, path, resp.Status, resp.Header.Get("Allow"))
				}
				_ = c.nc.Close()
			}
		}
	})
	e2eExpectPong(e.dial("/ws"))
}

// streamRepeat returns a writer of s repeated up to n bytes, stopping at
// the first write error (the gateway closed).
func streamRepeat(s string, n int) func(io.Writer) {
	return func(w io.Writer) {
		chunk := []byte(strings.Repeat(s, max(1, 32<<10/len(s))))
		for sent := 0; sent < n; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
}

// TestSlowHandshakesBoundedMemory: thousands of connections that each send
// most of a large request head and then stall hold at most MaxHandshakes
// heads of MaxHeaderBytes in the gateway; those beyond MaxHandshakes are
// answered 503 at once. The bound is checked on the process's heap growth.
// Without bounds, each stalled request would hold all it sent.
func TestSlowHandshakesBoundedMemory(t *testing.T) {
	const (
		maxHandshakes = 1000
		clients       = 2000 // the 1000 beyond are each answered 503
		// Sent by each client once stalled: four times the limit, and
		// within what the gateway drains before closing (connlimit's
		// lingering close reads up to 64 KiB): a client still sending
		// beyond that is reset, and a reset may destroy the 431 before the
		// client reads it, as with nginx's lingering close.
		perClient = 32 << 10
	)
	e := startGateway(t, func(c *Config) {
		c.MaxHandshakes = maxHandshakes
		c.MaxUnauthenticatedPerAddr = -1 // every client comes from 127.0.0.1
		c.HeaderTimeout = time.Minute    // they stay in progress while measured
	})
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse + ms.StackInuse
	}
	before := heap()

	// Each client sends a request line and a header line it never ends: the
	// line is over the limit only at 8 KiB, so the gateway reads that much
	// and answers 431; a client that stops at 7 KiB keeps its handshake
	// in progress with 7 KiB of head read.
	head := "GET /ws HTTP/1.1\r\nHost: " + e.addr + "\r\nX-Pad: " + strings.Repeat("p", 7<<10)
	conns := make([]net.Conn, 0, clients)
	t.Cleanup(func() {
		for _, nc := range conns {
			_ = nc.Close()
		}
	})
	var mu sync.Mutex
	statuses := map[string]int{}
	var wg sync.WaitGroup
	for i := range clients {
		nc, err := net.DialTimeout("tcp", e.addr, 10*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, nc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.WriteString(nc, head); err != nil {
				return // refused meanwhile
			}
			// Then a stall: read whether the gateway answers, briefly.
			_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
			var b [12]byte
			n, _ := io.ReadFull(nc, b[:])
			mu.Lock()
			statuses[strings.TrimSpace(string(b[:n]))]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	for wait := time.Now().Add(10 * time.Second); e.gw.handshakes.Load() < maxHandshakes && time.Now().Before(wait); {
		time.Sleep(10 * time.Millisecond) // the last heads are still being read
	}
	grown := int64(heap()) - int64(before)
	// Per handshake in progress: at most MaxHeaderBytes (16 KiB) of head
	// buffer, and 16 KiB for a goroutine's stack and the Go state of the
	// sockets of both ends. The refused ones hold nothing once answered.
	bound := int64(maxHandshakes) * (16<<10 + 16<<10)
	t.Logf("%d clients, %d handshakes in progress, heap+stacks grew %d KiB (bound %d KiB); answers %v",
		clients, e.gw.handshakes.Load(), grown>>10, bound>>10, statuses)
	if grown > bound {
		t.Errorf("heap grew %d KiB for %d stalled handshakes, over %d KiB", grown>>10, maxHandshakes, bound>>10)
	}
	if n := e.gw.handshakes.Load(); n != maxHandshakes {
		t.Errorf("%d handshakes in progress, want MaxHandshakes (%d)", n, maxHandshakes)
	}
	if n := statuses["HTTP/1.1 503"]; n < clients-maxHandshakes {
		t.Errorf("%d clients answered 503, want %d (beyond MaxHandshakes); answers %v", n, clients-maxHandshakes, statuses)
	}

	// The stalled ones now send the rest of their header line: past 8 KiB
	// it is refused with 431, reading no more.
	var refused sync.WaitGroup
	var got431 sync.Map
	for i, nc := range conns {
		refused.Add(1)
		go func() {
			defer refused.Done()
			_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
			go func() { _, _ = io.WriteString(nc, strings.Repeat("p", perClient)) }()
			var b [12]byte
			if n, _ := io.ReadFull(nc, b[:]); string(b[:n]) == "HTTP/1.1 431" {
				got431.Store(i, true)
			}
		}()
	}
	refused.Wait()
	n431 := 0
	got431.Range(func(any, any) bool { n431++; return true })
	if n431 != maxHandshakes {
		t.Errorf("%d stalled handshakes answered 431 when their header grew past 8 KiB, want %d", n431, maxHandshakes)
	}
	e.waitFor("no handshake in progress", func() bool { return e.gw.handshakes.Load() == 0 })
	e2eExpectPong(e.dial("/ws"))
}

// TestFramesWithUpgradeRequest: frames a client sends in the same write as
// its handshake (before the 101 arrives) are read, in order, whether the
// handshake is the connection's first request or follows a kept-alive one.
func TestFramesWithUpgradeRequest(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	frames := string(e2eMasked(0x80|opPing, []byte("early"))) +
		string(e2eMasked(opText, []byte(`{"type":`))) + string(e2eMasked(0x80|opContinuation, []byte(`"ping"}`)))
	for _, keepAlive := range []bool{false, true} {
		t.Run(fmt.Sprint("kept-alive ", keepAlive), func(t *testing.T) {
			c := rawDialFrom(t, e.addr, "")
			if keepAlive {
				if resp := c.roundTrip("GET / HTTP/1.1\r\nHost: " + e.addr + "\r\n\r\n"); resp.StatusCode != http.StatusOK {
					t.Fatalf("GET / answered %s", resp.Status)
				}
			}
			resp := c.roundTrip(wsRequest("/ws", e.addr, "", "") + frames)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade answered %s", resp.Status)
			}
			r := c.ws()
			if f := r.read(5 * time.Second); f.op != opPong || string(f.payload) != "early" {
				t.Fatalf("ping sent with the handshake answered %+v, want pong \"early\"", f)
			}
			if f := r.readText(5 * time.Second); f.Type != "pong" {
				t.Fatalf("message sent with the handshake answered %s", f.raw)
			}
			r.write(e2eMasked(0x80|opText, []byte(`{"type":"ping"}`)))
			if f := r.readText(5 * time.Second); f.Type != "pong" {
				t.Fatalf("ping answered %s", f.raw)
			}
		})
	}
}
