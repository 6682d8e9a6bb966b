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
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

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

// readPiece is how much of an object FetchStalled reads between looks at
// its progress: one of the object store's chunks (128 KiB), so that a
// slow link makes progress at least that often.
const readPiece = 128 << 10

// FetchStalled is Fetch that gives up when stall passes with no byte of
// the object read (0: never), however long the whole read takes. A large
// object on a loaded server can take seconds and still be on its way; a
// server that stopped answering is found out after stall, whatever the
// size.
func (o *Objects) FetchStalled(ctx context.Context, c Claim, stall time.Duration) ([]byte, error) {
	progress := func() {}
	if stall > 0 {
		// The object store's reader waits for the next chunk until the
		// context's deadline (5 s without one) before it looks at the
		// context: under a parent's deadline a stalled read would wait for
		// that. So the read gets a context without deadline, cancelled
		// when the parent ends or progress stops.
		parent := ctx
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(context.WithoutCancel(parent))
		defer cancel(nil)
		defer context.AfterFunc(parent, func() { cancel(context.Cause(parent)) })()
		stalled := fmt.Errorf("no progress in %s", stall)
		t := time.AfterFunc(stall, func() { cancel(stalled) })
		defer t.Stop()
		progress = func() { t.Reset(stall) }
	}
	fail := func(err error) ([]byte, error) {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		return nil, fmt.Errorf("read object %s of bucket %s: %w", c.Object, c.Bucket, err)
	}
	obs, err := o.store(ctx, c.Bucket)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return nil, fmt.Errorf("%w: %w", cause, err)
		}
		return nil, err
	}
	res, err := obs.Get(ctx, c.Object)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return fail(ErrGone)
	} else if err != nil {
		return fail(err)
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return fail(err)
	}
	if int64(info.Size) != c.Size {
		return fail(fmt.Errorf("it holds %d bytes, the claim says %d", info.Size, c.Size))
	}
	progress()
	buf := make([]byte, c.Size)
	for off := 0; off < len(buf); {
		n, err := io.ReadFull(res, buf[off:min(len(buf), off+readPiece)])
		off += n
		if err != nil {
			if cause := context.Cause(ctx); cause != nil {
				err = fmt.Errorf("%w (after %d of %d bytes)", cause, off, len(buf))
			}
			return fail(err)
		}
		progress()
	}
	// The digest is checked when the end is read: read up to it.
	var one [1]byte
	if n, err := res.Read(one[:]); n != 0 || !errors.Is(err, io.EOF) {
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("more bytes than its size")
		}
		return fail(err)
	}
	return buf, nil
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
