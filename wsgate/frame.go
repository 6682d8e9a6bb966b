package wsgate

import (
	"encoding/binary"
	"net"
	"sync"
	"time"
	"unicode/utf8"
)

// Server frames are built in place: a frame buffer starts with
// maxFrameHeader spare bytes, the payload is appended after them, and
// finishFrame writes the header right before the payload. Server frames are
// not masked, so one frame's bytes can be written to any number of
// connections.

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// maxFrameHeader is the longest header of an unmasked frame.
const maxFrameHeader = 10

// newFrame returns a frame buffer for a payload of about sizeHint bytes.
func newFrame(sizeHint int) []byte {
	return make([]byte, maxFrameHeader, maxFrameHeader+sizeHint)
}

// finishFrame writes the header of a final frame with opcode op before the
// payload buf[maxFrameHeader:], and returns the frame.
func finishFrame(buf []byte, op byte) []byte {
	n := len(buf) - maxFrameHeader
	var start int
	switch {
	case n < 126:
		start = maxFrameHeader - 2
		buf[start+1] = byte(n)
	case n <= 0xFFFF:
		start = maxFrameHeader - 4
		buf[start+1] = 126
		binary.BigEndian.PutUint16(buf[start+2:], uint16(n))
	default:
		start = 0
		buf[1] = 127
		binary.BigEndian.PutUint64(buf[2:], uint64(n))
	}
	buf[start] = 0x80 | op
	return buf[start:]
}

// textFrame returns a text frame holding payload.
func textFrame(payload []byte) []byte {
	return finishFrame(append(newFrame(len(payload)), payload...), opText)
}

// closeFrame returns a close frame with code and reason, the reason cut to
// the 123 bytes a control frame allows (at a rune boundary).
func closeFrame(code CloseCode, reason string) []byte {
	if len(reason) > 123 {
		cut := 123
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	buf := newFrame(2 + len(reason))
	buf = binary.BigEndian.AppendUint16(buf, uint16(code))
	buf = append(buf, reason...)
	return finishFrame(buf, opClose)
}

// deadline returns now + d.
func deadline(d time.Duration) time.Time { return time.Now().Add(d) }

// prefixConn is a connection whose first bytes were already read (to tell a
// WebSocket request from another HTTP request); Read returns them first.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// chanListener hands connections that are not WebSocket upgrades to the
// gateway's http.Server.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }
