package wsgate

import (
	"encoding/json"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/internal/query"
)

func TestParseURLSubscription(t *testing.T) {
	tests := []struct {
		name  string
		path  string
		query string
		want  URLSubscription
	}{
		{"table only", "/ws/tables/public.orders", "",
			URLSubscription{Table: "public.orders"}},
		{"the contract's example", "/ws/tables/public.orders",
			"events=create,update&select=id,status&status=eq.paid&total=gte.10&id=in.(1,2,3)&deleted_at=is.null&from=1234",
			URLSubscription{Table: "public.orders", Events: []string{"create", "update"}, Select: []string{"id", "status"},
				From:  u64(1234),
				Where: whereOf(`{"deleted_at":{"is":"null"},"id":{"in":["1","2","3"]},"status":{"eq":"paid"},"total":{"gte":"10"}}`)}},
		{"percent-encoded path", "/ws/tables/my%20schema.%C3%B6rders%2Fv2", "",
			URLSubscription{Table: "my schema.örders/v2"}},
		{"dots in a quoted table part", "/ws/tables/s.%22t.v2%22", "", URLSubscription{Table: `s."t.v2"`}},
		{"with the database", "/ws/tables/shop.public.orders", "", URLSubscription{Table: "shop.public.orders"}},
		{"a quoted database", "/ws/tables/%22my.db%22.public.orders", "", URLSubscription{Table: `"my.db".public.orders`}},
		{"token ignored", "/ws/tables/a.b", "token=secret", URLSubscription{Table: "a.b"}},
		{"empty events is all", "/ws/tables/a.b", "events=", URLSubscription{Table: "a.b"}},
		{"duplicate events dropped", "/ws/tables/a.b", "events=delete,truncate,delete,read",
			URLSubscription{Table: "a.b", Events: []string{"delete", "truncate", "read"}}},
		{"empty select is all, but given", "/ws/tables/a.b", "select=", URLSubscription{Table: "a.b", Select: []string{}}},
		{"from zero", "/ws/tables/a.b", "from=0", URLSubscription{Table: "a.b", From: u64(0)}},
		{"batched", "/ws/tables/a.b", "batch=transaction&from=3", URLSubscription{Table: "a.b", From: u64(3), Batch: BatchTransaction}},
		{"every operator", "/ws/tables/a.b",
			"c1=eq.1&c2=neq.2&c3=lt.3&c4=lte.4&c5=gt.5&c6=gte.6&c7=in.(7)&c8=nin.(8,9)&c9=is.not_null",
			URLSubscription{Table: "a.b", Where: whereOf(`{"c1":{"eq":"1"},"c2":{"neq":"2"},"c3":{"lt":"3"},` +
				`"c4":{"lte":"4"},"c5":{"gt":"5"},"c6":{"gte":"6"},"c7":{"in":["7"]},"c8":{"nin":["8","9"]},"c9":{"is":"not_null"}}`)}},
		{"value keeps dots and is a string", "/ws/tables/a.b", "ip=eq.10.0.0.1&price=gt.-1.5e3",
			URLSubscription{Table: "a.b", Where: whereOf(`{"ip":{"eq":"10.0.0.1"},"price":{"gt":"-1.5e3"}}`)}},
		{"empty value", "/ws/tables/a.b", "note=eq.", URLSubscription{Table: "a.b", Where: whereOf(`{"note":{"eq":""}}`)}},
		{"value with quotes and unicode", "/ws/tables/a.b", `name=eq."O'Brien"+é`,
			URLSubscription{Table: "a.b", Where: whereOf(`{"name":{"eq":"\"O'Brien\" é"}}`)}},
		{"repeated column ANDs", "/ws/tables/a.b", "total=gte.10&total=lt.100",
			URLSubscription{Table: "a.b", Where: whereOf(`{"total":{"gte":"10","lt":"100"}}`)}},
		{"in and nin on one column", "/ws/tables/a.b", "s=in.(a,b)&s=nin.(b)",
			URLSubscription{Table: "a.b", Where: whereOf(`{"s":{"in":["a","b"],"nin":["b"]}}`)}},
		{"in with quoted items", "/ws/tables/a.b", `s=in.(a,"c,d","",e)`,
			URLSubscription{Table: "a.b", Where: whereOf(`{"s":{"in":["a","c,d","","e"]}}`)}},
		{"in with escapes inside quotes", "/ws/tables/a.b", `s=in.("say \"hi\"","back\\slash","a)b")`,
			URLSubscription{Table: "a.b", Where: whereOf(`{"s":{"in":["say \"hi\"","back\\slash","a)b"]}}`)}},
		{"column named or", "/ws/tables/a.b", "or=eq.1", URLSubscription{Table: "a.b", Where: whereOf(`{"or":{"eq":"1"}}`)}},
		{"in empty items", "/ws/tables/a.b", "s=nin.(,)", URLSubscription{Table: "a.b", Where: whereOf(`{"s":{"nin":["",""]}}`)}},
		{"in trailing comma", "/ws/tables/a.b", "s=in.(a,)", URLSubscription{Table: "a.b", Where: whereOf(`{"s":{"in":["a",""]}}`)}},
		{"column that needs escaping", "/ws/tables/a.b", "we%22ird%0Acol=eq.x",
			URLSubscription{Table: "a.b", Where: whereOf(`{"we\"ird\ncol":{"eq":"x"}}`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := url.ParseQuery(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			got, perr := ParseURLSubscription(tt.path, q)
			if perr != nil {
				t.Fatalf("error %v", perr)
			}
			if got.Where != nil && !json.Valid([]byte(got.Where.String())) {
				t.Fatalf("Where is not valid JSON: %s", got.Where)
			}
			if got.Where.String() != tt.want.Where.String() {
				t.Errorf("where got  %s\nwhere want %s", got.Where, tt.want.Where)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v\nwhere got  %s\nwhere want %s", got, tt.want, got.Where, tt.want.Where)
			}
		})
	}
}

func TestParseURLSubscriptionErrors(t *testing.T) {
	tests := []struct {
		name  string
		path  string
		query string
		code  ErrorCode
		msg   string
	}{
		{"wrong prefix", "/ws/table/a.b", "", CodeInvalidSubscription, `path "/ws/table/a.b": want /ws/tables/schema.table`},
		{"no table", "/ws/tables/", "", CodeInvalidSubscription, `path "/ws/tables/": want /ws/tables/schema.table`},
		{"extra segment", "/ws/tables/a.b/c", "", CodeInvalidSubscription, `path "/ws/tables/a.b/c": want /ws/tables/schema.table`},
		{"trailing slash", "/ws/tables/a.b/", "", CodeInvalidSubscription, `path "/ws/tables/a.b/": want /ws/tables/schema.table`},
		{"snapshot not a boolean", "/ws/tables/a.b", "snapshot=yes", CodeInvalidSubscription, `parameter "snapshot" must be true or false, not "yes"`},
		{"batch of another kind", "/ws/tables/a.b", "batch=row", CodeInvalidSubscription, `parameter "batch" must be transaction, not "row"`},
		{"snapshot with from", "/ws/tables/a.b", "snapshot=true&from=3", CodeInvalidSubscription, `parameters "snapshot" and "from" cannot be combined: snapshot starts a view, from resumes one`},
		{"bad percent-encoding", "/ws/tables/a.b%zz", "", CodeInvalidSubscription, `path "/ws/tables/a.b%zz": bad percent-encoding`},
		{"no schema", "/ws/tables/orders", "", CodeInvalidSubscription, `table "orders": want schema.table or database.schema.table (double-quote a part that holds a dot)`},
		{"empty schema", "/ws/tables/.orders", "", CodeInvalidSubscription, `table ".orders": want schema.table or database.schema.table (double-quote a part that holds a dot)`},
		{"four parts", "/ws/tables/a.b.c.d", "", CodeInvalidSubscription, `table "a.b.c.d": want schema.table or database.schema.table (double-quote a part that holds a dot)`},
		{"empty table", "/ws/tables/public.", "", CodeInvalidSubscription, `table "public.": want schema.table or database.schema.table (double-quote a part that holds a dot)`},
		{"invalid UTF-8", "/ws/tables/a.%FF", "", CodeInvalidSubscription, `table "a.\xff" is not valid UTF-8`},
		{"control character", "/ws/tables/a.b%00", "", CodeInvalidSubscription, `table "a.b\x00" holds a control character`},

		{"unknown event", "/ws/tables/a.b", "events=create,insert", CodeInvalidSubscription,
			`unknown event "insert" (want create, update, delete, truncate or read)`},
		{"empty event item", "/ws/tables/a.b", "events=create,", CodeInvalidSubscription,
			`unknown event "" (want create, update, delete, truncate or read)`},
		{"events twice", "/ws/tables/a.b", "events=create&events=update", CodeInvalidSubscription,
			`parameter "events" is given more than once`},
		{"select twice", "/ws/tables/a.b", "select=a&select=b", CodeInvalidSubscription, `parameter "select" is given more than once`},
		{"select empty item", "/ws/tables/a.b", "select=a,,b", CodeInvalidSelect, `parameter "select" holds an empty column name`},
		{"from not a number", "/ws/tables/a.b", "from=abc", CodeInvalidSubscription,
			`parameter "from" must be a non-negative integer, not "abc"`},
		{"from negative", "/ws/tables/a.b", "from=-1", CodeInvalidSubscription,
			`parameter "from" must be a non-negative integer, not "-1"`},
		{"from plus", "/ws/tables/a.b", "from=%2B1", CodeInvalidSubscription,
			`parameter "from" must be a non-negative integer, not "+1"`},
		{"from empty", "/ws/tables/a.b", "from=", CodeInvalidSubscription, `parameter "from" must be a non-negative integer, not ""`},
		{"from too big", "/ws/tables/a.b", "from=18446744073709551616", CodeInvalidSubscription,
			`parameter "from" must be a non-negative integer, not "18446744073709551616"`},
		{"from twice", "/ws/tables/a.b", "from=1&from=2", CodeInvalidSubscription, `parameter "from" is given more than once`},

		{"unknown operator", "/ws/tables/a.b", "status=like.pa*", CodeInvalidFilter,
			`filter "status=like.pa*": unknown operator "like" (want eq, neq, lt, lte, gt, gte, in, nin or is)`},
		{"operator case", "/ws/tables/a.b", "status=EQ.paid", CodeInvalidFilter,
			`filter "status=EQ.paid": unknown operator "EQ" (want eq, neq, lt, lte, gt, gte, in, nin or is)`},
		{"no operator", "/ws/tables/a.b", "status=paid", CodeInvalidFilter,
			`filter "status=paid": want operator.value, e.g. "status=eq.paid"`},
		{"missing value", "/ws/tables/a.b", "status=", CodeInvalidFilter,
			`filter "status=": want operator.value, e.g. "status=eq.value"`},
		{"bare parameter", "/ws/tables/a.b", "status", CodeInvalidFilter,
			`filter "status=": want operator.value, e.g. "status=eq.value"`},
		{"operator without value", "/ws/tables/a.b", "status=eq", CodeInvalidFilter,
			`filter "status=eq": no value after the operator (want eq.value)`},
		{"same operator twice", "/ws/tables/a.b", "total=gte.10&total=gte.20", CodeInvalidFilter,
			`column "total" has two "gte" conditions`},
		{"no column name", "/ws/tables/a.b", "=eq.1", CodeInvalidFilter, "filter parameter without a column name"},
		{"in empty list", "/ws/tables/a.b", "id=in.()", CodeInvalidFilter,
			`filter "id=in.()": the list is empty (want at least one item)`},
		{"in without parentheses", "/ws/tables/a.b", "id=in.1,2", CodeInvalidFilter,
			`filter "id=in.1,2": want a list in parentheses, e.g. in.(1,2,3)`},
		{"in unclosed", "/ws/tables/a.b", "id=in.(1,2", CodeInvalidFilter,
			`filter "id=in.(1,2": want a list in parentheses, e.g. in.(1,2,3)`},
		{"in unterminated quote", "/ws/tables/a.b", `id=nin.("a,b)`, CodeInvalidFilter,
			`filter "id=nin.(\"a,b)": unterminated quote in the list`},
		{"in text after quote", "/ws/tables/a.b", `id=in.("a"b)`, CodeInvalidFilter,
			`filter "id=in.(\"a\"b)": want ',' after a quoted item`},
		{"in quote inside item", "/ws/tables/a.b", `id=in.(a"b")`, CodeInvalidFilter,
			`filter "id=in.(a\"b\")": a quote inside an unquoted item (quote the whole item: "a,b")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := url.ParseQuery(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			got, perr := ParseURLSubscription(tt.path, q)
			if perr == nil {
				t.Fatalf("no error; got %+v", got)
			}
			if !reflect.DeepEqual(got, URLSubscription{}) {
				t.Errorf("subscription %+v returned with an error", got)
			}
			if perr.Code != tt.code || perr.ID != URLSubscriptionID {
				t.Errorf("code %q id %q, want %q id %q (%s)", perr.Code, perr.ID, tt.code, URLSubscriptionID, perr.Message)
			}
			if perr.Message != tt.msg {
				t.Errorf("message\n got %q\nwant %q", perr.Message, tt.msg)
			}
		})
	}
}

// TestURLWhereMatchesProtocol checks that a URL's filter is exactly what the
// same subscription sends in a subscribe message, so one compiler serves both.
func TestURLWhereMatchesProtocol(t *testing.T) {
	q, _ := url.ParseQuery(`status=eq.paid&total=gte.10&total=lt.100&id=in.(1,"2,3")&deleted_at=is.null`)
	sub, perr := ParseURLSubscription("/ws/tables/public.orders", q)
	if perr != nil {
		t.Fatal(perr)
	}
	frame := `{"type":"subscribe","id":"s1","table":"public.orders","where":` + sub.Where.String() + `}`
	m, perr := DecodeClientMessage([]byte(frame))
	if perr != nil {
		t.Fatal(perr)
	}
	if w, err := query.ParseWhere(m.Where); err != nil || !reflect.DeepEqual(w, sub.Where) {
		t.Errorf("the message's where is %s (%v), not the URL's %s", w, err, sub.Where)
	}
	var a, b any
	if err := json.Unmarshal([]byte(sub.Where.String()), &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(m.Where, &b); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"status":     map[string]any{"eq": "paid"},
		"total":      map[string]any{"gte": "10", "lt": "100"},
		"id":         map[string]any{"in": []any{"1", "2,3"}},
		"deleted_at": map[string]any{"is": "null"},
	}
	if !reflect.DeepEqual(a, want) || !reflect.DeepEqual(b, want) {
		t.Errorf("URL where %v, message where %v, want %v", a, b, want)
	}
	if strings.Contains(sub.Where.String(), " ") {
		t.Errorf("where not compact: %s", sub.Where)
	}
}

// whereOf is the where of a JSON where object.
func whereOf(where string) *query.Where {
	w, err := query.ParseWhere(json.RawMessage(where))
	if err != nil {
		panic(err)
	}
	return w
}
