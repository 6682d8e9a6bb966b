package wsgate

import (
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestHTTPRequestsBoundedWhole: a plain HTTP request is bounded as a
// whole, not only its head. A client that announces a body and sends none,
// or that asks for answers and never reads them, is closed: the gateway
// read the unread body before answering, and wrote the answers, without a
// deadline, so such clients held connections (and goroutines) for as long
// as they liked, beyond every limit on connections being opened.
func TestHTTPRequestsBoundedWhole(t *testing.T) {
	t.Parallel()
	e := startGateway(t, func(c *Config) {
		c.HeaderTimeout, c.WriteTimeout, c.IdleTimeout = 300*time.Millisecond, 300*time.Millisecond, time.Minute
	})
	get := "GET /healthz HTTP/1.1\r\nHost: " + e.addr + "\r\n\r\n"
	stall := "POST /healthz HTTP/1.1\r\nHost: " + e.addr + "\r\nContent-Length: 10\r\n\r\n"

	first := rawDialFrom(t, e.addr, "")
	if _, err := io.WriteString(first.nc, stall); err != nil {
		t.Fatal(err)
	}
	second := rawDialFrom(t, e.addr, "")
	if resp := second.roundTrip(get); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz answered %s", resp.Status)
	}
	if _, err := io.WriteString(second.nc, stall); err != nil {
		t.Fatal(err)
	}
	// Every bound is far shorter than the time allowed, and the idle
	// timeout far longer.
	first.expectClosedWithin(10*time.Second, "a request whose body never came")
	second.expectClosedWithin(10*time.Second, "a kept-alive connection's second request whose body never came")

	// A reader that stops: a thousand pages asked for at once (26 KB
	// each, more than the sockets' buffers hold), none read for a while.
	const n = 1000
	slow := rawDialFrom(t, e.addr, "")
	if _, err := io.WriteString(slow.nc, strings.Repeat("GET / HTTP/1.1\r\nHost: "+e.addr+"\r\n\r\n", n)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	_ = slow.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := 0
	for ; got < n; got++ {
		resp, err := http.ReadResponse(slow.br, nil)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("a client that stopped reading: still open after %d answers", got)
			}
			break
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			break
		}
	}
	if got == n {
		t.Fatalf("a client that stopped reading for 3s got all %d answers; want it closed once a write took longer than its timeout", n)
	}
}

// TestKeptAliveRequestsBounded: the second request of a kept-alive
// connection is held to the bounds of the first (upgrade.go): net/http
// parses it, with bounds of its own that are looser. A /ws/ path that is
// no endpoint is 404 there too, not upgraded.
func TestKeptAliveRequestsBounded(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil) // MaxHeaderBytes 16 KiB
	get := "GET /healthz HTTP/1.1\r\nHost: " + e.addr + "\r\n\r\n"
	header := func(n int, name string, size int) string {
		var b strings.Builder
		for i := range n {
			b.WriteString(name + strings.Repeat("x", 3-len(name)%3) + string(rune('a'+i%26)) + ": " + strings.Repeat("v", size) + "\r\n")
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"150 headers", "GET /healthz HTTP/1.1\r\nHost: " + e.addr + "\r\n" + header(150, "X", 1) + "\r\n", 431},
		{"a 12 KiB header line", "GET /healthz HTTP/1.1\r\nHost: " + e.addr + "\r\n" + header(1, "X", 12<<10) + "\r\n", 431},
		{"a 12 KiB request line", "GET /healthz?q=" + strings.Repeat("q", 12<<10) + " HTTP/1.1\r\nHost: " + e.addr + "\r\n\r\n", 414},
		{"a 19 KiB head", "GET /healthz HTTP/1.1\r\nHost: " + e.addr + "\r\n" + header(38, "X", 500) + "\r\n", 431},
		{"an upgrade to no endpoint", wsRequest("/ws/nope", e.addr, "", ""), 404},
		{"within every bound", "GET /healthz HTTP/1.1\r\nHost: " + e.addr + "\r\n" + header(90, "X", 100) + "\r\n", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if resp := rawDialFrom(t, e.addr, "").roundTrip(tc.req); resp.StatusCode != tc.status {
				t.Fatalf("as a connection's first request: %s, want %d", resp.Status, tc.status)
			}
			c := rawDialFrom(t, e.addr, "")
			if resp := c.roundTrip(get); resp.StatusCode != http.StatusOK || resp.Close {
				t.Fatalf("GET /healthz answered %s (close %v), want a kept-alive 200", resp.Status, resp.Close)
			}
			if resp := c.roundTrip(tc.req); resp.StatusCode != tc.status {
				t.Fatalf("as a kept-alive connection's second request: %s, want %d", resp.Status, tc.status)
			}
		})
	}
}

// TestSilentPeerToldWhy: a client that answers no ping is closed with
// 1001 and a reason, as the contract says of every close ("peer silent"),
// not dropped without a close frame.
func TestSilentPeerToldWhy(t *testing.T) {
	t.Parallel()
	e := startGateway(t, func(c *Config) { c.PingInterval = 100 * time.Millisecond })
	c := rawDialFrom(t, e.addr, "")
	if resp := c.roundTrip(wsRequest("/ws", e.addr, "", "")); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answered %s", resp.Status)
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	pings := 0
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			t.Fatalf("after %d pings, the connection ended without a close frame: %v", pings, err)
		}
		size := int(h[1] & 0x7f)
		switch size {
		case 126:
			var l [2]byte
			_, _ = io.ReadFull(c.br, l[:])
			size = int(binary.BigEndian.Uint16(l[:]))
		case 127:
			t.Fatal("a frame over 64 KiB")
		}
		payload := make([]byte, size)
		if _, err := io.ReadFull(c.br, payload); err != nil {
			t.Fatalf("read a frame: %v", err)
		}
		switch h[0] & 0x0f {
		case 0x9:
			pings++
			continue // never answered
		case 0x8:
			if len(payload) < 2 || CloseCode(binary.BigEndian.Uint16(payload)) != CloseGoingAway || !strings.Contains(string(payload[2:]), "silent") {
				t.Fatalf("closed with %q, want 1001 peer silent", payload)
			}
			if pings == 0 {
				t.Fatal("closed before any ping")
			}
			return
		default:
			t.Fatalf("unexpected frame opcode %#x", h[0]&0x0f)
		}
	}
}
