package webhook

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// maxHeld bounds the messages one endpoint holds at once (its consumer's
// MaxAckPending, whatever its batch and lanes).
//
// It is as large as the reader's window of events published but not yet
// stored (cdc's default MaxInFlight) because of how JetStream serves a
// consumer while it stores: one goroutine per stream takes turns between
// storing every message publishers have queued (the reader's whole window
// when it is busy, a few hundred milliseconds of work) and handing out
// what its consumers may deliver. A consumer gets at most MaxAckPending
// less what it holds in each turn, so an endpoint that may hold fewer than
// the reader's window falls behind the reader in that proportion while the
// reader stores (with two batches of 100, to about 3% of its rate), and
// catches up only once it has stopped. Messages are held only while they
// come faster than they are delivered: an endpoint keeping up holds a
// batch or two.
const maxHeld = 8192

// maxExtraPull bounds, across a Manager's endpoints, how many messages
// their pulls may ask for beyond two batches a lane: endpoints catching up
// together hold at most this many more (about 1 KiB each, a few tens of
// MiB in all), and the others stay at two batches until some give back.
const maxExtraPull = 32768

// perLane is the pull's size, per lane, for a batch of batch while the
// endpoint is not behind: two batches, one being posted while the next
// arrives, so that the receiver does not wait, between batches, for the
// acknowledgements to reach JetStream and the next messages to come back.
// At least minPerLane: with batch 1, the next events are ready as soon as
// one is accepted. A pull that fills grows the next one, up to maxHeld
// (see dispatch).
//
// Holding more than a batch keeps the order only while no earlier reader
// left messages unacknowledged: those come again (after a stop at once,
// after a process died at the ack wait) while JetStream gives later ones
// as far as MaxAckPending lets it. So a worker that finds messages pending
// on its consumer reads with MaxAckPending of one batch per lane until none
// is, and then with its whole capacity (see recovering); and it delivers
// nothing read before those came (see awaiting): fewer than a batch
// pending leaves room for later ones to come first.
func perLane(batch int) int { return max(2*max(1, batch), minPerLane) }

// minPerLane is the smallest pull per lane.
const minPerLane = 32

// fillWait is how long a lane that is behind (its last batch was full)
// waits for its next batch to fill. The messages of the next batch come
// as JetStream takes the acknowledgements of the last one, a fraction of
// a millisecond apart: without the wait, a lane behind posts one message
// and then the rest, two requests for each batch's worth.
const fillWait = 2 * time.Millisecond

// fetchWait is how long a pull stays open waiting for messages, and so
// how long a worker may take to stop (see dispatch); an endpoint whose
// pull brought nothing goes dormant after it (see dormant.go).
const fetchWait = 2 * time.Second

// worker delivers one endpoint's events: a dispatcher pulls the
// endpoint's consumer and hands each message to a lane (one lane, or one
// per concurrency slot by row key); a lane delivers its messages in order.
type worker struct {
	m        *Manager
	id       string
	entry    atomic.Pointer[match.Entry]
	wh       endpoint.Webhook // the settings this worker runs with
	subjects []string
	lanes    int
	capacity int // messages held at most (MaxAckPending)
	pull     int // the pull's size while the endpoint is not behind
	safe     int // messages held at most while recovering: a batch per lane
	// recovering is set while the consumer has messages pending that an
	// earlier reader left (read by the dispatcher only; see perLane).
	recovering bool

	ctx    context.Context
	cancel context.CancelFunc
	parent context.Context // the Manager's: ends as it stops
	done   chan struct{}
	// prev is the endpoint's worker this one replaces, nil for none: this
	// one reads nothing before prev has given back what it held (in
	// order), and is done only after prev is.
	prev *worker
	// handover is set when prev was running until this one was made (the
	// endpoint's settings changed), not stopped before (paused).
	handover bool
	// gaps judges the consumer's jumps (see retention.go); the
	// dispatcher's.
	gaps gapCheck
	// lastDelivery is the consumer's delivery sequence of the last message
	// read (the consumer's own count when it was set up): a message
	// read after a jump in it was given out after one that never arrived
	// (see parked). The dispatcher's.
	lastDelivery uint64
	// parked holds, in the order read, the messages read since a delivery
	// went missing, given to no lane yet: the missing one (JetStream gives
	// it again only after the ack wait) goes before them. The
	// dispatcher's.
	parked []jetstream.Msg
	// awaiting is set when the worker started with messages given out
	// that no one here holds (a process that died, a worker that stopped
	// waiting for a missing one, another process's): they come again only
	// after their ack wait, or once given back, so what is read meanwhile
	// is parked as after a missing delivery. The dispatcher's.
	awaiting bool

	// retrying holds the requests that failed and are being retried, by
	// the stream sequence of their first event: handed to the worker that
	// replaces this one on an edit of the endpoint, which sends the same
	// events under the same webhook-id and goes on counting max_age and
	// attempts from the first attempt.
	retryingMu sync.Mutex
	retrying   map[uint64]retrying

	heldMu sync.Mutex
	held   map[uint64]jetstream.Msg // by stream sequence: read, not yet acknowledged
	// delivered is signalled when messages held are acknowledged (let go);
	// acked counts them.
	delivered chan struct{}
	acked     atomic.Int64
	// acking counts the calls of ack under way: while one is, a message
	// JetStream has had acknowledged may still be held (see unpark).
	acking atomic.Int64

	// cons is the endpoint's consumer once set up; kept while dormant, so
	// that a wake pulls at once.
	cons jetstream.Consumer
	// sleep and woken are guarded by the Manager's sleepers' mu (see
	// dormant.go); resumed is set by the wake that starts the goroutine.
	sleep   sleepState
	woken   bool
	resumed bool
	// replayWoken asks the dispatcher to look for replays now;
	// replayWokenAt is when a replay last woke the worker (unix ns).
	replayWoken   atomic.Bool
	replayWokenAt atomic.Int64
}

func newWorker(parent context.Context, m *Manager, e *match.Entry) *worker {
	wh := *e.Endpoint.Webhook
	w := &worker{m: m, id: e.Endpoint.ID, wh: wh, done: make(chan struct{}), held: map[uint64]jetstream.Msg{}, delivered: make(chan struct{}, 1)}
	w.ctx, w.cancel = context.WithCancel(parent)
	w.parent = parent
	w.entry.Store(e)
	w.subjects = match.Subjects(m.cfg.Prefix, e.Matcher.Filters(), e.Matcher.Rules())
	w.lanes = 1
	if wh.ParallelByKey {
		w.lanes = max(1, wh.Concurrency)
	}
	w.capacity = maxHeld
	w.pull = min(maxHeld, w.lanes*perLane(wh.Batch))
	w.safe = min(maxHeld, w.lanes*max(1, wh.Batch))
	// A dormant worker has no goroutine to see its context end: the end
	// wakes it, and it stops as a running one does.
	context.AfterFunc(w.ctx, func() { m.sleep.wake(w) })
	return w
}

func (w *worker) name() string { return w.entry.Load().Endpoint.Name }

// sameRun reports whether e can be delivered by this worker as it runs:
// the same settings, consumer filters and name, active.
func (w *worker) sameRun(e *match.Entry) bool {
	ep := e.Endpoint
	return ep.State == endpoint.StateActive && ep.Webhook != nil && ep.Name == w.name() &&
		reflect.DeepEqual(*ep.Webhook, w.wh) &&
		slices.Equal(match.Subjects(w.m.cfg.Prefix, e.Matcher.Filters(), e.Matcher.Rules()), w.subjects)
}

func (w *worker) log() *slog.Logger {
	return w.m.log.With("endpoint", w.name(), "endpoint_id", w.id)
}

// run is the worker's goroutine, from its start and again each time it
// wakes from dormancy. The worker is done (done closed, the Manager's wg
// told) when it returns other than dormant.
func (w *worker) run() {
	if w.prev != nil {
		<-w.prev.done
		if slices.Equal(w.prev.subjects, w.subjects) {
			w.gaps.inherit(&w.prev.gaps, w.handover)
		}
		if w.handover {
			// An edit, not a pause: the requests being retried go on.
			w.prev.retryingMu.Lock()
			w.retrying = w.prev.retrying
			w.prev.retryingMu.Unlock()
		}
		w.prev = nil
		if w.ctx.Err() != nil {
			w.end()
			return
		}
	}
	if w.serve() {
		return // dormant
	}
	w.gaps.givenBack = w.nakHeld()
	w.unpin()
	w.end()
}

func (w *worker) end() {
	close(w.done)
	w.m.wg.Done()
}

// serve delivers until the worker stops (false) or goes dormant (true).
func (w *worker) serve() bool {
	resumed := w.resumed
	w.resumed = false
	var wg sync.WaitGroup
	defer wg.Wait()
	if len(w.subjects) == 0 {
		return w.serveReplays(&wg)
	}
	if w.cons == nil {
		var created bool
		if w.cons, created = w.consumer(w.ctx); w.cons == nil {
			return false
		}
		if created {
			w.checkStart(w.ctx, w.cons.CachedInfo())
		}
		w.gaps.start(w.cons.CachedInfo(), w.reconnects())
		w.lastDelivery = w.cons.CachedInfo().Delivered.Consumer
		w.awaiting = w.cons.CachedInfo().NumAckPending > 0
		w.settle(w.ctx, w.cons.CachedInfo())
		w.log().Info("webhook delivery started", "subjects", strings.Join(w.subjects, " "), "lanes", w.lanes, "batch", w.wh.Batch, "batch_bytes", w.batchBytes())
	}
	lanes := make([]*lane, w.lanes)
	for i := range lanes {
		lanes[i] = newLane(&wg)
	}
	// Held messages are kept in progress by a goroutine of their own, not
	// between the dispatcher's pulls: the dispatcher may wait (for a pull
	// to expire, for room to hold more) longer than the ack wait allows,
	// and JetStream would then give a held message again, to this process
	// (where a copy that comes after the held one was acknowledged is
	// delivered twice) or to another.
	pctx, stopProgress := context.WithCancel(w.ctx)
	var progressWG sync.WaitGroup
	progressWG.Add(1)
	go func() {
		defer progressWG.Done()
		w.keepInProgress(pctx)
	}()
	defer func() {
		wg.Wait() // the lanes, which may hold messages to the end
		stopProgress()
		progressWG.Wait()
	}()
	return w.dispatch(w.ctx, lanes, &wg, resumed)
}

// serveReplays serves an endpoint linked to nothing, which has nothing to
// read but replays: it delivers those queued, then goes dormant until
// another is (or the worker stops: false).
func (w *worker) serveReplays(wg *sync.WaitGroup) bool {
	for w.ctx.Err() == nil {
		ctx, cancel := context.WithCancel(w.ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.keepInProgress(ctx)
		}()
		w.replays(w.ctx)
		cancel()
		wg.Wait()
		if w.ctx.Err() != nil || w.m.sleep.arm(w) != nil { // arming subscribes nothing here: it cannot fail
			break
		}
		if !w.replayComing() && !w.m.dl.queued(w.ctx, w.id) && w.m.sleep.sleep(w) {
			return true
		}
		w.m.sleep.disarm(w)
		if w.replayComing() && !sleep(w.ctx, 20*time.Millisecond) {
			break // the replay that woke it is not stored yet
		}
	}
	return false
}

// lane is a queue of messages delivered in order by a goroutine that runs
// only while the queue has some: an idle endpoint keeps no goroutine (and
// its stack) for it. The queue grows with what it holds (up to the
// worker's capacity): a channel sized for the capacity would cost its
// whole buffer per lane for every wake.
type lane struct {
	mu      sync.Mutex
	queue   []jetstream.Msg
	ready   chan struct{} // signalled when a push adds to the queue
	running atomic.Bool
	wg      *sync.WaitGroup // the worker's
}

func newLane(wg *sync.WaitGroup) *lane {
	return &lane{ready: make(chan struct{}, 1), wg: wg}
}

// push queues msg and starts the lane's goroutine unless it runs. Called
// by the dispatcher only; it never blocks.
func (l *lane) push(w *worker, msg jetstream.Msg) {
	l.mu.Lock()
	l.queue = append(l.queue, msg)
	l.mu.Unlock()
	select {
	case l.ready <- struct{}{}:
	default:
	}
	if l.running.CompareAndSwap(false, true) {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			w.lane(w.ctx, l)
		}()
	}
}

// take moves up to n messages from the queue to msgs.
func (l *lane) take(msgs []jetstream.Msg, n int) []jetstream.Msg {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := min(n, len(l.queue))
	msgs = append(msgs, l.queue[:k]...)
	clear(l.queue[:k])
	l.queue = l.queue[k:]
	if len(l.queue) == 0 {
		l.queue = nil // lets the array go once the lane has caught up
	}
	return msgs
}

func (l *lane) queued() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.queue)
}

// idle reports whether the lane's goroutine may end: its queue is empty,
// and stays so until a push starts another.
func (l *lane) idle() bool {
	l.running.Store(false)
	// A message pushed before the store found running set and started
	// nothing: this goroutine goes on with it.
	return l.queued() == 0 || !l.running.CompareAndSwap(false, true)
}

// consumer creates the endpoint's durable consumer, or brings its filters
// and limits up to date, retrying until ctx ends (nil then). created is
// set when this call created it.
func (w *worker) consumer(ctx context.Context) (c jetstream.Consumer, created bool) {
	backoff := 100 * time.Millisecond
	for {
		c, created, err := w.ensureConsumer(ctx)
		if err == nil {
			return c, created
		}
		if ctx.Err() != nil {
			return nil, false
		}
		w.log().Warn("cannot set up the webhook endpoint's consumer; retrying", "err", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return nil, false
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (w *worker) ensureConsumer(ctx context.Context) (jetstream.Consumer, bool, error) {
	e := w.entry.Load().Endpoint
	name := consumerName(w.id)
	c, err := w.m.js.Consumer(ctx, w.m.eventsStr, name)
	if err == nil {
		info := c.CachedInfo()
		cfg := info.Config
		limit := w.capacity
		w.recovering = info.NumAckPending > 0
		if w.recovering {
			limit = w.safe
		}
		if slices.Equal(cfg.FilterSubjects, w.subjects) && cfg.MaxAckPending == limit && cfg.AckWait == w.m.cfg.AckWait && cfg.PinnedTTL == w.m.cfg.PinnedTTL {
			return c, false, nil
		}
		cfg.FilterSubject, cfg.FilterSubjects = "", w.subjects
		cfg.MaxAckPending, cfg.AckWait, cfg.PinnedTTL = limit, w.m.cfg.AckWait, w.m.cfg.PinnedTTL
		c, err = w.m.js.UpdateConsumer(ctx, w.m.eventsStr, cfg)
		if err != nil {
			return nil, false, fmt.Errorf("update consumer %s: %w", name, err)
		}
		return c, false, nil
	}
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, false, fmt.Errorf("look up consumer %s: %w", name, err)
	}
	w.recovering = false
	cfg := jetstream.ConsumerConfig{
		Durable:        name,
		Description:    "tablecast webhook endpoint " + e.ID,
		FilterSubjects: w.subjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        w.m.cfg.AckWait,
		MaxDeliver:     -1,
		MaxAckPending:  w.capacity,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{priorityGroup},
		PinnedTTL:      w.m.cfg.PinnedTTL,
	}
	start := e.Webhook.Start
	switch {
	case start.Seq != 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start.Seq
	case !start.Time.IsZero():
		t := start.Time
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	default:
		// "now" is the endpoint's creation: events committed between the
		// creation and this consumer are not skipped.
		t := e.CreatedAt
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	if h := w.m.beforeCreate.Load(); h != nil {
		(*h)(w.id)
	}
	cctx, cancel, err := creationCtx(ctx)
	if err != nil {
		return nil, false, err
	}
	c, err = w.m.js.CreateConsumer(cctx, w.m.eventsStr, cfg)
	cancel()
	if err != nil {
		return nil, false, fmt.Errorf("create consumer %s: %w", name, err)
	}
	return c, true, nil
}

// creationCtx is the context of a request creating one of the endpoint's
// consumers: once sent, its answer is waited for (up to requestTimeout)
// even if ctx ends meanwhile, so that the worker is not done while the
// server may still create the consumer. A worker stopped by its
// endpoint's deletion is done before the consumers are deleted: a
// creation left on its way would land after the deletion found nothing,
// and the consumer would stay (read by no one, holding its place in the
// stream) until the leftovers' look an hour later. An error when ctx has
// ended already: nothing is created then.
func creationCtx(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	return cctx, cancel, nil
}

// dispatch pulls the consumer until ctx ends (false) or the endpoint goes
// dormant (true), and hands each message to its lane. It keeps pulling
// while the lanes are busy (the lanes' queues hold every message the
// consumer may give out), so that this process stays the pinned reader of
// the consumer: no other process gets the endpoint's next messages while
// this one holds earlier ones. resumed is set when a wake started the
// goroutine again: it pulls at once, and looks for replays only if one
// asked for it.
func (w *worker) dispatch(ctx context.Context, lanes []*lane, lanesWG *sync.WaitGroup, resumed bool) bool {
	backoff := 100 * time.Millisecond
	var env query.Row
	every := w.m.cfg.AckWait / 3 // a pull lasts no longer (nor fetchWait)
	var replaying atomic.Bool
	var replayWG sync.WaitGroup
	defer replayWG.Wait()
	wake := w.m.dl.wakeChan(w.id)
	defer w.m.dl.dropWake(w.id, wake)
	lookedForReplays := time.Time{}
	if resumed {
		lookedForReplays = time.Now() // looked for as it went dormant
	}
	pull := w.pull // the next pull's size (see below)
	var rate deliveryRate
	// What the pull grew by is taken from the Manager's budget (see
	// maxExtraPull) and given back as it shrinks, and as dispatch ends.
	defer func() { w.m.extraPull.Add(-int64(pull - w.pull)) }()
	idle := true   // the last pull brought nothing (or none was made)
	armed := false // subscribed to wake it: the last pull was the last check
	defer func() {
		if armed {
			w.m.sleep.disarm(w)
		}
	}()
	for ctx.Err() == nil {
		woken := w.replayWoken.Swap(false) || w.replayComing()
		select {
		case <-wake:
			woken = true
		default:
		}
		if !replaying.Load() && (woken || time.Since(lookedForReplays) >= replayPoll) {
			// Replays get a goroutine of their own while there are some.
			lookedForReplays = time.Now()
			if w.m.dl.queued(ctx, w.id) {
				replaying.Store(true)
				replayWG.Add(1)
				go func() {
					defer replayWG.Done()
					defer replaying.Store(false)
					w.replays(ctx)
				}()
			}
		}
		// A pull of pull messages, whatever is held: JetStream gives out
		// no more than MaxAckPending (the capacity), and the pull stays
		// open to give the next messages as soon as acknowledgements make
		// room. A pull of only the room left (a few messages while a
		// batch is posted) ended after those few, and the next pull had
		// to come back before the next batch could.
		//
		// The pull is not cut short when the worker stops: it ends at its
		// expiry, and every message it brought is held, so given back in
		// order as the worker ends. A pull cut short drops the messages on
		// their way, which JetStream gives again only after the ack wait,
		// behind later ones the next worker was already given.
		//
		// The pull's expiry is the server's (FetchMaxWait), not a context's
		// deadline: a Fetch ended by its context drops the messages on
		// their way, and one with a deadline asks the server to keep the
		// pull open until only a tenth of the time (at most a second)
		// before it, counted from when the server gets the request. Under
		// load (large messages, a busy process) the last messages given
		// out arrived after the deadline and were lost: JetStream gave
		// them again only after the ack wait, behind later ones this
		// worker had been given and delivered meanwhile. With the server's
		// expiry the pull ends at its end-of-pull status, which comes
		// after every message it gave; nats.go gives up waiting for it only
		// a second later. A message lost all the same is found by its
		// delivery sequence, and the ones read after it wait for it (see
		// missedDelivery and unpark).
		//
		// After a pull that brought nothing the next asks for one message:
		// a pull's buffers are sized by what it asks for, and an idle
		// endpoint spends its time in pulls.
		// A receiver slower than what comes sets the pace: the endpoint
		// holds no more than a second of what its receiver accepts (at
		// least two batches a lane; see deliveryRate): beyond
		// that, the pull is back to two batches a lane and no more is asked
		// for until some are delivered (or until a pull must go out to
		// keep the pin). So it holds the reader's window only for a
		// receiver that takes it that fast, and a slow receiver, however
		// many events wait for it, costs little memory.
		held := w.heldCount()
		allow := rate.allowance(w)
		// While messages given out earlier are waited for (parked behind
		// them), none is delivered: waiting for deliveries to make room
		// would wait for nothing, and the ones waited for come only
		// through pulls. They are at most what MaxAckPending let out.
		waiting := w.awaiting || len(w.parked) > 0
		if waiting {
			allow = max(allow, held+w.pull)
		}
		if !idle && held >= allow {
			w.gaps.stalled() // no pull while it waits
			pull = w.shrinkPull(pull)
			keepPin := time.Now().Add(w.m.cfg.PinnedTTL / 3)
			for held >= allow && ctx.Err() == nil && time.Now().Before(keepPin) {
				w.waitDelivered(ctx, time.Until(keepPin))
				held, allow = w.heldCount(), rate.allowance(w)
			}
		}
		size := max(1, min(pull, allow-held))
		if idle {
			size = 1
		}
		if w.recovering || held+size > w.capacity {
			// The consumer may stop giving messages before the pull is
			// filled (MaxAckPending).
			w.gaps.stalled()
		}
		batch, err := w.cons.Fetch(size, jetstream.FetchMaxWait(min(fetchWait, every)), jetstream.FetchPriorityGroup(priorityGroup))
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			w.gaps.stalled()
			if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
				// Created anew here, the consumer starts over from the
				// endpoint's start, which the endpoint had read from: no
				// gap at the start is judged (see checkStart).
				if w.cons, _ = w.consumer(ctx); w.cons == nil {
					return false
				}
				w.gaps = gapCheck{}
				w.gaps.start(w.cons.CachedInfo(), w.reconnects())
				w.lastDelivery = w.cons.CachedInfo().Delivered.Consumer
				continue
			}
			w.log().Warn("cannot read the webhook endpoint's consumer; retrying", "err", err, "retry_in", backoff)
			if !sleep(ctx, backoff) {
				return false
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		idle = true
		got := 0
		if r := w.reconnects(); r != w.gaps.reconnects {
			w.gaps.reconnects = r
			w.gaps.stalled() // nothing was pulled while the connection was down
		}
		for msg := range batch.Messages() {
			idle = false
			got++
			meta, err := msg.Metadata()
			if err != nil {
				continue
			}
			if h := w.m.hooks.Load(); h != nil && h.lost != nil && h.lost(w.id, meta) {
				continue // as if it had not arrived
			}
			w.checkGap(ctx, meta)
			w.m.met.lag.WithLabelValues(w.name()).Set(float64(meta.NumPending))
			missed := w.missedDelivery(meta)
			if !w.hold(meta.Sequence.Stream, msg) {
				continue // a redelivery of a message a lane has
			}
			if missed || w.awaiting || len(w.parked) > 0 {
				w.parked = append(w.parked, msg)
				continue
			}
			w.push(lanes, &env, msg)
		}
		if len(w.parked) > 0 {
			w.unpark(ctx, lanes, &env)
		}
		// A pull that filled finds the endpoint behind: the next asks for
		// more, so that JetStream, which serves the consumer between
		// storing what publishers queued (see maxHeld), hands it as many
		// messages as it may hold in each turn.
		if got == size && size > 1 {
			pull = w.growPull(pull)
		} else if got < size {
			pull = w.shrinkPull(pull)
		}
		if err := batch.Error(); errors.Is(err, jetstream.ErrPinIDMismatch) {
			// The pin lapsed while the endpoint was dormant (see
			// dormant.go): the next pull, naming none, is pinned.
			continue
		} else if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			w.gaps.stalled()
			w.log().Debug("webhook consumer read ended", "err", err)
			if !sleep(ctx, 50*time.Millisecond) {
				return false
			}
		}
		backoff = 100 * time.Millisecond
		if w.recovering && w.heldCount() == 0 {
			w.cons = w.recovered(ctx, w.cons)
		}
		if !idle || w.recovering || replaying.Load() || w.heldCount() > 0 || ctx.Err() != nil {
			if armed {
				w.m.sleep.disarm(w)
				armed = false
			}
			continue
		}
		// Nothing came, nothing is held: the endpoint goes dormant (see
		// dormant.go) once its lanes' goroutines have ended.
		lanesWG.Wait()
		if !armed {
			if h := w.m.hooks.Load(); h != nil && h.beforeArm != nil {
				h.beforeArm(w.id)
			}
			if err := w.m.sleep.arm(w); err != nil {
				w.log().Debug("cannot subscribe to wake the webhook endpoint; it stays awake", "err", err)
				continue
			}
			armed = true
			if h := w.m.hooks.Load(); h != nil && h.armed != nil {
				h.armed(w.id)
			}
		}
		if w.quiet(ctx) {
			if w.m.sleep.sleep(w) {
				armed = false
				return true
			}
			armed = false // a wake came meanwhile: sleep unsubscribed it
		}
		// Something is pending (in this process or another), or a wake
		// came: pull again.
	}
	return false
}

// push hands msg to its lane.
func (w *worker) push(lanes []*lane, env *query.Row, msg jetstream.Msg) {
	lane := 0
	if len(lanes) > 1 {
		lane = laneOf(env, msg, len(lanes))
	}
	lanes[lane].push(w, msg)
}

// missedDelivery reports whether meta's message was given out after one
// this worker never read: its delivery sequence jumps past the last one
// read. JetStream counts every message it gives out, first or again, and
// this process is the consumer's pinned reader: a delivery skipped is one
// lost on its way (or, rarely, given to another process that was pinned
// meanwhile, which is as well waited for).
func (w *worker) missedDelivery(meta *jetstream.MsgMetadata) bool {
	d := meta.Sequence.Consumer
	missed := d > w.lastDelivery+1
	if missed && len(w.parked) == 0 {
		w.log().Warn("a message given to the webhook endpoint did not arrive; later ones wait until it is given again (after the ack wait)",
			"missing", d-w.lastDelivery-1, "next_seq", meta.Sequence.Stream)
	}
	w.lastDelivery = max(w.lastDelivery, d)
	return missed
}

// unpark gives the lanes the messages parked after a delivery went
// missing, in stream order, once every message the consumer has given
// out and not had acknowledged is held here: the missing ones have come
// again (or were acknowledged elsewhere). Until then they stay held (kept
// in progress) and later messages are parked behind them.
func (w *worker) unpark(ctx context.Context, lanes []*lane, env *query.Row) {
	// An acknowledgement under way (sent, its message not let go yet)
	// would count a message as held that JetStream no longer counts, in
	// place of a missing one: the comparison is made only across a time
	// with none under way.
	before := w.acked.Load()
	if w.acking.Load() != 0 {
		return
	}
	info, err := w.cons.Info(ctx)
	if err != nil {
		return
	}
	held := w.heldEvents()
	if w.acking.Load() != 0 || w.acked.Load() != before || info.NumAckPending > held {
		return
	}
	slices.SortFunc(w.parked, func(a, b jetstream.Msg) int {
		return cmp.Compare(streamSeq(a), streamSeq(b))
	})
	for _, msg := range w.parked {
		w.push(lanes, env, msg)
	}
	clear(w.parked)
	w.parked = w.parked[:0]
	w.awaiting = false
	w.log().Info("the messages the webhook endpoint waited for came again; delivery goes on in order")
}

func streamSeq(msg jetstream.Msg) uint64 {
	if meta, err := msg.Metadata(); err == nil {
		return meta.Sequence.Stream
	}
	return 0
}

// heldEvents counts the messages of the event stream held (not replays,
// which are held under their sequences' complement).
func (w *worker) heldEvents() int {
	w.heldMu.Lock()
	defer w.heldMu.Unlock()
	n := 0
	for s := range w.held {
		if s>>63 == 0 {
			n++
		}
	}
	return n
}

// reconnects returns how many times the connection to NATS was made again.
func (w *worker) reconnects() uint64 { return w.m.js.Conn().Stats().Reconnects }

// quiet reports whether the endpoint's consumer has no message pending
// nor unacknowledged (by this process or another: those come back, when
// the other dies, without a publish to wake this one) and no replay is
// queued.
func (w *worker) quiet(ctx context.Context) bool {
	if w.replayComing() {
		return false
	}
	info, err := w.cons.Info(ctx)
	if err != nil || info.NumPending > 0 || info.NumAckPending > 0 {
		return false
	}
	return !w.m.dl.queued(ctx, w.id)
}

// replayGrace is how long after a replay woke it a worker stays awake
// although it finds none queued: the wake comes as the replay is
// published, possibly before the stream stores it, and a worker gone
// dormant meanwhile would wait for the next sweep.
const replayGrace = time.Second

// replayComing reports whether a replay woke w within replayGrace.
func (w *worker) replayComing() bool {
	return time.Since(time.Unix(0, w.replayWokenAt.Load())) < replayGrace
}

// recovered ends recovering once the consumer has no message pending:
// it reads with its whole capacity from then on. It returns the consumer
// to read.
func (w *worker) recovered(ctx context.Context, cons jetstream.Consumer) jetstream.Consumer {
	info, err := cons.Info(ctx)
	if err != nil || info.NumAckPending > 0 {
		return cons
	}
	cfg := info.Config
	cfg.MaxAckPending = w.capacity
	c, err := w.m.js.UpdateConsumer(ctx, w.m.eventsStr, cfg)
	if err != nil {
		if ctx.Err() == nil {
			w.log().Warn("cannot raise the webhook endpoint's consumer's MaxAckPending; retrying", "err", err)
		}
		return cons
	}
	w.recovering = false
	return c
}

// deliveryRate follows how fast an endpoint's receiver accepts events,
// from the worker's count of messages acknowledged (read by the
// dispatcher only).
type deliveryRate struct {
	at     time.Time
	count  int64
	perSec float64 // smoothed
}

// allowance is how many messages w may hold: what its receiver accepts in
// a second, between two batches a lane and the capacity.
func (r *deliveryRate) allowance(w *worker) int {
	now, n := time.Now(), w.acked.Load()
	if r.at.IsZero() {
		r.at, r.count = now, n
	} else if d := now.Sub(r.at); d >= 100*time.Millisecond {
		r.perSec = (r.perSec + float64(n-r.count)/d.Seconds()) / 2
		r.at, r.count = now, n
	}
	return max(w.pull, min(w.capacity, int(r.perSec)))
}

// growPull returns the next pull's size after a pull of pull that filled:
// four times as many, up to the capacity, as far as the Manager's budget
// allows.
func (w *worker) growPull(pull int) int {
	want := min(w.capacity, 4*pull)
	if want <= pull {
		return pull
	}
	if w.m.extraPull.Add(int64(want-pull)) > maxExtraPull {
		w.m.extraPull.Add(-int64(want - pull))
		return pull
	}
	return want
}

// shrinkPull returns the pull's size to two batches a lane, giving back to
// the Manager's budget what it had grown by.
func (w *worker) shrinkPull(pull int) int {
	w.m.extraPull.Add(-int64(pull - w.pull))
	return w.pull
}

// waitDelivered waits until held messages are acknowledged, ctx ends, or
// at most d.
func (w *worker) waitDelivered(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.delivered:
	case <-ctx.Done():
	case <-t.C:
	}
}

func (w *worker) heldCount() int {
	w.heldMu.Lock()
	defer w.heldMu.Unlock()
	return len(w.held)
}

// laneOf chooses a message's lane by its table and row key.
func laneOf(env *query.Row, msg jetstream.Msg, n int) int {
	h := fnv.New32a()
	subj := msg.Subject()
	if i := strings.LastIndexByte(subj, '.'); i > 0 {
		subj = subj[:i] // the table, not the operation
	}
	h.Write([]byte(subj))
	if env.Reset(msg.Data()) == nil {
		if k, ok := env.Get("key"); ok {
			h.Write(k)
		}
	}
	return int(h.Sum32() % uint32(n))
}

func (w *worker) hold(seq uint64, msg jetstream.Msg) bool {
	w.heldMu.Lock()
	defer w.heldMu.Unlock()
	if _, ok := w.held[seq]; ok {
		return false
	}
	w.held[seq] = msg
	return true
}

// ack acknowledges messages delivered (or passed over) and lets them go.
func (w *worker) ack(msgs []jetstream.Msg) {
	w.acking.Add(1)
	defer w.acking.Add(-1)
	for _, msg := range msgs {
		if err := msg.Ack(); err != nil {
			w.log().Warn("cannot acknowledge a delivered event; it may be delivered again", "err", err)
		}
		if meta, err := msg.Metadata(); err == nil {
			w.heldMu.Lock()
			delete(w.held, meta.Sequence.Stream)
			w.heldMu.Unlock()
		}
	}
	w.acked.Add(int64(len(msgs)))
	select {
	case w.delivered <- struct{}{}:
	default:
	}
}

// nakHeld gives back every message still held, for prompt redelivery when
// the endpoint resumes (here or in another process), and returns their
// stream sequences, in order.
func (w *worker) nakHeld() []uint64 {
	w.heldMu.Lock()
	defer w.heldMu.Unlock()
	seqs := make([]uint64, 0, len(w.held))
	for s := range w.held {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)
	for _, s := range seqs {
		_ = w.held[s].Nak()
	}
	clear(w.held)
	return seqs
}

// unpin lets the next reader of the endpoint's consumer (the worker that
// follows, or another process) be pinned at once, not after PinnedTTL:
// meanwhile JetStream rotates its queue of messages to give again while
// the only pulls waiting are not the pinned reader's, which puts a batch
// given back (nakHeld) out of order.
func (w *worker) unpin() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := w.m.js.Stream(ctx, w.m.eventsStr)
	if err == nil {
		err = str.UnpinConsumer(ctx, consumerName(w.id), priorityGroup)
	}
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		w.log().Debug("cannot unpin the webhook endpoint's consumer; the next reader waits for the pin to expire", "err", err)
	}
}

// keepInProgress calls progress every third of the ack wait until ctx
// ends: beside the dispatcher (serve) and beside replays (serveReplays).
func (w *worker) keepInProgress(ctx context.Context) {
	runEvery(ctx, w.m.cfg.AckWait/3, false, func(context.Context) { w.progress() })
}

// progress tells JetStream that the messages held are being worked on,
// so that none is given to another process while this one retries it.
func (w *worker) progress() {
	w.heldMu.Lock()
	msgs := make([]jetstream.Msg, 0, len(w.held))
	for _, m := range w.held {
		msgs = append(msgs, m)
	}
	w.heldMu.Unlock()
	for _, m := range msgs {
		_ = m.InProgress()
	}
}

// item is one event to deliver.
type item struct {
	id     string    // the event's id
	body   []byte    // the envelope as delivered (projected)
	stored time.Time // when the stream stored it (zero for a replay)
	seq    uint64    // its stream sequence (0 for a replay)
	subj   string
}

// lane delivers the messages of in, in order, a batch at a time.
func (w *worker) lane(ctx context.Context, l *lane) {
	var ev query.Event
	size := max(1, w.wh.Batch)
	// behind is set after a full batch: more events are likely on their
	// way, the next batch waits up to fillWait to fill.
	behind := false
	fill := time.NewTimer(time.Hour)
	fill.Stop()
	defer fill.Stop()
	for {
		if ctx.Err() != nil {
			return
		}
		msgs := l.take(nil, size)
		if len(msgs) == 0 {
			if l.idle() {
				return
			}
			continue
		}
		waiting := false
	take:
		for behind && len(msgs) < size {
			if !waiting {
				fill.Reset(fillWait)
				waiting = true
			}
			select {
			case <-l.ready:
				// The signal may be for messages already taken: then
				// this takes none and waits on.
				msgs = l.take(msgs, size-len(msgs))
			case <-fill.C:
				waiting = false
				break take
			case <-ctx.Done():
				return
			}
		}
		if waiting && !fill.Stop() {
			<-fill.C
		}
		behind = size > 1 && len(msgs) == size
		e := w.entry.Load()
		items := make([]item, 0, len(msgs))
		bodies, sent := 0, 0 // bytes of items; msgs[:sent] are acknowledged
		limit := w.batchBytes()
		var last uint64 // of a request retried from the worker before: its last event
		for i, msg := range msgs {
			it, ok, err := w.prepare(ctx, e, &ev, msg)
			if err != nil {
				return // ctx ended
			}
			if !ok {
				continue
			}
			if len(items) == 0 {
				last = w.retriedLast(it.seq)
			}
			// The array of len(items)+1 envelopes: theirs, a comma
			// between each two, and the brackets. A request retried from
			// the worker before goes as it went, with no later event.
			if len(items) > 0 && (bodies+len(it.body)+len(items)+2 > limit || last > 0 && it.seq > last) {
				// Large rows: what is prepared goes now, and this event
				// starts the next request.
				if !w.deliverAndAck(ctx, e, items, msgs[sent:i]) {
					return
				}
				clear(items)
				items, bodies, sent = items[:0], 0, i
				last = w.retriedLast(it.seq)
			}
			items = append(items, it)
			bodies += len(it.body)
		}
		if !w.deliverAndAck(ctx, e, items, msgs[sent:]) {
			return
		}
	}
}

// batchBytes bounds a batch's body, the endpoint's batch_bytes: a batch
// of large rows (each up to TABLECAST_MAX_EVENT_BYTES) ends early rather
// than making one request of a gigabyte, which receivers refuse (a common
// proxy's limit is 1 MiB) and which would be held in memory whole. An
// event larger than this goes on its own.
func (w *worker) batchBytes() int {
	if w.wh.BatchBytes > 0 {
		return w.wh.BatchBytes
	}
	return endpoint.DefaultBatchBytes // an endpoint stored before batch_bytes was
}

// deliverAndAck delivers items (when there are any) and then acknowledges
// msgs, the messages they came from and those passed over among them. It
// reports false when the lane must stop (the worker is stopping, or the
// endpoint was disabled): held messages are given back as the worker ends.
func (w *worker) deliverAndAck(ctx context.Context, e *match.Entry, items []item, msgs []jetstream.Msg) bool {
	if len(items) > 0 {
		switch w.deliver(ctx, e, items) {
		case resultStopped, resultGone:
			return false
		}
	}
	w.ack(msgs)
	return true
}

// prepare reads a message: the event, whether the endpoint's Matcher
// passes it, and the envelope to send. err is set only when ctx ends.
func (w *worker) prepare(ctx context.Context, e *match.Entry, ev *query.Event, msg jetstream.Msg) (it item, ok bool, err error) {
	meta, _ := msg.Metadata()
	it = item{subj: msg.Subject()}
	if meta != nil {
		it.stored, it.seq = meta.Timestamp, meta.Sequence.Stream
	}
	db, sch, tbl, op, ok := parseSubject(w.m.cfg.Prefix, msg.Subject())
	if !ok {
		return it, false, nil
	}
	data := msg.Data()
	if c, isClaim, err := stream.ParseEventClaim(data, w.m.cfg.PayloadBucket); err != nil {
		w.log().Warn("event with a malformed claim, or one the reader does not write; delivered as received", "seq", it.seq, "err", err)
	} else if isClaim {
		if data, ok = w.resolveClaim(ctx, c, data, it.seq); !ok {
			return it, false, ctx.Err()
		}
	}
	backoff := 100 * time.Millisecond
	var t = w.m.cfg.Tables.TableIn(db, sch, tbl)
	for t == nil {
		// The reader registers a table before its first event; the
		// catalog catches up. Never guessed past: the endpoint waits.
		if backoff >= 5*time.Second {
			w.log().Warn("waiting for the table of an event to be known", "table", schema.FormatQualifiedName(db, sch, tbl), "seq", it.seq)
		}
		if !sleep(ctx, backoff) {
			return it, false, ctx.Err()
		}
		backoff = min(backoff*2, 10*time.Second)
		t = w.m.cfg.Tables.TableIn(db, sch, tbl)
	}
	if ev.Reset(schema.OpBit(op), data) != nil {
		w.log().Warn("event that is not a JSON object passed over", "seq", it.seq)
		return it, false, nil
	}
	d := e.Matcher.Decide(t, ev)
	if !d.Pass {
		return it, false, nil
	}
	body, err := d.Projection.AppendEvent(nil, data)
	if err != nil {
		w.log().Warn("event that does not project passed over", "seq", it.seq, "err", err)
		return it, false, nil
	}
	it.body = body
	it.id = msg.Headers().Get("Nats-Msg-Id")
	if it.id == "" {
		var env query.Row
		if env.Reset(data) == nil {
			if raw, ok := env.Get("id"); ok && len(raw) > 1 && raw[0] == '"' {
				it.id = string(raw[1 : len(raw)-1])
			}
		}
	}
	if it.id == "" {
		it.id = "seq-" + strconv.FormatUint(it.seq, 10)
	}
	return it, true, nil
}

// resolveClaim reads the event a claim stands for, retrying until it is
// read or ctx ends (false). Unlike the gateway, whose feed serves every
// subscriber of a table, an endpoint waits on its own: a read that fails
// (NATS away, a read with nothing arriving for claimStall) is tried again
// rather than sending the receiver the claim, which it could not resolve.
// Only an object that is gone (expired with the stream's max age) leaves
// the event as received, claim included.
func (w *worker) resolveClaim(ctx context.Context, c stream.Claim, received []byte, seq uint64) ([]byte, bool) {
	var data []byte
	ok := w.retryUntil(ctx, "cannot read the object of a claimed event; retrying", func() (bool, error) {
		var err error
		data, err = w.m.resolver.FetchStalled(ctx, c, claimStall)
		if errors.Is(err, stream.ErrClaimGone) {
			w.log().Warn("the object of a claimed event is gone; delivered as received", "seq", seq, "err", err)
			data = received
			return true, nil
		}
		return err == nil, err
	}, "seq", seq)
	return data, ok
}

// retryUntil calls try until it is done, or ctx ends (false), waiting
// 100 ms, doubling up to 5 s, between calls. A failure is logged with msg
// and attrs: the first as a warning, the next ones at debug level.
func (w *worker) retryUntil(ctx context.Context, msg string, try func() (done bool, err error), attrs ...any) bool {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		done, err := try()
		if done {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		level := slog.LevelDebug
		if attempt == 1 {
			level = slog.LevelWarn
		}
		w.log().Log(ctx, level, msg, append(attrs, "attempt", attempt, "err", err, "retry_in", backoff)...)
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// parseSubject reads a change subject: <prefix>.<db>.<schema>.<table>.<op>.
func parseSubject(prefix, subj string) (db, sch, tbl, op string, ok bool) {
	rest, found := strings.CutPrefix(subj, prefix+".")
	if !found {
		return "", "", "", "", false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 4 {
		return "", "", "", "", false
	}
	var err error
	if db, err = stream.DecodeToken(parts[0]); err != nil {
		return "", "", "", "", false
	}
	if sch, err = stream.DecodeToken(parts[1]); err != nil {
		return "", "", "", "", false
	}
	if tbl, err = stream.DecodeToken(parts[2]); err != nil {
		return "", "", "", "", false
	}
	return db, sch, tbl, parts[3], true
}

type result int

const (
	resultDelivered result = iota
	resultDeadLettered
	resultGone    // 410: the endpoint is disabled
	resultStopped // the worker is stopping: nothing acknowledged
)

// deliver sends items in one request, and again on failure with
// exponential backoff and jitter, until the endpoint accepts them (2xx),
// the endpoint's retry max_age has passed since the first attempt (they
// are dead-lettered), it answers 410 Gone (it is disabled), or ctx ends.
func (w *worker) deliver(ctx context.Context, e *match.Entry, items []item) result {
	wh := w.wh
	name := e.Endpoint.Name
	body, id := payload(items, wh.Batch > 1)
	key := endpoint.SecretKey(wh.Secret)
	first, attempt := time.Now(), 1
	if r, ok := w.retried(items); ok {
		// Retried from the worker before this one: the same request,
		// counted from its first attempt.
		body, id, first, attempt = r.body, r.id, r.first, r.attempts+1
	}
	var reason string
	for ; ; attempt++ {
		status, retryAfter, err := w.post(ctx, &wh, key, id, body)
		if ctx.Err() != nil {
			return resultStopped
		}
		if !(err == nil && status >= 200 && status < 300 || err == nil && status == http.StatusGone) {
			w.noteRetrying(items, retrying{body: body, id: id, first: first, attempts: attempt})
		} else {
			w.doneRetrying(items)
		}
		switch {
		case err == nil && status >= 200 && status < 300:
			w.m.met.delivered.WithLabelValues(name).Add(float64(len(items)))
			now := time.Now()
			for _, it := range items {
				if !it.stored.IsZero() {
					w.m.met.latency.WithLabelValues(name).Observe(now.Sub(it.stored).Seconds())
				}
			}
			if attempt > 1 {
				w.log().Info("webhook delivered after retries", "webhook_id", id, "attempts", attempt)
			}
			return resultDelivered
		case err == nil && status == http.StatusGone:
			w.m.met.failed.WithLabelValues(name).Inc()
			w.disable(ctx, "the receiver answered 410 Gone")
			return resultGone
		case err != nil:
			reason = failureReason(err)
		default:
			reason = "answered " + strconv.Itoa(status) + " " + http.StatusText(status)
		}
		w.m.met.failed.WithLabelValues(name).Inc()
		wait := backoff(attempt, wh.Retry)
		if retryAfter > 0 {
			wait = retryAfter
		}
		// Compared as what is left of max_age, which cannot overflow as
		// the sum of a long wait and the time spent could.
		if wait > wh.Retry.MaxAge.D()-time.Since(first) {
			w.log().Warn("webhook delivery given up after its retry max_age; dead-lettered", "webhook_id", id, "attempts", attempt, "reason", reason)
			// Once begun, dead-lettering is finished (within
			// deadLetterGrace) even if the worker stops meanwhile, and the
			// events are then acknowledged: a stop between two of a
			// batch's dead letters, or between a dead letter stored and
			// its answer, left events dead-lettered and not acknowledged,
			// sent again after the restart, and accepted with their dead
			// letters still listed (a replay sent them once more).
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deadLetterGrace)
			stored := w.deadLetter(dctx, e, items, reason, attempt, first)
			cancel()
			if !stored {
				return resultStopped
			}
			w.doneRetrying(items)
			w.m.met.deadLettered.WithLabelValues(name).Add(float64(len(items)))
			return resultDeadLettered
		}
		level := slog.LevelDebug
		if attempt == 1 {
			level = slog.LevelWarn
		}
		w.log().Log(ctx, level, "webhook delivery failed; retrying", "webhook_id", id, "attempt", attempt, "reason", reason, "retry_in", wait)
		if !sleep(ctx, wait) {
			return resultStopped
		}
	}
}

// retrying is a request that failed and is retried: its body and
// webhook-id as first sent, when, and how many attempts it has had.
type retrying struct {
	body     []byte
	id       string
	last     uint64 // the stream sequence of its last event
	first    time.Time
	attempts int
}

// noteRetrying records that the request of items failed and will be
// retried (items from the stream only: a replay's are retried by the
// replay).
func (w *worker) noteRetrying(items []item, r retrying) {
	if items[0].seq == 0 {
		return
	}
	r.last = items[len(items)-1].seq
	w.retryingMu.Lock()
	defer w.retryingMu.Unlock()
	if w.retrying == nil {
		w.retrying = map[uint64]retrying{}
	}
	w.retrying[items[0].seq] = r
}

func (w *worker) doneRetrying(items []item) {
	w.retryingMu.Lock()
	defer w.retryingMu.Unlock()
	delete(w.retrying, items[0].seq)
}

// retried returns the request the worker before this one was retrying
// for exactly these events.
func (w *worker) retried(items []item) (retrying, bool) {
	w.retryingMu.Lock()
	defer w.retryingMu.Unlock()
	r, ok := w.retrying[items[0].seq]
	return r, ok && items[0].seq != 0 && r.last == items[len(items)-1].seq
}

// retriedLast is the stream sequence of the last event of the request
// being retried that begins with the event at seq, or 0.
func (w *worker) retriedLast(seq uint64) uint64 {
	if seq == 0 {
		return 0
	}
	w.retryingMu.Lock()
	defer w.retryingMu.Unlock()
	return w.retrying[seq].last
}

// deadLetterGrace bounds how long a worker that stops goes on storing
// the dead letters of a request it gave up on (see deliver): NATS away
// longer than that leaves them to the next run, which retries the events.
const deadLetterGrace = 30 * time.Second

// maxReason bounds the failure reason logged and kept in a dead letter's
// Tablecast-Reason header.
const maxReason = 1 << 10

// failureReason is err's text, cut at maxReason bytes: net/http's errors
// quote what a receiver sent (a malformed header line of up to the whole
// answer head), and a receiver is not to choose how large every dead
// letter's headers and every log line are.
func failureReason(err error) string {
	s := err.Error()
	if len(s) <= maxReason {
		return s
	}
	cut := maxReason - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// payload is the body of a request and its webhook-id: one envelope and
// its id, or (batch) a JSON array of envelopes and "<first id>_<last id>".
func payload(items []item, batch bool) (body []byte, id string) {
	if !batch {
		return items[0].body, items[0].id
	}
	n := 2
	for _, it := range items {
		n += len(it.body) + 1
	}
	body = make([]byte, 0, n)
	body = append(body, '[')
	for i, it := range items {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, it.body...)
	}
	body = append(body, ']')
	id = items[0].id
	if len(items) > 1 {
		id += "_" + items[len(items)-1].id
	}
	return body, id
}

// backoff is the wait after the attempt-th failure: Initial doubled each
// time up to Max, with equal jitter (half fixed, half random).
func backoff(attempt int, r endpoint.Retry) time.Duration {
	d := r.Initial.D()
	for i := 1; i < attempt && d < r.Max.D(); i++ {
		d *= 2
	}
	d = min(d, r.Max.D())
	return d/2 + rand.N(d/2+1)
}

// post makes one request. retryAfter is the wait a 429 or 503 asked for.
func (w *worker) post(ctx context.Context, wh *endpoint.Webhook, key []byte, id string, body []byte) (status int, retryAfter time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, wh.Timeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, wh.Method, wh.URL, bytes.NewReader(body))
	if err != nil {
		return 0, 0, fmt.Errorf("make request: %w", err)
	}
	// The endpoint's headers may replace the defaults (a vendor's JSON
	// media type, a User-Agent a receiver's firewall expects); the
	// signature's cannot be given (endpoint validation).
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tablecast-webhook")
	for k, v := range wh.Headers {
		req.Header.Set(k, v)
	}
	now := time.Now().Unix()
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(now, 10))
	req.Header.Set("webhook-signature", Sign(key, id, now, body))
	resp, err := w.m.client.Do(req)
	if err != nil {
		// net/http's text ("tls: failed to verify certificate: x509: …")
		// does not say to an operator reading a dead letter that the
		// receiver is at fault and that retrying will not help until its
		// certificate changes: said first.
		var cv *tls.CertificateVerificationError
		if errors.As(err, &cv) {
			return 0, 0, fmt.Errorf("the receiver's TLS certificate is not trusted: %w", err)
		}
		return 0, 0, err
	}
	// The answer's body is read up to maxAnswerBody, under the request's
	// timeout, and the rest left: a receiver answering without end, or a
	// byte at a time, holds the lane no longer than the timeout and costs
	// no memory. The connection is kept for the next request only when the
	// body ended within that (net/http closes one whose body was not read
	// to its end). An answer whose body does not arrive (cut, or not
	// within the timeout) is a failed attempt: the receiver may have sent
	// its status before it had handled the event, and failed since.
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The body of a 101 is the connection itself, which the request's
		// context no longer bounds: read, it would hold the lane for as
		// long as the receiver keeps it open. Closed unread (a failed
		// attempt: not 2xx).
		resp.Body.Close()
		return resp.StatusCode, 0, nil
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswerBody))
	resp.Body.Close()
	if err != nil {
		return 0, 0, fmt.Errorf("read the answer's body (after %d %s): %w", resp.StatusCode, http.StatusText(resp.StatusCode), err)
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return resp.StatusCode, retryAfter, nil
}

// maxAnswerBody is how much of an answer's body is read (and dropped):
// enough for the error pages receivers send, so that the connection can be
// used again.
const maxAnswerBody = 64 << 10

// maxRetryAfter is the longest wait a Retry-After is read as: no
// endpoint's retry.max_age is longer, so that one asking longer has its
// events dead-lettered at once, as one asking exactly this long does.
const maxRetryAfter = endpoint.MaxRetryMaxAge

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date, at
// most maxRetryAfter; 0 when absent, unreadable, not positive, or a date
// not after now.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		// Out of range: s is the largest int64 (or the smallest).
		if s <= 0 {
			return 0
		}
		return time.Duration(min(s, int64(maxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		// Sub saturates at the largest Duration for a date centuries
		// away, which added to anything would wrap around to a negative
		// wait: capped first.
		return min(t.Sub(now), maxRetryAfter)
	}
	return 0
}

// disable marks the endpoint disabled in the store, retrying until ctx
// ends; the worker then stops as the registry reports the change.
func (w *worker) disable(ctx context.Context, reason string) {
	w.log().Warn("webhook endpoint disabled", "reason", reason)
	backoff := 100 * time.Millisecond
	for {
		_, err := w.m.cfg.States.SetEndpointState(ctx, w.id, 0, endpoint.StateDisabled, reason)
		if err == nil || errors.Is(err, endpoint.ErrNotFound) {
			w.cancel()
			return
		}
		w.log().Warn("cannot disable the webhook endpoint; retrying", "err", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// sleep waits d, false if ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
