// Column values: PostgreSQL text output → JSON.
//
// pgoutput sends each column in the type's text output format. AppendValue
// turns one such value into its JSON form following the "Values" rule of the
// event envelope contract (DESIGN.md). It is the innermost loop of the
// streamer, so it works on bytes: no fmt, no time.Parse, no strconv
// round-trips, and no allocation for scalar values when dst has room. The
// conversions only reshape text PostgreSQL already validated; where a value
// does not look the way PostgreSQL prints it, the fallback is always the JSON
// string of its text, never an error.

package schema

import (
	"encoding/base64"
	"slices"
	"sync"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/tablecast/tablecast/internal/civil"
	"github.com/tablecast/tablecast/internal/jsonx"
)

// Type OIDs that pgtype has no constant for.
const (
	// MoneyOID is money's type OID.
	MoneyOID      = 790
	moneyArrayOID = 791

	// firstNormalOID is PostgreSQL's FirstNormalObjectId: every OID below it
	// is assigned at initdb, every type created later (enums, domains,
	// composites, extension types such as citext) gets one at or above it.
	// Only built-in types can be in pgx's type map, so the map is consulted
	// only below this bound.
	firstNormalOID = 16384
)

// AppendValue appends the JSON encoding of one column value to dst. text is the
// value in PostgreSQL's text output format (as pgoutput sends it), typeOID the
// column's type OID. It never fails: a value it cannot interpret is written as
// a JSON string of its text form.
//
// Integers and floats become JSON numbers (NaN and ±Infinity strings), bool
// true/false, json and jsonb are embedded, bytea becomes base64, timestamps
// RFC 3339 with the precision PostgreSQL printed, arrays JSON arrays of their
// converted elements; numeric, money, text types, uuid, date and every other
// type become the JSON string of their text. NULL is not a text value: the
// caller writes null.
func AppendValue(dst []byte, typeOID uint32, text []byte) []byte {
	switch typeOID {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID,
		pgtype.XIDOID, pgtype.CIDOID, pgtype.XID8OID, pgtype.OID8OID:
		if isJSONInteger(text) {
			return append(dst, text...)
		}
		return jsonx.AppendStringBytes(dst, text)

	case pgtype.Float4OID, pgtype.Float8OID:
		// Every form float4out/float8out print ("1.5", "-0", "1e+30",
		// "1.5e-07") is a JSON number; "NaN", "Infinity" and "-Infinity"
		// are not, and become strings by the fallback.
		if isJSONNumber(text) {
			return append(dst, text...)
		}
		return jsonx.AppendStringBytes(dst, text)

	case pgtype.BoolOID:
		if len(text) == 1 {
			switch text[0] {
			case 't':
				return append(dst, "true"...)
			case 'f':
				return append(dst, "false"...)
			}
		}
		return jsonx.AppendStringBytes(dst, text)

	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID,
		pgtype.QCharOID, pgtype.UUIDOID, pgtype.NumericOID, MoneyOID,
		pgtype.DateOID, pgtype.TimeOID, pgtype.TimetzOID, pgtype.IntervalOID,
		pgtype.XMLOID, pgtype.InetOID, pgtype.CIDROID, pgtype.MacaddrOID,
		pgtype.Macaddr8OID, pgtype.BitOID, pgtype.VarbitOID, pgtype.UnknownOID:
		return jsonx.AppendStringBytes(dst, text)

	case pgtype.JSONOID, pgtype.JSONBOID:
		return appendJSON(dst, text)

	case pgtype.TimestamptzOID:
		return appendTimestamp(dst, text, true)

	case pgtype.TimestampOID:
		return appendTimestamp(dst, text, false)

	case pgtype.ByteaOID:
		return appendBytea(dst, text)

	// The common arrays, kept off the type-map lookup below.
	case pgtype.Int2ArrayOID:
		return appendArray(dst, pgtype.Int2OID, ',', text)
	case pgtype.Int4ArrayOID:
		return appendArray(dst, pgtype.Int4OID, ',', text)
	case pgtype.Int8ArrayOID:
		return appendArray(dst, pgtype.Int8OID, ',', text)
	case pgtype.Float4ArrayOID:
		return appendArray(dst, pgtype.Float4OID, ',', text)
	case pgtype.Float8ArrayOID:
		return appendArray(dst, pgtype.Float8OID, ',', text)
	case pgtype.NumericArrayOID:
		return appendArray(dst, pgtype.NumericOID, ',', text)
	case pgtype.BoolArrayOID:
		return appendArray(dst, pgtype.BoolOID, ',', text)
	case pgtype.TextArrayOID:
		return appendArray(dst, pgtype.TextOID, ',', text)
	case pgtype.VarcharArrayOID:
		return appendArray(dst, pgtype.VarcharOID, ',', text)
	case pgtype.UUIDArrayOID:
		return appendArray(dst, pgtype.UUIDOID, ',', text)
	case pgtype.JSONArrayOID:
		return appendArray(dst, pgtype.JSONOID, ',', text)
	case pgtype.JSONBArrayOID:
		return appendArray(dst, pgtype.JSONBOID, ',', text)
	case pgtype.TimestamptzArrayOID:
		return appendArray(dst, pgtype.TimestamptzOID, ',', text)
	case pgtype.TimestampArrayOID:
		return appendArray(dst, pgtype.TimestampOID, ',', text)
	case pgtype.DateArrayOID:
		return appendArray(dst, pgtype.DateOID, ',', text)
	case moneyArrayOID:
		return appendArray(dst, MoneyOID, ',', text)
	}

	if typeOID < firstNormalOID {
		if a, ok := builtinArrays()[typeOID]; ok {
			return appendArray(dst, a.elem, a.delim, text)
		}
	}
	return jsonx.AppendStringBytes(dst, text)
}

// arrayType is what converting an array value needs to know about its type.
type arrayType struct {
	elem  uint32 // element type OID
	delim byte   // element separator: ',' for all built-in types but box (';')
}

// builtinArrays returns every built-in array type pgx knows, by OID. Built
// once on first use and read-only after, so lookups take no lock.
var builtinArrays = sync.OnceValue(func() map[uint32]arrayType {
	m := pgtype.NewMap()
	arrays := make(map[uint32]arrayType)
	// pgtype.Map cannot be listed, so probe the built-in OID range; this
	// runs once and takes well under a millisecond.
	for oid := uint32(1); oid < firstNormalOID; oid++ {
		t, ok := m.TypeForOID(oid)
		if !ok {
			continue
		}
		c, ok := t.Codec.(*pgtype.ArrayCodec)
		if !ok || c.ElementType == nil {
			continue
		}
		delim := c.Delimiter
		if delim == 0 {
			delim = ','
		}
		arrays[oid] = arrayType{elem: c.ElementType.OID, delim: delim}
	}
	// The built-in arrays pgx has no codec for: without them a timetz[]
	// or an int4multirange[] would arrive as the string of its literal
	// rather than as a JSON array. Their elements have no JSON rule of
	// their own (each is its text form) and all use ','. Built-in OIDs
	// are fixed in pg_type.dat, the same in every PostgreSQL version
	// that has the type.
	for oid, elem := range map[uint32]uint32{
		775:  774,  // macaddr8[]
		1006: 22,   // int2vector[]
		1008: 24,   // regproc[]
		1013: 30,   // oidvector[]
		1270: 1266, // timetz[]
		2201: 1790, // refcursor[]
		2207: 2202, // regprocedure[]
		2208: 2203, // regoper[]
		2209: 2204, // regoperator[]
		2210: 2205, // regclass[]
		2211: 2206, // regtype[]
		2949: 2970, // txid_snapshot[]
		3221: 3220, // pg_lsn[]
		3644: 3642, // gtsvector[]
		3645: 3615, // tsquery[]
		3735: 3734, // regconfig[]
		3770: 3769, // regdictionary[]
		4090: 4089, // regnamespace[]
		4097: 4096, // regrole[]
		4192: 4191, // regcollation[]
		5039: 5038, // pg_snapshot[]
		6150: 4451, // int4multirange[]
		6151: 4532, // nummultirange[]
		6152: 4533, // tsmultirange[]
		6153: 4534, // tstzmultirange[]
		6155: 4535, // datemultirange[]
		6157: 4536, // int8multirange[]
	} {
		if _, ok := arrays[oid]; !ok {
			arrays[oid] = arrayType{elem: elem, delim: ','}
		}
	}
	return arrays
})

// isJSONInteger reports whether b is a JSON integer: -?(0|[1-9][0-9]*).
// int2out, int4out, int8out, oidout and the xid types always print one.
func isJSONInteger(b []byte) bool {
	i := 0
	if len(b) > 0 && b[0] == '-' {
		i = 1
	}
	if i >= len(b) {
		return false
	}
	if b[i] == '0' {
		return i+1 == len(b)
	}
	for ; i < len(b); i++ {
		if b[i] < '0' || b[i] > '9' {
			return false
		}
	}
	return true
}

// isJSONNumber reports whether b is a number in JSON's grammar (RFC 8259 §6).
func isJSONNumber(b []byte) bool {
	end, ok := jsonx.ScanNumber(b, 0)
	return ok && end == len(b)
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// MaxEmbeddedJSONDepth is how deeply a json or jsonb value may nest to be
// embedded in an event; a deeper one is written as the string of its text.
// PostgreSQL accepts values nested some 15,000 levels deep, but encoding/json
// (and the gateway, which reads as it does) refuses a document deeper than
// jsonx.MaxDepth (10,000), and the value is not the document: the event
// and its "data" hold it in two more levels, the dimensions of a json[]
// array (at most 6) in as many more, and the gateway's frames (a
// transaction batch's event, in its "events" array, in the frame) in three
// more. Embedded that deep, a value of 9,999 levels made an event no JSON
// reader of that limit could parse.
const MaxEmbeddedJSONDepth = jsonx.MaxDepth - 16

// appendJSON embeds a json or jsonb value as it is. PostgreSQL validated it
// on input; the check here keeps the envelope valid should anything else
// arrive, and within the depth JSON readers take.
func appendJSON(dst, text []byte) []byte {
	if jsonx.ValidNested(text, MaxEmbeddedJSONDepth) && utf8.Valid(text) {
		return append(dst, text...)
	}
	return jsonx.AppendStringBytes(dst, text)
}

// appendTimestamp writes a timestamp or timestamptz in ISO DateStyle
// ("2026-11-22 07:00:00.123456+00") as RFC 3339
// ("2026-11-22T07:00:00.123456Z"), keeping the fractional digits as printed.
// What RFC 3339 cannot express, or what is not in that shape, is written as
// the string of its text: infinity and -infinity, BC dates, years past 9999,
// offsets with seconds (local mean time before 1900 in some zones), and
// other DateStyles.
func appendTimestamp(dst, t []byte, withZone bool) []byte {
	end, ok := scanISODateTime(t)
	if !ok {
		return jsonx.AppendStringBytes(dst, t)
	}
	var zone [6]byte
	zoneLen := 0
	if withZone {
		zoneLen, ok = rfc3339Offset(t[end:], &zone)
		if !ok {
			return jsonx.AppendStringBytes(dst, t)
		}
	} else if end != len(t) {
		return jsonx.AppendStringBytes(dst, t)
	}
	dst = append(dst, '"')
	dst = append(dst, t[:10]...)
	dst = append(dst, 'T')
	dst = append(dst, t[11:end]...)
	dst = append(dst, zone[:zoneLen]...)
	return append(dst, '"')
}

// scanISODateTime checks that t starts with "YYYY-MM-DD HH:MM:SS" and an
// optional fraction of 1 to 9 digits, all fields in range, and returns the
// index just past it.
func scanISODateTime(t []byte) (int, bool) {
	if len(t) < 19 || t[4] != '-' || t[7] != '-' || t[10] != ' ' || t[13] != ':' || t[16] != ':' {
		return 0, false
	}
	year, ok1 := civil.TwoDigits(t[0], t[1])
	y2, ok2 := civil.TwoDigits(t[2], t[3])
	month, ok3 := civil.TwoDigits(t[5], t[6])
	day, ok4 := civil.TwoDigits(t[8], t[9])
	hour, ok5 := civil.TwoDigits(t[11], t[12])
	minute, ok6 := civil.TwoDigits(t[14], t[15])
	second, ok7 := civil.TwoDigits(t[17], t[18])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) {
		return 0, false
	}
	year = year*100 + y2
	if month < 1 || month > 12 || day < 1 || day > civil.DaysIn(month, int64(year)) ||
		hour > 23 || minute > 59 || second > 59 {
		return 0, false
	}
	i := 19
	if i < len(t) && t[i] == '.' {
		j := skipDigits(t, i+1)
		if n := j - i - 1; n < 1 || n > 9 {
			return 0, false
		}
		i = j
	}
	return i, true
}

// rfc3339Offset converts a PostgreSQL zone suffix ("+00", "-08",
// "+05:30", "+05:30:00") into "Z" or "±HH:MM" in zone and returns its
// length; ok is false for anything else, including offsets with non-zero
// seconds, which RFC 3339 cannot express.
func rfc3339Offset(s []byte, zone *[6]byte) (int, bool) {
	if len(s) != 3 && len(s) != 6 && len(s) != 9 {
		return 0, false
	}
	if s[0] != '+' && s[0] != '-' {
		return 0, false
	}
	hh, ok := civil.TwoDigits(s[1], s[2])
	if !ok || hh > 23 {
		return 0, false
	}
	mm := 0
	if len(s) >= 6 {
		if s[3] != ':' {
			return 0, false
		}
		if mm, ok = civil.TwoDigits(s[4], s[5]); !ok || mm > 59 {
			return 0, false
		}
	}
	if len(s) == 9 && (s[6] != ':' || s[7] != '0' || s[8] != '0') {
		return 0, false
	}
	if hh == 0 && mm == 0 {
		zone[0] = 'Z'
		return 1, true
	}
	*zone = [6]byte{s[0], s[1], s[2], ':', byte('0' + mm/10), byte('0' + mm%10)}
	return 6, true
}

// byteaChunk is how many decoded bytes appendBytea encodes at a time. A
// multiple of 3, so base64 pads only the last chunk; small enough for the
// stack, large enough that the per-chunk call costs nothing.
const byteaChunk = 3 * 256

// appendBytea writes a bytea as a base64 (standard, padded) JSON string.
// It reads the hex output format ("\x0a1b", the default bytea_output) and
// the escape format ("a\\b\001"); text in neither is written as a string.
func appendBytea(dst, text []byte) []byte {
	start := len(dst)
	var ok bool
	if len(text) >= 2 && text[0] == '\\' && text[1] == 'x' {
		dst, ok = appendHexBase64(dst, text[2:])
	} else {
		dst, ok = appendEscapedBase64(dst, text)
	}
	if !ok {
		return jsonx.AppendStringBytes(dst[:start], text)
	}
	return dst
}

func appendHexBase64(dst, hex []byte) ([]byte, bool) {
	if len(hex)%2 != 0 {
		return dst, false
	}
	dst = slices.Grow(dst, base64.StdEncoding.EncodedLen(len(hex)/2)+2)
	dst = append(dst, '"')
	var buf [byteaChunk]byte
	n := 0
	for i := 0; i < len(hex); i += 2 {
		hi, lo := unhexTable[hex[i]], unhexTable[hex[i+1]]
		if hi|lo > 0xf {
			return dst, false
		}
		buf[n] = hi<<4 | lo
		n++
		if n == len(buf) {
			dst = base64.StdEncoding.AppendEncode(dst, buf[:])
			n = 0
		}
	}
	dst = base64.StdEncoding.AppendEncode(dst, buf[:n])
	return append(dst, '"'), true
}

// appendEscapedBase64 decodes bytea's escape format: "\\" is a backslash,
// "\ooo" an octal byte, any other byte itself.
func appendEscapedBase64(dst, s []byte) ([]byte, bool) {
	dst = append(dst, '"')
	var buf [byteaChunk]byte
	n := 0
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c != '\\':
			i++
		case i+1 < len(s) && s[i+1] == '\\':
			i += 2
		case i+3 < len(s) && isOctal(s[i+1]) && s[i+1] <= '3' && isOctal(s[i+2]) && isOctal(s[i+3]):
			c = (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			i += 4
		default:
			return dst, false
		}
		buf[n] = c
		n++
		if n == len(buf) {
			dst = base64.StdEncoding.AppendEncode(dst, buf[:])
			n = 0
		}
	}
	dst = base64.StdEncoding.AppendEncode(dst, buf[:n])
	return append(dst, '"'), true
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// unhexTable maps an ASCII hex digit to its value and every other byte to
// 0xff.
var unhexTable = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := byte('0'); c <= '9'; c++ {
		t[c] = c - '0'
	}
	for c := byte('a'); c <= 'f'; c++ {
		t[c] = c - 'a' + 10
		t[c-'a'+'A'] = c - 'a' + 10
	}
	return t
}()

// Array literals.
//
// array_out prints "{e1,e2}", nested braces per dimension ("{{1,2},{3,4}}"),
// and a "[lb:ub]...=" prefix when a lower bound is not 1. An element is
// double-quoted when it is empty, is NULL spelt as text, or holds a brace,
// quote, backslash, the delimiter or white space; inside quotes '"' and '\'
// are backslash-escaped. An unquoted NULL is SQL NULL. The parser also takes
// what array_in accepts around that (white space between tokens, backslash
// escapes outside quotes) and rejects the rest, falling back to a string.

// scratchPool holds buffers for array elements that contain backslash
// escapes: they must be unescaped before conversion. Elements without
// escapes, the usual case, are converted in place and take no buffer.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// maxPooledScratch caps the buffers kept in scratchPool, so that one huge
// array does not pin its memory for the life of the process.
const maxPooledScratch = 64 << 10

func appendArray(dst []byte, elemOID uint32, delim byte, text []byte) []byte {
	start := len(dst)
	var scratch *[]byte
	dst, ok := appendArrayLiteral(dst, elemOID, delim, text, &scratch)
	if scratch != nil && cap(*scratch) <= maxPooledScratch {
		*scratch = (*scratch)[:0]
		scratchPool.Put(scratch)
	}
	if !ok {
		return jsonx.AppendStringBytes(dst[:start], text)
	}
	return dst
}

// States of the array parser: what may come next.
const (
	arrOpened = iota // after '{': an element, '{' or '}'
	arrSep           // after a delimiter: an element or '{'
	arrDone          // after an element or '}': a delimiter or '}'
)

func appendArrayLiteral(dst []byte, elemOID uint32, delim byte, s []byte, scratch **[]byte) ([]byte, bool) {
	// PostgreSQL writes the dimensions ("[0:2]=") only when a lower bound
	// is not 1, and a JSON array has no place for them: such an array
	// keeps its text form, as a date JSON cannot hold does, rather than
	// arrive as one that starts at 1.
	i := skipArraySpace(s, 0)
	if i >= len(s) || s[i] != '{' {
		return dst, false
	}
	dst = append(dst, '[')
	i++
	depth := 1
	state := arrOpened
	for {
		i = skipArraySpace(s, i)
		if i >= len(s) {
			return dst, false
		}
		c := s[i]
		if state == arrDone {
			switch c {
			case delim:
				dst = append(dst, ',')
				state = arrSep
				i++
				continue
			case '}':
			default:
				return dst, false
			}
		}
		switch {
		case c == '{':
			dst = append(dst, '[')
			depth++
			state = arrOpened
			i++
		case c == '}':
			if state == arrSep {
				return dst, false
			}
			dst = append(dst, ']')
			depth--
			i++
			if depth == 0 {
				return dst, skipArraySpace(s, i) == len(s)
			}
			state = arrDone
		default:
			var elem []byte
			var ok bool
			i, elem, ok = arrayElement(s, i, delim, scratch)
			if !ok {
				return dst, false
			}
			if elem == nil {
				dst = append(dst, "null"...)
			} else {
				dst = AppendValue(dst, elemOID, elem)
			}
			state = arrDone
		}
	}
}

// arrayElement reads the element starting at s[i] and returns the index
// after it and its text, unescaped (into *scratch if it had escapes). The
// text of SQL NULL is nil; every other element's is non-nil.
func arrayElement(s []byte, i int, delim byte, scratch **[]byte) (int, []byte, bool) {
	escaped := false
	var start, end int
	if s[i] == '"' {
		start = i + 1
		j := start
		for ; j < len(s) && s[j] != '"'; j++ {
			if s[j] == '\\' {
				escaped = true
				j++
			}
		}
		if j >= len(s) {
			return 0, nil, false
		}
		end, i = j, j+1
	} else {
		// Unquoted: up to the delimiter or '}', white space at the end not
		// counting unless escaped.
		start, end = i, i
		j := i
		for ; j < len(s) && s[j] != delim && s[j] != '}'; j++ {
			switch s[j] {
			case '\\':
				escaped = true
				j++
				if j >= len(s) {
					return 0, nil, false
				}
				end = j + 1
			case '"', '{':
				return 0, nil, false
			case ' ', '\t', '\n', '\r', '\v', '\f':
			default:
				end = j + 1
			}
		}
		if end == start {
			return 0, nil, false
		}
		i = j
		if !escaped && end-start == 4 && isNullWord(s[start:end]) {
			return i, nil, true
		}
	}
	elem := s[start:end:end]
	if escaped {
		elem = unescapeArrayElement(elem, scratch)
	}
	if elem == nil {
		elem = s[start:start:start] // "": not NULL
	}
	return i, elem, true
}

func isNullWord(b []byte) bool {
	return (b[0]|0x20) == 'n' && (b[1]|0x20) == 'u' && (b[2]|0x20) == 'l' && (b[3]|0x20) == 'l'
}

// unescapeArrayElement drops the backslash of every escape in e, appending
// to the scratch buffer (taken from the pool on first use).
func unescapeArrayElement(e []byte, scratch **[]byte) []byte {
	if *scratch == nil {
		*scratch = scratchPool.Get().(*[]byte)
	}
	buf := *scratch
	from := len(*buf)
	for i := 0; i < len(e); i++ {
		if e[i] == '\\' && i+1 < len(e) {
			i++
		}
		*buf = append(*buf, e[i])
	}
	return (*buf)[from:len(*buf):len(*buf)]
}

// skipArraySpace skips the white space array_in allows between tokens.
func skipArraySpace(s []byte, i int) int {
	for i < len(s) {
		switch s[i] {
		case ' ', '\t', '\n', '\r', '\v', '\f':
			i++
		default:
			return i
		}
	}
	return i
}
