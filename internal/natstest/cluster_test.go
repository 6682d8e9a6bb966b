package natstest

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNodeOnATakenPort: a node whose route port another process took
// between freeAddr and its start reports it at once, as an error that
// makes StartCluster start the cluster again on other ports, rather than
// failing the test after 30 s (which a busy CI machine once did).
func TestNodeOnATakenPort(t *testing.T) {
	if os.Getenv("TABLECAST_TEST_NATS_LOG") != "" {
		t.Skip("the node's log goes to the test's output, where start cannot read it")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	n := &Node{Name: "n1", Client: freeAddr(t), Route: ln.Addr().String(), dir: t.TempDir(), t: t}
	n.log = filepath.Join(t.TempDir(), "nats-server.log")
	n.routes = "nats://" + n.Route
	defer n.Stop()
	began := time.Now()
	err = n.start(buildServer(t))
	if err == nil || !strings.Contains(err.Error(), "is taken") {
		t.Fatalf("start on a taken port: %v, want an error saying the port is taken", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("the taken port was reported after %s", took)
	}
}
