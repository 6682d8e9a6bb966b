package webhook

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The objects of BodyBucket each belong to one dead-letter record, which
// names it (HeaderBodyObject), and go with it: a replay delivered deletes
// its record's object, and deleting an endpoint deletes its dead letters
// and their objects (purgeEndpoint). Two things can still leave an object
// that no record names: a process that dies between storing the object and
// publishing its record (the event, redelivered, gets an object of its own:
// the name holds the first attempt's time), and an endpoint deleted while
// no process delivering webhooks ran. deleteOrphanBodies, run by every
// Manager (DefaultOrphanBodyEvery), deletes those once they are older than
// OrphanBodyAge.
//
// Why not a name fixed by the endpoint and event, so that the redelivered
// event overwrites the same object? That leaves two cases open: the
// redelivered event may be delivered rather than dead-lettered again, and
// then nothing overwrites or deletes the object; and an event whose record
// was published but not acknowledged is dead-lettered twice, two records
// sharing one object, so that replaying one would delete the other's body.
// An object per record, and a sweep of those no record names, holds in
// every order of events.

// bodyObjectName is the object of a dead letter's body, the Nats-Msg-Id of
// its record too: the endpoint, the event, and the time of the event's
// first attempt in the process that dead-lettered it.
func bodyObjectName(endpointID, eventID string, first time.Time) string {
	return bodyObjectPrefix(endpointID) + eventID + "-" + strconv.FormatInt(first.UnixNano(), 36)
}

// bodyObjectPrefix begins the names of an endpoint's body objects (an
// endpoint id holds no "-").
func bodyObjectPrefix(endpointID string) string { return "webhook-" + endpointID + "-" }

// existingBodies opens BodyBucket, nil when there is none (no dead letter
// was ever too large): looking for objects creates no bucket.
func (d *DeadLetters) existingBodies(ctx context.Context) (jetstream.ObjectStore, error) {
	obs, err := d.js.ObjectStore(ctx, d.BodyBucket())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", d.BodyBucket(), err)
	}
	return obs, nil
}

// bodyObjects lists the objects of BodyBucket (none without the bucket).
func (d *DeadLetters) bodyObjects(ctx context.Context) (jetstream.ObjectStore, []*jetstream.ObjectInfo, error) {
	obs, err := d.existingBodies(ctx)
	if obs == nil || err != nil {
		return nil, nil, err
	}
	infos, err := obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return obs, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list the objects of bucket %s: %w", d.BodyBucket(), err)
	}
	return obs, infos, nil
}

// purgeEndpoint removes the dead letters of an endpoint that is gone,
// those queued for its replay, and their body objects (any named after
// the endpoint, left by a crash too). Its records go first: an object is
// never deleted while a record names it.
func (d *DeadLetters) purgeEndpoint(ctx context.Context, endpointID string) error {
	for _, subj := range []string{d.Subject(endpointID), d.ReplaySubject(endpointID)} {
		if err := d.str.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return fmt.Errorf("purge the dead letters on %s: %w", subj, err)
		}
	}
	obs, infos, err := d.bodyObjects(ctx)
	if err != nil {
		return err
	}
	prefix := bodyObjectPrefix(endpointID)
	for _, info := range infos {
		if !strings.HasPrefix(info.Name, prefix) {
			continue
		}
		if err := obs.Delete(ctx, info.Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("delete object %s of a deleted endpoint's dead letter: %w", info.Name, err)
		}
	}
	return nil
}

// namedBodies returns the objects the webhooks' dead letters, and the
// replays queued, name: their headers only, read in one pass of a
// consumer of their own. Records published after the pass began are of
// objects stored since, younger than any OrphanBodyAge, or a record moved
// (requeue publishes the replay's record before it deletes the dead
// letter's), which the pass follows to the end of the stream.
//
// The pass ends on the stream's own word that it holds no record after
// the last one read, never on the consumer's count of what it has
// pending: the server keeps that count as records come and go, and it
// can fall short when a record is deleted as the consumer starts (a
// requeue, a replay delivered). Ending on it missed the moved record and
// deleted the object under it.
func (d *DeadLetters) namedBodies(ctx context.Context) (map[string]bool, error) {
	filters := []string{d.Subject("*"), d.ReplaySubject("*")}
	cons, err := d.str.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Description:       "tablecast: the objects webhook dead letters name",
		FilterSubjects:    filters,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		HeadersOnly:       true,
		MemoryStorage:     true,
		InactiveThreshold: time.Minute, // gone by itself if this process is
	})
	if err != nil {
		return nil, fmt.Errorf("read the dead letters of %s: %w", d.name, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = d.str.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	named := map[string]bool{}
	var last uint64 // the stream sequence of the last record read
	read := func(batch jetstream.MessageBatch) (int, error) {
		n := 0
		for msg := range batch.Messages() {
			n++
			if o := msg.Headers().Get(HeaderBodyObject); o != "" {
				named[o] = true
			}
			meta, err := msg.Metadata()
			if err != nil {
				return n, err
			}
			last = meta.Sequence.Stream
		}
		return n, batch.Error()
	}
	const pull = 1000
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// A pull that does not wait ends where the stream does (or at
		// once, when the consumer counts nothing pending).
		batch, err := cons.FetchNoWait(pull)
		if err != nil {
			return nil, fmt.Errorf("read the dead letters of %s: %w", d.name, err)
		}
		n, err := read(batch)
		if err != nil {
			return nil, fmt.Errorf("read the dead letters of %s: %w", d.name, err)
		}
		if n == pull {
			continue
		}
		more, err := d.recordAfter(ctx, filters, last)
		if err != nil || !more {
			return named, err
		}
		if n > 0 {
			continue
		}
		// The stream holds a record the consumer counts no more: a pull
		// that waits gets it (and every one after it, read to its end:
		// a pull left behind would take records from the next).
		batch, err = cons.Fetch(pull, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, fmt.Errorf("read the dead letters of %s: %w", d.name, err)
		}
		if _, err := read(batch); err != nil {
			return nil, fmt.Errorf("read the dead letters of %s: %w", d.name, err)
		}
	}
}

// recordAfter reports whether the dead-letter stream holds a record on
// one of subjects after the sequence seq, asking the stream's store
// itself.
func (d *DeadLetters) recordAfter(ctx context.Context, subjects []string, seq uint64) (bool, error) {
	for _, subj := range subjects {
		_, err := d.str.GetMsg(ctx, seq+1, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("look for dead letters on %s after %d in %s: %w", subj, seq, d.name, err)
		}
		return true, nil
	}
	return false, nil
}

// deleteOrphanBodies deletes the objects of BodyBucket stored at least
// age before now that no record names, and returns how many. The age
// leaves a process that stored an object the time to publish its record
// (its retries through a NATS outage included).
func (d *DeadLetters) deleteOrphanBodies(ctx context.Context, age time.Duration, now time.Time) (int, error) {
	obs, infos, err := d.bodyObjects(ctx)
	if err != nil || len(infos) == 0 {
		return 0, err
	}
	var old []string
	for _, info := range infos {
		if !info.Deleted && now.Sub(info.ModTime) >= age {
			old = append(old, info.Name)
		}
	}
	if len(old) == 0 {
		return 0, nil
	}
	named, err := d.namedBodies(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range old {
		if named[name] {
			continue
		}
		if err := obs.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return n, fmt.Errorf("delete object %s that no dead letter names: %w", name, err)
		}
		n++
	}
	return n, nil
}

// orphanBodies is one pass of deleteOrphanBodies, which Run makes at
// once and then every cfg.OrphanBodyEvery. Every process does: each pass
// is harmless beside another.
func (m *Manager) orphanBodies(ctx context.Context) {
	n, err := m.dl.deleteOrphanBodies(ctx, m.cfg.OrphanBodyAge, time.Now())
	switch {
	case err != nil && ctx.Err() == nil:
		m.log.Warn("cannot delete the dead letters' body objects that no record names; trying again later", "bucket", m.dl.BodyBucket(), "err", err, "retry_in", m.cfg.OrphanBodyEvery)
	case n > 0:
		m.log.Info("deleted dead letters' body objects that no record names (left by a process that stopped between storing one and its record)", "bucket", m.dl.BodyBucket(), "objects", n)
	}
}
