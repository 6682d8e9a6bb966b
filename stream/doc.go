// Package stream is tablecast's side of NATS: subject names, the embedded
// server, connecting, provisioning the one JetStream stream, and publishing
// row changes with acknowledgements and de-duplication ids.
//
// It imports no other package of this repository; cdc publishes through it
// and wsgate reads through it.
//
// # Subjects
//
// Row changes go to <prefix>.<database>.<schema>.<table>.<op> and custom
// topics to <prefix>.topic.<name> (the contract in DESIGN.md). Names are
// encoded into single tokens by [AppendToken]: the bytes NATS reserves ('.',
// '*', '>', white space, control bytes) and '%' become %XX, so
// "order.items" is "order%2Eitems"; [DecodeToken] reverses it. On the hot
// path, build subjects into a reused buffer with [AppendChangeSubject], which
// allocates nothing. [ValidatePrefix] checks the configured prefix once.
//
// # Server and connection
//
// [StartEmbedded] runs a NATS server with JetStream inside the process, for a
// single machine; a larger deployment points [Connect] at an existing
// cluster instead. Connect reconnects forever, logs every change of state,
// and keeps no reconnect buffer, so a publish during a disconnect fails at
// once rather than being sent, later, behind messages published after it.
// It gives up at once on refused credentials or an untrusted certificate;
// [ClientAuth] turns credentials and TLS settings into its options.
// [EnsureStream] creates or updates the stream that holds "<prefix>.>".
//
// The embedded server's store is EmbeddedConfig.MaxStore on every start,
// never a reading of the free disk. It watches its disk and JetStream
// ([Embedded.Status]): below MinFree free it is unhealthy, and when JetStream
// has stopped storing (a full disk: nats-server keeps the write error and
// drops every later message unanswered) it restarts the whole server on the
// same port and store once space is back, so that clients reconnect and no
// publisher's messages straddle the restart (see storageMonitor).
//
// Off loopback it needs credentials ([EmbeddedAuth]): full users, and
// read-only ones for backend services ([ReadOnlyPermissions]).
//
// # Publishing
//
// A [Publisher] sends messages asynchronously, in order, with at most
// maxInFlight awaiting their acknowledgement, and keeps a watermark:
// [Publisher.Acked] is the largest n such that messages 1..n are stored.
// The CDC reader confirms to PostgreSQL the LSN of the last event at or
// below the watermark, never beyond it:
//
//	p, err := stream.NewPublisher(nc, js, 512, log, stream.WithStream(cfg.Name))
//	...
//	subject := subjects[key] // stream.ChangeSubject(...), built once per table and op
//	n, err := p.Publish(ctx, subject, ev.ID, payload) // remember (n, commit LSN)
//	...
//	case <-p.Progress(): confirm the LSN of the last transaction whose events are all <= p.Acked()
//	case <-p.Failed():   p.Close(); stream.WaitConnected(ctx, nc);
//	                     restart replication from the confirmed LSN with a new Publisher
//
// Every message carries Nats-Msg-Id, so whatever is published again soon
// after a failure is dropped by JetStream's duplicate window. Beyond it the
// reader tells itself: [Barrier] lets what a failed publisher left in flight
// be stored, [Publisher.Watermark] gives a stream sequence every later
// message follows, [WithHeader] marks every message with the reader's
// [OriginHeader], and [ScanLastWithHeader] finds, reading headers only, the
// last message of that origin after a sequence.
//
// The first failure is final for that Publisher: a negative ack, an ack from
// another stream, an ack timeout, the connection dropping with messages in
// flight, or a Publish while the connection is down (ErrNotConnected). It
// never skips a message.
//
// Order: messages are sent on one connection in the order of Publish, and
// JetStream stores them in that order. Should one message be refused while
// later ones are already on the wire, those later ones may be stored, and the
// refused one lands after them when it is published again; the watermark is
// never wrong, but that table's order in the stream is. This needs a negative
// ack of one message followed by success of the next (a message over the
// stream's size limit, a stream at a limit with DiscardNew), not a crash or a
// dropped connection. With batches (WithBatches) it cannot happen inside a
// batch: JetStream stores none of a batch's messages after one it refused;
// only a message sent alone (the first after a Flush) can be overtaken so.
//
// # Batches
//
// [WithBatches] sends messages in JetStream's fast batches, which the stream
// acknowledges every few hundred messages instead of every message; the
// batches end on a control subject the stream captures and never stores
// ([ControlSubject]), and [Publisher.Flush] ends the open one. The
// watermark moves over a batch, or a message sent alone, only once JetStream
// has answered for it, oldest first: a message JetStream fails to write (a
// full disk) gets no answer, and news of a later batch says nothing of it.
// [Barrier] passes through the same subject: its refusal comes once
// JetStream has dealt with everything the connection sent before it.
//
// # Claims and dead letters
//
// A message larger than the server's maximum payload ([Publisher.Fits] tells,
// headers included) cannot be published. The CDC reader stores such an event
// whole in the object store bucket [DefaultPayloadBucket] ([OpenPayloadStore],
// object [PayloadObjectName]: a replay replaces it), then publishes its
// envelope with a [Claim] instead of its rows. [ResolveEvent], or a [Resolver]
// that keeps its buckets open, turns a claim back into the event;
// [ErrClaimGone] means the object expired. Events the reader will not keep
// whole are recorded in the dead-letter stream beside the event stream
// ([EnsureDeadLetterStream], [DeadLetterSubject]).
//
// # Goroutines
//
// Publish runs on the caller's goroutine (normally the one CDC reader);
// calls are serialised by an internal lock that honours ctx. Each Publisher
// owns two more: the subscription goroutine nats.go runs for its
// acknowledgements, which advances the watermark, and a watcher that
// enforces the ack timeout and reacts to the connection's state. Close stops
// both. Both sides share the window state under one mutex, Publisher.mu,
// which is held only for a few field updates and never while calling into
// nats.go; the send lock, when held, is always taken before it.
//
// The embedded server runs its own goroutines, and one more that watches its
// storage and restarts it; [Embedded.Shutdown] stops them and waits. Connect's handlers run on nats.go's callback goroutine and only
// log.
package stream
