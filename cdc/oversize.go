package cdc

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Events of any size. An event that fits in one NATS message (the server's
// maximum payload, with its headers) is published as it is. A larger one is
// stored whole as an object of the payload bucket first, and the stream
// gets its envelope without the rows plus a "claim" naming the object. One
// larger than MaxEventBytes is not kept at all: the stream gets its
// envelope with "truncated":true, and the dead-letter stream a record of
// it. No event can stop the reader.

// DefaultMaxEventBytes is the default of Config.MaxEventBytes: 64 MiB. Large
// enough for the rows applications really store (documents, JSON blobs,
// images of tens of megabytes go through whole, as objects), small enough
// that the memory one event takes in the reader (its JSON, beside the WAL
// record PostgreSQL sent) and in each gateway that resolves it stays a
// small multiple of a hundred megabytes, and that a client on a slow link
// receives it within the gateway's write timeout.
const DefaultMaxEventBytes = 64 << 20

// keptBufferBytes bounds the encoding buffer a reader keeps between events:
// a buffer grown by one large event is dropped after it, so that memory
// returns to what ordinary events need.
const keptBufferBytes = 1 << 20

// eventBuf is the scratch one publishing loop encodes its events in.
type eventBuf struct {
	buf  []byte // the event
	ids  []byte // its id
	head []byte // a claim's or a truncated event's envelope, a dead-letter record
	// whole: the last event was published whole, and buf holds it.
	whole bool
	// hold: publishChange leaves the buffers to the caller, which calls
	// release once it has read buf.
	hold bool
}

// release drops buffers grown past keptBufferBytes.
func (e *eventBuf) release() {
	if cap(e.buf) > keptBufferBytes {
		e.buf = nil
	}
	if cap(e.head) > keptBufferBytes {
		e.head = nil
	}
}

// oversize is the reader's state for events too large for one message:
// the payload bucket and the dead-letter stream, opened on first need.
type oversize struct {
	mu         sync.Mutex
	store      *stream.PayloadStore
	deadLetter string // the dead-letter stream's name, once it exists
}

// reset forgets the bucket, so that the next session opens it again with
// the stream's settings of the moment.
func (o *oversize) reset() {
	o.mu.Lock()
	o.store = nil
	o.mu.Unlock()
}

// publishChange encodes change c of tbl and publishes it on subject with
// pub, whatever its size (see the top of this file), and returns its
// publisher sequence.
func (r *Reader) publishChange(ctx context.Context, pub *stream.Publisher, subject string, tbl *schema.Table, txn *schema.Txn, c *schema.Change, e *eventBuf) (uint64, error) {
	e.ids = txn.AppendID(e.ids[:0], c.Ordinal)
	id := string(e.ids)
	var size int
	e.whole = false
	e.buf, size = schema.AppendEventLimited(e.buf[:0], r.db, tbl, txn, c, r.cfg.MaxEventBytes)
	marked := markEvent(tbl, c)
	if size <= r.cfg.MaxEventBytes && fitsEvent(pub, marked, id, size) {
		seq, err := publishEvent(ctx, pub, marked, subject, id, e.buf)
		e.whole = err == nil
		if !e.hold {
			e.release()
		}
		if err != nil {
			return 0, fmt.Errorf("publish %s %s: %w", c.Op, tbl.QualifiedName(), err)
		}
		return seq, nil
	}
	seq, err := r.publishOversize(ctx, pub, marked, subject, id, tbl, txn, c, e, size)
	if !e.hold {
		e.release()
	}
	if err != nil {
		return 0, fmt.Errorf("publish %s %s (event %s of %d bytes): %w", c.Op, tbl.QualifiedName(), id, size, err)
	}
	return seq, nil
}

// publishOversize publishes an event that does not fit in one message: as
// a claim when it is within MaxEventBytes (e.buf holds it then), else
// truncated, with a dead-letter record.
func (r *Reader) publishOversize(ctx context.Context, pub *stream.Publisher, marked bool, subject, id string, tbl *schema.Table, txn *schema.Txn, c *schema.Change, e *eventBuf, size int) (uint64, error) {
	// The key is most often a few bytes, but a table whose key is every
	// column (REPLICA IDENTITY FULL without a primary key or unique index)
	// has the whole row as its key: then the envelope may not fit in a
	// message even without the rows, and NATS would refuse it at every
	// attempt, stopping the stream there. Such a message leaves the key
	// out and says so.
	e.head = schema.AppendEventHeadWithoutKey(e.head[:0], r.db, tbl, txn, c)
	top := len(e.head)
	e.head = append(e.head, `,"key":`...)
	e.head = schema.AppendEventKey(e.head, tbl, c)
	keyLen := len(e.head) - top - len(`,"key":`)
	withoutKey := func() {
		e.head = append(e.head[:top], `,"`+keyLeftOutMember+`":true`...)
	}
	if size <= r.cfg.MaxEventBytes {
		// The object first: the stream never holds a claim to nothing.
		claim, err := r.storePayload(ctx, id, e.buf)
		if err != nil {
			return 0, err
		}
		claimed := func() {
			e.head = append(e.head, `,"`+stream.ClaimMember+`":`...)
			e.head = stream.AppendClaim(e.head, claim)
			e.head = append(e.head, '}')
		}
		claimed()
		if !fitsEvent(pub, marked, id, len(e.head)) {
			// The object holds the event, key included.
			withoutKey()
			claimed()
			r.log.Warn("the key of an event stored as an object is too large for a message: its claim leaves the key out",
				"table", tbl.QualifiedName(), "id", id, "key_bytes", keyLen, "max_payload", r.nc.MaxPayload())
		}
		r.m.oversize.WithLabelValues("claim").Inc()
		r.log.Debug("event larger than NATS's maximum payload stored as an object; the stream carries its claim",
			"table", tbl.QualifiedName(), "id", id, "size", size, "max_payload", r.nc.MaxPayload())
		return publishEvent(ctx, pub, marked, subject, id, e.head)
	}

	reason := "event of " + strconv.Itoa(size) + " bytes is larger than the reader's limit of " + strconv.Itoa(r.cfg.MaxEventBytes) +
		" bytes: published without data, old and unchanged"
	recordTail := append([]byte(nil), `,"size":`...)
	recordTail = strconv.AppendInt(recordTail, int64(size), 10)
	recordTail = append(recordTail, `,"reason":`...)
	recordTail = jsonx.AppendString(recordTail, reason)
	recordTail = append(recordTail, '}')
	const truncated = `,"truncated":true}`
	// The dead-letter record goes to the same server, under the same
	// maximum payload, so the larger of the two decides.
	keyLogged := "(left out: " + strconv.Itoa(keyLen) + " bytes)"
	if fitsEvent(pub, marked, id, len(e.head)+max(len(recordTail), len(truncated))) {
		keyLogged = string(e.head[len(e.head)-keyLen:])
	} else {
		withoutKey()
	}
	record := append(append([]byte(nil), e.head...), recordTail...)
	if err := r.publishDeadLetter(ctx, stream.DeadLetterSubject(r.prefix, r.db, tbl.Schema, tbl.Name), id, record); err != nil {
		return 0, err
	}
	r.log.Warn("event larger than the reader's limit published without its rows; the dead-letter stream has a record of it",
		"table", tbl.QualifiedName(), "key", keyLogged, "id", id, "size", size, "limit", r.cfg.MaxEventBytes)
	e.head = append(e.head, truncated...)
	r.m.oversize.WithLabelValues("truncated").Inc()
	return publishEvent(ctx, pub, marked, subject, id, e.head)
}

// keyLeftOutMember is the envelope member that says a claim or a truncated
// event has no "key" because the key alone does not fit in a message.
const keyLeftOutMember = "key_left_out"

// deadLetterTopicMessage records, instead of publishing it, a custom topic
// message too large for one NATS message: its content is stored as an
// object when within MaxEventBytes, and the dead-letter record claims it.
// A topic message is the application's own JSON, with no envelope that
// could carry a claim.
func (r *Reader) deadLetterTopicMessage(ctx context.Context, topic, id string, lsn uint64, content []byte) error {
	record := append([]byte(nil), `{"id":`...)
	record = jsonx.AppendString(record, id)
	record = append(record, `,"db":`...)
	record = jsonx.AppendString(record, r.db)
	record = append(record, `,"topic":`...)
	record = jsonx.AppendString(record, topic)
	record = append(record, `,"lsn":"`...)
	record = schema.AppendLSN(record, lsn)
	record = append(record, `","size":`...)
	record = strconv.AppendInt(record, int64(len(content)), 10)
	var reason string
	if len(content) <= r.cfg.MaxEventBytes {
		claim, err := r.storePayload(ctx, id, content)
		if err != nil {
			return fmt.Errorf("store message %s of topic %s: %w", id, topic, err)
		}
		record = append(record, `,"`+stream.ClaimMember+`":`...)
		record = stream.AppendClaim(record, claim)
		reason = "message of " + strconv.Itoa(len(content)) + " bytes is larger than NATS's maximum payload: not published; the claim holds it"
	} else {
		reason = "message of " + strconv.Itoa(len(content)) + " bytes is larger than the reader's limit of " + strconv.Itoa(r.cfg.MaxEventBytes) + " bytes: not published"
	}
	record = append(record, `,"reason":`...)
	record = jsonx.AppendString(record, reason)
	record = append(record, '}')
	if err := r.publishDeadLetter(ctx, stream.DeadLetterTopicSubject(r.prefix, topic), id, record); err != nil {
		return fmt.Errorf("dead-letter message %s of topic %s: %w", id, topic, err)
	}
	r.log.Warn("custom topic message too large to publish; the dead-letter stream has a record of it",
		"topic", topic, "id", id, "size", len(content), "max_payload", r.nc.MaxPayload(), "limit", r.cfg.MaxEventBytes)
	r.m.oversize.WithLabelValues("topic_dead_letter").Inc()
	return nil
}

// storePayload stores the full event (or message) id as an object, and
// returns the claim that names it. A replay stores it again under the same
// name, replacing it.
func (r *Reader) storePayload(ctx context.Context, id string, data []byte) (stream.Claim, error) {
	store, err := r.payloadStore(ctx)
	if err != nil {
		return stream.Claim{}, err
	}
	name := stream.PayloadObjectName(r.db, id)
	if err := store.Put(ctx, name, data); err != nil {
		return stream.Claim{}, err
	}
	return stream.Claim{Bucket: store.Bucket(), Object: name, Size: int64(len(data))}, nil
}

// payloadStore opens the payload bucket, creating it when missing, with
// the event stream's replicas, storage and max age.
func (r *Reader) payloadStore(ctx context.Context) (*stream.PayloadStore, error) {
	o := &r.big
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.store != nil {
		return o.store, nil
	}
	str, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("read the settings of stream %s for the payload bucket: %w", r.cfg.Stream, err)
	}
	sc := str.CachedInfo().Config
	store, err := stream.OpenPayloadStore(ctx, r.js, stream.PayloadStoreConfig{
		Bucket: r.cfg.PayloadBucket, Replicas: sc.Replicas, MaxAge: sc.MaxAge, Storage: sc.Storage, MaxPayload: r.nc.MaxPayload(),
	})
	if err != nil {
		return nil, err
	}
	o.store = store
	return store, nil
}

// publishDeadLetter stores a dead-letter record, creating the dead-letter
// stream when missing, and returns once JetStream has stored it. id is its
// Nats-Msg-Id, so that a replay inside the duplicate window adds nothing.
func (r *Reader) publishDeadLetter(ctx context.Context, subject, id string, record []byte) error {
	o := &r.big
	o.mu.Lock()
	name := o.deadLetter
	o.mu.Unlock()
	if name == "" {
		str, err := r.js.Stream(ctx, r.cfg.Stream)
		if err != nil {
			return fmt.Errorf("read the settings of stream %s for its dead-letter stream: %w", r.cfg.Stream, err)
		}
		sc := str.CachedInfo().Config
		name, err = stream.EnsureDeadLetterStream(ctx, r.js, stream.DeadLetterConfig{
			EventStream: r.cfg.Stream, Prefix: r.prefix, Replicas: sc.Replicas, Storage: sc.Storage,
		})
		if err != nil {
			return err
		}
		o.mu.Lock()
		o.deadLetter = name
		o.mu.Unlock()
	}
	msg := &nats.Msg{Subject: subject, Data: record, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := r.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(name)); err != nil {
		return fmt.Errorf("store dead-letter record on %s: %w", subject, err)
	}
	return nil
}

// markEvent reports whether the event of change c of tbl carries
// stream.KeyDeferrableHeader: a create, update or delete of a table whose
// key is a deferrable primary key.
func markEvent(tbl *schema.Table, c *schema.Change) bool {
	switch c.Op {
	case schema.OpCreate, schema.OpUpdate, schema.OpDelete:
		return tbl.KeyDeferrable
	}
	return false
}

// fitsEvent is pub's Fits for an event, marked or not (markEvent).
func fitsEvent(pub *stream.Publisher, marked bool, id string, n int) bool {
	if marked {
		return pub.FitsMarked(id, n)
	}
	return pub.Fits(id, n)
}

// publishEvent publishes an event with pub, marked or not (markEvent).
func publishEvent(ctx context.Context, pub *stream.Publisher, marked bool, subject, id string, data []byte) (uint64, error) {
	if marked {
		return pub.PublishMarked(ctx, subject, id, data)
	}
	return pub.Publish(ctx, subject, id, data)
}
