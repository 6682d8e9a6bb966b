// Package admin is the admin API: HTTP and JSON on a listener of its own
// (TABLECAST_ADMIN_ADDR, loopback by default), for operators and their
// tools to manage what package internal/endpoint keeps: endpoints
// (webhooks, WebSocket endpoints), named event filters and rules, and the
// links between them. It stands beside wsgate as a sink of its own: it
// imports internal packages and stream, never wsgate.
//
// # The door
//
// Every request goes through, in order: the Host check (internal/hosts,
// 421 for a Host not served: DNS rebinding; without a Verifier,
// AllowedHosts "*" does not count), the cross-origin check (403
// for a change a browser sends from another site: Sec-Fetch-Site and
// Origin, as http.CrossOriginProtection reads them), the route (404, 405), the
// credential (Authorization: Bearer with a JWT or API key verified by
// the same auth.Verifier as the gateway's; 401) and its grants (the
// tablecast claim's "admin": ["read"] to read, ["write"] to change; 403),
// then the body (application/json, 415 otherwise; at most MaxBodyBytes,
// 413). The listener has the gateway's bounds: head size (431), head and
// body timeouts, idle timeout, and connections per client address (429).
// Without a Verifier every request is let in with every grant: the
// command refuses that off loopback unless told otherwise.
//
// # Routes
//
// Under /v1/: endpoints (create, get, replace with PUT, change with a
// JSON merge patch, delete one or many, pause, resume, list with
// selection, ordering and cursor or offset paging), filters and rules
// (the same, by name), and links (PUT and DELETE
// /v1/endpoints/{id}/filters/{name}, and the lists either way), and a
// webhook's dead letters (list, one with its event whole, replay). The
// answer to a webhook endpoint's creation tells when the stream has
// discarded messages from its start already (start_discarded, from
// Config.StreamState); it does not refuse it. A change
// may name the revision it expects (If-Match, or the revision member):
// 409 when it is stale. Errors are {"error": {"code", "message",
// "fields"}}. The whole API is described by the OpenAPI document served
// at /v1/openapi.json (openapi.json here), which the tests check every
// request and answer against.
//
// # Concurrency
//
// A Server is safe for concurrent use; net/http runs each request on a
// goroutine of its own, and the store serializes nothing but by
// compare-and-set in NATS.
package admin
