package stream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultAckTimeout is how long the Publisher waits, with messages in
// flight, for JetStream's acknowledgements to move on before it gives up
// (see WithAckTimeout). A local JetStream acknowledges in well under a
// millisecond and a clustered one in a few; five seconds is far beyond a
// healthy server yet short enough that a lost ack (a dropped connection, a
// server that died before answering) stops the reader quickly.
const DefaultAckTimeout = 5 * time.Second

// MaxInFlightLimit is the largest maxInFlight NewPublisher accepts. 65,536
// messages of a few hundred bytes are tens of megabytes on the wire, more
// than any link needs to stay busy, and bound the publisher's own memory
// (a slot and a reply subject per message in flight).
const MaxInFlightLimit = 1 << 16

// Errors a Publisher fails with. Err wraps one of them, or the nats.go error
// of a failed send, and names the message that failed.
var (
	// ErrNegativeAck: JetStream refused to store a message, or answered
	// with something that is not an acknowledgement from the stream.
	ErrNegativeAck = errors.New("JetStream did not store the message")
	// ErrNoStream: no JetStream stream stores the subject (NATS answered
	// "no responders").
	ErrNoStream = errors.New("no JetStream stream stores this subject, or none answered (in a cluster: its replicas may be electing a leader)")
	// ErrAckTimeout: JetStream's acknowledgements stopped, with messages
	// awaiting theirs, for longer than the ack timeout.
	ErrAckTimeout = errors.New("no acknowledgement from JetStream in time")
	// ErrConnectionLost: the connection to NATS dropped while messages were
	// awaiting their acknowledgements, which are therefore lost.
	ErrConnectionLost = errors.New("connection to NATS lost with messages awaiting acknowledgement")
	// ErrNotConnected: a message was to be sent while the connection to
	// NATS was down. Without a reconnect buffer (see Connect) it cannot be
	// sent later without risking the order; WaitConnected waits for the
	// connection before a new Publisher is started.
	ErrNotConnected = errors.New("not connected to NATS")
	// ErrFenced: JetStream refused a message because the fence it expects
	// (WithFence) is no longer the last one: another reader took over
	// and fenced this publisher out. What it published from then on is
	// not stored and must not be published again by it.
	ErrFenced = errors.New("fenced: another publisher took over (JetStream refused a message expecting an older fence)")
	// ErrPublisherClosed is returned by Publish after Close. It is not a
	// failure: Err stays nil.
	ErrPublisherClosed = errors.New("publisher closed")
)

// msgIDHeader is the header JetStream de-duplicates on.
const msgIDHeader = "Nats-Msg-Id"

// The headers of a fenced message (WithFence), and the error code of
// JetStream's refusal when the fence subject's last sequence is another.
const (
	fenceSeqHeader     = "Nats-Expected-Last-Subject-Sequence"
	fenceSubjectHeader = "Nats-Expected-Last-Subject-Sequence-Subject"
	errCodeWrongLast   = 10071
)

// seqField is the member of an acknowledgement that holds the stream
// sequence the message was stored at.
var seqField = []byte(`"seq":`)

// PublisherOption adjusts a Publisher; see NewPublisher.
type PublisherOption func(*Publisher)

// WithAckTimeout sets how long the oldest message awaiting its
// acknowledgement may wait, counted from when it was sent or from the last
// acknowledgement that moved the watermark (Acked), whichever is later,
// before the Publisher fails with ErrAckTimeout: a JetStream that is slow
// but storing is waited for, one that stopped answering is not. Default:
// DefaultAckTimeout.
func WithAckTimeout(d time.Duration) PublisherOption {
	return func(p *Publisher) {
		if d > 0 {
			p.ackTimeout = d
		}
	}
}

// WithStream names the stream the messages must be stored in. An
// acknowledgement from any other stream (one in another account that imports
// the subjects, say) fails the Publisher instead of counting as stored.
// Default: the stream that acknowledges the first message; every later
// acknowledgement must come from that same stream.
func WithStream(name string) PublisherOption {
	return func(p *Publisher) {
		if name != "" {
			p.stream = name
		}
	}
}

// WithMaxMessageSize is the largest message, headers and data, the stream
// stores (its max_msg_size, which an operator may set below the server's
// maximum payload): Fits reports a larger message as not fitting, so that
// the caller sends it another way (a claim) instead of having the stream
// refuse it, again at every retry. Default (0 or negative): only the
// server's maximum payload limits a message.
func WithMaxMessageSize(n int64) PublisherOption {
	return func(p *Publisher) {
		if n > 0 {
			p.maxMsgSize = n
		}
	}
}

// WithHeader adds a header with the same value to every message, such as
// the origin of a CDC reader's events. The name must be a valid header name
// (no white space or ':') and neither Nats-Msg-Id nor a NATS or JetStream
// header (Nats-…); the value must not hold CR or LF. Default: no header
// but Nats-Msg-Id.
func WithHeader(name, value string) PublisherOption {
	return func(p *Publisher) {
		p.extra = append(p.extra, [2]string{name, value})
	}
}

// WithMark declares a header that PublishMarked adds to a message, beside
// the others: a mark some messages carry and others do not (the CDC reader
// marks the events of tables whose primary key is deferrable). Name and
// value follow WithHeader's rules. Default: none.
func WithMark(name, value string) PublisherOption {
	return func(p *Publisher) {
		p.mark, p.hasMark = [2]string{name, value}, true
	}
}

// WithFence makes every message expect that the last message stored on
// subject is at stream sequence seq (0: that none is), with JetStream's
// Nats-Expected-Last-Subject-Sequence(-Subject) headers, which JetStream
// checks for each message, in batches too. A refusal for another last
// sequence fails the Publisher with ErrFenced. This is how a CDC reader
// that took over from another makes sure that the other, should it still
// run, cannot store anything after the takeover (FenceSubject). Only for a
// stream with one replica: a replicated stream refuses a message expecting a
// subject's sequence while an earlier one expecting it is not yet applied
// (error 10164), which pipelined publishing always meets; WithFenceRing is
// the fence for it. Default: no fence.
func WithFence(subject string, seq uint64) PublisherOption {
	return func(p *Publisher) {
		if subject != "" {
			p.fenceSubjects, p.fenceSeqs = []string{subject}, []string{strconv.FormatUint(seq, 10)}
		}
	}
}

// WithFenceRing is WithFence for a replicated stream: message n expects
// that the last message stored on subjects[i], i = (n-1) mod len(subjects),
// is at stream sequence seqs[i] (0: that none is). A takeover stores a new
// fence on every subject (StoreFences), so every later message of the
// publisher it fences out is refused, and the Publisher fails with
// ErrFenced.
//
// A replicated stream refuses a message that expects a subject's sequence
// while another message expecting that subject is proposed to its replicas
// and not yet applied (error 10164). So the Publisher keeps at most
// len(subjects)-1 messages awaiting acknowledgement, whatever maxInFlight
// says: the stream applies messages in order and acknowledges one only once
// applied, so when message n goes out, message n-len(subjects)+1 is
// acknowledged and message n-len(subjects), the last to expect the same
// subject, applied.
//
// That holds for one Publisher. Another one on the same ring (the next one
// after a failure) starts over at subjects[0], and should start once the
// messages of the one before are acknowledged or long sent; a duplicate,
// too, is acknowledged at once, without being applied, so a run of them
// could let an earlier message still be in flight. Either way the stream
// refuses a message (error 10164), and the Publisher fails with
// ErrNegativeAck: nothing is stored out of order, the caller starts again.
// A takeover's fences in flight on a subject also make a fenced-out
// publisher's message refused with 10164 rather than for its fence: the
// Publisher fails with ErrNegativeAck, and with ErrFenced only once the
// next message is refused for its fence.
//
// With one replica, or one subject, this is WithFence. len(seqs) must
// equal len(subjects), 1 or more. Default: no fence.
func WithFenceRing(subjects []string, seqs []uint64) PublisherOption {
	return func(p *Publisher) {
		if len(subjects) == 0 {
			return
		}
		p.fenceSubjects, p.fenceSeqs = slices.Clone(subjects), make([]string, len(seqs))
		for i, seq := range seqs {
			p.fenceSeqs[i] = strconv.FormatUint(seq, 10)
		}
	}
}

// WithBatches makes the Publisher send its messages in JetStream's fast
// batches (nats-server 2.14 and later): the stream acknowledges a batch
// every few hundred messages it has stored, and once more when the batch
// ends, instead of every message, which saves the server and the client a
// reply per message. The stream must allow batch publishing
// (StreamConfig.AllowBatchPublish) and capture controlSubject, on which the
// Publisher ends its batches with messages JetStream never stores (see
// ControlSubject): ending a batch on an event subject would show an empty
// message to every core subscriber of it. Default: every message is
// acknowledged on its own.
//
// A batch ends when Flush is called, and after maxBatchMessages messages.
// The semantics are those of single messages: the watermark covers what
// the stream stored, a refused message fails the Publisher, and JetStream
// then stores no later message of the same batch (batches are published
// with gaps failing them), so nothing published after a refused message is
// stored ahead of it.
func WithBatches(controlSubject string) PublisherOption {
	return func(p *Publisher) {
		if controlSubject != "" {
			p.batching, p.ctlSubject = true, controlSubject
		}
	}
}

// Publisher publishes messages to JetStream asynchronously with a bounded
// number awaiting acknowledgement, and reports progress as a contiguous
// watermark: Acked is the largest n such that messages 1..n are all
// acknowledged (stored) by JetStream.
//
// Messages go out in the order of the calls to Publish, on one connection,
// as core NATS publishes whose reply subject names the message's slot in the
// window; JetStream's acknowledgements come back on one wildcard
// subscription. A "duplicate" acknowledgement (that Nats-Msg-Id was stored
// before) counts as success.
//
// The first failure kills the Publisher: a negative acknowledgement, an
// acknowledgement that does not arrive within the ack timeout, the
// connection dropping while messages await acknowledgement, or a send that
// fails. From then on Err returns the failure, Failed is closed, and Publish
// returns the error. A message is never skipped: the caller starts again
// from its last confirmed position with a new Publisher, and JetStream's
// duplicate window drops what had already been stored (beyond the window,
// the caller must know it; see Watermark).
type Publisher struct {
	nc                       *nats.Conn
	log                      *slog.Logger
	ackTimeout               time.Duration
	stream                   string      // see WithStream; learnt from the first ack if empty
	extra                    [][2]string // see WithHeader
	extraSize                int         // what the WithHeader and WithFence headers add to a message's headers
	mark                     [2]string   // see WithMark, when hasMark
	hasMark                  bool
	markSize                 int      // what the mark adds to a message's headers
	maxMsgSize               int64    // see WithMaxMessageSize; 0 without a limit of the stream
	fenceSubjects, fenceSeqs []string // see WithFence, WithFenceRing
	// The values of the fence headers in header and headerNoID: each
	// message's fence of the ring is written into them before it is sent.
	fenceSeqVal, fenceSubjectVal []string
	ackPrefix                    []byte // `{"stream":"<name>",`: how every ack from it starts
	window                       uint64 // maxInFlight
	start                        time.Time

	inbox  string // "<inbox>."; a reply subject is inbox + slot number
	sub    *nats.Subscription
	status chan nats.Status

	// Batches (WithBatches). Reply subjects of batch messages are
	// inbox + batchID + "." + flow + ".fail." + batch seq + "." + op + ".$FI",
	// with batchID = batchBase + batch number: unique among every
	// publisher of the stream, as JetStream requires.
	batching    bool
	ctlSubject  string
	batchBase   string // "<unique token>-"
	batchPrefix string // inbox + batchBase
	flow        uint64 // messages between two flow acknowledgements

	// The send side. sendLock is a mutex that Publish can give up on when
	// its ctx ends; it guards the fields below it, up to mu.
	sendLock   chan struct{}
	replies    []string // reply subject of each slot, made on first use
	msg        nats.Msg
	header     nats.Header // {msgIDHeader: msgID} and the WithHeader headers, reused
	headerNoID nats.Header // the WithHeader headers alone; nil without any
	// The same with the WithMark header too, for PublishMarked; nil
	// without a mark.
	headerMarked, headerNoIDMarked nats.Header
	msgID                          []string
	reconnects                     uint64      // nc's reconnect count as last seen by Publish
	open                           bool        // a batch is open: its last message is not its end
	bseq                           uint64      // messages sent in the open batch
	burst                          uint64      // messages sent since the last Flush
	unflushed                      atomic.Bool // burst > 0, readable without sendLock
	replyBuf                       []byte      // the reply subject of a batch message

	// The window, shared by the send side and the ack handler.
	mu          sync.Mutex
	sent        uint64 // number of the last message handed to the connection
	acked       uint64 // watermark: 1..acked are all acknowledged
	ackedStream uint64 // stream sequence JetStream reported for message acked
	ackedAt     int64  // when acked was reached, in nanoseconds since start
	ring        []slot // message n lives in ring[n&mask] while acked < n <= sent
	mask        uint64
	maxInFlight uint64     // high-water mark of sent-acked, for tests
	batches     []batchRef // batches not yet wholly acknowledged, oldest first
	nextBatch   uint64     // number of the next batch

	ackedA   atomic.Uint64 // acked, readable without mu
	sentA    atomic.Uint64 // sent, readable without mu
	progress chan struct{} // cap 1: Acked advanced
	space    chan struct{} // cap 1: the watermark moved, the window has room

	failOnce sync.Once
	err      error         // the first failure; written before failed is closed
	failed   chan struct{} // closed on the first failure

	closeOnce sync.Once
	done      chan struct{} // closed by Close
	wg        sync.WaitGroup
}

type slot struct {
	subject   string // for error messages
	sentAt    int64  // nanoseconds since Publisher.start
	acked     bool
	streamSeq uint64 // where JetStream stored it (for a duplicate: the first copy)
}

// NewPublisher returns a Publisher that publishes on nc with at most
// maxInFlight messages awaiting acknowledgement, 1 to MaxInFlightLimit.
// Against a local JetStream a few hundred keep the server busy; up to 1024,
// every reply subject stays in the server's subject cache. log receives the
// failure, once (nil: slog.Default()).
//
// js is not used and may be nil: acknowledgements are handled on nc
// directly, which at the same throughput costs about a fifth less CPU and
// half the allocations per message of jetstream's PublishMsgAsync (compare
// BenchmarkPublisher with BenchmarkJetStreamPublishAsync).
//
// The Publisher owns two goroutines: the one nats.go runs for its
// acknowledgement subscription, and a watcher that enforces the ack timeout
// and follows the connection's state. Close stops both; it does not close
// nc.
func NewPublisher(nc *nats.Conn, js jetstream.JetStream, maxInFlight int, log *slog.Logger, opts ...PublisherOption) (*Publisher, error) {
	_ = js
	if nc == nil {
		return nil, errors.New("new publisher: nil NATS connection")
	}
	if maxInFlight < 1 || maxInFlight > MaxInFlightLimit {
		return nil, fmt.Errorf("new publisher: maxInFlight %d: must be between 1 and %d", maxInFlight, MaxInFlightLimit)
	}
	if log == nil {
		log = slog.Default()
	}
	size := uint64(1) << bits.Len64(uint64(maxInFlight-1))
	p := &Publisher{
		nc:         nc,
		log:        log,
		ackTimeout: DefaultAckTimeout,
		window:     uint64(maxInFlight),
		start:      time.Now(),
		inbox:      nc.NewInbox() + ".",
		replies:    make([]string, size),
		sendLock:   make(chan struct{}, 1),
		msgID:      make([]string, 1),
		ring:       make([]slot, size),
		mask:       size - 1,
		progress:   make(chan struct{}, 1),
		space:      make(chan struct{}, 1),
		failed:     make(chan struct{}),
		done:       make(chan struct{}),
	}
	for _, o := range opts {
		o(p)
	}
	if len(p.fenceSubjects) != len(p.fenceSeqs) {
		return nil, fmt.Errorf("new publisher: a fence ring of %d subjects and %d sequences", len(p.fenceSubjects), len(p.fenceSeqs))
	}
	if k := uint64(len(p.fenceSubjects)); k > 1 {
		// See WithFenceRing.
		p.window = min(p.window, k-1)
	}
	if p.stream != "" {
		p.expectStream(p.stream)
	}
	p.header = nats.Header{msgIDHeader: p.msgID}
	for _, h := range p.extra {
		name, value := h[0], h[1]
		if err := checkOwnHeader(name, value); err != nil {
			return nil, err
		}
		if p.headerNoID == nil {
			p.headerNoID = nats.Header{}
		}
		p.header[name] = []string{value}
		p.headerNoID[name] = []string{value}
		p.extraSize += len(name) + len(": ") + len(value) + len("\r\n")
	}
	if len(p.fenceSubjects) > 0 {
		if p.headerNoID == nil {
			p.headerNoID = nats.Header{}
		}
		// Both header maps share the value slices, so that setting a
		// message's fence sets it in either.
		p.fenceSeqVal, p.fenceSubjectVal = []string{p.fenceSeqs[0]}, []string{p.fenceSubjects[0]}
		p.header[fenceSeqHeader], p.headerNoID[fenceSeqHeader] = p.fenceSeqVal, p.fenceSeqVal
		p.header[fenceSubjectHeader], p.headerNoID[fenceSubjectHeader] = p.fenceSubjectVal, p.fenceSubjectVal
		// Fits counts the longest fence of the ring.
		longest := 0
		for i := range p.fenceSubjects {
			longest = max(longest, len(p.fenceSubjects[i])+len(p.fenceSeqs[i]))
		}
		p.extraSize += len(fenceSeqHeader) + len(fenceSubjectHeader) + 2*len(": \r\n") + longest
	}
	if name, value := p.mark[0], p.mark[1]; p.hasMark {
		if err := checkOwnHeader(name, value); err != nil {
			return nil, err
		}
		for h := range p.header {
			if strings.EqualFold(h, name) {
				return nil, fmt.Errorf("new publisher: mark %s is also a header of every message", name)
			}
		}
		// The marked maps share the value slices of the others (the
		// message id, the fence).
		p.headerMarked, p.headerNoIDMarked = maps.Clone(p.header), maps.Clone(p.headerNoID)
		if p.headerNoIDMarked == nil {
			p.headerNoIDMarked = nats.Header{}
		}
		p.headerMarked.Set(name, value)
		p.headerNoIDMarked.Set(name, value)
		p.markSize = len(name) + len(": ") + len(value) + len("\r\n")
	}
	p.reconnects = nc.Stats().Reconnects
	if p.batching {
		// The inbox's last token is unique (a NUID), so batch ids made
		// from it are unique among every client of the stream.
		p.batchBase = p.inbox[strings.LastIndexByte(p.inbox[:len(p.inbox)-1], '.')+1:len(p.inbox)-1] + "-"
		p.batchPrefix, p.flow = p.inbox+p.batchBase, batchFlow(p.window)
	}

	sub, err := nc.Subscribe(p.inbox+">", p.onAck)
	if err != nil {
		return nil, fmt.Errorf("new publisher: subscribe to acknowledgements: %w", err)
	}
	// The window bounds the acks outstanding, so the subscription needs no
	// limit of its own.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("new publisher: %w", err)
	}
	p.sub = sub
	p.status = nc.StatusChanged(nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)

	p.wg.Add(1)
	go p.watch()
	return p, nil
}

// Publish sends one message to subject with its Nats-Msg-Id header set to
// msgID, and returns its number n: 1, 2, 3… in the order of the calls. An
// empty msgID sends no header: JetStream then cannot drop a repeat of the
// message.
//
// It blocks while maxInFlight messages await acknowledgement
// (backpressure). If ctx ends first it returns ctx.Err(); that call sent
// nothing and the Publisher stays usable. Every other error means the
// Publisher has failed (see Err) or was closed (ErrPublisherClosed). A
// Publish while the connection is down fails at once with ErrNotConnected.
// A drop and reconnect while nothing was in flight is not a failure.
//
// subject, msgID and data are copied before Publish returns: the caller may
// reuse its buffers. Subjects are best kept as strings per table and
// operation, built once with ChangeSubject, rather than converted per
// message.
//
// Publish is safe for concurrent use, but the numbering, and so the order in
// the stream, then follows whichever call got there first; the CDC reader
// calls it from one goroutine.
func (p *Publisher) Publish(ctx context.Context, subject string, msgID string, data []byte) (uint64, error) {
	return p.publish(ctx, subject, msgID, data, false)
}

// PublishMarked is Publish for a message that carries the WithMark header
// too (without a mark declared, the same as Publish). FitsMarked tells
// whether such a message fits.
func (p *Publisher) PublishMarked(ctx context.Context, subject string, msgID string, data []byte) (uint64, error) {
	return p.publish(ctx, subject, msgID, data, true)
}

func (p *Publisher) publish(ctx context.Context, subject string, msgID string, data []byte, marked bool) (uint64, error) {
	select {
	case p.sendLock <- struct{}{}:
	default:
		select {
		case p.sendLock <- struct{}{}:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-p.failed:
			return 0, p.err
		case <-p.done:
			return 0, ErrPublisherClosed
		}
	}
	defer func() { <-p.sendLock }()

	if err := p.ready(ctx); err != nil {
		return 0, err
	}
	if p.batching {
		return p.publishInBatch(subject, msgID, data, marked)
	}

	p.mu.Lock()
	n := p.sent + 1
	i := n & p.mask
	p.ring[i] = slot{subject: subject, sentAt: int64(time.Since(p.start))}
	p.sent = n
	if inFlight := n - p.acked; inFlight > p.maxInFlight {
		p.maxInFlight = inFlight
	}
	p.mu.Unlock()
	p.sentA.Store(n)

	p.setFence(n)
	reply := p.replies[i]
	if reply == "" {
		reply = p.inbox + strconv.FormatUint(i, 10)
		p.replies[i] = reply
	}
	p.msg.Subject = subject
	p.msg.Reply = reply
	p.msg.Data = data
	p.setHeader(msgID, marked)
	// nats.go copies subject, reply, header and data into its write buffer
	// before PublishMsg returns, and keeps no reference to msg.
	err := p.nc.PublishMsg(&p.msg)
	p.msg.Subject, p.msg.Data, p.msgID[0] = "", nil, ""
	if err != nil {
		if errors.Is(err, nats.ErrReconnectBufExceeded) {
			// With no reconnect buffer, this is how a send while
			// disconnected fails.
			err = fmt.Errorf("%w (%w)", ErrNotConnected, err)
		}
		p.fail(fmt.Errorf("publish message %d to %q: %w", n, subject, err))
		// The watcher may have failed the publisher first; report that.
		return 0, p.err
	}
	return n, nil
}

// setHeader sets the headers of the message to send: with Nats-Msg-Id
// msgID unless "", and the mark when marked and declared; sendLock is held.
func (p *Publisher) setHeader(msgID string, marked bool) {
	marked = marked && p.headerMarked != nil
	switch {
	case msgID != "" && marked:
		p.msgID[0] = msgID
		p.msg.Header = p.headerMarked
	case msgID != "":
		p.msgID[0] = msgID
		p.msg.Header = p.header
	case marked:
		p.msg.Header = p.headerNoIDMarked
	default:
		p.msg.Header = p.headerNoID
	}
}

// setFence makes the fence headers those message n expects (WithFenceRing);
// sendLock is held.
func (p *Publisher) setFence(n uint64) {
	if k := uint64(len(p.fenceSubjects)); k > 1 {
		i := (n - 1) % k
		p.fenceSeqVal[0], p.fenceSubjectVal[0] = p.fenceSeqs[i], p.fenceSubjects[i]
	}
}

// Fits reports whether a message of n bytes with Nats-Msg-Id msgID fits in
// one NATS message: its data and headers (the WithHeader ones included)
// within the server's maximum payload, as the connection last learnt it (it
// follows reconnects to other servers), and within the stream's largest
// message (WithMaxMessageSize). A message that does not fit would fail the
// Publisher.
func (p *Publisher) Fits(msgID string, n int) bool { return p.fits(msgID, n, p.extraSize) }

// FitsMarked is Fits for a message of PublishMarked.
func (p *Publisher) FitsMarked(msgID string, n int) bool {
	return p.fits(msgID, n, p.extraSize+p.markSize)
}

func (p *Publisher) fits(msgID string, n, extra int) bool {
	h := MessageHeaderSize(msgID)
	if extra > 0 {
		if h == 0 {
			h = len("NATS/1.0\r\n") + len("\r\n")
		}
		h += extra
	}
	limit := p.nc.MaxPayload()
	if p.maxMsgSize > 0 {
		limit = min(limit, p.maxMsgSize)
	}
	return int64(n+h) <= limit
}

// MessageHeaderSize is the size of the headers Publish sends with a message
// whose Nats-Msg-Id is msgID ("NATS/1.0\r\nNats-Msg-Id: <id>\r\n\r\n"), which
// count against the server's maximum payload with the data.
func MessageHeaderSize(msgID string) int {
	if msgID == "" {
		return 0
	}
	return len("NATS/1.0\r\n") + len(msgIDHeader) + len(": ") + len(msgID) + len("\r\n\r\n")
}

// ready waits, with sendLock held, until a message may be sent: the
// publisher is alive, the connection is up and the window has room.
func (p *Publisher) ready(ctx context.Context) error {
	for {
		select {
		case <-p.failed:
			return p.err
		case <-p.done:
			return ErrPublisherClosed
		default:
		}
		if err := ctx.Err(); err != nil {
			return err
		}

		// A reconnect since the last message means the acknowledgements of
		// the messages sent before it will never come. Checking here, in
		// line, keeps the next message from being stored ahead of one lost
		// in the drop; the watcher notices too, but asynchronously.
		if rc := p.nc.Stats().Reconnects; rc != p.reconnects || !p.nc.IsConnected() {
			switch n := p.InFlight(); {
			case n > 0:
				p.fail(p.lostErr(n))
				return p.err
			case p.nc.IsClosed():
				p.fail(fmt.Errorf("publish: %w", nats.ErrConnectionClosed))
				return p.err
			case !p.nc.IsConnected():
				p.fail(fmt.Errorf("publish: %w", ErrNotConnected))
				return p.err
			}
			// Reconnected while idle: nothing was lost.
			p.reconnects = rc
		}

		p.mu.Lock()
		full := p.sent-p.acked >= p.window
		p.mu.Unlock()
		if !full {
			return nil
		}
		if err := p.wait(ctx, p.space); err != nil {
			return err
		}
	}
}

// wait blocks until ch is signalled, ctx ends, or the publisher fails or is
// closed. Signals are coalesced, so the caller checks its condition again.
func (p *Publisher) wait(ctx context.Context, ch <-chan struct{}) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-p.failed:
		return p.err
	case <-p.done:
		return ErrPublisherClosed
	}
}

// onAck handles one reply from JetStream. It runs on the subscription's
// goroutine.
//
// The reply subject names a slot, not a message: the message is the one in
// flight in that slot. That is unambiguous because at most maxInFlight <=
// len(ring) messages are in flight, and safe because the stream answers
// each message once, so a slot's reply cannot arrive after the slot has been
// reused. Reusing a fixed set of reply subjects lets the server match them
// from its cache instead of afresh for every message.
func (p *Publisher) onAck(m *nats.Msg) {
	if p.batching {
		p.onBatchReply(m)
		return
	}
	i, ok := parseUint(m.Subject, len(p.inbox))
	if !ok || i > p.mask {
		return
	}
	streamSeq, ackErr := p.ackSeq(m)

	p.mu.Lock()
	base := p.acked + 1
	n := base + (i-base)&p.mask
	if n > p.sent {
		// Nothing in flight in that slot: a repeated reply.
		p.mu.Unlock()
		return
	}
	s := &p.ring[i]
	if ackErr != nil {
		subject := s.subject
		p.mu.Unlock()
		p.fail(fmt.Errorf("message %d to %q: %w", n, subject, ackErr))
		return
	}
	s.acked, s.streamSeq = true, streamSeq
	acked := p.acked
	for acked < p.sent && p.ring[(acked+1)&p.mask].acked {
		acked++
		p.ring[acked&p.mask].subject = "" // let the caller's string go
	}
	advanced := acked != p.acked
	if advanced {
		p.acked, p.ackedStream, p.ackedAt = acked, p.ring[acked&p.mask].streamSeq, int64(time.Since(p.start))
	}
	p.mu.Unlock()

	if advanced {
		p.ackedA.Store(acked)
		signal(p.progress)
		signal(p.space)
	}
}

// signal wakes the reader of a capacity-1 channel without ever blocking;
// a signal already pending stands for this one too.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// expectStream makes name the only stream whose acknowledgements count.
func (p *Publisher) expectStream(name string) {
	p.stream = name
	p.ackPrefix = []byte(`{"stream":` + strconv.Quote(name) + `,`)
}

// ackError returns nil if m acknowledges a message stored in our stream
// (a duplicate included), and otherwise says why not.
func (p *Publisher) ackError(m *nats.Msg) error {
	_, err := p.ackSeq(m)
	return err
}

// ackSeq returns the stream sequence m acknowledges a message stored at in
// our stream (for a duplicate, that of the copy stored first), or why m is
// not such an acknowledgement. It runs on the subscription's goroutine
// only, which owns stream and ackPrefix once NewPublisher has returned.
func (p *Publisher) ackSeq(m *nats.Msg) (uint64, error) {
	// JetStream writes every successful acknowledgement from a template:
	// {"stream":"<name>",["domain":"<domain>",]"seq":<n>[,"duplicate": true]}.
	// A domain is a token without quotes, so the first "seq": is the member.
	if p.ackPrefix != nil && bytes.HasPrefix(m.Data, p.ackPrefix) {
		rest := m.Data[len(p.ackPrefix):]
		if i := bytes.Index(rest, seqField); i >= 0 {
			if seq, ok := parseDigits(rest[i+len(seqField):]); ok && seq > 0 {
				return seq, nil
			}
		}
		// Not the template after all: the careful path decides.
	}
	if len(m.Data) == 0 {
		if status := m.Header.Get("Status"); status == "503" {
			return 0, ErrNoStream
		} else if status != "" {
			return 0, fmt.Errorf("%w: status %s %s", ErrNegativeAck, status, m.Header.Get("Description"))
		}
		return 0, fmt.Errorf("%w: empty reply", ErrNegativeAck)
	}
	// Not the usual shape: parse it properly.
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     uint16 `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Stream string `json:"stream"`
		Seq    uint64 `json:"seq"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return 0, fmt.Errorf("%w: reply is not an acknowledgement: %q", ErrNegativeAck, truncate(m.Data, 200))
	}
	switch {
	case resp.Error != nil:
		return 0, p.refusal(resp.Error.Description, resp.Error.Code, resp.Error.ErrCode)
	case resp.Stream == "" || resp.Seq == 0:
		return 0, fmt.Errorf("%w: reply is not an acknowledgement: %q", ErrNegativeAck, truncate(m.Data, 200))
	case p.stream == "":
		p.expectStream(resp.Stream)
	case resp.Stream != p.stream:
		return 0, fmt.Errorf("%w: acknowledged by stream %q, not %q", ErrNegativeAck, resp.Stream, p.stream)
	}
	return resp.Seq, nil
}

// refusal is the error of JetStream's refusal of a message: ErrFenced for a
// fenced Publisher's message refused for its fence, ErrNegativeAck
// otherwise.
func (p *Publisher) refusal(desc string, code int, errCode uint16) error {
	if len(p.fenceSubjects) > 0 && errCode == errCodeWrongLast {
		return fmt.Errorf("%w: %s (code %d, error code %d)", ErrFenced, desc, code, errCode)
	}
	return fmt.Errorf("%w: %s (code %d, error code %d)", ErrNegativeAck, desc, code, errCode)
}

// parseDigits parses the decimal number at the start of b, which must be
// followed by a non-digit: the digits of a JSON number member.
func parseDigits(b []byte) (uint64, bool) {
	var n uint64
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		if i == 19 {
			return 0, false // beyond any stream sequence
		}
		n = n*10 + uint64(b[i]-'0')
	}
	if i == 0 || i == len(b) {
		return 0, false
	}
	return n, true
}

// checkOwnHeader checks a header of WithHeader or WithMark: a valid name,
// neither Nats-Msg-Id nor a NATS or JetStream header, and a value without
// line breaks.
func checkOwnHeader(name, value string) error {
	if !validHeaderName(name) || strings.EqualFold(name, msgIDHeader) || strings.HasPrefix(strings.ToLower(name), "nats-") {
		return fmt.Errorf("new publisher: header name %q: not a valid name of a header of our own", name)
	}
	if strings.ContainsAny(value, "\r\n") {
		return fmt.Errorf("new publisher: value of header %s holds a line break", name)
	}
	return nil
}

// validHeaderName reports whether name is a header name nats.go sends: 1 or
// more printable ASCII bytes other than ':' and space.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// parseUint parses the decimal number that is all of s[from:].
func parseUint(s string, from int) (uint64, bool) {
	if from >= len(s) || len(s)-from > 19 {
		return 0, false
	}
	var n uint64
	for i := from; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// watch enforces the ack timeout and fails the publisher when the connection
// drops with messages in flight. It is the Publisher's own goroutine.
func (p *Publisher) watch() {
	defer p.wg.Done()
	// Checking four times per timeout bounds the overshoot to a quarter of
	// it; a check is a lock and a subtraction.
	tick := min(max(p.ackTimeout/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-p.failed:
			return
		case _, ok := <-p.status:
			if !ok {
				return
			}
			// RECONNECTING, DISCONNECTED or CLOSED. With nothing in flight
			// nothing is lost; the next Publish fails if still down.
			if n := p.InFlight(); n > 0 {
				p.fail(p.lostErr(n))
			}
		case <-t.C:
			p.mu.Lock()
			var (
				n       uint64
				waited  time.Duration
				subject string
			)
			if p.sent > p.acked {
				n = p.acked + 1
				s := &p.ring[n&p.mask]
				// Since the watermark last moved, or since message n was
				// sent if that came later (after an idle spell); not since n
				// was sent. A JetStream that stores slower than messages come
				// keeps the oldest of a deep window waiting longer than the
				// timeout while acknowledgements keep coming: failing then
				// made the reader start over from its confirmed position and
				// send the whole window again into the JetStream that could
				// not keep up (four sessions in a minute under load, each
				// failing with 8,192 in flight).
				waited, subject = time.Since(p.start)-time.Duration(max(s.sentAt, p.ackedAt)), s.subject
			}
			p.mu.Unlock()
			if n > 0 && waited > p.ackTimeout {
				p.fail(fmt.Errorf("message %d to %q: %w (the acknowledgements stopped %s ago)", n, subject, ErrAckTimeout, waited.Round(time.Millisecond)))
			}
		}
	}
}

func (p *Publisher) lostErr(inFlight uint64) error {
	return fmt.Errorf("%w (%d messages from number %d)", ErrConnectionLost, inFlight, p.Acked()+1)
}

// fail records the first failure and wakes everyone waiting on it.
func (p *Publisher) fail(err error) {
	p.failOnce.Do(func() {
		p.err = err
		close(p.failed)
		p.log.Error("JetStream publisher failed; publishing must restart from the last confirmed position",
			slog.Any("error", err), slog.Uint64("acked", p.Acked()), slog.Uint64("sent", p.sentA.Load()))
	})
}

// Acked returns the watermark: the largest n such that messages 1..n are
// all acknowledged by JetStream.
func (p *Publisher) Acked() uint64 { return p.ackedA.Load() }

// Watermark is a Publisher's progress, as Watermark reads it.
type Watermark struct {
	// N is the watermark, as Acked: messages 1..N are all acknowledged.
	N uint64
	// StreamSeq is the stream sequence JetStream stored message N at (for
	// a message it dropped as a duplicate, that of the copy it already
	// held, which is where the message's id lives), or one before it:
	// with batches (WithBatches), JetStream tells where messages are only
	// when a batch ends, so in between StreamSeq is where the last ended
	// batch's last message is. Every message after N is stored after
	// StreamSeq either way.
	StreamSeq uint64
	// At is when the acknowledgement that moved the watermark to N was
	// handled. Zero before the first.
	At time.Time
}

// Watermark returns the watermark together with where its message is
// stored and when it was reached, read together under the lock the
// acknowledgements take (so it costs more than Acked). The zero Watermark
// before the first acknowledgement.
func (p *Publisher) Watermark() Watermark {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.acked == 0 {
		return Watermark{}
	}
	return Watermark{N: p.acked, StreamSeq: p.ackedStream, At: p.start.Add(time.Duration(p.ackedAt))}
}

// StoredPastWatermark reports whether JetStream acknowledged a message
// beyond the first one it has not acknowledged. It stores a connection's
// messages in order, but goes on after one it refused, or failed to write
// without a word (a full disk): the stream then holds a gap, and its last
// message says nothing of the ones before it.
func (p *Publisher) StoredPastWatermark() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.batches {
		if b.first > p.acked+1 && b.through > 0 {
			return true
		}
	}
	for n := p.acked + 2; n <= p.sent; n++ {
		if p.ring[n&p.mask].acked {
			return true
		}
	}
	return false
}

// InFlight returns how many messages have been sent and are not yet under
// the watermark.
func (p *Publisher) InFlight() uint64 {
	// Load acked first: both only grow and acked <= sent, so no underflow.
	a := p.ackedA.Load()
	return p.sentA.Load() - a
}

// Progress is signalled whenever Acked advances. It has capacity one and
// signals are coalesced: after a receive, read Acked.
func (p *Publisher) Progress() <-chan struct{} { return p.progress }

// Err returns the first failure, or nil while the Publisher is healthy.
func (p *Publisher) Err() error {
	select {
	case <-p.failed:
		return p.err
	default:
		return nil
	}
}

// Failed is closed on the first failure.
func (p *Publisher) Failed() <-chan struct{} { return p.failed }

// Close stops the Publisher's goroutines and its subscription; later calls
// to Publish return ErrPublisherClosed. It neither closes the connection nor
// waits for acknowledgements: Acked tells what was stored. Close may be
// called more than once.
func (p *Publisher) Close() {
	p.closeOnce.Do(func() {
		close(p.done)
		p.wg.Wait()
		_ = p.sub.Unsubscribe()
		p.nc.RemoveStatusListener(p.status)
	})
}
