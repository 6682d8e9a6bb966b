package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// Client calls the admin API: `tablecast endpoints …` and the tests use
// it.
type Client struct {
	// BaseURL is the API's address, "http://127.0.0.1:8081" (a bare
	// host:port is taken as http).
	BaseURL string
	// Token is sent as Authorization: Bearer; empty sends none.
	Token string
	// HTTP is the client requests go through (nil: one with a 30 s
	// timeout).
	HTTP *http.Client
}

// APIError is an error answer of the API.
type APIError struct {
	Status    int
	Code      string
	Message   string
	Fields    []endpoint.FieldError
	Endpoints []struct{ ID, Name string }
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s: %s", e.Status, e.Code, e.Message)
	for _, f := range e.Fields {
		if !strings.Contains(e.Message, f.Problem) {
			fmt.Fprintf(&b, "\n  %s: %s", f.Field, f.Problem)
		}
	}
	return b.String()
}

// Response is an answer of the API that is not an error.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Revision is the revision of the ETag header, 0 without one.
func (r *Response) Revision() uint64 {
	n, _ := strconv.ParseUint(strings.Trim(r.Header.Get("ETag"), `"`), 10, 64)
	return n
}

var defaultHTTP = &http.Client{Timeout: 30e9}

// Do sends a request: body (when not nil) as JSON, ifMatch (when not 0)
// as If-Match. A 4xx or 5xx answer is an *APIError.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body any, ifMatch uint64) (*Response, error) {
	base := strings.TrimRight(c.BaseURL, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u := base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, ok := body.([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(body); err != nil {
				return nil, fmt.Errorf("encode the request: %w", err)
			}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		ct := "application/json"
		if method == http.MethodPatch {
			ct = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if ifMatch != 0 {
		req.Header.Set("If-Match", `"`+strconv.FormatUint(ifMatch, 10)+`"`)
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: read the answer: %w", base, err)
	}
	if resp.StatusCode >= 400 {
		var eb struct {
			Error struct {
				Code      string                `json:"code"`
				Message   string                `json:"message"`
				Fields    []endpoint.FieldError `json:"fields"`
				Endpoints []struct{ ID, Name string }
			} `json:"error"`
		}
		if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
			return nil, &APIError{Status: resp.StatusCode, Code: "http", Message: strings.TrimSpace(string(data))}
		}
		return nil, &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message, Fields: eb.Error.Fields, Endpoints: eb.Error.Endpoints}
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: data}, nil
}
