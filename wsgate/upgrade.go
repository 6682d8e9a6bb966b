package wsgate

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tablecast/tablecast/internal/connlimit"
	"github.com/tablecast/tablecast/schema"
)

// The first request of every connection is read here, before anything is
// known of the client, so every buffer is bounded and the answers are those
// of HTTP servers (nginx's for the request line, net/http's for headers):
//
//	414 URI Too Long                     request line over maxRequestLine
//	431 Request Header Fields Too Large  a header line over maxHeaderLine, more
//	                                     than maxHeaderCount headers, the head over
//	                                     MaxHeaderBytes, Cookie or
//	                                     Sec-WebSocket-Protocol values over their
//	                                     bounds
//	400 Bad Request                      malformed request or WebSocket handshake
//	421 Misdirected Request              a Host the gateway does not serve
//	426 Upgrade Required                 a WebSocket version other than 13
//	503 Service Unavailable              MaxHandshakes requests being read already
//
// A WebSocket request (GET /ws, /ws/…) is upgraded from what was read; any
// other request is handed to net/http with the bytes read so far.

const (
	// maxRequestLine bounds the request line, query string included: 8 KiB,
	// nginx's large_client_header_buffers, room for a token in the query.
	maxRequestLine = 8 << 10
	// maxHeaderLine bounds one header line (a cookie, a bearer token).
	maxHeaderLine = 8 << 10
	// maxHeaderCount bounds the header lines; browsers send about 20.
	maxHeaderCount = 100
	// maxCookieBytes bounds all Cookie values together.
	maxCookieBytes = 8 << 10
	// maxProtocolBytes bounds all Sec-WebSocket-Protocol values together
	// (protocol v1's name and a token).
	maxProtocolBytes = 8 << 10
	// headChunk is the first read buffer: most requests fit, and a
	// connection that sends nothing costs no more than this.
	headChunk = 1 << 10
)

// httpError is an HTTP answer to a request that is not served.
type httpError struct {
	status int
	msg    string
	header string // extra header lines, each ending "\r\n"
}

func (e *httpError) Error() string { return e.msg }

func errStatus(status int, msg string) *httpError { return &httpError{status: status, msg: msg} }

// readHead reads a request head (request line, headers and the empty line)
// from nc, bounded by maxHead bytes. It returns the bytes read: the head is
// buf[:n], and what came after it (WebSocket frames sent with the request,
// a body, a pipelined request) is buf[n:]. A read error (a timeout, the
// peer gone) is returned as is; a request too large is an *httpError.
func readHead(nc io.Reader, maxHead int) (buf []byte, n int, err error) {
	buf = make([]byte, 0, min(headChunk, maxHead))
	var sc headScanner
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= maxHead {
				return buf, 0, sc.tooLarge()
			}
			buf = append(buf[:cap(buf)], make([]byte, min(cap(buf), maxHead-cap(buf)))...)[:len(buf)]
		}
		k, rerr := nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if end, herr := sc.scan(buf, maxHead); herr != nil {
			return buf, 0, herr
		} else if end > 0 {
			return buf, end, nil
		}
		if rerr != nil {
			return buf, 0, rerr
		}
	}
}

// headScanner finds the end of a request head in a growing buffer, checking
// each line's length as it goes.
type headScanner struct {
	pos       int // bytes scanned
	lineStart int
	lines     int // complete lines, request line included
}

// scan looks at the bytes added to buf since the last call. It returns the
// length of the head once its empty line is in, or the error of a head
// beyond the limits.
func (s *headScanner) scan(buf []byte, maxHead int) (int, *httpError) {
	for s.pos < len(buf) {
		i := bytes.IndexByte(buf[s.pos:], '\n')
		if i < 0 {
			s.pos = len(buf)
			break
		}
		end := s.pos + i + 1
		line := buf[s.lineStart:end]
		s.pos, s.lineStart = end, end
		if err := s.checkLine(len(line)); err != nil {
			return 0, err
		}
		if s.lines > 0 && (len(line) == 1 || len(line) == 2 && line[0] == '\r') {
			return end, nil // the empty line
		}
		s.lines++
		if s.lines > maxHeaderCount+1 {
			return 0, errStatus(431, "more than "+strconv.Itoa(maxHeaderCount)+" header fields")
		}
	}
	if err := s.checkLine(len(buf) - s.lineStart); err != nil {
		return 0, err // a line already too long, before its end arrives
	}
	if len(buf) >= maxHead {
		return 0, s.tooLarge()
	}
	return 0, nil
}

// checkLine checks the length of the current line (with its line end).
func (s *headScanner) checkLine(n int) *httpError {
	if s.lines == 0 && n > maxRequestLine+2 {
		return errStatus(414, "request line longer than "+formatSize(maxRequestLine))
	}
	if s.lines > 0 && n > maxHeaderLine+2 {
		return errStatus(431, "header field longer than "+formatSize(maxHeaderLine))
	}
	return nil
}

func (s *headScanner) tooLarge() *httpError {
	if s.lines == 0 {
		return errStatus(414, "request line too long")
	}
	return errStatus(431, "request header fields too large")
}

// requestLine splits a head's first line: method, target and version.
func requestLine(head []byte) (method, target, version string, ok bool) {
	line, _, _ := bytes.Cut(head, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	m, rest, ok1 := bytes.Cut(line, []byte(" "))
	t, v, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || len(m) == 0 || len(t) == 0 || !isToken(m) || bytes.ContainsAny(t, " \t\r") || !strings.HasPrefix(string(v), "HTTP/") {
		return "", "", "", false
	}
	return string(m), string(t), string(v), true
}

// isUpgradePath reports whether a request is for the gateway's WebSocket
// endpoints; everything else goes to net/http.
func isUpgradePath(method, target string) bool {
	if method != "GET" {
		return false
	}
	p, _, _ := strings.Cut(target, "?")
	return p == "/ws" || strings.HasPrefix(p, "/ws/")
}

// parseUpgradeRequest parses and checks a WebSocket opening handshake (RFC
// 6455 §4.2.1) from a complete request head. The path has been routed here
// (isUpgradePath). It does not check the Host (see hostPolicy) nor the
// Origin, which is answered after the upgrade with a close code. A request
// refused once its headers are read comes back with them too, so that a
// Host the gateway does not serve is answered 421 before anything else.
func parseUpgradeRequest(head []byte) (*upgradeRequest, *httpError) {
	method, target, version, ok := requestLine(head)
	if !ok {
		return nil, errStatus(400, "malformed request line")
	}
	if method != "GET" {
		return nil, errStatus(400, "a WebSocket handshake is a GET")
	}
	if version != "HTTP/1.1" {
		return nil, errStatus(400, "a WebSocket handshake needs HTTP/1.1")
	}
	req := &upgradeRequest{}
	req.path, req.rawQuery, _ = strings.Cut(target, "?")
	var (
		upgrade, connection, wsVersion, key bool
		hosts, keys, origins, auths         int
		keyValue                            []byte
		versionValue                        []byte
	)
	rest := head
	_, rest, _ = bytes.Cut(rest, []byte("\n")) // the request line
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil, errStatus(400, "folded header lines are not allowed")
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || !isToken(name) {
			return nil, errStatus(400, "malformed header line")
		}
		value = bytes.Trim(value, " \t")
		if !validFieldValue(value) {
			return nil, errStatus(400, "control character in header "+schema.QuoteName(string(name)))
		}
		switch {
		case asciiEqualFold(name, "Host"):
			hosts++
			req.host = string(value)
		case asciiEqualFold(name, "Upgrade"):
			upgrade = upgrade || hasToken(value, "websocket")
		case asciiEqualFold(name, "Connection"):
			connection = connection || hasToken(value, "upgrade")
		case asciiEqualFold(name, "Sec-WebSocket-Version"):
			wsVersion = true
			versionValue = value
		case asciiEqualFold(name, "Sec-WebSocket-Key"):
			keys++
			key, keyValue = true, value
		case asciiEqualFold(name, "Sec-WebSocket-Protocol"):
			if len(req.protocols)+len(value) > maxProtocolBytes {
				return nil, errStatus(431, "Sec-WebSocket-Protocol longer than "+formatSize(maxProtocolBytes))
			}
			req.protocols = joinHeader(req.protocols, ", ", string(value))
		case asciiEqualFold(name, "Origin"):
			origins++
			req.origin = string(value)
		case asciiEqualFold(name, "Authorization"):
			auths++
			req.authorization = string(value)
		case asciiEqualFold(name, "Cookie"):
			if len(req.cookie)+len(value) > maxCookieBytes {
				return nil, errStatus(431, "Cookie longer than "+formatSize(maxCookieBytes))
			}
			req.cookie = joinHeader(req.cookie, "; ", string(value))
		}
	}
	switch {
	case hosts != 1:
		return nil, errStatus(400, "want exactly one Host header")
	case origins > 1 || auths > 1 || keys > 1:
		return req, errStatus(400, "repeated Origin, Authorization or Sec-WebSocket-Key header")
	case !upgrade:
		return req, errStatus(400, "not a WebSocket handshake: Upgrade: websocket missing")
	case !connection:
		return req, errStatus(400, "not a WebSocket handshake: Connection: Upgrade missing")
	case !wsVersion:
		return req, errStatus(400, "Sec-WebSocket-Version missing")
	case string(versionValue) != "13":
		return req, &httpError{status: 426, msg: "WebSocket version 13 only", header: "Sec-WebSocket-Version: 13\r\n"}
	case !key:
		return req, errStatus(400, "Sec-WebSocket-Key missing")
	}
	var nonce [18]byte // DecodedLen(24): Decode panics on a shorter destination
	if len(keyValue) != 24 {
		return req, errStatus(400, "Sec-WebSocket-Key is not 16 bytes in base64")
	}
	if n, err := base64.StdEncoding.Decode(nonce[:], keyValue); err != nil || n != 16 {
		return req, errStatus(400, "Sec-WebSocket-Key is not 16 bytes in base64")
	}
	req.key = string(keyValue)
	if req.path != "/ws" && !strings.HasPrefix(req.path, URLSubscriptionPrefix) && !strings.HasPrefix(req.path, EndpointPrefix) {
		return req, errStatus(404, "no such WebSocket endpoint")
	}
	return req, nil
}

// checkHead applies readHead's bounds to a request net/http parsed: a
// later request of a kept-alive connection. Its lines are measured as
// sent less any space after the colons (never more than readHead counts),
// the Host line included.
func checkHead(r *http.Request, maxHead int) *httpError {
	line := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4 // two spaces, CRLF
	if line > maxRequestLine+2 {
		return errStatus(414, "request line longer than "+formatSize(maxRequestLine))
	}
	total, count := line, 0
	field := func(name, value string) *httpError {
		n := len(name) + len(value) + 3 // ":", CRLF
		if n > maxHeaderLine+2 {
			return errStatus(431, "header field longer than "+formatSize(maxHeaderLine))
		}
		total += n
		count++
		return nil
	}
	if r.Host != "" {
		if he := field("Host", r.Host); he != nil {
			return he
		}
	}
	for name, values := range r.Header {
		for _, v := range values {
			if he := field(name, v); he != nil {
				return he
			}
		}
	}
	switch {
	case count > maxHeaderCount:
		return errStatus(431, "more than "+strconv.Itoa(maxHeaderCount)+" header fields")
	case total+2 > maxHead:
		return errStatus(431, "request header fields too large")
	}
	return nil
}

// acceptResponse is the 101 answer to a WebSocket handshake.
func acceptResponse(req *upgradeRequest) []byte {
	sum := sha1.Sum([]byte(req.key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	b := make([]byte, 0, 160)
	b = append(b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	b = base64.StdEncoding.AppendEncode(b, sum[:])
	b = append(b, "\r\n"...)
	for p := range strings.SplitSeq(req.protocols, ",") {
		if answerProtocol([]byte(strings.TrimSpace(p))) {
			b = append(b, "Sec-WebSocket-Protocol: "+Subprotocol+"\r\n"...)
			break
		}
	}
	return append(b, "\r\n"...)
}

// refuse answers a request that is not served and closes the connection.
func (g *Gateway) refuse(nc net.Conn, e *httpError) {
	if e.status >= 500 && !strings.Contains(e.header, "Retry-After:") {
		e.header += "Retry-After: 1\r\n"
	}
	_ = nc.SetWriteDeadline(deadline(g.cfg.WriteTimeout))
	_, _ = nc.Write(connlimit.HTTPError(e.status, e.msg, e.header))
	connlimit.LingerClose(nc, closeLinger)
}

// isToken reports whether b is an HTTP token (RFC 9110 §5.6.2).
func isToken(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7F || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return len(b) > 0
}

// validFieldValue reports whether a header value holds no control
// characters but tab.
func validFieldValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7F {
			return false
		}
	}
	return true
}

// hasToken reports whether a comma-separated header value holds token,
// case-insensitively.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte(","))
		if asciiEqualFold(bytes.Trim(t, " \t"), token) {
			return true
		}
	}
	return false
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// closeLinger bounds how long a closed connection is drained so that it is
// not reset (connlimit.LingerClose): a well-behaved peer answers a close at
// once; nginx waits up to 5 s (lingering_timeout).
const closeLinger = 2 * time.Second
