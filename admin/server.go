package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/connlimit"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/hosts"
)

// Config is the admin API's configuration. Zero fields take the defaults
// documented on each.
type Config struct {
	// Store keeps the endpoints, filters and rules. Required.
	Store *endpoint.Store
	// Auth verifies the Bearer credential of each request (JWTs, API
	// keys): the identity needs the grants claim's admin "read" to read
	// and "write" to change anything. Nil lets every request in with
	// every grant: keep the listener on loopback then.
	Auth auth.Verifier
	// TablesReady, when set, reports whether the streamed tables are
	// loaded (the catalog the store checks filters and rules against);
	// until it is true, creating or changing a filter or rule is answered
	// 503, rather than checked against no table. Nil: always ready.
	TablesReady func() bool
	// DeadLetters lists and replays the webhooks' dead letters
	// (/v1/endpoints/{id}/dead-letters). Nil: those routes answer 503.
	DeadLetters DeadLetters

	// AllowedHosts are the host names (without port) the API answers
	// besides those it always serves (internal/hosts: loopback names and
	// addresses on loopback, the address it listens on); "*.example.com"
	// for subdomains, "*" for any ("*" only with Auth: without, it would
	// let a DNS rebinding page in). Others get 421 on every path. Empty:
	// only those served always.
	AllowedHosts []string
	// MaxHeaderBytes bounds a request's head; beyond it the answer is
	// 431. Default 16 KiB.
	MaxHeaderBytes int
	// HeaderTimeout bounds the reading of a request's head, and as much
	// again its body. Default 10s.
	HeaderTimeout time.Duration
	// IdleTimeout closes a kept-alive connection that sends no new request
	// for this long. Default 60s.
	IdleTimeout time.Duration
	// MaxConnsPerAddr bounds the connections one client address (an IPv4
	// address, an IPv6 /64) may hold; more are answered 429. Default 128;
	// negative: no limit (behind a proxy).
	MaxConnsPerAddr int
	// MaxBodyBytes bounds a request's body; beyond it the answer is 413.
	// Default 1 MiB.
	MaxBodyBytes int64
	// RequestTimeout bounds the handling of one request. Default 15s.
	RequestTimeout time.Duration
	// StreamState reads the event stream's state, when set: the answer to
	// the creation of a webhook endpoint whose start the stream has
	// discarded already says so (start_discarded). Nil: it does not.
	StreamState func(ctx context.Context) (jetstream.StreamState, error)

	Logger *slog.Logger
	// Registerer receives the API's metrics (nil: none).
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() (Config, error) {
	if c.Store == nil {
		return c, errors.New("admin: no store")
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 16 << 10
	}
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = 10 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.MaxConnsPerAddr == 0 {
		c.MaxConnsPerAddr = 128
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 15 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TablesReady == nil {
		c.TablesReady = func() bool { return true }
	}
	return c, nil
}

// Server is the admin API.
type Server struct {
	cfg   Config
	log   *slog.Logger
	store *endpoint.Store
	met   *metrics
	mux   *http.ServeMux

	// crossOrigin refuses the changes a browser sends from another site.
	crossOrigin *http.CrossOriginProtection

	mu      sync.Mutex
	hosts   *hosts.Policy
	srv     *http.Server
	closing bool
}

// New checks the configuration and builds the API; Serve serves it.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, store: cfg.Store, met: newMetrics(cfg.Registerer), hosts: hosts.NewPolicy(cfg.AllowedHosts, nil),
		crossOrigin: http.NewCrossOriginProtection()}
	s.mux = s.routes()
	return s, nil
}

// Handler is the API's HTTP handler, Host check included (with the Host
// policy of the address Serve listens on, once it does).
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Serve serves the API on ln until Shutdown, with the bounds of Config:
// head size and timeouts, connections per address, body size.
func (s *Server) Serve(ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.cfg.HeaderTimeout,
		ReadTimeout:       2 * s.cfg.HeaderTimeout,
		WriteTimeout:      s.cfg.RequestTimeout + s.cfg.HeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	p := hosts.NewPolicy(s.cfg.AllowedHosts, ln.Addr())
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.srv, s.hosts = srv, p
	s.mu.Unlock()
	if p.ReachableByName() && len(s.cfg.AllowedHosts) == 0 {
		s.log.Warn("admin API: no host names allowed: only requests for an IP address (or localhost) are answered", "addr", ln.Addr().String())
	}
	if err := srv.Serve(connlimit.NewListener(ln, s.cfg.MaxConnsPerAddr)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin API on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Shutdown stops serving, letting requests under way finish until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	srv := s.srv
	s.mu.Unlock()
	if srv != nil {
		_ = srv.Shutdown(ctx)
	}
}

func (s *Server) hostPolicy() *hosts.Policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hosts
}

// hostAllowed applies the Host policy. Without a Verifier (every request
// let in, on loopback) AllowedHosts "*" does not vouch for a Host: a DNS
// rebinding page's name would pass it, and its requests, same-origin to
// the browser, would pass the cross-origin check too and read the
// answers. The Host must then be one served by name or address, as the
// gateway asks of an Origin with anonymous access.
func (s *Server) hostAllowed(hostport string) bool {
	p := s.hostPolicy()
	if s.cfg.Auth != nil {
		return p.Allowed(hostport)
	}
	h := hosts.SplitHost(hostport)
	return h != "" && p.Served(h)
}

// serveHTTP checks the Host, then routes.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.hostAllowed(r.Host) {
		w.Header().Set("Connection", "close")
		s.met.observe("unmatched", http.StatusMisdirectedRequest, 0)
		writeError(w, http.StatusMisdirectedRequest, codeMisdirected, fmt.Sprintf("host %q is not served here", r.Host), nil)
		return
	}
	// A web page the operator visits may send a request to the API on
	// loopback, with the right Host, and without a credential the API lets
	// it in there (anonymous on loopback). It cannot read the answer (no
	// CORS), and a JSON body needs a preflight the API does not answer, but
	// a POST without a body (pause, resume) is sent as it is. Browsers say
	// where a request comes from (Sec-Fetch-Site, Origin): a change from
	// another site is refused; tools that send neither are let through.
	if err := s.crossOrigin.Check(r); err != nil {
		s.met.observe("unmatched", http.StatusForbidden, 0)
		writeError(w, http.StatusForbidden, codeCrossOrigin, "a change sent by a web page of another site is refused: "+err.Error(), nil)
		return
	}
	s.mux.ServeHTTP(w, r)
}
