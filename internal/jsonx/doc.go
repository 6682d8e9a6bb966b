// Package jsonx is tablecast's one byte-level JSON scanner and string
// writer: what the reader needs to write events, the gateway to index and
// rewrite them, and the query language and authentication to read where
// objects and claims, on the hot path and without allocating.
//
// # Reading
//
// Nothing here decodes a document into Go values; each function reads JSON
// in place and returns offsets into it:
//
//   - SkipSpace steps over white space; ScanString, ScanNumber read one
//     string or number;
//   - Scanner.SkipValue checks one whole value (any depth up to MaxDepth,
//     encoding/json's limit) and returns where it ends; Valid checks a
//     document as json.Valid does, in one pass;
//   - a string body (the bytes between the quotes, as ScanString found
//     them) is compared with CompareString, decoded with DecodeString, and
//     IsPlain tells whether it needs decoding at all;
//   - EqualCompact compares a JSON text with a compact one, ignoring
//     insignificant white space;
//   - FindRepeated finds an object, at any depth, that gives a member name
//     twice.
//
// The grammar is encoding/json's, and so are its choices where RFC 8259
// leaves one: invalid UTF-8 in strings is not refused (it reads as U+FFFD),
// and nesting deeper than 10000 is. The scanner's errors are ErrNotObject,
// ErrSyntax and ErrTooDeep, returned as they are beside the offset of the
// fault, for the caller to say where.
//
// # Writing
//
// AppendString and AppendStringBytes append a JSON string byte for byte as
// encoding/json writes it with HTML escaping off, allocating only when dst
// lacks room.
//
// # Concurrency
//
// The functions are pure and safe to call from any goroutine. A Scanner
// holds the stack of containers open in the value it checks, which it
// keeps between calls so that a warmed Scanner allocates nothing: each
// goroutine uses its own (callers keep one per buffer, or pool them).
//
// # Usage
//
//	var sc jsonx.Scanner
//	i := jsonx.SkipSpace(doc, 0)
//	end, err := sc.SkipValue(doc, i) // doc[i:end] is one valid value
//
//	if end, plain, ok := jsonx.ScanString(doc, i); ok {
//		body := doc[i+1 : end-1]
//		if plain || jsonx.IsPlain(body) { /* body is the text */ }
//	}
package jsonx
