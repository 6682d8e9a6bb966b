package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tablecast/tablecast/cdc"
	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/connlimit"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/internal/sched"
	"github.com/tablecast/tablecast/stream"
	"github.com/tablecast/tablecast/webhook"
	"github.com/tablecast/tablecast/wsgate"
)

// runServer runs the reader, the gateway or both, with the embedded NATS
// when no NATS URL is configured, and the HTTP endpoints, until ctx ends or
// a part fails.
func runServer(ctx context.Context, cfg Config, withReader, withGateway bool) error {
	log := newLogger(cfg, os.Stderr)
	for _, m := range misspelledVariables(os.Environ()) {
		log.Warn("ignoring a variable tablecast does not read; misspelled?", "variable", m[0], "did_you_mean", m[1])
	}
	if withReader && cfg.DatabaseURL == "" {
		return errors.New("TABLECAST_DATABASE_URL is empty: set it to a PostgreSQL connection string (make run supplies a local one)")
	}
	if withReader && cfg.SchedBatch {
		sched.Apply(log) // TABLECAST_SCHED_BATCH
	}
	var authn *auth.Authenticator
	if withGateway {
		var err error
		if authn, err = cfg.authenticator(log.With("component", "gateway")); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on TABLECAST_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	defer ln.Close()
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("TABLECAST_TLS_CERT, TABLECAST_TLS_KEY: %w", err)
		}
		// WebSocket connections over TLS are read by a goroutine each: the
		// TLS layer buffers what epoll would have to see.
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}})
		// The names the certificate is for are names the gateway serves.
		if leaf := cert.Leaf; leaf != nil {
			cfg.AllowedHosts = append(cfg.AllowedHosts, leaf.DNSNames...)
			for _, ip := range leaf.IPAddresses {
				cfg.AllowedHosts = append(cfg.AllowedHosts, ip.String())
			}
		}
	}

	nc, js, emb, closeNATS, err := connectNATS(ctx, cfg, withReader, log)
	if err != nil {
		return err
	}
	defer closeNATS()
	// The gateway, the webhooks and the admin API get a connection of their
	// own when the reader runs beside them. Their deliveries (every event
	// to every feed and endpoint) then do not queue in front of the
	// reader's acknowledgements, nor the reader's publishes behind their
	// pull requests, in one connection's buffers and reading goroutine.
	// The row state stays on the reader's: the reader reads old rows from
	// it.
	gnc, gjs := nc, js
	if withReader && withGateway {
		if gnc, gjs, err = connectMore(ctx, cfg, emb, "tablecast-consumers", log); err != nil {
			return err
		}
		defer gnc.Close()
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if emb != nil {
		registerEmbeddedMetrics(reg, emb)
	}
	var reader *cdc.Reader
	var rowState atomic.Pointer[rowstate.Maintainer] // set once it runs
	if withReader {
		ccfg := cfg.cdcConfig()
		if cfg.RowState {
			// The reader reads old rows from the state that runRowState
			// keeps once the reader streams.
			ccfg.RowState = cdc.RowStateFunc(func() (uint64, string, bool) {
				m := rowState.Load()
				if m == nil {
					return 0, "", false
				}
				a := m.LastApplied()
				return a.Seq, a.ID, m.Ready()
			})
		}
		if reader, err = cdc.New(ccfg, nc, js, cfg.SubjectPrefix, log, reg); err != nil {
			return err
		}
	}
	errc := make(chan error, 3)
	adminReady := func() bool { return true }
	var gw *wsgate.Gateway
	if withGateway {
		// The managed endpoints, filters and rules: the admin API, the
		// gateway's rule subscriptions, the console and the webhooks.
		var registered <-chan struct{}
		if reader != nil {
			registered = reader.Registered()
		}
		m, err := startManaged(ctx, cfg, gjs, reg, log.With("component", "webhook"), registered)
		if err != nil {
			return err
		}
		defer m.stop()
		if cfg.adminEnabled() {
			stopAdmin, err := startAdmin(ctx, cfg, log, reg, gjs, authn, m, errc)
			if err != nil {
				return err
			}
			defer stopAdmin()
			adminReady = m.cat.Ready
		}
		gcfg := cfg.gatewayConfig(log, reg, authn)
		gcfg.Managed = m.rules
		if cfg.adminEnabled() {
			gcfg.Endpoints = consoleEndpoints(m.store)
			gcfg.Rules = consoleRules(m.store)
		}
		if reader != nil {
			// Clients are let in once the tables the reader streams are
			// known, not told that one of them does not exist.
			gcfg.StartAfter = reader.Registered()
		}
		if gw, err = wsgate.New(ctx, gcfg, gnc, gjs); err != nil {
			return fmt.Errorf("start gateway: %w", err)
		}
	}

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		h := health{Healthy: true}
		if reader != nil {
			rh := reader.Health()
			h.Reader, h.Healthy = &rh, rh.Healthy
			h.Reasons = append(h.Reasons, rh.Reasons...)
		}
		if gw != nil {
			h.Gateway = &gatewayHealth{Ready: gw.Ready(), Connections: gw.Connections(), NATS: gnc.IsConnected()}
			h.Healthy = h.Healthy && gnc.IsConnected()
			if !gnc.IsConnected() {
				h.Reasons = append(h.Reasons, "gateway: not connected to NATS")
			}
		}
		if emb != nil {
			st := emb.Status()
			h.NATS = &st
			h.Healthy = h.Healthy && st.Healthy
			h.Reasons = append(h.Reasons, st.Reasons...)
		}
		writeJSON(w, h.Healthy, h)
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready := nc.IsConnected() && gnc.IsConnected()
		if gw != nil {
			ready = ready && gw.Ready()
		}
		if reader != nil {
			// A standby is ready: it does what it is there for, waiting.
			rh := reader.Health()
			ready = ready && (rh.Streaming || rh.Role == "standby")
			if cfg.RowState {
				m := rowState.Load()
				ready = ready && m != nil && m.Ready()
			}
		}
		ready = ready && adminReady()
		writeJSON(w, ready, map[string]bool{"ready": ready})
	})
	if gw != nil {
		mux.Handle("GET /{$}", wsgate.PageHandler())
		mux.Handle("GET /tablecast.js", wsgate.ClientHandler())
		mux.Handle("GET /tablecast.d.ts", wsgate.ClientHandler())
	}
	if cfg.PProf {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}

	var srv *http.Server
	if gw != nil {
		go func() { errc <- gw.Serve(ln, mux) }()
		log.Info("gateway listening", "addr", ln.Addr().String(), "endpoints", "/ /api/status /tablecast.js /ws /ws/tables/… /healthz /readyz /metrics")
	} else {
		srv = cfg.httpServer(mux)
		go func() {
			if err := serveHTTP(srv, ln, cfg); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
		log.Info("http listening", "addr", ln.Addr().String(), "endpoints", "/healthz /readyz /metrics")
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if gw != nil {
			gw.Shutdown(sctx)
		}
		if srv != nil {
			_ = srv.Shutdown(sctx)
		}
	}()

	if reader != nil {
		go func() { errc <- reader.Run(ctx) }()
		if cfg.RowState {
			go runRowState(ctx, cfg, reader, nc, log, reg, &rowState)
		}
	}
	if authn.Enabled() {
		go reloadOnHangup(ctx, authn, log)
	}
	select {
	case <-ctx.Done():
		if reader != nil {
			return <-errc // the reader's own clean stop
		}
		return nil
	case err := <-errc:
		return err
	}
}

// reloadOnHangup reloads the JWT keys file and the API keys file on each
// SIGHUP until ctx ends; connections of removed API keys are then closed
// by the gateway. A file that does not load keeps the keys before, and
// says why in the log.
func reloadOnHangup(ctx context.Context, authn *auth.Authenticator, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hangups:
			log.Info("SIGHUP: reloading the keys files")
			if err := authn.ReloadKeys(); err != nil {
				log.Error("SIGHUP: keys files not reloaded; keeping the keys loaded before", "err", err)
			}
		}
	}
}

// httpServer is the HTTP server of the endpoints when no gateway serves
// them (tablecast cdc): the same header bound and timeouts as the
// gateway's, so that idle or slow clients cannot hold connections forever.
func (c Config) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: c.HTTPHeaderTimeout,
		// A whole request, body included, and its answer are bounded too,
		// as the gateway's are: a client that announces a body and sends
		// none, or never reads the answer, is closed.
		ReadTimeout:    2 * c.HTTPHeaderTimeout,
		WriteTimeout:   c.HTTPHeaderTimeout + c.WSWriteTimeout,
		IdleTimeout:    c.HTTPIdleTimeout,
		MaxHeaderBytes: c.HTTPMaxHeaderBytes,
	}
}

// serveHTTP serves srv on ln, bounding each client address to
// TABLECAST_HTTP_MAX_UNAUTHENTICATED_PER_ADDR connections (none of them
// ever authenticates).
func serveHTTP(srv *http.Server, ln net.Listener, c Config) error {
	return srv.Serve(connlimit.NewListener(ln, c.HTTPMaxUnauthPerAddr))
}

// health is the body of /healthz. Reasons gathers the reasons of every
// part.
type health struct {
	Healthy bool                  `json:"healthy"`
	Reasons []string              `json:"reasons,omitempty"`
	Reader  *cdc.Health           `json:"reader,omitempty"`
	Gateway *gatewayHealth        `json:"gateway,omitempty"`
	NATS    *stream.StorageStatus `json:"nats,omitempty"`
}

type gatewayHealth struct {
	Ready       bool `json:"ready"`
	Connections int  `json:"connections"`
	NATS        bool `json:"nats_connected"`
}

func writeJSON(w http.ResponseWriter, ok bool, v any) {
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(v)
}

// connectNATS starts the embedded server when no URL is configured, connects
// to it (or to the configured servers) with tablecast's credentials, and
// provisions the stream. emb is nil with an external NATS.
//
// The stream's settings (retention, replicas) are the reader's: with
// ownsStream (run, cdc) it is created or brought to them; without (the
// gateway alone) it is only created when missing, so that a gateway
// started without the reader's TABLECAST_STREAM_* variables does not undo
// them.
func connectNATS(ctx context.Context, cfg Config, ownsStream bool, log *slog.Logger) (nc *nats.Conn, js jetstream.JetStream, emb *stream.Embedded, closeNATS func(), err error) {
	opts, err := cfg.natsOptions()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	url := cfg.NATSURL
	unlockDataDir := func() {}
	if url == "" {
		ecfg, err := cfg.embeddedConfig(log.With("component", "nats"))
		if err != nil {
			return nil, nil, nil, nil, err
		}
		unlock, err := lockDataDir(cfg.DataDir)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		emb, err = stream.StartEmbedded(ecfg)
		if err != nil {
			unlock()
			return nil, nil, nil, nil, fmt.Errorf("start embedded NATS: %w", err)
		}
		unlockDataDir = unlock
		url = emb.ClientURL()
		opts = append(opts, nats.InProcessServer(emb))
		st := emb.Status()
		log.Info("embedded NATS listening", "url", url, "data_dir", cfg.DataDir,
			"max_store_bytes", st.StoreMaxBytes, "free_bytes", st.FreeBytes,
			"auth", cfg.natsCredentials(), "tls", cfg.NATSTLSCert != "")
	}
	closeAll := func() {
		if emb != nil {
			emb.Shutdown()
		}
		unlockDataDir()
	}
	nc, js, err = dialNATS(ctx, url, "tablecast", opts, log)
	if err != nil {
		closeAll()
		return nil, nil, nil, nil, err
	}
	scfg := cfg.streamConfig()
	scfg.UseExisting = !ownsStream
	str, err := stream.EnsureStream(ctx, js, scfg)
	if err != nil {
		nc.Close()
		closeAll()
		return nil, nil, nil, nil, fmt.Errorf("%w (retention: TABLECAST_STREAM_MAX_AGE %s, TABLECAST_STREAM_MAX_BYTES %d)", err, scfg.MaxAge, scfg.MaxBytes)
	}
	have := str.CachedInfo().Config
	if ownsStream {
		log.Info("stream ready", "stream", cfg.Stream, "max_age", have.MaxAge, "max_bytes", have.MaxBytes)
	} else {
		log.Info("stream ready, with the settings the reader gave it", "stream", cfg.Stream, "max_age", have.MaxAge, "max_bytes", have.MaxBytes)
	}
	return nc, js, emb, func() { nc.Close(); closeAll() }, nil
}

// connectMore opens another connection to the NATS that connectNATS
// connected to (in memory to the embedded server emb, when there is one),
// with the same credentials, named name.
func connectMore(ctx context.Context, cfg Config, emb *stream.Embedded, name string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	opts, err := cfg.natsOptions()
	if err != nil {
		return nil, nil, err
	}
	url := cfg.NATSURL
	if emb != nil {
		url = emb.ClientURL()
		opts = append(opts, nats.InProcessServer(emb))
	}
	return dialNATS(ctx, url, name, opts, log)
}

// The first connection to NATS is tried for connectWaitFirst before a
// warning says that it still waits, and why; the wait before each next
// warning doubles, up to connectWaitMax.
const (
	connectWaitFirst = 2 * time.Second
	connectWaitMax   = 30 * time.Second
)

// connectWaiting connects like stream.Connect, until connected or ctx
// ends, but warns now and then that NATS is not reachable yet, with the
// last attempt's error: a NATS that is not there at start otherwise left
// the process silent, and its HTTP endpoints unanswered, for as long as
// it lasted.
func connectWaiting(ctx context.Context, url, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	start, wait := time.Now(), connectWaitFirst
	for {
		actx, cancel := context.WithTimeout(ctx, wait)
		nc, err := stream.Connect(actx, url, name, log, opts...)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return nc, err
		}
		// The error names the URL with any password redacted.
		log.Warn("NATS not reachable yet; still trying", "client", name, "waited", time.Since(start).Round(time.Second).String(), "err", err)
		wait = min(2*wait, connectWaitMax)
	}
}

// dialNATS connects to url as the client called name and opens JetStream
// on the connection.
func dialNATS(ctx context.Context, url, name string, opts []nats.Option, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := connectWaiting(ctx, url, name, log, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS %s as %s: %w", url, name, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("open JetStream as %s: %w", name, err)
	}
	return nc, js, nil
}

// managed is a process's view of the managed endpoints, filters and rules:
// one store and one catalog of the streamed tables, shared by the admin
// API, the gateway's rule subscriptions, the console and webhook delivery.
type managed struct {
	store *endpoint.Store
	cat   *catalog.Catalog
	rules *match.Registry // the compiled filters and rules of each endpoint
	stop  func()
}

// startManaged follows the managed endpoints, filters and rules and, with
// TABLECAST_WEBHOOKS, delivers the webhooks' events, until stop is called
// (or ctx ends). registered, when not nil, holds the catalog's readiness
// back until the reader beside it has registered its tables.
func startManaged(ctx context.Context, cfg Config, js jetstream.JetStream, reg prometheus.Registerer, log *slog.Logger, registered <-chan struct{}) (*managed, error) {
	allow, err := cfg.webhookAllowNets()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	cat := catalog.New(cfg.SubjectPrefix, log)
	store, err := endpoint.Open(ctx, js, endpoint.Config{Replicas: cfg.StreamReplicas, Tables: cat, Logger: log})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open the endpoint store: %w", err)
	}
	fail := func(err error) (*managed, error) {
		cancel()
		store.Close()
		return nil, err
	}
	schemas, err := stream.OpenRegistry(ctx, js, stream.DefaultSchemaBucket, cfg.StreamReplicas)
	if err != nil {
		return fail(err)
	}
	str, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		return fail(fmt.Errorf("open stream %s: %w", cfg.Stream, err))
	}
	topics, err := stream.OpenTopics(ctx, js, str, cfg.SubjectPrefix, stream.DefaultTopicBucket, cfg.StreamReplicas)
	if err != nil {
		return fail(err)
	}
	registry := match.NewRegistry(log)
	var mgr *webhook.Manager
	if cfg.Webhooks {
		mgr, err = webhook.New(ctx, js, webhook.Config{
			Stream: cfg.Stream, Prefix: cfg.SubjectPrefix, Replicas: cfg.StreamReplicas,
			Registry: registry, Tables: cat, States: store, AllowNets: allow, Registerer: reg, Logger: log,
		})
		if err != nil {
			return fail(fmt.Errorf("start webhook delivery: %w", err))
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); cat.Run(ctx, schemas, topics, nil, catalog.Start{After: registered}) }()
	go func() { defer wg.Done(); registry.Run(ctx, store) }()
	if mgr != nil {
		wg.Add(1)
		go func() { defer wg.Done(); mgr.Run(ctx) }()
	}
	return &managed{store: store, cat: cat, rules: registry, stop: func() {
		cancel()
		wg.Wait()
		store.Close()
	}}, nil
}

// runRowState maintains the row state of the reader's database until ctx
// ends, applying events while the reader streams (a standby does not).
func runRowState(ctx context.Context, cfg Config, reader *cdc.Reader, nc *nats.Conn, log *slog.Logger, reg prometheus.Registerer, running *atomic.Pointer[rowstate.Maintainer]) {
	select {
	case <-reader.Registered():
	case <-ctx.Done():
		return
	}
	m, err := rowstate.New(rowstate.Config{
		DB: reader.Database(), Prefix: cfg.SubjectPrefix, Events: cfg.Stream, Tables: cfg.RowStateTables,
		Active:  func() bool { return reader.Health().Streaming },
		Streams: rowstate.StreamsConfig{Replicas: cfg.StreamReplicas},
		Logger:  log, Registerer: reg,
	}, nc)
	if err != nil {
		log.Error("row state not maintained", "err", err)
		return
	}
	running.Store(m)
	_ = m.Run(ctx)
}
