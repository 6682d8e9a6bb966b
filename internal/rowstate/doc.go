// Package rowstate keeps the latest version of every row, by key, in
// JetStream, so that a live view can start from the rows that match now
// without a query to PostgreSQL.
//
// A Maintainer, one per database beside its reader, follows the event
// stream and writes the stream "<EVENTS>_ROWS" (subjects
// "<prefix>_rows.<db>.<schema>.<table>.r.<key token>", one message per
// subject): a create, read or update writes the row (values PostgreSQL left
// out as unchanged TOAST filled in from the previous version), a key change
// writes a tombstone under the old key and the row under the new one, a
// delete writes a tombstone (it expires after TombstoneTTL; under a
// deferrable key, not when another row came onto the key: heldByAnother;
// for the events of such a table, marked by the reader with
// stream.KeyDeferrableHeader, the key's row is looked up before each
// create, update and delete, since a row may come onto a key a row of an
// earlier transaction holds), and a truncate purges the table's rows and records itself on the
// table's marker ("….t"). Every message carries Tablecast-Seq, the event
// sequence it reflects; a row a create or update wrote, Tablecast-Lsn. A batch's rows go to the stream as one JetStream fast batch
// (where the server takes them: nats-server 2.14 and later; otherwise one
// acknowledged publish each), with gaps failing it, ended on
// "<prefix>_rows.<db>._batch", which the stream never stores: a row refused
// or lost on the way leaves every later row of the batch unstored and the
// batch unacknowledged in full. Each batch records how far the maintainer
// has applied the database on "<prefix>_rows.<db>._applied" (the last
// event's sequence, and its id: LastApplied, AppliedID; a reader that
// completes old rows compares the ids of its own events with it, see cdc's
// oldrows.go): as the fast batch's last message, so that the stream stores
// it only after every row of the batch, and only once the batch before is
// known to be stored (the maintainer applies a batch while the stream
// stores the one before it, and a refused row's successors of a later
// batch are stored all the same); without fast batches, once every row of
// the batch is acknowledged. It starts again from there
// after a restart (a batch cut short is applied again, without writing a
// row back over a later version), and a state deleted whole is rebuilt
// from the event stream. Tables without a key have no state.
//
// Scan reads a table's rows as of an event sequence N, bounded by where the
// state stood when it began (it never chases rows rewritten meanwhile): a
// reader applies what it returns, then the events after N (an update of a
// row it lacks sets the row: the scan leaves out rows changed after N while
// it ran), and holds the table with no gap and no duplicate.
//
// Concurrency: a Maintainer runs in one goroutine (Run); Ready, Applied,
// AppliedID and LastApplied may be called from any goroutine. Scan may run
// in any number of goroutines.
package rowstate
