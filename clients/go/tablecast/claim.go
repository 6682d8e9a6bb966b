package tablecast

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrClaimGone means the object a claim names is no longer stored: it
// expired with the stream's events, or its bucket was deleted.
var ErrClaimGone = errors.New("the claimed object is no longer stored")

// Resolver reads the objects claims name, the way the contract describes
// (it does what stream.ResolveEvent does, without linking the NATS server
// that package embeds). It keeps the object stores it opens and is safe
// for concurrent use.
type Resolver struct {
	js     jetstream.JetStream
	mu     sync.Mutex
	stores map[string]jetstream.ObjectStore
}

// NewResolver returns a Resolver that reads with js.
func NewResolver(js jetstream.JetStream) *Resolver {
	return &Resolver{js: js, stores: map[string]jetstream.ObjectStore{}}
}

// Resolve returns ev itself when it has no claim, else the full event the
// claim names, with ev's delivery fields (Subject, Sequence, Delivered).
// When the object is gone it returns ev and an error wrapping
// ErrClaimGone.
func (r *Resolver) Resolve(ctx context.Context, ev *Event) (*Event, error) {
	if ev.Claim == nil {
		return ev, nil
	}
	full, err := r.Fetch(ctx, *ev.Claim)
	if err != nil {
		return ev, err
	}
	out, err := ParseEvent(full)
	if err != nil {
		return ev, fmt.Errorf("object %s of bucket %s: %w", ev.Claim.Object, ev.Claim.Bucket, err)
	}
	if out.ID != ev.ID {
		return ev, fmt.Errorf("object %s of bucket %s holds event %s, not %s", ev.Claim.Object, ev.Claim.Bucket, out.ID, ev.ID)
	}
	out.Subject, out.Sequence, out.Delivered = ev.Subject, ev.Sequence, ev.Delivered
	return out, nil
}

// Fetch reads the object c names: exactly c.Size bytes, whose digest
// JetStream checks as they are read.
func (r *Resolver) Fetch(ctx context.Context, c Claim) ([]byte, error) {
	fail := func(err error) ([]byte, error) {
		return nil, fmt.Errorf("read object %s of bucket %s: %w", c.Object, c.Bucket, err)
	}
	obs, err := r.store(ctx, c.Bucket)
	if err != nil {
		return nil, err
	}
	res, err := obs.Get(ctx, c.Object)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return fail(ErrClaimGone)
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
	buf := make([]byte, c.Size)
	if _, err := io.ReadFull(res, buf); err != nil {
		return fail(err)
	}
	// The digest is checked when the end is read.
	var one [1]byte
	if n, err := res.Read(one[:]); n != 0 || !errors.Is(err, io.EOF) {
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("more bytes than its size")
		}
		return fail(err)
	}
	return buf, nil
}

func (r *Resolver) store(ctx context.Context, bucket string) (jetstream.ObjectStore, error) {
	r.mu.Lock()
	obs := r.stores[bucket]
	r.mu.Unlock()
	if obs != nil {
		return obs, nil
	}
	obs, err := r.js.ObjectStore(ctx, bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, fmt.Errorf("open object store %s: %w", bucket, ErrClaimGone)
	case err != nil:
		return nil, fmt.Errorf("open object store %s: %w", bucket, err)
	}
	r.mu.Lock()
	r.stores[bucket] = obs
	r.mu.Unlock()
	return obs, nil
}
