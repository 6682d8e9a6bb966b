package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// TestSoakOldRowsOnCluster: complete old rows on a three-node cluster,
// every stream and bucket with three replicas, while the leader of the row
// state's stream and then of the event stream is killed under a steady run
// of updates. Any replica answers a direct get, and one can lag behind
// writes already acknowledged: a reader that took such an answer would
// carry an older version of the row as old, or none. With a cache of 16
// KiB most previous versions come from the row state, not the cache. Every
// update increments its row's n, so each update's old must be exactly the
// version before it (checkOldRowsChain), across the leader changes.
func TestSoakOldRowsOnCluster(t *testing.T) {
	if os.Getenv("TABLECAST_SOAK") == "" {
		t.Skip("a soak test: TABLECAST_SOAK=1 (make soak)")
	}
	const rows = 200
	c := pgtestRequire(t)
	db, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE docs (id int PRIMARY KEY, n int NOT NULL, pad text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_oldcluster_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	cl := natstest.StartCluster(t, 3)
	httpAddr := freeAddr(t)
	// Logged at info: this test has failed twice in ~18 soak runs, the
	// events stopping after the rows stream's leader was killed, and the
	// warnings alone ("disconnected from NATS") do not say where.
	p := startKeep(t, append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_OLD_ROWS_TABLES=public.docs", "TABLECAST_OLD_ROWS_CACHE_BYTES=16384",
		"TABLECAST_STREAM_REPLICAS=3", "TABLECAST_NATS_URL="+cl.URL(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_oldcluster", "TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_LOG_LEVEL=info"), "cdc")
	waitFor(t, 2*time.Minute, "/readyz of tablecast cdc", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	if _, err := conn.Exec(ctx, `INSERT INTO docs SELECT g, 0, repeat(md5(g::text), 4) FROM generate_series(1, $1) g`, rows); err != nil {
		t.Fatal(err)
	}

	// The writer: one update per transaction, rows in turn, until stopped.
	wctx, stop := context.WithCancel(ctx)
	var updates atomic.Int64
	written := make(chan error, 1)
	wconn := connect(t, url) // here: t is the test goroutine's
	go func() {
		for i := 0; wctx.Err() == nil; i++ {
			if _, err := wconn.Exec(wctx, `UPDATE docs SET n = n + 1 WHERE id = $1`, i*7%rows+1); err != nil {
				if wctx.Err() == nil {
					written <- err
				}
				break
			}
			updates.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
		close(written)
	}()
	// Stopped before the connection closes (cleanups run last first),
	// also when the test fails while it writes.
	t.Cleanup(func() {
		stop()
		for range written {
		}
	})
	events := "tablecast." + stream.Token(db) + ".public.docs.update"
	updatesStored := func() uint64 {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		n, _ := storedOn(sctx, cl.JS, events) // 0 while a node restarts
		return n
	}
	var killed []string
	for _, name := range []string{stream.RowsStreamName("TABLECAST"), "TABLECAST"} {
		time.Sleep(8 * time.Second)
		victim := cl.StreamLeader(name)
		if victim == nil {
			t.Fatalf("no node leads stream %s", name)
		}
		before := updatesStored()
		killed = append(killed, victim.Name+" (leader of "+name+")")
		t.Logf("SIGKILL of %s, the leader of %s, with %d updates stored", victim.Name, name, before)
		victim.Kill()
		down := time.Now()
		waitFor(t, 2*time.Minute, "updates stored again while a node is down", func() bool { return updatesStored() > before+100 })
		time.Sleep(time.Until(down.Add(10 * time.Second)))
		victim.Start()
		waitFor(t, 2*time.Minute, "the streams' replicas to be current again", func() bool {
			return replicasCurrent(cl, "TABLECAST") && replicasCurrent(cl, stream.RowsStreamName("TABLECAST"))
		})
	}
	time.Sleep(5 * time.Second)
	stop()
	for err := range written {
		t.Fatalf("writer: %v", err)
	}
	want := uint64(updates.Load())
	waitFor(t, 3*time.Minute, fmt.Sprintf("all %d updates stored", want), func() bool { return updatesStored() >= want })
	p.alive(t)
	// Read as natstest does, with retries: right after a node restart the
	// JetStream API may have no responder for a moment.
	var evs []oldRowsEvent
	for _, m := range cl.ReadAll(t, "TABLECAST") {
		if !strings.HasPrefix(m.Subject, "tablecast."+stream.Token(db)+".public.") {
			continue
		}
		var ev oldRowsEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("event %s: %v", m.Data, err)
		}
		evs = append(evs, ev)
	}
	checked := checkOldRowsChain(t, evs, "docs", 3)
	if uint64(checked) < want {
		t.Fatalf("checked the old row of %d updates, want %d", checked, want)
	}
	lookups := metricValue(t, httpAddr, "tablecast_cdc_old_rows_lookups_total")
	stale := metricValue(t, httpAddr, "tablecast_cdc_old_rows_stale_reads_total")
	unknown := metricValue(t, httpAddr, "tablecast_cdc_old_rows_unknown_total")
	if lookups == 0 {
		t.Error("no old row was read from the row state: the test did not exercise the replicas")
	}
	if unknown != 0 {
		t.Errorf("%v updates published without their previous version", unknown)
	}
	t.Logf("%d updates, each with its previous version as old, across SIGKILLs of %v; %v old rows read from the row state, %v reads repeated for a lagging replica",
		checked, killed, lookups, stale)
}
