package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Dead letters: a record for each event that could not be published whole
// (larger than the reader's limit), kept in a stream of its own beside the
// event stream, on subjects outside the event stream's "<prefix>.>".

// deadLetterSuffix is appended to the first subject token(s) and to the
// stream name.
const (
	deadLetterSubjectSuffix = "_deadletter"
	deadLetterStreamSuffix  = "_DEADLETTER"
)

// DeadLetterStreamName is the name of the dead-letter stream beside the
// event stream eventStream: "<eventStream>_DEADLETTER".
func DeadLetterStreamName(eventStream string) string { return eventStream + deadLetterStreamSuffix }

// DeadLetterSubjects is the subject filter of the dead-letter stream:
// "<prefix>_deadletter.>".
func DeadLetterSubjects(prefix string) string { return prefix + deadLetterSubjectSuffix + ".>" }

// DeadLetterSubject is the subject of the dead-letter records of one
// table: "<prefix>_deadletter.<db>.<schema>.<table>", names encoded as in
// change subjects.
func DeadLetterSubject(prefix, db, schema, table string) string {
	b := make([]byte, 0, len(prefix)+len(deadLetterSubjectSuffix)+len(db)+len(schema)+len(table)+8)
	b = append(b, prefix...)
	b = append(b, deadLetterSubjectSuffix...)
	b = append(b, '.')
	b = AppendToken(b, db)
	b = append(b, '.')
	b = AppendToken(b, schema)
	b = append(b, '.')
	b = AppendToken(b, table)
	return string(b)
}

// DeadLetterTopicSubject is the subject of the dead-letter records of one
// custom topic: "<prefix>_deadletter.topic.<name>".
func DeadLetterTopicSubject(prefix, topic string) string {
	b := make([]byte, 0, len(prefix)+len(deadLetterSubjectSuffix)+len(topicToken)+len(topic)+8)
	b = append(b, prefix...)
	b = append(b, deadLetterSubjectSuffix...)
	b = append(b, '.')
	b = append(b, topicToken...)
	b = append(b, '.')
	b = AppendToken(b, topic)
	return string(b)
}

// DeadLetterConfig describes the dead-letter stream.
type DeadLetterConfig struct {
	// EventStream is the name of the event stream; the dead-letter stream
	// is DeadLetterStreamName of it. Default (empty): DefaultStreamName.
	EventStream string
	// Prefix is the subject prefix of the events. Default (empty):
	// DefaultPrefix.
	Prefix string
	// Replicas is the number of copies in a NATS cluster. Default (0): 1.
	Replicas int
	// Storage is the stream's storage. Default (zero value): file.
	Storage jetstream.StorageType
}

// deadLetterDuplicateWindow is the dead-letter stream's duplicate window.
const deadLetterDuplicateWindow = 2 * time.Minute

// EnsureDeadLetterStream creates the dead-letter stream when missing and
// returns its name. Records are kept until deleted: there are few, and each
// stands for data an operator has to look at.
func EnsureDeadLetterStream(ctx context.Context, js jetstream.JetStream, cfg DeadLetterConfig) (string, error) {
	var name string
	err := retry(ctx, retryWithin, func(ctx context.Context) (err error) {
		name, err = ensureDeadLetterStream(ctx, js, cfg)
		return err
	})
	return name, err
}

func ensureDeadLetterStream(ctx context.Context, js jetstream.JetStream, cfg DeadLetterConfig) (string, error) {
	if cfg.EventStream == "" {
		cfg.EventStream = DefaultStreamName
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if err := ValidatePrefix(cfg.Prefix); err != nil {
		return "", err
	}
	name := DeadLetterStreamName(cfg.EventStream)
	subject := DeadLetterSubjects(cfg.Prefix)
	_, err := js.Stream(ctx, name)
	if err == nil {
		return name, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return "", fmt.Errorf("look up stream %s: %w", name, err)
	}
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:        name,
		Description: "tablecast: a record of each event published without its rows (larger than the reader's limit)",
		Subjects:    []string{subject},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		// Records are few: a window of JetStream's own default costs
		// nothing and drops the record a quick replay publishes again.
		Duplicates: deadLetterDuplicateWindow,
		MaxMsgs:    -1,
		MaxBytes:   -1,
		Replicas:   max(cfg.Replicas, 1),
		Storage:    cfg.Storage,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return "", fmt.Errorf("create stream %s for %q: %w", name, subject, err)
	}
	return name, nil
}
