package cdc

import "time"

// commitTracker remembers, for each transaction whose events are published
// but not all acknowledged, the publisher sequence of its last event and the
// LSN to confirm once that event is acknowledged. The publisher acknowledges
// in sequence order (its watermark is contiguous), so a FIFO suffices.
type commitTracker struct {
	queue      []pendingCommit
	head       int
	lastPopped uint64 // lastSeq of the last transaction advance popped
}

type pendingCommit struct {
	lastSeq uint64    // publisher sequence of the transaction's last event
	endLSN  uint64    // commit end LSN: safe to confirm once lastSeq is acked
	at      time.Time // when the commit was seen, for publish latency; zero: not observed
}

func (t *commitTracker) add(lastSeq, endLSN uint64, at time.Time) {
	t.queue = append(t.queue, pendingCommit{lastSeq: lastSeq, endLSN: endLSN, at: at})
}

// advance pops every transaction whose last event is acknowledged (seq <=
// acked) and returns the highest end LSN among them (0 if none), calling
// observe with the time each waited until now, the time of the
// acknowledgement.
func (t *commitTracker) advance(acked uint64, now time.Time, observe func(time.Duration)) uint64 {
	var lsn uint64
	for t.head < len(t.queue) && t.queue[t.head].lastSeq <= acked {
		c := t.queue[t.head]
		lsn, t.lastPopped = c.endLSN, c.lastSeq
		if observe != nil && !c.at.IsZero() {
			observe(now.Sub(c.at))
		}
		t.head++
	}
	if t.head == len(t.queue) {
		t.queue, t.head = t.queue[:0], 0
	} else if t.head > 1024 && t.head*2 > len(t.queue) {
		n := copy(t.queue, t.queue[t.head:])
		t.queue, t.head = t.queue[:n], 0
	}
	return lsn
}

// empty reports whether no transaction awaits acknowledgement.
func (t *commitTracker) empty() bool { return t.head == len(t.queue) }
