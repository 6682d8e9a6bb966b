package endpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tablecast/tablecast/internal/jsonx"
)

// Decoding: the JSON of an endpoint, filter or rule as a client writes it,
// read member by member so that every problem is found at once, each with
// its field's path. A member that is absent or null takes its default. A
// member the model does not have, or one given twice, is an error: a
// misspelt "timout" must not silently leave the default.

// DecodeEndpoint reads an endpoint's JSON. Every problem of form (a member
// of the wrong type, an unknown or repeated member) is in the returned
// *ValidationError, with the endpoint as far as it could be read; the
// store checks the values (Validate) when it writes.
func DecodeEndpoint(data []byte) (*Endpoint, error) {
	var errs fieldErrors
	d := decoder{errs: &errs}
	e := &Endpoint{}
	d.object("", data, map[string]func(string, json.RawMessage){
		"id":              func(p string, v json.RawMessage) { e.ID = d.str(p, v) },
		"name":            func(p string, v json.RawMessage) { e.Name = d.str(p, v) },
		"type":            func(p string, v json.RawMessage) { e.Type = Type(d.str(p, v)) },
		"state":           func(p string, v json.RawMessage) { e.State = State(d.str(p, v)) },
		"disabled_reason": func(p string, v json.RawMessage) { e.DisabledReason = d.str(p, v) },
		"created_at":      func(p string, v json.RawMessage) { e.CreatedAt = d.time(p, v) },
		"updated_at":      func(p string, v json.RawMessage) { e.UpdatedAt = d.time(p, v) },
		"revision":        func(p string, v json.RawMessage) { e.Revision = d.uint(p, v) },
		"filters":         func(p string, v json.RawMessage) { e.Filters = d.strList(p, v) },
		"rules":           func(p string, v json.RawMessage) { e.Rules = d.strList(p, v) },
		"webhook":         func(p string, v json.RawMessage) { e.Webhook = d.webhook(p, v) },
		"websocket": func(p string, v json.RawMessage) {
			e.WebSocket = &WebSocket{}
			d.object(p, v, map[string]func(string, json.RawMessage){})
		},
		// Set by tablecast only: accepted, so that an endpoint read can be
		// sent back changed, and ignored.
		"retention_gaps":  func(string, json.RawMessage) {},
		"start_discarded": func(string, json.RawMessage) {},
	})
	return e, errs.err()
}

// DecodeFilter reads a filter's JSON, as DecodeEndpoint does.
func DecodeFilter(data []byte) (*Filter, error) {
	var errs fieldErrors
	d := decoder{errs: &errs}
	f := &Filter{}
	d.object("", data, map[string]func(string, json.RawMessage){
		"name":        func(p string, v json.RawMessage) { f.Name = d.str(p, v) },
		"description": func(p string, v json.RawMessage) { f.Description = d.str(p, v) },
		"tables":      func(p string, v json.RawMessage) { f.Tables = d.strList(p, v) },
		"operations":  func(p string, v json.RawMessage) { f.Operations = d.strList(p, v) },
		"where":       func(p string, v json.RawMessage) { f.Where = d.where(p, v) },
		"select":      func(p string, v json.RawMessage) { f.Select = d.strList(p, v) },
		"created_at":  func(p string, v json.RawMessage) { f.CreatedAt = d.time(p, v) },
		"updated_at":  func(p string, v json.RawMessage) { f.UpdatedAt = d.time(p, v) },
		"revision":    func(p string, v json.RawMessage) { f.Revision = d.uint(p, v) },
	})
	return f, errs.err()
}

// DecodeRule reads a rule's JSON, as DecodeEndpoint does.
func DecodeRule(data []byte) (*Rule, error) {
	var errs fieldErrors
	d := decoder{errs: &errs}
	r := &Rule{}
	d.object("", data, map[string]func(string, json.RawMessage){
		"name":        func(p string, v json.RawMessage) { r.Name = d.str(p, v) },
		"description": func(p string, v json.RawMessage) { r.Description = d.str(p, v) },
		"table":       func(p string, v json.RawMessage) { r.Table = d.str(p, v) },
		"operations":  func(p string, v json.RawMessage) { r.Operations = d.strList(p, v) },
		"where":       func(p string, v json.RawMessage) { r.Where = d.where(p, v) },
		"changed":     func(p string, v json.RawMessage) { r.Changed = d.strList(p, v) },
		"old":         func(p string, v json.RawMessage) { r.Old = d.where(p, v) },
		"new":         func(p string, v json.RawMessage) { r.New = d.where(p, v) },
		"select":      func(p string, v json.RawMessage) { r.Select = d.strList(p, v) },
		"created_at":  func(p string, v json.RawMessage) { r.CreatedAt = d.time(p, v) },
		"updated_at":  func(p string, v json.RawMessage) { r.UpdatedAt = d.time(p, v) },
		"revision":    func(p string, v json.RawMessage) { r.Revision = d.uint(p, v) },
	})
	return r, errs.err()
}

// decoder reads JSON values into model fields, recording each problem
// with its path.
type decoder struct{ errs *fieldErrors }

func join(path, member string) string {
	if path == "" {
		return member
	}
	return path + "." + member
}

func isNull(v json.RawMessage) bool {
	v = bytes.TrimSpace(v)
	return len(v) == 0 || string(v) == "null"
}

// member is one member of an object, in the order written.
type member struct {
	name  string
	value json.RawMessage
}

// members reads a JSON object's members in order; an error when data is
// not one object, or repeats a name.
func members(data []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, errors.New("not valid JSON")
	}
	if tok != json.Delim('{') {
		return nil, errors.New("want a JSON object")
	}
	var out []member
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errors.New("not valid JSON")
		}
		name, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, errors.New("not valid JSON")
		}
		if seen[name] {
			return nil, errors.New("member " + strconv.Quote(name) + " is given twice")
		}
		seen[name] = true
		out = append(out, member{name, v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, errors.New("not valid JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return out, nil
}

// object reads an object at path, calling the field's function for each
// member that is not null; unknown members are errors.
func (d decoder) object(path string, data []byte, fields map[string]func(string, json.RawMessage)) bool {
	ms, err := members(data)
	if err != nil {
		field := path
		d.errs.add(field, "%s", err.Error())
		return false
	}
	for _, m := range ms {
		p := join(path, m.name)
		f, ok := fields[m.name]
		switch {
		case !ok:
			d.errs.add(p, "unknown member")
		case !isNull(m.value):
			f(p, m.value)
		}
	}
	return true
}

func (d decoder) str(path string, v json.RawMessage) string {
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		d.errs.add(path, "want a string")
		return ""
	}
	return s
}

func (d decoder) bool(path string, v json.RawMessage) bool {
	var b bool
	if err := json.Unmarshal(v, &b); err != nil {
		d.errs.add(path, "want true or false")
	}
	return b
}

// int reads a whole number; out of int's range or not whole is an error.
func (d decoder) int(path string, v json.RawMessage) int {
	n, ok := wholeNumber(v)
	if !ok || n < math.MinInt32 || n > math.MaxInt32 {
		d.errs.add(path, "want a whole number")
		return 0
	}
	return int(n)
}

func (d decoder) uint(path string, v json.RawMessage) uint64 {
	n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
	if err != nil {
		d.errs.add(path, "want a whole number, 0 or more")
		return 0
	}
	return n
}

func wholeNumber(v json.RawMessage) (int64, bool) {
	s := string(bytes.TrimSpace(v))
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 || len(s) == 0 || s[0] == '"' {
		return 0, false
	}
	return int64(f), true
}

func (d decoder) time(path string, v json.RawMessage) time.Time {
	s := d.str(path, v)
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		d.errs.add(path, "want an RFC 3339 time, such as 2026-12-01T09:00:00Z")
	}
	return t
}

func (d decoder) duration(path string, v json.RawMessage) Duration {
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		d.errs.add(path, `want a duration with a unit, such as "10s"`)
		return 0
	}
	t, err := parseDuration(s)
	if err != nil {
		d.errs.add(path, "%s", err.Error())
		return 0
	}
	if t == 0 {
		// 0 would mean "the default" to ApplyDefaults: say so rather than
		// turn a 0s into 10s.
		d.errs.add(path, "must be more than 0 (leave it out for the default)")
	}
	return Duration(t)
}

// strList reads an array of strings; each element that is not a string is
// an error of its own.
func (d decoder) strList(path string, v json.RawMessage) []string {
	var raw []json.RawMessage
	if err := json.Unmarshal(v, &raw); err != nil {
		d.errs.add(path, "want an array of strings")
		return nil
	}
	out := make([]string, 0, len(raw))
	for i, e := range raw {
		var s string
		if err := json.Unmarshal(e, &s); err != nil {
			d.errs.add(path+"["+strconv.Itoa(i)+"]", "want a string")
			continue
		}
		out = append(out, s)
	}
	return out
}

// where keeps a where object as written (compacted); it must be an object
// (Validate compiles it).
func (d decoder) where(path string, v json.RawMessage) json.RawMessage {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || v[0] != '{' {
		d.errs.add(path, `want a where object, such as {"status": {"eq": "paid"}}`)
		return nil
	}
	if len(v) > maxRawJSONFieldBytes {
		d.errs.add(path, "longer than %d bytes", maxRawJSONFieldBytes)
		return nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, v); err != nil {
		d.errs.add(path, "not valid JSON")
		return nil
	}
	// A member given twice would be shown as one (the last, as most JSON
	// readers keep) and applied as both, ANDed: refused, as everywhere.
	if rep, err := jsonx.FindRepeated(buf.Bytes(), 0, jsonx.MaxDepth); err == jsonx.ErrRepeated {
		p := path
		if rep.Top != nil {
			p = join(path, jsonx.DecodeString(rep.Top))
		}
		d.errs.add(p, "member %q is given twice", rep.Name)
		return nil
	}
	return buf.Bytes()
}

func (d decoder) webhook(path string, v json.RawMessage) *Webhook {
	w := &Webhook{}
	d.object(path, v, map[string]func(string, json.RawMessage){
		"url":     func(p string, v json.RawMessage) { w.URL = d.str(p, v) },
		"method":  func(p string, v json.RawMessage) { w.Method = d.str(p, v) },
		"headers": func(p string, v json.RawMessage) { w.Headers = d.headers(p, v) },
		"secret":  func(p string, v json.RawMessage) { w.Secret = d.str(p, v) },
		"timeout": func(p string, v json.RawMessage) { w.Timeout = d.duration(p, v) },
		"concurrency": func(p string, v json.RawMessage) {
			if w.Concurrency = d.int(p, v); w.Concurrency == 0 {
				w.Concurrency = -1 // 0 given: Validate says it is out of range
			}
		},
		"batch": func(p string, v json.RawMessage) {
			if w.Batch = d.int(p, v); w.Batch == 0 {
				w.Batch = -1
			}
		},
		"batch_bytes": func(p string, v json.RawMessage) {
			if w.BatchBytes = d.int(p, v); w.BatchBytes == 0 {
				w.BatchBytes = -1
			}
		},
		"retry":           func(p string, v json.RawMessage) { w.Retry = d.retry(p, v) },
		"parallel_by_key": func(p string, v json.RawMessage) { w.ParallelByKey = d.bool(p, v) },
		"start":           func(p string, v json.RawMessage) { w.Start = d.start(p, v) },
	})
	return w
}

func (d decoder) retry(path string, v json.RawMessage) Retry {
	var r Retry
	d.object(path, v, map[string]func(string, json.RawMessage){
		"max_age": func(p string, v json.RawMessage) { r.MaxAge = d.duration(p, v) },
		"initial": func(p string, v json.RawMessage) { r.Initial = d.duration(p, v) },
		"max":     func(p string, v json.RawMessage) { r.Max = d.duration(p, v) },
	})
	return r
}

// headers reads an object of header names to string values.
func (d decoder) headers(path string, v json.RawMessage) map[string]string {
	ms, err := members(v)
	if err != nil {
		d.errs.add(path, "%s (want an object of header names to values)", err.Error())
		return nil
	}
	out := make(map[string]string, len(ms))
	for _, m := range ms {
		p := path + "." + m.name
		var s string
		if err := json.Unmarshal(m.value, &s); err != nil {
			d.errs.add(p, "want a string")
			continue
		}
		out[m.name] = s
	}
	return out
}

// start reads {"from": "now"}, {"from": {"seq": N}} or {"from": {"time":
// "RFC 3339"}}.
func (d decoder) start(path string, v json.RawMessage) Start {
	var s Start
	const want = `want {"from": "now"}, {"from": {"seq": N}} or {"from": {"time": "2026-12-01T09:00:00Z"}}`
	ms, err := members(v)
	if err != nil || len(ms) != 1 || ms[0].name != "from" {
		d.errs.add(path, want)
		return s
	}
	from := bytes.TrimSpace(ms[0].value)
	p := join(path, "from")
	if len(from) > 0 && from[0] == '"' {
		if d.str(p, from) != "now" {
			d.errs.add(p, want)
		}
		return s
	}
	fm, err := members(from)
	if err != nil || len(fm) != 1 {
		d.errs.add(p, want)
		return s
	}
	switch fm[0].name {
	case "seq":
		n, ok := wholeNumber(fm[0].value)
		if !ok || n < 1 {
			d.errs.add(p+".seq", "want a stream sequence, 1 or more")
			return s
		}
		s.Seq = uint64(n)
	case "time":
		var str string
		t, err := time.Time{}, json.Unmarshal(fm[0].value, &str)
		if err == nil {
			t, err = time.Parse(time.RFC3339Nano, str)
		}
		if err != nil {
			d.errs.add(p+".time", "want an RFC 3339 time, such as 2026-12-01T09:00:00Z")
			return s
		}
		s.Time = t.UTC()
	default:
		d.errs.add(p, want)
	}
	return s
}

// nameOK reports whether s is a valid name: 1 to MaxNameLen characters of
// [A-Za-z0-9._-], but not "." or "..": a name is a segment of the URLs
// that address the item (/v1/filters/<name>, /ws/endpoints/<name>), and
// HTTP servers and clients resolve those two as the current and the
// parent path, so that no request could read, change or delete it.
func nameOK(s string) bool {
	if s == "" || len(s) > MaxNameLen || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidName reports whether s may name an endpoint, filter or rule.
func ValidName(s string) bool { return nameOK(s) }

// nameProblem says what is wrong with a name.
func nameProblem(s string) string {
	switch {
	case s == "":
		return "required: 1 to 100 characters of A-Z a-z 0-9 . _ -"
	case len(s) > MaxNameLen:
		return "longer than 100 characters"
	case s == "." || s == "..":
		return "cannot be " + strconv.Quote(s) + ": it is a segment of the item's URL, where it means the current or the parent path"
	case !nameOK(s):
		return "may hold only A-Z a-z 0-9 . _ - (" + strconv.Quote(short(s)) + ")"
	}
	return ""
}

// short cuts s for a message.
func short(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// lowerASCII is strings.ToLower for header names.
func lowerASCII(s string) string { return strings.ToLower(s) }
