package schema

import (
	"strings"
	"testing"
)

func TestParseTableName(t *testing.T) {
	good := map[string][2]string{
		"public.orders":                  {"public", "orders"},
		"Sales.Orders":                   {"Sales", "Orders"},
		`"My Schema"."ordérs.v2"`:        {"My Schema", "ordérs.v2"},
		`public."say ""hi"""`:            {"public", `say "hi"`},
		`"a.b".c`:                        {"a.b", "c"},
		"schéma.tâble":                   {"schéma", "tâble"},
		`public."select"`:                {"public", "select"},
		`"public"."Customer Notes"`:      {"public", "Customer Notes"},
		`"with,comma"."and ""quotes"""`:  {"with,comma", `and "quotes"`},
		`x."trailing.dot."`:              {"x", "trailing.dot."},
		`"leading space"." inner space"`: {"leading space", " inner space"},
		"my schema.örders v2":            {"my schema", "örders v2"},
	}
	for in, want := range good {
		s, tb, err := ParseTableName(in)
		if err != nil || s != want[0] || tb != want[1] {
			t.Errorf("ParseTableName(%s) = %q, %q, %v; want %q, %q", in, s, tb, err, want[0], want[1])
		}
	}
	for _, bad := range []string{"", "orders", "public.", ".orders", "a.b.c", `"unterminated.orders`, `"".orders`, `public."x"y`, `a"b.c`} {
		if s, tb, err := ParseTableName(bad); err == nil {
			t.Errorf("ParseTableName(%q) = %q, %q; want an error", bad, s, tb)
		}
	}
}

func TestParseQualifiedName(t *testing.T) {
	good := map[string][3]string{
		"public.orders":                    {"", "public", "orders"},
		"shop.public.orders":               {"shop", "public", "orders"},
		`"my.db".public."orders.v2"`:       {"my.db", "public", "orders.v2"},
		`shop."a.b".c`:                     {"shop", "a.b", "c"},
		`"a.b".c`:                          {"", "a.b", "c"},
		`"say ""hi""".s.t`:                 {`say "hi"`, "s", "t"},
		"bäckerei.public.brötchen":         {"bäckerei", "public", "brötchen"},
		`"shop"."public"."Customer Notes"`: {"shop", "public", "Customer Notes"},
	}
	for in, want := range good {
		db, s, tb, err := ParseQualifiedName(in)
		if err != nil || db != want[0] || s != want[1] || tb != want[2] {
			t.Errorf("ParseQualifiedName(%s) = %q, %q, %q, %v; want %q", in, db, s, tb, err, want)
		}
		if back := FormatQualifiedName(db, s, tb); back != in && !strings.Contains(in, `"`) {
			t.Errorf("FormatQualifiedName(%q, %q, %q) = %q, want %q", db, s, tb, back, in)
		}
		db2, s2, tb2, err := ParseQualifiedName(FormatQualifiedName(db, s, tb))
		if err != nil || db2 != db || s2 != s || tb2 != tb {
			t.Errorf("ParseQualifiedName(FormatQualifiedName(%q, %q, %q)) = %q, %q, %q, %v", db, s, tb, db2, s2, tb2, err)
		}
	}
	for _, bad := range []string{"", "orders", "a.b.c.d", "shop..orders", ".public.orders", "shop.public.", `"unterminated.public.orders`, `shop."".orders`, `shop.public."x"y`} {
		if db, s, tb, err := ParseQualifiedName(bad); err == nil {
			t.Errorf("ParseQualifiedName(%q) = %q, %q, %q; want an error", bad, db, s, tb)
		}
	}
}

func TestSplitNameQuoted(t *testing.T) {
	parts, err := SplitName(`shop."*".*`)
	if err != nil {
		t.Fatal(err)
	}
	want := []NamePart{{"shop", false}, {"*", true}, {"*", false}}
	if len(parts) != len(want) {
		t.Fatalf("SplitName = %v, want %v", parts, want)
	}
	for i := range want {
		if parts[i] != want[i] {
			t.Fatalf("SplitName = %v, want %v", parts, want)
		}
	}
}

func TestQuoteName(t *testing.T) {
	long := strings.Repeat("a", 63) + "é" + "tail"
	for _, tc := range []struct{ in, want string }{
		{"orders", `"orders"`},
		{"a\"b\n", `"a\"b\n"`},
		{strings.Repeat("x", 64), `"` + strings.Repeat("x", 64) + `"`},
		{strings.Repeat("x", 65), `"` + strings.Repeat("x", 64) + `"…`},
		{long, `"` + strings.Repeat("a", 63) + `"…`}, // not inside the é
	} {
		if got := QuoteName(tc.in); got != tc.want {
			t.Errorf("QuoteName(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
