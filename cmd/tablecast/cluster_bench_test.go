package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/natstest"
)

// BenchmarkReaderReplicas measures the reader's rate into the event stream
// on a three-node JetStream cluster (nats-server processes on loopback),
// with the stream and buckets on one replica and on three: one
// transaction of 100,000 inserted rows per iteration, timed from before
// the INSERT to the last of its events stored, `tablecast cdc` built
// without the race detector.
//
//	go test -run '^$' -bench ReaderReplicas -benchtime 3x ./cmd/tablecast
func BenchmarkReaderReplicas(b *testing.B) {
	const rows = 100_000
	c := pgtestRequire(b)
	for _, replicas := range []int{1, 3} {
		b.Run(fmt.Sprintf("R%d", replicas), func(b *testing.B) {
			_, url := c.CreateDatabase(b)
			conn := connect(b, url)
			ctx := context.Background()
			if _, err := conn.Exec(ctx, `CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)`); err != nil {
				b.Fatal(err)
			}
			slot := fmt.Sprintf("tc_breplicas_%d_%d", os.Getpid(), replicas)
			dropSlotAtCleanup(b, url, slot)
			cl := natstest.StartCluster(b, 3)
			cmd := exec.Command(plainBinary(b), "cdc")
			cmd.Env = append(baseEnv(), "TABLECAST_NATS_URL="+cl.URL(), fmt.Sprintf("TABLECAST_STREAM_REPLICAS=%d", replicas),
				"TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_breplicas",
				"TABLECAST_HTTP_ADDR="+freeAddr(b), "TABLECAST_LOG_LEVEL=warn")
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
			// The reader streams once a first row arrives.
			if _, err := conn.Exec(ctx, `INSERT INTO t VALUES (0, 'probe')`); err != nil {
				b.Fatal(err)
			}
			waitFor(b, 2*time.Minute, "the first event", func() bool { return cl.Count("TABLECAST") >= 1 })
			b.ResetTimer()
			var took time.Duration
			for i := range b.N {
				base := cl.Count("TABLECAST")
				start := time.Now()
				if _, err := conn.Exec(ctx, `INSERT INTO t SELECT g, md5(g::text) FROM generate_series($1::bigint, $2::bigint) g`, i*rows+1, (i+1)*rows); err != nil {
					b.Fatal(err)
				}
				for cl.Count("TABLECAST") < base+rows {
					if time.Since(start) > 5*time.Minute {
						b.Fatalf("%d of %d events stored after 5 minutes", cl.Count("TABLECAST")-base, rows)
					}
					time.Sleep(10 * time.Millisecond)
				}
				took += time.Since(start)
			}
			b.ReportMetric(float64(rows*b.N)/took.Seconds(), "events/s")
		})
	}
}
