package match

import (
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/query"
)

// Matcher is one endpoint's filters and rules, compiled table by table as
// events come (see the package doc).
type Matcher struct {
	filters []*endpoint.Filter
	rules   []*endpoint.Rule
	log     *slog.Logger

	mu     sync.Mutex
	tables map[string]*TableMatch // by qualified name; replaced with the table
}

// New makes the Matcher of filters and rules (an endpoint's linked ones
// that exist: a link to nothing matches nothing). It keeps them; the
// caller must not change them afterwards. A nil log logs nothing.
func New(filters []*endpoint.Filter, rules []*endpoint.Rule, log *slog.Logger) *Matcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Matcher{filters: filters, rules: rules, log: log, tables: map[string]*TableMatch{}}
}

// Empty reports whether the Matcher has no filter and no rule: it passes
// nothing.
func (m *Matcher) Empty() bool { return len(m.filters) == 0 && len(m.rules) == 0 }

// Filters and Rules return what the Matcher was made of; the caller must
// not change them.
func (m *Matcher) Filters() []*endpoint.Filter { return m.filters }
func (m *Matcher) Rules() []*endpoint.Rule     { return m.rules }

// Table returns the Matcher compiled against t, compiling it the first
// time t (this *catalog.Table: a shape change makes a new one) is seen.
func (m *Matcher) Table(t *catalog.Table) *TableMatch {
	m.mu.Lock()
	defer m.mu.Unlock()
	if tm := m.tables[t.Qualified]; tm != nil && tm.Table == t {
		return tm
	}
	tm := compileTable(m.filters, m.rules, t, m.log)
	m.tables[t.Qualified] = tm
	return tm
}

// Decide is Table(t).Decide(ev).
func (m *Matcher) Decide(t *catalog.Table, ev *query.Event) Decision {
	return m.Table(t).Decide(ev)
}

// TableMatch is a Matcher compiled against one table. It is immutable but
// for its cache of projections, which takes a lock of its own.
type TableMatch struct {
	Table *catalog.Table
	// Parts are the filters, then the rules, that apply to the table and
	// compiled against it.
	Parts []*Part

	mu    sync.Mutex
	projs map[string]*query.Projection // by the passing parts' indexes
}

func compileTable(filters []*endpoint.Filter, rules []*endpoint.Rule, t *catalog.Table, log *slog.Logger) *TableMatch {
	tm := &TableMatch{Table: t, projs: map[string]*query.Projection{}}
	for _, f := range filters {
		p, ok, err := CompileFilter(f, t)
		if err != nil {
			log.Warn("filter left out for a table its conditions do not fit", "table", t.Qualified, "err", err)
			continue
		}
		if ok {
			tm.Parts = append(tm.Parts, p)
		}
	}
	for _, r := range rules {
		p, ok, err := CompileRule(r, t)
		if err != nil {
			log.Warn("rule left out for a table its conditions do not fit", "table", t.Qualified, "err", err)
			continue
		}
		if !ok {
			continue
		}
		if msg := ReplicaIdentityProblem(p, t); msg != "" {
			warnOnce(t, p.Name, msg, log)
		}
		tm.Parts = append(tm.Parts, p)
	}
	return tm
}

// warned remembers the (table shape, rule) pairs whose replica identity
// problem was logged, so that each is logged once however many endpoints
// link the rule.
var warned sync.Map // warnKey → struct{}

type warnKey struct {
	t    *catalog.Table
	rule string
}

func warnOnce(t *catalog.Table, rule, msg string, log *slog.Logger) {
	if _, loaded := warned.LoadOrStore(warnKey{t, rule}, struct{}{}); !loaded {
		log.Warn(msg, "table", t.Qualified, "rule", rule)
	}
}

// Decision is what a Matcher says of an event.
type Decision struct {
	// Pass: the event passes a filter or rule.
	Pass bool
	// Unjudged: it passes none, and a rule could not tell, the event
	// lacking the old row (or a column of it) its conditions read.
	Unjudged bool
	// Projection is the columns to send (nil: every column), for a
	// passing event.
	Projection *query.Projection
}

// Decide says whether ev (an event of tm.Table, Reset) passes, and with
// which columns.
func (tm *TableMatch) Decide(ev *query.Event) Decision {
	var d Decision
	var passed []int
	all := false
	for i, p := range tm.Parts {
		ok, unjudged := p.Passes(ev)
		if unjudged {
			d.Unjudged = true
		}
		if !ok {
			continue
		}
		d.Pass = true
		if p.Select == nil {
			all = true
			break
		}
		passed = append(passed, i)
	}
	if !d.Pass {
		return d
	}
	d.Unjudged = false
	if !all {
		d.Projection = tm.projection(passed)
	}
	return d
}

// Passes reports whether ev passes the filter or rule; unjudged as
// Change.Fires.
func (p *Part) Passes(ev *query.Event) (ok, unjudged bool) {
	_, ok, err := query.Selector{Ops: p.Ops, Where: p.Where}.Decide(ev)
	if err != nil || !ok {
		return false, false
	}
	return p.Change.Fires(ev)
}

// projection returns the union of the selects of the parts passed.
func (tm *TableMatch) projection(passed []int) *query.Projection {
	var key strings.Builder
	for _, i := range passed {
		key.WriteString(strconv.Itoa(i))
		key.WriteByte(',')
	}
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if p, ok := tm.projs[key.String()]; ok {
		return p
	}
	var cols []string
	for _, i := range passed {
		cols = append(cols, tm.Parts[i].Select...)
	}
	slices.Sort(cols)
	p := query.NewProjection(slices.Compact(cols))
	tm.projs[key.String()] = p
	return p
}
