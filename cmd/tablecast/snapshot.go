package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tablecast/tablecast/cdc"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// snapshotConnectTimeout bounds the wait for NATS: the command is one
// request, and a user waiting on a NATS that is not there wants to know.
const snapshotConnectTimeout = 10 * time.Second

// snapshotCmd asks the running reader to snapshot one table while it
// streams: a request over NATS, answered by the reader (queued with an id,
// or refused with the reason). NATS access is what lets one ask; the
// database is not involved, so no database role can.
func snapshotCmd(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	const usage = "(usage: tablecast snapshot schema.table)"
	if len(args) != 1 {
		return usageError{"snapshot: name one table " + usage}
	}
	// The table is checked here, not by the reader: a mistyped argument
	// (a flag, no schema) is then said at once, even with no NATS to ask.
	switch arg := args[0]; {
	case arg == "-h" || arg == "-help" || arg == "--help":
		fmt.Fprintln(out, "usage: tablecast snapshot schema.table: ask the running reader, over NATS, to send the table's rows again as op read")
		return nil
	case strings.HasPrefix(arg, "-"):
		return usageError{fmt.Sprintf("snapshot: no flag %s: it takes one table %s", arg, usage)}
	default:
		if _, _, err := schema.ParseTableName(arg); err != nil {
			return usageError{"snapshot: " + err.Error() + " " + usage}
		}
	}
	url := cfg.clientURL()
	opts, err := cfg.natsOptions()
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, snapshotConnectTimeout)
	defer cancel()
	nc, err := stream.Connect(cctx, url, "tablecast-snapshot", newLogger(cfg, os.Stderr), opts...)
	if err != nil {
		return fmt.Errorf("%w (set TABLECAST_NATS_URL to the NATS the reader publishes to)", err)
	}
	defer nc.Close()
	ticket, err := cdc.RequestSnapshot(ctx, nc, cfg.SubjectPrefix, cfg.Slot, args[0])
	if errors.Is(err, cdc.ErrNoReader) {
		return fmt.Errorf("%w; is tablecast run or tablecast cdc streaming, with this TABLECAST_SLOT (%s) and TABLECAST_SUBJECT_PREFIX (%s), on the NATS at %s?",
			err, cfg.Slot, cfg.SubjectPrefix, url)
	}
	if err != nil {
		return err
	}
	queued := "next"
	if ticket.Ahead > 0 {
		queued = fmt.Sprintf("after %d other snapshots", ticket.Ahead)
	}
	fmt.Fprintf(out, "requested a snapshot of %s (id %s), queued %s.\nThe running reader publishes its rows as op read, in key-ordered chunks, while it streams; watch with: tablecast tail %s\n",
		ticket.Table, ticket.ID, queued, args[0])
	return nil
}
