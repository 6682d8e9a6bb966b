//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"
)

// serverFrame builds an unmasked frame as a server sends it.
func serverFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		f = append(f, byte(n))
	case n <= 0xFFFF:
		f = append(f, 126)
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f = append(f, 127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	return append(f, payload...)
}

// readClientFrame reads one masked client frame and unmasks it.
func readClientFrame(t *testing.T, r io.Reader) (op byte, payload []byte) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatalf("read client frame: %v", err)
	}
	if h[0]&0x80 == 0 || h[1]&0x80 == 0 {
		t.Fatalf("client frame %x: want FIN and MASK set", h)
	}
	n := int(h[1] & 0x7F)
	switch n {
	case 126:
		var e [2]byte
		_, _ = io.ReadFull(r, e[:])
		n = int(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		_, _ = io.ReadFull(r, e[:])
		n = int(binary.BigEndian.Uint64(e[:]))
	}
	var key [4]byte
	if _, err := io.ReadFull(r, key[:]); err != nil {
		t.Fatal(err)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		t.Fatal(err)
	}
	for i := range payload {
		payload[i] ^= key[i&3]
	}
	return h[0] & 0x0F, payload
}

// TestParse feeds a stream of frames of every length encoding, fragmented
// messages and control frames to the parser, cut into reads of many sizes.
func TestParse(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 7000) // 70,000 bytes: 64-bit length
	mid := bytes.Repeat([]byte("m"), 300)           // 16-bit length
	var stream []byte
	var wantMsgs [][]byte
	wantFrames := 0
	add := func(fin bool, op byte, p []byte) {
		stream = append(stream, serverFrame(fin, op, p)...)
		if op < opClose {
			wantFrames++
		}
	}
	for i := range 3 {
		small := []byte(fmt.Sprintf(`{"type":"event","id":"s1","seq":%d}`, i))
		add(true, opText, small)
		wantMsgs = append(wantMsgs, small)
		add(true, opText, mid)
		wantMsgs = append(wantMsgs, mid)
		add(true, opBinary, big)
		wantMsgs = append(wantMsgs, big)
		add(true, opText, nil)
		wantMsgs = append(wantMsgs, []byte{})
		// A fragmented message with a ping between its fragments.
		add(false, opText, []byte("frag-one,"))
		add(true, opPing, []byte("are you there"))
		add(false, opContinuation, mid)
		add(true, opContinuation, []byte(",frag-three"))
		wantMsgs = append(wantMsgs, append(append([]byte("frag-one,"), mid...), ",frag-three"...))
		add(true, opPong, []byte("unsolicited"))
		add(true, opPing, nil)
	}
	const pingsPerRound = 2

	for _, chunk := range []int{1, 2, 3, 5, 9, 13, 126, 1000, 65536, len(stream), -1} {
		t.Run(fmt.Sprint("chunk", chunk), func(t *testing.T) {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fds[0])
			peer := os.NewFile(uintptr(fds[1]), "peer")
			defer peer.Close()
			var got [][]byte
			p := &pool{cfg: poolConfig{onMessage: func(b []byte, _ int64) { got = append(got, bytes.Clone(b)) }}}
			p.fails.byReason = map[string]int{}
			l := &loop{p: p}
			c := &wconn{fd: int32(fds[0]), state: stReady, capture: true}
			rng := rand.New(rand.NewPCG(1, uint64(chunk+10)))
			for rest := stream; len(rest) > 0; {
				n := chunk
				if n < 0 {
					n = 1 + rng.IntN(200)
				}
				n = min(n, len(rest))
				if err := l.parse(c, rest[:n], 1); err != nil {
					t.Fatalf("parse: %v", err)
				}
				rest = rest[n:]
			}
			if c.remain != 0 || c.hdrN != 0 {
				t.Errorf("after the stream: remain %d, partial header %d bytes; want none", c.remain, c.hdrN)
			}
			if l.frames != int64(wantFrames) {
				t.Errorf("frames = %d, want %d", l.frames, wantFrames)
			}
			if int(c.got) != len(wantMsgs) || len(got) != len(wantMsgs) {
				t.Fatalf("messages = %d (captured %d), want %d", c.got, len(got), len(wantMsgs))
			}
			for i := range got {
				if !bytes.Equal(got[i], wantMsgs[i]) {
					t.Errorf("message %d = %.40q (%d bytes), want %.40q (%d bytes)", i, got[i], len(got[i]), wantMsgs[i], len(wantMsgs[i]))
				}
			}
			if l.pings != 3*pingsPerRound {
				t.Errorf("pings = %d, want %d", l.pings, 3*pingsPerRound)
			}
			for range 3 {
				for _, want := range []string{"are you there", ""} {
					op, payload := readClientFrame(t, peer)
					if op != opPong || string(payload) != want {
						t.Errorf("answer = op %#x %q, want pong %q", op, payload, want)
					}
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"masked", []byte{0x81, 0x81, 1, 2, 3, 4, 'x'}, "masked"},
		{"rsv", []byte{0xC1, 0x00}, "reserved bits"},
		{"opcode", []byte{0x83, 0x00}, "unknown opcode"},
		{"long control", append([]byte{0x89, 126, 0, 200}, make([]byte, 200)...), "control frame"},
		{"close", serverFrame(true, opClose, append([]byte{0x0F, 0xA8}, "send queue full"...)), "4008"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &loop{p: &pool{}}
			c := &wconn{fd: -1, state: stReady}
			err := l.parse(c, tc.frame, 1)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parse(%x) = %v, want an error with %q", tc.frame, err, tc.want)
			}
		})
	}
}

// testServer is a WebSocket server that answers subscriptions like the
// gateway, then sends what the test tells it to every connection.
type testServer struct {
	t     *testing.T
	srv   *httptest.Server
	mu    sync.Mutex
	conns []*websocket.Conn
	subs  []string // subscribe messages, or URL paths with query
}

func newTestServer(t *testing.T) *testServer {
	s := &testServer{t: t}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		c.SetReadLimit(1 << 20)
		ctx := r.Context()
		id := "s1"
		var sub string
		if strings.HasPrefix(r.URL.Path, "/ws/tables/") {
			sub = r.URL.RequestURI()
			id = "url"
		} else {
			_, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			sub = string(msg)
		}
		if strings.Contains(sub, "nosuchtable") {
			_ = c.Write(ctx, websocket.MessageText, []byte(`{"type":"error","id":"s1","code":"unknown_table","message":"table \"public.nosuchtable\" is not streamed"}`))
			_, _, _ = c.Read(ctx)
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.subs = append(s.subs, sub)
		s.mu.Unlock()
		if err := c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribed","id":"`+id+`","seq":0}`)); err != nil {
			return
		}
		// Read (so that pongs and closes are processed) until the client leaves.
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				return
			}
		}
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *testServer) all() []*websocket.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*websocket.Conn(nil), s.conns...)
}

func testPoolConfig(t *testing.T, s *testServer, urlSub bool) poolConfig {
	u := strings.Replace(s.srv.URL, "http://", "ws://", 1) + "/ws"
	pc, err := poolConfigFor(config{url: u, table: "public.bench", urlSub: urlSub, sel: "id,v", loops: 2, inflight: 8, timeout: 5 * time.Second, local: "127.0.0.2-127.0.0.4"})
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPool(t *testing.T) {
	for _, urlSub := range []bool{false, true} {
		t.Run(fmt.Sprint("urlsub=", urlSub), func(t *testing.T) {
			s := newTestServer(t)
			const n, events = 40, 5
			pc := testPoolConfig(t, s, urlSub)
			arr := newArrivals(events * 3)
			pc.arrivals = arr
			var mu sync.Mutex
			var captured [][]byte
			pc.capture = 3
			pc.onMessage = func(b []byte, _ int64) {
				mu.Lock()
				captured = append(captured, bytes.Clone(b))
				mu.Unlock()
			}
			p, err := dialPool(pc, n)
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			if p.alive() != n {
				t.Fatalf("alive = %d, want %d", p.alive(), n)
			}
			arr.expect.Store(n)
			conns := s.all()
			if len(conns) != n {
				t.Fatalf("server holds %d connections, want %d", len(conns), n)
			}
			for _, sub := range s.subs {
				if urlSub {
					if sub != "/ws/tables/public.bench?select=id%2Cv" {
						t.Errorf("URL subscription %q", sub)
					}
					continue
				}
				var m map[string]any
				if err := json.Unmarshal([]byte(sub), &m); err != nil || m["type"] != "subscribe" || m["table"] != "public.bench" || m["id"] != "s1" {
					t.Errorf("subscribe message %s (%v)", sub, err)
				}
			}

			// Pings are answered (Ping waits for the pong).
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for _, c := range conns {
				if err := c.Ping(ctx); err != nil {
					t.Fatalf("ping: %v", err)
				}
			}
			waitFor(t, "pings counted", func() bool { return p.pings() == n })

			// Frames of each length encoding; the large one fragmented.
			big := bytes.Repeat([]byte("b"), 70_000)
			payloads := [][]byte{[]byte(`{"type":"event","id":"s1","seq":1}`), bytes.Repeat([]byte("m"), 1000), big}
			for k := range events {
				for _, c := range conns {
					for i, pl := range payloads {
						if i == 2 {
							w, err := c.Writer(ctx, websocket.MessageBinary)
							if err != nil {
								t.Fatal(err)
							}
							_, _ = w.Write(pl[:30_000])
							_, _ = w.Write(pl[30_000:])
							if err := w.Close(); err != nil {
								t.Fatal(err)
							}
							continue
						}
						if err := c.Write(ctx, websocket.MessageText, pl); err != nil {
							t.Fatal(err)
						}
					}
				}
				for i := range payloads {
					select {
					case got := <-arr.done:
						if want := 3*k + i + 1; got != want {
							t.Fatalf("message %d complete on every connection; want %d", got, want)
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("event %d: %d of %d connections", 3*k+i+1, arr.slots[3*k+i+1].n.Load(), n)
					}
				}
			}
			// Each fragmented message is three frames (two writes, then an
			// empty final frame) or two, depending on the writer.
			waitFor(t, "messages counted", func() bool { return p.frames() >= n*events*3 })
			// Three capturing connections, each with every message.
			mu.Lock()
			for i, pl := range payloads {
				k := 0
				for _, m := range captured {
					if bytes.Equal(m, pl) {
						k++
					}
				}
				if k != 3*events {
					t.Errorf("payload %d (%d bytes) captured %d times, want %d", i, len(pl), k, 3*events)
				}
			}
			if len(captured) != 3*3*events {
				t.Errorf("captured %d messages, want %d", len(captured), 3*3*events)
			}
			mu.Unlock()

			// A close from the server is counted with its code and reason.
			_ = conns[0].Close(4008, "send queue full")
			waitFor(t, "close counted", func() bool { return p.alive() == n-1 })
			if s := p.fails.summary(); !strings.Contains(s, "4008") || !strings.Contains(s, "send queue full") {
				t.Errorf("failure summary %q, want the close code and reason", s)
			}
		})
	}
}

func TestPoolFailures(t *testing.T) {
	s := newTestServer(t)
	pc := testPoolConfig(t, s, false)
	pc.subscribe = []byte(`{"type":"subscribe","id":"s1","table":"public.nosuchtable"}`)
	_, err := dialPool(pc, 5)
	if err == nil || !strings.Contains(err.Error(), "5 of 5 connections failed") || !strings.Contains(err.Error(), "unknown_table") {
		t.Errorf("dialPool = %v, want 5 failures with the server's error", err)
	}

	// Nobody listening.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	pc, err = poolConfigFor(config{url: "ws://" + addr + "/ws", table: "public.bench", loops: 1, inflight: 4, timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = dialPool(pc, 3)
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("dialPool = %v, want connection refused", err)
	}

	// A server that is not WebSocket.
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	pc, err = poolConfigFor(config{url: strings.Replace(plain.URL, "http", "ws", 1) + "/ws", table: "public.bench", loops: 1, inflight: 4, timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = dialPool(pc, 2)
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("dialPool = %v, want the 404", err)
	}
}

func TestValueScanning(t *testing.T) {
	frame := []byte(`{"type":"event","id":"s1","seq":7,"event":{"id":"0000000001000000-0000","op":"create","commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":3},"data":{"id":3,"sent_ns":1763900000123456789}}}`)
	if v, ok := intAfter(frame, `"sent_ns":`); !ok || v != 1763900000123456789 {
		t.Errorf("sent_ns = %d, %v", v, ok)
	}
	if v, ok := stringAfter(frame, `"commit_time":"`); !ok || string(v) != "2026-11-22T07:00:00.123456Z" {
		t.Errorf("commit_time = %q, %v", v, ok)
	}
	if _, ok := intAfter(frame, `"nope":`); ok {
		t.Error("intAfter found a missing key")
	}
}

func TestParseLocals(t *testing.T) {
	l, err := parseLocals("127.0.0.2-127.0.0.9")
	if err != nil || len(l) != 8 || l[7].Addr != [4]byte{127, 0, 0, 9} {
		t.Errorf("range: %v, %v", l, err)
	}
	if l, err := parseLocals("127.0.0.2,127.0.0.5"); err != nil || len(l) != 2 {
		t.Errorf("list: %v, %v", l, err)
	}
	for _, bad := range []string{"127.0.0.9-127.0.0.2", "10.0.0.1-10.0.1.2", "x"} {
		if _, err := parseLocals(bad); err == nil {
			t.Errorf("parseLocals(%q) succeeded", bad)
		}
	}
}
