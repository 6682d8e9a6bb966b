package catalog

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Table is what can be followed of a streamed table, from the schema
// registry. It is immutable; a shape change replaces it.
type Table struct {
	Name      string // "schema.table" as clients write it
	Qualified string // "db.schema.table", the name that is never ambiguous
	DB        string
	Shape     schema.Shape
	Types     map[string]query.ColumnType // column name → how its values compare
	Subject   string                      // every change to the table
}

func NewTable(prefix string, s schema.Shape) *Table {
	return &Table{
		Name:      schema.FormatTableName(s.Schema, s.Table),
		Qualified: schema.FormatQualifiedName(s.DB, s.Schema, s.Table),
		DB:        s.DB,
		Shape:     s,
		Types:     query.ColumnTypes(s),
		Subject:   stream.TableSubjects(prefix, s.DB, s.Schema, s.Table),
	}
}

// HasColumn reports whether the table has the column.
func (t *Table) HasColumn(name string) bool {
	_, ok := t.Types[name]
	return ok
}

// Catalog holds the tables (from the schema registry) and custom topics
// (from the topic bucket) every gateway shares, kept current by watching
// both buckets.
//
// A table is known by its database, schema and name: readers of several
// databases may publish into one stream, and each database's public.orders
// is a table of its own, with its own shape, subject and grants.
type Catalog struct {
	prefix string
	log    *slog.Logger

	mu     sync.RWMutex
	tables map[tableKey]*Table
	byName map[nameKey][]*Table // schema.table → the table in each database, by database
	topics map[string]bool

	// ready: both buckets are loaded, and the tables reflect the schema
	// registry (becomeReady).
	ready atomic.Bool

	// The revision of the latest schema registry entry applied; revCh is
	// closed (and replaced) at each.
	revMu   sync.Mutex
	applied uint64
	revCh   chan struct{}
}

// Ready reports whether both buckets are loaded and the tables reflect
// the schema registry (Start.After).
func (c *Catalog) Ready() bool { return c.ready.Load() }

// Start holds back a catalog. Nil channels hold nothing.
type Start struct {
	// After holds back its readiness until closed; then it catches up
	// with the schema registry as it stands.
	After <-chan struct{}
	// Hold (tests) holds back its very load until closed.
	Hold <-chan struct{}
	// OnShape, when set, is called (without locks held, on the watch's
	// goroutine) each time a table already known gets a new shape: prev
	// is what it replaced, t the table now.
	OnShape func(prev, t *Table)
}

type tableKey struct{ db, schema, table string }

type nameKey struct{ schema, table string }

func New(prefix string, log *slog.Logger) *Catalog {
	return &Catalog{prefix: prefix, log: log, tables: map[tableKey]*Table{}, byName: map[nameKey][]*Table{}, topics: map[string]bool{}, revCh: make(chan struct{})}
}

// TableIn returns the table of database db, or nil when no reader streams
// it.
func (c *Catalog) TableIn(db, schemaName, table string) *Table {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.tables[tableKey{db, schemaName, table}]
}

// Table returns the table schemaName.table when exactly one database
// streams it, else nil.
func (c *Catalog) Table(schemaName, table string) *Table {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if list := c.byName[nameKey{schemaName, table}]; len(list) == 1 {
		return list[0]
	}
	return nil
}

// Resolve finds the table a client names, among the tables its grants let
// it read: db.schema.table, or (db "") schema.table when exactly one
// database the client may read streams that table. It returns nil when
// there is none, and nil with the qualified names of the candidates,
// sorted, when schema.table is in several such databases. Tables the
// client may not read are never counted nor named: a client learns
// nothing of them.
func (c *Catalog) Resolve(db, schemaName, table string, grants *auth.Grants) (t *Table, choices []string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if db != "" {
		t = c.tables[tableKey{db, schemaName, table}]
		if t == nil || grants.TableOps(t.DB, schemaName, table) == 0 {
			return nil, nil
		}
		return t, nil
	}
	for _, cand := range c.byName[nameKey{schemaName, table}] {
		if grants.TableOps(cand.DB, schemaName, table) == 0 {
			continue
		}
		if t == nil {
			t = cand
			continue
		}
		if choices == nil {
			choices = []string{t.Qualified}
		}
		choices = append(choices, cand.Qualified)
	}
	if choices != nil {
		return nil, choices // byName is sorted by database, so are choices
	}
	return t, nil
}

// HasTopic reports whether the custom topic exists.
func (c *Catalog) HasTopic(name string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.topics[name]
}

// TopicCount returns how many custom topics exist.
func (c *Catalog) TopicCount() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.topics)
}

// Run watches both buckets until ctx ends, restarting a watch that fails.
// onTopicGone is called (without locks held) for each destroyed topic.
func (c *Catalog) Run(ctx context.Context, schemas *stream.Registry, topics *stream.Topics, onTopicGone func(string), start Start) {
	var wg sync.WaitGroup
	schemasLoaded, topicsLoaded := make(chan struct{}), make(chan struct{})
	var schemasOnce, topicsOnce sync.Once
	wg.Add(3)
	go func() {
		defer wg.Done()
		if !waitClosed(ctx, start.Hold) {
			return
		}
		c.watch(ctx, "schema registry", schemas.Watch, func(e jetstream.KeyValueEntry) {
			prev, t := c.applyShape(e)
			if prev != nil && start.OnShape != nil {
				start.OnShape(prev, t)
			}
			c.noteApplied(e.Revision())
		}, func() { schemasOnce.Do(func() { close(schemasLoaded) }) })
	}()
	go func() {
		defer wg.Done()
		c.watch(ctx, "topics", topics.Watch, func(e jetstream.KeyValueEntry) {
			if gone := c.applyTopic(e); gone != "" && onTopicGone != nil {
				onTopicGone(gone)
			}
		}, func() { topicsOnce.Do(func() { close(topicsLoaded) }) })
	}()
	go func() {
		defer wg.Done()
		c.becomeReady(ctx, schemas, schemasLoaded, topicsLoaded, start.After)
	}()
	wg.Wait()
}

// waitClosed waits for ch (nil: nothing to wait for), false if ctx ends first.
func waitClosed(ctx context.Context, ch <-chan struct{}) bool {
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// becomeReady marks the catalog ready once both buckets are loaded and,
// after holds (closed), the schema registry's every entry up to its
// revision at that moment has been applied: every table the registry then
// holds is known. (A watch's first pass alone could end early: the marker
// that ends it comes from a count taken as the watch starts.)
func (c *Catalog) becomeReady(ctx context.Context, schemas *stream.Registry, holds ...<-chan struct{}) {
	for _, h := range holds {
		if !waitClosed(ctx, h) {
			return
		}
	}
	backoff := 100 * time.Millisecond
	for {
		rev, err := schemas.Revision(ctx)
		if err == nil {
			if c.waitApplied(ctx, rev) {
				c.ready.Store(true)
				c.log.Info("gateway catalog loaded", "tables", len(c.tablesSnapshot()), "schema_revision", rev)
			}
			return
		}
		c.log.Warn("gateway cannot read the schema registry's revision; retrying", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// noteApplied records that the schema registry entry of revision rev has
// been applied.
func (c *Catalog) noteApplied(rev uint64) {
	c.revMu.Lock()
	c.applied = max(c.applied, rev)
	close(c.revCh)
	c.revCh = make(chan struct{})
	c.revMu.Unlock()
}

// waitApplied waits until the schema registry entry of revision rev has
// been applied, false if ctx ends first.
func (c *Catalog) waitApplied(ctx context.Context, rev uint64) bool {
	for {
		c.revMu.Lock()
		applied, ch := c.applied, c.revCh
		c.revMu.Unlock()
		if applied >= rev {
			return true
		}
		if !waitClosed(ctx, ch) {
			return false
		}
	}
}

func (c *Catalog) tablesSnapshot() map[tableKey]*Table {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.tables
}

// watch follows one bucket: apply for each entry, loaded once the stored
// entries have all been applied. A failed watch is restarted after a pause
// (the whole bucket is sent again, which apply takes as it comes).
func (c *Catalog) watch(ctx context.Context, what string, open func(context.Context) (jetstream.KeyWatcher, error), apply func(jetstream.KeyValueEntry), loaded func()) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		w, err := open(ctx)
		if err != nil {
			c.log.Warn("gateway cannot watch "+what+"; retrying", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		for e := range w.Updates() {
			if e == nil {
				loaded()
				continue
			}
			apply(e)
		}
		_ = w.Stop()
		if ctx.Err() == nil {
			c.log.Warn("gateway watch of " + what + " ended; restarting")
		}
	}
}

// applyShape records the shape of entry e: the table it makes (nil for
// none) and the one it replaces (nil for a table not known before).
func (c *Catalog) applyShape(e jetstream.KeyValueEntry) (prev, t *Table) {
	if e.Operation() != jetstream.KeyValuePut {
		return nil, nil // the reader never deletes shapes; an operator may: keep what we know
	}
	var s schema.Shape
	if err := json.Unmarshal(e.Value(), &s); err != nil || s.Schema == "" || s.Table == "" {
		c.log.Warn("gateway ignores a malformed schema registry entry", "key", e.Key(), "err", err)
		return nil, nil
	}
	t = NewTable(c.prefix, s)
	k := tableKey{s.DB, s.Schema, s.Table}
	c.mu.Lock()
	defer c.mu.Unlock()
	prev = c.tables[k]
	// Copy on write, so that tablesSnapshot can hand out the map.
	next := maps.Clone(c.tables)
	next[k] = t
	c.tables = next
	// The same table name in each database, sorted by database.
	nk := nameKey{s.Schema, s.Table}
	list := slices.DeleteFunc(slices.Clone(c.byName[nk]), func(o *Table) bool { return o.DB == s.DB })
	i, _ := slices.BinarySearchFunc(list, s.DB, func(o *Table, db string) int { return strings.Compare(o.DB, db) })
	byName := maps.Clone(c.byName)
	byName[nk] = slices.Insert(list, i, t)
	c.byName = byName
	return prev, t
}

// applyTopic records a topic's creation or destruction and returns the name
// of a destroyed topic.
func (c *Catalog) applyTopic(e jetstream.KeyValueEntry) string {
	name, err := stream.TopicName(e.Key())
	if err != nil {
		c.log.Warn("gateway ignores a malformed topic key", "key", e.Key(), "err", err)
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.Operation() == jetstream.KeyValuePut {
		c.topics[name] = true
		return ""
	}
	if !c.topics[name] {
		return ""
	}
	delete(c.topics, name)
	return name
}

// AddTopic records a topic created here, before the watch reports it.
func (c *Catalog) AddTopic(name string) {
	c.mu.Lock()
	c.topics[name] = true
	c.mu.Unlock()
}

// RemoveTopic forgets a topic destroyed here; it reports whether the
// topic was known (so that its subscribers are told once).
func (c *Catalog) RemoveTopic(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.topics[name] {
		return false
	}
	delete(c.topics, name)
	return true
}

// Visible returns the table and topic names a client with grants may
// subscribe to, sorted. A table is listed as schema.table when it is in
// one of the databases the client may read, and as db.schema.table for
// each database when it is in several, so that every name listed can be
// subscribed to as it is.
func (c *Catalog) Visible(grants *auth.Grants) (tables, topics []string) {
	tables = []string{}
	for _, v := range c.VisibleTables(grants) {
		tables = append(tables, v.Name)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	topics = []string{}
	for name := range c.topics {
		if grants.CanSubscribeTopic(name) {
			topics = append(topics, name)
		}
	}
	slices.Sort(topics)
	return tables, topics
}

// Listed is a table a client may read, with the name Visible lists it by.
type Listed struct {
	Name  string
	Table *Table
}

// VisibleTables returns the tables a client with grants may read, sorted by
// the names Visible lists them by.
func (c *Catalog) VisibleTables(grants *auth.Grants) []Listed {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := []Listed{}
	for k, list := range c.byName {
		n := 0
		for _, t := range list {
			if grants.TableOps(t.DB, k.schema, k.table) != 0 {
				n++
			}
		}
		for _, t := range list {
			switch {
			case grants.TableOps(t.DB, k.schema, k.table) == 0:
			case n == 1:
				out = append(out, Listed{t.Name, t})
			default:
				out = append(out, Listed{t.Qualified, t})
			}
		}
	}
	slices.SortFunc(out, func(a, b Listed) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Tables returns every table readers stream, sorted by qualified name,
// whatever any client may read: for checks made on an operator's behalf
// (an endpoint's filters), never for a client's answer.
func (c *Catalog) Tables() []*Table {
	c.mu.RLock()
	list := make([]*Table, 0, len(c.tables))
	for _, t := range c.tables {
		list = append(list, t)
	}
	c.mu.RUnlock()
	slices.SortFunc(list, func(a, b *Table) int { return strings.Compare(a.Qualified, b.Qualified) })
	return list
}
