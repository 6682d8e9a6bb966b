package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/tmpfs"
	"github.com/tablecast/tablecast/stream"
)

// process is the binary, started by startKeep.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when it has exited; err is then set
	err    error
}

// startKeep starts the binary like startProcess, and returns it so that the
// test can check that it never exited, or stop it itself.
func startKeep(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(binary(t), args...), exited: make(chan struct{})}
	p.cmd.Env = append(env[:len(env):len(env)], "GOTRACEBACK=all")
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			p.dump()
		}
		p.stop(t)
	})
	return p
}

// dump makes a process still running print every goroutine's stack (to
// the test's stderr) and exit: a failed test shows where it waited.
func (p *process) dump() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}

// stop sends SIGTERM and checks that the process exits cleanly.
func (p *process) stop(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
		return // stopped already (and checked then)
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("tablecast %s did not exit cleanly on SIGTERM: %v", p.cmd.Args[1], p.err)
		}
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		t.Errorf("tablecast %s did not stop within 20s of SIGTERM", p.cmd.Args[1])
	}
}

// alive fails the test if the process has exited (and so was not
// restarted: the test never starts it again).
func (p *process) alive(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
		t.Fatalf("tablecast exited (pid %d): %v", p.cmd.Process.Pid, p.err)
	default:
	}
}

// jetStreamAt connects to the NATS at url for the rest of the test.
func jetStreamAt(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nc, err := stream.Connect(ctx, url, "test-reader", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return js
}

// streamCount is how many events the stream TABLECAST holds, 0 if that
// cannot be read right now.
func streamCount(js jetstream.JetStream) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "TABLECAST")
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0
	}
	return int(info.State.Msgs)
}

// streamRows reads the row id of every event of the stream TABLECAST, in
// order.
func streamRows(t *testing.T, js jetstream.JetStream) []int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	total := streamCount(js)
	cons, err := js.OrderedConsumer(ctx, "TABLECAST", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for len(out) < total {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			var e struct {
				Data struct {
					ID int `json:"id"`
				} `json:"data"`
			}
			if err := json.Unmarshal(m.Data(), &e); err != nil {
				t.Fatalf("event %q: %v", m.Data(), err)
			}
			out = append(out, e.Data.ID)
			got++
		}
		if got == 0 {
			t.Fatalf("read %d of %d events, then nothing", len(out), total)
		}
	}
	return out
}

// checkRows fails unless ids are exactly 1..n, in order.
func checkRows(t *testing.T, what string, ids []int, n int) {
	t.Helper()
	if len(ids) != n {
		t.Fatalf("%s: %d rows, want %d", what, len(ids), n)
	}
	for i, id := range ids {
		if id != i+1 {
			t.Fatalf("%s: row %d is id %d, want %d (lost, repeated or out of order)", what, i+1, id, i+1)
		}
	}
}

// TestFullDiskRecovers runs `tablecast run` with its embedded NATS on a
// small tmpfs while a writer inserts rows, each in its own transaction, and
// a WebSocket client follows the table. A filler file leaves JetStream 4 MiB:
// once it is used up, /healthz turns 503 with "JetStream storage full" and
// the reader confirms nothing more to PostgreSQL, while rows keep being
// committed. Deleting the filler is the only thing done: the same process
// restarts JetStream, the reader carries on, and every committed row reaches
// the stream and the WebSocket client exactly once, in order.
//
// `make test` fills and frees the disk once; `make soak` (TABLECAST_SOAK=1)
// five times under the same writer.
func TestFullDiskRecovers(t *testing.T) {
	t.Parallel() // see "Parallel tests" in main_test.go
	// The disk holds every cycle's events (2.4 KiB each on disk, up to
	// 500 rows a second): 64 MiB held about four cycles of a fast writer,
	// and the fifth found the disk full of the stream itself, with
	// nothing left to free.
	cycles, size := 1, int64(64<<20)
	if os.Getenv("TABLECAST_SOAK") != "" {
		cycles, size = 5, 192<<20
	}
	dir := tmpfs.Mount(t, size)
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY, pad text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_full_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	env := append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_full",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+filepath.Join(dir, "nats"),
		"TABLECAST_NATS_MIN_FREE=1048576",
		// A duplicate window far shorter than the stall: the events stored
		// just before the disk filled, and replayed after, must be skipped
		// by the reader itself, not dropped by JetStream's window.
		"TABLECAST_DUPLICATE_WINDOW=1s")
	proc := startKeep(t, env, "run")
	health := func() (int, string) {
		code, body, _ := httpGet("http://" + httpAddr + "/healthz")
		return code, body
	}
	waitFor(t, time.Minute, "/healthz to report streaming", func() bool {
		code, body := health()
		return code == 200 && strings.Contains(body, `"streaming":true`)
	})

	// A WebSocket client following the table throughout.
	ws := wsDial(t, "ws://"+httpAddr+"/ws")
	wsSend(t, ws, `{"type":"subscribe","id":"s","table":"public.items"}`)
	if f := wsRead(t, ws); f.Type != "subscribed" {
		t.Fatalf("subscribe answered %+v", f)
	}
	var (
		wsMu  sync.Mutex
		wsIDs []int
	)
	go func() {
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			var f struct {
				Type  string `json:"type"`
				Event struct {
					Data struct {
						ID int `json:"id"`
					} `json:"data"`
				} `json:"event"`
			}
			if json.Unmarshal(b, &f) == nil && f.Type == "event" {
				wsMu.Lock()
				wsIDs = append(wsIDs, f.Event.Data.ID)
				wsMu.Unlock()
			}
		}
	}()

	// The writer: one row per transaction, 2 KiB each, until stopped. For
	// each row it notes a WAL position inside its transaction: after the
	// previous row's commit, before its own, so a slot confirmed past it
	// has confirmed the row.
	wconn := connect(t, url)
	var (
		committed atomic.Int64
		lsnMu     sync.Mutex
		rowLSN    = map[int]pglogrepl.LSN{}
		stop      = make(chan struct{})
		writerErr = make(chan error, 1)
	)
	go func() {
		ctx := context.Background()
		pad := strings.Repeat("0123456789abcdef", 128)
		for id := 1; ; id++ {
			select {
			case <-stop:
				writerErr <- nil
				return
			default:
			}
			var lsn string
			err := pgx.BeginFunc(ctx, wconn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO items VALUES ($1, $2)`, id, pad); err != nil {
					return err
				}
				return tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn)
			})
			if err != nil {
				writerErr <- err
				return
			}
			l, _ := pglogrepl.ParseLSN(lsn)
			lsnMu.Lock()
			rowLSN[id] = l
			lsnMu.Unlock()
			committed.Store(int64(id))
			time.Sleep(2 * time.Millisecond) // a steady load, not a flood
		}
	}()
	t.Cleanup(func() { // before wconn is closed
		select {
		case <-stop:
		default:
			close(stop)
			<-writerErr
		}
	})
	js := jetStreamAt(t, "nats://"+natsAddr)
	confirmed := func() pglogrepl.LSN {
		t.Helper()
		var lsn string
		if err := conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&lsn); err != nil {
			t.Fatal(err)
		}
		l, _ := pglogrepl.ParseLSN(lsn)
		return l
	}
	storage := regexp.MustCompile(`JetStream storage full: [^"]*no space left on device`)

	for cycle := 1; cycle <= cycles; cycle++ {
		filler := tmpfs.Fill(t, dir, 4<<20)
		waitFor(t, 3*time.Minute, fmt.Sprintf("cycle %d: /healthz 503 with JetStream storage full", cycle), func() bool {
			code, body := health()
			return code == 503 && storage.MatchString(body)
		})
		// Stuck: rows go on being committed, none reaches the stream, and
		// the slot is never confirmed past the first row not stored; for
		// longer than the reader's status interval (1s) and ack timeout (5s).
		stored := streamCount(js)
		before := committed.Load()
		for deadline := time.Now().Add(6 * time.Second); time.Now().Before(deadline) || committed.Load() < before+200; time.Sleep(200 * time.Millisecond) {
			lsnMu.Lock()
			next, ok := rowLSN[stored+1]
			lsnMu.Unlock()
			if c := confirmed(); ok && c > next {
				t.Fatalf("cycle %d: the slot is confirmed to %s, past row %d (%s), while the stream holds %d rows", cycle, c, stored+1, next, stored)
			}
			if n := streamCount(js); n != stored {
				t.Fatalf("cycle %d: the stream went from %d to %d rows while JetStream's disk was full", cycle, stored, n)
			}
		}
		if code, body := health(); code != 503 {
			t.Fatalf("cycle %d: /healthz %d while stuck: %s", cycle, code, body)
		}
		stuckAt := confirmed()
		proc.alive(t)

		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		freed := time.Now()
		want := int(committed.Load())
		waitFor(t, 3*time.Minute, fmt.Sprintf("cycle %d: /healthz 200 and row %d in the stream", cycle, want), func() bool {
			code, _ := health()
			return code == 200 && confirmed() > stuckAt && streamCount(js) >= want
		})
		t.Logf("cycle %d: %s from freeing the disk to /healthz 200 with all %d rows committed until then in the stream; %d rows committed so far",
			cycle, time.Since(freed).Round(100*time.Millisecond), want, committed.Load())
	}
	close(stop)
	if err := <-writerErr; err != nil {
		t.Fatalf("writer: %v", err)
	}
	total := int(committed.Load())

	waitFor(t, 3*time.Minute, fmt.Sprintf("all %d rows in the stream", total), func() bool { return streamCount(js) >= total })
	checkRows(t, "stream", streamRows(t, js), total)
	waitFor(t, 2*time.Minute, fmt.Sprintf("all %d rows on the WebSocket", total), func() bool {
		wsMu.Lock()
		defer wsMu.Unlock()
		return len(wsIDs) >= total
	})
	wsMu.Lock()
	checkRows(t, "WebSocket client", wsIDs, total)
	wsMu.Unlock()
	proc.alive(t)
	_, metrics, _ := httpGet("http://" + httpAddr + "/metrics")
	if m := regexp.MustCompile(`(?m)^tablecast_nats_restarts_total (\d+)$`).FindStringSubmatch(metrics); m == nil || m[1] == "0" {
		t.Errorf("/metrics does not count the embedded NATS's restarts: %v", m)
	}
	t.Logf("%d fill/free cycles, %d rows: all exactly once, in order, in the stream and on the WebSocket, tablecast never restarted", cycles, total)
}

// TestRestartNearlyFullKeepsStore restarts `tablecast gateway` (its
// embedded NATS) with 2 MiB free on its disk beside the 8 MiB it stores:
// /metrics shows the configured store size, and once space is freed the
// stream takes 16 MiB more. Sized from the free space, the store would be
// smaller than what it holds and refuse everything.
func TestRestartNearlyFullKeepsStore(t *testing.T) {
	dir := tmpfs.Mount(t, 64<<20)
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	env := append(baseEnv(), "TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr,
		"TABLECAST_DATA_DIR="+filepath.Join(dir, "nats"), "TABLECAST_NATS_MAX_STORE=1073741824", "TABLECAST_NATS_MIN_FREE=0")
	ready := func() {
		t.Helper()
		waitFor(t, time.Minute, "/readyz", func() bool {
			code, _, err := httpGet("http://" + httpAddr + "/readyz")
			return err == nil && code == 200
		})
	}
	publish := func(first, count int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		nc, err := stream.Connect(ctx, "nats://"+natsAddr, "test-writer", slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		payload := []byte(`"` + strings.Repeat("x", 4096) + `"`)
		for i := first; i < first+count; i++ {
			if _, err := js.Publish(ctx, "tablecast.topic.fill", payload, jetstream.WithMsgID(fmt.Sprint(i))); err != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
		}
	}

	first := startKeep(t, env, "gateway")
	ready()
	publish(0, 2000) // 8 MiB
	first.stop(t)

	filler := tmpfs.Fill(t, dir, 2<<20)
	startKeep(t, env, "gateway")
	ready()
	_, metrics, _ := httpGet("http://" + httpAddr + "/metrics")
	if !regexp.MustCompile(`(?m)^tablecast_nats_store_max_bytes 1\.073741824e\+09$`).MatchString(metrics) {
		t.Errorf("restarted with 2 MiB free: /metrics does not show the configured store of 1073741824 bytes:\n%s", grepLines(metrics, "tablecast_nats_"))
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	publish(2000, 4000) // 16 MiB more
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
