package webhook

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tablecast/tablecast/internal/natstest"
)

// TestReplayAllMakesProgress replays every dead letter of an endpoint that
// has more than one call has the time to read: each call, cut short after
// some reads, queues what it read, and calls again replay the rest. (A
// call that read them all before queuing any queued none, every time.)
func TestReplayAllMakesProgress(t *testing.T) {
	t.Parallel()
	n := natstest.Start(t)
	ctx := context.Background()
	dl, err := OpenDeadLetters(ctx, n.JS, "TABLECAST", testPrefix, 1)
	if err != nil {
		t.Fatal(err)
	}
	const id, letters, readsPerCall = "01M95HJSB2YRH69S3XM4GP5VGF", 200, 40
	for i := range letters {
		msg := &nats.Msg{Subject: dl.Subject(id), Data: []byte(`{"id":"E` + strconv.Itoa(i) + `"}`), Header: nats.Header{}}
		msg.Header.Set(HeaderEventID, "E"+strconv.Itoa(i))
		if _, err := n.JS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	// A call's time runs out after readsPerCall reads of the stream.
	var reads atomic.Int64
	var cancelCall atomic.Pointer[context.CancelFunc]
	count := func(*nats.Msg) {
		if reads.Add(1) == readsPerCall {
			if c := cancelCall.Load(); c != nil {
				(*c)()
			}
		}
	}
	for _, subj := range []string{"$JS.API.DIRECT.GET.>", "$JS.API.STREAM.MSG.GET.>"} {
		sub, err := n.NC.Subscribe(subj, count)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := n.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	total := 0
	for call := 0; call < 3*letters/readsPerCall && total < letters; call++ {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		reads.Store(0)
		cancelCall.Store(&cancel)
		got, err := dl.Replay(cctx, id)
		cancel()
		t.Logf("call %d: replayed %d (%v)", call, got, err)
		total += got
	}
	if total != letters {
		t.Fatalf("replayed %d of %d dead letters", total, letters)
	}
	if left, err := dl.List(ctx, id, 0, 10); err != nil || len(left) != 0 {
		t.Fatalf("dead letters left: %d (%v)", len(left), err)
	}
}
