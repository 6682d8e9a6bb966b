package tablecast_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/clients/go/tablecast"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/internal/pgtest"
)

// These tests read events the real reader (tablecast cdc, the binary)
// publishes from a real PostgreSQL into a real NATS JetStream.

func TestMain(m *testing.M) {
	pgtest.Main(m, func() {
		if build.dir != "" {
			_ = os.RemoveAll(build.dir)
		}
	})
}

var build struct {
	once sync.Once
	dir  string
	err  error
}

// binary builds a command of this module once per test run.
func binary(t testing.TB, pkg string) string {
	t.Helper()
	build.once.Do(func() { build.dir, build.err = os.MkdirTemp("", "tablecast-client-") })
	if build.err != nil {
		t.Fatal(build.err)
	}
	out := filepath.Join(build.dir, filepath.Base(pkg))
	if _, err := os.Stat(out); err == nil {
		return out
	}
	if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pipeline is a database, a NATS server and `tablecast cdc` reading the
// one into the other.
type pipeline struct {
	db   *pgx.Conn
	name string // the database's name, a subject token
	nats *natstest.Server
}

// startPipeline runs the reader for tables (created by setup first) with
// extra variables, against nats.
func startPipeline(t *testing.T, n *natstest.Server, setup string, extra ...string) *pipeline {
	t.Helper()
	c := pgtest.Require(t)
	name, url := c.CreateDatabase(t)
	c.Exec(t, url, setup)
	slot := fmt.Sprintf("tc_client_%d", os.Getpid())
	t.Cleanup(func() { dropSlot(url, slot) })
	httpAddr := freeAddr(t)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TABLECAST_DATABASE_URL=" + url, "TABLECAST_SLOT=" + slot,
		"TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_HTTP_ADDR=" + httpAddr}
	cmd := exec.Command(binary(t, "github.com/tablecast/tablecast/cmd/tablecast"), "cdc")
	cmd.Env = append(env, extra...)
	var log bytes.Buffer
	var mu sync.Mutex
	cmd.Stdout, cmd.Stderr = lockedWriter{&mu, &log}, lockedWriter{&mu, &log}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("tablecast cdc:\n%s", log.String())
			mu.Unlock()
		}
	})
	waitFor(t, 2*time.Minute, "the reader to stream", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return &pipeline{db: c.Connect(t, url), name: name, nats: n}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func dropSlot(url, slot string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return
	}
	defer c.Close(ctx)
	for ctx.Err() == nil {
		if _, err := c.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *pipeline) exec(t *testing.T, sql string) {
	t.Helper()
	if _, err := p.db.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// collector runs Consume with cfg in the background and hands each event
// over on a channel; the handler's answer is decided by answer (nil: no
// error).
type collector struct {
	events chan *tablecast.Event
	done   chan error
	cancel context.CancelFunc
}

func consume(t *testing.T, n *natstest.Server, cfg tablecast.ConsumerConfig, answer func(*tablecast.Event) error) *collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &collector{events: make(chan *tablecast.Event, 1000), done: make(chan error, 1), cancel: cancel}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	go func() {
		c.done <- tablecast.Consume(ctx, n.JS, cfg, func(ctx context.Context, ev *tablecast.Event) error {
			c.events <- ev
			if answer != nil {
				return answer(ev)
			}
			return nil
		})
	}()
	t.Cleanup(c.stop)
	return c
}

func (c *collector) stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	<-c.done
	c.cancel = nil
}

func (c *collector) next(t *testing.T) *tablecast.Event {
	t.Helper()
	select {
	case ev := <-c.events:
		return ev
	case <-time.After(time.Minute):
		t.Fatal("no event within a minute")
		return nil
	}
}

// none checks that no event arrives for d.
func (c *collector) none(t *testing.T, d time.Duration, why string) {
	t.Helper()
	select {
	case ev := <-c.events:
		t.Fatalf("%s: got %s %s (delivered %d)", why, ev.Op, ev.ID, ev.Delivered)
	case <-time.After(d):
	}
}
