package stream

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestWatchKVSendsEveryStoredEntryFirst: while the keys of a bucket are
// written again and again, every listing holds every key, and every
// watch sends every stored entry before its nil; deletes come in a watch
// unless left out, never in a listing; an empty bucket ends its first
// pass at once.
func TestWatchKVSendsEveryStoredEntryFirst(t *testing.T) {
	e := startTestServer(t, "")
	_, js := connectTest(t, e.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "WATCHED", History: 1})
	if err != nil {
		t.Fatal(err)
	}

	// An empty bucket.
	if keys, err := ListKVKeys(ctx, js, kv, ">"); err != nil || len(keys) != 0 {
		t.Fatalf("ListKVKeys of an empty bucket = %v, %v", keys, err)
	}

	const n = 20
	var want []string
	for i := range n {
		k := fmt.Sprintf("a.k%02d", i)
		want = append(want, k)
		if _, err := kv.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	// Deleted keys, and one outside the filter.
	for _, k := range []string{"a.gone", "a.purged"} {
		if _, err := kv.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "a.gone"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "a.purged"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "b.other", []byte("v")); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := kv.Put(ctx, want[i%n], []byte(fmt.Sprint(i))); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()

	const rounds = 300
	short := 0 // nats.go's own listing, for comparison
	for i := range rounds {
		keys, err := ListKVKeys(ctx, js, kv, "a.>")
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, want) {
			t.Fatalf("listing %d: %d keys %v; want the %d stored %v", i, len(keys), keys, n, want)
		}
		if i%3 == 0 {
			l, err := kv.ListKeysFiltered(ctx, "a.>")
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for range l.Keys() {
				got++
			}
			if got < n {
				short++
			}
		}
	}
	t.Logf("nats.go's ListKeysFiltered missed keys in %d of %d listings", short, rounds/3)

	for _, ignoreDeletes := range []bool{false, true} {
		for i := range 50 {
			w, err := WatchKV(ctx, js, kv, "a.>", ignoreDeletes)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]jetstream.KeyValueOp{}
			for e := range w.Updates() {
				if e == nil {
					break
				}
				seen[e.Key()] = e.Operation()
			}
			_ = w.Stop()
			for _, k := range want {
				if seen[k] != jetstream.KeyValuePut {
					t.Fatalf("watch %d (ignore deletes %v): %s not sent as a put before the nil: %v", i, ignoreDeletes, k, seen)
				}
			}
			_, gone := seen["a.gone"]
			_, purged := seen["a.purged"]
			if gone != !ignoreDeletes || purged != !ignoreDeletes {
				t.Fatalf("watch %d (ignore deletes %v): deleted and purged keys sent: %v, %v", i, ignoreDeletes, gone, purged)
			}
			if _, ok := seen["b.other"]; ok {
				t.Fatalf("watch %d: a key outside the filter was sent", i)
			}
		}
	}
}

// TestWatchKVAfterItsFirstPass: changes made after the first pass come
// after the nil, in order, and Stop ends the updates.
func TestWatchKVAfterItsFirstPass(t *testing.T) {
	e := startTestServer(t, "")
	_, js := connectTest(t, e.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "AFTER", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	w, err := WatchKV(ctx, js, kv, ">", false)
	if err != nil {
		t.Fatal(err)
	}
	next := func() jetstream.KeyValueEntry {
		t.Helper()
		select {
		case e, ok := <-w.Updates():
			if !ok {
				t.Fatal("updates closed")
			}
			return e
		case <-time.After(10 * time.Second):
			t.Fatal("nothing came in 10 s")
		}
		return nil
	}
	if e := next(); e != nil {
		t.Fatalf("first update of an empty bucket = %s; want the nil", e.Key())
	}
	// Each change is awaited before the next is made: the bucket keeps
	// one revision a key, so a delete stored before the watch's consumer
	// sent the put removes the put from the stream, and the watch sees
	// only the delete (as a CI run under load once did).
	rev, err := kv.Put(ctx, "x", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if e := next(); e == nil || e.Key() != "x" || e.Revision() != rev || e.Operation() != jetstream.KeyValuePut {
		t.Fatalf("after the put: %v", e)
	}
	if err := kv.Delete(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if e := next(); e == nil || e.Key() != "x" || e.Operation() != jetstream.KeyValueDelete {
		t.Fatalf("after the delete: %v", e)
	}
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-w.Updates(); ok {
		t.Fatal("updates still open after Stop")
	}
	if err := w.Stop(); err != nil && err != jetstream.ErrConsumerNotFound {
		t.Logf("second Stop: %v", err)
	}
}

// BenchmarkListKVKeys: a listing of 1,000 keys, through ListKVKeys and
// through nats.go's ListKeys, which it replaces (its cost is a stream info
// with the subjects, after nats.go's own pass).
func BenchmarkListKVKeys(b *testing.B) {
	e := startTestServer(b, "")
	_, js := connectTest(b, e.ClientURL())
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "LISTED", History: 5})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		if _, err := kv.Put(ctx, fmt.Sprintf("k.%04d", i), []byte(`{"a":1}`)); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("ListKVKeys", func(b *testing.B) {
		for b.Loop() {
			keys, err := ListKVKeys(ctx, js, kv, ">")
			if err != nil || len(keys) != 1000 {
				b.Fatal(len(keys), err)
			}
		}
	})
	b.Run("nats.go", func(b *testing.B) {
		for b.Loop() {
			l, err := kv.ListKeys(ctx)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for range l.Keys() {
				n++
			}
			if n != 1000 {
				b.Fatal(n)
			}
		}
	})
}
