package cdc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tablecast/tablecast/schema"
)

// ConfigError is a problem that retrying will not fix: the database or the
// role is not set up for logical replication, or the configuration names
// something that does not exist. Its message is one line that says what to
// change.
type ConfigError struct {
	msg   string
	field string
}

// Error is the problem, after the field it concerns when it is one field's
// ("Slot: …").
func (e *ConfigError) Error() string {
	if e.field == "" {
		return e.msg
	}
	return e.field + ": " + e.msg
}

// Field names the Config field at fault ("Tables"), or is "" when the
// problem is not one field's.
func (e *ConfigError) Field() string { return e.field }

// Problem is the message without the field's name, for a caller that names
// the field its own way (an environment variable).
func (e *ConfigError) Problem() string { return e.msg }

func configErrorf(format string, args ...any) error {
	return &ConfigError{msg: fmt.Sprintf(format, args...)}
}

// fieldErrorf is a ConfigError about one Config field; the message does
// not name the field: Error puts its name in front, and a caller that names
// fields its own way uses Field and Problem.
func fieldErrorf(field, format string, args ...any) error {
	return &ConfigError{msg: fmt.Sprintf(format, args...), field: field}
}

// tablesErrorf is a ConfigError about Config.Tables.
func tablesErrorf(format string, args ...any) error { return fieldErrorf("Tables", format, args...) }

// IsConfigError reports whether err is (or wraps) a ConfigError.
func IsConfigError(err error) bool {
	var ce *ConfigError
	return errors.As(err, &ce)
}

// source is what preflight learned about the database.
type source struct {
	database   string // current_database(), the subjects' <database> token
	slotExists bool
}

// preflight checks that the database can be streamed from, creates the
// publication when missing and checks the slot (created by the reader,
// which may take a snapshot with it). Every failure is returned as a
// ConfigError except a lost connection.
func preflight(ctx context.Context, cfg Config, log *slog.Logger) (source, error) {
	var src source
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return src, &ConfigError{msg: "connect to PostgreSQL: " + oneLine(err)}
	}
	defer conn.Close(context.Background())

	var walLevel, user string
	var canReplicate bool
	err = conn.QueryRow(ctx, `SELECT current_setting('wal_level'), current_database(), current_user,
		(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)`).
		Scan(&walLevel, &src.database, &user, &canReplicate)
	if err != nil {
		return src, fmt.Errorf("read server settings: %w", err)
	}
	if walLevel != "logical" {
		return src, configErrorf("wal_level is %q, logical replication needs \"logical\": run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL", walLevel)
	}
	if !canReplicate {
		return src, configErrorf("role %q lacks the REPLICATION attribute: run ALTER ROLE %s REPLICATION", user, pgx.Identifier{user}.Sanitize())
	}

	listed, err := resolveTables(ctx, conn, cfg.Tables)
	if err != nil {
		return src, err
	}
	if err := ensurePublication(ctx, conn, cfg, user, listed, log); err != nil {
		return src, err
	}
	if src.slotExists, err = checkSlot(ctx, conn, cfg, src.database); err != nil {
		return src, err
	}
	return src, nil
}

// resolveTables checks that every named table exists and returns them as
// quoted identifiers; nil means all tables.
func resolveTables(ctx context.Context, conn *pgx.Conn, names []string) ([]string, error) {
	if len(names) == 1 && names[0] == "*" {
		return nil, nil
	}
	var quoted, missing []string
	for _, name := range names {
		s, t, err := schema.ParseTableName(name)
		if err != nil {
			return nil, tablesErrorf("%v", err)
		}
		var kind string
		err = conn.QueryRow(ctx, `SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2`, s, t).Scan(&kind)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			missing = append(missing, name)
			continue
		case err != nil:
			return nil, fmt.Errorf("look up table %s: %w", name, err)
		case kind != "r" && kind != "p":
			return nil, tablesErrorf("%s is not a table (relkind %s)", name, kind)
		}
		quoted = append(quoted, pgx.Identifier{s, t}.Sanitize())
	}
	if len(missing) > 0 {
		return nil, tablesErrorf("names tables that do not exist: %s", strings.Join(missing, ", "))
	}
	return quoted, nil
}

// ensurePublication creates the publication when it is missing, FOR TABLE
// the tables that can publish their updates and deletes (listed, quoted,
// or all of them for nil), and marked as managed by tablecast. For a
// publication tablecast manages, or creates, the listed tables must all be
// able to: a table PostgreSQL would then refuse UPDATE and DELETE on is a
// ConfigError with the SQL that fixes it. A DBA's publication is left as
// it is.
func ensurePublication(ctx context.Context, conn *pgx.Conn, cfg Config, role string, listed []string, log *slog.Logger) error {
	name := cfg.Publication
	pub, err := readPublication(ctx, conn, name)
	if err != nil {
		return err
	}
	if pub.exists && !pub.managed {
		if listed != nil {
			log.Info("the publication is not managed by tablecast, so the configured tables do not apply: it is read as it is", "publication", name)
		}
		return nil
	}
	sc := scopeAll
	if listed != nil {
		sc = scopeListed
	}
	tables, err := readTables(ctx, conn, name, sc, listed)
	if err != nil {
		return err
	}
	set, err := listedSet(cfg.Tables)
	if err != nil {
		return tablesErrorf("%v", err)
	}
	p := planSync(name, role, tables, set)
	if listed != nil && len(p.leftOut) > 0 {
		var problems []string
		for _, k := range sortedKeys(p.leftOut) {
			lo := p.leftOut[k]
			problems = append(problems, fmt.Sprintf("%s: %s; fix: %s", lo.table, lo.reason, lo.fix))
		}
		return tablesErrorf("tables PostgreSQL would refuse UPDATE and DELETE on once published, or that the role may not publish: %s", strings.Join(problems, " | "))
	}
	if pub.exists {
		return nil // the reader's publication manager keeps it in step
	}
	names := make([]string, len(p.add))
	for i, t := range p.add {
		names[i] = t.quoted()
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("create publication %s: %w", name, err)
	}
	defer tx.Rollback(context.Background())
	for _, sql := range []string{createPublicationSQL(name, names), commentSQL(name)} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && (pgErr.Code == "42710" || pgErr.Code == "23505") { // duplicate_object, unique_violation
				// Another reader of the slot (a standby starting beside
				// the leader) created it at the same moment.
				log.Info("publication created by another reader meanwhile", "publication", name)
				return nil
			}
			if isPrivilegeError(err) {
				var pgErr *pgconn.PgError
				errors.As(err, &pgErr)
				return configErrorf("create publication %s: %s (the role needs CREATE on the database: GRANT CREATE ON DATABASE %s TO %s; or have a DBA create the publication, which tablecast then reads as it is)",
					name, pgErr.Message, pgx.Identifier{currentDatabase(ctx, conn)}.Sanitize(), pgx.Identifier{role}.Sanitize())
			}
			return fmt.Errorf("create publication %s: %w", name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("create publication %s: %w", name, err)
	}
	log.Info("created publication, managed by tablecast", "publication", name, "tables", len(names), "left_out", len(p.leftOut))
	return nil
}

func currentDatabase(ctx context.Context, conn *pgx.Conn) string {
	var db string
	_ = conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db)
	return db
}

// checkSlot reports whether the slot exists, and fails when it exists but
// cannot be ours: another plugin, or another database.
func checkSlot(ctx context.Context, conn *pgx.Conn, cfg Config, database string) (bool, error) {
	var plugin, slotDB string
	err := conn.QueryRow(ctx, `SELECT plugin, database FROM pg_replication_slots WHERE slot_name = $1`, cfg.Slot).Scan(&plugin, &slotDB)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("look up replication slot %s: %w", cfg.Slot, err)
	case plugin != "pgoutput":
		return false, fieldErrorf("Slot", "replication slot %q uses plugin %q, not pgoutput: choose another slot, or drop it", cfg.Slot, plugin)
	case slotDB != database:
		return false, fieldErrorf("Slot", "replication slot %q belongs to database %q, not %q: choose another slot", cfg.Slot, slotDB, database)
	}
	return true, nil
}

// connectReplication opens a logical replication connection to the
// database of url.
func connectReplication(ctx context.Context, url string) (*pgconn.PgConn, error) {
	pc, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, fieldErrorf("DatabaseURL", "%s", oneLine(err))
	}
	pc.RuntimeParams["replication"] = "database"
	// Values are converted from their text form; keep it stable.
	pc.RuntimeParams["DateStyle"] = "ISO, YMD"
	pc.RuntimeParams["IntervalStyle"] = "postgres"
	pc.RuntimeParams["extra_float_digits"] = "3"
	pc.RuntimeParams["TimeZone"] = "UTC"
	pc.RuntimeParams["application_name"] = "tablecast"
	pc.BuildFrontend = replicationFrontend
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	return conn, nil
}

// replicationReadBuffer is how much of the replication stream one read
// system call may take. pgproto3 reads 8 KiB at a time, a few wide rows;
// when the reader is behind, the socket holds far more, and reading it in
// larger pieces saves a system call every few changes. A read returns what
// is there without waiting for the buffer to fill, and a read deadline's
// error passes through unchanged (the session's loop relies on both).
const replicationReadBuffer = 128 << 10

// replicationFrontend is the replication connection's pgproto3.Frontend:
// pgconn reads r, and writes w, through it.
func replicationFrontend(r io.Reader, w io.Writer) *pgproto3.Frontend {
	return pgproto3.NewFrontend(bufio.NewReaderSize(r, replicationReadBuffer), w)
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
