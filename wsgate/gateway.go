package wsgate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/connlimit"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/hosts"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/stream"
)

// Managed finds the managed rules and endpoints clients subscribe to (a
// *match.Registry): nil when there is none of that name.
type Managed interface {
	Rule(name string) *endpoint.Rule
	GetByName(name string) *match.Entry
}

// Config is the gateway's configuration. Zero fields take the defaults
// documented on each.
type Config struct {
	// Prefix is the subject prefix (TABLECAST_SUBJECT_PREFIX).
	Prefix string
	// Stream is the JetStream stream that holds every event.
	Stream string
	// SchemaBucket and TopicBucket are the key-value buckets of the schema
	// registry and of the custom topics.
	SchemaBucket, TopicBucket string
	// PayloadBucket is the object store bucket of the events too large for
	// one NATS message; claims to any other bucket are not resolved.
	// Default stream.DefaultPayloadBucket, "TABLECAST_PAYLOADS".
	PayloadBucket string
	// Replicas of the topic bucket when the gateway creates it.
	Replicas int

	// AllowedOrigins are the browser origins that may open a WebSocket
	// ("https://app.example.com"), "*" for any. Empty allows only the
	// gateway's own origin: an Origin whose host and port are the request's
	// Host and, when Auth is off (anonymous access), whose host is served by
	// name or address (AllowedHosts without "*"). Requests without an
	// Origin header are not from browsers and are not checked.
	AllowedOrigins []string
	// AllowedHosts are the host names (without port) the gateway answers
	// requests for, besides those it always serves: "localhost" and loopback
	// IPs when it listens on loopback or on every address, the IP it
	// listens on, and any IP literal when it listens on every address (a
	// name can be made to point anywhere; an address cannot). "*.example.com"
	// allows the subdomains of example.com, "*" every host. A request for
	// another Host, on any path, is answered 421 Misdirected Request: this
	// is what stops DNS rebinding. Empty: only those served always.
	AllowedHosts []string

	// MaxHeaderBytes bounds a request's head (request line and headers)
	// before the client is known; beyond it the answer is 431 (414 for the
	// request line alone, which is bounded to 8 KiB). net/http, which serves
	// kept-alive connections, allows 4 KiB more. Default 16 KiB.
	MaxHeaderBytes int
	// HeaderTimeout bounds the reading of a request's head, from its first
	// byte on a kept-alive connection. Default ReadTimeout.
	HeaderTimeout time.Duration
	// IdleTimeout closes a kept-alive HTTP connection that sends no new
	// request for this long. Default 60s.
	IdleTimeout time.Duration
	// MaxHandshakes bounds the connections whose first request is being
	// read at once; more are answered 503. Default 1024.
	MaxHandshakes int
	// MaxUnauthenticatedPerAddr bounds the connections one source address
	// (an IPv4 address, an IPv6 /64) may hold before they are authenticated:
	// WebSocket connections until authenticated (anonymous ones count only
	// during the handshake), other HTTP connections for as long as they
	// stay open. More are answered 429. Default 128; negative: no limit
	// (behind a proxy, every client has the proxy's address).
	MaxUnauthenticatedPerAddr int

	// MaxMessageBytes bounds a client message (all its fragments); a
	// bigger one closes the connection with 1009. Default 64 KiB.
	MaxMessageBytes int
	// SendQueueBytes bounds what may wait to be written to one connection;
	// a client that lets more pile up is closed with 4008. Default 4 MiB.
	SendQueueBytes int
	// MaxSubscriptions per connection. Default 100. A token's
	// limits.subscriptions may lower it.
	MaxSubscriptions int
	// MaxConnsPerIdentity bounds the simultaneous connections of one
	// authenticated identity (token subject, API key name, or a token
	// without subject); more are closed with 4029. Default 100; a token's
	// limits.connections may lower it. Anonymous clients are not counted
	// per identity: the anonymous grants' limits.connections, when set,
	// caps all of them together instead.
	MaxConnsPerIdentity int
	// MessagesPerSecond bounds what one connection may send: beyond it (a
	// burst of twice as many is allowed) messages are dropped and answered
	// with rate_limited. Default 50.
	MessagesPerSecond int
	// MaxTopics bounds the custom topics; create-topic beyond it is
	// answered with too_many_topics. Default 1000.
	MaxTopics int
	// ReadTimeout bounds the reading of one client message once its first
	// byte has arrived, and the handshake. Default 10s.
	ReadTimeout time.Duration
	// WriteTimeout bounds one write to a client. Default 10s.
	WriteTimeout time.Duration
	// PingInterval is how often idle connections are pinged; a peer silent
	// for two intervals is dropped. Default 30s.
	PingInterval time.Duration

	// MaxReplays bounds the resumes (subscriptions with "from") reading
	// history at once on the gateway; the others wait their turn, in the
	// order they came, losing nothing (replays.go). Default 8.
	MaxReplays int
	// MaxReplaysPerConn bounds the resumes reading history at once on one
	// connection. Default 2.
	MaxReplaysPerConn int
	// ReplayRate bounds the messages of history all resumes together read
	// a second, so that live delivery keeps its latency while history is
	// served. Default 20,000.
	ReplayRate int

	// TxMarkers says that the readers publish transaction markers
	// (stream.TransactionSubject), which subscriptions with
	// "batch": "transaction" need. Default false: such subscriptions are
	// refused with CodeBatchUnavailable and TxMarkersOff.
	TxMarkers bool
	// TxMarkersOff is the message of that refusal, which the command line
	// makes name its setting. Default: a message naming none.
	TxMarkersOff string
	// BatchMaxEvents and BatchMaxBytes cut a transaction's events for a
	// batched subscription into frames ("more": true on all but the last)
	// of at most that many events, and of events adding up to at most that
	// many bytes (a larger event goes alone): what a gateway holds of one
	// transaction per subscription, and the largest frame it sends for
	// one. Defaults 1,000 and 1 MiB, a quarter of the default send queue,
	// so that a client keeping up is never closed for one frame.
	BatchMaxEvents int
	BatchMaxBytes  int

	// StartAfter, when set, holds the gateway not ready (WebSocket
	// upgrades are refused with 503) until it is closed and the tables
	// then reflect the schema registry as it stands at that moment.
	// tablecast run closes it once the reader has registered the
	// published tables. Nil: no wait.
	StartAfter <-chan struct{}
	// holdCatalog (tests) holds back the catalog's load until closed.
	holdCatalog <-chan struct{}
	// feedInboxBytes (tests) bounds a feed's inbox (inbox.go). Default
	// 8 MiB: a few thousand events, taken in well under a second, and
	// small beside the send queues of a feed's subscribers.
	feedInboxBytes int

	// Auth authenticates clients; nil lets every client in with every
	// grant (keep the gateway on loopback then).
	Auth *auth.Authenticator

	// Managed finds the rules and WebSocket endpoints clients subscribe
	// to by name (a *match.Registry). Nil: there are none.
	Managed Managed
	// Version is the build the status endpoint reports. Default "": none.
	Version string
	// Endpoints, when set, lists the managed endpoints identity id may
	// see, as the "endpoints" member of the status endpoint (StatusPath),
	// which the console shows as a table (an array of flat objects, one per
	// endpoint, reads best). Nil: the member is absent, and the console
	// hides its section.
	Endpoints func(ctx context.Context, id *auth.Identity) (any, error)
	// Rules, like Endpoints, lists the managed rules the caller may see,
	// for the console's rules section.
	Rules func(ctx context.Context, id *auth.Identity) (any, error)

	Logger *slog.Logger
	// Registerer receives the gateway's metrics (nil: none).
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = "tablecast"
	}
	if err := stream.ValidatePrefix(c.Prefix); err != nil {
		return c, err
	}
	if c.Stream == "" {
		c.Stream = "TABLECAST"
	}
	if c.SchemaBucket == "" {
		c.SchemaBucket = stream.DefaultSchemaBucket
	}
	if c.TopicBucket == "" {
		c.TopicBucket = stream.DefaultTopicBucket
	}
	if c.PayloadBucket == "" {
		c.PayloadBucket = stream.DefaultPayloadBucket
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 64 << 10
	}
	if c.SendQueueBytes <= 0 {
		c.SendQueueBytes = 4 << 20
	}
	if c.MaxSubscriptions <= 0 {
		c.MaxSubscriptions = 100
	}
	if c.MaxConnsPerIdentity <= 0 {
		c.MaxConnsPerIdentity = 100
	}
	if c.MessagesPerSecond <= 0 {
		c.MessagesPerSecond = 50
	}
	if c.MaxTopics <= 0 {
		c.MaxTopics = 1000
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 10 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 30 * time.Second
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 16 << 10
	}
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = c.ReadTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = 1024
	}
	if c.MaxUnauthenticatedPerAddr == 0 {
		c.MaxUnauthenticatedPerAddr = 128
	}
	if c.MaxReplays <= 0 {
		c.MaxReplays = 8
	}
	if c.MaxReplaysPerConn <= 0 {
		c.MaxReplaysPerConn = 2
	}
	if c.ReplayRate <= 0 {
		c.ReplayRate = 20000
	}
	if c.TxMarkersOff == "" {
		c.TxMarkersOff = "transaction batches need transaction markers, which the readers of this deployment do not publish"
	}
	if c.BatchMaxEvents <= 0 {
		c.BatchMaxEvents = 1000
	}
	if c.BatchMaxBytes <= 0 {
		c.BatchMaxBytes = 1 << 20
	}
	if c.feedInboxBytes <= 0 {
		c.feedInboxBytes = 8 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	for _, o := range c.AllowedOrigins {
		if o != "*" && !strings.Contains(o, "://") {
			return c, fmt.Errorf("allowed origin %q: want scheme://host[:port] or *", o)
		}
	}
	return c, nil
}

// Gateway is the WebSocket gateway. It serves clients from NATS alone: any
// number of gateways can run side by side.
type Gateway struct {
	cfg Config
	log *slog.Logger
	nc  *nats.Conn
	js  jetstream.JetStream
	str jetstream.Stream

	cat    *catalog.Catalog
	topics *stream.Topics
	claims *stream.Resolver // reads the objects claims name (claims.go)
	met    *metrics
	poll   poller

	feedMu sync.Mutex
	feeds  map[string]*feed
	// feedDrops counts the feeds a last unsubscribe stopped whose consumer
	// is being deleted (detach): Shutdown waits for them too.
	feedDrops atomic.Int64

	hosts      *hosts.Policy
	handshakes atomic.Int64       // connections whose first request is being read
	unauth     *connlimit.PerAddr // unauthenticated connections per address
	replays    *replays
	statuses   readerStatuses // the readers' status records (status.go)
	subCount   atomic.Int64   // subscriptions of all connections, as the metric

	connMu sync.Mutex
	conns  map[*conn]struct{}
	// byEndpoint are the connections following each WebSocket endpoint,
	// by endpoint id (connMu).
	byEndpoint map[string]map[*conn]struct{}
	identConns map[string]int // open connections per identity (auth.Identity.Key)

	writeq   chan *conn // connections with frames to write, for writeLoop
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closing  atomic.Bool
	ln       net.Listener
	httpLn   *chanListener
	httpSrv  *http.Server
	started  atomic.Bool
	serveErr chan error
}

// New checks the configuration and opens the buckets; Start begins
// watching them.
func New(ctx context.Context, cfg Config, nc *nats.Conn, js jetstream.JetStream) (*Gateway, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	str, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", cfg.Stream, err)
	}
	schemas, err := stream.OpenRegistry(ctx, js, cfg.SchemaBucket, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	topics, err := stream.OpenTopics(ctx, js, str, cfg.Prefix, cfg.TopicBucket, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	met := newMetrics(cfg.Registerer)
	g := &Gateway{
		cfg:        cfg,
		log:        cfg.Logger,
		nc:         nc,
		js:         js,
		str:        str,
		cat:        catalog.New(cfg.Prefix, cfg.Logger),
		topics:     topics,
		claims:     stream.NewResolver(js),
		met:        met,
		feeds:      map[string]*feed{},
		replays:    newReplays(cfg.MaxReplays, cfg.MaxReplaysPerConn, cfg.ReplayRate, met),
		conns:      map[*conn]struct{}{},
		identConns: map[string]int{},
		hosts:      hosts.NewPolicy(cfg.AllowedHosts, nil),
		unauth:     connlimit.NewPerAddr(cfg.MaxUnauthenticatedPerAddr),
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.poll, err = newPoller(g.dispatchRead)
	if err != nil {
		g.cancel()
		return nil, fmt.Errorf("start gateway poller: %w", err)
	}
	g.writeq = make(chan *conn, 1<<16)
	for range max(2, runtime.GOMAXPROCS(0)) {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.writeLoop()
		}()
	}
	g.wg.Add(2)
	go func() {
		defer g.wg.Done()
		g.cat.Run(g.ctx, schemas, topics, g.topicDestroyed, catalog.Start{After: cfg.StartAfter, Hold: cfg.holdCatalog, OnShape: g.shapeChanged})
	}()
	if cfg.Auth.Enabled() {
		// Closes the connections of API keys the keys file no longer holds.
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			cfg.Auth.WatchAPIKeys(g.ctx, g.recheckAPIKeys)
		}()
	}
	go func() {
		defer g.wg.Done()
		g.pingLoop()
	}()
	if f, ok := cfg.Managed.(EndpointSource); ok {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.followEndpoints(f)
		}()
	}
	return g, nil
}

// EndpointSource is what a Managed also gives for the connections of
// /ws/endpoints/<name> to follow their endpoint (a *match.Registry does):
// the endpoints by id, and a Listener of their changes.
type EndpointSource interface {
	Get(id string) *match.Entry
	Listen() *match.Listener
}

// followEndpoints applies each change of an endpoint to the connections
// following it, until the gateway stops.
func (g *Gateway) followEndpoints(src EndpointSource) {
	l := src.Listen()
	defer l.Close()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-l.C():
		}
		for _, id := range l.Take() {
			g.connMu.Lock()
			conns := make([]*conn, 0, len(g.byEndpoint[id]))
			for c := range g.byEndpoint[id] {
				conns = append(conns, c)
			}
			g.connMu.Unlock()
			if len(conns) == 0 {
				continue
			}
			e := src.Get(id)
			for _, c := range conns {
				c.endpointChanged(e)
			}
		}
	}
}

// followEndpoint records that c follows endpoint id, and indexes it.
func (g *Gateway) followEndpoint(c *conn, id string) {
	g.connMu.Lock()
	defer g.connMu.Unlock()
	if _, open := g.conns[c]; !open {
		return // released already: removeConn will not see it again
	}
	c.endpointID = id
	if g.byEndpoint == nil {
		g.byEndpoint = map[string]map[*conn]struct{}{}
	}
	m := g.byEndpoint[id]
	if m == nil {
		m = map[*conn]struct{}{}
		g.byEndpoint[id] = m
	}
	m[c] = struct{}{}
}

// endpointChanged applies a change of the endpoint c follows: e is its
// definition now, nil when deleted. An endpoint no longer an active
// WebSocket endpoint closes the connection with CloseEndpointGone.
func (c *conn) endpointChanged(e *match.Entry) {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if c.isClosing() {
		return
	}
	switch {
	case e == nil:
		c.closeWith(CloseEndpointGone, "the WebSocket endpoint was deleted")
		return
	case e.Endpoint.Type != endpoint.TypeWebSocket:
		c.closeWith(CloseEndpointGone, "the endpoint is no longer a WebSocket endpoint")
		return
	case e.Endpoint.State != endpoint.StateActive:
		c.closeWith(CloseEndpointGone, "the WebSocket endpoint is "+string(e.Endpoint.State))
		return
	}
	if perr := c.syncEndpoint(e); perr != nil {
		c.sendError("", perr.Code, perr.Message)
	}
}

// Ready reports whether the gateway has loaded the tables and topics and
// can serve subscriptions.
func (g *Gateway) Ready() bool { return g.notReady() == "" && !g.closing.Load() }

// notReadyRetryAfter is the Retry-After (seconds) of a WebSocket upgrade
// refused because the gateway is not ready: loading takes a moment, and a
// client retrying sooner would only be refused again.
const notReadyRetryAfter = 2

// notReady says why the gateway cannot serve subscriptions yet, "" when it
// can. WebSocket upgrades are refused meanwhile (503 and Retry-After), so
// that no client is told a table it asks for does not exist while the
// gateway is still learning the tables.
func (g *Gateway) notReady() string {
	switch {
	case !g.cat.Ready():
		return "the gateway is loading its tables and topics; retry shortly"
	case !g.nc.IsConnected():
		return "the gateway is not connected to NATS; retry shortly"
	}
	return ""
}

// refuseNotReady answers a WebSocket upgrade through net/http with 503 when
// the gateway is not ready, and reports whether it did.
func (g *Gateway) refuseNotReady(w http.ResponseWriter) bool {
	reason := g.notReady()
	if reason == "" {
		return false
	}
	w.Header().Set("Retry-After", strconv.Itoa(notReadyRetryAfter))
	http.Error(w, reason, http.StatusServiceUnavailable)
	return true
}

// Serve accepts connections on ln until Shutdown. WebSocket requests (GET
// /ws, /ws/tables/…) are upgraded without going through net/http; the
// gateway answers StatusPath itself; every other request is served by h
// (health, metrics, the console).
func (g *Gateway) Serve(ln net.Listener, h http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.Handle("/ws", g)
	mux.Handle("/ws/", g)
	mux.HandleFunc(StatusPath, g.serveStatus)
	g.hosts = hosts.NewPolicy(g.cfg.AllowedHosts, ln.Addr())
	if g.hosts.ReachableByName() && len(g.cfg.AllowedHosts) == 0 {
		// Off loopback, clients usually come by a name; without one listed
		// they are all answered 421.
		g.log.Warn("no host names allowed: only requests for an IP address (or localhost) are answered", "addr", ln.Addr().String())
	}
	httpLn := newChanListener(ln.Addr())
	httpSrv := &http.Server{
		Handler:           g.checkHead(g.checkHost(mux)),
		ReadHeaderTimeout: g.cfg.HeaderTimeout,
		// A whole request, body included, and its answer are bounded
		// too: net/http reads a body the handler left unread before it
		// answers, and a client that sends a Content-Length and no body,
		// or never reads the answer, would hold the connection forever.
		// An upgraded connection clears both (ServeHTTP).
		ReadTimeout:    2 * g.cfg.HeaderTimeout,
		WriteTimeout:   g.cfg.HeaderTimeout + g.cfg.WriteTimeout,
		IdleTimeout:    g.cfg.IdleTimeout,
		MaxHeaderBytes: g.cfg.MaxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
	g.connMu.Lock()
	if g.closing.Load() {
		g.connMu.Unlock()
		return nil
	}
	g.ln, g.httpLn, g.httpSrv = ln, httpLn, httpSrv
	g.connMu.Unlock()
	go func() { _ = httpSrv.Serve(httpLn) }()
	var tempDelay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if g.closing.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAccept(err) {
				// Out of file descriptors, typically: wait and retry
				// rather than spin or die.
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				g.log.Warn("gateway accept failed; retrying", "err", err, "retry_in", tempDelay)
				time.Sleep(tempDelay)
				continue
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		tempDelay = 0
		slot, ok := g.unauth.Acquire(nc.RemoteAddr())
		if !ok {
			g.met.refused.WithLabelValues("address").Inc()
			go connlimit.Refuse(nc, http.StatusTooManyRequests, "too many unauthenticated connections from your address", time.Second)
			continue
		}
		if g.handshakes.Add(1) > int64(g.cfg.MaxHandshakes) {
			g.handshakes.Add(-1)
			slot.Release()
			g.met.refused.WithLabelValues("handshakes").Inc()
			go connlimit.Refuse(nc, http.StatusServiceUnavailable, "too many connections being opened; retry", time.Second)
			continue
		}
		go g.handshake(nc, slot, httpLn)
	}
}

// Shutdown closes every WebSocket connection with 1001 (clients reconnect
// and resume elsewhere), stops the feeds and the HTTP side.
func (g *Gateway) Shutdown(ctx context.Context) {
	if g.closing.Swap(true) {
		return
	}
	g.connMu.Lock()
	ln, httpLn, httpSrv := g.ln, g.httpLn, g.httpSrv
	if ln != nil {
		_ = ln.Close()
		_ = httpLn.Close()
	}
	conns := make([]*conn, 0, len(g.conns))
	for c := range g.conns {
		conns = append(conns, c)
	}
	g.connMu.Unlock()
	for _, c := range conns {
		c.closeWith(CloseGoingAway, CloseGoingAway.Reason())
	}
	if httpSrv != nil {
		_ = httpSrv.Shutdown(ctx)
	}
	g.cancel()
	// The feeds' consumers are deleted, not left on the server for their
	// idle time: a gateway restarted often would pile them up.
	var drops sync.WaitGroup
	g.feedMu.Lock()
	for _, f := range g.feeds {
		// Stopped here once: the connections closing meanwhile detach
		// their subscriptions, and the last one must not stop it again.
		f.mu.Lock()
		f.stopped = true
		f.mu.Unlock()
		g.met.feeds.Dec()
		if name := f.stop(); name != "" {
			drops.Go(func() { g.deleteConsumer(name, "a feed's") })
		}
	}
	g.feeds = map[string]*feed{}
	g.feedMu.Unlock()
	g.poll.close()
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		drops.Wait()
		// Those of connections closed above, which may still be detaching:
		// a gateway whose process exits once Shutdown returns would leave
		// them on the server for their idle time.
		for g.feedDrops.Load() > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// pingLoop pings every connection each PingInterval and drops those that
// have been silent (not even a pong) for two intervals.
func (g *Gateway) pingLoop() {
	t := time.NewTicker(g.cfg.PingInterval)
	defer t.Stop()
	ping := finishFrame(append(newFrame(0), nil...), opPing)
	for {
		select {
		case <-g.ctx.Done():
			return
		case now := <-t.C:
			dead := now.Add(-2 * g.cfg.PingInterval).UnixNano()
			for _, c := range g.openConns() {
				if c.lastRead.Load() < dead {
					// No answer to pings: the peer is likely gone, but one
					// that only stopped reading is told why, as the
					// contract says (1001, reconnect and resume). What was
					// queued for it is dropped; the close frame gets one
					// write timeout, then the socket is closed anyway.
					c.shut(closeFrame(CloseGoingAway, "peer silent: no answer to pings for "+(2*g.cfg.PingInterval).String()), true)
					continue
				}
				c.enqueue(ping, false)
			}
		}
	}
}

// openConns returns the connections open now.
func (g *Gateway) openConns() []*conn {
	g.connMu.Lock()
	defer g.connMu.Unlock()
	return slices.Collect(maps.Keys(g.conns))
}

func (g *Gateway) addConn(c *conn) {
	g.connMu.Lock()
	g.conns[c] = struct{}{}
	n := len(g.conns)
	g.connMu.Unlock()
	g.met.connections.Set(float64(n))
}

func (g *Gateway) removeConn(c *conn) {
	g.connMu.Lock()
	delete(g.conns, c)
	if m := g.byEndpoint[c.endpointID]; m != nil {
		delete(m, c)
		if len(m) == 0 {
			delete(g.byEndpoint, c.endpointID)
		}
	}
	n := len(g.conns)
	g.connMu.Unlock()
	g.met.connections.Set(float64(n))
}

// Connections returns the number of open WebSocket connections.
func (g *Gateway) Connections() int {
	g.connMu.Lock()
	defer g.connMu.Unlock()
	return len(g.conns)
}

// admitIdentity counts a connection of an identity, refusing it beyond the
// identity's limit. It returns the key counted ("" for an identity that is
// not counted: anonymous clients without a limit of their own).
func (g *Gateway) admitIdentity(id *auth.Identity) (key string, ok bool) {
	key = id.Key()
	if key == "" {
		return "", true
	}
	limit := g.cfg.MaxConnsPerIdentity
	l := id.Grants.Limits().Connections
	switch {
	case id.Method == auth.MethodAnonymous:
		// Not one client's identity: the anonymous grants' own cap on
		// every anonymous connection together.
		limit = l
	case l > 0 && l < limit:
		limit = l
	}
	g.connMu.Lock()
	defer g.connMu.Unlock()
	if g.identConns[key] >= limit {
		return "", false
	}
	g.identConns[key]++
	return key, true
}

func (g *Gateway) leaveIdentity(key string) {
	g.connMu.Lock()
	defer g.connMu.Unlock()
	if g.identConns[key]--; g.identConns[key] <= 0 {
		delete(g.identConns, key)
	}
}

// recheckAPIKeys closes the connections whose API key is gone and
// re-applies the claims of those whose key changed, each on a goroutine of
// its own (a connection busy with a message is dealt with when that is
// done).
func (g *Gateway) recheckAPIKeys() {
	g.connMu.Lock()
	var conns []*conn
	for c := range g.conns {
		if c.apiKey.Load() {
			conns = append(conns, c)
		}
	}
	g.connMu.Unlock()
	for _, c := range conns {
		go func() {
			c.authMu.Lock()
			defer c.authMu.Unlock()
			c.recheckAPIKey()
		}()
	}
}
