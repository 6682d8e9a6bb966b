package match

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// Part is one filter or rule compiled against one table: what an event of
// that table must be to pass it, and the columns it selects.
type Part struct {
	// Name is the filter's or rule's name; Rule tells which.
	Name string
	Rule bool
	// Ops are the operations it takes.
	Ops schema.OpSet
	// Where is its where, compiled (nil: every row).
	Where *query.Filter
	// Change is a rule's conditions on the change (nil for a filter, and
	// for a rule with none).
	Change *Change
	// Select is the columns it sends, sorted; nil for every column.
	Select []string
	// Reads is every column its conditions read, sorted: a subscriber
	// that may not read one of them may not use the filter or rule.
	Reads []string
}

// Change is a rule's conditions on the change itself: a where on the
// new row, a where on the old row, the columns of which one must change.
// It is immutable.
type Change struct {
	New, Old *query.Filter
	// Changed: the update changes one of these.
	Changed []string
	// identity are the columns PostgreSQL sends of an old row whatever
	// the replica identity (the key): an update that carries no old row
	// did not change them.
	identity map[string]bool
	// needsOld: the conditions read the old row beyond the identity.
	needsOld bool
}

// ReadsOld reports whether the conditions read the old row beyond its
// identity columns: they then need REPLICA IDENTITY FULL.
func (c *Change) ReadsOld() bool { return c != nil && c.needsOld }

// Fires reports whether the change ev (already passed by the rule's
// operations and where) meets the conditions. unjudged is true when it
// cannot tell, because ev lacks the old row (or a column of it) that the
// conditions read: fired is then false.
func (c *Change) Fires(ev *query.Event) (fired, unjudged bool) {
	fired, unjudged, err := c.judge(ev, false)
	if err != nil {
		return false, isMissing(err)
	}
	return fired, unjudged
}

// Judge is Fires that also returns the *query.EvalError of a value of
// the new row its conditions cannot evaluate (a column dropped since the
// rule was compiled, an unchanged TOASTed value, a value not of the
// column's type), so that a subscriber can be told, as it is of its own
// where; fired is then false. An old row that lacks what the conditions
// read is no error: PostgreSQL sends only the identity's columns of it
// unless the replica identity is FULL, and the rule does not fire
// (unjudged), as the contract says. A changed column absent from the new
// row that the event does not list as unchanged (TOAST) is an error too.
func (c *Change) Judge(ev *query.Event) (fired, unjudged bool, err error) {
	return c.judge(ev, true)
}

func (c *Change) judge(ev *query.Event, strict bool) (fired, unjudged bool, err error) {
	if c == nil {
		return true, false, nil
	}
	op := ev.Op()
	row, hasRow := ev.Row()
	if c.New != nil {
		if !hasRow || op == schema.BitDelete {
			return false, false, nil
		}
		ok, err := c.New.Match(row)
		if err != nil {
			return false, false, err
		}
		if !ok {
			return false, false, nil
		}
	}
	old, hasOld := ev.Old()
	if op == schema.BitDelete {
		old, hasOld = row, hasRow // old if PostgreSQL sent it, else the key
	}
	if c.Old != nil {
		if !hasOld {
			return false, true, nil
		}
		ok, err := c.Old.Match(old)
		if err != nil {
			return false, isMissing(err), nil
		}
		if !ok {
			return false, false, nil
		}
	}
	if len(c.Changed) > 0 {
		if op != schema.BitUpdate {
			return false, false, nil
		}
		fired, unjudged, lost := c.changed(row, hasRow, old, hasOld, ev)
		if strict && !fired && lost != "" {
			return false, false, &query.EvalError{Column: lost, Missing: true}
		}
		return fired, unjudged, nil
	}
	return true, false, nil
}

// changed reports whether one of c.Changed differs between the old and
// the new row of an update; lost is the first of them the new row lacks
// that ev does not list as unchanged (a column the table lost).
func (c *Change) changed(row *query.Row, hasRow bool, old *query.Row, hasOld bool, ev *query.Event) (fired, unjudged bool, lost string) {
	if !hasRow {
		return false, false, ""
	}
	for _, col := range c.Changed {
		nv, ok := row.Get(col)
		if !ok {
			// An unchanged TOASTed value, which did not change, or a
			// column the table lost.
			if lost == "" && !listsUnchanged(ev, col) {
				lost = col
			}
			continue
		}
		if !hasOld {
			if c.identity[col] {
				continue // PostgreSQL sends the old row when the key changes
			}
			unjudged = true
			continue
		}
		ov, ok := old.Get(col)
		if !ok {
			if !c.identity[col] {
				unjudged = true
			}
			continue
		}
		if !bytes.Equal(ov, nv) {
			return true, false, ""
		}
	}
	return false, unjudged, lost
}

// listsUnchanged reports whether ev's "unchanged" names col.
func listsUnchanged(ev *query.Event, col string) bool {
	raw, ok := ev.Member("unchanged")
	if !ok {
		return false
	}
	var cols []string
	if json.Unmarshal(raw, &cols) != nil {
		return false
	}
	return slices.Contains(cols, col)
}

func isMissing(err error) bool {
	ee, ok := err.(*query.EvalError)
	return ok && ee.Missing
}

// CompileFilter compiles a filter against table t. ok is false when the
// filter's patterns do not match t; err says why its where or select does
// not fit t's columns.
func CompileFilter(f *endpoint.Filter, t *catalog.Table) (p *Part, ok bool, err error) {
	if !filterMatches(f, t) {
		return nil, false, nil
	}
	p = &Part{Name: f.Name, Ops: opsOf(f.Operations)}
	if p.Where, err = compileWhere(f.Where, t); err != nil {
		return nil, true, fmt.Errorf("filter %q on %s: where: %w", f.Name, t.Qualified, err)
	}
	if err := checkColumns(f.Select, t); err != nil {
		return nil, true, fmt.Errorf("filter %q on %s: select: %w", f.Name, t.Qualified, err)
	}
	p.Select = sortedOrNil(f.Select)
	p.Reads = sortedOrNil(p.Where.Columns())
	return p, true, nil
}

// CompileRule compiles a rule against table t. ok is false when the rule
// is not on t; err says why its conditions do not fit t's columns.
func CompileRule(r *endpoint.Rule, t *catalog.Table) (p *Part, ok bool, err error) {
	if !ruleMatches(r, t) {
		return nil, false, nil
	}
	fail := func(what string, err error) (*Part, bool, error) {
		return nil, true, fmt.Errorf("rule %q on %s: %s: %w", r.Name, t.Qualified, what, err)
	}
	p = &Part{Name: r.Name, Rule: true, Ops: opsOf(r.Operations)}
	if p.Where, err = compileWhere(r.Where, t); err != nil {
		return fail("where", err)
	}
	c := &Change{Changed: slices.Clone(r.Changed), identity: map[string]bool{}}
	if c.New, err = compileWhere(r.New, t); err != nil {
		return fail("new", err)
	}
	if c.Old, err = compileWhere(r.Old, t); err != nil {
		return fail("old", err)
	}
	if err := checkColumns(r.Changed, t); err != nil {
		return fail("changed", err)
	}
	if err := checkColumns(r.Select, t); err != nil {
		return fail("select", err)
	}
	for _, col := range t.Shape.Columns {
		if col.Key || col.Identity {
			c.identity[col.Name] = true
		}
	}
	c.needsOld = r.Old != nil
	for _, col := range c.Changed {
		if !c.identity[col] {
			c.needsOld = true
		}
	}
	if c.New != nil || c.Old != nil || len(c.Changed) > 0 {
		p.Change = c
	}
	p.Select = sortedOrNil(r.Select)
	reads := append(p.Where.Columns(), c.New.Columns()...)
	reads = append(reads, c.Old.Columns()...)
	reads = append(reads, c.Changed...)
	p.Reads = sortedOrNil(reads)
	return p, true, nil
}

// ReplicaIdentityProblem says, for a rule compiled on t, why PostgreSQL
// will not send what it reads and what to run about it; "" when it will.
func ReplicaIdentityProblem(p *Part, t *catalog.Table) string {
	if p == nil || !p.Change.ReadsOld() || t.Shape.ReplicaIdentity == "full" || t.Shape.OldRows {
		return ""
	}
	alter := "ALTER TABLE " + pgx.Identifier{t.Shape.Schema, t.Shape.Table}.Sanitize() + " REPLICA IDENTITY FULL"
	return fmt.Sprintf("rule %q reads the old row of %s, which has REPLICA IDENTITY %s now: its updates carry no old row and the rule does not fire on them; run %s (in database %s)",
		p.Name, t.Qualified, strings.ToUpper(t.Shape.ReplicaIdentity), alter, schema.QuoteName(t.DB))
}

func compileWhere(raw []byte, t *catalog.Table) (*query.Filter, error) {
	if raw == nil || string(raw) == "null" {
		return nil, nil
	}
	f, err := query.CompileWhere(raw, t.Qualified, t.Types)
	if err != nil {
		return nil, err
	}
	if f.MatchesAll() {
		return nil, nil
	}
	return f, nil
}

func checkColumns(cols []string, t *catalog.Table) error {
	for _, c := range cols {
		if !t.HasColumn(c) {
			return fmt.Errorf("column %s does not exist", schema.QuoteName(c))
		}
	}
	return nil
}

func sortedOrNil(cols []string) []string {
	if len(cols) == 0 {
		return nil
	}
	out := slices.Clone(cols)
	slices.Sort(out)
	return slices.Compact(out)
}

func opsOf(names []string) schema.OpSet {
	if len(names) == 0 {
		return schema.AllOps
	}
	var ops schema.OpSet
	for _, n := range names {
		if n == "*" {
			return schema.AllOps
		}
		ops |= schema.OpBit(n)
	}
	return ops
}

func filterMatches(f *endpoint.Filter, t *catalog.Table) bool {
	for _, s := range f.Tables {
		if p, err := parsePattern(s); err == nil && p.match(t.DB, t.Shape.Schema, t.Shape.Table) {
			return true
		}
	}
	return false
}

func ruleMatches(r *endpoint.Rule, t *catalog.Table) bool {
	p, err := parsePattern(r.Table)
	return err == nil && p.match(t.DB, t.Shape.Schema, t.Shape.Table)
}

func parsePattern(s string) (pattern, error) {
	p, err := auth.ParseTablePattern(s)
	return pattern{p}, err
}

type pattern struct{ auth.TablePattern }

func (p pattern) match(db, schemaName, table string) bool { return p.Match(db, schemaName, table) }
