package webhook

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// TestNoDeadLetterBodyLeftBehind: the object of a dead letter's body that
// no record names, as a process that stopped between storing the object
// and publishing its record leaves it, is deleted once it is
// OrphanBodyAge old, while the objects that a dead letter or a queued
// replay names stay; a replay refused again leaves one object, the new
// record's; and deleting an endpoint deletes its dead letters, its
// replays and their objects, those of no record included.
func TestNoDeadLetterBodyLeftBehind(t *testing.T) {
	t.Parallel()
	const age = 2 * time.Second
	e := newEnv(t, envOptions{orphanEvery: 200 * time.Millisecond, orphanAge: age, stock: true})
	big := int(e.nats.NC.MaxPayload()) + 10_000
	r := newReceiver(t)
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		if len(d.Body) > big {
			return 503, nil, 0
		}
		return 200, nil, 0
	})
	ep := e.endpoint("orphans", r.URL(), func(w *endpoint.Webhook) {
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Second)}
	})
	e.waitConsumer(ep)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := e.mgr.DeadLetters()

	// A large row dead-lettered: its record names its object.
	e.exec(`INSERT INTO orders VALUES (1, repeat('x', $1), 10)`, big)
	var dl DeadLetter
	waitFor(t, time.Minute, "the large row's dead letter", func() bool {
		dls, err := d.List(ctx, ep.ID, 0, 10)
		if err != nil || len(dls) == 0 {
			return false
		}
		dl = dls[0]
		return true
	})
	if dl.BodyObject == "" || !strings.HasPrefix(dl.BodyObject, bodyObjectPrefix(ep.ID)) {
		t.Fatalf("dead letter's object %q; want one named after the endpoint", dl.BodyObject)
	}
	ps, err := stream.OpenPayloadStore(ctx, e.nats.JS, stream.PayloadStoreConfig{Bucket: d.BodyBucket(), MaxPayload: e.nats.NC.MaxPayload()})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"id":"x","pad":"` + strings.Repeat("y", big) + `"}`)
	// What a process leaves that stopped after storing the body of the
	// event's dead letter, before its record: the object alone (its event,
	// redelivered, gets an object of its own, named by its new first
	// attempt).
	orphan := bodyObjectName(ep.ID, dl.EventID, time.Now().Add(-time.Hour))
	if err := ps.Put(ctx, orphan, body); err != nil {
		t.Fatal(err)
	}
	// A replay queued (for an endpoint no process delivers) names its
	// object as the dead letter did.
	const queuedFor = "01J0000000000000000000000"
	queued := bodyObjectName(queuedFor, "E9", time.Now())
	if err := ps.Put(ctx, queued, body); err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: d.ReplaySubject(queuedFor), Data: []byte(`{"claim":{}}`), Header: nats.Header{}}
	msg.Header.Set(HeaderBodyObject, queued)
	if _, err := e.nats.JS.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}

	// Younger than the age: kept.
	if n, err := d.deleteOrphanBodies(ctx, time.Hour, time.Now()); err != nil || n != 0 {
		t.Fatalf("deleteOrphanBodies of objects younger than its age = %d, %v; want none deleted", n, err)
	}
	// Once old enough, the Manager's pass deletes it, and only it.
	waitFor(t, 30*time.Second, "the object no record names to be deleted", func() bool {
		return !objectExists(t, e.nats.JS, d.BodyBucket(), orphan)
	})
	for _, o := range []string{dl.BodyObject, queued} {
		if !objectExists(t, e.nats.JS, d.BodyBucket(), o) {
			t.Fatalf("object %s, named by a record, was deleted", o)
		}
	}
	// (A read that times out on a busy machine is tried again; one that
	// finds the object gone fails.)
	waitFor(t, 30*time.Second, "the dead letter's body to be read", func() bool {
		got, err := d.Body(ctx, dl)
		if errors.Is(err, stream.ErrClaimGone) {
			t.Fatalf("the dead letter's body after the pass: %v", err)
		}
		return err == nil && len(got) > big
	})

	// Replayed and refused again: dead-lettered again with an object of
	// its own, and the replayed record's object deleted.
	if n, err := d.Replay(ctx, ep.ID); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	old := dl
	waitFor(t, time.Minute, "the replayed event dead-lettered again", func() bool {
		dls, err := d.List(ctx, ep.ID, 0, 10)
		if err != nil || len(dls) != 1 || dls[0].Seq == old.Seq {
			return false
		}
		dl = dls[0]
		return true
	})
	if dl.BodyObject == "" || dl.BodyObject == old.BodyObject || dl.EventID != old.EventID {
		t.Fatalf("dead-lettered again with object %q (event %s); want another object than %q for event %s", dl.BodyObject, dl.EventID, old.BodyObject, old.EventID)
	}
	waitFor(t, 30*time.Second, "the replayed record's object to be deleted", func() bool {
		return !objectExists(t, e.nats.JS, d.BodyBucket(), old.BodyObject)
	})
	waitFor(t, 30*time.Second, "the new dead letter's body to be read", func() bool {
		got, err := d.Body(ctx, dl)
		if errors.Is(err, stream.ErrClaimGone) {
			t.Fatalf("the new dead letter's body: %v", err)
		}
		return err == nil && len(got) > big
	})

	// Deleting the endpoint: its dead letter, and its objects (another
	// orphan, younger than the age, too) go; the other endpoint's stay.
	young := bodyObjectName(ep.ID, "E2", time.Now())
	if err := ps.Put(ctx, young, body); err != nil {
		t.Fatal(err)
	}
	if err := e.store.DeleteEndpoint(ctx, ep.ID, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the deleted endpoint's dead letters and objects to go", func() bool {
		dls, err := d.List(ctx, ep.ID, 0, 10)
		return err == nil && len(dls) == 0 &&
			!objectExists(t, e.nats.JS, d.BodyBucket(), dl.BodyObject) && !objectExists(t, e.nats.JS, d.BodyBucket(), young)
	})
	if !objectExists(t, e.nats.JS, d.BodyBucket(), queued) {
		t.Fatal("deleting an endpoint deleted another endpoint's object")
	}
}

func objectExists(t *testing.T, js jetstream.JetStream, bucket, name string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obs, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	_, err = obs.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// TestNamedBodiesReadsEveryRecord: the pass that finds the objects named
// by records reads every dead letter and queued replay, across many
// pulls and past records deleted among them: an object it missed would
// be deleted under its record.
func TestNamedBodiesReadsEveryRecord(t *testing.T) {
	t.Parallel()
	n := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := OpenDeadLetters(ctx, n.JS, "TABLECAST", testPrefix, 1)
	if err != nil {
		t.Fatal(err)
	}
	if named, err := d.namedBodies(ctx); err != nil || len(named) != 0 {
		t.Fatalf("namedBodies of no records = %v, %v", named, err)
	}
	want := map[string]bool{}
	var deleted []uint64
	for i := range 2500 {
		subj := d.Subject("01J000000000000000000000A" + string(rune('A'+i%3)))
		if i%4 == 0 {
			subj = d.ReplaySubject("01J000000000000000000000B")
		}
		msg := &nats.Msg{Subject: subj, Data: []byte(`{"claim":{}}`), Header: nats.Header{}}
		name := "webhook-x-" + strconv.Itoa(i)
		if i%5 != 0 { // some records hold their body themselves
			msg.Header.Set(HeaderBodyObject, name)
		}
		ack, err := n.JS.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case i%7 == 0:
			deleted = append(deleted, ack.Sequence)
		case i%5 != 0:
			want[name] = true
		}
	}
	for _, seq := range deleted {
		if err := d.str.DeleteMsg(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	// The last record deleted too: the pass must not wait for it.
	last, err := n.JS.PublishMsg(ctx, &nats.Msg{Subject: d.Subject("01J000000000000000000000AZ"), Header: nats.Header{HeaderBodyObject: {"gone"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.str.DeleteMsg(ctx, last.Sequence); err != nil {
		t.Fatal(err)
	}
	named, err := d.namedBodies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(named) != len(want) {
		t.Errorf("namedBodies found %d objects, want %d", len(named), len(want))
	}
	for name := range want {
		if !named[name] {
			t.Fatalf("namedBodies missed %s", name)
		}
	}
	if named["gone"] {
		t.Fatal("namedBodies found the object of a deleted record")
	}
}

// BenchmarkNamedBodies: the cost of the pass every Manager makes each
// OrphanBodyEvery over the webhooks' dead letters (10,000 of them, every
// one naming an object), when the body bucket holds an object old enough.
func BenchmarkNamedBodies(b *testing.B) {
	n := natstest.Start(b)
	ctx := context.Background()
	d, err := OpenDeadLetters(ctx, n.JS, "TABLECAST", testPrefix, 1)
	if err != nil {
		b.Fatal(err)
	}
	const records = 10_000
	for i := range records {
		msg := &nats.Msg{Subject: d.Subject("01J000000000000000000000AA"), Data: []byte(`{"claim":{}}`), Header: nats.Header{}}
		msg.Header.Set(HeaderBodyObject, "webhook-x-"+strconv.Itoa(i))
		if _, err := n.JS.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
	}
	<-n.JS.PublishAsyncComplete()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		named, err := d.namedBodies(ctx)
		if err != nil || len(named) != records {
			b.Fatalf("namedBodies = %d, %v", len(named), err)
		}
	}
}

// TestNamedBodiesAcrossRequeues: a pass that runs while a record naming
// an object is moved (a replay queued: the new record published, then the
// old one deleted; a replay dead-lettered again likewise) still finds the
// object. The server's count of what a consumer has pending can fall
// short of what is left when a record is deleted as the consumer starts,
// so a pass that ended on that count missed the moved record, and the
// object was deleted under it.
func TestNamedBodiesAcrossRequeues(t *testing.T) {
	t.Parallel()
	n := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := OpenDeadLetters(ctx, n.JS, "TABLECAST", testPrefix, 1)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(subj, object string) uint64 {
		msg := &nats.Msg{Subject: subj, Data: []byte(`{"claim":{}}`), Header: nats.Header{}}
		msg.Header.Set(HeaderBodyObject, object)
		ack, err := n.JS.PublishMsg(ctx, msg)
		if err != nil {
			t.Error(err)
			return 0
		}
		return ack.Sequence
	}
	// Records that stay, before and after the moving one.
	publish(d.Subject("01J000000000000000000000AA"), "still-1")
	seq := publish(d.Subject("01J000000000000000000000AA"), "moving")
	publish(d.ReplaySubject("01J000000000000000000000AB"), "still-2")

	stop := make(chan struct{})
	moved := make(chan int, 1)
	go func() {
		moves := 0
		defer func() { moved <- moves }()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			subj := d.ReplaySubject("01J000000000000000000000AA")
			if i%2 == 1 {
				subj = d.Subject("01J000000000000000000000AA")
			}
			next := publish(subj, "moving")
			if next == 0 {
				return
			}
			if err := d.str.DeleteMsg(ctx, seq); err != nil {
				t.Error(err)
				return
			}
			seq = next
			moves++
		}
	}()
	const passes = 300
	missed := 0
	for range passes {
		named, err := d.namedBodies(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !named["moving"] {
			missed++
		}
		if !named["still-1"] || !named["still-2"] {
			t.Fatalf("a pass missed a record that stays: %v", named)
		}
	}
	close(stop)
	t.Logf("%d moves during %d passes", <-moved, passes)
	if missed > 0 {
		t.Fatalf("%d of %d passes missed the record naming the moved object", missed, passes)
	}
}
