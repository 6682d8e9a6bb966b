package cdc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// ProfileReader is the value of stream.ProfileLabel on the reader's
// goroutines.
const ProfileReader = "reader"

// Reader streams one publication of one database into JetStream.
type Reader struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	prefix string
	log    *slog.Logger
	m      *metrics

	db       string             // current_database(), learnt in preflight
	registry *stream.Registry   // schema registry, opened in Run
	state    jetstream.KeyValue // the reader's bookkeeping (stateBucket), opened in Run
	snaps    *snapshots         // on-demand snapshots (ondemand.go)
	big      oversize           // events too large for one message (oversize.go)
	token    string             // random, in this process's heartbeats: others' are not measured

	registered     chan struct{} // closed once the published tables are registered
	registeredOnce sync.Once

	// Failover (lease.go).
	leases   jetstream.KeyValue // LeaseBucket, opened in Run; replaced by acquireLease only
	ownRev   uint64             // revision of the lease last written as leader; Run's goroutine only
	fences   fences             // what the events of this leadership expect; Run's goroutine only
	endStale bool               // the leadership took over: a walsender holding the slot is ended
	// mustFence: a takeover's fence is not stored yet; Run's goroutine only.
	mustFence bool
	// unsure is what a session whose publisher was refused a message left
	// the next ones (Run's goroutine only): see noteRefusal.
	unsure refusedRange
	// leaseBucket is the configuration the lease bucket is created with.
	leaseBucket jetstream.KeyValueConfig
	// stateBucket is the configuration the state bucket is created with.
	stateBucket jetstream.KeyValueConfig
	leader      atomic.Bool
	// keepLease makes the reader stop without giving up its lease, as a
	// crash would: for tests.
	keepLease atomic.Bool
	roleMu    sync.Mutex
	holder    leaseValue // the lease's holder as last seen (this reader's own while leader)

	noBarrierWarned bool // settle said once that the stream takes no barrier; sessions run one at a time

	// state shared with Health and the watchdog
	streaming   atomic.Bool
	ackedLSN    atomic.Uint64
	slotLoss    atomic.Pointer[SlotLoss]
	clusterID   atomic.Pointer[string] // the PostgreSQL's system identifier, once known (identifyOrigin)
	healthMu    sync.Mutex
	health      Health
	streamSince time.Time
	failing     failingSessions // guarded by healthMu
	// prepSince is when leaderships began failing before they streamed
	// (a bucket, the slot, the initial snapshot), zero while they do not;
	// only Run's goroutine touches it.
	prepSince time.Time

	started  time.Time
	countsMu sync.Mutex
	counts   map[string]*atomic.Int64 // "schema.table" → events published since start (status.go)
}

// New validates cfg and returns a reader that publishes with nc / js under
// subject prefix. reg, if not nil, receives the reader's metrics.
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, prefix string, log *slog.Logger, reg prometheus.Registerer) (*Reader, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := stream.ValidatePrefix(prefix); err != nil {
		return nil, err
	}
	if prefix == controlToken || strings.HasPrefix(prefix, controlToken+".") {
		return nil, fmt.Errorf("subject prefix %q: its first token %s is kept for control subjects, outside every stream", prefix, controlToken)
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Reader{cfg: cfg, nc: nc, js: js, prefix: prefix, log: log.With("component", "cdc", "slot", cfg.Slot), m: newMetrics(reg), snaps: newSnapshots(), token: randomID(),
		registered: make(chan struct{}), started: time.Now(), counts: map[string]*atomic.Int64{}}
	r.health = Health{Healthy: true}
	r.streamSince = time.Now()
	return r, nil
}

// Run checks the database, creates the publication and the slot when
// missing, then streams until ctx ends, reconnecting with backoff when
// PostgreSQL or NATS goes away. It returns a ConfigError at once for a
// problem that retrying cannot fix, and nil when ctx ends.
func (r *Reader) Run(ctx context.Context) error {
	// The reader's goroutines, and those it starts (its publishers'
	// acknowledgement subscriptions among them), carry this label in CPU
	// profiles (stream.ProfileLabel).
	pprof.SetGoroutineLabels(pprof.WithLabels(ctx, pprof.Labels(stream.ProfileLabel, ProfileReader)))
	src, err := preflight(ctx, r.cfg, r.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.db = src.database
	// The reader's buckets are copied as often as the event stream is.
	var replicas int
	if err := stream.RetryTransient(ctx, func(ctx context.Context) error {
		str, err := r.js.Stream(ctx, r.cfg.Stream)
		if err != nil {
			return err
		}
		replicas = str.CachedInfo().Config.Replicas
		return nil
	}); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("read the replicas of stream %s: %w", r.cfg.Stream, err)
	}
	reg, err := stream.OpenRegistry(ctx, r.js, r.cfg.SchemaBucket, replicas)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.registry = reg
	r.stateBucket = jetstream.KeyValueConfig{Bucket: stateBucket, History: 1,
		Replicas: max(replicas, 1), Description: "tablecast reader bookkeeping"}
	err = stream.RetryTransient(ctx, func(ctx context.Context) (err error) {
		r.state, err = r.js.CreateOrUpdateKeyValue(ctx, r.stateBucket)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("open state bucket %s: %w", stateBucket, err)
	}
	r.leaseBucket = jetstream.KeyValueConfig{Bucket: LeaseBucket, History: 1,
		Replicas: max(replicas, 1), Description: "tablecast readers' leases: which reader streams each slot"}
	err = stream.RetryTransient(ctx, func(ctx context.Context) (err error) {
		r.leases, err = r.js.CreateOrUpdateKeyValue(ctx, r.leaseBucket)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("open lease bucket %s: %w", LeaseBucket, err)
	}

	// Nothing touches the slot, the publication or the snapshot records
	// before the reader holds the slot's lease (lease.go).
	slotExists := src.slotExists
	wait := r.cfg.RetryMin
	for {
		a, err := r.acquireLease(ctx)
		if err != nil {
			r.log.Info("reader stopped")
			return nil
		}
		err = r.lead(ctx, a, &slotExists)
		if ctx.Err() != nil {
			r.log.Info("reader stopped")
			return nil
		}
		if IsConfigError(err) {
			return err
		}
		var pe *prepareError
		switch {
		case errors.As(err, &pe):
			// Failing again and again the same way (a published table it
			// may not read for the initial snapshot, say): backing off,
			// and unhealthy once that has lasted TABLECAST_STALL_AFTER.
			if r.prepSince.IsZero() {
				r.prepSince = time.Now()
			}
			r.notePrepareFailure(pe)
			r.log.Error("cannot start streaming; retrying", "err", oneLine(pe.err), "retry_in", wait)
		case errors.Is(err, errSlotMissing):
			r.log.Error("the replication slot is gone while streaming: creating it again", "slot", r.cfg.Slot, "err", err)
		default:
			r.log.Warn("no longer the slot's leader; standing by", "reason", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		if pe != nil {
			wait = min(wait*2, r.cfg.RetryMax)
		} else {
			wait = r.cfg.RetryMin
		}
	}
}

// ensureStateBucket creates the state bucket again when it is gone.
func (r *Reader) ensureStateBucket(ctx context.Context) error {
	_, err := r.state.Status(ctx)
	if err == nil {
		return nil
	}
	if _, ok := r.recreateBucket(ctx, err, r.stateBucket, "state"); ok {
		return nil
	}
	return fmt.Errorf("read the state bucket %s: %w", r.stateBucket.Bucket, err)
}

// prepareError ends a leadership that failed before it streamed: the
// state bucket, the slot, or its initial snapshot.
type prepareError struct{ err error }

func (e *prepareError) Error() string { return "prepare to stream: " + e.err.Error() }
func (e *prepareError) Unwrap() error { return e.err }

// notePrepareFailure makes the reader unhealthy once leaderships have
// failed before streaming for TABLECAST_STALL_AFTER (the health check
// runs only while one streams).
func (r *Reader) notePrepareFailure(pe *prepareError) {
	since := time.Since(r.prepSince)
	if since < r.cfg.StallAfter {
		return
	}
	reason := fmt.Sprintf("not streaming for %s: cannot start streaming: %s", since.Round(time.Second), oneLine(pe.err))
	r.healthMu.Lock()
	if r.health.Healthy {
		r.log.Warn("reader unhealthy", "reasons", []string{reason})
	}
	r.health = Health{Healthy: false, Reasons: []string{reason}}
	r.healthMu.Unlock()
}

// errLeaseLost ends a leadership whose lease was taken or not renewed in
// time.
var errLeaseLost = errors.New("lost the lease")

// lead streams while the reader holds the lease a: it fences out the
// holder it took over from, prepares the slot and streams until ctx ends,
// the lease is lost, or it is fenced out. slotExists is what the reader
// knows of the slot, updated here.
func (r *Reader) lead(ctx context.Context, a acquired, slotExists *bool) error {
	lctx, cancel := context.WithCancelCause(ctx)
	held := make(chan struct{})
	go func() {
		defer close(held)
		a.l.hold(lctx, func(reason string) {
			r.log.Warn("lost the lease: stopping streaming at once", "reason", reason)
			cancel(fmt.Errorf("%w: %s", errLeaseLost, reason))
		})
	}()
	r.setRole(true, a.l.value())
	defer func() {
		// Everything of this leadership has stopped (the deferred calls
		// below ran first); the lease is given up if still held, so that a
		// standby takes it at once.
		cancel(nil)
		<-held
		r.ownRev = 0
		if r.keepLease.Load() {
			r.ownRev = a.l.currentRev()
		} else if err := a.l.release(); err != nil {
			r.log.Warn("cannot give up the lease; a standby takes it once it expires", "err", err)
			r.ownRev = a.l.currentRev()
		}
		r.setRole(false, leaseValue{})
	}()
	if a.takeover {
		r.m.takeovers.Inc()
		r.log.Info("took the lease over", "previous_holder", a.prev.Holder, "previous_host", a.prev.Host, "previous_pid", a.prev.PID,
			"previous_since", a.prev.Since)
	} else {
		r.log.Info("holding the lease")
	}
	ended := func(err error) error {
		if cause := context.Cause(lctx); ctx.Err() == nil && lctx.Err() != nil {
			return cause
		}
		return err
	}
	// A takeover whose fence could not be stored leaves the next
	// leadership of this reader to store one, however it gets the lease.
	a.takeover = a.takeover || r.mustFence
	r.mustFence = a.takeover
	f, err := r.fence(lctx, a)
	if err != nil {
		return ended(err)
	}
	r.mustFence = false
	r.fences, r.endStale = f, a.takeover
	r.setRole(true, a.l.value())
	// Health is judged afresh: the time spent standing by is not time
	// spent failing to stream. Leaderships failing before they stream
	// keep the judgement of the ones before (notePrepareFailure).
	if r.prepSince.IsZero() {
		r.healthMu.Lock()
		r.health, r.streamSince, r.failing = Health{Healthy: true}, time.Now(), failingSessions{}
		r.healthMu.Unlock()
	}

	// Listening before the slot exists: a request sent once it does is
	// answered (after a short wait, while the reader is not streaming yet).
	sub, err := r.serveSnapshotRequests(lctx)
	if err != nil {
		return ended(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// The state bucket deleted (by an operator) is created again here:
	// preparing the slot reads it.
	if err := r.ensureStateBucket(lctx); err != nil {
		return ended(&prepareError{err})
	}
	// Asked at every leadership: another reader may have created it while
	// this one stood by, or it may have been dropped under the leader this
	// one takes over from.
	if *slotExists, err = r.checkSlotExists(lctx); err != nil {
		return ended(&prepareError{err})
	}
	if err := r.prepareSlot(lctx, *slotExists); err != nil {
		return ended(&prepareError{err})
	}
	*slotExists = true
	r.prepSince = time.Time{}
	if err := r.registerNewTables(lctx); err != nil {
		if lctx.Err() != nil {
			return ended(err)
		}
		// Not fatal: the shapes arrive with the first change of each table.
		r.log.Warn("cannot register the published tables ahead of their first change", "err", err)
	}
	pw, err := newPubWatch(r)
	if err != nil {
		return err
	}
	if err := r.resumeCatchUps(lctx); err != nil {
		if lctx.Err() != nil {
			return ended(err)
		}
		// Their records stay: the next start takes them.
		r.log.Error("cannot resume the catch-up snapshots a previous run did not finish", "err", err)
	}
	// The first round before streaming: what is left out, or what a DBA's
	// publication breaks, is said at once.
	if err := pw.round(lctx); err != nil {
		if lctx.Err() != nil {
			return ended(err)
		}
		r.log.Warn("cannot read the catalog to keep the publication in step; retrying", "err", oneLine(err))
	}
	r.markRegistered()
	r.log.Info("reader ready", "database", r.db, "publication", r.cfg.Publication)

	wctx, stopWatch := context.WithCancel(lctx)
	defer stopWatch()
	go r.watch(wctx)
	go r.snapshotWorker(wctx)
	go pw.run(wctx)
	if r.cfg.HeartbeatInterval > 0 {
		go r.heartbeat(wctx)
	}

	backoff := r.cfg.RetryMin
	for {
		res, err := r.session(lctx)
		r.setStreaming(false)
		if errors.Is(err, stream.ErrFenced) {
			// Whether or not it also noticed that its lease was lost.
			r.m.fenced.Inc()
			r.log.Warn("fenced out: another reader took the slot over; standing by", "err", err)
			return err
		}
		if lctx.Err() != nil {
			return ended(nil)
		}
		r.noteSessionEnd(res, err)
		if res.progressed {
			backoff = r.cfg.RetryMin
		}
		var inUse *slotInUseError
		switch {
		case errors.As(err, &inUse):
			r.log.Warn("replication slot is in use by another process; retrying", "pid", inUse.pid, "retry_in", backoff)
		case errors.Is(err, errSlotMissing):
			*slotExists = false
			return err
		case IsConfigError(err):
			return err
		default:
			r.log.Warn("replication session ended; reconnecting", "err", err, "retry_in", backoff)
		}
		select {
		case <-lctx.Done():
			return ended(nil)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, r.cfg.RetryMax)
		if !r.nc.IsConnected() {
			// Replaying into a NATS that is not there only fails again;
			// the client reconnects by itself, so wait for it.
			r.log.Warn("waiting for NATS before streaming again")
			if err := stream.WaitConnected(lctx, r.nc); err != nil {
				return ended(fmt.Errorf("wait for NATS: %w", err))
			}
			r.log.Info("NATS is back")
			backoff = r.cfg.RetryMin
		}
	}
}

// markRegistered closes Registered, once.
func (r *Reader) markRegistered() {
	r.registeredOnce.Do(func() { close(r.registered) })
}

// Registered is closed once Run has written the shape of every published
// table to the schema registry (or tried: a table it could not register
// is registered with its first change), before the first change is
// streamed. A gateway waits for it to know every table a client may ask for.
func (r *Reader) Registered() <-chan struct{} { return r.registered }

// setStreaming records whether a session is streaming, and since when it
// is not, for health.
func (r *Reader) setStreaming(on bool) {
	r.streaming.Store(on)
	r.healthMu.Lock()
	switch {
	case on:
		r.streamSince = time.Time{}
		r.m.streaming.Set(1)
	case r.streamSince.IsZero():
		r.streamSince = time.Now()
		r.m.streaming.Set(0)
	}
	r.healthMu.Unlock()
}

type slotInUseError struct {
	slot string
	pid  string
}

func (e *slotInUseError) Error() string {
	return fmt.Sprintf("replication slot %q is in use by process %s", e.slot, e.pid)
}

// sessionResult is what Run learns of a session that ended.
type sessionResult struct {
	start      uint64        // the slot's position it started from
	streamed   time.Duration // how long it streamed; 0 if it never started
	progressed bool          // whether it confirmed anything past start to PostgreSQL
}

// session runs one replication connection from the slot's confirmed
// position until an error.
func (r *Reader) session(ctx context.Context) (res sessionResult, err error) {
	r.m.sessions.Inc()
	conn, err := connectReplication(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.Background())

	start, err := slotPosition(ctx, conn, r.cfg.Slot)
	var inUse *slotInUseError
	if errors.As(err, &inUse) && r.endStale {
		// The reader took the slot over: the walsender holding it is the
		// previous leader's, which may be paused rather than dead.
		start, err = r.endStaleWalsender(ctx, conn, inUse.pid)
	}
	if err != nil {
		return res, err
	}
	res.start = start
	origin, walEnd, err := r.identifyOrigin(ctx, conn)
	if err != nil {
		return res, err
	}
	// What the stream holds already is learnt before streaming, while
	// PostgreSQL waits for nothing from us; first, whatever earlier
	// sessions (or processes) sent is settled, so that none of it is
	// stored after the stream has been read (see settle).
	if err := r.settle(ctx); err != nil {
		return res, err
	}
	rp, err := r.resume(ctx, origin, walEnd, start)
	if err != nil {
		return res, fmt.Errorf("learn what the stream holds of %s: %w", origin, err)
	}
	old, err := r.newOldRows(ctx)
	if err != nil {
		return res, err
	}
	pubArg := strings.ReplaceAll(`"`+strings.ReplaceAll(r.cfg.Publication, `"`, `""`)+`"`, `'`, `''`)
	err = pglogrepl.StartReplication(ctx, conn, r.cfg.Slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{
		// messages: logical decoding messages, for the transactional
		// outbox (custom topics) and the heartbeat.
		PluginArgs: []string{"proto_version '1'", "publication_names '" + pubArg + "'", "messages 'true'"},
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" { // object_in_use
			return res, &slotInUseError{slot: r.cfg.Slot, pid: strings.TrimPrefix(pgErr.Message, fmt.Sprintf("replication slot \"%s\" is active for PID ", r.cfg.Slot))}
		}
		if errors.As(err, &pgErr) && pgErr.Code == "42704" { // undefined_object: dropped since slotPosition
			return res, fmt.Errorf("%w: %q: %s", errSlotMissing, r.cfg.Slot, pgErr.Message)
		}
		return res, fmt.Errorf("start replication from %s: %w", pglogrepl.LSN(start), err)
	}

	pub, err := stream.NewPublisher(r.nc, r.js, r.cfg.MaxInFlight, r.log, r.publisherOptions(rp.streamConfig, origin)...)
	if err != nil {
		return res, fmt.Errorf("start publisher: %w", err)
	}
	defer pub.Close()
	// The payload bucket follows the stream's settings as they are now.
	r.big.reset()

	r.log.Info("streaming", "from", pglogrepl.LSN(start).String())
	r.setStreaming(true)
	r.ackedLSN.Store(start)
	r.m.ackedLSN.Set(float64(start))

	s := &session{
		r:         r,
		conn:      conn,
		pub:       pub,
		relations: map[uint32]*relation{},
		nameOIDs:  map[string]uint32{},
		typeNames: map[uint32]string{},
		windows:   map[string]*window{},
		confirmed: start,

		origin:        origin,
		streamCreated: rp.streamCreated,
		skipping:      rp.skip,
		skipThrough:   rp.skipThrough,
		floor:         rp.floor,
		recorded:      rp.recordLSN,
		old:           old,
	}
	s.ev.hold = old != nil
	defer s.types.close()
	began := time.Now()
	err = s.loop(ctx)
	s.noteRefusal()
	if hook := testHookRefusalNoted; hook != nil && r.unsure.through != 0 {
		hook(ctx, r.cfg.Slot)
	}
	// Progress is what PostgreSQL was told: the position a session reached
	// without telling it (a keepalive's, before decoding failed) is where
	// the next session starts again.
	res.streamed, res.progressed = time.Since(began), s.sent > start
	return res, err
}

// errSlotMissing ends a session whose slot is gone while the reader ran
// (dropped, invalidated, or left behind by a failover): the leadership
// ends, and the next one creates the slot again and reports the loss
// (prepareSlot), as a start without the slot does.
var errSlotMissing = errors.New("the replication slot no longer exists")

// slotPosition reads the slot's confirmed_flush_lsn: the one position from
// which replaying loses nothing and repeats the least. It also tells
// whether another process holds the slot.
func slotPosition(ctx context.Context, conn *pgconn.PgConn, slot string) (uint64, error) {
	res, err := conn.Exec(ctx, fmt.Sprintf(
		"SELECT confirmed_flush_lsn, coalesce(active_pid::text, '') FROM pg_replication_slots WHERE slot_name = '%s'", slot)).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("read position of slot %s: %w", slot, err)
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return 0, fmt.Errorf("%w: %q", errSlotMissing, slot)
	}
	row := res[0].Rows[0]
	if pid := string(row[1]); pid != "" {
		return 0, &slotInUseError{slot: slot, pid: pid}
	}
	lsn, err := pglogrepl.ParseLSN(string(row[0]))
	if err != nil {
		return 0, fmt.Errorf("parse confirmed_flush_lsn of slot %s: %w", slot, err)
	}
	return uint64(lsn), nil
}

// endStaleWalsender ends the walsender with pid that holds the slot, as
// one that took the slot over may, waits until PostgreSQL has released the
// slot, and returns its position. The same role may end its own backends;
// another needs pg_signal_backend.
func (r *Reader) endStaleWalsender(ctx context.Context, conn *pgconn.PgConn, pid string) (uint64, error) {
	r.log.Warn("ending the walsender of the previous leader, which still holds the slot", "pid", pid)
	_, err := conn.Exec(ctx, fmt.Sprintf(
		"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '%s' AND active_pid IS NOT NULL", r.cfg.Slot)).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("end the walsender %s holding slot %s: %w", pid, r.cfg.Slot, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		start, err := slotPosition(ctx, conn, r.cfg.Slot)
		var inUse *slotInUseError
		if !errors.As(err, &inUse) || time.Now().After(deadline) {
			return start, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// relation is a table as last described by a Relation message, with its
// subjects formatted once.
type relation struct {
	table    *schema.Table
	subjects map[string]string // op → subject
	count    *atomic.Int64     // events published (Reader.tableCount)
	txKey    string            // the table in a transaction's counts (txCounts)
	// oldRows: 1 when its updates and deletes carry complete old rows
	// (oldrows.go), -1 when not, 0 not decided yet.
	oldRows     int8
	columnIndex map[string]int // column positions by name, for old rows
}

// session is the state of one replication connection. Only its goroutine
// touches it.
type session struct {
	r         *Reader
	conn      *pgconn.PgConn
	pub       *stream.Publisher
	relations map[uint32]*relation
	// nameOIDs is, by tableKey, the OID of the table last described under
	// each name in this session.
	nameOIDs  map[string]uint32
	typeNames map[uint32]string // user types, from pgoutput's Type messages
	// oddTopics holds the topic names this session warned of as names
	// WebSocket clients cannot subscribe to (at most maxOddTopics).
	oddTopics map[string]bool
	windows   map[string]*window // open on-demand snapshot chunks, by watermark id
	// published chunks awaiting acknowledgement
	pendingChunks []pendingChunk
	types         sessionTypes // JSON rules of user-defined column types (types.go)

	txn          schema.Txn
	inTxn        bool
	txnPublished bool     // the open transaction published an event
	tx           txCounts // the open transaction's events, for its marker (marker.go)
	// markerSubject is stream.TransactionSubject of the reader's database.
	markerSubject string
	ordinal       uint32
	lastSeq       uint64 // publisher sequence of the last event published
	commits       commitTracker
	wm            stream.Watermark // the publisher's, as last read by advance
	walEnd        uint64           // latest server WAL end seen
	// walBefore is walEnd before the XLogData being handled: a position
	// the reader may confirm without skipping that message on a replay
	// (see window.holdLSN).
	walBefore uint64
	row       rowMessage
	buf, ids  []byte   // a topic message and its id
	ev        eventBuf // row change events
	old       *oldRows // complete old rows (oldrows.go); nil when no table is opted in

	confirmed  uint64 // highest LSN safe to confirm
	sent       uint64 // last LSN sent in a status update
	lastStatus time.Time

	// The read deadline last set on the connection, and the wait it was set
	// for (readTick or flushAfter).
	deadline     time.Time
	deadlineWait time.Duration

	// What the stream held at the start (position.go).
	origin        string
	streamCreated time.Time
	skipping      bool
	skipThrough   eventID // while skipping, events up to it are stored already
	skipped       uint64
	// floor is a stream sequence every message of ours with an id beyond
	// confirmed lies after; sentFloor, the one for sent.
	floor, sentFloor uint64
	recorded         uint64 // LSN of the position record last written
	lastRecord       time.Time
	recordFailing    bool
}

const (
	// statusMinInterval spaces status updates that only report progress:
	// often enough that a restart replays little, rare enough to cost
	// nothing.
	statusMinInterval = time.Second
	// readTick bounds how long a read blocks, so that progress is noticed
	// and reported while the server is silent.
	readTick = 200 * time.Millisecond
	// flushAfter is how long a read waits, after events were published,
	// before the reader takes the silence for the end of what there is to
	// read and ends the publisher's batch (stream.Publisher.Flush), so that
	// JetStream acknowledges its last events now and the next event goes
	// alone. Events are sent as they come either way; this only decides
	// when their acknowledgements come.
	// The walsender sends in chunks of 8 KiB with gaps of a few hundred
	// microseconds between them while it decodes; a millisecond ends few
	// batches in the middle of a burst.
	flushAfter = time.Millisecond
)

func (s *session) loop(ctx context.Context) error {
	netConn := s.conn.Conn()
	for {
		// A publisher refused first: a fenced-out reader says so even when
		// it also lost its lease.
		if err := s.pub.Err(); err != nil {
			return fmt.Errorf("publish to JetStream: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		now := time.Now()
		s.advance()
		if (s.confirmed != s.sent && now.Sub(s.lastStatus) >= statusMinInterval) || now.Sub(s.lastStatus) >= s.r.cfg.StatusInterval {
			if err := s.sendStatus(now); err != nil {
				return err
			}
		}
		s.recordPosition(ctx, now)
		wait := readTick
		if s.pub.Unflushed() || s.old != nil && s.old.ahead.pending() {
			wait = flushAfter
		}
		// Moving the deadline costs a timer update per message; while
		// messages stream in, a deadline set less than an eighth of the
		// wait ago stands (the wait is then at least seven eighths of it).
		if deadline := now.Add(wait); wait != s.deadlineWait || deadline.Sub(s.deadline) > wait/8 {
			if err := netConn.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("set read deadline: %w", err)
			}
			s.deadline, s.deadlineWait = deadline, wait
		}
		msg, err := s.conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) {
				if wait == flushAfter {
					if err := s.flushRows(ctx); err != nil {
						return err
					}
					if err := s.pub.Flush(ctx); err != nil {
						return fmt.Errorf("publish to JetStream: %w", err)
					}
				}
				continue
			}
			return fmt.Errorf("receive replication message: %w", err)
		}
		// The receive may have waited up to readTick: what arrived is
		// timed from now on, not from the top of the loop.
		arrived := time.Now()
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handleCopyData(ctx, msg.Data, arrived); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("replication stream ended by the server")
		default:
			// NoticeResponse and the like: nothing to do.
		}
	}
}

// handleCopyData handles one message of the replication stream, which
// arrived at now.
func (s *session) handleCopyData(ctx context.Context, data []byte, now time.Time) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		s.walEnd = max(s.walEnd, uint64(ka.ServerWALEnd))
		s.advance()
		if ka.ReplyRequested {
			return s.sendStatus(now)
		}
	case pglogrepl.XLogDataByteID:
		if len(data) < 25 {
			return fmt.Errorf("XLogData of %d bytes", len(data))
		}
		s.walBefore = s.walEnd
		s.walEnd = max(s.walEnd, binary.BigEndian.Uint64(data[9:17]))
		return s.handleWAL(ctx, data[25:], now)
	}
	return nil
}

// handleWAL handles one pgoutput message.
func (s *session) handleWAL(ctx context.Context, wal []byte, now time.Time) error {
	if len(wal) == 0 {
		return nil
	}
	if s.old != nil {
		// Old rows read ahead (oldrows_batch.go): row changes may be kept
		// to read their previous versions at once; anything else comes
		// after them.
		if wal[0] == 'I' || wal[0] == 'U' || wal[0] == 'D' {
			return s.queueRow(ctx, wal)
		}
		if err := s.flushRows(ctx); err != nil {
			return err
		}
	}
	switch wal[0] {
	case 'I', 'U', 'D':
		return s.handleRow(ctx, wal)
	case 'B':
		var b pglogrepl.BeginMessage
		if err := b.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode begin: %w", err)
		}
		s.txn.Reset(uint64(b.FinalLSN), b.Xid, b.CommitTime)
		s.inTxn, s.ordinal, s.txnPublished = true, 0, false
		s.tx.reset()
	case 'C':
		var c pglogrepl.CommitMessage
		if err := c.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode commit: %w", err)
		}
		s.inTxn = false
		// The marker goes after the transaction's events and before its
		// commit is tracked: the commit is confirmed only once JetStream
		// stored the marker too.
		if err := s.publishMarker(ctx); err != nil {
			return err
		}
		seen := now
		if !s.txnPublished {
			seen = time.Time{} // nothing published: no latency to observe
		} else {
			s.r.m.commitReceipt.Observe(max(now.Sub(c.CommitTime), 0).Seconds())
		}
		s.commits.add(s.lastSeq, uint64(c.TransactionEndLSN), seen)
	case 'R':
		var rm pglogrepl.RelationMessage
		if err := rm.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode relation: %w", err)
		}
		rel, err := s.newRelation(ctx, &rm)
		if err != nil {
			return err
		}
		s.relations[rm.RelationID] = rel
		s.nameOIDs[tableKey(rm.Namespace, rm.RelationName)] = rm.RelationID
		if s.replaying() {
			// Described when it was first streamed: the registry holds
			// this shape, or a later one that writing it would take back.
			return nil
		}
		if err := s.recordShape(ctx, rel.table); err != nil {
			return err
		}
	case 'T':
		var tm pglogrepl.TruncateMessage
		if err := tm.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode truncate: %w", err)
		}
		for _, id := range tm.RelationIDs {
			rel, ok := s.relations[id]
			if !ok {
				return fmt.Errorf("truncate of relation %d that was never described", id)
			}
			s.ordinal++
			if len(s.windows) > 0 {
				s.noteTruncate(rel)
			}
			if err := s.publish(ctx, rel, &schema.Change{Op: schema.OpTruncate, Ordinal: s.ordinal}); err != nil {
				return err
			}
		}
	case 'Y':
		var tm pglogrepl.TypeMessage
		if err := tm.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode type: %w", err)
		}
		s.typeNames[tm.DataType] = tm.Namespace + "." + tm.Name
	case 'M':
		var m pglogrepl.LogicalDecodingMessage
		if err := m.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode logical decoding message: %w", err)
		}
		return s.handleMessage(ctx, &m, now)
	default:
		// Origin messages carry nothing to publish.
	}
	return nil
}

// topicMessagePrefix marks a logical decoding message as one for a custom
// topic: pg_logical_emit_message(true, 'tablecast:<topic>', '<json>').
// The WAL does not say which role wrote a message: whoever may execute the
// function may publish on any topic, which the DBA decides with its EXECUTE
// privilege (Doctor reports who may). The reader acts on nothing else a
// message says, except heartbeats and watermarks carrying its own random
// ids, and table additions, renames and drops carrying a nonce it recorded.
const topicMessagePrefix = "tablecast:"

// maxOddTopics bounds the topic names a session warns of once each.
const maxOddTopics = 1024

// handleMessage publishes a transactional logical decoding message whose
// prefix names a custom topic on that topic's subject, in its place among
// the transaction's changes: PostgreSQL sends it only if the transaction
// commits, which makes a transactional outbox without an outbox table.
// Heartbeats measure the lag from their emission to their arrival.
func (s *session) handleMessage(ctx context.Context, m *pglogrepl.LogicalDecodingMessage, now time.Time) error {
	if m.Prefix == heartbeatPrefix {
		token, at, _ := strings.Cut(string(m.Content), " ")
		if token != s.r.token {
			return nil
		}
		if sent, err := time.Parse(time.RFC3339Nano, at); err == nil {
			s.r.m.heartbeatLag.Set(now.Sub(sent).Seconds())
		}
		return nil
	}
	if m.Prefix == snapshotRequestPrefix || m.Prefix == watermarkPrefix {
		return s.onDemandMessage(ctx, m.Prefix, m.Content, uint64(m.LSN))
	}
	if m.Prefix == tableAddedPrefix {
		return s.handleTableAdded(ctx, m)
	}
	topic, ok := strings.CutPrefix(m.Prefix, topicMessagePrefix)
	if !ok {
		return nil // some other tool's message
	}
	if !m.Transactional || !s.inTxn {
		s.r.log.Warn("ignoring a non-transactional message for a custom topic: only pg_logical_emit_message(true, …) is published, at commit",
			"topic", topic, "lsn", m.LSN.String())
		return nil
	}
	if topic == "" {
		s.r.log.Warn("ignoring a message with an empty topic name", "lsn", m.LSN.String())
		return nil
	}
	if len(topic) > schema.MaxTopicLen {
		// Its subject could outgrow the line NATS reads it on (4 KiB by
		// default), and the server would close the reader's connection
		// at every replay of it: one statement would stop the stream.
		s.r.log.Warn(fmt.Sprintf("ignoring a message whose topic name is longer than %d bytes", schema.MaxTopicLen),
			"topic", topic[:schema.MaxTopicLen]+"…", "bytes", len(topic), "lsn", m.LSN.String())
		return nil
	}
	if problem := schema.TopicNameProblem(topic); problem != "" && !s.oddTopics[topic] && len(s.oddTopics) < maxOddTopics {
		// Published all the same: NATS subscribers read it (the subject's
		// tokens are encoded); the gateway refuses such a name.
		if s.oddTopics == nil {
			s.oddTopics = map[string]bool{}
		}
		s.oddTopics[topic] = true
		s.r.log.Warn("publishing a custom-topic message that WebSocket clients cannot subscribe to (NATS subscribers can)",
			"problem", problem, "subject", stream.TopicSubject(s.r.prefix, topic), "lsn", m.LSN.String())
	}
	s.ordinal++
	s.buf = s.buf[:0]
	// JSON text is UTF-8 (the bytea form of pg_logical_emit_message takes
	// any bytes, which json.Valid does not check), and the gateway holds
	// a message one level down in its frames: what is not JSON text, or
	// nests too deeply to be embedded, is carried as a JSON string, as a
	// json column's value would be, rather than lost or published broken.
	if jsonx.ValidNested(m.Content, schema.MaxEmbeddedJSONDepth) && utf8.Valid(m.Content) {
		s.buf = append(s.buf, m.Content...)
	} else {
		s.buf = jsonx.AppendStringBytes(s.buf, m.Content)
	}
	s.ids = s.txn.AppendID(s.ids[:0], s.ordinal)
	deadLetter := len(s.buf) > s.r.cfg.MaxEventBytes || !s.pub.Fits(string(s.ids), len(s.buf))
	if !deadLetter {
		// The marker counts what the stream holds of the transaction: a
		// message dead-lettered is not there, and a consumer counting the
		// transaction's messages against the marker would wait for it for
		// good (decided from the message alone, the same on a replay).
		s.tx.addTopic(topic)
	}
	if s.alreadyStored(s.txn.CommitLSN, s.ordinal) {
		if cap(s.buf) > keptBufferBytes {
			s.buf = nil
		}
		return nil
	}
	if deadLetter {
		err := s.r.deadLetterTopicMessage(ctx, topic, string(s.ids), s.txn.CommitLSN, s.buf)
		if cap(s.buf) > keptBufferBytes {
			s.buf = nil
		}
		return err
	}
	seq, err := s.pub.Publish(ctx, stream.TopicSubject(s.r.prefix, topic), string(s.ids), s.buf)
	if err != nil {
		return fmt.Errorf("publish message for topic %s: %w", topic, err)
	}
	s.lastSeq, s.txnPublished = seq, true
	s.r.m.messages.Inc()
	return nil
}

func (s *session) newRelation(ctx context.Context, rm *pglogrepl.RelationMessage) (*relation, error) {
	t := &schema.Table{
		RelationID:      rm.RelationID,
		Schema:          rm.Namespace,
		Name:            rm.RelationName,
		ReplicaIdentity: rm.ReplicaIdentity,
		Columns:         make([]schema.Column, len(rm.Columns)),
	}
	for i, c := range rm.Columns {
		t.Columns[i] = schema.Column{Name: c.Name, TypeOID: c.DataType, TypeMod: c.TypeModifier, Identity: c.Flags&1 != 0}
	}
	if err := s.resolveColumnTypes(ctx, t); err != nil {
		return nil, err
	}
	if err := s.lookUpKey(ctx, rm.RelationID, t); err != nil {
		return nil, err
	}
	return s.namedRelation(t), nil
}

// namedRelation returns the relation of t, with its subjects and counts.
func (s *session) namedRelation(t *schema.Table) *relation {
	rel := &relation{table: t, subjects: map[string]string{}, count: s.r.tableCount(t.Schema, t.Name), txKey: t.Schema + "\x00" + t.Name}
	for _, op := range schema.AllOps.Names() {
		rel.subjects[op] = stream.ChangeSubject(s.r.prefix, s.r.db, t.Schema, t.Name, op)
	}
	return rel
}

func (s *session) handleRow(ctx context.Context, wal []byte) error {
	if err := s.row.decode(wal); err != nil {
		return err
	}
	rel, ok := s.relations[s.row.relationID]
	if !ok {
		return fmt.Errorf("change to relation %d that was never described", s.row.relationID)
	}
	c := schema.Change{New: s.row.new, Old: s.row.old, OldKeyOnly: s.row.oldKeyOnly}
	switch s.row.kind {
	case 'I':
		c.Op = schema.OpCreate
	case 'U':
		c.Op = schema.OpUpdate
	case 'D':
		c.Op = schema.OpDelete
	}
	s.ordinal++
	c.Ordinal = s.ordinal
	if len(s.windows) > 0 {
		s.noteChange(rel, c.Old)
		s.noteChange(rel, c.New)
	}
	return s.publish(ctx, rel, &c)
}

func (s *session) publish(ctx context.Context, rel *relation, c *schema.Change) error {
	if !s.inTxn {
		return errors.New("row change outside a transaction")
	}
	// Counted whether or not it is stored already: a replayed
	// transaction's marker counts all of its events.
	s.tx.addTable(rel)
	if s.alreadyStored(s.txn.CommitLSN, c.Ordinal) {
		return nil
	}
	opted := s.old != nil && s.old.opted(rel)
	var oldKey []byte
	if opted && (c.Op == schema.OpUpdate || c.Op == schema.OpDelete) {
		var err error
		if oldKey, err = s.complete(ctx, rel, c); err != nil {
			return err
		}
	}
	seq, err := s.r.publishChange(ctx, s.pub, rel.subjects[c.Op], rel.table, &s.txn, c, &s.ev)
	if err != nil {
		return err
	}
	// Before remember, which may wait for the row state and meanwhile
	// confirm what is acknowledged: this event is in flight.
	s.lastSeq, s.txnPublished = seq, true
	if opted {
		var ev []byte
		if s.ev.whole {
			ev = s.ev.buf
		}
		if err := s.remember(ctx, rel.table, eventID{s.txn.CommitLSN, uint64(c.Ordinal)}, c, oldKey, ev); err != nil {
			return err
		}
	}
	s.ev.release()
	s.r.m.published[c.Op].Inc()
	rel.count.Add(1)
	return nil
}

// advance moves the confirmable position forward: to the end of every
// transaction JetStream has fully acknowledged and, when nothing is in
// flight, to the server's WAL end, so that an idle slot (or one whose busy
// tables are not published) does not hold WAL forever. With it moves the
// floor of the position record (position.go).
func (s *session) advance() {
	prev := s.wm
	if s.pub.Acked() != prev.N {
		s.wm = s.pub.Watermark()
	}
	wm := s.wm
	if len(s.pendingChunks) > 0 {
		// Stored chunks hold the position no longer.
		s.releaseChunks(wm.N)
	}
	limit := s.confirmLimit()
	// Latency runs to when JetStream's acknowledgement was handled, not to
	// now: the loop may have been waiting in a receive meanwhile.
	if lsn := s.commits.advance(wm.N, wm.At, s.observe); lsn > s.confirmed {
		if lsn <= limit {
			s.confirmed = lsn
			// The floor is where the last message of the last confirmed
			// transaction is stored, or, when the watermark is already
			// beyond it, where the watermark of the previous advance was:
			// before it, since JetStream stores our messages in order.
			if s.commits.lastPopped == wm.N {
				s.setFloor(wm)
			} else {
				s.setFloor(prev)
			}
		} else {
			s.confirmed = max(s.confirmed, limit) // the floor stays: still below
		}
	}
	if !s.inTxn && s.commits.empty() && wm.N == s.lastSeq && s.walEnd > s.confirmed {
		if to := min(s.walEnd, limit); to > s.confirmed {
			s.confirmed = to
			if to == s.walEnd {
				s.setFloor(wm) // every message published so far is at or below it
			}
		}
	}
	if s.r.ackedLSN.Load() != s.confirmed {
		s.r.ackedLSN.Store(s.confirmed)
		s.r.m.ackedLSN.Set(float64(s.confirmed))
	}
}

// setFloor makes the stream sequence of wm's message the floor, if wm is
// one of this session's: before any, the floor learnt at the start stays.
func (s *session) setFloor(wm stream.Watermark) {
	// StreamSeq is where message N is stored, or a sequence before it
	// (batches tell where their messages are when they end): a floor
	// either way, but maybe below the one already known.
	if wm.N > 0 {
		s.floor = max(s.floor, wm.StreamSeq)
	}
}

func (s *session) observe(d time.Duration) {
	// A transaction whose events were all acknowledged before its commit
	// message was read waited for nothing.
	s.r.m.publishLatency.Observe(max(d, 0).Seconds())
}

// testHookRefusalNoted, when set (tests), runs when a session ends that
// left the stream with a possible gap (noteRefusal), before the next one.
var testHookRefusalNoted func(ctx context.Context, slot string)

// testHookConfirmAtMost, when not 0 (tests), is the highest LSN a session
// confirms to PostgreSQL, so that a restart replays what the stream holds
// already.
var testHookConfirmAtMost atomic.Uint64

func (s *session) sendStatus(now time.Time) error {
	lsn := pglogrepl.LSN(s.confirmed)
	if most := testHookConfirmAtMost.Load(); most != 0 && uint64(lsn) > most {
		lsn = pglogrepl.LSN(most)
	}
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn, ClientTime: now,
	})
	if err != nil {
		return fmt.Errorf("confirm LSN %s: %w", lsn, err)
	}
	s.sent, s.sentFloor, s.lastStatus = uint64(lsn), s.floor, now
	return nil
}

// Database returns the name of the database the reader streams, as its
// subjects name it; valid once Registered is closed.
func (r *Reader) Database() string { return r.db }
