package cdc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Slot is a replication slot as pg_replication_slots shows it, with the
// distances that matter to whoever keeps the disk from filling up.
type Slot struct {
	Name     string
	Type     string // "logical" or "physical"
	Plugin   string // output plugin; empty for a physical slot
	Database string // database of a logical slot; empty for a physical one
	Active   bool
	PID      int // the process holding the slot; 0 when inactive

	RestartLSN        string // oldest WAL the slot still needs; empty when unknown (a lost slot)
	ConfirmedFlushLSN string // what the consumer has confirmed; empty when unknown
	// LagBytes is how far the server's WAL is ahead of ConfirmedFlushLSN:
	// what the consumer has not confirmed yet. -1 when unknown.
	LagBytes int64
	// RetainedBytes is how much WAL PostgreSQL keeps for the slot, from
	// RestartLSN to the server's WAL position: what max_slot_wal_keep_size
	// is compared with. -1 when unknown.
	RetainedBytes int64
	// WALStatus is reserved, extended, unreserved or lost (pg_replication_slots.wal_status).
	WALStatus string
	// SafeWALSize is how many more bytes of WAL can be written before the
	// slot is in danger of being invalidated; nil when there is no limit
	// (max_slot_wal_keep_size = -1) or the slot is lost.
	SafeWALSize *int64
	// KeepLimit is max_slot_wal_keep_size in bytes; -1 means unlimited.
	KeepLimit int64
}

// ErrNoSlot means the configured replication slot does not exist.
var ErrNoSlot = errors.New("replication slot does not exist")

// SlotActiveError reports that another process holds the slot, so it
// cannot be dropped.
type SlotActiveError struct {
	Slot        string
	PID         int
	Application string // the holder's application_name, when visible
}

func (e *SlotActiveError) Error() string {
	holder := fmt.Sprintf("pid %d", e.PID)
	if e.Application != "" {
		holder += fmt.Sprintf(" (%s)", e.Application)
	}
	return fmt.Sprintf("replication slot %q is active, held by %s: stop that process first, or terminate it with SELECT pg_terminate_backend(%d)", e.Slot, holder, e.PID)
}

// SlotStatus returns the configured slot (cfg.Slot) as pg_replication_slots
// shows it, or an error wrapping ErrNoSlot when it does not exist.
func SlotStatus(ctx context.Context, cfg Config) (Slot, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Slot{}, err
	}
	conn, err := connectSQL(ctx, cfg.DatabaseURL)
	if err != nil {
		return Slot{}, err
	}
	defer conn.Close(context.Background())
	s, found, err := readSlot(ctx, conn, cfg.Slot)
	if err != nil {
		return s, err
	}
	if !found {
		return s, fmt.Errorf("replication slot %q: %w", cfg.Slot, ErrNoSlot)
	}
	return s, nil
}

// Dropped says what DropSlot did.
type Dropped struct {
	// Slot is the slot as it was just before it was dropped.
	Slot Slot
	// Terminated are the processes that held the slot and were terminated
	// (only with force; a reader that reconnects may take the slot again
	// before it is dropped, and is then terminated again).
	Terminated []int
}

// dropPatience bounds how long DropSlot with force keeps terminating
// holders that take the slot back (a tablecast reconnects within its retry
// backoff, 0.5s at first) and waits for a terminated one to let go.
const dropPatience = 30 * time.Second

// DropSlot drops the configured slot (cfg.Slot). It refuses, with a
// *SlotActiveError, when a process holds the slot, unless force is set:
// then it terminates the holder with pg_terminate_backend and drops the
// slot once it is free. It also refuses a slot that belongs to another
// database than cfg.DatabaseURL's, which cannot be the one this
// configuration streams from. A missing slot is an error wrapping ErrNoSlot.
func DropSlot(ctx context.Context, cfg Config, force bool) (Dropped, error) {
	var d Dropped
	cfg, err := cfg.withDefaults()
	if err != nil {
		return d, err
	}
	conn, err := connectSQL(ctx, cfg.DatabaseURL)
	if err != nil {
		return d, err
	}
	defer conn.Close(context.Background())

	var database string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&database); err != nil {
		return d, fmt.Errorf("read current database: %w", err)
	}
	deadline := time.Now().Add(dropPatience)
	for {
		s, found, err := readSlot(ctx, conn, cfg.Slot)
		if err != nil {
			return d, err
		}
		if !found {
			return d, fmt.Errorf("replication slot %q: %w", cfg.Slot, ErrNoSlot)
		}
		if s.Database != "" && s.Database != database {
			return d, fmt.Errorf("replication slot %q belongs to database %q, not %q, so it is not this configuration's: drop it from there if it must go (SELECT pg_drop_replication_slot(%s))",
				s.Name, s.Database, database, quoteLiteral(s.Name))
		}
		d.Slot = s
		if s.Active {
			if !force {
				return d, &SlotActiveError{Slot: s.Name, PID: s.PID, Application: holderApplication(ctx, conn, s.PID)}
			}
			if time.Now().After(deadline) {
				return d, fmt.Errorf("drop replication slot %q: still taken back after terminating pids %v for %s", s.Name, d.Terminated, dropPatience)
			}
			if err := terminate(ctx, conn, s); err != nil {
				return d, err
			}
			d.Terminated = append(d.Terminated, s.PID)
			if err := waitInactive(ctx, conn, s, deadline); err != nil {
				return d, err
			}
			continue
		}
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, s.Name)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" { // object_in_use: taken meanwhile
			continue
		}
		if err != nil {
			return d, fmt.Errorf("drop replication slot %q: %w", s.Name, err)
		}
		return d, nil
	}
}

// terminate ends the process holding s.
func terminate(ctx context.Context, conn *pgx.Conn, s Slot) error {
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, s.PID).Scan(&ok); err != nil {
		return fmt.Errorf("terminate pid %d, which holds replication slot %q: %w", s.PID, s.Name, err)
	}
	// false: the process had already gone, which is as good.
	return nil
}

// waitInactive waits until the terminated holder of s has let it go.
func waitInactive(ctx context.Context, conn *pgx.Conn, s Slot, deadline time.Time) error {
	for {
		var pid *int32
		err := conn.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, s.Name).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && (pid == nil || int(*pid) != s.PID) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("wait for pid %d to release replication slot %q: %w", s.PID, s.Name, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d still holds replication slot %q %s after it was told to terminate", s.PID, s.Name, dropPatience)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for pid %d to release replication slot %q: %w", s.PID, s.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// holderApplication returns the application_name of pid, or "" when it is
// not visible (or empty).
func holderApplication(ctx context.Context, conn *pgx.Conn, pid int) string {
	var app string
	_ = conn.QueryRow(ctx, `SELECT coalesce(application_name, '') FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&app)
	return app
}

// readSlot reads a slot from pg_replication_slots; found is false when
// there is none of that name.
func readSlot(ctx context.Context, conn *pgx.Conn, name string) (s Slot, found bool, err error) {
	var (
		plugin, database, restart, confirmed, walStatus *string
		pid                                             *int32
		lag, retained, safe                             *int64
		keepMB                                          int64
	)
	err = conn.QueryRow(ctx, `SELECT s.slot_name::text, s.slot_type, s.plugin::text, s.database::text, s.active, s.active_pid,
			s.restart_lsn::text, s.confirmed_flush_lsn::text,
			pg_wal_lsn_diff(w.lsn, s.confirmed_flush_lsn)::bigint,
			pg_wal_lsn_diff(w.lsn, s.restart_lsn)::bigint,
			s.wal_status, s.safe_wal_size,
			(SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size')
		FROM pg_replication_slots s,
			(SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn) w
		WHERE s.slot_name = $1`, name).
		Scan(&s.Name, &s.Type, &plugin, &database, &s.Active, &pid, &restart, &confirmed, &lag, &retained, &walStatus, &safe, &keepMB)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, false, nil
	}
	if err != nil {
		return s, false, fmt.Errorf("read replication slot %q: %w", name, err)
	}
	s.Plugin, s.Database = deref(plugin), deref(database)
	s.RestartLSN, s.ConfirmedFlushLSN, s.WALStatus = deref(restart), deref(confirmed), deref(walStatus)
	if pid != nil {
		s.PID = int(*pid)
	}
	s.LagBytes, s.RetainedBytes = -1, -1
	if lag != nil {
		s.LagBytes = *lag
	}
	if retained != nil {
		s.RetainedBytes = *retained
	}
	s.SafeWALSize = safe
	s.KeepLimit = -1
	if keepMB >= 0 {
		s.KeepLimit = keepMB << 20 // the setting's unit is MB
	}
	return s, true, nil
}

// connectSQL opens an ordinary connection for the DBA tools, with an
// error on one line (pgx spreads a failure to connect over several) that
// still unwraps to the cause.
func connectSQL(ctx context.Context, url string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, &connectError{err: err}
	}
	return conn, nil
}

type connectError struct{ err error }

func (e *connectError) Error() string { return "connect to PostgreSQL: " + oneLine(e.err) }
func (e *connectError) Unwrap() error { return e.err }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// quoteLiteral quotes s as an SQL string literal, for the SQL that doctor
// and the errors show.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
