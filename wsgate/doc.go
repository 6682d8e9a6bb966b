// Package wsgate is the WebSocket gateway: it lets browsers and apps
// follow table changes live, without talking to PostgreSQL.
//
// A client opens GET /ws (or /ws/tables/<[db.]schema.table>?… to subscribe by
// the URL alone), authenticates with a token, and subscribes per table, naming
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
// What a subscription gets of its table is decided by package query: its
// where (a JSON object, or a URL's filter parameters) is compiled against
// the table's column types once; each event is indexed once (query.Event)
// and every subscription it may reach decides on it with query.Selector,
// live and on resume alike, then gets the frame of its projection.
//
// # The protocol
//
// Protocol v1 as data lives here too, apart from the server's I/O: client
// messages and server frames (protocol.go), error and close codes
// (codes.go), URL subscriptions (urlsub.go) and where a credential travels
// (credentials.go). None of it does I/O, and the server is its one user;
// it moves to a package of its own when a second (a Go client) comes.
//
// # The server
//
// Gateway serves the protocol. It reads the first request of every
// connection itself, every buffer bounded (upgrade.go), upgrades WebSocket
// requests off net/http, and hands every other request to an http.Handler
// through net/http, after checking its Host (hosts.go and internal/hosts: DNS rebinding). An idle connection holds no goroutine and no buffer: it is
// registered in one epoll set (netpoll_linux.go), a goroutine reads only
// when input arrives, bounded by a read deadline, and a goroutine writes
// only while frames are queued (conn.go).
//
// Each table or topic in use is a feed (feed.go): one ordered JetStream
// consumer shared by every subscriber on the gateway. The feed indexes each
// event once, finds the subscriptions it may match through an index of
// their equality conditions (query.Filter.EqKey) plus a list of the others,
// and encodes one frame per group of subscriptions with the same id and
// projection (query.Projection), queued as the same bytes on every
// connection of the group. A subscription is attached under the feed's
// lock, so the seq its subscribed frame carries is exactly where live
// delivery starts; a resume replays the history up to that point from a
// consumer of its own while live frames wait (resume.go), taking turns
// with the other resumes at a bounded rate (replays.go). A feed's consumer
// only queues what it receives (inbox.go), and the feed's goroutine handles
// it. Resumes and feeds tell events the stream discarded before they were
// sent from the other tables' events between theirs (retention.go), and end
// the subscriptions concerned with history_unavailable. Subscriptions with
// "batch": "transaction" have feeds of their own, which follow the
// database's transaction markers too and send each transaction's events in
// one frame, or in several when it is large (batch.go).
//
// Lock order: the gateway's feedMu, then a feed's mu, then replays.mu or a
// connection's mu; a feed's inbox lock and the catalog's locks are taken
// alone.
//
// A connection's identity can change while it is open: a refresh message
// (handle.go) or a reloaded API keys file (auth.Authenticator.WatchAPIKeys,
// then Gateway.recheckAPIKeys) re-applies
// grants and row policies to its open subscriptions. The connection's
// authMu serializes that with the handling of its messages, which all read
// the identity; the lock order is authMu, then the connection's subsMu and
// mu, then a feed's mu.
//
// A connection to /ws/endpoints/<name> follows its managed endpoint: one
// gateway goroutine (Gateway.followEndpoints) listens to the registry's
// changes and, for each connection indexed under a changed endpoint (the
// gateway's connMu, released before), takes the connection's authMu and
// swaps its subscriptions' filters and rules (an atomic pointer the feed
// reads per event), subscribes tables newly covered, ends those no longer
// covered, or closes the connection with 4410 (conn.endpointChanged).
//
// An event too large for one NATS message arrives as a claim to an object
// (package stream); the feed, and a resume, read the object before matching
// (claims.go), outside the feed's lock, and send the event as received when
// it cannot be read. A connection's send queue bounds a backlog, not one
// event: a frame larger than the limit still goes out (conn.enqueue).
//
// Tables and their column types come from the schema registry, custom
// topics from a key-value bucket every gateway shares (package catalog): the
// gateway never talks to PostgreSQL. A table is its database, schema and
// name: readers of several databases may share the stream, and a client
// names a table "db.schema.table", or "schema.table" when only one database
// it may read has it.
//
// # What a subscription sees
//
// Grants (package auth) decide the tables, operations, rows and columns an
// identity may read. The row policy and the client's where are compiled
// per subscription; the column grant joins the client's select in its
// Projection, so that subscriptions of identities with different grants
// never share frames. A row policy judges an update's old and new rows
// apart (query.Selector.Decide): a subscriber may get the update whole,
// without its old row, or as a delete of the old row; each of these views
// is encoded once per frame group.
package wsgate
