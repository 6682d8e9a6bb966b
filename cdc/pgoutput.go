package cdc

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tablecast/tablecast/schema"
)

// This file decodes pgoutput's row messages (Insert, Update, Delete), which
// are nearly all of the stream. pglogrepl decodes every other message; for
// these three it would allocate a struct per column and copy each value, so
// they get a scanner of their own whose values alias the received buffer.
//
// Formats (protocol version 1, PostgreSQL's "Logical Replication Message
// Formats"):
//
//	Insert  'I' relid:uint32 'N' tuple
//	Update  'U' relid:uint32 ['K' tuple | 'O' tuple] 'N' tuple
//	Delete  'D' relid:uint32 ('K' | 'O') tuple
//	tuple   ncols:uint16 { 'n' | 'u' | ('t'|'b') len:uint32 bytes }

var errShort = errors.New("message truncated")

// rowMessage is one decoded Insert, Update or Delete. Its slices are reused
// from message to message and alias the buffer they were decoded from.
type rowMessage struct {
	kind       byte // 'I', 'U', 'D'
	relationID uint32
	old        []schema.Value // nil when absent
	oldKeyOnly bool           // old is a 'K' tuple
	new        []schema.Value // nil for Delete

	oldBuf, newBuf []schema.Value
}

// decode parses src (a whole pgoutput message starting with its type byte)
// into m.
func (m *rowMessage) decode(src []byte) error {
	if len(src) < 6 {
		return fmt.Errorf("decode %q message: %w", src[:min(len(src), 1)], errShort)
	}
	m.kind = src[0]
	m.relationID = binary.BigEndian.Uint32(src[1:5])
	m.old, m.new, m.oldKeyOnly = nil, nil, false
	if m.newBuf == nil {
		// Non-nil even for a table without columns, whose tuples are
		// empty but present.
		m.newBuf, m.oldBuf = make([]schema.Value, 0, 16), make([]schema.Value, 0, 16)
	}
	p := src[5:]
	var err error
	switch m.kind {
	case 'I':
		if p[0] != 'N' {
			return fmt.Errorf("decode insert: tuple tag %q, want 'N'", p[0])
		}
		m.newBuf, p, err = decodeTuple(p[1:], m.newBuf[:0])
		m.new = m.newBuf
	case 'U':
		if p[0] == 'K' || p[0] == 'O' {
			m.oldKeyOnly = p[0] == 'K'
			m.oldBuf, p, err = decodeTuple(p[1:], m.oldBuf[:0])
			if err != nil {
				return fmt.Errorf("decode update old tuple: %w", err)
			}
			m.old = m.oldBuf
		}
		if len(p) == 0 || p[0] != 'N' {
			return errors.New("decode update: missing new tuple")
		}
		m.newBuf, p, err = decodeTuple(p[1:], m.newBuf[:0])
		m.new = m.newBuf
	case 'D':
		if p[0] != 'K' && p[0] != 'O' {
			return fmt.Errorf("decode delete: tuple tag %q, want 'K' or 'O'", p[0])
		}
		m.oldKeyOnly = p[0] == 'K'
		m.oldBuf, p, err = decodeTuple(p[1:], m.oldBuf[:0])
		m.old = m.oldBuf
	default:
		return fmt.Errorf("decode row message: unexpected type %q", m.kind)
	}
	if err != nil {
		return fmt.Errorf("decode %c tuple: %w", m.kind, err)
	}
	if len(p) != 0 {
		return fmt.Errorf("decode %c message: %d trailing bytes", m.kind, len(p))
	}
	return nil
}

// decodeTuple appends the columns of one TupleData to dst and returns the
// rest of src.
func decodeTuple(src []byte, dst []schema.Value) ([]schema.Value, []byte, error) {
	if len(src) < 2 {
		return dst, nil, errShort
	}
	n := int(binary.BigEndian.Uint16(src))
	src = src[2:]
	for i := 0; i < n; i++ {
		if len(src) < 1 {
			return dst, nil, errShort
		}
		kind := src[0]
		src = src[1:]
		switch kind {
		case 'n', 'u':
			dst = append(dst, schema.Value{Kind: kind})
		case 't', 'b':
			if len(src) < 4 {
				return dst, nil, errShort
			}
			l := int(binary.BigEndian.Uint32(src))
			src = src[4:]
			if l < 0 || l > len(src) {
				return dst, nil, errShort
			}
			if kind == 'b' {
				// The reader never asks for binary mode; a binary value
				// would be misread as text, so refuse it loudly.
				return dst, nil, errors.New("binary column value received; binary mode is not supported")
			}
			dst = append(dst, schema.Value{Kind: schema.KindText, Data: src[:l:l]})
			src = src[l:]
		default:
			return dst, nil, fmt.Errorf("unknown column kind %q", kind)
		}
	}
	return dst, src, nil
}
