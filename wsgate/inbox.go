package wsgate

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A feed's inbox. The ordered consumer hands each message to a callback,
// and asks NATS for more (its pull requests) as the callback returns. If
// the callback did the fan-out, a feed busy fanning out would hold the
// stream's deliveries back, and messages held back in the stream can be
// dropped by its limits before the feed gets them (retention.go). So the
// callback (receive) only puts the message in the feed's inbox; the feed's
// goroutine (run) handles the inbox.
//
// The inbox is bounded (feedInboxBytes): a callback that finds it full
// waits, and the stream may hold messages back meanwhile. That is a stall:
// the inbox notes it (stallMark) so that the feed checks its next jump
// rather than trust a NumPending of 0 given before the stall had ended.

// received is one message in the inbox.
type received struct {
	msg  jetstream.Msg
	meta *jetstream.MsgMetadata
	at   time.Time
}

// stallMark: the messages of consumer with a consumer sequence up to upTo
// were delivered before a stall had ended (math.MaxUint64 while it is not
// known where it ended).
type stallMark struct {
	consumer string
	upTo     uint64
}

type inbox struct {
	limit int // bytes

	mu     sync.Mutex
	q      []received
	bytes  int
	stall  stallMark
	closed bool

	wake chan struct{} // messages arrived (cap 1)
	room chan struct{} // the feed's goroutine took messages (cap 1)
	quit chan struct{} // closed by close
}

func (in *inbox) init(limit int) {
	in.limit = limit
	in.wake, in.room, in.quit = make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{})
}

func (in *inbox) close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.closed {
		in.closed = true
		close(in.quit)
	}
}

// receive is the consumer's callback: it puts msg in the inbox, waiting
// for room when the inbox is full.
func (f *feed) receive(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	now := time.Now()
	f.g.met.eventAge.Observe(max(0, now.Sub(meta.Timestamp)).Seconds())
	in := &f.in
	size := len(msg.Subject()) + len(msg.Data()) + 64
	stalled := false
	in.mu.Lock()
	for in.bytes > 0 && in.bytes+size > in.limit && !in.closed {
		if !stalled {
			stalled = true
			in.stall = stallMark{consumer: meta.Consumer, upTo: math.MaxUint64}
		}
		in.mu.Unlock()
		select {
		case <-in.room:
		case <-in.quit:
		}
		in.mu.Lock()
	}
	if in.closed {
		in.mu.Unlock()
		return
	}
	if stalled {
		now = time.Now() // it arrives in the inbox now
	}
	in.q = append(in.q, received{msg: msg, meta: meta, at: now})
	in.bytes += size
	in.mu.Unlock()
	select {
	case in.wake <- struct{}{}:
	default:
	}
	if stalled {
		f.stallEnded(meta.Consumer)
	}
}

// stallEnded records where a stall ended: every message the consumer had
// delivered by now.
func (f *feed) stallEnded(consumer string) {
	ctx, cancel := context.WithTimeout(f.g.ctx, requestTimeout)
	defer cancel()
	ci, err := f.cons.Info(ctx)
	if err != nil || ci.Name != consumer {
		return // it stays unknown: no NumPending of this consumer is trusted
	}
	in := &f.in
	in.mu.Lock()
	if in.stall.consumer == consumer && in.stall.upTo == math.MaxUint64 {
		in.stall.upTo = ci.Delivered.Consumer
	}
	in.mu.Unlock()
}

// run is the feed's goroutine: it handles the inbox, in order, until the
// feed stops.
func (f *feed) run() {
	in := &f.in
	var batch []received
	for {
		in.mu.Lock()
		for len(in.q) == 0 && !in.closed {
			in.mu.Unlock()
			select {
			case <-in.wake:
			case <-in.quit:
			}
			in.mu.Lock()
		}
		if in.closed {
			in.mu.Unlock()
			return
		}
		batch, in.q = in.q, batch[:0]
		in.bytes = 0
		stall := in.stall
		in.mu.Unlock()
		select {
		case in.room <- struct{}{}:
		default:
		}
		for i := range batch {
			f.handle(&batch[i], stall)
			batch[i] = received{}
		}
	}
}
