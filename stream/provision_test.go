package stream

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tablecast/tablecast/schema"
)

func TestEnsureStreamCreateThenUpdate(t *testing.T) {
	e := startTestServer(t, "")
	_, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)

	s, err := EnsureStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	cfg := s.CachedInfo().Config
	if cfg.Name != DefaultStreamName || !slices.Equal(cfg.Subjects, []string{"tablecast.>", "_TABLECAST.tablecast.stream", "_TABLECAST.tablecast.stream.fence.>"}) ||
		!cfg.AllowBatchPublish || cfg.Duplicates != DefaultDuplicateWindow || cfg.Storage != jetstream.FileStorage || cfg.Replicas != 1 {
		t.Fatalf("created with %+v", cfg)
	}

	for i := range 10 {
		msg := nats.NewMsg(ChangeSubject("tablecast", "shop", "public", "orders", schema.OpCreate))
		msg.Data = []byte(fmt.Sprintf(`{"n":%d}`, i))
		msg.Header.Set(msgIDHeader, fmt.Sprintf("id-%d", i))
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}

	// Same config again: nothing to do.
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		t.Fatalf("ensure unchanged: %v", err)
	}

	// A different duplicate window and max age: updated in place.
	s, err = EnsureStream(ctx, js, StreamConfig{DuplicateWindow: 45 * time.Second, MaxAge: 24 * time.Hour})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Duplicates != 45*time.Second || info.Config.MaxAge != 24*time.Hour {
		t.Fatalf("not updated: duplicates %s, max age %s", info.Config.Duplicates, info.Config.MaxAge)
	}
	if info.State.Msgs != 10 {
		t.Fatalf("stream holds %d messages after the update, want 10", info.State.Msgs)
	}
}

// TestEnsureStreamUpgradesOldStream: a stream made before batches and the
// control subject gets both, and keeps its messages.
func TestEnsureStreamUpgradesOldStream(t *testing.T) {
	e := startTestServer(t, "")
	_, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: DefaultStreamName, Subjects: []string{"tablecast.>"}, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "tablecast.shop.public.orders.create", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	s, err := EnsureStream(ctx, js, StreamConfig{DuplicateWindow: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(info.Config.Subjects, []string{"tablecast.>", ControlSubject("tablecast"), FenceSubjects("tablecast")}) || !info.Config.AllowBatchPublish || info.State.Msgs != 1 {
		t.Fatalf("after EnsureStream: subjects %v, batches %v, %d messages", info.Config.Subjects, info.Config.AllowBatchPublish, info.State.Msgs)
	}
}

func TestEnsureStreamInvalidConfig(t *testing.T) {
	e := startTestServer(t, "")
	_, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)

	_, err := EnsureStream(ctx, js, StreamConfig{Name: "bad.name", Prefix: "a..b", DuplicateWindow: time.Minute, MaxAge: time.Second})
	if err == nil {
		t.Fatal("EnsureStream accepted an invalid config")
	}
	for _, want := range []string{"stream name", "subject prefix", "must not exceed max age"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestEnsureStreamStorageMismatch(t *testing.T) {
	e := startTestServer(t, "")
	_, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)

	if _, err := EnsureStream(ctx, js, StreamConfig{Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	_, err := EnsureStream(ctx, js, StreamConfig{Storage: jetstream.FileStorage})
	if err == nil || !strings.Contains(err.Error(), "storage cannot be changed") {
		t.Fatalf("got %v, want a storage mismatch error", err)
	}
}

// TestEnsureStreamUseExisting: a process that does not own the stream's
// settings (the gateway alone) creates a missing stream with its own, and
// leaves an existing one as the reader made it: a gateway started without
// the reader's TABLECAST_STREAM_MAX_AGE=0 set the stream's age limit to its
// default of 7 days, and JetStream then deleted the older events.
func TestEnsureStreamUseExisting(t *testing.T) {
	e := startTestServer(t, "")
	_, js := connectTest(t, e.ClientURL())
	ctx := testContext(t)

	created, err := EnsureStream(ctx, js, StreamConfig{Name: "GW", MaxAge: time.Hour, UseExisting: true})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := created.CachedInfo().Config.MaxAge; got != time.Hour {
		t.Fatalf("a missing stream was created with max age %s, want 1h", got)
	}
	// The reader's settings: kept forever, at most 1 MiB.
	if _, err := EnsureStream(ctx, js, StreamConfig{Name: "GW", MaxBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	s, err := EnsureStream(ctx, js, StreamConfig{Name: "GW", MaxAge: 168 * time.Hour, MaxBytes: 1 << 30, Replicas: 1, UseExisting: true})
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.Config; c.MaxAge != 0 || c.MaxBytes != 1<<20 {
		t.Errorf("the existing stream has max age %s and max bytes %d after a use, want the reader's 0 and %d", c.MaxAge, c.MaxBytes, 1<<20)
	}
}
