package admin

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tablecast/tablecast/internal/auth"
)

// op is one operation of a route: its handler and what it needs.
type op struct {
	h      func(w http.ResponseWriter, r *http.Request, body []byte)
	write  bool // needs admin "write" (else "read")
	body   bool // takes a JSON body (PUT, POST, PATCH)
	patch  bool // the body is a JSON merge patch
	public bool // answered without a credential (the OpenAPI document)
}

// routes builds the API's routes.
func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	s.handle(mux, "/v1/openapi.json", map[string]op{
		"GET": {h: s.openAPI, public: true},
	})
	s.handle(mux, "/v1/endpoints", map[string]op{
		"GET":  {h: s.listEndpoints},
		"POST": {h: s.createEndpoint, write: true, body: true},
	})
	s.handle(mux, "/v1/endpoints/delete", map[string]op{
		"POST": {h: s.deleteEndpoints, write: true, body: true},
	})
	s.handle(mux, "/v1/endpoints/{id}", map[string]op{
		"GET":    {h: s.getEndpoint},
		"PUT":    {h: s.putEndpoint, write: true, body: true},
		"PATCH":  {h: s.patchEndpoint, write: true, body: true, patch: true},
		"DELETE": {h: s.deleteEndpoint, write: true},
	})
	s.handle(mux, "/v1/endpoints/{id}/pause", map[string]op{
		"POST": {h: s.pauseEndpoint, write: true},
	})
	s.handle(mux, "/v1/endpoints/{id}/resume", map[string]op{
		"POST": {h: s.resumeEndpoint, write: true},
	})
	s.handle(mux, "/v1/endpoints/{id}/dead-letters", map[string]op{
		"GET": {h: s.listDeadLetters},
	})
	s.handle(mux, "/v1/endpoints/{id}/dead-letters/{seq}", map[string]op{
		"GET": {h: s.getDeadLetter},
	})
	s.handle(mux, "/v1/endpoints/{id}/dead-letters/replay", map[string]op{
		"POST": {h: s.replayDeadLetters, write: true, body: true},
	})
	for _, k := range []kind{filterKind, ruleKind} {
		s.handle(mux, "/v1/endpoints/{id}/"+k.plural, map[string]op{
			"GET": {h: s.endpointLinks(k)},
		})
		s.handle(mux, "/v1/endpoints/{id}/"+k.plural+"/{name}", map[string]op{
			"PUT":    {h: s.link(k), write: true},
			"DELETE": {h: s.unlink(k), write: true},
		})
		s.handle(mux, "/v1/"+k.plural, map[string]op{
			"GET":  {h: s.listNamed(k)},
			"POST": {h: s.createNamed(k), write: true, body: true},
		})
		s.handle(mux, "/v1/"+k.plural+"/{name}", map[string]op{
			"GET":    {h: s.getNamed(k)},
			"PUT":    {h: s.putNamed(k), write: true, body: true},
			"PATCH":  {h: s.patchNamed(k), write: true, body: true, patch: true},
			"DELETE": {h: s.deleteNamed(k), write: true},
		})
		s.handle(mux, "/v1/"+k.plural+"/{name}/endpoints", map[string]op{
			"GET": {h: s.namedEndpoints(k)},
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		writeError(w, http.StatusNotFound, codeNotFound, "no such route: the API is under /v1/ (see /v1/openapi.json)", nil)
		s.met.observe("unmatched", http.StatusNotFound, time.Since(start))
	})
	return mux
}

// statusRecorder remembers the status written.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// handle registers a path's operations: method, then credential and
// grant, then body, then the handler, under the request timeout; each
// request counted by route and status.
func (s *Server) handle(mux *http.ServeMux, pattern string, ops map[string]op) {
	methods := make([]string, 0, len(ops))
	for m := range ops {
		methods = append(methods, m)
	}
	slices.Sort(methods)
	allow := strings.Join(methods, ", ")
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		o, ok := ops[r.Method]
		route := r.Method + " " + pattern
		if !ok {
			route = "unmatched"
		}
		defer func() { s.met.observe(route, rec.status, time.Since(start)) }()
		if !ok {
			rec.Header().Set("Allow", allow)
			writeError(rec, http.StatusMethodNotAllowed, codeMethodNotAllowed, r.Method+" is not allowed here (allowed: "+allow+")", nil)
			return
		}
		if !o.public && !s.authorize(rec, r, o.write) {
			return
		}
		var body []byte
		if o.body {
			if body, ok = s.readBody(rec, r, o.patch); !ok {
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		defer cancel()
		o.h(rec, r.WithContext(ctx), body)
	})
}

// authorize authenticates the request's Bearer credential and checks its
// admin grant, answering 401 or 403 when it falls short.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, write bool) bool {
	id := auth.AnonymousIdentity()
	token, bearerOK := bearerToken(r)
	if !bearerOK {
		unauthorized(w, `the Authorization header must be "Bearer <token or API key>"`)
		return false
	}
	if s.cfg.Auth != nil {
		var err error
		id, err = s.cfg.Auth.Authenticate(auth.Credential{Token: token}, time.Now())
		if err != nil {
			reason := err.Error()
			var ae *auth.Error
			if errors.As(err, &ae) {
				reason = ae.Reason // the detail is for the log
			}
			s.log.Debug("admin API request refused", "remote", r.RemoteAddr, "err", err)
			unauthorized(w, "credential refused: "+reason)
			return false
		}
	}
	switch {
	case !id.Grants.CanAdminRead() && token == "":
		unauthorized(w, "no token: send Authorization: Bearer <token or API key> of an identity with the admin grant")
		return false
	case !id.Grants.CanAdminRead():
		writeError(w, http.StatusForbidden, codeForbidden, `the credential's grants do not open the admin API (it needs "admin": ["read"] in the tablecast claim)`, nil)
		return false
	case write && !id.Grants.CanAdminWrite():
		writeError(w, http.StatusForbidden, codeForbidden, `the credential may read but not change (it needs "admin": ["write"] in the tablecast claim)`, nil)
		return false
	}
	return true
}

func unauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="tablecast admin"`)
	writeError(w, http.StatusUnauthorized, codeUnauthorized, msg, nil)
}

// bearerToken returns the token of "Authorization: Bearer <token>", ""
// without the header; ok is false for another form.
func bearerToken(r *http.Request) (token string, ok bool) {
	h := r.Header.Values("Authorization")
	switch {
	case len(h) == 0:
		return "", true
	case len(h) > 1:
		return "", false
	}
	scheme, tok, found := strings.Cut(strings.TrimSpace(h[0]), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// readBody reads a JSON body (a JSON merge patch for patch), answering
// 415 for another type and 413 beyond MaxBodyBytes.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, patch bool) ([]byte, bool) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" && !(patch && mt == "application/merge-patch+json") {
		want := "application/json"
		if patch {
			want += " or application/merge-patch+json"
		}
		writeError(w, http.StatusUnsupportedMediaType, codeUnsupportedType, "the body must be "+want+", with Content-Type saying so", nil)
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusRequestEntityTooLarge, codeTooLarge, "the body is larger than the admin API accepts", nil)
		return nil, false
	case err != nil:
		writeError(w, http.StatusBadRequest, codeBadRequest, "cannot read the body: "+err.Error(), nil)
		return nil, false
	case len(strings.TrimSpace(string(body))) == 0:
		writeError(w, http.StatusBadRequest, codeBadRequest, "a JSON body is required", nil)
		return nil, false
	}
	return body, true
}
