package wsgate

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// requestTimeout bounds the NATS requests a client message causes.
const requestTimeout = 5 * time.Second

// handleMessage answers one client message.
func (c *conn) handleMessage(frame []byte) {
	if !c.allowMessage(time.Now()) {
		c.sendError("", CodeRateLimited, "more than "+strconv.Itoa(c.g.cfg.MessagesPerSecond)+" messages a second; this one was dropped")
		return
	}
	m, perr := DecodeClientMessage(frame)
	if perr != nil {
		c.sendError(perr.ID, perr.Code, perr.Message)
		return
	}
	c.authMu.Lock()
	defer c.authMu.Unlock()
	switch m.Type {
	case TypePing:
		c.send(AppendPong(nil))
	case TypeTopics:
		c.sendTopics()
	case TypeSubscribe:
		if perr := c.subscribe(&m, nil); perr != nil {
			c.sendError(perr.ID, perr.Code, perr.Message)
		}
	case TypeUnsubscribe:
		c.unsubscribe(m.ID)
	case TypeSelect:
		c.selectFields(m.ID, m.Fields)
	case TypeCreateTopic:
		c.createTopic(m.Topic)
	case TypeDestroyTopic:
		c.destroyTopic(m.Topic)
	case TypePublish:
		c.publish(m.Topic, m.Data)
	case TypeRefresh:
		c.refresh(m.Token)
	}
}

// allowMessage takes a token from the connection's bucket: MessagesPerSecond
// a second, up to twice that in a burst.
func (c *conn) allowMessage(now time.Time) bool {
	rate := float64(c.g.cfg.MessagesPerSecond)
	if c.tokensAt.IsZero() {
		c.tokens = 2 * rate
	} else {
		c.tokens = min(2*rate, c.tokens+now.Sub(c.tokensAt).Seconds()*rate)
	}
	c.tokensAt = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// subscribeURL makes the subscription of a /ws/tables/… URL.
func (c *conn) subscribeURL(us *URLSubscription) *ProtocolError {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	return c.subscribe(&ClientMessage{
		Type: TypeSubscribe, ID: URLSubscriptionID, Table: us.Table, Events: us.Events,
		Select: us.Select, SelectGiven: us.Select != nil, From: us.From, Snapshot: us.Snapshot, Batch: us.Batch,
	}, us.Where)
}

// subscribe checks a subscribe message against the catalog, attaches the
// subscription to its feed (answering subscribed) and starts the resume
// when it has "from". The message's where, or else where (a URL
// subscription's), filters its rows.
func (c *conn) subscribe(m *ClientMessage, where *query.Where) *ProtocolError {
	g := c.g
	fail := func(code ErrorCode, msg string) *ProtocolError {
		return &ProtocolError{Code: code, ID: m.ID, Message: msg}
	}
	if m.ID == "" {
		m.ID = c.assignID()
	}
	exists := c.lookupSub(m.ID) != nil
	c.subsMu.Lock()
	n := len(c.subs)
	c.subsMu.Unlock()
	switch {
	case exists:
		return fail(CodeInvalidSubscription, "subscription id "+schema.QuoteName(m.ID)+" is in use; unsubscribe it first")
	case c.endpointSubs != nil && endpointStyleID(m.ID):
		// The endpoint may come to cover that table at any time, and
		// then subscribes the connection under that very id: two
		// subscriptions of one id could not be told apart, nor ended.
		return fail(CodeInvalidSubscription, "on a WebSocket endpoint's connection, ids of the form database.schema.table such as "+
			schema.QuoteName(m.ID)+" are the endpoint's subscriptions' (one per table it covers); choose another id")
	case n >= c.maxSubscriptions():
		return fail(CodeTooManySubscriptions, "a connection may hold at most "+strconv.Itoa(c.maxSubscriptions())+" subscriptions")
	}
	s := &sub{c: c, id: m.ID}
	var key, subject, marker, name string
	grants := c.id.Grants
	if m.Rule != "" {
		var perr *ProtocolError
		if key, subject, name, perr = c.subscribeRule(m, s); perr != nil {
			return perr
		}
	} else if m.Table != "" {
		db, schemaName, table := SplitQualifiedName(m.Table)
		t, choices := g.cat.Resolve(db, schemaName, table, grants)
		if choices != nil {
			return fail(CodeAmbiguousTable, "table "+schema.QuoteName(m.Table)+" is in several databases; name one of: "+strings.Join(choices, ", "))
		}
		if t == nil {
			// The same answer whether the table is missing or not
			// granted: a client learns nothing of tables it may not read.
			return fail(CodeUnknownTable, "table "+schema.QuoteName(m.Table)+" is not streamed")
		}
		schemaName, table = t.Shape.Schema, t.Shape.Table
		shown := t.Name // the table as the client named it, in messages
		if db != "" {
			shown = t.Qualified
		}
		granted := grants.TableOps(t.DB, schemaName, table)
		ops := schema.OpsOf(m.Events)
		if m.Events != nil && ops&^granted != 0 {
			return fail(CodeNotAllowed, "events "+strings.Join((ops&^granted).Names(), ", ")+" of "+shown+" are not granted")
		}
		// A column not granted is, to the client's where and select,
		// a column that does not exist; the row policy reads any.
		s.granted, s.allColumns = grants.TableColumns(t.DB, schemaName, table)
		visible := t.Types
		if !s.allColumns {
			visible = make(map[string]query.ColumnType, len(s.granted))
			for _, col := range s.granted {
				if typ, ok := t.Types[col]; ok {
					visible[col] = typ
				}
			}
		}
		if m.Where != nil {
			var err error
			if where, err = query.ParseWhere(m.Where); err != nil {
				return fail(CodeInvalidFilter, err.Error())
			}
		}
		f, err := query.Compile(where, shown, visible)
		if err != nil {
			return fail(CodeInvalidFilter, err.Error())
		}
		if f.MatchesAll() {
			f = nil // no filter: nothing to keep per subscription
		}
		policy, msg := c.rowPolicy(grants, t, shown)
		if msg != "" {
			return fail(CodeNotAllowed, msg)
		}
		s.policy.Store(policy)
		for _, col := range m.Select {
			if _, ok := visible[col]; !ok {
				return fail(CodeInvalidSelect, "column "+schema.QuoteName(col)+" does not exist in "+shown)
			}
		}
		const viewOps = schema.BitCreate | schema.BitUpdate | schema.BitDelete
		switch {
		case m.Snapshot && m.Events != nil:
			return fail(CodeInvalidSubscription, `a subscription with "snapshot" keeps a view, which takes every event: leave out "events"`)
		case m.Snapshot && granted&viewOps != viewOps:
			return fail(CodeNotAllowed, "a view of "+shown+" needs its creates, updates and deletes, which are not all granted")
		}
		if m.Batch != "" && !g.cfg.TxMarkers {
			return fail(CodeBatchUnavailable, g.cfg.TxMarkersOff)
		}
		if m.Snapshot && !hasKey(t.Shape) {
			return fail(CodeNoKey, shown+" has no key (no primary key nor replica identity index): its rows cannot be told apart for a snapshot")
		}
		s.table, s.filter, s.ops, s.snapshot = t, f, ops&granted, m.Snapshot
		s.selected = slices.Clone(m.Select)
		s.proj.Store(s.projection(m.Select))
		key, subject, name = "t\x00"+t.Subject, t.Subject, t.Name
		if m.Batch != "" {
			// Batched subscriptions have feeds of their own, which
			// follow the database's transaction markers too.
			s.batched = true
			marker = stream.TransactionSubject(g.cfg.Prefix, t.DB)
			key = "x\x00" + t.Subject
		}
	} else {
		if !grants.CanSubscribeTopic(m.Topic) {
			return fail(CodeNotAllowed, "topic "+schema.QuoteName(m.Topic)+" is not granted")
		}
		if !g.cat.HasTopic(m.Topic) {
			return fail(CodeUnknownTopic, "topic "+schema.QuoteName(m.Topic)+" does not exist; create it first")
		}
		s.topic, s.ops = m.Topic, schema.AllOps
		subject = stream.TopicSubject(g.cfg.Prefix, m.Topic)
		key, name = "q\x00"+subject, "topic "+schema.QuoteName(m.Topic)
	}
	ctx, cancel := context.WithTimeout(g.ctx, requestTimeout)
	defer cancel()
	if m.From != nil {
		if perr := g.checkHistory(ctx, m.ID, *m.From); perr != nil {
			return perr
		}
	}
	if s.snapshot {
		if perr := g.checkRowState(ctx, s); perr != nil {
			return perr
		}
	}
	if !c.addSub(s) {
		return nil // closing
	}
	for {
		f, err := g.feedFor(ctx, key, subject, marker, s.topic, name)
		if err != nil {
			c.removeSub(s)
			return fail(CodeInternal, "cannot follow "+subject+": "+err.Error())
		}
		if f.attach(s, m.From, s.snapshot) {
			break
		}
	}
	g.met.subscriptions.Inc()
	g.subCount.Add(1)
	if c.isClosing() {
		g.detach(s)
		return nil
	}
	switch {
	case m.From != nil:
		go g.catchUp(s, *m.From)
	case s.snapshot:
		go g.catchUp(s, 0)
	}
	return nil
}

// endpointStyleID reports whether id has the form of the ids a WebSocket
// endpoint's subscriptions take: a table's database.schema.table.
func endpointStyleID(id string) bool {
	db, _, _, err := schema.ParseQualifiedName(id)
	return err == nil && db != ""
}

// subscribeRule prepares s, a subscription to the rule m names: the
// events of the rule's table it fires on, under the client's grants as a
// table subscription is (operations, columns, row policy).
func (c *conn) subscribeRule(m *ClientMessage, s *sub) (key, subject, name string, perr *ProtocolError) {
	fail := func(code ErrorCode, msg string) (string, string, string, *ProtocolError) {
		return "", "", "", &ProtocolError{Code: code, ID: m.ID, Message: msg}
	}
	var rule *endpoint.Rule
	if c.g.cfg.Managed != nil {
		rule = c.g.cfg.Managed.Rule(m.Rule)
	}
	if rule == nil {
		return fail(CodeUnknownRule, "rule "+schema.QuoteName(m.Rule)+" does not exist")
	}
	grants := c.id.Grants
	db, schemaName, table := SplitQualifiedName(rule.Table)
	t, choices := c.g.cat.Resolve(db, schemaName, table, grants)
	if t == nil || choices != nil {
		return fail(CodeNotAllowed, "rule "+schema.QuoteName(m.Rule)+" is on a table that is not streamed, or not granted")
	}
	part, _, err := match.CompileRule(rule, t)
	if err != nil {
		return fail(CodeInvalidFilter, err.Error())
	}
	granted := grants.TableOps(t.DB, t.Shape.Schema, t.Shape.Table)
	if lost := part.Ops &^ granted; lost != 0 {
		return fail(CodeNotAllowed, "rule "+schema.QuoteName(m.Rule)+" takes events "+strings.Join(lost.Names(), ", ")+" of "+t.Qualified+", which are not granted")
	}
	s.granted, s.allColumns = grants.TableColumns(t.DB, t.Shape.Schema, t.Shape.Table)
	selected := m.Select
	if !m.SelectGiven {
		selected = part.Select
	}
	for _, col := range append(slices.Clone(part.Reads), selected...) {
		if !t.HasColumn(col) {
			return fail(CodeInvalidSelect, "column "+schema.QuoteName(col)+" does not exist in "+t.Qualified)
		}
		if !s.allColumns {
			if _, ok := slices.BinarySearch(s.granted, col); !ok {
				return fail(CodeNotAllowed, "rule "+schema.QuoteName(m.Rule)+" reads or sends column "+schema.QuoteName(col)+" of "+t.Qualified+", which is not granted")
			}
		}
	}
	policy, msg := c.rowPolicy(grants, t, t.Qualified)
	if msg != "" {
		return fail(CodeNotAllowed, msg)
	}
	s.policy.Store(policy)
	s.table, s.filter, s.ops, s.change, s.reads = t, part.Where, part.Ops, part.Change, part.Reads
	s.selected = slices.Clone(selected)
	s.proj.Store(s.projection(selected))
	return "t\x00" + t.Subject, t.Subject, t.Name, nil
}

// subscribeEndpoint makes the subscriptions of a /ws/endpoints/<name>
// URL (syncEndpoint), and has the connection follow the endpoint: as it
// changes, syncEndpoint again; paused, disabled or deleted, the connection
// is closed (Gateway.endpointChanged).
func (c *conn) subscribeEndpoint(name string) *ProtocolError {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	g := c.g
	var e *match.Entry
	if g.cfg.Managed != nil {
		e = g.cfg.Managed.GetByName(name)
	}
	if why := endpointUnusable(e, name); why != "" {
		return &ProtocolError{Code: CodeInvalidSubscription, Message: why}
	}
	c.endpointSubs = map[string]*sub{}
	g.followEndpoint(c, e.Endpoint.ID)
	if src, ok := g.cfg.Managed.(EndpointSource); ok {
		// A change seen before the connection was indexed under the
		// endpoint was not applied to it: read the endpoint again.
		if e = src.Get(e.Endpoint.ID); endpointUnusable(e, name) != "" {
			return &ProtocolError{Code: CodeInvalidSubscription, Message: endpointUnusable(e, name)}
		}
	}
	return c.syncEndpoint(e)
}

// endpointUnusable says why a connection may not follow e (named name),
// "" when it may: e is an active WebSocket endpoint.
func endpointUnusable(e *match.Entry, name string) string {
	switch {
	case e == nil:
		return "WebSocket endpoint " + schema.QuoteName(name) + " does not exist"
	case e.Endpoint.Type != endpoint.TypeWebSocket:
		return "endpoint " + schema.QuoteName(name) + " is not a WebSocket endpoint"
	case e.Endpoint.State != endpoint.StateActive:
		return "WebSocket endpoint " + schema.QuoteName(name) + " is " + string(e.Endpoint.State)
	}
	return ""
}

// syncEndpoint brings the connection's subscriptions in line with
// endpoint e: one per streamed table that its filters and rules apply to
// and the client may read, with the table's qualified name as its id,
// sending each event that passes one of them (match.TableMatch) with the
// columns they select, under the client's grants and row policy. A table
// newly covered gets a subscription (answered subscribed); one no longer
// covered, or whose filters and rules now read a column the client may
// not read, is ended (unsubscribed, after not_allowed for the latter); one
// still covered takes the new filters and rules from the next event its
// feed handles. The caller holds authMu.
func (c *conn) syncEndpoint(e *match.Entry) *ProtocolError {
	g := c.g
	grants := c.id.Grants
	end := func(id string, s *sub) {
		c.dropSub(s)
		delete(c.endpointSubs, id)
		c.send(AppendUnsubscribed(nil, id))
	}
	covered := map[string]bool{}
	for _, t := range g.cat.Tables() {
		tm := e.Matcher.Table(t)
		if len(tm.Parts) == 0 {
			continue
		}
		granted := grants.TableOps(t.DB, t.Shape.Schema, t.Shape.Table)
		var ops schema.OpSet
		var reads []string
		for _, p := range tm.Parts {
			ops |= p.Ops
			reads = append(reads, p.Reads...)
			reads = append(reads, p.Select...)
		}
		if ops&granted == 0 {
			continue // a table the client may not read: nothing said of it
		}
		old := c.endpointSubs[t.Qualified]
		if old != nil && old.done.Load() {
			// Ended by the client or by a refreshed credential's grants:
			// not made again.
			covered[t.Qualified] = true
			continue
		}
		cols, all := grants.TableColumns(t.DB, t.Shape.Schema, t.Shape.Table)
		refused := ""
		if !all {
			for _, col := range reads {
				if _, ok := slices.BinarySearch(cols, col); !ok {
					refused = "the endpoint's filters and rules read or send column " + schema.QuoteName(col) + " of " + t.Qualified + ", which is not granted"
					break
				}
			}
		}
		if refused != "" {
			c.sendError(t.Qualified, CodeNotAllowed, refused)
			if old != nil {
				end(t.Qualified, old)
			}
			continue
		}
		if old != nil {
			covered[t.Qualified] = true
			old.reads = reads
			old.tm.Store(tm)
			continue
		}
		// The operations the filters and rules take are theirs to decide
		// (Part.Passes): the subscription takes every one granted, so that
		// a filter linked later may take more.
		s := &sub{c: c, id: t.Qualified, table: t, ops: granted}
		s.tm.Store(tm)
		s.granted, s.allColumns = cols, all
		policy, msg := c.rowPolicy(grants, t, t.Qualified)
		if msg != "" {
			c.sendError(t.Qualified, CodeNotAllowed, msg)
			continue
		}
		s.policy.Store(policy)
		s.reads = reads
		s.proj.Store(s.projection(nil))
		if !c.addSub(s) {
			return nil // closing
		}
		ctx, cancel := context.WithTimeout(g.ctx, requestTimeout)
		for {
			f, err := g.feedFor(ctx, "t\x00"+t.Subject, t.Subject, "", "", t.Name)
			if err != nil {
				cancel()
				c.removeSub(s)
				return &ProtocolError{Code: CodeInternal, Message: "cannot follow " + t.Subject + ": " + err.Error()}
			}
			if f.attach(s, nil, false) {
				break
			}
		}
		cancel()
		g.met.subscriptions.Inc()
		g.subCount.Add(1) // detach takes it off, as for any subscription
		if c.isClosing() {
			// Closed meanwhile: its release may have found s not yet
			// attached, as in subscribe.
			g.detach(s)
			return nil
		}
		c.endpointSubs[t.Qualified] = s
		covered[t.Qualified] = true
	}
	for id, s := range c.endpointSubs {
		if !covered[id] {
			end(id, s)
		}
	}
	return nil
}

// assignID returns an id for a subscribe without one: "~1", "~2", … in
// the connection's order, skipping one the client uses.
func (c *conn) assignID() string {
	for {
		id := "~" + strconv.FormatUint(c.nextID.Add(1), 10)
		if c.lookupSub(id) == nil {
			return id
		}
	}
}

// rowPolicy compiles the row policy grants give table t (shown to the
// client as shown): nil for none, or why the table cannot be read under
// them. A policy reads every column, granted to the client or not.
func (c *conn) rowPolicy(grants *auth.Grants, t *catalog.Table, shown string) (*query.Filter, string) {
	policy, err := grants.TablePolicy(t.DB, t.Shape.Schema, t.Shape.Table)
	if err != nil {
		return nil, "the row policy of " + shown + " cannot be applied: " + err.Error()
	}
	if policy == nil {
		return nil, ""
	}
	f, err := query.Compile(policy, t.Qualified, t.Types)
	if err != nil {
		c.g.log.Warn("row policy does not compile; subscriptions to the table are refused", "table", t.Qualified, "subject", c.id.Subject, "err", err)
		return nil, "the row policy of " + shown + " does not apply to its columns"
	}
	return f, ""
}

// refresh replaces the connection's credential with a new one of the same
// identity (Identity.SameAs): its grants and row policies apply to every
// open subscription, its expiry replaces the old one, and it is answered
// with refreshed. A token refused, or of another identity, is answered
// with refresh_failed and changes nothing.
func (c *conn) refresh(token string) {
	verifier := c.g.cfg.Auth
	fail := func(why string) {
		c.g.log.Info("websocket refresh refused", "remote", c.nc.RemoteAddr().String(), "subject", c.id.Subject, "reason", why)
		c.sendError("", CodeRefreshFailed, why)
	}
	cur := c.id
	switch {
	case !verifier.Enabled():
		fail("no authentication is configured: there is nothing to refresh")
		return
	case cur.Method == auth.MethodAnonymous:
		fail("this connection has no credential; reconnect with one to change identity")
		return
	case cur.Subject == "" && cur.Method == auth.MethodJWT:
		fail("the connection's token has no subject, so a new token cannot be told to be the same identity; reconnect with it")
		return
	}
	id, err := verifier.Authenticate(auth.Credential{Token: token}, time.Now())
	if err != nil {
		reason := err.Error()
		var ae *auth.Error
		if errors.As(err, &ae) {
			reason = ae.Reason
		}
		fail(reason)
		return
	}
	if !id.SameAs(cur) {
		fail("the credential is for another identity than " + schema.QuoteName(cur.Subject) + "; reconnect to change identity")
		return
	}
	c.reauthorize(id)
	var exp int64
	if e := id.Exp(); !e.IsZero() {
		exp = e.Unix()
	}
	c.send(AppendRefreshed(nil, exp))
}

// recheckAPIKey closes the connection when its API key has been removed
// (or replaced) from the keys, and applies the key's claims when they
// changed. The caller holds authMu.
func (c *conn) recheckAPIKey() {
	id := c.id
	if id == nil || id.Method != auth.MethodAPIKey || c.isClosing() {
		return
	}
	switch cur := c.g.cfg.Auth.Current(id); {
	case cur == nil:
		c.g.log.Info("websocket client's API key revoked", "remote", c.nc.RemoteAddr().String(), "subject", id.Subject)
		c.closeWith(CloseUnauthorized, CloseReasonRevoked)
	case cur != id:
		c.reauthorize(cur)
	}
}

// reauthorize makes id the connection's identity (the same identity as
// before, with new grants): each open subscription that its grants no
// longer allow is ended with a not_allowed error and unsubscribed, the
// others take its row policies from the next event on, and the
// connection closes at id's expiry instead. The caller holds authMu.
func (c *conn) reauthorize(id *auth.Identity) {
	c.id = id
	c.subsMu.Lock()
	subs := slices.Clone(c.subs)
	c.subsMu.Unlock()
	for _, s := range subs {
		f := s.f.Load()
		if f == nil {
			continue
		}
		policy, columns, why := c.regrant(s, id.Grants)
		if why == "" {
			if s.topic == "" {
				s.allColumns, s.granted = columns.all, columns.names
			}
			f.setGrants(s, policy, s.projection(s.selected))
			continue
		}
		c.dropSub(s)
		c.sendError(s.id, CodeNotAllowed, "subscription "+schema.QuoteName(s.id)+" ended: "+why)
		c.send(AppendUnsubscribed(nil, s.id))
	}
	c.setExpiry(id.Expires)
}

// regranted is a table subscription's column grant under new grants.
type regranted struct {
	all   bool
	names []string // sorted, when !all
}

// regrant judges subscription s under new grants: the row policy and the
// column grant it takes now, or why the grants no longer allow it. A table
// subscription must still be granted every operation it receives (one made
// without "events" received the operations granted then: a narrower grant
// ends it rather than silently narrowing it), and every column its where
// and select name; its projection narrows to the new column grant.
func (c *conn) regrant(s *sub, grants *auth.Grants) (*query.Filter, regranted, string) {
	if s.topic != "" {
		if !grants.CanSubscribeTopic(s.topic) {
			return nil, regranted{}, "topic " + schema.QuoteName(s.topic) + " is no longer granted"
		}
		return nil, regranted{}, ""
	}
	t := c.g.cat.TableIn(s.table.DB, s.table.Shape.Schema, s.table.Shape.Table)
	if t == nil {
		t = s.table
	}
	needed := s.ops
	if tm := s.tm.Load(); tm != nil {
		// A WebSocket endpoint's subscription takes every operation
		// granted; it needs those its filters and rules take.
		var ops schema.OpSet
		for _, p := range tm.Parts {
			ops |= p.Ops
		}
		needed &= ops
	}
	if lost := needed &^ grants.TableOps(t.DB, t.Shape.Schema, t.Shape.Table); lost != 0 {
		return nil, regranted{}, "events " + strings.Join(lost.Names(), ", ") + " of " + t.Qualified + " are no longer granted"
	}
	var cols regranted
	cols.names, cols.all = grants.TableColumns(t.DB, t.Shape.Schema, t.Shape.Table)
	if !cols.all {
		named := append(slices.Clone(s.selected), s.reads...)
		if s.filter != nil {
			named = append(named, s.filter.Columns()...)
		}
		for _, col := range named {
			if _, ok := slices.BinarySearch(cols.names, col); !ok {
				return nil, regranted{}, "column " + schema.QuoteName(col) + " of " + t.Qualified + " is no longer granted"
			}
		}
	}
	policy, why := c.rowPolicy(grants, t, t.Qualified)
	return policy, cols, why
}

// projection compiles a table subscription's select list under its column
// grant.
func (s *sub) projection(selected []string) *query.Projection {
	if s.allColumns {
		return query.NewProjection(selected)
	}
	return query.NewGrantedProjection(selected, s.granted)
}

// columnGranted reports whether s may see the column.
func (s *sub) columnGranted(col string) bool {
	if s.allColumns {
		return true
	}
	_, ok := slices.BinarySearch(s.granted, col)
	return ok
}

// maxSubscriptions is the gateway's limit, or the token's when lower.
func (c *conn) maxSubscriptions() int {
	if l := c.id.Grants.Limits().Subscriptions; l > 0 && l < c.g.cfg.MaxSubscriptions {
		return l
	}
	return c.g.cfg.MaxSubscriptions
}

// addSub records s under its id; false once the connection is closing.
func (c *conn) addSub(s *sub) bool {
	c.subsMu.Lock()
	defer c.subsMu.Unlock()
	if c.subsClosed {
		return false
	}
	c.subs = append(c.subs, s)
	return true
}

func (c *conn) removeSub(s *sub) {
	c.subsMu.Lock()
	defer c.subsMu.Unlock()
	for i, o := range c.subs {
		if o == s {
			c.subs = slices.Delete(c.subs, i, i+1) // clears the vacated slot
			return
		}
	}
}

func (c *conn) lookupSub(id string) *sub {
	c.subsMu.Lock()
	defer c.subsMu.Unlock()
	for _, s := range c.subs {
		if s.id == id {
			return s
		}
	}
	return nil
}

// dropSub removes and detaches s.
func (c *conn) dropSub(s *sub) {
	c.removeSub(s)
	c.g.detach(s)
}

func (c *conn) unsubscribe(id string) {
	s := c.lookupSub(id)
	if s == nil {
		c.sendError(id, CodeInvalidSubscription, "no subscription "+schema.QuoteName(id))
		return
	}
	c.dropSub(s)
	c.send(AppendUnsubscribed(nil, id))
}

// selectFields changes a table subscription's projection. It is answered
// with subscribed again, whose seq is the last event sent with the old
// projection: every later event has the new one.
func (c *conn) selectFields(id string, fields []string) {
	s := c.lookupSub(id)
	switch {
	case s == nil:
		c.sendError(id, CodeInvalidSubscription, "no subscription "+schema.QuoteName(id))
		return
	case s.topic != "":
		c.sendError(id, CodeInvalidSubscription, "select applies to table subscriptions; "+schema.QuoteName(id)+" is a topic subscription")
		return
	}
	t := c.g.cat.TableIn(s.table.DB, s.table.Shape.Schema, s.table.Shape.Table)
	if t == nil {
		t = s.table
	}
	for _, col := range fields {
		if !t.HasColumn(col) || !s.columnGranted(col) {
			c.sendError(id, CodeInvalidSelect, "column "+schema.QuoteName(col)+" does not exist in "+t.Name)
			return
		}
	}
	s.selected = slices.Clone(fields)
	f := s.f.Load()
	f.setProjection(s, s.projection(fields), func(seq uint64) { c.send(AppendSubscribed(nil, id, seq)) })
	if testHookProjectionSet != nil {
		testHookProjectionSet(id, f)
	}
}

// testHookProjectionSet, when set (by tests), is called once a select has
// set the projection of subscription id of feed f.
var testHookProjectionSet func(id string, f *feed)

// createTopic creates a custom topic, answered with the topics list.
func (c *conn) createTopic(name string) {
	if !c.id.Grants.CanCreateTopic(name) {
		c.sendError("", CodeNotAllowed, "creating topic "+schema.QuoteName(name)+" is not granted")
		return
	}
	if n := c.g.cat.TopicCount(); n >= c.g.cfg.MaxTopics {
		c.sendError("", CodeTooManyTopics, "there are "+strconv.Itoa(n)+" topics, the most the gateway allows; destroy one first")
		return
	}
	ctx, cancel := context.WithTimeout(c.g.ctx, requestTimeout)
	defer cancel()
	switch err := c.g.topics.CreateTopic(ctx, name); {
	case errors.Is(err, stream.ErrTopicExists):
		c.sendError("", CodeTopicExists, "topic "+schema.QuoteName(name)+" exists")
		return
	case err != nil:
		c.sendError("", CodeInternal, err.Error())
		return
	}
	c.g.cat.AddTopic(name)
	c.sendTopics()
}

// destroyTopic removes a custom topic and its messages; its subscribers
// get an error frame and unsubscribed. Answered with the topics list.
func (c *conn) destroyTopic(name string) {
	if !c.id.Grants.CanDestroyTopic(name) {
		c.sendError("", CodeNotAllowed, "destroying topic "+schema.QuoteName(name)+" is not granted")
		return
	}
	ctx, cancel := context.WithTimeout(c.g.ctx, requestTimeout)
	defer cancel()
	switch err := c.g.topics.DestroyTopic(ctx, name); {
	case errors.Is(err, stream.ErrNoTopic):
		c.sendError("", CodeUnknownTopic, "topic "+schema.QuoteName(name)+" does not exist")
		return
	case err != nil:
		c.sendError("", CodeInternal, err.Error())
		return
	}
	if c.g.cat.RemoveTopic(name) {
		c.g.topicDestroyed(name)
	}
	c.sendTopics()
}

// sendTopics answers with the tables and topics the client may subscribe
// to: nothing it may not use is listed.
func (c *conn) sendTopics() {
	tables, topics := c.g.cat.Visible(c.id.Grants)
	c.send(AppendTopics(nil, tables, topics))
}

// topicDestroyed ends every subscription to a destroyed topic.
func (g *Gateway) topicDestroyed(name string) {
	g.feedMu.Lock()
	f := g.feeds["q\x00"+stream.TopicSubject(g.cfg.Prefix, name)]
	g.feedMu.Unlock()
	if f == nil {
		return
	}
	for _, s := range f.subs() {
		s.c.dropSub(s)
		s.c.sendError(s.id, CodeUnknownTopic, "topic "+schema.QuoteName(name)+" was destroyed")
		s.c.send(AppendUnsubscribed(nil, s.id))
	}
}

// publish stores a message on a custom topic; it reaches the topic's
// subscribers through the stream like any backend's message would.
func (c *conn) publish(topic string, data []byte) {
	if !c.id.Grants.CanPublish(topic) {
		c.sendError("", CodeNotAllowed, "publishing to topic "+schema.QuoteName(topic)+" is not granted")
		return
	}
	if !c.g.cat.HasTopic(topic) {
		c.sendError("", CodeUnknownTopic, "topic "+schema.QuoteName(topic)+" does not exist; create it first")
		return
	}
	ctx, cancel := context.WithTimeout(c.g.ctx, requestTimeout)
	defer cancel()
	msg := &nats.Msg{Subject: stream.TopicSubject(c.g.cfg.Prefix, topic), Data: data}
	if _, err := c.g.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(c.g.cfg.Stream)); err != nil {
		c.sendError("", CodeInternal, "publish to "+schema.QuoteName(topic)+": "+err.Error())
	}
}
