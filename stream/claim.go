package stream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/claim"
)

// Claim checks. A message that would exceed the NATS server's maximum
// payload is stored whole as an object in a JetStream object store, and the
// stream carries a small message that names it instead: the claim. Readers
// resolve it with a Resolver (or ResolveEvent), the gateway and `tablecast
// tail` included.

// DefaultPayloadBucket is the object store bucket that holds the events too
// large for one NATS message.
const DefaultPayloadBucket = "TABLECAST_PAYLOADS"

// ClaimMember is the name of the envelope member that carries a claim.
const ClaimMember = "claim"

// Claim names the object that holds a message's full content.
type Claim = claim.Claim

// AppendClaim appends c as a JSON object.
func AppendClaim(dst []byte, c Claim) []byte {
	dst = append(dst, `{"bucket":`...)
	dst = appendJSONString(dst, c.Bucket)
	dst = append(dst, `,"object":`...)
	dst = appendJSONString(dst, c.Object)
	dst = append(dst, `,"size":`...)
	dst = strconv.AppendInt(dst, c.Size, 10)
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string. Names and ids are short, so
// encoding/json's escaping is good enough here.
func appendJSONString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(dst, b...)
}

// PayloadObjectName is the name of the object that holds the event with id
// eventID of database db. Event ids are unique per database, so the name is
// unique, and the same on every replay of the event: storing it again
// replaces the object rather than adding another.
func PayloadObjectName(db, eventID string) string { return db + "/" + eventID }

// ErrClaimGone: the object a claim names is no longer stored (it expired
// with the stream's max age, or was deleted), or its bucket does not exist.
var ErrClaimGone = claim.ErrGone

// ParseClaim returns the claim of a message: the "claim" member of the
// top-level JSON object. ok is false when there is none (a message that
// carries its content itself); err is set when the member is there but is
// not a claim.
func ParseClaim(msg []byte) (c Claim, ok bool, err error) {
	// Cheap test first: every claim has this text, and most messages do not.
	if !bytes.Contains(msg, []byte(`"`+ClaimMember+`":{`)) {
		return Claim{}, false, nil
	}
	var env struct {
		Claim json.RawMessage `json:"claim"`
	}
	if err := json.Unmarshal(msg, &env); err != nil || env.Claim == nil {
		// Not an object, or the text was inside a row: no claim of ours.
		return Claim{}, false, nil
	}
	return DecodeClaim(env.Claim)
}

// ParseEventClaim is ParseClaim for an event of the event stream, and
// accepts only the claim the reader writes (CheckEventClaim): err is set for
// any other. A claim published by another hand could otherwise make a
// reader of the stream send one table's row, or any object its NATS user
// can read, to those who get another's events.
func ParseEventClaim(msg []byte, bucket string) (c Claim, ok bool, err error) {
	c, ok, err = ParseClaim(msg)
	if err != nil || !ok {
		return c, ok, err
	}
	var env struct {
		DB string `json:"db"`
		ID string `json:"id"`
	}
	if err := json.Unmarshal(msg, &env); err != nil {
		return Claim{}, false, fmt.Errorf("read the envelope of a claim: %w", err)
	}
	if err := CheckEventClaim(c, bucket, env.DB, env.ID); err != nil {
		return Claim{}, false, err
	}
	return c, true, nil
}

// CheckEventClaim accepts only the claim the reader writes for the event
// with id of database db: to bucket (the payload bucket), naming that
// event's object (PayloadObjectName).
func CheckEventClaim(c Claim, bucket, db, id string) error {
	if c.Bucket != bucket {
		return fmt.Errorf("claim names bucket %q, not the payload bucket %s", c.Bucket, bucket)
	}
	if db == "" || id == "" {
		return errors.New("claim in an envelope without db or id")
	}
	if want := PayloadObjectName(db, id); c.Object != want {
		return fmt.Errorf("claim names object %q, not this event's %q", c.Object, want)
	}
	return nil
}

// DecodeClaim decodes the value of a "claim" member. ok is false for a JSON
// null.
func DecodeClaim(v []byte) (c Claim, ok bool, err error) {
	if string(v) == "null" {
		return Claim{}, false, nil
	}
	if err := json.Unmarshal(v, &c); err != nil {
		return Claim{}, false, fmt.Errorf("malformed claim %.200s: %w", v, err)
	}
	if c.Bucket == "" || c.Object == "" || c.Size < 0 {
		return Claim{}, false, fmt.Errorf("malformed claim %.200s: want bucket, object and a size", v)
	}
	return c, true, nil
}

// ResolveEvent returns the full event a stream message stands for: the
// message itself when it carries no claim, else the content of the object
// its claim names, read from JetStream with js. It fails with an error
// wrapping ErrClaimGone when that object is no longer stored. A service
// that resolves many claims keeps a Resolver instead, which opens each
// bucket once.
func ResolveEvent(ctx context.Context, js jetstream.JetStream, msg []byte) ([]byte, error) {
	return NewResolver(js).Resolve(ctx, msg)
}

// Resolver resolves claims. It keeps the object stores it has opened, and
// is safe for concurrent use.
type Resolver struct{ objects *claim.Objects }

// NewResolver returns a Resolver that reads objects with js.
func NewResolver(js jetstream.JetStream) *Resolver {
	return &Resolver{objects: claim.NewObjects(js)}
}

// Resolve returns the full event msg stands for; see ResolveEvent.
func (r *Resolver) Resolve(ctx context.Context, msg []byte) ([]byte, error) {
	c, ok, err := ParseClaim(msg)
	if err != nil {
		return nil, err
	}
	if !ok {
		return msg, nil
	}
	return r.Fetch(ctx, c)
}

// Fetch reads the object c names. Its size must be c.Size; JetStream checks
// its digest as it is read.
func (r *Resolver) Fetch(ctx context.Context, c Claim) ([]byte, error) {
	return r.objects.Fetch(ctx, c)
}

// FetchStalled is Fetch that gives up when stall passes with nothing read
// (0: never), however long the whole read takes.
func (r *Resolver) FetchStalled(ctx context.Context, c Claim, stall time.Duration) ([]byte, error) {
	return r.objects.FetchStalled(ctx, c, stall)
}
