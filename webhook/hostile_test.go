package webhook

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// The tests here play a receiver that is hostile or broken, against the
// webhook client alone (worker.post and the transport), on loopback.

// postTo makes one webhook request as a worker does, through client.
func postTo(client *http.Client, url string, timeout time.Duration) (int, time.Duration, error) {
	w := &worker{m: &Manager{client: client}}
	wh := endpoint.Webhook{URL: url, Method: "POST", Timeout: endpoint.Duration(timeout)}
	return w.post(context.Background(), &wh, []byte("a test key"), "msg_hostile", []byte(`{"id":"msg_hostile"}`))
}

// fakeDNS is a DNS server on loopback (UDP) answering A queries by the
// first label of the name asked: answers[label] returns the addresses of
// that query (the n-th for that label, from 1). Other names, and AAAA
// queries, get no address.
type fakeDNS struct {
	addr    string
	mu      sync.Mutex
	asked   map[string]int
	answers map[string]func(n int) []netip.Addr
}

func startDNS(t *testing.T, answers map[string]func(n int) []netip.Addr) *fakeDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	d := &fakeDNS{addr: pc.LocalAddr().String(), asked: map[string]int{}, answers: answers}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := d.answer(buf[:n]); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	return d
}

// answer builds the response to query q: its header and question, and
// one A record per address.
func (d *fakeDNS) answer(q []byte) []byte {
	if len(q) < 12 {
		return nil
	}
	i, first := 12, ""
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if i+1+l > len(q) {
			return nil
		}
		if first == "" {
			first = strings.ToLower(string(q[i+1 : i+1+l]))
		}
		i += 1 + l
	}
	if i+5 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[i+1:])
	question := q[12 : i+5]
	var addrs []netip.Addr
	if f := d.answers[first]; f != nil && qtype == 1 {
		d.mu.Lock()
		d.asked[first]++
		n := d.asked[first]
		d.mu.Unlock()
		addrs = f(n)
	}
	out := make([]byte, 12, 12+len(question)+16*len(addrs))
	copy(out, q[:2])                                        // id
	binary.BigEndian.PutUint16(out[2:], 0x8180)             // a response, recursion desired and available, no error
	binary.BigEndian.PutUint16(out[4:], 1)                  // one question
	binary.BigEndian.PutUint16(out[6:], uint16(len(addrs))) // answers
	out = append(out, question...)
	for _, a := range addrs {
		ip := a.As4()
		out = append(out, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4) // the question's name, A, IN, TTL 0, 4 bytes
		out = append(out, ip[:]...)
	}
	return out
}

// resolver resolves names with d alone.
func (d *fakeDNS) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "udp", d.addr)
	}}
}

// listenOn serves h on ip:port (port 0: any), and counts the connections
// it accepts.
func listenOn(t *testing.T, hostport string, h http.HandlerFunc) (addr string, conns *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", hostport)
	if err != nil {
		t.Fatal(err)
	}
	conns = new(atomic.Int64)
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), conns
}

// TestRedirectsNotFollowed: a receiver answering a redirect to another
// address gets no request sent there (SSRF by redirect), even when that
// address is allowed: the redirect is the attempt's answer, a failure
// (deliver retries whatever is not 2xx or 410). Targets: an allowed
// loopback address, and names that resolve to it.
func TestRedirectsNotFollowed(t *testing.T) {
	var hits atomic.Int64
	target, _ := listenOn(t, "127.0.0.1:0", func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})
	_, port, _ := net.SplitHostPort(target)
	dns := startDNS(t, map[string]func(int) []netip.Addr{
		"hooks": func(int) []netip.Addr { return []netip.Addr{netip.MustParseAddr("127.0.0.1")} },
	})
	client := &http.Client{Transport: newTransport(allowList(t, "127.0.0.0/8"), dns.resolver()), CheckRedirect: newClient(nil).CheckRedirect}
	for _, code := range []int{301, 302, 303, 307, 308} {
		for _, to := range []string{"http://" + target + "/", "http://localhost:" + port + "/", "http://hooks.example.com:" + port + "/", "http://169.254.169.254/latest/meta-data/"} {
			redirector, _ := listenOn(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, to, code)
			})
			status, _, err := postTo(client, "http://"+redirector+"/hook", 5*time.Second)
			if err != nil || status != code {
				t.Errorf("%d to %s: status %d, error %v; want the %d itself", code, to, status, err, code)
			}
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the redirects' target got %d requests", n)
	}
}

// TestDialChecksEveryAddress: the address check runs on each address
// dialled, not on a lookup of its own: a name resolving to a refused
// address is refused, one resolving to an allowed address and a refused
// one at once never reaches the refused one, and one whose answers change
// from one lookup to the next (DNS rebinding) never does either. Here
// 127.0.0.1 plays a public address (allowed) and 127.0.0.2 a private one
// (not), both serving the same port.
func TestDialChecksEveryAddress(t *testing.T) {
	var decoyHits, targetHits atomic.Int64
	decoy, _ := listenOn(t, "127.0.0.1:0", func(w http.ResponseWriter, _ *http.Request) {
		decoyHits.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})
	_, port, _ := net.SplitHostPort(decoy)
	listenOn(t, "127.0.0.2:"+port, func(w http.ResponseWriter, _ *http.Request) {
		targetHits.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})
	public, private := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	dns := startDNS(t, map[string]func(int) []netip.Addr{
		"private": func(int) []netip.Addr { return []netip.Addr{private} },
		"both":    func(int) []netip.Addr { return []netip.Addr{private, public} },
		"flip": func(n int) []netip.Addr {
			if n%2 == 1 {
				return []netip.Addr{public}
			}
			return []netip.Addr{private}
		},
	})
	tr := newTransport(allowList(t, "127.0.0.1/32"), dns.resolver())
	tr.DisableKeepAlives = true // a lookup and a dial for every request
	client := &http.Client{Transport: tr}

	if _, _, err := postTo(client, "http://private.example.com:"+port+"/", 5*time.Second); !errors.Is(err, ErrRefusedAddress) {
		t.Errorf("a name resolving to a refused address: %v, want a refusal", err)
	}
	if status, _, err := postTo(client, "http://both.example.com:"+port+"/", 5*time.Second); err != nil || status != http.StatusNoContent {
		t.Errorf("a name resolving to both: %d %v, want 204 from the allowed address", status, err)
	}
	refused := 0
	for range 6 {
		_, _, err := postTo(client, "http://flip.example.com:"+port+"/", 5*time.Second)
		if errors.Is(err, ErrRefusedAddress) {
			refused++
		}
	}
	if refused == 0 {
		t.Error("a name rebinding from one lookup to the next was never refused: were its lookups made?")
	}
	if n := targetHits.Load(); n != 0 {
		t.Fatalf("the refused address got %d requests (the allowed one %d)", n, decoyHits.Load())
	}
}

// TestNoProxyFromEnvironment: HTTP_PROXY and HTTPS_PROXY are ignored: a
// proxy would be the address checked, and would reach the destination
// unchecked.
func TestNoProxyFromEnvironment(t *testing.T) {
	if newClient(nil).Transport.(*http.Transport).Proxy != nil {
		t.Fatal("the webhook transport uses a proxy")
	}
}

// TestAnswerBodyBounded: a receiver answering 200 with a body without end
// costs one bounded read, and its connection is not used again (one read
// to its end is); one that sends its body a byte at a time, sends its
// head and then nothing, or switches protocols (101) and keeps the
// connection, holds the request no longer than its timeout, and the
// attempt fails.
func TestAnswerBodyBounded(t *testing.T) {
	written := make(chan int64, 1)
	endless, endlessConns := listenOn(t, "127.0.0.1:0", func(w http.ResponseWriter, _ *http.Request) {
		chunk := []byte(strings.Repeat("x", 32<<10))
		var n int64
		for {
			m, err := w.Write(chunk)
			n += int64(m)
			if err != nil {
				written <- n
				return
			}
		}
	})
	client := newClient(allowList(t, "127.0.0.0/8"))
	for i := range 2 {
		if status, _, err := postTo(client, "http://"+endless+"/", 10*time.Second); err != nil || status != 200 {
			t.Fatalf("endless body: %d %v, want 200 (the status stands; the body is not read beyond a bound)", status, err)
		}
		// What the receiver could write before the client closed: the
		// bound read, and what the sockets' buffers took. Read to its end
		// for the 10 s timeout, it would be gigabytes.
		if n := <-written; n > 64<<20 {
			t.Fatalf("the receiver wrote %d bytes of an answer before the client let go", n)
		}
		if c := endlessConns.Load(); c != int64(i+1) {
			t.Fatalf("request %d over %d connections: a connection whose answer was not read to its end was used again", i+1, c)
		}
	}
	small, smallConns := listenOn(t, "127.0.0.1:0", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(strings.Repeat("ok ", 1000)))
	})
	for range 3 {
		if status, _, err := postTo(client, "http://"+small+"/", 10*time.Second); err != nil || status != 200 {
			t.Fatalf("small body: %d %v", status, err)
		}
	}
	if c := smallConns.Load(); c != 1 {
		t.Errorf("3 requests answered with a small body over %d connections, want 1 kept alive", c)
	}

	for name, h := range map[string]http.HandlerFunc{
		"a byte at a time": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(200)
			for range 1000 {
				if _, err := w.Write([]byte("x")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		},
		"head then nothing": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "10")
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		},
		// The body of a 101 is the connection, out of the request's
		// context's reach.
		"101 then nothing": func(w http.ResponseWriter, r *http.Request) {
			c, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
			_ = c.SetReadDeadline(time.Now().Add(time.Minute))
			_, _ = io.Copy(io.Discard, c) // until the client closes
		},
	} {
		addr, _ := listenOn(t, "127.0.0.1:0", h)
		start := time.Now()
		status, _, err := postTo(client, "http://"+addr+"/", time.Second)
		if err == nil && status/100 == 2 {
			t.Errorf("%s: answered %d and accepted; want a failed attempt", name, status)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: the request took %s with a timeout of 1s", name, d)
		}
	}
}

// TestAnswerHeadBounded: a receiver whose answer's head is too large or
// malformed, or that accepts the connection and never answers, makes the
// attempt fail, within the timeout; the failure's reason stays short.
func TestAnswerHeadBounded(t *testing.T) {
	raw := func(serve func(c net.Conn)) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_, _ = http.ReadRequest(bufio.NewReader(c))
					serve(c)
				}()
			}
		}()
		return ln.Addr().String()
	}
	client := newClient(allowList(t, "127.0.0.0/8"))
	huge := raw(func(c net.Conn) {
		w := bufio.NewWriter(c)
		fmt.Fprint(w, "HTTP/1.1 200 OK\r\n")
		for i := range 8 << 10 { // 1 MiB of headers: under net/http's default limit
			fmt.Fprintf(w, "X-Pad-%d: %s\r\n", i, strings.Repeat("p", 110))
		}
		fmt.Fprint(w, "Content-Length: 0\r\n\r\n")
		_ = w.Flush()
	})
	if status, _, err := postTo(client, "http://"+huge+"/", 10*time.Second); err == nil {
		t.Errorf("an answer with 1 MiB of headers: %d, accepted", status)
	}
	// A malformed header line is quoted whole in net/http's error: the
	// reason kept in the dead letter and logged is cut.
	malformed := raw(func(c net.Conn) {
		fmt.Fprint(c, "HTTP/1.1 200 OK\r\nno colon "+strings.Repeat("é", 20000)+"\r\n\r\n")
	})
	if status, _, err := postTo(client, "http://"+malformed+"/", 10*time.Second); err == nil {
		t.Errorf("a malformed head: %d, accepted", status)
	} else if r := failureReason(err); len(r) > maxReason || !utf8.ValidString(r) || len(err.Error()) <= maxReason {
		t.Errorf("a malformed head of 40 KB: error of %d bytes, reason of %d bytes (valid UTF-8: %v), want it cut to %d", len(err.Error()), len(r), utf8.ValidString(r), maxReason)
	}
	silent := raw(func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	start := time.Now()
	if status, _, err := postTo(client, "http://"+silent+"/", time.Second); err == nil {
		t.Errorf("no answer: %d, accepted", status)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("no answer: the request took %s with a timeout of 1s", d)
	}
}
