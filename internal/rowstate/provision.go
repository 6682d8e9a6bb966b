package rowstate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TombstoneTTL is how long a deleted row's tombstone stays in the rows
// stream. A tombstone replaces the row's last version at once (one message
// per subject); it is kept a while so that a maintainer applying a batch
// again after a restart does not write back a row deleted later (put's
// careful check), and then removed by the server. An hour is far beyond
// any such restart.
const TombstoneTTL = time.Hour

// StreamsConfig says how the rows stream is provisioned.
type StreamsConfig struct {
	// Events is the name of the event stream; the rows stream is named
	// after it (RowsStreamName). Default "TABLECAST".
	Events string
	// Prefix is the subject prefix of the events. Default "tablecast".
	Prefix string
	// Replicas in a NATS cluster. Default 1.
	Replicas int
	// Storage of the stream. Default file.
	Storage jetstream.StorageType
}

// EnsureStreams creates the rows stream when missing, and brings the
// settings tablecast manages up to date when they differ. The rows stream
// keeps one message per subject (a row's latest version, a tombstone, a
// marker) with no other limit: dropping a row would corrupt the state, so a
// full store refuses new versions instead and the maintainer waits.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfg StreamsConfig) (jetstream.Stream, error) {
	if cfg.Events == "" {
		cfg.Events = "TABLECAST"
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "tablecast"
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	want := jetstream.StreamConfig{
		Name:              RowsStreamName(cfg.Events),
		Description:       "tablecast row state: the latest version of every row by key",
		Subjects:          []string{RowsSubjects(cfg.Prefix)},
		Retention:         jetstream.LimitsPolicy,
		MaxMsgsPerSubject: 1,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		Discard:           jetstream.DiscardNew,
		AllowDirect:       true,
		AllowMsgTTL:       true,
		// The maintainer writes a batch's rows as a fast batch where the
		// server takes them (2.14 and later; older ones ignore it).
		AllowBatchPublish: true,
		Replicas:          cfg.Replicas,
		Storage:           cfg.Storage,
	}
	s, err := js.Stream(ctx, want.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return js.Stream(ctx, want.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("create stream %s: %w", want.Name, err)
		}
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("look up stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	if have.Storage != want.Storage {
		return nil, fmt.Errorf("stream %s uses %s storage but %s is configured; storage cannot be changed in place", want.Name, have.Storage, want.Storage)
	}
	if have.Replicas == want.Replicas && have.MaxMsgsPerSubject == want.MaxMsgsPerSubject && have.AllowDirect && have.AllowMsgTTL &&
		have.AllowBatchPublish && len(have.Subjects) == 1 && have.Subjects[0] == want.Subjects[0] {
		return s, nil
	}
	upd := have
	upd.Subjects, upd.Replicas = want.Subjects, want.Replicas
	upd.MaxMsgsPerSubject, upd.AllowDirect, upd.AllowMsgTTL, upd.AllowBatchPublish = want.MaxMsgsPerSubject, true, true, true
	s, err = js.UpdateStream(ctx, upd)
	if err != nil {
		return nil, fmt.Errorf("update stream %s: %w", want.Name, err)
	}
	return s, nil
}
