package stream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// RowsStreamName is the stream of the row state (package rowstate) beside
// the event stream named events: "<events>_ROWS".
func RowsStreamName(events string) string { return events + "_ROWS" }

// Stream defaults.
const (
	DefaultStreamName = "TABLECAST"
	DefaultPrefix     = "tablecast"
	// DefaultDuplicateWindow is how long JetStream remembers a Nats-Msg-Id.
	// The CDC reader does not need it to cover an outage: it learns what
	// the stream holds when it starts streaming again, after a barrier
	// that lets whatever a failed session left in flight be stored first
	// (Barrier). What is left is what a barrier cannot order (the
	// messages of a dropped connection that the server had not read yet,
	// a replicated stream applying late) and the quick retries of other
	// clients publishing with ids. The server keeps every id of the
	// window in memory and looks each message up in that index (about
	// 110 bytes of heap an id, BenchmarkDuplicateIndex): at the reader's
	// peak rate, a second holds about 150,000 of them, two minutes (the
	// server's own default) 18 million.
	DefaultDuplicateWindow = time.Second
)

// StreamBytesFor is the default size limit of the event stream in a store
// of maxStore bytes: three quarters of it. The stream then always fits, with
// a quarter left for the key-value buckets, consumers' state, the blocks the
// stream has not reclaimed yet, and streams that backend services create.
// JetStream reserves a stream's MaxBytes in the store when it creates the
// stream, and refuses one that does not fit.
func StreamBytesFor(maxStore int64) int64 { return maxStore / 4 * 3 }

// StreamConfig describes the one JetStream stream that holds every subject
// under the prefix: row changes and custom topics.
type StreamConfig struct {
	// Name of the stream. Default (empty): DefaultStreamName, "TABLECAST".
	Name string
	// Prefix is the first token(s) of every subject; the stream stores
	// "<Prefix>.>". Default (empty): DefaultPrefix, "tablecast".
	Prefix string
	// DuplicateWindow is how long JetStream drops a message whose Nats-Msg-Id
	// it has already stored. Default (0): DefaultDuplicateWindow, 1s.
	DuplicateWindow time.Duration
	// MaxAge removes messages older than this. Default (0): kept forever.
	MaxAge time.Duration
	// MaxBytes removes the oldest messages once the stream holds more bytes.
	// Default (0 or -1): unlimited.
	MaxBytes int64
	// Replicas is the number of copies in a NATS cluster. Default (0): 1.
	Replicas int
	// Storage is where the stream lives. Default (zero value):
	// jetstream.FileStorage. It cannot be changed once the stream exists.
	Storage jetstream.StorageType
	// UseExisting leaves a stream that exists as it is: only a missing
	// one is created (with the settings above). For processes that read
	// the stream but do not own its settings (the gateway alone), which
	// must not undo the retention the reader was given.
	UseExisting bool
}

// withDefaults returns c with its zero values replaced, and every problem
// with it.
func (c StreamConfig) withDefaults() (StreamConfig, error) {
	if c.Name == "" {
		c.Name = DefaultStreamName
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = -1
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	var errs []error
	if strings.ContainsAny(c.Name, " \t\r\n.*>/\\") {
		errs = append(errs, fmt.Errorf("stream name %q: must not contain white space, '.', '*', '>' or path separators", c.Name))
	}
	if err := ValidatePrefix(c.Prefix); err != nil {
		errs = append(errs, err)
	}
	if c.DuplicateWindow < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("duplicate window %s: must be at least 100ms", c.DuplicateWindow))
	}
	if c.MaxAge < 0 {
		errs = append(errs, fmt.Errorf("max age %s: must not be negative", c.MaxAge))
	}
	if c.MaxAge > 0 && c.DuplicateWindow > c.MaxAge {
		errs = append(errs, fmt.Errorf("duplicate window %s: must not exceed max age %s", c.DuplicateWindow, c.MaxAge))
	}
	if c.MaxBytes < -1 {
		errs = append(errs, fmt.Errorf("max bytes %d: must be positive, or 0 or -1 for unlimited", c.MaxBytes))
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas %d: must be between 1 and 5", c.Replicas))
	}
	if c.Storage != jetstream.FileStorage && c.Storage != jetstream.MemoryStorage {
		errs = append(errs, fmt.Errorf("storage %d: unknown storage type", c.Storage))
	}
	return c, errors.Join(errs...)
}

// Subjects returns the subject filter of the stream, "<Prefix>.>" (with the
// default prefix if Prefix is empty).
func (c StreamConfig) Subjects() string {
	if c.Prefix == "" {
		return DefaultPrefix + ".>"
	}
	return c.Prefix + ".>"
}

// EnsureStream makes the stream described by cfg exist and returns it. A
// missing stream is created. An existing one is left as it is with
// UseExisting, and otherwise updated when it differs in
// the fields of StreamConfig (its subjects become exactly "<Prefix>.>",
// ControlSubject(Prefix) and FenceSubjects(Prefix), and it allows batch
// publishing); its
// other settings are left as they are, and no message is ever deleted by
// EnsureStream itself (a smaller MaxAge or MaxBytes does make JetStream drop
// the messages beyond the new limit). Storage cannot be changed in place:
// a mismatch is an error.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	var s jetstream.Stream
	err := retry(ctx, retryWithin, func(ctx context.Context) error {
		var err error
		s, err = ensureStream(ctx, js, cfg)
		return err
	})
	return s, err
}

func ensureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("ensure stream: %w", err)
	}
	subject := cfg.Prefix + ".>"
	subjects := []string{subject, ControlSubject(cfg.Prefix), FenceSubjects(cfg.Prefix)}

	s, err := js.Stream(ctx, cfg.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        cfg.Name,
			Description: "tablecast: row changes and custom topics",
			Subjects:    subjects,
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			Duplicates:  cfg.DuplicateWindow,
			MaxAge:      cfg.MaxAge,
			MaxBytes:    cfg.MaxBytes,
			MaxMsgs:     -1,
			Replicas:    cfg.Replicas,
			Storage:     cfg.Storage,
			// Publishers may send fast batches (WithBatches); servers
			// before 2.14 ignore it.
			AllowBatchPublish: true,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Another process created it between our look-up and now:
			// compare with theirs as with any existing stream.
			s, err = js.Stream(ctx, cfg.Name)
			if err != nil {
				return nil, fmt.Errorf("look up stream %s: %w", cfg.Name, err)
			}
			break
		}
		if err != nil {
			// Readers starting together against a new NATS all create
			// it: the one that lost may be refused for another reason
			// (the storage the winner's reserved), with the stream there.
			if other, lerr := js.Stream(ctx, cfg.Name); lerr == nil {
				s = other
				break
			}
			return nil, fmt.Errorf("create stream %s for %q: %w", cfg.Name, subject, err)
		}
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("look up stream %s: %w", cfg.Name, err)
	}

	if cfg.UseExisting {
		return s, nil
	}
	have := s.CachedInfo().Config
	if have.Storage != cfg.Storage {
		return nil, fmt.Errorf("stream %s uses %s storage but %s is configured; storage cannot be changed in place (back up, delete and recreate the stream by hand)",
			cfg.Name, have.Storage, cfg.Storage)
	}
	want := have
	want.Subjects = subjects
	want.AllowBatchPublish = true
	want.Duplicates = cfg.DuplicateWindow
	want.MaxAge = cfg.MaxAge
	want.MaxBytes = cfg.MaxBytes
	want.Replicas = cfg.Replicas
	if sameStreamConfig(have, want) {
		return s, nil
	}
	s, err = js.UpdateStream(ctx, want)
	if err != nil {
		return nil, fmt.Errorf("update stream %s (subjects %v, duplicate window %s, max age %s, max bytes %d, replicas %d): %w",
			cfg.Name, want.Subjects, want.Duplicates, want.MaxAge, want.MaxBytes, want.Replicas, err)
	}
	return s, nil
}

// sameStreamConfig compares the fields EnsureStream manages.
func sameStreamConfig(a, b jetstream.StreamConfig) bool {
	maxBytes := func(n int64) int64 {
		if n <= 0 {
			return -1
		}
		return n
	}
	return slices.Equal(a.Subjects, b.Subjects) &&
		a.AllowBatchPublish == b.AllowBatchPublish &&
		a.Duplicates == b.Duplicates &&
		a.MaxAge == b.MaxAge &&
		maxBytes(a.MaxBytes) == maxBytes(b.MaxBytes) &&
		a.Replicas == b.Replicas &&
		a.Storage == b.Storage
}
