package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/natstest"
)

// peakRSS returns a process's peak resident set size (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read the reader's memory: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestSoakBigTransaction: a transaction of 300 MB of small rows streams
// through `tablecast cdc` (reaching a nats-server process by URL, so that
// its memory is the reader's alone) without the reader's memory growing with it: the peak
// after the 300 MB transaction is within 64 MiB of the peak after one of
// 30 MB. A reader that held a transaction's events until its commit would
// grow by hundreds of megabytes. It reports both peaks and the time from
// commit to the last event stored. Long: TABLECAST_SOAK=1 (make soak).
func TestSoakBigTransaction(t *testing.T) {
	if os.Getenv("TABLECAST_SOAK") == "" {
		t.Skip("a 300 MB transaction: set TABLECAST_SOAK=1 (make soak)")
	}
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	execSQL(t, conn, `CREATE TABLE rows (id bigint PRIMARY KEY, pad text)`)
	slot := fmt.Sprintf("tc_soakbig_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	// NATS in a process of its own, not slowed by this test binary's race
	// detector; a duplicate window longer than the run, as in
	// TestCrashSafety, so that a reader restarted mid-transaction (an ack
	// timeout on a loaded machine) replays it without duplicates.
	n := natstest.StartProcess(t)
	env := append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_soakbig", "TABLECAST_HTTP_ADDR="+freeAddr(t), "TABLECAST_SNAPSHOT=never", "TABLECAST_LOG_LEVEL=warn",
		"TABLECAST_DUPLICATE_WINDOW=60m")
	// Without the race detector, whose shadow memory would be measured too.
	_, cmd := startBinary(t, plainBinary(t), env, "cdc")
	waitSlotActive(t, conn, slot)

	const pad = 300 // bytes of text per row
	stored := uint64(0)
	transaction := func(rows int) time.Duration {
		t.Helper()
		first := stored + 1
		execSQL(t, conn, fmt.Sprintf(`INSERT INTO rows SELECT g, repeat('x', %d) FROM generate_series(%d, %d) g`, pad, first, stored+uint64(rows)))
		committed := time.Now()
		stored += uint64(rows)
		waitFor(t, 30*time.Minute, fmt.Sprintf("%d events in the stream", stored), func() bool { return n.Count("TABLECAST") >= stored })
		return time.Since(committed)
	}

	tookSmall := transaction(100_000) // 30 MB
	small := peakRSS(t, cmd.Process.Pid)
	tookBig := transaction(1_000_000) // 300 MB
	big := peakRSS(t, cmd.Process.Pid)
	if got := n.Count("TABLECAST"); got != stored {
		t.Fatalf("stream holds %d events, want %d", got, stored)
	}
	var bytes uint64
	if s, err := n.JS.Stream(context.Background(), "TABLECAST"); err == nil {
		if info, err := s.Info(context.Background()); err == nil {
			bytes = info.State.Bytes
		}
	}
	t.Logf("30 MB transaction: %s commit → last event stored, reader peak RSS %d MiB", tookSmall.Round(time.Millisecond), small>>20)
	t.Logf("300 MB transaction (1,000,000 rows of %d bytes, %d MiB in the stream in all): %s commit → last event stored (%.0f events/s), reader peak RSS %d MiB",
		pad, bytes>>20, tookBig.Round(time.Millisecond), 1e6/tookBig.Seconds(), big>>20)
	if big-small > 64<<20 {
		t.Fatalf("the reader's peak RSS grew from %d MiB to %d MiB with a transaction ten times larger: it holds transactions", small>>20, big>>20)
	}
}
