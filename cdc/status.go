package cdc

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// tableCount returns the counter of the events published for a table since
// the reader started, creating it on first use. Callers keep the counter:
// the publishing path only adds to it. The table is named as the contract
// writes table names, a part with a dot or a quote double-quoted: joined
// as written, schema "a.b" with table "c" and schema "a" with table "b.c"
// would share a counter.
func (r *Reader) tableCount(schemaName, table string) *atomic.Int64 {
	name := schema.FormatTableName(schemaName, table)
	r.countsMu.Lock()
	defer r.countsMu.Unlock()
	c := r.counts[name]
	if c == nil {
		c = new(atomic.Int64)
		r.counts[name] = c
	}
	return c
}

// statusWriter writes the reader's status record (stream.ReaderStatus)
// after each look at the slot, with each table's rate since the last one.
type statusWriter struct {
	r      *Reader
	last   map[string]int64
	lastAt time.Time
	failed bool // the last write failed: logged once until one succeeds
	slot   slotFigures
}

// slotFigures are the figures of one look at the slot.
type slotFigures struct {
	lag, retained, safe int64 // safe: -1 for no limit
	walStatus           string
}

// write stores the record; a failure is logged (once until writes work
// again) and otherwise ignored: the record only informs. When the slot
// could not be read (!read), the figures of the last look stand, and the
// reasons say why.
func (w *statusWriter) write(ctx context.Context, h Health, f slotFigures, read bool, now time.Time) {
	r := w.r
	if r.state == nil {
		return
	}
	if read {
		w.slot = f
	}
	f = w.slot
	st := &stream.ReaderStatus{
		Database: r.db, Slot: r.cfg.Slot, Stream: r.cfg.Stream, Cluster: r.cluster(),
		Streaming: r.streaming.Load(), Healthy: h.Healthy, Reasons: h.Reasons, AckedLSN: r.Health().AckedLSN,
		LagBytes: f.lag, RetainedWALBytes: f.retained, SafeWALSizeBytes: f.safe, WALStatus: f.walStatus,
		Tables:  map[string]stream.TableCount{},
		Started: r.started.UTC(), Updated: now.UTC(), Interval: r.cfg.WatchInterval,
	}
	if role, holder := r.role(); role == "leader" && holder.Holder != "" {
		st.Leader = &stream.LeaderInfo{Host: holder.Host, PID: holder.PID, Since: holder.Since.UTC()}
	}
	counts := map[string]int64{}
	r.countsMu.Lock()
	for name, c := range r.counts {
		counts[name] = c.Load()
	}
	r.countsMu.Unlock()
	secs := now.Sub(w.lastAt).Seconds()
	for name, n := range counts {
		tc := stream.TableCount{Events: n}
		if w.last != nil && secs > 0 {
			tc.Rate = float64(n-w.last[name]) / secs
		}
		st.Tables[name] = tc
	}
	w.last, w.lastAt = counts, now
	wctx, cancel := context.WithTimeout(ctx, r.cfg.WatchInterval)
	defer cancel()
	err := stream.WriteReaderStatus(wctx, r.state, st)
	if err != nil {
		// The state bucket deleted (by an operator) leaves the position
		// record, catch-ups and gaps with nowhere to go: every reader,
		// standby or not, creates it again here, within an interval. The
		// reader's handle names the bucket, and works again with it.
		if _, ok := r.recreateBucket(wctx, err, r.stateBucket, "state"); ok {
			err = stream.WriteReaderStatus(wctx, r.state, st)
		}
	}
	if err != nil {
		if !w.failed && ctx.Err() == nil {
			r.log.Warn("cannot write the reader's status record; gateways apart from this reader do not see its slot", "err", oneLine(err))
		}
		w.failed = true
		return
	}
	w.failed = false
}
