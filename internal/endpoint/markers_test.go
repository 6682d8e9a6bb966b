package endpoint

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// TestPurgeMarkersCarryTheirTTL: a deleted endpoint, its released name, a
// deleted filter and a deleted rule each leave a marker carrying the TTL
// stream.ManagedMarkerTTL, in a bucket that allows per-message TTLs, so
// that the server drops it then (a day is not waited for here; that the
// server honours the TTL is its own promise); a bucket made by a version
// without the limit gets it when opened.
func TestPurgeMarkersCarryTheirTTL(t *testing.T) {
	srv := natstest.Start(t)
	ctx := testCtx(t)
	// A bucket as an older version made it: markers kept for good.
	if _, err := srv.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: stream.DefaultEndpointBucket, History: 5}); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, srv.JS, Config{})
	for _, b := range []string{stream.DefaultEndpointBucket, stream.DefaultFilterBucket, stream.DefaultRuleBucket} {
		str, err := srv.JS.Stream(ctx, "KV_"+b)
		if err != nil {
			t.Fatal(err)
		}
		cfg := str.CachedInfo().Config
		if !cfg.AllowMsgTTL || cfg.SubjectDeleteMarkerTTL != stream.ManagedMarkerTTL {
			t.Errorf("bucket %s: allow_msg_ttl %v, subject_delete_marker_ttl %s; want true, %s", b, cfg.AllowMsgTTL, cfg.SubjectDeleteMarkerTTL, stream.ManagedMarkerTTL)
		}
	}

	e, err := s.CreateEndpoint(ctx, webhook("hook"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteEndpoint(ctx, e.ID, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateFilter(ctx, &Filter{Name: "f", Tables: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteFilter(ctx, "f", 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateRule(ctx, &Rule{Name: "r", Table: "public.orders"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRule(ctx, "r", 0, false); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct{ bucket, key string }{
		{stream.DefaultEndpointBucket, endpointKey(e.ID)},
		{stream.DefaultEndpointBucket, indexKey("hook")},
		{stream.DefaultFilterBucket, nameKey("f")},
		{stream.DefaultRuleBucket, nameKey("r")},
	} {
		str, err := srv.JS.Stream(ctx, "KV_"+m.bucket)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := str.GetLastMsgForSubject(ctx, "$KV."+m.bucket+"."+m.key)
		if err != nil {
			t.Fatalf("%s %s: %v", m.bucket, m.key, err)
		}
		if op := msg.Header.Get("KV-Operation"); op != "PURGE" {
			t.Errorf("%s %s: last message's operation %q, want PURGE", m.bucket, m.key, op)
		}
		ttl, err := time.ParseDuration(msg.Header.Get(jetstream.MsgTTLHeader))
		if err != nil || ttl != stream.ManagedMarkerTTL {
			t.Errorf("%s %s: marker's TTL %q, want %s", m.bucket, m.key, msg.Header.Get(jetstream.MsgTTLHeader), stream.ManagedMarkerTTL)
		}
	}
}

// TestDeleteUnseenWhileCutOff: a process cut off from NATS while an
// endpoint is deleted, whose marker is gone by the time it reconnects (it
// expires after stream.ManagedMarkerTTL; here it is purged), does not
// keep the endpoint: its watches start again with EventReset, and its
// listings, after the reconnection.
func TestDeleteUnseenWhileCutOff(t *testing.T) {
	srv := natstest.Start(t)
	ctx := testCtx(t)
	s1 := openStore(t, srv.JS, Config{})
	p := startCutProxy(t, srv.URL())
	nc2, err := nats.Connect(p.url(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc2.Close)
	js2, err := jetstream.New(nc2)
	if err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, js2, Config{})

	gone, err := s1.CreateEndpoint(ctx, webhook("gone"))
	if err != nil {
		t.Fatal(err)
	}
	kept, err := s1.CreateEndpoint(ctx, webhook("kept"))
	if err != nil {
		t.Fatal(err)
	}
	ch := s2.WatchEndpoints(ctx)
	next := func(what string) Event[Endpoint] {
		t.Helper()
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("watch closed")
			}
			return ev
		case <-time.After(15 * time.Second):
			t.Fatalf("no watch event within 15 s, waiting for %s", what)
		}
		return Event[Endpoint]{}
	}
	untilLoaded := func(what string) map[string]bool {
		t.Helper()
		ids := map[string]bool{}
		for {
			ev := next(what)
			switch ev.Kind {
			case EventLoaded:
				return ids
			case EventPut:
				ids[ev.Key] = true
			default:
				t.Fatalf("%s: unexpected %+v", what, ev)
			}
		}
	}
	if ids := untilLoaded("the first pass"); !ids[gone.ID] || !ids[kept.ID] || len(ids) != 2 {
		t.Fatalf("first pass: %v", ids)
	}
	listed := func() map[string]bool {
		page, err := s2.ListEndpoints(ctx, ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]bool{}
		for _, e := range page.Items {
			ids[e.ID] = true
		}
		return ids
	}
	if ids := listed(); !ids[gone.ID] || !ids[kept.ID] {
		t.Fatalf("listed before the cut: %v", ids)
	}

	p.cut()
	waitUntil(t, 10*time.Second, "the second process to lose its connection", func() bool { return !nc2.IsConnected() })
	if err := s1.DeleteEndpoint(ctx, gone.ID, 0); err != nil {
		t.Fatal(err)
	}
	// The marker's expiry, without the day's wait.
	str, err := srv.JS.Stream(ctx, "KV_"+stream.DefaultEndpointBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := str.Purge(ctx, jetstream.WithPurgeSubject("$KV."+stream.DefaultEndpointBucket+"."+endpointKey(gone.ID))); err != nil {
		t.Fatal(err)
	}
	p.restore()
	waitUntil(t, 10*time.Second, "the second process to reconnect", nc2.IsConnected)

	if ev := next("a reset after the reconnection"); ev.Kind != EventReset {
		t.Fatalf("after the reconnection: %+v, want a reset", ev)
	}
	if ids := untilLoaded("the pass after the reset"); ids[gone.ID] || !ids[kept.ID] {
		t.Fatalf("after the reset: %v, want only %s", ids, kept.ID)
	}
	waitUntil(t, 10*time.Second, "the listing to drop the deleted endpoint", func() bool {
		ids := listed()
		return !ids[gone.ID] && ids[kept.ID]
	})
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cutProxy forwards TCP connections to a NATS server until cut, which
// closes them and refuses new ones until restore.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func startCutProxy(t *testing.T, url string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: url[len("nats://"):]}
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			down := p.down
			p.mu.Unlock()
			if down {
				_ = c.Close()
				continue
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); _ = s.Close() }()
			go func() { _, _ = io.Copy(c, s); _ = c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// TestOldMarkersDropped: markers an earlier version left for good (purges
// without a TTL) are dropped once older than stream.ManagedMarkerTTL, with
// what came before them on their key; a key written again after its
// marker keeps its value, even when its marker is dropped.
func TestOldMarkersDropped(t *testing.T) {
	srv := natstest.Start(t)
	ctx := testCtx(t)
	bucket := stream.DefaultFilterBucket
	kv, err := srv.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, History: 5})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"gone", "back"} {
		if _, err := kv.Put(ctx, k, []byte(`"v1"`)); err != nil {
			t.Fatal(err)
		}
		if err := kv.Purge(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Put(ctx, "back", []byte(`"v2"`)); err != nil {
		t.Fatal(err)
	}
	// A day and more later, by the store's clock.
	s := openStore(t, srv.JS, Config{Now: func() time.Time { return time.Now().Add(stream.ManagedMarkerTTL + time.Hour) }})
	str, err := srv.JS.Stream(ctx, "KV_"+bucket)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the old marker to be dropped", func() bool {
		_, err := str.GetLastMsgForSubject(ctx, "$KV."+bucket+".gone")
		return errors.Is(err, jetstream.ErrMsgNotFound)
	})
	if e, err := kv.Get(ctx, "back"); err != nil || string(e.Value()) != `"v2"` {
		t.Fatalf("the key written again: %v, %v; want its value", e, err)
	}

	// The drop of a marker stops at the marker: a value written after it
	// (as a key created again while the drop runs) stays.
	h, err := kv.History(ctx, "back")
	if err != nil || len(h) != 2 || h[0].Operation() != jetstream.KeyValuePurge {
		t.Fatalf("history of the key written again: %v, %v; want its marker and its value", h, err)
	}
	s.filters.dropOldMarkers(ctx, h[:1], slog.New(slog.DiscardHandler))
	h, err = kv.History(ctx, "back")
	if err != nil || len(h) != 1 || string(h[0].Value()) != `"v2"` {
		t.Fatalf("after its marker was dropped: %v, %v; want its value alone", h, err)
	}
}
