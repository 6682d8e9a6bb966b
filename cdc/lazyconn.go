package cdc

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// lazyConn is a regular connection for a background loop (the watchdog,
// the heartbeat): opened on first use, dropped after any failure and
// opened again on the next use, so a restarted PostgreSQL costs the loop
// one failed round and nothing else. Only its loop's goroutine uses it.
type lazyConn struct {
	url  string
	conn *pgx.Conn
}

// do runs fn on the connection with a timeout.
func (l *lazyConn) do(ctx context.Context, timeout time.Duration, fn func(context.Context, *pgx.Conn) error) error {
	if l.conn == nil {
		c, err := pgx.Connect(ctx, l.url)
		if err != nil {
			return err
		}
		l.conn = c
	}
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := fn(qctx, l.conn); err != nil {
		l.close()
		return err
	}
	return nil
}

func (l *lazyConn) close() {
	if l.conn != nil {
		l.conn.Close(context.Background())
		l.conn = nil
	}
}
