package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/tablecast/tablecast/cdc"
)

// snapshotCmd asks the running reader to snapshot one table while it
// streams. It only writes a request into the WAL, so it needs the database
// and nothing else; the reader does the work.
func snapshotCmd(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	if len(args) != 1 {
		return usageError{"snapshot: name one table (usage: tablecast snapshot schema.table)"}
	}
	if cfg.DatabaseURL == "" {
		return errors.New("TABLECAST_DATABASE_URL is empty: set it to the database the reader streams")
	}
	id, err := cdc.RequestSnapshot(ctx, cfg.DatabaseURL, cfg.Publication, args[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "requested a snapshot of %s (id %s).\nThe running reader publishes its rows as op read, in key-ordered chunks, while it streams; watch with: tablecast tail %s\n", args[0], id, args[0])
	return nil
}
