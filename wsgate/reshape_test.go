package wsgate

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/schema"
)

// retype returns s, one version on, with column col of type typ (oid).
func retype(s schema.Shape, col, typ string, oid uint32) schema.Shape {
	s.Version++
	s.Columns = append([]schema.ShapeColumn(nil), s.Columns...)
	for i := range s.Columns {
		if s.Columns[i].Name == col {
			s.Columns[i].Type, s.Columns[i].TypeOID = typ, oid
		}
	}
	return s
}

// TestRetypedColumnUnderSubscriptions: ALTER TABLE … ALTER COLUMN … TYPE
// while clients are subscribed. A where on the column was compiled for its
// old type, and would judge the new values by it ("30" < "5" as text): the
// subscription ends with invalid_filter and unsubscribed, and one made
// again judges by the new type. A subscription whose where reads other
// columns goes on. A row policy on the column is compiled again against
// the new type, so that a tenant sees only its own rows as PostgreSQL
// compares them now, not "10.0" and "1e1" as the number 10.
func TestRetypedColumnUnderSubscriptions(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	s := ordersShape()
	s = retype(s, "tenant", "numeric", 1700)
	e.putShape(s)
	all := token(t, map[string]any{"tables": map[string]any{"public.orders": []string{"*"}}}, nil)
	tenant := token(t, map[string]any{
		"tables":   map[string]any{"public.orders": []string{"*"}},
		"policies": map[string]any{"public.orders": map[string]any{"tenant": map[string]any{"eq": map[string]any{"claim": "t"}}}},
	}, map[string]any{"t": "10"})

	onStatus := e.dial("/ws", "Authorization", "Bearer "+all)
	onStatus.subscribe(map[string]any{"id": "lt5", "table": "public.orders", "where": map[string]any{"status": map[string]any{"lt": "5"}}})
	onTotal := e.dial("/ws", "Authorization", "Bearer "+all)
	onTotal.subscribe(map[string]any{"id": "big", "table": "public.orders", "where": map[string]any{"total": map[string]any{"gte": "100"}}})
	policy := e.dial("/ws", "Authorization", "Bearer "+tenant)
	policy.subscribe(map[string]any{"id": "mine", "table": "public.orders"})

	// Before: text compares status, the number tenant.
	e.publish("create", map[string]any{"id": 1, "status": "30", "total": "100", "tenant": "10.0"})
	if f := onStatus.expect("event", "lt5"); f.event()["data"].(map[string]any)["id"] != 1.0 {
		t.Fatalf("before: %s", f.raw)
	}
	onTotal.expect("event", "big")
	policy.expect("event", "mine") // 10.0 = 10 as numbers

	// status becomes numeric, tenant text.
	e.putShape(retype(retype(s, "status", "numeric", 1700), "tenant", "text", 25))
	f := onStatus.expectError(CodeInvalidFilter, "lt5")
	if !strings.Contains(f.Message, `column "status"`) || !strings.Contains(f.Message, "changed type") {
		t.Fatalf("ended with %s", f.raw)
	}
	onStatus.expect("unsubscribed", "lt5")
	onStatus.subscribe(map[string]any{"id": "lt5", "table": "public.orders", "where": map[string]any{"status": map[string]any{"lt": "5"}}})

	e.publish("create", map[string]any{"id": 2, "status": "30", "total": "200", "tenant": "10.0"})
	e.publish("create", map[string]any{"id": 3, "status": "4", "total": "1", "tenant": "1e1"})
	e.publish("create", map[string]any{"id": 4, "status": "40", "total": "300", "tenant": "10"})
	ids := func(c *client, id string, want int) []float64 {
		t.Helper()
		var got []float64
		for len(got) < want {
			f := c.read(10 * time.Second)
			if f.Type != "event" || f.ID != id {
				t.Fatalf("%s: got %s, want its events", id, f.raw)
			}
			got = append(got, f.event()["data"].(map[string]any)["id"].(float64))
		}
		if rest := c.sync(); len(rest) != 0 {
			t.Fatalf("%s: then %v", id, e2eRaws(rest))
		}
		return got
	}
	if got := ids(onStatus, "lt5", 1); got[0] != 3 {
		t.Errorf("status < 5 as numbers: got row %v, want 3 (30 and 40 are not)", got)
	}
	if got := ids(onTotal, "big", 2); got[0] != 2 || got[1] != 4 {
		t.Errorf("total >= 100: got rows %v, want 2 and 4", got)
	}
	if got := ids(policy, "mine", 1); got[0] != 4 {
		t.Errorf(`tenant = '10' as text: got rows %v, want only 4 (not "10.0" nor "1e1")`, got)
	}
}

// TestRetypedColumnUnderEndpoint: a WebSocket endpoint's filter is
// compiled against each shape of the table, as a webhook's is: after the
// column it reads is retyped, the endpoint's open connection judges new
// events by the new type.
func TestRetypedColumnUnderEndpoint(t *testing.T) {
	t.Parallel()
	reg, _ := liveEndpoint(t, &endpoint.Filter{Name: "f", Tables: []string{"public.orders"}, Where: json.RawMessage(`{"status":{"lt":"5"}}`)})

	e := startGateway(t, func(c *Config) { c.Managed = reg })
	s := ordersShape()
	e.putShape(s)
	c := e.dial("/ws/endpoints/live")
	id := testDB + ".public.orders"
	c.expect("subscribed", id)
	e.publish("create", map[string]any{"id": 1, "status": "30"})
	if f := c.expect("event", id); f.event()["data"].(map[string]any)["id"] != 1.0 {
		t.Fatalf("before: %s", f.raw)
	}

	e.putShape(retype(s, "status", "numeric", 1700))
	e.waitFor("the endpoint's filter compiled for the new shape", func() bool {
		sub := e.serverSub(id)
		return sub != nil && sub.tm.Load() != nil && sub.tm.Load().Table == e.gw.cat.TableIn(testDB, "public", "orders")
	})
	e.publish("create", map[string]any{"id": 2, "status": "30"})
	e.publish("create", map[string]any{"id": 3, "status": "4"})
	f := c.expect("event", id)
	if got := f.event()["data"].(map[string]any)["id"]; got != 3.0 {
		t.Fatalf("status < 5 as numbers: got row %v, want 3 (30 is not)", got)
	}
	if rest := c.sync(); len(rest) != 0 {
		t.Fatalf("then %v", e2eRaws(rest))
	}
}

// serverSub returns the gateway's subscription of id on any connection
// (nil for none).
func (e *testEnv) serverSub(id string) *sub {
	for _, c := range e.gw.openConns() {
		if s := c.lookupSub(id); s != nil {
			return s
		}
	}
	return nil
}
