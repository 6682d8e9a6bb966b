package rowstate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// rowWriter sends the row messages of a batch to the rows stream and says
// when the stream has stored all of them.
type rowWriter interface {
	// write sends one row message: version v of the row of key (its
	// data, its headers: rowHeaders). It may return before the stream
	// stores it, and keeps no reference to key or v's data.
	write(subject string, key []byte, v version) error
	// end ends the rows written since the last end, followed by marker
	// (nil: none), which the stream stores only if it has stored every
	// row before it. An end before it must have been waited for. It may
	// return before the stream stores them (then pipelined is true):
	// wait says when.
	end(ctx context.Context, marker *nats.Msg) error
	// wait waits until the stream has stored what the last end ended (at
	// once when nothing is pending). An error means some of it may not
	// be stored, and the writer is no longer usable (the session ends,
	// and the next applies the batch again).
	wait(ctx context.Context) error
	// pipelined reports whether end returns before the rows are stored.
	pipelined() bool
	close()
}

// newRowWriter returns the writer for the rows stream as provisioned: fast
// batches where the stream takes them (nats-server 2.14 and later),
// otherwise one acknowledged publish per row.
func newRowWriter(nc *nats.Conn, js jetstream.JetStream, rows jetstream.Stream, cfg Config) (rowWriter, error) {
	name := RowsStreamName(cfg.Events)
	if rows.CachedInfo().Config.AllowBatchPublish && !noBatches.Load() {
		return newBatchWriter(nc, name, DBBatchEndSubject(cfg.Prefix, cfg.DB))
	}
	return &asyncWriter{js: js, stream: name}, nil
}

// rowHeaders sets the headers of the message of version v in h: its event
// sequence, the rows its key displaced (when any), its transaction's commit
// LSN (when known), and for a tombstone the mark and time to live.
// lsn is the value of HeaderLSN for v.lsn, kept by a writer for the
// transaction's next rows (rowHeaders makes and keeps it when nil, or
// another transaction's).
func rowHeaders(h nats.Header, v version, lsn *lsnHeader) {
	h[HeaderSeq] = []string{strconv.FormatUint(v.seq, 10)}
	if v.displaced > 0 {
		h[HeaderDisplaced] = []string{strconv.Itoa(v.displaced)}
	}
	if v.lsn != nil {
		if !bytes.Equal(lsn.raw, v.lsn) {
			lsn.raw, lsn.val = append(lsn.raw[:0], v.lsn...), []string{string(v.lsn)}
		}
		h[HeaderLSN] = lsn.val // nats.go copies the headers as it sends
	}
	if v.deleted {
		h[HeaderDeleted] = []string{"1"}
		h[jetstream.MsgTTLHeader] = []string{tombstoneTTL}
	}
}

// lsnHeader is HeaderLSN's value for one commit LSN, made once for the
// rows of a transaction.
type lsnHeader struct {
	raw []byte
	val []string
}

// tombstoneTTL is TombstoneTTL as the Nats-TTL header writes it.
var tombstoneTTL = TombstoneTTL.String()

// asyncWriter publishes each row on its own, acknowledged by the stream:
// for a stream that does not take fast batches.
type asyncWriter struct {
	js      jetstream.JetStream
	stream  string
	pending []jetstream.PubAckFuture
	lsn     lsnHeader
}

func (w *asyncWriter) write(subject string, key []byte, v version) error {
	msg := &nats.Msg{Subject: subject, Header: nats.Header{}, Data: appendRowMessage(nil, key, v.data, v.truncated())}
	rowHeaders(msg.Header, v, &w.lsn)
	f, err := w.js.PublishMsgAsync(msg, jetstream.WithExpectStream(w.stream))
	if err != nil {
		return fmt.Errorf("write row %s: %w", subject, err)
	}
	w.pending = append(w.pending, f)
	return nil
}

// end waits for every row written since the last end, then writes marker
// when every one of them was stored.
func (w *asyncWriter) end(ctx context.Context, marker *nats.Msg) error {
	if err := w.flush(ctx); err != nil {
		return err
	}
	if marker == nil {
		return nil
	}
	if _, err := w.js.PublishMsg(ctx, marker, jetstream.WithExpectStream(w.stream)); err != nil {
		return fmt.Errorf("write %s: %w", marker.Subject, err)
	}
	return nil
}

func (w *asyncWriter) wait(context.Context) error { return nil }

func (w *asyncWriter) pipelined() bool { return false }

func (w *asyncWriter) flush(ctx context.Context) error {
	defer func() { w.pending = w.pending[:0] }()
	var first error
	var settle <-chan time.Time
	for _, f := range w.pending {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if first == nil {
				first = fmt.Errorf("write row %s: %w", f.Msg().Subject, err)
				// The rows after it are stored all the same: wait for
				// them too (a while), so that the next session's look
				// at what is stored after the marker sees them.
				settle = time.After(batchAckTimeout)
			}
		case <-settle:
			return first
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return first
}

func (w *asyncWriter) close() {}

// batchWriter sends the rows between two ends as one JetStream fast
// batch (the protocol is described in stream/batch.go): the stream answers
// every few hundred messages and once when the batch ends, instead of once
// per row, which spares the server a reply per row and the maintainer an
// acknowledgement to decode and a future to wait on. The batch's messages
// are sent with gaps failing it: when the stream refuses a row (a full
// store, a message too large) or a row is lost with the connection, it
// stores no later row of the batch and its final acknowledgement counts
// fewer rows than were sent, so wait fails; the batch's marker, its last
// message, is not stored.
type batchWriter struct {
	nc     *nats.Conn
	stream string // the rows stream: the name every acknowledgement must carry
	eob    string // subject of the message that ends a batch, never stored

	sub    *nats.Subscription // replies: inbox + ">"
	inbox  string             // "<inbox>."
	idBase string             // "<unique token>-": a batch's id is idBase + its number

	num        uint64 // number of the open (or last) batch
	id         string // id of the open batch
	sent       uint64 // messages of the open batch sent
	reconnects uint64 // nc's reconnect count when the open batch began

	// pend is the batch ended last, until its final acknowledgement is
	// waited for (id "" when none); early holds the replies to the open
	// batch that came while it was awaited.
	pend  pendingBatch
	early []*nats.Msg

	msg   nats.Msg
	hdr   nats.Header
	lsn   lsnHeader
	data  []byte
	reply []byte
}

// pendingBatch is a batch ended and not yet known to be stored.
type pendingBatch struct {
	id         string
	sent       uint64 // its messages
	reconnects uint64 // nc's reconnect count when it began
}

// batchFlowAcks is how many rows the stream stores between two of its flow
// acknowledgements: the most it allows. The maintainer does not wait for
// them (a batch holds at most a few thousand rows, well within what the
// server queues), so fewer would only mean more replies.
const batchFlowAcks = stream.MaxFastBatchFlow

// batchAckTimeout bounds the silence while a batch's final
// acknowledgement is awaited with the connection up: the time since its
// end was sent or since the stream's last reply to it, whichever is later
// (the stream sends a flow acknowledgement every batchFlowAcks rows it
// stores, so a long batch being stored is never silent for long). As the
// reader's publisher does, it is measured from the last sign of progress,
// not from the batch's start: a batch whose stream leader died with it
// gets no reply at all (its new leader never heard of it), and the rows
// wait for the maintainer to write them again. Storing a few thousand
// rows takes well under a second; a false timeout only writes the batch
// again.
const batchAckTimeout = 5 * time.Second

func newBatchWriter(nc *nats.Conn, stream, eob string) (*batchWriter, error) {
	inbox := nc.NewInbox() + "."
	sub, err := nc.SubscribeSync(inbox + ">")
	if err != nil {
		return nil, fmt.Errorf("subscribe to the row state's acknowledgements: %w", err)
	}
	// The inbox's last token is unique (a NUID), so batch ids made from it
	// are unique among every publisher of the stream, as JetStream requires.
	tok := inbox[:len(inbox)-1]
	tok = tok[strings.LastIndexByte(tok, '.')+1:]
	return &batchWriter{nc: nc, stream: stream, eob: eob, sub: sub, inbox: inbox, idBase: tok + "-", hdr: nats.Header{}}, nil
}

func (w *batchWriter) write(subject string, key []byte, v version) error {
	clear(w.hdr)
	rowHeaders(w.hdr, v, &w.lsn)
	w.data = appendRowMessage(w.data[:0], key, v.data, v.truncated())
	return w.send(subject, w.hdr, w.data, true)
}

// send sends one message of the open batch (row: a row's, which dropRow
// may lose), beginning a batch when none is open.
func (w *batchWriter) send(subject string, hdr nats.Header, data []byte, row bool) error {
	op := stream.FastBatchAppend
	if w.sent == 0 {
		op = stream.FastBatchStart
		w.num++
		w.id = w.idBase + strconv.FormatUint(w.num, 10)
		w.reconnects = w.nc.Stats().Reconnects
		// Replies of an earlier batch still queued (flow acknowledgements
		// that crossed its end) are of no use now, unless one is still
		// awaited: then those kept for it (early) are too.
		for w.pend.id == "" {
			w.early = w.early[:0]
			if _, err := w.sub.NextMsg(0); err != nil {
				break
			}
		}
	}
	w.sent++
	if f := dropRow.Load(); row && f != nil && (*f)(w.sent) {
		return nil // lost on the way, as a dropped connection would lose it
	}
	w.msg = nats.Msg{Subject: subject, Reply: w.replySubject(w.sent, op), Header: hdr, Data: data}
	// nats.go copies the message into its write buffer before PublishMsg
	// returns: msg, hdr and data are free again.
	if err := w.nc.PublishMsg(&w.msg); err != nil {
		return fmt.Errorf("write %s: %w", subject, err)
	}
	return nil
}

// replySubject is the reply subject of message bseq of the open batch
// (stream.AppendFastBatchReply).
func (w *batchWriter) replySubject(bseq uint64, op string) string {
	w.reply = stream.AppendFastBatchReply(w.reply[:0], w.inbox+w.idBase, w.num, batchFlowAcks, bseq, op)
	return string(w.reply)
}

// batchReply is any reply to a batch message: a flow acknowledgement
// (type "ack"), a refused message ("err"), a gap ("gap"), or the
// acknowledgement that ends the batch (a publish acknowledgement with the
// batch's count, or an error).
type batchReply struct {
	Type   string    `json:"type"`
	Seq    uint64    `json:"seq"`
	Stream string    `json:"stream"`
	Batch  string    `json:"batch"`
	Count  uint64    `json:"count"`
	Error  *apiError `json:"error"`
}

type apiError struct {
	Code        int    `json:"code"`
	ErrCode     uint16 `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s (code %d, error %d)", e.Description, e.Code, e.ErrCode)
}

// ErrRowsRefused is returned (wrapped) when the rows stream did not store
// every row of a batch.
var ErrRowsRefused = errors.New("the rows stream did not store every row of the batch")

// end sends marker as the open batch's last message, and the message that
// ends the batch; the batch is then pending until wait. With gaps failing
// the batch, the stream stores the marker only if it stored every row
// before it, so the marker never stands above a row that is missing.
func (w *batchWriter) end(_ context.Context, marker *nats.Msg) error {
	if w.pend.id != "" {
		return fmt.Errorf("end a batch of rows while batch %s is not known to be stored", w.pend.id)
	}
	if marker != nil {
		if err := w.send(marker.Subject, marker.Header, marker.Data, false); err != nil {
			return err
		}
	}
	if w.sent == 0 {
		return nil
	}
	sent := w.sent
	w.sent = 0
	// The batch ends with a message the stream does not store.
	w.msg = nats.Msg{Subject: w.eob, Reply: w.replySubject(sent+1, stream.FastBatchEnd)}
	if f := dropEnd.Load(); f != nil && (*f)() {
		// lost on the way: the stream will send nothing more for the batch
	} else if err := w.nc.PublishMsg(&w.msg); err != nil {
		return fmt.Errorf("end the batch of %d rows: %w", sent, err)
	}
	w.pend = pendingBatch{id: w.id, sent: sent, reconnects: w.reconnects}
	return nil
}

func (w *batchWriter) pipelined() bool { return true }

// wait waits for the final acknowledgement of the pending batch. Replies to
// the open batch that come meanwhile are kept for its own wait.
func (w *batchWriter) wait(ctx context.Context) error {
	p := w.pend
	if p.id == "" {
		return nil
	}
	w.pend = pendingBatch{}
	prefix := w.inbox + p.id + "."
	open := ""
	if w.sent > 0 {
		open = w.inbox + w.id + "."
	}
	sent := p.sent
	var refused error
	// Replies that came while the next batch was applied are queued: the
	// silence is counted from now, or the last reply to the batch.
	heard := time.Now()
	for {
		var m *nats.Msg
		if i := slices.IndexFunc(w.early, func(m *nats.Msg) bool { return strings.HasPrefix(m.Subject, prefix) }); i >= 0 {
			m = w.early[i]
			w.early = slices.Delete(w.early, i, i+1)
		} else {
			wait := min(time.Until(heard.Add(batchAckTimeout)), 250*time.Millisecond)
			if wait <= 0 {
				return fmt.Errorf("write %d rows: the stream sent nothing for %s after the batch's end or its last reply", sent, batchAckTimeout)
			}
			wctx, cancel := context.WithTimeout(ctx, wait)
			var err error
			m, err = w.sub.NextMsgWithContext(wctx)
			cancel()
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, context.DeadlineExceeded):
				if w.nc.Stats().Reconnects != p.reconnects {
					// Rows sent before the connection dropped may be lost, and
					// with them the stream's replies.
					return fmt.Errorf("write %d rows: the connection to NATS was lost during the batch", sent)
				}
				continue
			case err != nil:
				return fmt.Errorf("write %d rows: %w", sent, err)
			}
		}
		if !strings.HasPrefix(m.Subject, prefix) {
			if open != "" && strings.HasPrefix(m.Subject, open) {
				w.early = append(w.early, m) // the open batch's, for its wait
			}
			continue // a reply to an earlier batch
		}
		heard = time.Now()
		if len(m.Data) == 0 {
			return fmt.Errorf("write %d rows: %w: status %s %s", sent, ErrRowsRefused, m.Header.Get("Status"), m.Header.Get("Description"))
		}
		var r batchReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return fmt.Errorf("write %d rows: a reply that is not JSON: %q", sent, m.Data)
		}
		switch {
		case r.Type == "ack":
			continue
		case r.Type == "err" || r.Type == "gap":
			// The final acknowledgement follows; keep the first reason.
			if refused == nil {
				refused = fmt.Errorf("row %d of the batch: %s", r.Seq, m.Data)
				if r.Error != nil {
					refused = fmt.Errorf("row %d of the batch: %w", r.Seq, r.Error)
				}
			}
			continue
		case r.Error != nil:
			if refused == nil {
				refused = r.Error
			}
			return fmt.Errorf("write %d rows: %w: %w", sent, ErrRowsRefused, refused)
		case r.Stream != w.stream:
			return fmt.Errorf("write %d rows: stored by stream %q, not %s (another stream captures its subjects)", sent, r.Stream, w.stream)
		case refused != nil || r.Count != sent:
			if refused == nil {
				refused = fmt.Errorf("%d of %d stored", r.Count, sent)
			}
			return fmt.Errorf("write %d rows: %w: %w", sent, ErrRowsRefused, refused)
		}
		return nil
	}
}

func (w *batchWriter) close() { _ = w.sub.Unsubscribe() }

// noBatches, set by tests only, makes maintainers write rows one
// acknowledged publish each, as on a server without fast batches.
var noBatches atomic.Bool

// dropRow, set by tests only, makes the batch writer lose the messages of
// a batch for which it returns true (given their number in the batch).
var dropRow atomic.Pointer[func(bseq uint64) bool]

// dropEnd, set by tests only, makes the batch writer lose the message that
// ends a batch when it returns true.
var dropEnd atomic.Pointer[func() bool]
