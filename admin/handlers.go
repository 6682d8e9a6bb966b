package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/retention"
)

// listBody is a page of a listing.
type listBody[T any] struct {
	Items      []*T    `json:"items"`
	Total      int     `json:"total"`
	NextCursor *string `json:"next_cursor"`
	PrevCursor *string `json:"prev_cursor"`
}

func pageBody[T any](p *endpoint.Page[T]) listBody[T] {
	b := listBody[T]{Items: p.Items, Total: p.Total}
	if b.Items == nil {
		b.Items = []*T{}
	}
	if p.NextCursor != "" {
		b.NextCursor = &p.NextCursor
	}
	if p.PrevCursor != "" {
		b.PrevCursor = &p.PrevCursor
	}
	return b
}

// itemsBody is a list that is not paged.
type itemsBody[T any] struct {
	Items []*T `json:"items"`
}

// storeError answers an error of the store.
func (s *Server) storeError(w http.ResponseWriter, err error) {
	var le *endpoint.LinkedError
	switch {
	case errors.As(err, &le):
		d := errorDetail{Code: codeLinked, Message: le.Error()}
		for i := range le.Endpoints {
			d.Endpoints = append(d.Endpoints, linkedEndpoint{ID: le.IDs[i], Name: le.Endpoints[i]})
		}
		writeJSON(w, http.StatusConflict, errorBody{Error: d})
	case endpoint.Fields(err) != nil:
		writeError(w, http.StatusBadRequest, codeInvalid, err.Error(), endpoint.Fields(err))
	case errors.Is(err, endpoint.ErrNotFound):
		writeError(w, http.StatusNotFound, codeNotFound, err.Error(), nil)
	case errors.Is(err, endpoint.ErrNameTaken):
		writeError(w, http.StatusConflict, codeNameTaken, err.Error(), []endpoint.FieldError{{Field: "name", Problem: "taken"}})
	case errors.Is(err, endpoint.ErrConflict):
		writeError(w, http.StatusConflict, codeConflict, err.Error()+": read it again, then retry with its revision", nil)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "NATS did not answer in time; retry", nil)
	default:
		s.log.Error("admin API request failed", "err", err)
		writeError(w, http.StatusInternalServerError, codeInternal, err.Error(), nil)
	}
}

// expectedRevision reads If-Match ("7", 7 or W/"7"; * for any) and a
// revision given in the body (0: none): the revision a change expects,
// 0 for none. ok is false once it has answered 400.
func expectedRevision(w http.ResponseWriter, r *http.Request, inBody uint64) (uint64, bool) {
	h := strings.TrimSpace(r.Header.Get("If-Match"))
	var fromHeader uint64
	if h != "" && h != "*" {
		v := strings.Trim(strings.TrimPrefix(h, "W/"), `"`)
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			writeError(w, http.StatusBadRequest, codeBadRequest, "If-Match must be a revision (as the ETag header and the revision member give it)",
				[]endpoint.FieldError{{Field: "If-Match", Problem: "not a revision: " + strconv.Quote(h)}})
			return 0, false
		}
		fromHeader = n
	}
	if fromHeader != 0 && inBody != 0 && fromHeader != inBody {
		writeError(w, http.StatusBadRequest, codeBadRequest, "If-Match and the revision member differ",
			[]endpoint.FieldError{{Field: "revision", Problem: fmt.Sprintf("%d, but If-Match says %d", inBody, fromHeader)}})
		return 0, false
	}
	return max(fromHeader, inBody), true
}

func setETag(w http.ResponseWriter, rev uint64) {
	w.Header().Set("ETag", `"`+strconv.FormatUint(rev, 10)+`"`)
}

// listOptions reads a listing's query parameters; an unknown one is an
// error (a misspelt filter must not list everything).
func listOptions(w http.ResponseWriter, q url.Values, endpoints bool) (endpoint.ListOptions, bool) {
	var o endpoint.ListOptions
	var fields []endpoint.FieldError
	bad := func(field, problem string) {
		fields = append(fields, endpoint.FieldError{Field: field, Problem: problem})
	}
	allowed := []string{"name_prefix", "order_by", "order", "limit", "cursor", "offset"}
	if endpoints {
		allowed = append(allowed, "type", "state", "filter", "rule")
	}
	for _, k := range slices.Sorted(mapKeys(q)) {
		if !slices.Contains(allowed, k) {
			bad(k, "unknown query parameter (want "+strings.Join(allowed, ", ")+")")
			continue
		}
		if len(q[k]) > 1 {
			bad(k, "given more than once")
			continue
		}
		v := q.Get(k)
		switch k {
		case "name_prefix":
			o.NamePrefix = v
		case "order_by":
			o.OrderBy = v
		case "order":
			switch v {
			case "asc":
			case "desc":
				o.Desc = true
			default:
				bad(k, "want asc or desc")
			}
		case "limit", "offset":
			n, err := strconv.Atoi(v)
			if err != nil {
				bad(k, "want a whole number")
			} else if k == "limit" {
				o.Limit = n
				if n == 0 {
					o.Limit = -1 // 0 given: out of range, not the default
				}
			} else {
				o.Offset = n
			}
		case "cursor":
			o.Cursor = v
		case "type":
			o.Type = endpoint.Type(v)
		case "state":
			o.State = endpoint.State(v)
		case "filter":
			o.Filter = v
		case "rule":
			o.Rule = v
		}
	}
	if fields != nil {
		writeError(w, http.StatusBadRequest, codeBadRequest, "bad query parameters", fields)
		return o, false
	}
	return o, true
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// ---- endpoints ----

func (s *Server) listEndpoints(w http.ResponseWriter, r *http.Request, _ []byte) {
	o, ok := listOptions(w, r.URL.Query(), true)
	if !ok {
		return
	}
	p, err := s.store.ListEndpoints(r.Context(), o)
	if err != nil {
		s.storeError(w, err)
		return
	}
	for i, e := range p.Items {
		p.Items[i] = e.Redacted()
	}
	writeJSON(w, http.StatusOK, pageBody(p))
}

// decodeEndpoint reads an endpoint body, answering 400 with every problem
// of form and of value it can find at once.
func decodeEndpoint(w http.ResponseWriter, body []byte) (*endpoint.Endpoint, bool) {
	if notJSON(w, body) {
		return nil, false
	}
	e, err := endpoint.DecodeEndpoint(body)
	if err == nil {
		return e, true
	}
	fields := endpoint.Fields(err)
	// The values that were read may have problems of their own: report
	// them too, but for the fields already reported.
	draft := e.Clone()
	draft.ID = ""
	if draft.Webhook != nil && draft.Webhook.Secret == "" {
		draft.Webhook.Secret = endpoint.GenerateSecret()
	}
	if draft.State == endpoint.StateDisabled {
		draft.DisabledReason = "-"
	}
	draft.ApplyDefaults()
	for _, f := range endpoint.Fields(draft.Validate()) {
		if !reported(fields, f.Field) {
			fields = append(fields, f)
		}
	}
	writeError(w, http.StatusBadRequest, codeInvalid, "invalid endpoint", fields)
	return nil, false
}

// reported reports whether a problem with field, or a member of it or an
// object holding it, is among fields.
func reported(fields []endpoint.FieldError, field string) bool {
	for _, f := range fields {
		if f.Field == field || strings.HasPrefix(field, f.Field+".") || strings.HasPrefix(field, f.Field+"[") ||
			strings.HasPrefix(f.Field, field+".") || strings.HasPrefix(f.Field, field+"[") || f.Field == "" {
			return true
		}
	}
	return false
}

func (s *Server) createEndpoint(w http.ResponseWriter, r *http.Request, body []byte) {
	in, ok := decodeEndpoint(w, body)
	if !ok {
		return
	}
	e, err := s.store.CreateEndpoint(r.Context(), in)
	if err != nil {
		s.storeError(w, err)
		return
	}
	w.Header().Set("Location", "/v1/endpoints/"+e.ID)
	setETag(w, e.Revision)
	// The one answer with the whole secret.
	writeJSON(w, http.StatusCreated, createdEndpoint{Endpoint: e, StartDiscarded: s.startDiscarded(r.Context(), e)})
}

// createdEndpoint is the answer to a creation: the endpoint, and what the
// stream has discarded from its start already.
type createdEndpoint struct {
	*endpoint.Endpoint
	StartDiscarded *startDiscarded `json:"start_discarded,omitempty"`
}

// startDiscarded tells the creator of a webhook endpoint that the stream
// has discarded messages from its start already (internal/retention,
// BeforeStart, as if its consumer were created now): its events among
// them will not be delivered. The endpoint is created all the same (the
// creator may want whatever is still there), and webhook delivery records
// the gap on it (retention_gaps, at_start) as it creates its consumer.
type startDiscarded struct {
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	Messages uint64 `json:"messages"`
	// StreamFirstSeq is the stream's first sequence, where delivery will
	// begin.
	StreamFirstSeq uint64 `json:"stream_first_seq"`
	// UpperBound: the start is a time, and the range is every message
	// discarded, any of which, or none, was stored after it.
	UpperBound bool `json:"upper_bound,omitempty"`
}

// streamStateWithin bounds the read of the stream's state after a creation:
// the endpoint is created already, and its answer should not wait long for
// what webhook delivery tells anyway.
const streamStateWithin = 2 * time.Second

// startDiscarded reads the event stream's state for a webhook endpoint just
// created with a start by sequence or time ("now" is within what the
// stream keeps); nil when nothing was discarded from it, or the state
// cannot be read (then the webhook process tells, as it creates the
// consumer).
func (s *Server) startDiscarded(ctx context.Context, e *endpoint.Endpoint) *startDiscarded {
	if s.cfg.StreamState == nil || e.Webhook == nil || e.Webhook.Start.IsNow() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, streamStateWithin)
	defer cancel()
	st, err := s.cfg.StreamState(ctx)
	if err != nil {
		s.log.Warn("cannot read the event stream's state to tell whether it discarded the new webhook endpoint's start", "endpoint_id", e.ID, "err", err)
		return nil
	}
	start := e.Webhook.Start
	from, to, upper, lost := retention.BeforeStart(start.Seq, start.Time, math.MaxUint64, st)
	if !lost {
		return nil
	}
	return &startDiscarded{FirstSeq: from, LastSeq: to, Messages: to - from + 1, StreamFirstSeq: st.FirstSeq, UpperBound: upper}
}

func (s *Server) getEndpoint(w http.ResponseWriter, r *http.Request, _ []byte) {
	e, err := s.store.GetEndpoint(r.Context(), r.PathValue("id"))
	if err != nil {
		s.storeError(w, err)
		return
	}
	setETag(w, e.Revision)
	writeJSON(w, http.StatusOK, e.Redacted())
}

// writeUpdated answers a changed endpoint: its secret whole if the change
// set a new one, masked otherwise.
func writeUpdated(w http.ResponseWriter, before, after *endpoint.Endpoint) {
	setETag(w, after.Revision)
	if after.Webhook != nil && (before.Webhook == nil || before.Webhook.Secret != after.Webhook.Secret) {
		writeJSON(w, http.StatusOK, after)
		return
	}
	writeJSON(w, http.StatusOK, after.Redacted())
}

func (s *Server) putEndpoint(w http.ResponseWriter, r *http.Request, body []byte) {
	id := r.PathValue("id")
	cur, err := s.store.GetEndpoint(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	in, ok := decodeEndpoint(w, body)
	if !ok {
		return
	}
	if in.ID != "" && in.ID != id {
		writeError(w, http.StatusBadRequest, codeInvalid, "the id is the path's", []endpoint.FieldError{{Field: "id", Problem: "cannot change (it is " + id + ")"}})
		return
	}
	expected, ok := expectedRevision(w, r, in.Revision)
	if !ok {
		return
	}
	in.ID = id
	e, err := s.store.UpdateEndpoint(r.Context(), in, expected)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeUpdated(w, cur, e)
}

// patchEndpoint applies a JSON merge patch (RFC 7396) to the endpoint as
// GET shows it. Without a revision, it is applied to the current value,
// read again when a change gets in first.
func (s *Server) patchEndpoint(w http.ResponseWriter, r *http.Request, body []byte) {
	id := r.PathValue("id")
	patch, err := decodeStrictJSON(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeBadRequest, "the merge patch is not JSON: "+err.Error(), nil)
		return
	}
	pm, isObject := patch.(map[string]any)
	if !isObject {
		writeError(w, http.StatusBadRequest, codeBadRequest, "the merge patch must be a JSON object", nil)
		return
	}
	inBody, ok := patchRevision(w, pm)
	if !ok {
		return
	}
	expected, ok := expectedRevision(w, r, inBody)
	if !ok {
		return
	}
	for attempt := 0; ; attempt++ {
		cur, err := s.store.GetEndpoint(r.Context(), id)
		if err != nil {
			s.storeError(w, err)
			return
		}
		merged, err := mergeInto(cur.Redacted(), pm)
		if err != nil {
			s.storeError(w, err)
			return
		}
		in, ok := decodeEndpoint(w, merged)
		if !ok {
			return
		}
		if in.ID != id {
			writeError(w, http.StatusBadRequest, codeInvalid, "the id is the path's", []endpoint.FieldError{{Field: "id", Problem: "cannot change (it is " + id + ")"}})
			return
		}
		want := expected
		if want == 0 {
			want = cur.Revision
		}
		e, err := s.store.UpdateEndpoint(r.Context(), in, want)
		if errors.Is(err, endpoint.ErrConflict) && expected == 0 && attempt < 5 {
			continue
		}
		if err != nil {
			s.storeError(w, err)
			return
		}
		writeUpdated(w, cur, e)
		return
	}
}

// patchRevision is the revision member of a merge patch, 0 when absent.
func patchRevision(w http.ResponseWriter, pm map[string]any) (uint64, bool) {
	v, ok := pm["revision"]
	if !ok || v == nil {
		delete(pm, "revision")
		return 0, true
	}
	delete(pm, "revision")
	n, err := strconv.ParseUint(fmt.Sprint(v), 10, 64)
	if _, isNum := v.(json.Number); !isNum || err != nil {
		writeError(w, http.StatusBadRequest, codeInvalid, "invalid patch", []endpoint.FieldError{{Field: "revision", Problem: "want a whole number, 0 or more"}})
		return 0, false
	}
	return n, true
}

// mergeInto applies a merge patch to v's JSON.
func mergeInto(v any, patch map[string]any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	target, err := decodeStrictJSON(b)
	if err != nil {
		return nil, err
	}
	return json.Marshal(mergePatch(target, patch))
}

func (s *Server) deleteEndpoint(w http.ResponseWriter, r *http.Request, _ []byte) {
	expected, ok := expectedRevision(w, r, 0)
	if !ok {
		return
	}
	if err := s.store.DeleteEndpoint(r.Context(), r.PathValue("id"), expected); err != nil {
		s.storeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// maxDeleteMany bounds the ids of one deletion.
const maxDeleteMany = 1000

func (s *Server) deleteEndpoints(w http.ResponseWriter, r *http.Request, body []byte) {
	var req struct {
		IDs []string `json:"ids"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.Decode(&struct{}{}) != io.EOF {
		writeError(w, http.StatusBadRequest, codeInvalid, `want {"ids": ["<endpoint id>", …]}`, []endpoint.FieldError{{Field: "ids", Problem: "want an array of endpoint ids"}})
		return
	}
	switch {
	case len(req.IDs) == 0:
		writeError(w, http.StatusBadRequest, codeInvalid, "no ids", []endpoint.FieldError{{Field: "ids", Problem: "required: at least one endpoint id"}})
		return
	case len(req.IDs) > maxDeleteMany:
		writeError(w, http.StatusBadRequest, codeInvalid, "too many ids", []endpoint.FieldError{{Field: "ids", Problem: fmt.Sprintf("at most %d at once", maxDeleteMany)}})
		return
	}
	deleted, notFound, err := s.store.DeleteEndpoints(r.Context(), req.IDs)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string][]string{"deleted": deleted, "not_found": notFound})
}

func (s *Server) pauseEndpoint(w http.ResponseWriter, r *http.Request, _ []byte) {
	s.setState(w, r, endpoint.StatePaused)
}

func (s *Server) resumeEndpoint(w http.ResponseWriter, r *http.Request, _ []byte) {
	s.setState(w, r, endpoint.StateActive)
}

func (s *Server) setState(w http.ResponseWriter, r *http.Request, state endpoint.State) {
	expected, ok := expectedRevision(w, r, 0)
	if !ok {
		return
	}
	e, err := s.store.SetEndpointState(r.Context(), r.PathValue("id"), expected, state, "")
	if err != nil {
		s.storeError(w, err)
		return
	}
	setETag(w, e.Revision)
	writeJSON(w, http.StatusOK, e.Redacted())
}

// ---- filters and rules ----

// kind is filters or rules: the store's operations on each.
type kind struct {
	name, plural string
	decode       func([]byte) (any, error)
	nameOf       func(any) string
	revisionOf   func(any) uint64
	setName      func(any, string)
	get          func(*Server, context.Context, string) (any, error)
	create       func(*Server, context.Context, any) (any, error)
	update       func(*Server, context.Context, any, uint64) (any, error)
	remove       func(*Server, context.Context, string, uint64, bool) error
	list         func(*Server, context.Context, endpoint.ListOptions) (any, error)
	endpoints    func(*Server, context.Context, string) ([]*endpoint.Endpoint, error)
	link, unlink func(*Server, context.Context, string, string, uint64) (*endpoint.Endpoint, error)
	linked       func(*endpoint.Endpoint) []string
}

var filterKind = kind{
	name: "filter", plural: "filters",
	decode:     func(b []byte) (any, error) { return endpoint.DecodeFilter(b) },
	nameOf:     func(v any) string { return v.(*endpoint.Filter).Name },
	revisionOf: func(v any) uint64 { return v.(*endpoint.Filter).Revision },
	setName:    func(v any, n string) { v.(*endpoint.Filter).Name = n },
	get:        func(s *Server, ctx context.Context, n string) (any, error) { return s.store.GetFilter(ctx, n) },
	create: func(s *Server, ctx context.Context, v any) (any, error) {
		return s.store.CreateFilter(ctx, v.(*endpoint.Filter))
	},
	update: func(s *Server, ctx context.Context, v any, rev uint64) (any, error) {
		return s.store.UpdateFilter(ctx, v.(*endpoint.Filter), rev)
	},
	remove: func(s *Server, ctx context.Context, n string, rev uint64, force bool) error {
		return s.store.DeleteFilter(ctx, n, rev, force)
	},
	list: func(s *Server, ctx context.Context, o endpoint.ListOptions) (any, error) {
		p, err := s.store.ListFilters(ctx, o)
		if err != nil {
			return nil, err
		}
		return pageBody(p), nil
	},
	endpoints: func(s *Server, ctx context.Context, n string) ([]*endpoint.Endpoint, error) {
		return s.store.FilterEndpoints(ctx, n)
	},
	link: func(s *Server, ctx context.Context, id, n string, rev uint64) (*endpoint.Endpoint, error) {
		return s.store.LinkFilter(ctx, id, n, rev)
	},
	unlink: func(s *Server, ctx context.Context, id, n string, rev uint64) (*endpoint.Endpoint, error) {
		return s.store.UnlinkFilter(ctx, id, n, rev)
	},
	linked: func(e *endpoint.Endpoint) []string { return e.Filters },
}

var ruleKind = kind{
	name: "rule", plural: "rules",
	decode:     func(b []byte) (any, error) { return endpoint.DecodeRule(b) },
	nameOf:     func(v any) string { return v.(*endpoint.Rule).Name },
	revisionOf: func(v any) uint64 { return v.(*endpoint.Rule).Revision },
	setName:    func(v any, n string) { v.(*endpoint.Rule).Name = n },
	get:        func(s *Server, ctx context.Context, n string) (any, error) { return s.store.GetRule(ctx, n) },
	create: func(s *Server, ctx context.Context, v any) (any, error) {
		return s.store.CreateRule(ctx, v.(*endpoint.Rule))
	},
	update: func(s *Server, ctx context.Context, v any, rev uint64) (any, error) {
		return s.store.UpdateRule(ctx, v.(*endpoint.Rule), rev)
	},
	remove: func(s *Server, ctx context.Context, n string, rev uint64, force bool) error {
		return s.store.DeleteRule(ctx, n, rev, force)
	},
	list: func(s *Server, ctx context.Context, o endpoint.ListOptions) (any, error) {
		p, err := s.store.ListRules(ctx, o)
		if err != nil {
			return nil, err
		}
		return pageBody(p), nil
	},
	endpoints: func(s *Server, ctx context.Context, n string) ([]*endpoint.Endpoint, error) {
		return s.store.RuleEndpoints(ctx, n)
	},
	link: func(s *Server, ctx context.Context, id, n string, rev uint64) (*endpoint.Endpoint, error) {
		return s.store.LinkRule(ctx, id, n, rev)
	},
	unlink: func(s *Server, ctx context.Context, id, n string, rev uint64) (*endpoint.Endpoint, error) {
		return s.store.UnlinkRule(ctx, id, n, rev)
	},
	linked: func(e *endpoint.Endpoint) []string { return e.Rules },
}

// tablesReady answers 503 while the tables a filter or rule is checked
// against are not loaded yet.
func (s *Server) tablesReady(w http.ResponseWriter) bool {
	if s.cfg.TablesReady() {
		return true
	}
	w.Header().Set("Retry-After", "2")
	writeError(w, http.StatusServiceUnavailable, codeUnavailable, "the streamed tables, which filters and rules are checked against, are still loading; retry shortly", nil)
	return false
}

func (s *Server) listNamed(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) {
		o, ok := listOptions(w, r.URL.Query(), false)
		if !ok {
			return
		}
		p, err := k.list(s, r.Context(), o)
		if err != nil {
			s.storeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, p)
	}
}

// notJSON answers 400 bad_request to a body that is not JSON (nor nested
// within what a JSON decoder reads), as the contract's codes say: invalid
// is for a value.
func notJSON(w http.ResponseWriter, body []byte) bool {
	if json.Valid(body) {
		return false
	}
	writeError(w, http.StatusBadRequest, codeBadRequest, "the body is not JSON", nil)
	return true
}

func (s *Server) decodeNamed(w http.ResponseWriter, k kind, body []byte) (any, bool) {
	if notJSON(w, body) {
		return nil, false
	}
	v, err := k.decode(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeInvalid, "invalid "+k.name, endpoint.Fields(err))
		return nil, false
	}
	return v, true
}

func (s *Server) createNamed(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		v, ok := s.decodeNamed(w, k, body)
		if !ok || !s.tablesReady(w) {
			return
		}
		out, err := k.create(s, r.Context(), v)
		if err != nil {
			s.storeError(w, err)
			return
		}
		w.Header().Set("Location", "/v1/"+k.plural+"/"+k.nameOf(out))
		setETag(w, k.revisionOf(out))
		writeJSON(w, http.StatusCreated, out)
	}
}

func (s *Server) getNamed(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) {
		v, err := k.get(s, r.Context(), r.PathValue("name"))
		if err != nil {
			s.storeError(w, err)
			return
		}
		setETag(w, k.revisionOf(v))
		writeJSON(w, http.StatusOK, v)
	}
}

// checkPathName refuses a body whose name is not the path's.
func checkPathName(w http.ResponseWriter, k kind, v any, name string) bool {
	if n := k.nameOf(v); n != "" && n != name {
		writeError(w, http.StatusBadRequest, codeInvalid, "the name is the path's",
			[]endpoint.FieldError{{Field: "name", Problem: "cannot change (it is " + strconv.Quote(name) + "): create a " + k.name + " with the new name, link it, then delete this one"}})
		return false
	}
	k.setName(v, name)
	return true
}

func (s *Server) putNamed(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		name := r.PathValue("name")
		v, ok := s.decodeNamed(w, k, body)
		if !ok || !checkPathName(w, k, v, name) {
			return
		}
		expected, ok := expectedRevision(w, r, k.revisionOf(v))
		if !ok || !s.tablesReady(w) {
			return
		}
		out, err := k.update(s, r.Context(), v, expected)
		if err != nil {
			s.storeError(w, err)
			return
		}
		setETag(w, k.revisionOf(out))
		writeJSON(w, http.StatusOK, out)
	}
}

func (s *Server) patchNamed(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		name := r.PathValue("name")
		patch, err := decodeStrictJSON(body)
		if err != nil {
			writeError(w, http.StatusBadRequest, codeBadRequest, "the merge patch is not JSON: "+err.Error(), nil)
			return
		}
		pm, isObject := patch.(map[string]any)
		if !isObject {
			writeError(w, http.StatusBadRequest, codeBadRequest, "the merge patch must be a JSON object", nil)
			return
		}
		inBody, ok := patchRevision(w, pm)
		if !ok {
			return
		}
		expected, ok := expectedRevision(w, r, inBody)
		if !ok || !s.tablesReady(w) {
			return
		}
		for attempt := 0; ; attempt++ {
			cur, err := k.get(s, r.Context(), name)
			if err != nil {
				s.storeError(w, err)
				return
			}
			merged, err := mergeInto(cur, pm)
			if err != nil {
				s.storeError(w, err)
				return
			}
			v, ok := s.decodeNamed(w, k, merged)
			if !ok || !checkPathName(w, k, v, name) {
				return
			}
			want := expected
			if want == 0 {
				want = k.revisionOf(cur)
			}
			out, err := k.update(s, r.Context(), v, want)
			if errors.Is(err, endpoint.ErrConflict) && expected == 0 && attempt < 5 {
				continue
			}
			if err != nil {
				s.storeError(w, err)
				return
			}
			setETag(w, k.revisionOf(out))
			writeJSON(w, http.StatusOK, out)
			return
		}
	}
}

func (s *Server) deleteNamed(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) {
		q := r.URL.Query()
		force := false
		for key, vals := range q {
			if key != "force" || len(vals) != 1 || vals[0] != "true" && vals[0] != "false" {
				writeError(w, http.StatusBadRequest, codeBadRequest, "bad query parameters",
					[]endpoint.FieldError{{Field: key, Problem: "the only parameter is force=true or force=false"}})
				return
			}
			force = vals[0] == "true"
		}
		expected, ok := expectedRevision(w, r, 0)
		if !ok {
			return
		}
		if err := k.remove(s, r.Context(), r.PathValue("name"), expected, force); err != nil {
			s.storeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) namedEndpoints(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) {
		eps, err := k.endpoints(s, r.Context(), r.PathValue("name"))
		if err != nil {
			s.storeError(w, err)
			return
		}
		out := itemsBody[endpoint.Endpoint]{Items: make([]*endpoint.Endpoint, 0, len(eps))}
		for _, e := range eps {
			out.Items = append(out.Items, e.Redacted())
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// endpointLinks lists the filters (rules) linked to an endpoint, whole.
func (s *Server) endpointLinks(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) {
		e, err := s.store.GetEndpoint(r.Context(), r.PathValue("id"))
		if err != nil {
			s.storeError(w, err)
			return
		}
		items := []any{}
		for _, n := range k.linked(e) {
			v, err := k.get(s, r.Context(), n)
			if errors.Is(err, endpoint.ErrNotFound) {
				continue // a link left by a crash half-way: it matches nothing
			}
			if err != nil {
				s.storeError(w, err)
				return
			}
			items = append(items, v)
		}
		writeJSON(w, http.StatusOK, map[string][]any{"items": items})
	}
}

func (s *Server) link(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) {
		expected, ok := expectedRevision(w, r, 0)
		if !ok {
			return
		}
		id, name := r.PathValue("id"), r.PathValue("name")
		if _, err := s.store.GetEndpoint(r.Context(), id); err != nil {
			s.storeError(w, err)
			return
		}
		if _, err := k.get(s, r.Context(), name); err != nil {
			s.storeError(w, err)
			return
		}
		e, err := k.link(s, r.Context(), id, name, expected)
		if err != nil && endpoint.Fields(err) != nil {
			// Deleted between the look and the link.
			writeError(w, http.StatusNotFound, codeNotFound, "no "+k.name+" is named "+strconv.Quote(name), nil)
			return
		}
		if err != nil {
			s.storeError(w, err)
			return
		}
		setETag(w, e.Revision)
		writeJSON(w, http.StatusOK, e.Redacted())
	}
}

func (s *Server) unlink(k kind) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) {
		expected, ok := expectedRevision(w, r, 0)
		if !ok {
			return
		}
		e, err := k.unlink(s, r.Context(), r.PathValue("id"), r.PathValue("name"), expected)
		if err != nil {
			s.storeError(w, err)
			return
		}
		setETag(w, e.Revision)
		writeJSON(w, http.StatusOK, e.Redacted())
	}
}

func (s *Server) openAPI(w http.ResponseWriter, _ *http.Request, _ []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(openAPIDocument)
}
