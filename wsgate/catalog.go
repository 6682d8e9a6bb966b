package wsgate

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// tableInfo is what the gateway knows of a streamed table, from the schema
// registry. It is immutable; a shape change replaces it.
type tableInfo struct {
	name    string // "schema.table" as clients write it
	db      string
	shape   schema.Shape
	types   map[string]ColumnType // column name → how its values compare
	subject string                // every change to the table
}

func newTableInfo(prefix string, s schema.Shape) *tableInfo {
	t := &tableInfo{
		name:    schema.FormatTableName(s.Schema, s.Table),
		db:      s.DB,
		shape:   s,
		types:   make(map[string]ColumnType, len(s.Columns)),
		subject: stream.TableSubjects(prefix, s.DB, s.Schema, s.Table),
	}
	for _, c := range s.Columns {
		oid := c.ValueOID
		if oid == 0 {
			oid = c.TypeOID
		}
		t.types[c.Name] = TypeOfOID(oid)
	}
	return t
}

// hasColumn reports whether the table has the column.
func (t *tableInfo) hasColumn(name string) bool {
	_, ok := t.types[name]
	return ok
}

// catalog holds the tables (from the schema registry) and custom topics
// (from the topic bucket) every gateway shares, kept current by watching
// both buckets.
type catalog struct {
	prefix string
	log    *slog.Logger

	mu     sync.RWMutex
	tables map[tableKey]*tableInfo
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

// catalogStart holds back the catalog: its readiness until after is closed
// (then it catches up with the schema registry as it stands), and (tests)
// its very load until hold is closed. Nil channels hold nothing.
type catalogStart struct {
	after, hold <-chan struct{}
}

type tableKey struct{ schema, table string }

func newCatalog(prefix string, log *slog.Logger) *catalog {
	return &catalog{prefix: prefix, log: log, tables: map[tableKey]*tableInfo{}, topics: map[string]bool{}, revCh: make(chan struct{})}
}

// table returns the table, or nil when the gateway does not stream it.
func (c *catalog) table(schemaName, table string) *tableInfo {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.tables[tableKey{schemaName, table}]
}

// hasTopic reports whether the custom topic exists.
func (c *catalog) hasTopic(name string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.topics[name]
}

// topicCount returns how many custom topics exist.
func (c *catalog) topicCount() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.topics)
}

// run watches both buckets until ctx ends, restarting a watch that fails.
// onTopicGone is called (without locks held) for each destroyed topic.
func (c *catalog) run(ctx context.Context, schemas *stream.Registry, topics *stream.Topics, onTopicGone func(string), start catalogStart) {
	var wg sync.WaitGroup
	schemasLoaded, topicsLoaded := make(chan struct{}), make(chan struct{})
	var schemasOnce, topicsOnce sync.Once
	wg.Add(3)
	go func() {
		defer wg.Done()
		if !waitClosed(ctx, start.hold) {
			return
		}
		c.watch(ctx, "schema registry", schemas.Watch, func(e jetstream.KeyValueEntry) {
			c.applyShape(e)
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
		c.becomeReady(ctx, schemas, schemasLoaded, topicsLoaded, start.after)
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
func (c *catalog) becomeReady(ctx context.Context, schemas *stream.Registry, holds ...<-chan struct{}) {
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
func (c *catalog) noteApplied(rev uint64) {
	c.revMu.Lock()
	c.applied = max(c.applied, rev)
	close(c.revCh)
	c.revCh = make(chan struct{})
	c.revMu.Unlock()
}

// waitApplied waits until the schema registry entry of revision rev has
// been applied, false if ctx ends first.
func (c *catalog) waitApplied(ctx context.Context, rev uint64) bool {
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

func (c *catalog) tablesSnapshot() map[tableKey]*tableInfo {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.tables
}

// watch follows one bucket: apply for each entry, loaded once the stored
// entries have all been applied. A failed watch is restarted after a pause
// (the whole bucket is sent again, which apply takes as it comes).
func (c *catalog) watch(ctx context.Context, what string, open func(context.Context) (jetstream.KeyWatcher, error), apply func(jetstream.KeyValueEntry), loaded func()) {
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

func (c *catalog) applyShape(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		return // the reader never deletes shapes; an operator may: keep what we know
	}
	var s schema.Shape
	if err := json.Unmarshal(e.Value(), &s); err != nil || s.Schema == "" || s.Table == "" {
		c.log.Warn("gateway ignores a malformed schema registry entry", "key", e.Key(), "err", err)
		return
	}
	t := newTableInfo(c.prefix, s)
	k := tableKey{s.Schema, s.Table}
	c.mu.Lock()
	if old := c.tables[k]; old != nil && old.db != s.DB {
		c.log.Warn("table is streamed from two databases; the gateway follows the latest shape's",
			"table", t.name, "db", s.DB, "other_db", old.db)
	}
	// Copy on write, so that tablesSnapshot can hand out the map.
	next := make(map[tableKey]*tableInfo, len(c.tables)+1)
	for key, v := range c.tables {
		next[key] = v
	}
	next[k] = t
	c.tables = next
	c.mu.Unlock()
}

// applyTopic records a topic's creation or destruction and returns the name
// of a destroyed topic.
func (c *catalog) applyTopic(e jetstream.KeyValueEntry) string {
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

// addTopic records a topic this gateway created, before its watch reports it.
func (c *catalog) addTopic(name string) {
	c.mu.Lock()
	c.topics[name] = true
	c.mu.Unlock()
}

// removeTopic forgets a topic this gateway destroyed; it reports whether the
// topic was known (so that its subscribers are told once).
func (c *catalog) removeTopic(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.topics[name] {
		return false
	}
	delete(c.topics, name)
	return true
}

// visible returns the table and topic names a client with grants may
// subscribe to, sorted.
func (c *catalog) visible(grants *Grants) (tables, topics []string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	tables, topics = []string{}, []string{}
	for k, t := range c.tables {
		if grants.OpsFor(k.schema, k.table) != 0 {
			tables = append(tables, t.name)
		}
	}
	for name := range c.topics {
		if grants.CanSubscribeTopic(name) {
			topics = append(topics, name)
		}
	}
	slices.Sort(tables)
	slices.Sort(topics)
	return tables, topics
}
