package natstest

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNodeOnATakenPort: a node whose route port another process took
// between freeAddr and its start exits, and that is seen: start returns an
// error (it exited before accepting clients), or the node is found dead
// moments after (nats-server may accept clients for an instant before its
// route listener fails), which startCluster checks once the others have
// elected a leader. Either way the cluster starts again on other ports,
// rather than failing the test after 30 s or running short of a node.
func TestNodeOnATakenPort(t *testing.T) {
	for i := range 5 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		n := &Node{Name: "n1", Client: freeAddr(t), Route: ln.Addr().String(), dir: t.TempDir(), t: t}
		n.log = filepath.Join(t.TempDir(), "nats-server.log")
		n.routes = "nats://" + n.Route
		if err := n.start(buildServer(t)); err == nil {
			deadline := time.Now().Add(10 * time.Second)
			for n.alive() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n.alive() {
				t.Fatalf("run %d: a node whose route port is taken still runs after 10 s", i)
			}
		} else if !strings.Contains(err.Error(), "exited as it started") {
			t.Fatalf("run %d: start on a taken route port: %v", i, err)
		}
		n.Stop()
		ln.Close()
	}
}
