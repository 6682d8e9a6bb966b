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
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// fetchChunks is how many of an object's chunks (128 KiB each) one read
// asks for: 4 MiB, a few round trips for the largest event.
const fetchChunks = 32

// fetchBytes bounds what one read asks for when chunks are larger (a
// bucket's chunks fit the server's maximum payload, up to 64 MiB): the
// server stops a batch once past it, after at least one chunk.
const fetchBytes = 4 << 20

// noStallPull is how long a read of FetchStalled without a stall bound
// waits for a chunk before it asks again.
const noStallPull = 5 * time.Second

// FetchStalled is Fetch that gives up when stall passes with no byte of
// the object read (0: never), however long the whole read takes. A large
// object on a loaded server can take seconds and still be on its way; a
// server that stopped answering is found out after stall, whatever the
// size.
//
// It reads the object's chunks itself, by batched direct gets of the
// bucket's stream (see chunkReader), and checks the digest. The object
// store's own reader would not do: it bounds the whole read by the
// context's deadline, and without one by the JetStream client's default
// timeout (5 s), which a large object on a loaded server outlasts while
// still arriving; and it reads through a consumer, which a read-only
// identity may not create on the bucket (one could be told to deliver
// into the event stream).
func (o *Objects) FetchStalled(ctx context.Context, c Claim, stall time.Duration) ([]byte, error) {
	fail := func(err error) ([]byte, error) {
		return nil, fmt.Errorf("read object %s of bucket %s: %w", c.Object, c.Bucket, err)
	}
	// The object's description is a request of its own, bounded by the
	// stall and by the client's default timeout, whichever is shorter:
	// under a parent's far deadline, or a long stall bound, one sent
	// while NATS was away could wait that long for an answer that will
	// not come, and the caller could not try again sooner.
	rctx, cancel := context.WithTimeout(ctx, min(cmp.Or(stall, noStallPull), noStallPull))
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
		r := chunkReader{
			nc:      o.js.Conn(),
			api:     apiPrefix(o.js.Options()) + "DIRECT.GET.OBJ_" + c.Bucket,
			subject: "$O." + c.Bucket + ".C." + info.NUID,
			// A read whose answer stops for this long is asked again
			// (the answer of one sent while NATS was away never comes);
			// the stall bound is what gives up.
			wait: min(cmp.Or(stall, noStallPull), noStallPull),
			left: int(info.Chunks),
		}
		progress := time.Now()
		for pause := time.Duration(0); int64(len(buf)) < c.Size; {
			if err := ctx.Err(); err != nil {
				return fail(fmt.Errorf("%w (after %d of %d bytes)", err, len(buf), c.Size))
			}
			got, err := r.read(ctx, func(data []byte) error {
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
			if got > 0 {
				progress, pause = time.Now(), 0
				continue
			}
			if stall > 0 && time.Since(progress) >= stall {
				return fail(fmt.Errorf("no progress in %s (after %d of %d bytes)", stall, len(buf), c.Size))
			}
			// The server answered without the next chunk: a replica
			// behind the one that gave the description (any replica
			// answers a direct get), or the object replaced by a replay
			// while it was read. Ask again, a little later each time.
			pause = min(max(2*pause, 10*time.Millisecond), 500*time.Millisecond)
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
		}
	}
	if !bytes.Equal(sum.Sum(nil), digest) {
		return fail(jetstream.ErrDigestMismatch)
	}
	return buf, nil
}

// apiPrefix is the prefix of the JetStream API requests of a client with
// opts: "$JS.API." unless it names another, or a domain.
func apiPrefix(opts jetstream.JetStreamOptions) string {
	switch {
	case opts.APIPrefix != "":
		return strings.TrimSuffix(opts.APIPrefix, ".") + "."
	case opts.Domain != "":
		return "$JS." + opts.Domain + ".API."
	}
	return jetstream.DefaultAPIPrefix
}

// chunkReader reads an object's chunks, in order, by batched direct gets
// of the bucket's stream: each read asks for the next chunks of the
// object's subject from the sequence after the last one received. A read
// takes what comes in order and stops at the first chunk that does not
// follow the one before it in the server's answer (one lost on its way, as
// core NATS may lose a message), at the end of the answer, or when wait
// passes without a chunk; the next read asks again from where this one
// stopped. Nothing is left on the server: no consumer to delete, and
// nothing a read-only identity may not ask for.
type chunkReader struct {
	nc      *nats.Conn
	api     string // the bucket stream's batched direct get
	subject string // the object's chunks
	wait    time.Duration

	// left is how many chunks are still to come: a read asks for no
	// more.
	left int
	// from is the stream sequence the next read starts at: the one after
	// the last chunk received.
	from uint64
}

// read makes one batched direct get, gives each chunk that came in order to
// use, and returns how many bytes came.
func (r *chunkReader) read(ctx context.Context, use func([]byte) error) (int, error) {
	if r.left <= 0 {
		return 0, errors.New("fewer bytes than its size")
	}
	req, err := json.Marshal(struct {
		Seq        uint64 `json:"seq"`
		NextBySubj string `json:"next_by_subj"`
		Batch      int    `json:"batch"`
		MaxBytes   int    `json:"max_bytes"`
	}{r.from, r.subject, min(fetchChunks, r.left), fetchBytes})
	if err != nil {
		return 0, err
	}
	inbox := r.nc.NewInbox()
	sub, err := r.nc.SubscribeSync(inbox)
	if err != nil {
		return 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := r.nc.PublishRequest(r.api, inbox, req); err != nil {
		return 0, err
	}
	got := 0
	var last uint64 // the sequence of the chunk before the next, in this answer
	for {
		wctx, cancel := context.WithTimeout(ctx, r.wait)
		msg, err := sub.NextMsgWithContext(wctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
			return got, nil // nothing for wait: the caller decides
		case err != nil:
			return got, err
		}
		switch status := msg.Header.Get("Status"); status {
		case "":
		case "404", "204": // nothing from r.from, or the end of the answer
			return got, nil
		default:
			return got, fmt.Errorf("status %s %s", status, msg.Header.Get("Description"))
		}
		seq, err := strconv.ParseUint(msg.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil {
			return got, fmt.Errorf("a chunk's sequence %q: %w", msg.Header.Get("Nats-Sequence"), err)
		}
		prev, err := strconv.ParseUint(msg.Header.Get("Nats-Last-Sequence"), 10, 64)
		if err != nil {
			return got, fmt.Errorf("a chunk's previous sequence %q: %w", msg.Header.Get("Nats-Last-Sequence"), err)
		}
		if prev != last || msg.Header.Get("Nats-Subject") != r.subject {
			return got, nil // one lost on its way: read again from r.from
		}
		last = seq
		if err := use(msg.Data); err != nil {
			return got, err
		}
		r.from, r.left = seq+1, r.left-1
		got += len(msg.Data)
		if r.left == 0 {
			return got, nil
		}
	}
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
