package admin_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/tablecast/tablecast/admin"
)

// openAPICheck is an http.RoundTripper that checks every request it sends
// and every answer it gets against the API's OpenAPI document (the one
// the server serves): a request or an answer that does not match fails
// the test. Requests a test sends to be refused (bad input on purpose)
// are marked with badRequest, and only their answers are checked.
type openAPICheck struct {
	t      testing.TB
	doc    *openapi3.T
	router routers.Router
	next   http.RoundTripper

	mu   sync.Mutex
	seen map[string]bool // "operationId status" of every answer checked
	n    int             // answers checked
}

type checkKey int

const (
	badRequestKey checkKey = iota // the request is meant to be refused: check only the answer
	noRouteKey                    // the request has no operation in the document (a 405, a 404 path): check nothing
)

// badRequest marks requests made with ctx as bad on purpose.
func badRequest(ctx context.Context) context.Context {
	return context.WithValue(ctx, badRequestKey, true)
}

// noRoute marks requests made with ctx as naming no operation.
func noRoute(ctx context.Context) context.Context { return context.WithValue(ctx, noRouteKey, true) }

func loadOpenAPI(t testing.TB) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(admin.OpenAPI())
	if err != nil {
		t.Fatalf("load the OpenAPI document: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the OpenAPI document is not valid OpenAPI 3: %v", err)
	}
	doc.Servers = nil // match paths on whatever address the test serves
	return doc
}

func newOpenAPICheck(t testing.TB) *openAPICheck {
	doc := loadOpenAPI(t)
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &openAPICheck{t: t, doc: doc, router: router, next: http.DefaultTransport, seen: map[string]bool{}}
}

func (c *openAPICheck) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if ctx.Value(noRouteKey) != nil {
		return c.next.RoundTrip(req)
	}
	var reqBody []byte
	if req.Body != nil {
		reqBody, _ = io.ReadAll(req.Body)
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		c.t.Errorf("OpenAPI: %s %s is not an operation of the document: %v", req.Method, req.URL.Path, err)
		return c.next.RoundTrip(req)
	}
	vreq := req.Clone(context.Background())
	vreq.Body = io.NopCloser(bytes.NewReader(reqBody))
	in := &openapi3filter.RequestValidationInput{
		Request: vreq, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, SkipSettingDefaults: true, MultiError: true},
	}
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil && ctx.Value(badRequestKey) == nil {
		c.t.Errorf("OpenAPI: request %s %s does not match the document: %v\nbody: %s", req.Method, req.URL, err, reqBody)
	}
	resp, err := c.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	in.Request.Body = io.NopCloser(bytes.NewReader(reqBody))
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body:    io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		c.t.Errorf("OpenAPI: the answer %d to %s %s does not match the document: %v\nbody: %s", resp.StatusCode, req.Method, req.URL, err, body)
	}
	c.mu.Lock()
	c.seen[route.Operation.OperationID+" "+statusClass(resp.StatusCode)] = true
	c.n++
	c.mu.Unlock()
	return resp, nil
}

func statusClass(code int) string {
	if code < 300 {
		return "2xx"
	}
	return http.StatusText(code)
}

// checked returns how many answers were checked.
func (c *openAPICheck) checked() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// unexercised lists the document's operations no successful answer was
// checked for.
func (c *openAPICheck) unexercised() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for path, item := range c.doc.Paths.Map() {
		for method, op := range item.Operations() {
			if !c.seen[op.OperationID+" 2xx"] {
				out = append(out, op.OperationID+" ("+method+" "+path+")")
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestOpenAPICheckRefusesWhatDoesNotMatch makes sure the check is not
// one that cannot fail: answers that stray from the document, in ways a
// server could, are each refused.
func TestOpenAPICheckRefusesWhatDoesNotMatch(t *testing.T) {
	doc := loadOpenAPI(t)
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	good := `{"id":"01JBQ4X5Z6W7Y8V9T0S1R2Q3P4","name":"a","type":"websocket","state":"active","created_at":"2026-12-01T09:00:00Z","updated_at":"2026-12-01T09:00:00Z","revision":3,"filters":[],"rules":[],"websocket":{}}`
	for _, tc := range []struct {
		name   string
		status int
		body   string
		ok     bool
	}{
		{"as documented", 200, good, true},
		{"a member the document lacks", 200, strings.Replace(good, `"rules":[]`, `"rules":[],"extra":1`, 1), false},
		{"a required member missing", 200, strings.Replace(good, `"revision":3,`, ``, 1), false},
		{"a state not in the enum", 200, strings.Replace(good, `"active"`, `"running"`, 1), false},
		{"an id of the wrong form", 200, strings.Replace(good, `01JBQ4X5Z6W7Y8V9T0S1R2Q3P4`, `42`, 1), false},
		{"a status not documented", 418, `{"error":{"code":"internal","message":"teapot"}}`, false},
		{"an error body of another shape", 404, `{"message":"not found"}`, false},
	} {
		req, _ := http.NewRequest("GET", "http://127.0.0.1:8081/v1/endpoints/01JBQ4X5Z6W7Y8V9T0S1R2Q3P4", nil)
		route, params, err := router.FindRoute(req)
		if err != nil {
			t.Fatal(err)
		}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
		h := http.Header{"Content-Type": {"application/json"}}
		err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
			RequestValidationInput: in, Status: tc.status, Header: h, Body: io.NopCloser(strings.NewReader(tc.body)),
			Options: &openapi3filter.Options{IncludeResponseStatus: true},
		})
		if (err == nil) != tc.ok {
			t.Errorf("%s: validation error %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
