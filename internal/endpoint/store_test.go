package endpoint

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
)

func openStore(t *testing.T, js jetstream.JetStream, cfg Config) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func webhook(name string) *Endpoint {
	return &Endpoint{Name: name, Type: TypeWebhook, Webhook: &Webhook{URL: "https://hooks.example.com/" + name}}
}

// secondConn is another client of the same server, as another tablecast
// process would be.
func secondConn(t *testing.T, srv *natstest.Server) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestEndpointLifecycle(t *testing.T) {
	srv := natstest.Start(t)
	s := openStore(t, srv.JS, Config{})
	ctx := testCtx(t)

	e, err := s.CreateEndpoint(ctx, webhook("billing"))
	if err != nil {
		t.Fatal(err)
	}
	if !ValidID(e.ID) || e.Revision == 0 || e.State != StateActive || e.CreatedAt.IsZero() {
		t.Fatalf("created %+v", e)
	}
	w := e.Webhook
	if w.Method != "POST" || w.Timeout.D() != 10*time.Second || w.Concurrency != 1 || w.Batch != 1 ||
		w.Retry.MaxAge.D() != 24*time.Hour || w.Retry.Initial.D() != time.Second || w.Retry.Max.D() != time.Hour || !w.Start.IsNow() {
		t.Fatalf("defaults not applied: %+v", w)
	}
	if len(SecretKey(w.Secret)) != generatedSecretBytes {
		t.Fatalf("secret %q not generated", w.Secret)
	}
	if _, err := s.CreateEndpoint(ctx, webhook("billing")); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("second endpoint named billing: %v, want ErrNameTaken", err)
	}
	got, err := s.GetEndpointByName(ctx, "billing")
	if err != nil || got.ID != e.ID {
		t.Fatalf("by name: %v %v", got, err)
	}

	// Update with a stale revision: conflict; with the current one: done.
	upd := e.Clone()
	upd.Webhook.Timeout = Duration(5 * time.Second)
	upd.Webhook.Secret = MaskSecret(e.Webhook.Secret) // as the API shows it: kept
	if _, err := s.UpdateEndpoint(ctx, upd, e.Revision+100); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale revision: %v", err)
	}
	e2, err := s.UpdateEndpoint(ctx, upd, e.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if e2.Revision <= e.Revision || e2.Webhook.Timeout.D() != 5*time.Second || e2.Webhook.Secret != e.Webhook.Secret || !e2.CreatedAt.Equal(e.CreatedAt) {
		t.Fatalf("updated %+v", e2)
	}

	// Rename: the old name is free, the new one taken.
	upd = e2.Clone()
	upd.Name = "billing-v2"
	if _, err := s.UpdateEndpoint(ctx, upd, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetEndpointByName(ctx, "billing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old name after rename: %v", err)
	}
	other, err := s.CreateEndpoint(ctx, webhook("billing"))
	if err != nil {
		t.Fatalf("old name not freed by the rename: %v", err)
	}

	p, err := s.SetEndpointState(ctx, e.ID, 0, StatePaused, "")
	if err != nil || p.State != StatePaused {
		t.Fatalf("pause: %v %v", p, err)
	}
	d, err := s.SetEndpointState(ctx, e.ID, 0, StateDisabled, "410 Gone")
	if err != nil || d.State != StateDisabled || d.DisabledReason != "410 Gone" {
		t.Fatalf("disable: %v %v", d, err)
	}
	r, err := s.SetEndpointState(ctx, e.ID, 0, StateActive, "")
	if err != nil || r.State != StateActive || r.DisabledReason != "" {
		t.Fatalf("resume: %v %v", r, err)
	}

	deleted, notFound, err := s.DeleteEndpoints(ctx, []string{e.ID, "01ARZ3NDEKTSV4RRFFQ69G5FAV", other.ID, e.ID})
	if err != nil || !slices.Equal(deleted, []string{e.ID, other.ID}) || !slices.Equal(notFound, []string{"01ARZ3NDEKTSV4RRFFQ69G5FAV"}) {
		t.Fatalf("delete many: %v %v %v", deleted, notFound, err)
	}
	if _, err := s.GetEndpoint(ctx, e.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if _, err := s.CreateEndpoint(ctx, webhook("billing-v2")); err != nil {
		t.Fatalf("name of a deleted endpoint: %v", err)
	}
}

func TestFilterLinks(t *testing.T) {
	srv := natstest.Start(t)
	s := openStore(t, srv.JS, Config{})
	ctx := testCtx(t)
	f, err := s.CreateFilter(ctx, &Filter{Name: "paid", Tables: []string{"public.orders"}, Where: []byte(`{"status":{"eq":"paid"}}`)})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.Operations, []string{"create", "update", "delete", "truncate", "read"}) {
		t.Fatalf("operations %v", f.Operations)
	}
	in := webhook("a")
	in.Filters = []string{"nope"}
	if _, err := s.CreateEndpoint(ctx, in); !slices.Equal(Fields(err), []FieldError{{Field: "filters[0]", Problem: `no filter is named "nope"`}}) {
		t.Fatalf("link to a missing filter: %v", err)
	}
	if p, _ := s.ListEndpoints(ctx, ListOptions{}); p.Total != 0 {
		t.Fatalf("refused endpoint written: %d", p.Total)
	}
	e, err := s.CreateEndpoint(ctx, webhook("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.LinkFilter(ctx, e.ID, "paid", 0); err != nil {
		t.Fatal(err)
	}
	eps, err := s.FilterEndpoints(ctx, "paid")
	if err != nil || len(eps) != 1 || eps[0].ID != e.ID {
		t.Fatalf("filter endpoints %v %v", eps, err)
	}
	var le *LinkedError
	if err := s.DeleteFilter(ctx, "paid", 0, false); !errors.As(err, &le) || !slices.Equal(le.Endpoints, []string{"a"}) || !errors.Is(err, ErrConflict) {
		t.Fatalf("delete a linked filter: %v", err)
	}
	if err := s.DeleteFilter(ctx, "paid", 0, true); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetEndpoint(ctx, e.ID)
	if err != nil || len(got.Filters) != 0 {
		t.Fatalf("forced delete left the link: %v %v", got, err)
	}
}

// TestLinkDeleteRace links endpoints to a filter while the filter is being
// deleted, many times over: afterwards, either the filter exists or no
// endpoint links it.
func TestLinkDeleteRace(t *testing.T) {
	srv := natstest.Start(t)
	s1 := openStore(t, srv.JS, Config{})
	s2 := openStore(t, secondConn(t, srv), Config{})
	ctx := testCtx(t)
	var eps []*Endpoint
	for i := range 4 {
		e, err := s1.CreateEndpoint(ctx, webhook(fmt.Sprintf("ep%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, e)
	}
	for round := range 25 {
		name := fmt.Sprintf("f%d", round)
		if _, err := s1.CreateFilter(ctx, &Filter{Name: name, Tables: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, e := range eps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = s2.LinkFilter(ctx, e.ID, name, 0)
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s1.DeleteFilter(ctx, name, 0, false)
		}()
		wg.Wait()
		_, ferr := s1.GetFilter(ctx, name)
		for _, e := range eps {
			got, err := s1.GetEndpoint(ctx, e.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.HasFilter(name) && errors.Is(ferr, ErrNotFound) {
				t.Fatalf("round %d: endpoint %s links filter %s, which was deleted", round, e.Name, name)
			}
		}
	}
}

func TestWatchSeesOtherProcess(t *testing.T) {
	srv := natstest.Start(t)
	s1 := openStore(t, srv.JS, Config{})
	s2 := openStore(t, secondConn(t, srv), Config{})
	ctx := testCtx(t)
	before, err := s1.CreateEndpoint(ctx, webhook("before"))
	if err != nil {
		t.Fatal(err)
	}
	ch := s2.WatchEndpoints(ctx)
	next := func() Event[Endpoint] {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch closed")
			}
			return ev
		case <-time.After(time.Second):
			t.Fatal("no watch event within a second")
		}
		return Event[Endpoint]{}
	}
	if ev := next(); ev.Kind != EventPut || ev.Key != before.ID || ev.Value.Webhook.Secret != before.Webhook.Secret {
		t.Fatalf("first event %+v", ev)
	}
	if ev := next(); ev.Kind != EventLoaded {
		t.Fatalf("want loaded, got %+v", ev)
	}
	after, err := s1.CreateEndpoint(ctx, webhook("after"))
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Kind != EventPut || ev.Key != after.ID || ev.Revision != after.Revision {
		t.Fatalf("created: %+v", ev)
	}
	if _, err := s1.SetEndpointState(ctx, after.ID, 0, StatePaused, ""); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Kind != EventPut || ev.Value.State != StatePaused {
		t.Fatalf("paused: %+v", ev)
	}
	if err := s1.DeleteEndpoint(ctx, after.ID, 0); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Kind != EventDelete || ev.Key != after.ID {
		t.Fatalf("deleted: %+v", ev)
	}
}

// TestRecordRetentionGapAtStart: two processes recording the same gap at
// an endpoint's start at once (each created its consumer) record it once:
// the other is told ErrGapKnown. Gaps found later are recorded as before,
// and a gap at the start after them is not.
func TestRecordRetentionGapAtStart(t *testing.T) {
	srv := natstest.Start(t)
	s := openStore(t, srv.JS, Config{})
	other := openStore(t, secondConn(t, srv), Config{})
	ctx := testCtx(t)
	e, err := s.CreateEndpoint(ctx, webhook("billing"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	start := RetentionGap{FirstSeq: 5, LastSeq: 89, Messages: 85, NextSeq: 90, StoredBefore: now, FoundAt: now, AtStart: true}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, st := range []*Store{s, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = st.RecordRetentionGap(ctx, e.ID, start)
		}()
	}
	wg.Wait()
	known := 0
	for _, err := range errs {
		switch {
		case errors.Is(err, ErrGapKnown):
			known++
		case err != nil:
			t.Fatal(err)
		}
	}
	if known != 1 {
		t.Fatalf("recording the gap at the start from two stores: %v; want one recorded, one ErrGapKnown", errs)
	}
	cur, err := s.GetEndpoint(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if g := cur.RetentionGaps; g == nil || g.Count != 1 || g.Messages != 85 || !g.Last.AtStart || g.Last.FirstSeq != 5 {
		t.Fatalf("gaps recorded: %+v", g)
	}
	later := RetentionGap{FirstSeq: 100, LastSeq: 109, Messages: 10, NextSeq: 120, StoredBefore: now, FoundAt: now}
	if _, err := s.RecordRetentionGap(ctx, e.ID, later); err != nil {
		t.Fatal(err)
	}
	if _, err := other.RecordRetentionGap(ctx, e.ID, start); !errors.Is(err, ErrGapKnown) {
		t.Fatalf("a gap at the start after a later one: %v, want ErrGapKnown", err)
	}
	cur, err = s.GetEndpoint(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if g := cur.RetentionGaps; g.Count != 2 || g.Messages != 95 || g.Last.AtStart || g.Last.FirstSeq != 100 {
		t.Fatalf("gaps recorded: %+v", g)
	}
}

// TestWatchLoadedAfterEveryEndpoint: a watch started while endpoints are
// being changed says it has loaded only once it has sent every stored
// endpoint. (Before, the end of the first pass came from the server's
// count of what the watch had pending, which fell short while keys were
// written again: an endpoint then seemed deleted to whoever applied the
// load, and a webhook Manager removed its consumers and dead letters.)
func TestWatchLoadedAfterEveryEndpoint(t *testing.T) {
	srv := natstest.Start(t)
	s1 := openStore(t, srv.JS, Config{})
	s2 := openStore(t, secondConn(t, srv), Config{})
	ctx := testCtx(t)
	const n = 20
	var ids []string
	for i := range n {
		e, err := s1.CreateEndpoint(ctx, webhook(fmt.Sprintf("hook-%02d", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	// Half the endpoints' stored values written again, as fast as the
	// bucket takes them (what an update does, without the checks around
	// it), while the others stay: each write removes the oldest revision
	// of its key, which lies after the stay-put endpoints' own.
	var keys []string
	var values [][]byte
	for _, id := range ids {
		e, err := s1.eps.kv.Get(ctx, endpointKeyPrefix+id)
		if err != nil {
			t.Fatal(err)
		}
		keys, values = append(keys, e.Key()), append(values, e.Value())
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := n/2 + i%(n/2)
			if _, err := s1.eps.kv.Put(ctx, keys[k], values[k]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for round := range 200 {
		wctx, cancel := context.WithCancel(ctx)
		seen := map[string]bool{}
		for ev := range s2.WatchEndpoints(wctx) {
			if ev.Kind == EventLoaded {
				break
			}
			if ev.Kind == EventPut {
				seen[ev.Key] = true
			}
		}
		cancel()
		for _, id := range ids {
			if !seen[id] {
				t.Fatalf("round %d: loaded with %d of the %d endpoints, %s not among them", round, len(seen), n, id)
			}
		}
	}
}
