package wsgate

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"io"
	"testing"
)

// benchMasked returns a masked client frame (b0: FIN, RSV and opcode).
func benchMasked(b0 byte, payload []byte) []byte {
	out := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		out = append(out, 0x80|byte(n))
	case n <= 0xFFFF:
		out = append(out, 0x80|126, byte(n>>8), byte(n))
	default:
		panic("frame too big for the benchmark")
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	out = append(out, key[:]...)
	for i, b := range payload {
		out = append(out, b^key[i%4])
	}
	return out
}

// BenchmarkReadMessage measures the read path of one client message: frame
// headers, unmasking, reassembly and validation, as conn.readMessage does
// for every message a client sends (handling it is not included).
func BenchmarkReadMessage(b *testing.B) {
	msg := []byte(`{"type":"subscribe","id":"s1","table":"public.orders","where":{"status":{"eq":"paid"}},"select":["id","status","total"]}`)
	utf := []byte(`{"type":"publish","topic":"chat","data":{"text":"héllo wörld, 日本語のテキスト, emoji 🎉 and more"}}`)
	for _, bc := range []struct {
		name  string
		input []byte
	}{
		{"text", benchMasked(0x80|opText, msg)},
		{"text-utf8", benchMasked(0x80|opText, utf)},
		{"fragmented", append(append(benchMasked(opText, utf[:30]), benchMasked(opContinuation, utf[30:61])...), benchMasked(0x80|opContinuation, utf[61:])...)},
		{"ping", benchMasked(0x80|opPing, []byte("hi"))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			g := &Gateway{cfg: Config{MaxMessageBytes: 64 << 10}}
			c := &conn{g: g, fd: -1}
			c.closing = true // control frames answered nowhere
			rd := bytes.NewReader(bc.input)
			br := bufio.NewReaderSize(rd, 4096)
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.input)))
			for b.Loop() {
				rd.Reset(bc.input)
				br.Reset(rd)
				for {
					_, err := c.readMessage(br)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
