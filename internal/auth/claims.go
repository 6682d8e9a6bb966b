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
// claims are checked on every connection; jsonx.FindRepeated). What is not
// valid JSON is left for the decoder to report.
func checkRepeated(payload []byte) error {
	i := jsonx.SkipSpace(payload, 0)
	if i >= len(payload) || payload[i] != '{' {
		return nil
	}
	rep, err := jsonx.FindRepeated(payload, i, maxClaimsDepth)
	switch {
	case err == jsonx.ErrRepeated && rep.Top == nil:
		return authErr(ReasonDuplicateClaim, fmt.Errorf("claim %q is repeated", rep.Name))
	case err == jsonx.ErrRepeated && jsonx.DecodeString(rep.Top) == GrantsClaim:
		return authErr(cutUTF8(ReasonMalformedGrants+": "+repeatedMemberError(rep.Name).Error(), maxReasonLen), nil)
	case err == jsonx.ErrRepeated:
		return authErr(ReasonDuplicateClaim, fmt.Errorf("claim %q: %w", jsonx.DecodeString(rep.Top), repeatedMemberError(rep.Name)))
	case err == jsonx.ErrTooDeep:
		return fmt.Errorf("claims nested deeper than %d", maxClaimsDepth)
	}
	return nil // valid, or for the decoder to refuse
}
