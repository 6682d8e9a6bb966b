package wsgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Tests of the gateway run it for real: an in-process NATS with JetStream,
// the gateway listening on a loopback port, and clients using an
// independent WebSocket library (github.com/coder/websocket), so that
// interoperability is tested rather than assumed. The gateway never talks to
// PostgreSQL, so events are published into JetStream the way the reader
// publishes them, and tables are declared in the schema registry the way
// the reader declares them (cmd/tablecast's tests run the whole pipeline).

const testDB = "shop"

// testEnv is a running gateway and its NATS.
type testEnv struct {
	t    testing.TB
	nats *natstest.Server
	gw   *Gateway
	reg  *prometheus.Registry
	addr string
	ids  atomic.Uint64
}

func testLogger() *slog.Logger {
	if os.Getenv("TABLECAST_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startGateway starts NATS, the stream, and a gateway configured by mod,
// and waits until it is ready.
func startGateway(t testing.TB, mod func(*Config)) *testEnv {
	t.Helper()
	return startGatewayThrough(t, nil, mod)
}

// startGatewayThrough is startGateway with the gateway's JetStream seen
// through wrap (as it is when wrap is nil): for tests of what NATS may do
// that a test cannot make it do.
func startGatewayThrough(t testing.TB, wrap func(jetstream.JetStream) jetstream.JetStream, mod func(*Config)) *testEnv {
	t.Helper()
	e := startGatewayLoadingThrough(t, wrap, mod)
	e.waitFor("gateway ready", func() bool { return e.gw.Ready() && e.gw.cat.Table("public", "orders") != nil })
	return e
}

// startGatewayLoading is startGateway without waiting for readiness.
func startGatewayLoading(t testing.TB, mod func(*Config)) *testEnv {
	t.Helper()
	return startGatewayLoadingThrough(t, nil, mod)
}

func startGatewayLoadingThrough(t testing.TB, wrap func(jetstream.JetStream) jetstream.JetStream, mod func(*Config)) *testEnv {
	t.Helper()
	ns := natstest.Start(t)
	ctx := testCtx(t)
	if _, err := stream.EnsureStream(ctx, ns.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: "tablecast", DuplicateWindow: time.Minute}); err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, nats: ns, reg: prometheus.NewRegistry()}
	e.putShape(ordersShape())
	// Tests send bursts of messages; the rate limit has a test of its own.
	cfg := Config{Logger: testLogger(), Registerer: e.reg, MessagesPerSecond: 1 << 20}
	if mod != nil {
		mod(&cfg)
	}
	var js jetstream.JetStream = ns.JS
	if wrap != nil {
		js = wrap(js)
	}
	gw, err := New(ctx, cfg, ns.NC, js)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.gw, e.addr = gw, ln.Addr().String()
	served := make(chan error, 1)
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", PageHandler())
	mux.Handle("GET /metrics", promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"healthy":true}`)) })
	go func() { served <- gw.Serve(ln, mux) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gw.Shutdown(sctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (e *testEnv) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ordersShape is the test table: one column of each type filters compare.
func ordersShape() schema.Shape {
	return schema.Shape{DB: testDB, Schema: "public", Table: "orders", Version: 1, LSN: "0/1", ReplicaIdentity: "default",
		Columns: []schema.ShapeColumn{
			{Name: "id", Type: "int8", TypeOID: 20, Key: true},
			{Name: "status", Type: "text", TypeOID: 25},
			{Name: "total", Type: "numeric", TypeOID: 1700},
			{Name: "paid", Type: "bool", TypeOID: 16},
			{Name: "created", Type: "timestamptz", TypeOID: 1184},
			{Name: "tenant", Type: "text", TypeOID: 25},
			{Name: "notes", Type: "text", TypeOID: 25},
		}}
}

// putShape declares a table in the schema registry, as the reader does.
func (e *testEnv) putShape(s schema.Shape) {
	e.t.Helper()
	ctx := testCtx(e.t)
	reg, err := stream.OpenRegistry(ctx, e.nats.JS, "", 1)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := json.Marshal(s)
	key := stream.SchemaKey(s.DB, s.Schema, s.Table)
	_, rev, _, err := reg.Get(ctx, key)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := reg.Put(ctx, key, b, rev); err != nil {
		e.t.Fatal(err)
	}
	if e.gw != nil {
		e.waitFor("shape "+s.Table+" loaded", func() bool {
			ti := e.gw.cat.TableIn(s.DB, s.Schema, s.Table)
			return ti != nil && len(ti.Shape.Columns) == len(s.Columns) && ti.Shape.Version == s.Version
		})
	}
}

// publish stores one event of public.orders the way the reader does and
// returns its stream sequence. row is the data (old for delete).
func (e *testEnv) publish(op string, row map[string]any, extra ...string) uint64 {
	e.t.Helper()
	return e.publishTo("orders", op, row, extra...)
}

func (e *testEnv) publishTo(table, op string, row map[string]any, extra ...string) uint64 {
	e.t.Helper()
	n := e.ids.Add(1)
	id := fmt.Sprintf("%016X-%04X", n, 1)
	env := map[string]any{"id": id, "op": op, "db": testDB, "schema": "public", "table": table,
		"lsn": "0/1", "xid": n, "commit_time": "2026-11-22T07:00:00.123456Z"}
	if row != nil {
		env["key"] = map[string]any{"id": row["id"]}
		switch op {
		case schema.OpDelete:
			env["old"] = row
		case schema.OpTruncate:
			delete(env, "key")
		default:
			env["data"] = row
		}
	}
	for i := 0; i+1 < len(extra); i += 2 {
		var v any
		if err := json.Unmarshal([]byte(extra[i+1]), &v); err != nil {
			e.t.Fatal(err)
		}
		env[extra[i]] = v
	}
	b, _ := json.Marshal(env)
	return e.publishRaw(stream.ChangeSubject("tablecast", testDB, "public", table, op), id, b)
}

func (e *testEnv) publishRaw(subject, id string, data []byte) uint64 {
	e.t.Helper()
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	if id != "" {
		msg.Header.Set(jetstream.MsgIDHeader, id)
	}
	ack, err := e.nats.JS.PublishMsg(testCtx(e.t), msg)
	if err != nil {
		e.t.Fatal(err)
	}
	return ack.Sequence
}

// metric returns the current value of one of the gateway's metrics.
func (e *testEnv) metric(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// client is a WebSocket client of the test.
type client struct {
	t  testing.TB
	ws *websocket.Conn
}

// dial connects to path ("/ws", "/ws/tables/…") for the test that started
// the gateway; hdr holds header name, value pairs.
func (e *testEnv) dial(path string, hdr ...string) *client {
	e.t.Helper()
	return e2eDial(e.t, e, path, hdr...)
}

func (c *client) sendRaw(s string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(string(b))
}

// frame is a server frame, decoded.
type frame struct {
	Type    string          `json:"type"`
	ID      string          `json:"id"`
	Seq     uint64          `json:"seq"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Event   json.RawMessage `json:"event"`
	Topic   string          `json:"topic"`
	Data    json.RawMessage `json:"data"`
	Tables  []string        `json:"tables"`
	Topics  []string        `json:"topics"`
	raw     string
}

// event decodes the event of an event frame.
func (f frame) event() map[string]any {
	var m map[string]any
	_ = json.Unmarshal(f.Event, &m)
	return m
}

// read returns the next frame, failing the test after timeout.
func (c *client) read(timeout time.Duration) frame {
	c.t.Helper()
	f, err := c.tryRead(timeout)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

func (c *client) tryRead(timeout time.Duration) (frame, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	typ, b, err := c.ws.Read(ctx)
	if err != nil {
		return frame{}, err
	}
	if typ != websocket.MessageText {
		return frame{}, fmt.Errorf("got a %v frame", typ)
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		return frame{}, fmt.Errorf("frame %s is not JSON: %v", b, err)
	}
	f.raw = string(b)
	return f, nil
}

// expect reads the next frame and checks its type (and id when given).
func (c *client) expect(typ, id string) frame {
	c.t.Helper()
	f := c.read(10 * time.Second)
	if f.Type != typ || (id != "" && f.ID != id) {
		c.t.Fatalf("got %s, want a %s frame for %q", f.raw, typ, id)
	}
	return f
}

// expectError reads an error frame with code.
func (c *client) expectError(code ErrorCode, id string) frame {
	c.t.Helper()
	f := c.expect("error", id)
	if f.Code != string(code) {
		c.t.Fatalf("got %s, want error %s", f.raw, code)
	}
	if f.Message == "" {
		c.t.Fatalf("error frame without a message: %s", f.raw)
	}
	return f
}

// expectQuiet checks that no frame arrives within d.
func (c *client) expectQuiet(d time.Duration) {
	c.t.Helper()
	if f, err := c.tryRead(d); err == nil {
		c.t.Fatalf("unexpected frame %s", f.raw)
	}
}

// sync sends a ping and reads frames up to its pong, returning them: every
// message sent before has been handled when it returns.
func (c *client) sync() []frame {
	c.t.Helper()
	c.send(map[string]any{"type": "ping"})
	var got []frame
	for {
		f := c.read(10 * time.Second)
		if f.Type == "pong" {
			return got
		}
		got = append(got, f)
	}
}

// expectClose reads until the connection closes and checks the close code.
func (c *client) expectClose(code CloseCode) string {
	c.t.Helper()
	for {
		_, err := c.tryRead(20 * time.Second)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			c.t.Fatalf("connection ended with %v, want close %d", err, code)
		}
		if int(ce.Code) != int(code) {
			c.t.Fatalf("closed with %d %q, want %d", ce.Code, ce.Reason, code)
		}
		if ce.Reason == "" {
			c.t.Fatalf("close %d without a reason", code)
		}
		return ce.Reason
	}
}

// subscribe sends a subscribe message and returns the subscribed frame.
func (c *client) subscribe(msg map[string]any) frame {
	c.t.Helper()
	msg["type"] = "subscribe"
	c.send(msg)
	id, _ := msg["id"].(string)
	return c.expect("subscribed", id)
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
