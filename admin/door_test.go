package admin_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tablecast/tablecast/admin"
)

// rawRequest sends a request as written on one connection and returns
// the answer.
func rawRequest(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp
}

func errorCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	var s struct {
		Error struct{ Code string } `json:"error"`
	}
	_ = jsonUnmarshal(b, &s)
	return s.Error.Code
}

// TestDoor checks what every request goes through before its handler,
// with a valid writer's credential: a Host the API does not serve (DNS
// rebinding) is 421 on every path, before the credential is looked at;
// an unknown path is 404, a method a path does not take 405 with Allow;
// a body that is not JSON 415, one too large 413; a head too large 431;
// a client's connections beyond the limit 429; and filter or rule writes
// before the tables are loaded 503 with Retry-After.
func TestDoor(t *testing.T) {
	var ready atomic.Bool
	h := start(t, func(c *admin.Config) {
		c.MaxBodyBytes = 4 << 10
		c.MaxHeaderBytes = 4 << 10
		c.TablesReady = ready.Load
	})
	ctx := testCtx(t)
	addr := strings.TrimPrefix(h.base, "http://")
	auth := "Authorization: Bearer " + h.writer + "\r\n"

	for _, path := range []string{"/v1/endpoints", "/v1/openapi.json", "/nope"} {
		for _, host := range []string{"evil.example.com", "evil.example.com:" + strings.Split(addr, ":")[1], "localhost.evil.example.com"} {
			resp := rawRequest(t, addr, "GET "+path+" HTTP/1.1\r\nHost: "+host+"\r\n"+auth+"\r\n")
			if resp.StatusCode != 421 || errorCode(t, resp) != "misdirected" {
				t.Errorf("GET %s with Host %s: %d, want 421 misdirected", path, host, resp.StatusCode)
			}
		}
	}
	for _, host := range []string{addr, "localhost", "127.0.0.1"} {
		if resp := rawRequest(t, addr, "GET /v1/endpoints HTTP/1.1\r\nHost: "+host+"\r\n"+auth+"\r\n"); resp.StatusCode != 200 {
			t.Errorf("GET /v1/endpoints with Host %s: %d, want 200", host, resp.StatusCode)
		}
	}

	if ae := h.failAs(noRoute(ctx), h.writer, "GET", "/v2/endpoints", nil, nil, 0); ae.Status != 404 || ae.Code != "not_found" {
		t.Errorf("unknown path: %+v", ae)
	}
	resp := rawRequest(t, addr, "DELETE /v1/endpoints HTTP/1.1\r\nHost: "+addr+"\r\n"+auth+"\r\n")
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, POST" {
		t.Errorf("DELETE /v1/endpoints: %d Allow %q, want 405 Allow GET, POST", resp.StatusCode, resp.Header.Get("Allow"))
	}
	body := `{"name":"x","type":"websocket"}`
	resp = rawRequest(t, addr, fmt.Sprintf("POST /v1/endpoints HTTP/1.1\r\nHost: %s\r\n%sContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", addr, auth, len(body), body))
	if resp.StatusCode != 415 || errorCode(t, resp) != "unsupported_media_type" {
		t.Errorf("text/plain body: %d", resp.StatusCode)
	}
	big := `{"name":"x","type":"websocket","description":"` + strings.Repeat("x", 8<<10) + `"}`
	resp = rawRequest(t, addr, fmt.Sprintf("POST /v1/endpoints HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", addr, auth, len(big), big))
	if resp.StatusCode != 413 || errorCode(t, resp) != "too_large" {
		t.Errorf("a body over MaxBodyBytes: %d", resp.StatusCode)
	}
	resp = rawRequest(t, addr, "GET /v1/endpoints HTTP/1.1\r\nHost: "+addr+"\r\n"+auth+"X-Pad: "+strings.Repeat("p", 8<<10)+"\r\n\r\n")
	if resp.StatusCode != 431 {
		t.Errorf("a head over MaxHeaderBytes: %d", resp.StatusCode)
	}

	// Before the tables are loaded, filters and rules cannot be checked.
	if ae := h.fail(ctx, "POST", "/v1/filters", nil, map[string]any{"name": "f", "tables": []string{"*"}}, 0); ae.Status != 503 || ae.Code != "unavailable" {
		t.Errorf("a filter before the tables are loaded: %+v", ae)
	}
	ready.Store(true)
	h.call(ctx, "POST", "/v1/filters", nil, map[string]any{"name": "f", "tables": []string{"*"}}, 0, nil)

	// Connections per client address.
	lim := start(t, func(c *admin.Config) { c.MaxConnsPerAddr = 4 })
	addr = strings.TrimPrefix(lim.base, "http://")
	auth = "Authorization: Bearer " + lim.writer + "\r\n"
	var conns []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	waitUntil(t, "a fifth connection refused with 429", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /v1/endpoints HTTP/1.1\r\nHost: %s\r\n%s\r\n", addr, auth)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		return err == nil && resp.StatusCode == 429
	})
}

// waitUntil polls cond until it holds, failing the test after 30 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// TestCrossSiteChangesRefused: a web page on another site that the
// operator visits can send requests to the API on loopback, where it lets
// in requests without a credential. A POST without a body (pause) needs no
// preflight, so the browser sends it: the API refuses it from what the
// browser says of its origin (Sec-Fetch-Site, or Origin without it), and
// the endpoint is not paused. Reads, same-origin changes and tools that
// send neither header are let in.
func TestCrossSiteChangesRefused(t *testing.T) {
	h := start(t, func(c *admin.Config) { c.Auth = nil })
	ctx := testCtx(t)
	addr := strings.TrimPrefix(h.base, "http://")
	var e struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	h.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "orders-feed", "type": "websocket"}, 0, &e)
	state := func() string {
		t.Helper()
		var got struct{ State string }
		h.call(ctx, "GET", "/v1/endpoints/"+e.ID, nil, nil, 0, &got)
		return got.State
	}
	pause := "POST /v1/endpoints/" + e.ID + "/pause HTTP/1.1\r\nHost: " + addr + "\r\nContent-Length: 0\r\n"
	for _, from := range []string{
		"Sec-Fetch-Site: cross-site\r\nOrigin: https://evil.example\r\n",
		"Sec-Fetch-Site: same-site\r\nOrigin: http://other.localhost:8080\r\n",
		"Origin: https://evil.example\r\n", // an older browser
		"Origin: null\r\n",                 // a sandboxed frame
	} {
		resp := rawRequest(t, addr, pause+from+"\r\n")
		if resp.StatusCode != 403 || errorCode(t, resp) != "cross_origin" {
			t.Errorf("pause sent with %q: %d, want 403 cross_origin", from, resp.StatusCode)
		}
		if s := state(); s == "paused" {
			t.Fatalf("pause sent with %q paused the endpoint", from)
		}
	}
	if resp := rawRequest(t, addr, "GET /v1/endpoints HTTP/1.1\r\nHost: "+addr+"\r\nSec-Fetch-Site: cross-site\r\nOrigin: https://evil.example\r\n\r\n"); resp.StatusCode != 200 {
		t.Errorf("a cross-site read: %d, want 200 (the browser keeps the answer from the page)", resp.StatusCode)
	}
	for _, from := range []string{"Sec-Fetch-Site: same-origin\r\nOrigin: http://" + addr + "\r\n", "Origin: http://" + addr + "\r\n", ""} {
		resp := rawRequest(t, addr, strings.Replace(pause, "/pause", "/resume", 1)+from+"\r\n")
		if resp.StatusCode != 200 {
			t.Errorf("resume sent with %q: %d, want 200", from, resp.StatusCode)
		}
		resp = rawRequest(t, addr, pause+from+"\r\n")
		if resp.StatusCode != 200 || state() != "paused" {
			t.Errorf("pause sent with %q: %d, state %s, want 200 and paused", from, resp.StatusCode, state())
		}
	}
}
