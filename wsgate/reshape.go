package wsgate

import (
	"slices"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// A table's shape changes under open subscriptions (ALTER TABLE … ALTER
// COLUMN … TYPE). A subscription's where, a rule's conditions and a row
// policy are compiled against the column types the table had when they were
// made: a text column's "lt 5" compares strings, a numeric one's numbers. Left
// as it was, a where would judge the column's new values by its old type
// ("30" < "5"), and a row policy would pass rows it should withhold. So when
// the catalog learns a shape in which a column keeps its name and changes
// how its values compare (query.ColumnType):
//
//   - a subscription whose where or rule reads such a column ends, with
//     invalid_filter and unsubscribed: subscribing again (with from)
//     compiles it against the new type, or says why it does not fit;
//   - every subscription to the table takes its row policy compiled against
//     the new types (reauthorize), or ends with not_allowed when it no
//     longer compiles;
//   - a WebSocket endpoint's subscriptions take its filters and rules
//     compiled against the new shape (syncEndpoint), as webhooks do.
//
// It applies from the first event the feed hands over after the catalog
// has the new shape. The reader stores a shape in the schema registry before
// the first event that has it, but the gateway reads the registry and the
// stream through two consumers, so an event of the new shape can reach a
// feed just before the catalog has it.

// shapeChanged is the catalog's OnShape: the table prev is now t.
func (g *Gateway) shapeChanged(prev, t *catalog.Table) {
	retyped := anyRetyped(prev, t)
	for _, c := range g.openConns() {
		c.reshape(t, retyped)
	}
}

// anyRetyped reports whether a column of both prev and t has values that
// compare otherwise in t.
func anyRetyped(prev, t *catalog.Table) bool {
	for col, typ := range t.Types {
		if was, ok := prev.Types[col]; ok && was != typ {
			return true
		}
	}
	return false
}

// reshape applies the shape t of one of its tables to c's subscriptions
// (see above): a WebSocket endpoint's at every shape (as webhooks compile
// theirs for every shape, a column dropped leaving a filter out), the
// others' where and row policy when a column was retyped.
func (c *conn) reshape(t *catalog.Table, retyped bool) {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if c.isClosing() || c.id == nil {
		return
	}
	c.subsMu.Lock()
	subs := slices.Clone(c.subs)
	c.subsMu.Unlock()
	touched := false
	for _, s := range subs {
		if s.topic != "" || s.table == nil || s.table.Qualified != t.Qualified {
			continue
		}
		touched = true
		if s.tm.Load() != nil || !retyped {
			continue // an endpoint's (syncEndpoint, below), or nothing retyped
		}
		if col, was := s.retypedRead(t); col != "" {
			c.dropSub(s)
			c.sendError(s.id, CodeInvalidFilter, "subscription "+schema.QuoteName(s.id)+" ended: column "+schema.QuoteName(col)+" of "+t.Name+
				" changed type (its values compared as "+was.String()+", now as "+t.Types[col].String()+"); subscribe again to filter on it as it is now")
			c.send(AppendUnsubscribed(nil, s.id))
		}
	}
	if !touched {
		return
	}
	if retyped {
		c.reauthorize(c.id)
	}
	if c.endpointSubs == nil {
		return
	}
	if src, ok := c.g.cfg.Managed.(EndpointSource); ok {
		if e := src.Get(c.endpointID); e != nil && !c.isClosing() {
			if perr := c.syncEndpoint(e); perr != nil {
				c.sendError("", perr.Code, perr.Message)
			}
		}
	}
}

// retypedRead returns a column s's where or rule reads whose values
// compare otherwise in t than in the table s was compiled against, and
// how they compared then; "" for none.
func (s *sub) retypedRead(t *catalog.Table) (string, query.ColumnType) {
	cols := slices.Clone(s.reads)
	if s.filter != nil {
		cols = append(cols, s.filter.Columns()...)
	}
	slices.Sort(cols)
	for _, col := range slices.Compact(cols) {
		was, had := s.table.Types[col]
		now, has := t.Types[col]
		if had && has && was != now {
			return col, was
		}
	}
	return "", 0
}
