// Package catalog is what can be followed: the tables readers stream, each
// with its shape, the way its columns' values compare (query.ColumnTypes)
// and its subject, and the custom topics. It keeps them current from NATS,
// by watching the schema registry and the topic bucket (package stream),
// so that a server never talks to PostgreSQL to know them.
//
// A table is its database, schema and name: readers of several databases
// may publish into one stream, and each database's public.orders is a table
// of its own. Resolve finds the table a client names ("db.schema.table", or
// "schema.table" when only one database the client may read has it) among
// those its grants let it read, and Visible lists what a client may follow:
// tables and topics it may not read are never counted nor named.
//
// # Concurrency
//
// Run watches both buckets on goroutines of its own until its context
// ends. Every other method may be called from any goroutine at any time;
// they take the catalog's read lock (mu) briefly, and Run's appliers its
// write lock; the revision lock (revMu) is taken alone. A Table is
// immutable: a shape change replaces it, so a Table once handed out may be
// kept and read without a lock.
//
// # Usage
//
//	cat := catalog.New(prefix, log)
//	go cat.Run(ctx, registry, topics, onTopicGone, catalog.Start{})
//	// once cat.Ready():
//	t, choices := cat.Resolve(db, schemaName, table, id.Grants)
//	flt, err := query.Compile(where, t.Name, t.Types)
package catalog
