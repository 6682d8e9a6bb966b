// Package wsgate is the WebSocket gateway: it lets browsers and apps
// follow table changes live, without talking to PostgreSQL.
//
// A client opens GET /ws (or /ws/tables/<schema.table>?… to subscribe by the
// URL alone), authenticates with a token, and subscribes per table, naming
// the operations it wants (create, update, delete, truncate, read), a
// `where` filter on the row and a `select` projection of its columns; it
// may also subscribe to custom topics and publish to them. The gateway
// reads the events from NATS JetStream (package stream), tells each client
// the stream sequence of every event so that a reconnecting client resumes
// where it left off without a gap, and disconnects clients too slow to keep
// up. The protocol, its error codes and close codes are the contract in
// DESIGN.md, "WebSocket protocol — contract (v1)".
//
// # Filters
//
// The part in place today is the row filter. CompileWhere compiles a
// subscription's `where` against the table's column types once; an event's
// row is indexed once with Row.Reset and shared by every subscription's
// Filter.Match, which compares values by their PostgreSQL type (numeric as
// exact decimals, timestamps as instants, SQL NULL semantics) and allocates
// nothing for the common types. A delete is matched on its "old" row, or
// its "key" when PostgreSQL sent no old row.
//
// Concurrency: a Filter is immutable once compiled; a Row is read-only
// between Resets. Both may be shared by any number of goroutines calling
// Match.
//
// The server parts — upgrade, connection loop, subscriptions, fan-out,
// authentication — arrive in later changes.
package wsgate
