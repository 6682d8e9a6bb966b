package wsgate

import (
	"bufio"
	"bytes"
	"net"
	"testing"
)

// TestPingFloodQueuesFewPongs: a client that sends pings and reads nothing
// has a few pongs waiting for it, the last the answer to its latest ping,
// however many it sends. Queued one each, the pongs would fill the send queue
// with frames of a few bytes, each costing the gateway tens of bytes more
// than SendQueueBytes counts: some 100 MB per connection before the 4 MiB
// limit closes it.
func TestPingFloodQueuesFewPongs(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	// The client's end of a pipe that nobody reads: the first write of a
	// pong blocks, and whatever follows waits in the queue.
	server, client := net.Pipe()
	t.Cleanup(func() { _ = client.Close() })
	c := &conn{g: e.gw, nc: server, fd: -1}
	const pings = 10000
	var in bytes.Buffer
	for i := range pings {
		in.Write(e2eMasked(0x80|opPing, []byte{byte(i), byte(i >> 8)}))
	}
	br := bufio.NewReader(&in)
	for range pings {
		if msg, err := c.readMessage(br); msg != nil || err != nil {
			t.Fatalf("read a ping: got %q, %v", msg, err)
		}
	}
	c.mu.Lock()
	frames, queued, closing := len(c.queue), c.queued, c.closing
	var last []byte
	if frames > 0 {
		last = c.queue[frames-1]
	}
	c.mu.Unlock()
	if closing {
		t.Fatal("the connection was closed")
	}
	if frames > maxQueuedPongs || queued > 4*maxQueuedPongs {
		t.Fatalf("%d frames (%d bytes) queued after %d pings, want %d pongs at most", frames, queued, pings, maxQueuedPongs)
	}
	lastPing := pings - 1
	if want := []byte{0x80 | opPong, 2, byte(lastPing), byte(lastPing >> 8)}; !bytes.Equal(last, want) {
		t.Fatalf("queued % x, want the pong of the last ping, % x", last, want)
	}
}
