// Command cdclat measures how long committed transactions take to reach
// JetStream and a WebSocket client, for scripts/bench-latency.sh. It takes
// no part in the pipeline while the load runs, apart from the one WebSocket
// client:
//
//	cdclat ws -url ws://127.0.0.1:8080/ws -table public.lat -out ws.txt
//	    subscribes to the table over the gateway and, until SIGTERM or
//	    SIGINT, notes every event's commit LSN, commit time and the time its
//	    frame arrived; writes them when it ends;
//	cdclat js -url nats://127.0.0.1:4222 -stream TABLECAST -out js.txt
//	    after the load: reads every message of the stream and notes each
//	    event's commit LSN, commit time and the time JetStream stored it
//	    (the message's own timestamp, taken by the server as it stores);
//	cdclat report -floor floor.txt -js js.txt [-ws ws.txt] -from T -to T
//	    joins them by commit LSN with walfloor's record of the same
//	    transactions (the walsender's commit → receipt) and prints, for the
//	    transactions committed in [from, to) (Unix seconds), the percentiles
//	    of each and of the differences.
//
// A transaction's latency is that of its last event: commit → the moment
// its last event was stored (js) or received (ws), against the moment its
// commit message reached walfloor (floor).
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "ws":
		err = runWS(os.Args[2:])
	case "js":
		err = runJS(os.Args[2:])
	case "report":
		err = runReport(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cdclat:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: cdclat ws|js|report [flags] (see the source's doc comment)")
	os.Exit(2)
}

// sample is one event: its transaction's commit LSN, its commit time, and
// when it arrived (unix nanoseconds).
type sample struct {
	lsn     uint64
	commit  int64
	arrived int64
}

func writeSamples(path string, s []sample) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	var line []byte
	for _, x := range s {
		line = strconv.AppendUint(line[:0], x.lsn, 16)
		line = append(line, ' ')
		line = strconv.AppendInt(line, x.commit, 10)
		line = append(line, ' ')
		line = strconv.AppendInt(line, x.arrived, 10)
		line = append(line, '\n')
		_, _ = w.Write(line)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// parseEvent finds an event's "lsn" and "commit_time" in b without decoding
// the rest of it.
func parseEvent(b []byte) (lsn uint64, commit int64, ok bool) {
	l, ok1 := stringAfter(b, `"lsn":"`)
	c, ok2 := stringAfter(b, `"commit_time":"`)
	if !ok1 || !ok2 {
		return 0, 0, false
	}
	hi, lo, found := bytes.Cut(l, []byte{'/'})
	if !found {
		return 0, 0, false
	}
	h, err1 := strconv.ParseUint(string(hi), 16, 32)
	o, err2 := strconv.ParseUint(string(lo), 16, 32)
	t, err3 := time.Parse(time.RFC3339Nano, string(c))
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, false
	}
	return h<<32 | o, t.UnixNano(), true
}

func stringAfter(b []byte, key string) ([]byte, bool) {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return nil, false
	}
	b = b[i+len(key):]
	j := bytes.IndexByte(b, '"')
	if j < 0 {
		return nil, false
	}
	return b[:j], true
}

func runWS(args []string) error {
	fs := flag.NewFlagSet("ws", flag.ExitOnError)
	url := fs.String("url", "ws://127.0.0.1:8080/ws", "gateway WebSocket URL")
	table := fs.String("table", "", "table to subscribe to, schema.table")
	out := fs.String("out", "", "file to write the samples to")
	_ = fs.Parse(args)
	if *table == "" || *out == "" {
		return errors.New("ws: -table and -out are required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(dctx, *url, nil)
	if err != nil {
		return fmt.Errorf("dial %s: %w", *url, err)
	}
	defer c.CloseNow()
	c.SetReadLimit(16 << 20)
	sub := fmt.Sprintf(`{"type":"subscribe","id":"s1","table":%q}`, *table)
	if err := c.Write(dctx, websocket.MessageText, []byte(sub)); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	samples := make([]sample, 0, 1<<20)
	subscribed := false
	for {
		_, b, err := c.Read(ctx)
		now := time.Now().UnixNano()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return fmt.Errorf("read: %w", err)
		}
		switch {
		case bytes.HasPrefix(b, []byte(`{"type":"event"`)):
			if lsn, commit, ok := parseEvent(b); ok {
				samples = append(samples, sample{lsn, commit, now})
			}
		case bytes.HasPrefix(b, []byte(`{"type":"subscribed"`)):
			subscribed = true
			fmt.Println("subscribed")
		case bytes.HasPrefix(b, []byte(`{"type":"error"`)):
			return fmt.Errorf("gateway: %s", b)
		}
	}
	if !subscribed {
		return errors.New("never subscribed")
	}
	return writeSamples(*out, samples)
}

func runJS(args []string) error {
	fs := flag.NewFlagSet("js", flag.ExitOnError)
	url := fs.String("url", nats.DefaultURL, "NATS server")
	name := fs.String("stream", "TABLECAST", "stream")
	subject := fs.String("subject", "", "subject filter (default: the whole stream)")
	out := fs.String("out", "", "file to write the samples to")
	_ = fs.Parse(args)
	if *out == "" {
		return errors.New("js: -out is required")
	}
	nc, err := nats.Connect(*url, nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("connect %s: %w", *url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	st, err := js.Stream(ctx, *name)
	if err != nil {
		return fmt.Errorf("stream %s: %w", *name, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	last := info.State.LastSeq
	cfg := jetstream.OrderedConsumerConfig{}
	if *subject != "" {
		cfg.FilterSubjects = []string{*subject}
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return err
	}
	samples := make([]sample, 0, info.State.Msgs)
	var seq uint64
	for idle := 0; seq < last; {
		batch, err := cons.Fetch(10000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			seq = md.Sequence.Stream
			if lsn, commit, ok := parseEvent(m.Data()); ok {
				samples = append(samples, sample{lsn, commit, md.Timestamp.UnixNano()})
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
		if n == 0 {
			if idle++; idle > 10 {
				return fmt.Errorf("read up to sequence %d of %d, then nothing for 10s", seq, last)
			}
		} else {
			idle = 0
		}
	}
	return writeSamples(*out, samples)
}

// txn is what the report knows of one transaction.
type txn struct {
	commit  int64
	floor   int64 // walfloor received its commit message
	changes uint32
	js, ws  int64 // the last event stored / received
	jsN     uint32
	wsN     uint32
}

func readLines(path string, f func(fields []string) error) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		if err := f(strings.Fields(sc.Text())); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return sc.Err()
}

func runReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	floorPath := fs.String("floor", "", "walfloor -commits file")
	jsPath := fs.String("js", "", "cdclat js file")
	wsPath := fs.String("ws", "", "cdclat ws file (optional)")
	from := fs.Float64("from", 0, "first commit time measured (unix seconds)")
	to := fs.Float64("to", 0, "commit times from here on are not measured (unix seconds)")
	worst := fs.Int("worst", 0, "also list this many of the slowest transactions into JetStream")
	_ = fs.Parse(args)
	if *floorPath == "" || *jsPath == "" {
		return errors.New("report: -floor and -js are required")
	}
	fromNs, toNs := int64(*from*1e9), int64(*to*1e9)
	if toNs == 0 {
		toNs = 1<<63 - 1
	}
	txns := map[uint64]*txn{}
	err := readLines(*floorPath, func(f []string) error {
		if len(f) != 4 {
			return fmt.Errorf("bad line %q", f)
		}
		lsn, _ := strconv.ParseUint(f[0], 16, 64)
		commit, _ := strconv.ParseInt(f[1], 10, 64)
		received, _ := strconv.ParseInt(f[2], 10, 64)
		changes, _ := strconv.ParseUint(f[3], 10, 32)
		if commit >= fromNs && commit < toNs && changes > 0 {
			txns[lsn] = &txn{commit: commit, floor: received, changes: uint32(changes)}
		}
		return nil
	})
	if err != nil {
		return err
	}
	join := func(path string, set func(t *txn, arrived int64)) error {
		return readLines(path, func(f []string) error {
			if len(f) != 3 {
				return fmt.Errorf("bad line %q", f)
			}
			lsn, _ := strconv.ParseUint(f[0], 16, 64)
			arrived, _ := strconv.ParseInt(f[2], 10, 64)
			if t := txns[lsn]; t != nil {
				set(t, arrived)
			}
			return nil
		})
	}
	if err := join(*jsPath, func(t *txn, a int64) { t.js = max(t.js, a); t.jsN++ }); err != nil {
		return err
	}
	if *wsPath != "" {
		if err := join(*wsPath, func(t *txn, a int64) { t.ws = max(t.ws, a); t.wsN++ }); err != nil {
			return err
		}
	}
	var floor, js, ws, added, wsAdded []time.Duration
	var missingJS, missingWS int
	var events int
	for _, t := range txns {
		events += int(t.changes)
		floor = append(floor, time.Duration(t.floor-t.commit))
		if t.jsN != t.changes {
			missingJS++
			continue
		}
		js = append(js, time.Duration(t.js-t.commit))
		added = append(added, time.Duration(t.js-t.floor))
		if *wsPath != "" {
			if t.wsN != t.changes {
				missingWS++
				continue
			}
			ws = append(ws, time.Duration(t.ws-t.commit))
			wsAdded = append(wsAdded, time.Duration(t.ws-t.js))
		}
	}
	if *worst > 0 {
		// The slowest transactions into JetStream, by commit time: a
		// stall shows as a run of them.
		type slow struct{ commit, js, floor int64 }
		var all []slow
		for _, t := range txns {
			if t.jsN == t.changes {
				all = append(all, slow{t.commit, t.js, t.floor})
			}
		}
		slices.SortFunc(all, func(a, b slow) int { return int((b.js - b.commit) - (a.js - a.commit)) })
		for _, x := range all[:min(*worst, len(all))] {
			fmt.Printf("slow: committed at %s, JetStream +%.3f ms, walsender +%.3f ms\n", time.Unix(0, x.commit).UTC().Format("15:04:05.000000"),
				float64(x.js-x.commit)/1e6, float64(x.floor-x.commit)/1e6)
		}
	}
	fmt.Printf("transactions %d events %d incomplete_in_js %d", len(txns), events, missingJS)
	if *wsPath != "" {
		fmt.Printf(" incomplete_in_ws %d", missingWS)
	}
	fmt.Println()
	line := func(name string, d []time.Duration) {
		if len(d) == 0 {
			fmt.Printf("%-28s none\n", name)
			return
		}
		slices.Sort(d)
		fmt.Printf("%-28s p50 %8.3f ms  p99 %8.3f ms  max %8.3f ms\n", name, ms(pct(d, 0.5)), ms(pct(d, 0.99)), ms(d[len(d)-1]))
	}
	line("walsender commit→receipt", floor)
	line("commit→JetStream stored", js)
	if *wsPath != "" {
		line("commit→WebSocket client", ws)
	}
	if len(js) > 0 {
		fmt.Printf("%-28s p50 %8.3f ms  p99 %8.3f ms\n", "added (JetStream − walsender)", ms(pct(js, 0.5)-pct(floor, 0.5)), ms(pct(js, 0.99)-pct(floor, 0.99)))
		line("  paired, per transaction", added)
	}
	if len(ws) > 0 {
		fmt.Printf("%-28s p50 %8.3f ms  p99 %8.3f ms\n", "WebSocket − JetStream", ms(pct(ws, 0.5)-pct(js, 0.5)), ms(pct(ws, 0.99)-pct(js, 0.99)))
		line("  paired, per transaction", wsAdded)
	}
	return nil
}

func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(p * float64(len(sorted)))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
