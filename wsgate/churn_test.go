package wsgate

import (
	"testing"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
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

// oneEndpoint is a Managed with one active WebSocket endpoint, "live",
// whose one filter takes every event of public.orders.
type oneEndpoint struct{ e *match.Entry }

func newOneEndpoint() oneEndpoint {
	f := &endpoint.Filter{Name: "orders", Tables: []string{"public.orders"}}
	return oneEndpoint{&match.Entry{
		Endpoint: &endpoint.Endpoint{ID: "01JTESTENDPOINT0000000000", Name: "live", Type: endpoint.TypeWebSocket, State: endpoint.StateActive},
		Matcher:  match.New([]*endpoint.Filter{f}, nil, nil),
	}}
}

func (o oneEndpoint) Rule(string) *endpoint.Rule { return nil }

func (o oneEndpoint) GetByName(name string) *match.Entry {
	if name == o.e.Endpoint.Name {
		return o.e
	}
	return nil
}

// TestEndpointSubscriptionsCounted: the subscriptions a WebSocket
// endpoint's connection gets count in the status endpoint's
// subscriptions as any other, and leave it as they end.
func TestEndpointSubscriptionsCounted(t *testing.T) {
	t.Parallel()
	e := startGateway(t, func(c *Config) { c.Managed = newOneEndpoint() })
	ctx := testCtx(t)
	subscriptions := func() int { return e.gw.status(ctx, auth.AnonymousIdentity()).Gateway.Subscriptions }
	c := e.dial("/ws/endpoints/live")
	c.expect("subscribed", testDB+".public.orders")
	plain := e.dial("/ws")
	plain.subscribe(map[string]any{"id": "a", "table": "public.orders"})
	if n := subscriptions(); n != 2 {
		t.Fatalf("status says %d subscriptions, want 2", n)
	}
	_ = c.ws.CloseNow()
	e.waitFor("the endpoint's subscription ended", func() bool { return e.metric(e.gw.met.subscriptions) == 1 })
	if n := subscriptions(); n != 1 {
		t.Fatalf("status says %d subscriptions once the endpoint's connection is gone, want 1", n)
	}
}

// TestShutdownDeletesFeedConsumers: a gateway that shuts down deletes its
// feeds' consumers before Shutdown returns, rather than leave them on the
// server for their idle time after every restart.
func TestShutdownDeletesFeedConsumers(t *testing.T) {
	t.Parallel()
	e := startGateway(t, withMarkers)
	ctx := testCtx(t)
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "a", "table": "public.orders"})
	c.subscribe(map[string]any{"id": "b", "table": "public.orders", "batch": "transaction"})
	st, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	e.gw.Shutdown(ctx)
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Consumers; n != 0 {
		t.Fatalf("%d consumers left once Shutdown returned", n)
	}
	if n := e.metric(e.gw.met.feeds); n != 0 {
		t.Fatalf("feeds metric %v after Shutdown", n)
	}
}
