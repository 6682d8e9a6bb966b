//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tablecast/tablecast/internal/sched"
)

// startUnderDefaultPolicy starts the binary as startProcess does, from a
// thread under the default scheduling policy, which the process inherits
// (this test process may run readers in-process, which put its threads
// under SCHED_BATCH).
func startUnderDefaultPolicy(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	param := struct{ priority int32 }{0}
	if _, _, errno := unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(unix.Gettid()), 0, uintptr(unsafe.Pointer(&param))); errno != 0 {
		t.Fatalf("put the starting thread under the default policy: %v", errno)
	}
	return startProcess(t, env, args...)
}

// TestSchedulingPolicy: the processes that read a slot, run and cdc, put
// every thread under SCHED_BATCH (so that a walsender sharing their CPU is
// not preempted at each change it sends them), unless
// TABLECAST_SCHED_BATCH=false; a gateway alone keeps the policy it was
// started under.
func TestSchedulingPolicy(t *testing.T) {
	t.Parallel() // see "Parallel tests" in main_test.go
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	ready := func(name, addr string) {
		t.Helper()
		waitFor(t, time.Minute, "/readyz of "+name, func() bool {
			code, _, err := httpGet("http://" + addr + "/readyz")
			return err == nil && code == 200
		})
	}
	policies := func(name string, cmd *exec.Cmd, want int) {
		t.Helper()
		got, err := sched.Policies(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) < 2 {
			t.Fatalf("%s: %d threads listed, want the Go runtime's several", name, len(got))
		}
		for tid, p := range got {
			if p != want {
				t.Errorf("%s: thread %d is under policy %d, want %d", name, tid, p, want)
			}
		}
	}

	slot := fmt.Sprintf("tc_sched_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	run := startUnderDefaultPolicy(t, append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_sched",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir()), "run")
	ready("tablecast run", httpAddr)
	policies("tablecast run", run, 3)

	// A second reader of the slot stands by, under the policy it was
	// started under, as asked.
	cdcAddr := freeAddr(t)
	cdc := startUnderDefaultPolicy(t, append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_sched",
		"TABLECAST_NATS_URL=nats://"+natsAddr, "TABLECAST_HTTP_ADDR="+cdcAddr, "TABLECAST_SCHED_BATCH=false"), "cdc")
	waitFor(t, time.Minute, "/healthz of tablecast cdc", func() bool {
		_, _, err := httpGet("http://" + cdcAddr + "/healthz")
		return err == nil
	})
	policies("tablecast cdc with TABLECAST_SCHED_BATCH=false", cdc, 0)

	gwAddr := freeAddr(t)
	gw := startUnderDefaultPolicy(t, append(baseEnv(), "TABLECAST_NATS_URL=nats://"+natsAddr, "TABLECAST_HTTP_ADDR="+gwAddr), "gateway")
	ready("tablecast gateway", gwAddr)
	policies("tablecast gateway", gw, 0)
}
