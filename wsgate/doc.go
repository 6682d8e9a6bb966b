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
// CompileWhere compiles a subscription's `where` against the table's
// column types once; an event's row is indexed once with Row.Reset and
// shared by every subscription's Filter.Match, which compares values by their PostgreSQL type (numeric as
// exact decimals, timestamps as instants, SQL NULL semantics) and allocates
// nothing for the common types. A delete is matched on its "old" row, or
// its "key" when PostgreSQL sent no old row.
//
// Concurrency: a Filter is immutable once compiled; a Row is read-only
// between Resets. Both may be shared by any number of goroutines calling
// Match.
//
// # The server
//
// Gateway serves the protocol. It upgrades WebSocket requests itself
// (gobwas/ws, off net/http) and hands every other request to an
// http.Handler. An idle connection holds no goroutine and no buffer: it is
// registered in one epoll set (netpoll_linux.go), a goroutine reads only
// when input arrives, bounded by a read deadline, and a goroutine writes
// only while frames are queued (conn.go).
//
// Each table or topic in use is a feed (feed.go): one ordered JetStream
// consumer shared by every subscriber on the gateway. The feed indexes each
// event once, finds the subscriptions it may match through an index of
// their equality conditions (index.go) plus a list of the others, and
// encodes one frame per group of subscriptions with the same id and
// projection (NewProjection, project.go), queued as the same bytes on every
// connection of the group. A subscription is attached under the feed's
// lock, so the seq its subscribed frame carries is exactly where live
// delivery starts; a resume replays the history up to that point from a
// consumer of its own while live frames wait (resume.go), taking turns
// with the other resumes at a bounded rate (replays.go). A feed's consumer
// only queues what it receives (inbox.go), and the feed's goroutine handles
// it. Resumes and feeds tell events the stream discarded before they were
// sent from the other tables' events between theirs (retention.go), and end
// the subscriptions concerned with history_unavailable.
//
// Lock order: the gateway's feedMu, then a feed's mu, then replays.mu or a
// connection's mu; a feed's inbox lock and the catalog's locks are taken
// alone.
//
// Tables and their column types come from the schema registry, custom
// topics from a key-value bucket every gateway shares (catalog.go): the
// gateway never talks to PostgreSQL.
package wsgate
