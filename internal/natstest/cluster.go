package natstest

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Cluster is a JetStream cluster of nats-server processes on loopback,
// built from the nats-server module this repository depends on, and a
// client (Server's NC and JS, with Count and ReadAll) connected to every
// node. A test kills a node with SIGKILL, as a machine that dies, and starts
// it again on the same ports and store.
type Cluster struct {
	*Server
	Nodes []*Node
}

// Node is one nats-server process of a Cluster.
type Node struct {
	Name   string
	Client string // host:port of its client listener
	Route  string // host:port of its cluster listener
	dir    string
	log    string // the file its output goes to, unless TABLECAST_TEST_NATS_LOG is set
	routes string
	t      testing.TB
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has exited (and been waited for)
}

// StartCluster starts n nodes (n ≥ 3 for a JetStream quorum to survive one
// node), stopped when t ends. It returns once every node routes to every
// other and the client is connected.
//
// A cluster with a node that does not start, or whose nodes elect no
// JetStream meta leader within a minute, is stopped, with the end of each
// node's log in t's log, and started once more on fresh ports and stores:
// the ports are picked free and then given to nats-server, and another
// process of a busy machine may take one in between.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := buildServer(t)
	const attempts = 2
	for attempt := 1; ; attempt++ {
		c, err := startCluster(t, bin, n)
		if err == nil {
			return c
		}
		for _, node := range c.Nodes {
			t.Logf("nats-server %s (client %s, route %s), the end of its log:\n%s", node.Name, node.Client, node.Route, node.logTail(4096))
			node.Stop()
		}
		if c.Server != nil && c.NC != nil {
			c.NC.Close()
		}
		if attempt == attempts {
			t.Fatalf("the NATS cluster did not start, %d times: %v", attempts, err)
		}
		t.Logf("the NATS cluster did not start (%v): starting it again on other ports", err)
	}
}

// startCluster starts one cluster of n nodes and waits a minute at most for
// its JetStream meta leader; on error (that, or a node that does not
// start) the nodes started are in c.Nodes.
func startCluster(t testing.TB, bin string, n int) (*Cluster, error) {
	t.Helper()
	c := &Cluster{}
	var routes []string
	for i := range n {
		node := &Node{Name: fmt.Sprintf("n%d", i+1), Client: freeAddr(t), Route: freeAddr(t), dir: t.TempDir(), t: t}
		node.log = filepath.Join(t.TempDir(), "nats-server-"+node.Name+".log")
		c.Nodes = append(c.Nodes, node)
		routes = append(routes, "nats://"+node.Route)
	}
	t.Cleanup(func() {
		for _, node := range c.Nodes {
			node.Stop()
		}
	})
	var urls []string
	for _, node := range c.Nodes {
		node.routes = strings.Join(routes, ",")
		if err := node.start(bin); err != nil {
			return c, err // a port taken meanwhile, most likely
		}
		urls = append(urls, "nats://"+node.Client)
	}
	c.Server = start(t, &Server{t: t, urls: strings.Join(urls, ",")})
	deadline := time.Now().Add(time.Minute)
	for {
		err := c.waitJetStream()
		if err == nil {
			// A node whose route port was taken may have accepted clients
			// for a moment and exited since; the others elect a leader
			// without it.
			for _, node := range c.Nodes {
				if !node.alive() {
					return c, fmt.Errorf("nats-server %s (client %s, route %s) exited: a port of its taken, most likely", node.Name, node.Client, node.Route)
				}
			}
			return c, nil
		}
		if time.Now().After(deadline) {
			return c, fmt.Errorf("no JetStream meta leader within a minute: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitJetStream answers nil once JetStream answers through the client:
// the nodes have elected a meta leader.
func (c *Cluster) waitJetStream() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.JS.AccountInfo(ctx)
	return err
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start starts the node's process and waits until it accepts connections;
// an error when it does not within 30 s, or exits first (a port of its
// taken: another process may take one between freeAddr and here).
func (n *Node) start(bin string) error {
	n.t.Helper()
	host, port, _ := strings.Cut(n.Client, ":")
	cmd := exec.Command(bin, "-js", "-sd", n.dir, "-a", host, "-p", port, "-n", n.Name,
		"--cluster_name", "tablecast", "--cluster", "nats://"+n.Route, "--routes", n.routes)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if os.Getenv("TABLECAST_TEST_NATS_LOG") == "" {
		f, err := os.OpenFile(n.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			n.t.Fatalf("open the log of nats-server %s: %v", n.Name, err)
		}
		defer f.Close() // the process holds its own descriptor
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start nats-server %s: %w", n.Name, err)
	}
	n.cmd = cmd
	exited := make(chan struct{})
	n.exited = exited
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if !n.alive() {
			return fmt.Errorf("nats-server %s (client %s, route %s) exited as it started: a port of its taken, most likely", n.Name, n.Client, n.Route)
		}
		conn, err := net.DialTimeout("tcp", n.Client, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats-server %s does not accept connections on %s: %w", n.Name, n.Client, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether the node's process runs.
func (n *Node) alive() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// logTail is the last limit bytes of the node's log ("" when it logs to
// the test's output).
func (n *Node) logTail(limit int64) string {
	f, err := os.Open(n.log)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > limit {
		_, _ = f.Seek(st.Size()-limit, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// Kill ends the node with SIGKILL: nothing flushed, nothing said to the
// other nodes.
func (n *Node) Kill() {
	n.t.Helper()
	if n.cmd == nil {
		return
	}
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		select {
		case <-n.exited: // it had exited on its own
		case <-time.After(5 * time.Second):
			n.t.Fatalf("kill nats-server %s: %v", n.Name, err)
		}
	}
	<-n.exited
	n.cmd = nil
}

// Stop ends the node with SIGTERM, if it runs.
func (n *Node) Stop() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	<-n.exited
	n.cmd = nil
}

// Start starts a stopped or killed node again, on its ports and store.
func (n *Node) Start() {
	n.t.Helper()
	if err := n.start(buildServer(n.t)); err != nil {
		n.t.Fatal(err)
	}
}

// PID is the node's process id, 0 when it does not run.
func (n *Node) PID() int {
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Node returns the node named name ("n1", …), nil if there is none.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// StreamLeader returns the node leading streamName's replicas, nil when it
// cannot be told.
func (c *Cluster) StreamLeader(streamName string) *Node {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.JS.Stream(ctx, streamName)
	if err != nil {
		return nil
	}
	info, err := st.Info(ctx)
	if err != nil || info.Cluster == nil {
		return nil
	}
	return c.Node(info.Cluster.Leader)
}
