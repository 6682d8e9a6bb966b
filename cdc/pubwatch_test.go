package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// These tests hold tablecast to one promise: a tool that watches a
// database never makes the application's writes fail. With the default
// TABLECAST_TABLES=*, PostgreSQL must keep accepting UPDATE and DELETE on
// every table, whatever its key, and tables created later are streamed.

// count is how many times s occurs in the log.
func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

// published lists the tables of the publication, as schema.table.
func (d *testDB) published(t testing.TB, publication string) []string {
	t.Helper()
	rows, err := d.conn.Query(context.Background(), `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, publication)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// accepts reports whether PostgreSQL accepts UPDATE and DELETE on table
// now; a refusal other than the one for a missing replica identity fails
// the test.
func (d *testDB) accepts(t testing.TB, table string) bool {
	t.Helper()
	for _, sql := range []string{"UPDATE " + table + " SET " + firstColumn(t, d, table) + " = " + firstColumn(t, d, table), "DELETE FROM " + table + " WHERE false"} {
		_, err := d.conn.Exec(context.Background(), sql)
		if err == nil {
			continue
		}
		if strings.Contains(err.Error(), "does not have a replica identity") || strings.Contains(err.Error(), "cannot update table") ||
			strings.Contains(err.Error(), "cannot delete from table") {
			return false
		}
		t.Fatalf("%s: %v", sql, err)
	}
	return true
}

func firstColumn(t testing.TB, d *testDB, table string) string {
	t.Helper()
	var col string
	if err := d.conn.QueryRow(context.Background(), `SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = $1::regclass AND attnum = 1`, table).Scan(&col); err != nil {
		t.Fatalf("first column of %s: %v", table, err)
	}
	return col
}

// eventsOf returns the events of one table, in stream order.
func eventsOf(t testing.TB, n *natsEnv, table string) []event {
	t.Helper()
	var out []event
	for _, e := range n.fetch(t) {
		if e.Schema+"."+e.Table == table {
			out = append(out, e)
		}
	}
	return out
}

// TestKeylessTablesKeepTheirWrites: with tablecast running on the default
// "*", a table without a key keeps accepting UPDATE and DELETE, and so does
// one created later; each left-out table is named once, with the SQL that
// would include it; the publication is FOR TABLE, not FOR ALL TABLES, and
// marked as tablecast's; extension and unlogged tables stay out.
func TestKeylessTablesKeepTheirWrites(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE orders (id int PRIMARY KEY, status text)`,
		`CREATE TABLE log (line text)`,
		`INSERT INTO log VALUES ('before')`,
		`CREATE TABLE nothing (id int PRIMARY KEY, v text)`,
		`ALTER TABLE nothing REPLICA IDENTITY NOTHING`,
		`CREATE TABLE full_nokey (a int, b text)`,
		`ALTER TABLE full_nokey REPLICA IDENTITY FULL`,
		`CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY)`,
		`CREATE EXTENSION IF NOT EXISTS citext`,
		`CREATE TABLE ext_owned (id int PRIMARY KEY)`,
		`ALTER EXTENSION citext ADD TABLE ext_owned`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)

	for _, table := range []string{"log", "nothing"} {
		if !db.accepts(t, table) {
			t.Errorf("PostgreSQL refuses UPDATE and DELETE on %s while tablecast runs", table)
		}
	}
	db.exec(t, `UPDATE log SET line = 'after'`)
	db.exec(t, `DELETE FROM log`)
	if got, want := db.published(t, "tc_pub"), []string{"public.full_nokey", "public.orders"}; !slices.Equal(got, want) {
		t.Errorf("publication covers %v, want %v", got, want)
	}
	var all bool
	var comment string
	if err := db.conn.QueryRow(context.Background(), `SELECT puballtables, obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'tc_pub'`).Scan(&all, &comment); err != nil {
		t.Fatal(err)
	}
	if all || !strings.HasPrefix(comment, "managed by tablecast") {
		t.Errorf("publication: FOR ALL TABLES %v, comment %q; want FOR TABLE, managed by tablecast", all, comment)
	}
	for _, want := range []string{
		`table=public.log reason="no primary key and REPLICA IDENTITY DEFAULT" fix="ALTER TABLE \"public\".\"log\" REPLICA IDENTITY FULL;`,
		`table=public.nothing reason="REPLICA IDENTITY NOTHING" fix="ALTER TABLE \"public\".\"nothing\" REPLICA IDENTITY FULL; -- or REPLICA IDENTITY DEFAULT, to use its primary key"`,
	} {
		if !r.log.contains(want) {
			t.Errorf("the log does not say %s", want)
		}
	}

	// Tables created later: the keyed one is streamed, the keyless one
	// left out and its writes accepted.
	db.exec(t, `CREATE TABLE late_log (line text)`)
	db.exec(t, `CREATE TABLE late_keyed (id int PRIMARY KEY)`)
	waitFor(t, 30*time.Second, "late_keyed in the publication", func() bool { return slices.Contains(db.published(t, "tc_pub"), "public.late_keyed") })
	db.exec(t, `INSERT INTO late_log VALUES ('x')`)
	if !db.accepts(t, "late_log") {
		t.Fatal("PostgreSQL refuses UPDATE and DELETE on a keyless table created while tablecast runs")
	}
	db.exec(t, `INSERT INTO late_keyed VALUES (1)`)
	// (Its catch-up snapshot may read the row too: op read, after the create.)
	waitFor(t, 20*time.Second, "the insert into late_keyed", func() bool {
		return slices.ContainsFunc(eventsOf(t, n, "public.late_keyed"), func(e event) bool { return e.Op == "create" })
	})
	waitFor(t, 10*time.Second, "late_log named as left out", func() bool { return r.log.contains(`table=public.late_log reason=`) })
	// Rounds went by since: each table is named once, not every round.
	for _, table := range []string{"public.log", "public.nothing", "public.late_log"} {
		if c := r.log.count(`msg="table left out of the publication" component=cdc slot=` + db.slot + ` table=` + table + ` `); c != 1 {
			t.Errorf("%s named as left out %d times, want once", table, c)
		}
	}
	for _, e := range n.fetch(t) {
		if e.Table == "log" || e.Table == "late_log" || e.Table == "ext_owned" || e.Table == "scratch" {
			t.Errorf("event of a table left out: %s", e.Raw)
		}
	}
}

// TestTableCreatedWhileStreaming: a table created while tablecast streams
// is added within seconds, and the rows it had before are sent as op read;
// one without a primary key is streamed from then on, with a warning that
// its earlier rows are not sent.
func TestTableCreatedWhileStreaming(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)

	// Created with its rows in one transaction: they are all there before
	// tablecast can see the table.
	db.exec(t, `BEGIN; CREATE TABLE fresh (id int PRIMARY KEY, v text);
		INSERT INTO fresh SELECT g, 'v' || g FROM generate_series(1, 3000) g; COMMIT`)
	db.exec(t, `BEGIN; CREATE TABLE fresh_full (a int, b text); ALTER TABLE fresh_full REPLICA IDENTITY FULL;
		INSERT INTO fresh_full VALUES (1, 'x'); COMMIT`)
	waitFor(t, 60*time.Second, "the 3000 rows of fresh as op read", func() bool { return len(eventsOf(t, n, "public.fresh")) >= 3000 })
	db.exec(t, `INSERT INTO fresh VALUES (3001, 'new')`)
	db.exec(t, `UPDATE fresh SET v = 'changed' WHERE id = 1`)
	db.exec(t, `INSERT INTO fresh_full VALUES (2, 'y')`)
	waitFor(t, 20*time.Second, "the changes after the reads", func() bool {
		return len(eventsOf(t, n, "public.fresh")) == 3002 && len(eventsOf(t, n, "public.fresh_full")) == 1
	})

	evs := eventsOf(t, n, "public.fresh")
	seen := map[float64]bool{}
	for i, e := range evs[:3000] {
		id := e.Key["id"].(float64)
		if e.Op != "read" || seen[id] || e.Data["v"] != fmt.Sprintf("v%v", id) || !strings.HasSuffix(e.Subject, ".public.fresh.read") {
			t.Fatalf("event %d: %s %s, want a read of a row not sent before", i, e.Subject, e.Raw)
		}
		seen[id] = true
	}
	if evs[3000].Op != "create" || evs[3000].Key["id"] != float64(3001) || evs[3001].Op != "update" || evs[3001].Data["v"] != "changed" {
		t.Errorf("after the reads: %s, %s; want create 3001, update 1", evs[3000].Raw, evs[3001].Raw)
	}
	if e := eventsOf(t, n, "public.fresh_full")[0]; e.Op != "create" || e.Data["a"] != float64(2) {
		t.Errorf("fresh_full: %s, want only the insert made after it was added", e.Raw)
	}
	if !r.log.contains(`table added to the publication without a primary key: its changes are streamed, its rows from before are not sent`) {
		t.Error("no warning that the rows of fresh_full from before are not sent")
	}
	// Subscribers know the table before its first change.
	if _, _, found, err := r.registry.Get(context.Background(), stream.SchemaKey(db.name, "public", "fresh")); err != nil || !found {
		t.Errorf("fresh in the schema registry: %v, %v", found, err)
	}
}

// TestTableAddedWhileStopped: a table created while no reader runs is
// added at the next start, its rows sent as op read.
func TestTableAddedWhileStopped(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`)
	n := startNATS(t)
	startReader(t, db.config(), n).stop(t)
	db.exec(t, `CREATE TABLE fresh (id int PRIMARY KEY)`)
	db.exec(t, `INSERT INTO fresh SELECT generate_series(1, 10)`)
	startReader(t, db.config(), n)
	waitFor(t, 30*time.Second, "10 reads of fresh", func() bool { return len(eventsOf(t, n, "public.fresh")) == 10 })
	for _, e := range eventsOf(t, n, "public.fresh") {
		if e.Op != "read" {
			t.Fatalf("%s, want op read", e.Raw)
		}
	}
}

// TestCatchUpResumedAfterCrash: a catch-up snapshot is recorded before its
// table is added to the publication; one a crashed reader did not finish is
// taken at the next start.
func TestCatchUpResumedAfterCrash(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`)
	n := startNATS(t)
	startReader(t, db.config(), n).stop(t)
	// What a reader that crashed right after adding "fresh" leaves behind.
	db.exec(t, `CREATE TABLE fresh (id int PRIMARY KEY)`)
	db.exec(t, `INSERT INTO fresh SELECT generate_series(1, 5)`)
	db.exec(t, `ALTER PUBLICATION tc_pub ADD TABLE fresh`)
	kv, err := n.JS.KeyValue(context.Background(), stateBucket)
	if err != nil {
		t.Fatal(err)
	}
	key := "catchup." + stream.SchemaKey(db.name, db.slot, "public\x00fresh")
	if _, err := kv.Put(context.Background(), key, []byte(`{"schema":"public","name":"fresh"}`)); err != nil {
		t.Fatal(err)
	}
	r := startReader(t, db.config(), n)
	waitFor(t, 30*time.Second, "5 reads of fresh", func() bool { return len(eventsOf(t, n, "public.fresh")) == 5 })
	waitFor(t, 10*time.Second, "the record cleared", func() bool {
		_, err := kv.Get(context.Background(), key)
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	if !r.log.contains("resuming a catch-up snapshot a previous run did not finish") {
		t.Error("the log does not say the catch-up was resumed")
	}
}

// TestTableLosingItsKey: a table of the managed publication that loses its
// primary key is dropped from it at once, with a warning (PostgreSQL
// refuses its writes meanwhile), and added again once it has a replica
// identity.
func TestTableLosingItsKey(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY, v text)`, `INSERT INTO items VALUES (1, 'a')`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	r := startReader(t, cfg, n)

	db.exec(t, `ALTER TABLE items DROP CONSTRAINT items_pkey`)
	waitFor(t, 30*time.Second, "PostgreSQL to accept UPDATE and DELETE on items again", func() bool { return db.accepts(t, "items") })
	// The warning is logged once the table is dropped, a moment after
	// PostgreSQL accepts the writes.
	waitFor(t, 10*time.Second, "a warning naming the table, the reason and the fix", func() bool {
		return r.log.contains(`msg="table dropped from the publication: PostgreSQL refuses its UPDATE and DELETE while a publication publishes them; it is added again once it has a replica identity" component=cdc slot=` +
			db.slot + ` table=public.items reason="no primary key and REPLICA IDENTITY DEFAULT" fix="ALTER TABLE \"public\".\"items\" REPLICA IDENTITY FULL;`)
	})
	if r.log.contains(`msg="table left out of the publication" component=cdc slot=` + db.slot + ` table=public.items`) {
		t.Error("the dropped table is reported twice")
	}

	db.exec(t, `ALTER TABLE items REPLICA IDENTITY FULL`)
	waitFor(t, 30*time.Second, "items back in the publication", func() bool { return slices.Contains(db.published(t, "tc_pub"), "public.items") })
	db.exec(t, `UPDATE items SET v = 'b'`)
	waitFor(t, 20*time.Second, "the update", func() bool {
		evs := eventsOf(t, n, "public.items")
		return len(evs) == 1 && evs[0].Op == "update" && evs[0].Data["v"] == "b"
	})
}

// TestPartitionWithoutKey: a partitioned table is published only while
// every partition has a replica identity (PostgreSQL checks the
// partition's own, which the partitioned table does not hand down); a new
// partition without one takes the table out, until it gets one.
func TestPartitionWithoutKey(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE m (id int, at date, v int) PARTITION BY RANGE (at)`,
		`CREATE TABLE m2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`,
		`ALTER TABLE m2025 REPLICA IDENTITY FULL`,
		`CREATE TABLE keyed (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)`,
		`CREATE TABLE keyed2025 PARTITION OF keyed FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	if got, want := db.published(t, "tc_pub"), []string{"public.keyed", "public.m"}; !slices.Equal(got, want) {
		t.Fatalf("publication covers %v, want %v", got, want)
	}

	db.exec(t, `CREATE TABLE m2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`)
	db.exec(t, `CREATE TABLE keyed2026 PARTITION OF keyed FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`)
	db.exec(t, `INSERT INTO m VALUES (1, '2026-06-01', 1)`)
	waitFor(t, 30*time.Second, "PostgreSQL to accept UPDATE and DELETE on m2026", func() bool { return db.accepts(t, "m2026") })
	// Logged once the table is dropped, a moment after PostgreSQL accepts
	// the writes.
	waitFor(t, 10*time.Second, "a warning naming the partition and its fix", func() bool {
		return r.log.contains(`table=public.m reason="partition public.m2026: no primary key and REPLICA IDENTITY DEFAULT" fix="ALTER TABLE \"public\".\"m2026\" REPLICA IDENTITY FULL;`)
	})
	if got, want := db.published(t, "tc_pub"), []string{"public.keyed"}; !slices.Equal(got, want) {
		t.Errorf("publication covers %v, want %v (a new partition of a keyed table has the key)", got, want)
	}
	db.exec(t, `ALTER TABLE m2026 REPLICA IDENTITY FULL`)
	waitFor(t, 30*time.Second, "m back in the publication", func() bool { return slices.Contains(db.published(t, "tc_pub"), "public.m") })
	db.exec(t, `UPDATE m SET v = 2`)
	waitFor(t, 20*time.Second, "the update of m", func() bool {
		evs := eventsOf(t, n, "public.m")
		return len(evs) > 0 && evs[len(evs)-1].Op == "update"
	})
}

// TestInheritanceParents: a table with inheritance children is published
// ONLY itself. Its keyless child, which PostgreSQL would refuse UPDATE and
// DELETE on once published, keeps its writes; its snapshot reads its own
// rows, not its children's (each is streamed under its own name, or not at
// all); and a parent created with a keyed child, which is published first,
// is added all the same (ADD TABLE without ONLY took the child along, and
// failed once the child was a member already).
func TestInheritanceParents(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE animals (id int PRIMARY KEY, name text)`,
		`CREATE TABLE dogs (breed text) INHERITS (animals)`,
		`INSERT INTO animals VALUES (1, 'generic')`,
		`INSERT INTO dogs VALUES (2, 'rex', 'lab')`,
		// A partitioned table's rows are its partitions': read FROM it, not
		// FROM ONLY it (which holds none).
		`CREATE TABLE parts (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)`,
		`CREATE TABLE parts2026 PARTITION OF parts FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`,
		`INSERT INTO parts VALUES (7, '2026-03-01'), (8, '2026-04-01')`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	if got, want := db.published(t, "tc_pub"), []string{"public.animals", "public.parts"}; !slices.Equal(got, want) {
		t.Fatalf("publication covers %v, want %v", got, want)
	}
	if !db.accepts(t, "dogs") {
		t.Fatal("PostgreSQL refuses UPDATE and DELETE on a keyless inheritance child while tablecast runs")
	}
	waitFor(t, 30*time.Second, "the snapshot of animals", func() bool { return len(eventsOf(t, n, "public.animals")) > 0 })

	// A parent and its keyed child, created together: the child sorts
	// first, and is published before the parent.
	db.exec(t, `BEGIN; CREATE TABLE pets (id int PRIMARY KEY, v text); CREATE TABLE kid (n int) INHERITS (pets);
		ALTER TABLE kid ADD PRIMARY KEY (id); INSERT INTO pets VALUES (3, 'pet'); INSERT INTO kid VALUES (4, 'kid', 1); COMMIT`)
	waitFor(t, 30*time.Second, "pets and kid in the publication", func() bool {
		got := db.published(t, "tc_pub")
		return slices.Contains(got, "public.pets") && slices.Contains(got, "public.kid")
	})
	db.exec(t, `INSERT INTO pets VALUES (5, 'pet2')`)
	db.exec(t, `INSERT INTO kid VALUES (6, 'kid2', 2)`)
	db.exec(t, `UPDATE dogs SET breed = 'poodle'`)
	ids := func(table string) (out []string) {
		for _, e := range eventsOf(t, n, table) {
			out = append(out, fmt.Sprintf("%s %v", e.Op, e.Key["id"]))
		}
		slices.Sort(out) // a catch-up's reads may come after the changes
		return out
	}
	// Each table's catch-up reads its own rows only (and may read a row
	// inserted after it was added, as op read after the create); the rows
	// of a child come under the child's name.
	has := func(table string, want ...string) bool {
		got := ids(table)
		for _, w := range want {
			if !slices.Contains(got, w) {
				return false
			}
		}
		return true
	}
	waitFor(t, 30*time.Second, "the rows and inserts of pets and kid", func() bool {
		return has("public.pets", "read 3", "create 5") && has("public.kid", "read 4", "create 6")
	})
	for table, others := range map[string][]string{"public.pets": {"4", "6"}, "public.kid": {"3", "5"}} {
		for _, e := range ids(table) {
			if _, id, _ := strings.Cut(e, " "); slices.Contains(others, id) {
				t.Errorf("%s: %v holds %q, a row of the other table", table, ids(table), e)
			}
		}
	}
	if got, want := ids("public.animals"), []string{"read 1"}; !slices.Equal(got, want) {
		t.Errorf("animals: %v, want %v (row 2 is the child dogs', which is not streamed)", got, want)
	}
	if got, want := ids("public.parts"), []string{"read 7", "read 8"}; !slices.Equal(got, want) {
		t.Errorf("parts: %v, want %v (the rows of its partition)", got, want)
	}
	if r.log.contains("cannot alter the publication") {
		t.Error("an ALTER PUBLICATION was refused")
	}
	if evs := eventsOf(t, n, "public.dogs"); len(evs) != 0 {
		t.Errorf("events of dogs, which has no key: %s", evs[0].Raw)
	}
}

// TestExplicitTablesWithoutKey: TABLECAST_TABLES naming a table PostgreSQL
// would refuse UPDATE and DELETE on once published stops the reader at
// start with the SQL that fixes it, and creates nothing.
func TestExplicitTablesWithoutKey(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `CREATE TABLE nokey (v int)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.Tables = []string{"public.items", "public.nokey"}
	r, err := New(cfg, n.NC, n.JS, testPrefix, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = r.Run(ctx)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field() != "Tables" ||
		!strings.Contains(err.Error(), `public.nokey: no primary key and REPLICA IDENTITY DEFAULT; fix: ALTER TABLE "public"."nokey" REPLICA IDENTITY FULL;`) {
		t.Fatalf("Run = %v, want a ConfigError on Tables naming public.nokey and its fix", err)
	}
	var exists bool
	if err := db.conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'tc_pub')`).Scan(&exists); err != nil || exists {
		t.Errorf("publication created: %v, %v", exists, err)
	}
	if !db.accepts(t, "nokey") {
		t.Error("PostgreSQL refuses writes to nokey")
	}
}

// TestDBAPublicationBreakingWrites: a publication tablecast did not create
// is read as it is, never altered, and a FOR ALL TABLES one with a keyless
// table gets an error in the log at start, with the fix.
func TestDBAPublicationBreakingWrites(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`, `CREATE TABLE log (line text)`,
		`CREATE PUBLICATION tc_pub FOR ALL TABLES`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	waitFor(t, 10*time.Second, "the error", func() bool {
		return r.log.contains(`level=ERROR msg="the publication breaks the application's writes`) &&
			r.log.contains(`table=public.log reason="no primary key and REPLICA IDENTITY DEFAULT" fix="ALTER TABLE \"public\".\"log\" REPLICA IDENTITY FULL;`)
	})
	db.exec(t, `CREATE TABLE late (id int PRIMARY KEY)`)
	db.exec(t, `INSERT INTO late VALUES (1)`)
	waitFor(t, 20*time.Second, "the insert into late", func() bool { return len(eventsOf(t, n, "public.late")) == 1 })
	var all bool
	var comment *string
	if err := db.conn.QueryRow(context.Background(), `SELECT puballtables, obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'tc_pub'`).Scan(&all, &comment); err != nil {
		t.Fatal(err)
	}
	if !all || comment != nil {
		t.Errorf("the DBA's publication was altered: FOR ALL TABLES %v, comment %v", all, comment)
	}
	if e := eventsOf(t, n, "public.late")[0]; e.Op != "create" {
		t.Errorf("late: %s, want its insert", e.Raw)
	}
}

// BenchmarkCatalogRound measures what the publication manager costs
// PostgreSQL every CatalogInterval when nothing changed: one catalog query
// over every table, and the plan. 1,000 tables, a tenth without a key, a
// tenth partitioned in 4.
func BenchmarkCatalogRound(b *testing.B) {
	db := newTestDB(b)
	for i := 0; i < 1000; i++ {
		switch {
		case i%10 == 0:
			db.exec(b, fmt.Sprintf(`CREATE TABLE t%d (v int)`, i))
		case i%10 == 1:
			db.exec(b, fmt.Sprintf(`CREATE TABLE t%d (id int, at int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)`, i))
			for p := 0; p < 4; p++ {
				db.exec(b, fmt.Sprintf(`CREATE TABLE t%d_%d PARTITION OF t%d FOR VALUES FROM (%d) TO (%d)`, i, p, i, p*10, p*10+10))
			}
		default:
			db.exec(b, fmt.Sprintf(`CREATE TABLE t%d (id int PRIMARY KEY, v text)`, i))
		}
	}
	ctx := context.Background()
	if err := ensurePublication(ctx, db.conn, Config{Publication: "tc_pub", Tables: []string{"*"}}, "postgres", nil, slog.New(slog.DiscardHandler)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		tables, err := readTables(ctx, db.conn, "tc_pub", scopeAll, nil)
		if err != nil {
			b.Fatal(err)
		}
		if p := planSync("tc_pub", "postgres", tables, nil); len(p.add)+len(p.drop) != 0 || len(p.leftOut) != 100 {
			b.Fatalf("plan: %d to add, %d to drop, %d left out", len(p.add), len(p.drop), len(p.leftOut))
		}
	}
}

// TestCatchUpUnderWrites: a table created while streaming is written to
// without pause from its first moment, through its addition to the
// publication and its catch-up snapshot: replaying its events (reads,
// creates, updates, deletes) rebuilds it exactly, with no read older than a
// change already sent.
func TestCatchUpUnderWrites(t *testing.T) {
	t.Parallel() // see parallelTests

	const rows = 5000 // three chunks
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)

	db.exec(t, fmt.Sprintf(`BEGIN; CREATE TABLE busy (id int PRIMARY KEY, v int NOT NULL);
		INSERT INTO busy SELECT g, 0 FROM generate_series(1, %d) g; COMMIT`, rows))
	writer, err := pgx.Connect(context.Background(), db.url)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(context.Background())
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(7, 8))
		next := rows
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			var sql string
			switch {
			case i%10 == 0:
				sql = fmt.Sprintf(`DELETE FROM busy WHERE id = %d`, 1+rng.IntN(next))
			case i%5 == 0:
				next++
				sql = fmt.Sprintf(`INSERT INTO busy VALUES (%d, 0)`, next)
			default:
				sql = fmt.Sprintf(`UPDATE busy SET v = v + 1 WHERE id = %d`, 1+rng.IntN(next))
			}
			if _, err := writer.Exec(context.Background(), sql); err != nil {
				done <- fmt.Errorf("%s: %w", sql, err)
				return
			}
		}
	}()
	waitFor(t, 60*time.Second, "the catch-up of busy", func() bool {
		return r.log.contains(`msg="catch-up snapshot done" component=cdc slot=` + db.slot + ` table=public.busy`)
	})
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	db.exec(t, `INSERT INTO busy VALUES (-1, -1)`) // marker: the last event
	waitFor(t, 60*time.Second, "the marker row", func() bool {
		evs := eventsOf(t, n, "public.busy")
		return len(evs) > 0 && evs[len(evs)-1].Key["id"] == float64(-1)
	})

	type rowState struct {
		v       float64
		deleted bool
	}
	state := map[float64]*rowState{}
	reads := 0
	for _, e := range eventsOf(t, n, "public.busy") {
		id := e.Key["id"].(float64)
		st := state[id]
		switch e.Op {
		case "read":
			reads++
			if st != nil && (st.deleted || e.Data["v"].(float64) < st.v) {
				t.Fatalf("stale read of row %v: v=%v after the stream had v=%v deleted=%v", id, e.Data["v"], st.v, st.deleted)
			}
			state[id] = &rowState{v: e.Data["v"].(float64)}
		case "create", "update":
			state[id] = &rowState{v: e.Data["v"].(float64)}
		case "delete":
			state[id] = &rowState{deleted: true}
		}
	}
	table := map[float64]float64{}
	rs, err := db.conn.Query(context.Background(), `SELECT id, v FROM busy`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id, v int
		if err := rs.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		table[float64(id)] = float64(v)
	}
	live := 0
	for id, st := range state {
		if st.deleted {
			if _, ok := table[id]; ok {
				t.Errorf("row %v is in the table but the stream ends with its delete", id)
			}
			continue
		}
		live++
		if v, ok := table[id]; !ok || v != st.v {
			t.Errorf("row %v: stream says v=%v, table says %v (present %v)", id, st.v, v, ok)
		}
	}
	if live != len(table) {
		t.Fatalf("stream rebuilds %d rows, the table has %d", live, len(table))
	}
	t.Logf("%d reads; %d rows in the table", reads, len(table))
}

// TestCatchUpFollowsARename: a table filled beforehand and then renamed
// into place (the swap of a new table for an old one), while its catch-up
// snapshot reads it, still has every row it had sent as op read, under
// the name it has now, after any truncate the renames bring.
func TestCatchUpFollowsARename(t *testing.T) {
	t.Parallel() // see parallelTests
	ctx := context.Background()
	db := newTestDB(t, `CREATE TABLE orders (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.CatalogInterval = 200 * time.Millisecond
	r := startReader(t, cfg, n)
	// A transaction open across the catch-up's low watermark makes its
	// first chunk wait until it ends; it renames the table meanwhile.
	renamer, err := pgx.Connect(ctx, db.url)
	if err != nil {
		t.Fatal(err)
	}
	defer renamer.Close(ctx)
	if _, err := renamer.Exec(ctx, `BEGIN; ALTER TABLE orders RENAME TO orders_old`); err != nil {
		t.Fatal(err)
	}
	db.exec(t, `BEGIN; CREATE TABLE orders_new (id int PRIMARY KEY, v text);
		INSERT INTO orders_new SELECT g, 'v' || g FROM generate_series(1, 10) g; COMMIT`)
	waitFor(t, 20*time.Second, "the catch-up to wait for the renamer", func() bool {
		var waiting int
		_ = db.conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tablecast-snapshot' AND query LIKE '%pg_visible_in_snapshot%'`).Scan(&waiting)
		return waiting > 0
	})
	if _, err := renamer.Exec(ctx, `ALTER TABLE orders_new RENAME TO orders; COMMIT`); err != nil {
		t.Fatal(err)
	}
	// The renames are followed too (tablerenamed.go): orders may get a
	// truncate, cause table_renamed, and its rows again. Whatever came
	// before, every row comes as op read after the last truncate.
	afterTruncate := func() map[string]bool {
		ids := map[string]bool{}
		for _, e := range eventsOf(t, n, "public.orders") {
			switch {
			case e.Op == "truncate" && e.Cause == "table_renamed":
				clear(ids)
			case e.Op == "read":
				ids[fmt.Sprint(e.Key["id"])] = true
			default:
				t.Fatalf("event %s, want reads and truncates of a rename", e.Raw)
			}
		}
		return ids
	}
	waitFor(t, 30*time.Second, "the 10 rows as op read", func() bool { return len(afterTruncate()) == 10 })
	if r.log.contains("catch-up snapshot dropped") || r.log.contains("catch-up snapshot failed") {
		t.Error("the catch-up was given up")
	}
}

// TestDBAPublicationCoverGaps: a publication tablecast did not create
// whose column list or row filter leaves out a table's replica identity
// (PostgreSQL then refuses UPDATE and DELETE on it) gets an error in the
// log, with the fix, as a table without a replica identity does; one that
// covers it does not. The reader said nothing of them.
func TestDBAPublicationCoverGaps(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE listed (id int PRIMARY KEY, v int)`,
		`CREATE TABLE filtered (id int PRIMARY KEY, v int)`,
		`CREATE TABLE covered (id int PRIMARY KEY, v int, secret text)`,
		`CREATE PUBLICATION tc_pub FOR TABLE listed (v), filtered WHERE (v > 0), covered (id, v) WHERE (id > 0)`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)
	waitFor(t, 10*time.Second, "the errors", func() bool {
		return r.log.contains(`table=public.listed reason="its column list in the publication leaves out replica identity column(s) id"`) &&
			r.log.contains(`table=public.filtered reason="its row filter in the publication reads column(s) v, not part of the replica identity"`)
	})
	if r.log.contains(`table=public.covered reason=`) {
		t.Error("a column list and row filter that cover the replica identity are reported")
	}
	for _, table := range []string{"listed", "filtered"} {
		if db.accepts(t, table) {
			t.Errorf("PostgreSQL accepts writes to %s: the error is not true", table)
		}
	}
	if !db.accepts(t, "covered") {
		t.Error("PostgreSQL refuses writes to covered")
	}
}
