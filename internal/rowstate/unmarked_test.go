package rowstate

import (
	"context"
	"log/slog"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
)

// TestUnmarked: what a session learns was written after the state's
// marker is the largest event of any message after it, not the last
// message's (rows stored after a refused one, then rows of earlier events
// written again), on one replica and on three (where the last message is
// asked of the leader and the read goes on to it). With the marker last,
// nothing.
func TestUnmarked(t *testing.T) {
	t.Run("one replica", func(t *testing.T) { testUnmarked(t, natstest.Start(t), 1) })
	t.Run("three replicas", func(t *testing.T) { testUnmarked(t, natstest.StartCluster(t, 3).Server, 3) })
}

func testUnmarked(t *testing.T, n *natstest.Server, replicas int) {
	ctx := context.Background()
	const prefix, db = "tc", "shop"
	rows, err := n.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "UNMARKED_ROWS", Subjects: []string{RowsSubjects(prefix)},
		Replicas: replicas, AllowDirect: true, MaxMsgsPerSubject: 1})
	if err != nil {
		t.Fatal(err)
	}
	put := func(subject string, seq uint64) uint64 {
		t.Helper()
		ack, err := n.JS.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: nats.Header{HeaderSeq: {strconv.FormatUint(seq, 10)}}})
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	row := func(id int) string {
		return RowSubject(prefix, db, "public", "items", KeyToken([]byte(`{"id":`+strconv.Itoa(id)+`}`)))
	}
	at := put(DBMarkerSubject(prefix, db), 10)
	s := &session{m: &Maintainer{cfg: Config{Prefix: prefix, DB: db}, nc: n.NC, log: slog.New(slog.DiscardHandler)}, rows: rows}
	if got, err := s.unmarked(ctx, at); err != nil || got != 0 {
		t.Fatalf("with the marker last: %d, %v; want 0", got, err)
	}
	put(row(1), 11)
	put(row(5), 15) // stored after a refused row of event 12
	put(row(2), 12)
	put(row(1), 11) // written again by the next session
	if got, err := s.unmarked(ctx, at); err != nil || got != 15 {
		t.Fatalf("after the marker: %d, %v; want 15, the largest event of a message after it", got, err)
	}
}
