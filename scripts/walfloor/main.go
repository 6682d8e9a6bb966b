// Command walfloor reads a logical replication slot with pgoutput, as a
// reader that does nothing with what it receives: what it measures is what
// PostgreSQL's walsender itself delivers, the floor tablecast is measured
// against (scripts/bench-cdc.sh, scripts/bench-latency.sh).
//
// pg_recvlogical was that floor, but with --endpos it stops once a keepalive
// reports the server's WAL past the end position, whether or not the
// changes before it were sent: on a transaction of a million rows it
// exits having received none or most of them, so its time is not the time
// to deliver the changes. walfloor counts the changes instead.
//
// Modes:
//
//	-changes N      read until the N-th row change (insert, update, delete)
//	                has arrived, then print "changes N seconds S" (S from the
//	                start of the process) and exit;
//	-commits FILE   until SIGTERM or SIGINT, note each transaction's commit
//	                LSN, commit time and the time its commit message arrived,
//	                and write them to FILE as lines "<lsn hex> <commit unix
//	                ns> <received unix ns> <changes>" when it ends.
//
// Like pg_recvlogical it asks for proto_version 1 and the publication, and
// confirms what it received every -status-interval (10s) and whenever the
// server asks.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// pgEpoch is PostgreSQL's timestamp epoch, 2000-01-01 UTC, in Unix
// microseconds.
const pgEpoch = 946684800 * 1_000_000

type commit struct {
	lsn          uint64
	at, received int64 // unix nanoseconds
	changes      uint32
}

func main() {
	db := flag.String("db", "", "PostgreSQL connection string (replication=database is added)")
	slot := flag.String("slot", "", "logical replication slot (pgoutput)")
	pub := flag.String("publication", "", "publication to read")
	changes := flag.Int64("changes", 0, "exit once this many row changes have arrived")
	commits := flag.String("commits", "", "record every commit's latency into this file, until SIGTERM")
	statusInterval := flag.Duration("status-interval", 10*time.Second, "how often to confirm what was received")
	flag.Parse()
	if *db == "" || *slot == "" || *pub == "" || (*changes > 0) == (*commits != "") {
		fmt.Fprintln(os.Stderr, "usage: walfloor -db URL -slot SLOT -publication PUB (-changes N | -commits FILE)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, *db, *slot, *pub, *changes, *commits, *statusInterval); err != nil {
		fmt.Fprintln(os.Stderr, "walfloor:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, db, slot, pub string, want int64, commitsFile string, statusInterval time.Duration) error {
	began := time.Now()
	sep := "?"
	if strings.Contains(db, "?") {
		sep = "&"
	}
	conn, err := pgconn.Connect(ctx, db+sep+"replication=database")
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + pub + "'"},
	})
	if err != nil {
		return fmt.Errorf("start replication on slot %s: %w", slot, err)
	}
	var (
		received   uint64 // end of the last WAL data received
		n          int64  // row changes received
		inTxn      uint32 // row changes of the open transaction
		log        []commit
		lastStatus = time.Now()
	)
	if commitsFile != "" {
		log = make([]commit, 0, 1<<16)
	}
	status := func(now time.Time) error {
		lastStatus = now
		lsn := pglogrepl.LSN(received)
		return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn, ClientTime: now})
	}
	netConn := conn.Conn()
	deadline := time.Time{}
	for ctx.Err() == nil {
		now := time.Now()
		if now.Sub(lastStatus) >= statusInterval {
			if err := status(now); err != nil {
				return fmt.Errorf("send status: %w", err)
			}
		}
		// A read deadline a second ahead, renewed once a second rather
		// than per message, so that SIGTERM is noticed while idle.
		if now.After(deadline.Add(-500 * time.Millisecond)) {
			deadline = now.Add(time.Second)
			if err := netConn.SetReadDeadline(deadline); err != nil {
				return err
			}
		}
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) {
				continue
			}
			if ctx.Err() != nil {
				break
			}
			return fmt.Errorf("receive: %w", err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				return fmt.Errorf("replication: %s", e.Message)
			}
			continue
		}
		d := cd.Data
		if len(d) == 0 {
			continue
		}
		switch d[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			if len(d) >= 18 && d[17] == 1 {
				if err := status(time.Now()); err != nil {
					return fmt.Errorf("send status: %w", err)
				}
			}
		case pglogrepl.XLogDataByteID:
			if len(d) < 26 {
				return errors.New("short XLogData")
			}
			received = max(received, binary.BigEndian.Uint64(d[9:17]))
			w := d[25:]
			switch w[0] {
			case 'I', 'U', 'D':
				n++
				inTxn++
				if n == want {
					fmt.Printf("changes %d seconds %.6f\n", n, time.Since(began).Seconds())
					return nil
				}
			case 'B':
				inTxn = 0
			case 'C':
				// Commit: flags (1), commit LSN (8), end LSN (8), commit time (8).
				if log != nil && len(w) >= 26 {
					at := int64(binary.BigEndian.Uint64(w[18:26]))
					log = append(log, commit{
						lsn: binary.BigEndian.Uint64(w[2:10]), at: (at + pgEpoch) * 1000,
						received: time.Now().UnixNano(), changes: inTxn,
					})
				}
			}
		}
	}
	if commitsFile == "" {
		return fmt.Errorf("stopped after %d of %d changes", n, want)
	}
	f, err := os.Create(commitsFile)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	var line []byte
	for _, c := range log {
		line = strconv.AppendUint(line[:0], c.lsn, 16)
		line = append(line, ' ')
		line = strconv.AppendInt(line, c.at, 10)
		line = append(line, ' ')
		line = strconv.AppendInt(line, c.received, 10)
		line = append(line, ' ')
		line = strconv.AppendUint(line, uint64(c.changes), 10)
		line = append(line, '\n')
		_, _ = w.Write(line)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}
