//go:build linux

// Command wsload is the WebSocket load client of scripts/bench-gateway.sh.
// It holds thousands of subscribed connections to the gateway in one
// process, cheaply enough not to be the bottleneck: a couple of epoll event
// loops own every connection, read with one 64 KiB buffer each, and walk
// frame headers without decoding the JSON inside (see client.go). A
// connection keeps a partial frame header and the length still to come.
//
// Modes:
//
//	idle        connect -n clients, subscribe, print "ready N", then hold them
//	            (answering pings) until SIGTERM/SIGINT, or EOF on stdin when
//	            stdin is a pipe. Given -nats, it registers the table first.
//	fanout      connect -n clients, then publish -events single events into
//	            JetStream one at a time, each once the previous one has
//	            reached every client: publish → last client's receipt.
//	throughput  connect -n clients, then publish for -duration, keeping at
//	            most -window events not yet received by every client; count
//	            the frames received per second. Connections are read at most
//	            every -coalesce (10ms), so that one read takes several frames.
//	e2e         insert rows into PostgreSQL (-pg) at -rate, each row its own
//	            transaction (synchronous_commit=on) carrying its insert time
//	            (sent_ns), and measure commit (the event's commit_time) →
//	            receipt on -n clients subscribed to -table; given -nats, also
//	            commit → a plain NATS subscriber, the reader's share.
//
// fanout and throughput publish without PostgreSQL: wsload registers the
// table's shape (id bigint, v text) in the schema registry, so that the
// gateway knows it, and publishes envelopes to
// <prefix>.<db>.<schema>.<table>.create itself.
//
// Results are key=value lines on stdout; errors go to stderr, and the exit
// status is 1 when a connection fails or closes, or a frame is missing.
// Every measuring mode reports the CPU wsload used (wsload_cpu_pct, of one
// core), the gateway's (-pid), how busy the machine was and its busiest
// other processes, so a reader can tell a slow gateway from a busy machine
// or a saturated client.
//
// Client sockets can be bound to several loopback source addresses
// (-local 127.0.0.2-127.0.0.9): one address has about 28,000 ephemeral ports.
//
//	wsload -mode throughput -n 10000 -url ws://127.0.0.1:8080/ws \
//	  -nats nats://127.0.0.1:4222 -metrics http://127.0.0.1:8080/metrics -local 127.0.0.2-127.0.0.9
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tablecast/tablecast/schema"
)

type config struct {
	mode      string
	url       string
	n         int
	table     string // as given: schema.table
	urlSub    bool
	sel       string
	loops     int
	inflight  int
	timeout   time.Duration
	local     string
	metrics   string
	pid       int
	cpuProf   string
	readyWait time.Duration
	natsSet   bool // -nats given: idle mode registers the table's shape too

	schemaName, tableName string // -table parsed

	// fanout, throughput
	natsURL, prefix, stream, db string
	events, warmup              int
	pause                       time.Duration
	duration                    time.Duration
	window                      int
	coalesce                    time.Duration
	size                        int

	// e2e
	pg         string
	rate       float64
	pgConns    int
	syncCommit string
	series     time.Duration
	warm       time.Duration
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("wsload", flag.ContinueOnError)
	fs.StringVar(&c.mode, "mode", "idle", "idle, fanout, throughput or e2e")
	fs.StringVar(&c.url, "url", "ws://127.0.0.1:8080/ws", "the gateway's WebSocket URL (ws:// only; with -urlsub the path becomes /ws/tables/<table>)")
	fs.IntVar(&c.n, "n", 1000, "WebSocket connections")
	fs.StringVar(&c.table, "table", "public.bench", "table to subscribe to (schema.table)")
	fs.BoolVar(&c.urlSub, "urlsub", false, "subscribe by URL (/ws/tables/<table>?select=…) instead of a subscribe message")
	fs.StringVar(&c.sel, "select", "", "columns to select, comma-separated (default: all)")
	fs.IntVar(&c.loops, "loops", 2, "event loops (goroutines) holding the connections")
	fs.IntVar(&c.inflight, "inflight", 200, "handshakes in progress at once (bounded so as not to overrun the gateway's listen backlog)")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "per connection: connect, upgrade and subscribe within this")
	fs.StringVar(&c.local, "local", "", "local source addresses to spread connections over: a list (127.0.0.2,127.0.0.3) or a range (127.0.0.2-127.0.0.9); empty lets the kernel choose")
	fs.StringVar(&c.metrics, "metrics", "", "the gateway's /metrics URL, to read tablecast_gateway_frames_sent_total before and after measuring")
	fs.StringVar(&c.cpuProf, "cpuprofile", "", "write wsload's CPU profile to this file")
	fs.IntVar(&c.pid, "pid", 0, "the gateway's process id, to report the CPU it used while measuring")
	fs.DurationVar(&c.readyWait, "ready-wait", 20*time.Second, "how long to wait for the gateway to know the table (probe subscriptions)")
	fs.StringVar(&c.natsURL, "nats", "nats://127.0.0.1:4222", "NATS server to publish to (fanout, throughput); in idle mode, given explicitly, where to register the table's shape")
	fs.StringVar(&c.prefix, "prefix", "tablecast", "subject prefix (TABLECAST_SUBJECT_PREFIX)")
	fs.StringVar(&c.stream, "stream", "TABLECAST", "JetStream stream")
	fs.StringVar(&c.db, "db", "bench", "database name of the published events")
	fs.IntVar(&c.events, "events", 20, "fanout: events measured")
	fs.IntVar(&c.warmup, "warmup", 3, "fanout: events sent first and not measured")
	fs.DurationVar(&c.pause, "pause", 50*time.Millisecond, "fanout: pause between events")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "throughput, e2e: how long to measure")
	fs.IntVar(&c.window, "window", 0, "throughput: events published but not yet received by every client, at most (0: 200,000 frames' worth, between 4 and 1,000 events)")
	fs.DurationVar(&c.coalesce, "coalesce", 10*time.Millisecond, "throughput: pause each event loop this long after a round of reads, so that one read takes several frames and one epoll_wait many connections (wsload's CPU per frame falls from 4-6 µs to about 1 µs with 10,000 connections; frames wait up to this long); 0 reads each frame as it comes")
	fs.IntVar(&c.size, "size", 64, "fanout, throughput: bytes of the text column v of each event")
	fs.StringVar(&c.pg, "pg", "", "e2e: PostgreSQL URL")
	fs.Float64Var(&c.rate, "rate", 1000, "e2e: rows inserted per second")
	fs.IntVar(&c.pgConns, "pg-conns", 2, "e2e: PostgreSQL connections inserting (one backend commits about 7,000 single-row transactions a second on the benchmark machine)")
	// With synchronous_commit off (scripts/pg.sh's development setting), a
	// commit's WAL is flushed by the WAL writer up to wal_writer_delay
	// (200ms) later, and logical replication sends only flushed WAL: the
	// latency measured would be PostgreSQL's flush timer's.
	fs.StringVar(&c.syncCommit, "sync-commit", "on", "e2e: synchronous_commit of the inserting sessions (empty: the server's setting)")
	fs.DurationVar(&c.series, "series", 0, "e2e: print to stderr, per interval of this length, the rows committed and their worst latency (0: not)")
	fs.DurationVar(&c.warm, "warm", time.Second, "e2e: inserting for this long first, unmeasured")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	fs.Visit(func(f *flag.Flag) { c.natsSet = c.natsSet || f.Name == "nats" })
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var errs []error
	switch c.mode {
	case "idle", "fanout", "throughput", "e2e":
	default:
		errs = append(errs, fmt.Errorf("-mode %q: want idle, fanout, throughput or e2e", c.mode))
	}
	if c.n < 1 {
		errs = append(errs, fmt.Errorf("-n %d: want at least 1", c.n))
	}
	if c.loops < 1 || c.inflight < 1 {
		errs = append(errs, errors.New("-loops and -inflight must be at least 1"))
	}
	if c.mode == "e2e" && c.pg == "" {
		errs = append(errs, errors.New("-mode e2e needs -pg"))
	}
	if c.rate <= 0 || c.pgConns < 1 || c.events < 1 || c.warmup < 0 || c.duration <= 0 || c.size < 0 {
		errs = append(errs, errors.New("-rate, -pg-conns, -events and -duration must be positive, -warmup and -size not negative"))
	}
	var err error
	if c.schemaName, c.tableName, err = schema.ParseTableName(c.table); err != nil {
		errs = append(errs, fmt.Errorf("-table: %w", err))
	}
	return c, errors.Join(errs...)
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wsload:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	out := &report{w: os.Stdout}
	if cfg.cpuProf != "" {
		f, err := os.Create(cfg.cpuProf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "wsload:", err)
			os.Exit(2)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "wsload:", err)
			os.Exit(2)
		}
	}
	err = run(ctx, cfg, out)
	if cfg.cpuProf != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wsload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, out *report) error {
	pc, err := poolConfigFor(cfg)
	if err != nil {
		return err
	}
	switch cfg.mode {
	case "idle":
		return runIdle(ctx, cfg, pc, out)
	case "fanout":
		return runFanout(ctx, cfg, pc, out)
	case "throughput":
		return runThroughput(ctx, cfg, pc, out)
	default:
		return runE2E(ctx, cfg, pc, out)
	}
}

// poolConfigFor turns the flags into a pool configuration (without the
// mode's hooks).
func poolConfigFor(cfg config) (poolConfig, error) {
	u, err := url.Parse(cfg.url)
	if err != nil {
		return poolConfig{}, fmt.Errorf("-url: %w", err)
	}
	if u.Scheme != "ws" {
		return poolConfig{}, fmt.Errorf("-url %s: only ws:// is supported", cfg.url)
	}
	hostport := u.Host
	if u.Port() == "" {
		hostport = net.JoinHostPort(u.Hostname(), "80")
	}
	ta, err := net.ResolveTCPAddr("tcp4", hostport)
	if err != nil {
		return poolConfig{}, fmt.Errorf("-url: %w", err)
	}
	remote := &unix.SockaddrInet4{Port: ta.Port}
	copy(remote.Addr[:], ta.IP.To4())
	locals, err := parseLocals(cfg.local)
	if err != nil {
		return poolConfig{}, err
	}
	pc := poolConfig{
		remote:   remote,
		host:     u.Host,
		locals:   locals,
		loops:    cfg.loops,
		inflight: cfg.inflight,
		timeout:  cfg.timeout,
	}
	var cols []string
	if cfg.sel != "" {
		cols = strings.Split(cfg.sel, ",")
	}
	if cfg.urlSub {
		q := url.Values{}
		if cols != nil {
			q.Set("select", cfg.sel)
		}
		pc.target = "/ws/tables/" + url.PathEscape(cfg.table)
		if len(q) > 0 {
			pc.target += "?" + q.Encode()
		}
		return pc, nil
	}
	pc.target = u.EscapedPath()
	if pc.target == "" {
		pc.target = "/ws"
	}
	if u.RawQuery != "" {
		pc.target += "?" + u.RawQuery
	}
	msg := map[string]any{"type": "subscribe", "id": "s1", "table": cfg.table}
	if cols != nil {
		msg["select"] = cols
	}
	pc.subscribe, err = json.Marshal(msg)
	return pc, err
}

// parseLocals reads -local: "a,b,c" or "first-last" (IPv4, same /24).
func parseLocals(s string) ([]*unix.SockaddrInet4, error) {
	if s == "" {
		return nil, nil
	}
	var ips []net.IP
	if first, last, ok := strings.Cut(s, "-"); ok {
		a, b := net.ParseIP(first).To4(), net.ParseIP(last).To4()
		if a == nil || b == nil || !a[:3:3].Equal(b[:3]) || a[3] > b[3] {
			return nil, fmt.Errorf("-local %q: want first-last IPv4 addresses in one /24, first <= last", s)
		}
		for i := int(a[3]); i <= int(b[3]); i++ {
			ips = append(ips, net.IPv4(a[0], a[1], a[2], byte(i)).To4())
		}
	} else {
		for _, f := range strings.Split(s, ",") {
			ip := net.ParseIP(strings.TrimSpace(f)).To4()
			if ip == nil {
				return nil, fmt.Errorf("-local %q: %q is not an IPv4 address", s, f)
			}
			ips = append(ips, ip)
		}
	}
	out := make([]*unix.SockaddrInet4, len(ips))
	for i, ip := range ips {
		out[i] = &unix.SockaddrInet4{}
		copy(out[i].Addr[:], ip)
	}
	return out, nil
}

// connect opens n subscribed connections, reporting how long it took.
func connect(cfg config, pc poolConfig, n int, out *report) (*pool, error) {
	t0 := time.Now()
	cpu0 := cpuTime()
	p, err := dialPool(pc, n)
	if err != nil {
		return nil, err
	}
	d := time.Since(t0)
	out.kv("conns", n)
	out.kv("connect_s", fmt.Sprintf("%.2f", d.Seconds()))
	out.kv("connect_per_s", fmt.Sprintf("%.0f", float64(n)/d.Seconds()))
	out.kv("connect_cpu_s", fmt.Sprintf("%.2f", (cpuTime()-cpu0).Seconds()))
	return p, nil
}

// waitTable probes with one connection until the gateway accepts a
// subscription to the table (it learns tables from the schema registry,
// asynchronously).
func waitTable(ctx context.Context, cfg config, pc poolConfig) error {
	pc.loops, pc.capture, pc.onMessage, pc.arrivals = 1, 0, nil, nil
	deadline := time.Now().Add(cfg.readyWait)
	for {
		p, err := dialPool(pc, 1)
		if err == nil {
			p.close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the gateway did not accept a subscription to %s within %s: %w", cfg.table, cfg.readyWait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func runIdle(ctx context.Context, cfg config, pc poolConfig, out *report) error {
	if cfg.natsSet {
		pub, err := newPublisher(ctx, cfg)
		if err != nil {
			return err
		}
		pub.close()
	}
	if err := waitTable(ctx, cfg, pc); err != nil {
		return err
	}
	p, err := connect(cfg, pc, cfg.n, out)
	if err != nil {
		return err
	}
	defer p.close()
	out.kv("wsload_rss_kib", rssKiB())
	out.line(fmt.Sprintf("ready %d", p.alive()))

	stdinDone := make(chan struct{})
	if fi, err := os.Stdin.Stat(); err == nil && fi.Mode()&os.ModeNamedPipe != 0 {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(stdinDone)
		}()
	}
	cpu0, t0 := cpuTime(), time.Now()
	select {
	case <-ctx.Done():
	case <-stdinDone:
	}
	// Report on stderr: the caller has what it wanted from stdout.
	fmt.Fprintf(os.Stderr, "wsload: idle %d connections for %s: %d still open, %d pings answered, %.2fs CPU\n",
		cfg.n, time.Since(t0).Round(time.Second), p.alive(), p.pings(), (cpuTime() - cpu0).Seconds())
	if lost := int64(cfg.n) - p.alive(); lost > 0 {
		return fmt.Errorf("%d connections were closed while idle: %s", lost, p.fails.summary())
	}
	return nil
}

// report prints key=value lines.
type report struct{ w io.Writer }

func (r *report) kv(key string, value any) { fmt.Fprintf(r.w, "%s=%v\n", key, value) }
func (r *report) line(s string)            { fmt.Fprintln(r.w, s) }

// rssKiB is this process's resident memory.
func rssKiB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}
