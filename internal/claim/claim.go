// Package claim reads claim checks: the objects that hold events too large
// for one NATS message. A claim names an object of a JetStream object store
// bucket and its size; Objects reads it, checking the size and (through
// JetStream) the digest.
//
// It is the one implementation of reading a claim, shared by package stream
// (the reader's side, the gateway and tablecast tail) and the Go client for
// backend services, which must not link the NATS server that stream embeds.
// It needs only a JetStream client.
//
// An Objects is safe for concurrent use: it keeps the object stores it has
// opened behind a mutex.
package claim

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Claim names the object that holds a message's full content.
type Claim struct {
	// Bucket is the object store bucket.
	Bucket string `json:"bucket"`
	// Object is the object's name in it.
	Object string `json:"object"`
	// Size is the object's size in bytes: the full message's.
	Size int64 `json:"size"`
}

// ErrGone: the object a claim names is no longer stored (it expired with
// the stream's max age, or was deleted), or its bucket does not exist.
var ErrGone = errors.New("the claimed object is no longer stored")

// Objects reads the objects claims name.
type Objects struct {
	js     jetstream.JetStream
	mu     sync.Mutex
	stores map[string]jetstream.ObjectStore
}

// NewObjects returns an Objects that reads with js.
func NewObjects(js jetstream.JetStream) *Objects {
	return &Objects{js: js, stores: map[string]jetstream.ObjectStore{}}
}

// Fetch reads the object c names: exactly c.Size bytes, whose digest
// JetStream checks as they are read. An object or bucket that is not there
// is an error wrapping ErrGone.
func (o *Objects) Fetch(ctx context.Context, c Claim) ([]byte, error) {
	return o.FetchStalled(ctx, c, 0)
}

// fetchChunks is how many of an object's chunks (128 KiB each) one pull
// asks for: 4 MiB, a few round trips for the largest event.
const fetchChunks = 32

// noStallPull is how long a pull of FetchStalled without a stall bound
// waits before the next is made.
const noStallPull = 5 * time.Second

// FetchStalled is Fetch that gives up when stall passes with no byte of
// the object read (0: never), however long the whole read takes. A large
// object on a loaded server can take seconds and still be on its way; a
// server that stopped answering is found out after stall, whatever the
// size.
//
// It reads the object's chunks itself, through a consumer of its own on
// the bucket's stream (see chunkReader), and checks the digest: the object store's own reader
// bounds the whole read by the context's deadline, and without one by the
// JetStream client's default timeout (5 s), which a large object on a
// loaded server outlasts while still arriving.
func (o *Objects) FetchStalled(ctx context.Context, c Claim, stall time.Duration) ([]byte, error) {
	fail := func(err error) ([]byte, error) {
		return nil, fmt.Errorf("read object %s of bucket %s: %w", c.Object, c.Bucket, err)
	}
	// The object's description is a request of its own, bounded as the
	// stall is (the client's default timeout without one): under a
	// parent's far deadline, one sent while NATS was away could wait for
	// that deadline, and the caller could not try again sooner.
	rctx, cancel := context.WithTimeout(ctx, cmp.Or(stall, noStallPull))
	defer cancel()
	obs, err := o.store(rctx, c.Bucket)
	if err != nil {
		return nil, err
	}
	info, err := obs.GetInfo(rctx, c.Object)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return fail(ErrGone)
	case err != nil:
		return fail(err)
	case info.Opts != nil && info.Opts.Link != nil:
		return fail(errors.New("it is a link to another object"))
	case int64(info.Size) != c.Size:
		return fail(fmt.Errorf("it holds %d bytes, the claim says %d", info.Size, c.Size))
	}
	digest, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil {
		return fail(fmt.Errorf("its digest %q: %w", info.Digest, err))
	}
	sum := sha256.New()
	buf := make([]byte, 0, c.Size)
	if c.Size > 0 {
		r := chunkReader{js: o.js, stream: "OBJ_" + c.Bucket, subject: "$O." + c.Bucket + ".C." + info.NUID, wait: stall, left: int(info.Chunks)}
		if r.wait <= 0 {
			r.wait = noStallPull
		}
		defer r.drop(ctx)
		for int64(len(buf)) < c.Size {
			if err := ctx.Err(); err != nil {
				return fail(fmt.Errorf("%w (after %d of %d bytes)", err, len(buf), c.Size))
			}
			got, err := r.next(ctx, func(data []byte) error {
				if int64(len(buf)+len(data)) > c.Size {
					return errors.New("more bytes than its size")
				}
				buf = append(buf, data...)
				sum.Write(data)
				return nil
			})
			if err != nil {
				return fail(fmt.Errorf("read its chunks (after %d of %d bytes): %w", len(buf), c.Size, err))
			}
			if got == 0 && stall > 0 {
				return fail(fmt.Errorf("no progress in %s (after %d of %d bytes)", stall, len(buf), c.Size))
			}
		}
	}
	if !bytes.Equal(sum.Sum(nil), digest) {
		return fail(jetstream.ErrDigestMismatch)
	}
	return buf, nil
}

// chunkReader reads an object's chunks, in order, through a consumer of
// its own without acknowledgements. A pull ends at the server's expiry
// (wait), after every chunk it gave; a chunk lost on its way all the same
// (the client gives up on a pull a second past its expiry) shows as a jump
// in the consumer's delivery sequence, and the reader then starts a new
// consumer at the first chunk it is missing. Unlike an ordered consumer of
// the JetStream client, it never retries without bound: every request is
// bounded by wait, so that a server that stopped answering is found out.
type chunkReader struct {
	js      jetstream.JetStream
	stream  string
	subject string
	wait    time.Duration

	// left is how many chunks are still to come: a pull asks for no
	// more, or it would wait its whole expiry for chunks that do not
	// exist.
	left int

	cons      jetstream.Consumer
	name      string
	delivered uint64 // by the consumer, as received
	nextSeq   uint64 // the stream sequence of the next chunk; 0: the first
}

// next reads the chunks of one pull, giving each to use in order, and
// returns how many bytes came.
func (r *chunkReader) next(ctx context.Context, use func([]byte) error) (int, error) {
	if r.cons == nil {
		if err := r.start(ctx); err != nil {
			return 0, err
		}
	}
	if r.left <= 0 {
		return 0, errors.New("fewer bytes than its size")
	}
	batch, err := r.cons.Fetch(min(fetchChunks, r.left), jetstream.FetchMaxWait(r.wait))
	if err != nil {
		return 0, err
	}
	got := 0
	for msg := range batch.Messages() {
		meta, err := msg.Metadata()
		if err != nil {
			return got, err
		}
		if meta.Sequence.Consumer != r.delivered+1 {
			// Chunks given out that never came: read again from the
			// first missing, through a new consumer.
			r.drop(ctx)
			for range batch.Messages() {
			}
			return got, nil
		}
		r.delivered++
		r.left--
		r.nextSeq = meta.Sequence.Stream + 1
		if err := use(msg.Data()); err != nil {
			return got, err
		}
		got += len(msg.Data())
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
		return got, err
	}
	return got, nil
}

func (r *chunkReader) start(ctx context.Context) error {
	cfg := jetstream.ConsumerConfig{
		Name:           "tablecast_claim_" + rand.Text(),
		FilterSubjects: []string{r.subject},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckNonePolicy,
		// Deleted by the server once no pull has waited on it for this
		// long (a reader that stopped midway and could not delete it).
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
	}
	if r.nextSeq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.nextSeq
	}
	cctx, cancel := context.WithTimeout(ctx, max(r.wait, time.Second))
	defer cancel()
	// Named here, so that one created although its answer did not come
	// is deleted all the same.
	r.name = cfg.Name
	cons, err := r.js.CreateConsumer(cctx, r.stream, cfg)
	if err != nil {
		return err
	}
	r.cons, r.delivered = cons, 0
	return nil
}

// drop deletes the reader's consumer, if any.
func (r *chunkReader) drop(ctx context.Context) {
	if r.name == "" {
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = r.js.DeleteConsumer(dctx, r.stream, r.name)
	r.cons, r.name = nil, ""
}

func (o *Objects) store(ctx context.Context, bucket string) (jetstream.ObjectStore, error) {
	o.mu.Lock()
	obs := o.stores[bucket]
	o.mu.Unlock()
	if obs != nil {
		return obs, nil
	}
	obs, err := o.js.ObjectStore(ctx, bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, fmt.Errorf("open object store %s: %w", bucket, ErrGone)
	case err != nil:
		return nil, fmt.Errorf("open object store %s: %w", bucket, err)
	}
	o.mu.Lock()
	o.stores[bucket] = obs
	o.mu.Unlock()
	return obs, nil
}
