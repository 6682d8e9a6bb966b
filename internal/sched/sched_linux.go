//go:build linux

package sched

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Policies, as sched_setscheduler(2) and /proc/<pid>/task/<tid>/stat
// number them.
const (
	policyNormal = 0 // SCHED_OTHER
	policyBatch  = 3 // SCHED_BATCH
)

// Batch sets every thread of the process that runs under the default
// policy (SCHED_OTHER) to SCHED_BATCH, and returns how many it changed.
// Threads the Go runtime starts later inherit the policy of the thread
// that starts them, so once every thread is under it, so are all later
// ones: Batch lists the threads again until a listing finds none left to
// change. It needs no privilege (it lowers no priority and keeps each
// thread's nice value); a system call filter may still refuse it.
func Batch() (int, error) {
	changed := 0
	for round := 0; round < 10; round++ {
		tids, err := threads(0)
		if err != nil {
			return changed, err
		}
		n := 0
		for _, tid := range tids {
			p, err := policy(0, tid)
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread ended
			}
			if err != nil {
				return changed, err
			}
			if p != policyNormal {
				continue
			}
			if err := setPolicy(tid, policyBatch); err != nil {
				if errors.Is(err, unix.ESRCH) {
					continue
				}
				return changed, fmt.Errorf("set thread %d to SCHED_BATCH: %w", tid, err)
			}
			n++
		}
		if n == 0 {
			return changed, nil
		}
		changed += n
	}
	return changed, fmt.Errorf("set threads to SCHED_BATCH: threads under the default policy still appear after 10 rounds")
}

// Policies returns the scheduling policy of each thread of process pid (0:
// this process), by thread id, as /proc reports them (0 default, 3 batch,
// 5 idle, 1 and 2 realtime).
func Policies(pid int) (map[int]int, error) {
	tids, err := threads(pid)
	if err != nil {
		return nil, err
	}
	out := make(map[int]int, len(tids))
	for _, tid := range tids {
		p, err := policy(pid, tid)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[tid] = p
	}
	return out, nil
}

func threads(pid int) ([]int, error) {
	entries, err := os.ReadDir(procDir(pid) + "/task")
	if err != nil {
		return nil, fmt.Errorf("list the process's threads: %w", err)
	}
	tids := make([]int, 0, len(entries))
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// policy reads a thread's policy from its stat file (field 41), which
// needs no system call a filter could refuse.
func policy(pid, tid int) (int, error) {
	b, err := os.ReadFile(procDir(pid) + "/task/" + strconv.Itoa(tid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read thread %d's scheduling policy: %w", tid, err)
	}
	return parsePolicy(string(b))
}

// parsePolicy takes field 41 of a stat line; the second field, the
// command name in parentheses, may hold spaces and parentheses itself.
func parsePolicy(stat string) (int, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("read scheduling policy: stat line without a command name: %q", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3
	if len(f) < 41-2 {
		return 0, fmt.Errorf("read scheduling policy: stat line of %d fields, not 41 or more", len(f)+2)
	}
	p, err := strconv.Atoi(f[41-3])
	if err != nil {
		return 0, fmt.Errorf("read scheduling policy: field 41 is %q: %w", f[41-3], err)
	}
	return p, nil
}

// setPolicy puts thread tid under policy p (one without priorities:
// default, batch or idle).
func setPolicy(tid, p int) error {
	param := struct{ priority int32 }{0} // struct sched_param
	_, _, errno := unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(tid), uintptr(p), uintptr(unsafe.Pointer(&param)))
	if errno != 0 {
		return errno
	}
	return nil
}

func procDir(pid int) string {
	if pid == 0 {
		return "/proc/self"
	}
	return "/proc/" + strconv.Itoa(pid)
}

// UnderDefault returns how many of the process's threads run under the
// default policy: those Batch would change.
func UnderDefault() (int, error) {
	all, err := Policies(0)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range all {
		if p == policyNormal {
			n++
		}
	}
	return n, nil
}

// Filtered reports whether the process runs under a seccomp filter
// (/proc/self/status, Seccomp: 2). A filter may answer a refused system
// call with an error, as container runtimes' default profiles do, or kill
// the process, as systemd's SystemCallFilter does unless
// SystemCallErrorNumber is set; which one cannot be read from inside.
func Filtered() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Seccomp:"); ok {
			return strings.TrimSpace(v) == "2"
		}
	}
	return false
}

// Apply puts the threads under SCHED_BATCH, as Batch does, and logs what
// it could not do: failing is not fatal, as the reader works under any
// policy, only slower to drain a backlog when it shares a CPU with its
// walsender. It does nothing when no thread is under the default policy
// (started under SCHED_BATCH or another), and does not make the system
// call in a systemd service under a system call filter: systemd's
// SystemCallFilter ends the process at a call it refuses, unless the unit
// sets SystemCallErrorNumber (the unit in deploy/systemd refuses
// @resources, and sets the policy with CPUSchedulingPolicy instead).
func Apply(log *slog.Logger) {
	const hint = "start tablecast under SCHED_BATCH (systemd: CPUSchedulingPolicy=batch; chrt -b 0), or set TABLECAST_SCHED_BATCH=false"
	n, err := UnderDefault()
	if err != nil {
		log.Warn("could not read the threads' scheduling policy; leaving it", "err", err, "hint", hint)
		return
	}
	if n == 0 {
		return
	}
	if Filtered() && os.Getenv("INVOCATION_ID") != "" {
		log.Info("not changing the scheduling policy under systemd's system call filter", "hint", hint)
		return
	}
	if _, err := Batch(); err != nil {
		log.Warn("could not put the threads under SCHED_BATCH; running under the policy started with", "err", err, "hint", hint)
	}
}
