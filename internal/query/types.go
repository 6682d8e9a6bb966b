package query

import (
	"strconv"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/tablecast/tablecast/schema"
)

// ColumnType is how a column's values compare.
type ColumnType uint8

const (
	TypeText      ColumnType = iota // text, varchar, bpchar, name, "char", uuid: bytewise
	TypeInteger                     // int2, int4, int8, oid, xid, cid, xid8: exactly
	TypeFloat                       // float4, float8: as float64
	TypeDecimal                     // numeric, money: exact decimal compare
	TypeBool                        // bool
	TypeTimestamp                   // timestamptz, timestamp: instants
	TypeDate                        // date: calendar days
	TypeJSON                        // json, jsonb: eq, neq and is only, by value (jsonvalue.go)
	TypeOther                       // every other type: its text form, compared as text

	// typeAny is a column of a type not known (Check): any literal.
	typeAny ColumnType = 255
)

// TypeOfOID returns how values of the built-in type oid compare. Pass the
// column's value OID (schema.ShapeColumn.ValueOID when set, else TypeOID),
// so that a domain compares as its base type. Types it does not know,
// enums and extension types among them, are TypeOther.
func TypeOfOID(oid uint32) ColumnType {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID,
		pgtype.XIDOID, pgtype.CIDOID, pgtype.XID8OID, pgtype.OID8OID:
		return TypeInteger
	case pgtype.Float4OID, pgtype.Float8OID:
		return TypeFloat
	case pgtype.NumericOID, schema.MoneyOID:
		return TypeDecimal
	case pgtype.BoolOID:
		return TypeBool
	case pgtype.TimestampOID, pgtype.TimestamptzOID:
		return TypeTimestamp
	case pgtype.DateOID:
		return TypeDate
	case pgtype.JSONOID, pgtype.JSONBOID:
		return TypeJSON
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID,
		pgtype.QCharOID, pgtype.UUIDOID:
		return TypeText
	}
	return TypeOther
}

// String names the type in filter error messages.
func (t ColumnType) String() string {
	switch t {
	case TypeText:
		return "text"
	case TypeInteger:
		return "integer"
	case TypeFloat:
		return "float"
	case TypeDecimal:
		return "numeric"
	case TypeBool:
		return "boolean"
	case TypeTimestamp:
		return "timestamp"
	case TypeDate:
		return "date"
	case TypeJSON:
		return "json"
	case TypeOther:
		return "other"
	}
	return "ColumnType(" + strconv.Itoa(int(t)) + ")"
}

// typeNoun says what a value of type t must be, for messages.
func typeNoun(t ColumnType) string {
	switch t {
	case TypeInteger, TypeFloat, TypeDecimal:
		return "a number"
	case TypeBool:
		return "a boolean"
	case TypeTimestamp:
		return "a timestamp"
	case TypeDate:
		return "a date"
	case TypeJSON:
		return "JSON"
	}
	return "a string"
}

// ColumnTypes returns how the values of each column of a table's shape
// compare, by column name: the type of its value OID (a domain's base
// type), else of its type OID.
func ColumnTypes(s schema.Shape) map[string]ColumnType {
	types := make(map[string]ColumnType, len(s.Columns))
	for _, c := range s.Columns {
		oid := c.ValueOID
		if oid == 0 {
			oid = c.TypeOID
		}
		types[c.Name] = TypeOfOID(oid)
	}
	return types
}
