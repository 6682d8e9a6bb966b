package webhook

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// An endpoint with nothing to deliver goes dormant: its worker's goroutine
// ends, and what wakes it is a core NATS subscription on its consumer's
// filter subjects, shared by every dormant endpoint on the same subject
// and delivering into one channel that the Manager's goroutine reads. An
// idle endpoint so costs no goroutine of ours, only its worker's state
// (its consumer's handle among it) and its place in the sleepers; the
// NATS server's consumer keeps its own.
//
// Going dormant, a worker whose pull came back empty, holding nothing,
// not recovering and running no replays, subscribes (arm), then makes one
// last check: its consumer has no message pending nor unacknowledged, and
// no replay is queued (quiet). An event published after the subscription
// reaches the server wakes it; one stored before the check is seen by it.
// The wake comes as JetStream is given the event, so the first pull of
// the worker woken waits, as every pull does, for the event to be stored.
//
// What a subscription cannot see is covered by a sweep every replayPoll
// (sweep): events published while the connection was down, wakes dropped
// because the channel was full, and an event published as the endpoint
// subscribed but stored only after its last check (JetStream stores in a
// goroutine of its own, microseconds later on one server, a quorum's
// round trip later in a cluster). The sweep lists the event stream's
// consumers (one request for 256 of them) and the replays queued, and
// wakes each dormant endpoint with something pending.
//
// Replays wake a dormant endpoint by one subscription of the Manager on
// every endpoint's replay subject. Messages held by another process
// (pending acknowledgement) come back, when that process dies, without a
// publish: a worker does not go dormant while its consumer has any, and
// the sweep wakes it if some appear.
//
// While dormant an endpoint does not pull, so its consumer's pin lapses
// after PinnedTTL: it holds nothing that another reader could get out of
// order. Its first pull after that is refused (423, the pin it names is
// gone) at once, and the next one is pinned (see dispatch). Nothing is
// held, so nothing is kept in progress (progress). A dormant endpoint
// stopped (updated, paused, deleted, or the Manager stopping) is woken by
// its context's end and stops as a running one does: it unpins.

// wakeBuffer is the room of the channel the sleepers' subscriptions
// deliver into. The Manager's goroutine only looks up maps and starts
// goroutines for what it reads; a burst beyond the room drops wakes,
// which the sweep makes up for.
const wakeBuffer = 1024

// sleepState is where a worker is on its way to dormancy.
type sleepState uint8

const (
	awake   sleepState = iota
	arming             // subscribed, making its last check
	dormant            // its goroutine ended; a wake starts it again
)

// sleepers are the dormant (and arming) endpoints, by the subjects that
// wake them.
type sleepers struct {
	m  *Manager
	nc *nats.Conn
	ch chan *nats.Msg

	mu       sync.Mutex
	subjects map[string]*sleepSubject
	count    int // dormant workers
}

// sleepSubject is the subscription of one subject and the workers it
// wakes.
type sleepSubject struct {
	sub     *nats.Subscription
	workers map[*worker]struct{}
}

func newSleepers(m *Manager, nc *nats.Conn) *sleepers {
	return &sleepers{m: m, nc: nc, ch: make(chan *nats.Msg, wakeBuffer), subjects: map[string]*sleepSubject{}}
}

// arm subscribes w's subjects: from now on an event on them wakes w. It
// fails only when a subscription cannot be made (w then stays awake).
func (s *sleepers) arm(w *worker) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, subj := range w.subjects {
		ss := s.subjects[subj]
		if ss == nil {
			sub, err := s.nc.ChanSubscribe(subj, s.ch)
			if err != nil {
				for _, done := range w.subjects[:i] {
					s.leaveLocked(w, done)
				}
				return err
			}
			ss = &sleepSubject{sub: sub, workers: map[*worker]struct{}{}}
			s.subjects[subj] = ss
		}
		ss.workers[w] = struct{}{}
	}
	w.sleep, w.woken = arming, false
	return nil
}

// sleep makes an arming w dormant, unless a wake came meanwhile or w is
// stopping: then w is awake again, unsubscribed, and sleep returns false.
// When it returns true the caller's goroutine must end without touching w.
func (s *sleepers) sleep(w *worker) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.woken || w.ctx.Err() != nil {
		s.disarmLocked(w)
		return false
	}
	w.sleep = dormant
	s.count++
	return true
}

// disarm makes an arming w awake again, unsubscribed.
func (s *sleepers) disarm(w *worker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.disarmLocked(w)
}

func (s *sleepers) disarmLocked(w *worker) {
	for _, subj := range w.subjects {
		s.leaveLocked(w, subj)
	}
	if w.sleep == dormant {
		s.count--
	}
	w.sleep, w.woken = awake, false
}

// leaveLocked takes w off subj, unsubscribing it once no worker waits on
// it.
func (s *sleepers) leaveLocked(w *worker, subj string) {
	ss := s.subjects[subj]
	if ss == nil {
		return
	}
	delete(ss.workers, w)
	if len(ss.workers) == 0 {
		_ = ss.sub.Unsubscribe()
		delete(s.subjects, subj)
	}
}

// wake starts a dormant w again, or tells an arming one not to sleep.
func (s *sleepers) wake(w *worker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wakeLocked(w)
}

func (s *sleepers) wakeLocked(w *worker) {
	switch w.sleep {
	case arming:
		w.woken = true
	case dormant:
		s.disarmLocked(w)
		w.resumed = true
		go w.run()
	}
}

// woke handles a message of a sleeper's subscription: every worker of its
// subject wakes.
func (s *sleepers) woke(msg *nats.Msg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.subjects[msg.Sub.Subject]
	if ss == nil {
		return // an event in flight as the last worker on it woke
	}
	ws := make([]*worker, 0, len(ss.workers))
	for w := range ss.workers {
		ws = append(ws, w)
	}
	for _, w := range ws {
		s.wakeLocked(w)
	}
}

// dormantCount reports how many workers are dormant.
func (s *sleepers) dormantCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// wakeReplays wakes the worker of endpoint id for its replays, or tells a
// running one to look for them now.
func (m *Manager) wakeReplays(id string) {
	m.mu.Lock()
	w := m.workers[id]
	m.mu.Unlock()
	if w == nil {
		return
	}
	w.replayWokenAt.Store(time.Now().UnixNano())
	w.replayWoken.Store(true)
	m.dl.wake(id)
	m.sleep.wake(w)
}

// sweep wakes every dormant endpoint whose consumer has messages pending
// or unacknowledged, or which has replays queued: what its subscriptions
// missed (see the top of this file).
func (m *Manager) sweep(ctx context.Context) {
	if m.sleep.dormantCount() == 0 {
		return
	}
	wake := map[string]bool{}
	str, err := m.js.Stream(ctx, m.eventsStr)
	if err != nil {
		m.log.Debug("cannot look for events of dormant webhook endpoints", "err", err)
		return
	}
	list := str.ListConsumers(ctx)
	for info := range list.Info() {
		if id, ok := strings.CutPrefix(info.Name, consumerName("")); ok && (info.NumPending > 0 || info.NumAckPending > 0) {
			wake[id] = true
		}
	}
	if err := list.Err(); err != nil {
		m.log.Debug("cannot list the webhook endpoints' consumers", "err", err)
	}
	replays := m.dl.ReplaySubject("")
	queued := map[string]bool{}
	dinfo, err := m.dl.str.Info(ctx, jetstream.WithSubjectFilter(replays+"*"))
	if err != nil {
		m.log.Debug("cannot look for replays of dormant webhook endpoints", "err", err)
	} else {
		for subj := range dinfo.State.Subjects {
			if id, ok := strings.CutPrefix(subj, replays); ok {
				wake[id], queued[id] = true, true
			}
		}
	}
	if len(wake) == 0 {
		return
	}
	m.mu.Lock()
	ws := make([]*worker, 0, len(wake))
	for id := range wake {
		if w := m.workers[id]; w != nil {
			ws = append(ws, w)
		}
	}
	m.mu.Unlock()
	m.sleep.mu.Lock()
	defer m.sleep.mu.Unlock()
	for _, w := range ws {
		if w.sleep == dormant {
			if queued[w.id] {
				w.replayWoken.Store(true)
			}
			m.sleep.wakeLocked(w)
		}
	}
}
