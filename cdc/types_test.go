package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tablecast/tablecast/schema"
)

// TestColumnTypes: a row with one column per type, built-in and
// user-defined, arrives with each value as the envelope contract's "Values"
// rule says (DESIGN.md). The expected JSON is compared byte for byte, so
// that a json value keeps its white space and a string its exact escapes.
func TestColumnTypes(t *testing.T) {
	t.Parallel() // see parallelTests
	cases := []struct {
		name, typ, value, want string
	}{
		// integers and floats: JSON numbers, NaN and infinities strings
		{"int2", "int2", `-32768`, `-32768`},
		{"int4", "int4", `2147483647`, `2147483647`},
		{"int8", "int8", `-9223372036854775808`, `-9223372036854775808`},
		{"oid", "oid", `4294967295`, `4294967295`},
		{"float4", "float4", `1.5`, `1.5`},
		{"float8", "float8", `1.5`, `1.5`},
		{"float8_small", "float8", `1e-7`, `1e-07`},
		{"float8_big", "float8", `-1e300`, `-1e+300`},
		{"float4_nan", "float4", `'NaN'`, `"NaN"`},
		{"float8_nan", "float8", `'NaN'`, `"NaN"`},
		{"float8_inf", "float8", `'Infinity'`, `"Infinity"`},
		{"float8_neg_inf", "float8", `'-Infinity'`, `"-Infinity"`},
		// numeric and money: strings, no precision lost
		{"numeric", "numeric", `1234567890123456789012345678901234567890.0123456789`, `"1234567890123456789012345678901234567890.0123456789"`},
		{"numeric_scale", "numeric(10,2)", `19.9`, `"19.90"`},
		{"numeric_nan", "numeric", `'NaN'`, `"NaN"`},
		{"money", "money", `12.34`, `"$12.34"`}, // lc_monetary C
		{"bool_true", "bool", `true`, `true`},
		{"bool_false", "bool", `false`, `false`},
		// text types and uuid: strings
		{"text", "text", `E'h\u00e9llo "w\u00f6rld"\nline 2\t\\ \u65e5\u672c \U0001F600 \u2028'`, `"héllo \"wörld\"\nline 2\t\\ 日本 😀 \u2028"`},
		{"varchar", "varchar(10)", `'abc'`, `"abc"`},
		{"char3", "char(3)", `'a'`, `"a  "`},
		{"name", "name", `'pg_class'`, `"pg_class"`},
		{"text_control", "text", `E'\x01\x1f'`, `"\u0001\u001f"`},
		{"qchar", `"char"`, `'x'`, `"x"`},
		{"pg_lsn", "pg_lsn", `'0/16B3748'`, `"0/16B3748"`},
		{"uuid", "uuid", `'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'`, `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
		// bytea: base64
		{"bytea", "bytea", `'\xdeadbeef'`, `"3q2+7w=="`},
		{"bytea_empty", "bytea", `''`, `""`},
		// json and jsonb: embedded as PostgreSQL prints them
		{"json", "json", `'{"a" : [1, 2],  "b":null}'`, `{"a" : [1, 2],  "b":null}`},
		{"jsonb", "jsonb", `'{"b": 1, "a": [true, null]}'`, `{"a": [true, null], "b": 1}`},
		{"jsonb_string", "jsonb", `'"x\u00e9"'`, `"xé"`},
		// nested as deeply as JSON readers take inside an event (and the
		// gateway's frames): embedded; deeper, the string of its text,
		// since embedded it made an event encoding/json refuses
		{"jsonb_deep", "jsonb", deepJSON(schema.MaxEmbeddedJSONDepth, "'"), deepJSON(schema.MaxEmbeddedJSONDepth, "")},
		{"jsonb_too_deep", "jsonb", deepJSON(schema.MaxEmbeddedJSONDepth+1, "'"), deepJSON(schema.MaxEmbeddedJSONDepth+1, `"`)},
		{"json_too_deep", "json", deepJSON(9999, "'"), deepJSON(9999, `"`)},
		// dates and times: RFC 3339 for timestamps, with their precision
		{"date", "date", `'2026-11-22'`, `"2026-11-22"`},
		{"time", "time", `'07:00:00.123456'`, `"07:00:00.123456"`},
		{"timetz", "timetz", `'07:00:00+05:30'`, `"07:00:00+05:30"`},
		{"timestamp", "timestamp", `'2026-11-22 07:00:00.123456'`, `"2026-11-22T07:00:00.123456"`},
		{"timestamptz", "timestamptz", `'2026-11-22 07:00:00.123456+02'`, `"2026-11-22T05:00:00.123456Z"`}, // TimeZone UTC
		{"timestamptz_ms", "timestamptz", `'2026-11-22 07:00:00.5+00'`, `"2026-11-22T07:00:00.5Z"`},
		{"timestamptz_inf", "timestamptz", `'infinity'`, `"infinity"`},
		{"timestamptz_neg_inf", "timestamptz", `'-infinity'`, `"-infinity"`},
		{"timestamptz_bc", "timestamptz", `'0044-03-15 12:00:00+00 BC'`, `"0044-03-15 12:00:00+00 BC"`},
		{"interval", "interval", `'1 year 2 months 3 days 04:05:06.7'`, `"1 year 2 mons 3 days 04:05:06.7"`},
		// network and bit strings: strings
		{"inet", "inet", `'192.168.0.1/24'`, `"192.168.0.1/24"`},
		{"inet6", "inet", `'::1'`, `"::1"`},
		{"cidr", "cidr", `'10.0.0.0/8'`, `"10.0.0.0/8"`},
		{"macaddr", "macaddr", `'08:00:2B:01:02:03'`, `"08:00:2b:01:02:03"`},
		{"bit4", "bit(4)", `B'1010'`, `"1010"`},
		{"varbit", "varbit", `B'101'`, `"101"`},
		// arrays: JSON arrays of converted elements
		{"int4_array", "int4[]", `'{{1,NULL},{3,4}}'`, `[[1,null],[3,4]]`},
		{"int4_array_bounds", "int4[]", `'[0:1]={5,6}'`, `"[0:1]={5,6}"`}, // a JSON array cannot say where it starts
		{"text_array", "text[]", `ARRAY['a"b', 'c,d', NULL, 'NULL', '', 'x\y', ' sp ']`, `["a\"b","c,d",null,"NULL","","x\\y"," sp "]`},
		{"float8_array", "float8[]", `'{1.5,NaN,-Infinity}'`, `[1.5,"NaN","-Infinity"]`},
		{"empty_array", "int4[]", `'{}'`, `[]`},
		{"numeric_array", "numeric[]", `'{1.50,NaN}'`, `["1.50","NaN"]`},
		{"bool_array", "bool[]", `'{t,f,NULL}'`, `[true,false,null]`},
		{"jsonb_array", "jsonb[]", `ARRAY['{"a": "x,y"}'::jsonb, 'null', NULL]`, `[{"a": "x,y"},null,null]`},
		{"bytea_array", "bytea[]", `ARRAY['\xdeadbeef'::bytea]`, `["3q2+7w=="]`},
		{"timestamptz_array", "timestamptz[]", `'{"2026-11-22 07:00:00.25+00",infinity}'`, `["2026-11-22T07:00:00.25Z","infinity"]`},
		{"point_array", "point[]", `ARRAY['(1,2)'::point]`, `["(1,2)"]`},
		{"box_array", "box[]", `ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)']`, `["(1,1),(0,0)","(3,3),(2,2)"]`},
		// built-in arrays pgx has no codec for are JSON arrays too
		{"timetz_array", "timetz[]", `'{07:00:00+05:30,NULL}'`, `["07:00:00+05:30",null]`},
		{"macaddr8_array", "macaddr8[]", `'{08:00:2b:01:02:03:04:05}'`, `["08:00:2b:01:02:03:04:05"]`},
		{"regclass_array", "regclass[]", `'{pg_class}'`, `["pg_class"]`},
		{"pg_lsn_array", "pg_lsn[]", `'{0/16B3748}'`, `["0/16B3748"]`},
		{"tsquery_array", "tsquery[]", `ARRAY['a & b'::tsquery]`, `["'a' & 'b'"]`},
		{"int4multirange_array", "int4multirange[]", `ARRAY['{[1,3),[5,7)}'::int4multirange]`, `["{[1,3),[5,7)}"]`},
		{"domain_timetz_array", "tz_list", `'{07:00:00+00}'`, `["07:00:00+00"]`},
		// user-defined types: by the built-in type they stand for
		{"enum", "mood", `'happy'`, `"happy"`},
		{"enum_array", "mood[]", `'{happy,so-so,NULL}'`, `["happy","so-so",null]`},
		{"domain_int", "posint", `42`, `42`},
		{"domain_null", "posint", `NULL`, `null`},
		{"domain_of_domain", "small_posint", `7`, `7`},
		{"domain_numeric", "amount", `19.9`, `"19.90"`},
		{"domain_array", "posint[]", `'{1,2,NULL}'`, `[1,2,null]`},
		{"domain_of_array", "int_list", `'{{1,2},{3,4}}'`, `[[1,2],[3,4]]`},
		// an array of a domain over an array: the elements' text forms,
		// as the README says
		{"array_of_domain_of_array", "int_list[]", `'{"{1,2}","{3}"}'`, `["{1,2}","{3}"]`},
		{"domain_of_enum", "happy_mood", `'sad'`, `"sad"`},
		{"domain_jsonb", "doc", `'{"k": [1]}'`, `{"k": [1]}`},
		{"domain_timestamptz_array", "stamp[]", `ARRAY['2026-11-22 07:00:00+00'::timestamptz]`, `["2026-11-22T07:00:00Z"]`},
		{"composite", "pair", `ROW(1, 'a b')`, `"(1,\"a b\")"`},
		{"composite_array", "pair[]", `ARRAY[ROW(1, 'a b')::pair, ROW(2, NULL)::pair]`, `["(1,\"a b\")","(2,)"]`},
		{"domain_composite", "pair_dom", `ROW(3, 'c')`, `"(3,c)"`},
		{"int4range", "int4range", `'[1,10)'`, `"[1,10)"`},
		{"int4multirange", "int4multirange", `'{[1,3),[5,7)}'`, `"{[1,3),[5,7)}"`},
		{"user_range", "floatrange", `'[1.5,2.5)'`, `"[1.5,2.5)"`},
		{"tsvector", "tsvector", `'a fat cat'`, `"'a' 'cat' 'fat'"`},
		{"point", "point", `'(1,2)'`, `"(1,2)"`},
		{"xml", "xml", `'<a>b &amp; c</a>'`, `"<a>b &amp; c</a>"`},
		// initdb's own domains (OIDs below 16384) are domains too
		{"cardinal_number", "information_schema.cardinal_number", `5`, `5`},
	}

	db := newTestDB(t,
		`CREATE TYPE mood AS ENUM ('happy', 'sad', 'so-so')`,
		`CREATE DOMAIN posint AS int CHECK (VALUE > 0)`,
		`CREATE DOMAIN small_posint AS posint CHECK (VALUE < 100)`,
		`CREATE DOMAIN amount AS numeric(12,2)`,
		`CREATE DOMAIN int_list AS int[]`,
		`CREATE DOMAIN tz_list AS timetz[]`,
		`CREATE DOMAIN happy_mood AS mood`,
		`CREATE DOMAIN doc AS jsonb`,
		`CREATE DOMAIN stamp AS timestamptz`,
		`CREATE TYPE pair AS (n int, label text)`,
		`CREATE DOMAIN pair_dom AS pair`,
		`CREATE TYPE floatrange AS RANGE (subtype = float8)`)
	if _, err := db.conn.Exec(context.Background(), `SELECT '<a/>'::xml`); err != nil {
		// PostgreSQL built without libxml: the xml case cannot run.
		for i, c := range cases {
			if c.name == "xml" {
				cases = append(cases[:i], cases[i+1:]...)
				t.Logf("xml not available, case skipped: %v", err)
				break
			}
		}
	}
	cols, vals := []string{"id int PRIMARY KEY"}, []string{"1"}
	for _, c := range cases {
		cols = append(cols, fmt.Sprintf("%q %s", c.name, c.typ))
		vals = append(vals, c.value)
	}
	db.exec(t, `CREATE TABLE types (`+strings.Join(cols, ", ")+`)`)
	n := startNATS(t)
	startReader(t, db.config(), n)

	db.exec(t, `INSERT INTO types VALUES (`+strings.Join(vals, ", ")+`)`)
	e := changeEvents(t, n, db, 1)[0]
	var env struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(e.Raw, &env); err != nil {
		t.Fatalf("event %s: %v", e.Raw, err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := env.Data[c.name]
			if !ok {
				t.Fatalf("column %s (%s) is missing from data", c.name, c.typ)
			}
			if string(got) != c.want {
				t.Errorf("%s value %s arrived as %s, want %s", c.typ, c.value, got, c.want)
			}
		})
	}
}

// deepJSON returns nested empty arrays, depth levels deep, between quotes.
func deepJSON(depth int, quote string) string {
	return quote + strings.Repeat("[", depth) + strings.Repeat("]", depth) + quote
}

// TestNames: schema, table and column names that need quoting in SQL and
// escaping in subjects; tables without a primary key; a partitioned table.
func TestNames(t *testing.T) {
	t.Parallel() // see parallelTests
	t.Run("quoted identifiers", func(t *testing.T) {
		db := newTestDB(t,
			`CREATE SCHEMA "My Schema"`,
			`CREATE TABLE "My Schema"."ordérs.v2" ("select" int PRIMARY KEY, "Total Amount" numeric(10,2), "from" text)`)
		n := startNATS(t)
		startReader(t, db.config(), n)

		db.exec(t, `INSERT INTO "My Schema"."ordérs.v2" VALUES (1, 19.9, 'x')`)
		db.exec(t, `UPDATE "My Schema"."ordérs.v2" SET "Total Amount" = 20 WHERE "select" = 1`)
		db.exec(t, `DELETE FROM "My Schema"."ordérs.v2" WHERE "select" = 1`)

		evs := changeEvents(t, n, db, 3)
		// '.' → %2E, ' ' → %20; UTF-8 passes through.
		base := "tc." + db.name + ".My%20Schema.ordérs%2Ev2."
		wants := []struct{ subject, key, data, old string }{
			{base + "create", `{"select":1}`, `{"select":1,"Total Amount":"19.90","from":"x"}`, ``},
			{base + "update", `{"select":1}`, `{"select":1,"Total Amount":"20.00","from":"x"}`, ``},
			{base + "delete", `{"select":1}`, ``, `{"select":1}`},
		}
		for i, w := range wants {
			e := evs[i]
			if e.Subject != w.subject {
				t.Errorf("event %d subject %s, want %s", i, e.Subject, w.subject)
			}
			if e.Schema != "My Schema" || e.Table != "ordérs.v2" {
				t.Errorf("event %d names %q.%q, want the names unescaped: \"My Schema\".\"ordérs.v2\"", i, e.Schema, e.Table)
			}
			assertRows(t, fmt.Sprintf("event %d (%s)", i, e.Op), e, w.key, w.data, w.old)
		}
	})

	t.Run("no primary key", func(t *testing.T) {
		db := newTestDB(t,
			`CREATE TABLE "no key" (a int, "b c" text)`, // REPLICA IDENTITY DEFAULT, but no key
			`CREATE TABLE full_nokey (a int, b text)`,
			`ALTER TABLE full_nokey REPLICA IDENTITY FULL`,
			// A DBA's publication: tablecast never puts a table without a
			// replica identity into one it creates.
			`CREATE PUBLICATION tc_pub FOR TABLE "no key", full_nokey WITH (publish_via_partition_root = true)`)
		n := startNATS(t)
		startReader(t, db.config(), n)

		db.exec(t, `INSERT INTO "no key" VALUES (1, 'x')`)
		// Without a replica identity PostgreSQL refuses to update or delete
		// a table whose publication publishes updates and deletes.
		_, err := db.conn.Exec(context.Background(), `UPDATE "no key" SET a = 2`)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55000" {
			t.Errorf("update of a table without replica identity: %v, want SQLSTATE 55000", err)
		}
		db.exec(t, `INSERT INTO full_nokey VALUES (1, 'x')`)
		db.exec(t, `UPDATE full_nokey SET b = 'y'`)
		db.exec(t, `DELETE FROM full_nokey`)

		evs := changeEvents(t, n, db, 4)
		wants := []struct{ subject, key, data, old string }{
			{"public.no%20key.create", `{}`, `{"a":1,"b c":"x"}`, ``},
			// REPLICA IDENTITY FULL: the key is every column, from the old
			// row when there is one.
			{"public.full_nokey.create", `{"a":1,"b":"x"}`, `{"a":1,"b":"x"}`, ``},
			{"public.full_nokey.update", `{"a":1,"b":"x"}`, `{"a":1,"b":"y"}`, `{"a":1,"b":"x"}`},
			{"public.full_nokey.delete", `{"a":1,"b":"y"}`, ``, `{"a":1,"b":"y"}`},
		}
		for i, w := range wants {
			e := evs[i]
			if want := "tc." + db.name + "." + w.subject; e.Subject != want {
				t.Errorf("event %d subject %s, want %s", i, e.Subject, want)
			}
			assertRows(t, fmt.Sprintf("event %d (%s %s)", i, e.Table, e.Op), e, w.key, w.data, w.old)
		}
	})

	t.Run("partitioned table", func(t *testing.T) {
		db := newTestDB(t,
			`CREATE TABLE measurements (id int, at date, v int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)`,
			`CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`,
			`CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`,
			`CREATE TABLE other (id int PRIMARY KEY)`)
		n := startNATS(t)
		cfg := db.config()
		cfg.Tables = []string{"public.measurements"}
		startReader(t, cfg, n)

		db.exec(t, `INSERT INTO other VALUES (1)`) // not in the publication
		db.exec(t, `INSERT INTO measurements VALUES (1, '2025-06-01', 10), (2, '2026-06-01', 20)`)
		db.exec(t, `INSERT INTO measurements_2026 VALUES (3, '2026-07-01', 30)`) // straight into a partition
		db.exec(t, `UPDATE measurements SET v = 11 WHERE id = 1`)
		db.exec(t, `UPDATE measurements SET at = '2026-02-01' WHERE id = 1`) // moves to another partition
		db.exec(t, `DELETE FROM measurements_2026 WHERE id = 2`)

		evs := changeEvents(t, n, db, 7)
		wants := []struct{ op, key, data, old string }{
			{"create", `{"id":1,"at":"2025-06-01"}`, `{"id":1,"at":"2025-06-01","v":10}`, ``},
			{"create", `{"id":2,"at":"2026-06-01"}`, `{"id":2,"at":"2026-06-01","v":20}`, ``},
			{"create", `{"id":3,"at":"2026-07-01"}`, `{"id":3,"at":"2026-07-01","v":30}`, ``},
			{"update", `{"id":1,"at":"2025-06-01"}`, `{"id":1,"at":"2025-06-01","v":11}`, ``},
			// A row moving between partitions is a delete and an insert.
			{"delete", `{"id":1,"at":"2025-06-01"}`, ``, `{"id":1,"at":"2025-06-01"}`},
			{"create", `{"id":1,"at":"2026-02-01"}`, `{"id":1,"at":"2026-02-01","v":11}`, ``},
			{"delete", `{"id":2,"at":"2026-06-01"}`, ``, `{"id":2,"at":"2026-06-01"}`},
		}
		for i, w := range wants {
			e := evs[i]
			if want := "tc." + db.name + ".public.measurements." + w.op; e.Subject != want || e.Table != "measurements" {
				t.Errorf("event %d: subject %s table %s, want %s under the partitioned table's name", i, e.Subject, e.Table, want)
			}
			assertRows(t, fmt.Sprintf("event %d (%s)", i, e.Op), e, w.key, w.data, w.old)
		}
	})
}

// changeEvents waits for want row changes of db and returns every row
// change in the stream, failing if there are more.
func changeEvents(t *testing.T, n *natsEnv, db *testDB, want int) []event {
	t.Helper()
	prefix := testPrefix + "." + db.name + "."
	var evs []event
	waitFor(t, 20*time.Second, fmt.Sprintf("%d row changes", want), func() bool {
		evs = evs[:0]
		for _, e := range n.fetch(t) {
			if strings.HasPrefix(e.Subject, prefix) {
				evs = append(evs, e)
			}
		}
		return len(evs) >= want
	})
	if len(evs) != want {
		for _, e := range evs {
			t.Logf("%s %s", e.Subject, e.Raw)
		}
		t.Fatalf("%d row changes in the stream, want %d", len(evs), want)
	}
	return evs
}

// assertRows compares an event's key, data and old objects, as raw JSON in
// column order, with literals ("" means absent).
func assertRows(t *testing.T, what string, e event, key, data, old string) {
	t.Helper()
	var env struct {
		Key  json.RawMessage `json:"key"`
		Data json.RawMessage `json:"data"`
		Old  json.RawMessage `json:"old"`
	}
	if err := json.Unmarshal(e.Raw, &env); err != nil {
		t.Fatalf("%s: %s: %v", what, e.Raw, err)
	}
	for _, f := range []struct {
		name      string
		got, want string
	}{{"key", string(env.Key), key}, {"data", string(env.Data), data}, {"old", string(env.Old), old}} {
		if f.got != f.want {
			t.Errorf("%s %s = %s, want %s", what, f.name, orAbsent(f.got), orAbsent(f.want))
		}
	}
}

func orAbsent(s string) string {
	if s == "" {
		return "absent"
	}
	return s
}
