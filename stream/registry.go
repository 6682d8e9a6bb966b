package stream

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultSchemaBucket is the key-value bucket of the schema registry.
const DefaultSchemaBucket = "TABLECAST_SCHEMAS"

// schemaHistory is how many shapes per table the bucket keeps: enough to
// interpret events that are still in the stream after a few schema
// changes, small enough to stay negligible.
const schemaHistory = 64

// Registry is the schema registry: per table, its shape (columns, types, key
// columns, a version) as JSON, in a JetStream key-value bucket that the CDC
// reader writes and consumers read or watch. The values are opaque here;
// package schema defines them.
type Registry struct {
	js jetstream.JetStream
	kv jetstream.KeyValue
}

// OpenRegistry creates the bucket if missing and returns the registry.
func OpenRegistry(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (*Registry, error) {
	if bucket == "" {
		bucket = DefaultSchemaBucket
	}
	var kv jetstream.KeyValue
	err := retry(ctx, retryWithin, func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "tablecast schema registry: the shape of every streamed table",
			History:     schemaHistory,
			Replicas:    max(replicas, 1),
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open schema registry bucket %s: %w", bucket, err)
	}
	return &Registry{js: js, kv: kv}, nil
}

// SchemaKey is the registry key of a table: "<db>.<schema>.<table>", each
// part with every byte other than ASCII letters, digits, '-' and '_'
// written as =XX (hex), since keys allow few characters.
func SchemaKey(db, schema, table string) string {
	return kvKey(db, schema, table)
}

// ErrNoRegistry: the schema registry's bucket does not exist, so no reader
// has streamed into this NATS yet.
var ErrNoRegistry = errors.New("the schema registry does not exist: no tablecast reader has streamed into this NATS")

// LookupRegistry opens an existing registry without creating it, for
// commands that only read: ErrNoRegistry when it is missing.
func LookupRegistry(ctx context.Context, js jetstream.JetStream, bucket string) (*Registry, error) {
	if bucket == "" {
		bucket = DefaultSchemaBucket
	}
	kv, err := js.KeyValue(ctx, bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, ErrNoRegistry
	case err != nil:
		return nil, fmt.Errorf("open schema registry bucket %s: %w", bucket, err)
	}
	return &Registry{js: js, kv: kv}, nil
}

// TableName is a table as the registry names it.
type TableName struct{ DB, Schema, Table string }

// Tables lists every table with a shape in the registry.
func (r *Registry) Tables(ctx context.Context) ([]TableName, error) {
	keys, err := ListKVKeys(ctx, r.js, r.kv, ">")
	if err != nil {
		return nil, fmt.Errorf("list schema registry: %w", err)
	}
	var out []TableName
	for _, key := range keys {
		parts, err := parseKVKey(key)
		if err != nil || len(parts) != 3 {
			continue // not a table's key
		}
		out = append(out, TableName{DB: parts[0], Schema: parts[1], Table: parts[2]})
	}
	return out, nil
}

// parseKVKey undoes kvKey.
func parseKVKey(key string) ([]string, error) {
	var parts []string
	var b []byte
	for i := 0; i < len(key); i++ {
		switch c := key[i]; c {
		case '.':
			parts = append(parts, string(b))
			b = b[:0]
		case '=':
			if i+2 >= len(key) || unhex(key[i+1]) < 0 || unhex(key[i+2]) < 0 {
				return nil, fmt.Errorf("key %q: bad escape at %d", key, i)
			}
			b = append(b, byte(unhex(key[i+1])<<4|unhex(key[i+2])))
			i += 2
		default:
			b = append(b, c)
		}
	}
	return append(parts, string(b)), nil
}

// kvKey joins parts with '.', each with every byte other than ASCII letters,
// digits, '-' and '_' written as =XX (hex): key-value keys allow few
// characters, and this keeps the mapping one-to-one.
func kvKey(parts ...string) string {
	var b strings.Builder
	for i, part := range parts {
		if i > 0 {
			b.WriteByte('.')
		}
		for j := 0; j < len(part); j++ {
			c := part[j]
			if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
				b.WriteByte(c)
			} else {
				fmt.Fprintf(&b, "=%02X", c)
			}
		}
	}
	return b.String()
}

// Watch follows every table's current shape: first each stored shape, then
// a nil entry marking that the stored ones have all been sent, then every
// change as it happens (a deleted table arrives as a delete operation).
func (r *Registry) Watch(ctx context.Context) (jetstream.KeyWatcher, error) {
	w, err := WatchKV(ctx, r.js, r.kv, ">", false)
	if err != nil {
		return nil, fmt.Errorf("watch schema registry: %w", err)
	}
	return w, nil
}

// Revision returns the registry's revision: that of its latest change, 0
// while it has none. A watcher that has seen an entry of this revision or
// later has seen every change made before it was read.
func (r *Registry) Revision(ctx context.Context) (uint64, error) {
	st, err := r.kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("read schema registry status: %w", err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return 0, fmt.Errorf("read schema registry status: no stream state in %T", st)
	}
	if state := bs.StreamInfo().State; state.Msgs > 0 {
		return state.LastSeq, nil
	}
	return 0, nil
}

// Get returns a table's current shape and its revision, or found=false.
func (r *Registry) Get(ctx context.Context, key string) (value []byte, revision uint64, found bool, err error) {
	e, err := r.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, 0, false, nil
	case err != nil:
		return nil, 0, false, fmt.Errorf("read schema %s: %w", key, err)
	}
	return e.Value(), e.Revision(), true, nil
}

// Put stores a table's new shape. revision is the one the caller read (0
// for a new key): if another writer changed the key meanwhile, Put fails
// rather than overwrite a newer shape.
func (r *Registry) Put(ctx context.Context, key string, value []byte, revision uint64) error {
	var err error
	if revision == 0 {
		_, err = r.kv.Create(ctx, key, value)
	} else {
		_, err = r.kv.Update(ctx, key, value, revision)
	}
	if err != nil {
		return fmt.Errorf("write schema %s: %w", key, err)
	}
	return nil
}

// History returns every stored shape of a table, oldest first.
func (r *Registry) History(ctx context.Context, key string) ([][]byte, error) {
	entries, err := r.kv.History(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read schema history %s: %w", key, err)
	}
	out := make([][]byte, 0, len(entries))
	for _, e := range entries {
		if e.Operation() == jetstream.KeyValuePut {
			out = append(out, e.Value())
		}
	}
	return out, nil
}
