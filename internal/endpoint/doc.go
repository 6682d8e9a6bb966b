// Package endpoint is tablecast's managed endpoints: webhooks and
// WebSocket endpoints an operator defines on the server, the named event
// filters and rules linked to them, their validation, and the store that
// keeps them in JetStream key-value buckets so that every tablecast
// process sees each change within milliseconds. The admin API serves them;
// delivery engines (webhook, rules) read them with the Watch methods.
//
// # Models
//
// An Endpoint has a server-assigned id (NewID: sortable by creation time),
// a unique name, a type (webhook or websocket), a state (active, paused,
// or disabled by the system with a reason), timestamps, the bucket
// revision it was read at, and the names of the filters and rules linked
// to it; a webhook has its URL, method, headers, Standard Webhooks secret,
// timeout, concurrency, batch size and bytes, retry policy, parallel_by_key
// and where it starts in the stream. A Filter is a name, table patterns (as in
// grants), operations, a where and a select. A Rule is a name, one table,
// operations, a where, changed columns, and wheres on the old and new
// rows; this package defines and validates rules, a delivery engine
// evaluates them (Rule's field docs say what each part means).
//
// # Validation
//
// DecodeEndpoint, DecodeFilter and DecodeRule read a client's JSON member
// by member, and the Validate methods (which the store runs on every
// write) check the values: every problem is reported at once, as a
// *ValidationError of FieldErrors whose Field is the member's path
// ("webhook.timeout", "filters[2]"). A filter's where and select are
// compiled against every streamed table its patterns match (Config.Tables,
// the catalog), naming each table they do not fit; a rule's against its
// table, and a rule that reads the old row of a table without REPLICA
// IDENTITY FULL is refused with the ALTER TABLE that would allow it.
// Nothing is written unless all is well.
//
// # Buckets and keys
//
// TABLECAST_ENDPOINTS holds each endpoint under "e.<id>" and a name index,
// "n.<name>" → id; TABLECAST_FILTERS and TABLECAST_RULES hold each filter
// and rule under its name (names escaped as stream.EscapeKey does: '.' is
// "=2E"). Values are the models' JSON. Every write is a compare-and-set on
// the key's revision: Update with an expected revision fails with
// ErrConflict when another write got in first; without one, the store
// reads again and retries.
//
// Endpoints are kept by id, not name, because a name may change and an id
// is what delivery state (a webhook's position) hangs on. Unique names
// then need the index: a creation first creates "n.<name>" (a
// compare-and-set that fails when the key exists: ErrNameTaken), then the
// endpoint; a rename creates the new index entry, updates the endpoint,
// and removes the old entry; a deletion removes the endpoint, then its
// entry. An entry counts only while the endpoint it points to has that
// name: one left by a change that failed half-way is taken over, once it
// is older than nameGrace (30 s, longer than any write may take), by the
// next endpoint that wants the name. Filters and rules are kept by name:
// their name is what endpoints link, and it never changes.
//
// # Links
//
// An endpoint's filters and rules are names in the endpoint's own value,
// so that one write changes an endpoint's links and a delivery engine
// reads them with the endpoint. Two rules hold across the buckets: a link
// to a filter (or rule) that does not exist is refused, and a filter still
// linked is not deleted (LinkedError, unless forced, which unlinks it
// first). Without transactions across buckets, the order of writes keeps
// them:
//
//   - linking: check that the filter exists, write the endpoint, then
//     write the filter again unchanged ("touch": its revision changes);
//     if the filter is gone by then, the link is taken back and refused;
//   - deleting a filter: read its revision R, read every endpoint from the
//     bucket, refuse if one links it, then delete the filter only if its
//     revision is still R (a compare-and-set), else start again.
//
// A link written before the deletion read that endpoint is seen by it. A
// link written after is touched after, so the filter's revision is no
// longer R when the deletion writes, and it looks again; or the deletion
// came first and the touch finds the filter gone. So no link is left
// pointing at nothing but for a crash between writing the endpoint and
// taking the link back; delivery engines treat a link to a filter that
// does not exist as matching nothing. (A filter's revision therefore also
// changes when an endpoint is linked to it.)
//
// # Views, listings and watches
//
// The store follows each bucket (a watch) into a view of its own, from
// which listings are answered: filtered by type, state, name prefix and
// linked filter or rule, ordered by created_at or name, either way, and
// paged by keyset cursors or offsets, with the total. A listing first
// waits until the view has applied every write the bucket held when it
// was called, so that it shows every change made before it, in any
// process. Reads of one item (GetEndpoint, GetFilter…) read the bucket.
// A cursor keeps its place by key, not count: see the comment on cursor
// in list.go for what it guarantees while items come and go.
//
// WatchEndpoints, WatchFilters and WatchRules send each current item,
// EventLoaded, then every change as it happens; a watch that fails, or
// whose connection to NATS was lost and came back, starts again with
// EventReset. (A deleted item's marker is kept for
// stream.ManagedMarkerTTL only: one that expired while the connection was
// down would never come as a delete.)
//
// # Concurrency
//
// A Store is safe for concurrent use, by any number of processes on the
// same buckets. Open starts one goroutine per bucket (the views), and each
// Watch one more, until its context ends; Close stops the views. Values
// returned are copies the caller may keep and change.
package endpoint
