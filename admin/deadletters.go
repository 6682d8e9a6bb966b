package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/webhook"
)

// DeadLetters lists and replays the events webhook endpoints gave up on:
// *webhook.DeadLetters.
type DeadLetters interface {
	List(ctx context.Context, endpointID string, after uint64, limit int) ([]webhook.DeadLetter, error)
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
	Seq          uint64          `json:"seq"`
	EventID      string          `json:"event_id"`
	Subject      string          `json:"subject"`
	StreamSeq    uint64          `json:"stream_seq"`
	Endpoint     string          `json:"endpoint"`
	Reason       string          `json:"reason"`
	Attempts     int             `json:"attempts"`
	FirstAttempt time.Time       `json:"first_attempt"`
	DeadAt       time.Time       `json:"dead_lettered_at"`
	Event        json.RawMessage `json:"event"`
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
		writeError(w, http.StatusBadRequest, codeInvalid, "bad query parameters", fields)
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
		ev := json.RawMessage(dl.Body)
		if !json.Valid(ev) {
			ev, _ = json.Marshal(string(dl.Body))
		}
		body.Items = append(body.Items, deadLetterJSON{Seq: dl.Seq, EventID: dl.EventID, Subject: dl.Subject, StreamSeq: dl.StreamSeq,
			Endpoint: dl.Endpoint, Reason: dl.Reason, Attempts: dl.Attempts, FirstAttempt: dl.FirstTry, DeadAt: dl.DeadAt, Event: ev})
	}
	writeJSON(w, http.StatusOK, body)
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
	if err != nil {
		s.log.Error("replay dead letters", "endpoint_id", id, "err", err)
		writeError(w, http.StatusInternalServerError, codeInternal, fmt.Sprintf("replayed %d, then: %v", n, err), nil)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"replayed": n})
}
