package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// grantsOf reads the grants of a claims object written as JSON.
func grantsOf(t testing.TB, claimsJSON string) *Grants {
	t.Helper()
	claims, err := decodeClaims([]byte(claimsJSON))
	if err != nil {
		t.Fatalf("claims %s: %v", claimsJSON, err)
	}
	g, err := GrantsFromClaims(claims)
	if err != nil {
		t.Fatalf("GrantsFromClaims(%s): %v", claimsJSON, err)
	}
	return g
}

func TestGrantsTables(t *testing.T) {
	g := grantsOf(t, `{"tablecast": {"tables": {
		"public.orders": ["create", "update", "delete", "truncate", "read"],
		"public.*": ["create"],
		"public.audit": [],
		"\"My Schema\".\"orders.v2\"": ["update", "read"],
		"\"odd*\".*": ["delete"],
		"sales.*": ["*"],
		"*": ["read"]
	}}}`)
	all := schema.AllOps.Names()
	cases := []struct {
		schema, table string
		want          []string
	}{
		{"public", "orders", all},                                            // exact beats public.* and *
		{"public", "customers", []string{schema.OpCreate}},                   // public.* beats *
		{"public", "audit", nil},                                             // an empty list denies
		{"My Schema", "orders.v2", []string{schema.OpUpdate, schema.OpRead}}, // quoted parts
		{"My Schema", "orders", []string{schema.OpRead}},                     // only *
		{"odd*", "x", []string{schema.OpDelete}},
		{"sales", "leads", all},
		{"other", "thing", []string{schema.OpRead}},
		{"Public", "orders", []string{schema.OpRead}}, // names are case-sensitive
	}
	for _, tc := range cases {
		got := g.OpsFor(tc.schema, tc.table).Names()
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("OpsFor(%s, %s) = %v, want %v", tc.schema, tc.table, got, tc.want)
		}
		for _, op := range all {
			if g.CanRead(tc.schema, tc.table, op) != slices.Contains(tc.want, op) {
				t.Errorf("CanRead(%s, %s, %s) wrong", tc.schema, tc.table, op)
			}
		}
	}
	if g.CanRead("public", "orders", "insert") || g.CanRead("public", "orders", "") {
		t.Error("an unknown op is allowed")
	}

	// Without "*", a table no pattern matches is denied.
	g = grantsOf(t, `{"tablecast": {"tables": {"public.orders": ["read"]}}}`)
	if g.OpsFor("public", "customers") != 0 || g.OpsFor("private", "orders") != 0 {
		t.Error("unmatched table allowed")
	}
}

func TestGrantsTopics(t *testing.T) {
	g := grantsOf(t, `{"tablecast": {"topics": {
		"subscribe": ["chat", "room.*"],
		"publish": ["chat"],
		"create": ["room.*"],
		"destroy": []
	}}}`)
	cases := []struct {
		topic                               string
		subscribe, publish, create, destroy bool
	}{
		{"chat", true, true, false, false},
		{"chatter", false, false, false, false},
		{"room.1", true, false, true, false},
		{"room.a.b", true, false, true, false},
		{"room", false, false, false, false},
		{"roomy.1", false, false, false, false},
		{"other", false, false, false, false},
	}
	for _, tc := range cases {
		if g.CanSubscribeTopic(tc.topic) != tc.subscribe || g.CanPublish(tc.topic) != tc.publish ||
			g.CanCreateTopic(tc.topic) != tc.create || g.CanDestroyTopic(tc.topic) != tc.destroy {
			t.Errorf("topic %q: subscribe %v publish %v create %v destroy %v", tc.topic,
				g.CanSubscribeTopic(tc.topic), g.CanPublish(tc.topic), g.CanCreateTopic(tc.topic), g.CanDestroyTopic(tc.topic))
		}
	}
	g = grantsOf(t, `{"tablecast": {"topics": {"destroy": ["*"]}}}`)
	if !g.CanDestroyTopic("anything") || g.CanSubscribeTopic("anything") {
		t.Error(`"*" topic pattern`)
	}
}

func TestGrantsLimits(t *testing.T) {
	g := grantsOf(t, `{"tablecast": {"limits": {"connections": 5, "subscriptions": 2.0}}}`)
	if got := g.Limits(); got != (Limits{Connections: 5, Subscriptions: 2}) {
		t.Fatalf("limits %+v", got)
	}
	if got := grantsOf(t, `{}`).Limits(); got != (Limits{}) {
		t.Fatalf("limits %+v", got)
	}
}

func TestGrantsAnonymousAndNil(t *testing.T) {
	g := AnonymousIdentity().Grants
	if g.OpsFor("any", "table") != schema.AllOps || !g.CanPublish("x") || !g.CanCreateTopic("x") || !g.CanDestroyTopic("x") || !g.CanSubscribeTopic("x") {
		t.Error("anonymous may not do everything")
	}
	if p, err := g.Policy("public", "orders"); p != nil || err != nil {
		t.Errorf("anonymous policy %s, %v", p, err)
	}
	var none *Grants
	if none.OpsFor("public", "orders") != 0 || none.CanPublish("x") || none.CanSubscribeTopic("x") || none.Limits() != (Limits{}) {
		t.Error("nil grants allow something")
	}
	if _, err := none.Policy("public", "orders"); err == nil {
		t.Error("nil grants: no policy error")
	}
}

func TestGrantsMalformed(t *testing.T) {
	cases := []struct{ grants, want string }{
		{`"all"`, "must be an object"},
		{`{"table": {}}`, `unknown member "table"`},
		{`{"policy": {}}`, `unknown member "policy"`},
		{`{"tables": []}`, "tables must be an object"},
		{`{"tables": {"public.orders": "read"}}`, "list of operations"},
		{`{"tables": {"public.orders": ["insert"]}}`, `unknown operation "insert"`},
		{`{"tables": {"public.orders": [1]}}`, "unknown operation 1"},
		{`{"tables": {"orders": ["read"]}}`, `pattern "orders"`},
		{`{"tables": {"public.ord*": ["read"]}}`, "quote a name"},
		{`{"tables": {"*.orders": ["read"]}}`, "quote a name"},
		{`{"tables": {"*.*": ["read"]}}`, "quote a name"},
		{`{"tables": {"a.b.c.d": ["read"]}}`, `pattern "a.b.c.d"`},
		{`{"tables": {"public.orders": ["read"], "\"public\".orders": ["create"]}}`, "repeats a table"},
		{`{"topics": ["chat"]}`, "topics must be an object"},
		{`{"topics": {"read": ["chat"]}}`, `unknown action "read"`},
		{`{"topics": {"publish": "chat"}}`, "list of topic patterns"},
		{`{"topics": {"publish": [1]}}`, "not a string"},
		{`{"topics": {"publish": ["room.*.x"]}}`, "want a topic name"},
		{`{"topics": {"publish": [".*"]}}`, "want a topic name"},
		{`{"topics": {"publish": [""]}}`, "want a topic name"},
		{`{"topics": {"publish": ["a b"]}}`, "want a topic name"},
		{`{"limits": {"connections": -1}}`, "whole number"},
		{`{"limits": {"connections": 1.5}}`, "whole number"},
		{`{"limits": {"connections": "5"}}`, "whole number"},
		{`{"limits": {"rate": 5}}`, `unknown limit "rate"`},
		{`{"policies": []}`, "policies must be an object"},
		{`{"policies": {"public.orders": "tenant_id = 1"}}`, "object of column conditions"},
		{`{"policies": {"public.orders": {"tenant_id": "acme"}}}`, "object of operators"},
		{`{"policies": {"public.orders": {"tenant_id": {}}}}`, "object of operators"},
		{`{"policies": {"public.orders": {"or": []}}}`, "non-empty list"},
		{`{"policies": {"public.orders": {"or": ["x"]}}}`, "object of column conditions"},
		{`{"policies": {"public.orders": {"t": {"eq": {"claim": 1}}}}}`, "claim reference"},
		{`{"policies": {"public.orders": {"t": {"eq": {"claim": "x", "default": 1}}}}}`, "claim reference"},
		{`{"policies": {"public.orders": {"t": {"in": [{"claim": ""}]}}}}`, "claim reference"},
		{`{"policies": {"bad": {}}}`, `pattern "bad"`},
		{`{"policies": {"public.*": {}, "\"public\".*": {}}}`, "repeats a pattern"},
	}
	for _, tc := range cases {
		t.Run(tc.grants, func(t *testing.T) {
			claims, err := decodeClaims([]byte(`{"tenant": "acme", "tablecast": ` + tc.grants + `}`))
			if err != nil {
				t.Fatal(err)
			}
			_, err = GrantsFromClaims(claims)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// policyColumns are the columns of the table the policy tests compile
// against.
var policyColumns = map[string]query.ColumnType{
	"id":        query.TypeInteger,
	"tenant_id": query.TypeText,
	"org_id":    query.TypeInteger,
	"status":    query.TypeText,
	"region":    query.TypeText,
	"or":        query.TypeText, // a column called "or"
}

// whereIs reports whether got is the where want writes ("" for none),
// written compact and in order.
func whereIs(t testing.TB, got *query.Where, want string) bool {
	t.Helper()
	if want == "" {
		return got == nil
	}
	var w bytes.Buffer
	if err := json.Compact(&w, []byte(want)); err != nil {
		t.Fatalf("want %s: %v", want, err)
	}
	return got.String() == w.String()
}

func TestGrantsPolicy(t *testing.T) {
	const claims = `"sub": "u1", "tenant": "acme", "org": 12345678901234567890, "orgs": [1, 2, 3],
		"regions": ["eu", "us"], "empty": null, "admin": true`
	cases := []struct {
		name          string
		policies      string
		schema, table string
		want          string // "" for none
		missing       bool   // ErrMissingClaim
	}{
		{"string claim", `{"public.orders": {"tenant_id": {"eq": {"claim": "tenant"}}}}`, "public", "orders",
			`{"tenant_id": {"eq": "acme"}}`, false},
		{"no policy for the table", `{"public.orders": {"tenant_id": {"eq": {"claim": "tenant"}}}}`, "public", "customers",
			"", false},
		{"number claim keeps its digits", `{"public.orders": {"org_id": {"eq": {"claim": "org"}}}}`, "public", "orders",
			`{"org_id": {"eq": 12345678901234567890}}`, false},
		{"array claim with in", `{"public.orders": {"org_id": {"in": {"claim": "orgs"}}}}`, "public", "orders",
			`{"org_id": {"in": [1, 2, 3]}}`, false},
		{"claims spliced into an in-list", `{"public.orders": {"region": {"nin": ["cn", {"claim": "regions"}, {"claim": "tenant"}]}}}`, "public", "orders",
			`{"region": {"nin": ["cn", "eu", "us", "acme"]}}`, false},
		{"literals kept", `{"public.orders": {"status": {"neq": "draft"}, "id": {"gt": 0}}}`, "public", "orders",
			`{"id": {"gt": 0}, "status": {"neq": "draft"}}`, false},
		{"claims inside or", `{"public.orders": {"or": [{"tenant_id": {"eq": {"claim": "tenant"}}}, {"status": {"eq": "public"}}]}}`, "public", "orders",
			`{"or": [{"tenant_id": {"eq": "acme"}}, {"status": {"eq": "public"}}]}`, false},
		{"missing claim", `{"public.orders": {"tenant_id": {"eq": {"claim": "nope"}}}}`, "public", "orders",
			"", true},
		{"null claim", `{"public.orders": {"tenant_id": {"eq": {"claim": "empty"}}}}`, "public", "orders",
			"", true},
		{"missing claim in a list", `{"public.orders": {"tenant_id": {"in": ["x", {"claim": "nope"}]}}}`, "public", "orders",
			"", true},
		{"missing claim only for its tables", `{"public.orders": {"tenant_id": {"eq": {"claim": "nope"}}}}`, "public", "customers",
			"", false},
		{"every matching pattern ANDs", `{"*": {"tenant_id": {"eq": {"claim": "tenant"}}}, "public.*": {"region": {"in": {"claim": "regions"}}}, "public.orders": {"status": {"neq": "draft"}}}`, "public", "orders",
			`{"tenant_id": {"eq": "acme"}, "region": {"in": ["eu", "us"]}, "status": {"neq": "draft"}}`, false},
		{"a specific policy cannot widen", `{"*": {"tenant_id": {"eq": {"claim": "tenant"}}}, "public.orders": {}}`, "public", "orders",
			`{"tenant_id": {"eq": "acme"}}`, false},
		{"a missing claim in any matching policy", `{"*": {"tenant_id": {"eq": {"claim": "nope"}}}, "public.orders": {"status": {"neq": "x"}}}`, "public", "orders",
			"", true},
		{"same column, other operator", `{"*": {"id": {"gt": 0}}, "public.orders": {"id": {"lt": 100}}}`, "public", "orders",
			`{"id": {"gt": 0}, "id": {"lt": 100}}`, false},
		{"same column, same operator", `{"*": {"tenant_id": {"eq": "a"}}, "public.orders": {"tenant_id": {"eq": "b"}}}`, "public", "orders",
			`{"tenant_id": {"eq": "a"}, "tenant_id": {"eq": "b"}}`, false},
		{"quoted table", `{"\"My Schema\".\"t.1\"": {"id": {"eq": 1}}}`, "My Schema", "t.1",
			`{"id": {"eq": 1}}`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := grantsOf(t, `{`+claims+`, "tablecast": {"policies": `+tc.policies+`}}`)
			got, err := g.Policy(tc.schema, tc.table)
			if tc.missing {
				if !errors.Is(err, ErrMissingClaim) {
					t.Fatalf("Policy = %s, %v; want ErrMissingClaim", got, err)
				}
				if got != nil {
					t.Fatalf("a policy %s with the error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !whereIs(t, got, tc.want) {
				t.Fatalf("Policy = %s, want %s", got, tc.want)
			}
			if got != nil {
				if _, err := query.Compile(got, tc.schema+"."+tc.table, policyColumns); err != nil {
					t.Fatalf("policy %s does not compile: %v", got, err)
				}
			}
		})
	}
}

// TestGrantsPolicyFilters checks, through the real filter, that a policy
// keeps rows of other tenants out, alone and combined with a client's
// where by query.And.
func TestGrantsPolicyFilters(t *testing.T) {
	g := grantsOf(t, `{"tenant": "acme", "orgs": [1, 2],
		"tablecast": {"policies": {"public.*": {"tenant_id": {"eq": {"claim": "tenant"}}}, "public.orders": {"org_id": {"in": {"claim": "orgs"}}}}}}`)
	policy, err := g.Policy("public", "orders")
	if err != nil {
		t.Fatal(err)
	}
	rows := []struct {
		row  string
		want bool
	}{
		{`{"id": 1, "tenant_id": "acme", "org_id": 1, "status": "paid"}`, true},
		{`{"id": 2, "tenant_id": "acme", "org_id": 3, "status": "paid"}`, false},
		{`{"id": 3, "tenant_id": "evil", "org_id": 1, "status": "paid"}`, false},
		{`{"id": 4, "tenant_id": null, "org_id": 1, "status": "paid"}`, false},
	}
	clientWheres := []string{
		``,
		`{"tenant_id": {"eq": "evil"}}`,
		`{"or": [{"tenant_id": {"eq": "evil"}}, {"status": {"eq": "paid"}}]}`,
		`{"tenant_id": {"neq": "acme"}}`,
		`{"org_id": {"in": [3]}}`,
	}
	for _, cw := range clientWheres {
		cwhere, err := query.ParseWhere(json.RawMessage(cw))
		if err != nil {
			t.Fatal(err)
		}
		where := query.And(policy, cwhere)
		f, err := query.Compile(where, "public.orders", policyColumns)
		if err != nil {
			t.Fatalf("compile %s: %v", where, err)
		}
		var client *query.Filter
		if cw != "" {
			if client, err = query.CompileWhere(json.RawMessage(cw), "public.orders", policyColumns); err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range rows {
			var row query.Row
			if err := row.Reset([]byte(r.row)); err != nil {
				t.Fatal(err)
			}
			got, err := f.Match(&row)
			if err != nil {
				t.Fatal(err)
			}
			want := r.want
			if client != nil {
				c, err := client.Match(&row)
				if err != nil {
					t.Fatal(err)
				}
				want = want && c
			}
			if got != want {
				t.Errorf("client where %s, row %s: match %v, want %v (combined %s)", cw, r.row, got, want, where)
			}
		}
	}
}

// FuzzGrantsFromClaims: arbitrary claims never panic, and a policy, when
// there is one, is a JSON object.
func FuzzGrantsFromClaims(f *testing.F) {
	f.Add(`{"tenant": "acme", "tablecast": {"tables": {"public.*": ["read"], "*": ["*"]}, "topics": {"publish": ["room.*"]},
		"policies": {"public.orders": {"tenant_id": {"eq": {"claim": "tenant"}}}, "*": {"or": [{"id": {"in": [1, {"claim": "tenant"}]}}]}},
		"limits": {"connections": 5}}}`)
	f.Add(`{"tablecast": {"tables": {"\"a.b\".*": []}}}`)
	f.Fuzz(func(t *testing.T, claimsJSON string) {
		claims, err := decodeClaims([]byte(claimsJSON))
		if err != nil {
			return
		}
		g, err := GrantsFromClaims(claims)
		if err != nil {
			return
		}
		for _, tbl := range [][2]string{{"public", "orders"}, {"a.b", "x"}, {"other", "t"}} {
			g.OpsFor(tbl[0], tbl[1])
			p, err := g.Policy(tbl[0], tbl[1])
			if err == nil && p != nil {
				var obj map[string]any
				if json.Unmarshal([]byte(p.String()), &obj) != nil {
					t.Fatalf("policy %s is not an object", p)
				}
			}
		}
		g.CanPublish("room.1")
		g.CanSubscribeTopic("chat")
	})
}

// TestGrantsDatabases: a pattern may name the database; two-part patterns
// mean every database. The table decides first, then the database:
// db.schema.table, schema.table, db.schema.*, schema.*, db.*.*, *.
func TestGrantsDatabases(t *testing.T) {
	g := grantsOf(t, `{"tablecast": {"tables": {
		"shop.public.orders": ["create"],
		"public.orders": ["update"],
		"billing.public.*": ["delete"],
		"public.*": ["truncate"],
		"legacy.*.*": [],
		"crm.*.*": ["read"],
		"\"my.db\".\"a.b\".c": ["*"],
		"*": ["read", "create"]
	}}}`)
	cases := []struct {
		db, schema, table string
		want              []string
	}{
		{"shop", "public", "orders", []string{schema.OpCreate}},              // db.schema.table beats schema.table
		{"billing", "public", "orders", []string{schema.OpUpdate}},           // schema.table beats db.schema.*
		{"legacy", "public", "orders", []string{schema.OpUpdate}},            // and db.*.*: naming the table decides
		{"billing", "public", "items", []string{schema.OpDelete}},            // db.schema.* beats schema.*
		{"shop", "public", "items", []string{schema.OpTruncate}},             // schema.* beats db.*.*
		{"legacy", "public", "items", []string{schema.OpTruncate}},           //
		{"legacy", "audit", "log", nil},                                      // db.*.* beats *
		{"crm", "sales", "leads", []string{schema.OpRead}},                   //
		{"shop", "sales", "leads", []string{schema.OpCreate, schema.OpRead}}, // only *
		{"my.db", "a.b", "c", schema.AllOps.Names()},                         // quoted parts
		{"my", "db.a", "b.c", []string{schema.OpCreate, schema.OpRead}},      // not the same table
		{"", "public", "orders", []string{schema.OpUpdate}},                  // no database named: two-part patterns only
		{"", "audit", "log", []string{schema.OpCreate, schema.OpRead}},       //
		{"Shop", "public", "orders", []string{schema.OpUpdate}},              // names are case-sensitive
	}
	for _, tc := range cases {
		got := g.TableOps(tc.db, tc.schema, tc.table).Names()
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("TableOps(%q, %q, %q) = %v, want %v", tc.db, tc.schema, tc.table, got, tc.want)
		}
	}
	if got := g.OpsFor("public", "orders"); got != g.TableOps("", "public", "orders") {
		t.Errorf("OpsFor = %v, want the ops of the two-part patterns", got.Names())
	}

	// Policies: every pattern that names no database or names this one.
	p := grantsOf(t, `{"tenant": "acme", "tablecast": {"policies": {
		"public.orders": {"tenant": {"eq": {"claim": "tenant"}}},
		"shop.public.orders": {"region": {"eq": "eu"}},
		"billing.*.*": {"currency": {"eq": "EUR"}}
	}}}`)
	for _, tc := range []struct{ db, want string }{
		{"shop", `{"tenant": {"eq": "acme"}, "region": {"eq": "eu"}}`},
		{"billing", `{"currency": {"eq": "EUR"}, "tenant": {"eq": "acme"}}`},
		{"other", `{"tenant": {"eq": "acme"}}`},
		{"", `{"tenant": {"eq": "acme"}}`},
	} {
		got, err := p.TablePolicy(tc.db, "public", "orders")
		if err != nil || !whereIs(t, got, tc.want) {
			t.Errorf("TablePolicy(%q, public, orders) = %s, %v; want %s", tc.db, got, err, tc.want)
		}
	}
	if got, err := p.TablePolicy("shop", "public", "items"); err != nil || got != nil {
		t.Errorf("TablePolicy(shop, public, items) = %s, %v; want none", got, err)
	}
}

// TestGrantsColumns: "columns" narrows what a table shows, with the
// precedence of "tables"; absent means every column.
func TestGrantsColumns(t *testing.T) {
	g := grantsOf(t, `{"tablecast": {"columns": {
		"public.users": ["name", "id"],
		"shop.public.users": ["id"],
		"public.*": ["id", "tenant"],
		"public.open": ["*"],
		"secret.*": [],
		"billing.*.*": ["amount"]
	}}}`)
	cases := []struct {
		db, schema, table string
		want              []string
		all               bool
	}{
		{"", "public", "users", []string{"id", "name"}, false}, // sorted
		{"shop", "public", "users", []string{"id"}, false},
		{"billing", "public", "users", []string{"id", "name"}, false}, // the table decides before the database
		{"billing", "public", "items", []string{"id", "tenant"}, false},
		{"billing", "other", "items", []string{"amount"}, false},
		{"shop", "public", "open", nil, true}, // "*" under a narrower wildcard
		{"shop", "secret", "keys", []string{}, false},
		{"shop", "other", "items", nil, true}, // no pattern: every column
	}
	for _, tc := range cases {
		got, all := g.TableColumns(tc.db, tc.schema, tc.table)
		if all != tc.all || !slices.Equal(got, tc.want) || (!tc.all && got == nil) {
			t.Errorf("TableColumns(%q, %q, %q) = %q, %v; want %q, %v", tc.db, tc.schema, tc.table, got, all, tc.want, tc.all)
		}
	}
	for name, g := range map[string]*Grants{"anonymous": allGrants, "no columns member": grantsOf(t, `{"tablecast": {"tables": {"*": ["*"]}}}`)} {
		if cols, all := g.TableColumns("shop", "public", "users"); !all || cols != nil {
			t.Errorf("%s: TableColumns = %q, %v; want every column", name, cols, all)
		}
	}
}

func TestGrantsMalformedDatabasesAndColumns(t *testing.T) {
	cases := []struct{ grants, want string }{
		{`{"tables": {"*.public.orders": ["read"]}}`, "leaves the database out"},
		{`{"tables": {"shop.*.orders": ["read"]}}`, "needs * for the table"},
		{`{"tables": {"shop.pub*.orders": ["read"]}}`, "quote a name"},
		{`{"tables": {"shop.public.orders": ["read"], "\"shop\".public.orders": ["create"]}}`, "repeats a table"},
		{`{"tables": {"shop.*.*": ["read"], "\"shop\".*.*": ["create"]}}`, "repeats a pattern"},
		{`{"tables": {"a..b": ["read"]}}`, `pattern "a..b"`},
		{`{"columns": []}`, "columns must be an object"},
		{`{"columns": {"public.users": "id"}}`, "list of column names"},
		{`{"columns": {"public.users": null}}`, "list of column names"},
		{`{"columns": {"public.users": [1]}}`, "1 is not a column name"},
		{`{"columns": {"public.users": [""]}}`, "empty column name"},
		{`{"columns": {"public.users": ["id", "*"]}}`, "must stand alone"},
		{`{"columns": {"public.users": ["id", "id"]}}`, "listed twice"},
		{`{"columns": {"public.users": ["` + strings.Repeat("c", 64) + `"]}}`, "longer than 63 bytes"},
		{`{"columns": {"users": ["id"]}}`, `pattern "users"`},
		{`{"columns": {"public.users": ["id"], "\"public\".users": ["name"]}}`, "repeats a pattern"},
		{`{"column": {"public.users": ["id"]}}`, `unknown member "column"`},
	}
	for _, tc := range cases {
		t.Run(tc.grants, func(t *testing.T) {
			claims, err := decodeClaims([]byte(`{"tablecast": ` + tc.grants + `}`))
			if err != nil {
				t.Fatal(err)
			}
			_, err = GrantsFromClaims(claims)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// TestGrantsPoliciesCombineWhateverTheirShape: every matching pattern's
// policy applies, whatever the shapes of the policies: a condition on a
// column called "or" in one and an "or" group in another, or "or" groups
// nested as deeply as a where allows in one and a group in another, still
// combine into a policy that holds exactly when both do, rather than into
// none (the subscription refused).
func TestGrantsPoliciesCombineWhateverTheirShape(t *testing.T) {
	types := map[string]query.ColumnType{"id": query.TypeInteger, "tenant_id": query.TypeText, "or": query.TypeText}
	deep := `{"tenant_id": {"eq": "a"}}`
	for range query.MaxOrDepth {
		deep = `{"or": [` + deep + `, {"id": {"eq": 0}}]}`
	}
	for _, tc := range []struct {
		name, policies string
		rows           map[string]bool
	}{
		{"a column called or, and a group",
			`{"*": {"or": {"eq": "x"}}, "public.orders": {"or": [{"tenant_id": {"eq": "a"}}, {"tenant_id": {"eq": "b"}}]}}`,
			map[string]bool{
				`{"id": 1, "tenant_id": "a", "or": "x"}`: true,
				`{"id": 2, "tenant_id": "b", "or": "y"}`: false,
				`{"id": 3, "tenant_id": "c", "or": "x"}`: false,
			}},
		{"groups as deep as allowed, and a group",
			`{"*": ` + deep + `, "public.orders": {"or": [{"tenant_id": {"neq": "b"}, "id": {"gt": 0}}, {"id": {"gt": 5}}]}}`,
			map[string]bool{
				`{"id": 1, "tenant_id": "a", "or": "x"}`: true,
				`{"id": 0, "tenant_id": "z", "or": "x"}`: false,
				`{"id": 2, "tenant_id": "b", "or": "x"}`: false,
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := grantsOf(t, `{"tablecast": {"policies": `+tc.policies+`}}`)
			policy, err := g.TablePolicy("shop", "public", "orders")
			if err != nil {
				t.Fatalf("TablePolicy: %v", err)
			}
			f, err := query.Compile(policy, "public.orders", types)
			if err != nil {
				t.Fatalf("policy %s does not compile: %v", policy, err)
			}
			for obj, want := range tc.rows {
				var row query.Row
				if err := row.Reset([]byte(obj)); err != nil {
					t.Fatal(err)
				}
				if got, err := f.Match(&row); got != want || err != nil {
					t.Errorf("row %s: %v, %v; want %v", obj, got, err, want)
				}
			}
		})
	}
}
