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

	"github.com/tablecast/tablecast/schema"
)

// The publication, and the writes it must never break.
//
// While a publication publishes updates and deletes, PostgreSQL refuses
// UPDATE and DELETE on every table it covers that has no replica identity:
// no primary key under REPLICA IDENTITY DEFAULT, REPLICA IDENTITY NOTHING,
// or a replica identity index that is gone. A FOR ALL TABLES publication
// does that to every such table, including tables created later, so
// tablecast never creates one. It creates a publication FOR TABLE the
// tables that can publish their updates and deletes, marks it as its own
// with a comment, and from then on keeps it so: tables that appear or
// become eligible are added, a table that loses its key is dropped at
// once. A publication without the mark is a DBA's and is read as it is.

// managedMark starts the comment of a publication tablecast manages. Only
// such a publication is ever altered; a DBA hands one over by setting the
// comment.
const managedMark = "managed by tablecast"

// managedComment is the full comment tablecast writes.
const managedComment = managedMark + ": it adds every table that can publish its updates and deletes, and drops one that no longer can (see tablecast doctor)"

// pubInfo is a row of pg_publication, as far as tablecast cares.
type pubInfo struct {
	exists    bool
	managed   bool
	allTables bool // FOR ALL TABLES
	inSchema  bool // FOR TABLES IN SCHEMA … (PostgreSQL 15)
	update    bool
	delete    bool
}

// readPublication reads the publication named name.
func readPublication(ctx context.Context, conn *pgx.Conn, name string) (pubInfo, error) {
	var p pubInfo
	var comment string
	err := conn.QueryRow(ctx, `SELECT p.puballtables, p.pubupdate, p.pubdelete,
			coalesce(obj_description(p.oid, 'pg_publication'), ''),
			to_regclass('pg_catalog.pg_publication_namespace') IS NOT NULL
				AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_publication'::regclass AND d.refobjid = p.oid
					AND d.classid = to_regclass('pg_catalog.pg_publication_namespace'))
		FROM pg_publication p WHERE p.pubname = $1`, name).
		Scan(&p.allTables, &p.update, &p.delete, &comment, &p.inSchema)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return p, nil
	case err != nil:
		return p, fmt.Errorf("look up publication %s: %w", name, err)
	}
	p.exists = true
	p.managed = strings.HasPrefix(comment, managedMark)
	return p, nil
}

// leafGap is a table or partition on which PostgreSQL refuses UPDATE and
// DELETE while a publication publishes them.
type leafGap struct {
	Schema string `json:"schema"`
	Name   string `json:"name"`
	Ident  string `json:"ident"` // relreplident: d, n, i (f never lacks an identity)
	PK     bool   `json:"pk"`
}

// badLeavesSQL is a JSON array of the leafGaps of the table c (pg_class):
// itself when it is a plain table, else every leaf partition under it. A
// leaf has an identity under REPLICA IDENTITY FULL, or with its primary
// key under DEFAULT, or with its index under USING INDEX; this is the
// check PostgreSQL makes on the table an UPDATE or DELETE touches, which
// for a partitioned table is the partition, whatever the partitioned
// table's own replica identity says (it is not inherited).
const badLeavesSQL = `(SELECT coalesce(json_agg(json_build_object('schema', ln.nspname, 'name', l.relname, 'ident', l.relreplident::text,
		'pk', EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = l.oid AND i.indisprimary))
		ORDER BY ln.nspname, l.relname), '[]')
	FROM (SELECT c.oid AS relid WHERE c.relkind = 'r'
		UNION ALL SELECT pt.relid FROM pg_partition_tree(c.oid) pt WHERE c.relkind = 'p' AND pt.isleaf) lv
	JOIN pg_class l ON l.oid = lv.relid JOIN pg_namespace ln ON ln.oid = l.relnamespace
	WHERE NOT (l.relreplident = 'f'
		OR (l.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = l.oid AND i.indisprimary))
		OR (l.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = l.oid AND i.indisreplident))))::text`

// userTablesSQL selects the oids of the tables "*" means: ordinary and
// partitioned tables that are not partitions (publish_via_partition_root
// publishes a partition's changes under its root), permanent (logical
// decoding has nothing of unlogged and temporary tables), outside the
// system schemas, and not part of an extension (an extension's tables are
// its own business, and restoring a database recreates them anyway).
// tablecast keeps no tables of its own in the database: its state is in
// NATS, its heartbeats and watermarks are WAL messages.
const userTablesSQL = `SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
		AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
		AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
		AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')`

// tableState is a table as the publication manager sees it.
type tableState struct {
	schema, name string
	oid          uint32
	partitioned  bool
	hasPK        bool
	owner        string
	mayAdd       bool // the role owns it (or is a member of its owner, or a superuser)
	inPub        bool // it is in the publication itself (pg_publication_rel)
	gaps         []leafGap
	evKey        *keySig // its event key (keys.go)
}

func (t tableState) qualified() string { return t.schema + "." + t.name }
func (t tableState) key() string       { return tableKey(t.schema, t.name) }

// tableKey identifies a table in maps: unlike schema.table, it cannot be
// ambiguous, since names hold no NUL.
func tableKey(schemaName, name string) string { return schemaName + "\x00" + name }
func (t tableState) quoted() string           { return pgx.Identifier{t.schema, t.name}.Sanitize() }

// scope says which tables readTables returns.
type scope int

const (
	scopeAll       scope = iota // every user table ("*"), and those in the publication
	scopeListed                 // the listed tables (quoted names), and those in the publication
	scopePublished              // the tables the publication publishes (pg_publication_tables)
)

// readTables reads the tables of sc, with what decides whether they may
// be published.
func readTables(ctx context.Context, conn *pgx.Conn, publication string, sc scope, listed []string) ([]tableState, error) {
	var cand string
	switch sc {
	case scopeAll:
		cand = userTablesSQL + ` UNION SELECT pr.prrelid FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1`
	case scopeListed:
		cand = `SELECT to_regclass(t)::oid AS oid FROM unnest($2::text[]) t WHERE to_regclass(t) IS NOT NULL
			UNION SELECT pr.prrelid FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1`
	case scopePublished:
		cand = `SELECT c.oid FROM pg_publication_tables pt
			JOIN pg_namespace n ON n.nspname = pt.schemaname
			JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
			WHERE pt.pubname = $1`
	}
	// The planner overestimates the per-table subqueries, and JIT-compiling
	// them takes PostgreSQL 15 a second where running them takes 25 ms
	// (1,000 tables): this query runs every CatalogInterval.
	if _, err := conn.Exec(ctx, `SET jit = off`); err != nil {
		return nil, fmt.Errorf("read the tables of publication %s: %w", publication, err)
	}
	args := []any{publication}
	if sc == scopeListed {
		args = append(args, listed)
	}
	rows, err := conn.Query(ctx, `WITH cand AS (`+cand+`)
		SELECT n.nspname::text, c.relname::text, c.oid, c.relkind = 'p',
			k.pk IS NOT NULL,
			pg_get_userbyid(c.relowner)::text, pg_has_role(c.relowner, 'USAGE'),
			EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1 AND pr.prrelid = c.oid),
			`+badLeavesSQL+`, c.relreplident::text, coalesce(k.pk, '{}'), coalesce(k.ri, '{}')
		FROM cand JOIN pg_class c ON c.oid = cand.oid JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN LATERAL (`+keyLateral+`) k ON true
		ORDER BY 1, 2`, args...)
	if err != nil {
		return nil, fmt.Errorf("read the tables of publication %s: %w", publication, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (tableState, error) {
		var t tableState
		var gaps, replident string
		var k keyColumns
		if err := row.Scan(&t.schema, &t.name, &t.oid, &t.partitioned, &t.hasPK, &t.owner, &t.mayAdd, &t.inPub, &gaps,
			&replident, &k.primaryKey, &k.identityIndex); err != nil {
			return t, err
		}
		t.evKey = newKeySig(replident[0], k)
		if err := json.Unmarshal([]byte(gaps), &t.gaps); err != nil {
			return t, fmt.Errorf("decode the replica identities of %s.%s: %w", t.schema, t.name, err)
		}
		return t, nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the tables of publication %s: %w", publication, err)
	}
	return out, nil
}

// identityGap says why PostgreSQL refuses UPDATE and DELETE on a table or
// partition (quoted) with replica identity ident while a publication
// publishes them, and the SQL that gives it an identity; ok when it does not.
func identityGap(quoted, ident string, hasPK, hasIdentIndex bool) (what, fix string, ok bool) {
	switch {
	case ident == "f", ident == "d" && hasPK, ident == "i" && hasIdentIndex:
		return "", "", true
	case ident == "d":
		return "no primary key and REPLICA IDENTITY DEFAULT",
			fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL; -- or give it a primary key: ALTER TABLE %s ADD PRIMARY KEY (…);", quoted, quoted), false
	}
	what = "REPLICA IDENTITY NOTHING"
	if ident == "i" {
		what = "REPLICA IDENTITY USING INDEX, but the index is gone"
	}
	if hasPK {
		return what, fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL; -- or REPLICA IDENTITY DEFAULT, to use its primary key", quoted), false
	}
	return what, fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL; -- or REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>", quoted), false
}

// writeGap says why PostgreSQL would refuse UPDATE and DELETE on t (on
// some of its partitions, for a partitioned table) while a publication
// publishes them, with the SQL that fixes it; "" when it would not.
func writeGap(t tableState) (what, fix string) {
	if len(t.gaps) == 0 {
		return "", ""
	}
	if !t.partitioned {
		g := t.gaps[0]
		what, fix, _ = identityGap(t.quoted(), g.Ident, g.PK, false)
		return what, fix
	}
	var whats, fixes []string
	for _, g := range t.gaps {
		q := pgx.Identifier{g.Schema, g.Name}.Sanitize()
		w, _, _ := identityGap(q, g.Ident, g.PK, false)
		whats = append(whats, fmt.Sprintf("partition %s.%s: %s", g.Schema, g.Name, w))
		fixes = append(fixes, fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL;", q))
	}
	fix = strings.Join(fixes, " ") + fmt.Sprintf(" -- or give %s a primary key, which its partitions then have too (the replica identity of a partitioned table is not inherited)", t.quoted())
	return strings.Join(whats, "; "), fix
}

// createPublicationSQL is the statement that creates the publication, FOR
// TABLE tables (quoted; none makes an empty publication). With
// publish_via_partition_root, changes to partitions are published under
// the partitioned table's name, which is what subscribers ask for. Each
// table is named ONLY: without it, a table's inheritance children are
// published too, and one that cannot publish its updates and deletes (no
// replica identity) would have them refused (a partitioned table's
// partitions are published either way).
func createPublicationSQL(name string, tables []string) string {
	target := ""
	if len(tables) > 0 {
		target = " FOR TABLE ONLY " + strings.Join(tables, ", ONLY ")
	}
	return fmt.Sprintf("CREATE PUBLICATION %s%s WITH (publish_via_partition_root = true)", pgx.Identifier{name}.Sanitize(), target)
}

// commentSQL marks the publication as managed by tablecast.
func commentSQL(name string) string {
	return fmt.Sprintf("COMMENT ON PUBLICATION %s IS %s", pgx.Identifier{name}.Sanitize(), quoteLiteral(managedComment))
}

// plan is what the publication manager does in one round.
type plan struct {
	add, drop []tableState
	leftOut   map[string]leftOut // by tableKey: tables "*" or the list would have, and why they are not in it
}

// leftOut is a table the publication should have and does not.
type leftOut struct {
	table       string // schema.table
	reason, fix string
}

// planSync decides what a managed publication needs: every table of tables
// in it that can publish its updates and deletes (in list mode, only the
// listed ones), none that cannot. listed is nil for "*", else the listed
// tables as schema.table.
func planSync(publication, role string, tables []tableState, listed map[string]bool) plan {
	p := plan{leftOut: map[string]leftOut{}}
	pub := pgx.Identifier{publication}.Sanitize()
	for _, t := range tables {
		what, fix := writeGap(t)
		wanted := listed == nil || listed[t.key()]
		switch {
		case t.inPub && what != "":
			p.drop = append(p.drop, t)
			if wanted {
				p.leftOut[t.key()] = leftOut{table: t.qualified(), reason: what, fix: fix}
			}
		case t.inPub && !wanted:
			p.drop = append(p.drop, t)
		case t.inPub:
		case !wanted:
		case what != "":
			p.leftOut[t.key()] = leftOut{table: t.qualified(), reason: what, fix: fix}
		case !t.mayAdd:
			p.leftOut[t.key()] = leftOut{
				table:  t.qualified(),
				reason: fmt.Sprintf("owned by %s, and role %s may not add another role's table to a publication", t.owner, role),
				fix: fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE ONLY %s; -- as a superuser; or let the role add it: GRANT %s TO %s;",
					pub, t.quoted(), pgx.Identifier{t.owner}.Sanitize(), pgx.Identifier{role}.Sanitize()),
			}
		default:
			p.add = append(p.add, t)
		}
	}
	return p
}

// listedSet is the set of schema.table names of a TABLECAST_TABLES list,
// nil for "*".
func listedSet(names []string) (map[string]bool, error) {
	if len(names) == 1 && names[0] == "*" {
		return nil, nil
	}
	set := map[string]bool{}
	for _, n := range names {
		s, t, err := schema.ParseTableName(n)
		if err != nil {
			return nil, err
		}
		set[tableKey(s, t)] = true
	}
	return set, nil
}

// isPrivilegeError reports whether err is PostgreSQL's insufficient_privilege.
func isPrivilegeError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501"
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// coverage is what PostgreSQL checks of a table's column list and row
// filter in a publication that publishes updates or deletes: the list must
// hold every column of the replica identity (PostgreSQL 15 refuses any
// list under REPLICA IDENTITY FULL), and the filter may read only those
// (any column under FULL). Otherwise it refuses UPDATE and DELETE on the
// table, with "does not cover the replica identity".
type coverage struct {
	schema, name string
	replident    string // relreplident
	keys         keyColumns
	hasList      bool     // the publication names columns of it
	listed       []string // those columns
	filterReads  []string // the columns its row filter reads; nil without one
	filter       string   // the row filter, as SQL; "" without one
}

// readCoverage reads the coverage of the plain tables publication lists
// with a column list or a row filter (PostgreSQL 15 and later: only a FOR
// TABLE entry has either). The columns a row filter reads are the
// attribute numbers of the Var nodes of its stored expression.
func readCoverage(ctx context.Context, conn *pgx.Conn, publication string) ([]coverage, error) {
	var version int
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return nil, fmt.Errorf("read the server version: %w", err)
	}
	if version < 150000 {
		return nil, nil
	}
	rows, err := conn.Query(ctx, `SELECT n.nspname::text, c.relname::text, c.relreplident::text, `+keyArrays+`,
			pr.prattrs IS NOT NULL,
			ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ANY (pr.prattrs::int2[]) ORDER BY a.attnum),
			ARRAY(SELECT DISTINCT a.attname::text FROM regexp_matches(coalesce(pr.prqual::text, ''), ':varattno ([0-9]+)', 'g') m
				JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = m[1]::int2 ORDER BY 1),
			coalesce(pg_get_expr(pr.prqual, pr.prrelid), '')
		FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
		JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1 AND c.relkind = 'r' AND (pr.prattrs IS NOT NULL OR pr.prqual IS NOT NULL)
		ORDER BY 1, 2`, publication)
	if err != nil {
		return nil, fmt.Errorf("read the column lists and row filters of publication %s: %w", publication, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (coverage, error) {
		var c coverage
		err := row.Scan(&c.schema, &c.name, &c.replident, &c.keys.primaryKey, &c.keys.identityIndex, &c.hasList, &c.listed, &c.filterReads, &c.filter)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read the column lists and row filters of publication %s: %w", publication, err)
	}
	return out, nil
}

// gap says why PostgreSQL refuses UPDATE and DELETE on the table while
// publication publishes them, and the SQL that fixes it; "" when it does
// not (or when the table has no replica identity at all, which writeGap
// says).
func (c coverage) gap(publication string) (what, fix string) {
	table := pgx.Identifier{c.schema, c.name}.Sanitize()
	pub := pgx.Identifier{publication}.Sanitize()
	var ident []string
	switch c.replident {
	case "d":
		ident = c.keys.primaryKey
	case "i":
		ident = c.keys.identityIndex
	case "f":
	default:
		return "", ""
	}
	if c.replident != "f" && len(ident) == 0 {
		return "", "" // no identity: writeGap's
	}
	// The table again, in one transaction, with what it keeps of its
	// entry (ALTER PUBLICATION … SET TABLE would drop every other table).
	readd := func(cols string) string {
		where := ""
		if c.filter != "" {
			where = " WHERE (" + c.filter + ")"
		}
		return fmt.Sprintf("BEGIN; ALTER PUBLICATION %s DROP TABLE %s; ALTER PUBLICATION %s ADD TABLE %s%s%s; COMMIT;", pub, table, pub, table, cols, where)
	}
	if c.hasList {
		missing := slices.DeleteFunc(slices.Clone(ident), func(col string) bool { return slices.Contains(c.listed, col) })
		switch {
		case c.replident == "f":
			return "its column list in the publication does not cover the replica identity (REPLICA IDENTITY FULL admits no column list)",
				readd("") + " -- publish every column, or give it a replica identity of some columns (REPLICA IDENTITY DEFAULT with a primary key)"
		case len(missing) > 0:
			cols := make([]string, 0, len(c.listed)+len(missing))
			for _, col := range append(slices.Clone(c.listed), missing...) {
				cols = append(cols, pgx.Identifier{col}.Sanitize())
			}
			return fmt.Sprintf("its column list in the publication leaves out replica identity column(s) %s", strings.Join(missing, ", ")),
				readd(" ("+strings.Join(cols, ", ")+")") + " -- or publish every column"
		}
	}
	if c.replident != "f" && c.filterReads != nil {
		outside := slices.DeleteFunc(slices.Clone(c.filterReads), func(col string) bool { return slices.Contains(ident, col) })
		if len(outside) > 0 {
			return fmt.Sprintf("its row filter in the publication reads column(s) %s, not part of the replica identity", strings.Join(outside, ", ")),
				fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL; -- or filter on replica identity columns only", table)
		}
	}
	return "", ""
}
