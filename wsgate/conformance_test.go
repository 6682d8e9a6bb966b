package wsgate

// RFC 6455 conformance, after the Autobahn test suite's categories 1–7 and
// 9, written from the RFC against a raw socket. The gateway does not echo:
// where Autobahn expects a text message echoed, the gateway answers each
// text message with one text frame (a pong for a JSON ping, an error frame
// for anything else), which proves the same thing: the message was read
// whole and the connection is still good. Binary messages are refused with
// 1003 by the protocol's contract (JSON text only), so Autobahn's binary
// echo cases become that.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// abWrite is something the client writes: bytes, possibly in chops of a
// few bytes, then possibly a pause.
type abWrite struct {
	b     []byte
	chop  int
	pause time.Duration
}

// abFrame is a frame the gateway must send: a control frame with its
// payload, a text frame (json: the "type" it must have, "" for any), or a
// close with its code.
type abFrame struct {
	op      byte
	payload string
	json    string
	code    int
}

type abCase struct {
	id   string // the Autobahn case
	name string
	send []abWrite
	want []abFrame
}

func abMsg(b0 byte, payload []byte) abWrite { return abWrite{b: e2eMasked(b0, payload)} }

func abChop(w abWrite, n int) abWrite { w.chop = n; return w }

func abPause(w abWrite, d time.Duration) abWrite { w.pause = d; return w }

// abPing is a JSON ping message of exactly n bytes (n >= 22).
func abPing(n int) []byte {
	const base = `{"type":"ping","p":""}`
	return []byte(base[:len(base)-2] + strings.Repeat("x", n-len(base)) + `"}`)
}

func abClosePayload(code int, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(code)), reason...)
}

var (
	abPong      = abFrame{op: opText, json: "pong"}
	abAnswered  = abFrame{op: opText}
	abJSONPing  = []byte(`{"type":"ping"}`)
	abPingFrame = abMsg(0x80|opText, abJSONPing)
)

func abControl(op byte, payload string) abFrame { return abFrame{op: op, payload: payload} }
func abClose(code int) abFrame                  { return abFrame{op: opClose, code: code} }

// abFragments splits a text message into frames of n bytes.
func abFragments(msg []byte, n int) []abWrite {
	var out []abWrite
	for i := 0; i < len(msg) || i == 0; i += n {
		end := min(i+n, len(msg))
		b0 := byte(opContinuation)
		if i == 0 {
			b0 = opText
		}
		if end == len(msg) {
			b0 |= 0x80
		}
		out = append(out, abMsg(b0, msg[i:end]))
		if len(msg) == 0 {
			break
		}
	}
	return out
}

func abCases() []abCase {
	var cs []abCase
	add := func(id, name string, send []abWrite, want ...abFrame) {
		cs = append(cs, abCase{id, name, send, want})
	}
	w := func(ws ...abWrite) []abWrite { return ws }

	// 1: framing of text messages of every length encoding.
	add("1.1.1", "empty text message", w(abMsg(0x80|opText, nil)), abFrame{op: opText, json: "error"})
	for i, n := range []int{125, 126, 127, 128, 65535, 65536} {
		add(fmt.Sprintf("1.1.%d", i+2), fmt.Sprintf("text message of %d bytes", n), w(abMsg(0x80|opText, abPing(n))), abPong)
	}
	add("1.1.8", "65536 bytes written in chops of 997", w(abChop(abMsg(0x80|opText, abPing(65536)), 997)), abPong)
	for i, n := range []int{0, 125, 126, 65536} {
		add(fmt.Sprintf("1.2.%d", i+1), fmt.Sprintf("binary message of %d bytes", n), w(abMsg(0x80|opBinary, make([]byte, n))), abClose(1003))
	}

	// 2: pings and pongs.
	add("2.1", "ping without payload", w(abMsg(0x80|opPing, nil)), abControl(opPong, ""))
	add("2.2", "ping with text payload", w(abMsg(0x80|opPing, []byte("Hello, world!"))), abControl(opPong, "Hello, world!"))
	bin := []byte{0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff}
	add("2.3", "ping with binary payload", w(abMsg(0x80|opPing, bin)), abControl(opPong, string(bin)))
	p125 := bytes.Repeat([]byte{0xfe}, 125)
	add("2.4", "ping with 125 bytes", w(abMsg(0x80|opPing, p125)), abControl(opPong, string(p125)))
	add("2.5", "ping with 126 bytes", w(abMsg(0x80|opPing, make([]byte, 126))), abClose(1002))
	add("2.6", "ping with 125 bytes, written byte by byte", w(abChop(abMsg(0x80|opPing, p125), 1)), abControl(opPong, string(p125)))
	add("2.7", "unsolicited pong without payload", w(abMsg(0x80|opPong, nil)))
	add("2.8", "unsolicited pong with payload", w(abMsg(0x80|opPong, []byte("unsolicited pong payload"))))
	add("2.9", "pong then ping", w(abMsg(0x80|opPong, []byte("unsolicited")), abMsg(0x80|opPing, []byte("ping payload"))), abControl(opPong, "ping payload"))
	var tenPings []abWrite
	var tenPongs []abFrame
	for i := range 10 {
		p := fmt.Sprintf("payload-%d", i)
		tenPings = append(tenPings, abMsg(0x80|opPing, []byte(p)))
		tenPongs = append(tenPongs, abControl(opPong, p))
	}
	add("2.10", "10 pings", tenPings, tenPongs...)
	var tenChopped []abWrite
	for _, p := range tenPings {
		tenChopped = append(tenChopped, abChop(p, 1))
	}
	add("2.11", "10 pings written byte by byte", tenChopped, tenPongs...)

	// 3: reserved bits, none negotiated.
	add("3.1", "RSV1 on text", w(abMsg(0x80|0x40|opText, abJSONPing)), abClose(1002))
	add("3.2", "RSV2 on text after a good one", w(abPingFrame, abMsg(0x80|0x20|opText, abJSONPing), abMsg(0x80|opPing, nil)), abPong, abClose(1002))
	add("3.3", "RSV1+2, chopped", w(abPingFrame, abChop(abMsg(0x80|0x60|opText, abJSONPing), 1), abMsg(0x80|opPing, nil)), abPong, abClose(1002))
	add("3.4", "RSV3 after a pause", w(abPingFrame, abPause(abMsg(0x80|0x10|opText, abJSONPing), 50*time.Millisecond), abMsg(0x80|opPing, nil)), abPong, abClose(1002))
	add("3.5", "RSV1+3 on binary", w(abMsg(0x80|0x50|opBinary, []byte{1, 2, 3})), abClose(1002))
	add("3.6", "RSV2+3 on ping", w(abMsg(0x80|0x30|opPing, []byte("ping"))), abClose(1002))
	add("3.7", "RSV1+2+3 on close", w(abMsg(0x80|0x70|opClose, nil)), abClose(1002))

	// 4: reserved opcodes.
	for i, op := range []byte{3, 4, 5, 6, 7} {
		add(fmt.Sprintf("4.1.%d", i+1), fmt.Sprintf("reserved data opcode %d", op),
			w(abPingFrame, abMsg(0x80|op, []byte("reserved")), abMsg(0x80|opPing, nil)), abPong, abClose(1002))
	}
	for i, op := range []byte{11, 12, 13, 14, 15} {
		add(fmt.Sprintf("4.2.%d", i+1), fmt.Sprintf("reserved control opcode %d", op),
			w(abPingFrame, abMsg(0x80|op, []byte("reserved")), abMsg(0x80|opPing, nil)), abPong, abClose(1002))
	}
	add("4.2.x", "reserved control opcode, empty, first", w(abMsg(0x80|11, nil)), abClose(1002))

	// 5: fragmentation.
	f1, f2 := abJSONPing[:7], abJSONPing[7:]
	add("5.1", "fragmented ping", w(abMsg(opPing, []byte("frag1")), abMsg(0x80|opContinuation, []byte("frag2"))), abClose(1002))
	add("5.2", "fragmented pong", w(abMsg(opPong, []byte("frag1")), abMsg(0x80|opContinuation, []byte("frag2"))), abClose(1002))
	two := w(abMsg(opText, f1), abMsg(0x80|opContinuation, f2))
	add("5.3", "text in 2 fragments", two, abPong)
	add("5.4", "text in 2 fragments, chopped", w(abChop(two[0], 3), abChop(two[1], 3)), abPong)
	add("5.5", "text in 2 fragments, byte by byte", w(abChop(two[0], 1), abChop(two[1], 1)), abPong)
	withPing := w(abMsg(opText, f1), abMsg(0x80|opPing, []byte("ping payload")), abMsg(0x80|opContinuation, f2))
	add("5.6", "ping between fragments", withPing, abControl(opPong, "ping payload"), abPong)
	add("5.7", "ping between fragments, chopped", w(abChop(withPing[0], 3), abChop(withPing[1], 3), abChop(withPing[2], 3)), abControl(opPong, "ping payload"), abPong)
	add("5.8", "ping between fragments, byte by byte", w(abChop(withPing[0], 1), abChop(withPing[1], 1), abChop(withPing[2], 1)), abControl(opPong, "ping payload"), abPong)
	for i, chop := range []int{0, 3, 1} {
		add(fmt.Sprintf("5.%d", 9+i), "final continuation without a start", w(abChop(abMsg(0x80|opContinuation, f2), chop), abPingFrame), abClose(1002))
		add(fmt.Sprintf("5.%d", 12+i), "continuation without a start", w(abChop(abMsg(opContinuation, f2), chop), abPingFrame), abClose(1002))
	}
	add("5.15", "a message, then a stray continuation", w(abMsg(opText, f1), abMsg(0x80|opContinuation, f2), abMsg(opContinuation, f1), abMsg(0x80|opText, f2)), abPong, abClose(1002))
	add("5.16", "continuation, text, continuation", w(abMsg(opContinuation, f1), abMsg(opText, f1), abMsg(0x80|opContinuation, f2)), abClose(1002))
	add("5.17", "final continuation, text, final continuation", w(abMsg(0x80|opContinuation, f1), abMsg(opText, f1), abMsg(0x80|opContinuation, f2)), abClose(1002))
	add("5.18", "text fragment, then a new text", w(abMsg(opText, f1), abMsg(0x80|opText, f2)), abClose(1002))
	parts := [][]byte{abJSONPing[:3], abJSONPing[3:6], abJSONPing[6:9], abJSONPing[9:12], abJSONPing[12:]}
	frags := w(abMsg(opText, parts[0]), abMsg(opContinuation, parts[1]), abMsg(0x80|opPing, []byte("pongme 1!")),
		abPause(abMsg(opContinuation, parts[2]), 100*time.Millisecond), abMsg(opContinuation, parts[3]),
		abMsg(0x80|opPing, []byte("pongme 2!")), abMsg(0x80|opContinuation, parts[4]))
	add("5.19", "pings between five fragments, with pauses", frags, abControl(opPong, "pongme 1!"), abControl(opPong, "pongme 2!"), abPong)
	var fragsChopped []abWrite
	for _, f := range frags {
		fragsChopped = append(fragsChopped, abChop(f, 1))
	}
	add("5.20", "the same, byte by byte", fragsChopped, abControl(opPong, "pongme 1!"), abControl(opPong, "pongme 2!"), abPong)

	// 6: UTF-8. Each text whole, in 1-byte fragments (a code point split
	// between fragments is valid), and written byte by byte.
	add("6.1.2", "empty fragments", w(abMsg(opText, nil), abMsg(opContinuation, nil), abMsg(0x80|opContinuation, nil)), abFrame{op: opText, json: "error"})
	add("6.1.3", "empty fragments around a ping message", w(abMsg(opText, nil), abMsg(opContinuation, abJSONPing), abMsg(0x80|opContinuation, nil)), abPong)
	for _, u := range abUTF8() {
		want := abAnswered
		if !u.valid {
			want = abClose(1007)
		}
		add(u.id, u.name, w(abMsg(0x80|opText, u.b)), want)
		add(u.id, u.name+", 1-byte fragments", abFragments(u.b, 1), want)
		add(u.id, u.name+", written byte by byte", w(abChop(abMsg(0x80|opText, u.b), 1)), want)
	}
	kosme := "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
	add("6.2.2", "valid text, 2 fragments on a code point boundary", w(abMsg(opText, []byte("Hello-\xc2\xb5@\xc3\x9f")), abMsg(0x80|opContinuation, []byte("\xc3\xb6\xc3\xa4-UTF-8!!"))), abAnswered)
	add("6.2.4", "κόσμε, each code point split", abFragments([]byte(kosme), 1), abAnswered)
	// Fail fast: the invalid fragment closes the connection before the
	// message's end is sent.
	add("6.4.1", "fail fast on an invalid code point", w(abMsg(opText, []byte(kosme)), abMsg(opContinuation, []byte("\xf4\x90\x80\x80"))), abClose(1007))
	add("6.4.2", "fail fast on an invalid code point split between fragments", w(abMsg(opText, []byte(kosme+"\xf4")), abMsg(opContinuation, []byte("\x90"))), abClose(1007))
	add("6.4.3", "fail fast on a surrogate split between fragments", w(abMsg(opText, []byte("ok\xed")), abMsg(opContinuation, []byte("\xa0"))), abClose(1007))
	add("6.4.4", "invalid text, the message not finished", w(abMsg(opText, []byte("\xc0\xafedited"))), abClose(1007))
	add("6.x", "a code point left incomplete at the message's end", w(abMsg(opText, []byte("abc\xe2\x82")), abMsg(0x80|opContinuation, nil)), abClose(1007))

	// 7: closing.
	add("7.1.1", "message then close", w(abPingFrame, abMsg(0x80|opClose, abClosePayload(1000, ""))), abPong, abClose(1000))
	add("7.1.2", "close twice", w(abMsg(0x80|opClose, abClosePayload(1000, "")), abMsg(0x80|opClose, abClosePayload(1000, ""))), abClose(1000))
	add("7.1.3", "ping after close", w(abMsg(0x80|opClose, abClosePayload(1000, "")), abMsg(0x80|opPing, []byte("too late"))), abClose(1000))
	add("7.1.4", "message after close", w(abMsg(0x80|opClose, abClosePayload(1000, "")), abPingFrame), abClose(1000))
	add("7.1.5", "close between fragments", w(abMsg(opText, f1), abMsg(0x80|opClose, abClosePayload(1000, "")), abMsg(0x80|opContinuation, f2)), abClose(1000))
	var many []abWrite
	var manyPongs []abFrame
	for range 10 {
		many = append(many, abMsg(0x80|opText, abPing(60000)))
		manyPongs = append(manyPongs, abPong)
	}
	add("7.1.6", "large messages, then close, then ping", append(many, abMsg(0x80|opClose, abClosePayload(1000, "")), abMsg(0x80|opPing, nil)), append(manyPongs, abClose(1000))...)
	add("7.3.1", "close without payload", w(abMsg(0x80|opClose, nil)), abClose(1000))
	add("7.3.2", "close with a 1-byte payload", w(abMsg(0x80|opClose, []byte{0x03})), abClose(1002))
	add("7.3.3", "close with a code", w(abMsg(0x80|opClose, abClosePayload(1000, ""))), abClose(1000))
	add("7.3.4", "close with a code and reason", w(abMsg(0x80|opClose, abClosePayload(1000, "Hello World!"))), abClose(1000))
	add("7.3.5", "close with a 123-byte reason", w(abMsg(0x80|opClose, abClosePayload(1000, strings.Repeat("*", 123)))), abClose(1000))
	add("7.3.6", "close with a 124-byte reason", w(abMsg(0x80|opClose, abClosePayload(1000, strings.Repeat("*", 124)))), abClose(1002))
	add("7.5.1", "close reason not UTF-8", w(abMsg(0x80|opClose, abClosePayload(1000, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"))), abClose(1007))
	for i, code := range []int{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999} {
		add(fmt.Sprintf("7.7.%d", i+1), fmt.Sprintf("valid close code %d", code), w(abMsg(0x80|opClose, abClosePayload(code, "Ok"))), abClose(code))
	}
	for i, code := range []int{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999} {
		add(fmt.Sprintf("7.9.%d", i+1), fmt.Sprintf("invalid close code %d", code), w(abMsg(0x80|opClose, abClosePayload(code, ""))), abClose(1002))
	}
	add("7.13.1", "close code 5000", w(abMsg(0x80|opClose, abClosePayload(5000, ""))), abClose(1002))
	add("7.13.2", "close code 65535", w(abMsg(0x80|opClose, abClosePayload(65535, ""))), abClose(1002))

	// 9: limits and throughput, as far as they apply to a server that
	// answers rather than echoes; 64 KiB is the message limit.
	big := abPing(64 << 10)
	add("9.1", "a message of the limit", w(abMsg(0x80|opText, big)), abPong)
	add("9.1.x", "a message over the limit", w(abMsg(0x80|opText, abPing(64<<10+1))), abClose(1009))
	for i, n := range []int{64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10} {
		add(fmt.Sprintf("9.3.%d", i+1), fmt.Sprintf("a message of the limit in fragments of %d bytes", n), abFragments(big, n), abPong)
	}
	for i, n := range []int{64, 128, 256, 512, 1 << 10, 2 << 10} {
		add(fmt.Sprintf("9.5.%d", i+1), fmt.Sprintf("a message of the limit written in chops of %d bytes", n), w(abChop(abMsg(0x80|opText, big), n)), abPong)
	}
	var burst []abWrite
	var burstAnswers []abFrame
	for range 1000 {
		burst = append(burst, abPingFrame)
		burstAnswers = append(burstAnswers, abPong)
	}
	add("9.7", "1000 small messages", burst, burstAnswers...)
	return cs
}

type abUTF8Case struct {
	id, name string
	b        []byte
	valid    bool
}

// abUTF8 are the UTF-8 sequences of Autobahn's case 6 (Markus Kuhn's
// decoder test), each inside some ASCII.
func abUTF8() []abUTF8Case {
	var cs []abUTF8Case
	add := func(id, name, s string, valid bool) {
		cs = append(cs, abUTF8Case{id, name, []byte(s), valid})
	}
	add("6.2.1", "valid mixed text", "Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!", true)
	add("6.3.1", "κόσμε with a surrogate", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", false)
	for _, v := range []struct {
		id, s string
		valid bool
	}{
		{"6.5.1", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", true},
		{"6.5.2", "\xf0\x9f\x8e\x89 \xf0\x90\x8d\x88", true},
		{"6.7.1", "\x00", true}, {"6.7.2", "\xc2\x80", true}, {"6.7.3", "\xe0\xa0\x80", true}, {"6.7.4", "\xf0\x90\x80\x80", true},
		{"6.8.1", "\xf8\x88\x80\x80\x80", false}, {"6.8.2", "\xfc\x84\x80\x80\x80\x80", false},
		{"6.9.1", "\x7f", true}, {"6.9.2", "\xdf\xbf", true}, {"6.9.3", "\xef\xbf\xbf", true}, {"6.9.4", "\xf4\x8f\xbf\xbf", true},
		{"6.10.1", "\xf7\xbf\xbf\xbf", false}, {"6.10.2", "\xfb\xbf\xbf\xbf\xbf", false}, {"6.10.3", "\xfd\xbf\xbf\xbf\xbf\xbf", false},
		{"6.11.1", "\xed\x9f\xbf", true}, {"6.11.2", "\xee\x80\x80", true}, {"6.11.3", "\xef\xbf\xbd", true}, {"6.11.4", "\xf4\x8f\xbf\xbf", true},
		{"6.11.5", "\xf4\x90\x80\x80", false},
		{"6.12.1", "\x80", false}, {"6.12.2", "\xbf", false}, {"6.12.3", "\x80\xbf", false}, {"6.12.4", "\x80\xbf\x80", false},
		{"6.12.8", "\x80\x81\x82\x83\x84\x85\x86\x87", false},
		{"6.13.1", "\xc0 \xc1 ", false}, {"6.13.2", "\xe0 \xe1 ", false}, {"6.13.3", "\xf0 \xf1 ", false}, {"6.13.4", "\xf8 ", false}, {"6.13.5", "\xfc ", false},
		{"6.14.1", "\xc0", false}, {"6.14.2", "\xe0\x80", false}, {"6.14.3", "\xf0\x80\x80", false}, {"6.14.4", "\xf8\x80\x80\x80", false},
		{"6.14.6", "\xdf", false}, {"6.14.7", "\xef\xbf", false}, {"6.14.8", "\xf7\xbf\xbf", false}, {"6.14.x", "\xc2", false}, {"6.14.y", "\xe2\x82", false}, {"6.14.z", "\xf0\x9f\x8e", false},
		{"6.15.1", "\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf\xf7\xbf\xbf\xfb\xbf\xbf\xbf\xfd\xbf\xbf\xbf\xbf", false},
		{"6.16.1", "\xfe", false}, {"6.16.2", "\xff", false}, {"6.16.3", "\xfe\xfe\xff\xff", false},
		{"6.17.1", "\xc0\xaf", false}, {"6.17.2", "\xe0\x80\xaf", false}, {"6.17.3", "\xf0\x80\x80\xaf", false}, {"6.17.4", "\xf8\x80\x80\x80\xaf", false},
		{"6.18.1", "\xc1\xbf", false}, {"6.18.2", "\xe0\x9f\xbf", false}, {"6.18.3", "\xf0\x8f\xbf\xbf", false},
		{"6.19.1", "\xc0\x80", false}, {"6.19.2", "\xe0\x80\x80", false}, {"6.19.3", "\xf0\x80\x80\x80", false},
		{"6.20.1", "\xed\xa0\x80", false}, {"6.20.2", "\xed\xad\xbf", false}, {"6.20.3", "\xed\xae\x80", false}, {"6.20.4", "\xed\xaf\xbf", false},
		{"6.20.5", "\xed\xb0\x80", false}, {"6.20.6", "\xed\xbe\x80", false}, {"6.20.7", "\xed\xbf\xbf", false},
		{"6.21.1", "\xed\xa0\x80\xed\xb0\x80", false}, {"6.21.8", "\xed\xaf\xbf\xed\xbf\xbf", false},
		{"6.22.1", "\xef\xbf\xbe", true}, {"6.22.2", "\xef\xbf\xbf", true}, {"6.22.3", "\xf0\x9f\xbf\xbe", true}, {"6.22.34", "\xf4\x8f\xbf\xbf", true},
		{"6.23.1", "\xef\xbf\xbd", true},
	} {
		add(v.id, fmt.Sprintf("% x", v.s), "a"+v.s+"z", v.valid)
	}
	return cs
}

// TestRFC6455Conformance runs every case on a connection of its own.
func TestRFC6455Conformance(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	for _, tc := range abCases() {
		t.Run(tc.id+" "+tc.name, func(t *testing.T) {
			r := e2eRawDial(t, e.addr, "/ws", "")
			for _, wr := range tc.send {
				if !abWriteAll(r, wr) {
					break // the gateway closed; what it sent is checked below
				}
			}
			closed := false
			for i, want := range tc.want {
				f, err := r.readFrame(10 * time.Second)
				if err != nil {
					t.Fatalf("frame %d: %v, want %+v", i+1, err, want)
				}
				if err := abMatch(f, want); err != nil {
					t.Fatalf("frame %d: %v", i+1, err)
				}
				closed = want.op == opClose
			}
			if closed {
				// Then the gateway closes the TCP connection, and sends
				// nothing more.
				_ = r.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
				b, err := io.ReadAll(r.br)
				if len(b) > 0 || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("after the close frame: %d more bytes, %v; want the connection closed", len(b), err)
				}
				return
			}
			// Still open, and nothing else was sent: the next frame answers
			// the next message.
			r.write(abPingFrame.b)
			f, err := r.readFrame(10 * time.Second)
			if err != nil {
				t.Fatalf("connection not usable afterwards: %v", err)
			}
			if err := abMatch(f, abPong); err != nil {
				t.Fatalf("after the case: %v", err)
			}
		})
	}
}

// abWriteAll writes w; false if the connection failed (the gateway closed
// it, as it may in the middle of a case).
func abWriteAll(r *e2eRaw, w abWrite) bool {
	_ = r.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	b := w.b
	chop := w.chop
	if chop <= 0 {
		chop = len(b)
	}
	for len(b) > 0 {
		n := min(chop, len(b))
		if _, err := r.nc.Write(b[:n]); err != nil {
			return false
		}
		b = b[n:]
	}
	if w.pause > 0 {
		time.Sleep(w.pause) // part of the case: the gateway must wait for the rest
	}
	return true
}

func abMatch(f e2eRawFrame, want abFrame) error {
	if !f.fin {
		return fmt.Errorf("fragmented server frame %+v", f)
	}
	if f.op != want.op {
		return fmt.Errorf("got opcode %d (payload %.80q), want %d", f.op, f.payload, want.op)
	}
	switch want.op {
	case opClose:
		if len(f.payload) < 2 {
			return fmt.Errorf("close frame without a code, want %d", want.code)
		}
		if code := int(binary.BigEndian.Uint16(f.payload)); code != want.code {
			return fmt.Errorf("closed with %d %q, want %d", code, f.payload[2:], want.code)
		}
	case opText:
		var m struct{ Type string }
		if err := json.Unmarshal(f.payload, &m); err != nil {
			return fmt.Errorf("text frame %q is not JSON", f.payload)
		}
		if want.json != "" && m.Type != want.json {
			return fmt.Errorf("got %s, want a %s frame", f.payload, want.json)
		}
	default:
		if string(f.payload) != want.payload {
			return fmt.Errorf("control frame %d payload %q, want %q", f.op, f.payload, want.payload)
		}
	}
	return nil
}
