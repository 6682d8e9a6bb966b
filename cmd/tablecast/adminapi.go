package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/admin"
	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/webhook"
)

// adminEnabled reports whether TABLECAST_ADMIN_ADDR asks for the admin
// API ("off" or empty turns it off).
func (c Config) adminEnabled() bool {
	a := strings.TrimSpace(c.AdminAddr)
	return a != "" && !strings.EqualFold(a, "off")
}

// checkAdmin checks the admin API's variables, for loadConfig.
func (c Config) checkAdmin() []error {
	var errs []error
	if c.adminEnabled() {
		if _, _, err := net.SplitHostPort(c.AdminAddr); err != nil {
			errs = append(errs, fmt.Errorf("TABLECAST_ADMIN_ADDR %q: want host:port (127.0.0.1:8091), or off: %w", c.AdminAddr, err))
		} else if c.AdminAddr == c.HTTPAddr {
			errs = append(errs, fmt.Errorf("TABLECAST_ADMIN_ADDR %s is TABLECAST_HTTP_ADDR too: the admin API needs an address of its own (or off)", c.AdminAddr))
		}
	}
	if u := strings.TrimSpace(c.AdminURL); u != "" && strings.Contains(u, "://") && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		errs = append(errs, fmt.Errorf("TABLECAST_ADMIN_URL %q: want http://host:port or https://host:port", u))
	}
	return errs
}

// startAdmin starts the admin API on TABLECAST_ADMIN_ADDR, with the
// gateway's authentication (authn), its host names, and the process's
// managed endpoints (the store, and the catalog of the streamed tables that
// filters and rules are checked against: until it is loaded, filter and
// rule writes are answered 503). It returns a function that stops it. errc
// receives the error of a listener that fails.
func startAdmin(ctx context.Context, cfg Config, log *slog.Logger, reg prometheus.Registerer, js jetstream.JetStream,
	authn *auth.Authenticator, m *managed, errc chan<- error) (stop func(), err error) {
	log = log.With("component", "admin")
	var verifier auth.Verifier
	if authn.Enabled() {
		verifier = authn
	} else if !loopback(cfg.AdminAddr) {
		// TABLECAST_ALLOW_ANONYMOUS opens the gateway, never the admin API.
		return nil, fmt.Errorf("TABLECAST_ADMIN_ADDR %s is not a loopback address and no authentication is configured: set TABLECAST_JWT_SECRET, TABLECAST_JWT_KEYS or TABLECAST_API_KEYS_FILE (the admin API then needs the admin grant), or keep it on loopback, or set it to off", cfg.AdminAddr)
	}
	var dead admin.DeadLetters
	if cfg.Webhooks {
		dl, err := webhook.OpenDeadLetters(ctx, js, cfg.Stream, cfg.SubjectPrefix, cfg.StreamReplicas)
		if err != nil {
			return nil, fmt.Errorf("admin API: %w", err)
		}
		dead = dl
	}
	srv, err := admin.New(admin.Config{
		DeadLetters:     dead,
		Store:           m.store,
		Auth:            verifier,
		TablesReady:     m.cat.Ready,
		AllowedHosts:    cfg.AllowedHosts,
		MaxHeaderBytes:  cfg.HTTPMaxHeaderBytes,
		HeaderTimeout:   cfg.HTTPHeaderTimeout,
		IdleTimeout:     cfg.HTTPIdleTimeout,
		MaxConnsPerAddr: cfg.HTTPMaxUnauthPerAddr,
		StreamState: func(ctx context.Context) (jetstream.StreamState, error) {
			str, err := js.Stream(ctx, cfg.Stream)
			if err != nil {
				return jetstream.StreamState{}, fmt.Errorf("look up stream %s: %w", cfg.Stream, err)
			}
			return str.CachedInfo().State, nil
		},
		Logger:     log,
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on TABLECAST_ADMIN_ADDR %s: %w", cfg.AdminAddr, err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil {
			errc <- err
		}
	}()
	log.Info("admin API listening", "addr", ln.Addr().String(), "authentication", verifier != nil, "openapi", "/v1/openapi.json")
	return func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		srv.Shutdown(sctx)
		<-served
	}, nil
}

// consoleRules lists, for the console's status, the managed rules an
// identity with the admin grant may read (the first page by name: name,
// table, operations, changed columns, and the conditions as JSON); nil for
// anyone else, which hides the console's section.
func consoleRules(store *endpoint.Store) func(context.Context, *auth.Identity) (any, error) {
	return func(ctx context.Context, id *auth.Identity) (any, error) {
		if id == nil || !id.Grants.CanAdminRead() {
			return nil, nil
		}
		page, err := store.ListRules(ctx, endpoint.ListOptions{OrderBy: endpoint.OrderName, Limit: endpoint.MaxLimit})
		if err != nil {
			return nil, fmt.Errorf("list rules: %w", err)
		}
		type row struct {
			Name       string `json:"name"`
			Table      string `json:"table"`
			Operations string `json:"operations"`
			Changed    string `json:"changed"`
			Where      string `json:"where"`
			Old        string `json:"old"`
			New        string `json:"new"`
		}
		rows := make([]row, 0, len(page.Items))
		for _, r := range page.Items {
			rows = append(rows, row{Name: r.Name, Table: r.Table, Operations: strings.Join(r.Operations, ", "),
				Changed: strings.Join(r.Changed, ", "), Where: string(r.Where), Old: string(r.Old), New: string(r.New)})
		}
		return rows, nil
	}
}

// consoleEndpoints lists, for the console's status, the managed endpoints
// an identity with the admin grant may read (the first page by name, and
// no secret: name, type, state, linked filters and rules); nil for anyone
// else, which hides the console's section.
func consoleEndpoints(store *endpoint.Store) func(context.Context, *auth.Identity) (any, error) {
	return func(ctx context.Context, id *auth.Identity) (any, error) {
		if id == nil || !id.Grants.CanAdminRead() {
			return nil, nil
		}
		page, err := store.ListEndpoints(ctx, endpoint.ListOptions{OrderBy: endpoint.OrderName, Limit: endpoint.MaxLimit})
		if err != nil {
			return nil, fmt.Errorf("list endpoints: %w", err)
		}
		type row struct {
			Name    string `json:"name"`
			Type    string `json:"type"`
			State   string `json:"state"`
			Filters string `json:"filters"`
			Rules   string `json:"rules"`
		}
		rows := make([]row, 0, len(page.Items))
		for _, e := range page.Items {
			rows = append(rows, row{Name: e.Name, Type: string(e.Type), State: string(e.State),
				Filters: strings.Join(e.Filters, ", "), Rules: strings.Join(e.Rules, ", ")})
		}
		return rows, nil
	}
}

// adminClient is the client of the endpoints, filters and rules
// commands: TABLECAST_ADMIN_URL (or http:// and TABLECAST_ADMIN_ADDR),
// with TABLECAST_ADMIN_TOKEN; url, when not empty, is --admin-url.
func (c Config) adminClient(url string) (*admin.Client, error) {
	if url == "" {
		url = strings.TrimSpace(c.AdminURL)
	}
	if url == "" {
		if !c.adminEnabled() {
			return nil, errors.New("no admin API to call: TABLECAST_ADMIN_ADDR is off; set TABLECAST_ADMIN_URL or --admin-url")
		}
		url = "http://" + c.AdminAddr
	}
	return &admin.Client{BaseURL: url, Token: strings.TrimSpace(c.AdminToken)}, nil
}
