package tablecast

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ConsumerConfig configures Consume. Only Durable is required.
type ConsumerConfig struct {
	// Stream is the JetStream stream of the events. Default (empty):
	// "TABLECAST", tablecast's default TABLECAST_STREAM.
	Stream string
	// Durable names the consumer: JetStream keeps its position under this
	// name, so a service that restarts carries on where it stopped.
	// Instances of one service share the name and the work. Required.
	Durable string
	// Subjects filter the events, e.g. "tablecast.shop.public.orders.>"
	// (see docs/contract.md for subjects). Default (none): every row
	// change, "tablecast.*.*.*.*". Messages that are not events, which a
	// wider filter such as "tablecast.shop.>" also takes (transaction
	// markers, custom topics' messages), are acknowledged without calling
	// the handler. Changing them on an existing consumer changes what it
	// delivers from its current position on.
	Subjects []string
	// AckWait is how long JetStream waits for an acknowledgement before it
	// delivers a message again. The handler may take longer: Consume tells
	// JetStream the message is in progress every AckWait/2. Default (0):
	// 30s.
	AckWait time.Duration
	// Backoff is the wait before an event whose handler failed is
	// delivered again: the first failure waits Backoff[0], the second
	// Backoff[1], and every later one the last. Default (nil): 1s, 5s,
	// 30s, 2m.
	Backoff []time.Duration
	// MaxDeliver is how many times an event is delivered at most; after
	// that JetStream gives up on it for this consumer (it stays in the
	// stream). Default (0): no limit, nothing is ever skipped.
	MaxDeliver int
	// MaxAckPending is how many events may be delivered and not yet
	// acknowledged. 1 keeps strict stream order even across retries, at
	// the cost of waiting out each backoff. Default (0): 1000.
	MaxAckPending int
	// Batch is how many messages one pull asks for. Default (0): 64.
	Batch int
	// DedupWindow is how long an event id is remembered once handled: a
	// second delivery of it within the window is acknowledged without
	// calling the handler. An id is told apart by the PostgreSQL cluster
	// (system identifier, from the Tablecast-Origin header) and database
	// that sent it, since another cluster's events may have the same ids.
	// It is memory of this process only (about 130 bytes per event of the
	// window). Default (0): 10 minutes; negative: no de-duplication.
	DedupWindow time.Duration
	// Logger receives a line for each failed handler, malformed message
	// and skipped duplicate. Default (nil): slog.Default().
	Logger *slog.Logger
}

// Handler handles one event. Returning nil acknowledges it; an error has
// it delivered again after a backoff. It must return once ctx ends.
type Handler func(ctx context.Context, ev *Event) error

// Defaults of ConsumerConfig.
const (
	DefaultStream      = "TABLECAST"
	DefaultAckWait     = 30 * time.Second
	DefaultBatch       = 64
	DefaultDedupWindow = 10 * time.Minute
	DefaultMaxAckPend  = 1000
)

// DefaultBackoff is the redelivery schedule of a failing event.
var DefaultBackoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute}

// fetchWait bounds one pull, so that Consume notices ctx's end promptly.
const fetchWait = 2 * time.Second

func (c ConsumerConfig) withDefaults() (ConsumerConfig, error) {
	var errs []error
	if c.Durable == "" {
		errs = append(errs, errors.New("Durable: a consumer name is required"))
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if len(c.Subjects) == 0 {
		c.Subjects = []string{"tablecast.*.*.*.*"}
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.AckWait < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("AckWait %s: at least 100ms", c.AckWait))
	}
	if c.Backoff == nil {
		c.Backoff = DefaultBackoff
	}
	for _, d := range c.Backoff {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("Backoff %v: every wait must be positive", c.Backoff))
			break
		}
	}
	if len(c.Backoff) == 0 {
		errs = append(errs, errors.New("Backoff: an empty schedule; leave it nil for the default"))
	}
	switch {
	case c.MaxDeliver == 0:
		c.MaxDeliver = -1
	case c.MaxDeliver < 0:
		errs = append(errs, fmt.Errorf("MaxDeliver %d: positive, or 0 for no limit", c.MaxDeliver))
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPend
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.Batch < 0 || c.MaxAckPending < 0 {
		errs = append(errs, fmt.Errorf("Batch %d, MaxAckPending %d: must be positive", c.Batch, c.MaxAckPending))
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = DefaultDedupWindow
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, errors.Join(errs...)
}

// backoff is the wait before delivery number delivered+1.
func (c ConsumerConfig) backoff(delivered uint64) time.Duration {
	i := int(delivered) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(c.Backoff) {
		i = len(c.Backoff) - 1
	}
	return c.Backoff[i]
}

// Consume creates (or updates) the durable pull consumer cfg.Durable on
// the stream and calls h for each event, one at a time, until ctx ends
// (it then returns nil) or JetStream refuses the consumer: it returns an
// error wrapping jetstream.ErrConsumerNotFound (or ErrStreamNotFound)
// once the consumer (or stream) is deleted under it. See the
// package documentation for acknowledgement, redelivery, de-duplication
// and claims.
func Consume(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig, h Handler) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return fmt.Errorf("consumer configuration: %w", err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Stream, jetstream.ConsumerConfig{
		Durable:        cfg.Durable,
		FilterSubjects: cfg.Subjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        cfg.AckWait,
		MaxDeliver:     cfg.MaxDeliver,
		MaxAckPending:  cfg.MaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("create consumer %s on stream %s: %w", cfg.Durable, cfg.Stream, err)
	}
	c := &consumer{cfg: cfg, h: h, resolver: NewResolver(js), log: cfg.Logger.With("consumer", cfg.Durable)}
	if cfg.DedupWindow > 0 {
		c.seen = newSeenIDs(cfg.DedupWindow)
	}
	for ctx.Err() == nil {
		batch, err := cons.Fetch(cfg.Batch, jetstream.FetchMaxWait(fetchWait))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.log.Warn("fetch failed; retrying", "err", err)
			if !sleep(ctx, time.Second) {
				return nil
			}
			continue
		}
		for m := range batch.Messages() {
			if ctx.Err() != nil {
				_ = m.Nak() // for another instance, now
				continue
			}
			c.handle(ctx, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// A pull nobody answers (the consumer deleted, its leader
			// moving) ends at once: find out which before the next one.
			if gone := c.gone(ctx, cons); gone != nil {
				return gone
			}
			c.log.Warn("fetch ended with an error; retrying", "err", err)
			if !sleep(ctx, time.Second) {
				return nil
			}
		}
	}
	return nil
}

// gone returns an error when the consumer or its stream no longer exists
// (deleted by an operator): fetching again would never deliver anything.
func (c *consumer) gone(ctx context.Context, cons jetstream.Consumer) error {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := cons.Info(ictx)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("consumer %s on stream %s: %w", c.cfg.Durable, c.cfg.Stream, err)
	}
	return nil
}

type consumer struct {
	cfg      ConsumerConfig
	h        Handler
	resolver *Resolver
	seen     *seenIDs
	log      *slog.Logger
}

func (c *consumer) handle(ctx context.Context, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		c.log.Error("message without JetStream metadata; terminated", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	retry := func(what string, err error) {
		if ctx.Err() != nil {
			_ = m.Nak()
			return
		}
		d := c.cfg.backoff(md.NumDelivered)
		c.log.Error(what+"; delivering it again later", "subject", m.Subject(), "seq", md.Sequence.Stream,
			"delivered", md.NumDelivered, "retry_in", d, "err", err)
		if err := m.NakWithDelay(d); err != nil {
			c.log.Warn("nak failed; JetStream delivers it again after the ack wait", "seq", md.Sequence.Stream, "err", err)
		}
	}
	ev, err := ParseEvent(m.Data())
	if err != nil {
		if notEventSubject(m.Subject()) {
			// A transaction marker or a custom topic's message, taken by a
			// wide filter: not for the handler, and never an event on a
			// later delivery either.
			c.log.Debug("not an event; acknowledged", "subject", m.Subject(), "seq", md.Sequence.Stream)
			c.ack(ctx, m, &Event{Sequence: md.Sequence.Stream})
			return
		}
		retry("malformed event", err)
		return
	}
	ev.Subject, ev.Sequence, ev.Delivered = m.Subject(), md.Sequence.Stream, md.NumDelivered
	key := seenKey(m.Headers().Get(originHeader), ev)
	if c.seen != nil && c.seen.seen(key, time.Now()) {
		c.log.Info("event handled before; acknowledged again", "id", ev.ID, "seq", ev.Sequence, "delivered", ev.Delivered)
		c.ack(ctx, m, ev)
		return
	}
	if ev.Claim != nil {
		full, err := c.resolver.Resolve(ctx, ev)
		switch {
		case errors.Is(err, ErrClaimGone):
			c.log.Warn("claimed object gone; handing the event over as received", "id", ev.ID, "object", ev.Claim.Object)
		case err != nil:
			retry("claim not resolved", err)
			return
		default:
			ev = full
		}
	}
	stop := inProgress(m, c.cfg.AckWait/2)
	err = c.h(ctx, ev)
	stop()
	if err != nil {
		retry("handler failed", err)
		return
	}
	if c.seen != nil {
		c.seen.add(key, time.Now())
	}
	c.ack(ctx, m, ev)
}

// ack acknowledges and waits for JetStream to confirm; a lost
// acknowledgement means a redelivery, which the id window absorbs.
func (c *consumer) ack(ctx context.Context, m jetstream.Msg, ev *Event) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := m.DoubleAck(actx); err != nil {
		c.log.Warn("acknowledgement not confirmed; the event may be delivered again", "id", ev.ID, "seq", ev.Sequence, "err", err)
	}
}

// inProgress tells JetStream every interval that m is still being
// handled, until stop is called.
func inProgress(m jetstream.Msg, every time.Duration) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = m.InProgress()
			}
		}
	}()
	return func() { close(done); <-finished }
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// originHeader names the PostgreSQL a message came from:
// "<system identifier>/<timeline>/<database>/<slot>" (docs/contract.md).
const originHeader = "Tablecast-Origin"

// seenKey is what the id window remembers of an event: its id, with the
// cluster (system identifier) and database it came from. Ids are commit
// positions in one cluster's WAL, so readers of two clusters publishing
// into one stream may give two events one id. The timeline and slot are
// left out: a failover slot replays what it sent before on the promoted
// server's timeline, under the same ids.
func seenKey(origin string, ev *Event) string {
	cluster, _, _ := strings.Cut(origin, "/")
	return cluster + "/" + ev.DB + "/" + ev.ID
}

// notEventSubject reports whether subject is one where tablecast
// publishes messages that are not events: a transaction marker
// (<prefix>.<database>.%tx) or a custom topic (<prefix>.topic.<name>).
func notEventSubject(subject string) bool {
	toks := strings.Split(subject, ".")
	n := len(toks)
	return n >= 2 && (toks[n-1] == "%tx" || toks[n-2] == "topic")
}
