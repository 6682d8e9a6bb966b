package stream

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tablecast/tablecast/schema"
)

// TestScanLastWithHeader: the scan finds the last message of one origin
// among others', within the sequence range and the subject filters asked
// for, across several fetches.
func TestScanLastWithHeader(t *testing.T) {
	e := startTestServer(t, "")
	nc, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	publish := func(subject, origin, id string) uint64 {
		t.Helper()
		m := &nats.Msg{Subject: subject, Data: []byte("{}"), Header: nats.Header{}}
		if origin != "" {
			m.Header.Set(OriginHeader, origin)
		}
		if id != "" {
			m.Header.Set(msgIDHeader, id)
		}
		ack, err := js.PublishMsg(testContext(t), m)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	const ours, theirs = "1/1/shop/tablecast", "2/1/shop/tablecast"
	// 2,500 of ours on a table, each followed by one of another origin, a
	// topic message without origin, and one of ours on another database.
	var lastOursSeq, topicSeq uint64
	for i := 1; i <= 2500; i++ {
		lastOursSeq = publish("tablecast.shop.public.orders.create", ours, fmt.Sprintf("%016X-0001", i))
		publish("tablecast.shop.public.orders.create", theirs, fmt.Sprintf("%016X-0001", 1_000_000+i))
		topicSeq = publish("tablecast.topic.chat", "", "")
		publish("tablecast.other.public.orders.create", ours, fmt.Sprintf("%016X-0002", 1_000_000+i))
	}
	ourTopic := publish("tablecast.topic.chat", ours, "00000000FFFFFFFF-0003")
	filters := []string{"tablecast.shop.>", "tablecast.topic.>"}

	tests := []struct {
		name     string
		from, to uint64
		filters  []string
		wantID   string
		wantSeq  uint64
	}{
		{"whole stream", 1, ourTopic + 10, filters, "00000000FFFFFFFF-0003", ourTopic},
		{"up to before the topic message", 1, ourTopic - 1, filters, fmt.Sprintf("%016X-0001", 2500), lastOursSeq},
		{"unfiltered sees the other database", 1, ourTopic - 1, nil, fmt.Sprintf("%016X-0002", 1_002_500), ourTopic - 1},
		{"a range with none of ours", topicSeq, topicSeq, filters, "", 0},
		{"from beyond to", ourTopic, ourTopic - 1, filters, "", 0},
		{"from beyond the end", ourTopic + 1, ourTopic + 100, filters, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ScanLastWithHeader(testContext(t), js, DefaultStreamName, tt.from, tt.to, tt.filters, OriginHeader, ours, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got.MsgID != tt.wantID || got.Seq != tt.wantSeq {
				t.Fatalf("scan %d..%d = %+v, want id %q at %d", tt.from, tt.to, got, tt.wantID, tt.wantSeq)
			}
		})
	}
	// Copies of the header by another client (without an id, or with one
	// the caller does not take) do not hide the last message of ours.
	noID := publish("tablecast.topic.forwarded", ours, "")
	publish("tablecast.topic.forwarded", ours, "forwarded-1")
	got, err := ScanLastWithHeader(testContext(t), js, DefaultStreamName, ourTopic, noID+1, filters, OriginHeader, ours,
		func(id string) bool { return id != "forwarded-1" })
	if err != nil {
		t.Fatal(err)
	}
	if got.MsgID != "00000000FFFFFFFF-0003" || got.Seq != ourTopic || got.Refused != 2 {
		t.Fatalf("scan with copies of the header = %+v, want id 00000000FFFFFFFF-0003 at %d, 2 refused", got, ourTopic)
	}
	// The scan leaves no consumer behind.
	s, err := js.Stream(testContext(t), DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers != 0 {
		t.Fatalf("%d consumers left on the stream", info.State.Consumers)
	}
	_ = nc
}

// cancellingJS cancels a context as the first fetch of a consumer it made
// is sent.
type cancellingJS struct {
	jetstream.JetStream
	cancel context.CancelFunc
}

func (js cancellingJS) CreateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := js.JetStream.CreateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, err
	}
	return cancellingConsumer{Consumer: c, cancel: js.cancel}, nil
}

type cancellingConsumer struct {
	jetstream.Consumer
	cancel context.CancelFunc
}

func (c cancellingConsumer) Fetch(n int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	b, err := c.Consumer.Fetch(n, opts...)
	c.cancel()
	return b, err
}

// TestScanLastWithHeaderStopsWithContext: a scan whose context ends while
// it reads (a reader that lost its lease) stops with the context's error
// rather than reading on, and leaves no consumer behind.
func TestScanLastWithHeaderStopsWithContext(t *testing.T) {
	e := startTestServer(t, "")
	_, js := connectTest(t, e.ClientURL())
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := 1; i <= 100; i++ {
		m := &nats.Msg{Subject: "tablecast.shop.public.orders.create", Data: []byte("{}"), Header: nats.Header{}}
		m.Header.Set(OriginHeader, "1/1/shop/tablecast")
		m.Header.Set(msgIDHeader, fmt.Sprintf("%016X-0001", i))
		ack, err := js.PublishMsg(testContext(t), m)
		if err != nil {
			t.Fatal(err)
		}
		last = ack.Sequence
	}
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	got, err := ScanLastWithHeader(ctx, cancellingJS{JetStream: js, cancel: cancel}, DefaultStreamName, 1, last, nil, OriginHeader, "1/1/shop/tablecast", nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("scan = %+v, %v; want context.Canceled", got, err)
	}
	s, err := js.Stream(testContext(t), DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers != 0 {
		t.Fatalf("%d consumers left on the stream", info.State.Consumers)
	}
}

// BenchmarkScanLastWithHeader measures the scan a restarted reader makes:
// the headers of 100,000 messages (about a second of a busy reader's
// events), one in ten of another origin.
//
//	go test -run='^$' -bench=ScanLastWithHeader -benchtime=3x ./stream/
func BenchmarkScanLastWithHeader(b *testing.B) {
	const msgs = 100_000
	nc, js := benchSetup(b)
	ours, err := NewPublisher(nc, js, 4096, quietLogger(), WithHeader(OriginHeader, "1/1/shop/tablecast"))
	if err != nil {
		b.Fatal(err)
	}
	defer ours.Close()
	theirs, err := NewPublisher(nc, js, 4096, quietLogger(), WithHeader(OriginHeader, "2/1/shop/tablecast"))
	if err != nil {
		b.Fatal(err)
	}
	defer theirs.Close()
	subject := ChangeSubject("tablecast", "shop", "public", "orders", schema.OpUpdate)
	ctx := context.Background()
	for i := range msgs {
		p := ours
		if i%10 == 9 {
			p = theirs
		}
		if _, err := p.Publish(ctx, subject, fmt.Sprintf("%016X-0001", i), benchPayload); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, time.Minute, "every message stored", func() bool { return ours.Acked()+theirs.Acked() == msgs })
	b.ResetTimer()
	for range b.N {
		got, err := ScanLastWithHeader(ctx, js, DefaultStreamName, 1, msgs, []string{"tablecast.shop.>", "tablecast.topic.>"}, OriginHeader, "1/1/shop/tablecast", nil)
		if err != nil || got.Scanned != msgs {
			b.Fatalf("scan: %+v, %v", got, err)
		}
	}
	b.ReportMetric(float64(msgs*b.N)/b.Elapsed().Seconds(), "headers/s")
}
