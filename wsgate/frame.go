package wsgate

import (
	"bufio"
	"encoding/binary"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tablecast/tablecast/internal/connlimit"
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

// frameHeader is a client frame's header.
type frameHeader struct {
	fin    bool
	rsv    byte // the three RSV bits, in place
	op     byte
	masked bool
	mask   [4]byte
	length int64
}

// errMalformedHeader is a frame header whose length is not encoded as RFC
// 6455 §5.2 requires.
var errMalformedHeader = errors.New("malformed frame header")

// readFrameHeader reads a frame header from br without allocating: it is
// peeked in br's buffer, then discarded.
func readFrameHeader(br *bufio.Reader) (frameHeader, error) {
	var h frameHeader
	b, err := br.Peek(2)
	if err != nil {
		return h, err
	}
	h.fin = b[0]&0x80 != 0
	h.rsv = b[0] & 0x70
	h.op = b[0] & 0x0F
	h.masked = b[1]&0x80 != 0
	n := 2
	switch b[1] & 0x7F {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if h.masked {
		n += 4
	}
	if b, err = br.Peek(n); err != nil {
		return h, err
	}
	switch l := b[1] & 0x7F; l {
	case 126:
		h.length = int64(binary.BigEndian.Uint16(b[2:]))
		if h.length < 126 {
			return h, errMalformedHeader
		}
	case 127:
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 || u <= 0xFFFF {
			return h, errMalformedHeader
		}
		h.length = int64(u)
	default:
		h.length = int64(l)
	}
	if h.masked {
		copy(h.mask[:], b[n-4:n])
	}
	_, _ = br.Discard(n)
	return h, nil
}

// validUTF8Prefix checks text that may end inside a code point (a text
// message arriving fragment by fragment, each fragment checked as it
// comes). It returns the number of leading bytes that are whole valid
// UTF-8, and false if b holds an invalid sequence, one that no byte still to
// come can make valid: the rest, b[n:], is at most 3 bytes that begin a
// valid code point.
func validUTF8Prefix(b []byte) (n int, ok bool) {
	if utf8.Valid(b) {
		return len(b), true
	}
	start := len(b) - 1
	for start >= 0 && start > len(b)-4 && !utf8.RuneStart(b[start]) {
		start--
	}
	if start < 0 || !utf8.RuneStart(b[start]) || !utf8.Valid(b[:start]) || !incompleteRune(b[start:]) {
		return 0, false
	}
	return start, true
}

// incompleteRune reports whether p is the beginning of a valid UTF-8
// sequence, shorter than the whole (RFC 3629 §4: overlong forms,
// surrogates and code points beyond U+10FFFF are invalid from the byte
// where they can be told).
func incompleteRune(p []byte) bool {
	var need int
	lo, hi := byte(0x80), byte(0xBF) // the range of the second byte
	switch c := p[0]; {
	case c >= 0xC2 && c <= 0xDF:
		need = 2
	case c == 0xE0:
		need, lo = 3, 0xA0
	case c == 0xED:
		need, hi = 3, 0x9F
	case c >= 0xE1 && c <= 0xEF:
		need = 3
	case c == 0xF0:
		need, lo = 4, 0x90
	case c >= 0xF1 && c <= 0xF3:
		need = 4
	case c == 0xF4:
		need, hi = 4, 0x8F
	default:
		return false
	}
	if len(p) >= need {
		return false
	}
	for i, c := range p[1:] {
		if i == 0 && (c < lo || c > hi) || i > 0 && (c < 0x80 || c > 0xBF) {
			return false
		}
	}
	return true
}

// parseClose checks a client's close frame payload (RFC 6455 §5.5.1,
// §7.4): empty, or a status code a peer may send followed by a UTF-8
// reason. It returns the code and reason to answer with, or the error to
// close with.
func parseClose(payload []byte) (CloseCode, string, *closeError) {
	switch {
	case len(payload) == 0:
		return CloseNormal, "", nil
	case len(payload) == 1:
		return 0, "", &closeError{CloseProtocolError, "close frame with a 1-byte payload"}
	}
	code := CloseCode(binary.BigEndian.Uint16(payload))
	if !validPeerCloseCode(code) {
		return 0, "", &closeError{CloseProtocolError, "invalid close code " + strconv.Itoa(int(code))}
	}
	if !utf8.Valid(payload[2:]) {
		return 0, "", &closeError{CloseInvalidPayload, "close reason is not UTF-8"}
	}
	return code, "closed by the client", nil
}

// validPeerCloseCode reports whether a peer may send code in a close frame:
// the codes of RFC 6455 §7.4.1 and the IANA registry (1012–1014) that are
// not reserved for local use (1004–1006, 1015), and 3000–4999.
func validPeerCloseCode(code CloseCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// deadline returns now + d.
func deadline(d time.Duration) time.Time { return time.Now().Add(d) }

// prefixConn is a connection whose first bytes were already read (to tell a
// WebSocket request from another HTTP request); Read returns them first.
// It counts against its address's limit of unauthenticated connections
// (slot) until closed, or upgraded (ServeHTTP takes the slot over).
type prefixConn struct {
	net.Conn
	prefix []byte
	slot   *connlimit.Slot
}

func (c *prefixConn) Close() error {
	c.slot.Release()
	return c.Conn.Close()
}

// CloseWrite lets net/http half-close the connection as it does a TCP one.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
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
