package cdc

// Column types that are not built in.
//
// A pgoutput Relation message gives each column's type OID, and values come
// in that type's text output format. For a built-in type the OID is all
// schema.AppendValue needs; for a type created with CREATE DOMAIN, CREATE
// TYPE or by an extension it is an OID AppendValue cannot know, and its value
// would come out as a JSON string whatever it holds. The resolver looks such
// types up in pg_type once per session and names, for each, the built-in type
// whose JSON rules apply (schema.Column.ValueOID): a domain over integer is
// written as a number, an array of a domain as a JSON array.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/tablecast/tablecast/schema"
)

const (
	// firstCatalogOID is PostgreSQL's FirstGenbkiObjectId: every OID below
	// it is a type of pg_type.dat, built into the server, whose text form
	// AppendValue knows by its OID. Types at or above it need a look-up:
	// the ones initdb creates later (the information_schema domains such as
	// cardinal_number, over integer; the row types of system views) and
	// every user and extension type (from FirstNormalObjectId, 16384).
	firstCatalogOID = 10000

	// maxTypeDepth bounds how many domain and array steps a look-up follows
	// from a column's type to a built-in one. Real chains are two or three
	// steps (an array of a domain over a domain over int is three); the
	// bound only guards against a catalog the look-up does not expect.
	maxTypeDepth = 16

	// typeLookupTimeout bounds connecting and querying pg_type, so that a
	// PostgreSQL that does not answer ends the session (which retries)
	// instead of stalling the stream without a word.
	typeLookupTimeout = 30 * time.Second

	moneyOID, moneyArrayOID = 790, 791 // not among pgtype's constants
)

// typeResolver maps type OIDs to the built-in types whose JSON rules apply.
// It caches what it learnt for the life of a session: a type's kind, base
// type and element type never change once it exists (ALTER DOMAIN changes
// constraints and defaults, not the base type). Only the session's goroutine
// uses it.
type typeResolver struct {
	cache map[uint32]uint32 // type OID → valueOID result
}

// typeRow is one row of pg_type as the look-up reads it.
type typeRow struct {
	typtype     byte   // b base, c composite, d domain, e enum, p pseudo, r range, m multirange
	typcategory byte   // 'A' for arrays
	typdelim    byte   // the array element delimiter of this type
	typbasetype uint32 // a domain's base type
	typelem     uint32 // an array's element type
}

// typeQuery reads the given types and, recursively, the base type of each
// domain and the element type of each array among them, stopping at
// built-in types and at maxTypeDepth steps.
const typeQuery = `WITH RECURSIVE t AS (
	SELECT oid, typtype, typcategory, typdelim, typbasetype, typelem, 1 AS depth
	FROM pg_catalog.pg_type WHERE oid = ANY($1)
  UNION ALL
	SELECT p.oid, p.typtype, p.typcategory, p.typdelim, p.typbasetype, p.typelem, t.depth + 1
	FROM t JOIN pg_catalog.pg_type p
	  ON p.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END
	WHERE t.oid >= $2 AND t.depth < $3 AND (t.typtype = 'd' OR t.typcategory = 'A' AND t.typelem <> 0)
)
SELECT DISTINCT oid, typtype::text, typcategory::text, typdelim::text, typbasetype, typelem FROM t`

// isBuiltinType reports whether oid needs no look-up.
func isBuiltinType(oid uint32) bool { return oid < firstCatalogOID }

// resolve looks up, in one query, every type of oids that is neither built
// in nor cached, so that valueOID can answer for them. A type that does not
// exist (dropped since the change was written) is cached as text form.
func (r *typeResolver) resolve(ctx context.Context, conn *pgx.Conn, oids []uint32) error {
	var missing []uint32
	for _, oid := range oids {
		if _, ok := r.cache[oid]; !ok && !isBuiltinType(oid) {
			missing = append(missing, oid)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	rows, err := conn.Query(ctx, typeQuery, missing, uint32(firstCatalogOID), maxTypeDepth)
	if err != nil {
		return fmt.Errorf("query pg_type: %w", err)
	}
	found := map[uint32]typeRow{}
	var (
		oid                 uint32
		typtype, cat, delim string
		row                 typeRow
	)
	_, err = pgx.ForEachRow(rows, []any{&oid, &typtype, &cat, &delim, &row.typbasetype, &row.typelem}, func() error {
		row.typtype, row.typcategory, row.typdelim = firstByte(typtype), firstByte(cat), firstByte(delim)
		found[oid] = row
		return nil
	})
	if err != nil {
		return fmt.Errorf("query pg_type: %w", err)
	}
	if r.cache == nil {
		r.cache = map[uint32]uint32{}
	}
	for _, oid := range missing {
		r.learn(oid, found, 0)
	}
	return nil
}

func firstByte(s string) byte {
	if s == "" {
		return 0
	}
	return s[0]
}

// learn works out and caches the value OID of oid from the rows of a
// look-up (see valueOID for the rules).
func (r *typeResolver) learn(oid uint32, found map[uint32]typeRow, depth int) uint32 {
	if isBuiltinType(oid) {
		return oid
	}
	if v, ok := r.cache[oid]; ok {
		return v
	}
	if depth >= maxTypeDepth {
		// A chain the query did not follow to its end: text form, not
		// cached, so that a look-up starting nearer its end can resolve it.
		return 0
	}
	var v uint32
	t, ok := found[oid]
	switch {
	case !ok:
		// Dropped since the change was written: text form.
	case t.typtype == 'd':
		v = r.learn(t.typbasetype, found, depth+1)
	case t.typtype == 'e':
		v = pgtype.TextOID
	case t.typcategory == 'A' && t.typelem != 0:
		elem := r.learn(t.typelem, found, depth+1)
		if a, ok := builtinArrayOf()[elem]; ok {
			v = a
		} else if t.typdelim == ',' {
			// Elements in text form (an array of composites, of an
			// extension's type): a JSON array of their strings.
			v = pgtype.TextArrayOID
		}
	}
	r.cache[oid] = v
	return v
}

// valueOID returns the built-in type whose JSON rules apply to values of
// type oid, once resolve has seen it:
//
//   - a built-in type: itself;
//   - a domain: the value OID of its base type;
//   - an enum: text;
//   - an array whose element type has value OID E: the built-in array of E,
//     or text[] when E has none or is text form (array of composites), so
//     that the value is a JSON array either way;
//   - anything else (composite, range, multirange, an extension's base
//     type, a type resolve has not seen): 0, the text form, a JSON string.
func (r *typeResolver) valueOID(oid uint32) uint32 {
	if isBuiltinType(oid) {
		return oid
	}
	return r.cache[oid]
}

// builtinArrayOf maps a built-in element type to its array type, for every
// array type schema.AppendValue converts to a JSON array: those pgx knows,
// and money[]. Built once, read-only after.
var builtinArrayOf = sync.OnceValue(func() map[uint32]uint32 {
	m := pgtype.NewMap()
	arrays := map[uint32]uint32{moneyOID: moneyArrayOID}
	// pgtype.Map cannot be listed; probing the built-in range runs once
	// and takes well under a millisecond.
	for oid := uint32(1); oid < firstCatalogOID; oid++ {
		t, ok := m.TypeForOID(oid)
		if !ok {
			continue
		}
		if c, ok := t.Codec.(*pgtype.ArrayCodec); ok && c.ElementType != nil {
			arrays[c.ElementType.OID] = oid
		}
	}
	return arrays
})

// sessionTypes is a session's type resolver with the regular connection it
// queries over (the catalog connection, also used for keys), opened on
// first need and closed with the session.
type sessionTypes struct {
	conn     *pgx.Conn
	resolver typeResolver
}

// resolveColumnTypes sets ValueOID of every column of t whose type is not
// built in.
func (s *session) resolveColumnTypes(ctx context.Context, t *schema.Table) error {
	if !needsTypes(t.Columns) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, typeLookupTimeout)
	defer cancel()
	conn, err := s.catalogConn(ctx)
	if err != nil {
		return fmt.Errorf("connect to look up the column types of %s: %w", t.QualifiedName(), err)
	}
	if err := applyTypes(ctx, conn, &s.types.resolver, t.Columns); err != nil {
		return fmt.Errorf("look up the column types of %s: %w", t.QualifiedName(), err)
	}
	return nil
}

// catalogConn returns the session's regular connection, for the catalog
// look-ups Relation messages need (types, keys), opening it on first use.
func (s *session) catalogConn(ctx context.Context) (*pgx.Conn, error) {
	if s.types.conn == nil {
		conn, err := pgx.Connect(ctx, s.r.cfg.DatabaseURL)
		if err != nil {
			return nil, err
		}
		s.types.conn = conn
	}
	return s.types.conn, nil
}

func needsTypes(cols []schema.Column) bool {
	for _, c := range cols {
		if !isBuiltinType(c.TypeOID) {
			return true
		}
	}
	return false
}

// applyTypes sets ValueOID of every column whose type is not built in,
// looking the types up over conn (which must be idle). The snapshots use it
// too, so that their rows convert exactly as streamed changes do.
func applyTypes(ctx context.Context, conn *pgx.Conn, tr *typeResolver, cols []schema.Column) error {
	var oids []uint32
	for _, c := range cols {
		if !isBuiltinType(c.TypeOID) {
			oids = append(oids, c.TypeOID)
		}
	}
	if len(oids) == 0 {
		return nil
	}
	if err := tr.resolve(ctx, conn, oids); err != nil {
		return err
	}
	for i := range cols {
		if c := &cols[i]; !isBuiltinType(c.TypeOID) {
			c.ValueOID = tr.valueOID(c.TypeOID)
		}
	}
	return nil
}

// close closes the look-up connection, if one was opened.
func (st *sessionTypes) close() {
	if st.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st.conn.Close(ctx)
	st.conn = nil
}
