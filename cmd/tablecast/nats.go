package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/stream"
)

// minMaxStore is the smallest TABLECAST_NATS_MAX_STORE accepted: JetStream
// writes the stream in blocks of up to 8 MiB, and the stream gets what the
// store has beyond storeReserve, at least 64 MiB here.
const minMaxStore = 128 << 20

// storeReserve is what the stream must leave of the store when its size is
// set by hand: room for the key-value buckets and the stream's last,
// partly reclaimed blocks.
const storeReserve = 64 << 20

// embedded reports whether tablecast runs its own NATS.
func (c Config) embedded() bool { return c.NATSURL == "" }

// natsCredentials reports whether tablecast has credentials of its own.
func (c Config) natsCredentials() bool {
	return c.NATSUser != "" || c.NATSToken != "" || c.NATSNKey != "" || c.NATSCreds != ""
}

// checkNATS returns every problem with the NATS variables, in the user's
// words.
func (c Config) checkNATS() []error {
	var errs []error
	if (c.NATSUser == "") != (c.NATSPassword == "") {
		errs = append(errs, errors.New("TABLECAST_NATS_USER and TABLECAST_NATS_PASSWORD go together: set both, or neither"))
	}
	if (c.NATSReadUser == "") != (c.NATSReadPassword == "") {
		errs = append(errs, errors.New("TABLECAST_NATS_READ_USER and TABLECAST_NATS_READ_PASSWORD go together: set both, or neither"))
	}
	if (c.NATSTLSCert == "") != (c.NATSTLSKey == "") {
		errs = append(errs, errors.New("TABLECAST_NATS_TLS_CERT and TABLECAST_NATS_TLS_KEY go together: set both, or neither"))
	}
	var ways []string
	for _, w := range []struct{ name, v string }{
		{"TABLECAST_NATS_USER", c.NATSUser}, {"TABLECAST_NATS_TOKEN", c.NATSToken},
		{"TABLECAST_NATS_NKEY", c.NATSNKey}, {"TABLECAST_NATS_CREDS", c.NATSCreds},
	} {
		if w.v != "" {
			ways = append(ways, w.name)
		}
	}
	if len(ways) > 1 {
		errs = append(errs, fmt.Errorf("%s: set one way for tablecast to sign in to NATS, not several", strings.Join(ways, ", ")))
	}
	if c.NATSNKey != "" {
		if _, err := stream.NKeyPublicKey(c.NATSNKey); err != nil {
			errs = append(errs, fmt.Errorf("TABLECAST_NATS_NKEY: %w", err))
		}
	}
	for _, f := range []struct{ name, path string }{
		{"TABLECAST_NATS_CREDS", c.NATSCreds}, {"TABLECAST_NATS_TLS_CA", c.NATSTLSCA},
		{"TABLECAST_NATS_TLS_CERT", c.NATSTLSCert}, {"TABLECAST_NATS_TLS_KEY", c.NATSTLSKey},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
		}
	}

	if !c.embedded() {
		errs = append(errs, checkNATSURLs(c.NATSURL)...)
		if c.NATSTLSCert != "" {
			errs = append(errs, errors.New("TABLECAST_NATS_TLS_CERT and TABLECAST_NATS_TLS_KEY are the embedded NATS's certificate, and TABLECAST_NATS_URL is set: configure TLS on that server, and TABLECAST_NATS_TLS_CA here if the system does not trust its certificate"))
		}
		if c.NATSReadUser != "" || len(c.NATSReadNKeys) > 0 {
			errs = append(errs, errors.New("TABLECAST_NATS_READ_USER and TABLECAST_NATS_READ_NKEYS define read-only users of the embedded NATS, and TABLECAST_NATS_URL is set: define them on that server (see the README for their permissions)"))
		}
		if c.StreamMaxBytes == 0 || c.StreamMaxBytes < -1 {
			errs = append(errs, fmt.Errorf("TABLECAST_STREAM_MAX_BYTES %d: must be positive, or -1 for no size limit", c.StreamMaxBytes))
		}
		return errs
	}

	if c.NATSCreds != "" {
		errs = append(errs, errors.New("TABLECAST_NATS_CREDS signs in to an external NATS (TABLECAST_NATS_URL); the embedded one takes TABLECAST_NATS_USER and TABLECAST_NATS_PASSWORD, TABLECAST_NATS_TOKEN or TABLECAST_NATS_NKEY"))
	}
	if c.NATSTLSCA != "" {
		errs = append(errs, errors.New("TABLECAST_NATS_TLS_CA checks an external NATS's certificate (TABLECAST_NATS_URL); tablecast's own connections to the embedded NATS accept exactly TABLECAST_NATS_TLS_CERT"))
	}
	if !c.natsCredentials() {
		switch {
		case c.NATSReadUser != "" || len(c.NATSReadNKeys) > 0:
			errs = append(errs, errors.New("TABLECAST_NATS_READ_USER or TABLECAST_NATS_READ_NKEYS turns on authentication in the embedded NATS, and tablecast then needs credentials of its own: set TABLECAST_NATS_USER and TABLECAST_NATS_PASSWORD, TABLECAST_NATS_TOKEN or TABLECAST_NATS_NKEY"))
		case c.NATSListen != "" && !stream.IsLoopback(c.NATSListen):
			if _, _, err := net.SplitHostPort(c.NATSListen); err == nil {
				errs = append(errs, fmt.Errorf("TABLECAST_NATS_LISTEN %s is not a loopback address and the embedded NATS has no credentials, so anyone who reaches it could read every event and store forged ones: set TABLECAST_NATS_USER and TABLECAST_NATS_PASSWORD, TABLECAST_NATS_TOKEN or TABLECAST_NATS_NKEY (and TABLECAST_NATS_TLS_CERT, TABLECAST_NATS_TLS_KEY off this machine), or listen on 127.0.0.1", c.NATSListen))
			}
		}
	}
	for _, k := range c.NATSReadNKeys {
		if !strings.HasPrefix(k, "U") {
			errs = append(errs, fmt.Errorf("TABLECAST_NATS_READ_NKEYS %q: want public user nkeys (U…), comma-separated", k))
		}
	}
	if c.NATSMaxStore < minMaxStore {
		errs = append(errs, fmt.Errorf("TABLECAST_NATS_MAX_STORE %d: must be at least %d (128 MiB)", c.NATSMaxStore, minMaxStore))
	}
	if c.NATSMinFree < 0 {
		errs = append(errs, fmt.Errorf("TABLECAST_NATS_MIN_FREE %d: must be 0 or more", c.NATSMinFree))
	}
	switch limit := c.NATSMaxStore - storeReserve; {
	case c.StreamMaxBytes == 0 || c.StreamMaxBytes < -1:
		errs = append(errs, fmt.Errorf("TABLECAST_STREAM_MAX_BYTES %d: must be positive (unset: three quarters of TABLECAST_NATS_MAX_STORE)", c.StreamMaxBytes))
	case c.StreamMaxBytes == -1:
		errs = append(errs, fmt.Errorf("TABLECAST_STREAM_MAX_BYTES -1: the embedded NATS's store holds at most TABLECAST_NATS_MAX_STORE (%d bytes), so the stream needs a size limit that fits in it: leave it unset for three quarters of the store, or set up to %d", c.NATSMaxStore, limit))
	case c.NATSMaxStore >= minMaxStore && c.StreamMaxBytes > limit:
		errs = append(errs, fmt.Errorf("TABLECAST_STREAM_MAX_BYTES %d does not fit in TABLECAST_NATS_MAX_STORE %d with the %d bytes the buckets need: set at most %d, or raise TABLECAST_NATS_MAX_STORE", c.StreamMaxBytes, c.NATSMaxStore, storeReserve, limit))
	}
	return errs
}

// checkNATSURLs checks each server of TABLECAST_NATS_URL as the NATS
// client will read it (nats:// added when there is no scheme), so that a
// mistyped one, or one still in the quotes of an env file, is named with
// the other problems rather than failing the connection after start.
func checkNATSURLs(urls string) []error {
	var errs []error
	for i, raw := range strings.Split(urls, ",") {
		s := strings.TrimSpace(raw)
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err == nil && (u.Scheme == "nats" || u.Scheme == "tls" || u.Scheme == "ws" || u.Scheme == "wss") && validServer(u) {
			continue
		}
		// Whatever precedes an @ may be a password: it is not shown.
		shown := strings.TrimSpace(raw)
		if at := strings.LastIndex(shown, "@"); at >= 0 {
			shown = "…" + shown[at:]
		}
		errs = append(errs, fmt.Errorf("TABLECAST_NATS_URL: server %d %q: want nats://host:port (or tls://, ws://, wss://), servers comma-separated, without quotes", i+1, shown))
	}
	return errs
}

// validServer reports whether u names a server the client can dial: an IP
// address (IPv6 in brackets) or a host name of well-formed labels, and a
// port from 1 to 65535 when there is one. The client would otherwise try
// such a server again and again, as if it were only down.
func validServer(u *url.URL) bool {
	host, port := u.Hostname(), u.Port()
	if host == "" || strings.Count(u.Host, ":") > 1 && !strings.HasPrefix(u.Host, "[") {
		return false // no host, or IPv6 without its brackets
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return false
		}
	}
	if ip, _, _ := strings.Cut(host, "%"); net.ParseIP(ip) != nil {
		return true // an IP address, an IPv6 one maybe with its zone
	}
	if len(host) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// embeddedConfig is the embedded server's configuration.
func (c Config) embeddedConfig(log *slog.Logger) (stream.EmbeddedConfig, error) {
	auth := stream.EmbeddedAuth{
		User: c.NATSUser, Password: c.NATSPassword, Token: c.NATSToken,
		ReadUser: c.NATSReadUser, ReadPassword: c.NATSReadPassword, ReadNKeys: c.NATSReadNKeys,
		Stream: c.Stream, Prefix: c.SubjectPrefix,
	}
	if c.NATSNKey != "" {
		pub, err := stream.NKeyPublicKey(c.NATSNKey)
		if err != nil {
			return stream.EmbeddedConfig{}, fmt.Errorf("TABLECAST_NATS_NKEY: %w", err)
		}
		auth.NKeys = []string{pub}
	}
	minFree := c.NATSMinFree
	if minFree == 0 {
		minFree = -1 // no minimum; 0 would be the library's default
	}
	return stream.EmbeddedConfig{
		Listen:   c.NATSListen,
		StoreDir: c.DataDir,
		MaxStore: c.NATSMaxStore,
		MinFree:  minFree,
		Auth:     auth,
		TLSCert:  c.NATSTLSCert,
		TLSKey:   c.NATSTLSKey,
		Logger:   log,
	}, nil
}

// natsOptions are the credentials and TLS settings of tablecast's own
// connections to NATS: to the embedded server, or to TABLECAST_NATS_URL.
func (c Config) natsOptions() ([]nats.Option, error) {
	a := stream.ClientAuth{
		User: c.NATSUser, Password: c.NATSPassword, Token: c.NATSToken,
		NKeyFile: c.NATSNKey, CredsFile: c.NATSCreds, CAFile: c.NATSTLSCA,
	}
	if c.embedded() {
		a.PinnedCertFile = c.NATSTLSCert
		a.InboxPrefix = stream.InboxPrefix
	}
	opts, err := a.Options()
	if err != nil {
		return nil, fmt.Errorf("NATS credentials (TABLECAST_NATS_…): %w", err)
	}
	return opts, nil
}

// clientURL is the NATS a client command (tail, snapshot) connects to:
// TABLECAST_NATS_URL, or the embedded NATS of a running tablecast, at
// TABLECAST_NATS_LISTEN.
func (c Config) clientURL() string {
	if c.NATSURL != "" {
		return c.NATSURL
	}
	return c.embeddedURL()
}

// embeddedURL is the URL of the embedded server from another process on
// this machine (tail): its listen address, with loopback for "everywhere".
func (c Config) embeddedURL() string {
	host, port, _ := net.SplitHostPort(c.NATSListen)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	scheme := "nats://"
	if c.NATSTLSCert != "" {
		scheme = "tls://"
	}
	return scheme + net.JoinHostPort(host, port)
}

// registerEmbeddedMetrics adds the embedded server's storage to reg.
func registerEmbeddedMetrics(reg prometheus.Registerer, emb *stream.Embedded) {
	gauge := func(name, help string, v func(stream.StorageStatus) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return v(emb.Status()) })
	}
	reg.MustRegister(
		gauge("tablecast_nats_data_free_bytes", "Bytes free on the file system of the embedded NATS's data directory (TABLECAST_DATA_DIR); -1 if unknown.",
			func(s stream.StorageStatus) float64 { return float64(s.FreeBytes) }),
		gauge("tablecast_nats_store_used_bytes", "Bytes the embedded NATS's JetStream store holds.",
			func(s stream.StorageStatus) float64 { return float64(s.StoreUsedBytes) }),
		gauge("tablecast_nats_store_max_bytes", "Bytes the embedded NATS's JetStream store may hold (TABLECAST_NATS_MAX_STORE).",
			func(s stream.StorageStatus) float64 { return float64(s.StoreMaxBytes) }),
		gauge("tablecast_nats_jetstream_storing", "1 while the embedded NATS's JetStream can store, 0 while it cannot (disk or store full, disabled).",
			func(s stream.StorageStatus) float64 {
				if s.JetStream == stream.JetStreamOK {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tablecast_nats_restarts_total",
			Help: "Times the embedded NATS server restarted itself because JetStream had stopped storing (a full disk)."},
			func() float64 { return float64(emb.Status().Restarts) }),
	)
}
