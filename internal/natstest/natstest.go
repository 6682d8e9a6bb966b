// Package natstest starts the in-process NATS servers (JetStream on) that
// tests of the pipeline run against: on a random loopback port, storing in
// the test's temporary directory, with a connected client. A test can stop
// and restart the server on the same port and store, to play an outage.
// Like internal/pgtest for PostgreSQL, it is the one place tests get NATS.
package natstest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// Server is an embedded NATS server and a client connected to it. The
// client reconnects by itself when the server is restarted.
type Server struct {
	NC *nats.Conn
	JS jetstream.JetStream

	t      testing.TB
	dir    string
	listen string
	emb    *stream.Embedded
	stock  bool // StartStock's: srv instead of emb
	srv    *server.Server
	proc   bool // StartProcess's: cmd instead of emb
	cmd    *exec.Cmd
	urls   string // a cluster's client: every node's URL; no server of its own
}

// Start starts a server for t, stopped (and its client closed) when t ends.
// It is tablecast's embedded server (stream.StartEmbedded), whose maximum
// payload is 8 MiB.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, &Server{t: t, dir: t.TempDir(), listen: "127.0.0.1:-1"})
}

// StartStock starts a stock nats-server instead: nats-server's default
// options (a maximum payload of 1 MiB), JetStream on, on a random loopback
// port. Processes under test reach it by URL, as any external NATS.
func StartStock(t testing.TB) *Server {
	t.Helper()
	return start(t, &Server{t: t, dir: t.TempDir(), listen: "127.0.0.1:-1", stock: true})
}

// StartProcess runs a stock nats-server as a process of its own, built
// from the nats-server module this repository depends on: default options (a
// maximum payload of 1 MiB), JetStream on, on a free loopback port. Tests
// that measure a process under test use it, so that NATS is neither in that
// process nor slowed by the race detector of the test binary.
func StartProcess(t testing.TB) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	return start(t, &Server{t: t, dir: t.TempDir(), listen: listen, proc: true})
}

var serverBinary struct {
	once sync.Once
	path string
	err  error
}

// buildServer builds nats-server once per machine and version: into the
// temporary directory, under a name that says which nats-server and Go made
// it, so that every test package and every later run reuses it instead of
// leaving a copy behind each time. It is built beside its final name and
// renamed, so packages building it at once never run half a file.
func buildServer(t testing.TB) string {
	t.Helper()
	serverBinary.once.Do(func() {
		dir := filepath.Join(os.TempDir(), "tablecast-nats-server-"+server.VERSION+"-"+runtime.Version())
		path := filepath.Join(dir, "nats-server")
		if _, err := os.Stat(path); err == nil {
			serverBinary.path = path
			return
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			serverBinary.err = fmt.Errorf("build nats-server: %w", err)
			return
		}
		tmp, err := os.CreateTemp(dir, "nats-server-*.building")
		if err != nil {
			serverBinary.err = fmt.Errorf("build nats-server: %w", err)
			return
		}
		tmp.Close()
		defer os.Remove(tmp.Name()) // nothing left when the rename happened
		out, err := exec.Command("go", "build", "-o", tmp.Name(), "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			serverBinary.err = fmt.Errorf("go build nats-server: %v\n%s", err, out)
			return
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			serverBinary.err = fmt.Errorf("build nats-server: %w", err)
			return
		}
		serverBinary.path = path
	})
	if serverBinary.err != nil {
		t.Fatal(serverBinary.err)
	}
	return serverBinary.path
}

func (s *Server) restartProcess() {
	s.t.Helper()
	host, port, _ := strings.Cut(s.listen, ":")
	cmd := exec.Command(buildServer(s.t), "-js", "-sd", s.dir, "-a", host, "-p", port)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start nats-server: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.listen, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("nats-server does not accept connections on %s: %v", s.listen, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func start(t testing.TB, s *Server) *Server {
	t.Helper()
	s.Restart()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := stream.Connect(ctx, s.URL(), "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	s.NC = nc
	s.JS, _ = jetstream.New(nc)
	t.Cleanup(func() {
		s.Stop()
		nc.Close()
	})
	return s
}

// URL is the server's client URL; it stays the same across restarts.
func (s *Server) URL() string {
	if s.urls != "" {
		return s.urls
	}
	return "nats://" + s.listen
}

// Stop shuts the server down, keeping its port and store for Restart.
func (s *Server) Stop() {
	if s.emb != nil {
		s.emb.Shutdown()
		s.emb = nil
	}
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
		s.srv = nil
	}
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Restart starts the server again (or for the first time) on the same port
// and store.
func (s *Server) Restart() {
	s.t.Helper()
	if s.urls != "" {
		return // a cluster's client: its nodes restart one by one
	}
	if s.stock {
		s.restartStock()
		return
	}
	if s.proc {
		s.restartProcess()
		return
	}
	emb, err := stream.StartEmbedded(stream.EmbeddedConfig{Listen: s.listen, StoreDir: s.dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		s.t.Fatalf("start NATS: %v", err)
	}
	s.emb = emb
	s.listen = strings.TrimPrefix(emb.ClientURL(), "nats://")
}

// Count returns how many messages the stream holds outside tablecast's
// control subjects (the readers' fences), 0 if it does not exist (yet) or
// the server cannot be reached.
func (s *Server) Count(streamName string) uint64 {
	_, n := s.counts(streamName)
	return n
}

// counts returns how many messages the stream holds in all, and how many
// of them lie outside tablecast's control subjects; 0 and 0 if it does not
// exist (yet) or the server cannot be reached.
func (s *Server) counts(streamName string) (all, events uint64) {
	st, err := s.JS.Stream(context.Background(), streamName)
	if err != nil {
		return 0, 0
	}
	// Fences (stream.FenceSubject) are stored among the events; they are
	// not counted.
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(controlSubjects))
	if err != nil {
		return 0, 0
	}
	n := info.State.Msgs
	for _, c := range info.State.Subjects {
		n -= c
	}
	return info.State.Msgs, n
}

// controlSubjects are tablecast's control subjects (stream.ControlToken),
// which Count and ReadAll leave out.
const controlSubjects = "_TABLECAST.>"

// Stored is one message of a stream.
type Stored struct {
	Subject string
	Seq     uint64      // stream sequence
	MsgID   string      // Nats-Msg-Id header
	Header  nats.Header // every header
	Data    []byte
}

// ReadAll returns every message the stream holds outside tablecast's
// control subjects (the readers' fences), in stream order, read with an
// ordered consumer.
func (s *Server) ReadAll(t testing.TB, streamName string) []Stored {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	all, total := s.counts(streamName)
	if total == 0 {
		return nil
	}
	// On a cluster whose nodes were just restarted, the JetStream API may
	// have no responder for a moment: try again for a while, to create the
	// consumer and for each fetch (the ordered consumer resumes where it
	// stood).
	again := func(err error) bool {
		if ctx.Err() != nil || !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			return false
		}
		time.Sleep(250 * time.Millisecond)
		return true
	}
	var cons jetstream.Consumer
	var err error
	for {
		if cons, err = s.JS.OrderedConsumer(ctx, streamName, jetstream.OrderedConsumerConfig{}); err == nil || !again(err) {
			break
		}
	}
	if err != nil {
		t.Fatalf("read stream %s: %v", streamName, err)
	}
	out := make([]Stored, 0, total)
	var fetched uint64 // messages fetched, control ones included
	for uint64(len(out)) < total {
		// A fetch asks for no more than the stream held when counted (a
		// fetch for more waits out its FetchMaxWait), control messages
		// included: asking only for the events still missing would fetch a
		// stream holding fence rings (thousands of fences) a few messages
		// at a time, one round trip each.
		want := total - uint64(len(out))
		if all > fetched {
			want = max(want, all-fetched)
		}
		batch, err := cons.Fetch(int(min(want, 5000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			if again(err) {
				continue
			}
			t.Fatalf("read stream %s: %v", streamName, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			fetched++
			if strings.HasPrefix(m.Subject(), "_TABLECAST.") {
				continue
			}
			md, _ := m.Metadata()
			out = append(out, Stored{Subject: m.Subject(), Seq: md.Sequence.Stream, MsgID: m.Headers().Get("Nats-Msg-Id"),
				Header: m.Headers(), Data: append([]byte(nil), m.Data()...)})
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			if got == 0 && again(err) {
				continue
			}
			t.Fatalf("read stream %s: %v", streamName, err)
		}
		if got == 0 {
			// On a loaded machine a fetch can come back empty while the
			// rest is there (the ordered consumer was reset, or the server
			// was slow): only the minute's deadline says it is not.
			if ctx.Err() == nil {
				time.Sleep(250 * time.Millisecond)
				continue
			}
			t.Fatalf("read stream %s: nothing after %d of %d messages", streamName, len(out), total)
		}
	}
	return out
}

func (s *Server) restartStock() {
	s.t.Helper()
	host, port, _ := strings.Cut(s.listen, ":")
	p, err := strconv.Atoi(port)
	if err != nil {
		s.t.Fatalf("NATS listen address %q: %v", s.listen, err)
	}
	srv, err := server.NewServer(&server.Options{Host: host, Port: p, JetStream: true, StoreDir: s.dir, NoLog: true, NoSigs: true})
	if err != nil {
		s.t.Fatalf("start NATS: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		s.t.Fatal("start NATS: not ready for connections within 10s")
	}
	s.srv = srv
	s.listen = strings.TrimPrefix(srv.ClientURL(), "nats://")
}

// Conns lists the client connections of a server started by Start or
// StartStock, as its monitoring would (names, messages in and out).
func (s *Server) Conns(t testing.TB) []*server.ConnInfo {
	t.Helper()
	srv := s.srv
	if s.emb != nil {
		srv = s.emb.Server()
	}
	if srv == nil {
		t.Fatal("natstest: Conns needs a server of this process (Start or StartStock)")
	}
	cz, err := srv.Connz(&server.ConnzOptions{Limit: 1024})
	if err != nil {
		t.Fatalf("list NATS connections: %v", err)
	}
	return cz.Conns
}
