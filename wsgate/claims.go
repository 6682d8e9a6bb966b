package wsgate

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"

	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/stream"
)

// Claims. An event too large for one NATS message reaches the stream as its
// envelope without rows and a "claim" naming the object that holds it whole
// (package stream). The gateway resolves the claim before it filters and
// projects the event, so clients get the full event, live and on resume;
// when the object cannot be read (it expired with the stream's max age, or
// NATS failed to deliver it in time) the event goes out as received, with
// its claim, rather than not at all.

// resolveStall bounds how long the reading of one claimed object may go
// without progress. A feed delivers its events in order, so its
// subscribers wait for the object: a NATS that stops answering holds a
// feed up no longer than this and the object store reader's 5 s wait
// for a chunk. It bounds no whole read: 64 MiB from a
// local JetStream takes a fraction of a second, but many seconds on a
// loaded server, and an object on its way is not given up for a stub.
const resolveStall = 5 * time.Second

// claimMarker is text every claim envelope holds: a cheap test that spares
// ordinary events any further look.
var claimMarker = []byte(`"` + stream.ClaimMember + `":{`)

// resolve returns the full event a table's message stands for: the object
// its claim names, or data itself when it has no claim or the object cannot
// be read. env is scratch for indexing the envelope. It runs outside every
// lock: a feed's subscriptions can change while it reads.
func (g *Gateway) resolve(subject string, seq uint64, data []byte, env *query.Row) []byte {
	if !bytes.Contains(data, claimMarker) {
		return data
	}
	if env.Reset(data) != nil {
		return data
	}
	raw, ok := env.Get(stream.ClaimMember)
	if !ok || raw[0] != '{' {
		return data // a column named claim, not ours
	}
	c, ok, err := stream.DecodeClaim(raw)
	if err == nil && ok {
		err = g.checkClaim(env, c)
	}
	if err != nil || !ok {
		g.met.claims.WithLabelValues("failed").Inc()
		g.log.Warn("gateway delivers an event with a malformed claim as received", "subject", subject, "seq", seq, "err", err)
		return data
	}
	full, err := g.claims.FetchStalled(g.ctx, c, resolveStall)
	switch {
	case err == nil:
		g.met.claims.WithLabelValues("resolved").Inc()
		return full
	case errors.Is(err, stream.ErrClaimGone):
		g.met.claims.WithLabelValues("gone").Inc()
		g.log.Debug("gateway delivers an event whose claimed object is gone as received", "subject", subject, "seq", seq, "object", c.Object)
	default:
		g.met.claims.WithLabelValues("failed").Inc()
		g.log.Warn("gateway cannot read a claimed object; delivering the event as received", "subject", subject, "seq", seq, "object", c.Object, "err", err)
	}
	return data
}

// checkClaim accepts only the claims the reader writes: to the payload
// bucket, naming the object of this very event (its database and id).
// Anything else, published by another hand, could make the gateway send one
// table's row to the subscribers of another.
func (g *Gateway) checkClaim(env *query.Row, c stream.Claim) error {
	var db, id string
	if raw, ok := env.Get("db"); !ok || json.Unmarshal(raw, &db) != nil {
		return errors.New("claim in an envelope without db")
	}
	if raw, ok := env.Get("id"); !ok || json.Unmarshal(raw, &id) != nil {
		return errors.New("claim in an envelope without id")
	}
	return stream.CheckEventClaim(c, g.cfg.PayloadBucket, db, id)
}
