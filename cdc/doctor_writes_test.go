package cdc

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

// TestDoctorAllTablesBreaksWrites: an existing FOR ALL TABLES publication
// with a keyless table fails (PostgreSQL refuses the application's writes
// now), and so does a partitioned table with a partition without a replica
// identity; the fix replaces the publication with one tablecast manages,
// after which nothing fails and the keyless table takes writes again.
func TestDoctorAllTablesBreaksWrites(t *testing.T) {
	db := newTestDB(t,
		`CREATE TABLE orders (id int PRIMARY KEY)`,
		`CREATE TABLE log (line text)`,
		`CREATE TABLE m (id int, at date) PARTITION BY RANGE (at)`,
		`CREATE TABLE m2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`,
		`INSERT INTO m VALUES (1, '2025-06-01')`,
		`ALTER TABLE m REPLICA IDENTITY FULL`, // not handed down to m2025
		`CREATE PUBLICATION tc_pub FOR ALL TABLES WITH (publish_via_partition_root = true)`)
	createSlot(t, db)
	fs := doctorFindings(t, db.config())
	if !Failed(fs) {
		t.Error("not Failed")
	}
	pub := expect(t, fs, "publication", StatusFail, "tc_pub: FOR ALL TABLES (3 tables), publishes insert, update, delete, truncate, publish_via_partition_root = true: PostgreSQL refuses UPDATE and DELETE on 2 of its tables",
		`BEGIN; DROP PUBLICATION "tc_pub"; CREATE PUBLICATION "tc_pub" FOR TABLE ONLY "public"."orders" WITH (publish_via_partition_root = true); COMMENT ON PUBLICATION "tc_pub" IS 'managed by tablecast`)
	expect(t, fs, "table public.log", StatusFail, "no primary key and REPLICA IDENTITY DEFAULT: PostgreSQL refuses UPDATE and DELETE on it", `ALTER TABLE "public"."log" REPLICA IDENTITY FULL;`)
	expect(t, fs, "table public.m", StatusFail, "partition public.m2025: no primary key and REPLICA IDENTITY DEFAULT: PostgreSQL refuses UPDATE and DELETE on those partitions",
		`ALTER TABLE "public"."m2025" REPLICA IDENTITY FULL;`)
	for _, sql := range []string{`UPDATE log SET line = line`, `UPDATE m SET id = id`} {
		if _, err := db.conn.Exec(context.Background(), sql); err == nil {
			t.Errorf("%s: accepted; the failure says PostgreSQL refuses it", sql)
		}
	}

	replace, _, _ := strings.Cut(pub.Fix, " -- ")
	db.exec(t, replace)
	fs = doctorFindings(t, db.config())
	if Failed(fs) {
		t.Errorf("still failing after the fix")
	}
	expect(t, fs, "publication", StatusOK, "tc_pub: 1 table, publishes insert, update, delete, truncate, publish_via_partition_root = true, managed by tablecast", "")
	expect(t, fs, "table public.log", StatusWarn, "left out of the publication: no primary key and REPLICA IDENTITY DEFAULT", `ALTER TABLE "public"."log" REPLICA IDENTITY FULL;`)
	expect(t, fs, "table public.m", StatusWarn, "left out of the publication: partition public.m2025: no primary key", `ALTER TABLE "public"."m2025" REPLICA IDENTITY FULL;`)
	db.exec(t, `UPDATE log SET line = line`)
	db.exec(t, `UPDATE m SET id = id`)

	// Tables a running reader would add are named as such.
	db.exec(t, `ALTER TABLE m2025 REPLICA IDENTITY FULL`)
	fs = doctorFindings(t, db.config())
	expect(t, fs, "table public.m", StatusOK, "not in the publication yet: the reader adds it", "")
}

// TestDoctorExplicitTablesWithoutKey: a table in TABLECAST_TABLES that
// cannot publish its updates and deletes fails: the reader would not start.
func TestDoctorExplicitTablesWithoutKey(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `CREATE TABLE nokey (v int)`)
	cfg := db.config()
	cfg.Tables = []string{"public.items", "public.nokey"}
	fs := doctorFindings(t, cfg)
	expect(t, fs, "table public.nokey", StatusFail, "in Tables, but no primary key and REPLICA IDENTITY DEFAULT", `ALTER TABLE "public"."nokey" REPLICA IDENTITY FULL;`)
	expect(t, fs, "table public.items", StatusOK, "key: primary key (id)", "")
}

// TestDoctorTopicWriters: PostgreSQL lets every role execute
// pg_logical_emit_message, so every role can publish custom-topic
// messages: a warning, whose fix leaves it to the roles the DBA accepts.
// The reader's own role needs it (heartbeats, watermarks): without it, a
// failure.
func TestDoctorTopicWriters(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `CREATE PUBLICATION tc_pub FOR TABLE items`)
	cfg := db.config()

	fs := doctorFindings(t, cfg)
	expect(t, fs, "emit message", StatusOK, "role postgres may execute pg_logical_emit_message(boolean,text,text)", "")
	writers := expect(t, fs, "topic writers", StatusWarn,
		"PUBLIC (every role) may execute pg_logical_emit_message(boolean,text,bytea) and pg_logical_emit_message(boolean,text,text), so can publish custom-topic messages",
		"REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean,text,bytea) FROM PUBLIC; REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean,text,text) FROM PUBLIC;")
	if Failed(fs) {
		t.Error("Failed on a warning")
	}

	// The fix: the REVOKEs (the rest is a comment for the DBA).
	revoke, _, _ := strings.Cut(writers.Fix, " -- ")
	db.exec(t, revoke)
	fs = doctorFindings(t, cfg)
	expect(t, fs, "topic writers", StatusOK, "only superusers may execute pg_logical_emit_message", "")
	forger := newRole(t, db, "tc_doctor_forger")
	if _, err := forger.Exec(context.Background(), `SELECT pg_logical_emit_message(true, 'tablecast:chat', '{}')`); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("a role without the grant emits: %v", err)
	}

	// A role the DBA grants it to is named, unless accepted.
	db.exec(t, `DROP ROLE IF EXISTS tc_doctor_outbox`)
	db.exec(t, `CREATE ROLE tc_doctor_outbox`)
	t.Cleanup(func() {
		db.exec(t, `REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM tc_doctor_outbox`)
		db.exec(t, `DROP ROLE tc_doctor_outbox`)
	})
	db.exec(t, `GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO tc_doctor_outbox`)
	fs = doctorFindings(t, cfg)
	expect(t, fs, "topic writers", StatusWarn, "roles tc_doctor_outbox may execute pg_logical_emit_message(boolean,text,text)",
		`REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean,text,text) FROM "tc_doctor_outbox";`)
	cfg.TopicRoles = []string{"tc_doctor_outbox"}
	fs = doctorFindings(t, cfg)
	expect(t, fs, "topic writers", StatusOK, "only superusers and the accepted roles tc_doctor_outbox may execute", "")

	// tablecast's own role, not a superuser, without the grant.
	db.exec(t, `DROP ROLE IF EXISTS tc_doctor_reader`)
	db.exec(t, `CREATE ROLE tc_doctor_reader LOGIN REPLICATION`)
	t.Cleanup(func() {
		db.exec(t, `REVOKE ALL ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM tc_doctor_reader`)
		db.exec(t, `DROP ROLE tc_doctor_reader`)
	})
	rcfg := cfg
	rcfg.DatabaseURL = strings.Replace(db.url, "postgres://postgres@", "postgres://tc_doctor_reader@", 1)
	fs = doctorFindings(t, rcfg)
	own := expect(t, fs, "emit message", StatusFail, "role tc_doctor_reader may not execute pg_logical_emit_message(boolean,text,text): the reader writes its heartbeats, snapshot watermarks, table additions, renames and drops with it",
		`GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean,text,text) TO "tc_doctor_reader";`)
	db.exec(t, own.Fix)
	fs = doctorFindings(t, rcfg)
	expect(t, fs, "emit message", StatusOK, "role tc_doctor_reader may execute", "")
	expect(t, fs, "topic writers", StatusOK, "only tc_doctor_reader, superusers and the accepted roles tc_doctor_outbox may execute", "")
}

// TestDoctorCoverWithoutUpdatePrivilege: for a role that may not update a
// table, so that PostgreSQL cannot be asked by planning an UPDATE, a column
// list or row filter that leaves out the replica identity still fails,
// judged from the catalog, with the fix; one that covers it passes. It
// passed with a note, while PostgreSQL refused the application's writes.
func TestDoctorCoverWithoutUpdatePrivilege(t *testing.T) {
	db := newTestDB(t,
		`CREATE TABLE listed (id int PRIMARY KEY, v int, w int)`,
		`CREATE TABLE filtered (id int PRIMARY KEY, v int)`,
		`CREATE TABLE fullrow (id int, v int)`,
		`ALTER TABLE fullrow REPLICA IDENTITY FULL`,
		`CREATE TABLE covered (id int PRIMARY KEY, v int, secret text)`,
		`CREATE PUBLICATION tc_pub FOR TABLE listed (v, w), filtered WHERE (v > 0), fullrow (id, v), covered (id, v) WHERE (id > 0)`)
	_, cfg := replicationRole(t, db, "tc_doc_ro_", `GRANT SELECT ON ALL TABLES IN SCHEMA public TO %s`)
	createSlot(t, db)
	fs := doctorFindings(t, cfg)
	if !Failed(fs) {
		t.Error("writes refused, yet not Failed")
	}
	expect(t, fs, "table public.listed", StatusFail, "its column list in the publication leaves out replica identity column(s) id",
		`BEGIN; ALTER PUBLICATION "tc_pub" DROP TABLE "public"."listed"; ALTER PUBLICATION "tc_pub" ADD TABLE "public"."listed" ("v", "w", "id"); COMMIT;`)
	expect(t, fs, "table public.filtered", StatusFail, "its row filter in the publication reads column(s) v, not part of the replica identity",
		`ALTER TABLE "public"."filtered" REPLICA IDENTITY FULL;`)
	expect(t, fs, "table public.fullrow", StatusFail, "REPLICA IDENTITY FULL admits no column list", "")
	expect(t, fs, "table public.covered", StatusOK, "the catalog shows them covering it", "")
	// True: PostgreSQL refuses these; and the fixes fix them.
	for _, sql := range []string{`UPDATE listed SET v = v`, `UPDATE filtered SET v = v`, `UPDATE fullrow SET v = v`} {
		if _, err := db.conn.Exec(context.Background(), sql); err == nil || !strings.Contains(err.Error(), "cannot update") {
			t.Errorf("%s: got %v, want PostgreSQL to refuse it", sql, err)
		}
	}
	db.exec(t, `UPDATE covered SET v = v`)
	// covered keeps its column list and row filter through the fixes.
	var list, filter string
	if err := db.conn.QueryRow(context.Background(), `SELECT prattrs::text, pg_get_expr(prqual, prrelid) FROM pg_publication_rel WHERE prrelid = 'covered'::regclass`).Scan(&list, &filter); err != nil {
		t.Fatal(err)
	}
	defer func() {
		var list2, filter2 string
		if err := db.conn.QueryRow(context.Background(), `SELECT prattrs::text, pg_get_expr(prqual, prrelid) FROM pg_publication_rel WHERE prrelid = 'covered'::regclass`).Scan(&list2, &filter2); err != nil || list2 != list || filter2 != filter {
			t.Errorf("covered's entry after the fixes: %q %q, %v; want %q %q", list2, filter2, err, list, filter)
		}
	}()
	for _, check := range []string{"table public.listed", "table public.filtered", "table public.fullrow"} {
		db.exec(t, finding(t, fs, check).Fix)
	}
	for _, sql := range []string{`UPDATE listed SET v = v`, `UPDATE filtered SET v = v`, `UPDATE fullrow SET v = v`} {
		db.exec(t, sql)
	}
}

// TestDoctorTableNotReadable: a published table the reader's role may not
// SELECT fails before the first run (its initial snapshot would fail, and
// the reader could not start), with the GRANT that fixes it; doctor passed
// it, and the reader then retried without end.
func TestDoctorTableNotReadable(t *testing.T) {
	db := newTestDB(t,
		`CREATE TABLE open (id int PRIMARY KEY)`,
		`CREATE TABLE closed (id int PRIMARY KEY)`,
		`CREATE PUBLICATION tc_pub FOR TABLE open, closed`)
	role, cfg := replicationRole(t, db, "tc_doc_nr_", `GRANT SELECT ON open TO %s`)
	fs := doctorFindings(t, cfg)
	f := expect(t, fs, "table public.closed (read)", StatusFail, "may not SELECT it: the initial snapshot fails", `GRANT SELECT ON "public"."closed" TO "`+role+`";`)
	for _, f := range fs {
		if f.Check == "table public.open (read)" {
			t.Errorf("a readable table is reported: %+v", f)
		}
	}
	db.exec(t, f.Fix)
	for _, f := range doctorFindings(t, cfg) {
		if strings.HasSuffix(f.Check, "(read)") {
			t.Errorf("after the GRANT: %+v", f)
		}
	}
}

// replicationRole creates a login role with REPLICATION, named after the
// test database's slot with prefix, granted the statements' privileges
// (each with %s for the role), and dropped when the test ends; it returns
// the role and a config of db that connects as it.
func replicationRole(t *testing.T, db *testDB, prefix string, grants ...string) (string, Config) {
	t.Helper()
	role := prefix + strings.TrimPrefix(db.slot, "tc_slot_")
	db.exec(t, fmt.Sprintf(`CREATE ROLE %s LOGIN REPLICATION`, role))
	t.Cleanup(func() {
		_, _ = db.conn.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %s`, role))
		_, _ = db.conn.Exec(context.Background(), fmt.Sprintf(`DROP ROLE %s`, role))
	})
	for _, g := range grants {
		db.exec(t, fmt.Sprintf(g, role))
	}
	u, err := url.Parse(db.url)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	cfg := db.config()
	cfg.DatabaseURL = u.String()
	return role, cfg
}
