package cdc

// The event key.
//
// pgoutput flags the columns of the replica identity: the primary key under
// REPLICA IDENTITY DEFAULT, the index's columns under USING INDEX, and every
// column under FULL, which is what `tablecast doctor` recommends for tables
// whose deletes a row policy must judge. An event's key is the row's
// identity for consumers and must not change shape with that setting, so it
// is looked up in the catalog instead: the primary key, or without one the
// replica identity index's columns, whatever the replica identity; only a
// table with neither has every column as its key under FULL (and none
// otherwise). The replica identity's columns stay known (schema.Column's
// Identity): they are what PostgreSQL sends of an old row under DEFAULT and
// USING INDEX.

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/schema"
)

// keyColumns is the catalog's side of a table's key: its primary key and
// its replica identity index, each as column names in index order.
type keyColumns struct {
	primaryKey    []string
	identityIndex []string
	// deferrable: the primary key is DEFERRABLE (its index is not
	// immediate), so that PostgreSQL checks it at commit, or later in the
	// transaction than each statement.
	deferrable bool
}

// keyArrays selects the primary key and the replica identity index of
// keyColumns, of the table pg_class c.
const keyArrays = `
	ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)),
	ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = c.oid AND i.indisreplident ORDER BY array_position(i.indkey::int2[], a.attnum))`

// keyLateral selects, in one pass over the indexes of the table pg_class
// c, its primary key (pk) and replica identity index (ri) as keyArrays
// does, each NULL when there is none: for a query over many tables, where
// two correlated subqueries each cost a third of the query again.
const keyLateral = `SELECT
		array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)) FILTER (WHERE i.indisprimary) AS pk,
		array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)) FILTER (WHERE i.indisreplident) AS ri
	FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
	WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)`

// keyQuery reads keyColumns of a table by OID.
const keyQuery = `SELECT ` + keyArrays + `,
	EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND NOT i.indimmediate)
	FROM pg_class c WHERE c.oid = $1`

// eventKey returns the columns of a table's event key, or every=true when
// it is every column:
//
//   - the primary key, whatever the replica identity, except under USING
//     INDEX of an index that does not hold every primary key column: a
//     delete then carries only the index's columns, so they are the key;
//   - without a primary key, the replica identity index's columns;
//   - without either, every column under FULL, and none otherwise.
func eventKey(replident byte, k keyColumns) (key []string, every bool) {
	pkInIndex := len(k.identityIndex) > 0
	for _, c := range k.primaryKey {
		pkInIndex = pkInIndex && slices.Contains(k.identityIndex, c)
	}
	switch {
	case replident == 'i' && len(k.identityIndex) > 0 && !pkInIndex:
		return k.identityIndex, false
	case len(k.primaryKey) > 0:
		return k.primaryKey, false
	case len(k.identityIndex) > 0:
		return k.identityIndex, false
	case replident == 'f':
		return nil, true
	}
	return nil, false
}

// setKey marks the columns of t's event key (Key), given what the catalog
// says of its keys. A key column the publication leaves out (a column list)
// cannot be in the events: the replica identity's columns, which PostgreSQL
// sends whenever it publishes updates or deletes, are the key then.
// A key that is a deferrable primary key marks t KeyDeferrable.
func setKey(t *schema.Table, k keyColumns) {
	key, every := eventKey(t.ReplicaIdentity, k)
	published := true
	for _, name := range key {
		published = published && slices.ContainsFunc(t.Columns, func(c schema.Column) bool { return c.Name == name })
	}
	t.KeyDeferrable = k.deferrable && published && len(key) > 0 && slices.Equal(key, k.primaryKey)
	for i := range t.Columns {
		c := &t.Columns[i]
		switch {
		case !published:
			c.Key = c.Identity
		default:
			c.Key = every || slices.Contains(key, c.Name)
		}
	}
}

// lookUpKey reads the key columns of relation relid for a Relation message
// and marks t's key. A relation the catalog no longer has (dropped since the
// change was written) keeps its replica identity as its key.
//
// Under REPLICA IDENTITY DEFAULT the columns pgoutput flags are the primary
// key as it was when the change was written, which is the key; the catalog
// holds today's, which differ when the key was changed since (a reader
// catching up on changes made before a migration that replaced the primary
// key would key them by columns their deletes do not carry), so it is not
// asked.
func (s *session) lookUpKey(ctx context.Context, relid uint32, t *schema.Table) error {
	t.KeyDeferrable = false
	if t.ReplicaIdentity == 'd' {
		for i := range t.Columns {
			t.Columns[i].Key = t.Columns[i].Identity
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, typeLookupTimeout)
	defer cancel()
	conn, err := s.catalogConn(ctx)
	if err != nil {
		return fmt.Errorf("connect to look up the key of %s: %w", t.QualifiedName(), err)
	}
	var k keyColumns
	err = conn.QueryRow(ctx, keyQuery, relid).Scan(&k.primaryKey, &k.identityIndex, &k.deferrable)
	switch {
	case err == pgx.ErrNoRows:
		s.r.log.Warn("table no longer in the catalog: its events' key is its replica identity", "table", t.QualifiedName())
		for i := range t.Columns {
			t.Columns[i].Key = t.Columns[i].Identity
		}
		return nil
	case err != nil:
		return fmt.Errorf("look up the key of %s: %w", t.QualifiedName(), err)
	}
	setKey(t, k)
	return nil
}
