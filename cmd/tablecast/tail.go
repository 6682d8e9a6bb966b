package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// tail prints the events of one table (or of all) as JSON lines: a user's
// first look at what tablecast publishes. It reads the stream with an
// ordered consumer, so it never misses or repeats an event while it runs.
func tail(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	all := fs.Bool("all", false, "start from the first event the stream holds instead of new events")
	count := fs.Int("n", 0, "stop after this many events (0: run until interrupted)")
	if err := fs.Parse(args); err != nil {
		return usageError{"tail: " + err.Error() + " (usage: tablecast tail [--all] [-n N] [schema.table])"}
	}
	filter := cfg.SubjectPrefix + ".>"
	switch fs.NArg() {
	case 0:
	case 1:
		schemaName, table, err := schema.ParseTableName(fs.Arg(0))
		if err != nil {
			return usageError{"tail: " + err.Error()}
		}
		filter = stream.TableSubjects(cfg.SubjectPrefix, "", schemaName, table)
	default:
		return usageError{"tail: at most one table (usage: tablecast tail [--all] [-n N] [schema.table])"}
	}

	url := cfg.NATSURL
	if url == "" {
		url = cfg.embeddedURL()
	}
	opts, err := cfg.natsOptions()
	if err != nil {
		return err
	}
	log := newLogger(cfg, os.Stderr)
	nc, err := stream.Connect(ctx, url, "tablecast-tail", log, opts...)
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("open JetStream: %w", err)
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
		w.Write(msg.Data())
		w.WriteByte('\n')
		if err := w.Flush(); err != nil {
			return fmt.Errorf("write event: %w", err)
		}
	}
	it.Stop()
	return nil
}
