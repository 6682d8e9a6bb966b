package admin_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tablecast/tablecast/admin"
	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestConcurrentUpdates sends two updates of one endpoint at once, both
// expecting the same revision, 50 times over, through two API processes
// on the same NATS: every time exactly one is applied and the other is
// answered 409, and the endpoint holds the applied one's change. (The
// same for filters and rules, with PATCH and PUT.)
func TestConcurrentUpdates(t *testing.T) {
	a := start(t, nil)
	b := startOn(t, a.nats, secondProcess(t, a.nats), nil)
	ctx := testCtx(t)
	var e endpointJSON
	resp := a.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "contended", "type": "webhook", "webhook": map[string]any{"url": "https://example.com/h"}}, 0, &e)
	rev := resp.Revision()
	a.call(ctx, "POST", "/v1/filters", nil, map[string]any{"name": "f", "tables": []string{"*"}}, 0, nil)
	a.call(ctx, "POST", "/v1/rules", nil, map[string]any{"name": "r", "table": "public.orders"}, 0, nil)
	revs := map[string]uint64{}
	for _, p := range []string{"/v1/filters/f", "/v1/rules/r"} {
		revs[p] = a.call(ctx, "GET", p, nil, nil, 0, nil).Revision()
	}

	race := func(path, method string, rev uint64, body func(i int) any) (winner int, newRev uint64) {
		t.Helper()
		var wg sync.WaitGroup
		results := make([]*admin.Response, 2)
		errs := make([]error, 2)
		gate := make(chan struct{})
		for i, h := range []*harness{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				results[i], errs[i] = h.client(h.writer).Do(badRequest(ctx), method, path, nil, body(i), rev)
			}()
		}
		close(gate)
		wg.Wait()
		winner = -1
		for i := range 2 {
			var ae *admin.APIError
			switch {
			case errs[i] == nil && winner == -1:
				winner, newRev = i, results[i].Revision()
			case errs[i] == nil:
				t.Fatalf("%s %s at revision %d: both updates applied", method, path, rev)
			case errors.As(errs[i], &ae) && ae.Status == 409 && ae.Code == "conflict":
			default:
				t.Fatalf("%s %s: %v", method, path, errs[i])
			}
		}
		if winner == -1 {
			t.Fatalf("%s %s at revision %d: both refused", method, path, rev)
		}
		return winner, newRev
	}

	for round := range 50 {
		w, nr := race("/v1/endpoints/"+e.ID, "PATCH", rev, func(i int) any {
			return map[string]any{"webhook": map[string]any{"url": fmt.Sprintf("https://example.com/%d/%d", round, i)}}
		})
		cur, err := a.store.GetEndpoint(ctx, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("https://example.com/%d/%d", round, w); cur.Webhook.URL != want || cur.Revision != nr {
			t.Fatalf("round %d: the endpoint holds %s at revision %d, want the winner's %s at %d", round, cur.Webhook.URL, cur.Revision, want, nr)
		}
		rev = nr
		for _, p := range []string{"/v1/filters/f", "/v1/rules/r"} {
			method := "PATCH"
			if round%2 == 1 {
				method = "PUT"
			}
			_, revs[p] = race(p, method, revs[p], func(i int) any {
				if method == "PUT" && p == "/v1/filters/f" {
					return map[string]any{"name": "f", "tables": []string{"*"}, "description": fmt.Sprint(round, i)}
				}
				if method == "PUT" {
					return map[string]any{"name": "r", "table": "public.orders", "description": fmt.Sprint(round, i)}
				}
				return map[string]any{"description": fmt.Sprint(round, i)}
			})
		}
	}
	// Without a revision, both apply: the store retries.
	var wg sync.WaitGroup
	for i, h := range []*harness{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.client(h.writer).Do(ctx, "PATCH", "/v1/endpoints/"+e.ID, nil, map[string]any{"webhook": map[string]any{"headers": map[string]any{fmt.Sprintf("X-Writer-%d", i): "yes"}}}, 0); err != nil {
				t.Errorf("PATCH without a revision: %v", err)
			}
		}()
	}
	wg.Wait()
	if cur, _ := a.store.GetEndpoint(ctx, e.ID); len(cur.Webhook.Headers) != 2 {
		t.Fatalf("two merge patches without a revision: headers %v, want both", cur.Webhook.Headers)
	}
}

// TestChangeSeenByOtherProcess makes changes through one process's API
// and watches another process's store (its own NATS connection) for
// them: each arrives, with the change. The time each took is logged;
// the test does not assert it (the machine may be loaded), but fails
// after 10 s.
func TestChangeSeenByOtherProcess(t *testing.T) {
	a := start(t, nil)
	ctx := testCtx(t)
	other, err := endpoint.Open(ctx, secondProcess(t, a.nats), endpoint.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := other.WatchEndpoints(wctx)
	filters := other.WatchFilters(wctx)
	next := func(what string, ch <-chan endpoint.Event[endpoint.Endpoint]) endpoint.Event[endpoint.Endpoint] {
		t.Helper()
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("%s: the watch ended", what)
			}
			return ev
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not seen by the other process within 10s", what)
		}
		panic("unreachable")
	}
	if ev := next("loaded", events); ev.Kind != endpoint.EventLoaded {
		t.Fatalf("first event %v, want loaded", ev.Kind)
	}
	var worst time.Duration
	expect := func(what string, check func(endpoint.Event[endpoint.Endpoint]) bool, began time.Time) {
		t.Helper()
		ev := next(what, events)
		if !check(ev) {
			t.Fatalf("%s: the other process saw %v %s %+v", what, ev.Kind, ev.Key, ev.Value)
		}
		worst = max(worst, time.Since(began))
	}

	began := time.Now()
	var e endpointJSON
	a.call(ctx, "POST", "/v1/endpoints", nil, map[string]any{"name": "seen", "type": "websocket"}, 0, &e)
	expect("create", func(ev endpoint.Event[endpoint.Endpoint]) bool {
		return ev.Kind == endpoint.EventPut && ev.Key == e.ID && ev.Value.Name == "seen" && ev.Value.Revision == e.Revision
	}, began)
	began = time.Now()
	a.call(ctx, "PATCH", "/v1/endpoints/"+e.ID, nil, map[string]any{"name": "seen-again"}, 0, nil)
	expect("rename", func(ev endpoint.Event[endpoint.Endpoint]) bool {
		return ev.Kind == endpoint.EventPut && ev.Key == e.ID && ev.Value.Name == "seen-again"
	}, began)
	began = time.Now()
	a.call(ctx, "POST", "/v1/endpoints/"+e.ID+"/pause", nil, nil, 0, nil)
	expect("pause", func(ev endpoint.Event[endpoint.Endpoint]) bool {
		return ev.Kind == endpoint.EventPut && ev.Value.State == endpoint.StatePaused
	}, began)
	began = time.Now()
	a.call(ctx, "DELETE", "/v1/endpoints/"+e.ID, nil, nil, 0, nil)
	expect("delete", func(ev endpoint.Event[endpoint.Endpoint]) bool {
		return ev.Kind == endpoint.EventDelete && ev.Key == e.ID
	}, began)

	// A filter, too; and the other process's listing shows it at once.
	a.call(ctx, "POST", "/v1/filters", nil, map[string]any{"name": "ff", "tables": []string{"*"}}, 0, nil)
	p, err := other.ListFilters(ctx, endpoint.ListOptions{})
	if err != nil || p.Total != 1 || p.Items[0].Name != "ff" {
		t.Fatalf("the other process lists %+v %v right after the creation", p, err)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-filters:
			if ev.Kind == endpoint.EventPut && ev.Key == "ff" {
				t.Logf("slowest change seen by the other process's watch after %s", worst)
				return
			}
		case <-deadline:
			t.Fatal("the filter's creation was not seen by the other process's watch within 10s")
		}
	}
}
