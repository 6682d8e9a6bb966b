package cdc

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tablecast/tablecast/stream"
)

// TestOtherClusterInTheStream: readers of two databases of one cluster
// share a stream in peace; a reader of another cluster publishing into it
// (its status record, written as such a reader writes it) makes the reader
// unhealthy, and is logged as an error, until it stops writing. Two
// clusters' events may have one id, and JetStream dropped the second as a
// repeat, with nothing to say so.
func TestOtherClusterInTheStream(t *testing.T) {
	n := startNATS(t)
	db1 := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	db2 := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg1, cfg2 := db1.config(), db2.config()
	cfg1.Snapshot, cfg2.Snapshot = SnapshotNever, SnapshotNever
	r1 := startReader(t, cfg1, n)
	r2 := startReader(t, cfg2, n)
	// Both have written records naming the cluster, and looked at each
	// other's a few times.
	waitFor(t, 20*time.Second, "both records, with the cluster", func() bool {
		sts, _, err := stream.ReadReaderStatuses(t.Context(), n.JS)
		var named int
		for _, st := range sts {
			if st.Cluster != "" && st.Stream == r1.cfg.Stream {
				named++
			}
		}
		return err == nil && named == 2
	})
	time.Sleep(3 * (&clusterCheck{r: r1.Reader}).every())
	for _, r := range []*runningReader{r1, r2} {
		if h := r.Health(); !h.Healthy {
			t.Fatalf("readers of one cluster sharing a stream: unhealthy: %v", h.Reasons)
		}
	}

	// Another cluster's reader, writing its record as readers do.
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			_ = stream.WriteReaderStatus(ctx, r1.state, &stream.ReaderStatus{Database: "elsewhere", Slot: "other_slot",
				Stream: r1.cfg.Stream, Cluster: "7000000000000000001", Streaming: true, Healthy: true,
				Started: time.Now().UTC(), Updated: time.Now().UTC(), Interval: time.Second})
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
	waitFor(t, 20*time.Second, "the reader to be unhealthy", func() bool {
		h := r1.Health()
		return !h.Healthy && len(h.Reasons) == 1 && strings.Contains(h.Reasons[0], "another PostgreSQL cluster (system identifier 7000000000000000001")
	})
	if !r1.log.contains(`msg="a reader of another PostgreSQL cluster publishes into this stream`) {
		t.Error("the other cluster is not logged")
	}
	cancel()
	wg.Wait()
	waitFor(t, 30*time.Second, "the reader to be healthy once the other stopped", func() bool { return r1.Health().Healthy })
}
