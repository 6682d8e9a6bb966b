package wsgate

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/internal/jsonx"
)

func u64(n uint64) *uint64 { return &n }

func TestDecodeClientMessage(t *testing.T) {
	tests := []struct {
		name  string
		frame string
		want  ClientMessage
	}{
		{"subscribe table minimal", `{"type":"subscribe","id":"s1","table":"public.orders"}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "public.orders"}},
		{"subscribe table full", `{"type":"subscribe","id":"s1","table":"public.orders","events":["create","update"],
			"where":{"status":{"eq":"paid"},"total":{"gte":"10"}},"select":["id","status"],"from":1234}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "public.orders", Events: []string{"create", "update"},
				Where:  json.RawMessage(`{"status":{"eq":"paid"},"total":{"gte":"10"}}`),
				Select: []string{"id", "status"}, SelectGiven: true, From: u64(1234)}},
		{"subscribe empty select restores all", `{"type":"subscribe","id":"s1","table":"public.orders","select":[]}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "public.orders", Select: []string{}, SelectGiven: true}},
		{"subscribe null select is absent", `{"type":"subscribe","id":"s1","table":"public.orders","select":null}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "public.orders"}},
		{"subscribe empty events is all", `{"type":"subscribe","id":"s1","table":"public.orders","events":[]}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "public.orders"}},
		{"subscribe duplicate events dropped", `{"type":"subscribe","id":"s1","table":"a.b","events":["delete","read","delete","truncate"]}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "a.b", Events: []string{"delete", "read", "truncate"}}},
		{"subscribe unicode table, dots in a quoted table part", `{"type":"subscribe","id":"s1","table":"société.\"commandes.v2\""}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: `société."commandes.v2"`}},
		{"subscribe with the database", `{"type":"subscribe","id":"s1","table":"shop.public.orders"}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "shop.public.orders"}},
		{"subscribe with a quoted database", `{"type":"subscribe","id":"s1","table":"\"my.db\".public.orders"}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: `"my.db".public.orders`}},
		{"subscribe from zero", `{"type":"subscribe","id":"s1","table":"a.b","from":0}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "a.b", From: u64(0)}},
		{"subscribe from max", `{"type":"subscribe","id":"s1","table":"a.b","from":18446744073709551615}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "a.b", From: u64(1<<64 - 1)}},
		{"subscribe with snapshot", `{"type":"subscribe","id":"v1","table":"a.b","snapshot":true}`,
			ClientMessage{Type: TypeSubscribe, ID: "v1", Table: "a.b", Snapshot: true}},
		{"subscribe batched", `{"type":"subscribe","id":"t1","table":"a.b","batch":"transaction","from":7}`,
			ClientMessage{Type: TypeSubscribe, ID: "t1", Table: "a.b", Batch: BatchTransaction, From: u64(7)}},
		{"subscribe without id (the gateway assigns one)", `{"type":"subscribe","table":"a.b","snapshot":false}`,
			ClientMessage{Type: TypeSubscribe, Table: "a.b"}},
		{"subscribe topic", `{"type":"subscribe","id":"s2","topic":"chat"}`,
			ClientMessage{Type: TypeSubscribe, ID: "s2", Topic: "chat"}},
		{"subscribe topic with hierarchy and from", `{"type":"subscribe","id":"s2","topic":"chat.room-1","from":7}`,
			ClientMessage{Type: TypeSubscribe, ID: "s2", Topic: "chat.room-1", From: u64(7)}},
		{"subscribe null table with topic", `{"type":"subscribe","id":"s2","topic":"chat","table":null}`,
			ClientMessage{Type: TypeSubscribe, ID: "s2", Topic: "chat"}},
		{"id of 64 characters", `{"type":"unsubscribe","id":"` + strings.Repeat("é", 64) + `"}`,
			ClientMessage{Type: TypeUnsubscribe, ID: strings.Repeat("é", 64)}},
		{"id with a space", `{"type":"unsubscribe","id":"my sub"}`,
			ClientMessage{Type: TypeUnsubscribe, ID: "my sub"}},
		{"unknown fields ignored", `{"type":"subscribe","id":"s1","table":"a.b","future":{"x":[1,2]},"v":2}`,
			ClientMessage{Type: TypeSubscribe, ID: "s1", Table: "a.b"}},
		{"white space around", " \n{ \"type\" : \"ping\" }\n ", ClientMessage{Type: TypePing}},
		{"select", `{"type":"select","id":"s1","fields":["id","total"]}`,
			ClientMessage{Type: TypeSelect, ID: "s1", Fields: []string{"id", "total"}}},
		{"select empty restores all", `{"type":"select","id":"s1","fields":[]}`,
			ClientMessage{Type: TypeSelect, ID: "s1", Fields: []string{}}},
		{"unsubscribe", `{"type":"unsubscribe","id":"s1"}`, ClientMessage{Type: TypeUnsubscribe, ID: "s1"}},
		{"topics", `{"type":"topics"}`, ClientMessage{Type: TypeTopics}},
		{"topics ignores an id", `{"type":"topics","id":"q1"}`, ClientMessage{Type: TypeTopics}},
		{"create-topic", `{"type":"create-topic","topic":"chat"}`, ClientMessage{Type: TypeCreateTopic, Topic: "chat"}},
		{"destroy-topic", `{"type":"destroy-topic","topic":"chat"}`, ClientMessage{Type: TypeDestroyTopic, Topic: "chat"}},
		{"publish", `{"type":"publish","topic":"chat","data":{"hello":"world"}}`,
			ClientMessage{Type: TypePublish, Topic: "chat", Data: json.RawMessage(`{"hello":"world"}`)}},
		{"publish null data", `{"type":"publish","topic":"chat","data":null}`,
			ClientMessage{Type: TypePublish, Topic: "chat", Data: json.RawMessage(`null`)}},
		{"publish scalar data", `{"type":"publish","topic":"chat","data": 12.5 }`,
			ClientMessage{Type: TypePublish, Topic: "chat", Data: json.RawMessage(`12.5`)}},
		{"ping", `{"type":"ping"}`, ClientMessage{Type: TypePing}},
		{"refresh", `{"type":"refresh","token":"eyJ.x.y"}`, ClientMessage{Type: TypeRefresh, Token: "eyJ.x.y"}},
		{"refresh API key", `{"type":"refresh","token":"tck_abc"}`, ClientMessage{Type: TypeRefresh, Token: "tck_abc"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, perr := DecodeClientMessage([]byte(tt.frame))
			if perr != nil {
				t.Fatalf("error %v", perr)
			}
			// Compare Where and Data after compacting: the decoder keeps the
			// client's bytes.
			got.Where = compactJSON(t, got.Where)
			tt.want.Where = compactJSON(t, tt.want.Where)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func compactJSON(t *testing.T, raw json.RawMessage) json.RawMessage {
	t.Helper()
	if raw == nil {
		return nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		t.Fatalf("compact %s: %v", raw, err)
	}
	return b.Bytes()
}

func TestDecodeClientMessageErrors(t *testing.T) {
	tests := []struct {
		name  string
		frame string
		code  ErrorCode
		id    string
		msg   string // the whole message, or its start when it ends with "…"
	}{
		// Frame level.
		{"not JSON", `{"type":`, CodeInvalidMessage, "", "message is not valid JSON: unexpected end of JSON input"},
		{"garbage", `hello`, CodeInvalidMessage, "", "message is not valid JSON: invalid character 'h' looking for beginning of value"},
		{"empty frame", ``, CodeInvalidMessage, "", "message is not valid JSON: unexpected end of JSON input"},
		{"two objects", `{"type":"ping"}{"type":"ping"}`, CodeInvalidMessage, "", "message is not valid JSON: …"},
		{"array", `[{"type":"ping"}]`, CodeInvalidMessage, "", "message must be a JSON object"},
		{"string", `"ping"`, CodeInvalidMessage, "", "message must be a JSON object"},
		{"null", `null`, CodeInvalidMessage, "", "message must be a JSON object"},
		{"duplicate field", `{"type":"ping","type":"subscribe"}`, CodeInvalidMessage, "", `field "type" is given twice`},
		{"duplicate table", `{"type":"subscribe","id":"s1","table":"a.b","table":"c.d"}`, CodeInvalidMessage, "", `field "table" is given twice`},

		// Type.
		{"no type", `{"id":"s1"}`, CodeInvalidMessage, "s1", `field "type" is required`},
		{"null type", `{"type":null}`, CodeInvalidMessage, "", `field "type" is required`},
		{"type not a string", `{"type":3}`, CodeInvalidMessage, "", `field "type" must be a string`},
		{"unknown type", `{"type":"subscribe-all","id":"s9"}`, CodeUnknownType, "s9", `unknown message type "subscribe-all"`},
		{"type is case sensitive", `{"type":"PING"}`, CodeUnknownType, "", `unknown message type "PING"`},
		{"unknown type, long", `{"type":"` + strings.Repeat("a", 100) + `"}`, CodeUnknownType, "",
			`unknown message type "` + strings.Repeat("a", 64) + `"…`},

		// Subscribe: id.
		{"subscribe empty id", `{"type":"subscribe","id":"","table":"a.b"}`, CodeInvalidSubscription, "", `id "" must be 1 to 64 printable characters`},
		{"snapshot with from", `{"type":"subscribe","id":"v1","table":"a.b","snapshot":true,"from":3}`, CodeInvalidSubscription, "v1", `"snapshot" starts a view and "from" resumes one: send one of them`},
		{"snapshot not a boolean", `{"type":"subscribe","id":"v1","table":"a.b","snapshot":"yes"}`, CodeInvalidMessage, "v1", `field "snapshot" must be true or false`},
		{"snapshot of a topic", `{"type":"subscribe","id":"v1","topic":"chat","snapshot":true}`, CodeInvalidSubscription, "v1", `"snapshot" applies to table subscriptions only`},
		{"batch of another kind", `{"type":"subscribe","id":"t1","table":"a.b","batch":"row"}`, CodeInvalidMessage, "t1", `field "batch" must be "transaction"`},
		{"batch not a string", `{"type":"subscribe","id":"t1","table":"a.b","batch":1}`, CodeInvalidMessage, "t1", `field "batch" must be "transaction"`},
		{"batch of a rule", `{"type":"subscribe","id":"t1","rule":"r","batch":"transaction"}`, CodeInvalidSubscription, "t1", `"batch" applies to table subscriptions only`},
		{"snapshot of a rule", `{"type":"subscribe","id":"v1","rule":"big-orders","snapshot":true}`, CodeInvalidSubscription, "v1", `"snapshot" applies to table subscriptions only`},
		{"subscribe empty id", `{"type":"subscribe","id":"","table":"a.b"}`, CodeInvalidSubscription, "",
			`id "" must be 1 to 64 printable characters`},
		{"id with a lone surrogate", `{"type":"subscribe","id":"a\ud800","table":"a.b"}`, CodeInvalidMessage, "", `field "id" holds a lone UTF-16 surrogate escape (such as \ud800), which is not a character`},
		{"id with a lone low surrogate", `{"type":"unsubscribe","id":"\udc00"}`, CodeInvalidMessage, "", `field "id" holds a lone UTF-16 surrogate escape (such as \ud800), which is not a character`},
		{"id with reversed surrogates", `{"type":"unsubscribe","id":"\udc00\ud800"}`, CodeInvalidMessage, "", `field "id" holds a lone UTF-16 surrogate escape …`},
		{"id with a high surrogate then a letter", `{"type":"unsubscribe","id":"\ud83dx"}`, CodeInvalidMessage, "", `field "id" holds a lone UTF-16 surrogate escape …`},
		{"where with a lone surrogate", `{"type":"subscribe","id":"s1","table":"a.b","where":{"status":{"eq":"\ud800"}}}`, CodeInvalidMessage, "s1", `field "where" holds a lone UTF-16 surrogate escape …`},
		{"where column with a lone surrogate", `{"type":"subscribe","id":"s1","table":"a.b","where":{"\udfff":{"eq":"x"}}}`, CodeInvalidMessage, "s1", `field "where" holds a lone UTF-16 surrogate escape …`},
		{"topic with a lone surrogate", `{"type":"create-topic","topic":"chat\ud800"}`, CodeInvalidMessage, "", `field "topic" holds a lone UTF-16 surrogate escape …`},
		{"select with a lone surrogate", `{"type":"select","id":"s1","fields":["id","\ud800"]}`, CodeInvalidMessage, "s1", `field "fields" holds a lone UTF-16 surrogate escape …`},
		{"subscribe id too long", `{"type":"subscribe","id":"` + strings.Repeat("x", 65) + `","table":"a.b"}`,
			CodeInvalidSubscription, "", `id "` + strings.Repeat("x", 64) + `"… must be 1 to 64 printable characters`},
		{"subscribe id with newline", `{"type":"subscribe","id":"a\nb","table":"a.b"}`, CodeInvalidSubscription, "",
			`id "a\nb" must be 1 to 64 printable characters`},
		{"subscribe id a number", `{"type":"subscribe","id":1,"table":"a.b"}`, CodeInvalidMessage, "", `field "id" must be a string`},

		// Subscribe: table and topic.
		{"subscribe rule and table", `{"type":"subscribe","id":"s1","rule":"r","table":"public.t"}`, CodeInvalidSubscription, "s1", `subscribe takes "rule" alone, without "table" or "topic"`},
		{"subscribe rule with where", `{"type":"subscribe","id":"s1","rule":"r","where":{}}`, CodeInvalidSubscription, "s1", `"events" and "where" do not apply to a rule subscription: the rule says which events`},
		{"subscribe rule bad name", `{"type":"subscribe","id":"s1","rule":"a b"}`, CodeInvalidSubscription, "s1", "a rule name is 1 to 100 characters of A-Z a-z 0-9 . _ -"},
		{"subscribe neither", `{"type":"subscribe","id":"s1"}`, CodeInvalidSubscription, "s1", `subscribe needs "table", "topic" or "rule"`},
		{"subscribe both", `{"type":"subscribe","id":"s1","table":"a.b","topic":"chat"}`, CodeInvalidSubscription, "s1",
			`subscribe takes "table" or "topic", not both`},
		{"table not a string", `{"type":"subscribe","id":"s1","table":["a.b"]}`, CodeInvalidMessage, "s1", `field "table" must be a string`},
		{"topic not a string", `{"type":"subscribe","id":"s1","topic":{}}`, CodeInvalidMessage, "s1", `field "topic" must be a string`},
		{"table without schema", `{"type":"subscribe","id":"s1","table":"orders"}`, CodeInvalidSubscription, "s1",
			`table "orders": want schema.table or database.schema.table (double-quote a part that holds a dot)`},
		{"table empty", `{"type":"subscribe","id":"s1","table":""}`, CodeInvalidSubscription, "s1", `table "": want schema.table or database.schema.table (double-quote a part that holds a dot)`},
		{"table empty schema", `{"type":"subscribe","id":"s1","table":".orders"}`, CodeInvalidSubscription, "s1",
			`table ".orders": want schema.table or database.schema.table (double-quote a part that holds a dot)`},
		{"table empty table", `{"type":"subscribe","id":"s1","table":"public."}`, CodeInvalidSubscription, "s1",
			`table "public.": want schema.table or database.schema.table (double-quote a part that holds a dot)`},
		{"table of four parts", `{"type":"subscribe","id":"s1","table":"a.b.c.d"}`, CodeInvalidSubscription, "s1",
			`table "a.b.c.d": want schema.table or database.schema.table (double-quote a part that holds a dot)`},
		{"database too long", `{"type":"subscribe","id":"s1","table":"` + strings.Repeat("d", 64) + `.public.orders"}`,
			CodeInvalidSubscription, "s1", `table "` + strings.Repeat("d", 64) + `"…: a name is longer than 63 bytes`},
		{"table part too long", `{"type":"subscribe","id":"s1","table":"public.` + strings.Repeat("t", 64) + `"}`,
			CodeInvalidSubscription, "s1", `table "public.` + strings.Repeat("t", 57) + `"…: a name is longer than 63 bytes`},
		{"table control char", `{"type":"subscribe","id":"s1","table":"public.a\u0000b"}`, CodeInvalidSubscription, "s1",
			`table "public.a\x00b" holds a control character`},
		{"topic empty", `{"type":"subscribe","id":"s1","topic":""}`, CodeInvalidSubscription, "s1", `topic name is empty`},
		{"topic wildcard star", `{"type":"subscribe","id":"s1","topic":"chat.*"}`, CodeInvalidSubscription, "s1",
			`topic "chat.*" holds a NATS wildcard ('*' or '>')`},
		{"topic wildcard gt", `{"type":"subscribe","id":"s1","topic":"chat.>"}`, CodeInvalidSubscription, "s1",
			`topic "chat.>" holds a NATS wildcard ('*' or '>')`},
		{"topic space", `{"type":"subscribe","id":"s1","topic":"my chat"}`, CodeInvalidSubscription, "s1",
			`topic "my chat" holds white space or a control character`},
		{"topic unicode space", `{"type":"subscribe","id":"s1","topic":"a\u00a0b"}`, CodeInvalidSubscription, "s1",
			`topic "a\u00a0b" holds white space or a control character`},
		{"topic leading dot", `{"type":"subscribe","id":"s1","topic":".chat"}`, CodeInvalidSubscription, "s1",
			`topic ".chat" starts or ends with '.'`},
		{"topic trailing dot", `{"type":"subscribe","id":"s1","topic":"chat."}`, CodeInvalidSubscription, "s1",
			`topic "chat." starts or ends with '.'`},
		{"topic empty token", `{"type":"subscribe","id":"s1","topic":"a..b"}`, CodeInvalidSubscription, "s1",
			`topic "a..b" holds ".." (an empty token)`},
		{"topic too long", `{"type":"subscribe","id":"s1","topic":"` + strings.Repeat("t", 129) + `"}`, CodeInvalidSubscription, "s1",
			`topic "` + strings.Repeat("t", 64) + `"… is longer than 128 bytes`},
		{"topic with events", `{"type":"subscribe","id":"s1","topic":"chat","events":["create"]}`, CodeInvalidSubscription, "s1",
			`"events", "where" and "select" apply to table subscriptions only`},
		{"topic with where", `{"type":"subscribe","id":"s1","topic":"chat","where":{}}`, CodeInvalidSubscription, "s1",
			`"events", "where" and "select" apply to table subscriptions only`},

		// Subscribe: events, where, select, from.
		{"events not an array", `{"type":"subscribe","id":"s1","table":"a.b","events":"create"}`, CodeInvalidMessage, "s1",
			`field "events" must be an array of strings`},
		{"events with a number", `{"type":"subscribe","id":"s1","table":"a.b","events":["create",1]}`, CodeInvalidMessage, "s1",
			`field "events" must be an array of strings`},
		{"events with null", `{"type":"subscribe","id":"s1","table":"a.b","events":[null]}`, CodeInvalidMessage, "s1",
			`field "events" must be an array of strings`},
		{"events unknown", `{"type":"subscribe","id":"s1","table":"a.b","events":["insert"]}`, CodeInvalidSubscription, "s1",
			`unknown event "insert" (want create, update, delete, truncate or read)`},
		{"where not an object", `{"type":"subscribe","id":"s1","table":"a.b","where":[{"a":{"eq":1}}]}`, CodeInvalidMessage, "s1",
			`field "where" must be an object`},
		{"where a string", `{"type":"subscribe","id":"s1","table":"a.b","where":"a=1"}`, CodeInvalidMessage, "s1",
			`field "where" must be an object`},
		{"select not an array", `{"type":"subscribe","id":"s1","table":"a.b","select":"id"}`, CodeInvalidMessage, "s1",
			`field "select" must be an array of strings`},
		{"select empty name", `{"type":"subscribe","id":"s1","table":"a.b","select":["id",""]}`, CodeInvalidSelect, "s1",
			`field "select" holds an empty column name`},
		{"from negative", `{"type":"subscribe","id":"s1","table":"a.b","from":-1}`, CodeInvalidMessage, "s1",
			`field "from" must be a non-negative integer`},
		{"from fraction", `{"type":"subscribe","id":"s1","table":"a.b","from":1.5}`, CodeInvalidMessage, "s1",
			`field "from" must be a non-negative integer`},
		{"from exponent", `{"type":"subscribe","id":"s1","table":"a.b","from":1e3}`, CodeInvalidMessage, "s1",
			`field "from" must be a non-negative integer`},
		{"from string", `{"type":"subscribe","id":"s1","table":"a.b","from":"12"}`, CodeInvalidMessage, "s1",
			`field "from" must be a non-negative integer`},
		{"from too big", `{"type":"subscribe","id":"s1","table":"a.b","from":18446744073709551616}`, CodeInvalidMessage, "s1",
			`field "from" must be a non-negative integer below 2^64`},

		// Select.
		{"select no id", `{"type":"select","fields":["a"]}`, CodeInvalidSubscription, "", `field "id" is required`},
		{"select no fields", `{"type":"select","id":"s1"}`, CodeInvalidSelect, "s1",
			`select needs "fields" (an empty list restores all columns)`},
		{"select null fields", `{"type":"select","id":"s1","fields":null}`, CodeInvalidSelect, "s1",
			`select needs "fields" (an empty list restores all columns)`},
		{"select fields not strings", `{"type":"select","id":"s1","fields":[1]}`, CodeInvalidMessage, "s1",
			`field "fields" must be an array of strings`},
		{"select fields object", `{"type":"select","id":"s1","fields":{"a":1}}`, CodeInvalidMessage, "s1",
			`field "fields" must be an array of strings`},
		{"select empty column", `{"type":"select","id":"s1","fields":[""]}`, CodeInvalidSelect, "s1",
			`field "fields" holds an empty column name`},

		// Unsubscribe.
		{"unsubscribe no id", `{"type":"unsubscribe"}`, CodeInvalidSubscription, "", `field "id" is required`},
		{"unsubscribe id not a string", `{"type":"unsubscribe","id":true}`, CodeInvalidMessage, "", `field "id" must be a string`},
		{"unsubscribe bad id", `{"type":"unsubscribe","id":"\t"}`, CodeInvalidSubscription, "", `id "\t" must be 1 to 64 printable characters`},

		// Topic management and publish.
		{"create-topic no topic", `{"type":"create-topic"}`, CodeInvalidMessage, "", `field "topic" is required`},
		{"create-topic bad topic", `{"type":"create-topic","topic":"a b"}`, CodeInvalidMessage, "",
			`topic "a b" holds white space or a control character`},
		{"destroy-topic topic number", `{"type":"destroy-topic","topic":5}`, CodeInvalidMessage, "", `field "topic" must be a string`},
		{"destroy-topic wildcard", `{"type":"destroy-topic","topic":">"}`, CodeInvalidMessage, "",
			`topic ">" holds a NATS wildcard ('*' or '>')`},
		{"publish no topic", `{"type":"publish","data":1}`, CodeInvalidMessage, "", `field "topic" is required`},
		{"publish no data", `{"type":"publish","topic":"chat"}`, CodeInvalidMessage, "", `field "data" is required`},
		{"publish bad topic", `{"type":"publish","topic":"chat.","data":1}`, CodeInvalidMessage, "",
			`topic "chat." starts or ends with '.'`},
		{"refresh no token", `{"type":"refresh"}`, CodeInvalidMessage, "", `refresh needs "token", the new credential`},
		{"refresh null token", `{"type":"refresh","token":null}`, CodeInvalidMessage, "", `refresh needs "token", the new credential`},
		{"refresh empty token", `{"type":"refresh","token":""}`, CodeInvalidMessage, "", `refresh needs "token", the new credential`},
		{"refresh token not a string", `{"type":"refresh","token":{"jwt":"x"}}`, CodeInvalidMessage, "", `field "token" must be a string`},
		{"refresh token twice", `{"type":"refresh","token":"a","token":"b"}`, CodeInvalidMessage, "", `field "token" is given twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, perr := DecodeClientMessage([]byte(tt.frame))
			if perr == nil {
				t.Fatalf("no error; got %+v", m)
			}
			if !reflect.DeepEqual(m, ClientMessage{}) {
				t.Errorf("message %+v returned with an error", m)
			}
			if perr.Code != tt.code || perr.ID != tt.id {
				t.Errorf("code %q id %q, want %q id %q (%s)", perr.Code, perr.ID, tt.code, tt.id, perr.Message)
			}
			if prefix, ok := strings.CutSuffix(tt.msg, "…"); ok && !strings.HasSuffix(tt.msg, `"…`) {
				if !strings.HasPrefix(perr.Message, prefix) {
					t.Errorf("message %q, want it to start with %q", perr.Message, prefix)
				}
			} else if perr.Message != tt.msg {
				t.Errorf("message\n got %q\nwant %q", perr.Message, tt.msg)
			}
			if want := string(tt.code) + ": " + perr.Message; perr.Error() != want {
				t.Errorf("Error() = %q, want %q", perr.Error(), want)
			}
		})
	}
}

// TestDecodeClientMessageNoAlias checks that a decoded message does not share
// memory with the frame, which the connection loop reuses.
func TestDecodeClientMessageNoAlias(t *testing.T) {
	frame := []byte(`{"type":"subscribe","id":"s1","table":"a.b","where":{"x":{"eq":"1"}}}`)
	m, perr := DecodeClientMessage(frame)
	if perr != nil {
		t.Fatal(perr)
	}
	pub := []byte(`{"type":"publish","topic":"t","data":{"k":"v"}}`)
	p, perr := DecodeClientMessage(pub)
	if perr != nil {
		t.Fatal(perr)
	}
	for i := range frame {
		frame[i] = 'X'
	}
	for i := range pub {
		pub[i] = 'X'
	}
	if string(m.Where) != `{"x":{"eq":"1"}}` || m.ID != "s1" || string(p.Data) != `{"k":"v"}` {
		t.Errorf("decoded message changed with the frame: %+v %+v", m, p)
	}
}

func TestSplitTableName(t *testing.T) {
	for _, tt := range []struct{ in, schema, table string }{
		{"public.orders", "public", "orders"},
		{`s."t.v2"`, "s", "t.v2"},
		{`"My Schema"."Orders"`, "My Schema", "Orders"},
		{"ünï.cödé", "ünï", "cödé"},
	} {
		s, tb := SplitTableName(tt.in)
		if s != tt.schema || tb != tt.table {
			t.Errorf("SplitTableName(%q) = %q, %q", tt.in, s, tb)
		}
	}
}

func TestSplitQualifiedName(t *testing.T) {
	for _, tt := range []struct{ in, db, schema, table string }{
		{"public.orders", "", "public", "orders"},
		{"shop.public.orders", "shop", "public", "orders"},
		{`"my.db"."My Schema"."t.v2"`, "my.db", "My Schema", "t.v2"},
	} {
		db, s, tb := SplitQualifiedName(tt.in)
		if db != tt.db || s != tt.schema || tb != tt.table {
			t.Errorf("SplitQualifiedName(%q) = %q, %q, %q", tt.in, db, s, tb)
		}
	}
}

func TestAppendFrames(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"event", AppendEventFrame(nil, "s1", 1235, []byte(`{"op":"create","data":{"id":1}}`)),
			`{"type":"event","id":"s1","seq":1235,"event":{"op":"create","data":{"id":1}}}`},
		{"event with empty body", AppendEventFrame(nil, "s1", 0, nil),
			`{"type":"event","id":"s1","seq":0,"event":null}`},
		{"event max seq", AppendEventFrame(nil, `q"\`, 1<<64-1, []byte(`{}`)),
			`{"type":"event","id":"q\"\\","seq":18446744073709551615,"event":{}}`},
		{"message", AppendMessageFrame(nil, "s2", "chat", 88, []byte(`{"hello":"world"}`)),
			`{"type":"message","id":"s2","topic":"chat","seq":88,"data":{"hello":"world"}}`},
		{"message scalar", AppendMessageFrame(nil, "s2", "chat.room", 1, []byte(`"hi"`)),
			`{"type":"message","id":"s2","topic":"chat.room","seq":1,"data":"hi"}`},
		{"subscribed", AppendSubscribed(nil, "s1", 1234), `{"type":"subscribed","id":"s1","seq":1234}`},
		{"unsubscribed", AppendUnsubscribed(nil, "s1"), `{"type":"unsubscribed","id":"s1"}`},
		{"topics", AppendTopics(nil, []string{"public.orders", "public.items"}, []string{"chat"}),
			`{"type":"topics","tables":["public.orders","public.items"],"topics":["chat"]}`},
		{"topics empty", AppendTopics(nil, nil, []string{}), `{"type":"topics","tables":[],"topics":[]}`},
		{"pong", AppendPong(nil), `{"type":"pong"}`},
		{"refreshed", AppendRefreshed(nil, 1798000000), `{"type":"refreshed","exp":1798000000}`},
		{"refreshed without exp", AppendRefreshed(nil, 0), `{"type":"refreshed"}`},
		{"error with id", AppendError(nil, "s1", CodeInvalidFilter, `column "totl" does not exist in public.orders`),
			`{"type":"error","id":"s1","code":"invalid_filter","message":"column \"totl\" does not exist in public.orders"}`},
		{"error without id", AppendError(nil, "", CodeInvalidMessage, "message must be a JSON object"),
			`{"type":"error","code":"invalid_message","message":"message must be a JSON object"}`},
		{"protocol error frame", (&ProtocolError{Code: CodeUnknownType, ID: "x", Message: "m"}).AppendFrame(nil),
			`{"type":"error","id":"x","code":"unknown_type","message":"m"}`},
		{"appends to dst", AppendPong([]byte("[")), `[{"type":"pong"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if string(tt.got) != tt.want {
				t.Errorf("got  %s\nwant %s", tt.got, tt.want)
			}
		})
	}
}

// frameCase is a frame encoded by one of the Append functions and what
// encoding/json must read back from it.
type frameCase struct {
	name string
	got  []byte
	want map[string]any
}

func TestAppendFramesRoundTrip(t *testing.T) {
	// Strings that need every kind of escaping.
	nasty := []string{
		"", "plain", `q"uote`, `back\slash`, "new\nline", "tab\tcr\rff\fbs\b", "nul\x00ctl\x1f\x7f",
		"é€😀", "bad\xffutf8\xc3", "\u2028\u2029", "<>&", "\xed\xa0\x80", strings.Repeat("\\\"", 40),
	}
	for i, s := range nasty {
		event := []byte(`{"op":"update","data":{"id":1,"s":"x"}}`)
		cases := []frameCase{
			{"event", AppendEventFrame(nil, s, uint64(i), event),
				map[string]any{"type": "event", "id": s, "seq": float64(i), "event": map[string]any{"op": "update", "data": map[string]any{"id": float64(1), "s": "x"}}}},
			{"message", AppendMessageFrame(nil, s, s, uint64(i), []byte(`[1,"a"]`)),
				map[string]any{"type": "message", "id": s, "topic": s, "seq": float64(i), "data": []any{float64(1), "a"}}},
			{"subscribed", AppendSubscribed(nil, s, 42), map[string]any{"type": "subscribed", "id": s, "seq": float64(42)}},
			{"unsubscribed", AppendUnsubscribed(nil, s), map[string]any{"type": "unsubscribed", "id": s}},
			{"topics", AppendTopics(nil, []string{s, "x"}, []string{s}),
				map[string]any{"type": "topics", "tables": []any{s, "x"}, "topics": []any{s}}},
			{"pong", AppendPong(nil), map[string]any{"type": "pong"}},
			{"error", AppendError(nil, "id1", ErrorCode(s), s), map[string]any{"type": "error", "id": "id1", "code": s, "message": s}},
		}
		for _, c := range cases {
			if !json.Valid(c.got) {
				t.Errorf("%s(%q): invalid JSON %s", c.name, s, c.got)
				continue
			}
			var got map[string]any
			if err := json.Unmarshal(c.got, &got); err != nil {
				t.Fatal(err)
			}
			// encoding/json reads invalid UTF-8 as U+FFFD, as our escaper
			// writes it; compare against the same reading of the input.
			want := fixUTF8(c.want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s(%q):\n got  %#v\nwant %#v", c.name, s, got, want)
			}
		}
	}
}

func fixUTF8(v any) any {
	switch v := v.(type) {
	case string:
		return replaceInvalidUTF8(v)
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = fixUTF8(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = fixUTF8(x)
		}
		return out
	}
	return v
}

// replaceInvalidUTF8 replaces each byte of s that is not part of a valid
// UTF-8 sequence with U+FFFD, as encoding/json does.
func replaceInvalidUTF8(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(r)
	}
	return b.String()
}

func TestAppendFrameStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"a\"b\\c", "\x01\x1f", "\u2028x\u2029", "\xff", "é\xc3(", "\xf0\x9f\x98"} {
		got := jsonx.AppendString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q → %s: %v", s, got, err)
		}
		if want := replaceInvalidUTF8(s); back != want {
			t.Errorf("%q → %s → %q, want %q", s, got, back, want)
		}
	}
	if got := string(jsonx.AppendString(nil, "\x00\n")); got != `"\u0000\n"` {
		t.Errorf("got %s", got)
	}
	if got := string(jsonx.AppendString(nil, "\u2028")); got != `"\u2028"` {
		t.Errorf("got %s", got)
	}
}

func TestAppendEventFrameAllocs(t *testing.T) {
	event := []byte(`{"id":"00000000016B3748-0003","op":"update","data":{"id":42,"status":"paid"}}`)
	dst := make([]byte, 0, 512)
	allocs := testing.AllocsPerRun(1000, func() {
		dst = AppendEventFrame(dst[:0], "subscription-1", 1<<40, event)
	})
	if allocs != 0 {
		t.Errorf("AppendEventFrame allocates %v times per frame, want 0", allocs)
	}
	allocs = testing.AllocsPerRun(1000, func() {
		dst = AppendMessageFrame(dst[:0], "s2", "chat", 99, event)
	})
	if allocs != 0 {
		t.Errorf("AppendMessageFrame allocates %v times per frame, want 0", allocs)
	}
}

func BenchmarkAppendEventFrame(b *testing.B) {
	event := bytes.Repeat([]byte(`x`), 300)
	event = append(append([]byte(`{"s":"`), event...), `"}`...)
	dst := make([]byte, 0, 1024)
	b.ReportAllocs()
	b.SetBytes(int64(len(event)))
	for b.Loop() {
		dst = AppendEventFrame(dst[:0], "s1", 123456789, event)
	}
}

func BenchmarkDecodeSubscribe(b *testing.B) {
	frame := []byte(`{"type":"subscribe","id":"s1","table":"public.orders","events":["create","update"],
 "where":{"status":{"eq":"paid"},"total":{"gte":"10"}},"select":["id","status"],"from":1234}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, perr := DecodeClientMessage(frame); perr != nil {
			b.Fatal(perr)
		}
	}
}

func TestCloseCodes(t *testing.T) {
	codes := []CloseCode{CloseNormal, CloseGoingAway, CloseProtocolError, CloseUnsupportedData, CloseMessageTooBig,
		CloseUnauthorized, CloseForbiddenOrigin, CloseSlowConsumer, CloseTooManyConnections, CloseBadRequest}
	reasons := map[string]bool{}
	for _, c := range codes {
		r := c.Reason()
		if r == "" || r == "closed" || len(r) > 123 {
			t.Errorf("%d: reason %q", int(c), r)
		}
		if reasons[r] {
			t.Errorf("%d: reason %q used twice", int(c), r)
		}
		reasons[r] = true
		inRange := (c >= 1000 && c <= 2999) || (c >= 4000 && c <= 4999)
		if !inRange {
			t.Errorf("%d outside the documented ranges", int(c))
		}
	}
	for c, want := range map[CloseCode]bool{CloseGoingAway: true, CloseSlowConsumer: true, CloseTooManyConnections: true,
		CloseNormal: false, CloseUnauthorized: false, CloseForbiddenOrigin: false, CloseBadRequest: false, CloseUnsupportedData: false} {
		if c.Reconnect() != want {
			t.Errorf("%v: Reconnect() = %v", c, !want)
		}
	}
	if got := CloseSlowConsumer.String(); got != "4008 slow consumer" {
		t.Errorf("String() = %q", got)
	}
	if got := CloseCode(4999).Reason(); got != "closed" {
		t.Errorf("unknown code reason %q", got)
	}
}

func TestLoneSurrogate(t *testing.T) {
	for raw, want := range map[string]bool{
		`"abc"`:                false,
		`"\ud83d\ude00"`:       false, // a pair: U+1F600
		`"x\ud83d\ude00y\n"`:   false,
		`"\\ud800"`:            false, // a backslash, then the letters
		`"\u00e9\"\\\/"`:       false,
		`"\ud800"`:             true,
		`"\udfff"`:             true,
		`"\ud83d"`:             true,
		`"\ud83d\u0041"`:       true,
		`"\ud83d\ud83d\ude00"`: true,
		`"\ude00\ud83d"`:       true,
		`"\\\ud800"`:           true,
	} {
		if got := loneSurrogate([]byte(raw)); got != want {
			t.Errorf("loneSurrogate(%s) = %v, want %v", raw, got, want)
		}
	}
	m, perr := DecodeClientMessage([]byte(`{"type":"unsubscribe","id":"\ud83d\ude00"}`))
	if perr != nil || m.ID != "\U0001F600" {
		t.Fatalf("a surrogate pair: got %+v, %v", m, perr)
	}
}
