package wsgate

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// randEvent is one published message of TestBatchRandomResumes' model.
type randEvent struct {
	seq    uint64
	table  string // "" for a marker
	status string
	tx     *testTx
}

// randExpect is what a batched subscription to paid orders that starts
// after position from must receive: frames of event seqs, each with its
// seq and more.
type randFrame struct {
	seq  uint64
	more bool
	evs  []uint64
}

func randExpect(log []randEvent, from uint64, limit int) []randFrame {
	var out []randFrame
	var cur []uint64
	var curTx *testTx
	for _, e := range log {
		if e.seq <= from {
			continue
		}
		if e.table == "" {
			if curTx == e.tx && len(cur) > 0 {
				out = append(out, randFrame{seq: e.seq, evs: cur})
			}
			cur, curTx = nil, nil
			continue
		}
		if e.table != "orders" || e.status != "paid" {
			continue
		}
		if len(cur) == limit {
			out = append(out, randFrame{seq: cur[len(cur)-1], more: true, evs: cur})
			cur = nil
		}
		cur, curTx = append(cur, e.seq), e.tx
	}
	return out
}

// TestBatchRandomResumes: random transactions over two tables, and
// batched subscriptions to paid orders made at random moments while they
// are stored, without from or from any position stored so far: each gets
// exactly the frames the contract describes.
func TestBatchRandomResumes(t *testing.T) {
	const limit = 3
	e := startGateway(t, func(c *Config) { c.TxMarkers, c.BatchMaxEvents = true, limit })
	e.putShape(itemsShape())
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(1, seed))

	var mu sync.Mutex
	var log []randEvent
	done := make(chan struct{})
	prng := rand.New(rand.NewPCG(2, rng.Uint64()))
	go func() {
		defer close(done)
		id := 0
		for range 120 {
			tx := e.beginTx()
			n := 1 + prng.IntN(9)
			for range n {
				table := "orders"
				if prng.IntN(3) == 0 {
					table = "items"
				}
				status := "open"
				if prng.IntN(2) == 0 {
					status = "paid"
				}
				id++
				e.events(tx, txRow{table, "create", order(id, status)})
				mu.Lock()
				log = append(log, randEvent{seq: tx.seqs[len(tx.seqs)-1], table: table, status: status, tx: tx})
				mu.Unlock()
				if prng.IntN(4) == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			e.commit(tx)
			mu.Lock()
			log = append(log, randEvent{seq: tx.mark, tx: tx})
			mu.Unlock()
		}
	}()

	type sub struct {
		c    *client
		from uint64
		what string
	}
	var subs []sub
	for i := 0; ; i++ {
		select {
		case <-done:
		default:
			time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
			c := e.dial("/ws")
			msg := map[string]any{"id": "b", "table": "public.orders", "batch": "transaction", "where": map[string]any{"status": map[string]any{"eq": "paid"}}}
			mu.Lock()
			n := len(log)
			var from uint64
			if n > 0 && i%3 != 0 {
				from = log[rng.IntN(n)].seq
				msg["from"] = from
			}
			mu.Unlock()
			f := c.subscribe(msg)
			what := fmt.Sprintf("from %d", from)
			if _, ok := msg["from"]; !ok {
				from, what = f.Seq, fmt.Sprintf("without from, subscribed at %d", f.Seq)
			}
			subs = append(subs, sub{c, from, what})
			continue
		}
		break
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range subs {
		want := randExpect(log, s.from, limit)
		for i, w := range want {
			f := s.c.expectTx("b")
			var got []uint64
			for _, ev := range f.Events {
				got = append(got, ev.Seq)
			}
			if f.Seq != w.seq || f.More != w.more || fmt.Sprint(got) != fmt.Sprint(w.evs) {
				t.Fatalf("subscription %s, frame %d of %d: seq %d more %v events %v; want seq %d more %v events %v", s.what, i, len(want), f.Seq, f.More, got, w.seq, w.more, w.evs)
			}
		}
		if got := s.c.sync(); len(got) != 0 {
			t.Fatalf("subscription %s: unexpected frames after the last: %s", s.what, got[0].raw)
		}
	}
	t.Logf("%d subscriptions checked over %d messages", len(subs), len(log))
}
