package wsgate

import (
	"encoding/json"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/internal/query"
)

// Seeds are both here (so plain `go test` runs them) and under
// testdata/fuzz/, where `go test -fuzz` adds what it finds.

func FuzzDecodeClientMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","id":"s1","table":"public.orders","events":["create","update"],"where":{"status":{"eq":"paid"}},"select":["id"],"from":1234}`,
		`{"type":"subscribe","id":"s2","topic":"chat"}`,
		`{"type":"select","id":"s1","fields":[]}`,
		`{"type":"unsubscribe","id":"s1"}`,
		`{"type":"topics"}`,
		`{"type":"create-topic","topic":"a.b"}`,
		`{"type":"destroy-topic","topic":"chat"}`,
		`{"type":"publish","topic":"chat","data":{"hello":"world"}}`,
		`{"type":"ping"}`,
		`{"type":"ping","type":"ping"}`,
		`{"type":"refresh","token":"eyJhbGciOiJIUzI1NiJ9.e30.sig"}`,
		`{"type":"subscribe","id":"\u0000","table":"a.\ud800"}`,
		`{"type":"subscribe","id":"s","table":"a.b","from":1e3}`,
		`[1,2]`, `{`, ``, `null`, `{"type":7}`,
	} {
		f.Add([]byte(s))
	}
	known := map[MessageType]bool{TypeSubscribe: true, TypeSelect: true, TypeUnsubscribe: true, TypeTopics: true,
		TypeCreateTopic: true, TypeDestroyTopic: true, TypePublish: true, TypePing: true, TypeRefresh: true}
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, perr := DecodeClientMessage(frame)
		if perr != nil {
			if perr.Code == "" || perr.Message == "" {
				t.Fatalf("error without code or message: %+v", perr)
			}
			if !json.Valid(perr.AppendFrame(nil)) {
				t.Fatalf("error frame is not JSON: %s", perr.AppendFrame(nil))
			}
			return
		}
		if !known[m.Type] {
			t.Fatalf("decoded unknown type %q", m.Type)
		}
		switch m.Type {
		case TypeSubscribe:
			// The id may be left to the gateway; the target is one of
			// table, topic and rule.
			targets := 0
			for _, s := range []string{m.Table, m.Topic, m.Rule} {
				if s != "" {
					targets++
				}
			}
			if (m.ID != "" && !validID(m.ID)) || targets != 1 {
				t.Fatalf("bad subscribe decoded: %+v", m)
			}
			if m.Snapshot && (m.Table == "" || m.From != nil) {
				t.Fatalf("snapshot decoded on something other than a table subscription without from: %+v", m)
			}
			if m.Where != nil && (!json.Valid(m.Where) || m.Where[0] != '{') {
				t.Fatalf("where is not an object: %s", m.Where)
			}
		case TypeSelect:
			if m.Fields == nil {
				t.Fatalf("select without fields: %+v", m)
			}
		case TypePublish:
			if !json.Valid(m.Data) {
				t.Fatalf("data is not JSON: %s", m.Data)
			}
		}
		// What the gateway echoes back must encode to valid JSON.
		if out := AppendSubscribed(nil, m.ID, 1); !json.Valid(out) {
			t.Fatalf("subscribed frame not JSON: %s", out)
		}
	})
}

func FuzzParseURLSubscription(f *testing.F) {
	for _, s := range [][2]string{
		{"/ws/tables/public.orders", "events=create,update&select=id,status&status=eq.paid&total=gte.10&id=in.(1,2,3)&deleted_at=is.null&from=1234"},
		{"/ws/tables/a.b", `s=in.(a,"c,d","say \"hi\"")&s=nin.(,)`},
		{"/ws/tables/a.b", "total=gte.10&total=lt.100&token=x"},
		{"/ws/tables/a%2Eb.c", "x=eq&y=&=eq.1&or=eq.1"},
		{"/ws/tables/%zz", "from=-1"},
		{"/ws/tables/a.b/c", "events=insert"},
		{"/ws/tables/a.b", "we%22ird%0A=eq.%FF%00"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, path, rawQuery string) {
		q, _ := url.ParseQuery(rawQuery) // keeps what parsed, as net/http does
		sub, perr := ParseURLSubscription(path, q)
		if perr != nil {
			if perr.Code == "" || perr.Message == "" {
				t.Fatalf("error without code or message: %+v", perr)
			}
			return
		}
		if !strings.Contains(sub.Table, ".") {
			t.Fatalf("table %q accepted", sub.Table)
		}
		if sub.Where == nil {
			return
		}
		var where map[string]map[string]any
		if err := json.Unmarshal([]byte(sub.Where.String()), &where); err != nil {
			t.Fatalf("where %s: %v", sub.Where, err)
		}
		// The same where must be accepted by the JSON protocol, and read
		// as the same where.
		frame := []byte(`{"type":"subscribe","id":"u","table":`)
		frame = jsonx.AppendString(frame, sub.Table)
		frame = append(frame, `,"where":`...)
		frame = sub.Where.AppendJSON(frame)
		frame = append(frame, '}')
		m, perr := DecodeClientMessage(frame)
		if perr != nil {
			t.Fatalf("protocol refuses the URL's subscription %s: %v", frame, perr)
		}
		if w, err := query.ParseWhere(m.Where); err != nil || !reflect.DeepEqual(w, sub.Where) {
			t.Fatalf("the message's where %s (%v) is not the URL's %s", w, err, sub.Where)
		}
	})
}
