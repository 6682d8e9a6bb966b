package stream_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestParseClaim(t *testing.T) {
	c := stream.Claim{Bucket: "TABLECAST_PAYLOADS", Object: `shop "db"/0000000001-0001`, Size: 9_000_123}
	stub := append([]byte(`{"id":"0000000001-0001","key":{"id":1},"claim":`), stream.AppendClaim(nil, c)...)
	stub = append(stub, '}')
	tests := []struct {
		name string
		msg  string
		ok   bool
		err  bool
	}{
		{"a claim", string(stub), true, false},
		{"an ordinary event", `{"id":"x","data":{"id":1}}`, false, false},
		{"a column named claim", `{"id":"x","data":{"claim":{"bucket":"b","object":"o","size":1}}}`, false, false},
		{"a custom topic's JSON that is not an object", `["claim",{"x":1}]`, false, false},
		{"a claim without an object", `{"claim":{"bucket":"b","size":1}}`, false, true},
		{"a claim of negative size", `{"claim":{"bucket":"b","object":"o","size":-1}}`, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := stream.ParseClaim([]byte(tt.msg))
			if ok != tt.ok || (err != nil) != tt.err {
				t.Fatalf("ParseClaim(%s) = %+v, %v, %v; want ok %v, error %v", tt.msg, got, ok, err, tt.ok, tt.err)
			}
			if ok && got != c {
				t.Fatalf("ParseClaim = %+v, want %+v", got, c)
			}
		})
	}
}

// TestPayloadStoreAndResolve: an event stored as an object resolves to
// exactly its bytes; storing it again under its name (a replay) replaces
// the object instead of adding one; a claim whose object or bucket is gone
// fails with ErrClaimGone, and a claim whose size is not the object's is
// refused.
func TestPayloadStoreAndResolve(t *testing.T) {
	n := natstest.StartStock(t)
	ctx := ctxFor(t)
	store, err := stream.OpenPayloadStore(ctx, n.JS, stream.PayloadStoreConfig{MaxAge: time.Hour, MaxPayload: n.NC.MaxPayload()})
	if err != nil {
		t.Fatal(err)
	}
	event := []byte(`{"id":"00000000016B3748-0003","data":{"body":"` + strings.Repeat("é\"", 1_500_000) + `"}}`)
	name := stream.PayloadObjectName("shop", "00000000016B3748-0003")
	if name != "shop/00000000016B3748-0003" {
		t.Fatalf("object name %q", name)
	}
	for range 3 { // the first store, then two replays
		if err := store.Put(ctx, name, event); err != nil {
			t.Fatal(err)
		}
	}
	bucket, err := n.JS.Stream(ctx, "OBJ_"+stream.DefaultPayloadBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := bucket.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One object: its chunks of at most 128 KiB, and one meta message.
	if chunks := uint64(len(event)+128<<10-1) / (128 << 10); info.State.Msgs != chunks+1 || info.Config.MaxAge != time.Hour+time.Minute {
		t.Fatalf("bucket holds %d messages (want %d chunks and a meta) and keeps them %s (want 1h1m)", info.State.Msgs, chunks, info.Config.MaxAge)
	}

	claim := stream.Claim{Bucket: store.Bucket(), Object: name, Size: int64(len(event))}
	stub := append(stream.AppendClaim([]byte(`{"id":"00000000016B3748-0003","claim":`), claim), '}')
	got, err := stream.ResolveEvent(ctx, n.JS, stub)
	if err != nil || !bytes.Equal(got, event) {
		t.Fatalf("ResolveEvent: %d bytes, %v; want the %d stored", len(got), err, len(event))
	}
	plain := []byte(`{"id":"x","data":{}}`)
	if got, err := stream.ResolveEvent(ctx, n.JS, plain); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("ResolveEvent of an event without claim: %s, %v", got, err)
	}

	r := stream.NewResolver(n.JS)
	wrong := claim
	wrong.Size--
	if _, err := r.Fetch(ctx, wrong); err == nil || errors.Is(err, stream.ErrClaimGone) {
		t.Fatalf("Fetch with a wrong size: %v, want an error", err)
	}
	obs, err := n.JS.ObjectStore(ctx, store.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Fetch(ctx, claim); !errors.Is(err, stream.ErrClaimGone) {
		t.Fatalf("Fetch of a deleted object: %v, want ErrClaimGone", err)
	}
	noBucket := claim
	noBucket.Bucket = "NO_SUCH_BUCKET"
	if _, err := r.Fetch(ctx, noBucket); !errors.Is(err, stream.ErrClaimGone) {
		t.Fatalf("Fetch from a missing bucket: %v, want ErrClaimGone", err)
	}
}

// TestPublisherFits: Fits is exact, every header included, against a stock
// server (1 MiB): the largest message it accepts is stored, one byte more
// is what the server would refuse. The reader's publishers add the origin
// header to every message, with batches or without, and an event Fits
// wrongly admits would fail every session that publishes it again.
func TestPublisherFits(t *testing.T) {
	n := natstest.StartStock(t)
	ctx := ctxFor(t)
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	const (
		id     = "00000000016B3748-0003"
		origin = "7312345678901234567/1/shop/tablecast_shop"
	)
	originLine := len(stream.OriginHeader + ": " + origin + "\r\n")
	markLine := len(stream.KeyDeferrableHeader + ": true\r\n")
	for _, tc := range []struct {
		name   string
		opts   []stream.PublisherOption
		header nats.Header // what the Publisher sends beside Nats-Msg-Id
		extra  int         // its size
		marked bool        // published with PublishMarked, measured with FitsMarked
	}{
		{"bare", nil, nats.Header{}, 0, false},
		{"origin", []stream.PublisherOption{stream.WithHeader(stream.OriginHeader, origin)}, nats.Header{stream.OriginHeader: {origin}}, originLine, false},
		{"origin in batches", []stream.PublisherOption{stream.WithHeader(stream.OriginHeader, origin), stream.WithBatches(stream.ControlSubject(""))},
			nats.Header{stream.OriginHeader: {origin}}, originLine, false},
		{"origin and a mark, in batches", []stream.PublisherOption{stream.WithHeader(stream.OriginHeader, origin), stream.WithMark(stream.KeyDeferrableHeader, "true"),
			stream.WithBatches(stream.ControlSubject(""))},
			nats.Header{stream.OriginHeader: {origin}, stream.KeyDeferrableHeader: {"true"}}, originLine + markLine, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := stream.NewPublisher(n.NC, n.JS, 8, nil, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			limit := int(n.NC.MaxPayload()) - stream.MessageHeaderSize(id) - tc.extra
			fits, publish := p.Fits, p.Publish
			if tc.marked {
				fits, publish = p.FitsMarked, p.PublishMarked
			}
			if !fits(id, limit) || fits(id, limit+1) {
				t.Fatalf("Fits(%d) = %v, Fits(%d) = %v; want true, false", limit, fits(id, limit), limit+1, fits(id, limit+1))
			}
			// nats.go refuses what does not fit before sending it.
			h := nats.Header{jetstream.MsgIDHeader: []string{id}}
			for k, v := range tc.header {
				h[k] = v
			}
			over := &nats.Msg{Subject: "tablecast.x.y.z.create", Data: make([]byte, limit+1), Header: h}
			if err := n.NC.PublishMsg(over); !errors.Is(err, nats.ErrMaxPayload) {
				t.Fatalf("publishing one byte more: %v, want ErrMaxPayload", err)
			}
			if _, err := publish(ctx, "tablecast.x.y.z.create", id, make([]byte, limit)); err != nil {
				t.Fatal(err)
			}
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			for p.Acked() < 1 {
				select {
				case <-p.Progress():
				case <-p.Failed():
					t.Fatalf("the largest message that fits failed: %v", p.Err())
				case <-waitCtx.Done():
					t.Fatal("no acknowledgement")
				}
			}
		})
	}
}

// TestPublisherFitsStreamLimit: with the stream's max_msg_size, Fits
// counts headers and data as JetStream does: the largest message it takes
// is stored, one byte more is refused by the stream.
func TestPublisherFitsStreamLimit(t *testing.T) {
	n := natstest.StartStock(t)
	ctx := ctxFor(t)
	st, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxMsgSize = 4096
	if _, err := n.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	const id, origin = "00000000016B3748-0003", "7312345678901234567/1/shop/tablecast_shop"
	limit := 4096 - stream.MessageHeaderSize(id) - len(stream.OriginHeader+": "+origin+"\r\n")
	for _, size := range []int{limit, limit + 1} {
		p, err := stream.NewPublisher(n.NC, n.JS, 8, nil, stream.WithHeader(stream.OriginHeader, origin), stream.WithMaxMessageSize(4096))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := p.Fits(id, size), size == limit; got != want {
			t.Fatalf("Fits(%d) = %v, want %v", size, got, want)
		}
		if _, err := p.Publish(ctx, "tablecast.x.y.z.create", id, make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		for p.Acked() < 1 && p.Err() == nil && waitCtx.Err() == nil {
			select {
			case <-p.Progress():
			case <-p.Failed():
			case <-waitCtx.Done():
			}
		}
		cancel()
		if stored := p.Acked() == 1; stored != (size == limit) {
			t.Fatalf("a message of %d bytes and headers: stored %v (err %v), want %v", size, stored, p.Err(), size == limit)
		}
		p.Close()
	}
}

// TestDeadLetterStream: the dead-letter stream sits beside the event
// stream, on subjects outside "<prefix>.>".
func TestDeadLetterStream(t *testing.T) {
	n := natstest.Start(t)
	ctx := ctxFor(t)
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "EVENTS", Prefix: "app.cdc"}); err != nil {
		t.Fatal(err)
	}
	for range 2 { // created, then found
		name, err := stream.EnsureDeadLetterStream(ctx, n.JS, stream.DeadLetterConfig{EventStream: "EVENTS", Prefix: "app.cdc"})
		if err != nil || name != "EVENTS_DEADLETTER" {
			t.Fatalf("EnsureDeadLetterStream = %q, %v", name, err)
		}
	}
	subject := stream.DeadLetterSubject("app.cdc", "shop", "public", "order.items")
	if subject != "app.cdc_deadletter.shop.public.order%2Eitems" {
		t.Fatalf("subject %q", subject)
	}
	if got := stream.DeadLetterTopicSubject("app.cdc", "chat"); got != "app.cdc_deadletter.topic.chat" {
		t.Fatalf("topic subject %q", got)
	}
	ack, err := n.JS.Publish(ctx, subject, []byte(`{}`))
	if err != nil || ack.Stream != "EVENTS_DEADLETTER" {
		t.Fatalf("a record is stored by %v (%v), want EVENTS_DEADLETTER", ack, err)
	}
	if n.Count("EVENTS") != 0 {
		t.Fatal("the event stream took a dead-letter record")
	}
}
