package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tablecast/tablecast/internal/natstest"
)

// TestSoakNATSClusterNodeLoss (make soak): tablecast on a three-node
// JetStream cluster with TABLECAST_STREAM_REPLICAS=3. Under a steady
// writer, one node after another is killed with SIGKILL (the event
// stream's leader first, then a follower, then the new leader) and started
// again ten seconds later. Nothing committed is lost or stored twice, the
// reader and the gateway reconnect by themselves (neither process exits),
// and a WebSocket client that resumes with `from` whenever it is dropped
// receives every change of its table once, in commit order. Every stream
// and bucket tablecast made is replicated on the three nodes.
func TestSoakNATSClusterNodeLoss(t *testing.T) {
	if os.Getenv("TABLECAST_SOAK") == "" {
		t.Skip("a soak test: TABLECAST_SOAK=1 (make soak)")
	}
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_cluster_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	cl := natstest.StartCluster(t, 3)

	common := []string{"TABLECAST_NATS_URL=" + cl.URL(), "TABLECAST_STREAM_REPLICAS=3", "TABLECAST_LOG_LEVEL=warn"}
	reader := startProcess(t, append(baseEnv(), append(common, "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_cluster", "TABLECAST_HTTP_ADDR="+freeAddr(t))...), "cdc")
	gwAddr := freeAddr(t)
	gateway := startProcess(t, append(baseEnv(), append(common, "TABLECAST_HTTP_ADDR="+gwAddr)...), "gateway")
	waitFor(t, 2*time.Minute, "/readyz of tablecast gateway", func() bool {
		code, _, err := httpGet("http://" + gwAddr + "/readyz")
		return err == nil && code == 200
	})

	client := startResumingClient(t, "public.a", "ws://"+gwAddr+"/ws")
	load := startOrderedLoad(t, conn, 2*time.Millisecond)

	// Three node losses, each while the writer runs.
	var killed []string
	for round := range 3 {
		time.Sleep(8 * time.Second)
		var victim *natstest.Node
		switch round {
		case 0, 2:
			victim = cl.StreamLeader("TABLECAST")
		default:
			leader := cl.StreamLeader("TABLECAST")
			for _, n := range cl.Nodes {
				if n != leader {
					victim = n
					break
				}
			}
		}
		if victim == nil {
			t.Fatal("no node leads the event stream")
		}
		before := cl.Count("TABLECAST")
		killed = append(killed, victim.Name)
		t.Logf("round %d: SIGKILL of %s (%d events stored)", round+1, victim.Name, before)
		victim.Kill()
		down := time.Now()
		waitFor(t, time.Minute, "new events stored while a node is down", func() bool {
			return cl.Count("TABLECAST") > before+100
		})
		t.Logf("round %d: events stored again %s after the kill", round+1, time.Since(down).Round(time.Millisecond))
		time.Sleep(time.Until(down.Add(10 * time.Second)))
		victim.Start()
		waitFor(t, 2*time.Minute, "the stream's replicas to be current again", func() bool {
			return replicasCurrent(cl, "TABLECAST")
		})
	}
	time.Sleep(5 * time.Second)
	committed := load.stop(t)

	want := checkExactlyOnce(t, &natsServer{cl.Server}, committed, 3*time.Minute)

	// The client got table a's changes, each once, in commit order.
	got := client.expectAll(t, committed["a"], 2*time.Minute, " across a resume")

	for _, p := range []*exec.Cmd{reader, gateway} {
		if !running(p) {
			t.Fatalf("tablecast %s exited during the node losses", p.Args[1])
		}
	}
	// Every stream tablecast made (the event stream, its buckets) has
	// three replicas.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	names := cl.JS.StreamNames(ctx)
	var streams []string
	for name := range names.Name() {
		st, err := cl.JS.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s has %d replicas, want 3 (TABLECAST_STREAM_REPLICAS)", name, r)
		}
		streams = append(streams, name)
	}
	slices.Sort(streams)
	t.Logf("%d events, each once, in commit order, across SIGKILLs of %v; client received %d, %d resumes; streams %v",
		want, killed, len(got), client.resumes(), streams)
}

// replicasCurrent reports whether the stream has a leader and every other
// replica is current.
func replicasCurrent(cl *natstest.Cluster, name string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cl.JS.Stream(ctx, name)
	if err != nil {
		return false
	}
	info, err := st.Info(ctx)
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != len(cl.Nodes)-1 {
		return false
	}
	for _, r := range info.Cluster.Replicas {
		if !r.Current || r.Offline {
			return false
		}
	}
	return true
}

// resumingClient is a WebSocket client of one table that, whenever its
// connection ends, dials again (the next of its URLs) and resumes from the
// last seq it received, as the contract tells clients to.
type resumingClient struct {
	t    *testing.T
	urls []string // dialled in turn, one more on each reconnect: a load balancer
	tbl  string
	quit chan struct{}
	done chan struct{}

	mu      sync.Mutex
	got     []change
	ids     map[string]bool
	lastSeq uint64
	resumed int
	err     error
}

// expectAll waits up to within for the client to have received as many
// changes as want, stops it, and checks it got exactly want, in order;
// across says where a loss or repeat would come from, for the message.
func (c *resumingClient) expectAll(t *testing.T, want []change, within time.Duration, across string) []change {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("the client to receive %d changes", len(want)), func() bool {
		return c.count() >= len(want)
	})
	got := c.stop()
	if len(got) != len(want) {
		t.Fatalf("the client received %d changes, %d were committed", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("client's change %d is %v, want %v (lost, repeated or out of order%s)", i, got[i], want[i], across)
		}
	}
	return got
}

func startResumingClient(t *testing.T, table string, urls ...string) *resumingClient {
	c := &resumingClient{t: t, urls: urls, tbl: table, quit: make(chan struct{}), done: make(chan struct{}), ids: map[string]bool{}}
	ready := make(chan struct{})
	go c.run(ready)
	t.Cleanup(func() { c.stop() })
	select {
	case <-ready:
	case <-time.After(time.Minute):
		t.Fatal("the client did not subscribe within a minute")
	}
	return c
}

func (c *resumingClient) run(ready chan struct{}) {
	defer close(c.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-c.quit
		cancel()
	}()
	first := true
	for dials := 0; ctx.Err() == nil; dials++ {
		err := c.session(ctx, c.urls[dials%len(c.urls)], &first, ready)
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		c.resumed++
		c.mu.Unlock()
		c.t.Logf("client: connection ended (%v); resuming", err)
		time.Sleep(200 * time.Millisecond)
	}
}

// session is one connection: subscribe (with from after the first), then
// read events until the connection ends. An error frame other than one a
// restart explains is the test's failure.
func (c *resumingClient) session(ctx context.Context, url string, first *bool, ready chan struct{}) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ws, _, err := websocket.Dial(dctx, url, nil)
	cancel()
	if err != nil {
		return err
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 24)
	c.mu.Lock()
	sub := fmt.Sprintf(`{"type":"subscribe","id":"a","table":%q}`, c.tbl)
	if !*first {
		sub = fmt.Sprintf(`{"type":"subscribe","id":"a","table":%q,"from":%d}`, c.tbl, c.lastSeq)
	}
	c.mu.Unlock()
	if err := ws.Write(ctx, websocket.MessageText, []byte(sub)); err != nil {
		return err
	}
	for {
		_, b, err := ws.Read(ctx)
		if code := websocket.CloseStatus(err); code >= 4000 && code != 4008 {
			// Refused, not dropped: reconnecting would not help.
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return err
		}
		if err != nil {
			return err
		}
		var f struct {
			wsFrame
			Message string `json:"message"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			return err
		}
		switch f.Type {
		case "subscribed":
			if *first {
				*first = false
				c.mu.Lock()
				c.lastSeq = f.Seq
				c.mu.Unlock()
				close(ready)
			}
		case "event":
			var ev struct {
				ID   string         `json:"id"`
				Op   string         `json:"op"`
				Data map[string]any `json:"data"`
			}
			if err := json.Unmarshal(f.Event, &ev); err != nil {
				return err
			}
			c.mu.Lock()
			if f.Seq <= c.lastSeq || c.ids[ev.ID] {
				c.err = fmt.Errorf("event %s at seq %d after seq %d: repeated", ev.ID, f.Seq, c.lastSeq)
			}
			c.ids[ev.ID] = true
			c.lastSeq = f.Seq
			id, _ := ev.Data["id"].(float64)
			c.got = append(c.got, change{ev.Op, int(id)})
			failed := c.err != nil
			c.mu.Unlock()
			if failed {
				return c.err
			}
		case "error":
			if *first && f.Code == "unknown_table" {
				// The reader has not registered the table yet: it
				// runs in a process of its own.
				return fmt.Errorf("%s: %s", f.Code, f.Message)
			}
			c.mu.Lock()
			c.err = fmt.Errorf("error frame %s: %s", f.Code, f.Message)
			c.mu.Unlock()
			return c.err
		}
	}
}

func (c *resumingClient) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		c.t.Fatalf("client: %v", c.err)
	}
	return len(c.got)
}

func (c *resumingClient) resumes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resumed
}

// stop ends the client and returns what it received, failing the test if
// it saw a repeat or an error frame.
func (c *resumingClient) stop() []change {
	select {
	case <-c.quit:
	default:
		close(c.quit)
	}
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		c.t.Errorf("client: %v", c.err)
	}
	return slices.Clone(c.got)
}

// running reports whether the process has not ended (a process that ended
// but was not waited for is a zombie: state Z).
func running(cmd *exec.Cmd) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		return false
	}
	// pid (comm) state …: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}
