package cdc

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestReplicationFrontendAcrossDeadlines feeds the replication connection's
// frontend through a socket whose reads time out in the middle of messages,
// as the session's loop makes them do every few milliseconds: each timeout
// comes back as the socket's own error (the loop tells it from a failure
// with pgconn.Timeout), and no byte read before it is lost, however the
// stream is cut.
func TestReplicationFrontendAcrossDeadlines(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	defer server.Close()

	// Messages from a few bytes to several times the read buffer, so that
	// they start and end anywhere in it.
	var wire []byte
	var want [][]byte
	for i, size := range []int{1, 7, 8191, 8192, 8193, 40000, replicationReadBuffer - 3, replicationReadBuffer + 5, 3 * replicationReadBuffer, 2} {
		data := bytes.Repeat([]byte{byte('a' + i)}, size)
		want = append(want, data)
		wire, err = (&pgproto3.CopyData{Data: data}).Encode(wire)
		if err != nil {
			t.Fatal(err)
		}
	}
	wire, err = (&pgproto3.CopyDone{}).Encode(wire)
	if err != nil {
		t.Fatal(err)
	}

	// The server sends the stream in pieces cut at odd places, pausing
	// longer than a read waits after each.
	go func() {
		for off, step := 0, 1; off < len(wire); step = step*7 + 3 {
			n := min(step%(replicationReadBuffer+1000)+1, len(wire)-off)
			if _, err := server.Write(wire[off : off+n]); err != nil {
				return
			}
			off += n
			time.Sleep(5 * time.Millisecond)
		}
	}()

	fe := replicationFrontend(client, client)
	var got [][]byte
	timeouts := 0
	for {
		if err := client.SetReadDeadline(time.Now().Add(time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		msg, err := fe.Receive()
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("after %d messages: %v, not the socket's timeout", len(got), err)
			}
			timeouts++
			if timeouts > 10000 {
				t.Fatalf("after %d messages: still waiting", len(got))
			}
			continue
		}
		if _, done := msg.(*pgproto3.CopyDone); done {
			break
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			t.Fatalf("after %d messages: got %T", len(got), msg)
		}
		got = append(got, bytes.Clone(cd.Data))
	}
	if timeouts == 0 {
		t.Fatal("no read timed out: the test cut nothing")
	}
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("message %d: %d bytes, want %d (%q…)", i, len(got[i]), len(want[i]), got[i][:min(len(got[i]), 8)])
		}
	}
	t.Logf("%d messages, %d bytes, through %d timeouts", len(got), len(wire), timeouts)
}
