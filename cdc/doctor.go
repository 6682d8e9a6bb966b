package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Statuses of a Finding, from good to bad.
const (
	StatusOK   = "ok"
	StatusWarn = "warn" // works, but something is likely to bite
	StatusFail = "fail" // tablecast cannot work (or stops working) until it is fixed
)

// Finding is one result of Doctor.
type Finding struct {
	Check  string // what was checked: "wal_level", "table public.orders", "slot WAL", …
	Status string // StatusOK, StatusWarn or StatusFail
	Detail string // what was found, on one line
	Fix    string // the SQL (or configuration) that fixes it; empty when Status is StatusOK
}

// Failed reports whether any of findings has StatusFail.
func Failed(findings []Finding) bool {
	return slices.ContainsFunc(findings, func(f Finding) bool { return f.Status == StatusFail })
}

// Thresholds of retained WAL, for the slot's "slot WAL" finding.
const (
	// retainWarnUnlimited: with max_slot_wal_keep_size = -1 nothing stops a
	// stalled slot from filling the disk; a gibibyte is far beyond what a
	// reader that keeps up retains (it confirms every few seconds), and far
	// below a full disk.
	retainWarnUnlimited = 1 << 30
	// Under a limit: warn at half of it, fail beyond 80%, where a burst of
	// writes gets the slot invalidated.
	retainWarnPercent = 50
	retainFailPercent = 80
)

// Doctor checks that the database of cfg.DatabaseURL is ready for
// tablecast, and that what it has is in good shape: wal_level, free
// replication slots and WAL senders, the role's REPLICATION attribute, the
// publication and the tables it covers (their column lists, row filters and
// replica identities), and the slot: its plugin, database, holder and the
// WAL it retains. It changes nothing.
//
// Every finding that is not ok says how to fix it. The error is for what
// keeps the checks from running (a bad configuration, an unreachable
// database); what the checks find is in the findings.
func Doctor(ctx context.Context, cfg Config) ([]Finding, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	conn, err := connectSQL(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	d := &doctor{cfg: cfg, conn: conn}
	for _, check := range []func(context.Context) error{d.checkServer, d.checkPublication, d.checkSlot} {
		if err := check(ctx); err != nil {
			return d.findings, err
		}
	}
	return d.findings, nil
}

// doctor holds what the checks learn along the way.
type doctor struct {
	cfg      Config
	conn     *pgx.Conn
	findings []Finding

	database   string
	version    int // server_version_num
	superuser  bool
	slotExists bool
}

func (d *doctor) add(check, status, detail, fix string) {
	d.findings = append(d.findings, Finding{Check: check, Status: status, Detail: detail, Fix: fix})
}

// checkServer checks the settings and the role.
func (d *doctor) checkServer(ctx context.Context) error {
	var (
		user, version, walLevel                      string
		replication                                  bool
		maxSlots, maxSenders, usedSlots, usedSenders int
	)
	err := d.conn.QueryRow(ctx, `SELECT current_database(), current_user, current_setting('server_version'),
			current_setting('server_version_num')::int, current_setting('wal_level'), r.rolsuper, r.rolreplication,
			current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int,
			(SELECT count(*) FROM pg_replication_slots)::int,
			(SELECT count(*) FROM pg_stat_replication)::int,
			EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)
		FROM pg_roles r WHERE r.rolname = current_user`, d.cfg.Slot).
		Scan(&d.database, &user, &version, &d.version, &walLevel, &d.superuser, &replication,
			&maxSlots, &maxSenders, &usedSlots, &usedSenders, &d.slotExists)
	if err != nil {
		return fmt.Errorf("read server settings: %w", err)
	}

	if d.version < 140000 {
		d.add("server", StatusWarn, fmt.Sprintf("database %s as role %s on PostgreSQL %s; tablecast supports PostgreSQL 14 and later", d.database, user, version),
			"upgrade PostgreSQL to 14 or later")
	} else {
		d.add("server", StatusOK, fmt.Sprintf("database %s as role %s on PostgreSQL %s", d.database, user, version), "")
	}

	if walLevel == "logical" {
		d.add("wal_level", StatusOK, "logical", "")
	} else {
		d.add("wal_level", StatusFail, fmt.Sprintf("%s: logical decoding needs logical", walLevel),
			"ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL")
	}

	slotUse := fmt.Sprintf("%d of %d in use", usedSlots, maxSlots)
	switch {
	case maxSlots == 0:
		d.add("max_replication_slots", StatusFail, "0: logical replication needs a slot",
			"ALTER SYSTEM SET max_replication_slots = 10; -- then restart PostgreSQL")
	case maxSlots-usedSlots < 1 && !d.slotExists:
		d.add("max_replication_slots", StatusWarn, slotUse+fmt.Sprintf(": none free, so slot %s cannot be created", d.cfg.Slot),
			fmt.Sprintf("ALTER SYSTEM SET max_replication_slots = %d; -- then restart PostgreSQL (or drop a slot nothing reads any more)", max(2*maxSlots, 10)))
	case maxSlots-usedSlots < 1:
		d.add("max_replication_slots", StatusWarn, slotUse+fmt.Sprintf(" (slot %s among them): none free for another consumer", d.cfg.Slot),
			fmt.Sprintf("ALTER SYSTEM SET max_replication_slots = %d; -- then restart PostgreSQL", max(2*maxSlots, 10)))
	default:
		d.add("max_replication_slots", StatusOK, slotUse, "")
	}

	senderUse := fmt.Sprintf("%d of %d in use", usedSenders, maxSenders)
	switch {
	case maxSenders == 0:
		d.add("max_wal_senders", StatusFail, "0: logical replication needs a WAL sender",
			"ALTER SYSTEM SET max_wal_senders = 10; -- then restart PostgreSQL")
	case maxSenders-usedSenders < 1:
		d.add("max_wal_senders", StatusWarn, senderUse+": none free, so another replication connection is refused",
			fmt.Sprintf("ALTER SYSTEM SET max_wal_senders = %d; -- then restart PostgreSQL", max(2*maxSenders, 10)))
	default:
		d.add("max_wal_senders", StatusOK, senderUse, "")
	}

	role := pgx.Identifier{user}.Sanitize()
	switch {
	case d.superuser:
		d.add("role", StatusOK, user+" is a superuser", "")
	case replication:
		d.add("role", StatusOK, user+" has REPLICATION", "")
	default:
		d.add("role", StatusFail, user+" has neither REPLICATION nor superuser: it cannot open a replication connection",
			"ALTER ROLE "+role+" REPLICATION;")
	}
	return nil
}

// publication is a row of pg_publication; exists is false when there is
// none and the values are those tablecast would create it with.
type publication struct {
	exists                 bool
	allTables              bool
	insert, update, delete bool
	truncate, viaRoot      bool
}

// checkPublication checks the publication and each table it covers (or
// would cover, once tablecast creates it).
func (d *doctor) checkPublication(ctx context.Context) error {
	name := d.cfg.Publication
	var p publication
	err := d.conn.QueryRow(ctx, `SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot
		FROM pg_publication WHERE pubname = $1`, name).
		Scan(&p.allTables, &p.insert, &p.update, &p.delete, &p.truncate, &p.viaRoot)
	switch {
	case err == nil:
		p.exists = true
	case errors.Is(err, pgx.ErrNoRows):
	default:
		return fmt.Errorf("look up publication %s: %w", name, err)
	}

	var tables []pubTable
	if p.exists {
		if tables, err = d.publishedTables(ctx); err != nil {
			return err
		}
		d.judgePublication(p, tables)
	} else {
		names, err := resolveTables(ctx, d.conn, d.cfg.Tables)
		if IsConfigError(err) {
			d.add("publication", StatusFail, fmt.Sprintf("%s does not exist, and %s", name, err),
				"set TABLECAST_TABLES to existing tables (schema.table,…), or create the tables")
			return nil
		}
		if err != nil {
			return err
		}
		p = publication{allTables: names == nil, insert: true, update: true, delete: true, truncate: true, viaRoot: true}
		create := publicationSQL(name, names) + ";"
		switch {
		case names == nil && !d.superuser:
			d.add("publication", StatusFail, name+" does not exist, and the first run would create it FOR ALL TABLES, which needs a superuser",
				"have a superuser run: "+create+" -- or set TABLECAST_TABLES=schema.table,… to the tables to stream")
		case names == nil:
			d.add("publication", StatusWarn, name+" does not exist: it will be created on first run, FOR ALL TABLES (which needs a superuser)",
				create+" -- or let tablecast create it")
		default:
			d.add("publication", StatusWarn, fmt.Sprintf("%s does not exist: it will be created on first run, FOR TABLE %s", name, strings.Join(names, ", ")),
				create+" -- or let tablecast create it")
		}
		if tables, err = d.candidateTables(ctx, names); err != nil {
			return err
		}
	}
	for _, t := range tables {
		if err := d.judgeTable(ctx, p, t); err != nil {
			return err
		}
	}
	return nil
}

// judgePublication adds the finding on an existing publication.
func (d *doctor) judgePublication(p publication, tables []pubTable) {
	name := d.cfg.Publication
	quoted := pgx.Identifier{name}.Sanitize()
	var ops []string
	for _, op := range []struct {
		name string
		on   bool
	}{{"insert", p.insert}, {"update", p.update}, {"delete", p.delete}, {"truncate", p.truncate}} {
		if op.on {
			ops = append(ops, op.name)
		}
	}
	covers := fmt.Sprintf("%d tables", len(tables))
	if len(tables) == 1 {
		covers = "1 table"
	}
	if p.allTables {
		covers = "FOR ALL TABLES (" + covers + ")"
	}
	publishes := "publishes " + strings.Join(ops, ", ")
	if len(ops) == 0 {
		publishes = "publishes nothing"
	}
	detail := fmt.Sprintf("%s: %s, %s, publish_via_partition_root = %t", name, covers, publishes, p.viaRoot)
	partitions := slices.ContainsFunc(tables, func(t pubTable) bool { return t.partition })
	switch {
	case len(tables) == 0:
		d.add("publication", StatusWarn, detail+": nothing will be streamed",
			fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE <schema.table>;", quoted))
	case len(ops) == 0:
		d.add("publication", StatusWarn, detail+": nothing will be streamed",
			fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate');", quoted))
	case !p.viaRoot && partitions:
		d.add("publication", StatusWarn, detail+": changes to partitions are published under each partition's name, not the partitioned table's",
			fmt.Sprintf("ALTER PUBLICATION %s SET (publish_via_partition_root = true);", quoted))
	default:
		d.add("publication", StatusOK, detail, "")
	}
}

// pubTable is a table the publication covers (or would cover).
type pubTable struct {
	schema, name string
	partition    bool
	replident    string   // relreplident: d(efault), n(othing), f(ull), i(ndex)
	columns      []string // every column
	published    []string // the published columns; nil when all are
	rowFilter    string   // the publication's WHERE clause; "" when none
	primaryKey   []string // its columns; nil when there is no primary key
	identIndex   string   // the replica identity index, under REPLICA IDENTITY USING INDEX
	identColumns []string // its columns
}

// tableColumns is the select list of a pubTable, over pg_class c and
// pg_namespace n, followed by the published columns and the row filter.
const tableColumns = `n.nspname::text, c.relname::text, c.relispartition, c.relreplident::text,
	ARRAY(SELECT a.attname::text FROM pg_attribute a
		WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
	ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)),
	coalesce((SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
		WHERE i.indrelid = c.oid AND i.indisreplident), ''),
	ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = c.oid AND i.indisreplident ORDER BY array_position(i.indkey::int2[], a.attnum))`

// publishedTables reads the tables of the existing publication, with their
// column lists and row filters on PostgreSQL 15 and later.
func (d *doctor) publishedTables(ctx context.Context) ([]pubTable, error) {
	listAndFilter := "pt.attnames::text[], pt.rowfilter"
	if d.version < 150000 { // neither column lists nor row filters before 15
		listAndFilter = "NULL::text[], NULL::text"
	}
	tables, err := d.queryTables(ctx, `SELECT `+tableColumns+`, `+listAndFilter+`
		FROM pg_publication_tables pt
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		WHERE pt.pubname = $1 ORDER BY 1, 2`, d.cfg.Publication)
	if err != nil {
		return nil, fmt.Errorf("read the tables of publication %s: %w", d.cfg.Publication, err)
	}
	return tables, nil
}

// candidateTables reads the tables a publication created by tablecast
// would cover: names (quoted), or nil for every table FOR ALL TABLES takes.
func (d *doctor) candidateTables(ctx context.Context, names []string) ([]pubTable, error) {
	var (
		tables []pubTable
		err    error
	)
	if names == nil {
		tables, err = d.queryTables(ctx, `SELECT `+tableColumns+`, NULL::text[], NULL::text
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
				AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
			ORDER BY 1, 2`)
	} else {
		tables, err = d.queryTables(ctx, `SELECT `+tableColumns+`, NULL::text[], NULL::text
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.oid = ANY (SELECT unnest($1::text[])::regclass)
			ORDER BY 1, 2`, names)
	}
	if err != nil {
		return nil, fmt.Errorf("read the tables publication %s would cover: %w", d.cfg.Publication, err)
	}
	return tables, nil
}

func (d *doctor) queryTables(ctx context.Context, sql string, args ...any) ([]pubTable, error) {
	rows, err := d.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (pubTable, error) {
		var (
			t         pubTable
			rowFilter *string
		)
		err := row.Scan(&t.schema, &t.name, &t.partition, &t.replident, &t.columns, &t.primaryKey,
			&t.identIndex, &t.identColumns, &t.published, &rowFilter)
		if len(t.published) == len(t.columns) {
			t.published = nil // every column
		}
		if len(t.primaryKey) == 0 {
			t.primaryKey = nil
		}
		t.rowFilter = deref(rowFilter)
		return t, err
	})
}

// judgeTable adds the finding on one table: what of it is published, and
// whether its replica identity lets PostgreSQL publish its updates and
// deletes (without one, PostgreSQL refuses UPDATE and DELETE on the table
// while a publication publishes them).
func (d *doctor) judgeTable(ctx context.Context, p publication, t pubTable) error {
	check := "table " + t.schema + "." + t.name
	table := pgx.Identifier{t.schema, t.name}.Sanitize()

	var parts []string
	if t.published == nil {
		parts = append(parts, "all columns")
	} else {
		withheld := slices.DeleteFunc(slices.Clone(t.columns), func(c string) bool { return slices.Contains(t.published, c) })
		parts = append(parts, fmt.Sprintf("columns %s (withheld: %s)", strings.Join(t.published, ", "), strings.Join(withheld, ", ")))
	}
	if t.rowFilter == "" {
		parts = append(parts, "all rows")
	} else {
		parts = append(parts, "rows WHERE "+t.rowFilter)
	}

	changesOld := p.update || p.delete
	var problem, fix string
	switch {
	case t.replident == "f" && t.primaryKey != nil:
		parts = append(parts, fmt.Sprintf("key: primary key (%s), old rows in full (REPLICA IDENTITY FULL)", strings.Join(t.primaryKey, ", ")))
	case t.replident == "f":
		parts = append(parts, "key: every column (REPLICA IDENTITY FULL without a primary key), old rows in full")
	case t.replident == "i" && t.identIndex != "":
		parts = append(parts, fmt.Sprintf("key: index %s (%s)", t.identIndex, strings.Join(t.identColumns, ", ")))
	case t.replident == "d" && t.primaryKey != nil:
		parts = append(parts, fmt.Sprintf("key: primary key (%s)", strings.Join(t.primaryKey, ", ")))
	case t.replident == "d":
		parts = append(parts, "no key")
		problem = "no primary key and REPLICA IDENTITY DEFAULT: PostgreSQL refuses UPDATE and DELETE on it while the publication publishes them, and its events would carry no key"
		fix = fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL; -- or give it a primary key: ALTER TABLE %s ADD PRIMARY KEY (…);", table, table)
	default: // n, or i whose index is gone
		parts = append(parts, "no key")
		what := "REPLICA IDENTITY NOTHING"
		if t.replident == "i" {
			what = "REPLICA IDENTITY USING INDEX, but the index is gone"
		}
		problem = what + ": PostgreSQL refuses UPDATE and DELETE on it while the publication publishes them, and updates and deletes would carry no key and no old row"
		if t.primaryKey != nil {
			fix = fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL; -- or REPLICA IDENTITY DEFAULT, to use its primary key", table)
		} else {
			fix = fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL; -- or REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>", table)
		}
	}
	detail := strings.Join(parts, ", ")
	if problem == "" && t.replident != "f" && p.delete {
		// The gateway judges a delete by its row policy on the old row;
		// without REPLICA IDENTITY FULL that row is only the key.
		detail += fmt.Sprintf("; deletes carry only the key, so the gateway withholds them from subscriptions whose row policy reads another column (ALTER TABLE %s REPLICA IDENTITY FULL sends whole old rows)", table)
	}

	switch {
	case problem != "" && changesOld:
		d.add(check, StatusWarn, detail+": "+problem, fix)
		return nil
	case problem != "":
		d.add(check, StatusOK, detail+" (the publication publishes no updates or deletes)", "")
		return nil
	}
	if p.exists && changesOld && (t.published != nil || t.rowFilter != "") {
		// Column lists and row filters must cover the replica identity, or
		// PostgreSQL refuses UPDATE and DELETE. Ask it rather than second-guess.
		refusal, note, err := d.probe(ctx, p, t)
		if err != nil {
			return err
		}
		if refusal != nil {
			d.add(check, StatusWarn, fmt.Sprintf("%s: PostgreSQL refuses UPDATE and DELETE on it: %s", detail, strings.TrimSuffix(refusal.Detail, ".")),
				d.coverFix(t, refusal))
			return nil
		}
		if note != "" {
			detail += " (" + note + ")"
		}
	}
	d.add(check, StatusOK, detail, "")
	return nil
}

// probe asks PostgreSQL whether it would accept an UPDATE (or a DELETE) on
// t, by planning one that touches no row with EXPLAIN in a read-only
// transaction: the replica identity checks run when the plan's executor
// state is set up, which EXPLAIN does, and nothing is executed. It returns
// PostgreSQL's refusal, or a note when the probe could not tell.
func (d *doctor) probe(ctx context.Context, p publication, t pubTable) (refusal *pgconn.PgError, note string, err error) {
	table := pgx.Identifier{t.schema, t.name}.Sanitize()
	stmt := "EXPLAIN DELETE FROM " + table + " WHERE false"
	if p.update && len(t.columns) > 0 {
		// SET … = DEFAULT is accepted for every kind of column, generated ones included.
		stmt = fmt.Sprintf("EXPLAIN UPDATE %s SET %s = DEFAULT WHERE false", table, pgx.Identifier{t.columns[0]}.Sanitize())
	}
	tx, err := d.conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, "", fmt.Errorf("check table %s: %w", table, err)
	}
	defer tx.Rollback(context.Background())
	// The probe takes the lock an UPDATE takes; never wait long behind DDL.
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '2s'"); err != nil {
		return nil, "", fmt.Errorf("check table %s: %w", table, err)
	}
	_, err = tx.Exec(ctx, stmt)
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return nil, "", nil
	case !errors.As(err, &pgErr):
		return nil, "", fmt.Errorf("check table %s: %w", table, err)
	case pgErr.Code == "42P10" || pgErr.Code == "55000": // invalid_column_reference, object_not_in_prerequisite_state
		return pgErr, "", nil
	case pgErr.Code == "42501":
		return nil, "not verified that its column list and row filter cover the replica identity: the role may not update it", nil
	default:
		return nil, "not verified that its column list and row filter cover the replica identity: " + pgErr.Message, nil
	}
}

// coverFix is the fix for a column list or row filter that does not cover
// t's replica identity.
func (d *doctor) coverFix(t pubTable, refusal *pgconn.PgError) string {
	table := pgx.Identifier{t.schema, t.name}.Sanitize()
	if strings.Contains(refusal.Detail, "WHERE") {
		if t.published == nil {
			return fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL; -- or REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns that include those of the WHERE clause>", table)
		}
		return fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns that include those of the WHERE clause>; -- and add them to the column list", table)
	}
	// The column list leaves out some of the replica identity. Under
	// REPLICA IDENTITY FULL that is any column list at all (PostgreSQL 15
	// refuses even one naming every column): the primary key, where there
	// is one, identifies rows as well and keeps the column list.
	pub := pgx.Identifier{d.cfg.Publication}.Sanitize()
	ident, prefix := t.primaryKey, ""
	switch {
	case t.replident == "f" && t.primaryKey == nil:
		return fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns of the column list>; -- REPLICA IDENTITY FULL admits no column list; or publish every column: BEGIN; ALTER PUBLICATION %s DROP TABLE %s; ALTER PUBLICATION %s ADD TABLE %s; COMMIT;",
			table, pub, table, pub, table)
	case t.replident == "f":
		prefix = fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY DEFAULT; ", table)
	case t.replident == "i":
		ident = t.identColumns
	}
	cols := slices.Clone(t.published)
	for _, c := range ident {
		if !slices.Contains(cols, c) {
			cols = append(cols, c)
		}
	}
	if len(cols) == len(t.published) { // the identity is in the list already
		if prefix != "" {
			return prefix + "-- REPLICA IDENTITY FULL admits no column list; the primary key identifies rows instead"
		}
		return fmt.Sprintf("-- the column list of %s must include its replica identity columns (%s)", table, strings.Join(ident, ", "))
	}
	quotedCols := make([]string, len(cols))
	for i, c := range cols {
		quotedCols[i] = pgx.Identifier{c}.Sanitize()
	}
	where := ""
	if t.rowFilter != "" {
		where = " WHERE (" + t.rowFilter + ")"
	}
	return fmt.Sprintf("BEGIN; %sALTER PUBLICATION %s DROP TABLE %s; ALTER PUBLICATION %s ADD TABLE %s (%s)%s; COMMIT;",
		prefix, pub, table, pub, table, strings.Join(quotedCols, ", "), where)
}

// checkSlot checks the replication slot and the WAL it retains.
func (d *doctor) checkSlot(ctx context.Context) error {
	name := d.cfg.Slot
	lit := quoteLiteral(name)
	s, found, err := readSlot(ctx, d.conn, name)
	if err != nil {
		return err
	}
	if !found {
		d.add("slot", StatusWarn, name+" does not exist: it will be created on first run, and changes are streamed from then on",
			fmt.Sprintf("SELECT pg_create_logical_replication_slot(%s, 'pgoutput'); -- to keep changes from now on, before tablecast first runs (WAL is retained until it does)", lit))
		return nil
	}

	drop := fmt.Sprintf("SELECT pg_drop_replication_slot(%s);", lit)
	holder := "inactive: no reader connected"
	if s.Active {
		holder = fmt.Sprintf("active, held by pid %d", s.PID)
	}
	switch {
	case s.Type != "logical":
		d.add("slot", StatusFail, name+" is a physical slot, not a logical one",
			"set TABLECAST_SLOT to another name, or drop it if nothing uses it: "+drop)
	case s.Plugin != "pgoutput":
		d.add("slot", StatusFail, fmt.Sprintf("%s uses plugin %s, not pgoutput", name, s.Plugin),
			"set TABLECAST_SLOT to another name, or drop it if nothing uses it: "+drop)
	case s.Database != d.database:
		d.add("slot", StatusFail, fmt.Sprintf("%s belongs to database %s, not %s", name, s.Database, d.database),
			"set TABLECAST_SLOT to another name")
	default:
		d.add("slot", StatusOK, fmt.Sprintf("%s: pgoutput in database %s, %s", name, s.Database, holder), "")
	}

	if s.WALStatus == "lost" {
		d.add("slot WAL", StatusFail, name+" is lost: PostgreSQL invalidated it after it retained more WAL than max_slot_wal_keep_size, and it can never stream again",
			drop+" -- then start tablecast, which creates a new slot; changes made in between are not streamed (take a new snapshot)")
		return nil
	}

	limit := "max_slot_wal_keep_size unlimited"
	safe := "safe_wal_size unlimited"
	if s.KeepLimit >= 0 {
		limit = "max_slot_wal_keep_size " + FormatBytes(s.KeepLimit)
	}
	if s.SafeWALSize != nil {
		safe = "safe_wal_size " + FormatBytes(*s.SafeWALSize)
	}
	detail := fmt.Sprintf("lag %s (confirmed_flush_lsn %s), retains %s of WAL (restart_lsn %s), %s, wal_status %s, %s",
		knownSize(s.LagBytes), s.ConfirmedFlushLSN, knownSize(s.RetainedBytes), s.RestartLSN, limit, s.WALStatus, safe)
	catchUp := "start tablecast, or find why it does not keep up, so the slot advances"
	raise := fmt.Sprintf("ALTER SYSTEM SET max_slot_wal_keep_size = '%dMB'; SELECT pg_reload_conf();", max(2*s.KeepLimit, 2*s.RetainedBytes, 1<<30)>>20)
	status := judgeRetained(s.RetainedBytes, s.KeepLimit)
	switch {
	case s.WALStatus == "unreserved":
		d.add("slot WAL", StatusFail, detail+": PostgreSQL invalidates the slot at the next checkpoint unless it catches up first",
			catchUp+" now, or raise the limit at once: "+raise)
	case status != StatusOK && s.KeepLimit < 0:
		d.add("slot WAL", status, detail+fmt.Sprintf(": more than %s retained, and nothing bounds it", FormatBytes(retainWarnUnlimited)),
			fmt.Sprintf("%s; if nothing reads this slot any more: %s -- to bound what a stalled slot may keep: ALTER SYSTEM SET max_slot_wal_keep_size = '…'; SELECT pg_reload_conf();", catchUp, drop))
	case status != StatusOK && s.KeepLimit == 0:
		d.add("slot WAL", status, detail+": with max_slot_wal_keep_size 0 the slot is invalidated whenever it falls behind at a checkpoint", raise)
	case status != StatusOK:
		pct := retainWarnPercent
		if status == StatusFail {
			pct = retainFailPercent
		}
		d.add("slot WAL", status, detail+fmt.Sprintf(": more than %d%% of the limit, beyond which PostgreSQL invalidates the slot", pct),
			fmt.Sprintf("%s; or raise the limit: %s", catchUp, raise))
	default:
		d.add("slot WAL", StatusOK, detail, "")
	}
	return nil
}

// judgeRetained judges the WAL a slot retains against
// max_slot_wal_keep_size in bytes (limit; -1: unlimited).
func judgeRetained(retained, limit int64) string {
	switch {
	case retained < 0: // unknown
		return StatusOK
	case limit < 0:
		if retained > retainWarnUnlimited {
			return StatusWarn
		}
		return StatusOK
	case limit == 0:
		return StatusWarn
	case retained*100 > limit*retainFailPercent:
		return StatusFail
	case retained*100 > limit*retainWarnPercent:
		return StatusWarn
	}
	return StatusOK
}

// knownSize is sizeString of a distance that is -1 when unknown.
func knownSize(n int64) string {
	if n < 0 {
		return "unknown"
	}
	return FormatBytes(n)
}

// FormatBytes writes a byte count for people: "512 B", "1.5 MiB",
// "-48.0 MiB" (a safe_wal_size already overrun).
func FormatBytes(n int64) string {
	if n < 0 {
		return "-" + FormatBytes(-n)
	}
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, "KiB"
	for _, u := range []string{"MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}
