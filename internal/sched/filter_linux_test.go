//go:build linux

package sched

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// underKillingFilter, in a child process of the test, puts every thread
// under the default policy and installs the kind of filter systemd's
// SystemCallFilter makes: sched_setscheduler ends the process (SIGSYS).
// Then it runs Apply and says whether it survived.
func underKillingFilter() {
	all, err := Policies(0)
	if err != nil {
		panic(err)
	}
	for tid := range all {
		_ = setPolicy(tid, policyNormal)
	}
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_SCHED_SETSCHEDULER},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_KILL_PROCESS},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		panic(err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	// TSYNC: every thread of the process, as a filter installed before
	// exec covers them all.
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); errno != 0 {
		panic(errno)
	}
	Apply(slog.New(slog.NewTextHandler(os.Stdout, nil)))
	os.Stdout.WriteString("survived\n")
	os.Exit(0)
}

// TestApplyUnderSystemdFilter: a systemd service whose SystemCallFilter
// refuses sched_setscheduler (the unit in deploy/systemd refuses
// @resources) would end the process at the call: Apply does not make it
// there, and says how to set the policy instead. The same process not
// known to run under systemd makes the call and is ended, which shows the
// filter is the one that would end it.
func TestApplyUnderSystemdFilter(t *testing.T) {
	if os.Getenv("TABLECAST_TEST_KILLING_FILTER") != "" {
		underKillingFilter()
		return
	}
	child := func(env ...string) (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestApplyUnderSystemdFilter$", "-test.count=1")
		cmd.Env = append(os.Environ(), "TABLECAST_TEST_KILLING_FILTER=1", "INVOCATION_ID=")
		cmd.Env = append(cmd.Env, env...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}

	out, err := child("INVOCATION_ID=5f2b0c6fd2a84c3f9a3e4b8d1c2e7a90")
	if err != nil || !strings.Contains(out, "survived") {
		t.Fatalf("under systemd's filter, Apply ended the process (%v):\n%s", err, out)
	}
	if !strings.Contains(out, "not changing the scheduling policy under systemd's system call filter") || !strings.Contains(out, "CPUSchedulingPolicy=batch") {
		t.Errorf("Apply under systemd's filter did not say why it left the policy, and how to set it:\n%s", out)
	}

	out, err = child()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("outside systemd, under the same filter, the process was not ended (%v):\n%s", err, out)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
		t.Errorf("outside systemd, under the same filter, the process ended with %v, not SIGSYS:\n%s", exit, out)
	}
}
