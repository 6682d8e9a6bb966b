package wsgate

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
)

// rules is a Managed with rules and no endpoint.
type rules map[string]*endpoint.Rule

func (r rules) Rule(name string) *endpoint.Rule { return r[name] }

func (rules) GetByName(string) *match.Entry { return nil }

// TestRuleSubscriptionFilterFailed: an event whose new row lacks a
// column the rule's new-row condition reads, or one of its changed
// columns (dropped since the rule was compiled, and not listed as
// unchanged), cannot be judged: the rule subscription is told so with
// filter_failed, as a table subscription is of its where, rather than
// skipping it in silence; the events it can judge still come, and an
// unchanged TOASTed column is no change.
func TestRuleSubscriptionFilterFailed(t *testing.T) {
	rule := &endpoint.Rule{Name: "big", Table: "public.orders", Operations: []string{"create"},
		New: json.RawMessage(`{"total":{"gte":"100"}}`)}
	changed := &endpoint.Rule{Name: "status-change", Table: "public.orders", Changed: []string{"status"}}
	e := startGateway(t, func(c *Config) { c.Managed = rules{"big": rule, "status-change": changed} })
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "a", "rule": "big"})
	w := e.dial("/ws")
	w.subscribe(map[string]any{"id": "w", "table": "public.orders", "where": map[string]any{"total": map[string]any{"gte": "100"}}})

	small := e.publish("create", map[string]any{"id": 1, "status": "open", "total": "5"})
	big := e.publish("create", map[string]any{"id": 2, "status": "open", "total": "150"})
	for _, cl := range []*client{c, w} {
		if f := cl.read(10e9); f.Type != "event" || f.Seq != big {
			t.Fatalf("got %s, want the event %d (not %d)", f.raw, big, small)
		}
	}
	// The column is gone from the rows.
	gone := e.publish("create", map[string]any{"id": 3, "status": "open"})
	if f := w.expectError(CodeFilterFailed, "w"); !contains(f.Message, "total") {
		t.Fatalf("table subscription: %s", f.raw)
	}
	f := c.read(10e9)
	if f.Type != "error" || f.Code != string(CodeFilterFailed) || f.ID != "a" || !contains(f.Message, "total") {
		t.Fatalf("rule subscription: got %s for event %d, want filter_failed naming column total", f.raw, gone)
	}
	c.send(map[string]any{"type": "unsubscribe", "id": "a"})
	c.expect("unsubscribed", "a")

	// A resume's history says so too.
	r := e.dial("/ws")
	r.subscribe(map[string]any{"id": "r", "rule": "big", "from": small})
	if f := r.expect("event", "r"); f.Seq != big {
		t.Fatalf("resumed: event %d, want %d", f.Seq, big)
	}
	if f := r.expectError(CodeFilterFailed, "r"); !contains(f.Message, "total") {
		t.Fatalf("resumed: %s", f.raw)
	}

	// A changed column: an update that changes it fires; one that leaves
	// it unchanged (TOAST) does not; one whose rows lack it says so.
	ch := e.dial("/ws")
	ch.subscribe(map[string]any{"id": "c", "rule": "status-change"})
	fired := e.publish("update", map[string]any{"id": 1, "status": "paid", "total": "5"}, "old", `{"id":1,"status":"open","total":"5"}`)
	if f := ch.expect("event", "c"); f.Seq != fired {
		t.Fatalf("status change: event %d, want %d", f.Seq, fired)
	}
	e.publish("update", map[string]any{"id": 1, "total": "6"}, "old", `{"id":1,"total":"5"}`, "unchanged", `["status"]`)
	if got := ch.sync(); len(got) != 0 {
		t.Fatalf("an update leaving status unchanged (TOAST): %s", got[0].raw)
	}
	lost := e.publish("update", map[string]any{"id": 1, "total": "7"}, "old", `{"id":1,"total":"6"}`)
	if f := ch.expectError(CodeFilterFailed, "c"); !contains(f.Message, "status") || !contains(f.Message, fmt.Sprint(lost)) {
		t.Fatalf("an update whose rows lack status: %s", f.raw)
	}
}
