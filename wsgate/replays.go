package wsgate

import (
	"context"
	"sync"
	"time"
)

// Replays. A resume reads history from a JetStream consumer of its own as
// fast as its client takes it, which costs the gateway (and NATS) far more
// CPU per event than live fan-out, where one decoded event serves every
// subscriber. A hundred "from": 0 subscriptions would take every core and
// starve live delivery. So resumes take turns: at most MaxReplays at once on
// the gateway and MaxReplaysPerConn per connection, served in the order
// they asked, and together they read at most ReplayRate messages a second.
// A resume waiting its turn loses nothing: its subscription's live frames
// are dropped and its boundary follows the feed, so that the history it
// reads once its turn comes runs up to where live delivery then stands
// (catchUp).

// replays is the gateway's line of resumes and their rate.
type replays struct {
	maxTotal, maxPerConn int
	rate                 *tokenBucket
	met                  *metrics

	mu      sync.Mutex
	running int
	perConn map[*conn]int
	line    []*replayTurn // waiting, in order

	// Peaks, for tests: the most resumes ever running at once, in all and
	// on one connection.
	peak, peakConn int
}

// replayTurn is one resume's place: waiting in line, then running.
type replayTurn struct {
	s       *sub
	ready   chan struct{} // closed when it may run, or is cancelled
	running bool
	stop    context.CancelFunc // ends the running replay's waits
}

func newReplays(maxTotal, maxPerConn, rate int, met *metrics) *replays {
	return &replays{
		maxTotal: maxTotal, maxPerConn: maxPerConn, met: met, perConn: map[*conn]int{},
		// A burst of one batch: a resume never gets ahead of the rate by
		// more than one fetch.
		rate: newTokenBucket(float64(rate), replayBatch),
	}
}

// wait returns when s's resume may run, or nil when s ended first (or the
// gateway is closing). stop is called if s ends while it runs.
func (r *replays) wait(s *sub, stop context.CancelFunc) *replayTurn {
	t := &replayTurn{s: s, ready: make(chan struct{}), stop: stop}
	r.mu.Lock()
	if s.done.Load() {
		r.mu.Unlock()
		return nil
	}
	s.turn = t
	r.line = append(r.line, t)
	r.met.replaysWaiting.Inc()
	r.admit()
	r.mu.Unlock()
	select {
	case <-t.ready:
	case <-s.c.g.ctx.Done():
		r.cancel(s)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !t.running {
		return nil
	}
	return t
}

// done frees the turn of a resume that has finished.
func (r *replays) done(t *replayTurn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finish(t)
	r.admit()
}

// cancel takes s's resume out of line, or frees its turn if it runs (its
// replay stops by itself: s is done).
func (r *replays) cancel(s *sub) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := s.turn
	if t == nil {
		return
	}
	if t.running {
		t.stop() // done frees it when the replay returns
		return
	}
	for i, w := range r.line {
		if w == t {
			r.line = append(r.line[:i], r.line[i+1:]...)
			r.met.replaysWaiting.Dec()
			break
		}
	}
	s.turn = nil
	close(t.ready)
}

// finish frees a running turn. r.mu is held.
func (r *replays) finish(t *replayTurn) {
	if !t.running {
		return
	}
	t.running = false
	t.s.turn = nil
	r.running--
	c := t.s.c
	if r.perConn[c]--; r.perConn[c] <= 0 {
		delete(r.perConn, c)
	}
	r.met.replaysRunning.Dec()
}

// admit starts the resumes in line that the limits allow, oldest first; one
// whose connection has its fill waits without holding up the others. r.mu
// is held.
func (r *replays) admit() {
	for i := 0; i < len(r.line) && r.running < r.maxTotal; {
		t := r.line[i]
		c := t.s.c
		if r.perConn[c] >= r.maxPerConn {
			i++
			continue
		}
		r.line = append(r.line[:i], r.line[i+1:]...)
		t.running = true
		r.running++
		r.perConn[c]++
		r.peak = max(r.peak, r.running)
		r.peakConn = max(r.peakConn, r.perConn[c])
		r.met.replaysWaiting.Dec()
		r.met.replaysRunning.Inc()
		close(t.ready)
	}
}

// peaks returns the most resumes that ran at once, in all and on one
// connection.
func (r *replays) peaks() (total, perConn int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peak, r.peakConn
}

// tokenBucket paces a rate: rate tokens a second, at most burst saved up.
// Takers beyond it wait their turn in the order they came (each takes its
// tokens at once, in debt, and sleeps until the debt is paid).
type tokenBucket struct {
	rate, burst float64

	mu     sync.Mutex
	tokens float64
	at     time.Time
}

func newTokenBucket(rate, burst float64) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, at: time.Now()}
}

// take takes n tokens, waiting until they are due; if ctx ends first they
// are given back.
func (b *tokenBucket) take(ctx context.Context, n int) error {
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.at).Seconds()*b.rate) - float64(n)
	b.at = now
	wait := time.Duration(-b.tokens / b.rate * float64(time.Second))
	b.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		b.tokens += float64(n)
		b.mu.Unlock()
		return ctx.Err()
	}
}
