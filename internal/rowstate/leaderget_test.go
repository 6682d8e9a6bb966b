package rowstate

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
)

// TestLastFromLeader: the leader's answer gives the last message of a
// subject with its headers, and ErrMsgNotFound for a subject without one,
// as a direct get does.
func TestLastFromLeader(t *testing.T) {
	n := natstest.Start(t)
	ctx := context.Background()
	if _, err := n.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "LEADERGET", Subjects: []string{"lg.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1", "2"} {
		msg := &nats.Msg{Subject: "lg.row", Header: nats.Header{HeaderSeq: {v}}, Data: []byte(`{"key":{"id":` + v + `}}`)}
		if _, err := n.JS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	_, h, data, err := lastFromLeader(ctx, n.NC, "LEADERGET", "lg.row")
	if err != nil {
		t.Fatal(err)
	}
	if h.Get(HeaderSeq) != "2" || string(data) != `{"key":{"id":2}}` {
		t.Errorf("got %v %s, want the last message", h, data)
	}
	if _, _, _, err := lastFromLeader(ctx, n.NC, "LEADERGET", "lg.none"); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("a subject without messages: %v, want ErrMsgNotFound", err)
	}
	if _, _, _, err := lastFromLeader(ctx, n.NC, "NOSUCH", "lg.row"); err == nil || errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("a stream that does not exist: %v, want an error other than not found", err)
	}
	// A wildcard: the last message of any subject it matches, with its
	// stream sequence.
	if _, err := n.JS.Publish(ctx, "lg.other", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	seq, h, _, err := lastFromLeader(ctx, n.NC, "LEADERGET", "lg.row")
	if err != nil || seq != 2 || h.Get(HeaderSeq) != "2" {
		t.Errorf("last of lg.row: sequence %d, headers %v, %v; want 2", seq, h, err)
	}
	if seq, _, data, err := lastFromLeader(ctx, n.NC, "LEADERGET", "lg.>"); err != nil || seq != 3 || string(data) != `{}` {
		t.Errorf("last of lg.>: sequence %d, %s, %v; want 3, the last message of any subject", seq, data, err)
	}
}

// TestLastFromLeaderUnanswered: a request no leader answers (its node died,
// the next is being elected; here a subscriber that never replies) fails
// after leaderGetTimeout, even with a context without a deadline, instead
// of waiting for good.
func TestLastFromLeaderUnanswered(t *testing.T) {
	// A server without JetStream: nothing but the test's subscriber takes
	// the request.
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("$JS.API.STREAM.MSG.GET.SILENT")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	done := make(chan error, 1)
	began := time.Now()
	go func() {
		_, _, _, err := lastFromLeader(context.Background(), nc, "SILENT", "lg.row")
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want the request's deadline", err)
		}
		if d := time.Since(began); d < leaderGetTimeout {
			t.Fatalf("gave up after %s, before the %s allowed", d, leaderGetTimeout)
		}
	case <-time.After(leaderGetTimeout + 10*time.Second):
		t.Fatal("no answer and no error long after the timeout: the request waits for good")
	}
	if _, err := sub.NextMsg(time.Second); err != nil {
		t.Fatalf("the request never reached the subscriber: %v", err)
	}
}
