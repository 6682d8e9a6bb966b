package wsgate

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/internal/match"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// sub is one subscription of one connection, to a table or a topic.
type sub struct {
	c      *conn
	id     string
	topic  string // a topic subscription's topic; "" for a table
	table  *catalog.Table
	ops    schema.OpSet
	filter *query.Filter // the client's where (a rule's where); nil for none
	change *match.Change // a rule subscription's conditions on the change; nil for none
	reads  []string      // the columns a rule subscription's conditions read
	// tm is a WebSocket endpoint's filters and rules on the table (nil
	// for none), replaced as the endpoint changes (conn.syncEndpoint).
	tm     atomic.Pointer[match.TableMatch]
	policy atomic.Pointer[query.Filter] // the row policy of its grants; nil for none (setPolicy)
	proj   atomic.Pointer[query.Projection]
	// projBefore are the projections that selects replaced while the
	// subscription caught up, newest first: its history, sent after a
	// select's answer, still shows the events up to that answer's seq
	// with the projection they had then (projectionAt). Nil once the
	// history is over.
	projBefore atomic.Pointer[projStep]
	// The columns its grants let it see: every one, or granted (sorted),
	// and the client's select list (nil: every column), kept to project
	// again under a refreshed credential's grants. Handled with the
	// connection's authMu held.
	allColumns bool
	granted    []string
	selected   []string

	f atomic.Pointer[feed] // set once attached

	// batched: the subscription gets each transaction's events in
	// transaction frames (batch.go), from a feed that follows the
	// transaction markers too. batch is what it has gathered of the
	// transaction being delivered, guarded by the feed's mu.
	batched bool
	batch   txBatch
	// openBoundary: the subscription's resume began inside a transaction
	// (openLSN), and its boundary moves to where that transaction is
	// seen to end (batch.go).
	openBoundary bool
	openLSN      []byte

	// snapshot: the subscription starts with the table's rows (snapshot.go),
	// sent by its resume before the history after them.
	snapshot bool
	// view holds the keys of the rows the client holds (a snapshot
	// subscription's), which decide enter, leave and delete (view.go), as
	// viewKey hashes. Used by its resume until it has caught up, then by
	// the feed.
	view map[uint64]struct{}
	// displaced counts, by key held, the rows that came onto it (moved
	// onto it, or inserted) while another still held it (a deferrable
	// key), whose deletes and moves off are not the row the client holds
	// (view.go); nil when none.
	displaced map[uint64]int
	// txShown holds, for a view of a table under REPLICA IDENTITY FULL
	// (trackShown), the keys rows came onto (inserted, or moved onto) in
	// the transaction being sent (txLSN), each with a hash of its row's
	// values: an update or delete of such a key whose old row is another
	// is of a row the key displaced (view.go). Bounded by maxTxShown.
	txShown map[uint64]uint64
	txLSN   []byte
	// heldEv are a view's live events held while it catches up, decided
	// when they are released, after the history (view.go).
	heldEv []heldEvent

	// The rest is guarded by the feed's mu.
	grp      *frameGroup
	idx      *eqIndex // nil: in f.scan
	idxKey   string
	pos      int // index in f.scan or idx.byKey[idxKey]
	gone     bool
	failedAt time.Time // last filter_failed frame sent

	// While resuming ("from"), live frames wait in held until the
	// history up to boundary has been sent. While the resume waits for its
	// turn (waiting), they are dropped instead and the boundary moves
	// with them: the history will cover them. Frames up to boundary are
	// never sent live (0 for a subscription without from).
	catching  bool
	waiting   bool
	boundary  uint64
	held      [][]byte
	heldBytes int    // of the held frames up to SendQueueBytes
	heldBig   int    // held frames larger than SendQueueBytes
	endMsg    string // why the feed ended it (ended)
	// owedClose is the LSN of the transaction a batched view's synced
	// said "more" of when its history ended before the transaction's
	// marker: the marker, when it comes live, sends the transaction's
	// last frame (with no events when the view took none of the rest).
	owedClose []byte

	// ended: the feed found messages dropped by the stream and ended the
	// subscription (endAll); done: ended, detached, unsubscribed, or ended
	// by a refreshed credential's grants. Set under the feed's mu, read by
	// its resume without it.
	ended, done atomic.Bool

	turn *replayTurn // its resume's place in line; guarded by replays.mu
}

// frameGroup is the subscriptions of one feed with the same id and projection
// (column grant included): their frames are the same bytes, encoded once
// per event and view.
type frameGroup struct {
	key   string
	id    string
	proj  *query.Projection
	refs  int
	seq   uint64
	frame []byte // seq's frame: the whole event, or a topic's message
	// The frames of seq's other views (query.ViewNew, query.ViewOldAsDelete), and which
	// views of seq are encoded (bit v; a view that cannot be encoded stays nil).
	views [query.NumViews - 1][]byte
	done  uint8
}

// eqIndex holds the subscriptions indexed by one column's equality.
type eqIndex struct {
	col   string
	typ   query.ColumnType
	byKey map[string][]*sub
	n     int
}

// feed is one table or topic followed in NATS: one ordered JetStream
// consumer, shared by every subscription to it on this gateway. The
// consumer's callback puts each message in the feed's inbox (inbox.go); the
// feed's goroutine handles them one at a time under mu: decoded once,
// matched against the index, encoded once per group of subscribers, and queued on each
// subscriber's connection.
type feed struct {
	g       *Gateway
	key     string
	subject string
	// marker is the subject of the transaction markers of the table's
	// database, which a feed of batched subscriptions follows too (and
	// subjects holds both); "" for any other feed.
	marker   string
	subjects []string
	topic    string
	name     string // the table's name, or the topic's, for people
	ready    chan struct{}
	err      error // set before ready is closed
	cons     jetstream.Consumer

	in    inbox     // messages received, not yet handled
	check feedCheck // used by the feed's goroutine only (retention.go)

	mu      sync.Mutex
	last    uint64 // stream sequence of the last message handled (or being handled)
	scan    []*sub
	eqs     []*eqIndex
	groups  map[string]*frameGroup
	n       int
	stopped bool
	cc      jetstream.ConsumeContext

	ev       query.Event // the event being delivered, under mu
	claimEnv query.Row   // scratch of the consumer callback, outside mu
	keyBuf   []byte
	// The index key of an update's old row, when PostgreSQL sent one:
	// row policies judge it apart from the new row.
	oldKeyBuf []byte

	withheldWarned bool

	// Of batched subscriptions (batch.go): those whose batch holds events,
	// and scratch for encoding one event's object and reading a marker.
	pending []*sub
	// The transaction of the last event handled, while its marker has not
	// come (txOpen); and the resuming subscriptions whose boundary waits
	// for its end (batch.go).
	prevLast uint64 // the message handled before last
	txOpen   bool
	txLSN    []byte
	opening  []*sub
	owing    []*sub // batched views with owedClose set
	obj      []byte
	frames   [][]byte
	mark     query.Row
}

// feedFor returns the running feed of subject (and of the transaction
// markers on marker, unless ""), starting it if needed; name says what it
// follows, for people.
func (g *Gateway) feedFor(ctx context.Context, key, subject, marker, topic, name string) (*feed, error) {
	g.feedMu.Lock()
	if g.closing.Load() {
		g.feedMu.Unlock()
		return nil, errShuttingDown
	}
	f := g.feeds[key]
	if f != nil {
		g.feedMu.Unlock()
		<-f.ready
		return f, f.err
	}
	f = &feed{g: g, key: key, subject: subject, marker: marker, subjects: []string{subject}, topic: topic, name: name, ready: make(chan struct{}), groups: map[string]*frameGroup{}}
	if marker != "" {
		f.subjects = append(f.subjects, marker)
	}
	f.in.init(g.cfg.feedInboxBytes)
	g.feeds[key] = f
	g.feedMu.Unlock()
	f.err = f.start(ctx)
	if f.err != nil {
		g.feedMu.Lock()
		if g.feeds[key] == f {
			delete(g.feeds, key)
		}
		g.feedMu.Unlock()
	} else {
		g.met.feeds.Inc()
	}
	close(f.ready)
	return f, f.err
}

// start creates the feed's consumer at the end of the stream: every message
// after f.last, the stream's last sequence now, will be handled.
func (f *feed) start(ctx context.Context) error {
	info, err := f.g.str.Info(ctx)
	if err != nil {
		return wrapf(err, "read stream %s", f.g.cfg.Stream)
	}
	f.last = info.State.LastSeq
	if f.marker != "" {
		if err := f.initTx(ctx); err != nil {
			return err
		}
	}
	cons, err := f.g.js.OrderedConsumer(ctx, f.g.cfg.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects:    f.subjects,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       f.last + 1,
		InactiveThreshold: feedConsumerIdle,
	})
	if err != nil {
		return wrapf(err, "follow %s", f.subject)
	}
	f.cons = cons
	f.cc, err = cons.Consume(f.receive, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		f.g.log.Debug("gateway feed consumer", "subject", f.subject, "err", err)
	}))
	if err != nil {
		return wrapf(err, "follow %s", f.subject)
	}
	// The consumer exists once Consume returns: its messages are checked
	// against its name (retention.go), recorded before the feed's
	// goroutine starts.
	f.check.caughtUp = true // it starts at the end of the stream
	if info := cons.CachedInfo(); info != nil {
		f.check.consumer = info.Name
	}
	go f.run()
	return nil
}

// feedConsumerIdle is the InactiveThreshold of a feed's consumer (the
// ordered consumer's own default, made explicit): the server deletes it
// once no pull has waited on it for this long. A feed deletes its consumer
// as it stops, so this is only the backstop, for a gateway that dies and a
// delete NATS keeps refusing.
const feedConsumerIdle = 5 * time.Minute

// stop stops the feed and returns the name of the consumer it used on the
// server ("" for none), for the caller to delete (dropConsumer): a stopped
// ordered consumer stays on the server until idle for feedConsumerIdle, so
// a client subscribing and unsubscribing a table in a loop would leave one
// behind (and the server's goroutines and memory for it) each time.
func (f *feed) stop() string {
	var name string
	if f.cc != nil {
		f.cc.Stop()
		if info := f.cons.CachedInfo(); info != nil {
			name = info.Name
		}
	}
	f.in.close()
	return name
}

// testHookFeedHandle, when set (by tests), is called before a feed handles
// the message seq: it may hold the feed back.
var testHookFeedHandle func(seq uint64)

// handle delivers one message of the feed's consumer, taken from the inbox
// with the stall mark then current. When messages of the subject before it
// were dropped by the stream unsent, every subscription ends with
// history_unavailable instead (retention.go).
func (f *feed) handle(e *received, stall stallMark) {
	msg, meta, seq := e.msg, e.meta, e.meta.Sequence.Stream
	if testHookFeedHandle != nil {
		testHookFeedHandle(seq)
	}
	f.mu.Lock()
	last, stopped := f.last, f.stopped
	f.mu.Unlock()
	if stopped || seq <= last {
		return // a repeat, after the ordered consumer was recreated
	}
	gone := f.discarded(last, seq, meta, stall) // may read the stream: not under mu
	data := msg.Data()
	isMarker := f.marker != "" && msg.Subject() == f.marker
	if gone == nil && f.topic == "" && !isMarker {
		// Before the lock: reading a claimed object must not hold up
		// subscribing and unsubscribing.
		data = f.g.resolve(msg.Subject(), seq, data, &f.claimEnv)
	}
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return
	}
	f.prevLast, f.last = f.last, seq
	var ended []*sub
	switch {
	case gone != nil:
		ended = f.endAll(gone.msg)
	case f.topic != "":
		f.deliverMessage(seq, data)
	case isMarker:
		f.deliverMarker(seq, data)
	default:
		f.deliverEvent(seq, msg.Subject(), data)
	}
	f.mu.Unlock()
	if gone != nil {
		f.g.met.historyLost.Inc()
		for _, s := range ended {
			s.c.removeSub(s)
			// Detaching may stop this feed, whose goroutine this is:
			// not from here.
			go f.g.detach(s)
		}
	}
	f.g.met.events.Inc()
	f.g.met.fanout.Observe(time.Since(e.at).Seconds())
}

// endAll ends every subscription of the feed with history_unavailable (msg)
// and unsubscribed, and returns them to be removed; nothing more is sent to
// them. A resuming subscription is told by its resume, after the history
// frames it is sending.
func (f *feed) endAll(msg string) []*sub {
	var out []*sub
	for _, s := range f.subsLocked() {
		if s.ended.Load() {
			continue
		}
		s.endMsg = msg
		s.ended.Store(true)
		s.done.Store(true)
		s.held, s.heldEv, s.heldBytes = nil, nil, 0
		s.batch.drop()
		if s.catching {
			f.g.replays.cancel(s)
			continue
		}
		s.c.sendError(s.id, CodeHistoryUnavailable, msg)
		s.c.send(AppendUnsubscribed(nil, s.id))
		out = append(out, s)
	}
	return out
}

// subjectOp returns the last token of a row change's subject, its op.
func subjectOp(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

func (f *feed) deliverEvent(seq uint64, subject string, data []byte) {
	bit := schema.OpBit(subjectOp(subject))
	if bit == 0 {
		return
	}
	if err := f.ev.Reset(bit, data); err != nil {
		f.g.log.Warn("gateway skips a malformed event", "subject", subject, "seq", seq, "err", err)
		return
	}
	if f.marker != "" {
		f.noteEvent()
	}
	row, hasRow := f.ev.Row()
	old, hasOld := f.ev.Old()
	for _, ix := range f.eqs {
		var look, oldLook lookup
		f.keyBuf, look = lookupKey(f.keyBuf[:0], ix, row, hasRow)
		if hasOld {
			// A subscription indexed under the old row's value may be
			// sent the update as a delete (query.Selector.Decide).
			f.oldKeyBuf, oldLook = lookupKey(f.oldKeyBuf[:0], ix, old, true)
		}
		if look == lookAll || oldLook == lookAll {
			// No row (truncate), the column is missing or of another
			// type: every filter decides (and reports) for itself.
			for _, list := range ix.byKey {
				for _, s := range list {
					f.offer(s, seq, data)
				}
			}
			continue
		}
		if look == lookKey {
			for _, s := range ix.byKey[string(f.keyBuf)] {
				f.offer(s, seq, data)
			}
		}
		if oldLook == lookKey && (look != lookKey || !bytes.Equal(f.keyBuf, f.oldKeyBuf)) {
			for _, s := range ix.byKey[string(f.oldKeyBuf)] {
				f.offer(s, seq, data)
			}
		}
	}
	for _, s := range f.scan {
		f.offer(s, seq, data)
	}
}

// lookup is how a row finds the subscriptions of an equality index.
type lookup uint8

const (
	lookNone lookup = iota // the value is null, which equals nothing
	lookKey                // the subscriptions under the key
	lookAll                // every subscription of the index decides for itself
)

// lookupKey appends to dst the index key of row's value of ix's column.
func lookupKey(dst []byte, ix *eqIndex, row *query.Row, hasRow bool) ([]byte, lookup) {
	if !hasRow {
		return dst, lookAll
	}
	raw, ok := row.Get(ix.col)
	switch {
	case !ok:
		return dst, lookAll
	case raw[0] == 'n':
		return dst, lookNone
	}
	if dst, ok = query.AppendIndexKey(dst, ix.typ, raw); !ok {
		return dst, lookAll
	}
	return dst, lookKey
}

// offer sends the event being delivered to s if it matches.
func (f *feed) offer(s *sub, seq uint64, data []byte) {
	if s.openBoundary {
		return // its resume sends it
	}
	if s.snapshot {
		f.offerView(s, seq, data)
		return
	}
	view, proj, ok, err := s.decide(&f.ev)
	if err == query.ErrWithheld {
		f.warnWithheld(s)
		return
	}
	if err != nil {
		f.filterFailed(s, seq, err)
		return
	}
	if !ok {
		return
	}
	row, _ := f.ev.Row()
	if s.batched {
		f.offerBatched(s, seq, data, view, proj, row)
		return
	}
	if s.tm.Load() != nil {
		if frame := encodeEvent(s.id, proj, seq, data, view, row); frame != nil {
			f.sendTo(s, frame)
		}
		return
	}
	if frame := s.grp.eventFrame(seq, data, view, row); frame != nil {
		f.sendTo(s, frame)
	}
}

// decide is what s is sent of ev: Selector.Decide, and for a rule
// subscription only a change the rule fires on (match.Change.Fires); for a
// WebSocket endpoint's subscription, only an event its filters or rules
// pass, and proj is then the columns to send (else nil: s's own).
func (s *sub) decide(ev *query.Event) (view query.View, proj *query.Projection, ok bool, err error) {
	view, ok, err = s.selector().Decide(ev)
	if !ok || err != nil {
		return view, nil, ok, err
	}
	if s.change != nil {
		// What the rule cannot evaluate of the new row is told as a
		// where's is (filter_failed), never skipped in silence.
		ok, _, err = s.change.Judge(ev)
	}
	if tm := s.tm.Load(); tm != nil {
		d := tm.Decide(ev)
		ok, proj = d.Pass, d.Projection
		switch {
		case proj == nil:
			proj = s.proj.Load() // every column the grants show
		case !s.allColumns:
			proj = query.NewGrantedProjection(proj.Columns(), s.granted)
		}
	}
	return view, proj, ok, err
}

// selector is what s takes of its table's events now: its operations and
// where, and the row policy of its grants as it stands (read once, so that
// both rows of an update are judged by the same policy).
func (s *sub) selector() query.Selector {
	return query.Selector{Ops: s.ops, Where: s.filter, Policy: s.policy.Load()}
}

// warnWithheld logs, once per feed, that events are withheld because the
// row policy cannot judge them: the table needs REPLICA IDENTITY FULL so
// that deletes carry the policy's columns.
func (f *feed) warnWithheld(s *sub) {
	if f.withheldWarned {
		return
	}
	f.withheldWarned = true
	var cols []string
	if policy := s.policy.Load(); policy != nil {
		cols = policy.Columns()
	}
	f.g.log.Warn("events withheld: the row policy's columns are not in them (deletes under the default replica identity carry only the key); set REPLICA IDENTITY FULL on the table",
		"table", s.table.Name, "policy_columns", cols)
}

// filterFailed tells the client, at most once a second per subscription,
// that an event was not delivered because its filter could not be
// evaluated; the subscription stays.
func (f *feed) filterFailed(s *sub, seq uint64, err error) {
	now := time.Now()
	if now.Sub(s.failedAt) < time.Second {
		return
	}
	s.failedAt = now
	f.g.met.errorFrames.WithLabelValues(string(CodeFilterFailed)).Inc()
	msg := "event seq " + strconv.FormatUint(seq, 10) + " not delivered: " + err.Error()
	f.sendTo(s, finishFrame(AppendError(newFrame(len(msg)+64), s.id, CodeFilterFailed, msg), opText))
}

// sendTo queues a frame for s (or holds it while s resumes, or drops it
// while the resume waits for its turn and will read it from the stream).
// Held frames are bounded as the send queue is (see conn.enqueue):
// SendQueueBytes of them, plus one frame larger than that.
func (f *feed) sendTo(s *sub, frame []byte) {
	switch {
	case s.ended.Load():
		return
	case f.last <= s.boundary, s.catching && s.waiting:
		// The client has it (its from was ahead of the feed), or the
		// history will.
		return
	case !s.catching:
		s.c.enqueue(frame, false)
		return
	}
	s.held = append(s.held, frame)
	if len(frame) > f.g.cfg.SendQueueBytes {
		s.heldBig++
	} else {
		s.heldBytes += len(frame)
	}
	if s.heldBytes > f.g.cfg.SendQueueBytes || s.heldBig > 1 {
		s.held, s.heldBytes, s.heldBig = nil, 0, 0
		f.g.met.slowCloses.Inc()
		s.c.closeWith(CloseSlowConsumer, "slow consumer: too many live events while resuming; resume from your last seq")
	}
}

// eventFrame returns the group's frame of the event seq seen as view,
// encoding it on first use; nil if the event cannot be projected. row is
// the event's indexed "data" (query.Event.Row), which query.ViewNew takes
// its key from.
func (gr *frameGroup) eventFrame(seq uint64, data []byte, view query.View, row *query.Row) []byte {
	if gr.seq != seq {
		gr.seq, gr.frame, gr.views, gr.done = seq, nil, [query.NumViews - 1][]byte{}, 0
	}
	if gr.done&(1<<view) == 0 {
		gr.done |= 1 << view
		frame := encodeEvent(gr.id, gr.proj, seq, data, view, row)
		if view == query.ViewWhole {
			gr.frame = frame
		} else {
			gr.views[view-1] = frame
		}
	}
	if view == query.ViewWhole {
		return gr.frame
	}
	return gr.views[view-1]
}

// encodeEvent builds an event frame of the event seen as view (row: see
// eventFrame).
func encodeEvent(id string, proj *query.Projection, seq uint64, data []byte, view query.View, row *query.Row) []byte {
	buf := newFrame(len(data) + len(id) + 48)
	buf = append(buf, `{"type":"event","id":`...)
	buf = jsonx.AppendString(buf, id)
	buf = append(buf, `,"seq":`...)
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, `,"event":`...)
	if proj == nil && view == query.ViewWhole {
		buf = append(buf, data...) // the reader's bytes, already checked by Event.Reset
	} else {
		var err error
		if buf, err = proj.AppendView(buf, data, view, row); err != nil {
			return nil
		}
	}
	return finishFrame(append(buf, '}'), opText)
}

// topicPayload returns a topic message's data as JSON: as it is when it is
// JSON (the gateway's own publishes always are), else as a JSON string.
func topicPayload(data []byte) []byte {
	if json.Valid(data) {
		return data
	}
	return jsonx.AppendString(nil, string(data))
}

func (f *feed) deliverMessage(seq uint64, data []byte) {
	payload := topicPayload(data)
	for _, s := range f.scan {
		if s.grp.seq != seq {
			s.grp.seq = seq
			s.grp.frame = encodeMessage(s.id, f.topic, seq, payload)
		}
		f.sendTo(s, s.grp.frame)
	}
}

func encodeMessage(id, topic string, seq uint64, payload []byte) []byte {
	buf := newFrame(len(payload) + len(id) + len(topic) + 64)
	return finishFrame(AppendMessageFrame(buf, id, topic, seq, payload), opText)
}

// attach adds s to the feed and queues its subscribed frame, whose seq is
// where delivery starts: every matching message after it will be sent.
// With from, the history after from is sent first (see catchUp), and
// boundary is set to the feed's position. It reports false when the feed
// has stopped meanwhile.
func (f *feed) attach(s *sub, from *uint64, snapshot bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return false
	}
	s.f.Store(f)
	s.grp = f.groupFor(s.id, s.proj.Load())
	f.index(s)
	f.n++
	seq := f.last
	if from != nil || snapshot {
		s.catching, s.waiting, s.boundary = true, true, f.last
	}
	if from != nil {
		seq = *from
	}
	s.c.send(AppendSubscribed(nil, s.id, seq))
	return true
}

// detach removes s; the last subscription stops the feed.
func (g *Gateway) detach(s *sub) {
	f := s.f.Load()
	if f == nil {
		return
	}
	f.mu.Lock()
	if s.gone {
		f.mu.Unlock()
		return
	}
	s.gone = true
	s.done.Store(true)
	f.unindex(s)
	f.dropGroup(s.grp)
	s.held = nil
	s.batch.drop()
	f.n--
	empty := f.n == 0
	f.mu.Unlock()
	g.replays.cancel(s)
	g.met.subscriptions.Dec()
	g.subCount.Add(-1)
	if !empty {
		return
	}
	g.feedMu.Lock()
	f.mu.Lock()
	stop := f.n == 0 && !f.stopped
	if stop {
		f.stopped = true
		if g.feeds[f.key] == f {
			delete(g.feeds, f.key)
		}
		g.feedDrops.Add(1)
	}
	f.mu.Unlock()
	g.feedMu.Unlock()
	if stop {
		name := f.stop()
		g.met.feeds.Dec()
		// Not waited for: an unsubscribe is answered at once. Shutdown
		// waits for it (feedDrops).
		go func() {
			defer g.feedDrops.Add(-1)
			if name != "" {
				g.dropConsumer(name, "a feed's", feedConsumerIdle)
			}
		}()
	}
}

// setProjection changes s's projection and calls answer, under the feed's
// lock, with the sequence of the last event sent with the old one.
func (f *feed) setProjection(s *sub, p *query.Projection, answer func(seq uint64)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Answered under the lock: no event frame with the new projection is
	// queued for the client before the answer that says where it starts.
	defer func() { answer(f.last) }()
	if s.gone {
		return
	}
	if s.catching {
		// Stored before the new projection, so that whoever sees that
		// sees this too.
		s.projBefore.Store(&projStep{upTo: f.last, proj: s.proj.Load(), older: s.projBefore.Load()})
	}
	s.proj.Store(p)
	f.dropGroup(s.grp)
	s.grp = f.groupFor(s.id, p)
}

// projStep is a projection that was s's up to the event upTo.
type projStep struct {
	upTo  uint64
	proj  *query.Projection
	older *projStep
}

// projectionAt is the projection of s's event seq: the one in force when
// the select answers said it (see setProjection).
func (s *sub) projectionAt(seq uint64) *query.Projection {
	p := s.proj.Load()
	for st := s.projBefore.Load(); st != nil && seq <= st.upTo; st = st.older {
		p = st.proj
	}
	return p
}

// setGrants replaces s's row policy and projection (a refreshed
// credential's grants). It takes the feed's lock, so every event the feed
// handles after it returns is judged and projected under the new grants,
// never under one new and one old.
func (f *feed) setGrants(s *sub, policy *query.Filter, p *query.Projection) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.policy.Store(policy)
	if p.Key() != s.proj.Load().Key() {
		s.proj.Store(p)
		f.dropGroup(s.grp)
		s.grp = f.groupFor(s.id, p)
	}
}

func (f *feed) groupFor(id string, p *query.Projection) *frameGroup {
	key := id + "\x01" + p.Key()
	gr := f.groups[key]
	if gr == nil {
		gr = &frameGroup{key: key, id: id, proj: p}
		f.groups[key] = gr
	}
	gr.refs++
	return gr
}

func (f *feed) dropGroup(gr *frameGroup) {
	if gr == nil {
		return
	}
	if gr.refs--; gr.refs == 0 {
		delete(f.groups, gr.key)
	}
}

// index places s in the equality index when its filter has an indexable
// condition, else in the scan list.
func (f *feed) index(s *sub) {
	col, typ, key, ok := s.filter.EqKey()
	if !ok || f.topic != "" || s.snapshot {
		// A view must see every event: one that moves a row out of its
		// filter has a value the index would not find it under.
		s.idx, s.pos = nil, len(f.scan)
		f.scan = append(f.scan, s)
		return
	}
	var ix *eqIndex
	for _, e := range f.eqs {
		if e.col == col && e.typ == typ {
			ix = e
			break
		}
	}
	if ix == nil {
		ix = &eqIndex{col: col, typ: typ, byKey: map[string][]*sub{}}
		f.eqs = append(f.eqs, ix)
	}
	list := ix.byKey[key]
	s.idx, s.idxKey, s.pos = ix, key, len(list)
	ix.byKey[key] = append(list, s)
	ix.n++
}

func (f *feed) unindex(s *sub) {
	if s.idx == nil {
		last := len(f.scan) - 1
		moved := f.scan[last]
		f.scan[s.pos], moved.pos = moved, s.pos
		f.scan[last] = nil
		f.scan = f.scan[:last]
		return
	}
	ix := s.idx
	list := ix.byKey[s.idxKey]
	last := len(list) - 1
	moved := list[last]
	list[s.pos], moved.pos = moved, s.pos
	list[last] = nil
	if last == 0 {
		delete(ix.byKey, s.idxKey)
	} else {
		ix.byKey[s.idxKey] = list[:last]
	}
	if ix.n--; ix.n == 0 {
		for i, e := range f.eqs {
			if e == ix {
				f.eqs = append(f.eqs[:i], f.eqs[i+1:]...)
				break
			}
		}
	}
	s.idx = nil
}

// subs returns the feed's subscriptions.
func (f *feed) subs() []*sub {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.subsLocked()
}

func (f *feed) subsLocked() []*sub {
	out := append([]*sub(nil), f.scan...)
	for _, ix := range f.eqs {
		for _, list := range ix.byKey {
			out = append(out, list...)
		}
	}
	return out
}
