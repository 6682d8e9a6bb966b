package cdc

import (
	"context"
	"fmt"
	"time"

	"github.com/tablecast/tablecast/stream"
)

// Readers of several databases may publish into one stream, as long as
// they read one PostgreSQL cluster. An event's id is its commit's position
// in the cluster's WAL and its ordinal, and it is the message's
// Nats-Msg-Id: two clusters write their WAL apart, so two of their events
// may have the same id (two clusters made alike, from one image or one
// backup, commit at the very same positions), and JetStream drops the
// second as a repeat of the first when it comes within the duplicate
// window. Lost, with nothing to say so. So a reader looks at the status
// records of the others (the state bucket): one of another cluster that
// publishes into the same stream, and has written its record lately, makes
// it unhealthy, and is logged as an error, until that reader stops.

// clusterCheck finds readers of another PostgreSQL cluster publishing into
// the reader's stream, from their status records.
type clusterCheck struct {
	r      *Reader
	at     time.Time // of the last look
	reason string    // what the last look found; "" for nothing
	logged map[string]bool
}

// every is how often the records are read: every tenth look at the slot
// (50 s by default), at most once a second. Each read follows the bucket's
// records with a consumer of its own, which the server creates and deletes.
func (c *clusterCheck) every() time.Duration {
	return max(10*c.r.cfg.WatchInterval, time.Second)
}

// cluster returns the system identifier of the PostgreSQL the reader
// reads, "" until it has connected.
func (r *Reader) cluster() string {
	if p := r.clusterID.Load(); p != nil {
		return *p
	}
	return ""
}

// check returns the health reason for another cluster's reader in the
// stream, "" when there is none.
func (c *clusterCheck) check(ctx context.Context, now time.Time) string {
	r := c.r
	mine := r.cluster()
	if mine == "" || (!c.at.IsZero() && now.Sub(c.at) < c.every()) {
		return c.reason
	}
	c.at = now
	rctx, cancel := context.WithTimeout(ctx, max(r.cfg.WatchInterval, time.Second))
	defer cancel()
	sts, _, err := stream.ReadReaderStatuses(rctx, r.js)
	if err != nil {
		return c.reason // as last seen
	}
	c.reason = ""
	for _, st := range sts {
		if st.Stream != r.cfg.Stream || st.Cluster == "" || st.Cluster == mine {
			continue
		}
		// A reader writes its record every interval: one not written for
		// three has stopped.
		if now.Sub(st.Updated) > 3*max(st.Interval, time.Second) {
			continue
		}
		c.reason = fmt.Sprintf("a reader of another PostgreSQL cluster (system identifier %s, database %s, slot %s) publishes into stream %s as well: the two clusters' event ids may coincide, and JetStream drops an event whose id it stored within its duplicate window; give each cluster a stream of its own (TABLECAST_STREAM and TABLECAST_SUBJECT_PREFIX)",
			st.Cluster, st.Database, st.Slot, r.cfg.Stream)
		if !c.logged[st.Cluster] {
			c.logged[st.Cluster] = true
			r.log.Error("a reader of another PostgreSQL cluster publishes into this stream: events may be lost as repeats of the other's",
				"stream", r.cfg.Stream, "other_cluster", st.Cluster, "other_database", st.Database, "other_slot", st.Slot, "cluster", mine,
				"fix", "give each cluster a stream of its own (TABLECAST_STREAM and TABLECAST_SUBJECT_PREFIX)")
		}
		break
	}
	return c.reason
}
