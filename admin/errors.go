package admin

import (
	"encoding/json"
	"net/http"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// Error codes of the API's error answers, the "code" of
// {"error": {"code", "message", "fields"}}.
const (
	codeInvalid          = "invalid"                // 400: a field's value (fields say which)
	codeBadRequest       = "bad_request"            // 400: a request that is not JSON, or a bad header or query parameter
	codeUnauthorized     = "unauthorized"           // 401: no credential, or one refused
	codeForbidden        = "forbidden"              // 403: the credential's grants do not allow it
	codeNotFound         = "not_found"              // 404
	codeMethodNotAllowed = "method_not_allowed"     // 405
	codeConflict         = "conflict"               // 409: a stale revision, or a change got in first
	codeNameTaken        = "name_taken"             // 409: another endpoint, filter or rule has the name
	codeLinked           = "linked"                 // 409: a filter or rule endpoints are linked to
	codeTooLarge         = "too_large"              // 413
	codeUnsupportedType  = "unsupported_media_type" // 415
	codeMisdirected      = "misdirected"            // 421: a Host not served
	codeCrossOrigin      = "cross_origin"           // 403: a browser's request from another site
	codeInternal         = "internal"               // 500
	codeUnavailable      = "unavailable"            // 503: retry after Retry-After seconds
)

// errorBody is every error's answer.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string                `json:"code"`
	Message string                `json:"message"`
	Fields  []endpoint.FieldError `json:"fields,omitempty"`
	// Endpoints are those linked to a filter or rule that is not deleted
	// (code linked).
	Endpoints []linkedEndpoint `json:"endpoints,omitempty"`
}

type linkedEndpoint struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

func writeError(w http.ResponseWriter, status int, code, msg string, fields []endpoint.FieldError) {
	writeJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: msg, Fields: fields}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"cannot encode the answer"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
