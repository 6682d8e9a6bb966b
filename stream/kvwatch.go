package stream

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Watches and listings of key-value buckets whose end of the stored
// entries can be trusted.
//
// nats.go ends a watch's first pass (the nil entry; ListKeys returns
// there) when an entry comes with nothing more pending by its consumer's
// count. The server keeps that count as messages come and go, and it
// falls short when a key is written again just as the consumer starts:
// the old revision's removal is counted off after a count that no longer
// held it. The nil then comes before entries still stored, which follow
// it as if they were new. One listing in ten of a bucket whose keys were
// being written missed a key, one in two when listings followed each other
// closely (TestWatchKVSendsEveryStoredEntryFirst); a watcher that took
// the nil for "that is all" took a stored endpoint for deleted.
//
// WatchKV sends its nil once every watched key the bucket's stream held
// when nats.go's first pass ended has come, or is gone from the stream.
// A key is waited for by name, not by revision: one written again and
// again moves ahead of any revision the wait might be bounded by.

// kvRecheck is how often a watch whose first pass is not yet complete
// asks the stream again, for a key it waits for that was removed before
// it came (expired).
const kvRecheck = 250 * time.Millisecond

// WatchKV watches the keys of kv matching keys (a subject filter: ">"
// for all), as kv.Watch does: first every stored entry, then a nil entry,
// then every change. Unlike kv.Watch, every entry stored when the first
// pass ended comes before the nil. ignoreDeletes leaves deletes and
// purges out, as jetstream.IgnoreDeletes does.
func WatchKV(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, keys string, ignoreDeletes bool) (jetstream.KeyWatcher, error) {
	// Deletes are watched even when not sent: the check below counts
	// them among the entries stored.
	inner, err := kv.Watch(ctx, keys)
	if err != nil {
		return nil, err
	}
	w := &kvWatcher{
		inner: inner, js: js, ignoreDeletes: ignoreDeletes,
		stream: "KV_" + kv.Bucket(), keys: keys, filter: "$KV." + kv.Bucket() + "." + keys,
		updates: make(chan jetstream.KeyValueEntry, 256), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go w.run(ctx)
	return w, nil
}

// ListKVKeys returns the keys of kv matching keys that hold a value, as
// kv.ListKeysFiltered does, each stored one included (see WatchKV).
func ListKVKeys(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, keys string) ([]string, error) {
	w, err := WatchKV(ctx, js, kv, keys, false)
	if err != nil {
		return nil, fmt.Errorf("list the keys %s of bucket %s: %w", keys, kv.Bucket(), err)
	}
	defer func() { _ = w.Stop() }()
	// A key written again during the first pass may come twice, and one
	// deleted meanwhile comes again as a delete.
	var out []string
	at := map[string]int{} // index in out
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("list the keys %s of bucket %s: %w", keys, kv.Bucket(), ctx.Err())
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return nil, fmt.Errorf("list the keys %s of bucket %s: the watch ended", keys, kv.Bucket())
			case e == nil:
				return slices.DeleteFunc(out, func(k string) bool { return k == "" }), nil
			}
			i, listed := at[e.Key()]
			switch {
			case e.Operation() != jetstream.KeyValuePut && listed:
				out[i] = ""
				delete(at, e.Key())
			case e.Operation() == jetstream.KeyValuePut && !listed:
				at[e.Key()] = len(out)
				out = append(out, e.Key())
			}
		}
	}
}

type kvWatcher struct {
	inner         jetstream.KeyWatcher
	js            jetstream.JetStream
	stream        string // the bucket's
	str           jetstream.Stream
	keys          string // the watched keys
	filter        string // their subjects
	ignoreDeletes bool
	updates       chan jetstream.KeyValueEntry
	stop, done    chan struct{}
	stopOnce      sync.Once
}

func (w *kvWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.updates }

func (w *kvWatcher) Stop() error {
	var err error
	w.stopOnce.Do(func() {
		close(w.stop)
		err = w.inner.Stop()
	})
	<-w.done
	return err
}

func (w *kvWatcher) run(ctx context.Context) {
	defer close(w.done)
	defer close(w.updates)
	send := func(e jetstream.KeyValueEntry) bool {
		select {
		case w.updates <- e:
			return true
		case <-w.stop:
			return false
		case <-ctx.Done():
			return false
		}
	}
	var (
		seen    = map[string]bool{} // the keys come, until the first pass is complete
		missing map[string]bool     // those stored at its end not come yet; nil before
		tick    *time.Ticker
		ticks   <-chan time.Time
	)
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	for {
		recheck := false
		select {
		case e, ok := <-w.inner.Updates():
			if !ok {
				return
			}
			if e == nil {
				if seen == nil || ticks != nil {
					continue // complete already, or being completed
				}
				tick = time.NewTicker(kvRecheck)
				ticks = tick.C
				recheck = true
				break
			}
			if seen != nil {
				seen[e.Key()] = true
				delete(missing, e.Key())
			}
			if !w.ignoreDeletes || e.Operation() == jetstream.KeyValuePut {
				if !send(e) {
					return
				}
			}
		case <-ticks:
			recheck = true
		case <-w.stop:
			return
		case <-ctx.Done():
			return
		}
		if ticks == nil {
			continue
		}
		if recheck {
			stored, err := w.storedKeys(ctx)
			if err != nil {
				continue // asked again at the next tick
			}
			if missing == nil {
				missing = map[string]bool{}
				for k := range stored {
					if !seen[k] {
						missing[k] = true
					}
				}
			}
			for k := range missing {
				if !stored[k] {
					delete(missing, k) // gone meanwhile (expired)
				}
			}
		}
		if missing == nil || len(missing) > 0 {
			continue
		}
		seen, missing = nil, nil
		tick.Stop()
		ticks = nil
		if !send(nil) {
			return
		}
	}
}

// storedKeys returns the watched keys the bucket's stream holds a message
// of (a delete or purge included).
func (w *kvWatcher) storedKeys(ctx context.Context) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if w.str == nil {
		str, err := w.js.Stream(ctx, w.stream)
		if err != nil {
			return nil, fmt.Errorf("open stream %s: %w", w.stream, err)
		}
		w.str = str
	}
	info, err := w.str.Info(ctx, jetstream.WithSubjectFilter(w.filter))
	if err != nil {
		return nil, fmt.Errorf("read the subjects %s of stream %s: %w", w.filter, w.stream, err)
	}
	keys := make(map[string]bool, len(info.State.Subjects))
	prefix := w.filter[:len(w.filter)-len(w.keys)]
	for subj := range info.State.Subjects {
		keys[strings.TrimPrefix(subj, prefix)] = true
	}
	return keys, nil
}
