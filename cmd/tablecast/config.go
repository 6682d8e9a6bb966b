package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/kelseyhightower/envconfig"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/cdc"
	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/stream"
	"github.com/tablecast/tablecast/wsgate"
)

// envPrefix is the prefix of every environment variable tablecast reads.
const envPrefix = "TABLECAST"

// minMaxEventBytes is the smallest TABLECAST_MAX_EVENT_BYTES accepted: below
// it, ordinary rows would lose their data.
const minMaxEventBytes = 64 << 10

// Config is everything tablecast reads from its environment. Each field's
// default is in its tag; `tablecast help` prints them all.
type Config struct {
	DatabaseURL string   `envconfig:"DATABASE_URL" desc:"PostgreSQL connection string (the cdc side); required by run and cdc"`
	Publication string   `envconfig:"PUBLICATION" default:"tablecast" desc:"publication to read; created if missing"`
	Tables      []string `envconfig:"TABLES" default:"*" desc:"tables the created publication covers: comma-separated schema.table list, * for all"`
	Slot        string   `envconfig:"SLOT" default:"tablecast" desc:"logical replication slot; created if missing"`

	NATSURL       string `envconfig:"NATS_URL" desc:"NATS server URL(s), comma-separated; empty runs an embedded NATS with JetStream"`
	NATSListen    string `envconfig:"NATS_LISTEN" default:"127.0.0.1:4222" desc:"where the embedded NATS listens, so backend services can connect; off loopback it needs credentials"`
	DataDir       string `envconfig:"DATA_DIR" default:"./data" desc:"where the embedded NATS keeps its JetStream files; one process at a time (a second is refused, naming the first)"`
	NATSMaxStore  int64  `envconfig:"NATS_MAX_STORE" default:"8589934592" desc:"bytes the embedded NATS's JetStream may store (8 GiB; at least 128 MiB), the same on every start, never sized from the free disk"`
	NATSMinFree   int64  `envconfig:"NATS_MIN_FREE" default:"268435456" desc:"free bytes on TABLECAST_DATA_DIR's disk below which /healthz is unhealthy (256 MiB); a JetStream stopped by a full disk restarts once more is free; 0: no minimum"`
	SubjectPrefix string `envconfig:"SUBJECT_PREFIX" default:"tablecast" desc:"first token of every subject"`

	NATSUser         string   `envconfig:"NATS_USER" desc:"user tablecast signs in to NATS as, with TABLECAST_NATS_PASSWORD; the embedded NATS gives it every permission"`
	NATSPassword     string   `envconfig:"NATS_PASSWORD" desc:"password of TABLECAST_NATS_USER"`
	NATSToken        string   `envconfig:"NATS_TOKEN" desc:"token tablecast signs in to NATS with; the embedded NATS gives it every permission"`
	NATSNKey         string   `envconfig:"NATS_NKEY" desc:"file holding the user nkey seed (SU…) tablecast signs in to NATS with; the embedded NATS gives its public key every permission"`
	NATSCreds        string   `envconfig:"NATS_CREDS" desc:"NATS credentials file (user JWT and seed) for an external TABLECAST_NATS_URL in operator mode"`
	NATSReadUser     string   `envconfig:"NATS_READ_USER" desc:"a user of the embedded NATS that may only read events (subscribe, JetStream consumers), with TABLECAST_NATS_READ_PASSWORD: for backend services"`
	NATSReadPassword string   `envconfig:"NATS_READ_PASSWORD" desc:"password of TABLECAST_NATS_READ_USER"`
	NATSReadNKeys    []string `envconfig:"NATS_READ_NKEYS" desc:"public user nkeys (U…), comma-separated, that may only read from the embedded NATS"`
	NATSTLSCert      string   `envconfig:"NATS_TLS_CERT" desc:"certificate file (PEM, with its chain) the embedded NATS serves TLS with, with TABLECAST_NATS_TLS_KEY; clients must then use TLS"`
	NATSTLSKey       string   `envconfig:"NATS_TLS_KEY" desc:"private key file (PEM) of TABLECAST_NATS_TLS_CERT"`
	NATSTLSCA        string   `envconfig:"NATS_TLS_CA" desc:"CA certificates (PEM) that sign an external NATS's certificate, when the system does not trust it"`

	Stream          string        `envconfig:"STREAM" default:"TABLECAST" desc:"JetStream stream that holds every event: letters, digits, _ and - (the dead letters' bucket <STREAM>_DEADLETTER_BODIES is named after it)"`
	DuplicateWindow time.Duration `envconfig:"DUPLICATE_WINDOW" default:"1s" desc:"JetStream duplicate window: a message whose Nats-Msg-Id was stored within it is dropped (the reader skips older repeats itself)"`
	StreamMaxAge    time.Duration `envconfig:"STREAM_MAX_AGE" default:"168h" desc:"how long the stream keeps events (7 days); 0 keeps them until STREAM_MAX_BYTES"`
	StreamMaxBytes  int64         `envconfig:"STREAM_MAX_BYTES" desc:"size limit of the stream in bytes, oldest events dropped first; unset: three quarters of TABLECAST_NATS_MAX_STORE (6 GiB), at most the store less the 64 MiB the buckets need; -1: none (external NATS only)"`
	StreamReplicas  int           `envconfig:"STREAM_REPLICAS" default:"1" desc:"copies of the stream and of every bucket, in a NATS cluster"`
	MaxInFlight     int           `envconfig:"MAX_IN_FLIGHT" default:"8192" desc:"events published but not yet acknowledged by JetStream, at most"`
	MaxEventBytes   int           `envconfig:"MAX_EVENT_BYTES" default:"67108864" desc:"largest event published whole; one larger than NATS's max payload goes to the TABLECAST_PAYLOADS object store with a claim in the stream, one larger than this is published without its rows and dead-lettered"`

	HTTPAddr          string        `envconfig:"HTTP_ADDR" default:"127.0.0.1:8080" desc:"gateway address: WebSocket /ws, the page at /, the JavaScript client at /tablecast.js, /healthz, /readyz and /metrics"`
	StallAfter        time.Duration `envconfig:"STALL_AFTER" default:"60s" desc:"unhealthy when the slot has not advanced for this long while lagging STALL_LAG_BYTES"`
	StallLagBytes     int64         `envconfig:"STALL_LAG_BYTES" default:"16777216" desc:"WAL lag in bytes that counts as stalled after STALL_AFTER"`
	Snapshot          string        `envconfig:"SNAPSHOT" default:"initial" desc:"when the slot is created: initial publishes the rows already there as op read, never does not"`
	Heartbeat         time.Duration `envconfig:"HEARTBEAT_INTERVAL" default:"10s" desc:"how often a heartbeat is written to the WAL so an idle slot advances and lag is measured; 0 turns it off"`
	SchedBatch        bool          `envconfig:"SCHED_BATCH" default:"true" desc:"run and cdc put their threads under Linux's SCHED_BATCH scheduling policy, so that the walsender feeding the reader is not preempted at every change it sends when they share a CPU (threads already under another policy keep it); false leaves the policy as started"`
	LeaderLease       time.Duration `envconfig:"LEADER_LEASE" default:"5s" desc:"readers of one slot share a lease in NATS: the holder streams, the others stand by and take over once it has not been renewed for this long (at least 1s)"`
	TopicRoles        []string      `envconfig:"TOPIC_ROLES" desc:"database roles that may publish custom-topic messages (pg_logical_emit_message), comma-separated; tablecast doctor warns about any other; empty: only tablecast's role and superusers"`
	RowState          bool          `envconfig:"ROW_STATE" default:"false" desc:"keep the latest version of every row in JetStream (stream <TABLECAST_STREAM>_ROWS), so that subscriptions with snapshot (live views) start from the rows that match now; run and cdc; about doubles what JetStream stores per change"`
	RowStateTables    []string      `envconfig:"ROW_STATE_TABLES" default:"*" desc:"tables whose rows are kept: comma-separated schema.table or schema.* patterns, * for all"`
	OldRows           []string      `envconfig:"OLD_ROWS_TABLES" desc:"tables whose updates and deletes carry the complete old row, and whose updates the values PostgreSQL left out as unchanged TOAST, taken from the row state: comma-separated schema.table or schema.* patterns, * for all, within TABLECAST_ROW_STATE_TABLES (needs TABLECAST_ROW_STATE=true); run and cdc; empty: none"`
	OldRowsCacheBytes int           `envconfig:"OLD_ROWS_CACHE_BYTES" default:"67108864" desc:"memory the reader keeps the rows it published in, for TABLECAST_OLD_ROWS_TABLES, until the row state has applied them; when full the reader waits for the state"`
	TxMarkers         bool          `envconfig:"TX_MARKERS" default:"false" desc:"publish a transaction marker (xid, commit LSN and time, events per table) after each transaction's events, on <TABLECAST_SUBJECT_PREFIX>.<db>.%tx; needed by subscriptions with batch transaction; run, cdc and gateway must agree; adds a message per transaction (for single-row transactions nearly doubles what JetStream stores)"`

	JWTSecret             string        `envconfig:"JWT_SECRET" desc:"HS256 secret (32 bytes or more) that client tokens are signed with; empty: HS256 off"`
	JWTKeys               string        `envconfig:"JWT_KEYS" desc:"PEM or JWKS file of public keys for RS256, ES256 and EdDSA client tokens, reloaded when it changes; empty: off"`
	JWTAudience           string        `envconfig:"JWT_AUDIENCE" desc:"the aud a client token must carry; empty: not checked"`
	JWTIssuer             string        `envconfig:"JWT_ISSUER" desc:"the iss a client token must carry; empty: not checked"`
	JWTAllowNoSubject     bool          `envconfig:"JWT_ALLOW_NO_SUBJECT" default:"false" desc:"accept client tokens without sub; each such token is then an identity of its own (its own connection limit) and cannot be refreshed in band"`
	APIKeysFile           string        `envconfig:"API_KEYS_FILE" desc:"JSON file of service API keys, a list of {name, hash (sha256:<hex>), claims}, reloaded when it changes and on SIGHUP; empty: none"`
	AllowAnonymous        bool          `envconfig:"ALLOW_ANONYMOUS" default:"false" desc:"let clients in without credentials, with every grant, on a non-loopback TABLECAST_HTTP_ADDR"`
	AnonymousGrants       string        `envconfig:"ANONYMOUS_GRANTS" desc:"grants of clients that present no credential, JSON like the tablecast claim ({\"tables\":{\"public.prices\":[\"*\"]}}) or @/path/to/file.json; empty: such clients are refused once authentication is on"`
	AllowedOrigins        []string      `envconfig:"ALLOWED_ORIGINS" desc:"origins allowed to open a WebSocket, comma-separated scheme://host[:port], * for any; empty: the gateway's own origin only (requests without Origin are not checked)"`
	AllowedHosts          []string      `envconfig:"ALLOWED_HOSTS" desc:"host names the gateway answers (the Host header, without port), comma-separated, *.example.com for subdomains, * for any; always answered: localhost and loopback IPs when listening on loopback, the listening IP, any IP when listening on every address, the TLS certificate's names; others get 421. The admin API answers the same names, but without authentication not * (a DNS rebinding page would pass it)"`
	HTTPMaxHeaderBytes    int           `envconfig:"HTTP_MAX_HEADER_BYTES" default:"16384" desc:"largest request head (request line and headers) before a client is authenticated; beyond, 431 (414 for a request line over 8 KiB)"`
	HTTPHeaderTimeout     time.Duration `envconfig:"HTTP_HEADER_TIMEOUT" default:"10s" desc:"time for a request's head to arrive, WebSocket handshakes included; the connection is closed beyond"`
	HTTPIdleTimeout       time.Duration `envconfig:"HTTP_IDLE_TIMEOUT" default:"60s" desc:"a kept-alive HTTP connection that sends no new request for this long is closed"`
	HTTPMaxHandshakes     int           `envconfig:"HTTP_MAX_HANDSHAKES" default:"1024" desc:"connections whose first request is being read at once, at most; more are answered 503"`
	HTTPMaxUnauthPerAddr  int           `envconfig:"HTTP_MAX_UNAUTHENTICATED_PER_ADDR" default:"128" desc:"connections one client address (IPv4, IPv6 /64) may hold before authenticating (plain HTTP ones for their whole life); more are answered 429; -1 for no limit (behind a proxy)"`
	WSMaxMessage          int           `envconfig:"WS_MAX_MESSAGE" default:"65536" desc:"largest client WebSocket message in bytes; a bigger one closes the connection with 1009"`
	WSSendQueue           int           `envconfig:"WS_SEND_QUEUE" default:"4194304" desc:"bytes that may wait to be sent to one client; beyond, it is closed with 4008 and resumes from its last seq"`
	WSMaxSubs             int           `envconfig:"WS_MAX_SUBSCRIPTIONS" default:"100" desc:"subscriptions one WebSocket connection may hold"`
	WSBatchEvents         int           `envconfig:"WS_BATCH_EVENTS" default:"1000" desc:"events of one transaction in one transaction frame (subscriptions with batch transaction); a larger transaction is cut into several frames"`
	WSBatchBytes          int           `envconfig:"WS_BATCH_BYTES" default:"1048576" desc:"bytes of events in one transaction frame (a larger event goes alone); with TABLECAST_WS_BATCH_EVENTS what the gateway holds of a transaction per subscription"`
	WSMaxConnsPerIdentity int           `envconfig:"WS_MAX_CONNECTIONS_PER_IDENTITY" default:"100" desc:"simultaneous connections of one token subject or API key; more are closed with 4029 (a token's limits.connections may lower it)"`
	WSMessagesPerSecond   int           `envconfig:"WS_MESSAGES_PER_SECOND" default:"50" desc:"messages a connection may send a second (bursts of twice that); beyond, they are dropped and answered rate_limited"`
	MaxTopics             int           `envconfig:"MAX_TOPICS" default:"1000" desc:"custom topics at most; create-topic beyond is answered too_many_topics"`
	TLSCert               string        `envconfig:"TLS_CERT" desc:"certificate file (PEM, with its chain) for https and wss on TABLECAST_HTTP_ADDR; with TABLECAST_TLS_KEY"`
	TLSKey                string        `envconfig:"TLS_KEY" desc:"private key file (PEM) of TABLECAST_TLS_CERT"`
	WSPingInterval        time.Duration `envconfig:"WS_PING_INTERVAL" default:"30s" desc:"how often idle WebSocket clients are pinged; one silent for two intervals is closed with 1001"`
	WSReadTimeout         time.Duration `envconfig:"WS_READ_TIMEOUT" default:"10s" desc:"time for a client message to arrive whole once begun"`
	WSWriteTimeout        time.Duration `envconfig:"WS_WRITE_TIMEOUT" default:"10s" desc:"time one write to a client may take before the client is dropped"`
	WSMaxReplays          int           `envconfig:"WS_MAX_REPLAYS" default:"8" desc:"resumes (subscriptions with from) reading history at once on the gateway; more wait their turn, losing nothing"`
	WSMaxReplaysPerConn   int           `envconfig:"WS_MAX_REPLAYS_PER_CONNECTION" default:"2" desc:"resumes reading history at once on one WebSocket connection"`
	WSReplayRate          int           `envconfig:"WS_REPLAY_RATE" default:"20000" desc:"messages of history all resumes together read a second, so that live delivery keeps its latency"`

	Webhooks         bool     `envconfig:"WEBHOOKS" default:"true" desc:"deliver the webhook endpoints' events (tablecast run and gateway); several processes share each endpoint, one delivering at a time"`
	WebhookAllowNets []string `envconfig:"WEBHOOK_ALLOW_NETS" desc:"networks (CIDR, comma-separated, such as 10.0.0.0/8) webhooks may be sent to although private, loopback or link-local; empty: public addresses only"`
	AdminAddr        string   `envconfig:"ADMIN_ADDR" default:"127.0.0.1:8091" desc:"address of the admin API (managed endpoints, filters and rules; HTTP and JSON) served by run and gateway; off turns it off; off loopback it needs authentication (TABLECAST_JWT_SECRET, TABLECAST_JWT_KEYS or TABLECAST_API_KEYS_FILE) and callers the admin grant"`
	AdminURL         string   `envconfig:"ADMIN_URL" desc:"admin API the endpoints, filters and rules commands call (http://host:port); empty: http:// and TABLECAST_ADMIN_ADDR"`
	AdminToken       string   `envconfig:"ADMIN_TOKEN" desc:"JWT or API key the endpoints, filters and rules commands send as Authorization: Bearer; empty: none (enough on loopback without authentication)"`

	PProf     bool   `envconfig:"PPROF" default:"false" desc:"serve Go's profiler at /debug/pprof/ on TABLECAST_HTTP_ADDR (keep that address private)"`
	LogLevel  string `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	LogFormat string `envconfig:"LOG_FORMAT" default:"text" desc:"text or json"`
}

// loadConfig reads the environment and returns every problem at once, each
// naming its variable.
func loadConfig() (Config, error) {
	var c Config
	syntaxErrs, bad := checkSyntax(os.LookupEnv)
	// A variable that does not parse is read as unset (its default), so
	// that the checks of the others still run and every problem is said at
	// once; the environment is left as it was.
	for _, key := range bad {
		v, _ := os.LookupEnv(key)
		_ = os.Unsetenv(key)
		defer os.Setenv(key, v)
	}
	if err := envconfig.Process(envPrefix, &c); err != nil {
		// checkSyntax parses what envconfig parses, so this is not expected.
		return c, fmt.Errorf("read environment: %w", err)
	}
	if _, set := os.LookupEnv(envPrefix + "_STREAM_MAX_BYTES"); !set {
		// Three quarters of the store, and in a small store what it has
		// beyond what the buckets need.
		c.StreamMaxBytes = stream.StreamBytesFor(c.NATSMaxStore)
		if c.NATSMaxStore >= minMaxStore { // else the store is refused
			c.StreamMaxBytes = min(c.StreamMaxBytes, c.NATSMaxStore-storeReserve)
		}
	}
	errs := syntaxErrs
	if c.DatabaseURL != "" {
		if err := checkDatabaseURL(c.DatabaseURL); err != nil {
			errs = append(errs, err)
		}
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > stream.MaxInFlightLimit {
		errs = append(errs, fmt.Errorf("TABLECAST_MAX_IN_FLIGHT %d: must be between 1 and %d", c.MaxInFlight, stream.MaxInFlightLimit))
	}
	if _, err := rowstate.ParsePatterns(c.RowStateTables); err != nil {
		errs = append(errs, fmt.Errorf("TABLECAST_ROW_STATE_TABLES: %w", err))
	}
	errs = append(errs, c.checkOldRows()...)
	if c.StallAfter <= 0 {
		errs = append(errs, fmt.Errorf("TABLECAST_STALL_AFTER %s: must be positive", c.StallAfter))
	}
	if c.StallLagBytes <= 0 {
		errs = append(errs, fmt.Errorf("TABLECAST_STALL_LAG_BYTES %d: must be positive", c.StallLagBytes))
	}
	if c.Heartbeat < 0 {
		errs = append(errs, fmt.Errorf("TABLECAST_HEARTBEAT_INTERVAL %s: must be positive, or 0 to turn heartbeats off", c.Heartbeat))
	}
	if c.LeaderLease < time.Second {
		errs = append(errs, fmt.Errorf("TABLECAST_LEADER_LEASE %s: must be at least 1s", c.LeaderLease))
	}
	if c.StreamMaxAge < 0 {
		errs = append(errs, fmt.Errorf("TABLECAST_STREAM_MAX_AGE %s: must be positive, or 0 for no age limit", c.StreamMaxAge))
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		errs = append(errs, fmt.Errorf("TABLECAST_STREAM_REPLICAS %d: must be between 1 and 5", c.StreamReplicas))
	}
	if err := stream.ValidatePrefix(c.SubjectPrefix); err != nil {
		errs = append(errs, fmt.Errorf("TABLECAST_SUBJECT_PREFIX: %w", err))
	} else if first, _, _ := strings.Cut(c.SubjectPrefix, "."); first == "_TABLECAST" {
		errs = append(errs, fmt.Errorf("TABLECAST_SUBJECT_PREFIX %q: the token _TABLECAST starts tablecast's control subjects, which no stream may hold; choose another prefix", c.SubjectPrefix))
	}
	if c.NATSURL == "" {
		if _, _, err := net.SplitHostPort(c.NATSListen); err != nil {
			errs = append(errs, fmt.Errorf("TABLECAST_NATS_LISTEN %q: %w", c.NATSListen, err))
		}
		if c.DataDir == "" {
			errs = append(errs, errors.New("TABLECAST_DATA_DIR is empty: the embedded NATS needs a directory"))
		}
		others := []struct{ name, addr string }{{"TABLECAST_HTTP_ADDR", c.HTTPAddr}}
		if c.adminEnabled() {
			others = append(others, struct{ name, addr string }{"TABLECAST_ADMIN_ADDR", c.AdminAddr})
		}
		for _, o := range others {
			if sharePort(c.NATSListen, o.addr) {
				errs = append(errs, fmt.Errorf("TABLECAST_NATS_LISTEN %s and %s %s take the same port: the embedded NATS needs an address of its own", c.NATSListen, o.name, o.addr))
			}
		}
	}
	errs = append(errs, c.checkNATS()...)
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		errs = append(errs, fmt.Errorf("TABLECAST_HTTP_ADDR %q: %w", c.HTTPAddr, err))
	}
	errs = append(errs, c.checkAdmin()...)
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("TABLECAST_LOG_FORMAT %q: want text or json", c.LogFormat))
	}
	for name, v := range map[string]int{"TABLECAST_WS_MAX_MESSAGE": c.WSMaxMessage, "TABLECAST_WS_SEND_QUEUE": c.WSSendQueue, "TABLECAST_WS_MAX_SUBSCRIPTIONS": c.WSMaxSubs,
		"TABLECAST_WS_MAX_CONNECTIONS_PER_IDENTITY": c.WSMaxConnsPerIdentity, "TABLECAST_WS_MESSAGES_PER_SECOND": c.WSMessagesPerSecond, "TABLECAST_MAX_TOPICS": c.MaxTopics,
		"TABLECAST_HTTP_MAX_HANDSHAKES": c.HTTPMaxHandshakes, "TABLECAST_WS_MAX_REPLAYS": c.WSMaxReplays, "TABLECAST_WS_MAX_REPLAYS_PER_CONNECTION": c.WSMaxReplaysPerConn, "TABLECAST_WS_REPLAY_RATE": c.WSReplayRate,
		"TABLECAST_WS_BATCH_EVENTS": c.WSBatchEvents, "TABLECAST_WS_BATCH_BYTES": c.WSBatchBytes} {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s %d: must be positive", name, v))
		}
	}
	if c.HTTPMaxHeaderBytes < 1024 {
		errs = append(errs, fmt.Errorf("TABLECAST_HTTP_MAX_HEADER_BYTES %d: must be 1024 or more (browsers send about 1 KiB of headers)", c.HTTPMaxHeaderBytes))
	}
	if c.HTTPMaxUnauthPerAddr == 0 || c.HTTPMaxUnauthPerAddr < -1 {
		errs = append(errs, fmt.Errorf("TABLECAST_HTTP_MAX_UNAUTHENTICATED_PER_ADDR %d: must be positive, or -1 for no limit", c.HTTPMaxUnauthPerAddr))
	}
	for i, h := range c.AllowedHosts {
		c.AllowedHosts[i] = strings.TrimSpace(h)
		if h := c.AllowedHosts[i]; h == "" || strings.ContainsAny(h, "/@ ") || strings.Contains(h, ":") && net.ParseIP(strings.Trim(h, "[]")) == nil {
			errs = append(errs, fmt.Errorf("TABLECAST_ALLOWED_HOSTS %q: want a host name or IP without scheme or port (app.example.com, *.example.com, 10.0.0.5), or *", h))
		}
	}
	for name, v := range map[string]time.Duration{"TABLECAST_WS_PING_INTERVAL": c.WSPingInterval, "TABLECAST_WS_READ_TIMEOUT": c.WSReadTimeout, "TABLECAST_WS_WRITE_TIMEOUT": c.WSWriteTimeout,
		"TABLECAST_HTTP_HEADER_TIMEOUT": c.HTTPHeaderTimeout, "TABLECAST_HTTP_IDLE_TIMEOUT": c.HTTPIdleTimeout} {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s %s: must be positive", name, v))
		}
	}
	for i, o := range c.AllowedOrigins {
		c.AllowedOrigins[i] = strings.TrimSpace(o)
		if o := c.AllowedOrigins[i]; o != "*" && !strings.Contains(o, "://") {
			errs = append(errs, fmt.Errorf("TABLECAST_ALLOWED_ORIGINS %q: want scheme://host[:port] or *", o))
		}
	}
	if c.AllowAnonymous && c.AnonymousGrants != "" {
		errs = append(errs, errors.New("TABLECAST_ALLOW_ANONYMOUS and TABLECAST_ANONYMOUS_GRANTS contradict each other: the first lets clients without credentials in with every grant when no authentication is configured, the second gives them only the grants it lists; unset one"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("TABLECAST_TLS_CERT and TABLECAST_TLS_KEY go together: set both, or neither"))
	}
	switch {
	case c.DuplicateWindow < 100*time.Millisecond:
		errs = append(errs, fmt.Errorf("TABLECAST_DUPLICATE_WINDOW %s: must be at least 100ms, it drops the repeats of a publish that failed midway", c.DuplicateWindow))
	case c.StreamMaxAge > 0 && c.DuplicateWindow > c.StreamMaxAge:
		errs = append(errs, fmt.Errorf("TABLECAST_DUPLICATE_WINDOW %s: must not exceed TABLECAST_STREAM_MAX_AGE %s", c.DuplicateWindow, c.StreamMaxAge))
	}
	if c.MaxEventBytes < minMaxEventBytes {
		errs = append(errs, fmt.Errorf("TABLECAST_MAX_EVENT_BYTES %d: must be at least %d (64 KiB); events above it lose their rows", c.MaxEventBytes, minMaxEventBytes))
	}
	for i, t := range c.Tables {
		c.Tables[i] = strings.TrimSpace(t)
	}
	if _, err := c.webhookAllowNets(); err != nil {
		errs = append(errs, err)
	}
	for i, r := range c.TopicRoles {
		c.TopicRoles[i] = strings.TrimSpace(r)
		if c.TopicRoles[i] == "" {
			errs = append(errs, errors.New("TABLECAST_TOPIC_ROLES: an empty role name (a doubled or trailing comma?)"))
		}
	}
	if !validStreamName(c.Stream) {
		errs = append(errs, fmt.Errorf("TABLECAST_STREAM %q: want a JetStream stream name of letters, digits, '_' and '-' (TABLECAST): the buckets named after it (<STREAM>_DEADLETTER_BODIES) take no other characters", c.Stream))
	}
	// What the reader refuses, said here with the rest rather than by
	// `run` and `cdc` once the embedded NATS has started and the stream
	// has been made on disk, one refusal hiding the others.
	errs = append(errs, readerSettingErrors(c.cdcConfig().Check(), errs)...)
	return c, errors.Join(errs...)
}

// readerSettingErrors are the problems of the reader's settings (err from
// cdc.Config.Check), each naming its variable, but those of a variable
// that reported names already: it has said what is wrong in its own words.
func readerSettingErrors(err error, reported []error) []error {
	if err == nil {
		return nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	var out []error
	for _, e := range errs {
		var ce *cdc.ConfigError
		if errors.As(e, &ce) && variableOf(ce.Field()) != "" {
			v := variableOf(ce.Field())
			if slices.ContainsFunc(reported, func(r error) bool { return strings.HasPrefix(r.Error(), v+" ") || strings.HasPrefix(r.Error(), v+":") }) {
				continue
			}
			e = fmt.Errorf("%s: %s", v, ce.Problem())
		}
		out = append(out, e)
	}
	return out
}

// misspelledVariables returns, for each TABLECAST_ variable of env (KEY=value
// pairs) that tablecast does not read but that is within two edits of one
// it reads, the pair of both names: a misspelled variable is otherwise
// ignored without a word, its default used instead (another slot, another
// stream). Names further from any are left alone: scripts and tests have
// TABLECAST_ variables of their own.
func misspelledVariables(env []string) [][2]string {
	known := map[string]bool{}
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		known[envPrefix+"_"+t.Field(i).Tag.Get("envconfig")] = true
	}
	var out [][2]string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, envPrefix+"_") || known[k] {
			continue
		}
		best, dist := "", 3
		for name := range known {
			if d := editDistance(k, name); d < dist || d == dist && name < best {
				best, dist = name, d
			}
		}
		if best != "" {
			out = append(out, [2]string{k, best})
		}
	}
	return out
}

// editDistance is the number of single-byte insertions, deletions and
// substitutions that turn a into b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// checkSyntax parses every TABLECAST_ variable that is set with the rules of
// its field's type, and says what is wrong in the user's words, every
// problem at once: envconfig stops at the first and names Go types.
func checkSyntax(lookup func(string) (string, bool)) (errs []error, bad []string) {
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		key := envPrefix + "_" + f.Tag.Get("envconfig")
		v, ok := lookup(key)
		if !ok {
			continue
		}
		var problem string
		switch {
		case f.Type == reflect.TypeFor[time.Duration]():
			if _, err := time.ParseDuration(v); err != nil {
				problem = "not a duration: write a number with a unit, such as 500ms, 30s, 5m or 2h"
			}
		case f.Type.Kind() == reflect.Int || f.Type.Kind() == reflect.Int64:
			if _, err := strconv.ParseInt(v, 0, f.Type.Bits()); err != nil {
				problem = "not a whole number"
				if errors.Is(err, strconv.ErrRange) {
					problem = "out of range"
				}
			}
		case f.Type.Kind() == reflect.Bool:
			if _, err := strconv.ParseBool(v); err != nil {
				problem = "want true or false"
			}
		}
		if problem != "" {
			errs = append(errs, fmt.Errorf("%s %q: %s", key, v, problem))
			bad = append(bad, key)
		}
	}
	return errs, bad
}

// checkDatabaseURL rejects a connection string PostgreSQL's driver would
// misread, saying why, without printing its password. A mistyped scheme is
// named: the driver would otherwise read the URL as key=value pairs and
// answer about those.
func checkDatabaseURL(dsn string) error {
	if scheme, _, ok := strings.Cut(dsn, "://"); ok && !strings.ContainsAny(scheme, " =") {
		if scheme != "postgres" && scheme != "postgresql" {
			return fmt.Errorf("TABLECAST_DATABASE_URL: scheme %q is not postgres:// or postgresql://", scheme)
		}
	}
	if _, err := pgconn.ParseConfig(dsn); err != nil {
		// pgconn's message shows the string with its password redacted.
		return fmt.Errorf("TABLECAST_DATABASE_URL: not a PostgreSQL connection string (postgres://user:password@host:port/database, or key=value pairs): %s", oneLine(err))
	}
	return nil
}

func (c Config) cdcConfig() cdc.Config {
	return cdc.Config{
		SettingName:       variableOf,
		DatabaseURL:       c.DatabaseURL,
		Publication:       c.Publication,
		Tables:            c.Tables,
		Slot:              c.Slot,
		Stream:            c.Stream,
		Snapshot:          c.Snapshot,
		MaxInFlight:       c.MaxInFlight,
		MaxEventBytes:     c.MaxEventBytes,
		StallAfter:        c.StallAfter,
		StallLagBytes:     c.StallLagBytes,
		TopicRoles:        c.TopicRoles,
		LeaderLease:       c.LeaderLease,
		OldRows:           c.OldRows,
		OldRowsCacheBytes: c.OldRowsCacheBytes,
		TxMarkers:         c.TxMarkers,
		HeartbeatInterval: func() time.Duration {
			if c.Heartbeat == 0 {
				return -1 // off
			}
			return c.Heartbeat
		}(),
	}
}

// authVariables names the variable each field of auth.Config comes
// from, for its errors.
var authVariables = map[string]string{
	"JWTSecret":       "TABLECAST_JWT_SECRET",
	"JWTKeysFile":     "TABLECAST_JWT_KEYS",
	"Audience":        "TABLECAST_JWT_AUDIENCE",
	"Issuer":          "TABLECAST_JWT_ISSUER",
	"APIKeysFile":     "TABLECAST_API_KEYS_FILE",
	"AnonymousGrants": "TABLECAST_ANONYMOUS_GRANTS",
}

// authenticator builds the gateway's authentication from the JWT, API key
// and anonymous grants variables; with none of them, clients are
// anonymous with every grant, which is refused off loopback unless
// TABLECAST_ALLOW_ANONYMOUS is set.
func (c Config) authenticator(log *slog.Logger) (*auth.Authenticator, error) {
	ac := auth.Config{JWTSecret: []byte(c.JWTSecret), JWTKeysFile: c.JWTKeys, Audience: c.JWTAudience, Issuer: c.JWTIssuer,
		AllowNoSubject: c.JWTAllowNoSubject, APIKeysFile: c.APIKeysFile, Logger: log}
	if g := strings.TrimSpace(c.AnonymousGrants); g != "" {
		data := []byte(g)
		if path, ok := strings.CutPrefix(g, "@"); ok {
			var err error
			if data, err = os.ReadFile(path); err != nil {
				return nil, fmt.Errorf("TABLECAST_ANONYMOUS_GRANTS: %w", err)
			}
		}
		var err error
		if ac.AnonymousGrants, err = auth.ParseGrants(data); err != nil {
			return nil, fmt.Errorf("TABLECAST_ANONYMOUS_GRANTS: %w", err)
		}
	}
	authn, err := auth.New(ac)
	if err != nil {
		return nil, nameAuthErrors(err)
	}
	if !authn.Enabled() && !c.AllowAnonymous && !loopback(c.HTTPAddr) {
		return nil, fmt.Errorf("TABLECAST_HTTP_ADDR %s is not a loopback address and no authentication is configured: set TABLECAST_JWT_SECRET, TABLECAST_JWT_KEYS or TABLECAST_API_KEYS_FILE, or TABLECAST_ALLOW_ANONYMOUS=true to let anyone in", c.HTTPAddr)
	}
	return authn, nil
}

// nameAuthErrors names the variable of each auth.ConfigError of err.
func nameAuthErrors(err error) error {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		var ce *auth.ConfigError
		if errors.As(e, &ce) && authVariables[ce.Field] != "" {
			e = fmt.Errorf("%s: %w", authVariables[ce.Field], ce.Err)
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

// sharePort reports whether listening on a and on b (host:port each) would
// take one port twice: the same fixed port, on the same host or on every
// address. Then the second listener of one process fails with "address
// already in use", as if another process held it.
func sharePort(a, b string) bool {
	ha, pa, err := net.SplitHostPort(a)
	if err != nil {
		return false
	}
	hb, pb, err := net.SplitHostPort(b)
	if err != nil || pa != pb || pa == "0" || pa == "-1" {
		return false
	}
	every := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || every(ha) || every(hb)
}

// loopback reports whether addr (host:port) listens on loopback only.
func loopback(addr string) bool {
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

func (c Config) gatewayConfig(log *slog.Logger, reg prometheus.Registerer, authn *auth.Authenticator) wsgate.Config {
	return wsgate.Config{
		Auth:                      authn,
		Prefix:                    c.SubjectPrefix,
		Stream:                    c.Stream,
		Replicas:                  c.StreamReplicas,
		AllowedOrigins:            c.AllowedOrigins,
		AllowedHosts:              c.AllowedHosts,
		MaxHeaderBytes:            c.HTTPMaxHeaderBytes,
		HeaderTimeout:             c.HTTPHeaderTimeout,
		IdleTimeout:               c.HTTPIdleTimeout,
		MaxHandshakes:             c.HTTPMaxHandshakes,
		MaxUnauthenticatedPerAddr: c.HTTPMaxUnauthPerAddr,
		MaxMessageBytes:           c.WSMaxMessage,
		SendQueueBytes:            c.WSSendQueue,
		MaxSubscriptions:          c.WSMaxSubs,
		MaxConnsPerIdentity:       c.WSMaxConnsPerIdentity,
		MessagesPerSecond:         c.WSMessagesPerSecond,
		MaxTopics:                 c.MaxTopics,
		ReadTimeout:               c.WSReadTimeout,
		WriteTimeout:              c.WSWriteTimeout,
		PingInterval:              c.WSPingInterval,
		MaxReplays:                c.WSMaxReplays,
		MaxReplaysPerConn:         c.WSMaxReplaysPerConn,
		ReplayRate:                c.WSReplayRate,
		TxMarkers:                 c.TxMarkers,
		BatchMaxEvents:            c.WSBatchEvents,
		BatchMaxBytes:             c.WSBatchBytes,
		TxMarkersOff:              "transaction batches need transaction markers, which this gateway was told the readers do not publish (TABLECAST_TX_MARKERS is off)",
		Version:                   version,
		Logger:                    log.With("component", "gateway"),
		Registerer:                reg,
	}
}

// webhookAllowNets reads TABLECAST_WEBHOOK_ALLOW_NETS.
func (c Config) webhookAllowNets() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.WebhookAllowNets {
		s = strings.TrimSpace(s)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("TABLECAST_WEBHOOK_ALLOW_NETS %q: want a network such as 10.0.0.0/8 or fd00::/8, or one address", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (c Config) streamConfig() stream.StreamConfig {
	return stream.StreamConfig{
		Name:            c.Stream,
		Prefix:          c.SubjectPrefix,
		DuplicateWindow: c.DuplicateWindow,
		MaxAge:          c.StreamMaxAge,
		MaxBytes:        c.StreamMaxBytes,
		Replicas:        c.StreamReplicas,
	}
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("TABLECAST_LOG_LEVEL %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(c Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// printHelp writes the usage and every environment variable with its
// default and meaning, straight from Config's tags.
func printHelp(w io.Writer) {
	fmt.Fprint(w, `tablecast streams PostgreSQL row changes to NATS JetStream.

Usage:
  tablecast run                    reader, WebSocket gateway and embedded NATS (when TABLECAST_NATS_URL is empty)
  tablecast cdc                    the reader alone (embedded NATS too when TABLECAST_NATS_URL is empty)
  tablecast gateway                the WebSocket gateway alone (embedded NATS too when TABLECAST_NATS_URL is empty)
  tablecast tail [schema.table]    print events as JSON lines; --all from the stream's start, -n N to stop after N
  tablecast doctor                 check PostgreSQL for tablecast, each problem with the SQL that fixes it; exit 1 on a failure
  tablecast snapshot schema.table  ask the running reader, over NATS, to snapshot one table (op read) while it streams
  tablecast slot status            the replication slot: holder, LSNs, lag, retained WAL, wal_status
  tablecast slot drop [--force]    drop the replication slot; --force terminates the process holding it first
  tablecast endpoints list|get|create|update|delete|pause|resume …   manage endpoints over the admin API (tablecast endpoints help)
  tablecast filters list|get|create|update|delete|link|unlink …     manage event filters over the admin API
  tablecast rules list|get|create|update|delete|link|unlink …       manage rules over the admin API
  tablecast healthcheck [--ready]  ask the running tablecast on TABLECAST_HTTP_ADDR for /healthz (/readyz); exit 0 when it answers 200
  tablecast help                   this text
  tablecast version                version and build information

Environment:
`)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  VARIABLE\tDEFAULT\tMEANING")
	_ = envconfig.Usagef(envPrefix, &Config{}, tw, "{{range .}}  {{usage_key .}}\t{{if usage_default .}}{{usage_default .}}{{else}}(empty){{end}}\t{{usage_description .}}\n{{end}}")
	tw.Flush()
	fmt.Fprintln(w, "\nGo's own GOGC and GOMEMLIMIT apply too; tablecast uses GOGC=200 when GOGC is unset.")
}

// oneLine folds an error's message onto one line.
func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// checkOldRows checks TABLECAST_OLD_ROWS_TABLES: old rows come from the
// row state, so each of its patterns must lie within the tables whose
// rows are kept.
func (c Config) checkOldRows() []error {
	var errs []error
	if c.OldRowsCacheBytes < 1 {
		errs = append(errs, fmt.Errorf("TABLECAST_OLD_ROWS_CACHE_BYTES %d: must be positive", c.OldRowsCacheBytes))
	}
	if _, err := rowstate.ParsePatterns(c.OldRows); err != nil {
		return append(errs, fmt.Errorf("TABLECAST_OLD_ROWS_TABLES: %w", err))
	}
	if len(c.OldRows) == 0 || len(c.OldRows) == 1 && (c.OldRows[0] == "" || c.OldRows[0] == "-") {
		return errs
	}
	if !c.RowState {
		return append(errs, errors.New("TABLECAST_OLD_ROWS_TABLES: old rows are read from the row state: set TABLECAST_ROW_STATE=true"))
	}
	kept, err := rowstate.ParsePatterns(c.RowStateTables)
	if err != nil {
		return errs // said for TABLECAST_ROW_STATE_TABLES
	}
	for _, p := range c.OldRows {
		if p != "" && !kept.Covers(p) {
			errs = append(errs, fmt.Errorf("TABLECAST_OLD_ROWS_TABLES: %q: its rows are not kept in the row state (TABLECAST_ROW_STATE_TABLES %q)", p, strings.Join(c.RowStateTables, ",")))
		}
	}
	return errs
}

// validStreamName reports whether name may name the stream: JetStream's own
// rules are looser, but the object store bucket of the webhooks' dead
// letters is named after the stream, and bucket names are letters, digits,
// '_' and '-' only. The stream's name and its dead letters' must not stop
// working only once the first webhook fails.
func validStreamName(name string) bool {
	if name == "" || len(name) > 200 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}
