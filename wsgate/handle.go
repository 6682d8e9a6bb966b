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
	switch m.Type {
	case TypePing:
		c.send(AppendPong(nil))
	case TypeTopics:
		c.sendTopics()
	case TypeSubscribe:
		if perr := c.subscribe(&m); perr != nil {
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
	return c.subscribe(&ClientMessage{
		Type: TypeSubscribe, ID: URLSubscriptionID, Table: us.Table, Events: us.Events,
		Where: us.Where, Select: us.Select, SelectGiven: us.Select != nil, From: us.From,
	})
}

// subscribe checks a subscribe message against the catalog, attaches the
// subscription to its feed (answering subscribed) and starts the resume
// when it has "from".
func (c *conn) subscribe(m *ClientMessage) *ProtocolError {
	g := c.g
	fail := func(code ErrorCode, msg string) *ProtocolError {
		return &ProtocolError{Code: code, ID: m.ID, Message: msg}
	}
	exists := c.lookupSub(m.ID) != nil
	c.subsMu.Lock()
	n := len(c.subs)
	c.subsMu.Unlock()
	switch {
	case exists:
		return fail(CodeInvalidSubscription, "subscription id "+quoteShort(m.ID)+" is in use; unsubscribe it first")
	case n >= c.maxSubscriptions():
		return fail(CodeTooManySubscriptions, "a connection may hold at most "+strconv.Itoa(c.maxSubscriptions())+" subscriptions")
	}
	s := &sub{c: c, id: m.ID}
	var key, subject, name string
	grants := c.id.Grants
	if m.Table != "" {
		schemaName, table := SplitTableName(m.Table)
		t := g.cat.table(schemaName, table)
		granted := uint8(grants.OpsFor(schemaName, table))
		if t == nil || granted == 0 {
			// The same answer whether the table is missing or not
			// granted: a client learns nothing of tables it may not read.
			return fail(CodeUnknownTable, "table "+quoteShort(m.Table)+" is not streamed")
		}
		ops := opsOf(m.Events)
		if m.Events != nil && ops&^granted != 0 {
			return fail(CodeNotAllowed, "events "+strings.Join(OpSet(ops&^granted).Names(), ", ")+" of "+t.name+" are not granted")
		}
		f, err := CompileWhere(m.Where, t.name, t.types)
		if err != nil {
			return fail(CodeInvalidFilter, err.Error())
		}
		if f.matchesAll() {
			f = nil // no filter: nothing to keep per subscription
		}
		policy, err := grants.Policy(schemaName, table)
		if err != nil {
			return fail(CodeNotAllowed, "the row policy of "+t.name+" cannot be applied: "+err.Error())
		}
		if policy != nil {
			if s.policy, err = CompileWhere(policy, t.name, t.types); err != nil {
				g.log.Warn("row policy does not compile; subscriptions to the table are refused", "table", t.name, "subject", c.id.Subject, "err", err)
				return fail(CodeNotAllowed, "the row policy of "+t.name+" does not apply to its columns")
			}
		}
		for _, col := range m.Select {
			if !t.hasColumn(col) {
				return fail(CodeInvalidSelect, "column "+quoteShort(col)+" does not exist in "+t.name)
			}
		}
		s.table, s.filter, s.ops = t, f, ops&granted
		s.proj.Store(NewProjection(m.Select))
		key, subject, name = "t\x00"+t.subject, t.subject, t.name
	} else {
		if !grants.CanSubscribeTopic(m.Topic) {
			return fail(CodeNotAllowed, "topic "+quoteShort(m.Topic)+" is not granted")
		}
		if !g.cat.hasTopic(m.Topic) {
			return fail(CodeUnknownTopic, "topic "+quoteShort(m.Topic)+" does not exist; create it first")
		}
		s.topic, s.ops = m.Topic, allOps
		subject = stream.TopicSubject(g.cfg.Prefix, m.Topic)
		key, name = "q\x00"+subject, "topic "+quoteShort(m.Topic)
	}
	ctx, cancel := context.WithTimeout(g.ctx, requestTimeout)
	defer cancel()
	if m.From != nil {
		if perr := g.checkHistory(ctx, m.ID, *m.From); perr != nil {
			return perr
		}
	}
	if !c.addSub(s) {
		return nil // closing
	}
	for {
		f, err := g.feedFor(ctx, key, subject, s.topic, name)
		if err != nil {
			c.removeSub(s)
			return fail(CodeInternal, "cannot follow "+subject+": "+err.Error())
		}
		if f.attach(s, m.From) {
			break
		}
	}
	g.met.subscriptions.Inc()
	if c.isClosing() {
		g.detach(s)
		return nil
	}
	if m.From != nil {
		go g.catchUp(s, *m.From)
	}
	return nil
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
		c.sendError(id, CodeInvalidSubscription, "no subscription "+quoteShort(id))
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
		c.sendError(id, CodeInvalidSubscription, "no subscription "+quoteShort(id))
		return
	case s.topic != "":
		c.sendError(id, CodeInvalidSubscription, "select applies to table subscriptions; "+quoteShort(id)+" is a topic subscription")
		return
	}
	t := c.g.cat.table(s.table.shape.Schema, s.table.shape.Table)
	if t == nil {
		t = s.table
	}
	for _, col := range fields {
		if !t.hasColumn(col) {
			c.sendError(id, CodeInvalidSelect, "column "+quoteShort(col)+" does not exist in "+t.name)
			return
		}
	}
	seq := s.f.Load().setProjection(s, NewProjection(fields))
	c.send(AppendSubscribed(nil, id, seq))
}

// createTopic creates a custom topic, answered with the topics list.
func (c *conn) createTopic(name string) {
	if !c.id.Grants.CanCreateTopic(name) {
		c.sendError("", CodeNotAllowed, "creating topic "+quoteShort(name)+" is not granted")
		return
	}
	if n := c.g.cat.topicCount(); n >= c.g.cfg.MaxTopics {
		c.sendError("", CodeTooManyTopics, "there are "+strconv.Itoa(n)+" topics, the most the gateway allows; destroy one first")
		return
	}
	ctx, cancel := context.WithTimeout(c.g.ctx, requestTimeout)
	defer cancel()
	switch err := c.g.topics.CreateTopic(ctx, name); {
	case errors.Is(err, stream.ErrTopicExists):
		c.sendError("", CodeTopicExists, "topic "+quoteShort(name)+" exists")
		return
	case err != nil:
		c.sendError("", CodeInternal, err.Error())
		return
	}
	c.g.cat.addTopic(name)
	c.sendTopics()
}

// destroyTopic removes a custom topic and its messages; its subscribers
// get an error frame and unsubscribed. Answered with the topics list.
func (c *conn) destroyTopic(name string) {
	if !c.id.Grants.CanDestroyTopic(name) {
		c.sendError("", CodeNotAllowed, "destroying topic "+quoteShort(name)+" is not granted")
		return
	}
	ctx, cancel := context.WithTimeout(c.g.ctx, requestTimeout)
	defer cancel()
	switch err := c.g.topics.DestroyTopic(ctx, name); {
	case errors.Is(err, stream.ErrNoTopic):
		c.sendError("", CodeUnknownTopic, "topic "+quoteShort(name)+" does not exist")
		return
	case err != nil:
		c.sendError("", CodeInternal, err.Error())
		return
	}
	if c.g.cat.removeTopic(name) {
		c.g.topicDestroyed(name)
	}
	c.sendTopics()
}

// sendTopics answers with the tables and topics the client may subscribe
// to: nothing it may not use is listed.
func (c *conn) sendTopics() {
	tables, topics := c.g.cat.visible(c.id.Grants)
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
		s.c.sendError(s.id, CodeUnknownTopic, "topic "+quoteShort(name)+" was destroyed")
		s.c.send(AppendUnsubscribed(nil, s.id))
	}
}

// publish stores a message on a custom topic; it reaches the topic's
// subscribers through the stream like any backend's message would.
func (c *conn) publish(topic string, data []byte) {
	if !c.id.Grants.CanPublish(topic) {
		c.sendError("", CodeNotAllowed, "publishing to topic "+quoteShort(topic)+" is not granted")
		return
	}
	if !c.g.cat.hasTopic(topic) {
		c.sendError("", CodeUnknownTopic, "topic "+quoteShort(topic)+" does not exist; create it first")
		return
	}
	ctx, cancel := context.WithTimeout(c.g.ctx, requestTimeout)
	defer cancel()
	msg := &nats.Msg{Subject: stream.TopicSubject(c.g.cfg.Prefix, topic), Data: data}
	if _, err := c.g.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(c.g.cfg.Stream)); err != nil {
		c.sendError("", CodeInternal, "publish to "+quoteShort(topic)+": "+err.Error())
	}
}
