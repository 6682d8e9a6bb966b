package stream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"
)

// Fast batches (WithBatches), as nats-server 2.14 and later take them: a
// message's reply subject ends in
//
//	<batch id>.<flow>.<gap mode>.<batch sequence>.<operation>.$FI
//
// and JetStream answers on the reply subject of some of them: a flow
// acknowledgement ({"type":"ack","seq":S,"msgs":M}: the batch's messages up
// to S are stored, the next one will come after M more) when the first
// message arrives and then every M messages, an error ({"type":"err",
// "seq":S,"error":{…}}) for a message it refused, and a publish
// acknowledgement with the stream sequence of the last message stored and
// the batch's count when the batch ends. With the gap mode "fail", a refused
// message ends the batch there: JetStream stores none of the messages after
// it.

// Operations of a fast batch message (the token before ".$FI").
const (
	batchStart  = "0" // the first message of a batch
	batchAppend = "1" // any later message
	batchEnd    = "3" // ends the batch without a message of its own (EOB)
)

// The operations of AppendFastBatchReply, for other writers of fast
// batches (the row state's).
const (
	FastBatchStart  = batchStart
	FastBatchAppend = batchAppend
	FastBatchEnd    = batchEnd
)

// maxBatchFlow is the most messages JetStream lets a batch run between two
// flow acknowledgements; asking for more changes nothing.
const maxBatchFlow = 500

// MaxFastBatchFlow is maxBatchFlow, for other writers of fast batches.
const MaxFastBatchFlow = maxBatchFlow

// AppendFastBatchReply appends to dst the reply subject of message bseq
// (operation op) of the fast batch whose id is idPrefix followed by num,
// run with flow messages between two flow acknowledgements and gaps
// failing it: "<idPrefix><num>.<flow>.fail.<bseq>.<op>.$FI". idPrefix
// starts with the writer's reply inbox; the id must be unique among every
// publisher of the stream.
func AppendFastBatchReply(dst []byte, idPrefix string, num, flow, bseq uint64, op string) []byte {
	dst = append(dst, idPrefix...)
	dst = strconv.AppendUint(dst, num, 10)
	dst = append(dst, '.')
	dst = strconv.AppendUint(dst, flow, 10)
	dst = append(dst, ".fail."...)
	dst = strconv.AppendUint(dst, bseq, 10)
	dst = append(dst, '.')
	dst = append(dst, op...)
	return append(dst, ".$FI"...)
}

// maxBatchMessages ends a batch that has run this long without a Flush.
// Only the acknowledgement that ends a batch tells the stream sequence of
// its messages (Watermark.StreamSeq), so under a load that never lets the
// reader idle, batches still end every few tenths of a second; each end
// costs two small messages.
const maxBatchMessages = 10_000

// batchFlow is how many messages a batch may run between two flow
// acknowledgements for a window of maxInFlight messages: a quarter of it,
// so that acknowledgements keep coming while the window fills, and at most
// what JetStream allows.
func batchFlow(maxInFlight uint64) uint64 {
	return max(1, min(maxBatchFlow, maxInFlight/4))
}

// batchRef is one batch whose messages are not all acknowledged yet, or a
// message sent alone.
type batchRef struct {
	num   uint64 // the batch's number, in its id
	first uint64 // publisher number of its first message
	last  uint64 // publisher number of its last message so far
	alone bool   // one message, acknowledged on its own

	// What JetStream has said of it so far.
	through   uint64 // its messages 1..through are stored
	done      bool   // it ended: through is all JetStream will store of it
	streamSeq uint64 // with done: where its last message is stored (0: none, all duplicates)
}

// publishInBatch is Publish for a Publisher with batches; sendLock is held
// and ready has said yes.
//
// The first message after a Flush goes alone, acknowledged on its own as
// without batches; a batch starts with the second. A lone transaction of
// one row, the usual case at low rates, then costs one message and one
// acknowledgement, where a batch of one would cost two of each.
func (p *Publisher) publishInBatch(subject, msgID string, data []byte, marked bool) (uint64, error) {
	op := batchAppend
	alone := p.burst == 0
	p.mu.Lock()
	n := p.sent + 1
	p.ring[n&p.mask] = slot{subject: subject, sentAt: int64(time.Since(p.start))}
	if alone || !p.open {
		p.nextBatch++
		p.batches = append(p.batches, batchRef{num: p.nextBatch, first: n, alone: alone})
		if !alone {
			p.open, p.bseq, op = true, 0, batchStart
		}
	}
	b := &p.batches[len(p.batches)-1]
	b.last = n
	num := b.num
	p.sent = n
	if inFlight := n - p.acked; inFlight > p.maxInFlight {
		p.maxInFlight = inFlight
	}
	p.mu.Unlock()
	p.sentA.Store(n)
	p.burst++
	p.unflushed.Store(true)

	p.setFence(n)
	p.msg.Subject = subject
	if alone {
		p.msg.Reply = p.aloneReply(num)
	} else {
		p.bseq++
		p.msg.Reply = p.batchReply(num, p.bseq, op)
	}
	p.msg.Data = data
	p.setHeader(msgID, marked)
	// nats.go copies subject, reply, header and data into its write buffer
	// before PublishMsg returns, and keeps no reference to msg: the reply
	// may alias replyBuf.
	err := p.nc.PublishMsg(&p.msg)
	p.msg.Subject, p.msg.Reply, p.msg.Data, p.msgID[0] = "", "", nil, ""
	if err != nil {
		p.fail(fmt.Errorf("publish message %d to %q: %w", n, subject, sendError(err)))
		return 0, p.err
	}
	if p.open && p.bseq >= maxBatchMessages {
		if err := p.endBatch(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// sendError names a failed send while disconnected as ErrNotConnected.
func sendError(err error) error {
	if errors.Is(err, nats.ErrReconnectBufExceeded) {
		// With no reconnect buffer, this is how a send while disconnected
		// fails.
		return fmt.Errorf("%w (%w)", ErrNotConnected, err)
	}
	return err
}

// aloneReply returns the reply subject of a message sent alone as number
// num, in replyBuf: valid until the next call. Not a batch's, so JetStream
// acknowledges it as any message.
func (p *Publisher) aloneReply(num uint64) string {
	b := append(p.replyBuf[:0], p.inbox...)
	b = append(b, p.batchBase...)
	b = strconv.AppendUint(b, num, 10)
	p.replyBuf = b
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// batchReply returns the reply subject of message bseq of batch num, in
// replyBuf: valid until the next call.
func (p *Publisher) batchReply(num, bseq uint64, op string) string {
	b := AppendFastBatchReply(p.replyBuf[:0], p.batchPrefix, num, p.flow, bseq, op)
	p.replyBuf = b
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// endBatch ends the open batch, if any, with a message on the control
// subject that JetStream does not store; sendLock is held.
func (p *Publisher) endBatch() error {
	if !p.open {
		return nil
	}
	p.open = false
	p.bseq++
	p.mu.Lock()
	num := p.batches[len(p.batches)-1].num
	p.mu.Unlock()
	p.msg.Subject = p.ctlSubject
	p.msg.Reply = p.batchReply(num, p.bseq, batchEnd)
	p.msg.Header = nil
	err := p.nc.PublishMsg(&p.msg)
	p.msg.Subject, p.msg.Reply = "", ""
	if err != nil {
		p.fail(fmt.Errorf("end batch %d on %q: %w", num, p.ctlSubject, sendError(err)))
		return p.err
	}
	return nil
}

// Flush ends the open batch of a Publisher with batches (WithBatches), so
// that JetStream acknowledges its last messages now rather than when more
// follow, and makes the next message go alone: call it when there is
// nothing more to publish for a while. It sends one small message when a
// batch is open; otherwise, or without batches, it sends nothing. Like Publish it returns ctx.Err() if ctx ends first, and
// the failure once the Publisher has failed.
func (p *Publisher) Flush(ctx context.Context) error {
	if !p.batching {
		return p.Err()
	}
	select {
	case p.sendLock <- struct{}{}:
	default:
		select {
		case p.sendLock <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		case <-p.failed:
			return p.err
		case <-p.done:
			return ErrPublisherClosed
		}
	}
	defer func() { <-p.sendLock }()
	if err := p.Err(); err != nil {
		return err
	}
	p.burst = 0
	p.unflushed.Store(false)
	return p.endBatch()
}

// Batching reports whether the Publisher sends batches (WithBatches).
func (p *Publisher) Batching() bool { return p.batching }

// Unflushed reports whether messages were published since the last Flush
// (with WithBatches only): the reader should call Flush once it has
// nothing more to publish for now.
func (p *Publisher) Unflushed() bool { return p.unflushed.Load() }

var (
	flowAckPrefix = []byte(`{"type":"ack"`)
	flowErrPrefix = []byte(`{"type":"err"`)
	flowGapPrefix = []byte(`{"type":"gap"`)
	countField    = []byte(`"count":`)
)

// onBatchReply handles one reply to a batch message. It runs on the
// subscription's goroutine.
func (p *Publisher) onBatchReply(m *nats.Msg) {
	rest := m.Subject[len(p.inbox):]
	if len(rest) < len(p.batchBase) || rest[:len(p.batchBase)] != p.batchBase {
		return
	}
	rest = rest[len(p.batchBase):]
	end := 0
	for end < len(rest) && rest[end] != '.' {
		end++
	}
	num, ok := parseUint(rest[:end], 0)
	if !ok {
		return
	}
	// The reply subject ends in ".<batch seq>.<op>.$FI": which message
	// this answers, for the errors that do not say.
	var bseq uint64
	inBatch := strings.HasSuffix(m.Subject, ".$FI")
	if s := m.Subject; inBatch {
		s = s[:len(s)-len(".$FI")]
		if i := lastDot(s); i > 0 {
			s = s[:i]
			if j := lastDot(s); j >= 0 {
				bseq, _ = parseUint(s, j+1)
			}
		}
	}
	body := m.Data
	switch {
	case len(body) == 0:
		err := fmt.Errorf("%w: empty reply", ErrNegativeAck)
		if status := m.Header.Get("Status"); status == "503" {
			err = ErrNoStream
		} else if status != "" {
			err = fmt.Errorf("%w: status %s %s", ErrNegativeAck, status, m.Header.Get("Description"))
		}
		p.batchFailed(num, bseq, err)
	case bytes.HasPrefix(body, flowAckPrefix):
		seq, ok := digitsAfter(body, seqField)
		if !ok {
			p.batchFailed(num, 0, fmt.Errorf("%w: a flow acknowledgement without a sequence: %q", ErrNegativeAck, truncate(body, 200)))
			return
		}
		p.batchAcked(num, seq, 0, false)
	case bytes.HasPrefix(body, flowErrPrefix):
		var e struct {
			Seq   uint64 `json:"seq"`
			Error *struct {
				Code        int    `json:"code"`
				ErrCode     uint16 `json:"err_code"`
				Description string `json:"description"`
			} `json:"error"`
		}
		err := fmt.Errorf("%w: %q", ErrNegativeAck, truncate(body, 200))
		if json.Unmarshal(body, &e) == nil && e.Error != nil {
			err = p.refusal(e.Error.Description, e.Error.Code, e.Error.ErrCode)
		}
		p.batchFailed(num, e.Seq, err)
	case bytes.HasPrefix(body, flowGapPrefix):
		p.batchFailed(num, 0, fmt.Errorf("%w: JetStream missed messages of a batch: %q", ErrNegativeAck, truncate(body, 200)))
	default:
		// The acknowledgement that ends the batch, or an error instead.
		count, ok := digitsAfter(body, countField)
		streamSeq, err := p.ackSeq(m)
		if err != nil && ok && bytes.HasPrefix(body, p.ackPrefix) && !bytes.Contains(body, []byte(`"error"`)) {
			// A batch whose messages were all duplicates stored nothing:
			// its acknowledgement says sequence 0.
			streamSeq, err = 0, nil
		}
		if err != nil {
			p.batchFailed(num, bseq, err)
			return
		}
		if !inBatch {
			// A message sent alone.
			p.batchAcked(num, 1, streamSeq, true)
			return
		}
		if !ok {
			p.batchFailed(num, 0, fmt.Errorf("%w: a batch message answered without a batch acknowledgement: %q", ErrNegativeAck, truncate(body, 200)))
			return
		}
		p.batchAcked(num, count, streamSeq, true)
	}
}

// digitsAfter parses the number that follows field in b.
func digitsAfter(b, field []byte) (uint64, bool) {
	i := bytes.Index(b, field)
	if i < 0 {
		return 0, false
	}
	b = b[i+len(field):]
	if len(b) > 0 && b[0] == ' ' {
		b = b[1:]
	}
	return parseDigits(b)
}

// batchAcked records that JetStream has stored batch num's messages up to
// its through-th: a flow acknowledgement, or, with done, the end of the
// batch, whose last message stored is at streamSeq (0: it stored none, all
// were duplicates).
//
// The watermark moves only over batches JetStream has answered for, in the
// order they were sent: news of a later batch says nothing of an earlier
// one. JetStream stores a connection's messages in order, but a message it
// fails to write (a full disk) it drops without an answer, and goes on with
// the next: the first message of a later batch is answered (a flow
// acknowledgement of nothing yet) as soon as it arrives, and a later
// message may be stored. An earlier batch left unanswered holds the
// watermark until the ack timeout fails the Publisher.
func (p *Publisher) batchAcked(num, through, streamSeq uint64, done bool) {
	p.mu.Lock()
	i := 0
	for i < len(p.batches) && p.batches[i].num < num {
		i++
	}
	if i == len(p.batches) || p.batches[i].num != num {
		p.mu.Unlock()
		return // a batch already wholly acknowledged
	}
	b := &p.batches[i]
	size := b.last - b.first + 1
	if through > size {
		p.mu.Unlock()
		p.fail(fmt.Errorf("%w: JetStream acknowledged %d messages of a batch of %d", ErrNegativeAck, through, size))
		return
	}
	var short error
	if done && through < size {
		// JetStream ended the batch early (after refusing a message, which
		// it said): what it stored counts, the rest will not be stored.
		short = fmt.Errorf("%w: JetStream ended a batch of %d messages after %d", ErrNegativeAck, size, through)
	}
	b.through = max(b.through, through)
	if done {
		b.done, b.streamSeq = true, streamSeq
	}
	// Move the watermark over the batches answered for from the oldest on,
	// and into the first one that is not.
	acked, ackedStream := p.acked, p.ackedStream
	k := 0
	for ; k < len(p.batches); k++ {
		b := &p.batches[k]
		if b.through > 0 {
			acked = max(acked, b.first+b.through-1)
		}
		if !b.done || b.through < b.last-b.first+1 {
			break
		}
		if b.streamSeq > 0 {
			// Exactly where message acked is. After a flow
			// acknowledgement the last one known stays, below it.
			ackedStream = b.streamSeq
		}
	}
	if k > 0 {
		p.batches = append(p.batches[:0], p.batches[k:]...)
	}
	advanced := acked > p.acked
	if advanced {
		p.acked, p.ackedAt = acked, int64(time.Since(p.start))
	}
	p.ackedStream = ackedStream
	p.mu.Unlock()
	if advanced {
		p.ackedA.Store(acked)
		signal(p.progress)
		signal(p.space)
	}
	if short != nil {
		p.fail(short)
	}
}

// lastDot is the index of the last '.' in s, or -1.
func lastDot(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '.' {
			return i
		}
	}
	return -1
}

// batchFailed fails the Publisher for a refusal of message seq of batch num
// (0: of the batch as a whole).
func (p *Publisher) batchFailed(num, seq uint64, err error) {
	p.mu.Lock()
	var n uint64
	var subject string
	for _, b := range p.batches {
		if b.num == num {
			n = b.first
			if seq > 0 {
				n = b.first + seq - 1
			}
			break
		}
	}
	if n > p.acked && n <= p.sent {
		subject = p.ring[n&p.mask].subject
	}
	p.mu.Unlock()
	if n == 0 {
		p.fail(fmt.Errorf("batch %d: %w", num, err))
		return
	}
	p.fail(fmt.Errorf("message %d to %q: %w", n, subject, err))
}
