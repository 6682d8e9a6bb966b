package cdc

import (
	"encoding/binary"
	"testing"

	"github.com/tablecast/tablecast/schema"
)

// tupleBytes encodes a pgoutput TupleData; a nil entry is NULL, "\x00u" an
// unchanged TOASTed value.
func tupleBytes(cols ...*string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(cols)))
	for _, c := range cols {
		switch {
		case c == nil:
			b = append(b, 'n')
		case *c == "\x00u":
			b = append(b, 'u')
		default:
			b = append(b, 't')
			b = binary.BigEndian.AppendUint32(b, uint32(len(*c)))
			b = append(b, *c...)
		}
	}
	return b
}

func str(s string) *string { return &s }

func rowMsg(kind byte, rel uint32, parts ...[]byte) []byte {
	b := append([]byte{kind}, binary.BigEndian.AppendUint32(nil, rel)...)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func TestRowMessageDecode(t *testing.T) {
	unchanged := str("\x00u")
	tests := []struct {
		name       string
		msg        []byte
		kind       byte
		old, new   []schema.Value
		oldKeyOnly bool
	}{
		{
			name: "insert",
			msg:  rowMsg('I', 7, []byte{'N'}, tupleBytes(str("1"), nil, str("héllo"))),
			kind: 'I',
			new:  []schema.Value{{Kind: 't', Data: []byte("1")}, {Kind: 'n'}, {Kind: 't', Data: []byte("héllo")}},
		},
		{
			name: "update without old tuple, TOAST unchanged",
			msg:  rowMsg('U', 7, []byte{'N'}, tupleBytes(str("1"), unchanged)),
			kind: 'U',
			new:  []schema.Value{{Kind: 't', Data: []byte("1")}, {Kind: 'u'}},
		},
		{
			name:       "update with key change",
			msg:        rowMsg('U', 7, []byte{'K'}, tupleBytes(str("1"), nil), []byte{'N'}, tupleBytes(str("2"), str("x"))),
			kind:       'U',
			old:        []schema.Value{{Kind: 't', Data: []byte("1")}, {Kind: 'n'}},
			oldKeyOnly: true,
			new:        []schema.Value{{Kind: 't', Data: []byte("2")}, {Kind: 't', Data: []byte("x")}},
		},
		{
			name: "update under replica identity full",
			msg:  rowMsg('U', 7, []byte{'O'}, tupleBytes(str("1"), str("a")), []byte{'N'}, tupleBytes(str("1"), str("b"))),
			kind: 'U',
			old:  []schema.Value{{Kind: 't', Data: []byte("1")}, {Kind: 't', Data: []byte("a")}},
			new:  []schema.Value{{Kind: 't', Data: []byte("1")}, {Kind: 't', Data: []byte("b")}},
		},
		{
			name:       "delete by key",
			msg:        rowMsg('D', 9, []byte{'K'}, tupleBytes(str("42"), nil)),
			kind:       'D',
			old:        []schema.Value{{Kind: 't', Data: []byte("42")}, {Kind: 'n'}},
			oldKeyOnly: true,
		},
		{
			name: "empty string value",
			msg:  rowMsg('I', 7, []byte{'N'}, tupleBytes(str(""))),
			kind: 'I',
			new:  []schema.Value{{Kind: 't', Data: []byte{}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m rowMessage
			if err := m.decode(tt.msg); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if m.kind != tt.kind || m.oldKeyOnly != tt.oldKeyOnly {
				t.Fatalf("kind %q keyOnly %v, want %q %v", m.kind, m.oldKeyOnly, tt.kind, tt.oldKeyOnly)
			}
			assertValues(t, "old", m.old, tt.old)
			assertValues(t, "new", m.new, tt.new)
		})
	}
}

func assertValues(t *testing.T, what string, got, want []schema.Value) {
	t.Helper()
	if (got == nil) != (want == nil) || len(got) != len(want) {
		t.Fatalf("%s: got %d values (nil %v), want %d (nil %v)", what, len(got), got == nil, len(want), want == nil)
	}
	for i := range got {
		if got[i].Kind != want[i].Kind || string(got[i].Data) != string(want[i].Data) {
			t.Fatalf("%s[%d] = %c %q, want %c %q", what, i, got[i].Kind, got[i].Data, want[i].Kind, want[i].Data)
		}
	}
}

func TestRowMessageDecodeRejectsMalformed(t *testing.T) {
	good := rowMsg('I', 7, []byte{'N'}, tupleBytes(str("1"), str("abc")))
	tests := map[string][]byte{
		"empty":             {},
		"header only":       good[:5],
		"truncated value":   good[:len(good)-1],
		"trailing bytes":    append(append([]byte{}, good...), 0),
		"bad insert tag":    rowMsg('I', 7, []byte{'K'}, tupleBytes(str("1"))),
		"update no new":     rowMsg('U', 7, []byte{'K'}, tupleBytes(str("1"))),
		"delete bad tag":    rowMsg('D', 7, []byte{'N'}, tupleBytes(str("1"))),
		"unknown kind":      rowMsg('I', 7, []byte{'N', 0, 1, 'x'}),
		"binary value":      rowMsg('I', 7, []byte{'N', 0, 1, 'b', 0, 0, 0, 1, 1}),
		"length past end":   rowMsg('I', 7, []byte{'N', 0, 1, 't', 0x7f, 0xff, 0xff, 0xff}),
		"negative length":   rowMsg('I', 7, []byte{'N', 0, 1, 't', 0xff, 0xff, 0xff, 0xff}),
		"not a row message": rowMsg('X', 7, []byte{'N'}, tupleBytes(str("1"))),
	}
	for name, msg := range tests {
		t.Run(name, func(t *testing.T) {
			var m rowMessage
			if err := m.decode(msg); err == nil {
				t.Fatalf("decode(%q) succeeded, want an error", msg)
			}
		})
	}
}

func TestRowMessageDecodeAllocatesNothing(t *testing.T) {
	msg := rowMsg('U', 7, []byte{'O'}, tupleBytes(str("1"), str("a"), nil), []byte{'N'}, tupleBytes(str("1"), str("b"), nil))
	var m rowMessage
	if err := m.decode(msg); err != nil { // sizes the reused slices
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = m.decode(msg) }); n != 0 {
		t.Fatalf("decode allocates %.1f times per message, want 0", n)
	}
}

func FuzzRowMessage(f *testing.F) {
	f.Add(rowMsg('I', 7, []byte{'N'}, tupleBytes(str("1"), nil, str("x"))))
	f.Add(rowMsg('U', 7, []byte{'K'}, tupleBytes(str("1")), []byte{'N'}, tupleBytes(str("2"))))
	f.Add(rowMsg('D', 7, []byte{'O'}, tupleBytes(str("1"), str("\x00u"))))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var m rowMessage
		if err := m.decode(msg); err != nil {
			return
		}
		// A message that decodes must describe its own bytes: every value
		// lies inside msg.
		for _, vals := range [][]schema.Value{m.old, m.new} {
			for _, v := range vals {
				if len(v.Data) > len(msg) {
					t.Fatalf("value of %d bytes from a %d-byte message", len(v.Data), len(msg))
				}
			}
		}
		if m.kind != 'D' && m.new == nil {
			t.Fatalf("%c message decoded without a new tuple", m.kind)
		}
	})
}

func BenchmarkRowMessageDecode(b *testing.B) {
	cols := make([]*string, 10)
	for i := range cols {
		cols[i] = str("value-of-some-column")
	}
	msg := rowMsg('I', 7, []byte{'N'}, tupleBytes(cols...))
	var m rowMessage
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if err := m.decode(msg); err != nil {
			b.Fatal(err)
		}
	}
}
