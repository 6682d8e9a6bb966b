package cdc

import (
	"context"
	"encoding/json"
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
// replica identities: a table PostgreSQL refuses UPDATE and DELETE on
// because of the publication fails), who may execute
// pg_logical_emit_message (custom-topic messages, and the reader's own
// heartbeats and watermarks), and the slot: its plugin, database, holder
// and the WAL it retains. It changes nothing.
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
	for _, check := range []func(context.Context) error{d.checkServer, d.checkMessages, d.checkPublication, d.checkSlot} {
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
	user       string
	version    int // server_version_num
	superuser  bool
	canCreate  bool // CREATE on the database: the role may create a publication
	slotExists bool
	coverage   []coverage // the publication's column lists and row filters, read once (coverGap)
	covered    bool
}

// coverGap judges t's column list and row filter from the catalog, as
// PostgreSQL does (coverage), for a role that may not ask PostgreSQL by
// planning an UPDATE (probe).
func (d *doctor) coverGap(ctx context.Context, t pubTable) (what, fix string, err error) {
	if !d.covered {
		if d.coverage, err = readCoverage(ctx, d.conn, d.cfg.Publication); err != nil {
			return "", "", err
		}
		d.covered = true
	}
	for _, c := range d.coverage {
		if c.schema == t.schema && c.name == t.name {
			what, fix = c.gap(d.cfg.Publication)
			return what, fix, nil
		}
	}
	return "", "", nil
}

func (d *doctor) add(check, status, detail, fix string) {
	d.findings = append(d.findings, Finding{Check: check, Status: status, Detail: detail, Fix: fix})
}

// checkServer checks the settings and the role.
func (d *doctor) checkServer(ctx context.Context) error {
	var (
		version, walLevel                            string
		replication                                  bool
		maxSlots, maxSenders, usedSlots, usedSenders int
	)
	err := d.conn.QueryRow(ctx, `SELECT current_database(), current_user, current_setting('server_version'),
			current_setting('server_version_num')::int, current_setting('wal_level'), r.rolsuper, r.rolreplication,
			current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int,
			(SELECT count(*) FROM pg_replication_slots)::int,
			(SELECT count(*) FROM pg_stat_replication)::int,
			EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
			has_database_privilege(current_database(), 'CREATE')
		FROM pg_roles r WHERE r.rolname = current_user`, d.cfg.Slot).
		Scan(&d.database, &d.user, &version, &d.version, &walLevel, &d.superuser, &replication,
			&maxSlots, &maxSenders, &usedSlots, &usedSenders, &d.slotExists, &d.canCreate)
	if err != nil {
		return fmt.Errorf("read server settings: %w", err)
	}
	user := d.user

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

// checkMessages checks who may execute pg_logical_emit_message, in both
// its overloads. Any role that may can publish custom-topic messages
// (prefix "tablecast:<topic>"), which subscribers receive as they would
// the application's, so only the roles the DBA accepts (TopicRoles) should;
// PostgreSQL grants it to PUBLIC by default. The reader's own role needs
// the text overload, for its heartbeats and snapshot watermarks.
func (d *doctor) checkMessages(ctx context.Context) error {
	rows, err := d.conn.Query(ctx, `SELECT p.oid::regprocedure::text, has_function_privilege(p.oid, 'EXECUTE'),
			ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END
				FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
				LEFT JOIN pg_roles r ON r.oid = a.grantee
				WHERE a.privilege_type = 'EXECUTE' AND (a.grantee = 0 OR NOT r.rolsuper) AND a.grantee <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
				ORDER BY 1)
		FROM pg_proc p WHERE p.proname = 'pg_logical_emit_message' AND p.pronamespace = 'pg_catalog'::regnamespace
		ORDER BY 1`)
	if err != nil {
		return fmt.Errorf("read the privileges of pg_logical_emit_message: %w", err)
	}
	type overload struct {
		signature string
		mine      bool
		grantees  []string
	}
	overloads, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (overload, error) {
		var o overload
		err := row.Scan(&o.signature, &o.mine, &o.grantees)
		return o, err
	})
	if err != nil {
		return fmt.Errorf("read the privileges of pg_logical_emit_message: %w", err)
	}
	role := pgx.Identifier{d.user}.Sanitize()

	// The reader writes text messages.
	var textSig string
	var mine bool
	for _, o := range overloads {
		if strings.HasPrefix(o.signature, "pg_logical_emit_message(boolean,text,text") {
			textSig, mine = o.signature, o.mine
		}
	}
	switch {
	case textSig == "":
		d.add("emit message", StatusFail, "pg_logical_emit_message(boolean, text, text) is missing: the reader writes its heartbeats, snapshot watermarks, table additions, renames and drops with it", "use PostgreSQL 14 or later")
	case !mine:
		d.add("emit message", StatusFail, fmt.Sprintf("role %s may not execute %s: the reader writes its heartbeats, snapshot watermarks, table additions, renames and drops with it", d.user, textSig),
			fmt.Sprintf("GRANT EXECUTE ON FUNCTION pg_catalog.%s TO %s;", textSig, role))
	default:
		d.add("emit message", StatusOK, fmt.Sprintf("role %s may execute %s (heartbeats, snapshot watermarks, table additions, renames and drops)", d.user, textSig), "")
	}

	// Who else may write custom-topic messages.
	var (
		others  []string // role names beyond the accepted
		signs   []string // the overloads they may execute
		revokes []string
	)
	for _, o := range overloads {
		var extra []string
		for _, g := range o.grantees {
			if !slices.Contains(d.cfg.TopicRoles, g) {
				extra = append(extra, g)
			}
		}
		if len(extra) == 0 {
			continue
		}
		signs = append(signs, o.signature)
		quoted := make([]string, len(extra))
		for i, g := range extra {
			quoted[i] = g
			if g != "PUBLIC" {
				quoted[i] = pgx.Identifier{g}.Sanitize()
			}
			if !slices.Contains(others, g) {
				others = append(others, g)
			}
		}
		revokes = append(revokes, fmt.Sprintf("REVOKE EXECUTE ON FUNCTION pg_catalog.%s FROM %s;", o.signature, strings.Join(quoted, ", ")))
	}
	accepted := "superusers"
	if !d.superuser {
		accepted = d.user + ", superusers"
	}
	if len(d.cfg.TopicRoles) > 0 {
		accepted += " and the accepted roles " + strings.Join(d.cfg.TopicRoles, ", ")
	}
	if len(others) == 0 {
		d.add("topic writers", StatusOK, "only "+accepted+" may execute pg_logical_emit_message, so only they can publish custom-topic messages", "")
		return nil
	}
	who := "roles " + strings.Join(others, ", ")
	if slices.Contains(others, "PUBLIC") {
		who = "PUBLIC (every role)"
	}
	fix := strings.Join(revokes, " ")
	if textSig != "" && !d.superuser {
		fix += fmt.Sprintf(" GRANT EXECUTE ON FUNCTION pg_catalog.%s TO %s;", textSig, role)
	}
	if textSig != "" {
		if len(d.cfg.TopicRoles) > 0 {
			grantees := make([]string, len(d.cfg.TopicRoles))
			for i, r := range d.cfg.TopicRoles {
				grantees[i] = pgx.Identifier{r}.Sanitize()
			}
			fix += fmt.Sprintf(" GRANT EXECUTE ON FUNCTION pg_catalog.%s TO %s;", textSig, strings.Join(grantees, ", "))
		} else {
			fix += fmt.Sprintf(" -- then, to each role that may publish custom-topic messages: GRANT EXECUTE ON FUNCTION pg_catalog.%s TO <role>; and list it in %s", textSig, d.cfg.setting("TopicRoles"))
		}
	}
	d.add("topic writers", StatusWarn, fmt.Sprintf("%s may execute %s, so can publish custom-topic messages (tablecast:<topic>) that subscribers receive as the application's; accepted: %s",
		who, strings.Join(signs, " and "), accepted), fix)
	return nil
}

// publication is a row of pg_publication; exists is false when there is
// none and the values are those tablecast would create it with.
type publication struct {
	exists                 bool
	managed                bool // its comment marks it as tablecast's
	allTables              bool
	inSchema               bool // FOR TABLES IN SCHEMA
	insert, update, delete bool
	truncate, viaRoot      bool
}

// checkPublication checks the publication and each table it covers (or
// would cover, once tablecast creates it or brings it in step).
func (d *doctor) checkPublication(ctx context.Context) error {
	name := d.cfg.Publication
	var p publication
	var comment string
	err := d.conn.QueryRow(ctx, `SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot,
			coalesce(obj_description(oid, 'pg_publication'), '')
		FROM pg_publication WHERE pubname = $1`, name).
		Scan(&p.allTables, &p.insert, &p.update, &p.delete, &p.truncate, &p.viaRoot, &comment)
	switch {
	case err == nil:
		p.exists = true
		p.managed = strings.HasPrefix(comment, managedMark)
		info, err := readPublication(ctx, d.conn, name)
		if err != nil {
			return err
		}
		p.inSchema = info.inSchema
	case errors.Is(err, pgx.ErrNoRows):
	default:
		return fmt.Errorf("look up publication %s: %w", name, err)
	}

	if p.exists && !p.managed {
		// A DBA's publication: read as it is, and judged.
		tables, err := d.publishedTables(ctx)
		if err != nil {
			return err
		}
		if err := d.judgePublication(ctx, p, tables); err != nil {
			return err
		}
		for _, t := range tables {
			if err := d.judgeTable(ctx, p, t); err != nil {
				return err
			}
		}
		return nil
	}

	// Created by tablecast, or to be: FOR TABLE what Tables asks for that
	// can publish its updates and deletes.
	names, err := resolveTables(ctx, d.conn, d.cfg.Tables)
	if IsConfigError(err) {
		what := "does not exist, and"
		if p.exists {
			what = "is managed by tablecast, and"
		}
		d.add("publication", StatusFail, fmt.Sprintf("%s %s %s", name, what, err),
			"set "+d.cfg.setting("Tables")+" to existing tables (schema.table,…), or create the tables")
		return nil
	}
	if err != nil {
		return err
	}
	sc := scopeAll
	if names != nil {
		sc = scopeListed
	}
	states, err := readTables(ctx, d.conn, name, sc, names)
	if err != nil {
		return err
	}
	set, err := listedSet(d.cfg.Tables)
	if err != nil {
		return err
	}
	plan := planSync(name, d.user, states, set)
	var adds []string
	for _, t := range plan.add {
		adds = append(adds, t.quoted())
	}
	leftOut := ""
	if n := len(plan.leftOut); n > 0 {
		leftOut = fmt.Sprintf(" (%d left out, below)", n)
	}

	var tables []pubTable
	if p.exists {
		if tables, err = d.publishedTables(ctx); err != nil {
			return err
		}
		if err := d.judgePublication(ctx, p, tables); err != nil {
			return err
		}
	} else {
		p = publication{insert: true, update: true, delete: true, truncate: true, viaRoot: true}
		target := "no table yet"
		if len(adds) > 0 {
			target = "TABLE " + strings.Join(adds, ", ")
		}
		create := createPublicationSQL(name, adds) + "; " + commentSQL(name) + ";"
		switch {
		case !d.superuser && !d.canCreate:
			d.add("publication", StatusFail, fmt.Sprintf("%s does not exist, and role %s may not create it (it needs CREATE on database %s)", name, d.user, d.database),
				fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s; -- or have a DBA run: %s", pgx.Identifier{d.database}.Sanitize(), pgx.Identifier{d.user}.Sanitize(), create))
		default:
			d.add("publication", StatusWarn, fmt.Sprintf("%s does not exist: it will be created on first run, FOR %s%s, managed by tablecast", name, target, leftOut),
				create+" -- or let tablecast create it")
		}
	}
	if len(plan.add) > 0 {
		added, err := d.candidateTables(ctx, adds)
		if err != nil {
			return err
		}
		tables = append(tables, added...)
	}
	for _, t := range tables {
		if err := d.judgeTable(ctx, p, t); err != nil {
			return err
		}
		if p.exists && slices.Contains(adds, pgx.Identifier{t.schema, t.name}.Sanitize()) {
			d.findings[len(d.findings)-1].Detail += "; not in the publication yet: the reader adds it"
		}
	}
	for _, k := range sortedKeys(plan.leftOut) {
		lo := plan.leftOut[k]
		if set != nil {
			d.add("table "+lo.table, StatusFail, fmt.Sprintf("in %s, but %s: the reader refuses to start, since PostgreSQL would refuse UPDATE and DELETE on it once published", d.cfg.setting("Tables"), lo.reason), lo.fix)
			continue
		}
		d.add("table "+lo.table, StatusWarn, "left out of the publication: "+lo.reason, lo.fix)
	}
	return nil
}

// judgePublication adds the finding on an existing publication.
func (d *doctor) judgePublication(ctx context.Context, p publication, tables []pubTable) error {
	name := d.cfg.Publication
	quoted := pgx.Identifier{name}.Sanitize()
	var ops, missing []string
	for _, op := range []struct {
		name string
		on   bool
	}{{"insert", p.insert}, {"update", p.update}, {"delete", p.delete}, {"truncate", p.truncate}} {
		if op.on {
			ops = append(ops, op.name)
		} else {
			missing = append(missing, op.name)
		}
	}
	covers := fmt.Sprintf("%d tables", len(tables))
	if len(tables) == 1 {
		covers = "1 table"
	}
	switch {
	case p.allTables:
		covers = "FOR ALL TABLES (" + covers + ")"
	case p.inSchema:
		covers = "FOR TABLES IN SCHEMA (" + covers + ")"
	}
	publishes := "publishes " + strings.Join(ops, ", ")
	if len(ops) == 0 {
		publishes = "publishes nothing"
	}
	detail := fmt.Sprintf("%s: %s, %s, publish_via_partition_root = %t", name, covers, publishes, p.viaRoot)
	if p.managed {
		detail += ", managed by tablecast"
	}
	partitions := slices.ContainsFunc(tables, func(t pubTable) bool { return t.partition })
	broken := 0
	for _, t := range tables {
		if len(t.gaps) > 0 {
			broken++
		}
	}
	changesOld := p.update || p.delete
	switch {
	case changesOld && !p.managed && (p.allTables || p.inSchema):
		replace, err := d.replacement(ctx)
		if err != nil {
			return err
		}
		if broken > 0 {
			d.add("publication", StatusFail, fmt.Sprintf("%s: PostgreSQL refuses UPDATE and DELETE on %d of its tables (below), and will on every table created later without a primary key or replica identity", detail, broken),
				replace+" -- replaces it with one tablecast manages, which leaves such tables out; or fix each table below")
		} else {
			d.add("publication", StatusWarn, detail+": PostgreSQL will refuse UPDATE and DELETE on every table created later without a primary key or replica identity",
				replace+" -- replaces it with one tablecast manages, which leaves such tables out")
		}
	case len(tables) == 0 && !p.managed:
		d.add("publication", StatusWarn, detail+": nothing will be streamed",
			fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE <schema.table>;", quoted))
	case len(ops) == 0:
		d.add("publication", StatusWarn, detail+": nothing will be streamed",
			fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate');", quoted))
	case len(missing) > 0:
		// PostgreSQL leaves those changes out of the replication stream:
		// consumers' copies of the tables silently keep rows that changed.
		d.add("publication", StatusWarn, fmt.Sprintf("%s: no event is sent for a %s, so consumers' copies of the tables drift from the database",
			detail, strings.Join(missing, ", ")),
			fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate');", quoted))
	case !p.viaRoot && partitions:
		d.add("publication", StatusWarn, detail+": changes to partitions are published under each partition's name, not the partitioned table's",
			fmt.Sprintf("ALTER PUBLICATION %s SET (publish_via_partition_root = true);", quoted))
	default:
		d.add("publication", StatusOK, detail, "")
	}
	return nil
}

// replacement is the SQL that replaces the publication, in one
// transaction (so that decoding never finds it missing), with one tablecast
// manages, FOR TABLE every table that can publish its updates and deletes.
func (d *doctor) replacement(ctx context.Context) (string, error) {
	name := d.cfg.Publication
	states, err := readTables(ctx, d.conn, name, scopeAll, nil)
	if err != nil {
		return "", err
	}
	var names []string
	for _, t := range states {
		if what, _ := writeGap(t); what == "" {
			names = append(names, t.quoted())
		}
	}
	return fmt.Sprintf("BEGIN; DROP PUBLICATION %s; %s; %s; COMMIT;", pgx.Identifier{name}.Sanitize(), createPublicationSQL(name, names), commentSQL(name)), nil
}

// pubTable is a table the publication covers (or would cover).
type pubTable struct {
	schema, name string
	partition    bool      // a partition
	partitioned  bool      // a partitioned table
	gaps         []leafGap // it or its partitions, without a replica identity
	replident    string    // relreplident: d(efault), n(othing), f(ull), i(ndex)
	columns      []string  // every column
	published    []string  // the published columns; nil when all are
	rowFilter    string    // the publication's WHERE clause; "" when none
	primaryKey   []string  // its columns; nil when there is no primary key
	identIndex   string    // the replica identity index, under REPLICA IDENTITY USING INDEX
	identColumns []string  // its columns
}

// tableColumns is the select list of a pubTable, over pg_class c and
// pg_namespace n, followed by the published columns and the row filter.
const tableColumns = `n.nspname::text, c.relname::text, c.relispartition, c.relkind = 'p', ` + badLeavesSQL + `, c.relreplident::text,
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

// candidateTables reads the tables of names (quoted) that a publication
// tablecast manages would cover.
func (d *doctor) candidateTables(ctx context.Context, names []string) ([]pubTable, error) {
	tables, err := d.queryTables(ctx, `SELECT `+tableColumns+`, NULL::text[], NULL::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = ANY (SELECT unnest($1::text[])::regclass)
		ORDER BY 1, 2`, names)
	if err != nil {
		return nil, fmt.Errorf("read the tables publication %s would cover: %w", d.cfg.Publication, err)
	}
	return tables, nil
}

func (d *doctor) queryTables(ctx context.Context, sql string, args ...any) ([]pubTable, error) {
	if _, err := d.conn.Exec(ctx, `SET jit = off`); err != nil { // see readTables
		return nil, err
	}
	rows, err := d.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (pubTable, error) {
		var (
			t         pubTable
			rowFilter *string
			gaps      string
		)
		err := row.Scan(&t.schema, &t.name, &t.partition, &t.partitioned, &gaps, &t.replident, &t.columns, &t.primaryKey,
			&t.identIndex, &t.identColumns, &t.published, &rowFilter)
		if err == nil {
			err = json.Unmarshal([]byte(gaps), &t.gaps)
		}
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
	default:
		parts = append(parts, "no key")
	}
	switch {
	case len(t.gaps) == 0:
	case t.partitioned:
		// What PostgreSQL checks is each partition's own replica identity.
		var what string
		what, fix = writeGap(tableState{schema: t.schema, name: t.name, partitioned: true, gaps: t.gaps})
		problem = what + ": PostgreSQL refuses UPDATE and DELETE on those partitions while the publication publishes them"
	case t.replident == "d":
		what, f, _ := identityGap(table, t.replident, t.primaryKey != nil, t.identIndex != "")
		problem, fix = what+": PostgreSQL refuses UPDATE and DELETE on it while the publication publishes them, and its events would carry no key", f
	default: // n, or i whose index is gone
		what, f, _ := identityGap(table, t.replident, t.primaryKey != nil, t.identIndex != "")
		problem, fix = what+": PostgreSQL refuses UPDATE and DELETE on it while the publication publishes them, and updates and deletes would carry no key and no old row", f
	}
	detail := strings.Join(parts, ", ")
	// Snapshots (the initial one, catch-ups, on demand) read the table;
	// streaming its changes does not.
	var readable bool
	if err := d.conn.QueryRow(ctx, `SELECT has_table_privilege($1::regclass, 'SELECT')`, table).Scan(&readable); err != nil {
		return fmt.Errorf("check %s: %w", check, err)
	}
	if !readable {
		status, why := StatusWarn, "catch-up and on-demand snapshots of it fail"
		if d.cfg.Snapshot != SnapshotNever && !d.slotExists {
			status, why = StatusFail, "the initial snapshot fails, and the reader cannot start"
		}
		d.add(check+" (read)", status, fmt.Sprintf("the role %s may not SELECT it: %s", d.user, why),
			fmt.Sprintf("GRANT SELECT ON %s TO %s;", table, pgx.Identifier{d.user}.Sanitize()))
	}
	if problem == "" && t.replident != "f" && p.delete {
		// The gateway judges a delete by its row policy on the old row;
		// without REPLICA IDENTITY FULL that row is only the key.
		detail += fmt.Sprintf("; deletes carry only the key, so the gateway withholds them from subscriptions whose row policy reads another column (ALTER TABLE %s REPLICA IDENTITY FULL sends whole old rows)", table)
	}

	switch {
	case problem != "" && changesOld:
		// The application's writes to it fail now: that is a failure,
		// whoever made the publication.
		if p.managed {
			problem += " (a running reader drops it from the publication within seconds)"
		}
		d.add(check, StatusFail, detail+": "+problem, fix)
		return nil
	case problem != "":
		d.add(check, StatusOK, detail+" (the publication publishes no updates or deletes)", "")
		return nil
	}
	var coverWhat, coverFix string
	if p.exists && changesOld {
		// What the catalog says of its column list and row filter (a list
		// of every column is one too, which REPLICA IDENTITY FULL refuses).
		var err error
		if coverWhat, coverFix, err = d.coverGap(ctx, t); err != nil {
			return err
		}
	}
	if p.exists && changesOld && (t.published != nil || t.rowFilter != "" || coverWhat != "") {
		// Column lists and row filters must cover the replica identity, or
		// PostgreSQL refuses UPDATE and DELETE. Ask it rather than second-guess.
		refusal, note, err := d.probe(ctx, p, t)
		if err != nil {
			return err
		}
		if refusal != nil {
			d.add(check, StatusFail, fmt.Sprintf("%s: PostgreSQL refuses UPDATE and DELETE on it: %s", detail, strings.TrimSuffix(refusal.Detail, ".")),
				d.coverFix(t, refusal))
			return nil
		}
		if note != "" {
			// PostgreSQL could not be asked: the catalog tells as much.
			if coverWhat != "" {
				d.add(check, StatusFail, fmt.Sprintf("%s: PostgreSQL refuses UPDATE and DELETE on it: %s", detail, coverWhat), coverFix)
				return nil
			}
			detail += " (" + note + "; the catalog shows them covering it)"
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
			"set "+d.cfg.setting("Slot")+" to another name, or drop it if nothing uses it: "+drop)
	case s.Plugin != "pgoutput":
		d.add("slot", StatusFail, fmt.Sprintf("%s uses plugin %s, not pgoutput", name, s.Plugin),
			"set "+d.cfg.setting("Slot")+" to another name, or drop it if nothing uses it: "+drop)
	case s.Database != d.database:
		d.add("slot", StatusFail, fmt.Sprintf("%s belongs to database %s, not %s", name, s.Database, d.database),
			"set "+d.cfg.setting("Slot")+" to another name")
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
