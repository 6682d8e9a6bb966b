package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// ControlToken is the first token of tablecast's control subjects: requests
// and signals that travel beside the events, never among them. A subject
// prefix may not start with it.
const ControlToken = "_TABLECAST"

// ControlSubject is the subject the event stream of prefix captures besides
// "<prefix>.>": "_TABLECAST.<prefix>.stream". Nothing is ever stored on it.
// Publishers end their batches on it (WithBatches) and the reader sends its
// barrier there (Barrier): messages that must pass through the stream's
// ingest, in order with the events, without reaching the core subscribers
// of the events' subjects (read-only users cannot subscribe to it).
func ControlSubject(prefix string) string {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return ControlToken + "." + prefix + ".stream"
}

// FenceSubject is the subject a CDC reader that takes over slot from
// another reader publishes its fence on: "_TABLECAST.<prefix>.stream.fence.<slot>".
// The event stream captures it (FenceSubjects), so a fence is stored among
// the events, and every event a leader publishes expects the fence subject's
// last message to be its own fence (WithFence): once a newer leader's fence
// is stored, an older leader's events are refused. Consumers of the events
// filter "<prefix>.>" and never see fences; a consumer of the whole stream
// must skip the "_TABLECAST." subjects. (Under "stream", beside
// ControlSubject, so that no slot's snapshot-request subject,
// "_TABLECAST.<prefix>.<slot>.snapshot", can fall under it.)
func FenceSubject(prefix, slot string) string {
	return ControlSubject(prefix) + ".fence." + slot
}

// FenceSubjects is the filter of every FenceSubject and FenceRingSubject of
// prefix.
func FenceSubjects(prefix string) string {
	return ControlSubject(prefix) + ".fence.>"
}

// fenceSubjectsV1 is the filter streams captured the fence subjects with
// before fence rings: it takes FenceSubject alone, which is enough for a
// stream with one replica.
func fenceSubjectsV1(prefix string) string {
	return ControlSubject(prefix) + ".fence.*"
}

// CapturesFences reports whether a stream whose subjects are subjects
// stores the fences of prefix that a stream with replicas copies needs:
// FenceSubject for one replica, and the FenceRingSubjects too for more.
func CapturesFences(subjects []string, replicas int, prefix string) bool {
	if slices.Contains(subjects, FenceSubjects(prefix)) {
		return true
	}
	return replicas <= 1 && slices.Contains(subjects, fenceSubjectsV1(prefix))
}

// FenceRingSize is how many fence subjects a fence ring has
// (FenceRingSubjects), and one more than the most messages a Publisher
// fenced by a ring keeps awaiting acknowledgement (WithFenceRing).
//
// A replicated stream checks Nats-Expected-Last-Subject-Sequence before it
// proposes a message to its replicas, against what it has applied; so that
// two messages in the proposal pipeline cannot both pass the check on the
// same state, it refuses (error 10164) a message expecting a subject's
// sequence while another one expecting that subject, or one stored on it,
// is proposed and not yet applied. Message n of a ringed Publisher expects
// subject (n-1) mod FenceRingSize, so that the expectations in flight are
// all on different subjects. 1024 keeps the window wide enough for a
// three-node cluster to stay nearly as busy as with the reader's default
// window (BenchmarkFenceRing: a window of 255 cost a third of the
// throughput, 1023 about a tenth), while a takeover stores 1024 small
// messages, about a tenth of a second.
const FenceRingSize = 1024

// FenceRingSubjects are the subjects of the fence ring of slot:
// "_TABLECAST.<prefix>.stream.fence.<slot>.<i>", i from 0 to
// FenceRingSize-1. A CDC reader that takes slot over on a stream with more
// than one replica stores a fence on each (StoreFences), in this order, and
// its events expect them in turn (WithFenceRing).
func FenceRingSubjects(prefix, slot string) []string {
	base := FenceSubject(prefix, slot) + "."
	subjects := make([]string, FenceRingSize)
	for i := range subjects {
		subjects[i] = base + strconv.Itoa(i)
	}
	return subjects
}

// IsControlSubject reports whether subject is one of tablecast's control
// subjects (a fence), not an event: what readers of the whole stream skip.
func IsControlSubject(subject string) bool {
	return strings.HasPrefix(subject, ControlToken+".")
}

// barrierHeader makes JetStream refuse the barrier: no stream is ever at
// this sequence.
const barrierHeader = "Nats-Expected-Last-Sequence"

// Barrier returns once JetStream has dealt with every message nc sent
// before it to the stream that captures subject (its ControlSubject): it
// publishes a message there that the stream refuses without storing (it
// expects the stream at a sequence no stream reaches) and waits for the
// refusal. A stream with one replica takes the messages of a connection in
// the order they were sent, so when the refusal comes, each earlier message
// is stored or refused for good, and none is stored later. (A replicated
// stream refuses the barrier as soon as its leader sees it, maybe before
// earlier messages are applied.) Messages sent on an earlier connection are
// covered once the server has read that connection to its end.
//
// ErrNoStream means no stream captures subject. ctx bounds the wait.
func Barrier(ctx context.Context, nc *nats.Conn, subject string) error {
	m := nats.NewMsg(subject)
	m.Header.Set(barrierHeader, "9223372036854775807")
	resp, err := nc.RequestMsgWithContext(ctx, m)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("barrier on %s: %w", subject, ErrNoStream)
	}
	if err != nil {
		return fmt.Errorf("barrier on %s: %w", subject, err)
	}
	var ack struct {
		Error *json.RawMessage `json:"error"`
		Seq   uint64           `json:"seq"`
	}
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return fmt.Errorf("barrier on %s: answer is not JetStream's: %q", subject, truncate(resp.Data, 200))
	}
	if ack.Error == nil {
		return fmt.Errorf("barrier on %s: JetStream stored it (sequence %d) instead of refusing it", subject, ack.Seq)
	}
	return nil
}
