package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// maxChunk is the largest chunk an object is stored in: the object store's
// own default, 128 KiB, a fraction of any server's maximum payload.
const maxChunk = 128 << 10

// payloadTTLMargin is added to the event stream's max age for the objects:
// an object is stored just before the message that claims it, and must not
// expire before that message does.
const payloadTTLMargin = time.Minute

// PayloadStoreConfig describes the object store bucket of the events too
// large for one NATS message.
type PayloadStoreConfig struct {
	// Bucket is the bucket's name. Default (empty): DefaultPayloadBucket.
	Bucket string
	// Replicas is the number of copies in a NATS cluster. Default (0): 1.
	Replicas int
	// MaxAge is the event stream's max age: the objects are kept that long
	// (plus a minute, so that an object outlives the message that claims
	// it). Default (0): kept until deleted.
	MaxAge time.Duration
	// Storage is the bucket's storage. Default (zero value): file.
	Storage jetstream.StorageType
	// MaxPayload is the NATS server's maximum payload; the objects are
	// stored in chunks that fit in it. Default (0): 128 KiB chunks.
	MaxPayload int64
	// Description is the bucket's. Default (empty): that of the events'
	// bucket.
	Description string
}

// PayloadStore is where the events too large for one NATS message are
// stored whole, one object each, for their claims to name.
type PayloadStore struct {
	obs    jetstream.ObjectStore
	bucket string
	chunk  uint32
}

// OpenPayloadStore creates the bucket if missing (or updates its replicas
// and max age) and returns it.
func OpenPayloadStore(ctx context.Context, js jetstream.JetStream, cfg PayloadStoreConfig) (*PayloadStore, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultPayloadBucket
	}
	var ttl time.Duration
	if cfg.MaxAge > 0 {
		ttl = cfg.MaxAge + payloadTTLMargin
	}
	chunk := int64(maxChunk)
	if cfg.MaxPayload > 0 {
		// Half the maximum leaves room for the chunk's headers.
		chunk = max(min(chunk, cfg.MaxPayload/2), 1)
	}
	if cfg.Description == "" {
		cfg.Description = "tablecast: events too large for one NATS message, named by the claims in the event stream"
	}
	var obs jetstream.ObjectStore
	err := retry(ctx, retryWithin, func(ctx context.Context) (err error) {
		obs, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      cfg.Bucket,
			Description: cfg.Description,
			TTL:         ttl,
			Replicas:    max(cfg.Replicas, 1),
			Storage:     cfg.Storage,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open object store %s: %w", cfg.Bucket, err)
	}
	return &PayloadStore{obs: obs, bucket: cfg.Bucket, chunk: uint32(chunk)}, nil
}

// Bucket is the bucket's name, for claims.
func (p *PayloadStore) Bucket() string { return p.bucket }

// Put stores data as the object name, replacing an object of that name
// (a replay stores the same event again), and returns once JetStream has
// stored all of it.
func (p *PayloadStore) Put(ctx context.Context, name string, data []byte) error {
	_, err := p.obs.Put(ctx, jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: p.chunk}}, bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("store object %s of %d bytes in bucket %s: %w", name, len(data), p.bucket, err)
	}
	return nil
}

// Delete removes the object name; one that is not there is not an error.
func (p *PayloadStore) Delete(ctx context.Context, name string) error {
	if err := p.obs.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("delete object %s from bucket %s: %w", name, p.bucket, err)
	}
	return nil
}
