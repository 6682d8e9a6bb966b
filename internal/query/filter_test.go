package query

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/tablecast/tablecast/internal/jsonx"
)

// testColumns is the table every filter test compiles against.
var testColumns = map[string]ColumnType{
	"id":         TypeInteger,
	"big":        TypeInteger, // xid8: past int64
	"ratio":      TypeFloat,
	"total":      TypeDecimal,
	"price":      TypeDecimal, // money
	"status":     TypeText,
	"esc":        TypeText,
	"note":       TypeText,
	"paid":       TypeBool,
	"created_at": TypeTimestamp,
	"day":        TypeDate,
	"meta":       TypeJSON,
	"mood":       TypeOther,
	"toasted":    TypeText, // in the shape, absent from the row
}

// testRow has a value for every column of testColumns but toasted.
const testRow = `{
	"id": 42, "big": 18446744073709551615, "ratio": 0.5,
	"total": "19.90", "price": "$1,234.50",
	"status": "paid", "esc": "caf\u00e9 \"x\"", "note": null,
	"paid": true,
	"created_at": "2026-11-22T07:00:00.123456Z", "day": "2026-11-22",
	"meta": {"a": 1, "b": [1, 2]}, "mood": "happy"
}`

func mustRow(t testing.TB, obj string) *Row {
	t.Helper()
	var r Row
	if err := r.Reset([]byte(obj)); err != nil {
		t.Fatalf("Reset(%s): %v", obj, err)
	}
	return &r
}

func mustCompile(t testing.TB, where string) *Filter {
	t.Helper()
	f, err := CompileWhere(json.RawMessage(where), "public.orders", testColumns)
	if err != nil {
		t.Fatalf("CompileWhere(%s): %v", where, err)
	}
	return f
}

// withValue returns testRow with column col's value replaced by raw.
func withValue(col, raw string) string {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(testRow), &m); err != nil {
		panic(err)
	}
	m[col] = json.RawMessage(raw)
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestMatch(t *testing.T) {
	tests := []struct {
		name  string
		where string
		row   string // testRow when empty
		want  bool
	}{
		// Integers.
		{"int eq", `{"id":{"eq":42}}`, "", true},
		{"int eq string", `{"id":{"eq":"42"}}`, "", true},
		{"int eq other", `{"id":{"eq":41}}`, "", false},
		{"int neq", `{"id":{"neq":42}}`, "", false},
		{"int neq other", `{"id":{"neq":7}}`, "", true},
		{"int lt", `{"id":{"lt":43}}`, "", true},
		{"int lt equal", `{"id":{"lt":42}}`, "", false},
		{"int lte", `{"id":{"lte":42}}`, "", true},
		{"int gt", `{"id":{"gt":41}}`, "", true},
		{"int gt equal", `{"id":{"gt":42}}`, "", false},
		{"int gte", `{"id":{"gte":43}}`, "", false},
		{"int in", `{"id":{"in":[1,"42",7]}}`, "", true},
		{"int in miss", `{"id":{"in":[1,2,3]}}`, "", false},
		{"int nin", `{"id":{"nin":[1,42]}}`, "", false},
		{"int nin miss", `{"id":{"nin":[1,2]}}`, "", true},
		{"int eq decimal literal", `{"id":{"eq":42.0}}`, "", true},
		{"int gt fraction", `{"id":{"gt":41.5}}`, "", true},
		{"int lt fraction", `{"id":{"lt":"42.5"}}`, "", true},
		{"int lt exponent", `{"id":{"lt":1e2}}`, "", true},
		{"int in mixed", `{"id":{"in":[41.5,42]}}`, "", true},
		{"int negative", `{"id":{"lt":0}}`, withValue("id", "-9223372036854775808"), true},
		{"int64 max", `{"id":{"eq":"9223372036854775807"}}`, withValue("id", "9223372036854775807"), true},
		{"int past int64 eq", `{"big":{"eq":"18446744073709551615"}}`, "", true},
		{"int past int64 gt", `{"big":{"gt":9223372036854775807}}`, "", true},
		{"int past int64 lt", `{"big":{"lt":"18446744073709551616"}}`, "", true},
		{"int infinity literal", `{"id":{"lt":"Infinity"}}`, "", true},

		// Floats.
		{"float eq", `{"ratio":{"eq":0.5}}`, "", true},
		{"float eq string", `{"ratio":{"eq":"5e-1"}}`, "", true},
		{"float lt", `{"ratio":{"lt":1}}`, "", true},
		{"float gte", `{"ratio":{"gte":0.6}}`, "", false},
		{"float in", `{"ratio":{"in":[0.25,0.5]}}`, "", true},
		{"float minus zero", `{"ratio":{"eq":0}}`, withValue("ratio", "-0"), true},
		{"float NaN eq NaN", `{"ratio":{"eq":"NaN"}}`, withValue("ratio", `"NaN"`), true},
		{"float NaN above Infinity", `{"ratio":{"gt":"Infinity"}}`, withValue("ratio", `"NaN"`), true},
		{"float number below NaN", `{"ratio":{"lt":"NaN"}}`, "", true},
		{"float NaN neq number", `{"ratio":{"neq":1}}`, withValue("ratio", `"NaN"`), true},
		{"float Infinity", `{"ratio":{"gt":1e308}}`, withValue("ratio", `"Infinity"`), true},
		{"float -Infinity", `{"ratio":{"lt":-1e308}}`, withValue("ratio", `"-Infinity"`), true},
		{"float -Infinity literal", `{"ratio":{"gt":"-Infinity"}}`, "", true},
		{"float in NaN", `{"ratio":{"in":[1,"NaN"]}}`, withValue("ratio", `"NaN"`), true},

		// Numeric and money.
		{"numeric eq", `{"total":{"eq":"19.9"}}`, "", true},
		{"numeric eq number", `{"total":{"eq":19.90}}`, "", true},
		{"numeric eq trailing zeros", `{"total":{"eq":"0019.9000"}}`, "", true},
		{"numeric gte string", `{"total":{"gte":"10"}}`, "", true},
		{"numeric gte number", `{"total":{"gte":10}}`, "", true},
		{"numeric lt close", `{"total":{"lt":"19.900000000000000000000001"}}`, "", true},
		{"numeric gt close", `{"total":{"gt":"19.899999999999999999999999"}}`, "", true},
		{"numeric lte", `{"total":{"lte":"19.89"}}`, "", false},
		{"numeric neq", `{"total":{"neq":"19.9"}}`, "", false},
		{"numeric exponent", `{"total":{"eq":"1.99e1"}}`, "", true},
		{"numeric in", `{"total":{"in":["1","19.9","100"]}}`, "", true},
		{"numeric nin", `{"total":{"nin":["1","100"]}}`, "", true},
		{"numeric negative", `{"total":{"lt":"-0.5"}}`, withValue("total", `"-0.75"`), true},
		{"numeric negative order", `{"total":{"gt":"-0.8"}}`, withValue("total", `"-0.75"`), true},
		{"numeric zero", `{"total":{"eq":"-0.000"}}`, withValue("total", `"0"`), true},
		{"numeric small", `{"total":{"gt":0}}`, withValue("total", `"0.0001"`), true},
		{"numeric small order", `{"total":{"lt":"0.001"}}`, withValue("total", `"0.0001"`), true},
		{"numeric huge", `{"total":{"gt":"1e30"}}`, withValue("total", `"`+"1"+strings.Repeat("0", 31)+`"`), true},
		{"numeric value as number", `{"total":{"eq":"19.9"}}`, withValue("total", `19.90`), true},
		{"numeric NaN eq", `{"total":{"eq":"NaN"}}`, withValue("total", `"NaN"`), true},
		{"numeric NaN above Infinity", `{"total":{"gt":"Infinity"}}`, withValue("total", `"NaN"`), true},
		{"numeric Infinity above all", `{"total":{"gt":"1e1000"}}`, withValue("total", `"Infinity"`), true},
		{"numeric -Infinity below all", `{"total":{"lt":"-1e1000"}}`, withValue("total", `"-Infinity"`), true},
		{"numeric number below NaN", `{"total":{"lt":"NaN"}}`, "", true},
		{"money eq", `{"price":{"eq":"1234.5"}}`, "", true},
		{"money gt", `{"price":{"gt":1000}}`, "", true},
		{"money negative", `{"price":{"lt":0}}`, withValue("price", `"-$1,234.50"`), true},
		{"money parentheses", `{"price":{"eq":"-1"}}`, withValue("price", `"($1.00)"`), true},
		{"money symbol after", `{"price":{"eq":"1234.56"}}`, withValue("price", `"1,234.56 EUR"`), true},

		// Text.
		{"text eq", `{"status":{"eq":"paid"}}`, "", true},
		{"text eq other", `{"status":{"eq":"open"}}`, "", false},
		{"text neq", `{"status":{"neq":"open"}}`, "", true},
		{"text lt", `{"status":{"lt":"pb"}}`, "", true},
		{"text lte", `{"status":{"lte":"paid"}}`, "", true},
		{"text gt", `{"status":{"gt":"pa"}}`, "", true},
		{"text gte", `{"status":{"gte":"paie"}}`, "", false},
		{"text in", `{"status":{"in":["open","paid"]}}`, "", true},
		{"text in miss", `{"status":{"in":["open","shipped"]}}`, "", false},
		{"text nin", `{"status":{"nin":["open","shipped"]}}`, "", true},
		{"text escaped eq", `{"esc":{"eq":"café \"x\""}}`, "", true},
		{"text escaped literal", `{"esc":{"eq":"caf\u00e9 \"x\""}}`, "", true},
		{"text escaped lt", `{"esc":{"lt":"cag"}}`, "", true},
		{"text escaped gt", `{"esc":{"gt":"cafz"}}`, "", true},
		{"text escaped prefix", `{"esc":{"gt":"café"}}`, "", true},
		{"text escaped in", `{"esc":{"in":["a","café \"x\"","z"]}}`, "", true},
		{"text utf8 eq", `{"status":{"eq":"Grüße"}}`, withValue("status", `"Grüße"`), true},
		{"text surrogate pair", `{"status":{"eq":"😀"}}`, withValue("status", `"\ud83d\ude00"`), true},
		{"text empty", `{"status":{"eq":""}}`, withValue("status", `""`), true},
		{"other eq", `{"mood":{"eq":"happy"}}`, "", true},
		{"other lt", `{"mood":{"lt":"sad"}}`, "", true},
		{"other non-string as text", `{"mood":{"eq":"[1,2]"}}`, withValue("mood", `[1,2]`), true},

		// Booleans.
		{"bool eq", `{"paid":{"eq":true}}`, "", true},
		{"bool eq string", `{"paid":{"eq":"true"}}`, "", true},
		{"bool eq false", `{"paid":{"eq":false}}`, "", false},
		{"bool neq", `{"paid":{"neq":"false"}}`, "", true},
		{"bool is true", `{"paid":{"is":"true"}}`, "", true},
		{"bool is false", `{"paid":{"is":"false"}}`, "", false},
		{"bool is false on false", `{"paid":{"is":"false"}}`, withValue("paid", "false"), true},
		{"bool is true JSON", `{"paid":{"is":true}}`, "", true},
		{"bool gt false", `{"paid":{"gt":false}}`, "", true},
		{"bool lt true", `{"paid":{"lt":true}}`, withValue("paid", "false"), true},
		{"bool in", `{"paid":{"in":[false]}}`, "", false},
		{"bool nin", `{"paid":{"nin":[false]}}`, "", true},

		// Timestamps.
		{"ts eq", `{"created_at":{"eq":"2026-11-22T07:00:00.123456Z"}}`, "", true},
		{"ts eq offset", `{"created_at":{"eq":"2026-11-22T12:30:00.123456+05:30"}}`, "", true},
		{"ts eq postgres form", `{"created_at":{"eq":"2026-11-22 08:00:00.123456+01"}}`, "", true},
		{"ts eq fraction length", `{"created_at":{"eq":"2026-11-22T07:00:00.123456000Z"}}`, "", true},
		{"ts neq", `{"created_at":{"neq":"2026-11-22T07:00:00.123457Z"}}`, "", true},
		{"ts lt", `{"created_at":{"lt":"2026-11-22T07:00:00.123457Z"}}`, "", true},
		{"ts lte", `{"created_at":{"lte":"2026-11-22T07:00:00.123455Z"}}`, "", false},
		{"ts gt date", `{"created_at":{"gt":"2026-11-22"}}`, "", true},
		{"ts gte", `{"created_at":{"gte":"2026-11-22T07:00:01Z"}}`, "", false},
		{"ts range", `{"created_at":{"gte":"2026-11-01T00:00:00Z","lt":"2026-12-01T00:00:00Z"}}`, "", true},
		{"ts in", `{"created_at":{"in":["2026-01-01T00:00:00Z","2026-11-22T07:00:00.123456Z"]}}`, "", true},
		{"ts nin", `{"created_at":{"nin":["2026-11-22T07:00:00.123456Z"]}}`, "", false},
		{"ts below infinity", `{"created_at":{"lt":"infinity"}}`, "", true},
		{"ts above -infinity", `{"created_at":{"gt":"-infinity"}}`, "", true},
		{"ts infinity value", `{"created_at":{"gt":"294276-12-31T23:59:59Z"}}`, withValue("created_at", `"infinity"`), true},
		{"ts infinity eq", `{"created_at":{"eq":"Infinity"}}`, withValue("created_at", `"infinity"`), true},
		{"ts -infinity value", `{"created_at":{"lt":"0001-01-01T00:00:00Z"}}`, withValue("created_at", `"-infinity"`), true},
		{"ts value offset", `{"created_at":{"eq":"2026-11-22T07:00:00Z"}}`, withValue("created_at", `"2026-11-22T02:00:00-05:00"`), true},
		{"ts value long fraction", `{"created_at":{"eq":"2026-11-22T07:00:00.123456789Z"}}`, withValue("created_at", `"2026-11-22T07:00:00.123456789999Z"`), true},
		{"ts value no zone", `{"created_at":{"eq":"2026-11-22T07:00:00Z"}}`, withValue("created_at", `"2026-11-22T07:00:00"`), true},
		{"ts value offset seconds", `{"created_at":{"eq":"1850-01-01T04:56:02Z"}}`, withValue("created_at", `"1850-01-01 00:00:00-04:56:02"`), true},
		{"ts value BC", `{"created_at":{"lt":"0001-01-01T00:00:00Z"}}`, withValue("created_at", `"0044-03-15 12:00:00+00 BC"`), true},
		{"ts value past 9999", `{"created_at":{"gt":"9999-12-31T23:59:59Z"}}`, withValue("created_at", `"10000-01-01 00:00:00+00"`), true},
		{"ts leap day", `{"created_at":{"eq":"2024-02-29T00:00:00Z"}}`, withValue("created_at", `"2024-02-29T00:00:00Z"`), true},
		{"ts midnight 24", `{"created_at":{"eq":"2026-11-22T24:00:00Z"}}`, withValue("created_at", `"2026-11-23T00:00:00Z"`), true},

		// Dates.
		{"date eq", `{"day":{"eq":"2026-11-22"}}`, "", true},
		{"date lt", `{"day":{"lt":"2026-11-23"}}`, "", true},
		{"date gt", `{"day":{"gt":"2026-11-22"}}`, "", false},
		{"date in", `{"day":{"in":["2026-11-21","2026-11-22"]}}`, "", true},
		{"date below infinity", `{"day":{"lt":"infinity"}}`, "", true},
		{"date infinity value", `{"day":{"gt":"9999-12-31"}}`, withValue("day", `"infinity"`), true},
		{"date -infinity value", `{"day":{"lt":"0001-01-01"}}`, withValue("day", `"-infinity"`), true},
		{"date BC", `{"day":{"lt":"0001-01-01"}}`, withValue("day", `"0044-03-15 BC"`), true},
		{"date past 9999", `{"day":{"gt":"9999-12-31"}}`, withValue("day", `"10000-01-01"`), true},

		// JSON.
		{"json eq", `{"meta":{"eq":{"a":1,"b":[1,2]}}}`, "", true},
		{"json eq spaced literal", `{"meta":{"eq":{ "a" : 1 , "b" : [ 1 , 2 ] }}}`, "", true},
		{"json eq other", `{"meta":{"eq":{"a":2}}}`, "", false},
		{"json neq", `{"meta":{"neq":{"a":2}}}`, "", true},
		{"json eq string with spaces", `{"meta":{"eq":"a b"}}`, withValue("meta", `"a b"`), true},
		{"json is not_null", `{"meta":{"is":"not_null"}}`, "", true},
		// As jsonb compares: PostgreSQL prints a jsonb's members shorter
		// names first and its numbers as written; a client writes them
		// in its own order and spelling.
		{"jsonb eq, members in another order", `{"meta":{"eq":{"status":"x","id":1}}}`, withValue("meta", `{"id": 1, "status": "x"}`), true},
		{"jsonb neq, members in another order", `{"meta":{"neq":{"status":"x","id":1}}}`, withValue("meta", `{"id": 1, "status": "x"}`), false},
		{"jsonb eq, nested members in another order", `{"meta":{"eq":[{"b":2,"a":1}]}}`, withValue("meta", `[{"a": 1, "b": 2}]`), true},
		{"jsonb eq, a number spelled otherwise", `{"meta":{"eq":{"total":19.9}}}`, withValue("meta", `{"total": 19.90}`), true},
		{"jsonb eq, a number in exponent form", `{"meta":{"eq":100}}`, withValue("meta", `1e2`), true},
		{"jsonb eq, a string escaped otherwise", `{"meta":{"eq":"caf\u00e9"}}`, withValue("meta", `"café"`), true},
		{"jsonb eq, arrays keep their order", `{"meta":{"eq":[2,1]}}`, withValue("meta", `[1, 2]`), false},
		{"jsonb eq, another number", `{"meta":{"eq":{"total":19.91}}}`, withValue("meta", `{"total": 19.90}`), false},
		{"jsonb eq, zeros", `{"meta":{"eq":[0,-0.0,0e5]}}`, withValue("meta", `[0, 0, 0.00]`), true},
		{"jsonb eq, small numbers", `{"meta":{"eq":0.0012}}`, withValue("meta", `12e-4`), true},
		{"jsonb eq, a huge exponent in the literal", `{"meta":{"eq":1e999999999}}`, withValue("meta", `1`), false},
		{"jsonb eq, a number is not its string", `{"meta":{"eq":"1"}}`, withValue("meta", `1`), false},

		// NULL.
		{"null eq", `{"note":{"eq":"x"}}`, "", false},
		{"null neq", `{"note":{"neq":"x"}}`, "", false},
		{"null lt", `{"note":{"lt":"x"}}`, "", false},
		{"null gte", `{"note":{"gte":""}}`, "", false},
		{"null in", `{"note":{"in":["x"]}}`, "", false},
		{"null nin", `{"note":{"nin":["x"]}}`, "", false},
		{"null is null", `{"note":{"is":"null"}}`, "", true},
		{"null is null JSON", `{"note":{"is":null}}`, "", true},
		{"null is not_null", `{"note":{"is":"not_null"}}`, "", false},
		{"value is null", `{"status":{"is":"null"}}`, "", false},
		{"value is not_null", `{"status":{"is":"not_null"}}`, "", true},
		{"null bool is true", `{"paid":{"is":"true"}}`, withValue("paid", "null"), false},
		{"null bool is false", `{"paid":{"is":"false"}}`, withValue("paid", "null"), false},
		{"null int eq", `{"id":{"eq":1}}`, withValue("id", "null"), false},
		{"null ts lt", `{"created_at":{"lt":"infinity"}}`, withValue("created_at", "null"), false},

		// AND and OR.
		{"empty where", `{}`, "", true},
		{"and all true", `{"id":{"gte":40,"lte":50},"status":{"eq":"paid"},"paid":{"is":"true"}}`, "", true},
		{"and one false", `{"id":{"gte":40},"status":{"eq":"open"}}`, "", false},
		{"or one true", `{"or":[{"id":{"eq":1}},{"status":{"eq":"paid"}}]}`, "", true},
		{"or none true", `{"or":[{"id":{"eq":1}},{"status":{"eq":"open"}}]}`, "", false},
		{"or and column", `{"id":{"eq":42},"or":[{"status":{"eq":"open"}},{"total":{"gt":"10"}}]}`, "", true},
		{"or and column false", `{"id":{"eq":1},"or":[{"status":{"eq":"paid"}}]}`, "", false},
		{"or group is an and", `{"or":[{"id":{"eq":42},"status":{"eq":"open"}},{"id":{"eq":1}}]}`, "", false},
		{"or nested", `{"or":[{"id":{"eq":1}},{"or":[{"status":{"eq":"open"}},{"or":[{"paid":{"is":"true"}}]}]}]}`, "", true},
		{"or nested false", `{"or":[{"id":{"eq":1}},{"or":[{"status":{"eq":"open"}},{"paid":{"is":"false"}}]}]}`, "", false},
		{"two ors", `{"or":[{"id":{"eq":42}}],"or":[{"status":{"eq":"open"}}]}`, "", false},
		{"or empty group", `{"or":[{},{"id":{"eq":1}}]}`, "", true},
		{"duplicate column ands", `{"id":{"gt":40},"id":{"lt":41}}`, "", false},
		{"and false beats error", `{"toasted":{"eq":"x"},"id":{"eq":1}}`, "", false},
		{"or true beats error", `{"or":[{"toasted":{"eq":"x"}},{"id":{"eq":42}}]}`, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			row := tt.row
			if row == "" {
				row = testRow
			}
			f := mustCompile(t, tt.where)
			got, err := f.Match(mustRow(t, row))
			if err != nil {
				t.Fatalf("Match: %v", err)
			}
			if got != tt.want {
				t.Errorf("Match(%s) = %v, want %v", tt.where, got, tt.want)
			}
		})
	}
}

func TestMatchEvalError(t *testing.T) {
	tests := []struct {
		name  string
		where string
		row   string
		want  string
	}{
		{"missing column", `{"toasted":{"eq":"x"}}`, testRow,
			`column "toasted" is not in the row (dropped, or an unchanged TOASTed value)`},
		{"missing column is null", `{"toasted":{"is":"null"}}`, testRow,
			`column "toasted" is not in the row (dropped, or an unchanged TOASTed value)`},
		{"string for integer", `{"id":{"eq":1}}`, withValue("id", `"abc"`),
			`value "abc" in column "id" is not a number (integer)`},
		{"bool for integer", `{"id":{"in":[1]}}`, withValue("id", `true`),
			`value true in column "id" is not a number (integer)`},
		{"string for float", `{"ratio":{"lt":1}}`, withValue("ratio", `"half"`),
			`value "half" in column "ratio" is not a number (float)`},
		{"bool for numeric", `{"total":{"gt":"1"}}`, withValue("total", `true`),
			`value true in column "total" is not a number (numeric)`},
		{"text for numeric", `{"total":{"gt":"1"}}`, withValue("total", `"abc"`),
			`value "abc" in column "total" is not a number (numeric)`},
		{"number for text", `{"status":{"eq":"paid"}}`, withValue("status", `5`),
			`value 5 in column "status" is not a string (text)`},
		{"string for bool", `{"paid":{"is":"true"}}`, withValue("paid", `"yes"`),
			`value "yes" in column "paid" is not a boolean (boolean)`},
		{"string for bool eq", `{"paid":{"eq":true}}`, withValue("paid", `"t"`),
			`value "t" in column "paid" is not a boolean (boolean)`},
		{"number for timestamp", `{"created_at":{"gt":"2026-01-01"}}`, withValue("created_at", `5`),
			`value 5 in column "created_at" is not a timestamp (timestamp)`},
		{"bad timestamp", `{"created_at":{"gt":"2026-01-01"}}`, withValue("created_at", `"yesterday"`),
			`value "yesterday" in column "created_at" is not a timestamp (timestamp)`},
		{"bad date", `{"day":{"eq":"2026-01-01"}}`, withValue("day", `"2026-02-30"`),
			`value "2026-02-30" in column "day" is not a date (date)`},
		{"long value cut", `{"status":{"eq":"x"}}`, withValue("status", `[`+strings.Repeat("1,", 40)+`1]`),
			`value [` + strings.Repeat("1,", 31) + `1… in column "status" is not a string (text)`},
		{"and error without false", `{"id":{"eq":42},"toasted":{"eq":"x"}}`, testRow,
			`column "toasted" is not in the row (dropped, or an unchanged TOASTed value)`},
		{"or error without true", `{"or":[{"id":{"eq":1}},{"toasted":{"eq":"x"}}]}`, testRow,
			`column "toasted" is not in the row (dropped, or an unchanged TOASTed value)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := mustCompile(t, tt.where)
			got, err := f.Match(mustRow(t, tt.row))
			var ee *EvalError
			if !errors.As(err, &ee) {
				t.Fatalf("Match = %v, %v; want an *EvalError", got, err)
			}
			if got {
				t.Errorf("Match returned true with its error")
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestCompileWhereError(t *testing.T) {
	long := `[` + strings.Repeat(`1,`, MaxListValues) + `1]`
	many := make([]string, MaxConditions+1)
	for i := range many {
		many[i] = fmt.Sprintf(`"id":{"neq":%d}`, i)
	}
	deep := `{"id":{"eq":1}}`
	for range MaxOrDepth + 1 {
		deep = `{"or":[` + deep + `]}`
	}
	tests := []struct {
		name  string
		where string
		want  string
	}{
		{"not JSON", `{"id":`, `where is not valid JSON`},
		{"not an object", `[1]`, `where must be a JSON object of column conditions`},
		{"string where", `"id=1"`, `where must be a JSON object of column conditions`},
		{"unknown column", `{"totl":{"gte":"10"}}`, `column "totl" does not exist in public.orders`},
		{"unknown column in or", `{"or":[{"totl":{"gte":"10"}}]}`, `column "totl" does not exist in public.orders`},
		{"condition not an object", `{"status":"paid"}`, `condition on column "status" must be an object of operators, like {"eq": …}`},
		{"no operator", `{"status":{}}`, `no operator for column "status"`},
		{"operator twice", `{"id":{"gt":1,"lt":9,"gt":5}}`, `column "id" has two "gt" conditions`},
		{"operator twice, escaped", `{"or":[{"status":{"eq":"a","\u0065q":"b"}}]}`, `column "status" has two "eq" conditions`},
		{"unknown operator", `{"status":{"like":"p%"}}`, `unknown operator "like" for column "status"`},
		{"not a number", `{"total":{"gte":"abc"}}`, `value "abc" is not a number for column "total" (numeric)`},
		{"bool for number", `{"id":{"eq":true}}`, `value true is not a number for column "id" (integer)`},
		{"object for number", `{"ratio":{"eq":{}}}`, `value {} is not a number for column "ratio" (float)`},
		{"float out of range", `{"ratio":{"eq":1e400}}`, `value 1e400 is out of range for column "ratio" (float)`},
		{"numeric out of range", `{"total":{"eq":"1e9999999999"}}`, `value "1e9999999999" is out of range for column "total" (numeric)`},
		{"number for text", `{"status":{"eq":5}}`, `value 5 is not a string for column "status" (text)`},
		{"number for other", `{"mood":{"eq":5}}`, `value 5 is not a string for column "mood" (other)`},
		{"not a boolean", `{"paid":{"eq":"yes"}}`, `value "yes" is not a boolean for column "paid" (boolean)`},
		{"number for boolean", `{"paid":{"eq":1}}`, `value 1 is not a boolean for column "paid" (boolean)`},
		{"not a timestamp", `{"created_at":{"gt":"yesterday"}}`, `value "yesterday" is not a timestamp for column "created_at" (timestamp)`},
		{"bad month", `{"created_at":{"gt":"2026-13-01T00:00:00Z"}}`, `value "2026-13-01T00:00:00Z" is not a timestamp for column "created_at" (timestamp)`},
		{"bad zone", `{"created_at":{"gt":"2026-01-01T00:00:00+25:00"}}`, `value "2026-01-01T00:00:00+25:00" is not a timestamp for column "created_at" (timestamp)`},
		{"number for timestamp", `{"created_at":{"gt":1700000000}}`, `value 1700000000 is not a timestamp for column "created_at" (timestamp)`},
		{"not a date", `{"day":{"eq":"2026-02-30"}}`, `value "2026-02-30" is not a date for column "day" (date)`},
		{"timestamp for date", `{"day":{"eq":"2026-02-03T00:00:00Z"}}`, `value "2026-02-03T00:00:00Z" is not a date for column "day" (date)`},
		{"lt on json", `{"meta":{"lt":1}}`, `lt does not apply to json column "meta"`},
		{"in on json", `{"meta":{"in":[1]}}`, `in does not apply to json column "meta"`},
		{"is true on integer", `{"id":{"is":"true"}}`, `is true does not apply to integer column "id"`},
		{"is false on json", `{"meta":{"is":"false"}}`, `is false does not apply to json column "meta"`},
		{"bad is", `{"status":{"is":"empty"}}`, `is for column "status" must be "null", "not_null", "true" or "false", not "empty"`},
		{"bad is number", `{"status":{"is":5}}`, `is for column "status" must be "null", "not_null", "true" or "false", not 5`},
		{"null literal", `{"status":{"eq":null}}`, `null is not a value for eq on column "status"; use {"is": "null"}`},
		{"null in list", `{"status":{"in":["a",null]}}`, `null is not a value for in on column "status"; use {"is": "null"}`},
		{"in not an array", `{"status":{"in":"paid"}}`, `in for column "status" needs a non-empty array of values`},
		{"in empty", `{"status":{"in":[]}}`, `in for column "status" needs a non-empty array of values`},
		{"nin empty", `{"status":{"nin":[]}}`, `nin for column "status" needs a non-empty array of values`},
		{"in too long", `{"id":{"in":` + long + `}}`, fmt.Sprintf(`in for column "id" has %d values, more than %d`, MaxListValues+1, MaxListValues)},
		{"bad value in list", `{"id":{"in":[1,"x"]}}`, `value "x" is not a number for column "id" (integer)`},
		{"or not an array", `{"or":{"id":{"eq":1}}}`, `or needs a non-empty array of condition objects`},
		{"or empty", `{"or":[]}`, `or needs a non-empty array of condition objects`},
		{"or group not an object", `{"or":[{"id":{"eq":1}},5]}`, `each group of or must be an object of column conditions, not 5`},
		{"or too deep", deep, fmt.Sprintf(`or groups are nested deeper than %d`, MaxOrDepth)},
		{"too many conditions", `{` + strings.Join(many, ",") + `}`, fmt.Sprintf(`where has more than %d conditions`, MaxConditions)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := CompileWhere(json.RawMessage(tt.where), "public.orders", testColumns)
			var fe *FilterError
			if !errors.As(err, &fe) {
				t.Fatalf("CompileWhere = %v, %v; want a *FilterError", f, err)
			}
			if f != nil {
				t.Errorf("CompileWhere returned a filter with its error")
			}
			if fe.Message != tt.want || err.Error() != tt.want {
				t.Errorf("error\n got %s\nwant %s", fe.Message, tt.want)
			}
		})
	}
}

func TestCompileWhereLimits(t *testing.T) {
	t.Run("depth at the limit", func(t *testing.T) {
		deep := `{"id":{"eq":42}}`
		for range MaxOrDepth {
			deep = `{"or":[` + deep + `]}`
		}
		if ok, err := mustCompile(t, deep).Match(mustRow(t, testRow)); !ok || err != nil {
			t.Errorf("Match = %v, %v", ok, err)
		}
	})
	t.Run("values across lists", func(t *testing.T) {
		list := `[` + strings.Repeat(`1,`, MaxListValues-1) + `1]`
		var conds []string
		for range MaxValues/MaxListValues + 1 {
			conds = append(conds, `{"id":{"in":`+list+`}}`)
		}
		where := `{"or":[` + strings.Join(conds, ",") + `]}`
		_, err := CompileWhere(json.RawMessage(where), "public.orders", testColumns)
		want := fmt.Sprintf("where has more than %d values in in and nin lists", MaxValues)
		if err == nil || err.Error() != want {
			t.Errorf("err = %v, want %s", err, want)
		}
	})
}

func TestCompileWhereEmpty(t *testing.T) {
	row := mustRow(t, `{}`)
	for _, where := range []string{``, `null`, ` null `, `{}`, " {\n} "} {
		f, err := CompileWhere(json.RawMessage(where), "public.orders", testColumns)
		if err != nil {
			t.Fatalf("CompileWhere(%q): %v", where, err)
		}
		if ok, err := f.Match(row); !ok || err != nil {
			t.Errorf("CompileWhere(%q).Match = %v, %v; want true", where, ok, err)
		}
		if cols := f.Columns(); len(cols) != 0 {
			t.Errorf("Columns = %v", cols)
		}
	}
	var nilFilter *Filter
	if ok, err := nilFilter.Match(row); !ok || err != nil {
		t.Errorf("nil Filter: Match = %v, %v", ok, err)
	}
}

func TestFilterColumns(t *testing.T) {
	f := mustCompile(t, `{"status":{"eq":"paid"},"or":[{"total":{"gt":1}},{"id":{"eq":1},"status":{"neq":"x"}}]}`)
	got := strings.Join(f.Columns(), ",")
	if want := "id,status,total"; got != want {
		t.Errorf("Columns = %s, want %s", got, want)
	}
}

// A table may have a column named or: it takes an object, an or group an
// array.
func TestCompileWhereOrColumn(t *testing.T) {
	cols := map[string]ColumnType{"or": TypeText, "id": TypeInteger}
	f, err := CompileWhere(json.RawMessage(`{"or":{"eq":"x"},"or":[{"id":{"eq":1}},{"or":{"eq":"y"}}]}`), "public.t", cols)
	if err != nil {
		t.Fatal(err)
	}
	for row, want := range map[string]bool{
		`{"or":"x","id":1}`: true,
		`{"or":"x","id":2}`: false,
		`{"or":"y","id":1}`: false,
	} {
		if got, err := f.Match(mustRow(t, row)); got != want || err != nil {
			t.Errorf("Match(%s) = %v, %v; want %v", row, got, err, want)
		}
	}
}

// TestOrdering checks PostgreSQL's orders with NaN and the infinities by
// sorting values through lt on every pair.
func TestOrdering(t *testing.T) {
	tests := []struct {
		column string
		values []string // ascending; JSON row values, each also written as a literal
	}{
		{"ratio", []string{`"-Infinity"`, `-1e308`, `-1`, `0`, `0.5`, `1e308`, `"Infinity"`, `"NaN"`}},
		{"total", []string{`"-Infinity"`, `"-1e1000"`, `"-10"`, `"-9.99"`, `"0"`, `"0.0001"`, `"0.001"`, `"9.99"`, `"10"`, `"1e1000"`, `"Infinity"`, `"NaN"`}},
		{"id", []string{`-9223372036854775808`, `-1`, `0`, `1`, `9223372036854775807`, `9223372036854775808`, `18446744073709551615`}},
		{"created_at", []string{`"-infinity"`, `"0044-03-15 12:00:00+00 BC"`, `"0001-01-01T00:00:00Z"`, `"1970-01-01T00:00:00Z"`, `"2026-11-22T07:00:00.000001Z"`, `"2026-11-22T07:00:00.1Z"`, `"9999-12-31T23:59:59.999999Z"`, `"10000-01-01 00:00:00+00"`, `"infinity"`}},
		{"day", []string{`"-infinity"`, `"0100-01-01 BC"`, `"0044-03-15 BC"`, `"0001-01-01"`, `"2026-11-22"`, `"10000-01-01"`, `"infinity"`}},
		{"status", []string{`""`, `"A"`, `"a"`, `"ab"`, `"b"`, `"é"`, `"😀"`}},
		{"paid", []string{`false`, `true`}},
	}
	for _, tt := range tests {
		t.Run(tt.column, func(t *testing.T) {
			for i, v := range tt.values {
				row := mustRow(t, withValue(tt.column, v))
				for j, lit := range tt.values {
					for _, op := range []string{"lt", "eq", "gt"} {
						f := mustCompile(t, fmt.Sprintf(`{%q:{%q:%s}}`, tt.column, op, lit))
						got, err := f.Match(row)
						if err != nil {
							t.Fatalf("%s %s %s: %v", v, op, lit, err)
						}
						want := op == "lt" && i < j || op == "eq" && i == j || op == "gt" && i > j
						if got != want {
							t.Errorf("%s %s %s = %v, want %v", v, op, lit, got, want)
						}
					}
				}
			}
		})
	}
}

func TestTypeOfOID(t *testing.T) {
	tests := []struct {
		oid  uint32
		want ColumnType
	}{
		{pgtype.Int2OID, TypeInteger}, {pgtype.Int4OID, TypeInteger}, {pgtype.Int8OID, TypeInteger},
		{pgtype.OIDOID, TypeInteger}, {pgtype.XID8OID, TypeInteger},
		{pgtype.Float4OID, TypeFloat}, {pgtype.Float8OID, TypeFloat},
		{pgtype.NumericOID, TypeDecimal}, {790, TypeDecimal},
		{pgtype.BoolOID, TypeBool},
		{pgtype.TimestampOID, TypeTimestamp}, {pgtype.TimestamptzOID, TypeTimestamp},
		{pgtype.DateOID, TypeDate},
		{pgtype.JSONOID, TypeJSON}, {pgtype.JSONBOID, TypeJSON},
		{pgtype.TextOID, TypeText}, {pgtype.VarcharOID, TypeText}, {pgtype.BPCharOID, TypeText},
		{pgtype.NameOID, TypeText}, {pgtype.UUIDOID, TypeText}, {pgtype.QCharOID, TypeText},
		{pgtype.ByteaOID, TypeOther}, {pgtype.IntervalOID, TypeOther}, {pgtype.Int4ArrayOID, TypeOther},
		{16384, TypeOther},
	}
	for _, tt := range tests {
		if got := TypeOfOID(tt.oid); got != tt.want {
			t.Errorf("TypeOfOID(%d) = %v, want %v", tt.oid, got, tt.want)
		}
	}
}

func TestRowGet(t *testing.T) {
	r := mustRow(t, ` {"a": 1, "b" : {"x": [1, "}"]}, "c\u0064": "v", "a": null, "é": true, "\ud83d\ude00": [] } `)
	tests := []struct {
		column string
		want   string
		ok     bool
	}{
		{"a", "null", true}, // the last of duplicates
		{"b", `{"x": [1, "}"]}`, true},
		{"cd", `"v"`, true},
		{"é", "true", true},
		{"😀", "[]", true},
		{"c", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := r.Get(tt.column)
		if ok != tt.ok || string(got) != tt.want {
			t.Errorf("Get(%q) = %s, %v; want %s, %v", tt.column, got, ok, tt.want, tt.ok)
		}
	}
	if r.Len() != 6 {
		t.Errorf("Len = %d, want 6", r.Len())
	}
}

func TestRowResetError(t *testing.T) {
	for _, bad := range []string{
		``, `   `, `null`, `[]`, `"x"`, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1 "b":2}`,
		`{"a":1}x`, `{"a":1}{}`, `{a:1}`, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":tru}`,
		`{"a":"\x"}`, `{"a":"\u12"}`, "{\"a\":\"\x01\"}", `{"a":[1,]}`, `{"a":{"b"}}`, `{"a":"open`,
		`{"a":[}`, `{"a":{]}`, `{"a":1e}`,
	} {
		var r Row
		r.Reset([]byte(`{"keep":1}`))
		if err := r.Reset([]byte(bad)); err == nil {
			t.Errorf("Reset(%q) = nil, want an error", bad)
		}
		if _, ok := r.Get("keep"); ok || r.Len() != 0 {
			t.Errorf("Reset(%q) failed but left members", bad)
		}
	}
	var r Row
	deep := strings.Repeat("[", jsonx.MaxDepth+1) + strings.Repeat("]", jsonx.MaxDepth+1)
	if err := r.Reset([]byte(`{"a":` + deep + `}`)); err == nil {
		t.Errorf("Reset accepted nesting past %d", jsonx.MaxDepth)
	}
}

func TestRowResetAllocs(t *testing.T) {
	obj := []byte(testRow)
	var r Row
	if err := r.Reset(obj); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = r.Reset(obj) }); n != 0 {
		t.Errorf("Reset allocates %v times once warmed, want 0", n)
	}
}

func TestMatchAllocs(t *testing.T) {
	row := mustRow(t, testRow)
	wheres := []string{
		`{"id":{"eq":42}}`, `{"id":{"neq":1}}`, `{"id":{"lt":43}}`, `{"id":{"lte":42}}`, `{"id":{"gt":1}}`, `{"id":{"gte":42}}`,
		`{"id":{"in":[1,2,42]}}`, `{"id":{"nin":[1,2]}}`, `{"id":{"gt":41.5}}`, `{"big":{"gt":1}}`,
		`{"total":{"eq":"19.9"}}`, `{"total":{"gte":"10"}}`, `{"total":{"in":["1","19.90"]}}`, `{"price":{"gt":"1000"}}`,
		`{"status":{"eq":"paid"}}`, `{"status":{"lt":"z"}}`, `{"status":{"in":["open","paid"]}}`, `{"esc":{"eq":"café \"x\""}}`,
		`{"esc":{"in":["a","café \"x\""]}}`,
		`{"paid":{"eq":true}}`, `{"paid":{"is":"true"}}`, `{"paid":{"in":[true]}}`,
		`{"created_at":{"eq":"2026-11-22T07:00:00.123456Z"}}`, `{"created_at":{"gte":"2026-11-01","lt":"2026-12-01"}}`,
		`{"created_at":{"in":["2026-11-22T07:00:00.123456Z"]}}`,
		`{"note":{"is":"null"}}`, `{"status":{"is":"not_null"}}`,
		`{"meta":{"eq":{"a":1,"b":[1,2]}}}`, `{"day":{"gt":"2026-01-01"}}`, `{"ratio":{"lt":1}}`,
		`{"or":[{"id":{"eq":1}},{"status":{"eq":"paid"},"total":{"gt":"1"}}]}`,
	}
	for _, where := range wheres {
		f := mustCompile(t, where)
		if ok, err := f.Match(row); !ok || err != nil {
			t.Fatalf("Match(%s) = %v, %v; want true", where, ok, err)
		}
		if n := testing.AllocsPerRun(100, func() { _, _ = f.Match(row) }); n != 0 {
			t.Errorf("Match(%s) allocates %v times, want 0", where, n)
		}
	}
}

func BenchmarkMatch(b *testing.B) {
	texts := make([]string, 100)
	for i := range texts {
		texts[i] = fmt.Sprintf("%q", fmt.Sprintf("status-%03d", i))
	}
	texts[73] = `"paid"`
	benchmarks := []struct {
		name  string
		where string
	}{
		{"and3", `{"status":{"eq":"paid"},"total":{"gte":"10"},"id":{"gt":10}}`},
		{"in100text", `{"status":{"in":[` + strings.Join(texts, ",") + `]}}`},
		{"timerange", `{"created_at":{"gte":"2026-11-01T00:00:00Z","lt":"2026-12-01T00:00:00+01:00"}}`},
		{"or2", `{"or":[{"status":{"eq":"open"},"id":{"lt":10}},{"paid":{"is":"true"},"total":{"gt":"5"}}]}`},
	}
	// Ten columns.
	obj := []byte(`{"id":42,"status":"paid","total":"19.90","paid":true,"created_at":"2026-11-22T07:00:00.123456Z",` +
		`"day":"2026-11-22","ratio":0.5,"mood":"happy","note":null,"esc":"plain text"}`)
	var row Row
	if err := row.Reset(obj); err != nil {
		b.Fatal(err)
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			f := mustCompile(b, bm.where)
			if ok, err := f.Match(&row); !ok || err != nil {
				b.Fatalf("Match = %v, %v", ok, err)
			}
			b.ReportAllocs()
			for b.Loop() {
				_, _ = f.Match(&row)
			}
		})
	}
	b.Run("reset", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(obj)))
		for b.Loop() {
			_ = row.Reset(obj)
		}
	})
}
