package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/stream"
)

// TestJSClient runs the tests of the JavaScript client (clients/js/test,
// with Node's own test runner) against the real thing: `tablecast cdc` with
// its embedded NATS reading a PostgreSQL database and publishing
// transaction markers, and four `tablecast gateway` processes on that NATS
// with HS256 tokens: one allowing 2 messages a second, one told of the
// markers that cuts transaction frames at 25 events (the others are told
// the markers are off, and refuse batches as such a gateway does). The
// Node tests drive the scenario through a control endpoint of this test:
// SQL (and queries, answered as JSON), waiting for the row state, writers that insert numbered rows (several per transaction when
// asked), stopping, killing and starting a gateway on the same address,
// and rolling the stream past a sequence with its retention. Node failing fails this test;
// without node it is skipped, except under CI=true, where it fails.
func TestJSClient(t *testing.T) {
	t.Parallel() // see "Parallel tests" in main_test.go
	node := nodeForTests(t)
	c := pgtestRequire(t)
	dbName, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `
		CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric);
		CREATE TABLE ticks (n int PRIMARY KEY);
		CREATE TABLE expiry (n int PRIMARY KEY);
		CREATE TABLE beats (n int PRIMARY KEY);
		CREATE TABLE swaps (n int PRIMARY KEY);
		CREATE TABLE hist (n int PRIMARY KEY);
		CREATE TABLE vrows (id int PRIMARY KEY, n int NOT NULL);
		CREATE TABLE batched (n int PRIMARY KEY, pad text);
		CREATE TABLE batchw (n int PRIMARY KEY);
		CREATE TABLE bview (id int PRIMARY KEY, n int NOT NULL);
		CREATE TABLE vcut (id int PRIMARY KEY, n int NOT NULL);
		INSERT INTO bview SELECT g, g FROM generate_series(1, 20) g;
		INSERT INTO vrows SELECT g, g FROM generate_series(1, 50) g`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_js_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	natsAddr := freeAddr(t)
	cdcEnv := append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_js",
		"TABLECAST_HTTP_ADDR="+freeAddr(t), "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_HEARTBEAT_INTERVAL=1s", "TABLECAST_TX_MARKERS=true")
	startKeep(t, cdcEnv, "cdc")
	js := jetStreamAt(t, "nats://"+natsAddr)
	// The gateways know a table once the reader has registered its shape.
	waitFor(t, 2*time.Minute, "the reader to register the tables", func() bool {
		kv, err := js.KeyValue(context.Background(), "TABLECAST_SCHEMAS")
		if err != nil {
			return false
		}
		_, err = kv.Get(context.Background(), dbName+".public.hist")
		return err == nil
	})

	secret := "a-secret-of-at-least-32-bytes-for-the-js-client"
	gwEnv := append(baseEnv(), "TABLECAST_NATS_URL=nats://"+natsAddr, "TABLECAST_JWT_SECRET="+secret)
	gateways := map[string]*jsGateway{}
	for name, extra := range map[string][]string{
		"main":    nil,
		"limited": {"TABLECAST_WS_MESSAGES_PER_SECOND=2"},
		"refresh": nil,
		"batch":   {"TABLECAST_TX_MARKERS=true", "TABLECAST_WS_BATCH_EVENTS=25"},
	} {
		g := &jsGateway{t: t, addr: freeAddr(t)}
		g.env = append(append(append([]string{}, gwEnv...), extra...), "TABLECAST_HTTP_ADDR="+g.addr)
		if err := g.start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := g.stop("TERM"); err != nil {
				t.Error(err)
			}
		})
		gateways[name] = g
	}
	for name, g := range gateways {
		waitFor(t, time.Minute, "/readyz of gateway "+name, func() bool {
			code, _, err := httpGet("http://" + g.addr + "/readyz")
			return err == nil && code == 200
		})
	}

	ctl := &jsControl{t: t, url: url, conn: conn, js: js, db: dbName, gateways: gateways, writers: map[string]*jsWriter{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: ctl, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); ctl.stopWriters() })

	dir, err := filepath.Abs("../../clients/js")
	if err != nil {
		t.Fatal(err)
	}
	// TABLECAST_JS_TESTS narrows the run to the files it names (a glob of
	// their names without ".test.mjs": "batch", "[bu]*"), to run
	// one file again and again while working on it.
	pattern := "*"
	if p := os.Getenv("TABLECAST_JS_TESTS"); p != "" {
		pattern = p
	}
	files, err := filepath.Glob(filepath.Join(dir, "test", pattern+".test.mjs"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no tests %s.test.mjs in %s/test: %v", pattern, dir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Every file at once: the token tests wait out a token's expiry
	// beside the others.
	args := append([]string{"--experimental-websocket", "--test", "--test-reporter=spec", "--test-concurrency=" + strconv.Itoa(len(files))}, files...)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = dir
	cmd.Env = append(baseEnv(),
		"TCTEST_HTTP=http://"+gateways["main"].addr,
		"TCTEST_WS=ws://"+gateways["main"].addr+"/ws",
		"TCTEST_LIMITED_WS=ws://"+gateways["limited"].addr+"/ws",
		"TCTEST_REFRESH_WS=ws://"+gateways["refresh"].addr+"/ws",
		"TCTEST_BATCH_WS=ws://"+gateways["batch"].addr+"/ws",
		"TCTEST_SECRET="+secret,
		"TCTEST_CONTROL=http://"+ln.Addr().String(),
		"NO_COLOR=1", "npm_config_update_notifier=false")
	out, err := cmd.CombinedOutput()
	t.Logf("node %s:\n%s", strings.Join(args, " "), out)
	if ctx.Err() != nil {
		t.Fatal("the Node tests did not finish within 5 minutes")
	}
	if err != nil {
		t.Fatalf("the Node tests failed: %v (their output is above)", err)
	}
	if !regexp.MustCompile(`(?m)^ℹ fail 0$`).Match(out) || !regexp.MustCompile(`(?m)^ℹ pass [1-9]`).Match(out) {
		t.Fatal("the Node tests' summary does not say that tests passed and none failed")
	}
	if regexp.MustCompile(`(?m)^ℹ skipped [1-9]`).Match(out) {
		t.Fatal("Node tests were skipped: the end-to-end ones must run here")
	}
}

// nodeForTests is the node binary for the JavaScript client's tests: 20.10
// or later (--experimental-websocket, --test-concurrency). Without it the
// test is skipped, but under CI=true, where it fails.
func nodeForTests(t *testing.T) string {
	t.Helper()
	missing := func(why string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: the JavaScript client's tests need Node.js 20.10 or later", why)
		}
		t.Skipf("%s: the JavaScript client's tests need Node.js 20.10 or later", why)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("no node in PATH")
	}
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		missing("node --version: " + err.Error())
	}
	var major, minor int
	if _, err := fmt.Sscanf(strings.TrimSpace(string(out)), "v%d.%d", &major, &minor); err != nil || major < 20 || major == 20 && minor < 10 {
		missing("node " + strings.TrimSpace(string(out)))
	}
	return node
}

// jsGateway is a `tablecast gateway` that the Node tests stop and start
// again on the same address.
type jsGateway struct {
	t    *testing.T
	addr string
	env  []string

	mu sync.Mutex
	p  *process // nil while stopped
}

func (g *jsGateway) start() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.p != nil {
		return errors.New("already running")
	}
	p := &process{cmd: exec.Command(binary(g.t), "gateway"), exited: make(chan struct{})}
	p.cmd.Env = g.env
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		return err
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	g.p = p
	return nil
}

// stop ends the gateway: TERM (it closes its clients with 1001) or KILL
// (their connections just break).
func (g *jsGateway) stop(signal string) error {
	g.mu.Lock()
	p := g.p
	g.p = nil
	g.mu.Unlock()
	if p == nil {
		return nil
	}
	if signal == "KILL" {
		_ = p.cmd.Process.Kill()
		<-p.exited
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			return fmt.Errorf("the gateway did not exit cleanly on SIGTERM: %v", p.err)
		}
		return nil
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return errors.New("the gateway did not stop within 20s of SIGTERM")
	}
}

// jsWriter inserts rows numbered 1, 2, … into a table, each in its own
// transaction or rows at a time in one, until stopped.
type jsWriter struct {
	stop chan struct{}
	done chan struct{}
	last int
	err  error
}

// jsControl is the Node tests' handle on the world around the client.
type jsControl struct {
	t        *testing.T
	url      string
	db       string
	js       jetstream.JetStream
	gateways map[string]*jsGateway

	connMu sync.Mutex
	conn   *pgx.Conn

	mu      sync.Mutex
	writers map[string]*jsWriter
}

var jsTableName = regexp.MustCompile(`^[a-z]+$`)

func (c *jsControl) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	q := r.URL.Query()
	answer := func(v any, err error) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	gateway := func() (*jsGateway, error) {
		g := c.gateways[q.Get("name")]
		if g == nil {
			return nil, fmt.Errorf("no gateway %q", q.Get("name"))
		}
		return g, nil
	}
	switch r.URL.Path {
	case "/sql": // the body, on the test database
		body, _ := io.ReadAll(r.Body)
		c.connMu.Lock()
		_, err := c.conn.Exec(ctx, string(body))
		c.connMu.Unlock()
		answer(nil, err)
	case "/query": // the body, a SELECT on the test database → its rows, [{"column": value, …}, …]
		body, _ := io.ReadAll(r.Body)
		c.connMu.Lock()
		rows, err := c.conn.Query(ctx, string(body))
		var got []map[string]any
		if err == nil {
			got, err = pgx.CollectRows(rows, pgx.RowToMap)
		}
		c.connMu.Unlock()
		if got == nil {
			got = []map[string]any{}
		}
		answer(got, err)
	case "/writer/start": // ?table=ticks&every=20ms[&rows=3]: rows per transaction, 1 by default
		every, err := time.ParseDuration(q.Get("every"))
		rows := 1
		if err == nil && q.Has("rows") {
			rows, err = strconv.Atoi(q.Get("rows"))
			if err == nil && rows < 1 {
				err = errors.New("rows must be positive")
			}
		}
		if err != nil || !jsTableName.MatchString(q.Get("table")) {
			answer(nil, fmt.Errorf("want ?table=<name>&every=<duration>[&rows=<n>]: %v", err))
			return
		}
		answer(nil, c.startWriter(q.Get("table"), every, rows))
	case "/writer/stop": // ?table=ticks → {"last": n}
		last, err := c.stopWriter(q.Get("table"))
		answer(map[string]int{"last": last}, err)
	case "/gateway/stop": // ?name=main&signal=KILL|TERM
		g, err := gateway()
		if err == nil {
			err = g.stop(q.Get("signal"))
		}
		answer(nil, err)
	case "/gateway/start": // ?name=main, on its address; not waiting until it is ready
		g, err := gateway()
		if err == nil {
			err = g.start()
		}
		answer(nil, err)
	case "/stream/wait": // ?table=hist&n=4 → {"seq": …} of row n's create, once in the stream
		n, err := strconv.Atoi(q.Get("n"))
		if err != nil || !jsTableName.MatchString(q.Get("table")) {
			answer(nil, fmt.Errorf("want ?table=<name>&n=<row>: %v", err))
			return
		}
		seq, err := c.waitRow(ctx, q.Get("table"), n)
		answer(map[string]uint64{"seq": seq}, err)
	case "/rowstate/wait": // ?seq=N: until the row state has applied the events up to N
		seq, err := strconv.ParseUint(q.Get("seq"), 10, 64)
		if err != nil {
			answer(nil, err)
			return
		}
		answer(nil, c.waitRowState(ctx, seq))
	case "/stream/roll": // ?past=N: the stream's retention drops every event up to N
		past, err := strconv.ParseUint(q.Get("past"), 10, 64)
		if err != nil {
			answer(nil, err)
			return
		}
		answer(nil, c.rollPast(ctx, past))
	default:
		http.NotFound(w, r)
	}
}

func (c *jsControl) startWriter(table string, every time.Duration, rows int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writers[table] != nil {
		return fmt.Errorf("a writer of %s is running", table)
	}
	conn, err := pgx.Connect(context.Background(), c.url)
	if err != nil {
		return err
	}
	wr := &jsWriter{stop: make(chan struct{}), done: make(chan struct{})}
	c.writers[table] = wr
	go func() {
		defer close(wr.done)
		defer conn.Close(context.Background())
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-wr.stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := conn.Exec(ctx, `INSERT INTO `+table+` (n) SELECT generate_series($1::int, $2::int)`, wr.last+1, wr.last+rows)
			cancel()
			if err != nil {
				wr.err = fmt.Errorf("insert rows %d to %d into %s: %w", wr.last+1, wr.last+rows, table, err)
				return
			}
			wr.last += rows
		}
	}()
	return nil
}

func (c *jsControl) stopWriter(table string) (int, error) {
	c.mu.Lock()
	wr := c.writers[table]
	delete(c.writers, table)
	c.mu.Unlock()
	if wr == nil {
		return 0, fmt.Errorf("no writer of %q", table)
	}
	close(wr.stop)
	<-wr.done
	return wr.last, wr.err
}

func (c *jsControl) stopWriters() {
	c.mu.Lock()
	var tables []string
	for table := range c.writers {
		tables = append(tables, table)
	}
	c.mu.Unlock()
	for _, table := range tables {
		_, _ = c.stopWriter(table)
	}
}

// waitRow waits until the last create event of table in the stream is row
// n's, and returns its sequence.
func (c *jsControl) waitRow(ctx context.Context, table string, n int) (uint64, error) {
	str, err := c.js.Stream(ctx, "TABLECAST")
	if err != nil {
		return 0, err
	}
	subject := stream.ChangeSubject("tablecast", c.db, "public", table, "create")
	for {
		m, err := str.GetLastMsgForSubject(ctx, subject)
		if err == nil {
			var e struct {
				Data struct {
					N int `json:"n"`
				} `json:"data"`
			}
			if json.Unmarshal(m.Data, &e) == nil && e.Data.N == n {
				return m.Sequence, nil
			}
		} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("row %d of %s is not in the stream: %w", n, table, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitRowState waits until the row state has applied the events up to seq.
func (c *jsControl) waitRowState(ctx context.Context, seq uint64) error {
	for {
		rows, err := c.js.Stream(ctx, rowstate.RowsStreamName("TABLECAST"))
		if err == nil {
			var mk rowstate.DBMarker
			if mk, err = rowstate.ReadDBMarker(ctx, rows, "tablecast", c.db); err == nil && mk.Applied >= seq {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the row state has not applied event %d (%v): %w", seq, err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// rollPast makes the stream drop every message up to seq, as its retention
// does: with a size limit of 1 MiB for a while, filled with 4 KiB events of
// another table, then the limit it had.
func (c *jsControl) rollPast(ctx context.Context, seq uint64) error {
	str, err := c.js.Stream(ctx, "TABLECAST")
	if err != nil {
		return err
	}
	info, err := str.Info(ctx)
	if err != nil {
		return err
	}
	cfg := info.Config
	small := cfg
	small.MaxBytes = 1 << 20
	if _, err := c.js.UpdateStream(ctx, small); err != nil {
		return fmt.Errorf("limit the stream: %w", err)
	}
	defer func() { _, _ = c.js.UpdateStream(context.Background(), cfg) }()
	subject := stream.ChangeSubject("tablecast", c.db, "public", "filler", "create")
	body := []byte(`{"op":"create","data":{"pad":"` + strings.Repeat("y", 4000) + `"}}`)
	for {
		info, err := str.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.FirstSeq > seq {
			return nil
		}
		for range 64 {
			if _, err := c.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: bytes.Clone(body)}); err != nil {
				return fmt.Errorf("publish filler: %w", err)
			}
		}
	}
}
