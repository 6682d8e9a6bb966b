package cdc

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/internal/pgtest"
)

// doctorFindings runs Doctor and fails the test on an error.
func doctorFindings(t *testing.T, cfg Config) []Finding {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fs, err := Doctor(ctx, cfg)
	if err != nil {
		t.Fatalf("doctor: %v", err)
	}
	if testing.Verbose() {
		for _, f := range fs {
			t.Logf("%-4s %s: %s | %s", f.Status, f.Check, f.Detail, f.Fix)
		}
	}
	return fs
}

// finding returns the finding of check, failing the test when there is none.
func finding(t *testing.T, fs []Finding, check string) Finding {
	t.Helper()
	for _, f := range fs {
		if f.Check == check {
			return f
		}
	}
	t.Fatalf("no finding for %q in %v", check, fs)
	return Finding{}
}

// expect checks a finding's status and that its detail and fix hold the
// given strings.
func expect(t *testing.T, fs []Finding, check, status, detail, fix string) Finding {
	t.Helper()
	f := finding(t, fs, check)
	if f.Status != status || !strings.Contains(f.Detail, detail) || !strings.Contains(f.Fix, fix) {
		t.Errorf("%s: got %s %q, fix %q; want %s with %q, fix with %q", check, f.Status, f.Detail, f.Fix, status, detail, fix)
	}
	if f.Status != StatusOK && f.Fix == "" {
		t.Errorf("%s: %s without a fix", check, f.Status)
	}
	return f
}

func createSlot(t *testing.T, db *testDB) {
	t.Helper()
	db.exec(t, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, db.slot)
}

// revokeEmitMessage is what a DBA runs so that only the roles it grants
// it to may write custom-topic messages (per database).
var revokeEmitMessage = []string{
	`REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC`,
	`REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, bytea) FROM PUBLIC`,
}

// TestDoctorHealthy: a database ready for tablecast gives nothing but ok.
// (Ready includes that not every role may write custom-topic messages.)
func TestDoctorHealthy(t *testing.T) {
	db := newTestDB(t, append(revokeEmitMessage,
		`CREATE TABLE orders (id int PRIMARY KEY, status text)`,
		`CREATE TABLE lines (order_id int, n int, PRIMARY KEY (order_id, n))`,
		`CREATE PUBLICATION tc_pub FOR TABLE orders, lines WITH (publish_via_partition_root = true)`)...)
	createSlot(t, db)
	fs := doctorFindings(t, db.config())
	for _, f := range fs {
		if f.Status != StatusOK {
			t.Errorf("%s: %s %q (fix %q), want ok", f.Check, f.Status, f.Detail, f.Fix)
		}
	}
	if Failed(fs) {
		t.Error("Failed reports a failure")
	}
	expect(t, fs, "wal_level", StatusOK, "logical", "")
	expect(t, fs, "role", StatusOK, "superuser", "")
	expect(t, fs, "publication", StatusOK, "tc_pub: 2 tables, publishes insert, update, delete, truncate, publish_via_partition_root = true", "")
	expect(t, fs, "table public.orders", StatusOK, "all columns, all rows, key: primary key (id)", "")
	// Deletes carry only the key: the doctor says which table a row policy
	// on another column needs REPLICA IDENTITY FULL for.
	expect(t, fs, "table public.orders", StatusOK, `deletes carry only the key, so the gateway withholds them from subscriptions whose row policy reads another column (ALTER TABLE "public"."orders" REPLICA IDENTITY FULL`, "")
	expect(t, fs, "table public.lines", StatusOK, "key: primary key (order_id, n)", "")
	expect(t, fs, "slot", StatusOK, db.slot+": pgoutput in database "+db.name+", inactive", "")
	expect(t, fs, "slot WAL", StatusOK, "max_slot_wal_keep_size unlimited, wal_status reserved", "")
}

// TestDoctorReplicaIdentity: tables of a publication whose updates and
// deletes PostgreSQL refuses fail (the application's writes fail now),
// each with SQL that fixes it, and that SQL does.
func TestDoctorReplicaIdentity(t *testing.T) {
	db := newTestDB(t,
		`CREATE TABLE nopk (a int, b text)`,
		`CREATE TABLE nothing (id int PRIMARY KEY, b text)`,
		`ALTER TABLE nothing REPLICA IDENTITY NOTHING`,
		`CREATE TABLE "Mixed Case" (a int)`,
		`CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text, tenant int)`,
		`CREATE TABLE flagged (id int PRIMARY KEY, name text, active bool)`,
		`CREATE TABLE fullrow (id int PRIMARY KEY, a text, secret text)`,
		`ALTER TABLE fullrow REPLICA IDENTITY FULL`,
		`CREATE TABLE keyless_list (id int PRIMARY KEY, a text, b text)`,
		`CREATE PUBLICATION tc_pub FOR TABLE nopk, nothing, "Mixed Case",
			users (id, email, tenant) WHERE (id > 0), flagged WHERE (active), fullrow (id, a), keyless_list (a, b) WHERE (id > 0)`)
	createSlot(t, db)
	fs := doctorFindings(t, db.config())
	if !Failed(fs) {
		t.Errorf("writes refused, yet not Failed")
	}

	nopk := expect(t, fs, "table public.nopk", StatusFail, "no primary key and REPLICA IDENTITY DEFAULT", `ALTER TABLE "public"."nopk" REPLICA IDENTITY FULL;`)
	nothing := expect(t, fs, "table public.nothing", StatusFail, "REPLICA IDENTITY NOTHING", `ALTER TABLE "public"."nothing" REPLICA IDENTITY FULL;`)
	mixed := expect(t, fs, "table public.Mixed Case", StatusFail, "no primary key", `ALTER TABLE "public"."Mixed Case" REPLICA IDENTITY FULL;`)
	expect(t, fs, "table public.users", StatusOK, "columns id, email, tenant (withheld: password_hash), rows WHERE (id > 0), key: primary key (id)", "")
	expect(t, fs, "table public.flagged", StatusFail, "Column used in the publication WHERE expression is not part of the replica identity", `ALTER TABLE "public"."flagged" REPLICA IDENTITY FULL;`)
	// Under REPLICA IDENTITY FULL, PostgreSQL 15 admits no column list.
	fullrow := expect(t, fs, "table public.fullrow", StatusFail, "Column list used by the publication does not cover the replica identity",
		`ALTER TABLE "public"."fullrow" REPLICA IDENTITY DEFAULT;`)
	keyless := expect(t, fs, "table public.keyless_list", StatusFail, "Column list used by the publication does not cover the replica identity",
		`BEGIN; ALTER PUBLICATION "tc_pub" DROP TABLE "public"."keyless_list"; ALTER PUBLICATION "tc_pub" ADD TABLE "public"."keyless_list" ("a", "b", "id") WHERE ((id > 0)); COMMIT;`)

	// The warnings are true: PostgreSQL refuses these updates.
	for _, sql := range []string{`UPDATE nopk SET b = b`, `DELETE FROM nothing`, `UPDATE flagged SET name = name`, `UPDATE fullrow SET a = a`, `DELETE FROM keyless_list`} {
		if _, err := db.conn.Exec(context.Background(), sql); err == nil || !strings.Contains(err.Error(), "cannot") {
			t.Errorf("%s: got %v, want PostgreSQL to refuse it", sql, err)
		}
	}
	// And the fixes fix them.
	for _, f := range []Finding{nopk, nothing, mixed, fullrow, keyless, finding(t, fs, "table public.flagged")} {
		db.exec(t, f.Fix)
	}
	fs = doctorFindings(t, db.config())
	for _, check := range []string{"table public.nopk", "table public.nothing", "table public.Mixed Case", "table public.flagged", "table public.fullrow", "table public.keyless_list"} {
		expect(t, fs, check, StatusOK, "", "")
	}
	expect(t, fs, "table public.keyless_list", StatusOK, "all columns, rows WHERE (id > 0), key: primary key (id)", "")
	for _, sql := range []string{`UPDATE nopk SET b = b`, `DELETE FROM nothing`, `UPDATE flagged SET name = name`, `UPDATE fullrow SET a = a`, `DELETE FROM keyless_list`} {
		db.exec(t, sql)
	}
}

// TestDoctorNoPublicationNoSlot: a database tablecast has not run against
// yet is told what the first run will create, and what stands in its way.
func TestDoctorNoPublicationNoSlot(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`, `CREATE TABLE log (line text)`)
	t.Run("all tables", func(t *testing.T) {
		fs := doctorFindings(t, db.config())
		if Failed(fs) {
			t.Errorf("a superuser gets the publication created; nothing should fail")
		}
		// Never FOR ALL TABLES: FOR TABLE those that can publish their
		// updates and deletes, and marked as tablecast's.
		expect(t, fs, "publication", StatusWarn, `will be created on first run, FOR TABLE "public"."orders" (1 left out, below), managed by tablecast`,
			`CREATE PUBLICATION "tc_pub" FOR TABLE ONLY "public"."orders" WITH (publish_via_partition_root = true); COMMENT ON PUBLICATION "tc_pub" IS 'managed by tablecast`)
		expect(t, fs, "slot", StatusWarn, "does not exist",
			fmt.Sprintf("SELECT pg_create_logical_replication_slot('%s', 'pgoutput');", db.slot))
		// The tables it would cover are judged already.
		expect(t, fs, "table public.orders", StatusOK, "key: primary key (id)", "")
		expect(t, fs, "table public.log", StatusWarn, "no primary key", `ALTER TABLE "public"."log" REPLICA IDENTITY FULL;`)
	})
	t.Run("named tables", func(t *testing.T) {
		cfg := db.config()
		cfg.Tables = []string{"public.orders"}
		fs := doctorFindings(t, cfg)
		expect(t, fs, "publication", StatusWarn, `will be created on first run, FOR TABLE "public"."orders"`,
			`CREATE PUBLICATION "tc_pub" FOR TABLE ONLY "public"."orders" WITH (publish_via_partition_root = true);`)
		for _, f := range fs {
			if f.Check == "table public.log" {
				t.Errorf("public.log is not in TABLECAST_TABLES, yet judged: %+v", f)
			}
		}
	})
	t.Run("missing table", func(t *testing.T) {
		cfg := db.config()
		cfg.Tables = []string{"public.orders", "public.nope"}
		fs := doctorFindings(t, cfg)
		expect(t, fs, "publication", StatusFail, "do not exist: public.nope", "set Tables to existing tables")
	})
}

// TestDoctorRoleWithoutReplication: a role that may not replicate fails,
// and the fix is the ALTER ROLE that grants it.
func TestDoctorRoleWithoutReplication(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `CREATE PUBLICATION tc_pub FOR TABLE items`,
		`DROP ROLE IF EXISTS tc_doctor_norepl`, `CREATE ROLE tc_doctor_norepl LOGIN`, `GRANT SELECT ON items TO tc_doctor_norepl`)
	t.Cleanup(func() {
		_, _ = db.conn.Exec(context.Background(), `REVOKE ALL ON items FROM tc_doctor_norepl`)
		c, err := pgx.Connect(context.Background(), pgtestCluster(t).URL("postgres"))
		if err == nil {
			_, _ = c.Exec(context.Background(), `DROP ROLE IF EXISTS tc_doctor_norepl`)
			c.Close(context.Background())
		}
	})
	cfg := db.config()
	cfg.DatabaseURL = strings.Replace(db.url, "postgres://postgres@", "postgres://tc_doctor_norepl@", 1)
	fs := doctorFindings(t, cfg)
	role := expect(t, fs, "role", StatusFail, "tc_doctor_norepl has neither REPLICATION nor superuser", `ALTER ROLE "tc_doctor_norepl" REPLICATION;`)
	if !Failed(fs) {
		t.Error("Failed reports no failure")
	}
	db.exec(t, role.Fix)
	fs = doctorFindings(t, cfg)
	expect(t, fs, "role", StatusOK, "tc_doctor_norepl has REPLICATION", "")
	if Failed(fs) {
		t.Errorf("still failing after the fix: %v", fs)
	}
}

// TestDoctorSlotNotOurs: a slot of another plugin or another database
// cannot be used, and says so.
func TestDoctorSlotNotOurs(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `CREATE PUBLICATION tc_pub FOR TABLE items`)
	other := newTestDB(t)
	other.slot = db.slot // the name is cluster-wide
	t.Run("other database", func(t *testing.T) {
		createSlot(t, other)
		defer other.exec(t, `SELECT pg_drop_replication_slot($1)`, other.slot)
		fs := doctorFindings(t, db.config())
		expect(t, fs, "slot", StatusFail, fmt.Sprintf("belongs to database %s, not %s", other.name, db.name), "set Slot to another name")
	})
	t.Run("other plugin", func(t *testing.T) {
		if _, err := db.conn.Exec(context.Background(), `SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, db.slot); err != nil {
			t.Skipf("no test_decoding plugin: %v", err)
		}
		fs := doctorFindings(t, db.config())
		expect(t, fs, "slot", StatusFail, "uses plugin test_decoding, not pgoutput", fmt.Sprintf("SELECT pg_drop_replication_slot('%s');", db.slot))
	})
}

// TestDoctorServerSettings: wal_level replica fails, and so do settings
// that leave no WAL sender, while no free slot warns; on a cluster of the
// test's own since they take a restart.
func TestDoctorServerSettings(t *testing.T) {
	c := pgtest.New(t)
	for _, sql := range []string{`ALTER SYSTEM SET wal_level = replica`, `ALTER SYSTEM SET max_replication_slots = 1`, `ALTER SYSTEM SET max_wal_senders = 0`} {
		c.Exec(t, c.URL("postgres"), sql)
	}
	if err := c.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, c.URL("postgres"), `SELECT pg_create_physical_replication_slot('tc_doctor_other')`)
	fs := doctorFindings(t, Config{DatabaseURL: c.URL("postgres"), Slot: "tc_doctor_wal"})
	expect(t, fs, "wal_level", StatusFail, "replica", "ALTER SYSTEM SET wal_level = logical;")
	expect(t, fs, "max_replication_slots", StatusWarn, "1 of 1 in use: none free, so slot tc_doctor_wal cannot be created", "ALTER SYSTEM SET max_replication_slots = 10;")
	expect(t, fs, "max_wal_senders", StatusFail, "0: logical replication needs a WAL sender", "ALTER SYSTEM SET max_wal_senders = 10;")
	if !Failed(fs) {
		t.Error("Failed reports no failure")
	}
}

// TestDoctorLostSlot: a slot PostgreSQL invalidated under
// max_slot_wal_keep_size fails, with the way out.
func TestDoctorLostSlot(t *testing.T) {
	c := pgtest.New(t)
	url := c.URL("postgres")
	conn := c.Connect(t, url)
	ctx := context.Background()
	for _, sql := range []string{
		`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`,
		`SELECT pg_reload_conf()`,
		`CREATE TABLE junk (g int)`,
		`CREATE PUBLICATION tablecast FOR TABLE junk`,
		`SELECT pg_create_logical_replication_slot('tc_doctor_lost', 'pgoutput')`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	cfg := Config{DatabaseURL: url, Slot: "tc_doctor_lost"}
	fs := doctorFindings(t, cfg)
	expect(t, fs, "slot WAL", StatusOK, "max_slot_wal_keep_size 1.0 MiB", "")

	// Leave the slot behind by a few WAL segments, then checkpoint: the
	// checkpoint invalidates it.
	waitFor(t, 30*time.Second, "the slot to be lost", func() bool {
		for _, sql := range []string{`INSERT INTO junk SELECT generate_series(1, 50000)`, `SELECT pg_switch_wal()`, `CHECKPOINT`} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		var status string
		if err := conn.QueryRow(ctx, `SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'tc_doctor_lost'`).Scan(&status); err != nil {
			t.Fatal(err)
		}
		return status == "lost"
	})
	fs = doctorFindings(t, cfg)
	expect(t, fs, "slot WAL", StatusFail, "tc_doctor_lost is lost", "SELECT pg_drop_replication_slot('tc_doctor_lost');")
}

func TestDoctorRetainedThresholds(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		retained, limit int64
		want            string
	}{
		{-1, -1, StatusOK},
		{0, -1, StatusOK},
		{gib, -1, StatusOK},
		{gib + 1, -1, StatusWarn},
		{50, 100, StatusOK},
		{51, 100, StatusWarn},
		{80, 100, StatusWarn},
		{81, 100, StatusFail},
		{10, 0, StatusWarn},
		{8 * gib, 10 * gib, StatusWarn},
		{9 * gib, 10 * gib, StatusFail},
	}
	for _, tt := range tests {
		if got := judgeRetained(tt.retained, tt.limit); got != tt.want {
			t.Errorf("judgeRetained(%d, %d) = %s, want %s", tt.retained, tt.limit, got, tt.want)
		}
	}
}

// TestDoctorPartialPublication: a DBA's publication that leaves out some
// operations streams none of them, which doctor warns of.
func TestDoctorPartialPublication(t *testing.T) {
	db := newTestDB(t, append(revokeEmitMessage,
		`CREATE TABLE orders (id int PRIMARY KEY, status text)`,
		`CREATE PUBLICATION tc_pub FOR TABLE orders WITH (publish = 'insert, update', publish_via_partition_root = true)`)...)
	createSlot(t, db)
	fs := doctorFindings(t, db.config())
	expect(t, fs, "publication", StatusWarn, "publishes insert, update, publish_via_partition_root = true: no event is sent for a delete, truncate",
		`ALTER PUBLICATION "tc_pub" SET (publish = 'insert, update, delete, truncate');`)
	if Failed(fs) {
		t.Error("Failed: a publication that leaves out operations still works")
	}
}
