package wsgate

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// conn is one WebSocket connection. It holds no goroutine while idle: a
// goroutine reads only while the poller reports input (readAvailable), and
// one writes only while frames are queued (flush).
type conn struct {
	g   *Gateway
	nc  net.Conn
	raw syscall.RawConn // nc's descriptor for non-blocking writes; nil if none
	fd  int             // for the poller; -1 when read by a goroutine of its own

	id      *Identity   // who the client is and what it may do
	counted bool        // id counts against its connection limit
	expiry  *time.Timer // closes the connection when the token expires

	// a token bucket of the messages the client may send (reader only)
	tokens   float64
	tokensAt time.Time

	lastRead atomic.Int64 // unix nanos of the last frame read (pings count)
	reading  atomic.Bool  // a goroutine is in readAvailable

	// mu guards the send queue and the closing state.
	mu         sync.Mutex
	queue      [][]byte // frames waiting to be written
	spare      [][]byte // the other half of the double buffer, empty
	queued     int      // bytes in queue
	inflight   int      // bytes being written by flush
	flushing   bool     // a flush goroutine runs
	closing    bool     // no more frames are queued
	closeFrame []byte   // written once the in-flight batch is done
	drained    chan struct{}

	// subs are the connection's subscriptions (a few, typically: a slice
	// costs less than a map); nil once closing.
	subsMu     sync.Mutex
	subs       []*sub
	subsClosed bool

	// assembly of a fragmented message (reader goroutine only)
	frag   []byte
	inFrag bool
}

// upgradeRequest is what the handshake learned of the request.
type upgradeRequest struct {
	path, rawQuery        string
	host, origin          string
	authorization, cookie string
	protocols             string // Sec-WebSocket-Protocol values, joined with ", "
}

// handshake tells a WebSocket request from another HTTP request by its
// first bytes, and upgrades it without net/http (gobwas/ws's zero-copy
// upgrade: no per-connection bufio survives it).
func (g *Gateway) handshake(nc net.Conn, httpLn *chanListener) {
	_ = nc.SetDeadline(deadline(g.cfg.ReadTimeout))
	var head [8]byte
	n, err := io.ReadFull(nc, head[:])
	if err != nil {
		if n > 0 {
			httpLn.push(&prefixConn{Conn: nc, prefix: bytes.Clone(head[:n])})
			return
		}
		_ = nc.Close()
		return
	}
	if !bytes.HasPrefix(head[:], []byte("GET /ws")) || (head[7] != ' ' && head[7] != '/' && head[7] != '?') {
		_ = nc.SetDeadline(time.Time{})
		httpLn.push(&prefixConn{Conn: nc, prefix: bytes.Clone(head[:n])})
		return
	}
	req := &upgradeRequest{}
	pc := &prefixConn{Conn: nc, prefix: head[:]}
	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			p, q, _ := strings.Cut(string(uri), "?")
			req.path, req.rawQuery = p, q
			if p != "/ws" && !strings.HasPrefix(p, URLSubscriptionPrefix) {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound))
			}
			return g.notReadyRejection()
		},
		OnHost: func(host []byte) error { req.host = string(host); return nil },
		OnHeader: func(key, value []byte) error {
			switch {
			case bytes.EqualFold(key, []byte("Origin")):
				req.origin = string(value)
			case bytes.EqualFold(key, []byte("Authorization")):
				req.authorization = string(value)
			case bytes.EqualFold(key, []byte("Cookie")):
				req.cookie = joinHeader(req.cookie, "; ", string(value))
			}
			return nil
		},
		// The upgrader keeps Sec-WebSocket-Protocol to itself: read the
		// values here (a token may travel in one) and answer protocol v1's
		// own name, never a token.
		ProtocolCustom: func(v []byte) (string, bool) {
			req.protocols = joinHeader(req.protocols, ", ", string(v))
			for p := range strings.SplitSeq(string(v), ",") {
				if answerProtocol([]byte(strings.TrimSpace(p))) {
					return Subprotocol, true
				}
			}
			return "", true
		},
	}
	if _, err := u.Upgrade(pc); err != nil {
		g.log.Debug("websocket upgrade refused", "remote", nc.RemoteAddr().String(), "err", err)
		_ = nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	g.start(nc, req)
}

// ServeHTTP upgrades a WebSocket request that came through net/http (a
// kept-alive connection, or TLS).
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req := &upgradeRequest{path: r.URL.EscapedPath(), rawQuery: r.URL.RawQuery, host: r.Host, origin: r.Header.Get("Origin"),
		authorization: r.Header.Get("Authorization"), cookie: strings.Join(r.Header.Values("Cookie"), "; "),
		protocols: strings.Join(r.Header.Values("Sec-WebSocket-Protocol"), ", ")}
	if g.refuseNotReady(w) {
		return
	}
	nc, rw, _, err := ws.HTTPUpgrader{Protocol: func(p string) bool { return answerProtocol([]byte(p)) }}.Upgrade(r, w)
	if err != nil {
		return // UpgradeHTTP answered the request
	}
	if rw != nil && rw.Reader.Buffered() > 0 {
		// RFC 6455 clients wait for the 101 before sending; one that did
		// not is broken.
		_ = nc.Close()
		return
	}
	g.start(nc, req)
}

// start runs an upgraded connection: origin check, URL subscription, then
// registration with the poller.
func (g *Gateway) start(nc net.Conn, req *upgradeRequest) {
	c := &conn{g: g, nc: nc, fd: -1}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	c.lastRead.Store(time.Now().UnixNano())
	if g.closing.Load() {
		c.closeWith(CloseGoingAway, CloseGoingAway.Reason())
		return
	}
	g.addConn(c)
	if !g.originAllowed(req.origin, req.host) {
		c.closeWith(CloseForbiddenOrigin, "origin "+quoteShort(req.origin)+" is not allowed")
		return
	}
	q, err := url.ParseQuery(req.rawQuery)
	if err != nil {
		c.closeWith(CloseBadRequest, "malformed query string")
		return
	}
	if !c.authenticate(q, req) {
		return
	}
	if strings.HasPrefix(req.path, URLSubscriptionPrefix) {
		us, perr := ParseURLSubscription(req.path, q)
		if perr != nil {
			c.closeWith(CloseBadRequest, perr.Message)
			return
		}
		if perr := c.subscribeURL(&us); perr != nil {
			c.closeWith(CloseBadRequest, perr.Message)
			return
		}
	}
	if err := g.poll.add(c); err != nil {
		// No poller here (or it failed): a goroutine reads instead.
		go c.readLoop()
	}
}

// answerProtocol picks the subprotocol to answer: only protocol v1's own,
// never a "token.…" value, so a token does not travel back.
func answerProtocol(p []byte) bool { return string(p) == Subprotocol }

func joinHeader(a, sep, b string) string {
	if a == "" {
		return b
	}
	return a + sep + b
}

// authenticate establishes who the client is; a refused client is closed
// with 4001 and the reason. A token that expires closes the connection
// with 4001 "token expired" at that moment.
func (c *conn) authenticate(q url.Values, req *upgradeRequest) bool {
	if !c.g.cfg.Auth.Enabled() {
		c.id = AnonymousIdentity()
		return true
	}
	token, _ := TokenFrom(q, req.authorization, req.cookie, req.protocols)
	id, err := c.g.cfg.Auth.Authenticate(token, time.Now())
	if err != nil {
		reason := CloseUnauthorized.Reason()
		var ae *AuthError
		if errors.As(err, &ae) {
			reason = ae.Reason
		}
		c.g.log.Info("websocket client refused", "remote", c.nc.RemoteAddr().String(), "reason", reason, "err", err)
		c.closeWith(CloseUnauthorized, reason)
		return false
	}
	if !c.g.admitIdentity(id) {
		c.closeWith(CloseTooManyConnections, "too many connections for "+quoteShort(id.Subject))
		return false
	}
	c.mu.Lock()
	c.id, c.counted = id, true
	c.mu.Unlock()
	if !id.Expires.IsZero() {
		c.mu.Lock()
		if !c.closing {
			c.expiry = time.AfterFunc(time.Until(id.Expires), func() {
				c.closeWith(CloseUnauthorized, CloseReasonTokenExpired)
			})
		}
		c.mu.Unlock()
	}
	return true
}

// originAllowed applies AllowedOrigins to a browser's Origin header.
func (g *Gateway) originAllowed(origin, host string) bool {
	if origin == "" {
		return true // not a browser: nothing to check
	}
	for _, o := range g.cfg.AllowedOrigins {
		if o == "*" || strings.EqualFold(o, origin) {
			return true
		}
	}
	if len(g.cfg.AllowedOrigins) > 0 {
		return false
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, host)
}

// dispatchRead is the poller's callback: the connection has input. One
// goroutine at a time reads it, for as long as complete messages are
// buffered, then the poller is re-armed.
func (g *Gateway) dispatchRead(c *conn) {
	if !c.reading.CompareAndSwap(false, true) {
		return
	}
	// No bound here beyond one goroutine per connection with input: the
	// poller's loop must never wait, or clients that send half a frame
	// would hold up everyone else until their read timeout.
	go func() {
		br := readerPool.Get().(*bufio.Reader)
		br.Reset(c.nc)
		ok := c.readAvailable(br)
		br.Reset(nil)
		readerPool.Put(br)
		c.reading.Store(false)
		if ok {
			if err := g.poll.rearm(c); err != nil && !c.isClosing() {
				c.closeWith(CloseGoingAway, "internal poller error")
			}
		}
	}()
}

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// readLoop reads the connection with a goroutine of its own, where no
// poller is available.
func (c *conn) readLoop() {
	br := bufio.NewReaderSize(c.nc, 4096)
	for {
		_ = c.nc.SetReadDeadline(time.Time{})
		if _, err := br.Peek(1); err != nil {
			c.readFailed(err)
			return
		}
		if !c.readAvailable(br) {
			return
		}
	}
}

// readAvailable reads and handles messages while input is buffered. Each
// message must arrive whole within ReadTimeout of its first byte, so that a
// client sending half a frame cannot hold the goroutine. It returns false
// once the connection is closing.
func (c *conn) readAvailable(br *bufio.Reader) bool {
	for {
		_ = c.nc.SetReadDeadline(deadline(c.g.cfg.ReadTimeout))
		msg, err := c.readMessage(br)
		if err != nil {
			c.readFailed(err)
			return false
		}
		if msg != nil {
			c.handleMessage(msg)
		}
		if c.isClosing() {
			return false
		}
		if br.Buffered() == 0 {
			return true
		}
	}
}

// closeError is a reason to close the connection found while reading.
type closeError struct {
	code   CloseCode
	reason string
}

func (e *closeError) Error() string { return e.reason }

// readFailed closes the connection after a failed read.
func (c *conn) readFailed(err error) {
	var ce *closeError
	switch {
	case errors.As(err, &ce):
		c.closeWith(ce.code, ce.reason)
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.closeWith(CloseProtocolError, "incomplete frame: nothing more arrived within "+c.g.cfg.ReadTimeout.String())
	default: // EOF, reset: the peer is gone
		c.abort()
	}
}

// readMessage reads frames until a whole text message is in, answering
// control frames on the way. It returns a nil message when only control
// frames were read.
func (c *conn) readMessage(br *bufio.Reader) ([]byte, error) {
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			if errors.Is(err, ws.ErrHeaderLengthUnexpected) || errors.Is(err, ws.ErrHeaderLengthMSB) {
				return nil, &closeError{CloseProtocolError, "malformed frame header"}
			}
			return nil, err
		}
		c.lastRead.Store(time.Now().UnixNano())
		if h.Rsv != 0 {
			return nil, &closeError{CloseProtocolError, "reserved bits set (no extension was negotiated)"}
		}
		if !h.Masked {
			return nil, &closeError{CloseProtocolError, "client frames must be masked"}
		}
		max := int64(c.g.cfg.MaxMessageBytes)
		if h.OpCode.IsControl() {
			if h.Length > 125 || !h.Fin {
				return nil, &closeError{CloseProtocolError, "malformed control frame"}
			}
			payload := make([]byte, h.Length)
			if _, err := io.ReadFull(br, payload); err != nil {
				return nil, err
			}
			ws.Cipher(payload, h.Mask, 0)
			switch h.OpCode {
			case ws.OpClose:
				code, reason := closeEcho(payload)
				c.closeWith(code, reason)
				return nil, nil
			case ws.OpPing:
				c.enqueue(finishFrame(append(newFrame(len(payload)), payload...), opPong), false)
			}
			if !c.inFrag {
				return nil, nil
			}
			continue
		}
		switch h.OpCode {
		case ws.OpBinary:
			return nil, &closeError{CloseUnsupportedData, CloseUnsupportedData.Reason() + ": send JSON text"}
		case ws.OpText:
			if c.inFrag {
				return nil, &closeError{CloseProtocolError, "new message inside a fragmented one"}
			}
		case ws.OpContinuation:
			if !c.inFrag {
				return nil, &closeError{CloseProtocolError, "continuation frame without a message to continue"}
			}
		default:
			return nil, &closeError{CloseProtocolError, "unknown opcode"}
		}
		if int64(len(c.frag))+h.Length > max {
			return nil, &closeError{CloseMessageTooBig, "message larger than " + formatSize(max)}
		}
		start := len(c.frag)
		c.frag = append(c.frag, make([]byte, h.Length)...)
		if _, err := io.ReadFull(br, c.frag[start:]); err != nil {
			return nil, err
		}
		ws.Cipher(c.frag[start:], h.Mask, 0)
		if !h.Fin {
			c.inFrag = true
			continue
		}
		msg := c.frag
		if msg == nil {
			msg = []byte{} // an empty message is still a message
		}
		c.frag, c.inFrag = nil, false
		return msg, nil
	}
}

// closeEcho returns the code and reason to answer a client's close with.
func closeEcho(payload []byte) (CloseCode, string) {
	if len(payload) < 2 {
		return CloseNormal, ""
	}
	code := CloseCode(binary.BigEndian.Uint16(payload))
	if code < 1000 || code == 1004 || code == 1005 || code == 1006 || code == 1015 || code >= 5000 || (code > 1015 && code < 3000) {
		return CloseProtocolError, "invalid close code"
	}
	return code, "closed by the client"
}

func formatSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// enqueue queues a frame for writing. A frame that would take the queue past
// SendQueueBytes closes the connection with 4008 instead, unless wait is
// set: then it waits for room (resuming subscriptions pace themselves this
// way). It reports whether the frame was queued.
func (c *conn) enqueue(frame []byte, wait bool) bool {
	limit := c.g.cfg.SendQueueBytes
	c.mu.Lock()
	for {
		if c.closing {
			c.mu.Unlock()
			return false
		}
		if c.queued+c.inflight+len(frame) <= limit || c.queued+c.inflight == 0 {
			break
		}
		if !wait {
			c.mu.Unlock()
			c.g.met.slowCloses.Inc()
			c.closeWith(CloseSlowConsumer, "slow consumer: send queue over "+formatSize(int64(limit))+"; resume from your last seq")
			return false
		}
		if c.drained == nil {
			c.drained = make(chan struct{})
		}
		ch := c.drained
		c.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(c.g.cfg.WriteTimeout):
			c.g.met.slowCloses.Inc()
			c.closeWith(CloseSlowConsumer, "slow consumer: no room in the send queue for "+c.g.cfg.WriteTimeout.String())
			return false
		}
		c.mu.Lock()
	}
	c.queue = append(c.queue, frame)
	c.queued += len(frame)
	start := !c.flushing
	c.flushing = true
	c.mu.Unlock()
	if start {
		c.schedule()
	}
	return true
}

// maxSpareFrames bounds the spare queue a connection keeps between bursts:
// enough to batch a busy client's frames without allocating, small enough
// for idle connections to stay cheap.
const maxSpareFrames = 16

// Writing. A connection with frames queued is handed to the gateway's few
// writer goroutines (writeLoop), which write each one's whole queue with a
// non-blocking writev: a goroutine per connection and burst would cost more
// than the write itself when one event goes to thousands of clients. A
// client whose socket buffer is full (the write would block) gets a
// goroutine of its own (flush) until its queue is empty again, so a slow
// client never holds a writer.

// schedule arranges for c's queue to be written.
func (c *conn) schedule() {
	if c.raw != nil && c.g.ctx.Err() == nil {
		select {
		case c.g.writeq <- c:
			return
		default: // writers swamped: do not wait, write on a goroutine
		}
	}
	go c.flush()
}

// writeLoop is one of the gateway's writer goroutines.
func (g *Gateway) writeLoop() {
	for {
		select {
		case c := <-g.writeq:
			c.writeReady()
		case <-g.ctx.Done():
			for { // hand what is left to goroutines of their own
				select {
				case c := <-g.writeq:
					go c.flush()
				default:
					return
				}
			}
		}
	}
}

// take moves the queue into a batch being written; ok is false when there
// was nothing to write, and then the flushing state has been settled: the
// close frame (if closing) is returned to be written last.
func (c *conn) take() (bufs [][]byte, n int, ok bool, closing bool, cf []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	bufs = c.queue
	c.queue, c.spare = c.spare, nil // double-buffered: no allocation per burst
	n = c.queued
	c.queued = 0
	c.inflight = n
	if len(bufs) > 0 {
		return bufs, n, true, false, nil
	}
	c.signalDrained()
	if c.closing {
		cf = c.closeFrame
		c.closeFrame = nil
		return nil, 0, false, true, cf
	}
	c.flushing = false
	return nil, 0, false, false, nil
}

// written records a batch as written (err nil) or the connection as failed.
func (c *conn) written(bufs [][]byte, n int, err error) bool {
	c.g.met.framesSent.Add(float64(len(bufs)))
	c.g.met.bytesSent.Add(float64(n))
	c.mu.Lock()
	c.inflight = 0
	if cap(bufs) <= maxSpareFrames && err == nil {
		clear(bufs[:cap(bufs)])
		c.spare = bufs[:0]
	}
	c.signalDrained()
	if err != nil {
		c.closing = true
		c.queue, c.queued = nil, 0
		c.mu.Unlock()
		go c.release()
		_ = c.nc.Close()
		return false
	}
	c.mu.Unlock()
	return true
}

func (c *conn) signalDrained() {
	if c.drained != nil {
		close(c.drained)
		c.drained = nil
	}
}

// writeReady writes c's queue without blocking, a few batches at most (a
// busy connection goes to the back of the line after them).
func (c *conn) writeReady() {
	for range 4 {
		bufs, n, ok, closing, cf := c.take()
		if !ok {
			if closing {
				go c.finish(cf)
			}
			return
		}
		rest, err := c.writeNonBlocking(bufs)
		if err == nil && len(rest) > 0 {
			// The socket is full: finish this batch, and the queue, on a
			// goroutine that may wait.
			go c.flushRest(bufs, rest, n)
			return
		}
		if !c.written(bufs, n, err) {
			return
		}
	}
	c.schedule()
}

// writeNonBlocking writes bufs with writev until done or the socket is full,
// returning what is left to write (bufs' elements are trimmed in place).
func (c *conn) writeNonBlocking(bufs [][]byte) (net.Buffers, error) {
	var werr error
	rest := net.Buffers(bufs)
	err := c.raw.Write(func(fd uintptr) bool {
		for len(rest) > 0 {
			iov := rest
			if len(iov) > 1024 { // IOV_MAX
				iov = iov[:1024]
			}
			k, err := writev(int(fd), iov)
			if k > 0 {
				consume(&rest, k)
			}
			if err != nil {
				if !errors.Is(err, errWouldBlock) {
					werr = err
				}
				break
			}
		}
		return true // never wait here; see writeReady
	})
	if err == nil {
		err = werr
	}
	return rest, err
}

// consume drops the first n bytes of v.
func consume(v *net.Buffers, n int) {
	for len(*v) > 0 && n > 0 {
		if l := len((*v)[0]); l > n {
			(*v)[0] = (*v)[0][n:]
			return
		} else {
			n -= l
		}
		*v = (*v)[1:]
	}
	for len(*v) > 0 && len((*v)[0]) == 0 {
		*v = (*v)[1:]
	}
}

// flushRest finishes a batch that filled the socket, then goes on as flush.
func (c *conn) flushRest(bufs [][]byte, rest net.Buffers, n int) {
	_ = c.nc.SetWriteDeadline(deadline(c.g.cfg.WriteTimeout))
	_, err := rest.WriteTo(c.nc)
	if c.written(bufs, n, err) {
		c.flush()
	}
}

// flush writes queued frames, batched into one writev, until the queue is
// empty, waiting on a full socket up to WriteTimeout; then the goroutine
// ends. Once closing, it writes the close frame and closes the socket.
func (c *conn) flush() {
	for {
		bufs, n, ok, closing, cf := c.take()
		if !ok {
			if closing {
				c.finish(cf)
			}
			return
		}
		_ = c.nc.SetWriteDeadline(deadline(c.g.cfg.WriteTimeout))
		nb := net.Buffers(bufs)
		_, err := nb.WriteTo(c.nc)
		if !c.written(bufs, n, err) {
			return
		}
	}
}

// finish writes the close frame (if any) and closes the socket.
func (c *conn) finish(cf []byte) {
	if cf != nil {
		_ = c.nc.SetWriteDeadline(deadline(time.Second))
		_, _ = c.nc.Write(cf)
	}
	_ = c.nc.Close()
}

// closeWith closes the connection with a close frame: frames still queued
// are dropped, one being written is finished first.
func (c *conn) closeWith(code CloseCode, reason string) {
	if reason == "" {
		reason = code.Reason()
	}
	c.shut(closeFrame(code, reason))
}

// abort closes the connection of a peer that is gone, without a close
// frame.
func (c *conn) abort() { c.shut(nil) }

func (c *conn) shut(cf []byte) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	c.queue, c.queued = nil, 0
	c.closeFrame = cf
	start := !c.flushing
	c.flushing = true
	if c.drained != nil {
		close(c.drained)
		c.drained = nil
	}
	c.mu.Unlock()
	// Detaching takes feed locks, which the caller may hold (a feed
	// overflowing this connection's queue): do it on a goroutine of its own.
	go c.release()
	if start {
		c.schedule()
	}
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// release detaches a closing connection from the poller, its feeds and the
// gateway.
func (c *conn) release() {
	c.g.poll.remove(c)
	c.mu.Lock()
	if c.expiry != nil {
		c.expiry.Stop()
	}
	counted := c.counted
	c.counted = false
	c.mu.Unlock()
	if counted {
		c.g.leaveIdentity(c.id)
	}
	c.subsMu.Lock()
	subs := c.subs
	c.subs, c.subsClosed = nil, true // addSub refuses from now on
	c.subsMu.Unlock()
	for _, s := range subs {
		c.g.detach(s)
	}
	c.g.removeConn(c)
}

// send queues a protocol frame built by appendPayload (an answer, an
// error).
func (c *conn) send(payload []byte) {
	c.enqueue(textFrame(payload), false)
}

// sendError answers with an error frame.
func (c *conn) sendError(id string, code ErrorCode, msg string) {
	c.g.met.errorFrames.WithLabelValues(string(code)).Inc()
	buf := newFrame(64 + len(msg))
	buf = AppendError(buf, id, code, msg)
	c.enqueue(finishFrame(buf, opText), false)
}
