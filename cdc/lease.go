package cdc

// Reader failover: one leader per slot, any number of standbys.
//
// Readers of one slot share a lease, a key of LeaseBucket named after the
// slot. The reader that holds it streams; the others wait. The leader
// renews it every LeaderLease/3 with an update conditional on the revision
// it last wrote. A standby takes the lease over once its revision has stood
// still for a whole LeaderLease as the standby itself has watched it: every
// duration is measured on one clock, the watcher's or the holder's, never
// compared across machines. The leader counts its lease from the moment it
// sent the request of its last successful write, and stops streaming
// (cancels its session, closes its replication connection) once
// LeaderLease minus a margin has passed since: a standby sees the revision
// after it was written, so it waits longer than the leader holds.
//
// A leader that merely paused (SIGSTOP, a long GC, a frozen VM) may wake up
// with messages still on their way to JetStream. So the reader that takes
// over publishes a fence into the event stream (stream.FenceSubject) and
// every event it publishes expects the fence subject's last message to be
// that fence (stream.WithFence): the old leader's events expect an older
// one and are refused, and it learns that it was fenced out. Only then does
// the new leader read what the stream holds (resume), so nothing of the old
// one can land after what it learnt. A stream with more than one replica
// cannot check one fence subject's sequence on pipelined messages (see
// stream.WithFence), so there the fence is a ring of subjects
// (stream.FenceRingSubjects): a takeover stores a fence on every one, and
// each event expects the next subject's (stream.WithFenceRing), with at
// most stream.FenceRingSize-1 events awaiting acknowledgement.
//
// A reader that finds no lease (the first, or its holder gave it up on
// stopping, after its sessions had ended) creates it, stores no fence and
// expects the last one stored, if any: only a takeover stores a fence, so a
// lone reader's stream holds one only after it was restarted from a crash.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// LeaseBucket is the key-value bucket of the readers' leases, one key per
// slot.
const LeaseBucket = "TABLECAST_LEASES"

// DefaultLeaderLease is the default Config.LeaderLease.
const DefaultLeaderLease = 5 * time.Second

// leaseValue is what a lease's key holds.
type leaseValue struct {
	Holder string    `json:"holder"` // the holding reader's random token
	Host   string    `json:"host"`
	PID    int       `json:"pid"`
	Since  time.Time `json:"since"` // when it took the lease
	// Proc identifies the holder's process on its machine (procIdentity),
	// so that a reader there can tell when it is gone; "" when unknown.
	Proc string `json:"proc,omitempty"`
	// Fence is the stream sequence of the fence the holder's events expect
	// (0: none stored, or the stream does not take fences); on a
	// replicated stream, that of the last fence of its ring.
	Fence uint64 `json:"fence"`
}

// leaseMargin is how much sooner than a standby could take the lease over
// the leader gives it up: room for clocks that run at slightly different
// rates and for its session to stop.
func leaseMargin(ttl time.Duration) time.Duration { return ttl / 5 }

// leasePoll is how often a standby looks at the lease.
func leasePoll(ttl time.Duration) time.Duration { return min(time.Second, ttl/5) }

// holderWatch is a standby's view of the lease: the revision it last saw
// and since when, on its own clock.
type holderWatch struct {
	rev      uint64
	seen     time.Time
	goneSeen bool // the holder was found gone (logged once)
}

// expired records that the lease is at revision rev at now and reports
// whether that revision has stood still for ttl.
func (w *holderWatch) expired(rev uint64, now time.Time, ttl time.Duration) bool {
	if rev != w.rev || w.seen.IsZero() {
		w.rev, w.seen = rev, now
		return false
	}
	return now.Sub(w.seen) >= ttl
}

// lease is a lease the reader holds.
type lease struct {
	kv  jetstream.KeyValue
	key string
	ttl time.Duration

	mu      sync.Mutex
	val     leaseValue
	rev     uint64
	renewed time.Time // when the request of the last successful write was sent
}

// validAt reports whether the lease is still the leader's at now.
func (l *lease) validAt(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return now.Before(l.deadline())
}

// deadline is when the leader must have stopped; l.mu held.
func (l *lease) deadline() time.Time {
	return l.renewed.Add(l.ttl - leaseMargin(l.ttl))
}

// errLeaseTaken: the lease's revision is not the one the leader wrote.
var errLeaseTaken = errors.New("another reader holds the lease")

// write stores v as the lease's value, conditional on the revision last
// written.
func (l *lease) write(ctx context.Context, v leaseValue) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode lease: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	sent := time.Now()
	rev, err := l.kv.Update(ctx, l.key, b, l.rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return errLeaseTaken
		}
		return fmt.Errorf("renew lease %s: %w", l.key, err)
	}
	l.val, l.rev, l.renewed = v, rev, sent
	return nil
}

// value returns the lease's value as last written.
func (l *lease) value() leaseValue {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.val
}

// hold renews the lease until ctx ends, and calls lost (then returns) once
// it no longer holds it: another reader took it, or it could not be renewed
// in time.
func (l *lease) hold(ctx context.Context, lost func(reason string)) {
	every := l.ttl / 3
	wait := every
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		l.mu.Lock()
		deadline := l.deadline()
		l.mu.Unlock()
		if !time.Now().Before(deadline) {
			lost(fmt.Sprintf("lease not renewed for %s", l.ttl-leaseMargin(l.ttl)))
			return
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		err := l.write(rctx, l.value())
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errLeaseTaken):
			lost(err.Error())
			return
		case err != nil:
			wait = min(every, 200*time.Millisecond) // try again soon, within the deadline
		default:
			wait = every
		}
	}
}

// release deletes the lease if the reader still holds it, so that a
// standby (or the reader's next start) takes it at once, and reports
// whether it did. The revision decides: any other reader's write of the
// lease (a takeover) changed it, and the delete is refused then, however
// late the last renewal was. On a replicated bucket under load the delete
// can take seconds.
func (l *lease) release() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev)); err != nil {
		return fmt.Errorf("delete lease %s at revision %d: %w", l.key, l.rev, err)
	}
	return nil
}

// currentRev is the revision last written.
func (l *lease) currentRev() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rev
}

// setRole records whether the reader leads, and the lease's holder as last
// seen, for health and metrics.
func (r *Reader) setRole(leader bool, holder leaseValue) {
	r.roleMu.Lock()
	r.holder = holder
	r.roleMu.Unlock()
	if r.leader.Swap(leader) != leader || !leader {
		if leader {
			r.m.leader.Set(1)
		} else {
			r.m.leader.Set(0)
			r.markRegistered() // the leader registered the tables
		}
	}
}

// role returns "leader" while the reader holds the lease, "standby" once it
// has seen another reader hold it, and "starting" before either: it has not
// looked at the lease yet, or it found the lease free and is taking it. A
// starting reader is not ready: a lone reader, which takes the lease at
// once, must not say it is before its slot exists, or changes made
// meanwhile would not be streamed.
func (r *Reader) role() (string, leaseValue) {
	r.roleMu.Lock()
	defer r.roleMu.Unlock()
	switch {
	case r.leader.Load():
		return "leader", r.holder
	case r.holder.Holder != "" && r.holder.Holder != r.token:
		return "standby", r.holder
	}
	return "starting", r.holder
}

// checkSlotExists looks the slot up again.
func (r *Reader) checkSlotExists(ctx context.Context) (bool, error) {
	conn, err := pgx.Connect(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return false, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	return checkSlot(ctx, conn, r.cfg, r.db)
}

// acquired is how the reader came to hold a lease.
type acquired struct {
	l *lease
	// takeover: the lease was another holder's (another reader, or this
	// one's previous process) that did not give it up: that holder may
	// still run, so it is fenced out and its walsender ended.
	takeover bool
	prev     leaseValue // the holder taken over from
}

// recreateLeaseBucket creates the lease bucket again when reading it failed
// with err because it no longer exists (an operator deleted it, to clear a
// lease they thought stuck, say), and reports whether it did. Without it no
// reader could take the lease again, and the slot would go unread until
// one restarted. An empty bucket holds no lease: the reader takes it, and
// fences out whoever held it before (a leader that lost the bucket has
// stopped streaming already, as it could not renew its lease).
func (r *Reader) recreateLeaseBucket(ctx context.Context, err error) bool {
	kv, ok := r.recreateBucket(ctx, err, r.leaseBucket, "lease")
	if ok {
		r.leases = kv
	}
	return ok
}

// recreateBucket creates the bucket of cfg again when an operation on it
// failed with err because it no longer exists, and returns it.
func (r *Reader) recreateBucket(ctx context.Context, err error, cfg jetstream.KeyValueConfig, what string) (jetstream.KeyValue, bool) {
	if !errors.Is(err, jetstream.ErrBucketNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) &&
		!errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, jetstream.ErrNoStreamResponse) {
		return nil, false
	}
	// Only a bucket JetStream says is gone: one without a leader for a
	// moment (a cluster electing) fails reads too.
	if _, err := r.js.KeyValue(ctx, cfg.Bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, false
	}
	kv, err := r.js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		r.log.Warn("the "+what+" bucket is gone and cannot be created again; retrying", "bucket", cfg.Bucket, "err", err)
		return nil, false
	}
	r.log.Warn("the "+what+" bucket was deleted while the reader ran; created it again", "bucket", cfg.Bucket)
	return kv, true
}

// acquireLease waits as a standby until the reader holds the slot's lease.
func (r *Reader) acquireLease(ctx context.Context) (acquired, error) {
	host, _ := os.Hostname()
	proc := procIdentity(os.Getpid())
	// A holder found gone is taken over at once only where fences keep
	// out whatever it still had on its way (a dead process's last writes
	// may still be retransmitted by its kernel): elsewhere the lease's
	// margin is all there is, and it is waited out.
	fenced := false
	if st, err := r.js.Stream(ctx, r.cfg.Stream); err == nil {
		fenced = r.takesFences(st.CachedInfo().Config)
	}
	ttl := r.cfg.LeaderLease
	var (
		w      holderWatch
		warned bool
		// lastUpdateErr is the last failed take-over logged: a standby
		// that keeps failing to write the lease says why, once a reason.
		lastUpdateErr string
		// own is the revision this reader last wrote as leader: finding it
		// still there, nobody took the lease meanwhile, and the reader
		// takes it back at once, with no fence against itself.
		own = r.ownRev
	)
	for {
		sent := time.Now()
		val := leaseValue{Holder: r.token, Host: host, PID: os.Getpid(), Since: sent.UTC(), Proc: proc}
		b, _ := json.Marshal(val)
		e, err := r.leases.Get(ctx, r.cfg.Slot)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rev, err := r.leases.Create(ctx, r.cfg.Slot, b)
			if err == nil {
				return acquired{l: &lease{kv: r.leases, key: r.cfg.Slot, ttl: ttl, val: val, rev: rev, renewed: sent}}, nil
			}
			if !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil && !warned {
				r.log.Warn("cannot take the lease; retrying", "err", err)
				warned = true
			}
		case err != nil:
			if r.recreateLeaseBucket(ctx, err) {
				continue
			}
			if ctx.Err() == nil && !warned {
				r.log.Warn("cannot read the lease; retrying", "bucket", LeaseBucket, "err", err)
				warned = true
			}
		default:
			var cur leaseValue
			_ = json.Unmarshal(e.Value(), &cur)
			r.setRole(false, cur)
			mine := cur.Holder == r.token && own != 0 && e.Revision() == own
			// A holder whose process is gone from this machine (killed,
			// crashed, restarted) renews nothing: waiting out its lease
			// would only delay streaming. It is still taken over, fenced
			// and its walsender ended, like any other.
			gone := fenced && !mine && cur.Holder != r.token && holderGone(cur.Proc)
			if gone && !w.goneSeen {
				r.log.Info("the lease's holder no longer runs on this machine: taking the lease over now",
					"previous_holder", cur.Holder, "previous_pid", cur.PID)
				w.goneSeen = true
			}
			if mine || gone || w.expired(e.Revision(), time.Now(), ttl) {
				rev, err := r.leases.Update(ctx, r.cfg.Slot, b, e.Revision())
				if err == nil {
					l := &lease{kv: r.leases, key: r.cfg.Slot, ttl: ttl, val: val, rev: rev, renewed: sent}
					if mine {
						l.val.Fence = cur.Fence
						return acquired{l: l}, nil
					}
					return acquired{l: l, takeover: true, prev: cur}, nil
				}
				if ctx.Err() == nil && err.Error() != lastUpdateErr {
					// Info: another standby taking it first is the usual reason.
					r.log.Info("cannot take the lease yet; retrying", "revision", e.Revision(), "holder", cur.Holder, "err", err)
					lastUpdateErr = err.Error()
				}
			}
		}
		select {
		case <-ctx.Done():
			return acquired{}, ctx.Err()
		case <-time.After(leasePoll(ttl)):
		}
	}
}

// takesFences reports whether the stream of cfg can check the fences of
// this reader's slot: it captures the fence subjects its replicas need.
func (r *Reader) takesFences(cfg jetstream.StreamConfig) bool {
	return stream.CapturesFences(cfg.Subjects, cfg.Replicas, r.prefix)
}

// fences is what the events of a leadership expect.
type fences struct {
	on   bool     // the stream takes fences
	seq  uint64   // the fence subject's, with one replica; the ring's last, with more
	ring []uint64 // with more than one replica: each ring subject's (stream.FenceRingSubjects)
}

// fence makes the events of the lease's holder expect a fence: after a
// takeover, a new one published now; otherwise the fence subject's last
// message, if any. On a replicated stream the fence is a ring of them. It
// writes the fence into the lease. It returns a fence that is not on and
// does nothing when the stream cannot check fences (it does not capture
// the fence subjects).
func (r *Reader) fence(ctx context.Context, a acquired) (fences, error) {
	st, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return fences{}, fmt.Errorf("look up stream %s: %w", r.cfg.Stream, err)
	}
	cfg := st.CachedInfo().Config
	if !r.takesFences(cfg) {
		return fences{}, nil
	}
	var f fences
	if cfg.Replicas > 1 {
		if f, err = r.fenceRing(ctx, st, a); err != nil {
			return fences{}, err
		}
	} else if f, err = r.fenceOne(ctx, st, a); err != nil {
		return fences{}, err
	}
	v := a.l.value()
	v.Fence = f.seq
	if err := a.l.write(ctx, v); err != nil {
		return fences{}, fmt.Errorf("write fence %d into the lease: %w", f.seq, err)
	}
	return f, nil
}

// fenceBody is what a takeover's fence says.
func (r *Reader) fenceBody(a acquired) []byte {
	b, _ := json.Marshal(map[string]any{"holder": r.token, "previous_holder": a.prev.Holder, "previous_host": a.prev.Host, "previous_pid": a.prev.PID})
	return b
}

// fenceRing is fence on a replicated stream. The ring's sequences of a
// leadership that took its own lease back are those it expected before;
// otherwise (the lease was free: its holder gave it up once its sessions
// had ended) they are read from the stream.
func (r *Reader) fenceRing(ctx context.Context, st jetstream.Stream, a acquired) (fences, error) {
	subjects := stream.FenceRingSubjects(r.prefix, r.cfg.Slot)
	var (
		ring []uint64
		err  error
	)
	switch {
	case a.takeover:
		ring, err = stream.StoreFences(ctx, r.js, r.cfg.Stream, subjects, r.fenceBody(a))
	case len(r.fences.ring) == len(subjects) && a.l.val.Fence == r.fences.seq && r.fences.seq != 0:
		ring = r.fences.ring
	default:
		ring, err = stream.LastFences(ctx, st, subjects)
	}
	if err != nil {
		return fences{}, err
	}
	return fences{on: true, seq: ring[len(ring)-1], ring: ring}, nil
}

// fenceOne is fence on a stream with one replica.
func (r *Reader) fenceOne(ctx context.Context, st jetstream.Stream, a acquired) (fences, error) {
	subject := stream.FenceSubject(r.prefix, r.cfg.Slot)
	var seq uint64
	if a.takeover {
		ack, err := r.js.Publish(ctx, subject, r.fenceBody(a))
		if err != nil {
			return fences{}, fmt.Errorf("publish fence on %s: %w", subject, err)
		}
		if ack.Stream != r.cfg.Stream {
			return fences{}, fmt.Errorf("publish fence on %s: stored by stream %s, not %s", subject, ack.Stream, r.cfg.Stream)
		}
		seq = ack.Sequence
	} else if a.l.val.Fence != 0 {
		seq = a.l.val.Fence
	} else {
		seqs, err := stream.LastFences(ctx, st, []string{subject})
		if err != nil {
			return fences{}, err
		}
		seq = seqs[0]
	}
	return fences{on: true, seq: seq}, nil
}
