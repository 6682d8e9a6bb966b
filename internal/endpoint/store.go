package endpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// Config is the store's configuration. Zero fields take the defaults
// documented on each.
type Config struct {
	// Replicas of the buckets when the store creates them. Default 1.
	Replicas int
	// EndpointBucket, FilterBucket and RuleBucket name the buckets.
	// Defaults stream.DefaultEndpointBucket ("TABLECAST_ENDPOINTS"),
	// stream.DefaultFilterBucket ("TABLECAST_FILTERS") and
	// stream.DefaultRuleBucket ("TABLECAST_RULES").
	EndpointBucket, FilterBucket, RuleBucket string
	// Tables checks filters' and rules' conditions against the streamed
	// tables (a *catalog.Catalog). Nil: only their form is checked.
	Tables Tables
	// Logger; nil logs nothing.
	Logger *slog.Logger
	// Now is the clock of created_at and updated_at. Default time.Now.
	Now func() time.Time
}

// Keys of the endpoints bucket: records by id, and the name index.
const (
	endpointKeyPrefix = "e."
	nameKeyPrefix     = "n."
)

// nameGrace is how old a name index entry that points to no endpoint of
// that name must be before another endpoint may take the name: younger,
// it may be a creation or rename under way (one takes well under a
// second; every write is bounded by writeTimeout).
const nameGrace = 30 * time.Second

// writeTimeout bounds each of a change's writes, so that none can land
// after nameGrace has let another endpoint take a name it claimed.
const writeTimeout = 10 * time.Second

// syncWait bounds how long a listing waits for this process's view of a
// bucket to catch up with writes acknowledged before it began. It is a
// safety net: the view normally catches up within milliseconds.
const syncWait = 2 * time.Second

// maxRetries bounds the attempts of a change made without an expected
// revision when concurrent changes keep getting in first.
const maxRetries = 8

// Store keeps endpoints, filters and rules in their JetStream key-value
// buckets, so that every tablecast process sees every change (see the
// package doc for the keys, links and consistency).
type Store struct {
	cfg Config
	log *slog.Logger

	eps, filters, rules *cache

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Open creates the buckets if missing and starts following them. Close
// stops it.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	if cfg.EndpointBucket == "" {
		cfg.EndpointBucket = stream.DefaultEndpointBucket
	}
	if cfg.FilterBucket == "" {
		cfg.FilterBucket = stream.DefaultFilterBucket
	}
	if cfg.RuleBucket == "" {
		cfg.RuleBucket = stream.DefaultRuleBucket
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	eps, epsTTL, err := stream.OpenManagedBucket(ctx, js, cfg.EndpointBucket, "tablecast managed endpoints (e.<id>) and their name index (n.<name>)", cfg.Replicas)
	if err != nil {
		return nil, err
	}
	filters, filtersTTL, err := stream.OpenManagedBucket(ctx, js, cfg.FilterBucket, "tablecast event filters, by name", cfg.Replicas)
	if err != nil {
		return nil, err
	}
	rules, rulesTTL, err := stream.OpenManagedBucket(ctx, js, cfg.RuleBucket, "tablecast rules, by name", cfg.Replicas)
	if err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, log: cfg.Logger}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.eps = newCache(js, eps, epsTTL, "endpoints", func(key string) (string, bool) {
		id, ok := cutPrefix(key, endpointKeyPrefix)
		return id, ok
	}, decodeStoredEndpoint)
	s.filters = newCache(js, filters, filtersTTL, "filters", unescapeName, decodeStoredFilter)
	s.rules = newCache(js, rules, rulesTTL, "rules", unescapeName, decodeStoredRule)
	for _, c := range []*cache{s.eps, s.filters, s.rules} {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c.run(s.ctx, s.log, cfg.Now)
		}()
	}
	return s, nil
}

// Close stops following the buckets.
func (s *Store) Close() {
	s.cancel()
	s.wg.Wait()
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) > len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return "", false
}

func nameKey(name string) string { return stream.EscapeKey(name) }

func unescapeName(key string) (string, bool) {
	parts, err := stream.UnescapeKey(key)
	if err != nil || len(parts) != 1 {
		return "", false
	}
	return parts[0], true
}

func endpointKey(id string) string { return endpointKeyPrefix + id }

func indexKey(name string) string { return nameKeyPrefix + stream.EscapeKey(name) }

func decodeStoredEndpoint(data []byte, rev uint64) (any, error) {
	var e Endpoint
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, err
	}
	e.Revision = rev
	e.ApplyDefaults()
	return &e, nil
}

func decodeStoredFilter(data []byte, rev uint64) (any, error) {
	var f Filter
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, err
	}
	f.Revision = rev
	f.ApplyDefaults()
	return &f, nil
}

func decodeStoredRule(data []byte, rev uint64) (any, error) {
	var r Rule
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, err
	}
	r.Revision = rev
	r.ApplyDefaults()
	return &r, nil
}

// isConflict reports whether err is the bucket refusing a write because
// the key's revision is not the one expected (or, for a creation, because
// the key exists).
func isConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func writeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, writeTimeout)
}

// getEndpoint reads an endpoint from its bucket (not from the view).
func (s *Store) getEndpoint(ctx context.Context, id string) (*Endpoint, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("endpoint %q: %w", id, ErrNotFound)
	}
	e, err := s.eps.kv.Get(ctx, endpointKey(id))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, fmt.Errorf("endpoint %s: %w", id, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("read endpoint %s: %w", id, err)
	}
	v, err := decodeStoredEndpoint(e.Value(), e.Revision())
	if err != nil {
		return nil, fmt.Errorf("read endpoint %s: stored value: %w", id, err)
	}
	return v.(*Endpoint), nil
}

// GetEndpoint returns the endpoint with the id, as stored now (with its
// whole secret), or ErrNotFound.
func (s *Store) GetEndpoint(ctx context.Context, id string) (*Endpoint, error) {
	return s.getEndpoint(ctx, id)
}

// GetEndpointByName returns the endpoint with the name, or ErrNotFound.
func (s *Store) GetEndpointByName(ctx context.Context, name string) (*Endpoint, error) {
	if !nameOK(name) {
		return nil, fmt.Errorf("endpoint %q: %w", short(name), ErrNotFound)
	}
	ie, err := s.eps.kv.Get(ctx, indexKey(name))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, fmt.Errorf("endpoint %q: %w", name, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("read endpoint %q: %w", name, err)
	}
	e, err := s.getEndpoint(ctx, string(ie.Value()))
	if errors.Is(err, ErrNotFound) || err == nil && e.Name != name {
		// An index entry of a creation or rename under way, or left by
		// one that failed: no endpoint has the name.
		return nil, fmt.Errorf("endpoint %q: %w", name, ErrNotFound)
	}
	return e, err
}

// CreateEndpoint validates e, with defaults applied, and stores it under a
// new id: the endpoint as stored (with its whole secret, generated when e
// had none). A name another endpoint has is ErrNameTaken; every problem
// with the values, links to filters or rules that do not exist included,
// is a *ValidationError. Nothing is written unless all is well.
func (s *Store) CreateEndpoint(ctx context.Context, in *Endpoint) (*Endpoint, error) {
	e := in.Clone()
	var errs fieldErrors
	if e.ID != "" {
		errs.add("id", "assigned by the server: leave it out")
	}
	if e.State == StateDisabled {
		errs.add("state", "disabled is set by tablecast itself (a webhook answered 410 Gone, say); create it active or paused")
	}
	e.DisabledReason = ""
	e.RetentionGaps = nil
	now := s.cfg.Now().UTC()
	e.ID, e.CreatedAt, e.UpdatedAt, e.Revision = NewID(now), now, now, 0
	if e.Webhook != nil && e.Webhook.Secret == "" {
		e.Webhook.Secret = GenerateSecret()
	}
	e.ApplyDefaults()
	e.validate(&errs)
	s.checkLinksExist(ctx, &errs, e, nil)
	if err := errs.err(); err != nil {
		return nil, err
	}
	sortLinks(e)
	data, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode endpoint: %w", err)
	}
	if err := s.claimName(ctx, e.Name, e.ID); err != nil {
		return nil, err
	}
	wctx, cancel := writeCtx(ctx)
	rev, err := s.eps.kv.Create(wctx, endpointKey(e.ID), data)
	cancel()
	if err != nil {
		s.releaseName(e.Name, e.ID)
		return nil, fmt.Errorf("create endpoint %q: %w", e.Name, err)
	}
	e.Revision = rev
	if gone := s.touchLinks(ctx, e, nil); gone != nil {
		// A filter or rule was deleted between the check and the write:
		// take the endpoint back rather than leave a link to nothing.
		if err := s.purgeEndpoint(e.ID, rev); err != nil {
			s.log.Error("endpoint created with a link to a filter or rule deleted meanwhile, and not removed", "id", e.ID, "err", err)
		}
		s.releaseName(e.Name, e.ID)
		return nil, gone
	}
	s.eps.waitApplied(ctx, rev)
	return e, nil
}

// purgeEndpoint removes an endpoint record written moments ago.
func (s *Store) purgeEndpoint(id string, rev uint64) error {
	ctx, cancel := writeCtx(context.Background())
	defer cancel()
	return s.eps.purge(ctx, endpointKey(id), rev)
}

// UpdateEndpoint replaces an endpoint's settings with in's: its name,
// state, links and webhook settings. The id comes from in.ID; its type and
// creation time never change. A secret left empty, or given masked as the
// API shows it, keeps the current one. expected, when not 0, is the
// revision the caller read: ErrConflict if the endpoint changed since.
// State "disabled" is set by SetEndpointState only; an empty state keeps
// the current one.
func (s *Store) UpdateEndpoint(ctx context.Context, in *Endpoint, expected uint64) (*Endpoint, error) {
	return s.modifyEndpoint(ctx, in.ID, expected, func(cur *Endpoint) (*Endpoint, error) {
		next := in.Clone()
		var errs fieldErrors
		if next.Type != "" && next.Type != cur.Type {
			errs.add("type", "cannot change (it is %s): create another endpoint", cur.Type)
		}
		next.Type = cur.Type
		next.RetentionGaps = cur.RetentionGaps
		switch {
		case next.State == "":
			next.State, next.DisabledReason = cur.State, cur.DisabledReason
		case next.State == StateDisabled && cur.State != StateDisabled:
			errs.add("state", "disabled is set by tablecast itself; pause the endpoint instead")
		case next.State == StateDisabled:
			next.DisabledReason = cur.DisabledReason
		default:
			next.DisabledReason = ""
		}
		if next.Webhook != nil && cur.Webhook != nil {
			if next.Webhook.Secret == "" || next.Webhook.Secret == MaskSecret(cur.Webhook.Secret) {
				next.Webhook.Secret = cur.Webhook.Secret
			}
		}
		if next.Webhook != nil && next.Webhook.Secret == "" {
			next.Webhook.Secret = GenerateSecret()
		}
		if next.Webhook != nil && cur.Webhook != nil {
			// A credential header sent back as the API shows it keeps its
			// value; one masked otherwise is refused by validate.
			for name, v := range next.Webhook.Headers {
				if old, ok := cur.Webhook.Headers[name]; ok && isMaskedHeader(v) && CredentialHeader(name) && v == MaskHeader(old) {
					next.Webhook.Headers[name] = old
				}
			}
		}
		if err := errs.err(); err != nil {
			return nil, err
		}
		return next, nil
	})
}

// ModifyEndpoint applies fn to the current endpoint and stores what it
// returns (validated, as UpdateEndpoint does, but fn may set any state),
// retrying with the new current value when another change gets in first,
// unless expected (not 0) names a revision: then ErrConflict. It is for
// delivery engines (disable a webhook that answered 410) and small
// changes; fn must not keep cur.
func (s *Store) ModifyEndpoint(ctx context.Context, id string, expected uint64, fn func(cur *Endpoint) error) (*Endpoint, error) {
	return s.modifyEndpoint(ctx, id, expected, func(cur *Endpoint) (*Endpoint, error) {
		if err := fn(cur); err != nil {
			return nil, err
		}
		return cur, nil
	})
}

// SetEndpointState pauses (StatePaused), resumes (StateActive) or
// disables (StateDisabled, with a reason) an endpoint. Resuming clears the
// reason. Setting the state it has changes nothing.
func (s *Store) SetEndpointState(ctx context.Context, id string, expected uint64, state State, reason string) (*Endpoint, error) {
	return s.modifyEndpoint(ctx, id, expected, func(cur *Endpoint) (*Endpoint, error) {
		var errs fieldErrors
		switch state {
		case StateActive, StatePaused:
			reason = ""
		case StateDisabled:
			if reason == "" {
				errs.add("disabled_reason", "required when the state is disabled")
			}
		default:
			errs.add("state", "want active, paused or disabled")
		}
		if err := errs.err(); err != nil {
			return nil, err
		}
		if cur.State == state && cur.DisabledReason == reason {
			return nil, errUnchanged
		}
		cur.State, cur.DisabledReason = state, reason
		return cur, nil
	})
}

// RecordRetentionGap adds gap to the endpoint's RetentionGaps (its count,
// the messages it spans, and as the latest). The delivery engine calls it
// when the stream discarded events before the endpoint read them.
//
// A gap AtStart is recorded only on an endpoint that has none yet, else
// the answer is ErrGapKnown: every process may create the endpoint's
// consumer at once as the endpoint appears (creating a consumer that
// exists with the same settings succeeds), and each then finds the same
// gap; the one whose record is written first reports it. A gap at the
// start comes before any other, so one recorded already is this one, or
// the endpoint's consumer was created anew after it had read from the
// stream.
func (s *Store) RecordRetentionGap(ctx context.Context, id string, gap RetentionGap) (*Endpoint, error) {
	return s.modifyEndpoint(ctx, id, 0, func(cur *Endpoint) (*Endpoint, error) {
		g := RetentionGaps{}
		if cur.RetentionGaps != nil {
			if gap.AtStart {
				return nil, ErrGapKnown
			}
			g = *cur.RetentionGaps
		}
		g.Count++
		g.Messages += gap.Messages
		g.Last = gap
		cur.RetentionGaps = &g
		return cur, nil
	})
}

// errUnchanged, from a modification, leaves the endpoint as it is.
var errUnchanged = errors.New("unchanged")

// modifyEndpoint is every change of a stored endpoint: read it, let fn
// make the next value, validate, check the links it adds, take a new name
// in the index, write it if its revision is still the one read (retrying
// from the read when it is not and expected is 0), release the old name,
// and touch the filters and rules it links anew (see the package doc).
func (s *Store) modifyEndpoint(ctx context.Context, id string, expected uint64, fn func(cur *Endpoint) (*Endpoint, error)) (*Endpoint, error) {
	for attempt := 0; ; attempt++ {
		cur, err := s.getEndpoint(ctx, id)
		if err != nil {
			return nil, err
		}
		if expected != 0 && cur.Revision != expected {
			return nil, fmt.Errorf("endpoint %s is at revision %d, not %d: %w", id, cur.Revision, expected, ErrConflict)
		}
		next, err := fn(cur.Clone())
		if errors.Is(err, errUnchanged) {
			return cur, nil
		}
		if err != nil {
			return nil, err
		}
		next.ID, next.Type, next.CreatedAt = cur.ID, cur.Type, cur.CreatedAt
		next.UpdatedAt = s.cfg.Now().UTC()
		if !next.UpdatedAt.After(cur.UpdatedAt) {
			next.UpdatedAt = cur.UpdatedAt.Add(time.Microsecond)
		}
		next.Revision = 0
		next.ApplyDefaults()
		var errs fieldErrors
		next.validate(&errs)
		s.checkLinksExist(ctx, &errs, next, cur)
		if err := errs.err(); err != nil {
			return nil, err
		}
		sortLinks(next)
		data, err := json.Marshal(next)
		if err != nil {
			return nil, fmt.Errorf("encode endpoint: %w", err)
		}
		renamed := next.Name != cur.Name
		if renamed {
			if err := s.claimName(ctx, next.Name, id); err != nil {
				return nil, err
			}
		}
		wctx, cancel := writeCtx(ctx)
		rev, err := s.eps.kv.Update(wctx, endpointKey(id), data, cur.Revision)
		cancel()
		if err != nil {
			if renamed {
				s.releaseName(next.Name, id)
			}
			if !isConflict(err) {
				return nil, fmt.Errorf("update endpoint %s: %w", id, err)
			}
			if expected != 0 || attempt >= maxRetries {
				return nil, fmt.Errorf("endpoint %s changed meanwhile: %w", id, ErrConflict)
			}
			continue
		}
		next.Revision = rev
		if renamed {
			s.releaseName(cur.Name, id)
		}
		if gone := s.touchLinks(ctx, next, cur); gone != nil {
			// A filter or rule linked anew was deleted between the check
			// and the write: take those links back.
			back, err := s.modifyEndpoint(ctx, id, 0, func(e *Endpoint) (*Endpoint, error) {
				e.Filters = slices.DeleteFunc(e.Filters, func(n string) bool { return !cur.HasFilter(n) && next.HasFilter(n) })
				e.Rules = slices.DeleteFunc(e.Rules, func(n string) bool { return !cur.HasRule(n) && next.HasRule(n) })
				return e, nil
			})
			if err != nil {
				s.log.Error("endpoint linked to a filter or rule deleted meanwhile, and not unlinked", "id", id, "err", err)
			} else {
				s.eps.waitApplied(ctx, back.Revision)
			}
			return nil, gone
		}
		s.eps.waitApplied(ctx, rev)
		return next, nil
	}
}

// sortLinks sorts an endpoint's links, as they are stored.
func sortLinks(e *Endpoint) {
	slices.Sort(e.Filters)
	slices.Sort(e.Rules)
}

// checkLinksExist records an error for each filter and rule e links that
// cur (nil for a new endpoint) did not, and that does not exist.
func (s *Store) checkLinksExist(ctx context.Context, errs *fieldErrors, e, cur *Endpoint) {
	for i, n := range e.Filters {
		if cur != nil && cur.HasFilter(n) || !nameOK(n) {
			continue
		}
		if _, err := s.filters.kv.Get(ctx, nameKey(n)); errors.Is(err, jetstream.ErrKeyNotFound) {
			errs.add(fmt.Sprintf("filters[%d]", i), "no filter is named %q", n)
		} else if err != nil {
			errs.add(fmt.Sprintf("filters[%d]", i), "cannot read filter %q: %v", n, err)
		}
	}
	for i, n := range e.Rules {
		if cur != nil && cur.HasRule(n) || !nameOK(n) {
			continue
		}
		if _, err := s.rules.kv.Get(ctx, nameKey(n)); errors.Is(err, jetstream.ErrKeyNotFound) {
			errs.add(fmt.Sprintf("rules[%d]", i), "no rule is named %q", n)
		} else if err != nil {
			errs.add(fmt.Sprintf("rules[%d]", i), "cannot read rule %q: %v", n, err)
		}
	}
}

// touchLinks gives each filter and rule e links anew (cur nil: every one)
// a new revision, after e is written: a deletion of one of them that read
// its revision before e was written then fails and looks again (package
// doc, "Links"). It returns a *ValidationError for those that are gone.
func (s *Store) touchLinks(ctx context.Context, e, cur *Endpoint) error {
	var errs fieldErrors
	for i, n := range e.Filters {
		if cur != nil && cur.HasFilter(n) {
			continue
		}
		if err := touch(ctx, s.filters.kv, nameKey(n)); err != nil {
			errs.add(fmt.Sprintf("filters[%d]", i), "filter %q: %v", n, touchProblem(err))
		}
	}
	for i, n := range e.Rules {
		if cur != nil && cur.HasRule(n) {
			continue
		}
		if err := touch(ctx, s.rules.kv, nameKey(n)); err != nil {
			errs.add(fmt.Sprintf("rules[%d]", i), "rule %q: %v", n, touchProblem(err))
		}
	}
	return errs.err()
}

func touchProblem(err error) string {
	if errors.Is(err, ErrNotFound) {
		return "deleted meanwhile"
	}
	return err.Error()
}

// touch writes a key's value again, so that its revision changes;
// ErrNotFound when it is gone.
func touch(ctx context.Context, kv jetstream.KeyValue, key string) error {
	for range maxRetries {
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return ErrNotFound
		case err != nil:
			return err
		}
		wctx, cancel := writeCtx(ctx)
		_, err = kv.Update(wctx, key, e.Value(), e.Revision())
		cancel()
		if err == nil {
			return nil
		}
		if !isConflict(err) {
			return err
		}
	}
	return ErrConflict
}

// claimName takes name for the endpoint id in the name index:
// ErrNameTaken when another endpoint has it, or a creation or rename is
// taking it right now.
func (s *Store) claimName(ctx context.Context, name, id string) error {
	key := indexKey(name)
	for range maxRetries {
		wctx, cancel := writeCtx(ctx)
		_, err := s.eps.kv.Create(wctx, key, []byte(id))
		cancel()
		if err == nil {
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("claim endpoint name %q: %w", name, err)
		}
		ie, err := s.eps.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			continue // released meanwhile: try again
		case err != nil:
			return fmt.Errorf("claim endpoint name %q: %w", name, err)
		}
		holder := string(ie.Value())
		if holder == id {
			return nil
		}
		if e, err := s.getEndpoint(ctx, holder); err == nil && e.Name == name || !errors.Is(err, ErrNotFound) && err != nil {
			return fmt.Errorf("endpoint name %q: %w", name, ErrNameTaken)
		}
		if time.Since(ie.Created()) < nameGrace {
			// Not (yet, or any more) the name of the endpoint it points
			// to: a creation or rename may be under way.
			return fmt.Errorf("endpoint name %q: %w", name, ErrNameTaken)
		}
		// Left by a change that failed half-way: take it.
		wctx, cancel = writeCtx(ctx)
		_, err = s.eps.kv.Update(wctx, key, []byte(id), ie.Revision())
		cancel()
		if err == nil {
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("claim endpoint name %q: %w", name, err)
		}
	}
	return fmt.Errorf("endpoint name %q: %w", name, ErrNameTaken)
}

// releaseName removes the index entry of name if it is id's.
func (s *Store) releaseName(name, id string) {
	ctx, cancel := writeCtx(context.Background())
	defer cancel()
	key := indexKey(name)
	ie, err := s.eps.kv.Get(ctx, key)
	if err != nil || string(ie.Value()) != id {
		return
	}
	if err := s.eps.purge(ctx, key, ie.Revision()); err != nil && !isConflict(err) {
		s.log.Warn("endpoint name not released; it is taken over once stale", "name", name, "err", err)
	}
}

// DeleteEndpoint deletes an endpoint: ErrNotFound if there is none,
// ErrConflict if expected (not 0) is not its revision. Its history is
// purged with it (it held the webhook's secret).
func (s *Store) DeleteEndpoint(ctx context.Context, id string, expected uint64) error {
	for attempt := 0; ; attempt++ {
		cur, err := s.getEndpoint(ctx, id)
		if err != nil {
			return err
		}
		if expected != 0 && cur.Revision != expected {
			return fmt.Errorf("endpoint %s is at revision %d, not %d: %w", id, cur.Revision, expected, ErrConflict)
		}
		wctx, cancel := writeCtx(ctx)
		err = s.eps.purge(wctx, endpointKey(id), cur.Revision)
		cancel()
		if err != nil {
			if !isConflict(err) {
				return fmt.Errorf("delete endpoint %s: %w", id, err)
			}
			if expected != 0 || attempt >= maxRetries {
				return fmt.Errorf("endpoint %s changed meanwhile: %w", id, ErrConflict)
			}
			continue
		}
		s.releaseName(cur.Name, id)
		s.eps.sync(ctx)
		return nil
	}
}

// DeleteEndpoints deletes the endpoints with the ids (repeats counted
// once): deleted lists those it deleted, notFound those that did not exist,
// each in the order given. An error other than not found stops it; what
// was deleted until then is reported.
func (s *Store) DeleteEndpoints(ctx context.Context, ids []string) (deleted, notFound []string, err error) {
	deleted, notFound = []string{}, []string{}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		switch err := s.DeleteEndpoint(ctx, id, 0); {
		case errors.Is(err, ErrNotFound):
			notFound = append(notFound, id)
		case err != nil:
			return deleted, notFound, err
		default:
			deleted = append(deleted, id)
		}
	}
	return deleted, notFound, nil
}

// LinkFilter links a filter to an endpoint (nothing changes if it is
// linked already). A filter that does not exist is a *ValidationError.
func (s *Store) LinkFilter(ctx context.Context, id, filter string, expected uint64) (*Endpoint, error) {
	return s.link(ctx, id, expected, filter, func(e *Endpoint) *[]string { return &e.Filters })
}

// UnlinkFilter unlinks a filter from an endpoint: ErrNotFound when it is
// not linked.
func (s *Store) UnlinkFilter(ctx context.Context, id, filter string, expected uint64) (*Endpoint, error) {
	return s.unlink(ctx, id, expected, "filter", filter, func(e *Endpoint) *[]string { return &e.Filters })
}

// LinkRule links a rule to an endpoint, as LinkFilter does.
func (s *Store) LinkRule(ctx context.Context, id, rule string, expected uint64) (*Endpoint, error) {
	return s.link(ctx, id, expected, rule, func(e *Endpoint) *[]string { return &e.Rules })
}

// UnlinkRule unlinks a rule from an endpoint, as UnlinkFilter does.
func (s *Store) UnlinkRule(ctx context.Context, id, rule string, expected uint64) (*Endpoint, error) {
	return s.unlink(ctx, id, expected, "rule", rule, func(e *Endpoint) *[]string { return &e.Rules })
}

func (s *Store) link(ctx context.Context, id string, expected uint64, name string, list func(*Endpoint) *[]string) (*Endpoint, error) {
	return s.modifyEndpoint(ctx, id, expected, func(cur *Endpoint) (*Endpoint, error) {
		l := list(cur)
		if slices.Contains(*l, name) {
			return nil, errUnchanged
		}
		*l = append(*l, name)
		return cur, nil
	})
}

func (s *Store) unlink(ctx context.Context, id string, expected uint64, kind, name string, list func(*Endpoint) *[]string) (*Endpoint, error) {
	return s.modifyEndpoint(ctx, id, expected, func(cur *Endpoint) (*Endpoint, error) {
		l := list(cur)
		if !slices.Contains(*l, name) {
			return nil, fmt.Errorf("%s %q is not linked to endpoint %s: %w", kind, name, id, ErrNotFound)
		}
		*l = slices.DeleteFunc(*l, func(n string) bool { return n == name })
		return cur, nil
	})
}

// FilterEndpoints lists the endpoints a filter is linked to, by name:
// ErrNotFound when there is no such filter.
func (s *Store) FilterEndpoints(ctx context.Context, filter string) ([]*Endpoint, error) {
	if _, err := s.GetFilter(ctx, filter); err != nil {
		return nil, err
	}
	return s.linked(ctx, func(e *Endpoint) bool { return e.HasFilter(filter) }), nil
}

// RuleEndpoints lists the endpoints a rule is linked to, as FilterEndpoints
// does.
func (s *Store) RuleEndpoints(ctx context.Context, rule string) ([]*Endpoint, error) {
	if _, err := s.GetRule(ctx, rule); err != nil {
		return nil, err
	}
	return s.linked(ctx, func(e *Endpoint) bool { return e.HasRule(rule) }), nil
}

func (s *Store) linked(ctx context.Context, match func(*Endpoint) bool) []*Endpoint {
	s.eps.sync(ctx)
	var out []*Endpoint
	for _, v := range s.eps.values() {
		if e := v.(*Endpoint); match(e) {
			out = append(out, e.Clone())
		}
	}
	slices.SortFunc(out, func(a, b *Endpoint) int { return compareStrings(a.Name, b.Name) })
	return out
}

// scanLinked reads every endpoint from the bucket itself (not the view)
// and returns those linked by match, sorted by name.
func (s *Store) scanLinked(ctx context.Context, match func(*Endpoint) bool) ([]*Endpoint, error) {
	w, err := stream.WatchKV(ctx, s.eps.js, s.eps.kv, endpointKeyPrefix+">", true)
	if err != nil {
		return nil, fmt.Errorf("read endpoints: %w", err)
	}
	defer func() { _ = w.Stop() }()
	var out []*Endpoint
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case entry, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("read endpoints: the watch ended")
			}
			if entry == nil {
				slices.SortFunc(out, func(a, b *Endpoint) int { return compareStrings(a.Name, b.Name) })
				return out, nil
			}
			v, err := decodeStoredEndpoint(entry.Value(), entry.Revision())
			if err != nil {
				continue
			}
			if e := v.(*Endpoint); match(e) {
				out = append(out, e)
			}
		}
	}
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
