package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// BenchmarkLiveViewSnapshot measures subscribe → synced against `tablecast
// run` (built without the race detector) for a table of 100,000 rows: a
// view filtered to 10,000 of them, the whole table, and many clients at
// once (TABLECAST_VIEWS_CONCURRENT, default 100, each filtered to 10,000
// rows), reporting the process's peak resident memory (VmHWM).
//
//	go test -run '^$' -bench LiveViewSnapshot -benchtime 5x ./cmd/tablecast
func BenchmarkLiveViewSnapshot(b *testing.B) {
	c := pgtestRequire(b)
	_, url := c.CreateDatabase(b)
	conn := connect(b, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE big (id int PRIMARY KEY, grp int NOT NULL, payload text NOT NULL);
		INSERT INTO big SELECT g, g % 10, md5(g::text) FROM generate_series(1, 100000) g`); err != nil {
		b.Fatal(err)
	}
	slot := fmt.Sprintf("tc_bviews_%d", os.Getpid())
	dropSlotAtCleanup(b, url, slot)
	httpAddr, natsAddr := freeAddr(b), freeAddr(b)
	cmd := exec.Command(plainBinary(b), "run")
	cmd.Env = append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_bviews",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+b.TempDir(),
		"TABLECAST_ALLOW_ANONYMOUS=true", "TABLECAST_WS_MAX_CONNECTIONS_PER_IDENTITY=5000", "TABLECAST_LOG_LEVEL=warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	waitFor(b, 2*time.Minute, "/readyz", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	ws := "ws://" + httpAddr + "/ws"
	waitFor(b, 2*time.Minute, "the row state to hold every row", func() bool {
		n, _, err := snapshotOnce(ws, "")
		return err == nil && n == 100000
	})
	for _, bc := range []struct{ name, where string }{{"filtered-10k", `{"grp":{"eq":3}}`}, {"whole-100k", ""}} {
		b.Run(bc.name, func(b *testing.B) {
			rows := 0
			for i := 0; i < b.N; i++ {
				n, _, err := snapshotOnce(ws, bc.where)
				if err != nil {
					b.Fatal(err)
				}
				rows = n
			}
			b.ReportMetric(float64(rows), "rows")
		})
	}
	b.Run("concurrent", func(b *testing.B) {
		clients := 100
		if v, err := strconv.Atoi(os.Getenv("TABLECAST_VIEWS_CONCURRENT")); err == nil && v > 0 {
			clients = v
		}
		for i := 0; i < b.N; i++ {
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			var slowest time.Duration
			var mu sync.Mutex
			for k := 0; k < clients; k++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					n, took, err := snapshotOnce(ws, `{"grp":{"eq":3}}`)
					if err == nil && n != 10000 {
						err = fmt.Errorf("%d rows", n)
					}
					if err != nil {
						errs <- err
					}
					mu.Lock()
					slowest = max(slowest, took)
					mu.Unlock()
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(slowest.Seconds(), "slowest-s")
		}
		b.ReportMetric(float64(clients), "clients")
		b.ReportMetric(float64(vmHWM(cmd.Process.Pid))/(1<<20), "peak-rss-MiB")
	})
}

// snapshotOnce subscribes with snapshot and reads until synced: the rows
// received and how long it took.
func snapshotOnce(url, where string) (int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	began := time.Now()
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return 0, 0, err
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 24)
	msg := `{"type":"subscribe","id":"v","table":"public.big","snapshot":true`
	if where != "" {
		msg += `,"where":` + where
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte(msg+"}")); err != nil {
		return 0, 0, err
	}
	n := 0
	for {
		_, b, err := ws.Read(ctx)
		if err != nil {
			return n, 0, err
		}
		var f struct {
			Type string            `json:"type"`
			Rows []json.RawMessage `json:"rows"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			return n, 0, err
		}
		switch f.Type {
		case "rows":
			n += len(f.Rows)
		case "synced":
			return n, time.Since(began), nil
		case "error":
			return n, 0, fmt.Errorf("%s", b)
		}
	}
}

// vmHWM is a process's peak resident memory in bytes (0 if unknown).
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// vmRSS is a process's resident memory in bytes now (0 if unknown).
func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
