package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestDoctorCommand: doctor exits 0 when nothing fails (warnings
// included), 1 when something does, 2 on a usage error, and prints the fix
// under each finding that is not ok.
func TestDoctorCommand(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	const slot, role = "tc_cmd_doctor", "tc_cmd_doctor_norepl"
	for _, sql := range []string{
		`CREATE TABLE orders (id int PRIMARY KEY, status text)`,
		`CREATE TABLE events (at timestamptz, body text)`,
		`CREATE PUBLICATION tc_doctor FOR TABLE orders`,
		`SELECT pg_create_logical_replication_slot('` + slot + `', 'pgoutput')`,
		`DROP ROLE IF EXISTS ` + role,
		`CREATE ROLE ` + role + ` LOGIN`,
	} {
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	dropSlotAtCleanup(t, url, slot)
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `DROP ROLE IF EXISTS `+role) })
	env := []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_PUBLICATION=tc_doctor", "TABLECAST_SLOT=" + slot}

	emitMessage := func(t *testing.T, sql string) {
		t.Helper()
		for _, sig := range []string{"boolean, text, text", "boolean, text, bytea"} {
			if _, err := conn.Exec(context.Background(), fmt.Sprintf(sql, sig)); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("healthy", func(t *testing.T) {
		// Healthy includes that only the roles granted it may write
		// custom-topic messages.
		emitMessage(t, `REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(%s) FROM PUBLIC`)
		defer emitMessage(t, `GRANT EXECUTE ON FUNCTION pg_logical_emit_message(%s) TO PUBLIC`)
		code, out, stderr := runBinary(t, time.Minute, env, "doctor")
		if code != 0 {
			t.Fatalf("exit %d, want 0\n%s%s", code, out, stderr)
		}
		for _, want := range []string{"ok    wal_level", "ok    role", "ok    table public.orders", "ok    slot ", "0 warn, 0 fail"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "fix:") {
			t.Errorf("a fix without a problem:\n%s", out)
		}
	})

	t.Run("warnings", func(t *testing.T) {
		// PostgreSQL's default: every role may write custom-topic messages.
		code, out, stderr := runBinary(t, time.Minute, env, "doctor")
		if code != 0 {
			t.Fatalf("exit %d, want 0 for warnings alone\n%s%s", code, out, stderr)
		}
		want := regexp.MustCompile(`(?m)^warn  topic writers +PUBLIC \(every role\) may execute .*\n` +
			`      fix: REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message\(boolean,text,bytea\) FROM PUBLIC;`)
		if !want.MatchString(out) {
			t.Errorf("output does not match %s:\n%s", want, out)
		}
	})

	// A publication that makes PostgreSQL refuse the application's writes
	// fails, whoever made it.
	t.Run("writes refused", func(t *testing.T) {
		if _, err := conn.Exec(context.Background(), `ALTER PUBLICATION tc_doctor ADD TABLE events`); err != nil {
			t.Fatal(err)
		}
		defer conn.Exec(context.Background(), `ALTER PUBLICATION tc_doctor DROP TABLE events`)
		code, out, stderr := runBinary(t, time.Minute, env, "doctor")
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, out, stderr)
		}
		want := regexp.MustCompile(`(?m)^fail  table public.events +all columns, all rows, no key: no primary key and REPLICA IDENTITY DEFAULT: .*\n` +
			`      fix: ALTER TABLE "public"."events" REPLICA IDENTITY FULL;`)
		if !want.MatchString(out) {
			t.Errorf("output does not match %s:\n%s", want, out)
		}
	})

	t.Run("failing", func(t *testing.T) {
		bad := []string{"TABLECAST_DATABASE_URL=" + strings.Replace(url, "postgres://postgres@", "postgres://"+role+"@", 1),
			"TABLECAST_PUBLICATION=tc_doctor", "TABLECAST_SLOT=" + slot}
		code, out, stderr := runBinary(t, time.Minute, bad, "doctor")
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, out, stderr)
		}
		want := regexp.MustCompile(`(?m)^fail  role +` + role + ` has neither REPLICATION nor superuser.*\n      fix: ALTER ROLE "` + role + `" REPLICATION;$`)
		if !want.MatchString(out) || !strings.Contains(out, "1 fail") {
			t.Errorf("output does not match %s and say 1 fail:\n%s", want, out)
		}
		if last := lastLine(stderr); !strings.HasPrefix(last, "tablecast: doctor: 1 of ") {
			t.Errorf("last line of stderr %q", last)
		}
	})

	t.Run("usage", func(t *testing.T) {
		if code, _, stderr := runBinary(t, time.Minute, env, "doctor", "now"); code != 2 {
			t.Errorf("doctor now: exit %d, want 2\n%s", code, stderr)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		code, _, stderr := runBinary(t, time.Minute, []string{"TABLECAST_DATABASE_URL=postgres://postgres@127.0.0.1:1/x"}, "doctor")
		if last := lastLine(stderr); code != 1 || !strings.Contains(last, "doctor: connect to PostgreSQL") {
			t.Errorf("exit %d, last line %q; want 1 and the connection error", code, last)
		}
	})
}

// holdSlot holds slot as a reader would, on a replication connection, and
// returns the pid of the walsender holding it.
func holdSlot(t *testing.T, url, slot, publication string) int {
	t.Helper()
	pc, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pc.RuntimeParams["replication"] = "database"
	pc.RuntimeParams["application_name"] = "slot-holder"
	holder, err := pgconn.ConnectConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Close(context.Background()) })
	if err := pglogrepl.StartReplication(context.Background(), holder, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'"},
	}); err != nil {
		t.Fatalf("hold slot: %v", err)
	}
	return int(holder.PID())
}

// TestSlotCommands: slot status prints the slot or says it is missing;
// slot drop refuses a held slot and names the holder, and --force
// terminates the holder and drops it.
func TestSlotCommands(t *testing.T) {
	c := pgtestRequire(t)
	name, url := c.CreateDatabase(t)
	conn := connect(t, url)
	const slot = "tc_cmd_slot"
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION tc_slot FOR TABLE items`); err != nil {
		t.Fatal(err)
	}
	dropSlotAtCleanup(t, url, slot)
	env := []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_SLOT=" + slot}
	createSlot := func(t *testing.T) {
		t.Helper()
		if _, err := conn.Exec(context.Background(), `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
			t.Fatal(err)
		}
	}
	slotExists := func(t *testing.T) bool {
		t.Helper()
		var n int
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	field := func(out, key string) string { // the value of "key   value"
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + `\s{2,}(.*)$`).FindStringSubmatch(out)
		if m == nil {
			return ""
		}
		return m[1]
	}

	t.Run("missing", func(t *testing.T) {
		for _, args := range [][]string{{"slot", "status"}, {"slot", "drop"}} {
			code, _, stderr := runBinary(t, time.Minute, env, args...)
			if last := lastLine(stderr); code != 1 || !strings.Contains(last, `replication slot "tc_cmd_slot" does not exist`) {
				t.Errorf("%v: exit %d, last line %q; want 1 and that the slot does not exist", args, code, last)
			}
		}
	})

	t.Run("status", func(t *testing.T) {
		createSlot(t)
		code, out, stderr := runBinary(t, time.Minute, env, "slot", "status")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		for key, want := range map[string]string{"slot": slot, "plugin": "pgoutput", "database": name, "active": "no", "wal_status": "reserved",
			"safe_wal_size": "unlimited (max_slot_wal_keep_size = -1)"} {
			if got := field(out, key); got != want {
				t.Errorf("%s: %q, want %q\n%s", key, got, want, out)
			}
		}
		for _, key := range []string{"restart_lsn", "confirmed_flush_lsn"} {
			if !regexp.MustCompile(`^[0-9A-F]+/[0-9A-F]+$`).MatchString(field(out, key)) {
				t.Errorf("%s: %q is not an LSN\n%s", key, field(out, key), out)
			}
		}
		if !regexp.MustCompile(`^\d+ bytes`).MatchString(field(out, "lag")) {
			t.Errorf("lag: %q\n%s", field(out, "lag"), out)
		}
	})

	t.Run("drop held", func(t *testing.T) {
		pid := holdSlot(t, url, slot, "tc_slot")
		waitFor(t, 10*time.Second, "the slot to be active", func() bool {
			_, out, _ := runBinary(t, time.Minute, env, "slot", "status")
			return field(out, "active") == fmt.Sprintf("yes, pid %d", pid)
		})

		code, _, stderr := runBinary(t, time.Minute, env, "slot", "drop")
		last := lastLine(stderr)
		if code != 1 || !strings.Contains(last, fmt.Sprintf(`replication slot "tc_cmd_slot" is active, held by pid %d (slot-holder)`, pid)) || !strings.Contains(last, "--force") {
			t.Fatalf("exit %d, last line %q; want 1, the holder's pid and a word on --force", code, last)
		}
		if !slotExists(t) {
			t.Fatal("a refused drop dropped the slot")
		}

		code, out, stderr := runBinary(t, time.Minute, env, "slot", "drop", "--force")
		if code != 0 {
			t.Fatalf("drop --force: exit %d\n%s", code, stderr)
		}
		for _, want := range []string{fmt.Sprintf("terminated pid %d, which held replication slot %s\n", pid, slot), "dropped replication slot " + slot + " (database " + name} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if slotExists(t) {
			t.Error("slot still exists after drop --force")
		}
	})

	t.Run("drop inactive", func(t *testing.T) {
		createSlot(t)
		code, out, stderr := runBinary(t, time.Minute, env, "slot", "drop")
		if code != 0 || !strings.HasPrefix(out, "dropped replication slot "+slot) || strings.Contains(out, "terminated") {
			t.Fatalf("exit %d, output %q\n%s", code, out, stderr)
		}
		if slotExists(t) {
			t.Error("slot still exists after drop")
		}
	})

	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{{"slot"}, {"slot", "frob"}, {"slot", "status", "extra"}, {"slot", "drop", "--nope"}, {"slot", "status", "--force"}} {
			if code, _, stderr := runBinary(t, time.Minute, env, args...); code != 2 {
				t.Errorf("%v: exit %d, want 2\n%s", args, code, stderr)
			}
		}
	})
}
