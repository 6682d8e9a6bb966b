//go:build linux

package main

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The client side of WebSocket, as cheap as it can be: a few event loops
// (goroutines, each with its own epoll instance) own every connection. A
// loop reads whatever the kernel holds for a ready connection into one
// 64 KiB buffer and walks the frame headers in it; payloads are skipped,
// except while a connection waits for "subscribed", for control frames,
// and on the few connections that capture their messages (-mode e2e).

// Connection states.
const (
	stConnecting  uint8 = iota // TCP connect in progress
	stUpgrading                // upgrade request sent; reading the 101 response
	stSubscribing              // subscribed by message or URL; waiting for "subscribed"
	stReady                    // subscribed: counting frames
)

var stateNames = [...]string{"connecting", "upgrading", "subscribing", "ready"}

// Frame opcodes (RFC 6455, 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

const (
	// readBufSize is each loop's read buffer. One read takes whatever the
	// kernel holds for a connection up to this size, so a busy connection
	// costs one system call per 64 KiB, not one per frame.
	readBufSize = 64 << 10
	// epollBatch is how many ready connections one epoll_wait returns:
	// with thousands of connections receiving the same event, a large batch
	// saves system calls.
	epollBatch = 1024
	// maxCaptureBytes bounds the upgrade response and any message a
	// connection keeps (before "subscribed", and when capturing).
	maxCaptureBytes = 1 << 20
	// pollInterval is how long a loop waits in epoll_wait before looking at
	// handshake deadlines and whether it should stop.
	pollInterval = 100 * time.Millisecond
)

// wsGUID is the constant of the Sec-WebSocket-Accept computation.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wconn is one connection. Once subscribed, what it keeps between reads is
// the partial header of the frame being read and how much of its payload is
// still to come.
type wconn struct {
	fd      int32
	state   uint8
	op      uint8 // opcode of the frame being read, 0x80 set when it is final
	hdrN    uint8 // bytes of a partial header in hdr
	capture bool  // hand every message to poolConfig.onMessage
	hdr     [14]byte
	remain  uint64 // payload bytes of the current frame still to come
	got     uint32 // messages received since subscribed
	since   int64  // unix nanos the connection was started (handshake deadline)
	buf     []byte // upgrade response; message before subscribed; captured message
	ctl     []byte // payload of the control frame being read
}

// poolConfig says where and how to connect.
type poolConfig struct {
	remote    *unix.SockaddrInet4
	host      string // Host header
	target    string // request target: /ws, /ws/tables/public.bench?select=id
	subscribe []byte // subscribe message, sent as a masked text frame; nil for a URL subscription
	locals    []*unix.SockaddrInet4
	loops     int           // event loops (goroutines)
	inflight  int           // handshakes in progress at once, all loops together
	timeout   time.Duration // connect + upgrade + subscribe, per connection
	capture   int           // the first capture connections hand their messages to onMessage
	// coalesce is a pause after each round of reads, so that frames pile up
	// in the socket buffers and one read takes several: with many
	// connections each receiving one frame at a time, a read (and the
	// epoll_wait around it) per frame costs wsload 4-6 µs per frame on the
	// 2-core machine of the benchmarks. Zero for latency measurements.
	coalesce time.Duration
	// onMessage receives each message of a capturing connection, on the
	// loop's goroutine, with the time the read returned (unix nanos). The
	// payload is reused after it returns.
	onMessage func(payload []byte, now int64)
	arrivals  *arrivals // optional: when each connection's k-th message arrived
}

// pool is a set of connections spread over event loops.
type pool struct {
	cfg   poolConfig
	loops []*loop
	quit  atomic.Bool
	wg    sync.WaitGroup
	seed  uint64 // makes Sec-WebSocket-Key values; see key
	local atomic.Uint64
	fails failures
}

// dialPool opens n connections, subscribes each, and returns once every
// one of them is subscribed or has failed. If any failed it closes the
// rest and returns an error that counts the failures by reason.
func dialPool(cfg poolConfig, n int) (*pool, error) {
	if cfg.loops < 1 {
		cfg.loops = 1
	}
	if cfg.inflight < cfg.loops {
		cfg.inflight = cfg.loops
	}
	if cfg.timeout <= 0 {
		cfg.timeout = 15 * time.Second
	}
	p := &pool{cfg: cfg, seed: rand.Uint64()}
	p.fails.byReason = map[string]int{}
	capture := cfg.capture
	for i := range cfg.loops {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			p.close()
			return nil, fmt.Errorf("epoll_create1: %w", err)
		}
		share := n / cfg.loops
		if i < n%cfg.loops {
			share++
		}
		c := min(capture, share)
		capture -= c
		// A unix.Sockaddr keeps a buffer it writes on every use: each
		// loop has its own.
		remote := *cfg.remote
		locals := make([]*unix.SockaddrInet4, len(cfg.locals))
		for j, la := range cfg.locals {
			locals[j] = &unix.SockaddrInet4{Addr: la.Addr}
		}
		l := &loop{
			remote:    &remote,
			locals:    locals,
			p:         p,
			id:        i,
			epfd:      epfd,
			events:    make([]unix.EpollEvent, epollBatch),
			buf:       make([]byte, readBufSize),
			target:    share,
			capture:   c,
			limit:     max(1, cfg.inflight/cfg.loops),
			connected: make(chan struct{}),
		}
		p.loops = append(p.loops, l)
	}
	for _, l := range p.loops {
		p.wg.Add(1)
		go l.run()
	}
	for _, l := range p.loops {
		<-l.connected
	}
	if failed := p.fails.total(); failed > 0 {
		p.close()
		return nil, fmt.Errorf("%d of %d connections failed: %s", failed, n, p.fails.summary())
	}
	return p, nil
}

// close stops the loops, which close their connections, and waits for them.
func (p *pool) close() {
	p.quit.Store(true)
	p.wg.Wait()
}

// sum adds up one counter of every loop.
func (p *pool) sum(counter func(*loop) *atomic.Int64) int64 {
	var n int64
	for _, l := range p.loops {
		n += counter(l).Load()
	}
	return n
}

// alive is the number of subscribed connections still open.
func (p *pool) alive() int64 { return p.sum(func(l *loop) *atomic.Int64 { return &l.sAlive }) }

// frames is the number of data frames received by subscribed connections.
func (p *pool) frames() int64 { return p.sum(func(l *loop) *atomic.Int64 { return &l.sFrames }) }

// bytes is the number of bytes read, handshakes included.
func (p *pool) bytes() int64 { return p.sum(func(l *loop) *atomic.Int64 { return &l.sBytes }) }

// pings is the number of pings answered.
func (p *pool) pings() int64 { return p.sum(func(l *loop) *atomic.Int64 { return &l.sPings }) }

// lastData is when the last data frame arrived (unix nanos).
func (p *pool) lastData() int64 {
	var t int64
	for _, l := range p.loops {
		t = max(t, l.sLastData.Load())
	}
	return t
}

// key returns the Sec-WebSocket-Key of the connection on fd: derived from
// the pool's seed, so it need not be stored to check the answer.
func (p *pool) key(fd int32) string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], p.seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(fd)*0x9E3779B97F4A7C15)
	return base64.StdEncoding.EncodeToString(b[:])
}

// failures counts connection failures (during the handshake) and closes
// (after it) by reason.
type failures struct {
	mu       sync.Mutex
	byReason map[string]int
	n        int
}

func (f *failures) add(reason string) {
	f.mu.Lock()
	f.byReason[reason]++
	f.n++
	f.mu.Unlock()
}

func (f *failures) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// summary lists the five most frequent reasons.
func (f *failures) summary() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	type rc struct {
		reason string
		n      int
	}
	var all []rc
	for r, n := range f.byReason {
		all = append(all, rc{r, n})
	}
	slices.SortFunc(all, func(a, b rc) int { return b.n - a.n })
	var s []string
	for i, x := range all {
		if i == 5 {
			s = append(s, fmt.Sprintf("(%d more reasons)", len(all)-5))
			break
		}
		s = append(s, fmt.Sprintf("%d× %s", x.n, x.reason))
	}
	return strings.Join(s, "; ")
}

// arrivals records, for message number k of every connection, how many
// connections have received it and when the first and the last did.
type arrivals struct {
	expect atomic.Int64 // connections that will receive each message
	slots  []arrivalSlot
	done   chan int // k, once all expected connections have message k
}

type arrivalSlot struct {
	n, first, last atomic.Int64
}

func newArrivals(messages int) *arrivals {
	return &arrivals{slots: make([]arrivalSlot, messages+1), done: make(chan int, messages+1)}
}

func (a *arrivals) arrive(k uint32, now int64) {
	if int(k) >= len(a.slots) {
		return
	}
	s := &a.slots[k]
	n := s.n.Add(1)
	if n == 1 {
		s.first.Store(now)
	}
	if n == a.expect.Load() {
		s.last.Store(now)
		select {
		case a.done <- int(k):
		default:
		}
	}
}

// loop is one event loop and the connections it owns.
type loop struct {
	p       *pool
	id      int
	epfd    int
	remote  *unix.SockaddrInet4
	locals  []*unix.SockaddrInet4
	conns   []*wconn // by file descriptor
	events  []unix.EpollEvent
	buf     []byte
	target  int // connections to open
	capture int // of which the first capture capture their messages
	opened  int
	pending int // handshakes in progress
	limit   int // most handshakes in progress at once
	alive   int64

	connected     chan struct{} // closed when every connection is subscribed or failed
	connectedDone bool

	// Counters, owned by the loop and published to the atomics below once
	// per epoll_wait, for the main goroutine to read.
	frames, bytes, pings, lastData             int64
	sFrames, sBytes, sPings, sLastData, sAlive atomic.Int64

	scratch          [131]byte // a pong: header, mask and up to 125 bytes
	subscribeScratch []byte
}

func (l *loop) run() {
	defer l.p.wg.Done()
	defer l.closeAll()
	for !l.p.quit.Load() {
		l.startConnects(time.Now().UnixNano())
		n, err := unix.EpollWait(l.epfd, l.events, int(pollInterval/time.Millisecond))
		if err != nil && err != unix.EINTR {
			l.p.fails.add("epoll_wait: " + err.Error())
			return
		}
		now := time.Now().UnixNano()
		for i := range n {
			ev := &l.events[i]
			if int(ev.Fd) < len(l.conns) {
				if c := l.conns[ev.Fd]; c != nil {
					l.handle(c, ev.Events, now)
				}
			}
		}
		if l.pending > 0 {
			l.expire(now)
		}
		// Pause once every ready connection has been read (a full batch
		// means more are waiting).
		if n > 0 && n < len(l.events) && l.p.cfg.coalesce > 0 && l.pending == 0 {
			time.Sleep(l.p.cfg.coalesce)
		}
		l.sFrames.Store(l.frames)
		l.sBytes.Store(l.bytes)
		l.sPings.Store(l.pings)
		l.sLastData.Store(l.lastData)
		l.sAlive.Store(l.alive)
		if !l.connectedDone && l.opened == l.target && l.pending == 0 {
			l.connectedDone = true
			close(l.connected)
		}
	}
}

// startConnects opens connections while fewer than limit handshakes are in
// progress, so that the gateway's listen backlog is never overrun.
func (l *loop) startConnects(now int64) {
	for l.opened < l.target && l.pending < l.limit {
		l.opened++
		if err := l.dial(now, l.opened <= l.capture); err != nil {
			l.p.fails.add(err.Error())
		}
	}
}

func (l *loop) dial(now int64, capture bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if locals := l.locals; len(locals) > 0 {
		la := locals[l.p.local.Add(1)%uint64(len(locals))]
		// Let connect pick the port: ports are then unique per 4-tuple,
		// not per local address.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, la); err != nil {
			_ = unix.Close(fd)
			return fmt.Errorf("bind %s: %w", net.IP(la.Addr[:]), err)
		}
	}
	if err := unix.Connect(fd, l.remote); err != nil && err != unix.EINPROGRESS {
		_ = unix.Close(fd)
		return fmt.Errorf("connect: %w", err)
	}
	c := &wconn{fd: int32(fd), since: now, capture: capture}
	for fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*wconn, max(1024, len(l.conns)))...)
	}
	l.conns[fd] = c
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)}); err != nil {
		l.conns[fd] = nil
		_ = unix.Close(fd)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	l.pending++
	return nil
}

// handle serves one readiness event.
func (l *loop) handle(c *wconn, events uint32, now int64) {
	if c.state == stConnecting {
		errno, err := unix.GetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && errno != 0 {
			err = syscall.Errno(errno)
		}
		if err != nil {
			l.drop(c, fmt.Errorf("connect: %w", err))
			return
		}
		if events&unix.EPOLLOUT == 0 {
			return
		}
		req := "GET " + l.p.cfg.target + " HTTP/1.1\r\nHost: " + l.p.cfg.host +
			"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + l.p.key(c.fd) +
			"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: tablecast-wsload\r\n\r\n"
		if err := writeAll(c.fd, []byte(req)); err != nil {
			l.drop(c, fmt.Errorf("send upgrade request: %w", err))
			return
		}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &unix.EpollEvent{Events: unix.EPOLLIN, Fd: c.fd}); err != nil {
			l.drop(c, fmt.Errorf("epoll_ctl: %w", err))
			return
		}
		c.state = stUpgrading
		return
	}
	for {
		n, err := unix.Read(int(c.fd), l.buf)
		if n > 0 {
			l.bytes += int64(n)
			if err := l.parse(c, l.buf[:n], now); err != nil {
				l.drop(c, err)
				return
			}
			if n < len(l.buf) {
				return
			}
			continue
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err == nil:
			l.drop(c, errors.New("connection closed by the gateway without a close frame"))
		default:
			l.drop(c, fmt.Errorf("read: %w", err))
		}
		return
	}
}

// expire fails the handshakes that have taken longer than the timeout.
func (l *loop) expire(now int64) {
	limit := now - int64(l.p.cfg.timeout)
	for _, c := range l.conns {
		if c != nil && c.state != stReady && c.since < limit {
			l.drop(c, fmt.Errorf("no subscription after %s (stuck %s)", l.p.cfg.timeout, stateNames[c.state]))
		}
	}
}

// drop closes c, counting why.
func (l *loop) drop(c *wconn, err error) {
	if c.state == stReady {
		l.alive--
		l.p.fails.add("closed after subscribing: " + err.Error())
	} else {
		l.pending--
		l.p.fails.add(err.Error())
	}
	l.conns[c.fd] = nil
	_ = unix.Close(int(c.fd))
}

// closeAll says goodbye to every connection (close frame 1000) and closes it.
func (l *loop) closeAll() {
	for _, c := range l.conns {
		if c == nil {
			continue
		}
		if c.state == stReady {
			_ = writeAll(c.fd, maskedFrame(l.scratch[:0], opClose, []byte{0x03, 0xE8}))
		}
		_ = unix.Close(int(c.fd))
	}
	l.conns = nil
	_ = unix.Close(l.epfd)
	l.sAlive.Store(0)
}

// parse walks the bytes just read from c.
func (l *loop) parse(c *wconn, b []byte, now int64) error {
	if c.state == stUpgrading {
		rest, done, err := l.upgraded(c, b)
		if err != nil || !done {
			return err
		}
		b = rest
	}
	for len(b) > 0 {
		if c.remain > 0 {
			n := len(b)
			if uint64(n) > c.remain {
				n = int(c.remain)
			}
			if err := l.payload(c, b[:n]); err != nil {
				return err
			}
			c.remain -= uint64(n)
			b = b[n:]
			if c.remain == 0 {
				if err := l.frameEnd(c, now); err != nil {
					return err
				}
			}
			continue
		}
		var h []byte
		if c.hdrN == 0 && len(b) >= 2 && len(b) >= headerLen(b[0], b[1]) {
			n := headerLen(b[0], b[1])
			h, b = b[:n], b[n:]
		} else {
			// A header split across reads: gather it.
			for len(b) > 0 && (c.hdrN < 2 || int(c.hdrN) < headerLen(c.hdr[0], c.hdr[1])) {
				c.hdr[c.hdrN] = b[0]
				c.hdrN++
				b = b[1:]
			}
			if c.hdrN < 2 || int(c.hdrN) < headerLen(c.hdr[0], c.hdr[1]) {
				return nil
			}
			h = c.hdr[:c.hdrN]
			c.hdrN = 0
		}
		if err := l.header(c, h); err != nil {
			return err
		}
		if c.remain == 0 {
			if err := l.frameEnd(c, now); err != nil {
				return err
			}
		}
	}
	return nil
}

// headerLen is the length of a frame header that starts with b0, b1.
func headerLen(b0, b1 byte) int {
	n := 2
	switch b1 & 0x7F {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// header starts a frame.
func (l *loop) header(c *wconn, h []byte) error {
	b0, b1 := h[0], h[1]
	if b0&0x70 != 0 {
		return fmt.Errorf("frame with reserved bits %#x set, but no extension was negotiated", b0&0x70)
	}
	if b1&0x80 != 0 {
		return errors.New("the gateway sent a masked frame")
	}
	op := b0 & 0x0F
	var n uint64
	switch l7 := b1 & 0x7F; l7 {
	case 126:
		n = uint64(binary.BigEndian.Uint16(h[2:]))
	case 127:
		n = binary.BigEndian.Uint64(h[2:])
		if n>>63 != 0 {
			return fmt.Errorf("frame length %d has its top bit set", n)
		}
	default:
		n = uint64(l7)
	}
	switch {
	case op >= opClose && op <= opPong:
		if b0&0x80 == 0 || n > 125 {
			return fmt.Errorf("control frame %#x fragmented or longer than 125 bytes (%d)", op, n)
		}
		c.ctl = c.ctl[:0]
	case op > opBinary:
		return fmt.Errorf("frame with unknown opcode %#x", op)
	}
	c.op = op | b0&0x80
	c.remain = n
	return nil
}

// payload takes part of a frame's payload: kept for control frames, for
// messages before "subscribed" and when capturing; skipped otherwise.
func (l *loop) payload(c *wconn, p []byte) error {
	if c.op&0x0F >= opClose {
		c.ctl = append(c.ctl, p...)
		return nil
	}
	if c.state != stReady || c.capture {
		if len(c.buf)+len(p) > maxCaptureBytes {
			return fmt.Errorf("message longer than %d bytes", maxCaptureBytes)
		}
		c.buf = append(c.buf, p...)
	}
	return nil
}

// frameEnd handles a complete frame.
func (l *loop) frameEnd(c *wconn, now int64) error {
	switch c.op & 0x0F {
	case opPing:
		l.pings++
		if err := writeAll(c.fd, maskedFrame(l.scratch[:0], opPong, c.ctl)); err != nil {
			return fmt.Errorf("send pong: %w", err)
		}
		return nil
	case opPong:
		return nil
	case opClose:
		return closeError(c.ctl)
	}
	if c.state == stReady {
		l.frames++
		l.lastData = now
	}
	if c.op&0x80 == 0 {
		return nil // more fragments to come
	}
	return l.message(c, now)
}

// message handles a complete data message.
func (l *loop) message(c *wconn, now int64) error {
	switch c.state {
	case stSubscribing:
		msg := c.buf
		c.buf = nil
		switch {
		case bytes.Contains(msg, []byte(`"type":"subscribed"`)):
			c.state = stReady
			l.pending--
			l.alive++
		case bytes.Contains(msg, []byte(`"type":"error"`)):
			return fmt.Errorf("subscribe refused: %s", msg)
		}
	case stReady:
		c.got++
		if a := l.p.cfg.arrivals; a != nil {
			a.arrive(c.got, now)
		}
		if c.capture {
			if f := l.p.cfg.onMessage; f != nil {
				f(c.buf, now)
			}
			c.buf = c.buf[:0]
		}
	}
	return nil
}

// upgraded reads the upgrade response. Once it is complete and right, it
// sends the subscribe message and returns the bytes after the response.
func (l *loop) upgraded(c *wconn, b []byte) (rest []byte, done bool, err error) {
	start := len(c.buf)
	c.buf = append(c.buf, b...)
	i := bytes.Index(c.buf[max(0, start-3):], []byte("\r\n\r\n"))
	if i < 0 {
		if len(c.buf) > 16<<10 {
			return nil, false, errors.New("upgrade response longer than 16 KiB")
		}
		return nil, false, nil
	}
	end := max(0, start-3) + i + 4
	if err := checkUpgrade(c.buf[:end], l.p.key(c.fd)); err != nil {
		return nil, false, err
	}
	rest = b[end-start:]
	c.buf = nil
	if sub := l.p.cfg.subscribe; sub != nil {
		l.subscribeScratch = maskedFrame(l.subscribeScratch[:0], opText, sub)
		if err := writeAll(c.fd, l.subscribeScratch); err != nil {
			return nil, false, fmt.Errorf("send subscribe: %w", err)
		}
	}
	c.state = stSubscribing
	return rest, true, nil
}

// checkUpgrade checks an upgrade response head (through the blank line).
func checkUpgrade(head []byte, key string) error {
	lines := strings.Split(strings.TrimSuffix(string(head), "\r\n\r\n"), "\r\n")
	if !strings.HasPrefix(lines[0], "HTTP/1.1 101 ") && lines[0] != "HTTP/1.1 101" {
		return fmt.Errorf("upgrade refused: %q", lines[0])
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	want := base64.StdEncoding.EncodeToString(sum[:])
	var accept string
	for _, line := range lines[1:] {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch {
		case strings.EqualFold(name, "Sec-WebSocket-Accept"):
			accept = value
		case strings.EqualFold(name, "Sec-WebSocket-Extensions") && value != "":
			return fmt.Errorf("upgrade response negotiates extensions %q that were not asked for", value)
		}
	}
	if accept != want {
		return fmt.Errorf("upgrade response has Sec-WebSocket-Accept %q, want %q", accept, want)
	}
	return nil
}

// closeError describes a close frame's payload.
func closeError(p []byte) error {
	if len(p) < 2 {
		return errors.New("closed by the gateway (no code)")
	}
	return fmt.Errorf("closed by the gateway with %d %q", binary.BigEndian.Uint16(p), p[2:])
}

// maskedFrame appends a final client frame (masked, as RFC 6455 requires).
func maskedFrame(dst []byte, op byte, payload []byte) []byte {
	dst = append(dst, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	dst = append(dst, key[:]...)
	for i, b := range payload {
		dst = append(dst, b^key[i&3])
	}
	return dst
}

// writeAll writes b to a non-blocking socket. The client sends only small
// messages (upgrade, subscribe, pong, close) into an empty send buffer, so
// a socket that takes less than all of it is an error.
func writeAll(fd int32, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(int(fd), b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("short write")
		}
		b = b[n:]
	}
	return nil
}
