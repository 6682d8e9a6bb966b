package wsgate

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// StatusPath is the gateway's read-only status endpoint, which the console
// at "/" polls. It is authenticated as /ws is, and shows a caller only the
// tables it may read and the readers of their databases.
const StatusPath = "/api/status"

// statusCacheFor is how long the readers' status records, read from NATS,
// serve every caller: a console polls every two seconds, a reader writes
// its record every few.
const statusCacheFor = time.Second

// Status is the body of GET /api/status.
type Status struct {
	// Version is the gateway's build, "" when unknown.
	Version string        `json:"version"`
	Gateway GatewayStatus `json:"gateway"`
	// Tables are those the caller may read, by the names the topics
	// message lists them by.
	Tables []TableStatus `json:"tables"`
	// ReadersVisible is false when no reader has written a status record
	// into this NATS (no reader ran here yet, or the gateway cannot read
	// the bucket): the reader is not visible from this gateway.
	ReadersVisible bool `json:"readers_visible"`
	// Readers are the readers of the databases the caller may read a table
	// of.
	Readers []ReaderStatus `json:"readers"`
	// Endpoints are the managed endpoints the caller may see, present only
	// when the server manages endpoints (Config.Endpoints).
	Endpoints any `json:"endpoints,omitempty"`
	// Rules are the managed rules the caller may see, present only when
	// the server manages rules (Config.Rules).
	Rules any `json:"rules,omitempty"`
}

// GatewayStatus is the gateway's own figures.
type GatewayStatus struct {
	Ready         bool `json:"ready"`
	NATSConnected bool `json:"nats_connected"`
	// Connections are the open WebSocket connections of this gateway, every
	// client's; Subscriptions theirs.
	Connections   int `json:"connections"`
	Subscriptions int `json:"subscriptions"`
}

// TableStatus is one table the caller may read.
type TableStatus struct {
	Name     string `json:"name"`
	Database string `json:"database"`
	// Subscribers are this gateway's subscriptions to the table.
	Subscribers int `json:"subscribers"`
	// Events published since the table's reader started, and their rate
	// (a second) over the reader's last interval; null when no reader of
	// its database has written a status record.
	Events *int64   `json:"events"`
	Rate   *float64 `json:"rate"`
}

// ReaderStatus is a reader's status record as a caller sees it: the slot's
// figures (stream.ReaderStatus), without its tables (Tables has those the
// caller may read) nor the reasons of its health, which may name others.
type ReaderStatus struct {
	Database         string `json:"database"`
	Slot             string `json:"slot"`
	Streaming        bool   `json:"streaming"`
	Healthy          bool   `json:"healthy"`
	AckedLSN         string `json:"acked_lsn"`
	LagBytes         int64  `json:"lag_bytes"`
	RetainedWALBytes int64  `json:"retained_wal_bytes"`
	SafeWALSizeBytes int64  `json:"safe_wal_size_bytes"`
	WALStatus        string `json:"wal_status"`
	// Leader is the process leading the slot when the record was written
	// (host, pid, since), nil when the reader wrote none.
	Leader *stream.LeaderInfo `json:"leader,omitempty"`
	// Updated is when the reader wrote the record; AgeSeconds how old it
	// is by this gateway's clock, IntervalSeconds how often the reader
	// writes it (a record much older than that is stale: the reader is
	// stopped or cut off).
	Updated         time.Time `json:"updated"`
	AgeSeconds      float64   `json:"age_seconds"`
	IntervalSeconds float64   `json:"interval_seconds"`
}

// readerStatuses caches the readers' status records for statusCacheFor.
type readerStatuses struct {
	mu    sync.Mutex
	at    time.Time
	all   []stream.ReaderStatus
	found bool
}

func (g *Gateway) readerStatuses(ctx context.Context) ([]stream.ReaderStatus, bool) {
	rs := &g.statuses
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if time.Since(rs.at) < statusCacheFor {
		return rs.all, rs.found
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	all, found, err := stream.ReadReaderStatuses(ctx, g.js)
	if err != nil {
		g.log.Warn("cannot read the readers' status records", "err", err)
		found = false
	}
	rs.all, rs.found, rs.at = all, found, time.Now()
	return all, found
}

// serveStatus answers GET /api/status.
func (g *Gateway) serveStatus(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		httpJSONError(w, http.StatusMethodNotAllowed, "method_not_allowed", "only GET and HEAD")
		return
	}
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if origin := r.Header.Get("Origin"); !g.originAllowed(origin, r.Host) {
		httpJSONError(w, http.StatusForbidden, "forbidden_origin", "origin "+strconv.Quote(origin)+" is not allowed")
		return
	}
	id, reason := g.authenticateHTTP(r)
	if id == nil {
		h.Set("WWW-Authenticate", `Bearer realm="tablecast"`)
		httpJSONError(w, http.StatusUnauthorized, "unauthorized", reason)
		return
	}
	if reason := g.notReady(); reason != "" {
		h.Set("Retry-After", strconv.Itoa(notReadyRetryAfter))
		httpJSONError(w, http.StatusServiceUnavailable, "not_ready", reason)
		return
	}
	st := g.status(r.Context(), id)
	if g.cfg.Endpoints != nil {
		eps, err := g.cfg.Endpoints(r.Context(), id)
		if err != nil {
			g.log.Warn("cannot list the managed endpoints for the status", "err", err)
			eps = []any{}
		}
		st.Endpoints = eps
	}
	if g.cfg.Rules != nil {
		rules, err := g.cfg.Rules(r.Context(), id)
		if err != nil {
			g.log.Warn("cannot list the managed rules for the status", "err", err)
			rules = []any{}
		}
		st.Rules = rules
	}
	body, err := json.Marshal(st)
	if err != nil {
		httpJSONError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(append(body, '\n'))
}

// authenticateHTTP authenticates a plain HTTP request with the credentials
// /ws takes (TokenFrom: ?token=, Authorization: Bearer, the tablecast_token
// cookie): its identity, or nil and why not.
func (g *Gateway) authenticateHTTP(r *http.Request) (*auth.Identity, string) {
	if !g.cfg.Auth.Enabled() {
		return auth.AnonymousIdentity(), ""
	}
	token, _ := TokenFrom(r.URL.Query(), r.Header.Get("Authorization"), strings.Join(r.Header.Values("Cookie"), "; "), "")
	id, err := g.cfg.Auth.Authenticate(auth.Credential{Token: token}, time.Now())
	if err != nil {
		reason := CloseUnauthorized.Reason()
		var ae *auth.Error
		if errors.As(err, &ae) {
			reason = ae.Reason
		}
		return nil, reason
	}
	return id, ""
}

// status gathers what identity id may see.
func (g *Gateway) status(ctx context.Context, id *auth.Identity) *Status {
	st := &Status{
		Version: g.cfg.Version,
		Gateway: GatewayStatus{Ready: g.Ready(), NATSConnected: g.nc.IsConnected()},
		Tables:  []TableStatus{},
		Readers: []ReaderStatus{},
	}
	st.Gateway.Connections = g.Connections()
	st.Gateway.Subscriptions = int(g.subCount.Load())

	records, found := g.readerStatuses(ctx)
	st.ReadersVisible = found
	dbs := map[string]bool{} // the databases of the tables the caller may read
	for _, v := range g.cat.VisibleTables(id.Grants) {
		t := v.Table
		dbs[t.DB] = true
		ts := TableStatus{Name: v.Name, Database: t.DB}
		g.feedMu.Lock()
		f := g.feeds["t\x00"+t.Subject]
		g.feedMu.Unlock()
		if f != nil {
			f.mu.Lock()
			ts.Subscribers = f.n
			f.mu.Unlock()
		}
		// The record's name of the table, as the reader writes it.
		name := schema.FormatTableName(t.Shape.Schema, t.Shape.Table)
		for _, rec := range records {
			if rec.Database != t.DB {
				continue
			}
			if ts.Events == nil {
				ts.Events, ts.Rate = new(int64), new(float64)
			}
			// A database may have several readers (publications).
			*ts.Events += rec.Tables[name].Events
			*ts.Rate += rec.Tables[name].Rate
		}
		st.Tables = append(st.Tables, ts)
	}
	now := time.Now()
	for _, rec := range records {
		if !dbs[rec.Database] {
			continue
		}
		st.Readers = append(st.Readers, ReaderStatus{
			Database: rec.Database, Slot: rec.Slot, Streaming: rec.Streaming, Healthy: rec.Healthy, AckedLSN: rec.AckedLSN,
			LagBytes: rec.LagBytes, RetainedWALBytes: rec.RetainedWALBytes, SafeWALSizeBytes: rec.SafeWALSizeBytes, WALStatus: rec.WALStatus,
			Leader:  rec.Leader,
			Updated: rec.Updated, AgeSeconds: max(0, now.Sub(rec.Updated).Seconds()), IntervalSeconds: rec.Interval.Seconds(),
		})
	}
	slices.SortFunc(st.Readers, func(a, b ReaderStatus) int {
		return cmp.Or(strings.Compare(a.Database, b.Database), strings.Compare(a.Slot, b.Slot))
	})
	return st
}

// httpJSONError answers an HTTP request with {"error": code, "message": msg}.
func httpJSONError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]string{"error": code, "message": msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
