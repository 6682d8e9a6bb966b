package connlimit

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/testcert"
)

func TestKey(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"10.0.0.1:1", "10.0.0.1:2", true},
		{"10.0.0.1:1", "10.0.0.2:1", false},
		{"[::ffff:10.0.0.1]:1", "10.0.0.1:2", true},
		{"[2001:db8:1:2::1]:1", "[2001:db8:1:2:ffff::9]:2", true}, // one /64
		{"[2001:db8:1:2::1]:1", "[2001:db8:1:3::1]:1", false},
		{"[fe80::1%eth0]:1", "[fe80::2%eth1]:1", true},
	} {
		a, _ := net.ResolveTCPAddr("tcp", tc.a)
		b, _ := net.ResolveTCPAddr("tcp", tc.b)
		ka, oka := Key(a)
		kb, okb := Key(b)
		if !oka || !okb || (ka == kb) != tc.same {
			t.Errorf("Key(%s) = %v, Key(%s) = %v; want same %v", tc.a, ka, tc.b, kb, tc.same)
		}
	}
	if _, ok := Key(&net.UnixAddr{Name: "/tmp/x", Net: "unix"}); ok {
		t.Error("a Unix address has a key")
	}
}

func TestPerAddr(t *testing.T) {
	p := NewPerAddr(2)
	a := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}
	b := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 1}
	s1, ok1 := p.Acquire(a)
	s2, ok2 := p.Acquire(a)
	_, ok3 := p.Acquire(a)
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("acquire 3 from one address with a limit of 2: %v %v %v", ok1, ok2, ok3)
	}
	if _, ok := p.Acquire(b); !ok {
		t.Fatal("another address refused")
	}
	s1.Release()
	s1.Release() // idempotent: frees one slot, not two
	if _, ok := p.Acquire(a); !ok {
		t.Fatal("released slot not free")
	}
	if _, ok := p.Acquire(a); ok {
		t.Fatal("a double release freed two slots")
	}
	s2.Release()
	var nilSlot *Slot
	nilSlot.Release()
	if s, ok := NewPerAddr(0).Acquire(a); !ok || s != nil {
		t.Fatal("no limit: acquire must succeed and count nothing")
	}
}

// TestLingerCloseNoReset: a server that answers and closes while the
// client's request is still unread resets the connection, and the client
// may lose the answer; LingerClose reads it away first, so the client gets
// the whole answer and then the end of the stream.
func TestLingerCloseNoReset(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	answer := bytes.Repeat([]byte("answer "), 20000) // more than fits at once
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				var b [16]byte
				_, _ = io.ReadFull(nc, b[:]) // the start of the request only
				_, _ = nc.Write(answer)
				LingerClose(nc, 5*time.Second)
			}()
		}
	}()
	for i := range 20 {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		go func() { _, _ = nc.Write(bytes.Repeat([]byte("request "), 8000)) }()
		time.Sleep(20 * time.Millisecond) // the request arrives, unread, before the close
		got, err := io.ReadAll(nc)
		_ = nc.Close()
		if err != nil || !bytes.Equal(got, answer) {
			t.Fatalf("connection %d: read %d of %d bytes, then %v", i, len(got), len(answer), err)
		}
	}
}

// TestRefuseOverTLSEnds: refusing a TLS connection whose client sends
// nothing (not even its hello) ends within the time allowed: the write of
// the answer runs the server's handshake, which reads, and a refusal that
// waited for the hello forever held its goroutine and one of the refusals
// in progress for as long as the client liked.
func TestRefuseOverTLSEnds(t *testing.T) {
	c := testcert.New(t, "127.0.0.1")
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(tcp, &tls.Config{Certificates: []tls.Certificate{cert}})
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String()) // and silent
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		Refuse(nc, 429, "too many", 200*time.Millisecond)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second): // far beyond the 2×200 ms allowed
		t.Fatal("the refusal of a silent TLS client did not end")
	}
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, client); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the refused connection is still open")
	}
}
