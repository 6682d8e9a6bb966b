package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/tablecast/tablecast/cdc"
)

const slotUsage = "usage: tablecast slot status | tablecast slot drop [--force]"

// slotCommand is a parsed `tablecast slot …`.
type slotCommand struct {
	action string // "status" or "drop"
	force  bool   // drop: terminate the process holding the slot
}

// parseSlotArgs parses the arguments after "slot".
func parseSlotArgs(args []string) (slotCommand, error) {
	if len(args) == 0 {
		return slotCommand{}, usageError{"slot: say status or drop (" + slotUsage + ")"}
	}
	c := slotCommand{action: args[0]}
	fs := flag.NewFlagSet("slot "+c.action, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	switch c.action {
	case "status":
	case "drop":
		fs.BoolVar(&c.force, "force", false, "terminate the process holding the slot, then drop it")
	default:
		return c, usageError{fmt.Sprintf("slot: unknown action %q (%s)", c.action, slotUsage)}
	}
	if err := fs.Parse(args[1:]); err != nil {
		return c, usageError{fmt.Sprintf("slot %s: %v (%s)", c.action, err, slotUsage)}
	}
	if fs.NArg() > 0 {
		return c, usageError{fmt.Sprintf("slot %s: unexpected argument %q (%s)", c.action, fs.Arg(0), slotUsage)}
	}
	return c, nil
}

func (c slotCommand) run(ctx context.Context, cfg Config, out io.Writer) error {
	if c.action == "status" {
		return slotStatus(ctx, cfg, out)
	}
	return slotDrop(ctx, cfg, c.force, out)
}

// slotStatus prints the slot's row of pg_replication_slots.
func slotStatus(ctx context.Context, cfg Config, out io.Writer) error {
	s, err := cdc.SlotStatus(ctx, cfg.cdcConfig())
	if errors.Is(err, cdc.ErrNoSlot) {
		return fmt.Errorf("slot status: replication slot %q does not exist (tablecast creates it on first run)", cfg.Slot)
	}
	if err != nil {
		return fmt.Errorf("slot status: %w", err)
	}
	active := "no"
	if s.Active {
		active = fmt.Sprintf("yes, pid %d", s.PID)
	}
	plugin := s.Plugin
	if s.Type != "logical" {
		plugin = "(" + s.Type + " slot)"
	}
	safe := "unlimited (max_slot_wal_keep_size = -1)"
	if s.SafeWALSize != nil {
		safe = byteCount(*s.SafeWALSize)
		if *s.SafeWALSize < 0 {
			safe += ": already beyond max_slot_wal_keep_size"
		}
	} else if s.KeepLimit >= 0 {
		safe = "unknown"
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, row := range [][2]string{
		{"slot", s.Name},
		{"plugin", plugin},
		{"database", orNone(s.Database)},
		{"active", active},
		{"restart_lsn", orNone(s.RestartLSN)},
		{"confirmed_flush_lsn", orNone(s.ConfirmedFlushLSN)},
		{"lag", knownBytes(s.LagBytes) + " (WAL written since confirmed_flush_lsn)"},
		{"retained WAL", knownBytes(s.RetainedBytes) + " (since restart_lsn)"},
		{"wal_status", orNone(s.WALStatus)},
		{"safe_wal_size", safe},
	} {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// slotDrop drops the slot and says what it did.
func slotDrop(ctx context.Context, cfg Config, force bool, out io.Writer) error {
	d, err := cdc.DropSlot(ctx, cfg.cdcConfig(), force)
	for _, pid := range d.Terminated {
		fmt.Fprintf(out, "terminated pid %d, which held replication slot %s\n", pid, cfg.Slot)
	}
	var active *cdc.SlotActiveError
	switch {
	case errors.Is(err, cdc.ErrNoSlot):
		return fmt.Errorf("slot drop: replication slot %q does not exist", cfg.Slot)
	case errors.As(err, &active):
		return fmt.Errorf("slot drop: %w; or run tablecast slot drop --force, which does that and then drops the slot", err)
	case err != nil:
		return fmt.Errorf("slot drop: %w", err)
	}
	fmt.Fprintf(out, "dropped replication slot %s (database %s, confirmed_flush_lsn %s)\n", d.Slot.Name, orNone(d.Slot.Database), orNone(d.Slot.ConfirmedFlushLSN))
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// knownBytes is byteCount of a distance that is -1 when unknown.
func knownBytes(n int64) string {
	if n < 0 {
		return "unknown"
	}
	return byteCount(n)
}

// byteCount writes a byte count exactly, and for people when it is large:
// "1572864 bytes (1.5 MiB)".
func byteCount(n int64) string {
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%d bytes (%s)", n, cdc.FormatBytes(n))
}
