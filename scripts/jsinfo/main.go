// Command jsinfo prints a JetStream stream's message count, and the seconds
// between its first and last stored message, for scripts/bench-cdc.sh:
//
//	<msgs> <first message unix time> <seconds from first to last>
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	url := flag.String("url", nats.DefaultURL, "NATS server")
	name := flag.String("stream", "TABLECAST", "stream name")
	flag.Parse()
	if err := run(*url, *name); err != nil {
		fmt.Fprintln(os.Stderr, "jsinfo:", err)
		os.Exit(1)
	}
}

func run(url, name string) error {
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		return fmt.Errorf("connect %s: %w", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	st := s.CachedInfo().State
	fmt.Printf("%d %.6f %.6f\n", st.Msgs, float64(st.FirstTime.UnixNano())/1e9, st.LastTime.Sub(st.FirstTime).Seconds())
	return nil
}
