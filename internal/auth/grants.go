// Grants: what an authenticated client may read, publish and manage, and
// the row policies pinned to its table subscriptions (DESIGN.md,
// "Security").
//
// # The grants claim
//
// A token's grants are the claim "tablecast" (GrantsClaim), a JSON object;
// an API key's grants are the same claim in its configured Claims:
//
//	{"sub": "user-42", "tenant": "acme", "exp": 1798000000,
//	 "tablecast": {
//	   "tables":   {"public.orders": ["create", "update", "delete", "truncate", "read"],
//	                "public.*": ["create"],
//	                "*": ["*"],
//	                "audit.log": [],
//	                "legacy.*.*": []},
//	   "columns":  {"public.users": ["id", "name"]},
//	   "topics":   {"subscribe": ["chat", "room.*"],
//	                "publish": ["chat"],
//	                "create": ["room.*"],
//	                "destroy": []},
//	   "policies": {"public.orders": {"tenant_id": {"eq": {"claim": "tenant"}}}},
//	   "limits":   {"connections": 5, "subscriptions": 20}
//	 }}
//
// Every member is optional; whatever is not granted is refused. A token
// without the claim authenticates but may read and publish nothing. A
// member or operation the gateway does not know is an error, never
// ignored (a misspelt "policy" must not silently drop a row policy): the
// token is refused with the reason "malformed grants: …".
//
// tables maps a table pattern to the operations allowed on matching tables:
// any of "create", "update", "delete", "truncate", "read" (a row sent by a
// snapshot), or "*" for all five. A pattern is "schema.table" (an exact
// table, each part as schema.ParseTableName reads it, so `"My
// Schema"."orders.v2"` works), "schema.*" (every table of the schema) or
// "*" (every table); these match the table in every database. Prefixed
// with a database they match in that database only: "db.schema.table",
// "db.schema.*", and "db.*.*" (every table of the database). A table takes
// the operations of its MOST SPECIFIC matching pattern, alone. Naming the
// table is more specific than naming its schema, which is more specific
// than naming neither; at each of these levels a pattern naming the
// database is more specific than one that does not: db.schema.table, then
// schema.table, db.schema.*, schema.*, db.*.*, *. So an exact entry can
// narrow a wildcard, and an empty list denies a table that a wildcard would
// allow ("audit.log": [] above). "legacy.*.*": [] above denies the tables
// of the database legacy but those of its public schema, which the more
// specific public.orders and public.* grant in every database; to deny
// them there too, name them: "legacy.public.*": [] and
// "legacy.public.orders": []. An unquoted * anywhere else is an error;
// quote a name that really holds one.
//
// columns maps a table pattern (the patterns and precedence of tables) to
// the columns a subscriber may see, or ["*"] for every one; a table no
// pattern matches shows every column. A column not granted is removed
// from "data", "old", "unchanged" and "key" before the client's select,
// and a where or select naming it is refused exactly as a column the table
// does not have, so that nothing of its values or existence shows. Row
// policies may read any column.
//
// topics lists, per action, the custom topic patterns allowed: "name"
// (exact), "prefix.*" (every topic whose name starts with "prefix.", at
// any depth, but not "prefix" itself) or "*" (every topic). The actions
// are independent: subscribe (receive messages), publish, create
// (create-topic) and destroy (destroy-topic); publishing does not imply
// subscribing.
//
// policies maps a table pattern (the same patterns as tables) to a row
// policy: a where object, the same shape as a subscription's where
// (query.CompileWhere). Unlike tables, EVERY matching pattern's policy applies
// (those of other databases do not),
// ANDed together: a policy only ever narrows, so a wildcard policy cannot
// be widened by a more specific one. A table with a policy whose columns it
// does not have cannot be subscribed to (the filter does not compile):
// that is refused, never widened. Inside a policy, an operator's value
// written {"claim": "<name>"} is replaced by the value of the top-level
// claim <name> of the same token (a string, number, boolean, array or
// object, as the token has it); an array claim fits in and nin
// ({"tenant_id": {"in": {"claim": "tenants"}}}), and a claim reference
// inside an in-list is spliced in. A claim that is missing or null makes
// the policy, and so every subscription to its tables, fail
// (ErrMissingClaim) rather than match more rows. The only way to compare a
// json column with the literal object {"claim": "…"} is not to: that
// object always means a claim reference.
//
// A policy judges each row an event carries: an update whose old row
// PostgreSQL sends (REPLICA IDENTITY FULL) is judged on both, and a
// subscriber allowed only one of them sees only that one (see query.Selector.Decide).
//
// limits tightens per-identity limits: connections (simultaneous
// connections of this identity) and subscriptions (per connection). 0 or
// absent leaves the gateway's own setting.

package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// GrantsClaim is the name of the claim that holds a token's grants.
const GrantsClaim = "tablecast"

// ErrMissingClaim is wrapped by Grants.Policy when a row policy refers to a
// claim the token does not have (or has as null). The gateway refuses the
// subscription.
var ErrMissingClaim = errors.New("claim missing from the token")

// maxPolicyDepth bounds how deeply a policy's "or" groups may nest while it
// is read; query.Compile applies its own, smaller, limit (query.MaxOrDepth) when
// the policy is compiled. It only stops a pathological claim from
// recursing deeply here.
const maxPolicyDepth = 32

// maxLimit bounds a limit in the grants claim; anything larger is a typo.
const maxLimit = 1_000_000_000

// Limits are the per-identity limits of a grants claim. Zero means the
// gateway's own setting.
type Limits struct {
	// Connections is the most simultaneous connections of this identity
	// (claim limits.connections).
	Connections int
	// Subscriptions is the most subscriptions per connection (claim
	// limits.subscriptions).
	Subscriptions int
}

// Topic actions, the members of the grants claim's "topics".
const (
	topicSubscribe = iota
	topicPublish
	topicCreate
	topicDestroy
	topicActions
)

var topicActionNames = [topicActions]string{"subscribe", "publish", "create", "destroy"}

// Grants is what an identity may do, read from the grants claim (its format
// is documented at the top of grants.go, for the README). It is immutable
// once built, and safe for concurrent use. A nil *Grants allows nothing.
type Grants struct {
	all bool // the anonymous identity: everything, no policies

	tables  tableRules[schema.OpSet]
	columns tableRules[columnGrant]

	topics   [topicActions][]topicPattern
	policies []grantPolicy // sorted: "*" first, then db.*.*, schema.*, exact
	limits   Limits
}

// columnGrant is the columns a pattern of the claim's "columns" grants.
type columnGrant struct {
	all   bool     // "*": every column
	names []string // sorted, distinct; empty: no column
}

// grantTable is a table, or with table "" a schema, of a pattern; db ""
// stands for every database.
type grantTable struct{ db, schema, table string }

// tablePattern is a parsed table pattern.
type tablePattern struct {
	kind              patternKind
	db, schema, table string // db "" for every database; schema unless patAny or patDB; table only for patExact
}

type patternKind uint8

// Pattern kinds, least specific first (the order of the policies).
const (
	patAny    patternKind = iota // "*"
	patDB                        // "db.*.*"
	patSchema                    // "schema.*", "db.schema.*"
	patExact                     // "schema.table", "db.schema.table"
)

func (p tablePattern) match(db, schemaName, table string) bool {
	if p.db != "" && p.db != db {
		return false
	}
	switch p.kind {
	case patAny, patDB:
		return true
	case patSchema:
		return p.schema == schemaName
	}
	return p.schema == schemaName && p.table == table
}

func (p tablePattern) String() string {
	switch p.kind {
	case patAny:
		return "*"
	case patDB:
		s := schema.FormatQualifiedName(p.db, "x", "x") // the database, quoted as needed
		return s[:len(s)-3] + "*.*"
	case patSchema:
		s := schema.FormatQualifiedName(p.db, p.schema, "x") // the schema, quoted as needed
		return s[:len(s)-1] + "*"
	}
	return schema.FormatQualifiedName(p.db, p.schema, p.table)
}

// tableRules maps the table patterns of one member of the claim ("tables",
// "columns") to their values. A table takes the value of its most specific
// matching pattern alone. Specificity goes by the table first, then by the
// database: db.schema.table, schema.table, db.schema.*, schema.*, db.*.*,
// *. So naming the table always beats a wildcard over it, and among
// patterns that say as much of the table, the one that names the database
// wins.
type tableRules[V any] struct {
	exact   map[grantTable]V // db.schema.table and schema.table (db "")
	schemas map[grantTable]V // db.schema.* and schema.* (table "")
	dbs     map[string]V     // db.*.*
	anyV    V                // *
	hasAny  bool
}

// add records the value of a pattern; false if the pattern is there already.
func (r *tableRules[V]) add(p tablePattern, v V) bool {
	put := func(m *map[grantTable]V, k grantTable) bool {
		if _, dup := (*m)[k]; dup {
			return false
		}
		if *m == nil {
			*m = map[grantTable]V{}
		}
		(*m)[k] = v
		return true
	}
	switch p.kind {
	case patAny:
		if r.hasAny {
			return false
		}
		r.anyV, r.hasAny = v, true
		return true
	case patDB:
		if _, dup := r.dbs[p.db]; dup {
			return false
		}
		if r.dbs == nil {
			r.dbs = map[string]V{}
		}
		r.dbs[p.db] = v
		return true
	case patSchema:
		return put(&r.schemas, grantTable{p.db, p.schema, ""})
	}
	return put(&r.exact, grantTable{p.db, p.schema, p.table})
}

// lookup returns the value of the most specific pattern matching the table
// of database db ("" when the caller names none: then only the patterns
// that name no database apply).
func (r *tableRules[V]) lookup(db, schemaName, table string) (V, bool) {
	if v, ok := r.exact[grantTable{db, schemaName, table}]; ok {
		return v, true
	}
	if v, ok := r.exact[grantTable{"", schemaName, table}]; ok {
		return v, true
	}
	if v, ok := r.schemas[grantTable{db, schemaName, ""}]; ok {
		return v, true
	}
	if v, ok := r.schemas[grantTable{"", schemaName, ""}]; ok {
		return v, true
	}
	if v, ok := r.dbs[db]; ok && db != "" {
		return v, true
	}
	if r.hasAny {
		return r.anyV, true
	}
	var zero V
	return zero, false
}

// topicPattern is a parsed topic pattern: all, a prefix ending in '.', or
// an exact name.
type topicPattern struct {
	all    bool
	prefix string
	exact  string
}

func (p topicPattern) match(name string) bool {
	switch {
	case p.all:
		return true
	case p.prefix != "":
		return len(name) > len(p.prefix) && strings.HasPrefix(name, p.prefix)
	}
	return name == p.exact
}

// grantPolicy is one row policy, its claim references already resolved
// (where), or the error resolving them gave (a missing claim), which every
// subscription to a matching table then gets.
type grantPolicy struct {
	pat   tablePattern
	where map[string]any
	err   error
}

// allGrants is the anonymous identity's grants.
var allGrants = &Grants{all: true}

// TableOps returns the operations the identity may read on the table
// schemaName.table of database db: those of the most specific matching
// pattern of the grants claim's "tables" (see tableRules). An empty set
// means the table may not be read at all; the gateway answers as for a
// table that does not exist.
func (g *Grants) TableOps(db, schemaName, table string) schema.OpSet {
	switch {
	case g == nil:
		return 0
	case g.all:
		return schema.AllOps
	}
	ops, _ := g.tables.lookup(db, schemaName, table)
	return ops
}

// OpsFor is TableOps for a table whose database is not named: only the
// patterns that name no database apply.
func (g *Grants) OpsFor(schemaName, table string) schema.OpSet {
	return g.TableOps("", schemaName, table)
}

// CanRead reports whether the identity may receive op (schema.OpCreate …
// schema.OpRead) events of a table, its database not named (see OpsFor).
func (g *Grants) CanRead(schemaName, table, op string) bool {
	return g.OpsFor(schemaName, table).Has(op)
}

// TableColumns returns the columns of the table schemaName.table of
// database db the identity may see, from the most specific matching
// pattern of the grants claim's "columns" (the precedence of "tables"):
// all is true when every column is granted (no matching pattern, or "*"),
// else cols lists the granted names, sorted (possibly none). The caller may
// keep but not change cols.
func (g *Grants) TableColumns(db, schemaName, table string) (cols []string, all bool) {
	if g == nil || g.all {
		return nil, true
	}
	c, ok := g.columns.lookup(db, schemaName, table)
	if !ok || c.all {
		return nil, true
	}
	return c.names, false
}

// CanSubscribeTopic reports whether the identity may subscribe to a custom
// topic.
func (g *Grants) CanSubscribeTopic(name string) bool { return g.topic(topicSubscribe, name) }

// CanPublish reports whether the identity may publish to a custom topic.
func (g *Grants) CanPublish(name string) bool { return g.topic(topicPublish, name) }

// CanCreateTopic reports whether the identity may create a custom topic.
func (g *Grants) CanCreateTopic(name string) bool { return g.topic(topicCreate, name) }

// CanDestroyTopic reports whether the identity may destroy a custom topic.
func (g *Grants) CanDestroyTopic(name string) bool { return g.topic(topicDestroy, name) }

func (g *Grants) topic(action int, name string) bool {
	switch {
	case g == nil:
		return false
	case g.all:
		return true
	}
	for _, p := range g.topics[action] {
		if p.match(name) {
			return true
		}
	}
	return false
}

// Limits returns the per-identity limits of the grants claim (zero: the
// gateway's setting).
func (g *Grants) Limits() Limits {
	if g == nil {
		return Limits{}
	}
	return g.limits
}

// Policy returns the row policy of a table: a where that every
// subscription to the table must match whatever the client's own where
// says; the AND of every matching pattern's policy (query.And), claim
// references replaced by the claim values. nil and no error means no
// policy. An error (a missing claim, wrapping ErrMissingClaim) means the
// subscription must be refused: the error never stands for "no policy".
//
// The gateway compiles the policy on its own (query.Compile) and requires
// both filters to match; it could as well compile query.And of the policy
// and the client's where into one filter.
func (g *Grants) Policy(schemaName, table string) (*query.Where, error) {
	return g.TablePolicy("", schemaName, table)
}

// TablePolicy is Policy for the table schemaName.table of database db:
// every pattern that names no database or names db applies.
func (g *Grants) TablePolicy(db, schemaName, table string) (*query.Where, error) {
	switch {
	case g == nil:
		return nil, errors.New("no grants")
	case g.all:
		return nil, nil
	}
	var where *query.Where
	for _, p := range g.policies {
		if !p.pat.match(db, schemaName, table) {
			continue
		}
		if p.err != nil {
			return nil, fmt.Errorf("row policy %s for %s: %w", p.pat, schema.FormatQualifiedName(db, schemaName, table), p.err)
		}
		w, err := policyWhere(p.where)
		if err != nil {
			return nil, fmt.Errorf("row policy %s for %s: %w", p.pat, schema.FormatQualifiedName(db, schemaName, table), err)
		}
		if where == nil {
			where = w // even one without conditions: a policy, if empty
			continue
		}
		where = query.And(where, w)
	}
	return where, nil
}

// policyWhere is the where of a policy as policyResolver checked and
// resolved it: its columns in name order, an "or" with a list a group,
// each operator's operand the JSON of its (resolved) value.
func policyWhere(m map[string]any) (*query.Where, error) {
	w := &query.Where{Terms: make([]query.Term, 0, len(m))}
	for _, col := range slices.Sorted(maps.Keys(m)) {
		if groups, ok := m[col].([]any); ok && col == "or" {
			t := query.Term{Or: make([]*query.Where, len(groups))}
			for i, g := range groups {
				gm, _ := g.(map[string]any) // an object: policyResolver checked it
				var err error
				if t.Or[i], err = policyWhere(gm); err != nil {
					return nil, err
				}
			}
			w.Terms = append(w.Terms, t)
			continue
		}
		ops, _ := m[col].(map[string]any) // an object: policyResolver checked it
		t := query.Term{Column: col, Ops: make([]query.Operator, 0, len(ops))}
		for _, op := range slices.Sorted(maps.Keys(ops)) {
			v, err := marshalOperand(ops[op])
			if err != nil {
				return nil, fmt.Errorf("column %q, %s: %w", col, op, err)
			}
			t.Ops = append(t.Ops, query.Operator{Name: op, Value: v})
		}
		w.Terms = append(w.Terms, t)
	}
	return w, nil
}

// marshalOperand is the JSON of an operand decoded by encoding/json
// (numbers as json.Number, so that they keep their digits), without
// escaping HTML.
func marshalOperand(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// decodeStrict decodes one JSON value like encoding/json into any (numbers
// as json.Number), but refuses an object that repeats a member name: a map
// keeps one, and another parser might keep the other.
func decodeStrict(dec *json.Decoder, depth int) (any, error) {
	if depth > 10*maxPolicyDepth {
		return nil, errors.New("nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		obj := map[string]any{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return nil, err
			}
			name := tok.(string) // the decoder only gives strings here
			if _, dup := obj[name]; dup {
				return nil, repeatedMemberError(name)
			}
			if obj[name], err = decodeStrict(dec, depth+1); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token() // '}'
		return obj, err
	case json.Delim('['):
		list := []any{}
		for dec.More() {
			v, err := decodeStrict(dec, depth+1)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		_, err := dec.Token() // ']'
		return list, err
	}
	return tok, nil
}

// repeatedMemberError is decodeStrict's error for a repeated member name.
type repeatedMemberError string

func (e repeatedMemberError) Error() string { return fmt.Sprintf("member %q is repeated", string(e)) }

// GrantsFromClaims reads the grants of a token's claims (the claim
// GrantsClaim, see the file comment) as decoded by encoding/json, numbers
// as json.Number or float64. Claim references in row policies are
// resolved against claims. A missing grants claim gives grants that allow
// nothing; a malformed one is an error that says what is wrong.
func GrantsFromClaims(claims map[string]any) (*Grants, error) {
	g := &Grants{}
	raw, ok := claims[GrantsClaim]
	if !ok || raw == nil {
		return g, nil
	}
	obj, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("claim %q must be an object", GrantsClaim)
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		v := obj[k]
		var err error
		switch k {
		case "tables":
			err = g.readTables(v)
		case "topics":
			err = g.readTopics(v)
		case "columns":
			err = g.readColumns(v)
		case "policies":
			err = g.readPolicies(v, claims)
		case "limits":
			err = g.readLimits(v)
		default:
			err = fmt.Errorf("unknown member %q (want tables, columns, topics, policies or limits)", k)
		}
		if err != nil {
			return nil, err
		}
	}
	return g, nil
}

func (g *Grants) readTables(v any) error {
	obj, ok := v.(map[string]any)
	if !ok {
		return errors.New("tables must be an object of table pattern to operations")
	}
	for _, pat := range slices.Sorted(maps.Keys(obj)) {
		p, err := parseTablePattern(pat)
		if err != nil {
			return fmt.Errorf("tables: %w", err)
		}
		ops, err := readOps(obj[pat])
		if err != nil {
			return fmt.Errorf("tables[%q]: %w", pat, err)
		}
		if !g.tables.add(p, ops) {
			if p.kind == patExact {
				return fmt.Errorf("tables: %q repeats a table", pat)
			}
			return fmt.Errorf("tables: %q repeats a pattern", pat)
		}
	}
	return nil
}

func (g *Grants) readColumns(v any) error {
	obj, ok := v.(map[string]any)
	if !ok {
		return errors.New("columns must be an object of table pattern to column names")
	}
	for _, pat := range slices.Sorted(maps.Keys(obj)) {
		p, err := parseTablePattern(pat)
		if err != nil {
			return fmt.Errorf("columns: %w", err)
		}
		cols, err := readColumnList(obj[pat])
		if err != nil {
			return fmt.Errorf("columns[%q]: %w", pat, err)
		}
		if !g.columns.add(p, cols) {
			return fmt.Errorf("columns: %q repeats a pattern", pat)
		}
	}
	return nil
}

// readColumnList reads the column names of one pattern: ["*"] for every
// column, else distinct non-empty names (an empty list grants none).
func readColumnList(v any) (columnGrant, error) {
	list, ok := v.([]any)
	if !ok {
		return columnGrant{}, errors.New(`want a list of column names, or ["*"] for every column`)
	}
	if len(list) == 1 && list[0] == "*" {
		return columnGrant{all: true}, nil
	}
	names := make([]string, 0, len(list))
	for _, e := range list {
		name, ok := e.(string)
		switch {
		case !ok:
			return columnGrant{}, fmt.Errorf("%s is not a column name", shortJSON(e))
		case name == "":
			return columnGrant{}, errors.New("an empty column name")
		case name == "*":
			return columnGrant{}, errors.New(`"*" (every column) must stand alone in its list`)
		case len(name) > schema.MaxIdentLen:
			return columnGrant{}, fmt.Errorf("column %s is longer than %d bytes, which no column is", shortJSON(e), schema.MaxIdentLen)
		case slices.Contains(names, name):
			return columnGrant{}, fmt.Errorf("column %s is listed twice", shortJSON(e))
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return columnGrant{names: names}, nil
}

func readOps(v any) (schema.OpSet, error) {
	list, ok := v.([]any)
	if !ok {
		return 0, errors.New("want a list of operations")
	}
	var ops schema.OpSet
	for _, e := range list {
		s, _ := e.(string)
		if s == "*" {
			ops = schema.AllOps
			continue
		}
		b := schema.OpBit(s)
		if b == 0 {
			return 0, fmt.Errorf("unknown operation %s (want create, update, delete, truncate, read or *)", shortJSON(e))
		}
		ops |= b
	}
	return ops, nil
}

// parseTablePattern reads a table pattern: "*", "schema.*",
// "schema.table", "db.*.*", "db.schema.*" or "db.schema.table", each part
// as schema.ParseTableName reads it (double-quoted when it holds a dot or
// a quote; a quoted "*" is a name, not a wildcard).
func parseTablePattern(pat string) (tablePattern, error) {
	bad := func(why string) (tablePattern, error) {
		return tablePattern{}, fmt.Errorf("pattern %q: %s (want schema.table, schema.*, db.schema.table, db.schema.*, db.*.* or *)", pat, why)
	}
	if pat == "*" {
		return tablePattern{kind: patAny}, nil
	}
	parts, err := schema.SplitName(pat)
	if err != nil {
		return bad("malformed name")
	}
	wild := make([]bool, len(parts))
	for i, p := range parts {
		if !p.Quoted && strings.Contains(p.Name, "*") {
			if p.Name != "*" {
				return bad("* is a pattern only as a whole part; quote a name that holds one")
			}
			wild[i] = true
		}
	}
	switch len(parts) {
	case 2:
		switch {
		case wild[0]:
			return bad("* is a pattern only for the table, or the whole pattern; quote a name that holds one")
		case wild[1]:
			return tablePattern{kind: patSchema, schema: parts[0].Name}, nil
		}
		return tablePattern{kind: patExact, schema: parts[0].Name, table: parts[1].Name}, nil
	case 3:
		db := parts[0].Name
		switch {
		case wild[0]:
			return bad("a pattern for every database leaves the database out (schema.table); quote a name that holds *")
		case wild[1] && wild[2]:
			return tablePattern{kind: patDB, db: db}, nil
		case wild[1]:
			return bad("* for the schema needs * for the table (db.*.*); quote a name that holds one")
		case wild[2]:
			return tablePattern{kind: patSchema, db: db, schema: parts[1].Name}, nil
		}
		return tablePattern{kind: patExact, db: db, schema: parts[1].Name, table: parts[2].Name}, nil
	}
	return bad("want two or three parts")
}

func (g *Grants) readTopics(v any) error {
	obj, ok := v.(map[string]any)
	if !ok {
		return errors.New("topics must be an object of subscribe, publish, create and destroy lists")
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		action := slices.Index(topicActionNames[:], k)
		if action < 0 {
			return fmt.Errorf("topics: unknown action %q (want subscribe, publish, create or destroy)", k)
		}
		list, ok := obj[k].([]any)
		if !ok {
			return fmt.Errorf("topics.%s must be a list of topic patterns", k)
		}
		for _, e := range list {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("topics.%s: %s is not a string", k, shortJSON(e))
			}
			p, err := parseTopicPattern(s)
			if err != nil {
				return fmt.Errorf("topics.%s: %w", k, err)
			}
			g.topics[action] = append(g.topics[action], p)
		}
	}
	return nil
}

// parseTopicPattern reads "*", "prefix.*" or an exact topic name.
func parseTopicPattern(pat string) (topicPattern, error) {
	if pat == "*" {
		return topicPattern{all: true}, nil
	}
	name, wild := strings.CutSuffix(pat, ".*")
	if name == "" || strings.ContainsAny(name, "*> \t\r\n") || name[0] == '.' || name[len(name)-1] == '.' ||
		len(name) > schema.MaxTopicLen {
		return topicPattern{}, fmt.Errorf("pattern %q: want a topic name, prefix.* or *", pat)
	}
	if wild {
		return topicPattern{prefix: name + "."}, nil
	}
	return topicPattern{exact: name}, nil
}

func (g *Grants) readLimits(v any) error {
	obj, ok := v.(map[string]any)
	if !ok {
		return errors.New("limits must be an object")
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		var dst *int
		switch k {
		case "connections":
			dst = &g.limits.Connections
		case "subscriptions":
			dst = &g.limits.Subscriptions
		default:
			return fmt.Errorf("limits: unknown limit %q (want connections or subscriptions)", k)
		}
		n, ok := claimInt(obj[k])
		if !ok || n < 0 || n > maxLimit {
			return fmt.Errorf("limits.%s must be a whole number from 0 to %d", k, maxLimit)
		}
		*dst = int(n)
	}
	return nil
}

// claimInt reads a whole number decoded by encoding/json.
func claimInt(v any) (int64, bool) {
	var f float64
	switch n := v.(type) {
	case json.Number:
		if i, err := n.Int64(); err == nil {
			return i, true
		}
		var err error
		if f, err = n.Float64(); err != nil {
			return 0, false
		}
	case float64:
		f = n
	default:
		return 0, false
	}
	if f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, false
	}
	return int64(f), true
}

func (g *Grants) readPolicies(v any, claims map[string]any) error {
	obj, ok := v.(map[string]any)
	if !ok {
		return errors.New("policies must be an object of table pattern to where object")
	}
	seen := map[tablePattern]bool{}
	for _, pat := range slices.Sorted(maps.Keys(obj)) {
		p, err := parseTablePattern(pat)
		if err != nil {
			return fmt.Errorf("policies: %w", err)
		}
		if seen[p] {
			return fmt.Errorf("policies: %q repeats a pattern", pat)
		}
		seen[p] = true
		r := policyResolver{claims: claims}
		where, err := r.group(obj[pat], 0)
		if err != nil {
			return fmt.Errorf("policies[%q]: %w", pat, err)
		}
		g.policies = append(g.policies, grantPolicy{pat: p, where: where, err: r.missing})
	}
	slices.SortStableFunc(g.policies, func(a, b grantPolicy) int { return int(a.pat.kind) - int(b.pat.kind) })
	return nil
}

// policyResolver checks the shape of a policy's where object and copies it
// with claim references replaced. A malformed shape is an error at once
// (the token is refused); a missing claim is kept in missing, for the
// policy's subscriptions to fail.
type policyResolver struct {
	claims  map[string]any
	missing error
}

func (r *policyResolver) group(v any, depth int) (map[string]any, error) {
	if depth > maxPolicyDepth {
		return nil, errors.New(`"or" groups nest too deeply`)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("a row policy must be an object of column conditions, like a subscription's where")
	}
	out := make(map[string]any, len(obj))
	for col, cv := range obj {
		if arr, ok := cv.([]any); ok && col == "or" {
			if len(arr) == 0 {
				return nil, errors.New(`"or" needs a non-empty list of condition objects`)
			}
			groups := make([]any, len(arr))
			for i, e := range arr {
				var err error
				if groups[i], err = r.group(e, depth+1); err != nil {
					return nil, err
				}
			}
			out[col] = groups
			continue
		}
		ops, ok := cv.(map[string]any)
		if !ok || len(ops) == 0 {
			return nil, fmt.Errorf(`condition on column %q must be an object of operators, like {"eq": …}`, col)
		}
		resolved := make(map[string]any, len(ops))
		for op, operand := range ops {
			val, err := r.operand(operand)
			if err != nil {
				return nil, fmt.Errorf("column %q, %s: %w", col, op, err)
			}
			resolved[op] = val
		}
		out[col] = resolved
	}
	return out, nil
}

// operand resolves an operator's value: a claim reference, a list that may
// hold claim references (spliced in when they are arrays), or a literal.
func (r *policyResolver) operand(v any) (any, error) {
	name, isRef, err := claimRef(v)
	switch {
	case err != nil:
		return nil, err
	case isRef:
		return r.claim(name), nil
	}
	list, ok := v.([]any)
	if !ok {
		return v, nil
	}
	out := make([]any, 0, len(list))
	for _, e := range list {
		name, isRef, err := claimRef(e)
		switch {
		case err != nil:
			return nil, err
		case !isRef:
			out = append(out, e)
		default:
			if arr, ok := r.claim(name).([]any); ok {
				out = append(out, arr...)
			} else {
				out = append(out, r.claim(name))
			}
		}
	}
	return out, nil
}

// claimRef reports whether v is a claim reference {"claim": "name"}.
func claimRef(v any) (name string, isRef bool, err error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return "", false, nil
	}
	ref, ok := obj["claim"]
	if !ok {
		return "", false, nil
	}
	name, ok = ref.(string)
	if !ok || name == "" || len(obj) != 1 {
		return "", false, errors.New(`a claim reference is {"claim": "<claim name>"} and nothing else`)
	}
	return name, true, nil
}

func (r *policyResolver) claim(name string) any {
	v, ok := r.claims[name]
	if (!ok || v == nil) && r.missing == nil {
		r.missing = fmt.Errorf("%w: %q", ErrMissingClaim, name)
	}
	return v
}

// shortJSON renders a decoded JSON value for an error message, cut short.
func shortJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return cutUTF8(string(b), 40)
}

// ParseGrants reads a grants object, in the language of the grants claim
// (grants.go): {"tables": …, "topics": …, "policies": …, "limits": …}. A
// member given twice anywhere is an error, as in a token.
func ParseGrants(data []byte) (*Grants, error) {
	v, err := decodeStrictJSON(data)
	if err != nil {
		return nil, fmt.Errorf("grants are not valid JSON: %w", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, errors.New(`grants must be a JSON object like {"tables": {"public.prices": ["*"]}}`)
	}
	return GrantsFromClaims(map[string]any{GrantsClaim: v})
}
