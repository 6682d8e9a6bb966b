package jsonx

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestValidMatchesEncodingJSON(t *testing.T) {
	inputs := []string{
		"", " ", "null", "true", "false", "nul", "truex", "0", "-0", "01", "1.", ".1", "1e5", "1E+5", "1e",
		"-", "--1", `""`, `"`, `"\"`, `"\\"`, `"\u00e9"`, `"\u00g9"`, `"\x"`, `"\/"`, "\"\x01\"",
		"\"\xff\"", "[]", "{}", "[ ]", "{ }", "[1,]", "[,1]", "[1 2]", `{"a"}`, `{"a":}`, `{"a":1,}`,
		`{"a":1 "b":2}`, `{1:2}`, `{"a":[1,{"b":null}],"c":"d"}`, `{"a":[],"b":{}}`, `[[],{},[{}]]`, `{"":0, "":[]}`, " \t\r\n[1]\n", "[1]]", "[[1]", "{]", "[}",
		"1 2", `"a" "b"`, "\u00a0 1", `{"a":1}x`, `[true,false,null,-1.5e-07,"x"]`,
		"12345678901234567890\"abc\"", `"12345678\"abcdefgh"`, `"1234567812345678`,
		strings.Repeat("[", 64) + strings.Repeat("]", 64),
		strings.Repeat("[", 65) + strings.Repeat("]", 65),
		strings.Repeat(`{"a":`, 70) + "1" + strings.Repeat("}", 70),
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		strings.Repeat("[", 65) + strings.Repeat("]", 64),
		// Containers that change kind across the 64-level words of the stack.
		strings.Repeat(`[{"a":`, 70) + "1" + strings.Repeat("}]", 70),
		strings.Repeat(`[{"a":`, 70) + "1" + strings.Repeat("]}", 70),
		strings.Repeat("[", 129) + strings.Repeat("]", 128) + "}",
		// Strings around the eight-byte words of ScanString.
		`"1234567é"`, `"12345678é12345678"`, `"éééééééé\"\\\u00e9"`, "\"1234567\x1f\"", "\"12345678\xc3\xa9\x01\"",
	}
	for _, s := range inputs {
		if got, want := Valid([]byte(s)), json.Valid([]byte(s)); got != want {
			t.Errorf("Valid(%.40q) = %v, json.Valid %v", s, got, want)
		}
	}
}

func TestScanStringPlain(t *testing.T) {
	cases := []struct {
		in    string
		end   int // -1: not a string
		plain bool
	}{
		{`""`, 2, true},
		{`"abc" tail`, 5, true},
		{`"12345678abcdefgh"`, 18, true},
		{`"12345678é"`, 12, false},
		{`"é12345678abcdefgh"`, 20, false},
		{`"1234567\n"`, 11, false},
		{`"abc\"def"`, 10, false},
		{`"\u0041"`, 8, false},
		{"\"1234567\x01\"", -1, false},
		{`"12345678`, -1, false},
		{`"\x"`, -1, false},
		{`"\u12"`, -1, false},
		{`"abc\`, -1, false},
	}
	for _, tc := range cases {
		end, plain, ok := ScanString([]byte(tc.in), 0)
		if tc.end < 0 {
			if ok {
				t.Errorf("ScanString(%q) = %d, %v, ok; want not ok", tc.in, end, plain)
			}
			continue
		}
		if !ok || end != tc.end || plain != tc.plain {
			t.Errorf("ScanString(%q) = %d, %v, %v; want %d, %v, true", tc.in, end, plain, ok, tc.end, tc.plain)
		}
	}
}

func TestScannerDepth(t *testing.T) {
	var s Scanner
	for _, tc := range []struct {
		depth int
		want  error
	}{{1, nil}, {64, nil}, {65, nil}, {MaxDepth - 1, nil}, {MaxDepth, ErrTooDeep}} {
		v := []byte(strings.Repeat("[", tc.depth) + strings.Repeat("]", tc.depth))
		end, err := s.SkipValue(v, 0)
		if !errors.Is(err, tc.want) || err == nil && end != len(v) {
			t.Errorf("SkipValue of %d levels = %d, %v; want %d, %v", tc.depth, end, err, len(v), tc.want)
		}
	}
}

func TestScannerAllocs(t *testing.T) {
	var s Scanner
	deep := []byte(strings.Repeat(`{"a":[`, 100) + "1" + strings.Repeat("]}", 100))
	flat := []byte(`{"id": 42, "tags": ["a", "b"], "meta": {"ok": true, "n": null, "note": "a longer string value héré"}}`)
	for _, v := range [][]byte{deep, flat} {
		if _, err := s.SkipValue(v, 0); err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(100, func() { _, _ = s.SkipValue(v, 0) }); n != 0 {
			t.Errorf("SkipValue allocates %v times once warmed, want 0", n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { Valid(flat) }); n != 0 {
		t.Errorf("Valid allocates %v times, want 0", n)
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{`plain`, "plain"},
		{`caf\u00e9 \"x\"`, `café "x"`},
		{`\ud83d\ude00`, "😀"},
		{`\ud800`, "\ufffd"},
		{"\xff", "\ufffd"},
		{`\b\f\n\r\t\/`, "\b\f\n\r\t/"},
	} {
		if got := DecodeString([]byte(tc.raw)); got != tc.want {
			t.Errorf("DecodeString(%q) = %q, want %q", tc.raw, got, tc.want)
		}
		if CompareString([]byte(tc.raw), tc.want) != 0 || CompareString([]byte(tc.raw), tc.want+"x") >= 0 {
			t.Errorf("CompareString(%q, %q) does not order it", tc.raw, tc.want)
		}
		if IsPlain([]byte(tc.raw)) != (tc.raw == tc.want) {
			t.Errorf("IsPlain(%q) = %v", tc.raw, !(tc.raw == tc.want))
		}
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	inputs := []string{
		"", "plain ascii long enough for the word loop", "a\"b", `back\slash`,
		"\x00\x01\x07\x08\x09\x0a\x0b\x0c\x0d\x1b\x1f\x20", "<>&'", "\u2028\u2029",
		"12345678\"12345678\\12345678\n", "héllo wörld ☃ 😀", "\xff\xfe", "a\xe2\x80", "\xed\xa0\x80",
		strings.Repeat("x", 100) + "\xc3\xa9" + strings.Repeat("y", 9),
		"\x7f\x80", "~~~~~~~~", "!!!!!!!!", "########",
	}
	for _, s := range inputs {
		want := encodingJSONString(s)
		if got := AppendString(nil, s); string(got) != want {
			t.Errorf("AppendString(%q) = %s, want %s", s, got, want)
		}
		if got := AppendStringBytes(nil, []byte(s)); string(got) != want {
			t.Errorf("AppendStringBytes(%q) = %s, want %s", s, got, want)
		}
	}
}

func TestAppendStringAllocs(t *testing.T) {
	dst := make([]byte, 0, 4096)
	s := "héllo \"wörld\"\n \u2028 \xff 😀"
	allocs := testing.AllocsPerRun(100, func() {
		dst = AppendString(dst[:0], s)
	})
	if allocs != 0 {
		t.Errorf("AppendString allocates %.1f times per call, want 0", allocs)
	}
}

// encodingJSONString is the reference AppendString must match.
func encodingJSONString(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// FuzzScan holds the scanner and the writer to encoding/json on any bytes:
// Valid agrees with json.Valid, AppendString writes what encoding/json
// writes and round-trips valid UTF-8, and ScanString reads back what
// AppendString wrote, plain exactly when its bytes are its text.
func FuzzScan(f *testing.F) {
	for _, seed := range []string{`{"a": [1, "x", null]}`, `"caf\u00e9"`, "\"12345678\xc3\xa9\"", `[[[{}]]]`, "\xff"} {
		f.Add([]byte(seed))
	}
	// More seeds live in testdata/fuzz/FuzzScan.
	f.Fuzz(func(t *testing.T, text []byte) {
		// The embedded-JSON check agrees with encoding/json.
		if got, want := Valid(text), json.Valid(text); got != want {
			t.Fatalf("Valid(%q) = %v, json.Valid %v", text, got, want)
		}

		// AppendString is encoding/json's string encoding without HTML
		// escaping, and round-trips valid UTF-8.
		str := AppendStringBytes(nil, text)
		if want := encodingJSONString(string(text)); string(str) != want {
			t.Fatalf("AppendStringBytes(%q) = %s, encoding/json %s", text, str, want)
		}
		if s2 := AppendString(nil, string(text)); !bytes.Equal(s2, str) {
			t.Fatalf("AppendString and AppendStringBytes differ on %q", text)
		}
		if utf8.Valid(text) {
			var back string
			if err := json.Unmarshal(str, &back); err != nil || back != string(text) {
				t.Fatalf("AppendStringBytes(%q) = %s does not round-trip: %q, %v", text, str, back, err)
			}
		}

		end, plain, ok := ScanString(str, 0)
		body := str[1 : len(str)-1]
		wantPlain := bytes.IndexByte(body, '\\') < 0 && !bytes.ContainsFunc(body, func(r rune) bool { return r >= utf8.RuneSelf })
		if !ok || end != len(str) || plain != wantPlain {
			t.Fatalf("ScanString(%s) = %d, %v, %v; want %d, %v, true", str, end, plain, ok, len(str), wantPlain)
		}
		if got := DecodeString(body); utf8.Valid(text) && got != string(text) {
			t.Fatalf("DecodeString(%s) = %q, want %q", body, got, text)
		}
	})
}

// BenchmarkValid compares the embedded-JSON check with json.Valid, the
// reference it must agree with.
func BenchmarkValid(b *testing.B) {
	doc := []byte(`{"id": 42, "tags": ["a", "b"], "meta": {"ok": true, "n": null, "note": "a longer string value here"}}`)
	b.Run("Valid", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(doc)))
		for b.Loop() {
			Valid(doc)
		}
	})
	b.Run("json.Valid", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(doc)))
		for b.Loop() {
			json.Valid(doc)
		}
	})
}

func TestMemberNext(t *testing.T) {
	doc := []byte(`{ "a" : 1 , "b\u0063":[2] }x`)
	name, plain, v, err := Member(doc, 2)
	if string(name) != "a" || !plain || v != 8 || err != nil {
		t.Fatalf("Member = %q, %v, %d, %v", name, plain, v, err)
	}
	next, more, err := Next(doc, 9, '}')
	if next != 12 || !more || err != nil {
		t.Fatalf("Next after 1 = %d, %v, %v", next, more, err)
	}
	name, plain, v, err = Member(doc, next)
	if string(name) != `b\u0063` || plain || v != 22 || err != nil {
		t.Fatalf("Member = %q, %v, %d, %v", name, plain, v, err)
	}
	if next, more, err = Next(doc, 25, '}'); next != 27 || more || err != nil {
		t.Fatalf("Next after [2] = %d, %v, %v", next, more, err)
	}
	for _, tc := range []struct {
		doc string
		at  int // the fault
	}{{`1`, 0}, {`"a" 1`, 4}, {`"a`, 0}, {`"a"`, 3}} {
		if _, _, at, err := Member([]byte(tc.doc), 0); err != ErrSyntax || at != tc.at {
			t.Errorf("Member(%q) fault at %d, %v; want %d", tc.doc, at, err, tc.at)
		}
	}
	for _, tc := range []struct {
		doc string
		at  int
	}{{` `, 1}, {` ]`, 1}, {`x`, 0}} {
		if at, _, err := Next([]byte(tc.doc), 0, '}'); err != ErrSyntax || at != tc.at {
			t.Errorf("Next(%q) fault at %d, %v; want %d", tc.doc, at, err, tc.at)
		}
	}
}

// TestValidNested: the limit counts containers, the value's own included.
func TestValidNested(t *testing.T) {
	for _, c := range []struct {
		doc   string
		limit int
		want  bool
	}{
		{`1`, 0, true},
		{`[]`, 0, false},
		{`[]`, 1, true},
		{` {"a":[1,{"b":[]}]} `, 4, true},
		{`{"a":[1,{"b":[]}]}`, 3, false},
		{`[1,]`, 5, false},
		{strings.Repeat("[", 100) + strings.Repeat("]", 100), 100, true},
		{strings.Repeat("[", 101) + strings.Repeat("]", 101), 100, false},
	} {
		if got := ValidNested([]byte(c.doc), c.limit); got != c.want {
			t.Errorf("ValidNested(%.40q, %d) = %v, want %v", c.doc, c.limit, got, c.want)
		}
	}
}
