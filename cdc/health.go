package cdc

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Health is the reader's state as /healthz reports it.
type Health struct {
	Healthy   bool     `json:"healthy"`
	Streaming bool     `json:"streaming"`
	AckedLSN  string   `json:"acked_lsn"`
	LagBytes  int64    `json:"lag_bytes"`
	Reasons   []string `json:"reasons,omitempty"`
	// Role is "leader" while the reader holds its slot's lease and
	// streams, "standby" while another reader does, "starting" before it
	// knows which (lease.go).
	Role string `json:"role"`
	// Leader is the lease's holder as last seen: this reader itself while
	// it leads.
	Leader *LeaseHolder `json:"leader,omitempty"`
	// SlotLost is set once the reader found its slot lost and created it
	// again (slotloss.go), until the process ends.
	SlotLost *SlotLoss `json:"slot_lost,omitempty"`
}

// LeaseHolder is a reader holding a slot's lease, as /healthz shows it.
type LeaseHolder struct {
	Host  string    `json:"host"`
	PID   int       `json:"pid"`
	Since time.Time `json:"since"`
	// Self: the holder is this reader.
	Self bool `json:"self"`
}

// Health returns the reader's current health.
func (r *Reader) Health() Health {
	r.healthMu.Lock()
	h := r.health
	r.healthMu.Unlock()
	role, holder := r.role()
	h.Role = role
	if holder.Holder != "" {
		h.Leader = &LeaseHolder{Host: holder.Host, PID: holder.PID, Since: holder.Since, Self: holder.Holder == r.token}
	}
	if role == "standby" {
		// A standby is healthy by design: it waits. The leader's health is
		// the leader's to report.
		h.Healthy, h.Reasons, h.LagBytes = true, nil, 0
	}
	h.Streaming = r.streaming.Load()
	h.AckedLSN = pglogrepl.LSN(r.ackedLSN.Load()).String()
	h.SlotLost = r.slotLoss.Load()
	return h
}

// stuckAfterSessions is how many replication sessions in a row must fail
// at the same position before the reader is unhealthy. A restart of NATS or
// PostgreSQL costs one session, rarely two; a reader that cannot get one
// event into JetStream fails every session there, within seconds of the
// last (the backoff starts at half a second).
const stuckAfterSessions = 3

// failingSessions counts the replication sessions in a row that streamed
// and then ended in an error without confirming anything past the
// position they started from: a reader stuck on one event (one JetStream
// refuses, or that cannot be decoded), which the slot's lag alone does not
// show when little else is written.
type failingSessions struct {
	at    uint64    // the position they all started from
	count int       // how many in a row
	since time.Time // when the first of them ended
	last  string    // the last one's error
}

// noteSessionEnd counts a session that ended toward failingSessions.
func (r *Reader) noteSessionEnd(res sessionResult, err error) {
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	f := &r.failing
	switch {
	case res.progressed || res.streamed >= r.cfg.StallAfter:
		// It got somewhere, or ran long enough not to be stuck.
		if f.count >= stuckAfterSessions {
			r.log.Info("replication got past the position where it kept failing", "lsn", pglogrepl.LSN(f.at).String())
		}
		*f = failingSessions{}
	case err == nil || res.streamed == 0:
		// It never streamed (PostgreSQL unreachable, the slot held
		// elsewhere): "not streaming" reports that.
	case f.count > 0 && f.at == res.start:
		f.count++
		f.last = oneLine(err)
	default:
		*f = failingSessions{at: res.start, count: 1, since: time.Now(), last: oneLine(err)}
	}
}

// watch reads the slot's lag from PostgreSQL on its own connection, every
// WatchInterval, and judges health from it. It looks from the outside on
// purpose: a reader whose publishing silently stopped cannot be trusted to
// notice that itself, but the slot's confirmed position standing still
// while WAL grows is plain to see.
func (r *Reader) watch(ctx context.Context) {
	conn := &lazyConn{url: r.cfg.DatabaseURL}
	defer conn.close()
	var (
		lastLSN               string
		lastMove              = time.Now()
		downSince             time.Time
		walStatus, lastStatus string
		warnedNear            bool
		status                = statusWriter{r: r}
		others                = clusterCheck{r: r, logged: map[string]bool{}}
	)
	tick := time.NewTicker(r.cfg.WatchInterval)
	defer tick.Stop()
	for {
		now := time.Now()
		var reasons []string
		var (
			lag, retained int64
			safe          *int64
			slotAt        uint64 // the slot's confirmed_flush_lsn
		)
		err := conn.do(ctx, r.cfg.WatchInterval, func(ctx context.Context, conn *pgx.Conn) error {
			var confirmed *string
			err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text,
				coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint,
				coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
				coalesce(wal_status, ''), safe_wal_size
				FROM pg_replication_slots WHERE slot_name = $1`, r.cfg.Slot).Scan(&confirmed, &lag, &retained, &walStatus, &safe)
			if err != nil {
				return err
			}
			r.m.retainedWAL.Set(float64(retained))
			if safe != nil {
				r.m.safeWALSize.Set(float64(*safe))
			} else {
				r.m.safeWALSize.Set(-1)
			}
			// Warn while there is time to act: once safe_wal_size (WAL that
			// may still be written before PostgreSQL invalidates the slot)
			// is smaller than what the slot already holds back.
			nearLimit := safe != nil && *safe < retained
			if (walStatus != lastStatus || nearLimit != warnedNear) && walStatus != "" {
				switch {
				case walStatus == "lost":
					r.log.Error("replication slot invalidated: PostgreSQL removed WAL it needed; drop the slot and start again with a new snapshot", "wal_status", walStatus)
				case walStatus == "unreserved" || nearLimit:
					r.log.Warn("replication slot close to invalidation by max_slot_wal_keep_size", "wal_status", walStatus, "retained_bytes", retained, "safe_wal_size", safe)
				}
				for _, st := range []string{"reserved", "extended", "unreserved", "lost"} {
					v := 0.0
					if st == walStatus {
						v = 1
					}
					r.m.walStatus.WithLabelValues(st).Set(v)
				}
				lastStatus, warnedNear = walStatus, nearLimit
			}
			if confirmed != nil && *confirmed != lastLSN {
				lastLSN, lastMove = *confirmed, now
			}
			if confirmed != nil {
				if at, err := pglogrepl.ParseLSN(*confirmed); err == nil {
					slotAt = uint64(at)
				}
			}
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if downSince.IsZero() {
				downSince = now
			}
			reasons = append(reasons, "cannot read slot lag from PostgreSQL: "+oneLine(err))
		} else {
			downSince = time.Time{}
			r.m.lagBytes.Set(float64(lag))
			if walStatus == "lost" {
				reasons = append(reasons, "replication slot invalidated (wal_status lost): drop it and start again")
			}
			if lag >= r.cfg.StallLagBytes && now.Sub(lastMove) >= r.cfg.StallAfter {
				reasons = append(reasons, fmt.Sprintf("stalled: slot lags %d bytes behind WAL and its position has not moved for %s",
					lag, now.Sub(lastMove).Round(time.Second)))
			}
		}
		r.healthMu.Lock()
		if r.failing.count > 0 && slotAt > r.failing.at {
			// The running session got past it, and told PostgreSQL so: a
			// session replaying what the stream holds gets past the
			// sessions' start before it reaches where they failed.
			if r.failing.count >= stuckAfterSessions {
				r.log.Info("replication got past the position where it kept failing", "lsn", pglogrepl.LSN(r.failing.at).String())
			}
			r.failing = failingSessions{}
		}
		failing := r.failing
		r.healthMu.Unlock()
		if failing.count >= stuckAfterSessions {
			reasons = append(reasons, fmt.Sprintf("stuck: %d replication sessions in a row since %s failed before getting past LSN %s; last error: %s",
				failing.count, failing.since.UTC().Format(time.RFC3339), pglogrepl.LSN(failing.at), failing.last))
		}
		if !r.streaming.Load() {
			r.healthMu.Lock()
			since := r.streamSince
			r.healthMu.Unlock()
			if !since.IsZero() && now.Sub(since) >= r.cfg.StallAfter {
				reasons = append(reasons, fmt.Sprintf("not streaming for %s", now.Sub(since).Round(time.Second)))
			}
		}
		if reason := others.check(ctx, now); reason != "" {
			reasons = append(reasons, reason)
		}
		healthy := len(reasons) == 0 || (err != nil && now.Sub(downSince) < r.cfg.StallAfter && len(reasons) == 1)
		r.healthMu.Lock()
		if r.health.Healthy != healthy {
			if healthy {
				r.log.Info("reader healthy again")
			} else {
				r.log.Warn("reader unhealthy", "reasons", reasons)
			}
		}
		r.health = Health{Healthy: healthy, LagBytes: lag, Reasons: reasons}
		r.healthMu.Unlock()
		figures := slotFigures{lag: lag, retained: retained, safe: -1, walStatus: walStatus}
		if safe != nil {
			figures.safe = *safe
		}
		status.write(ctx, Health{Healthy: healthy, Reasons: reasons}, figures, err == nil, now)

		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
