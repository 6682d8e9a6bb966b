package wsgate

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
)

// TestSlowConsumerGetsCloseFrame: a client that stops reading is closed
// with 4008, and the close frame comes after everything that was being
// written, on a socket closed without a reset: when the client reads
// again, it finds its events, in order and without a gap, then the 4008
// close frame, then the end of the connection. Both ways a client becomes a
// slow consumer are tried: its send queue overflows, or a write to it
// waits longer than WriteTimeout (with a queue too large to overflow).
func TestSlowConsumerGetsCloseFrame(t *testing.T) {
	t.Parallel()
	notes := strings.Repeat("n", 8<<10)
	for _, tc := range []struct {
		name         string
		queue        int
		writeTimeout time.Duration
	}{
		{"queue overflow", 256 << 10, 10 * time.Second},
		{"write timeout", 256 << 20, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := startGateway(t, func(c *Config) { c.SendQueueBytes, c.WriteTimeout = tc.queue, tc.writeTimeout })
			nc, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = nc.Close() })
			_ = nc.(*net.TCPConn).SetReadBuffer(128 << 10) // so that the gateway's writes block soon
			r := &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
			if resp := r.roundTrip(wsRequest("/ws", e.addr, "", "")); resp.StatusCode != 101 {
				t.Fatalf("upgrade answered %s", resp.Status)
			}
			ws := r.ws()
			ws.write(e2eMasked(0x80|opText, []byte(`{"type":"subscribe","id":"s","table":"public.orders"}`)))
			sub := ws.readText(5 * time.Second)
			if sub.Type != "subscribed" {
				t.Fatalf("subscribe answered %s", sub.raw)
			}

			// The client reads nothing from now on; events are published
			// until the gateway gives up on it (the write timeout variant's
			// queue is too large to overflow: its writes time out). The
			// gateway then waits another write timeout for the client to
			// read before dropping it: the client reads as soon as the
			// close is decided, not once the connection is released nor
			// once the publish under way returns (on a loaded machine,
			// either took longer than that). So events are published from
			// a goroutine of their own, and this one watches the decision.
			stop, published := make(chan struct{}), make(chan int, 1)
			go func() {
				i := 1
				defer func() { published <- i - 1 }()
				for ; i <= 20000; i++ {
					select {
					case <-stop:
						return
					default:
					}
					e.publish(schema.OpCreate, map[string]any{"id": i, "status": "open", "notes": notes})
				}
			}()
			for e.metric(e.gw.met.slowCloses) == 0 {
				select {
				case n := <-published:
					t.Fatalf("%d events of 8 KiB published and the client is still connected", n)
				case <-time.After(5 * time.Millisecond):
				}
			}
			close(stop)
			t.Cleanup(func() { <-published })

			// Now it reads everything.
			seq := sub.Seq
			events := 0
			for {
				f, err := ws.readFrame(10 * time.Second)
				if err != nil {
					t.Fatalf("after %d events: %v, before a close frame", events, err)
				}
				if f.op == opClose {
					code := binary.BigEndian.Uint16(f.payload)
					if code != uint16(CloseSlowConsumer) || !strings.Contains(string(f.payload[2:]), "slow consumer") {
						t.Fatalf("after %d events: closed with %d %q, want 4008 slow consumer", events, code, f.payload[2:])
					}
					break
				}
				var ev frame
				if err := json.Unmarshal(f.payload, &ev); err != nil || ev.Type != "event" {
					t.Fatalf("frame %.100q: want an event (%v)", f.payload, err)
				}
				if ev.Seq != seq+1 {
					t.Fatalf("event seq %d after %d: a gap", ev.Seq, seq)
				}
				seq = ev.Seq
				events++
			}
			t.Logf("%d events read before the 4008 close frame", events)
			if events == 0 {
				t.Errorf("no event before the close: the test did not fill the connection")
			}
			// Then the connection ends cleanly: no more bytes, no reset.
			_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(ws.br)
			if len(b) > 0 || err != nil {
				t.Fatalf("after the close frame: %d bytes, %v; want the end of the connection", len(b), err)
			}
			if n := e.metric(e.gw.met.slowCloses); n != 1 {
				t.Errorf("slow consumer closes counted: %v, want 1", n)
			}
			deadline := time.Now().Add(10 * time.Second)
			for e.gw.Connections() > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the gateway still counts %d connections 10s after the close", e.gw.Connections())
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
