// Package natstest starts the in-process NATS servers (JetStream on) that
// tests of the pipeline run against: on a random loopback port, storing in
// the test's temporary directory, with a connected client. A test can stop
// and restart the server on the same port and store, to play an outage.
// Like internal/pgtest for PostgreSQL, it is the one place tests get NATS.
package natstest

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

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
}

// Start starts a server for t, stopped (and its client closed) when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir(), listen: "127.0.0.1:-1"}
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
func (s *Server) URL() string { return "nats://" + s.listen }

// Stop shuts the server down, keeping its port and store for Restart.
func (s *Server) Stop() {
	if s.emb != nil {
		s.emb.Shutdown()
		s.emb = nil
	}
}

// Restart starts the server again (or for the first time) on the same port
// and store.
func (s *Server) Restart() {
	s.t.Helper()
	emb, err := stream.StartEmbedded(stream.EmbeddedConfig{Listen: s.listen, StoreDir: s.dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		s.t.Fatalf("start NATS: %v", err)
	}
	s.emb = emb
	s.listen = strings.TrimPrefix(emb.ClientURL(), "nats://")
}

// Count returns how many messages the stream holds, 0 if it does not exist
// (yet) or the server cannot be reached.
func (s *Server) Count(streamName string) uint64 {
	st, err := s.JS.Stream(context.Background(), streamName)
	if err != nil {
		return 0
	}
	info, err := st.Info(context.Background())
	if err != nil {
		return 0
	}
	return info.State.Msgs
}

// Stored is one message of a stream.
type Stored struct {
	Subject string
	Seq     uint64      // stream sequence
	MsgID   string      // Nats-Msg-Id header
	Header  nats.Header // every header
	Data    []byte
}

// ReadAll returns every message the stream holds, in stream order, read
// with an ordered consumer.
func (s *Server) ReadAll(t testing.TB, streamName string) []Stored {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	total := s.Count(streamName)
	if total == 0 {
		return nil
	}
	cons, err := s.JS.OrderedConsumer(ctx, streamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("read stream %s: %v", streamName, err)
	}
	out := make([]Stored, 0, total)
	for uint64(len(out)) < total {
		batch, err := cons.Fetch(int(min(total-uint64(len(out)), 5000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("read stream %s: %v", streamName, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, _ := m.Metadata()
			out = append(out, Stored{Subject: m.Subject(), Seq: md.Sequence.Stream, MsgID: m.Headers().Get("Nats-Msg-Id"),
				Header: m.Headers(), Data: append([]byte(nil), m.Data()...)})
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			t.Fatalf("read stream %s: %v", streamName, err)
		}
		if got == 0 {
			t.Fatalf("read stream %s: nothing after %d of %d messages", streamName, len(out), total)
		}
	}
	return out
}
