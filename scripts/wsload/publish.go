//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// PostgreSQL type OIDs of the bench table's columns.
const (
	oidInt8 = 20
	oidText = 25
)

// publisher publishes row-change envelopes for one table straight into
// JetStream, as the CDC reader would.
type publisher struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	subject string
	cfg     config
	run     uint64 // makes event ids unique across runs (JetStream drops duplicate ids)
	pad     string

	errMu    sync.Mutex
	firstErr error
	errs     atomic.Int64
}

// newPublisher connects to NATS, makes sure the stream exists and registers
// the table's shape (id bigint key, v text) in the schema registry.
func newPublisher(ctx context.Context, cfg config) (*publisher, error) {
	p := &publisher{
		cfg:     cfg,
		subject: stream.ChangeSubject(cfg.prefix, cfg.db, cfg.schemaName, cfg.tableName, schema.OpCreate),
		run:     uint64(time.Now().UnixNano()),
		pad:     strings.Repeat("x", cfg.size),
	}
	nc, err := nats.Connect(cfg.natsURL, nats.Name("tablecast-wsload"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", cfg.natsURL, err)
	}
	p.nc = nc
	p.js, err = jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			p.errs.Add(1)
			p.errMu.Lock()
			if p.firstErr == nil {
				p.firstErr = err
			}
			p.errMu.Unlock()
		}))
	if err != nil {
		nc.Close()
		return nil, err
	}
	// The gateway (or tablecast run) creates the stream; create it only if
	// it is missing, and never change one that exists.
	if _, err := p.js.Stream(ctx, cfg.stream); errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = stream.EnsureStream(ctx, p.js, stream.StreamConfig{Name: cfg.stream, Prefix: cfg.prefix})
		if err != nil {
			nc.Close()
			return nil, err
		}
	} else if err != nil {
		nc.Close()
		return nil, fmt.Errorf("look up stream %s: %w", cfg.stream, err)
	}
	if err := p.registerShape(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return p, nil
}

func (p *publisher) registerShape(ctx context.Context) error {
	reg, err := stream.OpenRegistry(ctx, p.js, "", 1)
	if err != nil {
		return err
	}
	shape := schema.Shape{
		DB: p.cfg.db, Schema: p.cfg.schemaName, Table: p.cfg.tableName, Version: 1, LSN: "0/1",
		ReplicaIdentity: "default",
		Columns: []schema.ShapeColumn{
			{Name: "id", Type: "bigint", TypeOID: oidInt8, Key: true},
			{Name: "v", Type: "text", TypeOID: oidText},
		},
	}
	key := stream.SchemaKey(p.cfg.db, p.cfg.schemaName, p.cfg.tableName)
	old, rev, found, err := reg.Get(ctx, key)
	if err != nil {
		return err
	}
	if found {
		var have schema.Shape
		if json.Unmarshal(old, &have) == nil && have.SameAs(shape) {
			return nil
		}
		shape.Version = have.Version + 1
	}
	val, err := json.Marshal(shape)
	if err != nil {
		return err
	}
	return reg.Put(ctx, key, val, rev)
}

// publish sends event k asynchronously (ack awaited by flush).
func (p *publisher) publish(k int) error {
	id := fmt.Sprintf("%016X-%08d", p.run, k)
	b := make([]byte, 0, 256+len(p.pad))
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","op":"create","db":`...)
	b = strconv.AppendQuote(b, p.cfg.db)
	b = append(b, `,"schema":`...)
	b = strconv.AppendQuote(b, p.cfg.schemaName)
	b = append(b, `,"table":`...)
	b = strconv.AppendQuote(b, p.cfg.tableName)
	b = append(b, `,"lsn":"0/1","xid":1,"commit_time":"`...)
	b = time.Now().UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, `","key":{"id":`...)
	b = strconv.AppendInt(b, int64(k), 10)
	b = append(b, `},"data":{"id":`...)
	b = strconv.AppendInt(b, int64(k), 10)
	b = append(b, `,"v":"`...)
	b = append(b, p.pad...)
	b = append(b, `"}}`...)
	msg := &nats.Msg{Subject: p.subject, Header: nats.Header{jetstream.MsgIDHeader: []string{id}}, Data: b}
	if _, err := p.js.PublishMsgAsync(msg); err != nil {
		return fmt.Errorf("publish event %d: %w", k, err)
	}
	return nil
}

// flush waits for every acknowledgement and reports failed publishes.
func (p *publisher) flush(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case <-p.js.PublishAsyncComplete():
	case <-ctx.Done():
		return fmt.Errorf("%d publishes still unacknowledged: %w", p.js.PublishAsyncPending(), ctx.Err())
	}
	if n := p.errs.Load(); n > 0 {
		p.errMu.Lock()
		defer p.errMu.Unlock()
		return fmt.Errorf("%d publishes failed, the first with: %w", n, p.firstErr)
	}
	return nil
}

func (p *publisher) close() { p.nc.Close() }

func runFanout(ctx context.Context, cfg config, pc poolConfig, out *report) error {
	pub, err := newPublisher(ctx, cfg)
	if err != nil {
		return err
	}
	defer pub.close()
	if err := waitTable(ctx, cfg, pc); err != nil {
		return err
	}
	total := cfg.warmup + cfg.events
	arr := newArrivals(total)
	pc.arrivals = arr
	p, err := connect(cfg, pc, cfg.n, out)
	if err != nil {
		return err
	}
	defer p.close()
	n := p.alive()
	arr.expect.Store(n)
	g0, gerr := scrapeFrames(cfg.metrics)

	var last, first []time.Duration
	u0, t0 := startUsage(cfg.pid), time.Now()
	for k := 1; k <= total; k++ {
		sent := time.Now().UnixNano()
		if err := pub.publish(k); err != nil {
			return err
		}
		timeout := time.NewTimer(10 * time.Second)
		select {
		case got := <-arr.done:
			timeout.Stop()
			if got != k {
				return fmt.Errorf("event %d: connections completed message %d instead; were frames lost or duplicated?", k, got)
			}
		case <-timeout.C:
			s := &arr.slots[k]
			return fmt.Errorf("event %d reached %d of %d connections within 10s (%d connections closed: %s)",
				k, s.n.Load(), n, n-p.alive(), p.fails.summary())
		case <-ctx.Done():
			return ctx.Err()
		}
		if k > cfg.warmup {
			s := &arr.slots[k]
			last = append(last, time.Duration(s.last.Load()-sent))
			first = append(first, time.Duration(s.first.Load()-sent))
		}
		time.Sleep(cfg.pause)
	}
	wall := time.Since(t0)
	if err := pub.flush(ctx); err != nil {
		return err
	}
	out.kv("events", cfg.events)
	out.kv("fanout_p50_ms", ms(percentile(last, 0.50)))
	out.kv("fanout_p99_ms", ms(percentile(last, 0.99)))
	out.kv("fanout_max_ms", ms(slices.Max(last)))
	out.kv("first_p50_ms", ms(percentile(first, 0.50)))
	if gerr == nil {
		if g1, err := scrapeFrames(cfg.metrics); err == nil {
			out.kv("gateway_frames", fmt.Sprintf("%.0f", g1-g0))
		}
	}
	out.kv("frames", p.frames())
	out.kv("closed", n-p.alive())
	u0.report(out, wall)
	return nil
}

func runThroughput(ctx context.Context, cfg config, pc poolConfig, out *report) error {
	pub, err := newPublisher(ctx, cfg)
	if err != nil {
		return err
	}
	defer pub.close()
	if err := waitTable(ctx, cfg, pc); err != nil {
		return err
	}
	pc.coalesce = cfg.coalesce
	p, err := connect(cfg, pc, cfg.n, out)
	if err != nil {
		return err
	}
	defer p.close()
	n := p.alive()
	window := int64(cfg.window)
	if window <= 0 {
		window = min(max(200_000/n, 4), 1000)
	}
	g0, gerr := scrapeFrames(cfg.metrics)
	f0, b0, pings0 := p.frames(), p.bytes(), p.pings()

	u0, t0 := startUsage(cfg.pid), time.Now()
	end := t0.Add(cfg.duration)
	var published int64
	for time.Now().Before(end) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		alive := max(p.alive(), 1)
		done := (p.frames() - f0) / alive
		for published-done < window {
			published++
			if err := pub.publish(int(published)); err != nil {
				return err
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	// Let the frames of the events already published arrive, for as long
	// as they keep coming.
	for last, lastAt := p.frames(), time.Now(); p.frames()-f0 < published*p.alive() && time.Since(lastAt) < 5*time.Second; {
		time.Sleep(time.Millisecond)
		if f := p.frames(); f != last {
			last, lastAt = f, time.Now()
		}
	}
	frames := p.frames() - f0
	last := time.Unix(0, p.lastData())
	wall := last.Sub(t0)
	if err := pub.flush(ctx); err != nil {
		return err
	}
	out.kv("window", window)
	out.kv("events", published)
	out.kv("frames", frames)
	out.kv("missing_frames", published*n-frames)
	out.kv("seconds", fmt.Sprintf("%.2f", wall.Seconds()))
	out.kv("frames_per_s", fmt.Sprintf("%.0f", float64(frames)/wall.Seconds()))
	out.kv("events_per_s", fmt.Sprintf("%.0f", float64(published)/wall.Seconds()))
	out.kv("mib_per_s", fmt.Sprintf("%.1f", float64(p.bytes()-b0)/wall.Seconds()/(1<<20)))
	if gerr == nil {
		if g1, err := scrapeFrames(cfg.metrics); err == nil {
			out.kv("gateway_frames", fmt.Sprintf("%.0f", g1-g0))
			out.kv("gateway_frames_per_s", fmt.Sprintf("%.0f", (g1-g0)/wall.Seconds()))
		}
	}
	out.kv("pings", p.pings()-pings0)
	out.kv("closed", n-p.alive())
	cpu := u0.report(out, wall)
	out.kv("wsload_ns_per_frame", fmt.Sprintf("%.0f", float64(cpu.Nanoseconds())/float64(max(frames, 1))))
	if c := n - p.alive(); c > 0 {
		return fmt.Errorf("%d connections were closed while measuring: %s", c, p.fails.summary())
	}
	if missing := published*n - frames; missing != 0 {
		return fmt.Errorf("%d of %d frames did not arrive (none came for 5s), though every connection is open", missing, published*n)
	}
	return nil
}

// scrapeFrames reads tablecast_gateway_frames_sent_total from /metrics.
func scrapeFrames(metricsURL string) (float64, error) {
	if metricsURL == "" {
		return 0, errors.New("no -metrics URL")
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(metricsURL)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", metricsURL, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "tablecast_gateway_frames_sent_total "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no tablecast_gateway_frames_sent_total", metricsURL)
}

// percentile returns the q-quantile of d (nearest rank).
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
