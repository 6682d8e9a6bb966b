package schema

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func testTable() *Table {
	return &Table{RelationID: 1, Schema: "public", Name: `Order "Items"`, ReplicaIdentity: 'd', Columns: []Column{
		{Name: "id", TypeOID: 20, Key: true},
		{Name: "status", TypeOID: 25},
		{Name: "total", TypeOID: 1700},
		{Name: "notes", TypeOID: 25},
	}}
}

func text(s string) Value { return Value{Kind: KindText, Data: []byte(s)} }

func TestAppendEvent(t *testing.T) {
	var txn Txn
	txn.Reset(0x16B3748, 771, time.Date(2026, 11, 22, 7, 0, 0, 123456000, time.UTC))
	const head = `{"id":"00000000016B3748-0003","op":"%s","db":"shop","schema":"public","table":"Order \"Items\"","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z"`
	tests := []struct {
		name string
		c    Change
		want string
	}{
		{"create", Change{Op: OpCreate, Ordinal: 3, New: []Value{text("42"), text("open"), text("19.90"), {Kind: KindNull}}},
			`,"key":{"id":42},"data":{"id":42,"status":"open","total":"19.90","notes":null}}`},
		{"update keeps unchanged TOAST out of data", Change{Op: OpUpdate, Ordinal: 3, New: []Value{text("42"), text("paid"), text("19.90"), {Kind: KindUnchanged}}},
			`,"key":{"id":42},"data":{"id":42,"status":"paid","total":"19.90"},"unchanged":["notes"]}`},
		{"update of the key: key and old from the old key", Change{Op: OpUpdate, Ordinal: 3,
			Old: []Value{text("41"), {Kind: KindNull}, {Kind: KindNull}, {Kind: KindNull}}, OldKeyOnly: true,
			New: []Value{text("42"), text("paid"), text("1"), text("n")}},
			`,"key":{"id":41},"data":{"id":42,"status":"paid","total":"1","notes":"n"},"old":{"id":41}}`},
		{"update under full identity", Change{Op: OpUpdate, Ordinal: 3,
			Old: []Value{text("42"), text("open"), text("1"), {Kind: KindUnchanged}},
			New: []Value{text("42"), text("paid"), text("1"), {Kind: KindUnchanged}}},
			`,"key":{"id":42},"data":{"id":42,"status":"paid","total":"1"},"old":{"id":42,"status":"open","total":"1"},"unchanged":["notes"]}`},
		{"delete by key", Change{Op: OpDelete, Ordinal: 3, Old: []Value{text("42"), {Kind: KindNull}, {Kind: KindNull}, {Kind: KindNull}}, OldKeyOnly: true},
			`,"key":{"id":42},"old":{"id":42}}`},
		{"truncate", Change{Op: OpTruncate, Ordinal: 3}, `,"key":{}}`},
		{"truncate of a table added", Change{Op: OpTruncate, Ordinal: 3, Cause: CauseTableAdded}, `,"key":{},"cause":"table_added"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(AppendEvent(nil, "shop", testTable(), &txn, &tt.c))
			want := strings.Replace(head, "%s", tt.c.Op, 1) + tt.want
			if got != want {
				t.Fatalf("got\n%s\nwant\n%s", got, want)
			}
			if !json.Valid([]byte(got)) {
				t.Fatalf("not valid JSON: %s", got)
			}
		})
	}
}

func TestTxnIDs(t *testing.T) {
	var txn Txn
	txn.Reset(0xFFFFFFFF00000001, 1, time.Unix(0, 0))
	for ordinal, want := range map[uint32]string{1: "FFFFFFFF00000001-0001", 0xFFFF: "FFFFFFFF00000001-FFFF", 0x10000: "FFFFFFFF00000001-10000"} {
		if got := string(txn.AppendID(nil, ordinal)); got != want {
			t.Errorf("AppendID(%d) = %s, want %s", ordinal, got, want)
		}
	}
	if got := string(AppendLSN(nil, 0x16B3748)); got != "0/16B3748" {
		t.Errorf("AppendLSN = %s", got)
	}
	if got := string(AppendLSN(nil, 0xA00000000)); got != "A/0" {
		t.Errorf("AppendLSN = %s", got)
	}
}

func TestAppendEventAllocatesNothing(t *testing.T) {
	var txn Txn
	txn.Reset(1, 2, time.Now())
	tbl := testTable()
	c := Change{Op: OpUpdate, Ordinal: 1, New: []Value{text("42"), text("paid"), text("19.90"), {Kind: KindUnchanged}}}
	buf := AppendEvent(nil, "shop", tbl, &txn, &c)
	if n := testing.AllocsPerRun(100, func() { buf = AppendEvent(buf[:0], "shop", tbl, &txn, &c) }); n != 0 {
		t.Fatalf("AppendEvent allocates %.1f times per event, want 0", n)
	}
}

func BenchmarkAppendEvent(b *testing.B) {
	var txn Txn
	txn.Reset(1, 2, time.Now())
	tbl := testTable()
	c := Change{Op: OpCreate, Ordinal: 1, New: []Value{text("42"), text("paid"), text("19.90"), text("a short note")}}
	buf := AppendEvent(nil, "shop", tbl, &txn, &c)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEvent(buf[:0], "shop", tbl, &txn, &c)
	}
}

// TestAppendEventLimited: within the limit the event is AppendEvent's, byte
// for byte; beyond it dst comes back as it was, the size is still exact, and
// the buffer never holds much more than the limit plus one value.
func TestAppendEventLimited(t *testing.T) {
	var txn Txn
	txn.Reset(0x16B3748, 771, time.Unix(0, 0))
	tbl := testTable()
	big := strings.Repeat("\"x\n", 100_000) // 300 kB of text, 700 kB of JSON
	tests := []struct {
		name string
		c    Change
	}{
		{"small", Change{Op: OpCreate, Ordinal: 1, New: []Value{text("1"), text("open"), text("1"), text("n")}}},
		{"one big value", Change{Op: OpCreate, Ordinal: 1, New: []Value{text("1"), text(big), text("1"), text("n")}}},
		{"big values in data and old", Change{Op: OpUpdate, Ordinal: 1,
			Old: []Value{text("1"), text(big), text("1"), text(big)}, New: []Value{text("1"), text(big), text("2"), text(big)}}},
		{"unchanged listed after a big value", Change{Op: OpUpdate, Ordinal: 1, New: []Value{text("1"), text(big), text("1"), {Kind: KindUnchanged}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			whole := AppendEvent(nil, "shop", tbl, &txn, &tt.c)
			for _, limit := range []int{len(whole), len(whole) - 1, 1000, 10} {
				prefix := []byte("kept")
				out, size := AppendEventLimited(append(make([]byte, 0, 64), prefix...), "shop", tbl, &txn, &tt.c, limit)
				if size != len(whole) {
					t.Fatalf("limit %d: size %d, want %d", limit, size, len(whole))
				}
				if limit >= len(whole) {
					if string(out) != "kept"+string(whole) {
						t.Fatalf("limit %d: the event differs from AppendEvent's", limit)
					}
					continue
				}
				if string(out) != "kept" {
					t.Fatalf("limit %d: dst came back as %.40q…, want it as it was", limit, out)
				}
				if cap(out) > 2*(limit+len(big)*2+1024) {
					t.Fatalf("limit %d: the buffer grew to %d bytes for an event of %d", limit, cap(out), len(whole))
				}
			}
		})
	}
}

// TestAppendEventHead: the envelope without rows, ready for a claim or
// "truncated"; the key is the event's.
func TestAppendEventHead(t *testing.T) {
	var txn Txn
	txn.Reset(0x16B3748, 771, time.Date(2026, 11, 22, 7, 0, 0, 123456000, time.UTC))
	c := Change{Op: OpUpdate, Ordinal: 3, Old: []Value{text("41"), {Kind: KindNull}, {Kind: KindNull}, {Kind: KindNull}}, OldKeyOnly: true,
		New: []Value{text("42"), text("paid"), text("1"), text("n")}}
	got := string(AppendEventHead(nil, "shop", testTable(), &txn, &c)) + `,"truncated":true}`
	want := `{"id":"00000000016B3748-0003","op":"update","db":"shop","schema":"public","table":"Order \"Items\"","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":41},"truncated":true}`
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if key := string(AppendEventKey(nil, testTable(), &c)); key != `{"id":41}` {
		t.Fatalf("key %s", key)
	}
}

func TestParseEventID(t *testing.T) {
	var txn Txn
	txn.Reset(0x16B3748, 771, time.Unix(0, 0))
	for _, ord := range []uint32{1, 0xFFFF, 0x10000, 0xFFFFFFFF} {
		id := string(txn.AppendID(nil, ord))
		lsn, got, ok := ParseEventID(id)
		if !ok || lsn != 0x16B3748 || got != uint64(ord) {
			t.Errorf("ParseEventID(%q) = %X, %X, %v; want 16B3748, %X", id, lsn, got, ok, ord)
		}
	}
	for _, bad := range []string{"", "00000000016B3748", "00000000016B3748-", "00000000016B3748-001", "00000000016B3748_0001",
		"0000000016B3748-0001", "00000000016B3748-00G1", "00000000016B3748-00000000000000001", "id-1"} {
		if _, _, ok := ParseEventID(bad); ok {
			t.Errorf("ParseEventID(%q) accepted it", bad)
		}
	}
}

// TestSnapshotIDsSortBetween: a snapshot row read at position P sorts after
// a change committed before P and before one committed at P itself.
func TestSnapshotIDsSortBetween(t *testing.T) {
	const point = 0x16B3748
	var before, snap, at Txn
	before.Reset(point-0x38, 770, time.Unix(0, 0))
	snap.ResetSnapshot(point, time.Unix(0, 0))
	at.Reset(point, 771, time.Unix(0, 0))
	ids := []string{string(before.AppendID(nil, 0xFFFFF)), string(snap.AppendID(nil, 1)), string(snap.AppendID(nil, 0x12345)), string(at.AppendID(nil, 1))}
	for i := 1; i < len(ids); i++ {
		l0, o0, _ := ParseEventID(ids[i-1])
		l1, o1, _ := ParseEventID(ids[i])
		if l0 > l1 || l0 == l1 && o0 >= o1 {
			t.Errorf("id %s does not sort before %s", ids[i-1], ids[i])
		}
	}
	var e map[string]any
	ev := AppendEvent(nil, "shop", testTable(), &snap, &Change{Op: OpRead, Ordinal: 1, New: []Value{{Kind: KindText, Data: []byte("1")}}})
	if err := json.Unmarshal(ev, &e); err != nil {
		t.Fatal(err)
	}
	if e["lsn"] != "0/16B3748" || e["id"] != "00000000016B3747-0001" {
		t.Errorf("snapshot row: lsn %v id %v; want lsn 0/16B3748 and an id on the LSN before it", e["lsn"], e["id"])
	}
}
