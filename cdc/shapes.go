package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

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
	reg := s.r.registry
	if reg == nil {
		return nil
	}
	shape := schema.ShapeOf(s.r.db, t, s.typeName)
	key := stream.SchemaKey(s.r.db, t.Schema, t.Name)
	for attempt := 0; ; attempt++ {
		val, rev, found, err := reg.Get(ctx, key)
		if err != nil {
			return err
		}
		var cur schema.Shape
		if found {
			if err := json.Unmarshal(val, &cur); err != nil {
				s.r.log.Warn("replacing an unreadable schema registry entry", "key", key, "err", err)
			} else if cur.SameAs(shape) {
				return nil
			}
		}
		shape.Version = cur.Version + 1
		shape.LSN = string(schema.AppendLSN(nil, s.txn.CommitLSN))
		b, err := json.Marshal(shape)
		if err != nil {
			return fmt.Errorf("encode shape of %s: %w", t.QualifiedName(), err)
		}
		err = reg.Put(ctx, key, b, rev)
		if err == nil {
			s.r.log.Info("table shape registered", "table", t.QualifiedName(), "version", shape.Version, "columns", len(shape.Columns))
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
