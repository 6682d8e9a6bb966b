package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tablecast/tablecast/stream"
)

// TestCrashSafety kills the reader with SIGKILL at random moments while a
// load of small transactions runs, restarting it each time. Afterwards every
// committed change must be in the stream exactly once, in commit order per
// table, and nothing from rolled-back transactions.
//
// `make test` kills 5 times; `make soak` (TABLECAST_SOAK=1) kills 30 times
// under a longer load.
func TestCrashSafety(t *testing.T) {
	kills, txns := 5, 3000
	if os.Getenv("TABLECAST_SOAK") != "" {
		kills, txns = 30, 30000
	}
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_crash_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)
	env := []string{
		"TABLECAST_DATABASE_URL=" + url, "TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_SLOT=" + slot,
		"TABLECAST_PUBLICATION=tc_crash", "TABLECAST_HTTP_ADDR=127.0.0.1:0",
		"TABLECAST_SUBJECT_PREFIX=tc", "TABLECAST_LOG_LEVEL=warn",
		// The default duplicate window (1 s), shorter than most of the
		// replays: a kill with batches in flight must be made good by the
		// barrier and the position scan, not by JetStream remembering ids.
		"TABLECAST_DUPLICATE_WINDOW=1s",
	}

	start := func() *exec.Cmd {
		cmd := exec.Command(binary(t), "cdc")
		cmd.Env = append(baseEnv(), env...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	reader := start()
	t.Cleanup(func() {
		_ = reader.Process.Signal(syscall.SIGTERM)
		_ = reader.Wait()
	})

	waitSlotActive(t, conn, slot)
	// The tables are empty, but a kill before the initial snapshot is
	// marked done would have the next reader drop the slot and take the
	// snapshot again, with the rows committed by then as op "read": by
	// design at least once (cdc's TestInterruptedSnapshotIsRedone), not
	// what this test counts. Its kills start once the snapshot is done.
	waitFor(t, time.Minute, "the reader's initial snapshot to be marked done", func() bool {
		return snapshotMarked(n, "done")
	})

	// The load: one connection, so commit order is the order we record.
	type change struct {
		op string
		id int
	}
	var (
		mu        sync.Mutex
		committed = map[string][]change{}
		loadErr   error
		loadDone  = make(chan struct{})
	)
	go func() {
		defer close(loadDone)
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(1, 2))
		next := map[string]int{"a": 0, "b": 0}
		for i := 0; i < txns; i++ {
			tx, err := conn.Begin(ctx)
			if err != nil {
				loadErr = err
				return
			}
			var pending []struct {
				table string
				c     change
			}
			for j := 0; j < 1+rng.IntN(4); j++ {
				table := []string{"a", "b"}[rng.IntN(2)]
				if next[table] > 0 && rng.IntN(4) == 0 {
					id := 1 + rng.IntN(next[table])
					if _, err := tx.Exec(ctx, "UPDATE "+table+" SET v = v WHERE id = $1", id); err != nil {
						loadErr = err
						return
					}
					pending = append(pending, struct {
						table string
						c     change
					}{table, change{"update", id}})
					continue
				}
				next[table]++
				if _, err := tx.Exec(ctx, "INSERT INTO "+table+" VALUES ($1, $2)", next[table], strconv.Itoa(i)); err != nil {
					loadErr = err
					return
				}
				pending = append(pending, struct {
					table string
					c     change
				}{table, change{"create", next[table]}})
			}
			if rng.IntN(10) == 0 {
				if err := tx.Rollback(ctx); err != nil {
					loadErr = err
					return
				}
				// ids of a rolled-back insert are reused by the next one
				for _, p := range pending {
					if p.c.op == "create" {
						next[p.table]--
					}
				}
				continue
			}
			if err := tx.Commit(ctx); err != nil {
				loadErr = err
				return
			}
			mu.Lock()
			for _, p := range pending {
				committed[p.table] = append(committed[p.table], p.c)
			}
			mu.Unlock()
		}
	}()

	rng := rand.New(rand.NewPCG(3, 4))
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(150+rng.IntN(700)) * time.Millisecond)
		if err := reader.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", k, err)
		}
		_ = reader.Wait()
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		reader = start()
	}
	<-loadDone
	if loadErr != nil {
		t.Fatalf("load: %v", loadErr)
	}

	want := 0
	for _, cs := range committed {
		want += len(cs)
	}
	waitFor(t, 3*time.Minute, fmt.Sprintf("%d events in the stream", want), func() bool {
		got := n.count(t)
		if got > uint64(want) {
			t.Fatalf("stream holds %d events, more than the %d committed", got, want)
		}
		return got == uint64(want)
	})
	time.Sleep(time.Second) // anything extra (a duplicate) would arrive now
	evs := n.events(t)
	if len(evs) != want {
		t.Fatalf("stream holds %d events, want exactly %d (duplicates or losses)", len(evs), want)
	}
	got := map[string][]change{}
	ids := map[string]bool{}
	for _, e := range evs {
		id := e["id"].(string)
		if ids[id] {
			t.Fatalf("event id %s delivered twice", id)
		}
		ids[id] = true
		row := e["data"].(map[string]any)
		got[e["table"].(string)] = append(got[e["table"].(string)], change{e["op"].(string), int(row["id"].(float64))})
	}
	for table, cs := range committed {
		g := got[table]
		for i := range cs {
			if i >= len(g) || g[i] != cs[i] {
				t.Fatalf("table %s: change %d is %v, want %v (commit order broken, or lost)", table, i, at(g, i), cs[i])
			}
		}
	}
	t.Logf("%d kills, %d transactions, %d events: all exactly once, in commit order", kills, txns, want)
}

func at[T any](s []T, i int) any {
	if i < len(s) {
		return s[i]
	}
	return "nothing"
}

// snapshotMarked says whether a reader's initial snapshot marker (in the
// state bucket) says state; the test's NATS serves one reader.
func snapshotMarked(n *natsServer, state string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := n.JS.KeyValue(ctx, stream.StateBucket)
	if err != nil {
		return false
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return false
	}
	for key := range keys.Keys() {
		if !strings.HasPrefix(key, "snapshot.") {
			continue
		}
		if e, err := kv.Get(ctx, key); err == nil && string(e.Value()) == state {
			return true
		}
	}
	return false
}
