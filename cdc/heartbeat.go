package cdc

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// heartbeatPrefix marks the reader's own logical decoding messages. It does
// not start with topicMessagePrefix, so a heartbeat is never published.
const heartbeatPrefix = "tablecast-heartbeat"

// heartbeat writes a non-transactional logical decoding message into the
// WAL every HeartbeatInterval. Two reasons: on a database whose published
// tables are quiet, it gives the slot something to confirm, so PostgreSQL
// does not retain WAL forever; and the message carries the time it was
// sent, so the reader measures end-to-end lag when it arrives (both ends
// read this process's clock, so no clock skew enters the figure). It
// carries the reader's random token too: a heartbeat without it (another
// reader's, or one any role forged with pg_logical_emit_message) is not
// measured.
func (r *Reader) heartbeat(ctx context.Context) {
	conn := &lazyConn{url: r.cfg.DatabaseURL}
	defer conn.close()
	failing := false
	tick := time.NewTicker(r.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := conn.do(ctx, r.cfg.HeartbeatInterval, func(ctx context.Context, c *pgx.Conn) error {
			_, err := c.Exec(ctx, `SELECT pg_logical_emit_message(false, $1, $2)`,
				heartbeatPrefix, r.token+" "+time.Now().UTC().Format(time.RFC3339Nano))
			return err
		})
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !failing:
			r.log.Warn("cannot write heartbeat", "err", oneLine(err))
			failing = true
		case err == nil && failing:
			r.log.Info("heartbeats written again")
			failing = false
		}
	}
}
