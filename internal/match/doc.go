// Package match decides which events a managed endpoint gets: the event
// filters and rules linked to it (package endpoint defines and validates
// them) compiled into one Matcher, built on package query's decision. A
// webhook delivers what its Matcher passes; the WebSocket gateway uses the
// same compiled rules for rule subscriptions and the same Matcher for
// WebSocket endpoints, so that every sink says yes to the same events.
//
// # The decision
//
// An event passes an endpoint when it passes one of its filters or rules.
// A filter passes an event of a table its patterns match, of one of its
// operations, whose row its where matches (query.Selector.Decide, as a
// subscription's where). A rule is a filter on one table with conditions
// on the change itself (Change):
//
//   - new: a where on the new row (creates, updates, reads);
//   - old: a where on the old row (updates, deletes);
//   - changed: an update changes at least one of these columns: its value
//     in the old row and in the new row differ, compared as the reader
//     wrote them (the same JSON bytes: numeric 1.50 and 1.5 differ, as
//     the stored values do). A column absent from the new row is an
//     unchanged TOASTed value: not changed.
//
// A rule that reads the old row (old, or changed on a column outside the
// replica identity) needs PostgreSQL to send it: REPLICA IDENTITY FULL.
// The store refuses such a rule on a table without it. When the table's
// replica identity changes afterwards, each event is judged on what it
// carries: an update without the old row cannot tell, and the rule does not
// fire on it (a rule never fires on a guess). The Matcher reports such an
// event as unjudged (Decision.Unjudged), and logs once per table shape,
// with the ALTER TABLE that restores it, when it compiles the rule against
// a table whose replica identity is no longer FULL.
//
// The columns sent are those a passing filter or rule selects; when
// several pass, the union of their selects, and every column when one of
// them selects every column (TableMatch.Projection).
//
// # Tables and recompiling
//
// A Matcher holds the filters' and rules' conditions as written; it
// compiles them against a table (its column types, its replica identity)
// the first time an event of that table comes, and again whenever the
// catalog replaces the table (a shape change: the *catalog.Table is new).
// A filter or rule whose conditions do not compile against a table (a
// column dropped) is left out for that table, and said so in the log.
//
// # Subjects
//
// Subjects gives the subject filters of a consumer that reads every event
// an endpoint may get: one per table pattern (and operation, when a
// filter or rule takes fewer than all), merged so that no two overlap, as
// JetStream requires of a consumer's filters. They may take more than the
// Matcher passes, never less: beyond 256 they are widened (every
// operation, then every table of a schema, and so on) until they fit.
//
// # Registry
//
// Registry follows the endpoint store (endpoints, filters, rules) and
// keeps each endpoint compiled; listeners (Registry.Listen) are told the
// ids of the endpoints whose definition changed, coalesced, without ever
// holding up the store's watches.
//
// # Concurrency
//
// A Matcher and its TableMatches may be used by any number of goroutines
// at once; their caches take a lock of their own, alone. A Registry is
// safe for concurrent use; its lock is taken alone, and listeners are
// signalled without it.
package match
