package cdc

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

var (
	idRE   = regexp.MustCompile(`^[0-9A-F]{16}-[0-9A-F]{4,}$`)
	lsnRE  = regexp.MustCompile(`^[0-9A-F]+/[0-9A-F]+$`)
	timeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$`)
)

const twoTables = `
CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, total numeric(10,2), paid boolean, meta jsonb);
CREATE TABLE "Customer Notes" (id int PRIMARY KEY, "Note" text);`

// TestStreamsChanges: inserts, updates, deletes and a truncate in two tables
// reach their subjects with the contract's envelope; a rolled-back
// transaction produces nothing.
func TestStreamsChanges(t *testing.T) {
	db := newTestDB(t, twoTables)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	waitFor(t, 10*time.Second, "streaming", func() bool { return r.Health().Streaming })

	db.exec(t, `INSERT INTO orders VALUES (1, 'open', 19.90, false, '{"a":[1,2]}'), (2, 'open', 5, NULL, NULL)`)
	db.exec(t, `BEGIN; INSERT INTO orders VALUES (3, 'never', 1, true, NULL); ROLLBACK`)
	db.exec(t, `UPDATE orders SET status = 'paid', paid = true WHERE id = 1`)
	db.exec(t, `INSERT INTO "Customer Notes" VALUES (7, 'hello "world"')`)
	db.exec(t, `DELETE FROM orders WHERE id = 2`)
	db.exec(t, `TRUNCATE "Customer Notes"`)

	evs := n.readAll(t, 6, 15*time.Second)
	time.Sleep(300 * time.Millisecond) // a rolled-back insert would have come by now
	if extra := n.fetch(t); len(extra) != 6 {
		t.Fatalf("stream holds %d events, want 6 (the rolled-back insert must not appear)", len(extra))
	}

	type want struct {
		subject, op, table string
		key, data, old     string
	}
	wants := []want{
		{"tc." + db.name + ".public.orders.create", "create", "orders", `{"id":1}`, `{"id":1,"meta":{"a":[1,2]},"paid":false,"status":"open","total":"19.90"}`, ``},
		{"tc." + db.name + ".public.orders.create", "create", "orders", `{"id":2}`, `{"id":2,"meta":null,"paid":null,"status":"open","total":"5.00"}`, ``},
		{"tc." + db.name + ".public.orders.update", "update", "orders", `{"id":1}`, `{"id":1,"meta":{"a":[1,2]},"paid":true,"status":"paid","total":"19.90"}`, ``},
		{"tc." + db.name + ".public.Customer%20Notes.create", "create", "Customer Notes", `{"id":7}`, `{"Note":"hello \"world\"","id":7}`, ``},
		{"tc." + db.name + ".public.orders.delete", "delete", "orders", `{"id":2}`, ``, `{"id":2}`},
		{"tc." + db.name + ".public.Customer%20Notes.truncate", "truncate", "Customer Notes", `{}`, ``, ``},
	}
	seen := map[string]bool{}
	for i, w := range wants {
		e := evs[i]
		if e.Subject != w.subject || e.Op != w.op || e.Table != w.table || e.Schema != "public" || e.DB != db.name {
			t.Errorf("event %d: subject %s op %s table %s.%s db %s; want %s %s public.%s %s", i, e.Subject, e.Op, e.Schema, e.Table, e.DB, w.subject, w.op, w.table, db.name)
		}
		if !idRE.MatchString(e.ID) || !lsnRE.MatchString(e.LSN) || !timeRE.MatchString(e.CommitTime) || e.XID == 0 {
			t.Errorf("event %d: malformed id %q lsn %q commit_time %q xid %d", i, e.ID, e.LSN, e.CommitTime, e.XID)
		}
		if e.Header["Nats-Msg-Id"] != e.ID {
			t.Errorf("event %d: Nats-Msg-Id %q, want the event id %q", i, e.Header["Nats-Msg-Id"], e.ID)
		}
		if seen[e.ID] {
			t.Errorf("event %d: id %s repeats", i, e.ID)
		}
		seen[e.ID] = true
		lsn, err := pglogrepl.ParseLSN(e.LSN)
		if err != nil || !strings.HasPrefix(e.ID, fmt.Sprintf("%016X-", uint64(lsn))) {
			t.Errorf("event %d: id %s does not start with its commit LSN %s", i, e.ID, e.LSN)
		}
		assertJSON(t, fmt.Sprintf("event %d key", i), e.Key, w.key)
		assertJSON(t, fmt.Sprintf("event %d data", i), e.Data, w.data)
		assertJSON(t, fmt.Sprintf("event %d old", i), e.Old, w.old)
	}
	// The two rows of one INSERT share a commit LSN and get ordinals 1, 2.
	if evs[0].ID[:17] != evs[1].ID[:17] || !strings.HasSuffix(evs[0].ID, "-0001") || !strings.HasSuffix(evs[1].ID, "-0002") {
		t.Errorf("multi-row insert ids %s, %s: want one commit LSN, ordinals 0001 and 0002", evs[0].ID, evs[1].ID)
	}
}

// assertJSON compares a decoded object with a JSON literal ("" means absent).
func assertJSON(t *testing.T, what string, got map[string]any, want string) {
	t.Helper()
	if want == "" {
		if got != nil {
			t.Errorf("%s: %v, want absent", what, got)
		}
		return
	}
	var w map[string]any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad literal %s: %v", want, err)
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Errorf("%s = %s, want %s", what, gb, wb)
	}
}

// TestReplicaIdentityFullAndToast: under REPLICA IDENTITY FULL the old row
// is sent whole; an unchanged TOASTed column is listed in "unchanged" and
// left out of "data", never null.
func TestReplicaIdentityFullAndToast(t *testing.T) {
	db := newTestDB(t,
		`CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`,
		`ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL`,
		`CREATE TABLE full_docs (id int PRIMARY KEY, title text)`,
		`ALTER TABLE full_docs REPLICA IDENTITY FULL`)
	n := startNATS(t)
	startReader(t, db.config(), n)

	big := strings.Repeat("x", 100_000)
	db.exec(t, `INSERT INTO docs VALUES (1, 'a', $1)`, big)
	db.exec(t, `UPDATE docs SET title = 'b' WHERE id = 1`)
	db.exec(t, `INSERT INTO full_docs VALUES (1, 'a')`)
	db.exec(t, `UPDATE full_docs SET title = 'b' WHERE id = 1`)
	db.exec(t, `DELETE FROM full_docs WHERE id = 1`)

	evs := n.readAll(t, 5, 15*time.Second)
	up := evs[1]
	if _, ok := up.Data["body"]; ok {
		t.Errorf("update data carries body %v; an unchanged TOASTed value must be absent", up.Data["body"] != nil)
	}
	if len(up.Unchanged) != 1 || up.Unchanged[0] != "body" || up.Data["title"] != "b" {
		t.Errorf("update: unchanged %v data %v, want unchanged [body], title b", up.Unchanged, up.Data)
	}
	if evs[0].Data["body"] != big {
		t.Errorf("insert body has %d bytes, want %d", len(fmt.Sprint(evs[0].Data["body"])), len(big))
	}
	assertJSON(t, "full update old", evs[3].Old, `{"id":1,"title":"a"}`)
	assertJSON(t, "full update data", evs[3].Data, `{"id":1,"title":"b"}`)
	assertJSON(t, "full delete old", evs[4].Old, `{"id":1,"title":"b"}`)
	assertJSON(t, "full delete key", evs[4].Key, `{"id":1}`)
}

// TestLargeTransaction: a 70,000-row transaction arrives whole, in order,
// each change with its own id.
func TestLargeTransaction(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, label text)`)
	n := startNATS(t)
	startReader(t, db.config(), n)

	// More rows than four hex digits of ordinal count (65,535), so that the
	// ids past them are checked (they widen, "at least 4 hex digits"), and
	// several times the reader's 8,192 events in flight; more rows add
	// only time.
	const rows = 70_000
	db.exec(t, `INSERT INTO items SELECT g, 'item-' || g FROM generate_series(1, $1) g`, rows)
	evs := n.readAll(t, rows, 3*time.Minute)
	if len(evs) != rows {
		t.Fatalf("got %d events, want %d", len(evs), rows)
	}
	commit := evs[0].ID[:16]
	for i, e := range evs {
		if id := e.Data["id"].(float64); int(id) != i+1 {
			t.Fatalf("event %d carries row %v: out of order", i, id)
		}
		if want := fmt.Sprintf("%s-%04X", commit, i+1); e.ID != want {
			t.Fatalf("event %d id %s, want %s", i, e.ID, want)
		}
	}
}

// TestCopyKeepsDistinctIDs: COPY writes many rows in one command; each gets
// its own id.
func TestCopyKeepsDistinctIDs(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, label text)`)
	n := startNATS(t)
	startReader(t, db.config(), n)

	rows := [][]any{}
	for i := 1; i <= 500; i++ {
		rows = append(rows, []any{i, fmt.Sprint("row ", i)})
	}
	if _, err := db.conn.CopyFrom(context.Background(), []string{"items"}, []string{"id", "label"}, pgx.CopyFromRows(rows)); err != nil {
		t.Fatalf("copy: %v", err)
	}
	evs := n.readAll(t, 500, 30*time.Second)
	ids := map[string]bool{}
	for _, e := range evs {
		ids[e.ID] = true
	}
	if len(ids) != 500 || len(evs) != 500 {
		t.Fatalf("%d events with %d distinct ids, want 500 and 500", len(evs), len(ids))
	}
}

// TestResumesFromSlotPosition: a restarted reader continues exactly where
// the slot says: what was committed while it was away arrives, and what
// the slot was advanced past (by a DBA, say) does not.
func TestResumesFromSlotPosition(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	db.exec(t, `INSERT INTO items VALUES (1)`)
	n.readAll(t, 1, 15*time.Second)
	waitFor(t, 10*time.Second, "slot to confirm the first insert", func() bool {
		return r.Health().AckedLSN != "0/0" && db.slotLSN(t) == r.Health().AckedLSN
	})
	r.stop(t)
	// PostgreSQL releases the slot once its walsender has seen the reader go.
	waitFor(t, 10*time.Second, "the slot to be released", func() bool {
		var active bool
		_ = db.conn.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, db.slot).Scan(&active)
		return !active
	})

	// Row 2 is skipped by a DBA advancing the slot past it. The advance
	// stops at the WAL flush position, so commit row 2 synchronously.
	db.exec(t, `SET synchronous_commit = on`)
	db.exec(t, `INSERT INTO items VALUES (2)`)
	var skipTo string
	if err := db.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&skipTo); err != nil {
		t.Fatal(err)
	}
	db.exec(t, `SELECT pg_replication_slot_advance($1, $2::pg_lsn)`, db.slot, skipTo)
	if got := db.slotLSN(t); got != skipTo {
		t.Fatalf("slot advanced to %s, want %s", got, skipTo)
	}
	db.exec(t, `INSERT INTO items VALUES (3)`)

	r2 := startReader(t, db.config(), n)
	n.readAll(t, 2, 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	evs := n.fetch(t)
	var got []float64
	for _, e := range evs {
		got = append(got, e.Data["id"].(float64))
	}
	if fmt.Sprint(got) != "[1 3]" {
		t.Fatalf("rows %v reached the stream, want [1 3]: row 2 lies before the slot's position", got)
	}
	if !r2.log.contains("from=" + skipTo) {
		t.Errorf("restarted reader did not start from the slot's confirmed_flush_lsn %s", skipTo)
	}
}

// TestSlotInUse: when another process holds the slot, the reader says so
// and retries, then streams once the slot is free; it never hangs.
func TestSlotInUse(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	first := startReader(t, db.config(), n) // creates publication and slot
	waitFor(t, 10*time.Second, "streaming", func() bool { return first.Health().Streaming })
	first.stop(t)

	holder, err := connectReplication(context.Background(), db.url)
	if err != nil {
		t.Fatal(err)
	}
	if err := pglogrepl.StartReplication(context.Background(), holder, db.slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'tc_pub'"},
	}); err != nil {
		t.Fatalf("hold slot: %v", err)
	}
	r := launchReader(t, db.config(), n)
	waitFor(t, 10*time.Second, "a log line saying the slot is in use", func() bool {
		return r.log.contains("replication slot is in use by another process")
	})
	if r.Health().Streaming {
		t.Fatal("reader claims to stream while another process holds the slot")
	}
	holder.Close(context.Background())

	db.exec(t, `INSERT INTO items VALUES (1)`)
	evs := n.readAll(t, 1, 20*time.Second)
	if evs[0].Data["id"].(float64) != 1 {
		t.Fatalf("unexpected event %s", evs[0].Raw)
	}
}

// TestNATSOutage: NATS goes away while changes are committed and comes back;
// nothing is lost, nothing repeated, order kept.
func TestNATSOutage(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	r := startReader(t, cfg, n)
	db.exec(t, `INSERT INTO items SELECT generate_series(1, 100)`)
	n.readAll(t, 100, 15*time.Second)

	n.Stop()
	for i := 101; i <= 300; i++ {
		db.exec(t, `INSERT INTO items VALUES ($1)`, i)
	}
	// With nothing in flight the publisher waits for NATS to come back;
	// with events in flight it fails and the session restarts from the
	// slot. Either way nothing may be lost.
	_ = r
	n.Restart()

	evs := n.readAll(t, 300, 60*time.Second)
	time.Sleep(500 * time.Millisecond)
	evs = n.fetch(t)
	assertExactlyInOrder(t, evs, 300)
}

// TestPostgresRestart: PostgreSQL restarts under a running reader, which
// reconnects by itself and loses nothing.
func TestPostgresRestart(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	db.exec(t, `INSERT INTO items SELECT generate_series(1, 50)`)
	n.readAll(t, 50, 15*time.Second)

	c := pgtestCluster(t)
	if err := c.Restart(context.Background()); err != nil {
		t.Fatalf("restart PostgreSQL: %v", err)
	}
	db.reconnect(t)
	db.exec(t, `INSERT INTO items SELECT generate_series(51, 100)`)
	evs := n.readAll(t, 100, 60*time.Second)
	assertExactlyInOrder(t, evs, 100)
	waitFor(t, 20*time.Second, "streaming again", func() bool { return r.Health().Streaming })
	if !r.log.contains("replication session ended") {
		t.Error("no log line about the lost session")
	}
}

// assertExactlyInOrder checks that evs are rows id 1..n of one table, each
// once, in commit order.
func assertExactlyInOrder(t *testing.T, evs []event, n int) {
	t.Helper()
	if len(evs) != n {
		t.Fatalf("stream holds %d events, want %d exactly", len(evs), n)
	}
	for i, e := range evs {
		if id := int(e.Data["id"].(float64)); id != i+1 {
			t.Fatalf("event %d is row %d: lost, repeated or out of order", i, id)
		}
	}
}

// TestHealthCatchesStalledPublishing: with NATS gone, WAL grows while the
// slot stands still: /healthz must turn unhealthy, and healthy again once
// publishing resumes.
func TestHealthCatchesStalledPublishing(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, pad text)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.StallAfter, cfg.StallLagBytes = 2*time.Second, 64<<10
	r := startReader(t, cfg, n)
	waitFor(t, 10*time.Second, "healthy and streaming", func() bool { h := r.Health(); return h.Healthy && h.Streaming })

	n.Stop()
	db.exec(t, `INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g`)
	waitFor(t, 20*time.Second, "unhealthy", func() bool { return !r.Health().Healthy })
	h := r.Health()
	if !strings.Contains(strings.Join(h.Reasons, ";"), "stalled") {
		t.Errorf("unhealthy for %v, want a stall reason", h.Reasons)
	}
	n.Restart()
	n.readAll(t, 2000, 60*time.Second)
	waitFor(t, 20*time.Second, "healthy again", func() bool { return r.Health().Healthy })
}

// TestIdleSlotAdvances: WAL from tables outside the publication must not
// pin the slot: the reader confirms the server's position when idle.
func TestIdleSlotAdvances(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE published (id int PRIMARY KEY)`, `CREATE TABLE busy (id int PRIMARY KEY, pad text)`)
	cfg := db.config()
	cfg.Tables = []string{"public.published"}
	n := startNATS(t)
	r := startReader(t, cfg, n)
	waitFor(t, 10*time.Second, "streaming", func() bool { return r.Health().Streaming })
	before := db.slotLSN(t)
	db.exec(t, `INSERT INTO busy SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g`)
	var walNow string
	if err := db.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&walNow); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the slot to move past the unpublished writes", func() bool {
		var past bool
		_ = db.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2`, walNow, db.slot).Scan(&past)
		return past
	})
	if msgs := n.fetch(t); len(msgs) != 0 {
		t.Fatalf("%d events published for a table outside the publication", len(msgs))
	}
	t.Logf("slot moved from %s past %s", before, walNow)
}

// TestConfigErrors: problems retrying cannot fix end Run at once with a
// ConfigError that says what to change.
func TestConfigErrors(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `CREATE ROLE tc_norepl LOGIN`)
	t.Cleanup(func() { _, _ = db.conn.Exec(context.Background(), `DROP ROLE IF EXISTS tc_norepl`) })
	n := startNATS(t)
	noRepl := strings.Replace(db.url, "postgres://postgres@", "postgres://tc_norepl@", 1)
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"missing table", func(c *Config) { c.Tables = []string{"public.items", "public.nope"} }, "do not exist: public.nope"},
		{"role without REPLICATION", func(c *Config) { c.DatabaseURL = noRepl }, "lacks the REPLICATION attribute"},
		{"unreachable database", func(c *Config) { c.DatabaseURL = "postgres://postgres@127.0.0.1:1/x?connect_timeout=2" }, "connect to PostgreSQL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := db.config()
			tt.modify(&cfg)
			r, err := New(cfg, n.NC, n.JS, testPrefix, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = r.Run(ctx)
			if !IsConfigError(err) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Run = %v, want a one-line ConfigError containing %q", err, tt.want)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	_, err := Config{Slot: "Bad-Slot", Tables: []string{"*", "public.x", "nodot"}, RetryMin: time.Minute, RetryMax: time.Second}.withDefaults()
	for _, want := range []string{"DatabaseURL: is empty", "Slot: ", `"*" cannot be combined`, `table "nodot": want schema.table`, "retry backoff"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validation error %v does not mention %q", err, want)
		}
	}
	// The library speaks of its Config fields; the command line names its
	// environment variables (SettingName).
	if err != nil && strings.Contains(err.Error(), "TABLECAST_") {
		t.Errorf("validation error %v names environment variables", err)
	}
	named := Config{SettingName: func(f string) string { return "SETTING_" + f }}
	if got := named.setting("Slot"); got != "SETTING_Slot" {
		t.Errorf("setting(Slot) = %q with a SettingName", got)
	}
}
