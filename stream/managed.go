package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

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

// ManagedMarkerTTL is how long a managed bucket keeps the marker a purge
// leaves where a deleted item was. Without a limit every item ever deleted
// stays in the bucket as a marker, and every watch's first pass reads them
// all: a bucket whose endpoints come and go (one per deployment, say)
// would grow for good. A watch that is connected sees a purge at once; one
// cut off from NATS must read the bucket afresh after it reconnects (the
// endpoint package's watches do), since a marker may expire meanwhile.
const ManagedMarkerTTL = 24 * time.Hour

// OpenManagedBucket creates the key-value bucket if missing (with replicas,
// at least 1) and returns it, with the time a purge's marker is kept
// (PurgeOptions). The values are opaque here.
//
// The bucket keeps markers for ManagedMarkerTTL where the server has
// per-message TTLs (nats-server 2.11 and later); an older server keeps
// them for good, and markerTTL is 0. Markers written before the limit was
// set have no TTL of their own (package endpoint drops them once older).
func OpenManagedBucket(ctx context.Context, js jetstream.JetStream, bucket, description string, replicas int) (kv jetstream.KeyValue, markerTTL time.Duration, err error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:         bucket,
		Description:    description,
		History:        managedHistory,
		Replicas:       max(replicas, 1),
		LimitMarkerTTL: ManagedMarkerTTL,
	}
	kv, err = js.CreateOrUpdateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		cfg.LimitMarkerTTL = 0
		kv, err = js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	return kv, cfg.LimitMarkerTTL, nil
}

// PurgeOptions are the options of a purge of key revision rev in a managed
// bucket whose markers are kept for markerTTL (0: for good).
func PurgeOptions(rev uint64, markerTTL time.Duration) []jetstream.KVDeleteOpt {
	if markerTTL > 0 {
		return []jetstream.KVDeleteOpt{jetstream.LastRevision(rev), jetstream.PurgeTTL(markerTTL)}
	}
	return []jetstream.KVDeleteOpt{jetstream.LastRevision(rev)}
}

// EscapeKey joins parts into one key-value key, '.'-separated, each part
// with every byte other than ASCII letters, digits, '-' and '_' written as
// =XX (hex), as SchemaKey does: the mapping is one-to-one, and any string
// makes a valid key token.
func EscapeKey(parts ...string) string { return kvKey(parts...) }

// UnescapeKey reverses EscapeKey: the parts of a key.
func UnescapeKey(key string) ([]string, error) { return parseKVKey(key) }
