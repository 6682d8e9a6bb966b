package stream

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// quietLogger drops everything; set STREAM_TEST_LOG=1 to see the logs.
func quietLogger() *slog.Logger {
	if os.Getenv("STREAM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startTestServer starts an embedded server with JetStream on a random
// loopback port, storing into dir (a new temporary directory if empty), and
// shuts it down when the test ends.
func startTestServer(tb testing.TB, dir string) *Embedded {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: dir, Logger: quietLogger()})
	if err != nil {
		tb.Fatalf("start embedded NATS: %v", err)
	}
	tb.Cleanup(e.Shutdown)
	return e
}

// connectTest connects to url and closes the connection when the test ends.
func connectTest(tb testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, url, "stream-test", quietLogger())
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// waitFor polls cond every few milliseconds until it holds, failing the test
// after timeout.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func TestStartEmbedded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "store")
	e := startTestServer(t, dir)
	if !strings.HasPrefix(e.ClientURL(), "nats://127.0.0.1:") {
		t.Fatalf("ClientURL = %q", e.ClientURL())
	}
	if e.Server() == nil || !e.Server().JetStreamEnabled() {
		t.Fatal("JetStream is not enabled")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("store directory not created: %v", err)
	}
	nc, js := connectTest(t, e.ClientURL())
	if !nc.IsConnected() {
		t.Fatal("not connected")
	}
	if _, err := js.AccountInfo(testContext(t)); err != nil {
		t.Fatalf("JetStream account info: %v", err)
	}
}

func TestStartEmbeddedPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addr := l.Addr().String()

	e, err := StartEmbedded(EmbeddedConfig{Listen: addr, StoreDir: t.TempDir(), Logger: quietLogger()})
	if err == nil {
		e.Shutdown()
		t.Fatal("StartEmbedded succeeded on a taken port")
	}
	want := "listen " + addr + ": address already in use"
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("error %v does not unwrap to EADDRINUSE", err)
	}
	var inUse *AddrInUseError
	if !errors.As(err, &inUse) || inUse.Addr != addr {
		t.Fatalf("error %v is not an *AddrInUseError for %s", err, addr)
	}
}

func TestStartEmbeddedBadConfig(t *testing.T) {
	for _, cfg := range []EmbeddedConfig{
		{Listen: "127.0.0.1:-1"},                           // no store dir
		{Listen: "nonsense", StoreDir: t.TempDir()},        // no port
		{Listen: "127.0.0.1:99999", StoreDir: t.TempDir()}, // port out of range
	} {
		cfg.Logger = quietLogger()
		if e, err := StartEmbedded(cfg); err == nil {
			e.Shutdown()
			t.Errorf("StartEmbedded(%+v) succeeded", cfg)
		}
	}
}

func TestConnectGivesUpWithContext(t *testing.T) {
	// A port nobody listens on: take one and release it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://user:secret@" + l.Addr().String()
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	nc, err := Connect(ctx, url, "stream-test", quietLogger())
	if err == nil {
		nc.Close()
		t.Fatal("Connect succeeded without a server")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v does not wrap context.DeadlineExceeded", err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Fatalf("error %q leaks the password", err)
	}
}

func TestConnectWaitsForServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		nc, err := Connect(ctx, "nats://"+addr, "stream-test", quietLogger())
		done <- result{nc, err}
	}()

	// Let the first attempts fail, then bring the server up on that port.
	select {
	case r := <-done:
		t.Fatalf("Connect returned before the server started: %v", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	e, err := StartEmbedded(EmbeddedConfig{Listen: addr, StoreDir: t.TempDir(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	r := <-done
	if r.err != nil {
		t.Fatalf("Connect: %v", r.err)
	}
	defer r.nc.Close()
	if !r.nc.IsConnected() {
		t.Fatal("Connect returned a connection that is not connected")
	}
}

func TestServerLoggerFatal(t *testing.T) {
	l := &serverLogger{log: quietLogger(), fatal: make(chan struct{})}
	l.Noticef("notice %d", 1)
	l.Warnf("warn %d", 2)
	l.Errorf("error %d", 3)
	l.Debugf("debug %d", 4)
	l.Tracef("trace %d", 5)
	select {
	case <-l.fatal:
		t.Fatal("fatal signalled without Fatalf")
	default:
	}
	l.Fatalf("Error listening on port: %s, %q", "127.0.0.1:4222", "listen tcp 127.0.0.1:4222: bind: address already in use")
	l.Fatalf("a second fatal error is only logged")
	<-l.fatal
	if err := l.fatalErr(); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("fatalErr() = %v, want EADDRINUSE", err)
	}
}

func TestRedactURLs(t *testing.T) {
	tests := map[string]string{
		"nats://127.0.0.1:4222":                   "nats://127.0.0.1:4222",
		"nats://user:secret@a:4222,nats://b:4222": "nats://user:xxxxx@a:4222,nats://b:4222",
		"nats://s3cr3ttoken@a:4222":               "nats://xxxxx@a:4222",
		"nats://a:4222, nats://user:pw@b:4222":    "nats://a:4222,nats://user:xxxxx@b:4222",
	}
	for in, want := range tests {
		if got := redactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEmbeddedManyConsumers: the embedded server sets no default limit on
// a stream's consumers (nats-server's is 1,000, and each webhook endpoint
// takes one): a stream that sets none of its own takes the 1,001st. The
// server's count is read rather than 1,001 consumers made, which takes
// seconds under the race detector; without the option the 1,001st is
// refused ("maximum consumers limit reached").
func TestEmbeddedManyConsumers(t *testing.T) {
	e := startTestServer(t, "")
	v, err := e.Server().Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.JetStream.Limits == nil || v.JetStream.Limits.DefaultMaxConsumers != -1 {
		t.Fatalf("JetStream limits %+v: want default_max_consumers -1 (none)", v.JetStream.Limits)
	}
}
