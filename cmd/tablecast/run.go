package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tablecast/tablecast/cdc"
	"github.com/tablecast/tablecast/stream"
)

// runReader runs the reader, with the embedded NATS when no NATS URL is
// configured, and the HTTP endpoints, until ctx ends or the reader fails.
func runReader(ctx context.Context, cfg Config) error {
	log := newLogger(cfg, os.Stderr)
	if cfg.DatabaseURL == "" {
		return errors.New("TABLECAST_DATABASE_URL is empty: set it to a PostgreSQL connection string (make run supplies a local one)")
	}

	nc, js, closeNATS, err := connectNATS(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeNATS()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reader, err := cdc.New(cfg.cdcConfig(), nc, js, cfg.SubjectPrefix, log, reg)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on TABLECAST_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		h := reader.Health()
		w.Header().Set("Content-Type", "application/json")
		if !h.Healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(h)
	})
	if cfg.PProf {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("http listening", "addr", ln.Addr().String(), "endpoints", "/healthz /metrics")

	return reader.Run(ctx)
}

// connectNATS starts the embedded server when no URL is configured, connects
// to it (or to the configured servers) and provisions the stream.
func connectNATS(ctx context.Context, cfg Config, log *slog.Logger) (*nats.Conn, jetstream.JetStream, func(), error) {
	url := cfg.NATSURL
	var emb *stream.Embedded
	if url == "" {
		var err error
		emb, err = stream.StartEmbedded(stream.EmbeddedConfig{Listen: cfg.NATSListen, StoreDir: cfg.DataDir, Logger: log.With("component", "nats")})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("start embedded NATS: %w", err)
		}
		url = emb.ClientURL()
		log.Info("embedded NATS listening", "url", url, "data_dir", cfg.DataDir)
	}
	closeAll := func() {
		if emb != nil {
			emb.Shutdown()
		}
	}
	nc, err := stream.Connect(ctx, url, "tablecast", log)
	if err != nil {
		closeAll()
		return nil, nil, nil, fmt.Errorf("connect to NATS %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		closeAll()
		return nil, nil, nil, fmt.Errorf("open JetStream: %w", err)
	}
	if _, err := stream.EnsureStream(ctx, js, cfg.streamConfig()); err != nil {
		nc.Close()
		closeAll()
		return nil, nil, nil, err
	}
	return nc, js, func() { nc.Close(); closeAll() }, nil
}
