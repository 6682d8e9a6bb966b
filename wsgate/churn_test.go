package wsgate

import (
	"testing"
)

// TestChurnLeavesNoConsumers subscribes and unsubscribes tables and
// topics over and over, resuming or not, with filters or not, and drops
// clients in the middle of their resumes: once they are gone, the
// gateway holds no feed, no subscription, no resume, and the stream no
// consumer of theirs. A consumer left on the server per subscription
// would let a client pile them up (and the server's goroutines and memory
// for each) as fast as it may send messages.
func TestChurnLeavesNoConsumers(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	ctx := testCtx(t)
	st, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	consumers := func() int {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Consumers
	}
	first := e.publish("create", map[string]any{"id": 1, "status": "open"})
	e.publish("create", map[string]any{"id": 2, "status": "paid"})

	c := e.dial("/ws")
	c.send(map[string]any{"type": "create-topic", "topic": "chat"})
	c.expect("topics", "")
	for i := range 40 {
		m := map[string]any{"id": "a", "table": "public.orders"}
		switch i % 4 {
		case 1:
			m["from"] = first - 1
		case 2:
			m["where"] = map[string]any{"status": map[string]any{"eq": "paid"}}
			m["from"] = first
		case 3:
			m = map[string]any{"id": "a", "topic": "chat"}
		}
		c.subscribe(m)
		c.send(map[string]any{"type": "unsubscribe", "id": "a"})
		c.sync()
	}
	for range 10 {
		d := e.dial("/ws")
		d.send(map[string]any{"type": "subscribe", "id": "r", "table": "public.orders", "from": 0})
		d.send(map[string]any{"type": "subscribe", "id": "s", "table": "public.orders"})
		_ = d.ws.CloseNow()
	}
	c.send(map[string]any{"type": "destroy-topic", "topic": "chat"})
	c.expect("topics", "")

	e.waitFor("no feed, subscription or resume left", func() bool {
		e.gw.feedMu.Lock()
		feeds := len(e.gw.feeds)
		e.gw.feedMu.Unlock()
		return feeds == 0 && e.metric(e.gw.met.feeds) == 0 && e.metric(e.gw.met.subscriptions) == 0 &&
			e.gw.subCount.Load() == 0 && e.metric(e.gw.met.replaysRunning) == 0 && e.metric(e.gw.met.replaysWaiting) == 0
	})
	e.waitFor("every consumer deleted", func() bool { return consumers() == 0 })
}
