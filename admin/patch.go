package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
)

// mergePatch applies a JSON merge patch (RFC 7396) to target, both as
// decodeStrictJSON returns them: a member whose value is null is
// removed, an object merges member by member, anything else replaces.
func mergePatch(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = mergePatch(tm[k], v)
	}
	return tm
}

// maxJSONDepth bounds the nesting of a patch.
const maxJSONDepth = 64

// decodeStrictJSON decodes one JSON value (numbers as json.Number),
// refusing an object that repeats a member name: a patch that says two
// things of one member says neither.
func decodeStrictJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, errors.New("nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		obj := map[string]any{}
		for dec.More() {
			t, err := dec.Token()
			if err != nil {
				return nil, err
			}
			name, _ := t.(string)
			if _, dup := obj[name]; dup {
				return nil, errors.New("member " + strconv.Quote(name) + " is given twice")
			}
			if obj[name], err = decodeValue(dec, depth+1); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token()
		return obj, err
	case json.Delim('['):
		list := []any{}
		for dec.More() {
			v, err := decodeValue(dec, depth+1)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		_, err := dec.Token()
		return list, err
	}
	return tok, nil
}
