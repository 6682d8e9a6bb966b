package cdc

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/internal/rowstate"
)

// TestRowReadsSkipALaggingReplica: any replica of a replicated row state
// answers a direct get, and one that lags behind the writes the state was
// acknowledged for holds older rows. A read whose answer carries the
// database's marker behind what the state had applied (or no marker at
// all) is read again, and only a current answer is taken. The answers
// come from a responder of the test's, standing in for the replicas.
func TestRowReadsSkipALaggingReplica(t *testing.T) {
	n := natstest.Start(t)
	const streamName, prefix, db = "LAGGING", "tc", "shop"
	rowSubj := rowstate.RowSubject(prefix, db, "public", "orders", rowstate.KeyToken([]byte(`{"id":1}`)))
	marker := rowstate.DBMarkerSubject(prefix, db)

	// Answers in turn: nothing at all (a replica without the state yet),
	// an old row with the marker at 7, then the row as of 10 with the
	// marker at 10.
	answers := []struct {
		markerSeq uint64 // 0: a 404
		data      string
	}{{0, ""}, {7, `{"id":1,"v":"old"}`}, {10, `{"id":1,"v":"new"}`}}
	var asked atomic.Int32
	sub, err := n.NC.Subscribe("$JS.API.DIRECT.GET."+rowstate.RowsStreamName(streamName), func(m *nats.Msg) {
		a := answers[min(int(asked.Add(1))-1, len(answers)-1)]
		if a.markerSeq == 0 {
			_ = n.NC.PublishMsg(&nats.Msg{Subject: m.Reply, Header: nats.Header{"Status": {"404"}}})
			return
		}
		row := &nats.Msg{Subject: m.Reply, Header: nats.Header{"Nats-Subject": {rowSubj}, rowstate.HeaderSeq: {strconv.FormatUint(a.markerSeq, 10)}},
			Data: []byte(`{"key":{"id":1},"data":` + a.data + `}`)}
		mark := &nats.Msg{Subject: m.Reply, Header: nats.Header{"Nats-Subject": {marker}, rowstate.HeaderSeq: {strconv.FormatUint(a.markerSeq, 10)}}}
		end := &nats.Msg{Subject: m.Reply, Header: nats.Header{"Status": {"204"}, "Nats-Num-Pending": {"0"}}}
		for _, msg := range []*nats.Msg{row, mark, end} {
			_ = n.NC.PublishMsg(msg)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	r := &Reader{nc: n.NC, prefix: prefix, db: db, cfg: Config{Stream: streamName}, m: newMetrics(nil), log: slog.New(slog.DiscardHandler)}
	s := &session{r: r, old: &oldRows{state: &fakeRowState{seq: 10, ready: true}}}
	if err := s.readRows(context.Background(), []string{rowSubj}); err != nil {
		t.Fatal(err)
	}
	got, err := s.old.prefetched(rowSubj)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != `{"id":1,"v":"new"}` {
		t.Errorf("row read %s, want the current replica's", got)
	}
	if a := asked.Load(); a != 3 {
		t.Errorf("asked %d times, want 3 (two answers behind the state)", a)
	}
	if stale := testutil.ToFloat64(r.m.oldRowsStale); stale != 2 {
		t.Errorf("%v stale reads counted, want 2", stale)
	}
}
