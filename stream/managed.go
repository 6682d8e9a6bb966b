package stream

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// The key-value buckets of managed endpoints (package internal/endpoint
// defines their values): endpoints by id and a name index, event filters
// and rules by name.
const (
	DefaultEndpointBucket = "TABLECAST_ENDPOINTS"
	DefaultFilterBucket   = "TABLECAST_FILTERS"
	DefaultRuleBucket     = "TABLECAST_RULES"
)

// managedHistory is how many values of each key a managed bucket keeps:
// the current one and a few before it, so that an operator can see with
// `nats kv history` what an endpoint was before a change.
const managedHistory = 5

// OpenManagedBucket creates the key-value bucket if missing (with replicas,
// at least 1) and returns it. The values are opaque here.
func OpenManagedBucket(ctx context.Context, js jetstream.JetStream, bucket, description string, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: description,
		History:     managedHistory,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	return kv, nil
}

// EscapeKey joins parts into one key-value key, '.'-separated, each part
// with every byte other than ASCII letters, digits, '-' and '_' written as
// =XX (hex), as SchemaKey does: the mapping is one-to-one, and any string
// makes a valid key token.
func EscapeKey(parts ...string) string { return kvKey(parts...) }

// UnescapeKey reverses EscapeKey: the parts of a key.
func UnescapeKey(key string) ([]string, error) { return parseKVKey(key) }
