package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// TestOversizeEventDeadLetteredAndReplayed: an event larger than a NATS
// message (its claim resolved for the receiver) that the receiver keeps
// refusing is dead-lettered whole, and delivery goes on with the next
// event; a replay sends the whole event again, and once it is delivered
// nothing of it is left. A dead letter is a NATS message too: its body
// cannot go into the record as the body of a small event does.
func TestOversizeEventDeadLetteredAndReplayed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{stock: true})
	// Larger than the server's maximum payload: the reader stores the
	// row's event as a claim, and the dead letter cannot hold it either.
	bigStatus := int(e.nats.NC.MaxPayload()) + 100_000
	r := newReceiver(t)
	var refuse atomic.Bool
	refuse.Store(true)
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		if refuse.Load() && len(d.Body) > bigStatus {
			return 503, nil, 0
		}
		return 200, nil, 0
	})
	ep := e.endpoint("big", r.URL(), func(w *endpoint.Webhook) {
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Second)}
	})
	e.waitConsumer(ep)
	e.insertOrders(1, 1)
	e.exec(`INSERT INTO orders VALUES (2, repeat('x', $1), 20)`, bigStatus)
	e.insertOrders(3, 3)
	got := r.waitAccepted(t, 2, time.Minute)
	if a, b := got[0].Data["id"].(float64), got[1].Data["id"].(float64); a != 1 || b != 3 {
		t.Fatalf("accepted rows %v and %v, want 1 and 3", a, b)
	}
	ctx := context.Background()
	dls, err := e.mgr.DeadLetters().List(ctx, ep.ID, 0, 10)
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters %+v, %v; want one", dls, err)
	}
	c, ok, err := stream.ParseClaim(dls[0].Body)
	if err != nil || !ok || c.Bucket != e.mgr.DeadLetters().BodyBucket() || c.Size <= int64(bigStatus) {
		t.Fatalf("dead letter body %.300s: claim %+v, %v, %v; want a claim of the whole envelope in %s", dls[0].Body, c, ok, err, e.mgr.DeadLetters().BodyBucket())
	}
	one, err := e.mgr.DeadLetters().Get(ctx, ep.ID, dls[0].Seq)
	if err != nil || one.BodyObject == "" || one.BodyObject != dls[0].BodyObject || !bytes.Equal(one.Body, dls[0].Body) {
		t.Fatalf("Get(%d) = %+v, %v; want the listed dead letter, its body in an object", dls[0].Seq, one, err)
	}
	if _, err := e.mgr.DeadLetters().Get(ctx, "01J0000000000000000000000", dls[0].Seq); !errors.Is(err, ErrOtherEndpoint) {
		t.Fatalf("Get through another endpoint: %v, want ErrOtherEndpoint", err)
	}
	body, err := e.mgr.DeadLetters().Body(ctx, one)
	if err != nil {
		t.Fatalf("read the dead letter's body: %v", err)
	}
	if evs := parseBody(t, body); len(evs) != 1 || evs[0].ID != dls[0].EventID || len(evs[0].Data["status"].(string)) != bigStatus {
		t.Fatalf("dead letter body of %d bytes is not the whole event %s", len(body), dls[0].EventID)
	}

	refuse.Store(false)
	if n, err := e.mgr.DeadLetters().Replay(ctx, ep.ID); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	got = r.waitAccepted(t, 3, time.Minute)
	if got[2].Data["id"].(float64) != 2 || got[2].Data["status"].(string) != strings.Repeat("x", bigStatus) {
		t.Fatalf("replayed row %v with a status of %d bytes, want row 2 whole", got[2].Data["id"], len(got[2].Data["status"].(string)))
	}
	waitFor(t, 10*time.Second, "the replayed body's object to be deleted", func() bool {
		_, err := e.mgr.DeadLetters().Body(ctx, dls[0])
		return err != nil && strings.Contains(err.Error(), "no longer stored")
	})
	if dls, _ := e.mgr.DeadLetters().List(ctx, ep.ID, 0, 10); len(dls) != 0 {
		t.Fatalf("%d dead letters left after the replay", len(dls))
	}
	if _, err := e.mgr.DeadLetters().Get(ctx, ep.ID, dls[0].Seq); !errors.Is(err, ErrNoDeadLetter) {
		t.Fatalf("Get of a replayed dead letter: %v, want ErrNoDeadLetter", err)
	}
}

// TestClaimReadRetriedAcrossOutage: when the object of a claimed event
// cannot be read (NATS is away), the endpoint waits and reads it once NATS
// is back, rather than sending the receiver the claim, which it could not
// resolve; only an object that is gone leaves the event as received.
func TestClaimReadRetriedAcrossOutage(t *testing.T) {
	t.Parallel()
	n := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ps, err := stream.OpenPayloadStore(ctx, n.JS, stream.PayloadStoreConfig{MaxPayload: n.NC.MaxPayload()})
	if err != nil {
		t.Fatal(err)
	}
	full := []byte(`{"id":"1","data":{"pad":"` + strings.Repeat("y", 1<<20) + `"}}`)
	if err := ps.Put(ctx, "db/1", full); err != nil {
		t.Fatal(err)
	}
	c := stream.Claim{Bucket: ps.Bucket(), Object: "db/1", Size: int64(len(full))}
	received := stream.AppendClaim([]byte(`{"id":"1","claim":`), c)
	received = append(received, '}')
	lb := &logBuffer{}
	w := &worker{m: &Manager{resolver: stream.NewResolver(n.JS), log: slog.New(slog.NewTextHandler(lb, nil))}, id: "test"}
	w.entry.Store(&match.Entry{Endpoint: &endpoint.Endpoint{Name: "outage"}})

	n.Stop()
	restarted := make(chan struct{})
	t.Cleanup(func() { <-restarted }) // before the server's own cleanup
	go func() {
		defer close(restarted)
		time.Sleep(2 * time.Second)
		n.Restart()
	}()
	got, ok := w.resolveClaim(ctx, c, received, 1)
	if !ok || !bytes.Equal(got, full) {
		t.Fatalf("resolveClaim across an outage = %d bytes, %v; want the object's %d bytes\nlog:\n%s", len(got), ok, len(full), lb.String())
	}
	if !lb.contains("cannot read the object of a claimed event; retrying") {
		t.Fatalf("the read did not fail during the outage; log:\n%s", lb.String())
	}

	gone := stream.Claim{Bucket: ps.Bucket(), Object: "db/2", Size: 10}
	if got, ok := w.resolveClaim(ctx, gone, received, 2); !ok || !bytes.Equal(got, received) {
		t.Fatalf("resolveClaim of an object that is gone = %.100s, %v; want the event as received", got, ok)
	}
}

// TestBatchBytes: a batching endpoint's requests stay within its
// batch_bytes (the JSON array, brackets and commas counted), the default
// 1 MiB or its own, however large its rows: a batch stops before it would
// pass it, an event larger than it goes alone, and every event arrives
// once, in order. Each case has six rows in one transaction (two fit in a
// request, not three), then one larger than a request may be.
func TestBatchBytes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name          string
		set           int // batch_bytes, 0 for the default
		limit         int
		row, largeRow int
	}{
		{"default", 0, endpoint.DefaultBatchBytes, 400000, 1500000},
		{"set", 4 << 10, 4 << 10, 1500, 5000},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOptions{})
			r := newReceiver(t)
			// The first request is answered after 2 s, so that the rest
			// are waiting by then and batched: events sent as they come,
			// one per request, say nothing of the bound (a loaded machine
			// delivered them so once).
			var answered atomic.Int32
			r.setAnswer(func(*delivery, int) (int, map[string]string, time.Duration) {
				if answered.Add(1) == 1 {
					return 204, nil, 2 * time.Second
				}
				return 204, nil, 0
			})
			ep := e.endpoint("batches-"+c.name, r.URL(), func(w *endpoint.Webhook) { w.Batch = 10; w.BatchBytes = c.set })
			e.waitConsumer(ep)
			const rows = 7
			e.exec(fmt.Sprintf(`INSERT INTO orders SELECT g, repeat('x', %d), g FROM generate_series(1, 6) g`, c.row))
			e.exec(fmt.Sprintf(`INSERT INTO orders VALUES (7, repeat('x', %d), 7)`, c.largeRow))
			got := r.waitAccepted(t, rows, time.Minute)
			checkOrder(t, got, rows)
			reqs := r.requests()
			most := 0
			for _, d := range reqs {
				n := countEnvelopes(d.Body)
				if len(d.Body) > c.limit && n != 1 {
					t.Errorf("request %s of %d bytes holds %d events; want at most %d bytes, or one event", d.ID, len(d.Body), n, c.limit)
				}
				most = max(most, n)
			}
			if len(reqs) < 4 {
				t.Errorf("%d requests for %d events; want at least 4", len(reqs), rows)
			}
			if most < 2 {
				t.Errorf("no request of %d holds more than one event: the batch bound is not what stopped them", len(reqs))
			}
		})
	}
}

// TestForgedClaimNotResolved: an event in the stream whose claim the
// reader did not write (another event's object, published by another hand)
// is delivered as received: the endpoint never sends the receiver an object
// that is not this event's.
func TestForgedClaimNotResolved(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("forged", r.URL(), nil)
	e.waitConsumer(ep)
	e.insertOrders(1, 1)
	got := r.waitAccepted(t, 1, time.Minute)
	db := got[0].DB
	ctx := context.Background()
	ps, err := stream.OpenPayloadStore(ctx, e.nats.JS, stream.PayloadStoreConfig{MaxPayload: e.nats.NC.MaxPayload()})
	if err != nil {
		t.Fatal(err)
	}
	// The object holds an event as the reader writes it (row 1's, with
	// another status), as another event's large row would be.
	secret := strings.Replace(string(r.requests()[0].Body), `"status":"open"`, `"status":"secret"`, 1)
	other := stream.PayloadObjectName(db, "00000000FFFFFFFF-0001")
	if err := ps.Put(ctx, other, []byte(secret)); err != nil {
		t.Fatal(err)
	}
	forged := stream.AppendClaim([]byte(`{"id":"00000000FFFFFFFE-0001","op":"create","db":"`+db+`","schema":"public","table":"orders","key":{"id":2},"claim":`),
		stream.Claim{Bucket: ps.Bucket(), Object: other, Size: int64(len(secret))})
	forged = append(forged, '}')
	if _, err := e.nats.JS.Publish(ctx, stream.ChangeSubject(testPrefix, db, "public", "orders", "create"), forged); err != nil {
		t.Fatal(err)
	}
	// Row 3 comes after the forged event in the stream: once it is
	// accepted, the forged one was handled (sent, or passed over).
	e.insertOrders(3, 3)
	waitFor(t, time.Minute, "row 3 accepted", func() bool {
		for _, ev := range r.accepted(t) {
			if id, _ := ev.Data["id"].(float64); id == 3 {
				return true
			}
		}
		return false
	})
	for _, d := range r.requests() {
		if strings.Contains(string(d.Body), "secret") {
			t.Fatalf("the receiver got the object a forged claim names: %s", d.Body)
		}
	}
	if !e.log.contains("one the reader does not write; delivered as received") {
		t.Fatal("the forged claim was not reported")
	}
}

// TestDeadLetterBodyClaimChecked: a record whose body is not the claim of
// the object its header names (written by another hand) gets no object
// read for it.
func TestDeadLetterBodyClaimChecked(t *testing.T) {
	d := &DeadLetters{name: "TABLECAST_DEADLETTER"}
	claim := func(bucket, object string) []byte {
		b := stream.AppendClaim([]byte(`{"claim":`), stream.Claim{Bucket: bucket, Object: object, Size: 10})
		return append(b, '}')
	}
	for name, body := range map[string][]byte{
		"another bucket": claim(stream.DefaultPayloadBucket, "webhook-x"),
		"another object": claim(d.BodyBucket(), "webhook-y"),
		"no claim":       []byte(`{"id":"1"}`),
		"not JSON":       []byte(`claim`),
	} {
		if _, err := d.objectBody(context.Background(), body, "webhook-x"); !errors.Is(err, ErrBodyClaim) {
			t.Errorf("%s: %v, want ErrBodyClaim", name, err)
		}
	}
}
