// Package tablecast is the Go client for backend services that read
// tablecast's events from NATS JetStream.
//
// # Events
//
// [ParseEvent] decodes one message into an [Event], the envelope of
// docs/contract.md: id, op, database, schema and table, the commit's LSN,
// xid and time, and the rows key, data and old as [Row] values with typed
// accessors ([Row.Int64], [Row.Numeric], [Row.Time], [Row.Bytes], …), the
// columns PostgreSQL did not send (unchanged TOASTed values, [Event.IsUnchanged]),
// and the members for rows too large for NATS: a claim ([Event.Claim],
// resolved by [Resolver] from the JetStream object store) and truncated
// ([Event.Truncated]: the rows were dead-lettered; only the key is left).
// A Row's accessors tell a column that is absent ([ErrNoColumn]) from one
// that is SQL NULL ([ErrNull]).
//
// # Consuming
//
// [Consume] runs a durable pull consumer on the stream and calls a handler
// for each event, one at a time:
//
//   - the message is acknowledged only after the handler returns nil, so a
//     crash of the service loses nothing: JetStream delivers it again;
//   - a handler that returns an error has its event delivered again after
//     a backoff (1 s, 5 s, 30 s, then every 2 minutes unless configured),
//     as many times as it takes (or ConsumerConfig.MaxDeliver);
//   - while the handler runs, JetStream is told the message is in progress,
//     so a handler slower than the ack wait is not given a second copy;
//   - an event whose id was handled within the de-duplication window (a
//     redelivery whose acknowledgement was lost, a copy stored twice) is
//     acknowledged without calling the handler again;
//   - claims are resolved before the handler sees the event; when the
//     claimed object is gone (expired with the stream), the event is handed
//     over as received, Claim set and Data absent.
//
// Order: events reach the handler in stream order, except that an event
// whose handler failed comes back after its backoff, behind later ones.
// Services for which that matters set ConsumerConfig.MaxAckPending to 1:
// nothing later is delivered while one event waits for its retry.
//
// # Concurrency
//
// Consume runs the handler on its own goroutine, one event at a time, and
// returns when ctx ends or the consumer cannot go on. A Resolver is safe for
// concurrent use.
package tablecast
