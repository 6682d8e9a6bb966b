package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/stream"
)

// BenchmarkOldRows measures what complete old rows cost the reader on an
// update workload: `tablecast cdc` (built without the race detector) with
// the row state on, and TABLECAST_OLD_ROWS_TABLES off, on with the rows'
// previous versions in the reader's cache (rows inserted by the same
// process), and on with every previous version read from the row state (a
// process started after the rows were applied). Each run inserts
// TABLECAST_OLD_ROWS_BENCH_ROWS rows (default 50,000; 1,000-row
// transactions), waits for the row state to apply them, then updates each
// once in 1,000-row transactions, and reports updates/s from the first
// update's commit to the time JetStream stored the last update's event.
//
//	go test -run '^$' -bench OldRows -benchtime 1x ./cmd/tablecast
func BenchmarkOldRows(b *testing.B) {
	rows := 50000
	if v, err := strconv.Atoi(os.Getenv("TABLECAST_OLD_ROWS_BENCH_ROWS")); err == nil && v >= 1000 {
		rows = v / 1000 * 1000
	}
	for _, bc := range []struct {
		name    string
		old     bool
		restart bool
	}{{"off", false, false}, {"on-cache", true, false}, {"on-rowstate", true, true}} {
		b.Run(bc.name, func(b *testing.B) {
			for range b.N {
				rate := oldRowsUpdateRate(b, rows, bc.old, bc.restart)
				b.ReportMetric(rate, "updates/s")
			}
		})
	}
}

func oldRowsUpdateRate(b *testing.B, rows int, old, restart bool) float64 {
	c := pgtestRequire(b)
	db, url := c.CreateDatabase(b)
	conn := connect(b, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE bench (id bigint PRIMARY KEY, qty int, label text, price numeric(12,2), at timestamptz, flag boolean)`); err != nil {
		b.Fatal(err)
	}
	slot := fmt.Sprintf("tc_boldrows_%d", os.Getpid())
	dropSlotAtCleanup(b, url, slot)
	n := natstest.StartProcess(b)
	httpAddr := freeAddr(b)
	env := append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_boldrows", "TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_LOG_LEVEL=warn")
	if old {
		env = append(env, "TABLECAST_OLD_ROWS_TABLES=public.bench")
	}
	start := func() func() {
		cmd := exec.Command(plainBinary(b), "cdc")
		cmd.Env, cmd.Stderr = env, os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		stop := func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }
		b.Cleanup(stop)
		waitFor(b, time.Minute, "/readyz of tablecast cdc", func() bool {
			code, _, err := httpGet("http://" + httpAddr + "/readyz")
			return err == nil && code == 200
		})
		return stop
	}
	stop := start()
	prefix := "tablecast." + stream.Token(db) + ".public.bench."
	// lastOf waits for the event of row id on subject op and returns when
	// JetStream stored it.
	lastOf := func(op string, id int) time.Time {
		var at time.Time
		waitFor(b, 5*time.Minute, op+" of the last row", func() bool {
			str, err := n.JS.Stream(ctx, "TABLECAST")
			if err != nil {
				return false
			}
			msg, err := str.GetLastMsgForSubject(ctx, prefix+op)
			if err != nil || !strings.Contains(string(msg.Data), `"key":{"id":`+strconv.Itoa(id)+`}`) {
				return false
			}
			at = msg.Time
			return true
		})
		return at
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN FOR i IN 0..%d LOOP
		INSERT INTO bench SELECT g, 1, 'label ' || g, g / 100.0, now(), g %% 2 = 0 FROM generate_series(i*1000+1, i*1000+1000) g;
		COMMIT; END LOOP; END $$`, rows/1000-1)); err != nil {
		b.Fatal(err)
	}
	lastOf("create", rows)
	waitFor(b, 5*time.Minute, "the row state to apply the inserts", func() bool {
		rs, err := n.JS.Stream(ctx, "TABLECAST_ROWS")
		if err != nil {
			return false
		}
		_, err = rs.GetLastMsgForSubject(ctx, rowstate.RowSubject("tablecast", db, "public", "bench",
			rowstate.KeyToken([]byte(`{"id":`+strconv.Itoa(rows)+`}`))))
		return err == nil
	})
	if restart {
		stop()
		start()
	}
	began := time.Now()
	if _, err := conn.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN FOR i IN 0..%d LOOP
		UPDATE bench SET qty = qty + 1, label = label || 'x' WHERE id BETWEEN i*1000+1 AND i*1000+1000;
		COMMIT; END LOOP; END $$`, rows/1000-1)); err != nil {
		b.Fatal(err)
	}
	end := lastOf("update", rows)
	return float64(rows) / end.Sub(began).Seconds()
}
