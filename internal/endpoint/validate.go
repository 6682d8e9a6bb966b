package endpoint

import (
	"encoding/base64"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// Validate checks an endpoint's values, with defaults applied
// (ApplyDefaults), and returns every problem at once as a
// *ValidationError (nil when there is none). It does not look at the
// store: whether the linked filters and rules exist, and whether the name
// is free, the store checks when it writes.
func (e *Endpoint) Validate() error {
	var errs fieldErrors
	e.validate(&errs)
	return errs.err()
}

func (e *Endpoint) validate(errs *fieldErrors) {
	if p := nameProblem(e.Name); p != "" {
		errs.add("name", "%s", p)
	}
	switch e.State {
	case StateActive, StatePaused:
	case StateDisabled:
		if strings.TrimSpace(e.DisabledReason) == "" {
			errs.add("disabled_reason", "required when the state is disabled")
		}
	default:
		errs.add("state", "want active, paused or disabled, not %q", short(string(e.State)))
	}
	if e.State != StateDisabled && e.DisabledReason != "" {
		errs.add("disabled_reason", "only a disabled endpoint has one")
	}
	if len(e.DisabledReason) > MaxDescriptionLen {
		errs.add("disabled_reason", "longer than %d characters", MaxDescriptionLen)
	}
	checkNames(errs, "filters", e.Filters, MaxLinks)
	checkNames(errs, "rules", e.Rules, MaxLinks)
	switch e.Type {
	case TypeWebhook:
		if e.Webhook == nil {
			errs.add("webhook", "required for a webhook endpoint: at least {\"url\": \"https://…\"}")
		} else {
			e.Webhook.validate(errs, "webhook")
		}
		if e.WebSocket != nil {
			errs.add("websocket", "only for an endpoint of type websocket")
		}
	case TypeWebSocket:
		if e.Webhook != nil {
			errs.add("webhook", "only for an endpoint of type webhook")
		}
	case "":
		errs.add("type", "required: webhook or websocket")
	default:
		errs.add("type", "want webhook or websocket, not %q", short(string(e.Type)))
	}
}

// checkNames checks a list of filter or rule names: valid, distinct, at
// most max.
func checkNames(errs *fieldErrors, field string, names []string, max int) {
	if len(names) > max {
		errs.add(field, "more than %d", max)
	}
	seen := map[string]bool{}
	for i, n := range names {
		p := field + "[" + strconv.Itoa(i) + "]"
		switch {
		case nameProblem(n) != "":
			errs.add(p, "%s", nameProblem(n))
		case seen[n]:
			errs.add(p, "%q is listed twice", n)
		}
		seen[n] = true
	}
}

// hopByHop are the headers that belong to one connection (RFC 9110
// §7.6.1), and others a webhook's sender sets itself: the request's
// framing and its target.
var forbiddenHeaders = map[string]string{
	"connection":          "a hop-by-hop header",
	"keep-alive":          "a hop-by-hop header",
	"proxy-connection":    "a hop-by-hop header",
	"proxy-authenticate":  "a hop-by-hop header",
	"proxy-authorization": "a hop-by-hop header",
	"te":                  "a hop-by-hop header",
	"trailer":             "a hop-by-hop header",
	"transfer-encoding":   "a hop-by-hop header",
	"upgrade":             "a hop-by-hop header",
	"host":                "set from the URL",
	"content-length":      "set by the sender for each request",
	"content-encoding":    "set by the sender for each request",
}

func (w *Webhook) validate(errs *fieldErrors, path string) {
	p := func(m string) string { return path + "." + m }
	switch u, err := url.Parse(w.URL); {
	case w.URL == "":
		errs.add(p("url"), "required: the http or https URL events are sent to")
	case len(w.URL) > MaxURLLen:
		errs.add(p("url"), "longer than %d bytes", MaxURLLen)
	case err != nil:
		errs.add(p("url"), "not a URL: %s", short(err.Error()))
	case u.Scheme != "http" && u.Scheme != "https":
		errs.add(p("url"), "want an http:// or https:// URL")
	case u.Host == "" || u.Hostname() == "":
		errs.add(p("url"), "has no host")
	case u.User != nil:
		errs.add(p("url"), "must not hold credentials (user:password@): send them in a header, such as Authorization")
	case u.Fragment != "" || strings.Contains(w.URL, "#"):
		errs.add(p("url"), "must not have a fragment (#…)")
	case strings.ContainsAny(w.URL, " \t\r\n"):
		errs.add(p("url"), "must not hold white space")
	}
	if w.Method != "POST" && w.Method != "PUT" {
		errs.add(p("method"), "want POST or PUT, not %q", short(w.Method))
	}
	if len(w.Headers) > MaxHeaders {
		errs.add(p("headers"), "more than %d headers", MaxHeaders)
	}
	seen := map[string]string{}
	for _, name := range slices.Sorted(mapsKeys(w.Headers)) {
		hp := p("headers") + "." + name
		lower := lowerASCII(name)
		switch {
		case name == "" || len(name) > MaxHeaderNameLen || !validHeaderName(name):
			errs.add(hp, "not a header name (letters, digits and !#$%%&'*+-.^_`|~, at most %d)", MaxHeaderNameLen)
			continue
		case forbiddenHeaders[lower] != "":
			errs.add(hp, "may not be set: %s", forbiddenHeaders[lower])
		case strings.HasPrefix(lower, "webhook-"):
			errs.add(hp, "may not be set: the webhook-* headers carry the signature, id and time of each delivery")
		case seen[lower] != "":
			errs.add(hp, "the same header as %q (header names ignore case)", seen[lower])
		}
		seen[lower] = name
		v := w.Headers[name]
		if len(v) > MaxHeaderValueLen {
			errs.add(hp, "value longer than %d bytes", MaxHeaderValueLen)
		} else if !validHeaderValue(v) {
			errs.add(hp, "value holds a control character (line breaks are not allowed)")
		} else if CredentialHeader(name) && isMaskedHeader(v) {
			errs.add(hp, "a masked value: send the whole value to set it, or the masked one as shown to keep the current one")
		}
	}
	if w.Secret != "" {
		if msg := secretProblem(w.Secret); msg != "" {
			errs.add(p("secret"), "%s", msg)
		}
	}
	checkRange(errs, p("timeout"), w.Timeout.D(), MinTimeout, MaxTimeout)
	if w.Concurrency < 1 || w.Concurrency > MaxConcurrency {
		errs.add(p("concurrency"), "want 1 to %d", MaxConcurrency)
	}
	if w.Batch < 1 || w.Batch > MaxBatch {
		errs.add(p("batch"), "want 1 to %d", MaxBatch)
	}
	if w.BatchBytes < MinBatchBytes || w.BatchBytes > MaxBatchBytes {
		errs.add(p("batch_bytes"), "want %d (1 KiB) to %d (16 MiB) bytes", MinBatchBytes, MaxBatchBytes)
	}
	checkRange(errs, p("retry.max_age"), w.Retry.MaxAge.D(), MinRetryMaxAge, MaxRetryMaxAge)
	checkRange(errs, p("retry.initial"), w.Retry.Initial.D(), MinRetryInitial, MaxRetryInitial)
	if m := w.Retry.Max.D(); m < w.Retry.Initial.D() || m > MaxRetryMax {
		errs.add(p("retry.max"), "want from retry.initial (%s) to %s", w.Retry.Initial, Duration(MaxRetryMax))
	}
	if w.Start.Seq == 0 && !w.Start.Time.IsZero() && w.Start.Time.Year() < 2000 {
		errs.add(p("start.from.time"), "before the year 2000")
	}
}

func mapsKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func checkRange(errs *fieldErrors, field string, v, lo, hi time.Duration) {
	if v < lo || v > hi {
		errs.add(field, "want %s to %s, not %s", Duration(lo), Duration(hi), Duration(v))
	}
}

// validHeaderName reports whether s is an HTTP token (RFC 9110 §5.6.2).
func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return textproto.CanonicalMIMEHeaderKey(s) != ""
}

// validHeaderValue reports whether s may be a header's value: no control
// characters but tab.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// secretProblem says what is wrong with a webhook secret, "" if nothing.
func secretProblem(s string) string {
	if isMasked(s) {
		return "a masked secret: send the whole secret to replace it, or leave it out to keep the current one"
	}
	b64, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		return "want whsec_ followed by base64 (leave it out to have one generated)"
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "want whsec_ followed by standard base64 (with padding)"
	}
	if len(key) < MinSecretBytes || len(key) > MaxSecretBytes {
		return "the key must be " + strconv.Itoa(MinSecretBytes) + " to " + strconv.Itoa(MaxSecretBytes) + " bytes, not " + strconv.Itoa(len(key))
	}
	return ""
}

// Tables is what the store checks filters and rules against: the tables
// readers stream, with their column types and replica identity.
// *catalog.Catalog is one; nil checks nothing against tables.
type Tables interface {
	Tables() []*catalog.Table
}

// opNames reads a list of operation names ("*" for all), each invalid one
// an error.
func opNames(errs *fieldErrors, field string, names []string) schema.OpSet {
	var ops schema.OpSet
	for i, n := range names {
		if n == "*" {
			ops |= schema.AllOps
			continue
		}
		b := schema.OpBit(n)
		if b == 0 {
			errs.add(field+"["+strconv.Itoa(i)+"]", "want create, update, delete, truncate, read or *, not %q", short(n))
			continue
		}
		ops |= b
	}
	return ops
}

func allOpNames() []string { return schema.AllOps.Names() }

// Validate checks a filter's values, with defaults applied, and, when
// tables is not nil, its where and select against every streamed table
// its patterns match. Every problem is in the *ValidationError.
func (f *Filter) Validate(tables Tables) error {
	var errs fieldErrors
	f.validate(&errs, tables)
	return errs.err()
}

func (f *Filter) validate(errs *fieldErrors, tables Tables) {
	if p := nameProblem(f.Name); p != "" {
		errs.add("name", "%s", p)
	}
	if len(f.Description) > MaxDescriptionLen {
		errs.add("description", "longer than %d characters", MaxDescriptionLen)
	}
	var pats []auth.TablePattern
	switch {
	case len(f.Tables) == 0:
		errs.add("tables", `required: at least one table pattern, such as "public.orders", "public.*" or "*"`)
	case len(f.Tables) > MaxFilterTables:
		errs.add("tables", "more than %d patterns", MaxFilterTables)
	}
	seen := map[string]bool{}
	for i, t := range f.Tables {
		p, err := auth.ParseTablePattern(t)
		field := "tables[" + strconv.Itoa(i) + "]"
		switch {
		case err != nil:
			errs.add(field, "%s", err.Error())
			continue
		case seen[p.String()]:
			errs.add(field, "%q is listed twice", t)
		}
		seen[p.String()] = true
		pats = append(pats, p)
	}
	ops := opNames(errs, "operations", f.Operations)
	if ops != 0 {
		f.Operations = ops.Names() // canonical order, no repeats
	}
	where := parseWhere(errs, "where", f.Where)
	checkColumnList(errs, "select", f.Select, MaxSelectColumns)
	if tables == nil || len(pats) == 0 {
		return
	}
	var bad map[string][]string // field → "table: problem"
	for _, t := range tables.Tables() {
		if !slices.ContainsFunc(pats, func(p auth.TablePattern) bool { return p.Match(t.DB, t.Shape.Schema, t.Shape.Table) }) {
			continue
		}
		for field, problem := range checkOnTable(t, where, f.Where != nil, f.Select) {
			if bad == nil {
				bad = map[string][]string{}
			}
			bad[field] = append(bad[field], problem)
		}
	}
	for _, field := range slices.Sorted(mapKeys(bad)) {
		list := bad[field]
		more := ""
		if len(list) > maxReportedTables {
			more = "; and " + strconv.Itoa(len(list)-maxReportedTables) + " more tables"
			list = list[:maxReportedTables]
		}
		errs.add(field, "does not apply to every table the patterns match: %s%s", strings.Join(list, "; "), more)
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// checkOnTable compiles where and checks select against one table; the
// problems by field, each "db.schema.table: problem".
func checkOnTable(t *catalog.Table, where *query.Where, hasWhere bool, sel []string) map[string]string {
	out := map[string]string{}
	if hasWhere {
		if _, err := query.Compile(where, t.Qualified, t.Types); err != nil {
			out["where"] = t.Qualified + ": " + err.Error()
		}
	}
	for _, col := range sel {
		if !t.HasColumn(col) {
			out["select"] = t.Qualified + ": column " + schema.QuoteName(col) + " does not exist"
			break
		}
	}
	return out
}

// parseWhere parses and checks a where without a table (query.Check);
// nil for none or a broken one (whose problem is recorded).
func parseWhere(errs *fieldErrors, field string, raw []byte) *query.Where {
	if raw == nil {
		return nil
	}
	w, err := query.ParseWhere(raw)
	if err == nil {
		err = query.Check(w)
	}
	if err != nil {
		errs.add(field, "%s", err.Error())
		return nil
	}
	return w
}

// checkColumnList checks a list of column names: non-empty, distinct, at
// most max.
func checkColumnList(errs *fieldErrors, field string, cols []string, max int) {
	if len(cols) > max {
		errs.add(field, "more than %d columns", max)
	}
	seen := map[string]bool{}
	for i, c := range cols {
		p := field + "[" + strconv.Itoa(i) + "]"
		switch {
		case c == "":
			errs.add(p, "an empty column name")
		case len(c) > schema.MaxIdentLen:
			errs.add(p, "longer than %d bytes, which no column is", schema.MaxIdentLen)
		case seen[c]:
			errs.add(p, "%q is listed twice", c)
		}
		seen[c] = true
	}
}

// ruleOps is the operations a rule's conditions can apply to: Changed
// only to updates, Old to updates and deletes, New to creates, updates and
// reads.
func ruleOps(r *Rule) schema.OpSet {
	ops := schema.AllOps
	if len(r.Changed) > 0 {
		ops &= schema.OpBit(schema.OpUpdate)
	}
	if r.Old != nil {
		ops &= schema.OpBit(schema.OpUpdate) | schema.OpBit(schema.OpDelete)
	}
	if r.New != nil {
		ops &= schema.OpBit(schema.OpCreate) | schema.OpBit(schema.OpUpdate) | schema.OpBit(schema.OpRead)
	}
	return ops
}

// Validate checks a rule's values, with defaults applied, and, when tables
// is not nil and streams the rule's table, its conditions against the
// table's columns and replica identity. Every problem is in the
// *ValidationError.
func (r *Rule) Validate(tables Tables) error {
	var errs fieldErrors
	r.validate(&errs, tables)
	return errs.err()
}

func (r *Rule) validate(errs *fieldErrors, tables Tables) {
	if p := nameProblem(r.Name); p != "" {
		errs.add("name", "%s", p)
	}
	if len(r.Description) > MaxDescriptionLen {
		errs.add("description", "longer than %d characters", MaxDescriptionLen)
	}
	var pat auth.TablePattern
	var patOK bool
	if r.Table == "" {
		errs.add("table", `required: one table, "schema.table" or "db.schema.table"`)
	} else if p, err := auth.ParseTablePattern(r.Table); err != nil {
		errs.add("table", "%s", strings.Replace(err.Error(), "pattern", "table", 1))
	} else if !p.Exact() {
		errs.add("table", "a rule is on one table: no wildcard (want schema.table or db.schema.table)")
	} else {
		pat, patOK = p, true
	}
	ops := opNames(errs, "operations", r.Operations)
	allowed := ruleOps(r)
	if allowed == 0 {
		errs.add("operations", "no operation fits every condition: changed applies to updates, old to updates and deletes, new to creates, updates and reads")
	} else if extra := ops &^ allowed; ops != 0 && extra != 0 {
		why := []string{}
		if len(r.Changed) > 0 {
			why = append(why, "changed applies to updates only")
		}
		if r.Old != nil {
			why = append(why, "old applies to updates and deletes only")
		}
		if r.New != nil {
			why = append(why, "new applies to creates, updates and reads only")
		}
		errs.add("operations", "%s cannot apply: %s", strings.Join(extra.Names(), ", "), strings.Join(why, "; "))
	}
	if ops != 0 {
		r.Operations = ops.Names()
	}
	where := parseWhere(errs, "where", r.Where)
	oldW := parseWhere(errs, "old", r.Old)
	newW := parseWhere(errs, "new", r.New)
	checkColumnList(errs, "changed", r.Changed, MaxChangedColumns)
	checkColumnList(errs, "select", r.Select, MaxSelectColumns)
	if tables == nil || !patOK {
		return
	}
	var matched []*catalog.Table
	for _, t := range tables.Tables() {
		if pat.Match(t.DB, t.Shape.Schema, t.Shape.Table) {
			matched = append(matched, t)
		}
	}
	if len(matched) > 1 {
		names := make([]string, len(matched))
		for i, t := range matched {
			names[i] = t.Qualified
		}
		errs.add("table", "%s is in several databases: name one of %s", r.Table, strings.Join(names, ", "))
		return
	}
	if len(matched) == 0 {
		return // not streamed yet: checked against the table once it is
	}
	t := matched[0]
	for _, c := range []struct {
		field string
		w     *query.Where
	}{{"where", where}, {"old", oldW}, {"new", newW}} {
		if c.w == nil {
			continue
		}
		if _, err := query.Compile(c.w, t.Qualified, t.Types); err != nil {
			errs.add(c.field, "%s", err.Error())
		}
	}
	for i, c := range r.Changed {
		if !t.HasColumn(c) {
			errs.add("changed["+strconv.Itoa(i)+"]", "column %s does not exist in %s", schema.QuoteName(c), t.Qualified)
		}
	}
	for i, c := range r.Select {
		if !t.HasColumn(c) {
			errs.add("select["+strconv.Itoa(i)+"]", "column %s does not exist in %s", schema.QuoteName(c), t.Qualified)
		}
	}
	if t.Shape.ReplicaIdentity == "full" || t.Shape.OldRows {
		return
	}
	alter := "ALTER TABLE " + pgx.Identifier{t.Shape.Schema, t.Shape.Table}.Sanitize() + " REPLICA IDENTITY FULL"
	if r.Old != nil {
		errs.add("old", "conditions on the old row need the whole old row, which PostgreSQL sends only under REPLICA IDENTITY FULL, and %s has REPLICA IDENTITY %s: run %s (in database %s)",
			t.Qualified, strings.ToUpper(t.Shape.ReplicaIdentity), alter, schema.QuoteName(t.DB))
	}
	identity := map[string]bool{}
	for _, c := range t.Shape.Columns {
		if c.Identity || c.Key {
			identity[c.Name] = true
		}
	}
	for i, c := range r.Changed {
		if t.HasColumn(c) && !identity[c] {
			errs.add("changed["+strconv.Itoa(i)+"]", "telling whether column %s changed needs the old row, which PostgreSQL sends only under REPLICA IDENTITY FULL, and %s has REPLICA IDENTITY %s: run %s (in database %s)",
				schema.QuoteName(c), t.Qualified, strings.ToUpper(t.Shape.ReplicaIdentity), alter, schema.QuoteName(t.DB))
		}
	}
}
