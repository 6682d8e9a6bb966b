// Command example is a backend service that follows the orders of
// tablecast's demo table (scripts/demo.sql) from NATS with the Go client:
// a durable consumer, so that a restart carries on where it stopped, and
// typed access to the rows.
//
//	NATS_URL=nats://127.0.0.1:4222 go run ./clients/go/example
//
// NATS_USER and NATS_PASSWORD sign in (the read-only user of the embedded
// NATS or of deploy/nats/nats.conf is enough); SUBJECTS narrows what it
// follows (default: public.orders of every database).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/clients/go/tablecast"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var opts []nats.Option
	if u := os.Getenv("NATS_USER"); u != "" {
		opts = append(opts, nats.UserInfo(u, os.Getenv("NATS_PASSWORD")))
	}
	nc, err := nats.Connect(env("NATS_URL", nats.DefaultURL), opts...)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cfg := tablecast.ConsumerConfig{
		Durable:  env("DURABLE", "example-orders"),
		Subjects: []string{env("SUBJECTS", "tablecast.*.public.orders.>")},
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}
	return tablecast.Consume(ctx, js, cfg, func(ctx context.Context, ev *tablecast.Event) error {
		if ev.Op == tablecast.OpTruncate {
			fmt.Println("orders truncated")
			return nil
		}
		id, err := ev.Key.Int64("id")
		if err != nil {
			return err // delivered again after a backoff
		}
		switch ev.Op {
		case tablecast.OpCreate, tablecast.OpUpdate, tablecast.OpRead:
			status, _ := ev.Data.String("status")
			total, err := ev.Data.Numeric("total")
			if err != nil {
				return err
			}
			fmt.Printf("order %d %s: %s, total %s\n", id, ev.Op, status, total.FloatString(2))
		case tablecast.OpDelete:
			fmt.Printf("order %d deleted\n", id)
		}
		return nil
	})
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
