//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"

	"github.com/tablecast/tablecast/stream"
)

// insertTick is how often each inserting connection sends the rows that
// are due, each its own transaction, in one pipeline: at 10,000 rows/s, 50
// rows per tick. A shorter tick costs wsload more wake-ups (system calls
// are dear on the benchmark machine) without changing what is measured:
// latency runs from each row's commit.
const insertTick = 5 * time.Millisecond

// maxInsertBatch bounds the rows one tick sends, so that a stall is not
// followed by a burst far above the rate.
const maxInsertBatch = 1000

// latencies collects, from the captured messages, commit → receipt (the
// event's commit_time) and insert → receipt (the row's sent_ns, taken just
// before the INSERT was sent) of the rows inserted in [from, to).
type latencies struct {
	mu             sync.Mutex
	from, to       int64
	commit, insert []time.Duration
	at             []int64 // commit times (unix nanos), for -series
	bad            int     // frames without sent_ns or commit_time
	firstBad       string
}

func (l *latencies) add(payload []byte, now int64) {
	sent, ok := intAfter(payload, `"sent_ns":`)
	ct, cok := stringAfter(payload, `"commit_time":"`)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !ok || !cok {
		if l.bad == 0 {
			l.firstBad = string(payload[:min(len(payload), 300)])
		}
		l.bad++
		return
	}
	if sent < l.from || sent >= l.to {
		return
	}
	commit, err := time.Parse(time.RFC3339Nano, string(ct))
	if err != nil {
		l.bad++
		return
	}
	l.commit = append(l.commit, time.Duration(now-commit.UnixNano()))
	l.at = append(l.at, commit.UnixNano())
	l.insert = append(l.insert, time.Duration(now-sent))
}

// series prints, per interval of commit time, how many rows committed
// and their worst commit → receipt latency, to show when latency rises.
func (l *latencies) series(w io.Writer, name string, interval time.Duration) {
	type bucket struct {
		n     int
		worst time.Duration
	}
	b := map[int64]*bucket{}
	var keys []int64
	for i, at := range l.at {
		k := (at - l.from) / int64(interval)
		if b[k] == nil {
			b[k] = &bucket{}
			keys = append(keys, k)
		}
		b[k].n++
		b[k].worst = max(b[k].worst, l.commit[i])
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s t=%dms rows=%d worst=%sms\n", name, k*interval.Milliseconds(), b[k].n, ms(b[k].worst))
	}
}

func (l *latencies) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.insert)
}

// intAfter parses the integer that follows key in b.
func intAfter(b []byte, key string) (int64, bool) {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return 0, false
	}
	b = b[i+len(key):]
	j := 0
	for j < len(b) && (b[j] >= '0' && b[j] <= '9' || j == 0 && b[j] == '-') {
		j++
	}
	v, err := strconv.ParseInt(string(b[:j]), 10, 64)
	return v, err == nil
}

// stringAfter returns the bytes between key (which ends with a quote) and
// the next quote.
func stringAfter(b []byte, key string) ([]byte, bool) {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return nil, false
	}
	b = b[i+len(key):]
	j := bytes.IndexByte(b, '"')
	if j < 0 {
		return nil, false
	}
	return b[:j], true
}

func runE2E(ctx context.Context, cfg config, pc poolConfig, out *report) error {
	pgcfg, err := pgx.ParseConfig(cfg.pg)
	if err != nil {
		return fmt.Errorf("-pg: %w", err)
	}
	if cfg.syncCommit != "" {
		pgcfg.RuntimeParams["synchronous_commit"] = cfg.syncCommit
	}
	conns := make([]*pgx.Conn, cfg.pgConns)
	for i := range conns {
		c, err := pgx.ConnectConfig(ctx, pgcfg)
		if err != nil {
			return fmt.Errorf("connect to PostgreSQL: %w", err)
		}
		defer c.Close(context.Background())
		conns[i] = c
	}
	insert := "INSERT INTO " + pgx.Identifier{cfg.schemaName, cfg.tableName}.Sanitize() + " (sent_ns) VALUES ($1)"
	// The reader registers a table's shape when it sees its first change;
	// the gateway accepts subscriptions once it has read the shape.
	if _, err := conns[0].Exec(ctx, insert, time.Now().UnixNano()); err != nil {
		return fmt.Errorf("insert a first row: %w", err)
	}
	if err := waitTable(ctx, cfg, pc); err != nil {
		return err
	}
	col := &latencies{from: 1<<63 - 1}
	// Commit → NATS too, when told where NATS is: it splits the latency
	// into the reader's part and the gateway's.
	var natsCol *latencies
	if cfg.natsSet {
		natsCol = &latencies{from: 1<<63 - 1}
		nc, err := nats.Connect(cfg.natsURL, nats.Name("tablecast-wsload"), nats.Timeout(5*time.Second))
		if err != nil {
			return fmt.Errorf("connect to NATS at %s: %w", cfg.natsURL, err)
		}
		defer nc.Close()
		sub, err := nc.Subscribe(stream.TableSubjects(cfg.prefix, "", cfg.schemaName, cfg.tableName), func(m *nats.Msg) {
			natsCol.add(m.Data, time.Now().UnixNano())
		})
		if err != nil {
			return fmt.Errorf("subscribe to NATS: %w", err)
		}
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			return err
		}
		if err := nc.Flush(); err != nil {
			return err
		}
	}
	pc.capture, pc.onMessage = cfg.n, col.add
	p, err := connect(cfg, pc, cfg.n, out)
	if err != nil {
		return err
	}
	defer p.close()
	n := p.alive()

	start := time.Now()
	from, to := start.Add(cfg.warm), start.Add(cfg.warm+cfg.duration)
	for _, c := range []*latencies{col, natsCol} {
		if c != nil {
			c.mu.Lock()
			c.from, c.to = from.UnixNano(), to.UnixNano()
			c.mu.Unlock()
		}
	}
	u0 := startUsage(cfg.pid)
	type result struct {
		rows, measured int
		err            error
	}
	results := make(chan result, len(conns))
	for _, c := range conns {
		go func() {
			rows, measured, err := insertLoop(ctx, c.PgConn(), insert, cfg.rate/float64(len(conns)), start, from, to)
			results <- result{rows, measured, err}
		}()
	}
	var rows, measured int
	for range conns {
		r := <-results
		if r.err != nil && err == nil {
			err = r.err
		}
		rows += r.rows
		measured += r.measured
	}
	if err != nil {
		return err
	}
	// Wait for the frames of every row, for as long as they keep coming.
	want := measured * int(n)
	for last, lastAt := col.count(), time.Now(); col.count() < want && time.Since(lastAt) < 5*time.Second; {
		time.Sleep(5 * time.Millisecond)
		if c := col.count(); c != last {
			last, lastAt = c, time.Now()
		}
	}
	wall := time.Since(start)

	col.mu.Lock()
	defer col.mu.Unlock()
	out.kv("rate", fmt.Sprintf("%.0f", cfg.rate))
	out.kv("inserted_per_s", fmt.Sprintf("%.0f", float64(measured)/cfg.duration.Seconds()))
	out.kv("rows", measured)
	out.kv("received", len(col.insert))
	out.kv("missing", want-len(col.insert))
	if col.bad > 0 {
		out.kv("bad_frames", col.bad)
		out.kv("first_bad_frame", strconv.Quote(col.firstBad))
	}
	if len(col.commit) > 0 {
		out.kv("commit_p50_ms", ms(percentile(col.commit, 0.50)))
		out.kv("commit_p99_ms", ms(percentile(col.commit, 0.99)))
		out.kv("commit_max_ms", ms(slices.Max(col.commit)))
		out.kv("insert_p50_ms", ms(percentile(col.insert, 0.50)))
		out.kv("insert_p99_ms", ms(percentile(col.insert, 0.99)))
		out.kv("insert_max_ms", ms(slices.Max(col.insert)))
	}
	if natsCol != nil {
		natsCol.mu.Lock()
		out.kv("nats_received", len(natsCol.commit))
		if len(natsCol.commit) > 0 {
			out.kv("nats_commit_p50_ms", ms(percentile(natsCol.commit, 0.50)))
			out.kv("nats_commit_p99_ms", ms(percentile(natsCol.commit, 0.99)))
			out.kv("nats_commit_max_ms", ms(slices.Max(natsCol.commit)))
		}
		natsCol.mu.Unlock()
	}
	out.kv("closed", n-p.alive())
	u0.report(out, wall)
	if cfg.series > 0 {
		col.series(os.Stderr, "websocket", cfg.series)
		if natsCol != nil {
			natsCol.mu.Lock()
			natsCol.series(os.Stderr, "nats", cfg.series)
			natsCol.mu.Unlock()
		}
	}
	if want > len(col.insert) {
		return fmt.Errorf("%d of %d frames did not arrive (none came for 5s; %d connections closed: %s)",
			want-len(col.insert), want, n-p.alive(), p.fails.summary())
	}
	return nil
}

// insertLoop inserts rows at rate from start until stop, each its own
// transaction (a pipeline of single-row inserts, each followed by Sync),
// with sent_ns = the time the batch was sent. It returns the rows inserted,
// and those of them sent from measureFrom on.
func insertLoop(ctx context.Context, pc *pgconn.PgConn, sql string, rate float64, start, measureFrom, stop time.Time) (rows, measured int, err error) {
	const stmt = "wsload_insert"
	if _, err := pc.Prepare(ctx, stmt, sql, nil); err != nil {
		return 0, 0, fmt.Errorf("prepare %q: %w", sql, err)
	}
	tick := time.NewTicker(insertTick)
	defer tick.Stop()
	var val []byte
	for {
		now := time.Now()
		if !now.Before(stop) {
			return rows, measured, nil
		}
		due := min(int(rate*now.Sub(start).Seconds())-rows, maxInsertBatch)
		if due > 0 {
			ns := now.UnixNano()
			val = strconv.AppendInt(val[:0], ns, 10)
			pl := pc.StartPipeline(ctx)
			for range due {
				pl.SendQueryPrepared(stmt, [][]byte{val}, nil, nil)
				pl.SendPipelineSync()
			}
			if err := pl.Flush(); err != nil {
				return rows, measured, fmt.Errorf("insert: %w", err)
			}
			for synced := 0; synced < due; {
				res, err := pl.GetResults()
				if err != nil {
					_ = pl.Close()
					return rows, measured, fmt.Errorf("insert: %w", err)
				}
				switch r := res.(type) {
				case *pgconn.ResultReader:
					if _, err := r.Close(); err != nil {
						_ = pl.Close()
						return rows, measured, fmt.Errorf("insert: %w", err)
					}
				case *pgconn.PipelineSync:
					synced++
				case nil:
					_ = pl.Close()
					return rows, measured, fmt.Errorf("insert: pipeline ended after %d of %d rows", synced, due)
				}
			}
			if err := pl.Close(); err != nil {
				return rows, measured, fmt.Errorf("insert: %w", err)
			}
			rows += due
			if ns >= measureFrom.UnixNano() {
				measured += due
			}
		}
		select {
		case <-ctx.Done():
			return rows, measured, ctx.Err()
		case <-tick.C:
		}
	}
}
