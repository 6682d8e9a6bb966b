package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/stream"
	"github.com/tablecast/tablecast/webhook"
)

// DeadLetters lists, reads and replays the events webhook endpoints gave
// up on: *webhook.DeadLetters.
type DeadLetters interface {
	List(ctx context.Context, endpointID string, after uint64, limit int) ([]webhook.DeadLetter, error)
	// Get returns one dead letter of an endpoint (webhook.ErrNoDeadLetter,
	// webhook.ErrOtherEndpoint), and Body its whole body.
	Get(ctx context.Context, endpointID string, seq uint64) (webhook.DeadLetter, error)
	Body(ctx context.Context, dl webhook.DeadLetter) ([]byte, error)
	Replay(ctx context.Context, endpointID string, seqs ...uint64) (int, error)
}

// Dead-letter pages.
const (
	defaultDeadLetterLimit = 100
	maxDeadLetterLimit     = 1000
	maxReplaySeqs          = 1000
)

// deadLetterJSON is a dead letter as the API shows it.
type deadLetterJSON struct {
	Seq          uint64    `json:"seq"`
	EventID      string    `json:"event_id"`
	Subject      string    `json:"subject"`
	StreamSeq    uint64    `json:"stream_seq"`
	Endpoint     string    `json:"endpoint"`
	Reason       string    `json:"reason"`
	Attempts     int       `json:"attempts"`
	FirstAttempt time.Time `json:"first_attempt"`
	DeadAt       time.Time `json:"dead_lettered_at"`
	// BodyObject says that the event, too large for one NATS message, is
	// held in an object of <STREAM>_DEADLETTER_BODIES: in a list, Event
	// is then the claim of it (a page stays small), and GET of the one
	// dead letter has it whole.
	BodyObject bool            `json:"body_object"`
	Event      json.RawMessage `json:"event"`
}

// deadLetterOf shows dl with event as its event.
func deadLetterOf(dl webhook.DeadLetter, event []byte) deadLetterJSON {
	ev := json.RawMessage(event)
	if !json.Valid(ev) {
		ev, _ = json.Marshal(string(event))
	}
	return deadLetterJSON{Seq: dl.Seq, EventID: dl.EventID, Subject: dl.Subject, StreamSeq: dl.StreamSeq,
		Endpoint: dl.Endpoint, Reason: dl.Reason, Attempts: dl.Attempts, FirstAttempt: dl.FirstTry, DeadAt: dl.DeadAt,
		BodyObject: dl.BodyObject != "", Event: ev}
}

// deadLetterEndpoint checks that the path's endpoint exists and that
// dead letters are kept here; "" when answered.
func (s *Server) deadLetterEndpoint(w http.ResponseWriter, r *http.Request) string {
	if s.cfg.DeadLetters == nil {
		w.Header().Set("Retry-After", "60")
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "this server does not deliver webhooks (TABLECAST_WEBHOOKS=false): it keeps no dead letters", nil)
		return ""
	}
	e, err := s.store.GetEndpoint(r.Context(), r.PathValue("id"))
	if err != nil {
		s.storeError(w, err)
		return ""
	}
	return e.ID
}

func (s *Server) listDeadLetters(w http.ResponseWriter, r *http.Request, _ []byte) {
	q := r.URL.Query()
	var after uint64
	limit := defaultDeadLetterLimit
	var fields []endpoint.FieldError
	// As in every listing, a misspelt or repeated parameter is an error:
	// ignored, it would list from the first dead letter, or from another
	// one than the caller meant.
	for _, k := range slices.Sorted(mapKeys(q)) {
		switch {
		case k != "after" && k != "limit":
			fields = append(fields, endpoint.FieldError{Field: k, Problem: "unknown query parameter (want after, limit)"})
		case len(q[k]) > 1:
			fields = append(fields, endpoint.FieldError{Field: k, Problem: "given more than once"})
		}
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			fields = append(fields, endpoint.FieldError{Field: "after", Problem: "want the seq of a dead letter (a whole number)"})
		}
		after = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxDeadLetterLimit {
			fields = append(fields, endpoint.FieldError{Field: "limit", Problem: fmt.Sprintf("want 1 to %d", maxDeadLetterLimit)})
		}
		limit = n
	}
	if len(fields) > 0 {
		writeError(w, http.StatusBadRequest, codeBadRequest, "bad query parameters", fields)
		return
	}
	id := s.deadLetterEndpoint(w, r)
	if id == "" {
		return
	}
	list, err := s.cfg.DeadLetters.List(r.Context(), id, after, limit+1)
	if err != nil {
		s.log.Error("list dead letters", "endpoint_id", id, "err", err)
		writeError(w, http.StatusInternalServerError, codeInternal, "cannot read the dead letters", nil)
		return
	}
	body := struct {
		Items []deadLetterJSON `json:"items"`
		Next  string           `json:"next,omitempty"`
	}{Items: []deadLetterJSON{}}
	for i, dl := range list {
		if i == limit {
			body.Next = strconv.FormatUint(list[i-1].Seq, 10)
			break
		}
		body.Items = append(body.Items, deadLetterOf(dl, dl.Body))
	}
	writeJSON(w, http.StatusOK, body)
}

// getDeadLetter answers one dead letter with its whole event, read from
// its body object when it has one.
func (s *Server) getDeadLetter(w http.ResponseWriter, r *http.Request, _ []byte) {
	// A seq that is not a whole number names no dead letter, as an
	// unknown one does: the answer is the same 404.
	seq, seqErr := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	id := s.deadLetterEndpoint(w, r)
	if id == "" {
		return
	}
	notFound := func(msg string) {
		writeError(w, http.StatusNotFound, codeNotFound, msg, nil)
	}
	if seqErr != nil {
		notFound(fmt.Sprintf("no dead letter %q: a dead letter's seq is a whole number", r.PathValue("seq")))
		return
	}
	dl, err := s.cfg.DeadLetters.Get(r.Context(), id, seq)
	switch {
	case errors.Is(err, webhook.ErrNoDeadLetter), errors.Is(err, webhook.ErrOtherEndpoint):
		// Another endpoint's dead letter is not shown through this one
		// (nor said to exist).
		notFound(fmt.Sprintf("endpoint %s has no dead letter %d (replayed, or never one of its own)", id, seq))
		return
	case err != nil:
		s.log.Error("read a dead letter", "endpoint_id", id, "seq", seq, "err", err)
		writeError(w, http.StatusInternalServerError, codeInternal, "cannot read the dead letter", nil)
		return
	}
	body, err := s.cfg.DeadLetters.Body(r.Context(), dl)
	switch {
	case errors.Is(err, stream.ErrClaimGone), errors.Is(err, webhook.ErrBodyClaim):
		// The record is there but its body cannot be had: deleted by
		// hand, or a record written by another hand whose claim is not
		// its own object's. The list still shows the record.
		notFound(fmt.Sprintf("the body of dead letter %d cannot be read: %v", seq, err))
		return
	case err != nil:
		s.log.Error("read the body of a dead letter", "endpoint_id", id, "seq", seq, "object", dl.BodyObject, "err", err)
		writeError(w, http.StatusInternalServerError, codeInternal, "cannot read the dead letter's body", nil)
		return
	}
	writeJSON(w, http.StatusOK, deadLetterOf(dl, body))
}

func (s *Server) replayDeadLetters(w http.ResponseWriter, r *http.Request, body []byte) {
	var req struct {
		Seqs []uint64 `json:"seqs"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.Decode(&struct{}{}) != io.EOF {
		writeError(w, http.StatusBadRequest, codeInvalid, `want {"seqs": [<dead letter seq>, …]}, or {} for every one`, []endpoint.FieldError{{Field: "seqs", Problem: "want an array of dead letter seqs"}})
		return
	}
	if len(req.Seqs) > maxReplaySeqs {
		writeError(w, http.StatusBadRequest, codeInvalid, "too many seqs", []endpoint.FieldError{{Field: "seqs", Problem: fmt.Sprintf("at most %d at once", maxReplaySeqs)}})
		return
	}
	id := s.deadLetterEndpoint(w, r)
	if id == "" {
		return
	}
	n, err := s.cfg.DeadLetters.Replay(r.Context(), id, req.Seqs...)
	if errors.Is(err, webhook.ErrOtherEndpoint) {
		writeError(w, http.StatusBadRequest, codeInvalid, fmt.Sprintf("replayed %d, then: %v", n, err), []endpoint.FieldError{{Field: "seqs", Problem: err.Error()}})
		return
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// Those queued stay queued: a call again goes on with the rest.
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, fmt.Sprintf("replayed %d before the request's time ran out; call again to replay the rest", n), nil)
		return
	}
	if err != nil {
		s.log.Error("replay dead letters", "endpoint_id", id, "err", err)
		writeError(w, http.StatusInternalServerError, codeInternal, fmt.Sprintf("replayed %d, then: %v", n, err), nil)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"replayed": n})
}
