package wsgate

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// TestSoakNoGapOnRollingStream (TABLECAST_SOAK=1, `make soak`; for
// TABLECAST_SOAK_DURATION, default 2m): a small stream rolls over every
// second or so under a writer of three tables, while clients subscribe,
// resume from their last seq, read in fits and starts (now and then
// pausing long enough to be overtaken by the stream), and reconnect. Every
// session of every client gets a run of public.orders events with no gap
// and no repeat, ended or not by history_unavailable; subscribers of a
// quiet table (one event every two seconds) never get history_unavailable.
func TestSoakNoGapOnRollingStream(t *testing.T) {
	if os.Getenv("TABLECAST_SOAK") == "" {
		t.Skip("a soak test: set TABLECAST_SOAK=1 (make soak)")
	}
	duration := 2 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("TABLECAST_SOAK_DURATION")); err == nil {
		duration = d
	}
	e := startGateway(t, func(c *Config) {
		c.SendQueueBytes = 256 << 10
		c.WriteTimeout = time.Minute
		// Resumes wait their turn and read slowly: the stream overtakes some.
		c.MaxReplays, c.MaxReplaysPerConn, c.ReplayRate = 2, 1, 300
		c.feedInboxBytes = 256 << 10
	})
	e.limitStream(4 << 20)
	lines := ordersShape()
	lines.Table = "lines"
	e.putShape(lines)

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	w := &soakWriter{e: e}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.run(ctx, t) }()

	var mu sync.Mutex
	var sessions []soakSession
	record := func(s soakSession) { mu.Lock(); sessions = append(sessions, s); mu.Unlock() }
	for i := range 6 {
		wg.Add(1)
		go func() { defer wg.Done(); soakClient(ctx, t, e, fmt.Sprint("c", i), "public.orders", record) }()
	}
	quietAlarms := make(chan string, 100)
	for i := range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); soakQuiet(ctx, t, e, fmt.Sprint("q", i), quietAlarms) }()
	}
	wg.Wait()
	close(quietAlarms)
	for msg := range quietAlarms {
		t.Errorf("a subscriber of the quiet table was told: %s", msg)
	}

	orders := w.seqs()
	var events, gone, goneLate, first int
	for _, s := range sessions {
		events += len(s.got)
		if s.gone {
			gone++
			if s.from != 0 {
				goneLate++ // after subscribed
			}
		}
		i, _ := slices.BinarySearch(orders, s.from+1)
		for k, seq := range s.got {
			if i+k >= len(orders) || orders[i+k] != seq {
				want := "nothing"
				if i+k < len(orders) {
					want = fmt.Sprint(orders[i+k])
				}
				t.Fatalf("%s, session from %d: event %d has seq %d, want %s (a gap or a repeat)", s.client, s.from, k, seq, want)
			}
		}
		if len(s.got) > 0 {
			first++
		}
	}
	firstSeq, lastSeq := e.streamState()
	t.Logf("%s: %d orders events written (stream now %d..%d); %d sessions (%d with events), %d events received, %d ended by history_unavailable (%d after subscribed)",
		duration, len(orders), firstSeq, lastSeq, len(sessions), first, events, gone, goneLate)
	t.Logf("gateway: %v messages of history replayed, %v resumes or feeds found history discarded, %v slow consumer closes",
		e.metric(e.gw.met.replayed), e.metric(e.gw.met.historyLost), e.metric(e.gw.met.slowCloses))
	if goneLate == 0 {
		t.Error("no session was overtaken by the stream: the soak did not test what it is for")
	}
}

// soakSession is what one client received on one connection.
type soakSession struct {
	client string
	from   uint64 // subscribed.seq
	got    []uint64
	gone   bool // ended by history_unavailable
}

// soakWriter writes public.orders events among larger public.items ones
// (which make the stream roll over), and a public.lines event every two
// seconds, until ctx ends.
type soakWriter struct {
	e      *testEnv
	mu     sync.Mutex
	orders []uint64
}

func (w *soakWriter) seqs() []uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := slices.Clone(w.orders)
	slices.Sort(out)
	return out
}

func (w *soakWriter) run(ctx context.Context, t *testing.T) {
	subj := func(table string) string { return stream.ChangeSubject("tablecast", testDB, "public", table, "create") }
	filler := []byte(`{"op":"create","data":{"pad":"` + strings.Repeat("y", 3000) + `"}}`)
	lastLine := time.Now()
	for n := 0; ctx.Err() == nil; {
		type pending struct {
			f     jetstream.PubAckFuture
			order bool
		}
		batch := make([]pending, 0, 64)
		for range 16 + rand.IntN(48) {
			order := rand.IntN(3) == 0
			msg := &nats.Msg{Subject: subj("items"), Data: filler}
			if order {
				n++
				msg = &nats.Msg{Subject: subj("orders"), Data: fmt.Appendf(nil,
					`{"op":"create","db":"shop","schema":"public","table":"orders","key":{"id":%d},"data":{"id":%d,"notes":%q}}`, n, n, strings.Repeat("o", 300))}
			}
			f, err := w.e.nats.JS.PublishMsgAsync(msg)
			if err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			batch = append(batch, pending{f, order})
		}
		for _, p := range batch {
			select {
			case ack := <-p.f.Ok():
				if p.order {
					w.mu.Lock()
					w.orders = append(w.orders, ack.Sequence)
					w.mu.Unlock()
				}
			case err := <-p.f.Err():
				t.Errorf("publish: %v", err)
				return
			case <-time.After(30 * time.Second):
				t.Error("publish not acknowledged within 30s")
				return
			}
		}
		if time.Since(lastLine) > 2*time.Second {
			lastLine = time.Now()
			if _, err := w.e.nats.JS.Publish(ctx, subj("lines"), []byte(`{"op":"create","data":{"id":1}}`)); err != nil && ctx.Err() == nil {
				t.Errorf("publish: %v", err)
			}
		}
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) // bursts, not a flood
	}
}

// soakDial connects, or returns nil once ctx ends (errors are reported).
func soakDial(ctx context.Context, t *testing.T, e *testEnv) *websocket.Conn {
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ws, _, err := websocket.Dial(dctx, "ws://"+e.addr+"/ws", nil)
		cancel()
		if err == nil {
			ws.SetReadLimit(64 << 20)
			return ws
		}
		if ctx.Err() == nil {
			t.Errorf("dial: %v", err)
			return nil
		}
	}
	return nil
}

// soakClient subscribes to table again and again: resuming from its last
// seq, or afresh after history_unavailable; it reads with pauses, some long
// enough for the stream to overtake it, and reconnects now and then.
func soakClient(ctx context.Context, t *testing.T, e *testEnv, name, table string, record func(soakSession)) {
	var last uint64 // 0: subscribe afresh
	for ctx.Err() == nil {
		slow := false
		if last != 0 && rand.IntN(3) == 0 {
			// Away for about as long as the stream holds, then back
			// slowly: the resume starts near the stream's edge.
			time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
			slow = true
		}
		ws := soakDial(ctx, t, e)
		if ws == nil {
			return
		}
		sub := map[string]any{"type": "subscribe", "id": "s", "table": table}
		if last != 0 {
			sub["from"] = last
		}
		b, _ := json.Marshal(sub)
		if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
			_ = ws.CloseNow()
			continue
		}
		s := soakSession{client: name}
		until := time.Now().Add(time.Duration(500+rand.IntN(4000)) * time.Millisecond)
		if last != 0 {
			// A resume may wait its turn: stay for it.
			until = until.Add(10 * time.Second)
		}
		subscribed := false
	read:
		for time.Now().Before(until) && ctx.Err() == nil {
			if slow {
				time.Sleep(2 * time.Millisecond)
			}
			if rand.IntN(3000) == 0 {
				time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond) // overtaken, maybe
			} else if rand.IntN(100) == 0 {
				time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			}
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			_, msg, err := ws.Read(rctx)
			rcancel()
			if err != nil {
				// Closed as a slow consumer: resume, as a client does.
				if ctx.Err() == nil && rctx.Err() == nil && websocket.CloseStatus(err) != websocket.StatusCode(CloseSlowConsumer) {
					t.Errorf("%s: read: %v", name, err)
				}
				break
			}
			var f frame
			if err := json.Unmarshal(msg, &f); err != nil {
				t.Errorf("%s: frame %s: %v", name, msg, err)
				break
			}
			switch {
			case f.Type == "subscribed":
				s.from, subscribed = f.Seq, true
			case f.Type == "event":
				s.got = append(s.got, f.Seq)
				last = f.Seq
			case f.Type == "error" && f.Code == string(CodeHistoryUnavailable):
				s.gone, last = true, 0
				break read
			default:
				t.Errorf("%s: unexpected frame %s", name, msg)
				break read
			}
		}
		_ = ws.CloseNow()
		if subscribed || s.gone {
			record(s) // refused at subscribe: nothing received, from 0
		}
	}
}

// soakQuiet follows the quiet table live, reconnecting now and then, and
// reports any error frame.
func soakQuiet(ctx context.Context, t *testing.T, e *testEnv, name string, alarms chan<- string) {
	for ctx.Err() == nil {
		ws := soakDial(ctx, t, e)
		if ws == nil {
			return
		}
		if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"q","table":"public.lines"}`)); err != nil {
			_ = ws.CloseNow()
			continue
		}
		until := time.Now().Add(time.Duration(5000+rand.IntN(10000)) * time.Millisecond)
		for time.Now().Before(until) && ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			_, msg, err := ws.Read(rctx)
			rcancel()
			if err != nil {
				if ctx.Err() == nil && rctx.Err() == nil {
					t.Errorf("%s: read: %v", name, err)
				}
				break
			}
			if strings.Contains(string(msg), `"type":"error"`) {
				alarms <- string(msg)
			}
		}
		_ = ws.CloseNow()
	}
}
