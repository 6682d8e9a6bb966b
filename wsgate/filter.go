// Row filters: the `where` of a subscription (DESIGN.md, "WebSocket
// protocol — contract (v1)").
//
// CompileWhere turns a client's where object into a Filter once, when the
// subscription is made: every literal is parsed to its column's type then,
// so that Match, which runs for every event and every subscription, only
// reads the event's raw JSON values and compares. Match allocates nothing
// for the comparisons that matter on the fan-out path (integer, numeric,
// text, boolean and timestamp columns; BenchmarkMatch, TestMatchAllocs).
//
// Values are compared the way PostgreSQL compares them, as far as the JSON
// form of the event allows (schema.AppendValue):
//
//   - integers exactly as int64, falling back to an exact decimal compare
//     for what int64 cannot hold (xid8, a literal such as 10.5);
//   - floats as float64, NaN equal to NaN and above every other value,
//     "Infinity" and "-Infinity" at the ends;
//   - numeric and money exactly, as decimals (1.50 equals 1.5), never
//     through float64; NaN above Infinity, as PostgreSQL orders them;
//   - timestamps as instants: "2026-11-22T08:00:00+01:00" equals
//     "2026-11-22T07:00:00Z"; "-infinity" and "infinity" at the ends;
//   - dates by calendar day, BC dates and years past 9999 included;
//   - text bytewise after JSON unescaping (the C collation, not the
//     database's);
//   - booleans with false before true;
//   - json and jsonb only for equality of their compact text.
//
// NULL follows SQL: every comparison with a NULL value is false, so a NULL
// matches neither {"eq": x} nor {"neq": x}; only {"is": "null"} matches it.
// A value that cannot be evaluated (its column is absent from the row, or
// its JSON is not of the column's type) is an *EvalError rather than a
// guess. Conditions combine with three-valued logic: in an AND a false
// condition decides the result even when another cannot be evaluated, in an
// OR a true one does; otherwise the error is returned.

package wsgate

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/tablecast/tablecast/internal/civil"
	"github.com/tablecast/tablecast/internal/jsonx"
)

// ColumnType is how a column's values compare.
type ColumnType uint8

const (
	TypeText      ColumnType = iota // text, varchar, bpchar, name, "char", uuid: bytewise
	TypeInteger                     // int2, int4, int8, oid, xid, cid, xid8: exactly
	TypeFloat                       // float4, float8: as float64
	TypeDecimal                     // numeric, money: exact decimal compare
	TypeBool                        // bool
	TypeTimestamp                   // timestamptz, timestamp: instants
	TypeDate                        // date: calendar days
	TypeJSON                        // json, jsonb: eq, neq and is only, on compact JSON text
	TypeOther                       // every other type: its text form, compared as text
)

// moneyOID is money's type OID; pgtype has no constant for it.
const moneyOID = 790

// TypeOfOID returns how values of the built-in type oid compare. Pass the
// column's value OID (schema.ShapeColumn.ValueOID when set, else TypeOID),
// so that a domain compares as its base type. Types it does not know,
// enums and extension types among them, are TypeOther.
func TypeOfOID(oid uint32) ColumnType {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID,
		pgtype.XIDOID, pgtype.CIDOID, pgtype.XID8OID, pgtype.OID8OID:
		return TypeInteger
	case pgtype.Float4OID, pgtype.Float8OID:
		return TypeFloat
	case pgtype.NumericOID, moneyOID:
		return TypeDecimal
	case pgtype.BoolOID:
		return TypeBool
	case pgtype.TimestampOID, pgtype.TimestamptzOID:
		return TypeTimestamp
	case pgtype.DateOID:
		return TypeDate
	case pgtype.JSONOID, pgtype.JSONBOID:
		return TypeJSON
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID,
		pgtype.QCharOID, pgtype.UUIDOID:
		return TypeText
	}
	return TypeOther
}

// String names the type in filter error messages.
func (t ColumnType) String() string {
	switch t {
	case TypeText:
		return "text"
	case TypeInteger:
		return "integer"
	case TypeFloat:
		return "float"
	case TypeDecimal:
		return "numeric"
	case TypeBool:
		return "boolean"
	case TypeTimestamp:
		return "timestamp"
	case TypeDate:
		return "date"
	case TypeJSON:
		return "json"
	case TypeOther:
		return "other"
	}
	return "ColumnType(" + strconv.Itoa(int(t)) + ")"
}

// Bounds on a where object, so that one subscription cannot make every
// event cost much: matching is linear in conditions and logarithmic in
// list length, and a filter's memory is about 100 bytes per value.
const (
	// MaxOrDepth is how deeply "or" groups may nest. Any boolean
	// expression can be written in two levels; eight leaves room for
	// filters composed by programs (a token's pinned filter around the
	// client's) without allowing a stack-eating nest.
	MaxOrDepth = 8
	// MaxConditions bounds operators plus or-groups in one where.
	MaxConditions = 256
	// MaxListValues bounds one in or nin list.
	MaxListValues = 1000
	// MaxValues bounds the in/nin values of one where, all lists together.
	MaxValues = 4096
)

// maxDecimalExp bounds the exponent of a numeric literal or value (1e…),
// well past numeric's own range (10^131072), so that digit positions stay
// far from int64 overflow.
const maxDecimalExp = 1 << 30

// FilterError is a where object that does not compile. Message names the
// column and says what is wrong; the gateway sends it to the client with
// the code "invalid_filter".
type FilterError struct {
	Message string
}

func (e *FilterError) Error() string { return e.Message }

func filterErrorf(format string, args ...any) *FilterError {
	return &FilterError{Message: fmt.Sprintf(format, args...)}
}

// EvalError is a row value a filter cannot evaluate: the column is absent
// from the row (dropped since the filter was compiled, or an unchanged
// TOASTed value that the event does not carry), or its JSON is not of the
// column's type. The gateway reports it to the one subscription whose
// filter failed.
type EvalError struct {
	Column  string
	Missing bool   // the column is absent from the row
	Value   string // the raw JSON value, cut to 64 bytes; empty if Missing
	Type    ColumnType
}

func (e *EvalError) Error() string {
	if e.Missing {
		return fmt.Sprintf("column %q is not in the row (dropped, or an unchanged TOASTed value)", e.Column)
	}
	return fmt.Sprintf("value %s in column %q is not %s (%s)", e.Value, e.Column, typeNoun(e.Type), e.Type)
}

// typeNoun says what a value of type t must be, for messages.
func typeNoun(t ColumnType) string {
	switch t {
	case TypeInteger, TypeFloat, TypeDecimal:
		return "a number"
	case TypeBool:
		return "a boolean"
	case TypeTimestamp:
		return "a timestamp"
	case TypeDate:
		return "a date"
	case TypeJSON:
		return "JSON"
	}
	return "a string"
}

// shorten returns raw JSON for a message, cut to 64 bytes.
func shorten(raw []byte) string {
	const max = 64
	if len(raw) > max {
		return string(raw[:max]) + "…"
	}
	return string(raw)
}

// op is a compiled operator.
type op uint8

const (
	opEq op = iota
	opNeq
	opLt
	opLte
	opGt
	opGte
	opIn
	opNin
	opIsNull
	opNotNull
	opIsTrue
	opIsFalse
)

var opNames = map[string]op{
	"eq": opEq, "neq": opNeq, "lt": opLt, "lte": opLte, "gt": opGt, "gte": opGte,
	"in": opIn, "nin": opNin,
}

// Filter is a compiled where. It is immutable: any number of goroutines may
// call Match at once. A nil *Filter matches every row.
type Filter struct {
	root    group
	columns []string // sorted, distinct
}

// group is conditions ANDed together.
type group struct {
	conds []cond
	ors   [][]group // each an OR of groups
}

// cond is one operator on one column.
type cond struct {
	column  string
	typ     ColumnType
	op      op
	needDec bool     // integer column with a literal int64 cannot hold: compare as decimals
	lit     scalar   // eq … gte
	list    []scalar // in, nin: sorted by compareScalar, for binary search
}

// scalar is a typed value: a literal parsed at compile time, or a row value
// parsed at match time, when its slices point into the row (or a stack
// buffer) and nothing is allocated.
type scalar struct {
	i     int64 // integer, when intOK
	intOK bool
	dec   decimal // integer (when needed) and numeric
	f     float64
	b     bool
	t     instant // timestamp, date
	s     []byte  // text and other: decoded text if plain, else a raw JSON string body; json: compact JSON
	plain bool
}

// CompileWhere compiles a where object (DESIGN.md, the `where` of a
// subscribe message) against a table's columns, name → type. table names
// the table in messages ("public.orders"). A nil, empty or null where
// compiles to a filter that matches every row.
//
// Each member of the object is a column with an object of operators (eq
// neq lt lte gt gte in nin is), or "or" with an array of such objects at
// least one of which must match. Everything ANDs together. Literals are
// JSON numbers or strings for integer, float and numeric columns; strings
// for text, timestamp (RFC 3339, or PostgreSQL's "2006-01-02 15:04:05.999999-07",
// a date alone meaning midnight; no zone means UTC) and date columns; true
// or false (or those words as strings) for booleans; any JSON for json
// columns. in and nin take a non-empty array of literals; is takes "null",
// "not_null", "true" or "false".
//
// Every problem is returned as a *FilterError.
func CompileWhere(where json.RawMessage, table string, columns map[string]ColumnType) (*Filter, error) {
	w := where[jsonx.SkipSpace(where, 0):]
	for len(w) > 0 && (w[len(w)-1] == ' ' || w[len(w)-1] == '\t' || w[len(w)-1] == '\n' || w[len(w)-1] == '\r') {
		w = w[:len(w)-1]
	}
	if len(w) == 0 || string(w) == "null" {
		return &Filter{}, nil
	}
	if !json.Valid(w) {
		return nil, filterErrorf("where is not valid JSON")
	}
	if w[0] != '{' {
		return nil, filterErrorf("where must be a JSON object of column conditions")
	}
	c := compiler{table: table, columns: columns, used: map[string]bool{}}
	root, err := c.group(w, 0)
	if err != nil {
		return nil, err
	}
	f := &Filter{root: root}
	for col := range c.used {
		f.columns = append(f.columns, col)
	}
	slices.Sort(f.columns)
	return f, nil
}

// Columns lists the columns the filter reads, sorted, so that the gateway
// can check them against a changed table shape.
func (f *Filter) Columns() []string {
	if f == nil {
		return nil
	}
	return slices.Clone(f.columns)
}

type compiler struct {
	table   string
	columns map[string]ColumnType
	used    map[string]bool
	conds   int // operators and or-groups so far
	values  int // in/nin values so far
}

func (c *compiler) count() error {
	c.conds++
	if c.conds > MaxConditions {
		return filterErrorf("where has more than %d conditions", MaxConditions)
	}
	return nil
}

// group compiles an object of conditions (already known to be valid JSON).
func (c *compiler) group(obj []byte, depth int) (group, error) {
	var r Row
	if err := r.Reset(obj); err != nil {
		return group{}, filterErrorf("where must be a JSON object of column conditions")
	}
	var g group
	for _, m := range r.members {
		name := jsonx.DecodeString(m.name)
		// "or" with an array is a group even if the table has a column
		// called or: a column's condition is always an object.
		if name == "or" && m.value[0] == '[' {
			or, err := c.or(m.value, depth+1)
			if err != nil {
				return group{}, err
			}
			g.ors = append(g.ors, or)
			continue
		}
		typ, ok := c.columns[name]
		if !ok {
			if name == "or" {
				return group{}, filterErrorf("or needs a non-empty array of condition objects")
			}
			return group{}, filterErrorf("column %q does not exist in %s", name, c.table)
		}
		if m.value[0] != '{' {
			return group{}, filterErrorf(`condition on column %q must be an object of operators, like {"eq": …}`, name)
		}
		var ops Row
		if err := ops.Reset(m.value); err != nil {
			return group{}, filterErrorf("condition on column %q is not valid JSON", name)
		}
		if len(ops.members) == 0 {
			return group{}, filterErrorf("no operator for column %q", name)
		}
		c.used[name] = true
		for _, o := range ops.members {
			k, err := c.cond(name, typ, jsonx.DecodeString(o.name), o.value)
			if err != nil {
				return group{}, err
			}
			g.conds = append(g.conds, k)
		}
	}
	return g, nil
}

func (c *compiler) or(arr []byte, depth int) ([]group, error) {
	if depth > MaxOrDepth {
		return nil, filterErrorf("or groups are nested deeper than %d", MaxOrDepth)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(arr, &elems); err != nil || len(elems) == 0 {
		return nil, filterErrorf("or needs a non-empty array of condition objects")
	}
	groups := make([]group, 0, len(elems))
	for _, e := range elems {
		if err := c.count(); err != nil {
			return nil, err
		}
		if e[0] != '{' {
			return nil, filterErrorf("each group of or must be an object of column conditions, not %s", shorten(e))
		}
		g, err := c.group(e, depth)
		if err != nil {
			return nil, err
		}
		groups = append(groups, g)
	}
	return groups, nil
}

// cond compiles one operator and its literal.
func (c *compiler) cond(col string, typ ColumnType, opName string, raw []byte) (cond, error) {
	if err := c.count(); err != nil {
		return cond{}, err
	}
	k := cond{column: col, typ: typ}
	if opName == "is" {
		return k, c.is(&k, raw)
	}
	o, ok := opNames[opName]
	if !ok {
		return k, filterErrorf("unknown operator %q for column %q", opName, col)
	}
	k.op = o
	if typ == TypeJSON && o != opEq && o != opNeq {
		return k, filterErrorf("%s does not apply to json column %q", opName, col)
	}
	if o == opIn || o == opNin {
		return k, c.list(&k, opName, raw)
	}
	if raw[0] == 'n' {
		return k, filterErrorf(`null is not a value for %s on column %q; use {"is": "null"}`, opName, col)
	}
	if err := parseLiteral(col, typ, raw, &k.lit); err != nil {
		return k, err
	}
	k.needDec = typ == TypeInteger && !k.lit.intOK
	return k, nil
}

func (c *compiler) is(k *cond, raw []byte) error {
	what := string(raw)
	if raw[0] == '"' {
		what = jsonx.DecodeString(raw[1 : len(raw)-1])
	}
	switch what {
	case "null":
		k.op = opIsNull
	case "not_null":
		k.op = opNotNull
	case "true", "false":
		if k.typ != TypeBool {
			return filterErrorf("is %s does not apply to %s column %q", what, k.typ, k.column)
		}
		k.op = opIsTrue
		if what == "false" {
			k.op = opIsFalse
		}
	default:
		return filterErrorf(`is for column %q must be "null", "not_null", "true" or "false", not %s`, k.column, shorten(raw))
	}
	return nil
}

func (c *compiler) list(k *cond, opName string, raw []byte) error {
	var elems []json.RawMessage
	if raw[0] != '[' || json.Unmarshal(raw, &elems) != nil || len(elems) == 0 {
		return filterErrorf("%s for column %q needs a non-empty array of values", opName, k.column)
	}
	if len(elems) > MaxListValues {
		return filterErrorf("%s for column %q has %d values, more than %d", opName, k.column, len(elems), MaxListValues)
	}
	c.values += len(elems)
	if c.values > MaxValues {
		return filterErrorf("where has more than %d values in in and nin lists", MaxValues)
	}
	k.list = make([]scalar, len(elems))
	for i, e := range elems {
		if e[0] == 'n' {
			return filterErrorf(`null is not a value for %s on column %q; use {"is": "null"}`, opName, k.column)
		}
		if err := parseLiteral(k.column, k.typ, e, &k.list[i]); err != nil {
			return err
		}
		if k.typ == TypeInteger && !k.list[i].intOK {
			k.needDec = true
		}
	}
	slices.SortFunc(k.list, func(a, b scalar) int { return compareScalar(k.typ, &a, &b) })
	return nil
}

// parseLiteral parses a where literal for a column of type typ.
func parseLiteral(col string, typ ColumnType, raw []byte, lit *scalar) error {
	isString := raw[0] == '"'
	var text []byte // the string's value, or a copy of the literal's bytes
	if isString {
		text = []byte(jsonx.DecodeString(raw[1 : len(raw)-1]))
	} else {
		text = bytes.Clone(raw)
	}
	bad := func() error {
		return filterErrorf("value %s is not %s for column %q (%s)", shorten(raw), typeNoun(typ), col, typ)
	}
	switch typ {
	case TypeInteger, TypeFloat, TypeDecimal:
		if !isString && raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
			return bad()
		}
		var ok bool
		if lit.dec, ok = parseDecimal(text); !ok {
			if end, ok := jsonx.ScanNumber(text, 0); ok && end == len(text) {
				return filterErrorf("value %s is out of range for column %q (%s)", shorten(raw), col, typ)
			}
			return bad()
		}
		switch typ {
		case TypeInteger:
			lit.i, lit.intOK = parseInt64(text)
		case TypeFloat:
			f, ok := floatOfDecimal(text, &lit.dec)
			if !ok {
				return filterErrorf("value %s is out of range for column %q (%s)", shorten(raw), col, typ)
			}
			lit.f = f
		}
	case TypeBool:
		switch string(text) {
		case "true":
			lit.b = true
		case "false":
		default:
			return bad()
		}
	case TypeTimestamp, TypeDate:
		if !isString {
			return bad()
		}
		t, ok := parseInstant(text, typ == TypeDate)
		if !ok {
			return bad()
		}
		lit.t = t
	case TypeJSON:
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return bad()
		}
		lit.s = buf.Bytes()
	default: // TypeText, TypeOther
		if !isString {
			return bad()
		}
		lit.s, lit.plain = text, true
	}
	return nil
}

// floatOfDecimal converts a float literal already checked by parseDecimal.
func floatOfDecimal(text []byte, d *decimal) (float64, bool) {
	switch d.rank {
	case decNaN:
		return math.NaN(), true
	case decPosInf:
		return math.Inf(1), true
	case decNegInf:
		return math.Inf(-1), true
	}
	f, err := strconv.ParseFloat(string(text), 64)
	return f, err == nil
}

// Match evaluates the filter on a row. It returns an *EvalError when the
// outcome depends on a value it cannot evaluate (see EvalError).
func (f *Filter) Match(row *Row) (bool, error) {
	if f == nil {
		return true, nil
	}
	return f.root.match(row)
}

func (g *group) match(row *Row) (bool, error) {
	var undecided error
	for i := range g.conds {
		ok, err := g.conds[i].match(row)
		if err != nil {
			if undecided == nil {
				undecided = err
			}
			continue
		}
		if !ok {
			return false, nil
		}
	}
	for _, or := range g.ors {
		ok, err := matchAny(or, row)
		if err != nil {
			if undecided == nil {
				undecided = err
			}
			continue
		}
		if !ok {
			return false, nil
		}
	}
	if undecided != nil {
		return false, undecided
	}
	return true, nil
}

func matchAny(groups []group, row *Row) (bool, error) {
	var undecided error
	for i := range groups {
		ok, err := groups[i].match(row)
		if err != nil {
			if undecided == nil {
				undecided = err
			}
			continue
		}
		if ok {
			return true, nil
		}
	}
	return false, undecided
}

// moneyDigits bounds the digits of a money value copied without its group
// separators: money is an int64 of cents, at most 19 digits.
const moneyDigits = 24

func (k *cond) match(row *Row) (bool, error) {
	raw, ok := row.Get(k.column)
	if !ok {
		return false, &EvalError{Column: k.column, Missing: true}
	}
	if raw[0] == 'n' { // SQL NULL
		return k.op == opIsNull, nil
	}
	switch k.op {
	case opIsNull:
		return false, nil
	case opNotNull:
		return true, nil
	case opIsTrue, opIsFalse:
		switch string(raw) {
		case "true":
			return k.op == opIsTrue, nil
		case "false":
			return k.op == opIsFalse, nil
		}
		return false, k.evalError(raw)
	}
	if k.typ == TypeJSON {
		return jsonx.EqualCompact(raw, k.lit.s) == (k.op == opEq), nil
	}
	var scratch [moneyDigits]byte
	v, ok := k.parseValue(raw, &scratch)
	if !ok {
		return false, k.evalError(raw)
	}
	switch k.op {
	case opIn, opNin:
		return k.search(&v) == (k.op == opIn), nil
	}
	c := compareScalar(k.typ, &v, &k.lit)
	switch k.op {
	case opEq:
		return c == 0, nil
	case opNeq:
		return c != 0, nil
	case opLt:
		return c < 0, nil
	case opLte:
		return c <= 0, nil
	case opGt:
		return c > 0, nil
	default: // opGte
		return c >= 0, nil
	}
}

func (k *cond) evalError(raw []byte) error {
	return &EvalError{Column: k.column, Value: shorten(raw), Type: k.typ}
}

// search reports whether v equals a value of the sorted list.
func (k *cond) search(v *scalar) bool {
	lo, hi := 0, len(k.list)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch c := compareScalar(k.typ, v, &k.list[m]); {
		case c == 0:
			return true
		case c > 0:
			lo = m + 1
		default:
			hi = m
		}
	}
	return false
}

// parseValue reads a row's non-null raw JSON value as the column's type,
// allocating nothing; digits of a money value may be copied into scratch.
// (It returns the scalar rather than filling one through a pointer so that
// escape analysis can keep scratch on the caller's stack.)
func (k *cond) parseValue(raw []byte, scratch *[moneyDigits]byte) (v scalar, ok bool) {
	isString := raw[0] == '"'
	var body []byte
	if isString {
		body = raw[1 : len(raw)-1]
	}
	switch k.typ {
	case TypeInteger:
		if isString {
			return v, false
		}
		v.i, v.intOK = parseInt64(raw)
		if !v.intOK || k.needDec {
			v.dec, ok = parseDecimal(raw)
			return v, ok
		}
		return v, true
	case TypeFloat:
		if isString {
			switch {
			case equalFold(body, "NaN"):
				v.f = math.NaN()
			case equalFold(body, "Infinity"):
				v.f = math.Inf(1)
			case equalFold(body, "-Infinity"):
				v.f = math.Inf(-1)
			default:
				return v, false
			}
			return v, true
		}
		if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
			return v, false
		}
		// A JSON number is valid input; a range error still yields the
		// nearest float (±Inf, 0), which is the best reading of it.
		v.f, _ = strconv.ParseFloat(string(raw), 64)
		return v, true
	case TypeDecimal:
		if !isString {
			if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
				return v, false
			}
			v.dec, ok = parseDecimal(raw)
			return v, ok
		}
		if v.dec, ok = parseDecimal(body); !ok {
			v.dec, ok = parseMoney(body, scratch)
		}
		return v, ok
	case TypeBool:
		switch string(raw) {
		case "true":
			v.b = true
			return v, true
		case "false":
			return v, true
		}
		return v, false
	case TypeTimestamp, TypeDate:
		if !isString {
			return v, false
		}
		v.t, ok = parseInstant(body, k.typ == TypeDate)
		return v, ok
	case TypeText:
		if !isString {
			return v, false
		}
		v.s, v.plain = body, jsonx.IsPlain(body)
		return v, true
	default: // TypeOther: the text of a string, the JSON of anything else
		if isString {
			v.s, v.plain = body, jsonx.IsPlain(body)
		} else {
			v.s, v.plain = raw, true
		}
		return v, true
	}
}

// compareScalar compares a (a row value or a literal) with literal b.
func compareScalar(typ ColumnType, a, b *scalar) int {
	switch typ {
	case TypeInteger:
		if a.intOK && b.intOK {
			return cmp.Compare(a.i, b.i)
		}
		return compareDecimal(&a.dec, &b.dec)
	case TypeFloat:
		return compareFloat(a.f, b.f)
	case TypeDecimal:
		return compareDecimal(&a.dec, &b.dec)
	case TypeBool:
		switch {
		case a.b == b.b:
			return 0
		case b.b:
			return -1
		}
		return 1
	case TypeTimestamp, TypeDate:
		return compareInstant(a.t, b.t)
	case TypeJSON:
		if jsonx.EqualCompact(a.s, b.s) {
			return 0
		}
		return bytes.Compare(a.s, b.s)
	}
	if a.plain {
		return bytes.Compare(a.s, b.s)
	}
	return jsonx.CompareString(a.s, b.s)
}

// compareFloat orders floats as PostgreSQL does: NaN equals NaN and is
// above everything else, -0 equals 0.
func compareFloat(a, b float64) int {
	an, bn := a != a, b != b
	switch {
	case an || bn:
		return cmp.Compare(btoi(an), btoi(bn))
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if lowerASCII(b[i]) != lowerASCII(s[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// parseInt64 parses a JSON integer that fits an int64.
func parseInt64(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 19 || b[0] == '0' && len(b) > 1 {
		return 0, false
	}
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		u = u*10 + uint64(c-'0') // 19 digits cannot overflow uint64
	}
	switch {
	case neg && u <= 1<<63:
		return -int64(u-1) - 1, true
	case !neg && u < 1<<63:
		return int64(u), true
	}
	return 0, false
}

// Decimals.

// Ranks of decimal values, in PostgreSQL's order.
const (
	decNegInf int8 = iota - 1
	decFinite
	decPosInf
	decNaN
)

// decimal is an exact decimal number whose digits stay where they were
// parsed from: the significant digits are hi followed by lo (the integer
// and fraction parts of the text, so that "19.90" needs no copy), with no
// leading zero; top is the power of ten of the first. Zero has no digits.
type decimal struct {
	rank   int8
	neg    bool
	hi, lo []byte
	top    int64
}

func (d *decimal) digits() int { return len(d.hi) + len(d.lo) }

func (d *decimal) digit(k int) byte {
	if k < len(d.hi) {
		return d.hi[k]
	}
	if k -= len(d.hi); k < len(d.lo) {
		return d.lo[k]
	}
	return '0'
}

// finiteDecimal returns the decimal of a sign, integer digits, fraction
// digits and exponent.
func finiteDecimal(neg bool, ip, fp []byte, exp int64) decimal {
	for len(ip) > 0 && ip[0] == '0' {
		ip = ip[1:]
	}
	d := decimal{rank: decFinite}
	if len(ip) > 0 {
		d.hi, d.lo, d.top = ip, fp, int64(len(ip))-1+exp
	} else {
		z := 0
		for z < len(fp) && fp[z] == '0' {
			z++
		}
		d.hi, d.top = fp[z:], exp-int64(z)-1
	}
	d.neg = neg && d.digits() > 0
	return d
}

// parseDecimal parses a number as numeric_in reads one: an optional sign,
// digits with an optional decimal point (at least one digit), an optional
// exponent; or NaN, Infinity, -Infinity (any case, inf for short). The
// decimal's digits point into s.
func parseDecimal(s []byte) (decimal, bool) {
	i, neg := 0, false
	if len(s) > 0 && (s[0] == '-' || s[0] == '+') {
		neg, i = s[0] == '-', 1
	}
	rest := s[i:]
	switch {
	case equalFold(rest, "infinity") || equalFold(rest, "inf"):
		if neg {
			return decimal{rank: decNegInf}, true
		}
		return decimal{rank: decPosInf}, true
	case i == 0 && equalFold(rest, "nan"):
		return decimal{rank: decNaN}, true
	}
	j := skipDigits(s, i)
	ip := s[i:j]
	var fp []byte
	if j < len(s) && s[j] == '.' {
		k := skipDigits(s, j+1)
		fp = s[j+1 : k]
		j = k
	}
	if len(ip)+len(fp) == 0 {
		return decimal{}, false
	}
	var exp int64
	if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
		j++
		eneg := false
		if j < len(s) && (s[j] == '-' || s[j] == '+') {
			eneg = s[j] == '-'
			j++
		}
		k := skipDigits(s, j)
		if k == j {
			return decimal{}, false
		}
		for _, c := range s[j:k] {
			exp = exp*10 + int64(c-'0')
			if exp > maxDecimalExp {
				return decimal{}, false
			}
		}
		if eneg {
			exp = -exp
		}
		j = k
	}
	if j != len(s) {
		return decimal{}, false
	}
	return finiteDecimal(neg, ip, fp, exp), true
}

// parseMoney parses money's output in a locale with '.' as the decimal
// point ("$1,234.56", "-$1,234.56", "($1.00)", "1,234.56 EUR"): a currency
// symbol before or after the number, ',' between digit groups. The digits
// are copied into scratch without the separators.
func parseMoney(s []byte, scratch *[moneyDigits]byte) (decimal, bool) {
	neg := false
	i, j := 0, len(s)
	if j >= 2 && s[0] == '(' && s[j-1] == ')' {
		neg, i, j = true, 1, j-1
	}
	for ; i < j && (s[i] < '0' || s[i] > '9'); i++ {
		switch s[i] {
		case '-':
			if neg {
				return decimal{}, false
			}
			neg = true
		case '.', ',':
			return decimal{}, false
		}
	}
	for ; j > i && (s[j-1] < '0' || s[j-1] > '9'); j-- {
		switch s[j-1] {
		case '-':
			if neg {
				return decimal{}, false
			}
			neg = true
		case '.', ',':
			return decimal{}, false
		}
	}
	if i == j {
		return decimal{}, false
	}
	n, point := 0, -1
	for k := i; k < j; k++ {
		switch c := s[k]; {
		case c >= '0' && c <= '9':
			if n == len(scratch) {
				return decimal{}, false
			}
			scratch[n] = c
			n++
		case c == ',' && point < 0 && k+1 < j && s[k+1] >= '0' && s[k+1] <= '9':
		case c == '.' && point < 0:
			point = n
		default:
			return decimal{}, false
		}
	}
	if point < 0 {
		point = n
	}
	return finiteDecimal(neg, scratch[:point], scratch[point:n], 0), true
}

// compareDecimal orders decimals as PostgreSQL orders numeric:
// -Infinity, the finite values, Infinity, NaN (equal to itself).
func compareDecimal(a, b *decimal) int {
	if a.rank != b.rank {
		return cmp.Compare(a.rank, b.rank)
	}
	if a.rank != decFinite {
		return 0
	}
	as, bs := decimalSign(a), decimalSign(b)
	if as != bs || as == 0 {
		return cmp.Compare(as, bs)
	}
	m := 0
	if a.top != b.top {
		m = cmp.Compare(a.top, b.top)
	} else {
		for k, n := 0, max(a.digits(), b.digits()); k < n; k++ {
			if x, y := a.digit(k), b.digit(k); x != y {
				m = cmp.Compare(x, y)
				break
			}
		}
	}
	return m * as
}

func decimalSign(d *decimal) int {
	switch {
	case d.digits() == 0:
		return 0
	case d.neg:
		return -1
	}
	return 1
}

// Timestamps and dates.

// instant is a point in time, or a day for dates (at midnight UTC).
type instant struct {
	inf  int8  // -1 for -infinity, 1 for infinity, else 0
	sec  int64 // since 1970-01-01 00:00:00 UTC
	nsec int32
}

func compareInstant(a, b instant) int {
	if c := cmp.Compare(a.inf, b.inf); c != 0 || a.inf != 0 {
		return c
	}
	if c := cmp.Compare(a.sec, b.sec); c != 0 {
		return c
	}
	return cmp.Compare(a.nsec, b.nsec)
}

// parseInstant parses a timestamp, or with dateOnly a date, allocating
// nothing. It reads what the event envelope holds and what a client is
// likely to write:
//
//   - RFC 3339: 2026-11-22T07:00:00.123456Z, 2026-11-22T12:30:00+05:30;
//   - PostgreSQL's ISO output, which the envelope keeps for what RFC 3339
//     cannot say: 2026-11-22 07:00:00.123456+00, offsets with seconds
//     (+05:53:28), years past 9999, and a trailing " BC";
//   - no zone (timestamp without time zone): read as UTC;
//   - a date alone: midnight; infinity and -infinity.
//
// Fractional seconds may have any length; digits past nanoseconds are
// dropped.
func parseInstant(s []byte, dateOnly bool) (instant, bool) {
	switch {
	case equalFold(s, "infinity") || equalFold(s, "+infinity"):
		return instant{inf: 1}, true
	case equalFold(s, "-infinity"):
		return instant{inf: -1}, true
	}
	bc := false
	if n := len(s); n > 3 && s[n-3] == ' ' && s[n-2]|0x20 == 'b' && s[n-1]|0x20 == 'c' {
		bc, s = true, s[:n-3]
	}
	i := skipDigits(s, 0)
	if i < 4 || i > 7 || len(s) < i+6 || s[i] != '-' || s[i+3] != '-' {
		return instant{}, false
	}
	var year int64
	for _, c := range s[:i] {
		year = year*10 + int64(c-'0')
	}
	month, ok1 := civil.TwoDigits(s[i+1], s[i+2])
	day, ok2 := civil.TwoDigits(s[i+4], s[i+5])
	if !ok1 || !ok2 || year == 0 {
		return instant{}, false
	}
	if bc {
		year = 1 - year
	}
	if month < 1 || month > 12 || day < 1 || day > civil.DaysIn(month, year) {
		return instant{}, false
	}
	t := instant{sec: daysFromCivil(year, month, day) * 86400}
	s = s[i+6:]
	if len(s) == 0 {
		return t, true
	}
	if dateOnly || len(s) < 6 || s[0] != 'T' && s[0] != 't' && s[0] != ' ' || s[3] != ':' {
		return instant{}, false
	}
	hour, ok1 := civil.TwoDigits(s[1], s[2])
	minute, ok2 := civil.TwoDigits(s[4], s[5])
	if !ok1 || !ok2 || minute > 59 {
		return instant{}, false
	}
	s = s[6:]
	second := int64(0)
	if len(s) >= 3 && s[0] == ':' {
		ss, ok := civil.TwoDigits(s[1], s[2])
		if !ok || ss > 60 { // 60: PostgreSQL reads a leap second as the next minute
			return instant{}, false
		}
		second, s = int64(ss), s[3:]
		if len(s) > 0 && s[0] == '.' {
			j := skipDigits(s, 1)
			if j == 1 {
				return instant{}, false
			}
			scale := int32(100_000_000)
			for _, c := range s[1:min(j, 10)] {
				t.nsec += int32(c-'0') * scale
				scale /= 10
			}
			s = s[j:]
		}
	}
	if hour > 24 || hour == 24 && (minute != 0 || second != 0 || t.nsec != 0) {
		return instant{}, false
	}
	t.sec += int64(hour)*3600 + int64(minute)*60 + second
	if len(s) == 0 {
		return t, true
	}
	if len(s) == 1 && (s[0] == 'Z' || s[0] == 'z') {
		return t, true
	}
	if s[0] != '+' && s[0] != '-' {
		return instant{}, false
	}
	off, ok := parseOffset(s[1:])
	if !ok {
		return instant{}, false
	}
	if s[0] == '+' {
		off = -off
	}
	t.sec += off
	return t, true
}

// parseOffset reads a zone offset after its sign: HH, HHMM, HH:MM,
// HH:MM:SS, HHMMSS; it returns seconds.
func parseOffset(s []byte) (int64, bool) {
	var parts [3]int
	n := 0
	for len(s) > 0 && n < 3 {
		if n > 0 && s[0] == ':' {
			s = s[1:]
		}
		if len(s) < 2 {
			return 0, false
		}
		v, ok := civil.TwoDigits(s[0], s[1])
		if !ok {
			return 0, false
		}
		parts[n] = v
		n++
		s = s[2:]
	}
	if len(s) != 0 || n == 0 || parts[0] > 23 || parts[1] > 59 || parts[2] > 59 {
		return 0, false
	}
	return int64(parts[0])*3600 + int64(parts[1])*60 + int64(parts[2]), true
}

// daysFromCivil returns the days from 1970-01-01 to a date of the proleptic
// Gregorian calendar, year 0 being 1 BC (Howard Hinnant's algorithm).
func daysFromCivil(year int64, month, day int) int64 {
	if month <= 2 {
		year--
	}
	era := year / 400
	if year < 0 && year%400 != 0 {
		era--
	}
	yoe := year - era*400
	mp := int64((month + 9) % 12)
	doy := (153*mp+2)/5 + int64(day) - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}
