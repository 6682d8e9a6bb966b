package endpoint

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// cache is this process's view of one bucket, kept by watching it: what
// listings read. Its values are immutable once stored (callers clone what
// they hand out). Writes through the store wait until the view has
// applied them (waitApplied), and a listing first waits until it has
// applied every write the bucket had acknowledged when the listing began
// (sync), so that a listing in any process shows every change made before
// it.
type cache struct {
	js        jetstream.JetStream
	kv        jetstream.KeyValue
	markerTTL time.Duration // how long a purge's marker is kept; 0: for good
	what      string
	item      func(key string) (string, bool) // the item's id or name of a key; false: not an item
	decode    func(data []byte, rev uint64) (any, error)

	mu      sync.RWMutex
	items   map[string]any // by id or name
	applied uint64         // the bucket revision last applied
	changed chan struct{}  // closed and replaced at each apply
	loaded  bool
}

func newCache(js jetstream.JetStream, kv jetstream.KeyValue, markerTTL time.Duration, what string, item func(string) (string, bool), decode func([]byte, uint64) (any, error)) *cache {
	return &cache{js: js, kv: kv, markerTTL: markerTTL, what: what, item: item, decode: decode, items: map[string]any{}, changed: make(chan struct{})}
}

// run watches the bucket until ctx ends. A watch that ends, or whose
// connection reconnected (stopReconnected), is started again; its first
// pass then replaces the whole view, so that what was deleted meanwhile
// goes. Markers its first pass finds older than markerTTL (by now), left
// by versions that purged for good, are dropped (dropOldMarkers).
func (c *cache) run(ctx context.Context, log *slog.Logger, now func() time.Time) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		w, err := stream.WatchKV(ctx, c.js, c.kv, ">", false)
		if err != nil {
			log.Warn("cannot watch the "+c.what+" bucket; retrying", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		checked := stopReconnected(ctx, c.js.Conn(), w)
		fresh := map[string]any{} // the first pass, until its end
		var old []jetstream.KeyValueEntry
		for e := range w.Updates() {
			if e == nil {
				c.mu.Lock()
				c.items, fresh = fresh, nil
				c.loaded = true
				c.notify()
				c.mu.Unlock()
				if len(old) > 0 {
					go c.dropOldMarkers(ctx, old, log)
					old = nil
				}
				continue
			}
			if fresh != nil && c.markerTTL > 0 && e.Operation() != jetstream.KeyValuePut && now().Sub(e.Created()) > c.markerTTL {
				old = append(old, e)
			}
			c.apply(e, fresh, log)
		}
		checked()
		_ = w.Stop()
		if ctx.Err() == nil {
			log.Warn("watch of the " + c.what + " bucket ended; restarting")
		}
	}
}

// purge removes revision rev of key and the key's history, leaving a
// marker the bucket keeps for markerTTL.
func (c *cache) purge(ctx context.Context, key string, rev uint64) error {
	return c.kv.Purge(ctx, key, stream.PurgeOptions(rev, c.markerTTL)...)
}

// dropOldMarkers removes markers of deleted items older than markerTTL,
// which versions that purged without a TTL left for good, with what came
// before each on its key. Each removal stops at the marker's own sequence,
// so a value written to the key since stays.
func (c *cache) dropOldMarkers(ctx context.Context, markers []jetstream.KeyValueEntry, log *slog.Logger) {
	name := "KV_" + c.kv.Bucket()
	str, err := c.js.Stream(ctx, name)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("cannot drop the old markers of deleted "+c.what+"; they stay", "count", len(markers), "err", err)
		}
		return
	}
	for i, e := range markers {
		err := str.Purge(ctx, jetstream.WithPurgeSubject("$KV."+c.kv.Bucket()+"."+e.Key()), jetstream.WithPurgeSequence(e.Revision()+1))
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("cannot drop the old markers of deleted "+c.what+"; the rest stay", "dropped", i, "left", len(markers)-i, "err", err)
			}
			return
		}
	}
	log.Info("dropped the markers of deleted "+c.what+" older than their limit, left by an earlier version", "count", len(markers), "limit", c.markerTTL)
}

// apply records one entry, in fresh during a first pass.
func (c *cache) apply(e jetstream.KeyValueEntry, fresh map[string]any, log *slog.Logger) {
	id, isItem := c.item(e.Key())
	var v any
	if isItem && e.Operation() == jetstream.KeyValuePut {
		var err error
		if v, err = c.decode(e.Value(), e.Revision()); err != nil {
			log.Warn("ignoring a malformed value in the "+c.what+" bucket", "key", e.Key(), "err", err)
			isItem = false
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	items := c.items
	if fresh != nil {
		items = fresh
	}
	if isItem {
		if v != nil {
			items[id] = v
		} else {
			delete(items, id)
		}
	}
	c.applied = max(c.applied, e.Revision())
	c.notify()
}

// notify wakes the waiters; mu is held.
func (c *cache) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// waitApplied waits until the view has applied revision rev, for at most
// syncWait.
func (c *cache) waitApplied(ctx context.Context, rev uint64) {
	deadline := time.NewTimer(syncWait)
	defer deadline.Stop()
	for {
		c.mu.RLock()
		done, ch := c.loaded && c.applied >= rev, c.changed
		c.mu.RUnlock()
		if done {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		}
	}
}

// sync waits until the view has applied every write the bucket held when
// it was called (for at most syncWait: the view then answers as it is).
func (c *cache) sync(ctx context.Context) {
	st, err := c.kv.Status(ctx)
	if err != nil {
		return
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return
	}
	c.waitApplied(ctx, bs.StreamInfo().State.LastSeq)
}

// values returns the view's values, in no order.
func (c *cache) values() []any {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]any, 0, len(c.items))
	for _, v := range c.items {
		out = append(out, v)
	}
	return out
}
