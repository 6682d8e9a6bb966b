package match

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"sync"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// Source is what a Registry follows: *endpoint.Store.
type Source interface {
	WatchEndpoints(ctx context.Context) <-chan endpoint.Event[endpoint.Endpoint]
	WatchFilters(ctx context.Context) <-chan endpoint.Event[endpoint.Filter]
	WatchRules(ctx context.Context) <-chan endpoint.Event[endpoint.Rule]
}

// Entry is one endpoint as the Registry holds it: its definition and its
// Matcher. Both are shared and must not be changed.
type Entry struct {
	Endpoint *endpoint.Endpoint
	Matcher  *Matcher
}

// Registry follows the endpoints, filters and rules of a Source and keeps
// each endpoint's Matcher current (see the package doc).
type Registry struct {
	log *slog.Logger

	mu        sync.Mutex
	endpoints map[string]*endpoint.Endpoint // by id
	filters   map[string]*endpoint.Filter
	rules     map[string]*endpoint.Rule
	entries   map[string]*Entry
	listeners map[*Listener]struct{}
	loaded    [3]bool
	ready     chan struct{} // closed once the three watches have loaded
}

// NewRegistry makes a Registry; Run follows src. A nil log logs nothing.
func NewRegistry(log *slog.Logger) *Registry {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Registry{
		log:       log,
		endpoints: map[string]*endpoint.Endpoint{},
		filters:   map[string]*endpoint.Filter{},
		rules:     map[string]*endpoint.Rule{},
		entries:   map[string]*Entry{},
		listeners: map[*Listener]struct{}{},
		ready:     make(chan struct{}),
	}
}

// Ready is closed once every endpoint, filter and rule stored when Run
// started is known.
func (r *Registry) Ready() <-chan struct{} { return r.ready }

// Get returns the endpoint of id, nil when there is none.
func (r *Registry) Get(id string) *Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.entries[id]
}

// GetByName returns the endpoint named name, nil when there is none.
func (r *Registry) GetByName(name string) *Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.entries {
		if e.Endpoint.Name == name {
			return e
		}
	}
	return nil
}

// Entries returns every endpoint, sorted by id.
func (r *Registry) Entries() []*Entry {
	r.mu.Lock()
	list := make([]*Entry, 0, len(r.entries))
	for _, e := range r.entries {
		list = append(list, e)
	}
	r.mu.Unlock()
	slices.SortFunc(list, func(a, b *Entry) int { return compare(a.Endpoint.ID, b.Endpoint.ID) })
	return list
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Listener is told which endpoints changed: C is signalled (never
// blocking the Registry) and Take returns the ids since the last Take.
type Listener struct {
	r       *Registry
	c       chan struct{}
	mu      sync.Mutex
	pending map[string]struct{}
}

// Listen registers a Listener. Every endpoint known then counts as
// changed, so that the first Take returns them all.
func (r *Registry) Listen() *Listener {
	l := &Listener{r: r, c: make(chan struct{}, 1), pending: map[string]struct{}{}}
	r.mu.Lock()
	r.listeners[l] = struct{}{}
	ids := make([]string, 0, len(r.entries))
	for id := range r.entries {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	l.note(ids)
	return l
}

// C is signalled when there are changes to Take.
func (l *Listener) C() <-chan struct{} { return l.c }

// Take returns the ids of the endpoints that changed (created, redefined,
// deleted, or their filters or rules changed) since the last Take, sorted.
func (l *Listener) Take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]string, 0, len(l.pending))
	for id := range l.pending {
		ids = append(ids, id)
	}
	clear(l.pending)
	slices.Sort(ids)
	return ids
}

// Close stops the Listener.
func (l *Listener) Close() {
	l.r.mu.Lock()
	delete(l.r.listeners, l)
	l.r.mu.Unlock()
}

func (l *Listener) note(ids []string) {
	if len(ids) == 0 {
		return
	}
	l.mu.Lock()
	for _, id := range ids {
		l.pending[id] = struct{}{}
	}
	l.mu.Unlock()
	select {
	case l.c <- struct{}{}:
	default:
	}
}

// Run follows src until ctx ends.
func (r *Registry) Run(ctx context.Context, src Source) {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		follow(r, 0, src.WatchEndpoints(ctx), r.applyEndpoints)
	}()
	go func() {
		defer wg.Done()
		follow(r, 1, src.WatchFilters(ctx), r.applyFilters)
	}()
	go func() {
		defer wg.Done()
		follow(r, 2, src.WatchRules(ctx), r.applyRules)
	}()
	wg.Wait()
}

// follow applies a watch's events. After an EventReset it gathers the
// items afresh and applies them at once at EventLoaded, so that nothing
// seems gone meanwhile.
func follow[T any](r *Registry, which int, ch <-chan endpoint.Event[T], apply func(fresh map[string]*T, puts map[string]*T, deletes []string)) {
	var fresh map[string]*T // during a reset
	loaded := false
	for ev := range ch {
		switch ev.Kind {
		case endpoint.EventReset:
			fresh = map[string]*T{}
		case endpoint.EventLoaded:
			if fresh != nil {
				apply(fresh, nil, nil)
				fresh = nil
			}
			if !loaded {
				loaded = true
				r.markLoaded(which)
			}
		case endpoint.EventPut:
			if fresh != nil {
				fresh[ev.Key] = ev.Value
				continue
			}
			apply(nil, map[string]*T{ev.Key: ev.Value}, nil)
		case endpoint.EventDelete:
			if fresh != nil {
				delete(fresh, ev.Key)
				continue
			}
			apply(nil, nil, []string{ev.Key})
		}
	}
}

func (r *Registry) markLoaded(which int) {
	r.mu.Lock()
	r.loaded[which] = true
	all := r.loaded[0] && r.loaded[1] && r.loaded[2]
	r.mu.Unlock()
	if all {
		close(r.ready)
	}
}

// applyMap applies a reset (fresh) or puts and deletes to m, and returns
// the keys whose value changed meaning (same reports whether two values
// mean the same).
func applyMap[T any](m map[string]*T, fresh, puts map[string]*T, deletes []string, same func(a, b *T) bool) []string {
	var changed []string
	if fresh != nil {
		for k := range m {
			if _, ok := fresh[k]; !ok {
				delete(m, k)
				changed = append(changed, k)
			}
		}
		puts = fresh
	}
	for k, v := range puts {
		if old, ok := m[k]; !ok || !same(old, v) {
			changed = append(changed, k)
		}
		m[k] = v
	}
	for _, k := range deletes {
		if _, ok := m[k]; ok {
			delete(m, k)
			changed = append(changed, k)
		}
	}
	return changed
}

func (r *Registry) applyEndpoints(fresh, puts map[string]*endpoint.Endpoint, deletes []string) {
	r.mu.Lock()
	changed := applyMap(r.endpoints, fresh, puts, deletes, func(a, b *endpoint.Endpoint) bool { return a.Revision == b.Revision })
	r.recompile(changed)
}

func (r *Registry) applyFilters(fresh, puts map[string]*endpoint.Filter, deletes []string) {
	r.mu.Lock()
	changed := applyMap(r.filters, fresh, puts, deletes, sameFilter)
	var ids []string
	for id, e := range r.endpoints {
		if slices.ContainsFunc(changed, e.HasFilter) {
			ids = append(ids, id)
		}
	}
	r.recompile(ids)
}

func (r *Registry) applyRules(fresh, puts map[string]*endpoint.Rule, deletes []string) {
	r.mu.Lock()
	changed := applyMap(r.rules, fresh, puts, deletes, sameRule)
	var ids []string
	for id, e := range r.endpoints {
		if slices.ContainsFunc(changed, e.HasRule) {
			ids = append(ids, id)
		}
	}
	r.recompile(ids)
}

// recompile makes the entries of the endpoints ids anew, unlocks r.mu
// (held) and tells the listeners.
func (r *Registry) recompile(ids []string) {
	if len(ids) == 0 {
		r.mu.Unlock()
		return
	}
	for _, id := range ids {
		e := r.endpoints[id]
		if e == nil {
			delete(r.entries, id)
			continue
		}
		var filters []*endpoint.Filter
		for _, n := range e.Filters {
			if f := r.filters[n]; f != nil {
				filters = append(filters, f)
			}
		}
		var rules []*endpoint.Rule
		for _, n := range e.Rules {
			if ru := r.rules[n]; ru != nil {
				rules = append(rules, ru)
			}
		}
		r.entries[id] = &Entry{Endpoint: e, Matcher: New(filters, rules, r.log.With("endpoint", e.Name))}
	}
	listeners := make([]*Listener, 0, len(r.listeners))
	for l := range r.listeners {
		listeners = append(listeners, l)
	}
	r.mu.Unlock()
	for _, l := range listeners {
		l.note(ids)
	}
}

// sameFilter reports whether two versions of a filter pass the same
// events (a link touches a filter without changing it).
func sameFilter(a, b *endpoint.Filter) bool {
	return slices.Equal(a.Tables, b.Tables) && slices.Equal(a.Operations, b.Operations) &&
		bytes.Equal(a.Where, b.Where) && slices.Equal(a.Select, b.Select)
}

func sameRule(a, b *endpoint.Rule) bool {
	return a.Table == b.Table && slices.Equal(a.Operations, b.Operations) && bytes.Equal(a.Where, b.Where) &&
		slices.Equal(a.Changed, b.Changed) && bytes.Equal(a.Old, b.Old) && bytes.Equal(a.New, b.New) &&
		slices.Equal(a.Select, b.Select)
}

// Rule returns the rule named name, nil when there is none. It is shared
// and must not be changed.
func (r *Registry) Rule(name string) *endpoint.Rule {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rules[name]
}
