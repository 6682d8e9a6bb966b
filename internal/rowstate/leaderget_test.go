package rowstate

import (
	"context"
	"errors"
	"testing"

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
	h, data, err := lastFromLeader(ctx, n.NC, "LEADERGET", "lg.row")
	if err != nil {
		t.Fatal(err)
	}
	if h.Get(HeaderSeq) != "2" || string(data) != `{"key":{"id":2}}` {
		t.Errorf("got %v %s, want the last message", h, data)
	}
	if _, _, err := lastFromLeader(ctx, n.NC, "LEADERGET", "lg.none"); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("a subject without messages: %v, want ErrMsgNotFound", err)
	}
	if _, _, err := lastFromLeader(ctx, n.NC, "NOSUCH", "lg.row"); err == nil || errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("a stream that does not exist: %v, want an error other than not found", err)
	}
}
