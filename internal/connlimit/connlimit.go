// Package connlimit bounds what a source address may hold of a server before
// it has proven who it is, and closes refused or finished connections without
// resetting them.
//
// PerAddr counts connections per source address (an IPv4 address, or the
// /64 of an IPv6 one, which is what one host is usually given); Listener
// applies it to every connection of a listener, for servers whose clients
// never authenticate (health and metrics). The WebSocket gateway uses
// PerAddr directly: a connection leaves the count once authenticated.
//
// Concurrency: every method is safe for concurrent use.
package connlimit

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// PerAddr counts connections per source address and refuses those beyond
// its limit.
type PerAddr struct {
	max int
	mu  sync.Mutex
	n   map[netip.Addr]int
}

// NewPerAddr returns a counter allowing max connections per address; max
// <= 0 allows any number (and counts nothing).
func NewPerAddr(max int) *PerAddr {
	return &PerAddr{max: max, n: map[netip.Addr]int{}}
}

// Slot is one counted connection. Release is idempotent and nil-safe.
type Slot struct {
	p        *PerAddr
	key      netip.Addr
	released atomic.Bool
}

// Key returns the address a connection from addr is counted under: the IP
// (IPv4-mapped addresses as IPv4), the /64 for IPv6. ok is false for an
// address that is not IP (a pipe, a Unix socket): those are not counted.
func Key(addr net.Addr) (netip.Addr, bool) {
	var ap netip.AddrPort
	switch a := addr.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		if addr == nil {
			return netip.Addr{}, false
		}
		var err error
		if ap, err = netip.ParseAddrPort(addr.String()); err != nil {
			return netip.Addr{}, false
		}
	}
	ip := ap.Addr().Unmap()
	if !ip.IsValid() {
		return netip.Addr{}, false
	}
	if ip.Is6() {
		p, _ := ip.WithZone("").Prefix(64)
		ip = p.Addr()
	}
	return ip, true
}

// Acquire counts a connection from addr; ok is false when the address
// already holds the most allowed (nothing is counted then).
func (p *PerAddr) Acquire(addr net.Addr) (s *Slot, ok bool) {
	if p == nil || p.max <= 0 {
		return nil, true
	}
	key, ok := Key(addr)
	if !ok {
		return nil, true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[key] >= p.max {
		return nil, false
	}
	p.n[key]++
	return &Slot{p: p, key: key}, true
}

// Release uncounts the connection.
func (s *Slot) Release() {
	if s == nil || s.released.Swap(true) {
		return
	}
	s.p.mu.Lock()
	if s.p.n[s.key]--; s.p.n[s.key] <= 0 {
		delete(s.p.n, s.key)
	}
	s.p.mu.Unlock()
}

// Count returns the connections counted for addr's key.
func (p *PerAddr) Count(addr net.Addr) int {
	key, ok := Key(addr)
	if p == nil || !ok {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n[key]
}

// Listener counts every accepted connection against a PerAddr until it is
// closed; a connection beyond the limit is answered 429 and closed.
type Listener struct {
	net.Listener
	limit *PerAddr
}

// NewListener wraps ln with a limit of max connections per source address
// (max <= 0: no limit, ln is returned as is).
func NewListener(ln net.Listener, max int) net.Listener {
	if max <= 0 {
		return ln
	}
	return &Listener{Listener: ln, limit: NewPerAddr(max)}
}

// Accept returns the next connection within the limit.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		s, ok := l.limit.Acquire(nc.RemoteAddr())
		if !ok {
			go Refuse(nc, 429, "too many connections from your address", time.Second)
			continue
		}
		return &countedConn{Conn: nc, slot: s}, nil
	}
}

type countedConn struct {
	net.Conn
	slot *Slot
}

func (c *countedConn) Close() error {
	c.slot.Release()
	return c.Conn.Close()
}

// CloseWrite half-closes the connection when the underlying one can.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// refusing bounds the goroutines answering refused connections: beyond it,
// a refused connection is closed without an answer.
var refusing atomic.Int64

const maxRefusing = 1024

// Refuse answers a connection that is not served with an HTTP status and a
// short text, then closes it without a reset (see LingerClose). It takes at
// most about 2×timeout.
func Refuse(nc net.Conn, status int, msg string, timeout time.Duration) {
	if refusing.Add(1) > maxRefusing {
		refusing.Add(-1)
		_ = nc.Close()
		return
	}
	defer refusing.Add(-1)
	// A read deadline too: on a TLS connection the write first runs the
	// server's handshake, which reads the client's hello.
	_ = nc.SetDeadline(time.Now().Add(timeout))
	extra := ""
	if status == 429 || status == 503 {
		extra = "Retry-After: 1\r\n"
	}
	_, _ = nc.Write(HTTPError(status, msg, extra))
	LingerClose(nc, timeout)
}

// HTTPError returns a complete HTTP/1.1 response that closes the connection:
// status, a text body msg and the extra header lines (each ending "\r\n").
func HTTPError(status int, msg, extra string) []byte {
	body := strconv.Itoa(status) + " " + statusText(status) + ": " + msg + "\n"
	b := make([]byte, 0, 160+len(body)+len(extra))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, statusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	b = append(b, extra...)
	b = append(b, "\r\n"...)
	return append(b, body...)
}

func statusText(status int) string {
	switch status {
	case 400:
		return "Bad Request"
	case 404:
		return "Not Found"
	case 414:
		return "URI Too Long"
	case 421:
		return "Misdirected Request"
	case 426:
		return "Upgrade Required"
	case 429:
		return "Too Many Requests"
	case 431:
		return "Request Header Fields Too Large"
	case 503:
		return "Service Unavailable"
	}
	return "Error"
}

// lingerLimit bounds what LingerClose reads and throws away.
const lingerLimit = 64 << 10

// LingerClose closes nc the way nginx's lingering close does: it sends FIN
// after whatever was written (the peer reads it all), then reads and throws
// away what the peer still sends, up to timeout or 64 KiB, before closing.
// Closing a socket with unread input makes the kernel answer with a reset,
// and a reset can destroy data the peer has not read yet: a response, or a
// WebSocket close frame.
func LingerClose(nc net.Conn, timeout time.Duration) {
	if cw, ok := nc.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
		_ = nc.Close()
		return
	}
	// A TLS connection's CloseWrite sends close_notify only: the FIN is
	// the socket's.
	if tc, ok := nc.(interface{ NetConn() net.Conn }); ok {
		if cw, ok := tc.NetConn().(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	_ = nc.SetReadDeadline(time.Now().Add(timeout))
	var buf [512]byte
	for n := 0; n < lingerLimit; {
		k, err := nc.Read(buf[:])
		n += k
		if err != nil {
			break // EOF: the peer closed too; or the time is up
		}
	}
	_ = nc.Close()
}
