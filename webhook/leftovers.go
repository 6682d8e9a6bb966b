package webhook

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// Leftovers of deleted endpoints. Deleting an endpoint removes its two
// consumers, its dead letters and its queued replays in every running
// Manager (apply). An endpoint deleted while none ran (the admin API served
// by a process that delivers no webhooks, or every one that does down)
// leaves them: the consumers keep server state, and the dead letters keep
// rows of customer data that nothing can list, replay or delete any more
// (the admin API answers 404 for the endpoint). Every Manager looks for
// them every LeftoverEvery, and once at its start, and removes them with
// the functions of the live deletion.
//
// Nothing is removed unless it is proven an endpoint's that was deleted,
// since one created a moment ago in another process may have a consumer
// before this process's registry shows it:
//
//   - the id is not in the registry, and this Manager is not deleting it
//     itself (apply);
//   - everything found of it is at least LeftoverAge old: its consumers'
//     creation, and the storing of its newest dead letter or replay;
//   - the endpoint's key, read from the endpoints' bucket itself (not the
//     watched copy, which may lag), holds no endpoint.
//
// Ids are never reused: an id whose key is gone had its endpoint deleted,
// and the age keeps a read that lags (a replica behind) from removing what
// was made the moment before. The times are the server's, compared with
// this process's clock: the age covers a skew of minutes too. Several processes may remove the same
// leftovers at once: what another removed first is not an error.

// leftover is what the server holds of one endpoint id that the registry
// does not know.
type leftover struct {
	id        string
	consumers []string // by name, on the event or the dead-letter stream
	// deadLetters and replays count the records on its subjects of the
	// dead-letter stream, as found.
	deadLetters, replays uint64
	// newest is when the youngest of its things was made: a consumer's
	// creation, a record's storing.
	newest time.Time
}

// removedLeftover is what a pass removed of one endpoint.
type removedLeftover struct {
	id                   string
	consumers            []string // those this pass deleted
	deadLetters, replays uint64   // the records purged, as counted before
}

// Kinds of the metric tablecast_webhook_leftovers_removed_total.
const (
	leftoverConsumer   = "consumer"
	leftoverDeadLetter = "dead_letter"
	leftoverReplay     = "replay"
)

// leftovers is one pass of removeLeftovers, which Run makes at once and
// then every cfg.LeftoverEvery.
func (m *Manager) leftovers(ctx context.Context) {
	if _, err := m.removeLeftovers(ctx, time.Now()); err != nil && ctx.Err() == nil {
		m.log.Warn("cannot look for the consumers and dead letters of deleted webhook endpoints; trying again later", "err", err, "retry_in", m.cfg.LeftoverEvery)
	}
}

// removeLeftovers finds the consumers, dead letters and queued replays of
// endpoints that are gone, and removes those proven so at now (see
// above). It returns what it removed.
func (m *Manager) removeLeftovers(ctx context.Context, now time.Time) ([]removedLeftover, error) {
	found, err := m.findLeftovers(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(found))
	for id := range found {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []removedLeftover
	for _, id := range ids {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		l := found[id]
		if err := m.recordTimes(ctx, l); err != nil {
			m.log.Warn("cannot read the dead letters of a webhook endpoint that looks deleted; leaving them", "endpoint_id", id, "err", err)
			continue
		}
		gone, err := m.provenGone(ctx, l, now)
		if err != nil {
			m.log.Warn("cannot tell whether a webhook endpoint was deleted; leaving its consumers and dead letters", "endpoint_id", id, "err", err)
			continue
		}
		if !gone {
			continue
		}
		r, _ := m.removeLeftover(ctx, l) // an error is logged, and tried again at the next pass
		out = append(out, r)
	}
	return out, nil
}

// findLeftovers lists the webhook consumers of the event and dead-letter
// streams, and the endpoints with dead letters or queued replays, of the
// ids that the registry does not know and that this Manager is not
// deleting itself.
func (m *Manager) findLeftovers(ctx context.Context) (map[string]*leftover, error) {
	found := map[string]*leftover{}
	// unknown reports whether id may be a deleted endpoint's: an id the
	// registry does not know, and whose deletion this Manager is not
	// making itself (apply).
	unknown := func(id string) bool {
		if !endpoint.ValidID(id) || m.cfg.Registry.Get(id) != nil {
			return false
		}
		m.mu.Lock()
		_, deleting := m.last[id]
		m.mu.Unlock()
		return !deleting
	}
	get := func(id string) *leftover {
		if !unknown(id) {
			return nil
		}
		l := found[id]
		if l == nil {
			l = &leftover{id: id}
			found[id] = l
		}
		return l
	}
	events, err := m.eventStream(ctx)
	if err != nil {
		return nil, err
	}
	// An endpoint's consumer names it after a prefix (consumerName,
	// replayConsumerName); a replay consumer's name, seen with the event
	// consumers' prefix, leaves "replay_<id>", which is no id.
	//
	// The names are listed (a request per 1,024), not the consumers' info
	// (a request per 256, and the server computing each consumer's state):
	// with thousands of endpoints the info of every live one's consumers
	// was most of a pass's time and memory, in this process and the
	// server. Only the consumers of ids the registry does not know are
	// looked up, for their creation time.
	for _, s := range []struct {
		str    jetstream.Stream
		prefix string
	}{{events, consumerName("")}, {m.dl.str, replayConsumerName("")}} {
		streamName := s.str.CachedInfo().Config.Name
		var names []string
		lister := s.str.ConsumerNames(ctx)
		for name := range lister.Name() {
			if id, ok := strings.CutPrefix(name, s.prefix); ok && unknown(id) {
				names = append(names, name)
			}
		}
		if err := lister.Err(); err != nil {
			return nil, fmt.Errorf("list the consumers of stream %s: %w", streamName, err)
		}
		for _, name := range names {
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			c, err := s.str.Consumer(rctx, name)
			cancel()
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				continue // removed meanwhile
			}
			if err != nil {
				return nil, fmt.Errorf("look up consumer %s of stream %s: %w", name, streamName, err)
			}
			info := c.CachedInfo()
			if l := get(strings.TrimPrefix(name, s.prefix)); l != nil {
				l.consumers = append(l.consumers, name)
				if info.Created.After(l.newest) {
					l.newest = info.Created
				}
			}
		}
	}
	// The records per subject, from the stream's state: the endpoint id is
	// the subject's last token (DeadLetters.Subject, ReplaySubject).
	for _, pattern := range []string{m.dl.Subject("*"), m.dl.ReplaySubject("*")} {
		info, err := m.dl.str.Info(ctx, jetstream.WithSubjectFilter(pattern))
		if err != nil {
			return nil, fmt.Errorf("count the records on %s: %w", pattern, err)
		}
		for subj, n := range info.State.Subjects {
			l := get(subj[strings.LastIndexByte(subj, '.')+1:])
			if l == nil || n == 0 {
				continue
			}
			if subj == m.dl.Subject(l.id) {
				l.deadLetters += n
			} else {
				l.replays += n
			}
		}
	}
	return found, nil
}

// recordTimes takes the storing of l's newest dead letter and of its
// newest queued replay into l.newest.
func (m *Manager) recordTimes(ctx context.Context, l *leftover) error {
	for _, s := range []struct {
		subj string
		n    uint64
	}{{m.dl.Subject(l.id), l.deadLetters}, {m.dl.ReplaySubject(l.id), l.replays}} {
		if s.n == 0 {
			continue
		}
		raw, err := m.dl.str.GetLastMsgForSubject(ctx, s.subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return fmt.Errorf("read the last record on %s: %w", s.subj, err)
		}
		if raw.Time.After(l.newest) {
			l.newest = raw.Time
		}
	}
	return nil
}

// provenGone reports whether l is of an endpoint deleted: its newest thing
// is LeftoverAge old at now, and the endpoint's key holds none.
func (m *Manager) provenGone(ctx context.Context, l *leftover, now time.Time) (bool, error) {
	if now.Sub(l.newest) < m.cfg.LeftoverAge {
		return false, nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := m.cfg.States.GetEndpoint(rctx, l.id)
	switch {
	case errors.Is(err, endpoint.ErrNotFound):
		return true, nil
	case err != nil:
		return false, err
	default:
		return false, nil // it exists: the registry has yet to show it
	}
}

// removeLeftover removes l's consumers, dead letters, queued replays and
// their body objects, as the live deletion does, logs it and counts it.
func (m *Manager) removeLeftover(ctx context.Context, l *leftover) (removedLeftover, error) {
	r := removedLeftover{id: l.id, consumers: m.deleteConsumers(ctx, l.id)}
	err := m.purgeDeadLetters(ctx, l.id) // logged there
	if err == nil {
		r.deadLetters, r.replays = l.deadLetters, l.replays
	}
	m.countLeftovers(r)
	if len(r.consumers) > 0 || r.deadLetters > 0 || r.replays > 0 {
		m.log.Info("removed the consumers and dead letters of a webhook endpoint deleted while no process delivered webhooks",
			"endpoint_id", l.id, "consumers", r.consumers, "dead_letters", r.deadLetters, "replays", r.replays)
	}
	return r, err
}

func (m *Manager) countLeftovers(r removedLeftover) {
	m.met.leftovers.WithLabelValues(leftoverConsumer).Add(float64(len(r.consumers)))
	m.met.leftovers.WithLabelValues(leftoverDeadLetter).Add(float64(r.deadLetters))
	m.met.leftovers.WithLabelValues(leftoverReplay).Add(float64(r.replays))
}
