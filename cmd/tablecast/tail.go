package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// tail prints the events of one table (or of all) as JSON lines: a user's
// first look at what tablecast publishes. It reads the stream with an
// ordered consumer, so it never misses or repeats an event while it runs.
// An event stored as an object (too large for one NATS message) is printed
// whole: its claim is resolved; when the object is gone, the event is
// printed as received, with a warning.
func tail(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	all := fs.Bool("all", false, "start from the first event the stream holds instead of new events")
	count := fs.Int("n", 0, "stop after this many events (0: run until interrupted)")
	if err := fs.Parse(args); err != nil {
		return usageError{"tail: " + err.Error() + " (usage: tablecast tail [--all] [-n N] [schema.table])"}
	}
	if *count < 0 {
		return usageError{fmt.Sprintf("tail: -n %d: want a positive count of events, or 0 to run until interrupted (usage: tablecast tail [--all] [-n N] [schema.table])", *count)}
	}
	filter := cfg.SubjectPrefix + ".>"
	var schemaName, table string
	switch fs.NArg() {
	case 0:
	case 1:
		var err error
		schemaName, table, err = schema.ParseTableName(fs.Arg(0))
		if err != nil {
			return usageError{"tail: " + err.Error()}
		}
		filter = stream.TableSubjects(cfg.SubjectPrefix, "", schemaName, table)
	default:
		return usageError{"tail: at most one table (usage: tablecast tail [--all] [-n N] [schema.table])"}
	}

	url := cfg.clientURL()
	opts, err := cfg.natsOptions()
	if err != nil {
		return err
	}
	log := newLogger(cfg, os.Stderr)
	nc, err := connectWaiting(ctx, url, "tablecast-tail", log, opts...)
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("open JetStream: %w", err)
	}
	if table != "" {
		if err := checkStreamed(ctx, js, schemaName, table); err != nil {
			return err
		}
	}
	policy := jetstream.DeliverNewPolicy
	if *all {
		policy = jetstream.DeliverAllPolicy
	}
	cons, err := js.OrderedConsumer(ctx, cfg.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  policy,
	})
	if err != nil {
		return fmt.Errorf("read stream %s: %w", cfg.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("read stream %s: %w", cfg.Stream, err)
	}
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	claims := stream.NewResolver(js)
	w := bufio.NewWriter(out)
	defer w.Flush()
	for n := 0; *count == 0 || n < *count; n++ {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("read stream %s: %w", cfg.Stream, err)
		}
		data := msg.Data()
		if isChangeSubject(cfg.SubjectPrefix, msg.Subject()) {
			full, err := claims.Resolve(ctx, data)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				log.Warn("printing an event as received: cannot resolve its claim", "subject", msg.Subject(), "err", err)
			} else {
				data = full
			}
		}
		w.Write(data)
		w.WriteByte('\n')
		if err := w.Flush(); err != nil {
			return fmt.Errorf("write event: %w", err)
		}
	}
	it.Stop()
	return nil
}

// checkStreamed fails, naming what is streamed, when no database's reader
// has registered the table: tail would otherwise wait for it forever.
func checkStreamed(ctx context.Context, js jetstream.JetStream, schemaName, table string) error {
	reg, err := stream.LookupRegistry(ctx, js, "")
	if errors.Is(err, stream.ErrNoRegistry) {
		return fmt.Errorf("table %s is not streamed: %w (is tablecast cdc running against this NATS?)", schema.FormatTableName(schemaName, table), err)
	}
	if err != nil {
		return err
	}
	tables, err := reg.Tables(ctx)
	if err != nil {
		return err
	}
	var names []string
	for _, t := range tables {
		if t.Schema == schemaName && t.Table == table {
			return nil
		}
		names = append(names, schema.FormatTableName(t.Schema, t.Table))
	}
	slices.Sort(names)
	names = slices.Compact(names)
	known := "none yet"
	if len(names) > 0 {
		if len(names) > 20 {
			names = append(names[:20], fmt.Sprintf("and %d more", len(names)-20))
		}
		known = strings.Join(names, ", ")
	}
	return fmt.Errorf("table %s is not streamed: no publication read by a tablecast reader includes it (streamed tables: %s)", schema.FormatTableName(schemaName, table), known)
}

// isChangeSubject tells a row change's subject,
// <prefix>.<db>.<schema>.<table>.<op>, from a custom topic's,
// <prefix>.topic.<name>, whose messages are the application's own JSON.
func isChangeSubject(prefix, subject string) bool {
	return len(subject) > len(prefix) && strings.Count(subject[len(prefix)+1:], ".") == 3
}
