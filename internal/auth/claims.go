package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// decodeStrictJSON decodes one JSON value (numbers as json.Number),
// refusing an object that repeats a member name.
func decodeStrictJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeStrict(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the value")
	}
	return v, nil
}

// normalizeClaims gives configured claims the types a token's claims have
// (JSON objects as map[string]any, numbers as json.Number), whatever Go
// types the configuration used.
func normalizeClaims(claims map[string]any) (map[string]any, error) {
	if claims == nil {
		return map[string]any{}, nil
	}
	b, err := json.Marshal(claims)
	if err != nil {
		return nil, err
	}
	return decodeClaims(b)
}

// decodeClaims decodes a JSON object, numbers as json.Number so that no
// integer claim loses digits. A member repeated anywhere is an error
// (checkRepeated): an *Error "duplicate claim" at the top level and
// outside the grants claim, "malformed grants: …" inside it.
func decodeClaims(b []byte) (map[string]any, error) {
	if err := checkRepeated(b); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		return nil, err
	}
	if claims == nil {
		return nil, errors.New("claims are not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the claims object")
	}
	return claims, nil
}

// maxClaimsDepth bounds how deeply a token's claims may nest: far beyond
// any real token, and it bounds the recursion of the check for repeated
// names.
const maxClaimsDepth = 64

// checkRepeated refuses claims that name a member twice in any object, at
// any depth. It reads the bytes once, without decoding them (a token's
// claims are checked on every connection): names are compared as slices of
// the payload, decoded only when they hold escapes or non-ASCII. What is
// not valid JSON is left for the decoder to report.
func checkRepeated(payload []byte) error {
	d := repeatScan{b: payload, names: make([]repeatName, 0, 32)}
	i := jsonx.SkipSpace(payload, 0)
	if i >= len(payload) || payload[i] != '{' {
		return nil
	}
	_, err := d.value(i, 0)
	switch {
	case err == errRepeated && d.claim == nil:
		return authErr(ReasonDuplicateClaim, fmt.Errorf("claim %q is repeated", d.name))
	case err == errRepeated && jsonx.DecodeString(d.claim) == GrantsClaim:
		return authErr(cutUTF8(ReasonMalformedGrants+": "+repeatedMemberError(d.name).Error(), maxReasonLen), nil)
	case err == errRepeated:
		return authErr(ReasonDuplicateClaim, fmt.Errorf("claim %q: %w", jsonx.DecodeString(d.claim), repeatedMemberError(d.name)))
	case err == jsonx.ErrTooDeep:
		return fmt.Errorf("claims nested deeper than %d", maxClaimsDepth)
	}
	return nil // valid, or for the decoder to refuse
}

var errRepeated = errors.New("repeated member")

// repeatScan is checkRepeated's scanner.
type repeatScan struct {
	b     []byte
	names []repeatName  // the names of the objects open, outermost first
	claim []byte        // the top-level member being read; nil when a claim itself is repeated
	name  string        // the repeated name, once found
	skip  jsonx.Scanner // skips scalars
}

// repeatName is a member name as it is in the payload.
type repeatName struct {
	raw   []byte
	plain bool // no escapes, ASCII: its bytes are its value
}

func (n repeatName) equal(o repeatName) bool {
	if n.plain && o.plain {
		return bytes.Equal(n.raw, o.raw)
	}
	return jsonx.DecodeString(n.raw) == jsonx.DecodeString(o.raw)
}

// value reads the value at b[i] and returns the index after it:
// errRepeated when an object in it repeats a name, jsonx.ErrTooDeep, or jsonx.ErrSyntax.
func (d *repeatScan) value(i, depth int) (int, error) {
	b := d.b
	if i >= len(b) {
		return i, jsonx.ErrSyntax
	}
	if b[i] != '{' && b[i] != '[' {
		return d.skip.SkipValue(b, i)
	}
	if depth > maxClaimsDepth {
		return i, jsonx.ErrTooDeep
	}
	open, end := b[i], byte('}')
	if open == '[' {
		end = ']'
	}
	start := len(d.names)
	defer func() { d.names = d.names[:start] }()
	if i = jsonx.SkipSpace(b, i+1); i < len(b) && b[i] == end {
		return i + 1, nil
	}
	for {
		if open == '{' {
			if i >= len(b) || b[i] != '"' {
				return i, jsonx.ErrSyntax
			}
			after, plain, ok := jsonx.ScanString(b, i)
			if !ok {
				return i, jsonx.ErrSyntax
			}
			n := repeatName{raw: b[i+1 : after-1], plain: plain}
			for _, o := range d.names[start:] {
				if o.equal(n) {
					d.name = jsonx.DecodeString(n.raw)
					if depth == 0 {
						d.claim = nil // a claim itself is repeated
					}
					return i, errRepeated
				}
			}
			d.names = append(d.names, n)
			if depth == 0 {
				d.claim = n.raw
			}
			if i = jsonx.SkipSpace(b, after); i >= len(b) || b[i] != ':' {
				return i, jsonx.ErrSyntax
			}
			i = jsonx.SkipSpace(b, i+1)
		}
		var err error
		if i, err = d.value(i, depth+1); err != nil {
			return i, err
		}
		var more bool
		if i, more, err = jsonx.Next(b, i, end); err != nil || !more {
			return i, err
		}
	}
}
