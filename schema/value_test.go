package schema

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

type valueCase struct {
	name string
	oid  uint32
	text string
	want string
}

// userTypeOID stands for a type created by the user (enum, domain, citext):
// unknown to the converter.
const userTypeOID = 16385

var valueCases = []valueCase{
	// Integers.
	{"int2", pgtype.Int2OID, "-32768", "-32768"},
	{"int4", pgtype.Int4OID, "42", "42"},
	{"int4 zero", pgtype.Int4OID, "0", "0"},
	{"int8 max", pgtype.Int8OID, "9223372036854775807", "9223372036854775807"},
	{"int8 min", pgtype.Int8OID, "-9223372036854775808", "-9223372036854775808"},
	{"oid", pgtype.OIDOID, "4294967295", "4294967295"},
	{"xid", pgtype.XIDOID, "771", "771"},
	{"xid8", pgtype.XID8OID, "18446744073709551615", "18446744073709551615"},
	{"cid", pgtype.CIDOID, "3", "3"},
	{"int not json: leading zero", pgtype.Int4OID, "007", `"007"`},
	{"int not json: plus", pgtype.Int4OID, "+1", `"+1"`},
	{"int not json: empty", pgtype.Int4OID, "", `""`},
	{"int not json: minus", pgtype.Int4OID, "-", `"-"`},
	{"int not json: space", pgtype.Int4OID, " 1", `" 1"`},

	// Floats: every form float4out/float8out print.
	{"float8", pgtype.Float8OID, "1.5", "1.5"},
	{"float8 negative zero", pgtype.Float8OID, "-0", "-0"},
	{"float8 big exponent", pgtype.Float8OID, "1e+30", "1e+30"},
	{"float8 small exponent", pgtype.Float8OID, "1.5e-07", "1.5e-07"},
	{"float8 max", pgtype.Float8OID, "1.7976931348623157e+308", "1.7976931348623157e+308"},
	{"float8 min subnormal", pgtype.Float8OID, "5e-324", "5e-324"},
	{"float8 extra digits off", pgtype.Float8OID, "0.1", "0.1"},
	{"float4", pgtype.Float4OID, "3.4028235e+38", "3.4028235e+38"},
	{"float4 integer", pgtype.Float4OID, "100", "100"},
	{"float8 NaN", pgtype.Float8OID, "NaN", `"NaN"`},
	{"float8 Infinity", pgtype.Float8OID, "Infinity", `"Infinity"`},
	{"float8 -Infinity", pgtype.Float8OID, "-Infinity", `"-Infinity"`},
	{"float4 NaN", pgtype.Float4OID, "NaN", `"NaN"`},
	{"float not json: bare dot", pgtype.Float8OID, ".5", `".5"`},
	{"float not json: trailing dot", pgtype.Float8OID, "5.", `"5."`},
	{"float not json: bare exponent", pgtype.Float8OID, "1e", `"1e"`},

	// numeric and money keep their text.
	{"numeric", pgtype.NumericOID, "19.90", `"19.90"`},
	{"numeric long", pgtype.NumericOID, "123456789012345678901234567890.000000000000000000001", `"123456789012345678901234567890.000000000000000000001"`},
	{"numeric NaN", pgtype.NumericOID, "NaN", `"NaN"`},
	{"numeric Infinity", pgtype.NumericOID, "Infinity", `"Infinity"`},
	{"numeric -Infinity", pgtype.NumericOID, "-Infinity", `"-Infinity"`},
	{"money", MoneyOID, "$1,000.00", `"$1,000.00"`},
	{"money negative", MoneyOID, "-$1.50", `"-$1.50"`},

	// bool.
	{"bool true", pgtype.BoolOID, "t", "true"},
	{"bool false", pgtype.BoolOID, "f", "false"},
	{"bool unexpected", pgtype.BoolOID, "true", `"true"`},

	// Text types.
	{"text", pgtype.TextOID, "hello", `"hello"`},
	{"text empty", pgtype.TextOID, "", `""`},
	{"text escapes", pgtype.TextOID, "a\"b\\c\nd\re\tf\bg\fh\x00i\x1fj", `"a\"b\\c\nd\re\tf\bg\fh\u0000i\u001fj"`},
	{"text html kept", pgtype.TextOID, "<a href='x'>&amp;</a>", `"<a href='x'>&amp;</a>"`},
	{"text unicode", pgtype.TextOID, "héllo wörld ☃ 😀", `"héllo wörld ☃ 😀"`},
	{"text line separators", pgtype.TextOID, "a\u2028b\u2029c", `"a\u2028b\u2029c"`},
	{"text invalid utf8", pgtype.TextOID, "a\xffb\xc3", `"a\ufffdb\ufffd"`},
	{"text DEL kept", pgtype.TextOID, "\x7f", "\"\x7f\""},
	{"varchar", pgtype.VarcharOID, "paid", `"paid"`},
	{"bpchar keeps padding", pgtype.BPCharOID, "ab   ", `"ab   "`},
	{"name", pgtype.NameOID, "orders", `"orders"`},
	{"char", pgtype.QCharOID, "x", `"x"`},
	{"uuid", pgtype.UUIDOID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
	{"xml", pgtype.XMLOID, `<a x="1">t</a>`, `"<a x=\"1\">t</a>"`},
	{"user type (enum, citext)", userTypeOID, "Paid", `"Paid"`},
	{"unknown builtin oid", 22 /* int2vector */, "1 2", `"1 2"`},

	// json and jsonb are embedded.
	{"jsonb object", pgtype.JSONBOID, `{"a": 1, "b": [true, null]}`, `{"a": 1, "b": [true, null]}`},
	{"jsonb scalar", pgtype.JSONBOID, `"x"`, `"x"`},
	{"jsonb number", pgtype.JSONBOID, `1.5`, `1.5`},
	{"json keeps layout", pgtype.JSONOID, "{\n  \"a\" : 1\n}", "{\n  \"a\" : 1\n}"},
	{"json invalid", pgtype.JSONOID, `{"a":`, `"{\"a\":"`},
	{"json invalid utf8", pgtype.JSONOID, "\"\xff\"", `"\"\ufffd\""`},
	{"json empty", pgtype.JSONOID, "", `""`},

	// bytea: base64.
	{"bytea hex", pgtype.ByteaOID, `\x68656c6c6f`, `"aGVsbG8="`},
	{"bytea hex upper", pgtype.ByteaOID, `\xDEADBEEF`, `"3q2+7w=="`},
	{"bytea empty", pgtype.ByteaOID, `\x`, `""`},
	{"bytea hex odd", pgtype.ByteaOID, `\x123`, `"\\x123"`},
	{"bytea hex bad digit", pgtype.ByteaOID, `\x1g`, `"\\x1g"`},
	{"bytea escape", pgtype.ByteaOID, `ab\\c\000\377`, `"YWJcYwD/"`},
	{"bytea escape plain", pgtype.ByteaOID, `hello`, `"aGVsbG8="`},
	{"bytea escape bad", pgtype.ByteaOID, `a\9`, `"a\\9"`},
	{"bytea escape out of range", pgtype.ByteaOID, `\400`, `"\\400"`},
	{"bytea escape short", pgtype.ByteaOID, `\12`, `"\\12"`},

	// timestamptz.
	{"timestamptz utc", pgtype.TimestamptzOID, "2026-11-22 07:00:00.123456+00", `"2026-11-22T07:00:00.123456Z"`},
	{"timestamptz no fraction", pgtype.TimestamptzOID, "2026-11-22 07:00:00+00", `"2026-11-22T07:00:00Z"`},
	{"timestamptz short fraction", pgtype.TimestamptzOID, "2026-11-22 07:00:00.5+05:30", `"2026-11-22T07:00:00.5+05:30"`},
	{"timestamptz hour offset", pgtype.TimestamptzOID, "2026-11-22 07:00:00.12-08", `"2026-11-22T07:00:00.12-08:00"`},
	{"timestamptz zero minutes offset", pgtype.TimestamptzOID, "2026-11-22 07:00:00+00:00", `"2026-11-22T07:00:00Z"`},
	{"timestamptz offset zero seconds", pgtype.TimestamptzOID, "2026-11-22 07:00:00+01:00:00", `"2026-11-22T07:00:00+01:00"`},
	{"timestamptz offset seconds", pgtype.TimestamptzOID, "1850-01-01 00:00:00+00:53:28", `"1850-01-01 00:00:00+00:53:28"`},
	{"timestamptz leap day", pgtype.TimestamptzOID, "2024-02-29 23:59:59.999999+00", `"2024-02-29T23:59:59.999999Z"`},
	{"timestamptz not a leap day", pgtype.TimestamptzOID, "2023-02-29 00:00:00+00", `"2023-02-29 00:00:00+00"`},
	{"timestamptz year 1", pgtype.TimestamptzOID, "0001-01-01 00:00:00+00", `"0001-01-01T00:00:00Z"`},
	{"timestamptz infinity", pgtype.TimestamptzOID, "infinity", `"infinity"`},
	{"timestamptz -infinity", pgtype.TimestamptzOID, "-infinity", `"-infinity"`},
	{"timestamptz BC", pgtype.TimestamptzOID, "0044-03-15 12:00:00+00 BC", `"0044-03-15 12:00:00+00 BC"`},
	{"timestamptz year 10000", pgtype.TimestamptzOID, "10000-01-01 00:00:00+00", `"10000-01-01 00:00:00+00"`},
	{"timestamptz no zone", pgtype.TimestamptzOID, "2026-11-22 07:00:00", `"2026-11-22 07:00:00"`},
	{"timestamptz other DateStyle", pgtype.TimestamptzOID, "Sun Nov 22 07:00:00 2026 UTC", `"Sun Nov 22 07:00:00 2026 UTC"`},
	{"timestamptz empty fraction", pgtype.TimestamptzOID, "2026-11-22 07:00:00.+00", `"2026-11-22 07:00:00.+00"`},

	// timestamp without time zone.
	{"timestamp", pgtype.TimestampOID, "2026-11-22 07:00:00.123456", `"2026-11-22T07:00:00.123456"`},
	{"timestamp no fraction", pgtype.TimestampOID, "2026-11-22 07:00:00", `"2026-11-22T07:00:00"`},
	{"timestamp fraction 1", pgtype.TimestampOID, "2026-11-22 07:00:00.1", `"2026-11-22T07:00:00.1"`},
	{"timestamp infinity", pgtype.TimestampOID, "infinity", `"infinity"`},
	{"timestamp BC", pgtype.TimestampOID, "0001-01-01 00:00:00 BC", `"0001-01-01 00:00:00 BC"`},
	{"timestamp with zone", pgtype.TimestampOID, "2026-11-22 07:00:00+00", `"2026-11-22 07:00:00+00"`},
	{"timestamp bad month", pgtype.TimestampOID, "2026-13-01 00:00:00", `"2026-13-01 00:00:00"`},

	// date, time and the other string types.
	{"date", pgtype.DateOID, "2026-11-22", `"2026-11-22"`},
	{"date infinity", pgtype.DateOID, "infinity", `"infinity"`},
	{"date BC", pgtype.DateOID, "0044-03-15 BC", `"0044-03-15 BC"`},
	{"time", pgtype.TimeOID, "07:00:00.5", `"07:00:00.5"`},
	{"timetz", pgtype.TimetzOID, "07:00:00+02", `"07:00:00+02"`},
	{"interval", pgtype.IntervalOID, "1 day 02:00:00", `"1 day 02:00:00"`},
	{"inet", pgtype.InetOID, "192.168.0.1/24", `"192.168.0.1/24"`},
	{"cidr", pgtype.CIDROID, "10.0.0.0/8", `"10.0.0.0/8"`},
	{"macaddr", pgtype.MacaddrOID, "08:00:2b:01:02:03", `"08:00:2b:01:02:03"`},
	{"bit", pgtype.BitOID, "101", `"101"`},
	{"varbit", pgtype.VarbitOID, "10", `"10"`},
	{"point", pgtype.PointOID, "(1,2)", `"(1,2)"`},

	// Arrays.
	{"int4[]", pgtype.Int4ArrayOID, "{1,2,3}", "[1,2,3]"},
	{"int4[] empty", pgtype.Int4ArrayOID, "{}", "[]"},
	{"int4[][]", pgtype.Int4ArrayOID, "{{1,2},{3,4}}", "[[1,2],[3,4]]"},
	{"int4[][][]", pgtype.Int4ArrayOID, "{{{1},{2}},{{3},{4}}}", "[[[1],[2]],[[3],[4]]]"},
	{"int4[] nulls", pgtype.Int4ArrayOID, "{1,NULL,3}", "[1,null,3]"},
	{"int4[] bounds", pgtype.Int4ArrayOID, "[0:1]={1,2}", `"[0:1]={1,2}"`},
	{"int4[][] bounds", pgtype.Int4ArrayOID, "[2:3][-1:0]={{1,2},{3,4}}", `"[2:3][-1:0]={{1,2},{3,4}}"`},
	{"int4[][] bounds, the first from 1", pgtype.Int4ArrayOID, "[1:2][-1:0]={{1,2},{3,4}}", `"[1:2][-1:0]={{1,2},{3,4}}"`},
	{"int2[]", pgtype.Int2ArrayOID, "{-1,0}", "[-1,0]"},
	{"int8[]", pgtype.Int8ArrayOID, "{9223372036854775807}", "[9223372036854775807]"},
	{"oid[] via type map", pgtype.OIDArrayOID, "{1,2}", "[1,2]"},
	{"float8[]", pgtype.Float8ArrayOID, "{1.5,NaN,-Infinity,1e+30}", `[1.5,"NaN","-Infinity",1e+30]`},
	{"float4[]", pgtype.Float4ArrayOID, "{1,2.5}", "[1,2.5]"},
	{"numeric[]", pgtype.NumericArrayOID, "{19.90,NaN}", `["19.90","NaN"]`},
	{"bool[]", pgtype.BoolArrayOID, "{t,f,NULL}", "[true,false,null]"},
	{"text[]", pgtype.TextArrayOID, `{"a,b","c\"d",NULL,"NULL"}`, `["a,b","c\"d",null,"NULL"]`},
	{"text[] plain", pgtype.TextArrayOID, `{a,b}`, `["a","b"]`},
	{"text[] empty string", pgtype.TextArrayOID, `{""}`, `[""]`},
	{"text[] backslash", pgtype.TextArrayOID, `{"a\\b"}`, `["a\\b"]`},
	{"text[] braces and spaces", pgtype.TextArrayOID, `{"{x}"," y "}`, `["{x}"," y "]`},
	{"text[] unicode", pgtype.TextArrayOID, `{héllo,"wö rld"}`, `["héllo","wö rld"]`},
	{"text[] null lower case", pgtype.TextArrayOID, `{null,Null}`, `[null,null]`},
	{"text[] null escaped", pgtype.TextArrayOID, `{\NULL}`, `["NULL"]`},
	{"text[] array_in spaces", pgtype.TextArrayOID, ` { a b , "c" } `, `["a b","c"]`},
	{"text[] unquoted escapes", pgtype.TextArrayOID, `{a\,b,c\ }`, `["a,b","c "]`},
	{"text[][]", pgtype.TextArrayOID, `{{a,b},{"c d",NULL}}`, `[["a","b"],["c d",null]]`},
	{"varchar[]", pgtype.VarcharArrayOID, `{x,y}`, `["x","y"]`},
	{"bpchar[] via type map", pgtype.BPCharArrayOID, `{"a  "}`, `["a  "]`},
	{"uuid[]", pgtype.UUIDArrayOID, `{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}`, `["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]`},
	{"json[]", pgtype.JSONArrayOID, `{"{\"a\": 1}","[1, 2]",NULL,3}`, `[{"a": 1},[1, 2],null,3]`},
	{"jsonb[]", pgtype.JSONBArrayOID, `{"{\"a\": \"b\\\\c\"}"}`, `[{"a": "b\\c"}]`},
	{"timestamptz[]", pgtype.TimestamptzArrayOID, `{"2026-11-22 07:00:00.5+00",infinity,NULL}`, `["2026-11-22T07:00:00.5Z","infinity",null]`},
	{"timestamp[]", pgtype.TimestampArrayOID, `{"2026-11-22 07:00:00"}`, `["2026-11-22T07:00:00"]`},
	{"date[]", pgtype.DateArrayOID, `{2026-11-22,infinity}`, `["2026-11-22","infinity"]`},
	{"bytea[] via type map", pgtype.ByteaArrayOID, `{"\\x6869",NULL}`, `["aGk=",null]`},
	{"money[]", moneyArrayOID, `{"$1,000.00","$2.00"}`, `["$1,000.00","$2.00"]`},
	{"inet[] via type map", pgtype.InetArrayOID, `{10.0.0.1,::1}`, `["10.0.0.1","::1"]`},
	{"interval[] via type map", pgtype.IntervalArrayOID, `{"1 day","02:00:00"}`, `["1 day","02:00:00"]`},
	{"box[] uses ;", pgtype.BoxArrayOID, `{(1,1),(0,0);(2,2),(1,1)}`, `["(1,1),(0,0)","(2,2),(1,1)"]`},
	{"int4[] bad element", pgtype.Int4ArrayOID, `{1,x}`, `[1,"x"]`},
	{"user array type", userTypeOID, `{a,b}`, `"{a,b}"`},

	// Malformed arrays: the string of the text.
	{"array unterminated", pgtype.Int4ArrayOID, "{1,2", `"{1,2"`},
	{"array trailing", pgtype.Int4ArrayOID, "{1,2}x", `"{1,2}x"`},
	{"array extra close", pgtype.Int4ArrayOID, "{1}}", `"{1}}"`},
	{"array no braces", pgtype.Int4ArrayOID, "1,2", `"1,2"`},
	{"array empty text", pgtype.Int4ArrayOID, "", `""`},
	{"array empty element", pgtype.Int4ArrayOID, "{1,,2}", `"{1,,2}"`},
	{"array trailing delimiter", pgtype.Int4ArrayOID, "{1,}", `"{1,}"`},
	{"array leading delimiter", pgtype.Int4ArrayOID, "{,1}", `"{,1}"`},
	{"array unterminated quote", pgtype.TextArrayOID, `{"a}`, `"{\"a}"`},
	{"array quote in unquoted", pgtype.TextArrayOID, `{a"b}`, `"{a\"b}"`},
	{"array missing delimiter", pgtype.TextArrayOID, `{"a""b"}`, `"{\"a\"\"b\"}"`},
	{"array bad bounds", pgtype.Int4ArrayOID, "[0:1{1,2}", `"[0:1{1,2}"`},
	{"array bounds without =", pgtype.Int4ArrayOID, "[0:1]{1,2}", `"[0:1]{1,2}"`},
	{"array dangling escape", pgtype.TextArrayOID, `{a\`, `"{a\\"`},
}

func TestAppendValue(t *testing.T) {
	for _, tc := range valueCases {
		t.Run(tc.name, func(t *testing.T) {
			got := AppendValue(nil, tc.oid, []byte(tc.text))
			if string(got) != tc.want {
				t.Errorf("AppendValue(%d, %q)\n got %s\nwant %s", tc.oid, tc.text, got, tc.want)
			}
			if !json.Valid(got) {
				t.Errorf("AppendValue(%d, %q) = %s: not valid JSON", tc.oid, tc.text, got)
			}
			// Appending keeps what dst held.
			prefix := []byte(`{"k":`)
			got2 := AppendValue(prefix, tc.oid, []byte(tc.text))
			if !bytes.Equal(got2, append([]byte(`{"k":`), tc.want...)) {
				t.Errorf("AppendValue with a prefix = %s", got2)
			}
		})
	}
}

func TestAppendValueLongBytea(t *testing.T) {
	// Longer than one chunk, and not a multiple of it, to cross the chunk
	// boundaries.
	for _, n := range []int{byteaChunk - 1, byteaChunk, byteaChunk + 1, 3*byteaChunk + 2} {
		raw := make([]byte, n)
		for i := range raw {
			raw[i] = byte(i * 7)
		}
		want, _ := json.Marshal(raw) // encoding/json writes []byte as std base64
		hexText := []byte(`\x`)
		escText := []byte{}
		for _, b := range raw {
			hexText = hex.AppendEncode(hexText, []byte{b})
			escText = append(escText, '\\', '0'+b>>6, '0'+(b>>3)&7, '0'+b&7)
		}
		if got := AppendValue(nil, pgtype.ByteaOID, hexText); !bytes.Equal(got, want) {
			t.Errorf("hex, %d bytes: got %.40s…, want %.40s…", n, got, want)
		}
		if got := AppendValue(nil, pgtype.ByteaOID, escText); !bytes.Equal(got, want) {
			t.Errorf("escape, %d bytes: got %.40s…, want %.40s…", n, got, want)
		}
	}
}

func TestBuiltinArrays(t *testing.T) {
	arrays := builtinArrays()
	for _, oid := range []uint32{pgtype.OIDArrayOID, pgtype.ByteaArrayOID, pgtype.InetArrayOID, pgtype.BoxArrayOID, pgtype.XID8ArrayOID} {
		if _, ok := arrays[oid]; !ok {
			t.Errorf("array type %d missing from builtinArrays", oid)
		}
	}
	if a := arrays[pgtype.BoxArrayOID]; a.delim != ';' {
		t.Errorf("box[] delimiter = %q, want ';'", a.delim)
	}
	// Elements are never arrays themselves: AppendValue recurses once.
	for oid, a := range arrays {
		if _, ok := arrays[a.elem]; ok {
			t.Errorf("array type %d has array element type %d", oid, a.elem)
		}
	}
}

func TestAppendValueAllocs(t *testing.T) {
	cases := []struct {
		name string
		oid  uint32
		text string
	}{
		{"int8", pgtype.Int8OID, "9223372036854775807"},
		{"float8", pgtype.Float8OID, "1.5e-07"},
		{"numeric", pgtype.NumericOID, "12345.6789"},
		{"bool", pgtype.BoolOID, "t"},
		{"text", pgtype.TextOID, "hello \"world\"\n é"},
		{"uuid", pgtype.UUIDOID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"jsonb", pgtype.JSONBOID, `{"a": 1, "b": [true, null, "x"]}`},
		{"timestamptz", pgtype.TimestamptzOID, "2026-11-22 07:00:00.123456+00"},
		{"timestamp", pgtype.TimestampOID, "2026-11-22 07:00:00.123456"},
		{"date", pgtype.DateOID, "2026-11-22"},
		{"bytea", pgtype.ByteaOID, `\x68656c6c6f`},
		{"int4[]", pgtype.Int4ArrayOID, "{1,2,3}"},
		{"text[] escaped", pgtype.TextArrayOID, `{"a\"b",c}`},
		{"inet[] via type map", pgtype.InetArrayOID, `{10.0.0.1}`},
	}
	dst := make([]byte, 0, 4096)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			text := []byte(tc.text)
			allocs := testing.AllocsPerRun(100, func() {
				dst = AppendValue(dst[:0], tc.oid, text)
			})
			if allocs != 0 {
				t.Errorf("AppendValue(%s) allocates %.1f times per call, want 0", tc.name, allocs)
			}
		})
	}
}

func BenchmarkAppendValue(b *testing.B) {
	cases := []struct {
		name string
		oid  uint32
		text string
	}{
		{"int4", pgtype.Int4OID, "42"},
		{"int8", pgtype.Int8OID, "9223372036854775807"},
		{"float8", pgtype.Float8OID, "1.5e-07"},
		{"numeric", pgtype.NumericOID, "12345.6789"},
		{"bool", pgtype.BoolOID, "t"},
		{"text/short", pgtype.TextOID, "paid"},
		{"text/64", pgtype.TextOID, strings.Repeat("abcdefgh", 8)},
		{"text/1k", pgtype.TextOID, strings.Repeat("The quick brown fox jumps over the lazy dog. ", 23)},
		{"text/1k-utf8", pgtype.TextOID, strings.Repeat("Größenwahn ☃ ", 70)},
		{"text/escapes", pgtype.TextOID, "line one\nline \"two\"\ttab\\"},
		{"uuid", pgtype.UUIDOID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"jsonb", pgtype.JSONBOID, `{"id": 42, "tags": ["a", "b"], "meta": {"ok": true, "n": null}}`},
		{"timestamptz", pgtype.TimestamptzOID, "2026-11-22 07:00:00.123456+00"},
		{"timestamp", pgtype.TimestampOID, "2026-11-22 07:00:00.123456"},
		{"date", pgtype.DateOID, "2026-11-22"},
		{"bytea/16", pgtype.ByteaOID, `\x000102030405060708090a0b0c0d0e0f`},
		{"bytea/1k", pgtype.ByteaOID, `\x` + strings.Repeat("0123456789abcdef", 128)},
		{"int4[]/10", pgtype.Int4ArrayOID, "{1,2,3,4,5,6,7,8,9,10}"},
		{"text[]/4", pgtype.TextArrayOID, `{alpha,"be ta","ga\"mma",NULL}`},
		{"timestamptz[]/2", pgtype.TimestamptzArrayOID, `{"2026-11-22 07:00:00+00","2026-11-22 08:00:00.5+00"}`},
		{"enum", userTypeOID, "shipped"},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			text := []byte(tc.text)
			dst := make([]byte, 0, 4096)
			b.ReportAllocs()
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				dst = AppendValue(dst[:0], tc.oid, text)
			}
		})
	}
}
