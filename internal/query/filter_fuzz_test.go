package query

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

// fuzzRows are the rows every fuzzed filter is matched on: well-typed,
// all NULL, ill-typed, empty, and PostgreSQL's special values.
var fuzzRows = []string{
	testRow,
	`{"id":null,"big":null,"ratio":null,"total":null,"price":null,"status":null,"esc":null,"note":null,"paid":null,"created_at":null,"day":null,"meta":null,"mood":null,"toasted":null}`,
	`{"id":"x","big":true,"ratio":[],"total":{},"price":"$","status":1,"esc":false,"note":2,"paid":"t","created_at":3,"day":"x","meta":"m","mood":{"a":1}}`,
	`{}`,
	`{"id":-9223372036854775808,"big":1e400,"ratio":"NaN","total":"-Infinity","price":"($0.01)","status":"\u0000\ud800","esc":"\\\"","paid":false,"created_at":"-infinity","day":"0044-03-15 BC","meta":null,"mood":"","toasted":"t"}`,
}

func FuzzCompileWhere(f *testing.F) {
	for _, seed := range []string{
		`{"status":{"eq":"paid"},"total":{"gte":"10"}}`,
		`{"or":[{"id":{"in":[1,2,"3"]}},{"created_at":{"gte":"2026-11-01T00:00:00Z","lt":"infinity"}}]}`,
		`{"ratio":{"nin":["NaN",1e308]},"paid":{"is":"true"},"note":{"is":"null"}}`,
		`{"meta":{"eq":{"a":[1,2]}},"day":{"lt":"10000-01-01"},"mood":{"neq":"x"}}`,
		`{"price":{"gt":"-1.5e3"},"esc":{"lt":"caf\u00e9"}}`,
		`null`,
	} {
		f.Add([]byte(seed))
	}
	rows := make([]*Row, len(fuzzRows))
	for i, obj := range fuzzRows {
		rows[i] = mustRow(f, obj)
	}
	f.Fuzz(func(t *testing.T, where []byte) {
		flt, err := CompileWhere(where, "public.orders", testColumns)
		if err != nil {
			var fe *FilterError
			if !errors.As(err, &fe) || fe.Message == "" {
				t.Fatalf("CompileWhere error %T %v, want a *FilterError with a message", err, err)
			}
			if flt != nil {
				t.Fatal("CompileWhere returned a filter and an error")
			}
			return
		}
		for _, col := range flt.Columns() {
			if _, ok := testColumns[col]; !ok {
				t.Fatalf("Columns lists %q, not a column", col)
			}
		}
		for _, row := range rows {
			ok, err := flt.Match(row)
			if err != nil {
				var ee *EvalError
				if !errors.As(err, &ee) || ok {
					t.Fatalf("Match = %v, %T %v; want false and an *EvalError", ok, err, err)
				}
			}
		}
	})
}

func FuzzRowReset(f *testing.F) {
	for _, seed := range []string{
		testRow,
		`{}`,
		` {"a": 1, "a": [2, {"b": "\u00e9"}], "\u0061": null} `,
		`{"\ud800": "x", "\ud83d\ude00": 1e-7, "k\"ey": -0.5E+3}`,
		`{"a":{"b":{"c":[[[]]]}}, "t": true, "f": false}`,
		`[1]`,
		`{"a":}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, obj []byte) {
		var r Row
		err := r.Reset(obj)
		var m map[string]json.RawMessage
		isObject := json.Valid(obj) && json.Unmarshal(obj, &m) == nil && m != nil
		if err != nil {
			if isObject {
				t.Fatalf("Reset(%q): %v; encoding/json reads it as an object", obj, err)
			}
			if r.Len() != 0 {
				t.Fatalf("Reset failed but left %d members", r.Len())
			}
			return
		}
		if !isObject {
			t.Fatalf("Reset(%q) succeeded; encoding/json does not read it as an object", obj)
		}
		for key, want := range m {
			got, ok := r.Get(key)
			if !ok {
				t.Fatalf("Get(%q): not found", key)
			}
			var g, w bytes.Buffer
			if err := json.Compact(&g, got); err != nil {
				t.Fatalf("Get(%q) = %q: %v", key, got, err)
			}
			if err := json.Compact(&w, want); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(g.Bytes(), w.Bytes()) {
				t.Fatalf("Get(%q) = %s, encoding/json says %s", key, got, want)
			}
		}
		if r.Len() < len(m) {
			t.Fatalf("Len = %d, fewer than the %d distinct names", r.Len(), len(m))
		}
	})
}
