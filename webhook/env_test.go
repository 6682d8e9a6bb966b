package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tablecast/tablecast/cdc"
	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/internal/pgtest"
	"github.com/tablecast/tablecast/internal/testcert"
	"github.com/tablecast/tablecast/internal/testrun"
	"github.com/tablecast/tablecast/stream"
)

// parallelTests is how many of the package's parallel tests run at once.
// Most of them wait far more than they work: on receivers that answer
// late or not at all, on retries' backoff, on ack waits and on the reader.
// go test's default, one per core, runs them two at a time.
const parallelTests = 3

func TestMain(m *testing.M) {
	testrun.Parallel(parallelTests)
	pgtest.Main(m)
}

const testPrefix = "tablecast"

// env is a pipeline: a database with table orders, the reader streaming it
// into JetStream, the endpoint store, and webhook delivery.
type env struct {
	t     testing.TB
	nats  *natstest.Server
	db    *pgx.Conn
	store *endpoint.Store
	reg   *prometheus.Registry
	mgr   *Manager
	log   *logBuffer

	// mgrCfg is the configuration of the Manager newEnv starts, for
	// startManager; mgrStop stops the one running and waits for it.
	mgrCfg  Config
	mgrCtx  context.Context
	mgrStop func()
}

type envOptions struct {
	allow     []netip.Prefix // default 127.0.0.0/8
	noAllow   bool
	setup     string
	ackWait   time.Duration
	pinnedTTL time.Duration
	// noSweep: dormant endpoints wake only by their subscriptions (see
	// dormant.go), so that a test sees a wake missed.
	noSweep bool
	sweep   time.Duration // how often dormant endpoints are swept, if not replayPoll
	// orphanEvery and orphanAge: Config.OrphanBodyEvery and OrphanBodyAge.
	orphanEvery, orphanAge time.Duration
	watch                  time.Duration // how often the retention watch runs, if not retentionWatch
	// leftoverEvery and leftoverAge: Config.LeftoverEvery and LeftoverAge.
	leftoverEvery, leftoverAge time.Duration
	// roots: the certificates webhooks trust (nil: the system's).
	roots *x509.CertPool
	// stock: a stock nats-server (1 MiB maximum payload) instead of the
	// embedded one (8 MiB), for tests of rows larger than a message:
	// under the race detector each megabyte of a row costs seconds.
	stock bool
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	n := natstest.Start
	if o.stock {
		n = natstest.StartStock
	}
	return newEnvOn(t, n(t), o)
}

func newEnvOn(t testing.TB, n *natstest.Server, o envOptions) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: time.Minute}); err != nil {
		t.Fatalf("provision stream: %v", err)
	}
	c := pgtest.Require(t)
	_, url := c.CreateDatabase(t)
	if o.setup == "" {
		o.setup = `CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, total numeric NOT NULL)`
	}
	c.Exec(t, url, o.setup)
	slot := fmt.Sprintf("tc_wh_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9)
	lb := &logBuffer{}
	log := slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reader, err := cdc.New(cdc.Config{DatabaseURL: url, Slot: slot, Publication: "tc_pub", StallAfter: time.Hour,
		RetryMin: 100 * time.Millisecond, RetryMax: 500 * time.Millisecond}, n.NC, n.JS, testPrefix, log.With("component", "reader"), prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("new reader: %v", err)
	}
	readerDone := make(chan error, 1)
	rctx, rcancel := context.WithCancel(context.Background())
	go func() { readerDone <- reader.Run(rctx) }()
	t.Cleanup(func() {
		rcancel()
		<-readerDone
		conn, err := pgx.Connect(context.Background(), url)
		if err == nil {
			_, _ = conn.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, slot)
			conn.Close(context.Background())
		}
	})
	e := &env{t: t, nats: n, db: c.Connect(t, url), reg: prometheus.NewRegistry(), log: lb}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", lb.String())
		}
	})
	waitFor(t, 60*time.Second, "the reader to stream", func() bool { return reader.Health().Streaming })

	e.store, err = endpoint.Open(ctx, n.JS, endpoint.Config{Logger: log})
	if err != nil {
		t.Fatalf("open endpoint store: %v", err)
	}
	t.Cleanup(e.store.Close)
	cat := catalog.New(testPrefix, log)
	schemas, err := stream.OpenRegistry(ctx, n.JS, stream.DefaultSchemaBucket, 1)
	if err != nil {
		t.Fatal(err)
	}
	str, err := n.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	topics, err := stream.OpenTopics(ctx, n.JS, str, testPrefix, stream.DefaultTopicBucket, 1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(2)
	go func() { defer wg.Done(); cat.Run(ctx, schemas, topics, nil, catalog.Start{}) }()
	registry := match.NewRegistry(log)
	go func() { defer wg.Done(); registry.Run(ctx, e.store) }()
	allow := o.allow
	if allow == nil && !o.noAllow {
		allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}
	e.mgrCtx = ctx
	e.mgrCfg = Config{Prefix: testPrefix, Registry: registry, Tables: cat, States: e.store, AllowNets: allow,
		Logger: log.With("component", "webhook"), AckWait: o.ackWait, PinnedTTL: o.pinnedTTL,
		OrphanBodyEvery: o.orphanEvery, OrphanBodyAge: o.orphanAge,
		LeftoverEvery: o.leftoverEvery, LeftoverAge: o.leftoverAge}
	e.startManager(nil, func(m *Manager) {
		if o.sweep > 0 {
			m.sweepEvery = o.sweep
		}
		if o.noSweep {
			m.sweepEvery = 0
		}
		if o.watch > 0 {
			m.watchEvery = o.watch
		}
		if o.roots != nil {
			trustRoots(m.client, o.roots)
		}
	})
	return e
}

// startManager starts a Manager, e.mgr, with newEnv's configuration as
// cfg changes it (nil: as it is), and prepare run on it before it runs.
// Its metrics go to a registry of its own, e.reg. The one before must
// have been stopped (stopManager).
func (e *env) startManager(cfg func(*Config), prepare func(*Manager)) {
	e.t.Helper()
	c := e.mgrCfg
	if cfg != nil {
		cfg(&c)
	}
	e.reg = prometheus.NewRegistry()
	c.Registerer = e.reg
	m, err := New(e.mgrCtx, e.nats.JS, c)
	if err != nil {
		e.t.Fatalf("new manager: %v", err)
	}
	if prepare != nil {
		prepare(m)
	}
	e.mgr = m
	ctx, cancel := context.WithCancel(e.mgrCtx)
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	e.mgrStop = func() { cancel(); <-done }
	e.t.Cleanup(e.mgrStop)
}

// stopManager stops the Manager and waits until it has (its workers
// too).
func (e *env) stopManager() { e.mgrStop() }

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// endpoint creates a filter of every change to orders and a webhook
// endpoint sending them to url, with mod applied to its settings.
func (e *env) endpoint(name, url string, mod func(*endpoint.Webhook)) *endpoint.Endpoint {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.store.GetFilter(ctx, "orders"); err != nil {
		if _, err := e.store.CreateFilter(ctx, &endpoint.Filter{Name: "orders", Tables: []string{"public.orders"}}); err != nil {
			e.t.Fatalf("create filter: %v", err)
		}
	}
	wh := &endpoint.Webhook{URL: url, Retry: endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(time.Second), MaxAge: endpoint.Duration(10 * time.Minute)}}
	if mod != nil {
		mod(wh)
	}
	ep, err := e.store.CreateEndpoint(ctx, &endpoint.Endpoint{Name: name, Type: endpoint.TypeWebhook, Filters: []string{"orders"}, Webhook: wh})
	if err != nil {
		e.t.Fatalf("create endpoint: %v", err)
	}
	return ep
}

// waitConsumer waits until the endpoint's consumer exists (so that the
// events after are read).
func (e *env) waitConsumer(ep *endpoint.Endpoint) {
	e.t.Helper()
	waitFor(e.t, 30*time.Second, "the endpoint's consumer", func() bool {
		_, err := e.nats.JS.Consumer(context.Background(), "TABLECAST", consumerName(ep.ID))
		return err == nil
	})
}

func (e *env) metric(c *prometheus.CounterVec, name string) float64 {
	return testutil.ToFloat64(c.WithLabelValues(name))
}

// delivery is one request a receiver got.
type delivery struct {
	Header                   http.Header
	ID, Timestamp, Signature string
	Body                     []byte
	At                       time.Time
	End                      time.Time // when it was answered
	Status                   int       // what the receiver answered
	ProtoMajor               int       // 1: HTTP/1.x, 2: HTTP/2
}

// receiver is an HTTP server that records every request and answers as
// answer says (nil: 204).
type receiver struct {
	mu       sync.Mutex
	all      []delivery
	answer   func(d *delivery, n int) (status int, hdr map[string]string, delay time.Duration)
	attempts map[string]int
	events   int // envelopes in the requests answered 2xx
	srv      *http.Server
	ln       net.Listener
	addr     string
	// cert, when set, is the certificate it serves HTTPS with (HTTP/2
	// offered).
	cert *testcert.Cert
	// conns counts the connections accepted (with cert, TLS handshakes).
	conns atomic.Int64
}

func newReceiver(t testing.TB) *receiver {
	t.Helper()
	r := &receiver{attempts: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	r.serve(ln)
	t.Cleanup(r.down)
	return r
}

// newTLSReceiver is a receiver over TLS with cert (one of testcert's, for
// 127.0.0.1), offering HTTP/2.
func newTLSReceiver(t testing.TB, cert testcert.Cert) *receiver {
	t.Helper()
	r := &receiver{attempts: map[string]int{}, cert: &cert}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	r.serve(ln)
	t.Cleanup(r.down)
	return r
}

func (r *receiver) URL() string {
	if r.cert != nil {
		return "https://" + r.addr + "/hook"
	}
	return "http://" + r.addr + "/hook"
}

func (r *receiver) serve(ln net.Listener) {
	r.ln = ln
	r.srv = &http.Server{Handler: http.HandlerFunc(r.handle), ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			r.conns.Add(1)
		}
	}}
	if r.cert == nil {
		go func() { _ = r.srv.Serve(ln) }()
		return
	}
	// Handshakes a client refuses are expected, not worth a line each.
	r.srv.ErrorLog = log.New(io.Discard, "", 0)
	go func() { _ = r.srv.ServeTLS(ln, r.cert.CertFile, r.cert.KeyFile) }()
}

// down stops listening: connections are refused.
func (r *receiver) down() {
	if r.srv != nil {
		_ = r.srv.Close()
		r.srv = nil
	}
}

// up listens again on the same address.
func (r *receiver) up(t *testing.T) {
	t.Helper()
	var ln net.Listener
	waitFor(t, 10*time.Second, "the receiver's address to be free", func() bool {
		var err error
		ln, err = net.Listen("tcp", r.addr)
		return err == nil
	})
	r.serve(ln)
}

func (r *receiver) handle(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	d := delivery{Header: req.Header.Clone(), ID: req.Header.Get("webhook-id"), Timestamp: req.Header.Get("webhook-timestamp"),
		Signature: req.Header.Get("webhook-signature"), Body: body, At: time.Now(), Status: 204, ProtoMajor: req.ProtoMajor}
	r.mu.Lock()
	r.attempts[d.ID]++
	n := r.attempts[d.ID]
	answer := r.answer
	r.mu.Unlock()
	var hdr map[string]string
	var delay time.Duration
	if answer != nil {
		d.Status, hdr, delay = answer(&d, n)
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-req.Context().Done():
		}
	}
	events := 0
	if d.Status/100 == 2 {
		events = countEnvelopes(body)
	}
	d.End = time.Now()
	r.mu.Lock()
	r.all = append(r.all, d)
	r.events += events
	r.mu.Unlock()
	for k, v := range hdr {
		w.Header().Set(k, v)
	}
	w.WriteHeader(d.Status)
}

// newFailingReceiver is a receiver that answers 503 while failing is
// set (as it is at first), and 200 after.
func newFailingReceiver(t testing.TB) (*receiver, *atomic.Bool) {
	r := newReceiver(t)
	failing := new(atomic.Bool)
	failing.Store(true)
	r.setAnswer(func(*delivery, int) (int, map[string]string, time.Duration) {
		if failing.Load() {
			return 503, nil, 0
		}
		return 200, nil, 0
	})
	return r, failing
}

func (r *receiver) setAnswer(f func(d *delivery, n int) (int, map[string]string, time.Duration)) {
	r.mu.Lock()
	r.answer = f
	r.mu.Unlock()
}

// requests returns every request so far.
func (r *receiver) requests() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.all...)
}

// accepted returns the envelopes of the requests answered 2xx, in the
// order received, each batch's envelopes in order.
func (r *receiver) accepted(t testing.TB) []envelope {
	t.Helper()
	var out []envelope
	for _, d := range r.requests() {
		if d.Status/100 != 2 {
			continue
		}
		out = append(out, parseBody(t, d.Body)...)
	}
	return out
}

type envelope struct {
	ID   string         `json:"id"`
	Op   string         `json:"op"`
	DB   string         `json:"db"`
	Data map[string]any `json:"data"`
	Key  map[string]any `json:"key"`
	Old  map[string]any `json:"old"`
}

func parseBody(t testing.TB, body []byte) []envelope {
	t.Helper()
	if bytes.HasPrefix(body, []byte("[")) {
		var list []envelope
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatalf("body %s: %v", body, err)
		}
		return list
	}
	var e envelope
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	return []envelope{e}
}

// countEnvelopes counts the envelopes of a body: the elements of a batch's
// array, or one. It scans with the project's own scanner rather than
// decoding: the benchmarks' receiver shares the cores with what they
// measure, and encoding/json took a twentieth of them.
func countEnvelopes(body []byte) int {
	if !bytes.HasPrefix(body, []byte("[")) {
		return 1
	}
	var sc jsonx.Scanner
	n := 0
	i := jsonx.SkipSpace(body, 1)
	if i < len(body) && body[i] == ']' {
		return 0
	}
	for {
		end, err := sc.SkipValue(body, i)
		if err != nil {
			return 1 // parseBody fails the test as it reads it
		}
		n++
		next, more, err := jsonx.Next(body, end, ']')
		if err != nil {
			return 1
		}
		if !more {
			return n
		}
		i = next
	}
}

// acceptedCount returns how many envelopes were accepted.
func (r *receiver) acceptedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events
}

// waitAccepted waits until n envelopes were accepted and returns them. It
// polls a count kept as requests come, not the bodies: parsing every body
// at each poll would take the CPU the benchmarks measure.
func (r *receiver) waitAccepted(t testing.TB, n int, within time.Duration) []envelope {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("%d events accepted", n), func() bool { return r.acceptedCount() >= n })
	return r.accepted(t)
}

// waitCount waits until n envelopes were accepted, reading no body.
func (r *receiver) waitCount(t testing.TB, n int, within time.Duration) {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("%d events accepted", n), func() bool { return r.acceptedCount() >= n })
}

// checkOrder fails unless evs are the inserts of ids 1..n in order (each
// once, repeats allowed only right after the same event).
func checkOrder(t *testing.T, evs []envelope, n int) {
	t.Helper()
	next := 1
	var lastID string
	for _, ev := range evs {
		if ev.ID == lastID {
			continue
		}
		id := int(ev.Data["id"].(float64))
		if id != next {
			t.Fatalf("event of row %d arrived when %d was next (ids so far up to %s)", id, next, lastID)
		}
		if lastID != "" && ev.ID < lastID {
			t.Fatalf("event id %s after %s", ev.ID, lastID)
		}
		next++
		lastID = ev.ID
	}
	if next != n+1 {
		t.Fatalf("%d events arrived, want %d", next-1, n)
	}
}

type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) contains(s string) bool { return strings.Contains(l.String(), s) }

// trustRoots makes a webhook client trust roots instead of the system's:
// the tests' own certificates. Before the client's first request (the
// transport reads its TLS configuration then).
func trustRoots(c *http.Client, roots *x509.CertPool) {
	c.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: roots}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
