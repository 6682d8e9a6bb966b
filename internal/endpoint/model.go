package endpoint

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Type is what an endpoint delivers to.
type Type string

const (
	// TypeWebhook: events are POSTed (or PUT) to a URL, signed as
	// Standard Webhooks sign them.
	TypeWebhook Type = "webhook"
	// TypeWebSocket: events go to WebSocket clients that subscribe to the
	// endpoint by name.
	TypeWebSocket Type = "websocket"
)

// State is whether an endpoint delivers.
type State string

const (
	// StateActive: it delivers.
	StateActive State = "active"
	// StatePaused: an operator paused it; events wait (a webhook resumes
	// where it stopped, within its retry max_age).
	StatePaused State = "paused"
	// StateDisabled: the system stopped it (a webhook answered 410 Gone,
	// say), saying why in DisabledReason. An operator resumes it.
	StateDisabled State = "disabled"
)

// Endpoint is a managed endpoint, as the admin API serves it and the
// endpoints bucket stores it (JSON). Delivery engines read it through
// Store.WatchEndpoints.
type Endpoint struct {
	// ID is assigned by the store at creation: 26 characters, Crockford
	// base32 of 48 bits of milliseconds and 80 random bits, so that ids
	// sort by creation time (see NewID). It never changes.
	ID string `json:"id"`
	// Name is unique among endpoints: 1 to 100 characters of
	// [A-Za-z0-9._-]. It may change.
	Name  string `json:"name"`
	Type  Type   `json:"type"`
	State State  `json:"state"`
	// DisabledReason says why the system disabled the endpoint; empty
	// unless State is StateDisabled.
	DisabledReason string    `json:"disabled_reason,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
	// Revision is the bucket's revision of the stored value: an update
	// that names a revision fails with ErrConflict unless it is still the
	// current one. It is not part of the stored JSON's meaning: the store
	// sets it from the bucket on every read.
	Revision uint64 `json:"revision"`
	// Filters and Rules are the names of the event filters and rules
	// linked to the endpoint, sorted. An event is delivered when it
	// passes one of the filters or rules (none linked: no events).
	Filters []string `json:"filters"`
	Rules   []string `json:"rules"`

	// Webhook is the webhook's settings; set exactly when Type is
	// TypeWebhook.
	Webhook *Webhook `json:"webhook,omitempty"`
	// WebSocket is the WebSocket endpoint's settings; set exactly when
	// Type is TypeWebSocket (it has none yet: {}).
	WebSocket *WebSocket `json:"websocket,omitempty"`

	// RetentionGaps records the events the stream's limits discarded
	// before the endpoint read them (webhooks); nil while that never
	// happened. Set by the delivery engine (RecordRetentionGap) only:
	// creations and updates keep the stored value whatever they send.
	RetentionGaps *RetentionGaps `json:"retention_gaps,omitempty"`
}

// RetentionGaps counts an endpoint's retention gaps and describes the
// latest.
type RetentionGaps struct {
	// Count is how many gaps were found since the endpoint was created.
	Count uint64 `json:"count"`
	// Messages is how many stream messages the gaps spanned, in all: an
	// upper bound of the endpoint's events lost (the stream's other
	// subjects' messages are counted too).
	Messages uint64 `json:"messages"`
	// Last is the latest gap.
	Last RetentionGap `json:"last"`
}

// RetentionGap is a range of stream sequences the stream discarded before
// an endpoint read them: some of them may have been its events.
type RetentionGap struct {
	// FirstSeq and LastSeq bound the discarded range (both included).
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	// Messages is how many messages of the range may have been the
	// endpoint's events: an upper bound of those lost. It is the whole
	// range but for events the endpoint had read and given back (as it
	// stopped), which are counted one by one.
	Messages uint64 `json:"messages"`
	// NextSeq is the first event the endpoint got after the gap.
	NextSeq uint64 `json:"next_seq"`
	// StoredAfter is when the event the endpoint read last before the gap
	// was stored, when known; StoredBefore when the event at NextSeq was.
	// The discarded messages were stored between the two.
	StoredAfter  *time.Time `json:"stored_after,omitempty"`
	StoredBefore time.Time  `json:"stored_before"`
	// FoundAt is when the gap was found (as delivery reached NextSeq).
	FoundAt time.Time `json:"found_at"`
	// AtStart marks a gap before the endpoint's start position: the stream
	// had discarded messages from where the endpoint was to start when its
	// consumer was created. NextSeq is then the first sequence after the
	// range (where delivery begins), StoredBefore when the stream's first
	// message kept was stored, FoundAt when the consumer was created, and
	// StoredAfter the start time, for a start by time (or "now"): FirstSeq
	// is then 1, the range an upper bound (the stream keeps no time for
	// what it discarded). Such a gap is found once, before any other.
	AtStart bool `json:"at_start,omitempty"`
}

// Webhook is how a webhook endpoint delivers. Zero fields take the
// defaults documented on each when the endpoint is created or updated
// (Endpoint.ApplyDefaults).
type Webhook struct {
	// URL is where events are sent: http or https, with a host, without
	// credentials or a fragment.
	URL string `json:"url"`
	// Method is POST (default) or PUT.
	Method string `json:"method"`
	// Headers are extra request headers. Hop-by-hop headers, Host,
	// Content-Length and the webhook-* signature headers are refused.
	// The values of credential headers (CredentialHeader) are shown as
	// the secret is (MaskHeader); sent back masked, they are kept.
	Headers map[string]string `json:"headers"`
	// Secret signs every request (Standard Webhooks): "whsec_" and the
	// base64 of 24 to 64 random bytes. Generated when absent at creation.
	// The admin API shows it whole only in the answer to the creation (or
	// to an update that sets it); otherwise masked (MaskSecret).
	Secret string `json:"secret"`
	// Timeout bounds one request. Default 10s; 1s to 60s.
	Timeout Duration `json:"timeout"`
	// Concurrency is the requests in flight at once. Default 1; at most 100.
	Concurrency int `json:"concurrency"`
	// Batch is the events per request, at most. Default 1; at most 100.
	Batch int `json:"batch"`
	// BatchBytes bounds the body of a batch (with Batch above 1): a batch
	// stops growing before its JSON array would pass it, and an event
	// larger than that goes alone. Default 1 MiB; 1 KiB to 16 MiB.
	BatchBytes int `json:"batch_bytes"`
	// Retry is how a failed delivery is tried again.
	Retry Retry `json:"retry"`
	// ParallelByKey keeps the events of one row (one key) in order while
	// those of different rows go out in parallel (up to Concurrency);
	// false keeps every event in stream order.
	ParallelByKey bool `json:"parallel_by_key"`
	// Start is where in the stream delivery begins when the endpoint is
	// created (default: now).
	Start Start `json:"start"`
}

// Retry is a webhook's retry policy: exponential backoff from Initial,
// doubling up to Max between attempts, for at most MaxAge after the
// event's first attempt.
type Retry struct {
	// MaxAge: an event still failing this long after its first attempt
	// is given up. Default 24h; 1s to 720h.
	MaxAge Duration `json:"max_age"`
	// Initial is the first wait. Default 1s; 100ms to 1h.
	Initial Duration `json:"initial"`
	// Max is the longest wait. Default 1h; from Initial to 24h.
	Max Duration `json:"max"`
}

// WebSocket is a WebSocket endpoint's settings: none yet.
type WebSocket struct{}

// Start is where a new endpoint's delivery begins in the stream: now (the
// zero Start), at a stream sequence, or at the first event stored at or
// after a time. Its JSON is {"from": "now"}, {"from": {"seq": N}} or
// {"from": {"time": "RFC 3339"}}.
type Start struct {
	Seq  uint64    // from this stream sequence (1 or more), when set
	Time time.Time // from this time, when set (and Seq is not)
}

// IsNow reports whether delivery starts with the events after the
// endpoint's creation.
func (s Start) IsNow() bool { return s.Seq == 0 && s.Time.IsZero() }

func (s Start) MarshalJSON() ([]byte, error) {
	switch {
	case s.Seq != 0:
		return []byte(`{"from":{"seq":` + strconv.FormatUint(s.Seq, 10) + `}}`), nil
	case !s.Time.IsZero():
		return []byte(`{"from":{"time":"` + s.Time.UTC().Format(time.RFC3339Nano) + `"}}`), nil
	}
	return []byte(`{"from":"now"}`), nil
}

func (s *Start) UnmarshalJSON(b []byte) error {
	var errs fieldErrors
	d := decoder{errs: &errs}
	*s = d.start("start", b)
	return errs.err()
}

// Duration is a time.Duration written in JSON as a string with a unit:
// "10s", "1h", "250ms".
type Duration time.Duration

// D returns the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String writes the duration with the largest unit that divides it:
// "24h", "90m", "10s", "250ms" (and time.Duration's form otherwise).
func (d Duration) String() string {
	v := time.Duration(d)
	switch {
	case v == 0:
		return "0s"
	case v%time.Hour == 0:
		return strconv.FormatInt(int64(v/time.Hour), 10) + "h"
	case v%time.Minute == 0:
		return strconv.FormatInt(int64(v/time.Minute), 10) + "m"
	case v%time.Second == 0:
		return strconv.FormatInt(int64(v/time.Second), 10) + "s"
	case v%time.Millisecond == 0:
		return strconv.FormatInt(int64(v/time.Millisecond), 10) + "ms"
	}
	return v.String()
}

func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration with a unit, such as \"10s\"")
	}
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration: write a number with a unit, such as 500ms, 10s, 5m or 24h", s)
	}
	return v, nil
}

// Filter is a named event filter: which events of which tables an endpoint
// linked to it receives, and which of their columns. Its name is its key.
type Filter struct {
	// Name: 1 to 100 characters of [A-Za-z0-9._-]; it never changes.
	Name string `json:"name"`
	// Description is free text for operators, up to 1000 characters.
	Description string `json:"description,omitempty"`
	// Tables are table patterns, as in grants: "schema.table", "schema.*",
	// "*", or with a database first ("db.schema.table", "db.schema.*",
	// "db.*.*"). At least one, at most 100.
	Tables []string `json:"tables"`
	// Operations are the operations passed, in the order create, update,
	// delete, truncate, read; every one when none is given.
	Operations []string `json:"operations"`
	// Where is a where object of the query language (as a subscription's
	// where); absent or null: every row.
	Where json.RawMessage `json:"where,omitempty"`
	// Select lists the columns delivered; empty: every column.
	Select    []string  `json:"select"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Revision: as Endpoint.Revision. It also changes when an endpoint is
	// linked to the filter (see the package doc, "Links").
	Revision uint64 `json:"revision"`
}

// Rule is a named rule on one table: a change that matters, said with
// conditions on the new row, on the old row and on which columns changed.
// Package endpoint defines and validates it; a delivery engine evaluates
// it (see the field docs for the meaning it must give each part).
type Rule struct {
	// Name: 1 to 100 characters of [A-Za-z0-9._-]; it never changes.
	Name string `json:"name"`
	// Description is free text for operators, up to 1000 characters.
	Description string `json:"description,omitempty"`
	// Table is one table: "schema.table" or "db.schema.table", no
	// wildcard.
	Table string `json:"table"`
	// Operations are the operations the rule applies to, in the order
	// create, update, delete, truncate, read. When none is given, every
	// operation its conditions can apply to: update alone with Changed,
	// update and delete with Old, create, update and read with New.
	Operations []string `json:"operations"`
	// Where is matched as a subscription's where is: on the new row, and
	// for a delete on the old row (or the key when PostgreSQL sent no old
	// row).
	Where json.RawMessage `json:"where,omitempty"`
	// Changed: the rule holds only for an update that changes at least
	// one of these columns (its old and new values differ). An update
	// whose old row PostgreSQL does not send changes no column of the
	// replica identity, so columns outside it need REPLICA IDENTITY FULL
	// or old rows completed by the reader (schema.Shape.OldRows).
	Changed []string `json:"changed"`
	// Old is a where on the old row (updates and deletes); it needs
	// REPLICA IDENTITY FULL, under which PostgreSQL sends the old row, or
	// old rows completed by the reader (schema.Shape.OldRows).
	Old json.RawMessage `json:"old,omitempty"`
	// New is a where on the new row (creates, updates, reads).
	New json.RawMessage `json:"new,omitempty"`
	// Select lists the columns delivered; empty: every column.
	Select    []string  `json:"select"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Revision: as Filter.Revision.
	Revision uint64 `json:"revision"`
}

// Defaults of a webhook's settings.
const (
	DefaultMethod      = "POST"
	DefaultTimeout     = 10 * time.Second
	DefaultConcurrency = 1
	DefaultBatch       = 1
	// DefaultBatchBytes is what many receivers and their proxies take
	// (nginx's client_max_body_size is 1 MiB by default).
	DefaultBatchBytes   = 1 << 20
	DefaultRetryMaxAge  = 24 * time.Hour
	DefaultRetryInitial = time.Second
	DefaultRetryMax     = time.Hour
	MinTimeout          = time.Second
	MaxTimeout          = 60 * time.Second
	MaxConcurrency      = 100
	MaxBatch            = 100
	// MinBatchBytes: below an envelope's usual size every batch would
	// hold one event, which batch 1 says more plainly.
	MinBatchBytes = 1 << 10
	// MaxBatchBytes bounds what a worker holds: each of its lanes (up to
	// concurrency with parallel_by_key) holds a batch's events resolved,
	// so 100 lanes of 16 MiB are 1.6 GiB already; and receivers' own limits
	// are at or below it (AWS Lambda 6 MB, API Gateway 10 MB). Larger
	// events still go, alone.
	MaxBatchBytes        = 16 << 20
	MinRetryMaxAge       = time.Second
	MaxRetryMaxAge       = 720 * time.Hour
	MinRetryInitial      = 100 * time.Millisecond
	MaxRetryInitial      = time.Hour
	MaxRetryMax          = 24 * time.Hour
	MaxNameLen           = 100
	MaxDescriptionLen    = 1000
	MaxURLLen            = 2048
	MaxHeaders           = 32
	MaxHeaderNameLen     = 256
	MaxHeaderValueLen    = 4096
	MaxLinks             = 100 // filters, and rules, per endpoint
	MaxFilterTables      = 100
	MaxSelectColumns     = 1600 // PostgreSQL's most columns in a table
	MaxChangedColumns    = 1600
	maxReportedTables    = 10 // tables named per field error before "and N more"
	maxRawJSONFieldBytes = 64 << 10
)

// ApplyDefaults fills the zero settings of a webhook with their defaults,
// and gives nil lists their empty value (so that the JSON shows []).
func (e *Endpoint) ApplyDefaults() {
	if e.Filters == nil {
		e.Filters = []string{}
	}
	if e.Rules == nil {
		e.Rules = []string{}
	}
	if e.State == "" {
		e.State = StateActive
	}
	w := e.Webhook
	if w == nil {
		return
	}
	if w.Method == "" {
		w.Method = DefaultMethod
	}
	if w.Headers == nil {
		w.Headers = map[string]string{}
	}
	if w.Timeout == 0 {
		w.Timeout = Duration(DefaultTimeout)
	}
	if w.Concurrency == 0 {
		w.Concurrency = DefaultConcurrency
	}
	if w.Batch == 0 {
		w.Batch = DefaultBatch
	}
	if w.BatchBytes == 0 {
		w.BatchBytes = DefaultBatchBytes
	}
	if w.Retry.MaxAge == 0 {
		w.Retry.MaxAge = Duration(DefaultRetryMaxAge)
	}
	if w.Retry.Initial == 0 {
		w.Retry.Initial = Duration(DefaultRetryInitial)
	}
	if w.Retry.Max == 0 {
		w.Retry.Max = Duration(max(DefaultRetryMax, w.Retry.Initial.D()))
	}
}

// Clone returns a deep copy of e.
func (e *Endpoint) Clone() *Endpoint {
	if e == nil {
		return nil
	}
	c := *e
	c.Filters = cloneList(e.Filters)
	c.Rules = cloneList(e.Rules)
	if e.Webhook != nil {
		w := *e.Webhook
		if e.Webhook.Headers != nil {
			w.Headers = make(map[string]string, len(e.Webhook.Headers))
			for k, v := range e.Webhook.Headers {
				w.Headers[k] = v
			}
		}
		c.Webhook = &w
	}
	if e.WebSocket != nil {
		ws := *e.WebSocket
		c.WebSocket = &ws
	}
	if e.RetentionGaps != nil {
		g := *e.RetentionGaps
		if g.Last.StoredAfter != nil {
			t := *g.Last.StoredAfter
			g.Last.StoredAfter = &t
		}
		c.RetentionGaps = &g
	}
	return &c
}

// Redacted returns a copy of e with its webhook secret masked
// (MaskSecret): what the admin API shows, but in the answer that creates
// or sets the secret.
func (e *Endpoint) Redacted() *Endpoint {
	c := e.Clone()
	if c.Webhook != nil {
		c.Webhook.Secret = MaskSecret(c.Webhook.Secret)
		for name, v := range c.Webhook.Headers {
			if CredentialHeader(name) {
				c.Webhook.Headers[name] = MaskHeader(v)
			}
		}
	}
	return c
}

// HasFilter reports whether the filter is linked to the endpoint.
func (e *Endpoint) HasFilter(name string) bool { return contains(e.Filters, name) }

// HasRule reports whether the rule is linked to the endpoint.
func (e *Endpoint) HasRule(name string) bool { return contains(e.Rules, name) }

// ApplyDefaults gives a filter its defaults: every operation when none is
// given, empty lists for nil ones.
func (f *Filter) ApplyDefaults() {
	if len(f.Operations) == 0 {
		f.Operations = allOpNames()
	}
	if f.Select == nil {
		f.Select = []string{}
	}
	if f.Tables == nil {
		f.Tables = []string{}
	}
}

// Clone returns a deep copy of f.
func (f *Filter) Clone() *Filter {
	if f == nil {
		return nil
	}
	c := *f
	c.Tables = cloneList(f.Tables)
	c.Operations = cloneList(f.Operations)
	c.Select = cloneList(f.Select)
	c.Where = cloneRaw(f.Where)
	return &c
}

// ApplyDefaults gives a rule its defaults: the operations its conditions
// can apply to when none is given (see Rule.Operations), empty lists for
// nil ones.
func (r *Rule) ApplyDefaults() {
	if len(r.Operations) == 0 {
		r.Operations = ruleOps(r).Names()
	}
	if r.Select == nil {
		r.Select = []string{}
	}
	if r.Changed == nil {
		r.Changed = []string{}
	}
}

// Clone returns a deep copy of r.
func (r *Rule) Clone() *Rule {
	if r == nil {
		return nil
	}
	c := *r
	c.Operations = cloneList(r.Operations)
	c.Select = cloneList(r.Select)
	c.Changed = cloneList(r.Changed)
	c.Where, c.Old, c.New = cloneRaw(r.Where), cloneRaw(r.Old), cloneRaw(r.New)
	return &c
}

func cloneList(l []string) []string {
	if l == nil {
		return nil
	}
	return append([]string{}, l...)
}

func cloneRaw(r json.RawMessage) json.RawMessage {
	if r == nil {
		return nil
	}
	return append(json.RawMessage{}, r...)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
