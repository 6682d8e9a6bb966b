package stream

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPublisherFenced: a fenced Publisher's messages are stored while the
// fence it expects is the last; once another fence is stored, JetStream
// refuses the next message, the Publisher fails with ErrFenced, and none of
// its messages is stored after the new fence, alone or in a batch begun
// before it. It also measures what the fence's headers cost in the store.
func TestPublisherFenced(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []PublisherOption
	}{
		{"alone", []PublisherOption{WithStream(DefaultStreamName)}},
		{"batches", batchOptions()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startTestServer(t, "")
			nc, js := connectTest(t, e.ClientURL())
			ctx := testContext(t)
			if _, err := EnsureStream(ctx, js, StreamConfig{DuplicateWindow: time.Minute}); err != nil {
				t.Fatal(err)
			}
			fence := FenceSubject(DefaultPrefix, "slot")
			stream, err := js.Stream(ctx, DefaultStreamName)
			if err != nil {
				t.Fatal(err)
			}
			bytesPerMsg := func() float64 {
				info, err := stream.Info(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return float64(info.State.Bytes) / float64(info.State.Msgs)
			}

			// Unfenced, for the cost.
			plain := newTestPublisher(t, nc, js, 64, tc.opts...)
			for i := 1; i <= 100; i++ {
				if _, err := plain.Publish(ctx, testSubject, msgID(i), []byte(`{"n":1}`)); err != nil {
					t.Fatal(err)
				}
			}
			if err := plain.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			waitAcked(t, plain, 100)
			unfenced := bytesPerMsg()
			if err := stream.Purge(ctx); err != nil {
				t.Fatal(err)
			}

			first, err := js.Publish(ctx, fence, []byte(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			p := newTestPublisher(t, nc, js, 64, append(tc.opts, WithFence(fence, first.Sequence))...)
			for i := 101; i <= 200; i++ {
				if _, err := p.Publish(ctx, testSubject, msgID(i), []byte(`{"n":1}`)); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			waitAcked(t, p, 100)
			if err := p.Err(); err != nil {
				t.Fatalf("fenced publisher failed while its fence was the last: %v", err)
			}
			fenced := bytesPerMsg() // the fence itself is one of 101
			t.Logf("stored bytes per message: %.0f unfenced, %.0f fenced (+%.0f: the two Nats-Expected-Last-Subject-Sequence headers)",
				unfenced, fenced, fenced-unfenced)

			// Another publisher takes over: its fence is stored. The old
			// publisher's next messages (a batch begun, for the batched
			// case, by the first of them) are all refused.
			second, err := js.Publish(ctx, fence, []byte(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			for i := 201; i <= 210; i++ {
				if _, err := p.Publish(ctx, testSubject, msgID(i), []byte(`{"n":1}`)); err != nil {
					break // failed already
				}
			}
			_ = p.Flush(ctx)
			select {
			case <-p.Failed():
			case <-time.After(10 * time.Second):
				t.Fatal("the fenced-out publisher did not fail")
			}
			if err := p.Err(); !errors.Is(err, ErrFenced) {
				t.Fatalf("failed with %v, want ErrFenced", err)
			}
			info, err := stream.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.LastSeq != second.Sequence {
				m, _ := stream.GetMsg(ctx, info.State.LastSeq)
				t.Fatalf("message %d stored after the new fence at %d: %s %s", info.State.LastSeq, second.Sequence, m.Subject, m.Header)
			}
		})
	}
}

// TestFenceSubjects: the fence subjects lie outside the events' and the
// snapshot requests' subjects, and inside the stream's.
func TestFenceSubjects(t *testing.T) {
	f := FenceSubject("tc", "fence")
	if f != "_TABLECAST.tc.stream.fence.fence" || !IsControlSubject(f) || strings.HasPrefix(f, "tc.") {
		t.Fatalf("fence subject %q", f)
	}
	if FenceSubjects("tc") != "_TABLECAST.tc.stream.fence.>" {
		t.Fatalf("fence filter %q", FenceSubjects("tc"))
	}
	ring := FenceRingSubjects("tc", "fence")
	if len(ring) != FenceRingSize || ring[0] != "_TABLECAST.tc.stream.fence.fence.0" || ring[FenceRingSize-1] != "_TABLECAST.tc.stream.fence.fence."+strconv.Itoa(FenceRingSize-1) {
		t.Fatalf("fence ring %q … %q (%d)", ring[0], ring[len(ring)-1], len(ring))
	}
	for _, s := range append(ring, f) {
		if !subjectMatches(FenceSubjects("tc"), s) {
			t.Fatalf("the fence filter does not capture %q", s)
		}
	}
	// A stream made before fence rings takes the fence of one replica only.
	old := []string{"tc.>", ControlSubject("tc"), "_TABLECAST.tc.stream.fence.*"}
	if !CapturesFences(old, 1, "tc") || CapturesFences(old, 3, "tc") || !CapturesFences([]string{FenceSubjects("tc")}, 3, "tc") {
		t.Fatal("CapturesFences")
	}
	// A slot named "fence" asks for snapshots on
	// _TABLECAST.tc.fence.snapshot, which the stream must not capture.
	if subjectMatches(FenceSubjects("tc"), "_TABLECAST.tc.fence.snapshot") {
		t.Fatal("the fence filter captures a snapshot request subject")
	}
}

// subjectMatches reports whether subject matches filter (tokens, * and >).
func subjectMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || tok != "*" && tok != s[i] {
			return false
		}
	}
	return len(f) == len(s)
}
