package schema

import "testing"

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
