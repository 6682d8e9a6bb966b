package endpoint

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// EventKind is what a watch event says.
type EventKind uint8

const (
	// EventPut: the item is new or changed (or written again with the
	// same value: a filter's revision changes when an endpoint is linked
	// to it). Value holds it.
	EventPut EventKind = iota + 1
	// EventDelete: the item is gone.
	EventDelete
	// EventLoaded: every item that existed when the watch (re)started
	// has been sent; changes follow.
	EventLoaded
	// EventReset: the watch started again after a failure or a
	// reconnection to NATS: forget every item, the current ones follow,
	// then EventLoaded. (Items deleted meanwhile are not sent as deletes.)
	EventReset
)

func (k EventKind) String() string {
	switch k {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventLoaded:
		return "loaded"
	case EventReset:
		return "reset"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event is one event of a watch.
type Event[T any] struct {
	Kind EventKind
	// Key is the endpoint's id, or the filter's or rule's name (empty for
	// EventLoaded and EventReset).
	Key string
	// Value is the item, for EventPut (with its Revision); the receiver
	// may keep and change it.
	Value *T
	// Revision is the bucket's revision of the change (0 for EventLoaded
	// and EventReset).
	Revision uint64
}

// WatchEndpoints follows the endpoints: each one that exists, EventLoaded,
// then every change as it happens, in the order made, until ctx ends
// (then the channel is closed). A change made in any process arrives
// within milliseconds. The receiver must keep reading: the watch waits
// for it. Endpoints carry their whole secrets.
func (s *Store) WatchEndpoints(ctx context.Context) <-chan Event[Endpoint] {
	return watch[Endpoint](ctx, s, s.eps, endpointKeyPrefix+">")
}

// WatchFilters follows the filters as WatchEndpoints follows endpoints.
func (s *Store) WatchFilters(ctx context.Context) <-chan Event[Filter] {
	return watch[Filter](ctx, s, s.filters, ">")
}

// WatchRules follows the rules as WatchEndpoints follows endpoints.
func (s *Store) WatchRules(ctx context.Context) <-chan Event[Rule] {
	return watch[Rule](ctx, s, s.rules, ">")
}

func watch[T any](ctx context.Context, s *Store, c *cache, keys string) <-chan Event[T] {
	out := make(chan Event[T], 64)
	go func() {
		defer close(out)
		send := func(ev Event[T]) bool {
			select {
			case out <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		backoff := 100 * time.Millisecond
		for started := false; ctx.Err() == nil; started = true {
			w, err := stream.WatchKV(ctx, c.js, c.kv, keys, false)
			if err != nil {
				s.log.Warn("cannot watch the "+c.what+" bucket; retrying", "err", err, "retry_in", backoff)
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
			if started && !send(Event[T]{Kind: EventReset}) {
				_ = w.Stop()
				return
			}
			loaded := false
			for e := range w.Updates() {
				if e == nil {
					loaded = true
					if !send(Event[T]{Kind: EventLoaded}) {
						break
					}
					continue
				}
				ev, ok := watchEvent[T](c, e)
				if !ok || !loaded && ev.Kind == EventDelete {
					continue // a deleted item in the first pass: nothing to say
				}
				if !send(ev) {
					break
				}
			}
			checked()
			_ = w.Stop()
			if ctx.Err() == nil {
				s.log.Warn("watch of the " + c.what + " bucket ended; restarting")
			}
		}
	}()
	return out
}

func watchEvent[T any](c *cache, e jetstream.KeyValueEntry) (Event[T], bool) {
	key, ok := c.item(e.Key())
	if !ok {
		return Event[T]{}, false
	}
	if e.Operation() != jetstream.KeyValuePut {
		return Event[T]{Kind: EventDelete, Key: key, Revision: e.Revision()}, true
	}
	v, err := c.decode(e.Value(), e.Revision())
	if err != nil {
		return Event[T]{}, false
	}
	t, ok := v.(*T)
	return Event[T]{Kind: EventPut, Key: key, Value: t, Revision: e.Revision()}, ok
}

// reconnectCheck is how often a watch checks whether its connection to
// NATS was lost and came back.
const reconnectCheck = time.Second

// stopReconnected stops w once nc has reconnected, so that its owner
// starts a watch afresh, whose first pass replaces what it knew. The
// watch's consumer would resume after its last entry and miss a delete
// whose marker expired while the connection was down
// (stream.ManagedMarkerTTL): a deleted endpoint would live on in this
// process. The check runs until done is called or ctx ends.
func stopReconnected(ctx context.Context, nc *nats.Conn, w jetstream.KeyWatcher) (done func()) {
	start := nc.Stats().Reconnects
	quit := make(chan struct{})
	go func() {
		t := time.NewTicker(reconnectCheck)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-quit:
				return
			case <-t.C:
			}
			if nc.Stats().Reconnects != start {
				_ = w.Stop()
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit) }) }
}
