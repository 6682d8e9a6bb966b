package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// builtinTypes names PostgreSQL's built-in types; user types are named by
// pgoutput's Type messages, which precede the first Relation using them.
var builtinTypes = pgtype.NewMap()

// typeName names a type OID, or "" when neither source knows it.
func (s *session) typeName(oid uint32) string {
	if name, ok := s.typeNames[oid]; ok {
		return name
	}
	if t, ok := builtinTypes.TypeForOID(oid); ok {
		return t.Name
	}
	return ""
}

// recordShape writes t's shape to the schema registry when it differs from
// the registered one, with the next version. pgoutput sends a Relation
// message before the first change after a schema change (and once per
// session), so events before it were encoded with the old shape and events
// after it with the new one.
func (s *session) recordShape(ctx context.Context, t *schema.Table) error {
	if s.r.registry == nil {
		return nil
	}
	shape := schema.ShapeOf(s.r.db, t, s.typeName)
	shape.OldRows = s.r.completesOldRows(t)
	return s.r.putShape(ctx, shape, s.txn.CommitLSN)
}

// putShape writes shape to the schema registry when it differs from the
// registered one, with the next version, as first seen at lsn.
func (r *Reader) putShape(ctx context.Context, shape schema.Shape, lsn uint64) error {
	reg := r.registry
	if reg == nil {
		return nil
	}
	key := stream.SchemaKey(shape.DB, shape.Schema, shape.Table)
	for attempt := 0; ; attempt++ {
		val, rev, found, err := reg.Get(ctx, key)
		if err != nil {
			return err
		}
		var cur schema.Shape
		if found {
			if err := json.Unmarshal(val, &cur); err != nil {
				r.log.Warn("replacing an unreadable schema registry entry", "key", key, "err", err)
			} else if cur.SameAs(shape) {
				return nil
			}
		}
		shape.Version = cur.Version + 1
		shape.LSN = string(schema.AppendLSN(nil, lsn))
		b, err := json.Marshal(shape)
		if err != nil {
			return fmt.Errorf("encode shape of %s.%s: %w", shape.Schema, shape.Table, err)
		}
		err = reg.Put(ctx, key, b, rev)
		if err == nil {
			r.log.Info("table shape registered", "table", shape.Schema+"."+shape.Table, "version", shape.Version, "columns", len(shape.Columns))
			return nil
		}
		// Another reader wrote meanwhile: read again and compare.
		if attempt < 3 && (errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err)) {
			continue
		}
		return err
	}
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// registerNewTables writes the shape of every published table the schema
// registry does not hold yet, read from the catalog, so that consumers (the
// gateway) know a table before its first change: pgoutput describes a table
// only when a change to it is streamed. Tables already registered are left
// to the stream's Relation messages, which are ordered with the events.
func (r *Reader) registerNewTables(ctx context.Context) error {
	conn, err := connectSnapshot(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	tables, err := publishedTables(ctx, conn, r.cfg.Publication)
	if err != nil {
		return err
	}
	var tr typeResolver
	for _, st := range tables {
		key := stream.SchemaKey(r.db, st.schema, st.name)
		if _, _, found, err := r.registry.Get(ctx, key); err != nil || found {
			if err != nil {
				return err
			}
			continue
		}
		shape, err := r.catalogShape(ctx, conn, &tr, st)
		if err != nil {
			return err
		}
		shape.Version = 1
		b, err := json.Marshal(shape)
		if err != nil {
			return fmt.Errorf("encode shape of %s.%s: %w", st.schema, st.name, err)
		}
		if err := r.registry.Put(ctx, key, b, 0); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // another reader was first
			}
			return err
		}
		r.log.Info("table shape registered from the catalog", "table", st.schema+"."+st.name, "columns", len(shape.Columns))
	}
	return nil
}

// catalogShape reads st's shape from the catalog, for its published
// columns (st.columns), as the stream describes it: type OIDs as
// pg_attribute has them (a domain's, not its base type's as a query's
// result describes it), named as pgoutput names them (pgx's names for
// built-in types, namespace.name for the others).
func (r *Reader) catalogShape(ctx context.Context, conn *pgx.Conn, tr *typeResolver, st snapshotTable) (schema.Shape, error) {
	var columns []schema.Column
	names := map[uint32]string{}
	rows, err := conn.Query(ctx, `
		SELECT a.attname::text, a.atttypid, a.atttypmod, tn.nspname || '.' || t.typname
		FROM pg_attribute a
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_namespace tn ON tn.oid = t.typnamespace
		WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass
			AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY($3)
		ORDER BY a.attnum`, st.schema, st.name, st.columns)
	if err != nil {
		return schema.Shape{}, fmt.Errorf("read the columns of %s.%s: %w", st.schema, st.name, err)
	}
	for rows.Next() {
		var c schema.Column
		var typeName string
		if err := rows.Scan(&c.Name, &c.TypeOID, &c.TypeMod, &typeName); err != nil {
			rows.Close()
			return schema.Shape{}, fmt.Errorf("read the columns of %s.%s: %w", st.schema, st.name, err)
		}
		names[c.TypeOID] = typeName
		columns = append(columns, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return schema.Shape{}, fmt.Errorf("read the columns of %s.%s: %w", st.schema, st.name, err)
	}
	t := st.table(columns)
	if err := applyTypes(ctx, conn, tr, t.Columns); err != nil {
		return schema.Shape{}, fmt.Errorf("look up the column types of %s: %w", t.QualifiedName(), err)
	}
	shape := schema.ShapeOf(r.db, t, func(oid uint32) string {
		if bt, ok := builtinTypes.TypeForOID(oid); ok {
			return bt.Name
		}
		return names[oid]
	})
	shape.OldRows = r.completesOldRows(t)
	return shape, nil
}
