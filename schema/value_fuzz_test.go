package schema

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/tablecast/tablecast/internal/jsonx"
)

// fuzzOIDs are the types FuzzAppendValue picks from by index: one or more
// per code path of AppendValue.
var fuzzOIDs = []uint32{
	pgtype.Int4OID, pgtype.Int8OID, pgtype.Float8OID, pgtype.NumericOID,
	pgtype.BoolOID, pgtype.TextOID, pgtype.JSONOID, pgtype.JSONBOID,
	pgtype.ByteaOID, pgtype.TimestamptzOID, pgtype.TimestampOID, pgtype.DateOID,
	pgtype.Int4ArrayOID, pgtype.TextArrayOID, pgtype.Float8ArrayOID,
	pgtype.JSONBArrayOID, pgtype.TimestamptzArrayOID, pgtype.ByteaArrayOID,
	pgtype.BoxArrayOID, pgtype.BoolArrayOID, userTypeOID,
}

func FuzzAppendValue(f *testing.F) {
	for _, tc := range valueCases {
		for i, o := range fuzzOIDs {
			if o == tc.oid {
				f.Add(uint8(i), []byte(tc.text))
			}
		}
	}
	// More seeds live in testdata/fuzz/FuzzAppendValue.

	f.Fuzz(func(t *testing.T, idx uint8, text []byte) {
		oid := fuzzOIDs[int(idx)%len(fuzzOIDs)]
		prefix := []byte(`{"v":`)
		out := AppendValue(prefix, oid, text)
		if !bytes.HasPrefix(out, []byte(`{"v":`)) {
			t.Fatalf("dst prefix overwritten: %q", out)
		}
		v := out[len(prefix):]
		if !json.Valid(v) {
			t.Fatalf("AppendValue(%d, %q) = %q: not valid JSON", oid, text, v)
		}
		if !utf8.Valid(v) {
			t.Fatalf("AppendValue(%d, %q) = %q: not valid UTF-8", oid, text, v)
		}

		str := jsonx.AppendStringBytes(nil, text)
		fellBack := bytes.Equal(v, str)
		switch oid {
		case pgtype.TimestamptzOID, pgtype.TimestampOID:
			if fellBack {
				break
			}
			layout := time.RFC3339Nano
			if oid == pgtype.TimestampOID {
				layout = "2006-01-02T15:04:05.999999999"
			}
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				t.Fatalf("timestamp %q → %s: %v", text, v, err)
			}
			if _, err := time.Parse(layout, s); err != nil {
				t.Fatalf("timestamp %q → %s: not RFC 3339: %v", text, v, err)
			}
		case pgtype.ByteaOID:
			if fellBack || !bytes.HasPrefix(text, []byte(`\x`)) {
				break
			}
			want, err := hex.DecodeString(string(text[2:]))
			if err != nil {
				t.Fatalf("bytea %q: accepted invalid hex", text)
			}
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				t.Fatalf("bytea %q → %s: %v", text, v, err)
			}
			got, err := base64.StdEncoding.DecodeString(s)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("bytea %q → %s: decodes to %x, want %x (%v)", text, v, got, want, err)
			}
		case pgtype.Int4ArrayOID, pgtype.TextArrayOID, pgtype.Float8ArrayOID,
			pgtype.JSONBArrayOID, pgtype.TimestamptzArrayOID, pgtype.ByteaArrayOID,
			pgtype.BoxArrayOID, pgtype.BoolArrayOID:
			if v[0] != '[' && !fellBack {
				t.Fatalf("array %q → %s: neither an array nor the text", text, v)
			}
		}
	})
}
