package wsgate

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// chunkReader returns its input a few bytes at a time, as a socket may.
type chunkReader struct {
	b    []byte
	size int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), r.size, len(r.b))
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

// FuzzUpgradeRequest feeds arbitrary bytes, in arbitrary chunks, to the
// reader and parser of a connection's first request: whatever they get,
// they hold no more than the limit, answer only with the statuses of the
// contract, and accept only a handshake net/http would parse too, answered
// with a correct 101.
func FuzzUpgradeRequest(f *testing.F) {
	key := "dGhlIHNhbXBsZSBub25jZQ=="
	ok := "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n"
	for _, s := range []string{
		ok + "\r\n",
		ok + "Origin: http://localhost:8080\r\nCookie: a=b\r\nCookie: tablecast_token=x\r\nSec-WebSocket-Protocol: tablecast.v1, token.abc\r\n\r\n\x81\x85abcd",
		strings.ReplaceAll(ok, "\r\n", "\n") + "\n",
		"GET /ws/tables/public.orders?status=eq.paid&token=t HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: upgrade\r\nsec-websocket-key: " + key + "\r\nsec-websocket-version: 13\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /ws HTTP/1.0\r\n\r\n",
		ok + " folded\r\n\r\n",
		ok + "X: a\x00b\r\n\r\n",
		"GET /ws?" + strings.Repeat("a", 9000) + " HTTP/1.1\r\n\r\n",
		ok + "X: " + strings.Repeat("b", 9000) + "\r\n\r\n",
		ok + strings.Repeat("X: b\r\n", 120) + "\r\n",
		"\r\n\r\n", "", "GET", "GET /ws HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		strings.Replace(ok, key, strings.Repeat("QUFB", 40), 1) + "\r\n", // a key too long to decode in place
	} {
		f.Add([]byte(s), uint16(7))
	}
	f.Fuzz(checkUpgradeRequest)
}

// checkUpgradeRequest is FuzzUpgradeRequest's check of one input.
func checkUpgradeRequest(t *testing.T, in []byte, chunk uint16) {
	const maxHead = 16 << 10
	{
		buf, n, err := readHead(&chunkReader{b: in, size: int(chunk%4096) + 1}, maxHead)
		if cap(buf) > maxHead {
			t.Fatalf("read buffer of %d bytes, over the %d limit", cap(buf), maxHead)
		}
		var he *httpError
		if errors.As(err, &he) {
			if he.status != 414 && he.status != 431 {
				t.Fatalf("reading answered %d %s", he.status, he.msg)
			}
			return
		}
		if err != nil {
			return // the input ended first
		}
		head := buf[:n]
		if !bytes.HasSuffix(head, []byte("\n\n")) && !bytes.HasSuffix(head, []byte("\n\r\n")) {
			t.Fatalf("head %q does not end with an empty line", head)
		}
		lines := bytes.Split(head[:len(head)-1], []byte("\n"))
		if len(lines) > maxHeaderCount+2 {
			t.Fatalf("%d lines accepted", len(lines))
		}
		for i, l := range lines {
			if i == 0 && len(l) > maxRequestLine+1 || len(l) > maxHeaderLine+1 {
				t.Fatalf("line %d of %d bytes accepted", i, len(l))
			}
		}
		method, target, _, ok := requestLine(head)
		if !ok || !isUpgradePath(method, target) {
			return
		}
		req, he := parseUpgradeRequest(head)
		if he != nil {
			switch he.status {
			case 400, 404, 426, 431:
			default:
				t.Fatalf("handshake answered %d %s", he.status, he.msg)
			}
			if he.msg == "" {
				t.Fatalf("answer %d without a reason", he.status)
			}
			return
		}
		for _, v := range []string{req.path, req.rawQuery, req.host, req.origin, req.authorization, req.cookie, req.protocols} {
			if strings.ContainsAny(v, "\r\n\x00") {
				t.Fatalf("value %q kept a line break or NUL", v)
			}
		}
		if len(req.cookie) > maxCookieBytes || len(req.protocols) > maxProtocolBytes {
			t.Fatalf("cookie of %d or protocols of %d bytes accepted", len(req.cookie), len(req.protocols))
		}
		if _, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head))); err != nil {
			t.Fatalf("handshake accepted that net/http refuses (%v):\n%q", err, head)
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(acceptResponse(req))), nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("101 answer does not parse: %v %v", resp, err)
		}
		sum := sha1.Sum([]byte(req.key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		if resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
			t.Fatalf("wrong Sec-WebSocket-Accept for key %q", req.key)
		}
		if p := resp.Header.Get("Sec-WebSocket-Protocol"); p != "" && p != Subprotocol {
			t.Fatalf("answered subprotocol %q", p)
		}
	}
}
