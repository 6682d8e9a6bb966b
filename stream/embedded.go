package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// DefaultListen is where the embedded server listens when EmbeddedConfig.Listen
// is empty: loopback only, on the standard NATS port.
const DefaultListen = "127.0.0.1:4222"

// embeddedReadyTimeout bounds how long StartEmbedded waits for the server to
// accept clients. Recovering a large JetStream store can take seconds; ten is
// generous on a healthy disk and still fails a wedged start in bounded time.
const embeddedReadyTimeout = 10 * time.Second

// embeddedMaxPayload is the largest message the embedded server accepts.
const embeddedMaxPayload = 8 << 20

// EmbeddedConfig configures an embedded NATS server with JetStream.
type EmbeddedConfig struct {
	// Listen is the host:port on which the server accepts client connections,
	// so that backend services can connect. A port of 0 or -1 picks a random
	// free port (tests). Anything but a loopback address needs Auth.
	// Default (empty): DefaultListen, "127.0.0.1:4222".
	Listen string
	// StoreDir is the directory of JetStream's file storage; it is created if
	// missing. Required: there is no default here (the configuration layer
	// supplies ./data).
	StoreDir string
	// MaxStore is the most JetStream may store on disk, in bytes. It is this
	// number on every start: nats-server, given none, takes three quarters of
	// the disk space free at that moment, so that a restart on a nearly full
	// disk would give it a store smaller than what it already holds.
	// Default (0): DefaultMaxStore, 8 GiB.
	MaxStore int64
	// MinFree is the free space, in bytes, on StoreDir's file system below
	// which Status is unhealthy; once JetStream has stopped storing because
	// its disk filled, it is restarted when more than this is free again.
	// Default (0): DefaultMinFree, 256 MiB; negative: no minimum (JetStream
	// is restarted as soon as anything is free).
	MinFree int64
	// CheckInterval is how often the free space and JetStream's state are
	// checked. Default (0): 1s.
	CheckInterval time.Duration
	// Auth says who may connect and what they may do. Default (zero value):
	// anyone may do anything, which StartEmbedded refuses unless Listen is a
	// loopback address.
	Auth EmbeddedAuth
	// TLSCert and TLSKey are PEM files of the certificate (with its chain)
	// and key the server presents; with them, clients must use TLS.
	// Default (empty): no TLS.
	TLSCert, TLSKey string
	// Logger receives the server's notices, warnings and errors; its debug and
	// trace output is dropped. Default (nil): slog.Default().
	Logger *slog.Logger
}

// Embedded is a NATS server with JetStream running inside this process. It
// watches its own storage, and restarts itself when JetStream has stopped
// storing: see Status.
type Embedded struct {
	opts *server.Options // what the server is started with (port fixed after the first start)
	cfg  EmbeddedConfig
	log  *slog.Logger

	srvMu sync.RWMutex
	srv   *server.Server // the current server; replaced by a restart

	statusMu sync.Mutex
	status   StorageStatus

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// AddrInUseError is returned by StartEmbedded when another process already
// listens on the configured address. It unwraps to the system error, so
// errors.Is(err, syscall.EADDRINUSE) holds.
type AddrInUseError struct {
	Addr string
	Err  error
}

func (e *AddrInUseError) Error() string {
	return fmt.Sprintf("embedded NATS: listen %s: address already in use (is another NATS server or tablecast running? choose another listen address)", e.Addr)
}

func (e *AddrInUseError) Unwrap() error { return e.Err }

// StartEmbedded starts a NATS server with JetStream (file storage in
// cfg.StoreDir), without signal handling, and returns once it accepts client
// connections. If the listen address is taken, the error is an
// *AddrInUseError.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxStore == 0 {
		cfg.MaxStore = DefaultMaxStore
	}
	switch {
	case cfg.MinFree == 0:
		cfg.MinFree = DefaultMinFree
	case cfg.MinFree < 0:
		cfg.MinFree = 0
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = defaultCheckInterval
	}
	host, port, err := parseListen(cfg.Listen)
	if err != nil {
		return nil, err
	}
	if cfg.StoreDir == "" {
		return nil, errors.New("embedded NATS: StoreDir is empty; JetStream needs a directory for its files")
	}
	if cfg.MaxStore < 0 {
		return nil, fmt.Errorf("embedded NATS: MaxStore %d: must be positive", cfg.MaxStore)
	}
	if !cfg.Auth.enabled() && !IsLoopback(cfg.Listen) {
		return nil, fmt.Errorf("embedded NATS: listen address %s is not a loopback address and no credentials are configured: anyone who reaches it could read every event and store forged ones", cfg.Listen)
	}
	users, nkeys, err := cfg.Auth.serverUsers()
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	var tlsConfig *tls.Config
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS: load TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if err := os.MkdirAll(cfg.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("embedded NATS: create store directory: %w", err)
	}

	// Try the address first: a taken port is the common failure (a second
	// instance, another NATS), and the server itself would only log it and
	// keep going without a listener, after recovering the whole store.
	if port != server.RANDOM_PORT {
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, listenError(addr, err)
		}
		_ = l.Close()
	}

	opts := &server.Options{
		ServerName: "tablecast",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		// Always the configured size, never the free space of the moment.
		JetStreamMaxStore: cfg.MaxStore,
		NoSigs:            true,
		// A row change is one message, and a row with large values can
		// exceed NATS's default of 1 MB; 8 MB is the largest payload NATS
		// recommends.
		MaxPayload: embeddedMaxPayload,
		// Each webhook endpoint reads the stream through a consumer of
		// its own (and the dead-letter stream through another while it has
		// replays), and each WebSocket resume through one while it lasts:
		// the server's default of 1,000 consumers a stream would refuse
		// the 1,001st endpoint its consumer. -1: no default limit.
		JetStreamLimits: server.JSLimitOpts{DefaultMaxConsumers: -1},
		// Logging goes through SetLoggerV2 below, not the server's own setup.
		NoLog:         true,
		Users:         users,
		Nkeys:         nkeys,
		Authorization: cfg.Auth.Token,
	}
	if tlsConfig != nil {
		opts.TLS = true
		opts.TLSConfig = tlsConfig
		// The server's default of two seconds is tight for a TLS
		// handshake on a busy machine, or many clients reconnecting at once.
		opts.TLSTimeout = 5
	}
	e := &Embedded{opts: opts, cfg: cfg, log: cfg.Logger, stop: make(chan struct{}), done: make(chan struct{})}
	srv, err := e.startServer()
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, listenError(net.JoinHostPort(host, strconv.Itoa(port)), err)
		}
		return nil, err
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, errors.New("embedded NATS: JetStream did not start (see the server's log)")
	}
	// A restart listens on the same port, also when it was picked at random.
	if a, ok := srv.Addr().(*net.TCPAddr); ok {
		e.opts.Port = a.Port
	}
	e.srv = srv
	m := &storageMonitor{e: e}
	m.check(time.Now())
	go m.run()
	return e, nil
}

// startServer starts a server with e.opts and returns once it accepts
// clients. nats-server enables JetStream before it accepts clients, so no
// client ever sees the server without it (unless JetStream fails to start).
func (e *Embedded) startServer() (*server.Server, error) {
	// The server keeps the options it is given; a restart needs them
	// untouched.
	opts := e.opts.Clone()
	readersAccount(opts)
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	if err := wireReaders(srv, e.cfg.Auth.Stream, e.cfg.Auth.Prefix); err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	sl := &serverLogger{log: e.log, fatal: make(chan struct{})}
	srv.SetLoggerV2(sl, false, false, false)
	// Every goroutine of the server descends from Start's, and carries
	// its label into CPU profiles (see ProfileLabel).
	pprof.Do(context.Background(), pprof.Labels(ProfileLabel, ProfileNATSServer), func(context.Context) { srv.Start() })
	// With an account besides the global one (ReadersAccount), the server
	// turns JetStream on only in accounts configured for it, and the global
	// account, where tablecast's stream and buckets are, cannot be: turn it
	// on there now, which also loads what the store holds.
	if gacc := srv.GlobalAccount(); srv.JetStreamEnabled() && !gacc.JetStreamEnabled() {
		if err := gacc.EnableJetStream(nil, nil); err != nil {
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil, fmt.Errorf("embedded NATS: enable JetStream: %w", err)
		}
	}
	if err := waitReady(srv, sl, embeddedReadyTimeout); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, err
	}
	return srv, nil
}

// waitReady polls the server until it accepts clients, giving up at once if
// the server reported a fatal error (such as failing to listen).
func waitReady(srv *server.Server, sl *serverLogger, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-sl.fatal:
			return fmt.Errorf("embedded NATS: start: %w", sl.fatalErr())
		default:
		}
		if srv.ReadyForConnections(50 * time.Millisecond) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("embedded NATS: not ready for connections after %s", timeout)
		}
	}
}

func parseListen(listen string) (host string, port int, err error) {
	host, p, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("embedded NATS: listen address %q: %w", listen, err)
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < -1 || port > 65535 {
		return "", 0, fmt.Errorf("embedded NATS: listen address %q: invalid port %q", listen, p)
	}
	if port == 0 {
		// For nats-server, port 0 means its default (4222); -1 means random.
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// IsLoopback reports whether addr (host:port) listens on loopback only: an
// empty host or 0.0.0.0 listens everywhere.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return &AddrInUseError{Addr: addr, Err: err}
	}
	return fmt.Errorf("embedded NATS: listen %s: %w", addr, err)
}

// ClientURL returns the URL clients use to connect, such as
// "nats://127.0.0.1:4222" ("tls://…" when the server requires TLS). It is
// the same after a restart.
func (e *Embedded) ClientURL() string { return e.Server().ClientURL() }

// InProcessConn connects to the current server through memory instead of
// a socket (see nats.InProcessServer): the process's own clients then cost
// no system calls and no poller wake-ups per read and write. After a restart
// it connects to the new server. The server's goroutines for the
// connection (reading what the client sends, writing what it receives)
// start from a goroutine of their own, labelled ProfileNATSServer, rather
// than inherit the connecting client's label; the caller's labels stay as
// they are (pprof.Do would reset them to those of its context).
func (e *Embedded) InProcessConn() (net.Conn, error) {
	var (
		c    net.Conn
		err  error
		done = make(chan struct{})
	)
	go pprof.Do(context.Background(), pprof.Labels(ProfileLabel, ProfileNATSServer), func(context.Context) {
		defer close(done)
		c, err = e.Server().InProcessConn()
	})
	<-done
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: connect in process: %w", err)
	}
	return c, nil
}

// Server returns the underlying server, for tests and advanced use. A
// restart (see Status) replaces it.
func (e *Embedded) Server() *server.Server {
	e.srvMu.RLock()
	defer e.srvMu.RUnlock()
	return e.srv
}

// Shutdown stops the server gracefully: JetStream flushes its stores, clients
// are disconnected, and Shutdown returns when everything has stopped.
func (e *Embedded) Shutdown() {
	e.stopOnce.Do(func() { close(e.stop) })
	<-e.done
	srv := e.Server()
	srv.Shutdown()
	srv.WaitForShutdown()
}

// serverLogger bridges the server.Logger interface to slog. Notices go to
// debug; the server's own debug and trace output is dropped: the server is
// configured without them anyway, and they are far too chatty.
type serverLogger struct {
	log *slog.Logger

	mu       sync.Mutex
	fatal    chan struct{} // closed on the first Fatalf
	fatalMsg string
}

func (l *serverLogger) logf(level slog.Level, format string, v []any) string {
	if !l.log.Enabled(context.Background(), level) {
		return ""
	}
	msg := strings.TrimSpace(fmt.Sprintf(format, v...))
	l.log.Log(context.Background(), level, msg, slog.String("component", "nats-server"))
	return msg
}

// Noticef logs at debug: the server's notices are its start-up banner and
// routine housekeeping, which would drown the process log; tablecast logs
// its own line when the embedded server is up.
func (l *serverLogger) Noticef(format string, v ...any) { l.logf(slog.LevelDebug, format, v) }
func (l *serverLogger) Warnf(format string, v ...any)   { l.logf(slog.LevelWarn, format, v) }
func (l *serverLogger) Errorf(format string, v ...any)  { l.logf(slog.LevelError, format, v) }
func (l *serverLogger) Debugf(string, ...any)           {}
func (l *serverLogger) Tracef(string, ...any)           {}

// Fatalf logs at error level and records the failure for StartEmbedded;
// unlike the server's own logger it never exits the process.
func (l *serverLogger) Fatalf(format string, v ...any) {
	l.logf(slog.LevelError, format, v)
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fatalMsg == "" {
		l.fatalMsg = msg
		close(l.fatal)
	}
}

func (l *serverLogger) fatalErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	msg := l.fatalMsg
	if strings.Contains(msg, "address already in use") {
		return fmt.Errorf("%s: %w", msg, syscall.EADDRINUSE)
	}
	return errors.New(msg)
}
