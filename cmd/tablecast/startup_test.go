package main

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWaitsForNATSAtStart: while TABLECAST_NATS_URL is not reachable at
// start, a gateway says so in its log, and why; a SIGTERM then stops it
// cleanly, as it would once running; one left waiting serves once NATS is
// there.
func TestWaitsForNATSAtStart(t *testing.T) {
	n := startNATS(t)
	n.Stop()
	env := func(addr string) []string {
		return append(baseEnv(), "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_HTTP_ADDR="+addr)
	}
	stoppedLogs := &lockedBuffer{}
	stopped := exec.Command(binary(t), "gateway")
	stopped.Env, stopped.Stderr = env(freeAddr(t)), stoppedLogs
	if err := stopped.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if stopped.ProcessState == nil {
			_ = stopped.Process.Kill()
			_ = stopped.Wait()
		}
	})
	addr := freeAddr(t)
	waiting := startLogged(t, env(addr), "gateway")
	for _, logs := range []*lockedBuffer{stoppedLogs, waiting} {
		waitFor(t, 30*time.Second, "a warning that NATS is not reachable", func() bool {
			s := logs.String()
			return strings.Contains(s, "NATS not reachable yet; still trying") && strings.Contains(s, "connection refused")
		})
	}

	_ = stopped.Process.Signal(syscall.SIGTERM)
	if err := stopped.Wait(); err != nil {
		t.Errorf("SIGTERM while waiting for NATS: %v; want a clean exit\n%s", err, stoppedLogs)
	}

	n.Restart()
	waitFor(t, time.Minute, "/readyz of the gateway that waited for NATS", func() bool {
		code, _, err := httpGet("http://" + addr + "/readyz")
		return err == nil && code == 200
	})
}
