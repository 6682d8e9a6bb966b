package tablecast

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/claim"
)

// ErrClaimGone means the object a claim names is no longer stored: it
// expired with the stream's events, or its bucket was deleted.
var ErrClaimGone = claim.ErrGone

// Resolver reads the objects claims name, the way the contract describes
// (with the implementation package stream uses, without linking the NATS
// server that package embeds). It keeps the object stores it opens and is
// safe for concurrent use.
type Resolver struct{ objects *claim.Objects }

// NewResolver returns a Resolver that reads with js.
func NewResolver(js jetstream.JetStream) *Resolver {
	return &Resolver{objects: claim.NewObjects(js)}
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
	return r.objects.Fetch(ctx, claim.Claim(c))
}
