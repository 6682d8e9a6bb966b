package wsgate

import (
	"bufio"
	"bytes"
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

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/connlimit"
	"github.com/tablecast/tablecast/schema"
)

// conn is one WebSocket connection. It holds no goroutine while idle: a
// goroutine reads only while the poller reports input (readAvailable), and
// one writes only while frames are queued (flush).
type conn struct {
	g   *Gateway
	nc  net.Conn
	raw syscall.RawConn // nc's descriptor for non-blocking writes; nil if none
	fd  int             // for the poller; -1 when read by a goroutine of its own

	nextID atomic.Uint64 // the last id assigned to a subscribe without one

	// authMu serializes what depends on the identity: the handling of
	// each client message, and a change of identity (a refresh, a
	// reloaded API key). It guards id. Lock order: authMu, then subsMu,
	// mu, a feed's mu.
	authMu  sync.Mutex
	id      *auth.Identity // who the client is and what it may do
	counted string         // the identity key counted against its limit, "" for none (mu)
	apiKey  atomic.Bool    // authenticated with an API key: re-checked when the keys change
	expiry  *time.Timer    // closes the connection when the credential expires (mu)

	// endpointID is the WebSocket endpoint a /ws/endpoints/<name>
	// connection follows ("" for none; the gateway's connMu), and
	// endpointSubs its subscriptions by table (conn.syncEndpoint; authMu).
	endpointID   string
	endpointSubs map[string]*sub

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
	bigQueued  int      // of queued, a frame larger than SendQueueBytes (see enqueue)
	bigFlight  int      // of inflight, likewise
	pongs      int      // pongs in queue (see enqueuePong)
	pongAt     int      // 1 + the index in queue of the last of them; 0 for none
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
	frag      []byte
	fragValid int // leading bytes of frag checked to be UTF-8
	inFrag    bool

	// pending holds bytes read with the upgrade request, to be read before
	// the socket (reader goroutine only).
	pending []byte
	// slot counts the connection against its address's limit of
	// unauthenticated connections until it is authenticated.
	slot *connlimit.Slot
}

// upgradeRequest is what the handshake learned of the request.
type upgradeRequest struct {
	path, rawQuery        string
	host, origin          string
	authorization, cookie string
	protocols             string // Sec-WebSocket-Protocol values, joined with ", "
	key                   string // Sec-WebSocket-Key
}

// handshake reads the first request of a connection (bounded: upgrade.go),
// upgrades a WebSocket request itself, without net/http (no per-connection
// bufio survives it), and hands any other request to net/http with the
// bytes read. slot counts the connection against its address's limit of
// unauthenticated connections until it is authenticated or closed.
func (g *Gateway) handshake(nc net.Conn, slot *connlimit.Slot, httpLn *chanListener) {
	inProgress := true
	done := func() {
		if inProgress {
			inProgress = false
			g.handshakes.Add(-1)
		}
	}
	defer done()
	_ = nc.SetDeadline(deadline(g.cfg.HeaderTimeout))
	buf, n, err := readHead(nc, g.cfg.MaxHeaderBytes)
	if err != nil {
		slot.Release()
		var he *httpError
		if errors.As(err, &he) {
			g.log.Debug("request refused", "remote", nc.RemoteAddr().String(), "status", he.status, "err", he.msg)
			g.refuse(nc, he)
			return
		}
		_ = nc.Close() // nothing whole arrived in time, or the peer left
		return
	}
	method, target, _, ok := requestLine(buf[:n])
	if !ok || !isUpgradePath(method, target) {
		_ = nc.SetDeadline(time.Time{})
		done()
		httpLn.push(&prefixConn{Conn: nc, prefix: buf, slot: slot})
		return
	}
	req, he := parseUpgradeRequest(buf[:n])
	if req != nil && !g.hosts.Allowed(req.host) {
		he = errStatus(http.StatusMisdirectedRequest, "host "+schema.QuoteName(req.host)+" is not served here")
	}
	if he == nil {
		if reason := g.notReady(); reason != "" {
			he = &httpError{status: http.StatusServiceUnavailable, msg: reason, header: "Retry-After: " + strconv.Itoa(notReadyRetryAfter) + "\r\n"}
		}
	}
	if he != nil {
		slot.Release()
		g.log.Debug("websocket upgrade refused", "remote", nc.RemoteAddr().String(), "status", he.status, "err", he.msg)
		g.refuse(nc, he)
		return
	}
	_ = nc.SetWriteDeadline(deadline(g.cfg.WriteTimeout))
	if _, err := nc.Write(acceptResponse(req)); err != nil {
		slot.Release()
		_ = nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	var pending []byte
	if len(buf) > n {
		// Frames sent right behind the request (in the same packet,
		// typically): read before anything else from the socket.
		pending = bytes.Clone(buf[n:])
	}
	done()
	g.start(nc, req, pending, slot)
}

// ServeHTTP upgrades a WebSocket request that came through net/http (a
// kept-alive connection, or TLS).
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// Said here, not by the WebSocket library (a bare 405 without the
		// methods that are allowed).
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "a WebSocket handshake is a GET", http.StatusMethodNotAllowed)
		return
	}
	if p := r.URL.EscapedPath(); p != "/ws" && !strings.HasPrefix(p, URLSubscriptionPrefix) && !strings.HasPrefix(p, EndpointPrefix) {
		http.Error(w, "404 Not Found: no such WebSocket endpoint", http.StatusNotFound)
		return
	}
	req := &upgradeRequest{path: r.URL.EscapedPath(), rawQuery: r.URL.RawQuery, host: r.Host, origin: r.Header.Get("Origin"),
		authorization: r.Header.Get("Authorization"), cookie: strings.Join(r.Header.Values("Cookie"), "; "),
		protocols: strings.Join(r.Header.Values("Sec-WebSocket-Protocol"), ", ")}
	if len(req.cookie) > maxCookieBytes || len(req.protocols) > maxProtocolBytes {
		http.Error(w, "Cookie or Sec-WebSocket-Protocol too large", http.StatusRequestHeaderFieldsTooLarge)
		return
	}
	if g.refuseNotReady(w) {
		return
	}
	nc, rw, _, err := ws.HTTPUpgrader{Protocol: func(p string) bool { return answerProtocol([]byte(p)) }}.Upgrade(r, w)
	if err != nil {
		return // UpgradeHTTP answered the request
	}
	// Frames the client sent right behind the request are in net/http's
	// buffer (and possibly still in the prefix the connection started
	// with): they are read first.
	var pending []byte
	if rw != nil && rw.Reader.Buffered() > 0 {
		p, _ := rw.Reader.Peek(rw.Reader.Buffered())
		pending = bytes.Clone(p)
	}
	var slot *connlimit.Slot
	if pc, ok := nc.(*prefixConn); ok {
		pending = append(pending, pc.prefix...)
		slot, pc.slot, pc.prefix = pc.slot, nil, nil
		nc = pc.Conn // the socket itself, for the poller
	}
	_ = nc.SetDeadline(time.Time{}) // net/http's deadlines do not apply any more
	g.start(nc, req, pending, slot)
}

// start runs an upgraded connection: origin check, URL subscription, then
// registration with the poller. pending holds bytes already read from the
// connection.
func (g *Gateway) start(nc net.Conn, req *upgradeRequest, pending []byte, slot *connlimit.Slot) {
	c := &conn{g: g, nc: nc, fd: -1, pending: pending, slot: slot}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	c.lastRead.Store(time.Now().UnixNano())
	if g.closing.Load() {
		slot.Release()
		c.closeWith(CloseGoingAway, CloseGoingAway.Reason())
		return
	}
	g.addConn(c)
	if !g.originAllowed(req.origin, req.host) {
		c.closeWith(CloseForbiddenOrigin, "origin "+schema.QuoteName(req.origin)+" is not allowed")
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
	c.slot.Release() // authenticated: no longer counted against its address
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
	if name, ok := strings.CutPrefix(req.path, EndpointPrefix); ok {
		if perr := c.subscribeEndpoint(name); perr != nil {
			c.closeWith(CloseBadRequest, perr.Message)
			return
		}
	}
	if err := g.poll.add(c); err != nil {
		// No poller here (or it failed): a goroutine reads instead.
		go c.readLoop()
	} else if len(pending) > 0 {
		g.dispatchRead(c) // the poller only sees what is still in the socket
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
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if !c.g.cfg.Auth.Enabled() {
		c.id = auth.AnonymousIdentity()
		return true
	}
	token, _ := TokenFrom(q, req.authorization, req.cookie, req.protocols)
	id, err := c.g.cfg.Auth.Authenticate(auth.Credential{Token: token}, time.Now())
	if err != nil {
		reason := CloseUnauthorized.Reason()
		var ae *auth.Error
		if errors.As(err, &ae) {
			reason = ae.Reason
		}
		c.g.log.Info("websocket client refused", "remote", c.nc.RemoteAddr().String(), "reason", reason, "err", err)
		c.closeWith(CloseUnauthorized, reason)
		return false
	}
	key, ok := c.g.admitIdentity(id)
	if !ok {
		who := "for " + schema.QuoteName(id.Subject)
		switch {
		case id.Method == auth.MethodAnonymous:
			who = "without credentials"
		case id.Subject == "":
			who = "for this token"
		}
		c.closeWith(CloseTooManyConnections, "too many connections "+who)
		return false
	}
	c.mu.Lock()
	if c.closing {
		// Closed meanwhile (shutdown): release may have run already.
		c.mu.Unlock()
		if key != "" {
			c.g.leaveIdentity(key)
		}
		return false
	}
	c.counted = key
	c.mu.Unlock()
	c.id = id
	c.setExpiry(id.Expires)
	if id.Method == auth.MethodAPIKey {
		c.apiKey.Store(true)
		// The keys may have been reloaded since Authenticate, before the
		// gateway could see this connection's key.
		c.recheckAPIKey()
	}
	return !c.isClosing()
}

// setExpiry arms the close of the connection at exp (zero: never),
// replacing the one of the credential before.
func (c *conn) setExpiry(exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expiry != nil {
		c.expiry.Stop()
		c.expiry = nil
	}
	if c.closing || exp.IsZero() {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(time.Until(exp), func() {
		c.mu.Lock()
		current := c.expiry == t // not replaced by a refresh as it fired
		c.mu.Unlock()
		if current {
			c.closeWith(CloseUnauthorized, CloseReasonTokenExpired)
		}
	})
	c.expiry = t
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
		br.Reset(c)
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
	br := bufio.NewReaderSize(c, 4096)
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
		if br.Buffered() == 0 && len(c.pending) == 0 {
			return true
		}
	}
}

// Read reads the connection for the frame reader: first what arrived with
// the upgrade request, then the socket.
func (c *conn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		if c.pending = c.pending[n:]; len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	return c.nc.Read(p)
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
// frames were read. A text message is checked to be UTF-8 fragment by
// fragment, so that an invalid one fails as soon as it can be told.
func (c *conn) readMessage(br *bufio.Reader) ([]byte, error) {
	for {
		h, err := readFrameHeader(br)
		if err != nil {
			if errors.Is(err, errMalformedHeader) {
				return nil, &closeError{CloseProtocolError, "malformed frame header"}
			}
			return nil, err
		}
		c.lastRead.Store(time.Now().UnixNano())
		if h.rsv != 0 {
			return nil, &closeError{CloseProtocolError, "reserved bits set (no extension was negotiated)"}
		}
		if !h.masked {
			return nil, &closeError{CloseProtocolError, "client frames must be masked"}
		}
		switch h.op {
		case opClose, opPing, opPong:
			if h.length > 125 || !h.fin {
				return nil, &closeError{CloseProtocolError, "malformed control frame"}
			}
			var buf [125]byte
			payload := buf[:h.length]
			if err := readPayload(br, payload); err != nil {
				return nil, err
			}
			ws.Cipher(payload, h.mask, 0)
			switch h.op {
			case opClose:
				code, reason, cerr := parseClose(payload)
				if cerr != nil {
					return nil, cerr
				}
				c.closeWith(code, reason)
				return nil, nil
			case opPing:
				c.enqueuePong(finishFrame(append(newFrame(len(payload)), payload...), opPong))
			}
			if !c.inFrag {
				return nil, nil
			}
			continue
		case opBinary:
			return nil, &closeError{CloseUnsupportedData, CloseUnsupportedData.Reason() + ": send JSON text"}
		case opText:
			if c.inFrag {
				return nil, &closeError{CloseProtocolError, "new message inside a fragmented one"}
			}
		case opContinuation:
			if !c.inFrag {
				return nil, &closeError{CloseProtocolError, "continuation frame without a message to continue"}
			}
		default:
			return nil, &closeError{CloseProtocolError, "reserved opcode " + strconv.Itoa(int(h.op))}
		}
		max := int64(c.g.cfg.MaxMessageBytes)
		if int64(len(c.frag))+h.length > max {
			return nil, &closeError{CloseMessageTooBig, "message larger than " + formatSize(max)}
		}
		start := len(c.frag)
		c.frag = append(c.frag, make([]byte, h.length)...)
		if _, err := io.ReadFull(br, c.frag[start:]); err != nil {
			return nil, err
		}
		ws.Cipher(c.frag[start:], h.mask, 0)
		n, ok := validUTF8Prefix(c.frag[c.fragValid:])
		if c.fragValid += n; !ok || h.fin && c.fragValid != len(c.frag) {
			c.frag, c.fragValid, c.inFrag = c.frag[:0], 0, false
			return nil, &closeError{CloseInvalidPayload, "text message is not valid UTF-8"}
		}
		if !h.fin {
			c.inFrag = true
			continue
		}
		msg := c.frag
		if msg == nil {
			msg = []byte{} // an empty message is still a message
		}
		c.frag, c.fragValid, c.inFrag = nil, 0, false
		return msg, nil
	}
}

// readPayload reads a control frame's payload (125 bytes at most, within
// br's buffer) without allocating.
func readPayload(br *bufio.Reader, p []byte) error {
	b, err := br.Peek(len(p))
	if err != nil {
		return err
	}
	copy(p, b)
	_, _ = br.Discard(len(p))
	return nil
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
//
// The limit bounds a backlog, not one event: a frame larger than the limit
// is queued whenever no other such frame is waiting or being written, and
// does not count against the limit of the frames around it. A connection
// thus holds at most SendQueueBytes plus one large frame.
func (c *conn) enqueue(frame []byte, wait bool) bool { return c.enqueueFor(nil, frame, wait) }

// enqueueFor is enqueue of a frame of subscription s, which is dropped
// once s has ended (a resume that waited for room while s was
// unsubscribed): no frame of s follows its unsubscribed.
func (c *conn) enqueueFor(s *sub, frame []byte, wait bool) bool {
	return c.enqueueAhead(s, frame, wait, 0)
}

// enqueueAhead is enqueueFor that, with ahead > 0, also waits until the
// connection has at most ahead bytes queued or being written, the frame
// included (or none at all): a sender that can wait (a snapshot) keeps
// only a little ahead of its client rather than a whole send queue.
func (c *conn) enqueueAhead(s *sub, frame []byte, wait bool, ahead int) bool {
	return c.enqueueFrame(s, frame, wait, ahead, false)
}

// maxQueuedPongs is how many pongs may wait in a connection's queue: one
// per ping, for a client that pings a few times in a row, and no more for
// one that sends pings without reading (see enqueuePong).
const maxQueuedPongs = 16

// enqueuePong queues the answer to a ping. Once maxQueuedPongs pongs wait
// in the queue, the last of them is replaced by it rather than followed by
// it (RFC 6455 §5.5.3 lets an endpoint answer only the latest of the pings
// it has not answered yet): a client sending pings without reading would
// otherwise fill the queue with frames of a few bytes, each costing the
// gateway several times what it counts against SendQueueBytes (some
// 100 MB before a queue of 4 MiB is full).
func (c *conn) enqueuePong(frame []byte) {
	c.mu.Lock()
	if i := c.pongAt - 1; i >= 0 && c.pongs >= maxQueuedPongs && !c.closing {
		c.queued += len(frame) - len(c.queue[i])
		c.queue[i] = frame
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.enqueueFrame(nil, frame, false, 0, true)
}

// enqueueFrame is enqueueAhead; pong marks the frame as the pong
// enqueuePong may replace.
func (c *conn) enqueueFrame(s *sub, frame []byte, wait bool, ahead int, pong bool) bool {
	limit := c.g.cfg.SendQueueBytes
	big := len(frame) > limit
	c.mu.Lock()
	for {
		if c.closing || s != nil && s.done.Load() {
			c.mu.Unlock()
			return false
		}
		room := big && c.bigQueued+c.bigFlight == 0 ||
			!big && c.queued-c.bigQueued+c.inflight-c.bigFlight+len(frame) <= limit
		if room && ahead > 0 && c.queued+c.inflight > 0 && c.queued+c.inflight+len(frame) > ahead {
			room = false
		}
		if room {
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
	if pong {
		c.pongs++
		c.pongAt = len(c.queue) + 1
	}
	c.queue = append(c.queue, frame)
	c.queued += len(frame)
	if big {
		c.bigQueued += len(frame)
	}
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
	c.pongs, c.pongAt = 0, 0
	n = c.queued
	c.queued = 0
	c.inflight = n
	c.bigFlight, c.bigQueued = c.bigQueued, 0
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
	c.inflight, c.bigFlight = 0, 0
	if cap(bufs) <= maxSpareFrames && err == nil {
		clear(bufs[:cap(bufs)])
		c.spare = bufs[:0]
	}
	c.signalDrained()
	if err != nil {
		c.closing = true
		c.queue, c.queued, c.bigQueued, c.pongs, c.pongAt = nil, 0, 0, 0, 0
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
	if c.writeBlocking(&rest) && c.written(bufs, n, nil) {
		c.flush()
	}
}

// writeBlocking writes bufs, waiting on a full socket up to WriteTimeout.
// It reports whether all was written; if not, it has dealt with the
// connection: a client that read nothing for WriteTimeout is a slow
// consumer (slowClose), any other failure means the peer is gone.
func (c *conn) writeBlocking(bufs *net.Buffers) bool {
	_ = c.nc.SetWriteDeadline(deadline(c.g.cfg.WriteTimeout))
	_, err := bufs.WriteTo(c.nc)
	if err == nil {
		// No deadline left behind: the writers' non-blocking writes would
		// fail on it once it passed.
		_ = c.nc.SetWriteDeadline(time.Time{})
		return true
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.slowClose(*bufs)
		return false
	}
	c.written(nil, 0, err)
	return false
}

// slowClose closes a client that has read nothing for WriteTimeout with
// 4008, like one whose queue overflowed. What is left of the batch being
// written (a frame may be half written) is finished, then the close frame
// follows it, as long as the client reads something every WriteTimeout
// (writeWhileRead); the socket is then closed without a reset, so that a
// client that reads late still gets everything up to the close frame. A
// client that reads nothing for another WriteTimeout is dropped.
func (c *conn) slowClose(rest net.Buffers) {
	reason := "slow consumer: nothing read for " + c.g.cfg.WriteTimeout.String() + "; resume from your last seq"
	c.mu.Lock()
	first := !c.closing
	if first {
		c.closing = true
		c.closeFrame = closeFrame(CloseSlowConsumer, reason)
	}
	cf := c.closeFrame
	c.closeFrame = nil
	c.queue, c.queued, c.inflight, c.pongs, c.pongAt = nil, 0, 0, 0, 0
	c.signalDrained()
	c.mu.Unlock()
	if first {
		c.g.met.slowCloses.Inc()
		go c.release()
	}
	if cf == nil { // aborted meanwhile: the peer is gone
		_ = c.nc.Close()
		return
	}
	rest = append(rest, cf)
	if !c.writeWhileRead(rest) {
		_ = c.nc.Close()
		return
	}
	connlimit.LingerClose(c.nc, closeLinger)
}

// closingWriteCap bounds, in write timeouts, how long the last frames and
// the close frame of a closing connection may take to write to a client
// that keeps reading.
const closingWriteCap = 10

// writeWhileRead writes the last frames of a closing connection: it gives
// up when the client reads nothing for WriteTimeout, or after
// closingWriteCap of them in all, and reports whether all was written. A
// client that reads, however slowly, gets its frames and the close frame.
func (c *conn) writeWhileRead(bufs net.Buffers) bool {
	end := time.Now().Add(closingWriteCap * c.g.cfg.WriteTimeout)
	for {
		_ = c.nc.SetWriteDeadline(deadline(c.g.cfg.WriteTimeout))
		n, err := bufs.WriteTo(c.nc)
		if err == nil {
			return true
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 || time.Now().After(end) {
			return false
		}
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
		nb := net.Buffers(bufs)
		if !c.writeBlocking(&nb) || !c.written(bufs, n, nil) {
			return
		}
	}
}

// finish writes the close frame (if any), waiting up to WriteTimeout for
// room, and closes the socket; after a close frame, without a reset (see
// connlimit.LingerClose), so that the client reads all that was sent.
func (c *conn) finish(cf []byte) {
	if cf == nil {
		_ = c.nc.Close()
		return
	}
	if !c.writeWhileRead(net.Buffers{cf}) {
		_ = c.nc.Close()
		return
	}
	connlimit.LingerClose(c.nc, closeLinger)
}

// closeWith closes the connection with a close frame, sent after the
// frames already queued (answers to the messages read before, in order):
// nothing more is queued. A slow consumer's 4008 drops the queue instead,
// and follows only the batch being written.
func (c *conn) closeWith(code CloseCode, reason string) {
	if reason == "" {
		reason = code.Reason()
	}
	c.shut(closeFrame(code, reason), code == CloseSlowConsumer)
}

// abort closes the connection of a peer that is gone, without a close
// frame.
func (c *conn) abort() { c.shut(nil, true) }

func (c *conn) shut(cf []byte, dropQueue bool) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	if dropQueue {
		c.queue, c.queued, c.bigQueued, c.pongs, c.pongAt = nil, 0, 0, 0, 0
	}
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
	c.slot.Release() // closed before it authenticated
	c.g.poll.remove(c)
	c.mu.Lock()
	if c.expiry != nil {
		c.expiry.Stop()
	}
	counted := c.counted
	c.counted = ""
	c.mu.Unlock()
	if counted != "" {
		c.g.leaveIdentity(counted)
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
