package rowstate

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// Row is a row message of the rows stream, decoded.
type Row struct {
	Seq       uint64 // the event it reflects
	Deleted   bool   // a tombstone
	Key       []byte // the key object
	Data      []byte // the row (nil for a tombstone or a row too large to keep)
	Truncated bool   // the row was too large to keep: only its key is known
}

// appendRowMessage appends the data of a row message.
func appendRowMessage(dst, key, data []byte, truncated bool) []byte {
	dst = append(dst, `{"key":`...)
	dst = append(dst, key...)
	switch {
	case truncated:
		dst = append(dst, `,"truncated":true`...)
	case data != nil:
		dst = append(dst, `,"data":`...)
		dst = append(dst, data...)
	}
	return append(dst, '}')
}

// DecodeRow decodes a row message from its headers and data. Key and Data
// alias data.
func DecodeRow(h nats.Header, data []byte) (Row, error) {
	r := Row{Seq: parseUint(h.Get(HeaderSeq)), Deleted: h.Get(HeaderDeleted) != ""}
	if r.Seq == 0 {
		return r, fmt.Errorf("row message without %s", HeaderSeq)
	}
	var obj objectReader
	if err := obj.reset(data); err != nil {
		return r, fmt.Errorf("row message: %w", err)
	}
	for obj.next() {
		switch string(obj.name) {
		case "key":
			r.Key = obj.value
		case "data":
			r.Data = obj.value
		case "truncated":
			r.Truncated = string(obj.value) == "true"
		}
	}
	if obj.err != nil {
		return r, fmt.Errorf("row message: %w", obj.err)
	}
	if len(r.Key) == 0 || r.Key[0] != '{' || r.Data != nil && r.Data[0] != '{' {
		return r, errors.New("row message without a key object")
	}
	return r, nil
}
