package wsgate

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// wsRequest is a WebSocket handshake for path with the given Host and, when
// not empty, Origin; extra holds more header lines, each ending "\r\n".
func wsRequest(path, host, origin, extra string) string {
	var k [16]byte
	_, _ = rand.Read(k[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(k[:]) + "\r\nSec-WebSocket-Version: 13\r\n"
	if origin != "" {
		req += "Origin: " + origin + "\r\n"
	}
	return req + extra + "\r\n"
}

// rawConn is a client TCP connection that writes requests by hand.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

// rawDialFrom connects to addr from the local IP from ("" for any).
func rawDialFrom(t testing.TB, addr, from string) *rawConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// roundTrip writes req and reads the response (its body read whole).
func (c *rawConn) roundTrip(req string) *http.Response {
	c.t.Helper()
	_ = c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.nc, req); err != nil {
		c.t.Fatalf("write request: %v", err)
	}
	return c.readResponse()
}

func (c *rawConn) readResponse() *http.Response {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.br, &http.Request{Method: http.MethodGet})
	if err != nil {
		c.t.Fatalf("read response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		resp.Body = io.NopCloser(strings.NewReader(string(body)))
	}
	return resp
}

// ws turns an upgraded connection into a raw WebSocket client.
func (c *rawConn) ws() *e2eRaw {
	_ = c.nc.SetDeadline(time.Time{})
	return &e2eRaw{t: c.t, nc: c.nc, br: c.br}
}

// TestDNSRebinding: a page on an attacker's name that resolves to the
// gateway's address sends Host and Origin of that name. Every request of
// the listener for a Host the gateway does not serve is answered 421
// (WebSocket upgrades, the page, /metrics, /healthz, kept-alive requests);
// the loopback names it serves by default, and names configured in
// AllowedHosts, are answered. With anonymous access an Origin that merely
// matches the Host is not enough: AllowedHosts "*" opens the Host check
// but not the Origin check.
func TestDNSRebinding(t *testing.T) {
	t.Parallel()
	def := startGateway(t, nil)
	named := startGateway(t, func(c *Config) { c.AllowedHosts = []string{"app.example", "*.corp.example"} })
	anyHost := startGateway(t, func(c *Config) { c.AllowedHosts = []string{"*"} })
	port := func(e *testEnv) string { _, p, _ := net.SplitHostPort(e.addr); return p }

	for _, tc := range []struct {
		name   string
		e      *testEnv
		host   string // host name; the gateway's port is added
		origin string // "" for none; "same" for http://<host>:<port>
		status int    // of the plain requests and of the upgrade
		close  CloseCode
	}{
		{"rebound name", def, "evil.example", "same", http.StatusMisdirectedRequest, 0},
		{"rebound name without origin", def, "evil.example", "", http.StatusMisdirectedRequest, 0},
		{"rebound name, trailing dot", def, "evil.example.", "same", http.StatusMisdirectedRequest, 0},
		{"localhost lookalike", def, "localhost.evil.example", "same", http.StatusMisdirectedRequest, 0},
		{"unconfigured name on a configured gateway", named, "evil.example", "same", http.StatusMisdirectedRequest, 0},
		{"localhost", def, "localhost", "same", http.StatusOK, 0},
		{"LOCALHOST", def, "LOCALHOST", "same", http.StatusOK, 0},
		{"loopback IP", def, "127.0.0.1", "same", http.StatusOK, 0},
		{"loopback IPv6", def, "[::1]", "", http.StatusOK, 0},
		{"configured name", named, "app.example", "same", http.StatusOK, 0},
		{"configured subdomain", named, "db.corp.example", "same", http.StatusOK, 0},
		{"any host, rebound origin refused", anyHost, "evil.example", "same", http.StatusOK, CloseForbiddenOrigin},
		{"any host, loopback origin", anyHost, "localhost", "same", http.StatusOK, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := tc.host + ":" + port(tc.e)
			origin := tc.origin
			if origin == "same" {
				origin = "http://" + host
			}
			for _, path := range []string{"/", "/healthz", "/metrics"} {
				c := rawDialFrom(t, tc.e.addr, "")
				req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n"
				if origin != "" {
					req += "Origin: " + origin + "\r\n"
				}
				if resp := c.roundTrip(req + "\r\n"); resp.StatusCode != tc.status {
					t.Errorf("GET %s with Host %s answered %s, want %d", path, host, resp.Status, tc.status)
				}
			}
			for _, path := range []string{"/ws", "/ws/tables/public.orders"} {
				c := rawDialFrom(t, tc.e.addr, "")
				resp := c.roundTrip(wsRequest(path, host, origin, ""))
				want := tc.status
				if want == http.StatusOK {
					want = http.StatusSwitchingProtocols
				}
				if resp.StatusCode != want {
					t.Fatalf("upgrade %s with Host %s, Origin %q answered %s, want %d", path, host, origin, resp.Status, want)
				}
				if want != http.StatusSwitchingProtocols {
					continue
				}
				r := c.ws()
				if tc.close != 0 {
					r.expectClose(tc.close, 5*time.Second)
					continue
				}
				if path != "/ws" {
					if f := r.readText(5 * time.Second); f.Type != "subscribed" {
						t.Fatalf("URL subscription answered %s", f.raw)
					}
				}
				r.write(e2eMasked(0x80|opText, []byte(`{"type":"ping"}`)))
				if f := r.readText(5 * time.Second); f.Type != "pong" {
					t.Fatalf("ping answered %s", f.raw)
				}
			}
		})
	}

	t.Run("not a handshake", func(t *testing.T) {
		// A request to /ws that is no WebSocket handshake (no Upgrade),
		// or a broken one, for a Host not served: 421 first, as on every
		// path, not the 400 that says what the handshake lacks.
		evil := "evil.example:" + port(def)
		for _, head := range []string{
			"GET /ws HTTP/1.1\r\nHost: " + evil + "\r\n\r\n",
			"GET /ws/public.orders HTTP/1.1\r\nHost: " + evil + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
			"GET /ws/nothing/here HTTP/1.1\r\nHost: " + evil + "\r\n\r\n",
		} {
			c := rawDialFrom(t, def.addr, "")
			if resp := c.roundTrip(head); resp.StatusCode != http.StatusMisdirectedRequest {
				t.Errorf("%q answered %s, want 421", head, resp.Status)
			}
		}
		c := rawDialFrom(t, def.addr, "")
		if resp := c.roundTrip("GET /ws HTTP/1.1\r\nHost: " + def.addr + "\r\n\r\n"); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("no handshake, with the Host served, answered %s, want 400", resp.Status)
		}
	})

	t.Run("kept-alive connection", func(t *testing.T) {
		// The first request is the gateway's own; the next ones on the
		// same connection are read by net/http, and checked all the same.
		c := rawDialFrom(t, def.addr, "")
		ok := "GET / HTTP/1.1\r\nHost: " + def.addr + "\r\n\r\n"
		if resp := c.roundTrip(ok); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET / answered %s", resp.Status)
		}
		if resp := c.roundTrip(ok); resp.StatusCode != http.StatusOK {
			t.Fatalf("second GET / answered %s", resp.Status)
		}
		evil := "evil.example:" + port(def)
		if resp := c.roundTrip("GET /metrics HTTP/1.1\r\nHost: " + evil + "\r\n\r\n"); resp.StatusCode != http.StatusMisdirectedRequest {
			t.Fatalf("kept-alive GET /metrics with Host %s answered %s, want 421", evil, resp.Status)
		}
		c = rawDialFrom(t, def.addr, "")
		if resp := c.roundTrip(ok); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET / answered %s", resp.Status)
		}
		if resp := c.roundTrip(wsRequest("/ws", evil, "http://"+evil, "")); resp.StatusCode != http.StatusMisdirectedRequest {
			t.Fatalf("kept-alive upgrade with Host %s answered %s, want 421", evil, resp.Status)
		}
	})
}
