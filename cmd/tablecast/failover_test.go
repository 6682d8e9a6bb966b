package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tablecast/tablecast/cdc"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// Reader failover: several `tablecast cdc` processes on one slot, one
// leading through its lease in NATS, the others standing by.

// failoverReader is one `tablecast cdc` process of a failover test.
type failoverReader struct {
	name string
	addr string // its HTTP address: /healthz
	cmd  *exec.Cmd
	logs *lockedBuffer
}

// healthClient asks for /healthz: a paused process does not answer.
var healthClient = &http.Client{Timeout: 2 * time.Second}

// readerHealth is the reader part of /healthz.
type readerHealth struct {
	Reader *cdc.Health `json:"reader"`
}

// health returns the reader's /healthz, nil if it does not answer.
func (r *failoverReader) health() *cdc.Health {
	resp, err := healthClient.Get("http://" + r.addr + "/healthz")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var h readerHealth
	if json.NewDecoder(resp.Body).Decode(&h) != nil {
		return nil
	}
	return h.Reader
}

// startFailoverReaders starts n `tablecast cdc` processes with env (which
// names the database, NATS and the slot) and waits until one leads and the
// others stand by.
func startFailoverReaders(t *testing.T, n int, env []string) []*failoverReader {
	t.Helper()
	var rs []*failoverReader
	for i := range n {
		rs = append(rs, startFailoverReader(t, fmt.Sprintf("reader%d", i+1), env))
	}
	var states []string // each reader's, at the last look
	deadline := time.Now().Add(time.Minute)
	for {
		leaders, standbys := 0, 0
		states = states[:0]
		for _, r := range rs {
			h := r.health()
			switch {
			case h == nil:
				states = append(states, r.name+": no health")
				continue
			case h.Role == "leader" && h.Streaming:
				leaders++
			case h.Role == "standby":
				standbys++
			}
			states = append(states, fmt.Sprintf("%s: %s, streaming %v", r.name, h.Role, h.Streaming))
		}
		if leaders == 1 && standbys == n-1 {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("one reader to lead and the others to stand by: not within a minute (%s)", strings.Join(states, "; "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startFailoverReader starts one `tablecast cdc` process; it is killed at
// the test's end if it still runs.
func startFailoverReader(t *testing.T, name string, env []string) *failoverReader {
	t.Helper()
	r := &failoverReader{name: name, addr: freeAddr(t), logs: &lockedBuffer{}}
	r.cmd = exec.Command(binary(t), "cdc")
	r.cmd.Env = append(append(baseEnv(), env...), "TABLECAST_HTTP_ADDR="+r.addr, "GOTRACEBACK=all")
	r.cmd.Stderr = r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			// What each reader said, for a failure that only its log
			// explains (the warnings and errors, and its last lines),
			// and where each goroutine of a reader still running waits.
			all, dump := r.logs.String(), ""
			if r.cmd.ProcessState == nil {
				_ = r.cmd.Process.Signal(syscall.SIGCONT)
				_ = r.cmd.Process.Signal(syscall.SIGQUIT)
				exited := make(chan struct{})
				go func() { _ = r.cmd.Wait(); close(exited) }()
				select {
				case <-exited:
				case <-time.After(10 * time.Second):
					_ = r.cmd.Process.Kill()
					<-exited
				}
				all = r.logs.String()
				if i := strings.Index(all, "SIGQUIT: quit"); i >= 0 {
					all, dump = all[:i], all[i:]
				}
			}
			lines := strings.Split(strings.TrimSpace(all), "\n")
			var kept []string
			for i, l := range lines {
				if i >= len(lines)-15 || strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
					kept = append(kept, l)
				}
			}
			t.Logf("%s (%s):\n%s\n%s", r.name, r.addr, strings.Join(kept, "\n"), dump)
		}
		if r.cmd.ProcessState == nil {
			_ = r.cmd.Process.Signal(syscall.SIGCONT)
			_ = r.cmd.Process.Kill()
			_ = r.cmd.Wait()
		}
	})
	return r
}

// leaderOf returns the reader of rs that leads and streams, nil if none.
func leaderOf(rs []*failoverReader, skip ...*failoverReader) *failoverReader {
	for _, r := range rs {
		if r.cmd.ProcessState != nil || slices.Contains(skip, r) {
			continue
		}
		if h := r.health(); h != nil && h.Role == "leader" && h.Streaming {
			return r
		}
	}
	return nil
}

// failoverSetup makes the tables of the ordered load, a NATS server of its
// own and the environment of the readers.
func failoverSetup(t *testing.T, name, lease string) (*natsServer, []string, string) {
	t.Helper()
	return failoverSetupOn(t, name, lease, 1)
}

// failoverSetupOn is failoverSetup with the stream and the buckets on
// replicas copies: more than one, on a three-node cluster of their own.
func failoverSetupOn(t *testing.T, name, lease string, replicas int) (*natsServer, []string, string) {
	t.Helper()
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_%s_%d", name, os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	var n *natsServer
	if replicas > 1 {
		n = &natsServer{natstest.StartCluster(t, 3).Server}
	} else {
		n = startNATS(t)
	}
	env := []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_SLOT=" + slot,
		"TABLECAST_PUBLICATION=tc_" + name, "TABLECAST_LEADER_LEASE=" + lease, "TABLECAST_LOG_LEVEL=info",
		fmt.Sprintf("TABLECAST_STREAM_REPLICAS=%d", replicas)}
	return n, env, url
}

// fences counts the fences stored in the event stream.
func fences(t *testing.T, n *natsServer) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := storedOn(ctx, n.JS, stream.FenceSubjects(""))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// killRounds SIGKILLs the leader of rs kills times under the load (rounds
// numbered from first), waiting pause before each kill, and returns how long each takeover took: from
// the kill to another reader leading and streaming.
func killRounds(t *testing.T, rs []*failoverReader, first, kills int, pause time.Duration) []time.Duration {
	t.Helper()
	var took []time.Duration
	for round := first; round < first+kills; round++ {
		time.Sleep(pause)
		leader := leaderOf(rs)
		if leader == nil {
			t.Fatalf("round %d: no reader leads", round+1)
		}
		if err := leader.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		_ = leader.cmd.Wait()
		var next *failoverReader
		waitFor(t, 30*time.Second, "a standby to take over", func() bool {
			next = leaderOf(rs, leader)
			return next != nil
		})
		d := time.Since(killed)
		took = append(took, d)
		t.Logf("round %d: %s killed, %s took over after %s", round+1, leader.name, next.name, d.Round(time.Millisecond))
	}
	return took
}

// checkExactlyOnce waits up to within for every committed change in the
// stream and checks each is there once, in commit order.
func checkExactlyOnce(t *testing.T, n *natsServer, committed map[string][]change, within time.Duration) int {
	t.Helper()
	want := 0
	for _, cs := range committed {
		want += len(cs)
	}
	deadline := time.Now().Add(within)
	for {
		got := n.count(t)
		if got > uint64(want) {
			t.Fatalf("stream holds %d events, more than the %d committed", got, want)
		}
		if got == uint64(want) {
			break
		}
		if time.Now().After(deadline) {
			// Which are missing tells a loss (a hole) from a reader that
			// stopped (the last ones): assertCommitted names the first
			// difference of each table.
			t.Errorf("after %s the stream holds %d of the %d events committed", within, got, want)
			assertCommitted(t, n, committed)
			t.FailNow()
		}
		time.Sleep(100 * time.Millisecond)
	}
	assertCommitted(t, n, committed)
	assertIDsIncrease(t, n)
	return want
}

// TestReaderFailover: three `tablecast cdc` processes on one slot against
// one NATS; the leader is SIGKILLed twice under a steady writer, and each
// time a standby takes over. Every committed change is in the stream once,
// in commit order, each takeover is fenced, and a WebSocket client that
// resumes with `from` receives its table's changes once, in order, with no
// gap.
func TestReaderFailover(t *testing.T) {
	n, env, url := failoverSetup(t, "failover", "2s")
	rs := startFailoverReaders(t, 3, env)

	gwAddr := freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_HTTP_ADDR="+gwAddr, "TABLECAST_LOG_LEVEL=warn"), "gateway")
	waitFor(t, time.Minute, "/readyz of tablecast gateway", func() bool {
		code, _, err := httpGet("http://" + gwAddr + "/readyz")
		return err == nil && code == 200
	})
	client := startResumingClient(t, "public.a", "ws://"+gwAddr+"/ws")

	load := startOrderedLoad(t, connect(t, url), 2*time.Millisecond)
	took := killRounds(t, rs, 0, 2, 3*time.Second)
	time.Sleep(2 * time.Second)
	committed := load.stop(t)
	want := checkExactlyOnce(t, n, committed, 2*time.Minute)
	if f := fences(t, n); f < 2 {
		t.Errorf("%d fences in the stream after 2 takeovers, want 2 or more", f)
	}

	got := client.expectAll(t, committed["a"], time.Minute, "")
	t.Logf("%d events, each once, in commit order, across 2 leader kills (takeovers %v); the client received %d changes of a",
		want, took, len(got))

	// The gateway's /api/status names the leader that took over last.
	leader := leaderOf(rs)
	if leader == nil {
		t.Fatal("no reader leads after the kills")
	}
	waitFor(t, 30*time.Second, "/api/status to name the leader", func() bool {
		_, body, err := httpGet("http://" + gwAddr + "/api/status")
		var st struct {
			Readers []struct {
				Leader *struct {
					PID int `json:"pid"`
				} `json:"leader"`
			} `json:"readers"`
		}
		if err != nil || json.Unmarshal([]byte(body), &st) != nil || len(st.Readers) != 1 || st.Readers[0].Leader == nil {
			return false
		}
		return st.Readers[0].Leader.PID == leader.cmd.Process.Pid
	})
}

// TestReaderFailoverPausedLeader: the leader is paused (SIGSTOP) under a
// steady writer; a standby takes over once the lease has expired and ends
// the paused leader's walsender. The old leader is resumed (SIGCONT) while
// the writes go on: it stops streaming (its lease is lost, or JetStream
// refuses its events for the new fence) and stands by, and the stream
// still holds every change once, in commit order. On a stream with one
// replica and on one with three (a three-node cluster), where the
// takeover stores a fence on every subject of the slot's fence ring.
//
// The three-replica run is a soak test (TABLECAST_SOAK=1, make soak): it
// takes half a minute, and stream's TestFenceRingPausedLeaderOnR3 tests
// the fence ring on three replicas with a paused leader in make test.
func TestReaderFailoverPausedLeader(t *testing.T) {
	for _, replicas := range []int{1, 3} {
		t.Run(fmt.Sprintf("R%d", replicas), func(t *testing.T) {
			if replicas > 1 && os.Getenv("TABLECAST_SOAK") == "" {
				t.Skip("a soak test: TABLECAST_SOAK=1 (make soak)")
			}
			testReaderFailoverPausedLeader(t, replicas)
		})
	}
}

func testReaderFailoverPausedLeader(t *testing.T, replicas int) {
	n, env, url := failoverSetupOn(t, fmt.Sprintf("paused%d", replicas), "2s", replicas)
	rs := startFailoverReaders(t, 2, env)
	load := startOrderedLoad(t, connect(t, url), 2*time.Millisecond)

	time.Sleep(2 * time.Second)
	old := leaderOf(rs)
	if old == nil {
		t.Fatal("no reader leads")
	}
	if err := old.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	var next *failoverReader
	waitFor(t, 30*time.Second, "the standby to take over from the paused leader", func() bool {
		next = leaderOf(rs, old)
		return next != nil
	})
	t.Logf("%s paused, %s took over after %s", old.name, next.name, time.Since(paused).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	if err := old.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the resumed leader to stand by", func() bool {
		h := old.health()
		return h != nil && h.Role == "standby" && !h.Streaming && h.Leader != nil && !h.Leader.Self
	})
	logs := old.logs.String()
	fenced := strings.Contains(logs, "fenced out")
	if !fenced && !strings.Contains(logs, "lost the lease") {
		t.Errorf("the resumed leader logged neither that it lost its lease nor that it was fenced out:\n%s", logs)
	}
	time.Sleep(2 * time.Second)
	if leaderOf(rs) != next {
		t.Error("the new leader no longer leads after the old one woke up")
	}
	committed := load.stop(t)
	want := checkExactlyOnce(t, n, committed, 2*time.Minute)
	wantFences := uint64(1)
	if replicas > 1 {
		wantFences = stream.FenceRingSize
	}
	if f := fences(t, n); f < wantFences {
		t.Errorf("%d fences in the stream after a takeover, want %d or more", f, wantFences)
	}
	t.Logf("%d events, each once, in commit order; the resumed leader stood by (fenced: %t)", want, fenced)
}

// TestSoakReaderFailover (make soak): three readers under a writer for a
// minute, the leader SIGKILLed five times with the default lease; every
// change once, in commit order, and the takeover times.
func TestSoakReaderFailover(t *testing.T) {
	if os.Getenv("TABLECAST_SOAK") == "" {
		t.Skip("a soak test: TABLECAST_SOAK=1 (make soak)")
	}
	n, env, url := failoverSetup(t, "failsoak", cdc.DefaultLeaderLease.String())
	rs := startFailoverReaders(t, 3, env)
	// The killed readers are started again, so that three run each time.
	load := startOrderedLoad(t, connect(t, url), time.Millisecond)
	var took []time.Duration
	started := time.Now()
	for round := range 5 {
		took = append(took, killRounds(t, rs, round, 1, 8*time.Second)...)
		for i, r := range rs {
			if r.cmd.ProcessState != nil {
				again := startFailoverReader(t, r.name, env)
				waitFor(t, time.Minute, again.name+" to stand by", func() bool {
					h := again.health()
					return h != nil && h.Role == "standby"
				})
				rs[i] = again
			}
		}
	}
	time.Sleep(time.Until(started.Add(time.Minute)))
	committed := load.stop(t)
	want := checkExactlyOnce(t, n, committed, 2*time.Minute)
	sorted := slices.Clone(took)
	slices.Sort(sorted)
	t.Logf("%d events, each once, in commit order, across %d leader kills; takeover p50 %s, max %s (lease %s): %v",
		want, len(took), sorted[len(sorted)/2].Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond), cdc.DefaultLeaderLease, took)
}

// TestRestartedReaderTakesOverAtOnce: a lone reader killed with SIGKILL
// and started again on the same machine does not wait out its old
// process's lease (a minute here): it sees that process is gone and takes
// the lease over, fenced, within seconds. Every committed change is in the
// stream once, in commit order.
func TestRestartedReaderTakesOverAtOnce(t *testing.T) {
	n, env, url := failoverSetup(t, "restart", "60s")
	rs := startFailoverReaders(t, 1, env)
	load := startOrderedLoad(t, connect(t, url), 2*time.Millisecond)
	time.Sleep(time.Second)
	if err := rs[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = rs[0].cmd.Wait()
	killed := time.Now()
	next := startFailoverReader(t, "restarted", env)
	waitFor(t, 30*time.Second, "the restarted reader to lead and stream (its old lease runs for a minute)", func() bool {
		h := next.health()
		return h != nil && h.Role == "leader" && h.Streaming
	})
	took := time.Since(killed)
	time.Sleep(time.Second)
	committed := load.stop(t)
	want := checkExactlyOnce(t, n, committed, time.Minute)
	if f := fences(t, n); f != 1 {
		t.Errorf("%d fences in the stream after one takeover, want 1", f)
	}
	t.Logf("%d events once, in commit order; the restarted reader streamed %s after the kill", want, took.Round(time.Millisecond))
}
