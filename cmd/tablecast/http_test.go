package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"testing"
	"time"
)

// TestPlainHTTPServerLimits: the HTTP server of tablecast cdc (the endpoints
// without a gateway) closes kept-alive connections idle for
// TABLECAST_HTTP_IDLE_TIMEOUT and connections whose request does not arrive
// within TABLECAST_HTTP_HEADER_TIMEOUT, and lets one client address hold
// TABLECAST_HTTP_MAX_UNAUTHENTICATED_PER_ADDR connections, answering 429
// beyond, while another address still gets in. Configured from the
// environment, as the process is.
func TestPlainHTTPServerLimits(t *testing.T) {
	t.Setenv("TABLECAST_HTTP_IDLE_TIMEOUT", "300ms")
	t.Setenv("TABLECAST_HTTP_HEADER_TIMEOUT", "500ms")
	t.Setenv("TABLECAST_HTTP_MAX_UNAUTHENTICATED_PER_ADDR", "4")
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := cfg.httpServer(mux)
	served := make(chan error, 1)
	go func() { served <- serveHTTP(srv, ln, cfg) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := ln.Addr().String()
	dial := func(from string) (net.Conn, *bufio.Reader) {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		nc, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nc.Close() })
		return nc, bufio.NewReader(nc)
	}
	get := func(nc net.Conn, br *bufio.Reader) *http.Response {
		t.Helper()
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(nc, "GET /healthz HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp
	}
	closedWithin := func(nc net.Conn, br *bufio.Reader, d time.Duration, what string) {
		t.Helper()
		_ = nc.SetReadDeadline(time.Now().Add(d))
		if _, err := io.Copy(io.Discard, br); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: still open after %v", what, d)
		}
	}

	// Four connections from 127.0.0.1: two kept alive after a request, two
	// silent. A fifth is refused; another address is served.
	type held struct {
		nc net.Conn
		br *bufio.Reader
	}
	var hs []held
	for i := range 4 {
		nc, br := dial("127.0.0.1")
		if i < 2 {
			if resp := get(nc, br); resp.StatusCode != http.StatusOK || resp.Close {
				t.Fatalf("GET /healthz answered %s (close %v)", resp.Status, resp.Close)
			}
		}
		hs = append(hs, held{nc, br})
	}
	nc, br := dial("127.0.0.1")
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fifth connection from 127.0.0.1: %v, %v; want 429", resp, err)
	}
	if resp := get(dial("127.0.0.2")); resp.StatusCode != http.StatusOK {
		t.Fatalf("127.0.0.2 answered %s", resp.Status)
	}
	// All four are closed by the server in time: idle ones after the idle
	// timeout, silent ones after the header timeout.
	for i, h := range hs {
		closedWithin(h.nc, h.br, 10*time.Second, []string{"idle kept-alive connection", "idle kept-alive connection", "silent connection", "silent connection"}[i])
	}
	// A request that announces a body and sends none is closed too (it
	// was held forever: net/http reads the unread body before answering,
	// and without a ReadTimeout it waited for it).
	stalled, sbr := dial("127.0.0.3")
	if _, err := io.WriteString(stalled, "POST /healthz HTTP/1.1\r\nHost: "+addr+"\r\nContent-Length: 10\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	closedWithin(stalled, sbr, 10*time.Second, "a request whose body never came")
	// Their slots are free again.
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; {
		nc, br := dial("127.0.0.1")
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(nc, "GET /healthz HTTP/1.1\r\nHost: "+addr+"\r\n\r\n")
		if resp, err = http.ReadResponse(br, nil); err == nil && resp.StatusCode == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the server has not seen the closes yet
	}
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after the others closed, 127.0.0.1: %v %v", resp, err)
	}
}

// TestProfileBeyondWriteTimeout: with TABLECAST_PPROF, a CPU profile (and
// a trace) longer than the HTTP server's write timeout, which bounds every
// other answer, is still answered (the profiler moves the deadline).
func TestProfileBeyondWriteTimeout(t *testing.T) {
	t.Setenv("TABLECAST_HTTP_HEADER_TIMEOUT", "200ms")
	t.Setenv("TABLECAST_WS_WRITE_TIMEOUT", "200ms")
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := cfg.httpServer(mux)
	go func() { _ = serveHTTP(srv, ln, cfg) }()
	t.Cleanup(func() { _ = srv.Close() })
	for _, path := range []string{"/debug/pprof/profile?seconds=1", "/debug/pprof/trace?seconds=1"} {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Fatalf("%s: %s, %d bytes, %v: %.200s", path, resp.Status, len(body), err, body)
		}
	}
}
