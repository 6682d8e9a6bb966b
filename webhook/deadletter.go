package webhook

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/stream"
)

// Headers of a webhook dead letter (and of its replay).
const (
	HeaderEndpointID   = "Tablecast-Endpoint-Id"
	HeaderEndpoint     = "Tablecast-Endpoint"
	HeaderEventID      = "Tablecast-Event-Id"
	HeaderSubject      = "Tablecast-Subject"
	HeaderStreamSeq    = "Tablecast-Stream-Seq"
	HeaderReason       = "Tablecast-Reason"
	HeaderAttempts     = "Tablecast-Attempts"
	HeaderFirstAttempt = "Tablecast-First-Attempt"
	// HeaderBodyObject names the object that holds the body of a dead
	// letter too large for one NATS message (in BodyBucket); the record's
	// own body is then the claim of it.
	HeaderBodyObject = "Tablecast-Body-Object"
)

// DeadLetters are the webhook dead letters, in the dead-letter stream
// beside the event stream: each event an endpoint gave up on, on
// "<prefix>_deadletter.webhook.<endpoint id>", its body the envelope as it
// was sent. A replay moves one to "<prefix>_deadletter.webhook_replay.<endpoint id>",
// where the endpoint's worker delivers it again.
type DeadLetters struct {
	js       jetstream.JetStream
	name     string // the dead-letter stream
	str      jetstream.Stream
	prefix   string // "<prefix>_deadletter"
	replicas int
	resolver *stream.Resolver

	bodiesMu sync.Mutex
	bodies   *stream.PayloadStore // opened when first needed

	mu    sync.Mutex
	wakes map[string]chan struct{} // by endpoint id: its worker's replays here
}

func (d *DeadLetters) wakeChan(id string) chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.wakes == nil {
		d.wakes = map[string]chan struct{}{}
	}
	ch := make(chan struct{}, 1)
	d.wakes[id] = ch
	return ch
}

func (d *DeadLetters) dropWake(id string, ch chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.wakes[id] == ch {
		delete(d.wakes, id)
	}
}

func (d *DeadLetters) wake(id string) {
	d.mu.Lock()
	ch := d.wakes[id]
	d.mu.Unlock()
	if ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// queued reports whether replays of the endpoint wait (true when it
// cannot tell: the consumer then says).
func (d *DeadLetters) queued(ctx context.Context, id string) bool {
	_, err := d.str.GetLastMsgForSubject(ctx, d.ReplaySubject(id))
	return !errors.Is(err, jetstream.ErrMsgNotFound)
}

// OpenDeadLetters creates the dead-letter stream of eventStream when
// missing.
func OpenDeadLetters(ctx context.Context, js jetstream.JetStream, eventStream, prefix string, replicas int) (*DeadLetters, error) {
	name, err := stream.EnsureDeadLetterStream(ctx, js, stream.DeadLetterConfig{EventStream: eventStream, Prefix: prefix, Replicas: replicas})
	if err != nil {
		return nil, err
	}
	str, err := js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", name, err)
	}
	return &DeadLetters{js: js, name: name, str: str, prefix: strings.TrimSuffix(stream.DeadLetterSubjects(prefix), ".>"),
		replicas: replicas, resolver: stream.NewResolver(js)}, nil
}

// BodyBucket is the object store bucket of the dead letters' bodies too
// large for one NATS message. Its objects are kept until the dead letter
// they belong to is delivered by a replay, or its endpoint deleted, as the
// records are; one that no record names (its process stopped before
// publishing the record) is deleted once Config.OrphanBodyAge old.
func (d *DeadLetters) BodyBucket() string { return d.name + "_BODIES" }

// bodyStore opens BodyBucket, creating it when missing.
func (d *DeadLetters) bodyStore(ctx context.Context) (*stream.PayloadStore, error) {
	d.bodiesMu.Lock()
	defer d.bodiesMu.Unlock()
	if d.bodies != nil {
		return d.bodies, nil
	}
	ps, err := stream.OpenPayloadStore(ctx, d.js, stream.PayloadStoreConfig{
		Bucket: d.BodyBucket(), Replicas: d.replicas, MaxPayload: d.js.Conn().MaxPayload(),
		Description: "tablecast: bodies of webhook dead letters too large for one NATS message, named by the claims in " + d.name,
	})
	if err != nil {
		return nil, err
	}
	d.bodies = ps
	return ps, nil
}

// fits reports whether msg, with the Nats-Msg-Id header msgID that goes
// with it, is within the server's maximum payload (which counts headers
// and data).
func (d *DeadLetters) fits(msg *nats.Msg, msgID string) bool {
	size := len("NATS/1.0\r\n\r\n") + len(nats.MsgIdHdr) + len(msgID) + len(": \r\n") + len(msg.Data)
	for k, vs := range msg.Header {
		for _, v := range vs {
			size += len(k) + len(v) + len(": \r\n")
		}
	}
	return int64(size) <= d.js.Conn().MaxPayload()
}

// claimStall is how long a read of a dead letter's body object may go
// with nothing arriving before it is given up (and tried again).
const claimStall = 30 * time.Second

// Body returns the body of dl as it was sent: the record's own, or the
// object's it names (HeaderBodyObject). An object that is gone is an error
// wrapping stream.ErrClaimGone; a record whose body is not the claim of
// that object, one wrapping ErrBodyClaim.
func (d *DeadLetters) Body(ctx context.Context, dl DeadLetter) ([]byte, error) {
	if dl.BodyObject == "" {
		return dl.Body, nil
	}
	return d.objectBody(ctx, dl.Body, dl.BodyObject)
}

// ErrBodyClaim: a dead letter's record says its body is an object, but
// its own body is not the claim of that object (a record written by
// another hand): Body reads no object for it.
var ErrBodyClaim = errors.New("not the claim of the dead letter's body")

// objectBody reads the object of a record whose body is a claim, which
// must name object in BodyBucket: a record written by another hand does
// not get another object sent.
func (d *DeadLetters) objectBody(ctx context.Context, claim []byte, object string) ([]byte, error) {
	c, ok, err := stream.ParseClaim(claim)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrBodyClaim, err)
	case !ok:
		return nil, fmt.Errorf("%w: no claim in it", ErrBodyClaim)
	case c.Bucket != d.BodyBucket() || c.Object != object:
		return nil, fmt.Errorf("%w: it names %s/%s, not %s/%s", ErrBodyClaim, c.Bucket, c.Object, d.BodyBucket(), object)
	}
	body, err := d.resolver.FetchStalled(ctx, c, claimStall)
	if err != nil {
		return nil, fmt.Errorf("read the body of a dead letter from %s/%s: %w", c.Bucket, c.Object, err)
	}
	return body, nil
}

// deleteBody removes the object of a dead letter's body, once nothing
// names it any more.
func (d *DeadLetters) deleteBody(ctx context.Context, object string) error {
	ps, err := d.bodyStore(ctx)
	if err != nil {
		return err
	}
	return ps.Delete(ctx, object)
}

// Stream is the dead-letter stream's name.
func (d *DeadLetters) Stream() string { return d.name }

// Subject is the subject of the dead letters of an endpoint.
func (d *DeadLetters) Subject(endpointID string) string { return d.prefix + ".webhook." + endpointID }

// ReplaySubject is the subject of the replayed dead letters of an
// endpoint.
func (d *DeadLetters) ReplaySubject(endpointID string) string {
	return d.prefix + ".webhook_replay." + endpointID
}

// ErrOtherEndpoint: Replay was given the seq of a dead letter of another
// endpoint (or of a record that is not a webhook's dead letter).
var ErrOtherEndpoint = errors.New("not a dead letter of this endpoint")

// DeadLetter is one event an endpoint gave up on.
type DeadLetter struct {
	// Seq is the dead letter's sequence in the dead-letter stream: what
	// Replay takes.
	Seq        uint64    `json:"seq"`
	EndpointID string    `json:"endpoint_id"`
	Endpoint   string    `json:"endpoint"` // its name then
	EventID    string    `json:"event_id"`
	Subject    string    `json:"subject"`    // the event's subject
	StreamSeq  uint64    `json:"stream_seq"` // the event's sequence in the event stream
	Reason     string    `json:"reason"`     // the last attempt's failure
	Attempts   int       `json:"attempts"`
	FirstTry   time.Time `json:"first_attempt"`
	DeadAt     time.Time `json:"dead_lettered_at"`
	// Body is the envelope as sent or, when BodyObject is set, the claim
	// of the object that holds it (see Body).
	Body       []byte `json:"-"`
	BodyObject string `json:"-"`
}

// List returns up to limit dead letters of an endpoint with a sequence
// after after, oldest first.
func (d *DeadLetters) List(ctx context.Context, endpointID string, after uint64, limit int) ([]DeadLetter, error) {
	str, err := d.js.Stream(ctx, d.name)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", d.name, err)
	}
	subj := d.Subject(endpointID)
	var out []DeadLetter
	for seq := after + 1; len(out) < limit; {
		raw, err := str.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read dead letters of %s from %d: %w", endpointID, seq, err)
		}
		out = append(out, deadLetterOf(raw))
		seq = raw.Sequence + 1
	}
	return out, nil
}

// ErrNoDeadLetter: Get was given a seq that holds no record (never did,
// or its dead letter was replayed).
var ErrNoDeadLetter = errors.New("no such dead letter")

// Get returns the dead letter seq of an endpoint: ErrNoDeadLetter when
// there is none, ErrOtherEndpoint when the record is another endpoint's
// (or not a webhook's dead letter). Its Body is the record's own, as in
// List: Body reads the whole of one held in an object.
func (d *DeadLetters) Get(ctx context.Context, endpointID string, seq uint64) (DeadLetter, error) {
	if seq == 0 {
		return DeadLetter{}, ErrNoDeadLetter
	}
	raw, err := d.str.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %w", seq, ErrNoDeadLetter)
	}
	if err != nil {
		return DeadLetter{}, fmt.Errorf("read dead letter %d: %w", seq, err)
	}
	if raw.Subject != d.Subject(endpointID) {
		return DeadLetter{}, fmt.Errorf("dead letter %d is not one of endpoint %s: %w", seq, endpointID, ErrOtherEndpoint)
	}
	return deadLetterOf(raw), nil
}

func deadLetterOf(raw *jetstream.RawStreamMsg) DeadLetter {
	h := raw.Header
	dl := DeadLetter{
		Seq: raw.Sequence, EndpointID: h.Get(HeaderEndpointID), Endpoint: h.Get(HeaderEndpoint),
		EventID: h.Get(HeaderEventID), Subject: h.Get(HeaderSubject), Reason: h.Get(HeaderReason),
		DeadAt: raw.Time, Body: raw.Data, BodyObject: h.Get(HeaderBodyObject),
	}
	dl.StreamSeq, _ = strconv.ParseUint(h.Get(HeaderStreamSeq), 10, 64)
	dl.Attempts, _ = strconv.Atoi(h.Get(HeaderAttempts))
	dl.FirstTry, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderFirstAttempt))
	return dl
}

// Replay hands dead letters of an endpoint back to it: those of seqs, or
// every one stored when it begins when seqs is empty. Each is queued for
// the endpoint's worker (which delivers replays beside the live events, as
// their own requests, with the same retries) and removed from the dead
// letters. It returns how many were queued, also with an error: those
// stay queued, so that a call again (after ctx ended, say) goes on with
// the rest.
func (d *DeadLetters) Replay(ctx context.Context, endpointID string, seqs ...uint64) (n int, err error) {
	str, err := d.js.Stream(ctx, d.name)
	if err != nil {
		return 0, fmt.Errorf("open stream %s: %w", d.name, err)
	}
	defer func() {
		if n > 0 {
			d.wake(endpointID)
		}
	}()
	subj := d.Subject(endpointID)
	if len(seqs) == 0 {
		// Each is queued as it is read, not after all of them are: an
		// endpoint may have far more dead letters than a request's time
		// lets one read (a receiver down for a day), and a call that read
		// them all first would end having queued none, every time. Those
		// stored after it began (replays dead-lettered again, say) are
		// left for the next call.
		info, err := str.Info(ctx)
		if err != nil {
			return 0, fmt.Errorf("read stream %s: %w", d.name, err)
		}
		last := info.State.LastSeq
		for seq := uint64(1); seq <= last; {
			raw, err := str.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
			switch {
			case errors.Is(err, jetstream.ErrMsgNotFound):
				return n, nil
			case err != nil:
				return n, fmt.Errorf("read dead letters of %s from %d: %w", endpointID, seq, err)
			case raw.Sequence > last:
				return n, nil
			}
			mine, err := d.requeue(ctx, str, endpointID, raw)
			if err != nil {
				return n, err
			}
			if mine {
				n++
			}
			seq = raw.Sequence + 1
		}
		return n, nil
	}
	for _, seq := range seqs {
		raw, err := str.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // replayed meanwhile
		}
		if err != nil {
			return n, fmt.Errorf("read dead letter %d: %w", seq, err)
		}
		if raw.Subject != subj {
			return n, fmt.Errorf("dead letter %d is not one of endpoint %s: %w", seq, endpointID, ErrOtherEndpoint)
		}
		mine, err := d.requeue(ctx, str, endpointID, raw)
		if err != nil {
			return n, err
		}
		if mine {
			n++
		}
	}
	return n, nil
}

// requeue queues the dead letter raw for its endpoint's replay and removes
// it from the dead letters. mine is false when another call removed it
// first: replays at once queue each dead letter once (its replay's
// Nats-Msg-Id), and it counts in one call's answer, not in each.
//
// Once begun, it is finished (within requestTimeout) even if ctx ends
// meanwhile: a dead letter queued but not removed would be replayed again
// by the next call, once the duplicate window is past.
func (d *DeadLetters) requeue(ctx context.Context, str jetstream.Stream, endpointID string, raw *jetstream.RawStreamMsg) (mine bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	defer cancel()
	msg := &nats.Msg{Subject: d.ReplaySubject(endpointID), Data: raw.Data, Header: nats.Header{}}
	for k, v := range raw.Header {
		msg.Header[k] = v
	}
	msg.Header.Del(nats.MsgIdHdr)
	seq := raw.Sequence
	if _, err := d.js.PublishMsg(ctx, msg, jetstream.WithMsgID("replay-"+strconv.FormatUint(seq, 10))); err != nil {
		return false, fmt.Errorf("queue dead letter %d for replay: %w", seq, err)
	}
	if err := str.DeleteMsg(ctx, seq); err != nil {
		if msgGone(ctx, str, seq, err) {
			return false, nil
		}
		return false, fmt.Errorf("remove replayed dead letter %d: %w", seq, err)
	}
	return true, nil
}

// msgGone reports whether deleting message seq of str failed with err
// because the message was gone already: deleted by another call, even
// while this one was deleting it. JetStream says so in more than one way
// (ErrMsgNotFound, "sequence not found", or a failed delete saying "no
// message found"), so a failure is checked by reading the message.
func msgGone(ctx context.Context, str jetstream.Stream, seq uint64, err error) bool {
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true
	}
	_, err = str.GetMsg(ctx, seq)
	return errors.Is(err, jetstream.ErrMsgNotFound)
}

// deadLetter stores items as dead letters of the endpoint, retrying until
// ctx ends (false then: nothing may be acknowledged).
func (w *worker) deadLetter(ctx context.Context, e *match.Entry, items []item, reason string, attempts int, first time.Time) bool {
	d := w.m.dl
	for i, it := range items {
		if h := w.m.beforeDeadLetter.Load(); h != nil {
			(*h)(ctx, w.ctx, w.id, i)
		}
		msg := &nats.Msg{Subject: d.Subject(w.id), Data: it.body, Header: nats.Header{}}
		msg.Header.Set(HeaderEndpointID, w.id)
		msg.Header.Set(HeaderEndpoint, e.Endpoint.Name)
		msg.Header.Set(HeaderEventID, it.id)
		msg.Header.Set(HeaderSubject, it.subj)
		msg.Header.Set(HeaderStreamSeq, strconv.FormatUint(it.seq, 10))
		msg.Header.Set(HeaderReason, reason)
		msg.Header.Set(HeaderAttempts, strconv.Itoa(attempts))
		msg.Header.Set(HeaderFirstAttempt, first.UTC().Format(time.RFC3339Nano))
		msgID := bodyObjectName(w.id, it.id, first)
		if !d.fits(msg, msgID) {
			// A body too large for a NATS message (an event that came as
			// a claim, resolved) goes into an object of its own, named
			// after the record, which carries its claim: a record that
			// cannot be stored would hold up the endpoint for good. A
			// process that stops before the record is published leaves
			// the object to deleteOrphanBodies (see bodies.go).
			ok := w.retryUntil(ctx, "cannot store a dead letter's body; retrying", func() (bool, error) {
				ps, err := d.bodyStore(ctx)
				if err == nil {
					err = ps.Put(ctx, msgID, it.body)
				}
				return err == nil, err
			}, "event_id", it.id)
			if !ok {
				return false
			}
			msg.Data = stream.AppendClaim([]byte(`{"`+stream.ClaimMember+`":`), stream.Claim{Bucket: d.BodyBucket(), Object: msgID, Size: int64(len(it.body))})
			msg.Data = append(msg.Data, '}')
			msg.Header.Set(HeaderBodyObject, msgID)
		}
		ok := w.retryUntil(ctx, "cannot store a dead letter; retrying", func() (bool, error) {
			_, err := w.m.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID))
			return err == nil, err
		}, "event_id", it.id)
		if !ok {
			return false
		}
	}
	return true
}

// replayPoll is how often a worker looks for replays queued by another
// process (those queued by its own are seen at once).
const replayPoll = 5 * time.Second

// replays delivers the endpoint's replayed dead letters until ctx ends
// or none is queued. An idle endpoint costs no goroutine nor consumer for
// them: its dispatcher looks for a queued replay every replayPoll (or
// when one is queued, see Manager.wakeReplays; a dormant endpoint is
// woken for it) and runs replays while there are some. A replay delivered
// is removed from the stream.
func (w *worker) replays(ctx context.Context) {
	d := w.m.dl
	name := replayConsumerName(w.id)
	var cons jetstream.Consumer
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if !d.queued(ctx, w.id) {
			return
		}
		if cons == nil {
			cctx, cancel, err := creationCtx(ctx)
			if err != nil {
				return
			}
			c, err := w.m.js.CreateOrUpdateConsumer(cctx, d.name, jetstream.ConsumerConfig{
				Durable:        name,
				Description:    "tablecast webhook endpoint " + w.id + ": replayed dead letters",
				FilterSubject:  d.ReplaySubject(w.id),
				AckPolicy:      jetstream.AckExplicitPolicy,
				AckWait:        w.m.cfg.AckWait,
				MaxDeliver:     -1,
				MaxAckPending:  1,
				PriorityPolicy: jetstream.PriorityPolicyPinned,
				PriorityGroups: []string{priorityGroup},
				PinnedTTL:      w.m.cfg.PinnedTTL,
			})
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				w.log().Warn("cannot set up the webhook endpoint's replay consumer; retrying", "err", err, "retry_in", backoff)
				if !sleep(ctx, backoff) {
					return
				}
				backoff = min(backoff*2, 10*time.Second)
				continue
			}
			cons, backoff = c, 100*time.Millisecond
		}
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		batch, err := cons.Fetch(1, jetstream.FetchContext(fctx), jetstream.FetchPriorityGroup(priorityGroup))
		if err != nil {
			cancel()
			if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
				cons = nil
			}
			if !sleep(ctx, 100*time.Millisecond) {
				return
			}
			continue
		}
		for msg := range batch.Messages() {
			meta, err := msg.Metadata()
			if err != nil {
				continue
			}
			if !w.hold(^meta.Sequence.Stream, msg) { // held apart from the event stream's sequences
				continue
			}
			h := msg.Headers()
			it := item{id: h.Get(HeaderEventID), body: msg.Data(), subj: h.Get(HeaderSubject)}
			it.seq, _ = strconv.ParseUint(h.Get(HeaderStreamSeq), 10, 64)
			if it.id == "" {
				it.id = "replay-" + strconv.FormatUint(meta.Sequence.Stream, 10)
			}
			object := h.Get(HeaderBodyObject)
			if object != "" {
				body, ok := w.replayBody(ctx, it.id, msg.Data(), object)
				if !ok {
					cancel()
					return
				}
				it.body = body
			}
			if r := w.deliver(ctx, w.entry.Load(), []item{it}); r == resultStopped || r == resultGone {
				cancel()
				return
			}
			if h := w.m.afterReplay.Load(); h != nil {
				(*h)(w.ctx, w.id)
			}
			// Settled even if the worker stops meanwhile: a replay
			// acknowledged and not removed is never given again nor
			// removed, and, always found queued, kept the endpoint from
			// going dormant.
			sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
			if err := msg.Ack(); err != nil {
				w.log().Warn("cannot acknowledge a replayed event; it may be delivered again", "err", err)
			} else if err := d.str.DeleteMsg(sctx, meta.Sequence.Stream); err != nil && !msgGone(sctx, d.str, meta.Sequence.Stream, err) {
				w.log().Warn("cannot remove a replayed event from the dead-letter stream", "err", err)
			} else if object != "" {
				// Delivered, or dead-lettered again with an object of its
				// own: nothing names this one any more.
				if err := d.deleteBody(sctx, object); err != nil {
					w.log().Warn("cannot delete the object of a replayed dead letter's body", "object", object, "err", err)
				}
			}
			scancel()
			w.heldMu.Lock()
			delete(w.held, ^meta.Sequence.Stream)
			w.heldMu.Unlock()
		}
		cancel()
	}
}

// replayBody reads the body of a replayed dead letter from the object its
// claim names, retrying until it is read or ctx ends (false). An object
// that is gone (deleted by hand), or a record whose body is not the claim
// of its object (written by another hand), leaves the record's own body,
// which is sent as it is: the receiver then learns the event's id and that
// its body is lost, rather than the endpoint's replays stopping for good.
func (w *worker) replayBody(ctx context.Context, eventID string, claim []byte, object string) ([]byte, bool) {
	var body []byte
	ok := w.retryUntil(ctx, "cannot read the body of a replayed dead letter; retrying", func() (bool, error) {
		var err error
		body, err = w.m.dl.objectBody(ctx, claim, object)
		if errors.Is(err, stream.ErrClaimGone) || errors.Is(err, ErrBodyClaim) {
			w.log().Error("the body of a replayed dead letter cannot be had; sending the record's own", "event_id", eventID, "err", err)
			body = claim
			return true, nil
		}
		return err == nil, err
	}, "event_id", eventID)
	return body, ok
}
