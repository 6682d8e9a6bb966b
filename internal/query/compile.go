package query

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/tablecast/tablecast/internal/jsonx"
)

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

// FilterError is a where that does not compile. Message names the column
// and says what is wrong, for the client (the gateway sends it with the
// code "invalid_filter").
type FilterError struct {
	Message string
}

func (e *FilterError) Error() string { return e.Message }

func filterErrorf(format string, args ...any) *FilterError {
	return &FilterError{Message: fmt.Sprintf(format, args...)}
}

// shorten returns raw JSON for a message, cut to 64 bytes.
func shorten(raw []byte) string {
	const max = 64
	if len(raw) > max {
		return string(raw[:max]) + "…"
	}
	return string(raw)
}

// CompileWhere compiles a JSON where object (the `where` of a subscribe
// message, DESIGN.md) against a table's columns: ParseWhere, then Compile.
func CompileWhere(where json.RawMessage, table string, columns map[string]ColumnType) (*Filter, error) {
	w, err := ParseWhere(where)
	if err != nil {
		return nil, err
	}
	return Compile(w, table, columns)
}

// Compile compiles a where against a table's columns, name → type, every
// literal parsed to its column's type once, so that Match only reads the
// event's raw values and compares. table names the table in messages
// ("public.orders"). A nil where compiles to a filter that matches every
// row.
//
// Each term is a condition on a column, with operators (eq neq lt lte gt
// gte in nin is), or an "or" group of wheres at least one of which must
// match. Everything ANDs together. Literals are JSON numbers or strings
// for integer, float and numeric columns; strings for text, timestamp (RFC
// 3339, or PostgreSQL's "2006-01-02 15:04:05.999999-07", a date alone
// meaning midnight; no zone means UTC) and date columns; true or false (or
// those words as strings) for booleans; any JSON for json columns. in and
// nin take a non-empty array of literals; is takes "null", "not_null",
// "true" or "false".
//
// Problems are checked in the order the where is written, and the first
// is returned, as a *FilterError.
func Compile(where *Where, table string, columns map[string]ColumnType) (*Filter, error) {
	c := compiler{table: table, columns: columns, used: map[string]bool{}}
	root, err := c.group(where, 0)
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

// Check checks a where without a table: its shape, operators, operands
// that no column could take (null outside is, an empty in list), and the
// bounds on conditions and nesting, as Compile would, taking every column
// to exist. It is for a where saved before the tables it will apply to are
// known; Compile against each table still decides. Its error is a
// *FilterError.
func Check(where *Where) error {
	c := compiler{table: "the table", anyColumn: true, used: map[string]bool{}}
	_, err := c.group(where, 0)
	return err
}

type compiler struct {
	table   string
	columns map[string]ColumnType
	// anyColumn (Check): every column exists, of a type that takes any
	// literal.
	anyColumn bool
	used      map[string]bool
	conds     int // operators and or-groups so far
	values    int // in/nin values so far
}

func (c *compiler) count() error {
	c.conds++
	if c.conds > MaxConditions {
		return filterErrorf("where has more than %d conditions", MaxConditions)
	}
	return nil
}

// group compiles a group of conditions at the nesting depth of "or"
// groups depth. A nil group has no condition.
func (c *compiler) group(w *Where, depth int) (group, error) {
	var g group
	if w == nil {
		return g, nil
	}
	for i := range w.Terms {
		t := &w.Terms[i]
		if t.Or != nil {
			or, err := c.or(t, depth+1)
			if err != nil {
				return group{}, err
			}
			g.ors = append(g.ors, or)
			continue
		}
		name := t.Column
		typ, ok := c.columns[name]
		if c.anyColumn && name != "or" {
			typ, ok = typeAny, true
		}
		if !ok {
			if name == "or" {
				return group{}, filterErrorf("or needs a non-empty array of condition objects")
			}
			return group{}, filterErrorf("column %q does not exist in %s", name, c.table)
		}
		if t.bad != nil {
			return group{}, filterErrorf(`condition on column %q must be an object of operators, like {"eq": …}`, name)
		}
		if len(t.Ops) == 0 {
			return group{}, filterErrorf("no operator for column %q", name)
		}
		c.used[name] = true
		for j, o := range t.Ops {
			// One operator twice on a column (`{"eq":1,"eq":2}`) would be
			// read by most JSON readers as its last, and here as both:
			// refused, as the URL form refuses it. A column given twice
			// ANDs its conditions, in both forms.
			if slices.ContainsFunc(t.Ops[:j], func(p Operator) bool { return p.Name == o.Name }) {
				return group{}, filterErrorf("column %q has two %q conditions", name, o.Name)
			}
			k, err := c.cond(name, typ, o.Name, o.Value)
			if err != nil {
				return group{}, err
			}
			g.conds = append(g.conds, k)
		}
	}
	return g, nil
}

// or compiles an "or" group at the nesting depth depth.
func (c *compiler) or(t *Term, depth int) ([]group, error) {
	if depth > MaxOrDepth {
		return nil, filterErrorf("or groups are nested deeper than %d", MaxOrDepth)
	}
	if len(t.Or) == 0 {
		return nil, filterErrorf("or needs a non-empty array of condition objects")
	}
	groups := make([]group, 0, len(t.Or))
	for _, e := range t.Or {
		if err := c.count(); err != nil {
			return nil, err
		}
		if e != nil && e.bad != nil {
			return nil, filterErrorf("each group of or must be an object of column conditions, not %s", shorten(e.bad))
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
	o, ok := operatorOf(opName)
	if !ok {
		return k, filterErrorf("unknown operator %q for column %q", opName, col)
	}
	if len(raw) == 0 || !jsonx.Valid(raw) {
		return k, filterErrorf("the value of %s for column %q is not JSON", opName, col)
	}
	if o == opIs {
		return k, c.is(&k, raw)
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
		if k.typ != TypeBool && k.typ != typeAny {
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
	elems := elements(raw)
	if len(elems) == 0 {
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
	if typ == typeAny {
		return nil // Check: the column's type is not known
	}
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
		canon, ok := canonicalJSON(nil, raw)
		if !ok {
			return bad()
		}
		lit.canon = canon
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
