package tablecast

import (
	"encoding/json"
	"testing"
)

// FuzzParseEvent: any message either parses or is refused with
// ErrNotEvent, and every accessor of a parsed event answers without
// panicking; a parsed event's rows survive a round trip through JSON.
func FuzzParseEvent(f *testing.F) {
	for _, seed := range []string{
		`{"id":"00000000016B3748-0003","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"id":42,"status":"paid","total":"19.90","f":"NaN","t":"infinity","b":"AP8=","j":{"a":[1]}},"old":{"id":42},"unchanged":["notes"]}`,
		`{"id":"00000000016B3748-0001","op":"create","db":"shop","schema":"public","table":"docs","key":{"id":1},"claim":{"bucket":"TABLECAST_PAYLOADS","object":"shop/00000000016B3748-0001","size":9000267}}`,
		`{"id":"1-1","op":"delete","key":{"id":1},"truncated":true}`,
		`{"op":"create"}`, `[]`, `null`, `{"id":"x","op":"create","data":{"n":null,"i":1e400}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := ParseEvent(b)
		if err != nil {
			return
		}
		if ev.ID == "" || ev.Op == "" {
			t.Fatalf("parsed an event without id or op: %q", b)
		}
		for _, r := range []Row{ev.Key, ev.Data, ev.Old, ev.Row()} {
			for col := range r {
				r.Has(col)
				r.IsNull(col)
				_, _ = r.String(col)
				_, _ = r.Int64(col)
				_, _ = r.Float64(col)
				_, _ = r.Numeric(col)
				_, _ = r.Bool(col)
				_, _ = r.Time(col)
				_, _ = r.Bytes(col)
				var v any
				_ = r.Decode(col, &v)
			}
			out, err := json.Marshal(r)
			if err != nil {
				t.Fatalf("row of %q does not marshal: %v", b, err)
			}
			var back Row
			if err := json.Unmarshal(out, &back); err != nil || len(back) != len(r) {
				t.Fatalf("row of %q: round trip %s, %v", b, out, err)
			}
		}
		ev.IsUnchanged("x")
	})
}
