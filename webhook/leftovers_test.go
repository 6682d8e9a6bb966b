package webhook

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// TestLeftoversOfEndpointDeletedWhileNoneRan: an endpoint deleted while no
// Manager ran keeps its consumers, dead letters and queued replays until
// a Manager starts; its pass of leftovers then removes them (and the body
// objects named after the endpoint), counts and logs it, and leaves
// another endpoint's, which exists, as they were.
func TestLeftoversOfEndpointDeletedWhileNoneRan(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	r.setAnswer(func(*delivery, int) (int, map[string]string, time.Duration) { return 503, nil, 0 })
	failFast := func(w *endpoint.Webhook) {
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Second)}
	}
	gone := e.endpoint("gone", r.URL(), failFast)
	kept := e.endpoint("kept", r.URL(), failFast)
	e.waitConsumer(gone)
	e.waitConsumer(kept)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := e.mgr.DeadLetters()
	e.insertOrders(1, 2)
	eps := []*endpoint.Endpoint{gone, kept}
	for _, ep := range eps {
		waitFor(t, time.Minute, "two dead letters of "+ep.Name, func() bool {
			dls, err := d.List(ctx, ep.ID, 0, 10)
			return err == nil && len(dls) == 2
		})
	}
	// replayFirst queues the replay of ep's first dead letter.
	replayFirst := func(ep *endpoint.Endpoint) {
		t.Helper()
		dls, err := d.List(ctx, ep.ID, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := d.Replay(ctx, ep.ID, dls[0].Seq); err != nil || n != 1 {
			t.Fatalf("Replay = %d, %v", n, err)
		}
	}
	// A replay, refused again, gives each its replay consumer.
	for _, ep := range eps {
		replayFirst(ep)
	}
	for _, ep := range eps {
		waitFor(t, time.Minute, "the replay of "+ep.Name+" dead-lettered again", func() bool {
			return consumerExists(t, e.nats.JS, d.Stream(), replayConsumerName(ep.ID)) &&
				records(t, d, d.Subject(ep.ID)) == 2 && records(t, d, d.ReplaySubject(ep.ID)) == 0
		})
	}

	e.stopManager()
	// With no Manager running: a replay queued for each, an object named
	// after each, and one endpoint deleted.
	ps, err := stream.OpenPayloadStore(ctx, e.nats.JS, stream.PayloadStoreConfig{Bucket: d.BodyBucket(), MaxPayload: e.nats.NC.MaxPayload()})
	if err != nil {
		t.Fatal(err)
	}
	objects := map[string]string{}
	for _, ep := range eps {
		replayFirst(ep)
		objects[ep.ID] = bodyObjectName(ep.ID, "E1", time.Now())
		if err := ps.Put(ctx, objects[ep.ID], []byte("body")); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.store.DeleteEndpoint(ctx, gone.ID, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the registry to drop the deleted endpoint", func() bool { return e.mgrCfg.Registry.Get(gone.ID) == nil })
	// Nothing removes them while no Manager runs.
	for _, c := range []struct{ str, name string }{{"TABLECAST", consumerName(gone.ID)}, {d.Stream(), replayConsumerName(gone.ID)}} {
		if !consumerExists(t, e.nats.JS, c.str, c.name) {
			t.Fatalf("consumer %s gone with no Manager running", c.name)
		}
	}

	e.startManager(func(c *Config) { c.LeftoverEvery, c.LeftoverAge = 200*time.Millisecond, time.Second }, nil)
	waitFor(t, 30*time.Second, "the deleted endpoint's leftovers to be removed", func() bool {
		return !consumerExists(t, e.nats.JS, "TABLECAST", consumerName(gone.ID)) &&
			!consumerExists(t, e.nats.JS, d.Stream(), replayConsumerName(gone.ID)) &&
			records(t, d, d.Subject(gone.ID)) == 0 && records(t, d, d.ReplaySubject(gone.ID)) == 0 &&
			!objectExists(t, e.nats.JS, d.BodyBucket(), objects[gone.ID])
	})
	// The pass counts and logs after removing: the log line comes last.
	waitFor(t, 10*time.Second, "the log of the leftovers removed", func() bool {
		return removedLogged(e.log.String(), gone.ID, "dead_letters=1 replays=1")
	})
	for kind, want := range map[string]float64{leftoverConsumer: 2, leftoverDeadLetter: 1, leftoverReplay: 1} {
		if got := testutil.ToFloat64(e.mgr.met.leftovers.WithLabelValues(kind)); got != want {
			t.Errorf("leftovers removed of kind %s: %v, want %v", kind, got, want)
		}
	}
	// The endpoint that exists keeps everything (its replay being
	// delivered again moves it back among its dead letters).
	if !consumerExists(t, e.nats.JS, "TABLECAST", consumerName(kept.ID)) || !consumerExists(t, e.nats.JS, d.Stream(), replayConsumerName(kept.ID)) {
		t.Fatal("a consumer of the endpoint that exists was removed")
	}
	if n := records(t, d, d.Subject(kept.ID)) + records(t, d, d.ReplaySubject(kept.ID)); n < 2 {
		t.Fatalf("the endpoint that exists has %d dead letters and replays left, want 2", n)
	}
	if !objectExists(t, e.nats.JS, d.BodyBucket(), objects[kept.ID]) {
		t.Fatal("the object of the endpoint that exists was deleted")
	}
}

// TestLeftoversNeedProofOfDeletion: the pass removes the things of an id
// only once the youngest of them is LeftoverAge old and the endpoints'
// bucket holds no endpoint of it. An endpoint in the bucket that the
// registry does not show yet (created a moment ago in another process)
// keeps its consumers and dead letters, as do consumers that are not an
// endpoint's; removing what another process removed first is no error.
func TestLeftoversNeedProofOfDeletion(t *testing.T) {
	t.Parallel()
	n := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: time.Minute}); err != nil {
		t.Fatal(err)
	}
	lb := &logBuffer{}
	log := slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := endpoint.Open(ctx, n.JS, endpoint.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	// A registry never run shows no endpoint: as one behind the bucket.
	m, err := New(ctx, n.JS, Config{Prefix: testPrefix, Registry: match.NewRegistry(log), Tables: catalog.New(testPrefix, log), States: store, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	d := m.DeadLetters()
	if _, err := store.CreateFilter(ctx, &endpoint.Filter{Name: "orders", Tables: []string{"public.orders"}}); err != nil {
		t.Fatal(err)
	}
	create := func(name string) string {
		ep, err := store.CreateEndpoint(ctx, &endpoint.Endpoint{Name: name, Type: endpoint.TypeWebhook, Filters: []string{"orders"},
			Webhook: &endpoint.Webhook{URL: "http://127.0.0.1:1/hook"}})
		if err != nil {
			t.Fatal(err)
		}
		return ep.ID
	}
	// live is stored; gone and letters were deleted, letters leaving only
	// a dead letter (its age is the record's).
	live, gone, letters := create("live"), create("gone"), create("letters")
	for _, id := range []string{gone, letters} {
		if err := store.DeleteEndpoint(ctx, id, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.JS.Publish(ctx, d.Subject(letters), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// What a Manager makes for an endpoint: its two consumers, dead
	// letters, a queued replay.
	for _, id := range []string{live, gone} {
		if _, err := n.JS.CreateConsumer(ctx, "TABLECAST", jetstream.ConsumerConfig{Durable: consumerName(id), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
		if _, err := n.JS.CreateConsumer(ctx, d.Stream(), jetstream.ConsumerConfig{Durable: replayConsumerName(id), FilterSubject: d.ReplaySubject(id), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
		for _, subj := range []string{d.Subject(id), d.Subject(id), d.ReplaySubject(id)} {
			if _, err := n.JS.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: []byte(`{}`), Header: nats.Header{HeaderEndpointID: {id}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Consumers whose names are no endpoint's.
	others := []string{"tablecast_webhook_notanid", "someone_else"}
	for _, name := range others {
		if _, err := n.JS.CreateConsumer(ctx, "TABLECAST", jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
	}
	left := func(id string) (consumers int, recs uint64) {
		for _, c := range []struct{ str, name string }{{"TABLECAST", consumerName(id)}, {d.Stream(), replayConsumerName(id)}} {
			if consumerExists(t, n.JS, c.str, c.name) {
				consumers++
			}
		}
		return consumers, records(t, d, d.Subject(id)) + records(t, d, d.ReplaySubject(id))
	}

	// Younger than LeftoverAge (default 10 minutes): all stay.
	removed, err := m.removeLeftovers(ctx, time.Now())
	if err != nil || len(removed) != 0 {
		t.Fatalf("removeLeftovers of things younger than LeftoverAge = %+v, %v; want none removed", removed, err)
	}
	if c, recs := left(gone); c != 2 || recs != 3 {
		t.Fatalf("the deleted endpoint has %d consumers and %d records after a pass that was too early; want 2 and 3", c, recs)
	}
	if _, recs := left(letters); recs != 1 {
		t.Fatalf("the deleted endpoint with a dead letter alone has %d after a pass that was too early; want 1", recs)
	}

	// Old enough: the deleted endpoint's go, the stored one's stay.
	removed, err = m.removeLeftovers(ctx, time.Now().Add(DefaultLeftoverAge+time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want := []removedLeftover{ // by id, which is by creation
		{id: gone, consumers: []string{consumerName(gone), replayConsumerName(gone)}, deadLetters: 2, replays: 1},
		{id: letters, deadLetters: 1},
	}
	if !slices.EqualFunc(removed, want, func(a, b removedLeftover) bool {
		return a.id == b.id && slices.Equal(a.consumers, b.consumers) && a.deadLetters == b.deadLetters && a.replays == b.replays
	}) {
		t.Fatalf("removeLeftovers = %+v, want %+v", removed, want)
	}
	for _, id := range []string{gone, letters} {
		if c, recs := left(id); c != 0 || recs != 0 {
			t.Fatalf("deleted endpoint %s has %d consumers and %d records left", id, c, recs)
		}
	}
	if c, recs := left(live); c != 2 || recs != 3 {
		t.Fatalf("the endpoint in the bucket, not in the registry, has %d consumers and %d records; want 2 and 3 untouched", c, recs)
	}
	for _, name := range others {
		if !consumerExists(t, n.JS, "TABLECAST", name) {
			t.Fatalf("consumer %s, no endpoint's, was removed", name)
		}
	}
	for kind, want := range map[string]float64{leftoverConsumer: 2, leftoverDeadLetter: 3, leftoverReplay: 1} {
		if got := testutil.ToFloat64(m.met.leftovers.WithLabelValues(kind)); got != want {
			t.Errorf("leftovers removed of kind %s: %v, want %v", kind, got, want)
		}
	}
	if !removedLogged(lb.String(), gone, "dead_letters=2 replays=1") || !removedLogged(lb.String(), letters, "dead_letters=1 replays=0") {
		t.Errorf("no log of the leftovers removed:\n%s", lb)
	}

	// Found again by a process that listed them before they were removed:
	// nothing to do, and no error.
	if r, err := m.removeLeftover(ctx, &leftover{id: gone}); err != nil || len(r.consumers) != 0 {
		t.Fatalf("removing leftovers removed already = %+v, %v", r, err)
	}
	if removed, err := m.removeLeftovers(ctx, time.Now().Add(time.Hour)); err != nil || len(removed) != 0 {
		t.Fatalf("a pass after the leftovers were removed = %+v, %v", removed, err)
	}
	if strings.Contains(lb.String(), "cannot") {
		t.Errorf("warnings logged:\n%s", lb)
	}
}

// removedLogged reports whether log has the line of the leftovers of
// endpoint id removed, with counts.
func removedLogged(log, id, counts string) bool {
	for line := range strings.Lines(log) {
		if strings.Contains(line, "level=INFO") && strings.Contains(line, "removed the consumers and dead letters") &&
			strings.Contains(line, "endpoint_id="+id) && strings.Contains(line, counts) {
			return true
		}
	}
	return false
}

func consumerExists(t *testing.T, js jetstream.JetStream, str, name string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := js.Consumer(ctx, str, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// records counts the records on subject subj of the dead-letter stream.
func records(t *testing.T, d *DeadLetters, subj string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := d.str.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subj]
}
