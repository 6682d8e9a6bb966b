package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/admin"
	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/auth/authtest"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/webhook"
)

// jwtSecret signs the tests' tokens (HS256).
const jwtSecret = "an HS256 secret of the admin tests, 32 bytes or more"

// API keys of the tests, and their grants.
const (
	writerKey = "tck_admin-tests-writer-key-0123456789abcdefghij"
	readerKey = "tck_admin-tests-reader-key-0123456789abcdefghij"
)

// harness is an admin API on a real NATS, and clients that check every
// request and answer against the OpenAPI document.
type harness struct {
	t     testing.TB
	nats  *natstest.Server
	store *endpoint.Store
	srv   *admin.Server
	base  string
	check *openAPICheck
	reg   *prometheus.Registry
	dl    *webhook.DeadLetters
	js    jetstream.JetStream

	writer, reader, noAdmin string // tokens
}

func token(t testing.TB, claims map[string]any) string {
	return authtest.SignToken(t, jose.HS256, []byte(jwtSecret), "", claims)
}

// start runs an admin API; mod changes its configuration first.
func start(t *testing.T, mod func(*admin.Config)) *harness {
	t.Helper()
	n := natstest.Start(t)
	return startOn(t, n, n.JS, mod)
}

// startOn runs an admin API on a NATS server, through js (another
// connection is another tablecast process).
func startOn(t *testing.T, n *natstest.Server, js jetstream.JetStream, mod func(*admin.Config)) *harness {
	t.Helper()
	return startWith(t, n, js, endpoint.Config{}, mod)
}

// startWith runs an admin API on a store opened with scfg.
func startWith(t testing.TB, n *natstest.Server, js jetstream.JetStream, scfg endpoint.Config, mod func(*admin.Config)) *harness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := endpoint.Open(ctx, js, scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	authn, err := auth.New(auth.Config{JWTSecret: []byte(jwtSecret), APIKeys: []auth.APIKey{
		{Name: "ops", Hash: auth.HashAPIKey(writerKey), Claims: map[string]any{"tablecast": map[string]any{"admin": []any{"write"}}}},
		{Name: "dashboard", Hash: auth.HashAPIKey(readerKey), Claims: map[string]any{"tablecast": map[string]any{"admin": []any{"read"}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, nats: n, store: store, check: newOpenAPICheck(t), reg: prometheus.NewRegistry()}
	dl, err := webhook.OpenDeadLetters(ctx, js, "TABLECAST", "tablecast", 1)
	if err != nil {
		t.Fatal(err)
	}
	h.dl, h.js = dl, js
	cfg := admin.Config{Store: store, Auth: authn, Registerer: h.reg, DeadLetters: dl}
	if mod != nil {
		mod(&cfg)
	}
	if h.srv, err = admin.New(cfg); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	h.base = "http://" + ln.Addr().String()
	h.writer = token(t, map[string]any{"sub": "operator", "tablecast": map[string]any{"admin": []any{"read", "write"}}})
	h.reader = token(t, map[string]any{"sub": "viewer", "tablecast": map[string]any{"admin": []any{"read"}}})
	h.noAdmin = token(t, map[string]any{"sub": "app", "tablecast": map[string]any{"tables": map[string]any{"*": []any{"*"}}}})
	return h
}

// client calls the API with a token, through the OpenAPI check.
func (h *harness) client(tok string) *admin.Client {
	return &admin.Client{BaseURL: h.base, Token: tok, HTTP: &http.Client{Transport: h.check, Timeout: 30 * time.Second}}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// call sends a request as the writer and decodes a 2xx answer into out
// (nil: ignore it); any error fails the test.
func (h *harness) call(ctx context.Context, method, path string, q url.Values, body any, ifMatch uint64, out any) *admin.Response {
	h.t.Helper()
	resp, err := h.client(h.writer).Do(ctx, method, path, q, body, ifMatch)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	if out != nil {
		if err := json.Unmarshal(resp.Body, out); err != nil {
			h.t.Fatalf("%s %s: decode %s: %v", method, path, resp.Body, err)
		}
	}
	return resp
}

// fail sends a request meant to be refused, as the writer, and returns
// the API's error.
func (h *harness) fail(ctx context.Context, method, path string, q url.Values, body any, ifMatch uint64) *admin.APIError {
	h.t.Helper()
	return h.failAs(ctx, h.writer, method, path, q, body, ifMatch)
}

func (h *harness) failAs(ctx context.Context, tok, method, path string, q url.Values, body any, ifMatch uint64) *admin.APIError {
	h.t.Helper()
	resp, err := h.client(tok).Do(badRequest(ctx), method, path, q, body, ifMatch)
	var ae *admin.APIError
	if !errors.As(err, &ae) {
		h.t.Fatalf("%s %s %s: want an error answer, got %v %v", method, path, body, resp, err)
	}
	return ae
}

// endpointJSON is the API's endpoint, decoded.
type endpointJSON struct {
	ID             string          `json:"id"`
	Name           string          `json:"name"`
	Type           string          `json:"type"`
	State          string          `json:"state"`
	DisabledReason string          `json:"disabled_reason"`
	CreatedAt      time.Time       `json:"created_at"`
	UpdatedAt      time.Time       `json:"updated_at"`
	Revision       uint64          `json:"revision"`
	Filters        []string        `json:"filters"`
	Rules          []string        `json:"rules"`
	Webhook        json.RawMessage `json:"webhook"`
}

type pageJSON struct {
	Items      []endpointJSON `json:"items"`
	Total      int            `json:"total"`
	NextCursor *string        `json:"next_cursor"`
	PrevCursor *string        `json:"prev_cursor"`
}

// secondProcess connects another client to the same NATS, as another
// tablecast process would.
func secondProcess(t *testing.T, n *natstest.Server) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(n.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// lastSeqs returns the last sequence of each bucket's stream: what was
// written, in any form.
func lastSeqs(t *testing.T, js jetstream.JetStream) [3]uint64 {
	t.Helper()
	var out [3]uint64
	for i, b := range []string{"TABLECAST_ENDPOINTS", "TABLECAST_FILTERS", "TABLECAST_RULES"} {
		s, err := js.Stream(context.Background(), "KV_"+b)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = s.CachedInfo().State.LastSeq
		info, err := s.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out[i] = info.State.LastSeq
	}
	return out
}

// failIfMatch is fail with an If-Match header of any form (ifMatch, when
// not empty).
func (h *harness) failIfMatch(ctx context.Context, ifMatch, method, path string, q url.Values, body any) *admin.APIError {
	h.t.Helper()
	c := h.client(h.writer)
	if ifMatch != "" {
		c.HTTP = &http.Client{Transport: setHeader{h.check, "If-Match", ifMatch}}
	}
	resp, err := c.Do(badRequest(ctx), method, path, q, body, 0)
	var ae *admin.APIError
	switch {
	case err == nil:
		return &admin.APIError{Status: resp.Status, Code: "accepted", Message: string(resp.Body)}
	case !errors.As(err, &ae):
		h.t.Fatalf("%s %s: want an error answer, got %v", method, path, err)
	}
	return ae
}

// setHeader sets a header on every request.
type setHeader struct {
	next        http.RoundTripper
	name, value string
}

func (s setHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(s.name, s.value)
	return s.next.RoundTrip(r)
}
