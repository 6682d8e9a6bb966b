package stream_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// TestSetUpOnACluster: processes that start together against a
// three-node JetStream cluster (a reader and gateways after a deploy) all
// set up the stream and the buckets, replicated three times, though the
// cluster leaves some of their requests unanswered while each new
// stream's replicas elect a leader; and they still can with one node
// killed.
func TestSetUpOnACluster(t *testing.T) {
	t.Parallel() // see parallelTests
	began := time.Now()
	cl := natstest.StartCluster(t, 3)
	t.Logf("cluster started in %s", time.Since(began).Round(time.Millisecond))
	began = time.Now()
	setUp := func(name string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		nc, err := stream.Connect(ctx, cl.URL(), name, nil)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		str, err := stream.EnsureStream(ctx, js, stream.StreamConfig{Replicas: 3})
		if err != nil {
			return err
		}
		if _, err := stream.OpenRegistry(ctx, js, "", 3); err != nil {
			return err
		}
		if _, err := stream.OpenTopics(ctx, js, str, "", "", 3); err != nil {
			return err
		}
		if _, err := stream.OpenPayloadStore(ctx, js, stream.PayloadStoreConfig{Replicas: 3}); err != nil {
			return err
		}
		_, err = stream.EnsureDeadLetterStream(ctx, js, stream.DeadLetterConfig{Replicas: 3})
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() { errs[i] = setUp(fmt.Sprintf("process-%d", i)) })
	}
	wg.Wait()
	t.Logf("six processes set up in %s", time.Since(began).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Errorf("process %d set up: %v", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	names := cl.JS.StreamNames(ctx)
	n := 0
	for name := range names.Name() {
		n++
		st, err := cl.JS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s: %d replicas, want 3", name, r)
		}
	}
	if n != 5 {
		t.Errorf("%d streams, want 5 (events, dead letters, schemas, topics, payloads)", n)
	}

	leader := cl.StreamLeader(stream.DefaultStreamName)
	if leader == nil {
		t.Fatal("the event stream has no leader")
	}
	leader.Kill()
	began = time.Now()
	defer func() { t.Logf("set up with a node killed in %s", time.Since(began).Round(time.Millisecond)) }()
	if err := setUp("after-kill"); err != nil {
		t.Errorf("set up with the stream's leader killed: %v", err)
	}
}

// TestTransient: what a caller may ask again, and what it must not.
func TestTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{context.DeadlineExceeded, true},
		{fmt.Errorf("look up stream X: %w", context.DeadlineExceeded), true},
		{nats.ErrTimeout, true},
		{nats.ErrNoResponders, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{fmt.Errorf("x: %w", &jetstream.APIError{Code: 500, ErrorCode: 10009}), true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use"}, false},
		{jetstream.ErrStreamNotFound, false},
		{errors.New("insufficient storage"), false},
		{nats.ErrAuthorization, false},
	} {
		if got := stream.Transient(c.err); got != c.want {
			t.Errorf("Transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
