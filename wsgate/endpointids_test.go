package wsgate

import (
	"time"

	"context"
	"testing"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
)

// chanSource is a match.Source the test feeds by hand.
type chanSource struct {
	endpoints chan endpoint.Event[endpoint.Endpoint]
	filters   chan endpoint.Event[endpoint.Filter]
	rules     chan endpoint.Event[endpoint.Rule]
}

func (s *chanSource) WatchEndpoints(context.Context) <-chan endpoint.Event[endpoint.Endpoint] {
	return s.endpoints
}

func (s *chanSource) WatchFilters(context.Context) <-chan endpoint.Event[endpoint.Filter] {
	return s.filters
}

func (s *chanSource) WatchRules(context.Context) <-chan endpoint.Event[endpoint.Rule] {
	return s.rules
}

// putFilter defines (or redefines) filter name on tables.
func (s *chanSource) putFilter(name string, tables ...string) {
	s.filters <- endpoint.Event[endpoint.Filter]{Kind: endpoint.EventPut, Key: name, Value: &endpoint.Filter{Name: name, Tables: tables}}
}

// liveEndpoint returns a registry holding one active WebSocket endpoint,
// "live", linked to filter f (named "f"), and the source that feeds it, for
// the test to change the filter.
func liveEndpoint(t *testing.T, f *endpoint.Filter) (*match.Registry, *chanSource) {
	t.Helper()
	src := &chanSource{make(chan endpoint.Event[endpoint.Endpoint], 4), make(chan endpoint.Event[endpoint.Filter], 4), make(chan endpoint.Event[endpoint.Rule], 4)}
	reg := match.NewRegistry(nil)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go reg.Run(ctx, src)
	ep := &endpoint.Endpoint{ID: "01JTESTENDPOINT0000000000", Name: "live", Type: endpoint.TypeWebSocket, State: endpoint.StateActive,
		Filters: []string{"f"}, WebSocket: &endpoint.WebSocket{}}
	src.endpoints <- endpoint.Event[endpoint.Endpoint]{Kind: endpoint.EventPut, Key: ep.ID, Value: ep}
	src.endpoints <- endpoint.Event[endpoint.Endpoint]{Kind: endpoint.EventLoaded}
	src.filters <- endpoint.Event[endpoint.Filter]{Kind: endpoint.EventPut, Key: f.Name, Value: f}
	src.filters <- endpoint.Event[endpoint.Filter]{Kind: endpoint.EventLoaded}
	src.rules <- endpoint.Event[endpoint.Rule]{Kind: endpoint.EventLoaded}
	<-reg.Ready()
	return reg, src
}

// TestEndpointIDsKeptForTheEndpoint: on a WebSocket endpoint's connection,
// a client's own subscribe may not take an id of the form
// database.schema.table, which the endpoint's subscription of that table
// takes when the endpoint comes to cover it. Two subscriptions of one id
// could not be told apart, and one of them would go on sending events after
// the client was told unsubscribed.
func TestEndpointIDsKeptForTheEndpoint(t *testing.T) {
	t.Parallel()
	reg, src := liveEndpoint(t, &endpoint.Filter{Name: "f", Tables: []string{"public.orders"}})
	e := startGateway(t, func(c *Config) { c.Managed = reg })
	e.putShape(itemsShape())
	c := e.dial("/ws/endpoints/live")
	c.expect("subscribed", testDB+".public.orders")
	c.send(map[string]any{"type": "subscribe", "id": testDB + ".public.items", "table": "public.items"})
	c.expectError(CodeInvalidSubscription, testDB+".public.items")
	c.subscribe(map[string]any{"id": "mine", "table": "public.items"})

	// The endpoint comes to cover public.items: its subscription has the
	// table's id, and is the only one of that id.
	src.putFilter("f", "public.orders", "public.items")
	c.expect("subscribed", testDB+".public.items")
	e.publishTo("items", "create", map[string]any{"id": 1})
	// The two frames of the event are queued one after the other, and a
	// ping may be answered between them: read both, then whatever else.
	got := map[string]int{}
	for range 2 {
		f := c.read(10 * time.Second)
		got[f.Type+" "+f.ID]++
	}
	for _, f := range c.sync() {
		got[f.Type+" "+f.ID]++
	}
	if len(got) != 2 || got["event mine"] != 1 || got["event "+testDB+".public.items"] != 1 {
		t.Fatalf("got %v, want one event for mine and one for the endpoint's subscription", got)
	}
	c.send(map[string]any{"type": "unsubscribe", "id": testDB + ".public.items"})
	c.expect("unsubscribed", testDB+".public.items")
	e.publishTo("items", "create", map[string]any{"id": 2})
	c.expect("event", "mine")
	if frames := c.sync(); len(frames) != 0 {
		t.Fatalf("after unsubscribed: %v", e2eRaws(frames))
	}
}
