package query

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// TestParseWhereRoundTrip: the tree of a JSON where writes the where back
// as it was (compact), malformed pieces included, so that one tree stands
// for what the client sent.
func TestParseWhereRoundTrip(t *testing.T) {
	for _, where := range []string{
		`{"status":{"eq":"paid"},"total":{"gte":"10","lt":100}}`,
		`{"or":[{"id":{"in":[1,2,"3"]}},{"created_at":{"gte":"2026-11-01T00:00:00Z"}}],"or":{"eq":"x"}}`,
		`{"a":{"eq":1},"a":{"eq":2}}`,
		`{"a":5,"or":[],"or":[{"b":{}},7,null]}`,
		`{"or":[{"or":[{"or":[{"or":[{"or":[{"or":[{"or":[{"or":[{"or":[{"x":1}]}]}]}]}]}]}]}]}]}`,
		`{"m":{"eq":{"claim":"t"}}," \u00e9":{"is":"null"}}`,
		`{}`,
	} {
		w, err := ParseWhere(json.RawMessage(" " + where + "\n"))
		if err != nil {
			t.Fatalf("ParseWhere(%s): %v", where, err)
		}
		var want bytes.Buffer
		if err := json.Compact(&want, []byte(where)); err != nil {
			t.Fatal(err)
		}
		if got := w.String(); got != want.String() && !(where == `{"m":{"eq":{"claim":"t"}}," \u00e9":{"is":"null"}}` && got == `{"m":{"eq":{"claim":"t"}}," é":{"is":"null"}}`) {
			t.Errorf("ParseWhere(%s).String() = %s", where, got)
		}
	}
	for _, where := range []string{``, ` `, `null`, " null\t"} {
		if w, err := ParseWhere(json.RawMessage(where)); w != nil || err != nil {
			t.Errorf("ParseWhere(%q) = %s, %v; want nil, nil", where, w, err)
		}
	}
	for where, msg := range map[string]string{
		`{"a":`:                "where is not valid JSON",
		`{"id": {"eq": 1}} {}`: "where is not valid JSON",
		`[1]`:                  "where must be a JSON object of column conditions",
		`"x"`:                  "where must be a JSON object of column conditions",
	} {
		var fe *FilterError
		if _, err := ParseWhere(json.RawMessage(where)); !errors.As(err, &fe) || fe.Message != msg {
			t.Errorf("ParseWhere(%s) = %v, want %q", where, err, msg)
		}
	}
}

// TestWhereForms: a where built as a tree and the same where parsed from
// JSON match the same rows; URL parameters read into the very tree their
// JSON where parses to.
func TestWhereForms(t *testing.T) {
	built := &Where{Terms: []Term{
		{Column: "status", Ops: []Operator{{Name: "in", Value: json.RawMessage(`["paid","open"]`)}}},
		{Column: "total", Ops: []Operator{{Name: "gte", Value: json.RawMessage(`"10"`)}, {Name: "lt", Value: json.RawMessage(`"100"`)}}},
		{Or: []*Where{
			{Terms: []Term{{Column: "note", Ops: []Operator{{Name: "is", Value: json.RawMessage(`"null"`)}}}}},
			{Terms: []Term{{Column: "id", Ops: []Operator{{Name: "eq", Value: json.RawMessage(`42`)}}}}},
		}},
	}}
	parsed, err := ParseWhere(json.RawMessage(`{"status":{"in":["paid","open"]},"total":{"gte":"10","lt":"100"},"or":[{"note":{"is":"null"}},{"id":{"eq":42}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	fb, err := Compile(built, "public.orders", testColumns)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := Compile(parsed, "public.orders", testColumns)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range append(fuzzRows, `{"status":"open","total":"50","note":"x","id":42}`, `{"status":"open","total":"50","note":"x","id":1}`) {
		row := mustRow(t, obj)
		b, errB := fb.Match(row)
		p, errP := fp.Match(row)
		if b != p || (errB == nil) != (errP == nil) {
			t.Errorf("row %s: built %v %v, parsed %v %v", obj, b, errB, p, errP)
		}
	}

	url, err := ParseURLWhere(map[string][]string{"total": {"gte.10", "lt.100"}, "status": {"in.(paid,open)"}, "\xff": {"eq.x"}})
	if err != nil {
		t.Fatal(err)
	}
	want, err := ParseWhere(json.RawMessage(`{"status":{"in":["paid","open"]},"total":{"gte":"10","lt":"100"},"\ufffd":{"eq":"x"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(url, want) {
		t.Errorf("URL where %s, want %s", url, want)
	}
}

// TestCompileOperandNotJSON: a tree built by a program with an operand that
// is not JSON is refused, never read past its end.
func TestCompileOperandNotJSON(t *testing.T) {
	for _, v := range []string{"", "{", `"x`, "1 2"} {
		w := &Where{Terms: []Term{{Column: "id", Ops: []Operator{{Name: "eq", Value: json.RawMessage(v)}}}}}
		var fe *FilterError
		if _, err := Compile(w, "t", testColumns); !errors.As(err, &fe) {
			t.Errorf("operand %q: %v, want a *FilterError", v, err)
		}
	}
}

func TestOperators(t *testing.T) {
	if operatorList != "eq, neq, lt, lte, gt, gte, in, nin or is" {
		t.Errorf("operatorList = %q", operatorList)
	}
	for _, name := range []string{"eq", "nin", "is"} {
		if !IsOperator(name) {
			t.Errorf("IsOperator(%q) = false", name)
		}
	}
	for _, name := range []string{"", "EQ", "like", "or"} {
		if IsOperator(name) {
			t.Errorf("IsOperator(%q) = true", name)
		}
	}
}
