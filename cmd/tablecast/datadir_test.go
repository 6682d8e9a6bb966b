package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDataDirOneProcessAtATime: a second process with an embedded NATS on
// a TABLECAST_DATA_DIR in use is refused at once, naming the directory and
// the holder, and leaves the first serving; a holder killed with SIGKILL
// leaves no stale lock behind.
func TestDataDirOneProcessAtATime(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data dir") // a space, as on some hosts
	env := func(httpAddr string) []string {
		return append(baseEnv(), "TABLECAST_DATA_DIR="+dir, "TABLECAST_HTTP_ADDR="+httpAddr,
			"TABLECAST_NATS_LISTEN="+freeAddr(t), "TABLECAST_LOG_LEVEL=warn")
	}
	ready := func(addr string) {
		waitFor(t, time.Minute, "/readyz of the gateway on "+addr, func() bool {
			code, _, err := httpGet("http://" + addr + "/readyz")
			return err == nil && code == 200
		})
	}
	firstAddr := freeAddr(t)
	first := startKillable(t, env(firstAddr), "gateway")
	ready(firstAddr)

	code, _, stderr := runBinary(t, 30*time.Second, env(freeAddr(t)), "gateway")
	last := lastLine(stderr)
	if code == 0 || !strings.Contains(last, "TABLECAST_DATA_DIR "+dir+" is in use") || !strings.Contains(last, fmt.Sprintf("pid %d", first.Process.Pid)) {
		t.Fatalf("second process on the same data directory: exit %d, last line %q; want non-zero, naming the directory and pid %d\nstderr:\n%s", code, last, first.Process.Pid, stderr)
	}
	if code, _, err := httpGet("http://" + firstAddr + "/healthz"); err != nil || code != 200 {
		t.Fatalf("the first process after the second was refused: /healthz %d, %v", code, err)
	}

	_ = first.Process.Kill()
	_ = first.Wait()
	thirdAddr := freeAddr(t)
	startProcess(t, env(thirdAddr), "gateway")
	ready(thirdAddr)
}
