package webhook

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/stream"
)

// Tables finds the table of an event: *catalog.Catalog.
type Tables interface {
	TableIn(db, schemaName, table string) *catalog.Table
}

// States changes an endpoint's state, records its retention gaps, and
// reads an endpoint as stored (to prove one deleted, see leftovers.go):
// *endpoint.Store. RecordRetentionGap answers endpoint.ErrGapKnown to a
// gap at the start (AtStart) of an endpoint that has gaps already.
type States interface {
	GetEndpoint(ctx context.Context, id string) (*endpoint.Endpoint, error)
	SetEndpointState(ctx context.Context, id string, expected uint64, state endpoint.State, reason string) (*endpoint.Endpoint, error)
	RecordRetentionGap(ctx context.Context, id string, gap endpoint.RetentionGap) (*endpoint.Endpoint, error)
}

// Config configures webhook delivery. Zero fields take the defaults
// documented on each; Registry, Tables and States are required.
type Config struct {
	// Stream is the event stream. Default stream.DefaultStreamName.
	Stream string
	// Prefix is the subject prefix of the events. Default
	// stream.DefaultPrefix.
	Prefix string
	// Replicas of the dead-letter stream when created here. Default 1.
	Replicas int
	// Registry holds the endpoints and their matchers; the caller runs it.
	Registry *match.Registry
	// Tables finds the table of each event (its columns, to match it).
	Tables Tables
	// States disables an endpoint that answered 410 Gone, and records the
	// events the stream discarded before an endpoint read them.
	States States
	// AllowNets are the networks webhooks may reach although their
	// addresses are loopback, private, link-local or otherwise reserved.
	// Default none: only public addresses.
	AllowNets []netip.Prefix
	// Registerer takes the metrics. Nil registers none.
	Registerer prometheus.Registerer
	// Logger; nil logs nothing.
	Logger *slog.Logger
	// AckWait is how long a message read but neither acknowledged nor
	// kept in progress stays with a process before JetStream gives it to
	// another (a process that died). Default 15s.
	AckWait time.Duration
	// PinnedTTL is how long a process that stops reading an endpoint's
	// consumer keeps it before another process may read it. Default 10s.
	PinnedTTL time.Duration
	// PayloadBucket is the object store bucket of the events too large for
	// one NATS message: only claims to it are resolved. Default
	// stream.DefaultPayloadBucket.
	PayloadBucket string
	// OrphanBodyEvery is how often the objects of the dead letters' bodies
	// that no record names are looked for (and once at the start).
	// Default 1h.
	OrphanBodyEvery time.Duration
	// OrphanBodyAge: such an object is deleted once it is this old, which
	// leaves the process that stored it the time to publish its record,
	// through a NATS outage too. Default 24h.
	OrphanBodyAge time.Duration
	// LeftoverEvery is how often the consumers, dead letters and queued
	// replays of endpoints deleted while no process delivering webhooks
	// ran are looked for (and once at the start). Default 1h.
	LeftoverEvery time.Duration
	// LeftoverAge: such leftovers are removed once the youngest of an
	// endpoint's is this old and its key holds no endpoint, which keeps
	// the things of an endpoint created a moment ago (in another process,
	// before this one's registry shows it) from looking like those of one
	// deleted. Default 10m.
	LeftoverAge time.Duration
}

// Defaults of Config.
const (
	DefaultAckWait         = 15 * time.Second
	DefaultPinnedTTL       = 10 * time.Second
	DefaultOrphanBodyEvery = time.Hour
	DefaultOrphanBodyAge   = 24 * time.Hour
	DefaultLeftoverEvery   = time.Hour
	DefaultLeftoverAge     = 10 * time.Minute
)

// Manager delivers the events of every active webhook endpoint, each with
// a worker of its own.
type Manager struct {
	cfg       Config
	js        jetstream.JetStream
	log       *slog.Logger
	met       *metrics
	client    *http.Client
	resolver  *stream.Resolver
	dl        *DeadLetters
	eventsStr string

	mu      sync.Mutex
	workers map[string]*worker // by endpoint id
	// last is the latest worker of each endpoint, running or stopping: the
	// next one waits for it.
	last map[string]*worker
	// wg counts the workers until each is done (dormant ones too, which
	// have no goroutine), and the deletions of consumers.
	wg sync.WaitGroup
	// series is the name each endpoint's metrics' series are under, by
	// endpoint id: every endpoint the Registry has, paused ones too (the
	// retention watch sets their gauge), so that the series go when the
	// endpoint is deleted or renamed, whether a worker runs or not.
	series map[string]string

	sleep *sleepers // the dormant endpoints (see dormant.go)
	// extraPull is what the endpoints' pulls ask for beyond two batches a
	// lane, in all (see maxExtraPull).
	extraPull atomic.Int64
	// sweepEvery is how often dormant endpoints are swept (replayPoll;
	// tests set 0 for none).
	sweepEvery time.Duration
	// hooks, for tests only, run as a worker goes dormant.
	hooks atomic.Pointer[sleepHooks]
	// beforeCreate, for tests only, runs in a worker's goroutine as it is
	// about to create its endpoint's consumer, which it found missing.
	beforeCreate atomic.Pointer[func(endpointID string)]
	// beforeDeadLetter, for tests only, runs in a lane as it is about to
	// store the n-th (from 0) dead letter of a request given up, with the
	// context it stores it under and the worker's.
	beforeDeadLetter atomic.Pointer[func(ctx, worker context.Context, endpointID string, n int)]
	// afterReplay, for tests only, runs in a worker as a replayed dead
	// letter has been delivered (or dead-lettered again), before it is
	// acknowledged and removed.
	afterReplay atomic.Pointer[func(worker context.Context, endpointID string)]

	// events is the event stream's handle, for reading its first sequence
	// (see retention.go); set at its first use.
	eventsMu sync.Mutex
	events   jetstream.Stream
	// firstSeqReads counts the reads of the stream's first sequence (the
	// cost of the retention checks, which tests look at).
	firstSeqReads atomic.Int64
	// gapMu orders the records of retention gaps (see reportGap).
	gapMu sync.Mutex
	// watchEvery is how often the endpoints' unread events are compared
	// with the stream's limits (retentionWatch; tests set less, 0 for
	// never). atRisk are the endpoints last found past half of them: the
	// watch's goroutine's.
	watchEvery time.Duration
	atRisk     map[string]bool
}

// sleepHooks run in a worker's goroutine as it goes dormant: beforeArm
// after the empty pull, before it subscribes; armed after it subscribed,
// before its last check.
type sleepHooks struct {
	beforeArm, armed func(endpointID string)
	// lost, when it reports true, drops a message the endpoint's pull
	// brought, as if it had been lost on its way.
	lost func(endpointID string, meta *jetstream.MsgMetadata) bool
}

// New prepares a Manager: it creates the dead-letter stream when missing.
// Run delivers.
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Manager, error) {
	if cfg.Registry == nil || cfg.Tables == nil || cfg.States == nil {
		return nil, errors.New("webhook: Registry, Tables and States are required")
	}
	if cfg.Stream == "" {
		cfg.Stream = stream.DefaultStreamName
	}
	if cfg.Prefix == "" {
		cfg.Prefix = stream.DefaultPrefix
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.PinnedTTL <= 0 {
		cfg.PinnedTTL = DefaultPinnedTTL
	}
	if cfg.PayloadBucket == "" {
		cfg.PayloadBucket = stream.DefaultPayloadBucket
	}
	if cfg.OrphanBodyEvery <= 0 {
		cfg.OrphanBodyEvery = DefaultOrphanBodyEvery
	}
	if cfg.OrphanBodyAge <= 0 {
		cfg.OrphanBodyAge = DefaultOrphanBodyAge
	}
	if cfg.LeftoverEvery <= 0 {
		cfg.LeftoverEvery = DefaultLeftoverEvery
	}
	if cfg.LeftoverAge <= 0 {
		cfg.LeftoverAge = DefaultLeftoverAge
	}
	dl, err := OpenDeadLetters(ctx, js, cfg.Stream, cfg.Prefix, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:        cfg,
		js:         js,
		log:        cfg.Logger,
		met:        newMetrics(cfg.Registerer),
		client:     newClient(cfg.AllowNets),
		resolver:   stream.NewResolver(js),
		dl:         dl,
		eventsStr:  cfg.Stream,
		workers:    map[string]*worker{},
		last:       map[string]*worker{},
		series:     map[string]string{},
		sweepEvery: replayPoll,
		watchEvery: retentionWatch,
		atRisk:     map[string]bool{},
	}
	m.sleep = newSleepers(m, js.Conn())
	return m, nil
}

func newClient(allow []netip.Prefix) *http.Client {
	return &http.Client{
		Transport: newTransport(allow, nil),
		// A redirect is an answer like any other that is not 2xx: never
		// followed (it could point anywhere).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// DeadLetters returns the dead letters of the Manager's stream.
func (m *Manager) DeadLetters() *DeadLetters { return m.dl }

// Run starts and stops workers as endpoints come, change and go, until
// ctx ends; then it stops them all and returns.
func (m *Manager) Run(ctx context.Context) {
	l := m.cfg.Registry.Listen()
	defer l.Close()
	select {
	case <-m.cfg.Registry.Ready():
	case <-ctx.Done():
		return
	}
	// Replays queued (here or by another process) wake the endpoint's
	// worker: one subscription for every endpoint.
	replaySub, err := m.sleep.nc.ChanSubscribe(m.dl.ReplaySubject("*"), m.sleep.ch)
	if err != nil {
		m.log.Warn("cannot subscribe to webhook replays; dormant endpoints see them within the sweep", "err", err, "sweep", m.sweepEvery)
	} else {
		defer func() { _ = replaySub.Unsubscribe() }()
	}
	// The periodic passes: dormant endpoints' sweep (dormant.go), the
	// retention watch (retention.go), orphaned dead-letter bodies
	// (bodies.go), and the leftovers of endpoints deleted while no process
	// ran (leftovers.go). They stop before Run returns.
	var sweeper sync.WaitGroup
	defer sweeper.Wait()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	periodic := func(every time.Duration, now bool, pass func(context.Context)) {
		if every <= 0 {
			return
		}
		sweeper.Add(1)
		go func() {
			defer sweeper.Done()
			runEvery(pctx, every, now, pass)
		}()
	}
	periodic(m.cfg.OrphanBodyEvery, true, m.orphanBodies)
	periodic(m.cfg.LeftoverEvery, true, m.leftovers)
	periodic(m.watchEvery, false, m.watchRetention)
	periodic(m.sweepEvery, false, m.sweep)
	for {
		select {
		case <-ctx.Done():
			// Wakes are still read while the workers stop: a full channel
			// counts as a slow consumer on the connection.
			stopped := make(chan struct{})
			go func() {
				m.stopAll()
				close(stopped)
			}()
			for {
				select {
				case <-stopped:
					return
				case <-m.sleep.ch:
				}
			}
		case <-l.C():
			for _, id := range l.Take() {
				m.apply(ctx, id)
			}
		case msg := <-m.sleep.ch:
			if replaySub != nil && msg.Sub == replaySub {
				if i := strings.LastIndexByte(msg.Subject, '.'); i >= 0 {
					m.wakeReplays(msg.Subject[i+1:])
				}
				continue
			}
			m.sleep.woke(msg)
		}
	}
}

// apply brings the worker of endpoint id in line with its definition.
func (m *Manager) apply(ctx context.Context, id string) {
	e := m.cfg.Registry.Get(id)
	m.mu.Lock()
	w := m.workers[id]
	named := m.series[id]
	if e != nil {
		m.series[id] = e.Endpoint.Name
	} else {
		delete(m.series, id)
	}
	prev := m.last[id]
	m.mu.Unlock()
	if named != "" && (e == nil || e.Endpoint.Name != named) {
		m.forgetSeries(named, prev)
	}
	if w != nil && e != nil && w.sameRun(e) {
		w.entry.Store(e) // a new matcher or name: taken at the next batch
		return
	}
	if w != nil {
		// Stopped without waiting: its pull ends at its expiry (see
		// dispatch), and endpoints changing together must not wait for
		// each other. The worker that follows waits for it.
		w.cancel()
		m.mu.Lock()
		delete(m.workers, id)
		m.mu.Unlock()
	}
	if e == nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			if prev != nil {
				<-prev.done
			}
			m.deleteConsumers(ctx, id)
			_ = m.purgeDeadLetters(ctx, id) // logged
			m.mu.Lock()
			if m.last[id] == prev {
				delete(m.last, id)
			}
			m.mu.Unlock()
		}()
		return
	}
	if e.Endpoint.Type != endpoint.TypeWebhook || e.Endpoint.Webhook == nil || e.Endpoint.State != endpoint.StateActive {
		return
	}
	replaced := w != nil && w == prev
	w = newWorker(ctx, m, e)
	w.prev = prev
	w.handover = replaced
	m.mu.Lock()
	m.workers[id] = w
	m.last[id] = w
	m.mu.Unlock()
	m.wg.Add(1) // done as the worker is (see worker.run)
	go w.run()
}

// forgetSeries drops the metrics' series of name, an endpoint's until it
// was deleted or renamed: at once, and again once prev (the endpoint's
// last worker, nil for none) is done, since a worker stopping may still
// count what it was doing. Not while another endpoint has the name (taken
// meanwhile, or given back).
func (m *Manager) forgetSeries(name string, prev *worker) {
	m.forgetUnused(name)
	if prev == nil {
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		<-prev.done
		m.forgetUnused(name)
	}()
}

// forgetUnused drops the series of name unless an endpoint has the name.
func (m *Manager) forgetUnused(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range m.series {
		if n == name {
			return
		}
	}
	m.met.forget(name)
}

// deleteConsumers removes the consumers of an endpoint that is gone, and
// returns the names of those it deleted (one already gone, deleted by
// another process say, is not an error).
func (m *Manager) deleteConsumers(ctx context.Context, id string) []string {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var deleted []string
	for _, c := range []struct{ str, name string }{{m.eventsStr, consumerName(id)}, {m.dl.name, replayConsumerName(id)}} {
		err := m.js.DeleteConsumer(dctx, c.str, c.name)
		switch {
		case err == nil:
			deleted = append(deleted, c.name)
		case !errors.Is(err, jetstream.ErrConsumerNotFound):
			m.log.Warn("cannot delete the consumer of a deleted webhook endpoint", "endpoint_id", id, "consumer", c.name, "err", err)
		}
	}
	return deleted
}

// purgeDeadLetters removes the dead letters of an endpoint that is gone,
// its replays and their body objects: nothing can list, read or replay
// them any more (the admin API answers 404 for the endpoint). Every
// process does, once its worker of the endpoint has stopped; one whose
// worker stored a dead letter after another process purged removes it.
// An error is logged here, and returned.
func (m *Manager) purgeDeadLetters(ctx context.Context, id string) error {
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := m.dl.purgeEndpoint(pctx, id)
	if err != nil {
		m.log.Warn("cannot delete the dead letters of a deleted webhook endpoint", "endpoint_id", id, "err", err)
	}
	return err
}

func (m *Manager) stopAll() {
	m.mu.Lock()
	ws := make([]*worker, 0, len(m.workers))
	for _, w := range m.workers {
		ws = append(ws, w)
	}
	m.workers = map[string]*worker{}
	m.last = map[string]*worker{}
	m.mu.Unlock()
	for _, w := range ws {
		w.cancel()
	}
	m.wg.Wait()
}

// Workers returns how many endpoints are being delivered (dormant ones
// among them).
func (m *Manager) Workers() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.workers)
}

// consumerName is the durable consumer of an endpoint on the event stream.
func consumerName(id string) string { return "tablecast_webhook_" + id }

// replayConsumerName is the durable consumer of an endpoint's replayed
// dead letters.
func replayConsumerName(id string) string { return "tablecast_webhook_replay_" + id }

// priorityGroup is the group every process pulls an endpoint's consumer
// in: pinned, so that one process at a time reads it.
const priorityGroup = "deliver"

// runEvery runs pass every every until ctx ends, and once at the start too
// when now.
func runEvery(ctx context.Context, every time.Duration, now bool, pass func(context.Context)) {
	if now {
		pass(ctx)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pass(ctx)
	}
}
