package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// counter returns the value of an unlabelled counter or gauge.
func (r *runningReader) counter(name string) float64 {
	mfs, _ := r.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// kill stops the reader as a crash would: without giving up its lease.
func (r *runningReader) kill(t testing.TB) {
	r.keepLease.Store(true)
	r.stop(t)
}

// TestHolderWatch: a standby takes a lease over only once its revision has
// stood still for a whole lease, as the standby itself watched it.
func TestHolderWatch(t *testing.T) {
	const ttl = 5 * time.Second
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name  string
		steps []struct {
			rev uint64
			at  time.Duration
		}
		want bool
	}{
		{"first look", []struct {
			rev uint64
			at  time.Duration
		}{{7, 0}}, false},
		{"still within the lease", []struct {
			rev uint64
			at  time.Duration
		}{{7, 0}, {7, ttl - time.Millisecond}}, false},
		{"a whole lease", []struct {
			rev uint64
			at  time.Duration
		}{{7, 0}, {7, ttl}}, true},
		{"renewed meanwhile", []struct {
			rev uint64
			at  time.Duration
		}{{7, 0}, {8, ttl - time.Second}, {8, ttl + time.Second}}, false},
		{"renewed, then a whole lease", []struct {
			rev uint64
			at  time.Duration
		}{{7, 0}, {8, time.Second}, {8, time.Second + ttl}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w holderWatch
			var got bool
			for _, s := range tc.steps {
				got = w.expired(s.rev, t0.Add(s.at), ttl)
			}
			if got != tc.want {
				t.Fatalf("expired = %t, want %t", got, tc.want)
			}
		})
	}
}

// TestLeaseValidity: the leader holds its lease for the lease minus the
// margin from when it sent its last successful write, less than a standby
// waits from when it saw that write.
func TestLeaseValidity(t *testing.T) {
	sent := time.Unix(1000, 0)
	l := &lease{ttl: 5 * time.Second, renewed: sent}
	if !l.validAt(sent.Add(3999 * time.Millisecond)) {
		t.Error("lease not valid 3.999s after a renewal of a 5s lease")
	}
	if l.validAt(sent.Add(4 * time.Second)) {
		t.Error("lease still valid 4s after a renewal of a 5s lease: a standby may take it 5s after")
	}
}

// TestFencedReaderStandsBy: once another reader's fence is stored, the
// reader's next event is refused by JetStream and never stored; the reader
// counts itself fenced, stands by, and, the lease being free again, leads
// once more expecting the new fence: the refused change is stored once. On
// a stream with one replica, and on one with three, where the fence is the
// slot's ring (stream.FenceRingSubjects).
func TestFencedReaderStandsBy(t *testing.T) {
	for _, replicas := range []int{1, 3} {
		t.Run(fmt.Sprintf("R%d", replicas), func(t *testing.T) { testFencedReaderStandsBy(t, replicas) })
	}
}

func testFencedReaderStandsBy(t *testing.T, replicas int) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	var n *natsEnv
	if replicas > 1 {
		n = startNATSCluster(t, replicas)
	} else {
		n = startNATS(t)
	}
	cfg := db.config()
	cfg.HeartbeatInterval = -1
	r := startReader(t, cfg, n)
	if h := r.Health(); h.Role != "leader" || h.Leader == nil || !h.Leader.Self {
		t.Fatalf("a lone reader's health: role %q, leader %+v; want the leader itself", h.Role, h.Leader)
	}
	if v := r.counter("tablecast_cdc_leader"); v != 1 {
		t.Fatalf("tablecast_cdc_leader = %v, want 1", v)
	}
	db.exec(t, `INSERT INTO items VALUES (1)`)
	n.readAll(t, 1, 20*time.Second)

	// Another reader's fence, as one that took the slot over writes it.
	// Long enough for the waits below too: the context serves the reads
	// of the lease at the end.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var fence uint64
	if replicas > 1 {
		seqs, err := stream.StoreFences(ctx, n.JS, "TABLECAST", stream.FenceRingSubjects(testPrefix, db.slot), []byte(`{"holder":"another"}`))
		if err != nil {
			t.Fatalf("store a fence ring: %v", err)
		}
		fence = seqs[len(seqs)-1]
	} else {
		ack, err := n.JS.Publish(ctx, stream.FenceSubject(testPrefix, db.slot), []byte(`{"holder":"another"}`))
		if err != nil {
			t.Fatalf("publish a fence: %v", err)
		}
		fence = ack.Sequence
	}
	db.exec(t, `INSERT INTO items VALUES (2)`)
	waitFor(t, 20*time.Second, "the reader to be fenced out", func() bool {
		return r.counter("tablecast_cdc_fenced_total") == 1
	})
	// The counter goes up just before the line is logged.
	waitFor(t, 5*time.Second, "a log line saying the reader was fenced out", func() bool { return r.log.contains("fenced out") })
	// It leads again (nobody else holds the lease) and publishes row 2
	// after the fence, once.
	evs := n.readAll(t, 2, 20*time.Second)
	time.Sleep(500 * time.Millisecond)
	evs = n.fetch(t)
	if len(evs) != 2 || evs[0].Data["id"].(float64) != 1 || evs[1].Data["id"].(float64) != 2 {
		t.Fatalf("stream holds %d events, want rows 1 and 2 once each", len(evs))
	}
	if evs[1].Seq <= fence {
		t.Fatalf("row 2 stored at %d, before the fence at %d", evs[1].Seq, fence)
	}
	kv, err := n.JS.KeyValue(ctx, LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, db.slot)
	if err != nil {
		t.Fatalf("read the lease: %v", err)
	}
	var v leaseValue
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		t.Fatal(err)
	}
	if v.Holder != r.token || v.Fence != fence {
		t.Fatalf("lease %+v: want this reader expecting fence %d", v, fence)
	}
	r.stop(t)
	// The delete is acknowledged by a quorum, but a read of the bucket
	// (a direct get) may be answered by a replica a moment behind: the
	// lease must be gone within a few such moments, far below its
	// expiry, with nothing logged about giving it up.
	deadline := time.Now().Add(3 * time.Second)
	for {
		_, err := kv.Get(ctx, db.slot)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lease is still held after the reader stopped (%v): a restart or a standby would wait for it to expire", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r.log.contains("cannot give up the lease") {
		t.Error("the reader logged that it could not give up the lease")
	}
}

// TestStandbyTakesOver: of two readers of one slot, one streams and the
// other stands by, healthy, answering nothing; when the leader stops
// without giving up its lease (its renewals stop, as in a crash), the
// standby takes over after the lease and streams from the slot: every
// change once, in order.
func TestStandbyTakesOver(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.HeartbeatInterval = -1
	cfg.LeaderLease = time.Second
	a := startReader(t, cfg, n)
	b := launchReader(t, cfg, n)
	waitFor(t, 10*time.Second, "the second reader to stand by", func() bool {
		h := b.Health()
		return h.Role == "standby" && h.Leader != nil && !h.Leader.Self
	})
	if h := b.Health(); !h.Healthy || h.Streaming {
		t.Fatalf("standby health %+v: want healthy, not streaming", h)
	}
	db.exec(t, `INSERT INTO items SELECT generate_series(1, 100)`)
	n.readAll(t, 100, 20*time.Second)
	time.Sleep(1500 * time.Millisecond)
	if b.Health().Role != "standby" {
		t.Fatal("the standby took the lease while the leader renewed it")
	}

	// The leader dies without a word: its lease is renewed no more.
	a.kill(t)
	db.exec(t, `INSERT INTO items SELECT generate_series(101, 200)`)
	waitFor(t, 20*time.Second, "the standby to take over", func() bool { return b.Health().Streaming })
	if v := b.counter("tablecast_cdc_takeovers_total"); v != 1 {
		t.Errorf("tablecast_cdc_takeovers_total = %v, want 1", v)
	}
	evs := n.readAll(t, 200, 20*time.Second)
	time.Sleep(500 * time.Millisecond)
	evs = n.fetch(t)
	if len(evs) != 200 {
		t.Fatalf("stream holds %d events, want 200", len(evs))
	}
	for i, e := range evs {
		if int(e.Data["id"].(float64)) != i+1 {
			t.Fatalf("event %d is row %v, want %d", i, e.Data["id"], i+1)
		}
	}
}

// TestLeaseBucketDeleted: an operator deletes the lease bucket while the
// reader streams (to clear a lease they believe stuck, say). The reader
// loses its lease, as it cannot renew it; it must then create the bucket
// again and take the lease, not stand by for good with the slot unread.
func TestLeaseBucketDeleted(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.LeaderLease = 2 * time.Second
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO items SELECT generate_series(1, 10)`)
	n.readAll(t, 10, 15*time.Second)
	if err := n.JS.DeleteKeyValue(context.Background(), LeaseBucket); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the reader to lose its lease", func() bool { return r.log.contains("lost the lease") })
	db.exec(t, `INSERT INTO items SELECT generate_series(11, 20)`)
	evs := n.readAll(t, 20, 20*time.Second)
	assertExactlyInOrder(t, evs, 20)
	if !r.log.contains("created it again") {
		t.Error("no warning that the lease bucket was created again")
	}
}

// TestStateBucketDeleted: an operator deletes the reader's state bucket
// while it streams. The position record, the catch-ups of tables added
// and the gaps refused events leave had nowhere to go: a table created
// then was never added to the publication (its catch-up could not be
// recorded), and every restart replayed what the stream held. The reader
// must create the bucket again and carry on.
func TestStateBucketDeleted(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	// A status write's deadline is the interval; a write into a bucket
	// gone is retried for half a second before JetStream is found absent.
	cfg.WatchInterval = time.Second
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO items SELECT generate_series(1, 10)`)
	n.readAll(t, 10, 15*time.Second)
	ctx := context.Background()
	if err := n.JS.DeleteKeyValue(ctx, stateBucket); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the state bucket to be created again", func() bool {
		return r.log.contains("the state bucket was deleted while the reader ran; created it again")
	})
	db.exec(t, `BEGIN; CREATE TABLE later (id int PRIMARY KEY); INSERT INTO later VALUES (1), (2); COMMIT`)
	db.exec(t, `INSERT INTO items SELECT generate_series(11, 20)`)
	waitFor(t, 30*time.Second, "the rows of the table created after the deletion", func() bool { return len(eventsOf(t, n, "public.later")) == 2 })
	kv, err := n.JS.KeyValue(ctx, stateBucket)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := kv.Get(ctx, positionKey(r.db, cfg.Slot))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			var warnings []string
			for _, line := range strings.Split(r.log.String(), "\n") {
				if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
					warnings = append(warnings, line)
				}
			}
			t.Fatalf("no position record 30s after the bucket was created again (%v); the reader's warnings:\n%s", err, strings.Join(warnings, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := len(eventsOf(t, n, "public.items")); got != 20 {
		t.Fatalf("%d events of items, want 20", got)
	}
}
