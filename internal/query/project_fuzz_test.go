package query

import (
	"bytes"
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/tablecast/tablecast/schema"
)

// fuzzProjections are the select lists every fuzzed event is projected by:
// none, the usual, the envelope's own names, names that need decoding, and
// one long enough for the binary search.
var fuzzProjections = [][]string{
	nil,
	{"id", "status"},
	{"data", "old", "key", "unchanged", "id"},
	{"café", `a"b`, "\uFFFD", "", "a\x00", "😀"},
	{"id", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "status", "notes", "total", "0", "1", "x"},
}

// referenceProject projects a decoded envelope the way AppendEvent is
// documented to, with encoding/json's values.
func referenceProject(env map[string]any, p *Projection) map[string]any {
	if p == nil {
		return env
	}
	cols := p.Columns()
	out := make(map[string]any, len(env))
	for name, v := range env {
		switch name {
		case "data", "old":
			if row, ok := v.(map[string]any); ok {
				kept := map[string]any{}
				for col, x := range row {
					if slices.Contains(cols, col) {
						kept[col] = x
					}
				}
				v = kept
			}
		case "unchanged":
			if names, ok := v.([]any); ok && allStringValues(names) {
				var kept []any
				for _, n := range names {
					if slices.Contains(cols, n.(string)) {
						kept = append(kept, n)
					}
				}
				if len(kept) == 0 {
					continue
				}
				v = kept
			}
		}
		out[name] = v
	}
	return out
}

func allStringValues(a []any) bool {
	for _, x := range a {
		if _, ok := x.(string); !ok {
			return false
		}
	}
	return true
}

// decodeEnvelope decodes event with encoding/json, numbers as json.Number
// (1e400 is valid JSON but no float64), and reports whether it is one JSON
// object.
func decodeEnvelope(event []byte) (map[string]any, bool) {
	if !json.Valid(event) {
		return nil, false
	}
	d := json.NewDecoder(bytes.NewReader(event))
	d.UseNumber()
	var env map[string]any
	if err := d.Decode(&env); err != nil || env == nil {
		return nil, false
	}
	return env, true
}

// countEnvelopeMember returns how many times the object obj (valid JSON) has a
// top-level member named name, by its decoded name.
func countEnvelopeMember(t *testing.T, obj []byte, name string) int {
	d := json.NewDecoder(bytes.NewReader(obj))
	if _, err := d.Token(); err != nil { // {
		t.Fatal(err)
	}
	n := 0
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			t.Fatal(err)
		}
		if tok == name {
			n++
		}
		var skip json.RawMessage
		if err := d.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func FuzzProjectEvent(f *testing.F) {
	for _, seed := range []string{
		projectCreate,
		projectUpdate,
		projectDelete,
		projectTruncate,
		` {"id" : "x", "key":{"id":1}, "data" : {"id":1, "status":"a", "x":[1,{"y":"}"}]}, "unchanged":["status", "notes"]} `,
		`{"d\u0061ta":{"st\u0061tus":1,"caf\u00e9":2,"a\"b":3,"\ud83d\ude00":4,"\ud800":5},"unchanged":["caf\u00e9","😀"]}`,
		`{"data":{"id":1,"id":2},"unchanged":["id"],"unchanged":["x"]}`,
		`{"data":null,"old":[],"unchanged":[1,"id"],"key":{"id":{"id":1}}}`,
		`{"data":{"id":1}} {}`,
		`{"data":{"id":1,}}`,
		`[]`,
	} {
		f.Add([]byte(seed))
	}
	for _, event := range readerEvents() {
		f.Add(event)
	}
	projections := make([]*Projection, len(fuzzProjections))
	for i, cols := range fuzzProjections {
		projections[i] = NewProjection(cols)
	}
	f.Fuzz(func(t *testing.T, event []byte) {
		env, isObject := decodeEnvelope(event)
		for _, p := range projections {
			got, err := p.AppendEvent([]byte("prefix"), event)
			if err != nil {
				if isObject {
					t.Fatalf("%q: AppendEvent(%q): %v; encoding/json reads it as an object", p.Columns(), event, err)
				}
				if string(got) != "prefix" {
					t.Fatalf("%q: AppendEvent failed and returned %q, not dst", p.Columns(), got)
				}
				continue
			}
			if !isObject {
				t.Fatalf("%q: AppendEvent(%q) succeeded; encoding/json does not read it as an object", p.Columns(), event)
			}
			got, ok := bytes.CutPrefix(got, []byte("prefix"))
			if !ok {
				t.Fatalf("%q: AppendEvent lost dst: %q", p.Columns(), got)
			}
			if p == nil {
				if !bytes.Equal(got, event) {
					t.Fatalf("nil projection changed %q to %q", event, got)
				}
				continue
			}
			out, ok := decodeEnvelope(got)
			if !ok {
				t.Fatalf("%q: AppendEvent(%q) = %q: not a JSON object", p.Columns(), event, got)
			}
			want := referenceProject(env, p)
			if countEnvelopeMember(t, event, "unchanged") > 1 {
				// Each occurrence is projected on its own: an earlier
				// one may stay where the last is dropped.
				delete(out, "unchanged")
				delete(want, "unchanged")
			}
			if !reflect.DeepEqual(out, want) {
				t.Fatalf("%q: AppendEvent(%q)\n = %q\ndecodes to %v\nreference  %v", p.Columns(), event, got, out, want)
			}
			// A projection is its own fixed point.
			again, err := p.AppendEvent(nil, got)
			if err != nil || !bytes.Equal(again, got) {
				t.Fatalf("%q: projecting %q again gives %q, %v", p.Columns(), got, again, err)
			}
		}
	})
}

// referenceView rewrites a decoded envelope into the view v the way
// appendView is documented to, before any projection: ViewNew drops "old"
// and takes the key's values from "data"; ViewOldAsDelete makes "op"
// "delete" and drops "data" and "unchanged".
func referenceView(env map[string]any, v View) map[string]any {
	out := make(map[string]any, len(env))
	for name, x := range env {
		switch {
		case v == ViewNew && name == "old",
			v == ViewOldAsDelete && (name == "data" || name == "unchanged"):
			continue
		case v == ViewOldAsDelete && name == "op":
			x = "delete"
		case v == ViewNew && name == "key":
			key, isObj := x.(map[string]any)
			data, hasData := env["data"].(map[string]any)
			if isObj && hasData {
				rebuilt := make(map[string]any, len(key))
				for col, val := range key {
					if nv, ok := data[col]; ok {
						val = nv
					}
					rebuilt[col] = val
				}
				x = rebuilt
			}
		}
		out[name] = x
	}
	return out
}

// referenceGrant keeps "key" to the granted columns.
func referenceGrant(env map[string]any, granted []string) map[string]any {
	key, ok := env["key"].(map[string]any)
	if !ok {
		return env
	}
	kept := map[string]any{}
	for col, x := range key {
		if slices.Contains(granted, col) {
			kept[col] = x
		}
	}
	out := maps.Clone(env)
	out["key"] = kept
	return out
}

// FuzzProjectView checks every view of an event, under a select list and
// under a column grant, against encoding/json and the reference above.
func FuzzProjectView(f *testing.F) {
	for _, seed := range []string{
		projectMove, projectUpdate, projectCreate,
		`{"op":"update","key":{"id":1,"id":2},"data":{"id":3},"old":{"id":1},"old":{"id":2}}`,
		`{"\u006fp":"update","k\u0065y":{"\u0069d":1,"caf\u00e9":2},"d\u0061ta":{"id":9,"café":8},"unch\u0061nged":["x"]}`,
		`{"key":{"id":1},"data":null,"old":{"id":1}}`,
		`{"key":[1],"data":{"id":1},"op":7}`,
	} {
		f.Add([]byte(seed))
	}
	type grant struct {
		sel, granted []string
		grant        bool
	}
	grants := []grant{{nil, nil, false}, {[]string{"id", "tenant"}, nil, false}, {nil, []string{"id", "café", "notes"}, true},
		{[]string{"notes"}, []string{"id", "notes", "tenant"}, true}, {nil, []string{}, true}}
	f.Fuzz(func(t *testing.T, event []byte) {
		env, isObject := decodeEnvelope(event)
		var envRow, data Row
		hasData := envRow.Reset(event) == nil && eventRow(&envRow, &data, schema.BitUpdate)
		for _, gr := range grants {
			p := NewProjection(gr.sel)
			if gr.grant {
				p = NewGrantedProjection(gr.sel, gr.granted)
			}
			for v := range NumViews {
				var dataRow *Row
				if hasData {
					dataRow = &data
				}
				got, err := p.AppendView(nil, event, v, dataRow)
				if (err == nil) != isObject {
					t.Fatalf("%v view %d: appendView(%q) error %v; encoding/json reads an object: %v", gr, v, event, err, isObject)
				}
				if err != nil {
					continue
				}
				out, ok := decodeEnvelope(got)
				if !ok {
					t.Fatalf("%v view %d: appendView(%q) = %q: not a JSON object", gr, v, event, got)
				}
				want := referenceProject(referenceView(env, v), p)
				if gr.grant {
					want = referenceGrant(want, gr.granted)
				}
				if countEnvelopeMember(t, event, "unchanged") > 1 {
					delete(out, "unchanged")
					delete(want, "unchanged")
				}
				if !reflect.DeepEqual(out, want) {
					t.Fatalf("%v view %d: appendView(%q)\n = %q\ndecodes to %v\nreference  %v", gr, v, event, got, out, want)
				}
			}
		}
	})
}
