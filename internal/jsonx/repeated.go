package jsonx

import (
	"bytes"
	"errors"
)

// ErrRepeated is FindRepeated's error for an object that names a member
// twice.
var ErrRepeated = errors.New("repeated member")

// Repeat is where FindRepeated found a member name given twice.
type Repeat struct {
	// Name is the repeated name, decoded.
	Name string
	// Top is the body (as in the document, between its quotes) of the
	// outermost object's member the repeat is inside; nil when a member of
	// the outermost object is itself repeated, or the outermost value is
	// not an object.
	Top []byte
}

// FindRepeated reads the value at b[i] and reports the first object in it,
// at any depth, that gives one member name twice (names compared as their
// decoded text): ErrRepeated with where it is. Containers nested deeper
// than maxDepth give ErrTooDeep; what is not valid JSON, ErrSyntax, unless
// a repeat came first. It allocates nothing for names without escapes or
// non-ASCII, and compares those as the document's bytes.
func FindRepeated(b []byte, i, maxDepth int) (Repeat, error) {
	r := repeatScan{b: b, max: maxDepth, names: make([]repeatName, 0, 32)}
	_, err := r.value(i, 0)
	return r.found, err
}

// repeatScan is FindRepeated's scanner.
type repeatScan struct {
	b     []byte
	max   int
	names []repeatName // the names of the objects open, outermost first
	top   []byte       // the outermost object's member being read
	found Repeat
	skip  Scanner // skips scalars
}

// repeatName is a member name as it is in the document.
type repeatName struct {
	raw   []byte
	plain bool // no escapes, ASCII: its bytes are its value
}

func (n repeatName) equal(o repeatName) bool {
	if n.plain && o.plain {
		return bytes.Equal(n.raw, o.raw)
	}
	return DecodeString(n.raw) == DecodeString(o.raw)
}

// value reads the value at b[i] and returns the index after it.
func (d *repeatScan) value(i, depth int) (int, error) {
	b := d.b
	if i >= len(b) {
		return i, ErrSyntax
	}
	if b[i] != '{' && b[i] != '[' {
		return d.skip.SkipValue(b, i)
	}
	if depth > d.max {
		return i, ErrTooDeep
	}
	open, end := b[i], byte('}')
	if open == '[' {
		end = ']'
	}
	start := len(d.names)
	defer func() { d.names = d.names[:start] }()
	if i = SkipSpace(b, i+1); i < len(b) && b[i] == end {
		return i + 1, nil
	}
	for {
		if open == '{' {
			if i >= len(b) || b[i] != '"' {
				return i, ErrSyntax
			}
			after, plain, ok := ScanString(b, i)
			if !ok {
				return i, ErrSyntax
			}
			n := repeatName{raw: b[i+1 : after-1], plain: plain}
			for _, o := range d.names[start:] {
				if o.equal(n) {
					d.found = Repeat{Name: DecodeString(n.raw), Top: d.top}
					if depth == 0 {
						d.found.Top = nil // a member of the outermost object
					}
					return i, ErrRepeated
				}
			}
			d.names = append(d.names, n)
			if depth == 0 {
				d.top = n.raw
			}
			if i = SkipSpace(b, after); i >= len(b) || b[i] != ':' {
				return i, ErrSyntax
			}
			i = SkipSpace(b, i+1)
		}
		var err error
		if i, err = d.value(i, depth+1); err != nil {
			return i, err
		}
		var more bool
		if i, more, err = Next(b, i, end); err != nil || !more {
			return i, err
		}
	}
}
