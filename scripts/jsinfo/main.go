// Command jsinfo prints a JetStream stream's message count, the seconds
// between its first and last stored message, and its size, for
// scripts/bench-cdc.sh:
//
//	<msgs> <first message unix time> <seconds from first to last> <bytes>
//
// With -rows-db, it prints instead how far the row state of that database
// is applied (its marker in the stream's rows stream), and when the marker
// was written; it fails when there is no row state:
//
//	<applied event sequence> <marker unix time>
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/rowstate"
)

func main() {
	url := flag.String("url", nats.DefaultURL, "NATS server")
	name := flag.String("stream", "TABLECAST", "stream name")
	rowsDB := flag.String("rows-db", "", "print the row state's position for this database instead")
	prefix := flag.String("prefix", "tablecast", "subject prefix (with -rows-db)")
	flag.Parse()
	run := run
	if *rowsDB != "" {
		run = func(url, name string) error { return runRows(url, name, *prefix, *rowsDB) }
	}
	if err := run(*url, *name); err != nil {
		fmt.Fprintln(os.Stderr, "jsinfo:", err)
		os.Exit(1)
	}
}

// openStream connects to url and looks up stream name; done ends the
// connection.
func openStream(ctx context.Context, url, name string) (s jetstream.Stream, done func(), err error) {
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err == nil {
		s, err = js.Stream(ctx, name)
	}
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return s, nc.Close, nil
}

func run(url, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, done, err := openStream(ctx, url, name)
	if err != nil {
		return err
	}
	defer done()
	st := s.CachedInfo().State
	fmt.Printf("%d %.6f %.6f %d\n", st.Msgs, float64(st.FirstTime.UnixNano())/1e9, st.LastTime.Sub(st.FirstTime).Seconds(), st.Bytes)
	return nil
}

func runRows(url, events, prefix, db string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, done, err := openStream(ctx, url, rowstate.RowsStreamName(events))
	if err != nil {
		return err
	}
	defer done()
	msg, err := s.GetLastMsgForSubject(ctx, rowstate.DBMarkerSubject(prefix, db))
	if err != nil {
		return fmt.Errorf("row state of %s: %w", db, err)
	}
	fmt.Printf("%s %.6f\n", msg.Header.Get(rowstate.HeaderSeq), float64(msg.Time.UnixNano())/1e9)
	return nil
}
