package wsgate

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// BenchmarkLiveLatencyDuringReplayStorm measures what live clients feel
// while another client resumes a hundred subscriptions from the start of a
// large history (a replay storm): publish → receipt of live events on a
// subscriber of another table, p50 and p99, with no storm ("quiet") and
// with one ("storm"). Everything shares this machine's cores: NATS, the
// gateway, the storm's client (which reads and discards as fast as it can)
// and the live client; cpu-% is what the whole process (all of them) used
// meanwhile, in percent of one core, and storm-MiB/s what the storm's
// client received. Run with -benchtime=1x; each run
// measures for liveSeconds.
//
//	go test -run '^$' -bench LiveLatencyDuringReplayStorm -benchtime=1x ./wsgate
func BenchmarkLiveLatencyDuringReplayStorm(b *testing.B) {
	const (
		historyEvents = 20000 // of public.items, ~600 bytes each
		stormSubs     = 100
		liveRate      = 200 // events a second on public.orders
		liveSeconds   = 5
	)
	for _, storm := range []bool{false, true} {
		name := map[bool]string{false: "quiet", true: "storm"}[storm]
		b.Run(name, func(b *testing.B) {
			for range b.N {
				e := startGateway(b, func(c *Config) {
					// BENCH_REPLAY_RATE tries another TABLECAST_WS_REPLAY_RATE.
					if r, err := strconv.Atoi(os.Getenv("BENCH_REPLAY_RATE")); err == nil {
						c.ReplayRate = r
					}
				})
				items := ordersShape()
				items.Table = "items"
				e.putShape(items)
				var stormBytes atomic.Int64
				if storm {
					benchHistory(b, e, historyEvents)
					benchStorm(b, e, stormSubs, &stormBytes)
					time.Sleep(500 * time.Millisecond) // the storm under way
				}
				cpu0, wall0, bytes0 := processCPU(), time.Now(), stormBytes.Load()
				lat := benchLive(b, e, liveRate, liveSeconds)
				elapsed := time.Since(wall0).Seconds()
				b.ReportMetric(100*(processCPU()-cpu0).Seconds()/elapsed, "cpu-%")
				b.ReportMetric(float64(stormBytes.Load()-bytes0)/elapsed/(1<<20), "storm-MiB/s")
				slices.Sort(lat)
				q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
				b.ReportMetric(q(0.5), "p50-ms")
				b.ReportMetric(q(0.99), "p99-ms")
				b.ReportMetric(float64(lat[len(lat)-1])/1e6, "max-ms")
			}
		})
	}
}

// benchHistory publishes n events of public.items.
func benchHistory(b *testing.B, e *testEnv, n int) {
	subject := stream.ChangeSubject("tablecast", testDB, "public", "items", "create")
	pad := strings.Repeat("h", 400)
	for done := 0; done < n; {
		futures := make([]jetstream.PubAckFuture, 0, 1000)
		for ; done < n && len(futures) < 1000; done++ {
			body := fmt.Sprintf(`{"op":"create","db":"shop","schema":"public","table":"items","key":{"id":%d},"data":{"id":%d,"status":"open","notes":%q}}`, done, done, pad)
			f, err := e.nats.JS.PublishMsgAsync(&nats.Msg{Subject: subject, Data: []byte(body)})
			if err != nil {
				b.Fatal(err)
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				b.Fatal(err)
			}
		}
	}
}

// benchStorm connects one raw WebSocket client that subscribes n times to
// public.items from 0 and reads everything into io.Discard (cheaper than
// decoding: the storm's client should not be what takes the cores),
// counting the bytes.
func benchStorm(b *testing.B, e *testEnv, n int, read *atomic.Int64) {
	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	_, err = io.WriteString(nc, "GET /ws HTTP/1.1\r\nHost: "+e.addr+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if err != nil {
		b.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		b.Fatalf("storm upgrade: %v %v", resp, err)
	}
	for i := range n {
		msg := fmt.Sprintf(`{"type":"subscribe","id":"h%d","table":"public.items","from":0}`, i)
		if _, err := nc.Write(maskedText([]byte(msg))); err != nil {
			b.Fatal(err)
		}
	}
	go func() { _, _ = io.Copy(countingWriter{read}, br) }()
}

type countingWriter struct{ n *atomic.Int64 }

func (w countingWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

// maskedText is a client's text frame (masked with a zero key).
func maskedText(p []byte) []byte {
	f := []byte{0x81}
	switch {
	case len(p) < 126:
		f = append(f, 0x80|byte(len(p)))
	default:
		f = append(f, 0x80|126)
		f = binary.BigEndian.AppendUint16(f, uint16(len(p)))
	}
	return append(append(f, 0, 0, 0, 0), p...)
}

// benchLive subscribes a client to public.orders, publishes rate events a
// second for seconds, each carrying its publish time, and returns each
// one's publish → receipt latency in nanoseconds.
func benchLive(b *testing.B, e *testEnv, rate, seconds int) []int64 {
	c := e.dial("/ws")
	c.subscribe(map[string]any{"id": "live", "table": "public.orders"})
	n := rate * seconds
	lat := make([]int64, 0, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(lat) < n {
			f, err := c.tryRead(30 * time.Second)
			if err != nil {
				b.Errorf("live client: %v after %d events", err, len(lat))
				return
			}
			var ev struct {
				Data struct {
					Sent int64 `json:"sent"`
				} `json:"data"`
			}
			if f.Type != "event" || json.Unmarshal(f.Event, &ev) != nil {
				b.Errorf("live client: %s", f.raw)
				return
			}
			lat = append(lat, time.Now().UnixNano()-ev.Data.Sent)
		}
	}()
	subject := stream.ChangeSubject("tablecast", testDB, "public", "orders", "create")
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := range n {
		<-tick.C
		body := fmt.Sprintf(`{"op":"create","db":"shop","schema":"public","table":"orders","key":{"id":%d},"data":{"id":%d,"sent":%d}}`, i, i, time.Now().UnixNano())
		if _, err := e.nats.JS.PublishMsgAsync(&nats.Msg{Subject: subject, Data: []byte(body)}); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	if len(lat) == 0 {
		b.Fatal("no live event received")
	}
	return lat
}
