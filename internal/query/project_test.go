package query

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/schema"
)

// Envelopes as the reader writes them (schema.AppendEvent).
const (
	projectCreate   = `{"id":"00000000016B3748-0001","op":"create","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"id":42,"status":"open","total":"19.90","notes":null}}`
	projectUpdate   = `{"id":"00000000016B3748-0002","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"id":42,"status":"paid","total":"19.90"},"old":{"id":42,"status":"open","total":"19.90"},"unchanged":["notes","blob"]}`
	projectDelete   = `{"id":"00000000016B3748-0003","op":"delete","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"old":{"id":42,"status":"paid","total":"19.90","notes":"x"}}`
	projectTruncate = `{"id":"00000000016B3748-0004","op":"truncate","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{}}`
)

// projectHead is what every test envelope below shares before its rows.
const projectHead = `"id":"1","op":"update","db":"shop","schema":"public","table":"t","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z"`

// decodeWithNumbers decodes s with encoding/json, numbers as json.Number so that
// they compare by their text.
func decodeWithNumbers(t testing.TB, s []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(s))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	if d.More() {
		t.Fatalf("decode %s: trailing data", s)
	}
	return v
}

func TestNewProjection(t *testing.T) {
	tests := []struct {
		name    string
		columns []string
		nilWant bool
		want    []string
		key     string
	}{
		{"nil", nil, true, nil, ""},
		{"empty", []string{}, true, nil, ""},
		{"one", []string{"id"}, false, []string{"id"}, "id"},
		{"sorted", []string{"status", "id", "Total"}, false, []string{"Total", "id", "status"}, "Total\x00id\x00status"},
		{"duplicates", []string{"id", "status", "id", "id"}, false, []string{"id", "status"}, "id\x00status"},
		{"case sensitive", []string{"id", "ID"}, false, []string{"ID", "id"}, "ID\x00id"},
		{"unicode", []string{"é", "😀", "a"}, false, []string{"a", "é", "😀"}, "a\x00é\x00😀"},
		// Names no PostgreSQL column has: their keys must not collide
		// with nil's "" or with the join of other names.
		{"empty name", []string{""}, false, []string{""}, "\x00\x00"},
		{"NUL in name", []string{"a\x00b"}, false, []string{"a\x00b"}, "\x00\x03a\x00b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.columns)
			p := NewProjection(in)
			if (p == nil) != tt.nilWant {
				t.Fatalf("NewProjection(%q) = %v, want nil: %v", tt.columns, p, tt.nilWant)
			}
			if got := p.Columns(); !slices.Equal(got, tt.want) {
				t.Errorf("Columns = %q, want %q", got, tt.want)
			}
			if got := p.Key(); got != tt.key {
				t.Errorf("Key = %q, want %q", got, tt.key)
			}
			if !slices.Equal(in, tt.columns) {
				t.Errorf("NewProjection changed its argument to %q", in)
			}
			if p != nil {
				p.Columns()[0] = "changed"
				if got := p.Columns(); !slices.Equal(got, tt.want) {
					t.Errorf("Columns after changing its result = %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestProjectionKeyDistinct(t *testing.T) {
	lists := [][]string{
		nil, {""}, {"a"}, {"b"}, {"a", "b"}, {"a\x00b"}, {"", "a"}, {"a", ""},
		{"\x00"}, {"\x00", "a"}, {"ab"}, {"a", "b", "c"}, {"a\x00b", "c"}, {"a", "b\x00c"},
	}
	seen := map[string][]string{}
	for _, cols := range lists {
		p := NewProjection(cols)
		if prev, ok := seen[p.Key()]; ok && !slices.Equal(prev, p.Columns()) {
			t.Errorf("Key(%q) = Key(%q) = %q", p.Columns(), prev, p.Key())
		}
		seen[p.Key()] = p.Columns()
	}
}

func TestProjectEvent(t *testing.T) {
	wide := make([]string, 50)
	for i := range wide {
		wide[i] = fmt.Sprintf("c%02d", i)
	}
	wide[17] = "status"
	tests := []struct {
		name   string
		sel    []string
		event  string
		want   string
		asIs   bool // want is byte for byte, not only the same JSON
		nilSel bool // select nil, not sel
	}{
		{
			name:  "create",
			sel:   []string{"id", "status"},
			event: projectCreate,
			want:  `{"id":"00000000016B3748-0001","op":"create","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"id":42,"status":"open"}}`,
			asIs:  true,
		},
		{
			name:  "create keeps column order",
			sel:   []string{"notes", "id"},
			event: projectCreate,
			want:  `{"id":"00000000016B3748-0001","op":"create","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"id":42,"notes":null}}`,
			asIs:  true,
		},
		{
			name:  "update with old and unchanged",
			sel:   []string{"status", "notes"},
			event: projectUpdate,
			want:  `{"id":"00000000016B3748-0002","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"status":"paid"},"old":{"status":"open"},"unchanged":["notes"]}`,
			asIs:  true,
		},
		{
			name:  "update unchanged emptied",
			sel:   []string{"total"},
			event: projectUpdate,
			want:  `{"id":"00000000016B3748-0002","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"total":"19.90"},"old":{"total":"19.90"}}`,
			asIs:  true,
		},
		{
			name:  "update unchanged kept whole",
			sel:   []string{"blob", "notes", "id"},
			event: projectUpdate,
			want:  `{"id":"00000000016B3748-0002","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"id":42},"old":{"id":42},"unchanged":["notes","blob"]}`,
			asIs:  true,
		},
		{
			name:  "unchanged first, emptied",
			sel:   []string{"id"},
			event: `{"unchanged":["notes"],"data":{"id":1,"x":2}}`,
			want:  `{"data":{"id":1}}`,
			asIs:  true,
		},
		{
			name:  "unchanged only member, emptied",
			sel:   []string{"id"},
			event: `{"unchanged":["notes"]}`,
			want:  `{}`,
			asIs:  true,
		},
		{
			name:  "unchanged empty to begin with",
			sel:   []string{"id"},
			event: `{"key":{"id":1},"unchanged":[ ]}`,
			want:  `{"key":{"id":1}}`,
			asIs:  true,
		},
		{
			name:  "unchanged not strings",
			sel:   []string{"id"},
			event: `{"unchanged":["id",1,"x"],"x":{}}`,
			want:  `{"unchanged":["id",1,"x"],"x":{}}`,
			asIs:  true,
		},
		{
			name:  "unchanged not an array",
			sel:   []string{"id"},
			event: `{"unchanged":"id"}`,
			want:  `{"unchanged":"id"}`,
			asIs:  true,
		},
		{
			name:  "delete",
			sel:   []string{"status"},
			event: projectDelete,
			want:  `{"id":"00000000016B3748-0003","op":"delete","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"old":{"status":"paid"}}`,
			asIs:  true,
		},
		{
			name:  "delete key not projected",
			sel:   []string{"notes"},
			event: `{` + projectHead + `,"key":{"id":42,"region":"eu"},"old":{"id":42,"region":"eu","notes":"x"}}`,
			want:  `{` + projectHead + `,"key":{"id":42,"region":"eu"},"old":{"notes":"x"}}`,
			asIs:  true,
		},
		{
			name:  "truncate",
			sel:   []string{"id"},
			event: projectTruncate,
			want:  projectTruncate,
			asIs:  true,
		},
		{
			name:  "select envelope id",
			sel:   []string{"id"},
			event: `{` + projectHead + `,"key":{"order_id":7},"data":{"order_id":7,"status":"x"}}`,
			want:  `{` + projectHead + `,"key":{"order_id":7},"data":{}}`,
			asIs:  true,
		},
		{
			name:  "select envelope names",
			sel:   []string{"op", "table", "data", "key", "unchanged"},
			event: `{` + projectHead + `,"key":{"id":7},"data":{"id":7,"table":"t","data":{"x":1}},"unchanged":["key","notes"]}`,
			want:  `{` + projectHead + `,"key":{"id":7},"data":{"table":"t","data":{"x":1}},"unchanged":["key"]}`,
			asIs:  true,
		},
		{
			name:  "missing column",
			sel:   []string{"status", "nope"},
			event: `{"data":{"id":1,"status":"a"},"old":{"id":1}}`,
			want:  `{"data":{"status":"a"},"old":{}}`,
			asIs:  true,
		},
		{
			name:  "empty rows",
			sel:   []string{"id"},
			event: `{"data":{},"old":{ }}`,
			want:  `{"data":{},"old":{}}`,
			asIs:  true,
		},
		{
			name:  "escaped row names",
			sel:   []string{"status", `a"b`, `back\slash`, "tab\t", "sl/ash"},
			event: `{"data":{"st\u0061tus":1,"a\"b":2,"back\\slash":3,"tab\t":4,"sl\/ash":5,"a\\\"b":6,"other":7}}`,
			want:  `{"data":{"st\u0061tus":1,"a\"b":2,"back\\slash":3,"tab\t":4,"sl\/ash":5}}`,
			asIs:  true,
		},
		{
			name:  "unicode row names",
			sel:   []string{"café", "😀", "日本"},
			event: `{"data":{"caf\u00e9":1,"café":2,"\ud83d\ude00":3,"😀":4,"cafe":5,"日本":6,"\u65e5\u672C":7,"\ud83d":8}}`,
			want:  `{"data":{"caf\u00e9":1,"café":2,"\ud83d\ude00":3,"😀":4,"日本":6,"\u65e5\u672C":7}}`,
			asIs:  true,
		},
		{
			name:  "lone surrogate reads as U+FFFD",
			sel:   []string{"\uFFFD"},
			event: `{"data":{"\ud83d":1,"\uFFFD":2,"x":3}}`,
			want:  `{"data":{"\ud83d":1,"\uFFFD":2}}`,
			asIs:  true,
		},
		{
			name:  "escaped envelope names",
			sel:   []string{"id"},
			event: `{"d\u0061ta":{"id":1,"x":2},"\u006fld":{"id":1,"x":2},"unch\u0061nged":["x"],"k\u0065y":{"id":1,"x":2}}`,
			want:  `{"d\u0061ta":{"id":1},"\u006fld":{"id":1},"k\u0065y":{"id":1,"x":2}}`,
			asIs:  true,
		},
		{
			name:  "names near the envelope's",
			sel:   []string{"id"},
			event: `{"Data":{"id":1,"x":2},"olds":{"x":1},"dat":{"x":1},"datä":{"x":1}}`,
			want:  `{"Data":{"id":1,"x":2},"olds":{"x":1},"dat":{"x":1},"datä":{"x":1}}`,
			asIs:  true,
		},
		{
			name:  "nested values",
			sel:   []string{"meta", "tags", "s"},
			event: `{"key":{"id":1},"data":{"id":1,"meta":{"a":{"b":[1,{"c":"}"}]},"data":{"id":2},"q":"\"}"},"x":{"meta":1},"s":"}\",{\"","tags":["a","}",[],{}],"n":[[{"s":"]"}]]}}`,
			want:  `{"key":{"id":1},"data":{"meta":{"a":{"b":[1,{"c":"}"}]},"data":{"id":2},"q":"\"}"},"s":"}\",{\"","tags":["a","}",[],{}]}}`,
			asIs:  true,
		},
		{
			name:  "values keep their bytes",
			sel:   []string{"f", "j", "t"},
			event: `{"data":{"f":1.50E+3,"j":{ "a" : [ 1 , 2 ] },"t":"caf\u00e9\/","x":0}}`,
			want:  `{"data":{"f":1.50E+3,"j":{ "a" : [ 1 , 2 ] },"t":"caf\u00e9\/"}}`,
			asIs:  true,
		},
		{
			name:  "white space",
			sel:   []string{"id"},
			event: " \n{ \"id\" : \"x\" ,\t\"key\" : { \"id\" : 1 } , \"data\" : { \"id\" : 1 , \"x\" : 2 } ,\r\n \"unchanged\" : [ \"x\" , \"id\" ] } \n",
			want:  `{"id":"x","key":{ "id" : 1 },"data":{"id":1},"unchanged":["id"]}`,
			asIs:  true,
		},
		{
			name:  "rows not objects",
			sel:   []string{"id"},
			event: `{"data":null,"old":[{"id":1,"x":2}],"key":"k"}`,
			want:  `{"data":null,"old":[{"id":1,"x":2}],"key":"k"}`,
			asIs:  true,
		},
		{
			name:  "unknown members",
			sel:   []string{"id"},
			event: `{"future":{"id":1,"x":2},"data":{"x":1,"id":2},"more":[1]}`,
			want:  `{"future":{"id":1,"x":2},"data":{"id":2},"more":[1]}`,
			asIs:  true,
		},
		{
			name:  "duplicate row names",
			sel:   []string{"id"},
			event: `{"data":{"id":1,"x":2,"id":3}}`,
			want:  `{"data":{"id":1,"id":3}}`,
			asIs:  true,
		},
		{
			name:  "fifty names",
			sel:   wide,
			event: `{"data":{"c00":0,"status":"s","c49":49,"c50":50,"id":1,"c17":17,"c\u0031\u0030":10}}`,
			want:  `{"data":{"c00":0,"status":"s","c49":49,"c\u0031\u0030":10}}`,
			asIs:  true,
		},
		{
			name:   "nil selects all",
			nilSel: true,
			event:  " " + projectUpdate + "\n",
			want:   " " + projectUpdate + "\n",
			asIs:   true,
		},
		{
			name:  "empty envelope",
			sel:   []string{"id"},
			event: ` { } `,
			want:  `{}`,
			asIs:  true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p *Projection
			if !tt.nilSel {
				p = NewProjection(tt.sel)
				if p == nil {
					t.Fatalf("NewProjection(%q) = nil", tt.sel)
				}
			}
			prefix := []byte("frame:")
			got, err := p.AppendEvent(prefix, []byte(tt.event))
			if err != nil {
				t.Fatalf("AppendEvent(%s): %v", tt.event, err)
			}
			if !bytes.HasPrefix(got, prefix) {
				t.Fatalf("AppendEvent lost dst: %q", got)
			}
			got = got[len(prefix):]
			if !json.Valid(got) {
				t.Fatalf("AppendEvent(%s) = %s, not valid JSON", tt.event, got)
			}
			if tt.asIs && string(got) != tt.want {
				t.Errorf("AppendEvent(%s)\n got %s\nwant %s", tt.event, got, tt.want)
			}
			if g, w := decodeWithNumbers(t, got), decodeWithNumbers(t, []byte(tt.want)); !reflect.DeepEqual(g, w) {
				t.Errorf("AppendEvent(%s)\n got %v\nwant %v", tt.event, g, w)
			}
		})
	}
}

// readerEvents returns envelopes written by the reader's encoder
// (schema.AppendEvent) for a table whose column names need escaping, with a
// jsonb column, TOASTed values left unchanged, old rows and keys.
func readerEvents() [][]byte {
	tbl := &schema.Table{RelationID: 1, Schema: "public", Name: `Order "Items"`, ReplicaIdentity: 'f', Columns: []schema.Column{
		{Name: "id", TypeOID: 20, Key: true},
		{Name: "status", TypeOID: 25, Key: true},
		{Name: "total", TypeOID: 1700, Key: true},
		{Name: `caf"é`, TypeOID: 25, Key: true},
		{Name: "meta", TypeOID: 3802, Key: true},
		{Name: "tags", TypeOID: 1009, Key: true}, // text[]
		{Name: "notes", TypeOID: 25, Key: true},
	}}
	var txn schema.Txn
	txn.Reset(0x16B3748, 771, time.Date(2026, 11, 22, 7, 0, 0, 123456000, time.UTC))
	text := func(s string) schema.Value { return schema.Value{Kind: schema.KindText, Data: []byte(s)} }
	null := schema.Value{Kind: schema.KindNull}
	unchanged := schema.Value{Kind: schema.KindUnchanged}
	row := []schema.Value{text("42"), text("paid"), text("19.90"), text(`a "b" }`), text(`{"a": [1, "}", {"id": 2}], "status": null}`), text(`{x,"y}",NULL}`), unchanged}
	old := []schema.Value{text("42"), text("open"), text("19.90"), null, text(`[]`), text(`{}`), unchanged}
	changes := []schema.Change{
		{Op: schema.OpCreate, Ordinal: 1, New: []schema.Value{text("42"), text("open"), text("19.90"), text("é"), text(`{"k": "v"}`), null, text("n")}},
		{Op: schema.OpUpdate, Ordinal: 2, New: row, Old: old},
		{Op: schema.OpUpdate, Ordinal: 3, New: row},
		{Op: schema.OpDelete, Ordinal: 4, Old: old},
		{Op: schema.OpRead, Ordinal: 5, New: []schema.Value{text("1"), null, null, null, null, null, null}},
		{Op: schema.OpTruncate, Ordinal: 6},
	}
	events := make([][]byte, len(changes))
	for i := range changes {
		events[i] = schema.AppendEvent(nil, "shop", tbl, &txn, &changes[i])
	}
	return events
}

func TestProjectReaderEvents(t *testing.T) {
	for _, cols := range [][]string{nil, {"id"}, {"status", "notes"}, {`caf"é`, "meta"}, {"tags", "nope"}, {"id", "status", "total", `caf"é`, "meta", "tags", "notes"}} {
		p := NewProjection(cols)
		for _, event := range readerEvents() {
			got, err := p.AppendEvent(nil, event)
			if err != nil {
				t.Fatalf("%q: AppendEvent(%s): %v", cols, event, err)
			}
			env, _ := decodeEnvelope(event)
			want := referenceProject(env, p)
			if out, ok := decodeEnvelope(got); !ok || !reflect.DeepEqual(out, want) {
				t.Errorf("%q: AppendEvent(%s)\n = %s\nwant %v", cols, event, got, want)
			}
		}
	}
}

func TestProjectEventErrors(t *testing.T) {
	deep := func(n int, inner string) string {
		return strings.Repeat("[", n) + inner + strings.Repeat("]", n)
	}
	tests := []struct {
		name  string
		event string
	}{
		{"empty", ``},
		{"space", " \n"},
		{"null", `null`},
		{"array", `[{"data":{}}]`},
		{"string", `"{}"`},
		{"number", `1`},
		{"two objects", `{"a":1}{"b":2}`},
		{"trailing comma", `{"a":1},`},
		{"trailing garbage", `{"data":{"id":1}} x`},
		{"truncated", `{"id":"1","data":{"id":1`},
		{"truncated in row name", `{"data":{"i`},
		{"truncated after row name", `{"data":{"id"`},
		{"truncated after colon", `{"data":{"id":`},
		{"truncated row", `{"data":{"id":1,`},
		{"truncated string", `{"id":"1`},
		{"truncated unchanged", `{"unchanged":["a"`},
		{"unclosed", `{"id":1`},
		{"missing colon", `{"id" 1}`},
		{"missing value", `{"id":}`},
		{"bad literal", `{"id":tru}`},
		{"bad number", `{"data":{"id":01}}`},
		{"bad escape", `{"data":{"\x":1}}`},
		{"bad unicode escape", `{"data":{"\u12":1}}`},
		{"control char in name", "{\"data\":{\"a\tb\":1}}"},
		{"control char in value", "{\"data\":{\"a\":\"\n\"}}"},
		{"unquoted name", `{data:{}}`},
		{"trailing comma in row", `{"data":{"id":1,}}`},
		{"trailing comma in envelope", `{"id":1,}`},
		{"row closed by bracket", `{"data":{"id":1]}`},
		{"bad nested value", `{"data":{"m":{"a":[1,]}}}`},
		{"bad unchanged", `{"unchanged":["a",]}`},
		{"bad old", `{"old":{"a" 1}}`},
		{"bad key", `{"key":{"id":}}`},
		// encoding/json allows 10000 levels: the envelope, data, then 9998.
		{"too deep in data", `{"data":{"a":` + deep(9999, "") + `}}`},
		{"too deep in data later", `{"data":{"a":` + deep(9999, "") + `,"b":1}}`},
		{"too deep in old", `{"old":{"b":1,"a":` + deep(9999, "") + `}}`},
		{"too deep in key", `{"key":` + deep(10000, "") + `}`},
	}
	for _, p := range []*Projection{nil, NewProjection([]string{"id"}), NewProjection([]string{"a", "b"})} {
		for _, tt := range tests {
			t.Run(p.Key()+"/"+tt.name, func(t *testing.T) {
				var m map[string]any
				if err := json.Unmarshal([]byte(tt.event), &m); err == nil && m != nil {
					t.Fatalf("encoding/json reads %.100s as an object", tt.event)
				}
				dst := make([]byte, 3, 64)
				copy(dst, "abc")
				got, err := p.AppendEvent(dst, []byte(tt.event))
				if err == nil {
					t.Fatalf("AppendEvent(%.100s) = %.100s, want an error", tt.event, got)
				}
				if !errors.Is(err, jsonx.ErrSyntax) && !errors.Is(err, jsonx.ErrNotObject) && !errors.Is(err, jsonx.ErrTooDeep) {
					t.Errorf("error %v does not wrap a JSON syntax error", err)
				}
				if string(got) != "abc" || len(got) != len(dst) {
					t.Errorf("AppendEvent on error returned %q, want dst (%q) unchanged", got, dst)
				}
			})
		}
	}
}

// TestProjectEventDepth checks the nesting limit where it is: encoding/json's.
func TestProjectEventDepth(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	for _, event := range []string{
		`{"data":{"a":` + deep(9998) + `}}`,
		`{"old":{"a":` + deep(9998) + `,"b":1}}`,
		`{"key":` + deep(9999) + `}`,
		`{"unchanged":` + deep(9999) + `}`,
	} {
		for _, p := range []*Projection{nil, NewProjection([]string{"a"}), NewProjection([]string{"b"})} {
			if !json.Valid([]byte(event)) {
				t.Fatalf("encoding/json refuses %.40s…", event)
			}
			got, err := p.AppendEvent(nil, []byte(event))
			if err != nil {
				t.Errorf("%q: AppendEvent(%.40s…): %v", p.Columns(), event, err)
			} else if !json.Valid(got) {
				t.Errorf("%q: AppendEvent(%.40s…) is not valid JSON", p.Columns(), event)
			}
		}
	}
}

// builtWithRace reports whether the test binary was built with -race, which
// makes sync.Pool drop items on purpose: allocation counts mean nothing then.
func builtWithRace() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// projectBenchEvent returns an update envelope of a table of n columns, c00…, with
// old and unchanged, and values of the usual kinds.
func projectBenchEvent(n int) []byte {
	var row strings.Builder
	for i := range n {
		if i > 0 {
			row.WriteByte(',')
		}
		switch i % 5 {
		case 0:
			fmt.Fprintf(&row, `"c%02d":%d`, i, 1000+i)
		case 1:
			fmt.Fprintf(&row, `"c%02d":"status-%d"`, i, i)
		case 2:
			fmt.Fprintf(&row, `"c%02d":"%d.50"`, i, i)
		case 3:
			fmt.Fprintf(&row, `"c%02d":"2026-11-22T07:00:%02d.123456Z"`, i, i%60)
		case 4:
			fmt.Fprintf(&row, `"c%02d":{"a":[1,2,"x"],"b":null}`, i)
		}
	}
	return fmt.Appendf(nil, `{"id":"00000000016B3748-0002","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"c00":1000},"data":{%s},"old":{%s},"unchanged":["c%02d"]}`,
		row.String(), row.String(), n-1)
}

// projectBenchColumns returns k column names of projectBenchEvent's table, spread over it.
func projectBenchColumns(n, k int) []string {
	cols := make([]string, k)
	for i := range cols {
		cols[i] = fmt.Sprintf("c%02d", i*n/k)
	}
	return cols
}

var projectCases = []struct {
	name         string
	columns, sel int
}{
	{"10cols/select2", 10, 2},
	{"10cols/nil", 10, 0},
	{"50cols/select2", 50, 2},
	{"50cols/select10", 50, 10},
	{"50cols/select50", 50, 50},
	{"50cols/nil", 50, 0},
}

func TestProjectEventAllocs(t *testing.T) {
	if builtWithRace() {
		t.Skip("sync.Pool drops items under the race detector")
	}
	for _, c := range projectCases {
		event := projectBenchEvent(c.columns)
		p := NewProjection(projectBenchColumns(c.columns, c.sel))
		dst := make([]byte, 0, 2*len(event))
		n := testing.AllocsPerRun(200, func() {
			var err error
			if dst, err = p.AppendEvent(dst[:0], event); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("%s: AppendEvent allocates %v times per event, want 0", c.name, n)
		}
	}
	// Escaped and non-ASCII names take the decoding comparison.
	event := []byte(`{"key":{"id":1},"data":{"caf\u00e9":1,"😀":2,"st\u0061tus":"x","id":1},"unchanged":["caf\u00e9","x"]}`)
	p := NewProjection([]string{"café", "status"})
	dst := make([]byte, 0, 2*len(event))
	if n := testing.AllocsPerRun(200, func() { dst, _ = p.AppendEvent(dst[:0], event) }); n != 0 {
		t.Errorf("escaped names: AppendEvent allocates %v times per event, want 0", n)
	}
}

// TestProjectEventConcurrent shares one Projection between goroutines; run
// it with -race.
func TestProjectEventConcurrent(t *testing.T) {
	p := NewProjection([]string{"status", "notes"})
	want, err := p.AppendEvent(nil, []byte(projectUpdate))
	if err != nil {
		t.Fatal(err)
	}
	events := [][]byte{[]byte(projectUpdate), []byte(projectCreate), []byte(projectDelete), projectBenchEvent(50)}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			var dst []byte
			for i := range 200 {
				var err error
				dst, err = p.AppendEvent(dst[:0], events[(g+i)%len(events)])
				if err != nil {
					t.Error(err)
					return
				}
				if (g+i)%len(events) == 0 && !bytes.Equal(dst, want) {
					t.Errorf("concurrent AppendEvent = %s, want %s", dst, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkProjectEvent(b *testing.B) {
	for _, c := range projectCases {
		b.Run(c.name, func(b *testing.B) {
			event := projectBenchEvent(c.columns)
			p := NewProjection(projectBenchColumns(c.columns, c.sel))
			dst := make([]byte, 0, 2*len(event))
			b.ReportAllocs()
			b.SetBytes(int64(len(event)))
			for b.Loop() {
				var err error
				if dst, err = p.AppendEvent(dst[:0], event); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// projectMoveHead is the head of an update that moves a row between
// tenants; the key holds a column of the row policy's, as a composite
// primary key (tenant, id) does.
const projectMove = `{"id":"1","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z",` +
	`"key":{"tenant":"acme","id":42},"data":{"id":42,"tenant":"globex","secret":"s-new","notes":"n"},` +
	`"old":{"id":42,"tenant":"acme","secret":"s-old","notes":"n"},"unchanged":["blob","secret"]}`

func TestGrantedProjection(t *testing.T) {
	tests := []struct {
		name              string
		sel, granted      []string
		event, want       string
		columns, wantKeys []string
	}{
		{
			name: "grant alone", granted: []string{"tenant", "id", "notes"}, event: projectMove,
			want: `{"id":"1","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z",` +
				`"key":{"tenant":"acme","id":42},"data":{"id":42,"tenant":"globex","notes":"n"},"old":{"id":42,"tenant":"acme","notes":"n"}}`,
			columns: []string{"id", "notes", "tenant"},
		},
		{
			name: "key keeps granted columns only, select or not", sel: []string{"notes"}, granted: []string{"id", "notes"}, event: projectMove,
			want: `{"id":"1","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z",` +
				`"key":{"id":42},"data":{"notes":"n"},"old":{"notes":"n"}}`,
			columns: []string{"notes"},
		},
		{
			name: "select of a column not granted shows nothing of it", sel: []string{"secret", "id"}, granted: []string{"id"}, event: projectMove,
			want: `{"id":"1","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z",` +
				`"key":{"id":42},"data":{"id":42},"old":{"id":42}}`,
			columns: []string{"id"},
		},
		{
			name: "no column granted", granted: []string{}, event: projectMove,
			want: `{"id":"1","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z",` +
				`"key":{},"data":{},"old":{}}`,
			columns: []string{},
		},
		{
			name: "unchanged keeps granted names", granted: []string{"blob", "id"}, event: projectMove,
			want: `{"id":"1","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z",` +
				`"key":{"id":42},"data":{"id":42},"old":{"id":42},"unchanged":["blob"]}`,
			columns: []string{"blob", "id"},
		},
		{
			name: "escaped names", granted: []string{"tenant", "id"},
			event: `{"k\u0065y":{"t\u0065nant":"acme","secret":1},"data":{"t\u0065nant":"x","secret":2}}`,
			want:  `{"k\u0065y":{"t\u0065nant":"acme"},"data":{"t\u0065nant":"x"}}`, columns: []string{"id", "tenant"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewGrantedProjection(tt.sel, tt.granted)
			if got := p.Columns(); !slices.Equal(got, tt.columns) {
				t.Errorf("Columns = %q, want %q", got, tt.columns)
			}
			got, err := p.AppendEvent(nil, []byte(tt.event))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("AppendEvent =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// TestProjectionKeyDistinctGranted: a column grant is part of the key, so
// that subscriptions of identities with different grants never share
// frames, even with the same select list.
func TestProjectionKeyDistinctGranted(t *testing.T) {
	type proj struct {
		sel, granted []string
		grant        bool
	}
	projs := []proj{
		{nil, nil, false}, {[]string{"a"}, nil, false}, {[]string{""}, nil, false}, {[]string{"", "a"}, nil, false},
		{[]string{"a\x00b"}, nil, false}, {[]string{"\x00"}, nil, false}, {[]string{"a", "b"}, nil, false},
		{nil, []string{}, true}, {nil, []string{"a"}, true}, {[]string{"a"}, []string{"a"}, true},
		{[]string{"a"}, []string{"a", "b"}, true}, {nil, []string{"a", "b"}, true}, {[]string{"b"}, []string{"a", "b"}, true},
		{nil, []string{""}, true}, {nil, []string{"", "a"}, true}, {nil, []string{"\x00"}, true}, {nil, []string{"\x00\x00"}, true},
		{[]string{"a\x00b"}, []string{"a\x00b", "c"}, true}, {nil, []string{"a\x00b", "c"}, true},
	}
	// What each keeps, worked out here: rows, then key ("all" for every
	// column).
	keeps := func(pr proj) string {
		set := func(list []string) []string {
			out := slices.Clone(list)
			slices.Sort(out)
			return slices.Compact(out)
		}
		switch {
		case !pr.grant && len(pr.sel) == 0:
			return "all / all"
		case !pr.grant:
			return fmt.Sprintf("%q / all", set(pr.sel))
		}
		rows := set(pr.granted)
		if len(pr.sel) > 0 {
			rows = slices.DeleteFunc(set(pr.sel), func(c string) bool { return !slices.Contains(pr.granted, c) })
		}
		return fmt.Sprintf("%q / %q", rows, set(pr.granted))
	}
	seen := map[string]proj{}
	for _, pr := range projs {
		var p *Projection
		if pr.grant {
			p = NewGrantedProjection(pr.sel, pr.granted)
		} else {
			p = NewProjection(pr.sel)
		}
		if prev, ok := seen[p.Key()]; ok && keeps(prev) != keeps(pr) {
			t.Errorf("Key of %v (%s) = Key of %v (%s) = %q", pr, keeps(pr), prev, keeps(prev), p.Key())
		}
		seen[p.Key()] = pr
	}
	if len(seen) < len(projs)-1 { // {a}/{a} and nil/{a} keep the same
		t.Errorf("%d keys for %d projections", len(seen), len(projs))
	}
	// The same projection has the same key, whatever the order given.
	if NewGrantedProjection([]string{"b", "a"}, []string{"c", "a", "b"}).Key() != NewGrantedProjection([]string{"a", "b", "a"}, []string{"a", "b", "c"}).Key() {
		t.Error("equal granted projections have different keys")
	}
}

// TestProjectViews: the views of an update a row policy gives (sub.decide).
func TestProjectViews(t *testing.T) {
	const head = `{"id":"1","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z",`
	const headDelete = `{"id":"1","op":"delete","db":"shop","schema":"public","table":"orders","lsn":"0/1","xid":1,"commit_time":"2026-11-22T07:00:00Z",`
	tests := []struct {
		name  string
		p     *Projection
		view  View
		event string
		want  string
	}{
		{"new, key from the new row", nil, ViewNew, projectMove,
			head + `"key":{"tenant":"globex","id":42},"data":{"id":42,"tenant":"globex","secret":"s-new","notes":"n"},"unchanged":["blob","secret"]}`},
		{"old as a delete", nil, ViewOldAsDelete, projectMove,
			headDelete + `"key":{"tenant":"acme","id":42},"old":{"id":42,"tenant":"acme","secret":"s-old","notes":"n"}}`},
		{"whole", nil, ViewWhole, projectMove, projectMove},
		{"new, projected", NewProjection([]string{"notes"}), ViewNew, projectMove,
			head + `"key":{"tenant":"globex","id":42},"data":{"notes":"n"}}`},
		{"old as a delete, projected", NewProjection([]string{"tenant"}), ViewOldAsDelete, projectMove,
			headDelete + `"key":{"tenant":"acme","id":42},"old":{"tenant":"acme"}}`},
		{"new, granted", NewGrantedProjection(nil, []string{"id", "tenant"}), ViewNew, projectMove,
			head + `"key":{"tenant":"globex","id":42},"data":{"id":42,"tenant":"globex"}}`},
		{"old as a delete, granted", NewGrantedProjection(nil, []string{"id", "secret"}), ViewOldAsDelete, projectMove,
			headDelete + `"key":{"id":42},"old":{"id":42,"secret":"s-old"}}`},
		// A key column the new row lacks (an unchanged TOASTed value) is
		// the same in both rows: the key keeps it.
		{"new, key column not in the new row", nil, ViewNew,
			`{"op":"update","key":{"id":42,"big":"b"},"data":{"id":43},"old":{"id":42,"big":"b"},"unchanged":["big"]}`,
			`{"op":"update","key":{"id":43,"big":"b"},"data":{"id":43},"unchanged":["big"]}`},
		{"escaped member names", nil, ViewOldAsDelete,
			`{"\u006fp":"update","k\u0065y":{"id":1},"d\u0061ta":{"id":1},"\u006fld":{"id":1},"unch\u0061nged":["x"]}`,
			`{"\u006fp":"delete","k\u0065y":{"id":1},"\u006fld":{"id":1}}`},
		{"escaped key names", nil, ViewNew,
			`{"key":{"\u0069d":1},"data":{"id":2},"old":{"id":1}}`,
			`{"key":{"\u0069d":2},"data":{"id":2}}`},
		{"first member dropped", nil, ViewNew, `{"old":{"id":1},"key":{"id":1},"data":{"id":2}}`, `{"key":{"id":2},"data":{"id":2}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var env, data Row
			if err := env.Reset([]byte(tt.event)); err != nil {
				t.Fatal(err)
			}
			if !eventRow(&env, &data, schema.BitUpdate) {
				t.Fatal("no data")
			}
			got, err := tt.p.AppendView(nil, []byte(tt.event), tt.view, &data)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("appendView =\n%s\nwant\n%s", got, tt.want)
			}
			if !json.Valid(got) {
				t.Errorf("not JSON: %s", got)
			}
			// Like AppendEvent, the views and the column grant cost no
			// allocation once dst has room, but for a key whose names are
			// escaped (decoded to be looked up in the new row).
			if builtWithRace() || strings.Contains(tt.name, "escaped key names") {
				return
			}
			event, dst := []byte(tt.event), make([]byte, 0, 2*len(tt.event))
			if n := testing.AllocsPerRun(100, func() { dst, _ = tt.p.AppendView(dst[:0], event, tt.view, &data) }); n != 0 {
				t.Errorf("appendView allocates %v times per event, want 0", n)
			}
		})
	}
}
