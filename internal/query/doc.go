// Package query is tablecast's query language over events: which rows of a
// table a subscriber gets (`where`), which of their columns (`select` and
// column grants), and the one decision every sink makes for every event:
// does this subscriber get it, and seen as what. The WebSocket gateway uses
// it for live delivery, resumes and URL subscriptions alike; webhooks and
// rules are meant to use it the same way. It depends on schema and jsonx
// only: no network, no NATS, no gateway.
//
// # Wheres
//
// A where has one representation, the tree Where, whatever it was written
// as: a JSON object (ParseWhere, the `where` of a subscribe message), the
// filter parameters of a URL (ParseURLWhere, status=eq.paid), or a row
// policy built from a token's claims. There is one table of operators (eq
// neq lt lte gt gte in nin is). Compile checks a Where against a table's
// column types (ColumnTypes of its shape) and turns it into a Filter, with
// every literal parsed once; Filter.Match then reads the raw values of a
// Row and compares them the way PostgreSQL does (filter.go), allocating
// nothing for the common types. Problems are *FilterError, reported in the
// order the where is written; a value a filter cannot evaluate at match
// time is an *EvalError.
//
// Filter.EqKey and AppendIndexKey let a sink index subscriptions by one
// equality of their filters (index.go), so that an event costs in
// proportion to the subscriptions it may match.
//
// # Projections
//
// NewProjection compiles a select list, NewGrantedProjection one under a
// column grant; Projection.AppendEvent rewrites an event's envelope keeping
// only those columns, byte for byte, and AppendView does so for a View of
// the event (an update without its old row, or an update's old row as a
// delete). Projections with equal Keys give equal bytes, so a sink encodes
// each distinct projection once per event.
//
// # The decision
//
// An Event is indexed once per event (Event.Reset: the envelope, the row it
// is matched on, an update's old row). A Selector holds what one subscriber
// takes (its operations, its where, its row policy); Selector.Decide says
// whether the subscriber gets the event, and as which View, with the row
// policy judging an update's old and new rows apart. ErrWithheld marks an
// event the policy cannot judge.
//
// # Concurrency
//
// Wheres, Filters, Projections and Selectors are immutable once built: any
// number of goroutines may use them at once. A Row or an Event is written
// by Reset and only read otherwise; it may be shared by readers between
// Resets, never while one runs.
//
// # Usage
//
//	types := query.ColumnTypes(shape)
//	where, err := query.ParseWhere(raw)     // or ParseURLWhere(params)
//	flt, err := query.Compile(where, "public.orders", types)
//	sel := query.Selector{Ops: schema.AllOps, Where: flt}
//
//	var ev query.Event // one per goroutine, reused
//	if ev.Reset(schema.OpBit(op), data) == nil {
//		if view, ok, err := sel.Decide(&ev); ok && err == nil {
//			row, _ := ev.Row()
//			out, err := proj.AppendView(buf, data, view, row)
//		}
//	}
package query
