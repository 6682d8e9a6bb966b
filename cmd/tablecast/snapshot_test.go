package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSnapshotCommand: `tablecast snapshot schema.table` makes a running
// reader (started with TABLECAST_SNAPSHOT=never) publish the table's rows
// as op read; bad tables get a clear refusal.
func TestSnapshotCommand(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 10) g; CREATE TABLE nokey (v int)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_snapcmd_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)
	env := []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_SLOT=" + slot,
		"TABLECAST_PUBLICATION=tc_snapcmd", "TABLECAST_HTTP_ADDR=127.0.0.1:0", "TABLECAST_SNAPSHOT=never", "TABLECAST_LOG_LEVEL=warn"}
	reader := exec.Command(binary(t), "cdc")
	reader.Env = append(baseEnv(), env...)
	reader.Stderr = os.Stderr
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reader.Process.Signal(syscall.SIGTERM); _ = reader.Wait() })
	waitSlotActive(t, conn, slot)
	if n.count(t) != 0 {
		t.Fatalf("TABLECAST_SNAPSHOT=never published %d rows", n.count(t))
	}

	code, out, stderr := runBinary(t, time.Minute, env, "snapshot", "public.items")
	if code != 0 || !strings.Contains(out, "requested a snapshot of public.items") {
		t.Fatalf("snapshot: exit %d, out %q, stderr %q", code, out, stderr)
	}
	waitFor(t, time.Minute, "10 read events", func() bool { return n.count(t) == 10 })
	for i, e := range n.events(t) {
		if e["op"] != "read" || e["data"].(map[string]any)["id"] != float64(i+1) {
			t.Fatalf("event %d: %v, want row %d read", i, e, i+1)
		}
	}

	code, _, stderr = runBinary(t, time.Minute, env, "snapshot", "public.nokey")
	if code == 0 || !strings.Contains(lastLine(stderr), "has no primary key") {
		t.Fatalf("snapshot of a table without a key: exit %d, %q", code, stderr)
	}
}

// TestClientArgumentsCheckedBeforeNATS: a mistyped argument of snapshot or
// tail is a usage error at once (exit 2), not a wait for a NATS that is not
// there followed by an error about the connection.
func TestClientArgumentsCheckedBeforeNATS(t *testing.T) {
	env := []string{"TABLECAST_NATS_URL=nats://" + freeAddr(t)} // nothing listens
	for _, args := range [][]string{{"snapshot", "-x"}, {"snapshot", "public."}, {"tail", "-n", "-5"}} {
		code, _, stderr := runBinary(t, 5*time.Second, env, args...)
		if last := lastLine(stderr); code != 2 || !strings.HasPrefix(last, "tablecast: ") || strings.Contains(stderr, "NATS") {
			t.Errorf("tablecast %q: exit %d, stderr %q; want 2 and the reason, before any NATS", args, code, stderr)
		}
	}
	code, out, _ := runBinary(t, 5*time.Second, env, "snapshot", "--help")
	if code != 0 || !strings.Contains(out, "usage: tablecast snapshot schema.table") {
		t.Errorf("tablecast snapshot --help: exit %d, stdout %q; want 0 and the usage", code, out)
	}
}
