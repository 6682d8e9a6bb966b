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

// TestKeylessTableInTablesExits: TABLECAST_TABLES naming a table whose
// UPDATE and DELETE PostgreSQL would refuse once published ends the
// process at start, naming the variable, the table and the SQL that fixes
// it; the application's writes are untouched.
func TestKeylessTableInTablesExits(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE audit (at timestamptz, what text)`); err != nil {
		t.Fatal(err)
	}
	n := startNATS(t)
	env := []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_HTTP_ADDR=127.0.0.1:0",
		"TABLECAST_SLOT=tc_cmd_keyless", "TABLECAST_PUBLICATION=tc_cmd_keyless", "TABLECAST_TABLES=public.items,public.audit"}
	dropSlotAtCleanup(t, url, "tc_cmd_keyless")
	code, _, stderr := runBinary(t, time.Minute, env, "cdc")
	last := lastLine(stderr)
	if code == 0 || !strings.HasPrefix(last, "tablecast: TABLECAST_TABLES: ") ||
		!strings.Contains(last, `public.audit: no primary key and REPLICA IDENTITY DEFAULT; fix: ALTER TABLE "public"."audit" REPLICA IDENTITY FULL;`) {
		t.Fatalf("exit %d, last line %q; want non-zero, TABLECAST_TABLES, the table and its fix", code, last)
	}
	if _, err := conn.Exec(context.Background(), `UPDATE audit SET what = what`); err != nil {
		t.Fatalf("the application's writes: %v", err)
	}
}

// TestSnapshotCommandOverNATS: `tablecast snapshot` needs NATS, not the
// database: it asks the running reader, which answers (queued with an id,
// or why not); with no reader streaming it says so and exits non-zero.
func TestSnapshotCommandOverNATS(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 5)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_snapnats_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)
	// The command's environment: NATS, the slot and the prefix; no database.
	cli := []string{"TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_SLOT=" + slot, "TABLECAST_SUBJECT_PREFIX=tcnats"}

	code, _, stderr := runBinary(t, time.Minute, cli, "snapshot", "public.items")
	if last := lastLine(stderr); code != 1 || !strings.Contains(last, "no reader answered the snapshot request: nothing listens on _TABLECAST.tcnats."+slot+".snapshot") ||
		!strings.Contains(last, "is tablecast run or tablecast cdc streaming") {
		t.Fatalf("no reader: exit %d, last line %q", code, last)
	}

	reader := exec.Command(binary(t), "cdc")
	reader.Env = append(baseEnv(), append(cli, "TABLECAST_DATABASE_URL="+url, "TABLECAST_HTTP_ADDR=127.0.0.1:0",
		"TABLECAST_PUBLICATION=tc_snapnats", "TABLECAST_SNAPSHOT=never", "TABLECAST_LOG_LEVEL=warn")...)
	reader.Stderr = os.Stderr
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reader.Process.Signal(syscall.SIGTERM); _ = reader.Wait() })
	var out string
	waitFor(t, time.Minute, "the reader to answer", func() bool {
		code, out, stderr = runBinary(t, time.Minute, cli, "snapshot", "public.items")
		return code == 0
	})
	if !strings.HasPrefix(out, "requested a snapshot of public.items (id ") {
		t.Fatalf("snapshot: out %q, stderr %q", out, stderr)
	}
	waitFor(t, time.Minute, "5 read events", func() bool { return n.count(t) == 5 })
	for _, e := range n.events(t) {
		if e["op"] != "read" {
			t.Fatalf("event %v, want op read", e)
		}
	}
	// The reader refuses a table it does not stream (exit 1); a name that
	// is no table is a usage error, as for tail (exit 2).
	for _, tt := range []struct {
		table, want string
		code        int
	}{
		{"public.missing", "table public.missing is not in publication tc_snapnats: there is no such table", 1},
		{"nodot", "want schema.table", 2},
	} {
		code, _, stderr := runBinary(t, time.Minute, cli, "snapshot", tt.table)
		if last := lastLine(stderr); code != tt.code || !strings.Contains(last, tt.want) {
			t.Errorf("snapshot %s: exit %d, last line %q; want %d and %q", tt.table, code, last, tt.code, tt.want)
		}
	}
	// Nothing of the requests is in the stream.
	if got := n.count(t); got != 5 {
		t.Errorf("stream holds %d messages, want the 5 reads", got)
	}
}
