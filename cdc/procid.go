package cdc

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// A reader's process identity, written into its lease, lets a reader on the
// same machine tell that the lease's holder is gone (SIGKILLed, crashed,
// restarted by systemd) and take the lease over at once instead of after a
// whole lease, where the stream checks fences (see acquireLease): a lone
// reader restarted after a crash would otherwise stream nothing for that
// long.
//
// The identity is "<boot id>/<pid namespace>/<pid>/<start>": the kernel's
// boot id (/proc/sys/kernel/random/boot_id), the inode of the process's pid
// namespace, its pid and its start time in clock ticks since boot. Within
// one boot and one pid namespace, a pid and a start time name exactly one
// process: a pid used again by a later process has a later start. A holder
// on another machine, in another container's pid namespace, or on a system
// without /proc has an identity that does not compare, and is waited out as
// before.

// procIdentity returns the identity of the process pid as seen from this
// one, "" when it cannot be read (not Linux, no /proc, no such process).
func procIdentity(pid int) string {
	boot, ns := machineScope()
	if boot == "" {
		return ""
	}
	start, _, ok := procStart(pid)
	if !ok {
		return ""
	}
	return boot + "/" + ns + "/" + strconv.Itoa(pid) + "/" + start
}

// machineScope returns this process's boot id and pid namespace, "" when
// either cannot be read.
func machineScope() (boot, ns string) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", ""
	}
	link, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return "", ""
	}
	return string(bytes.TrimSpace(b)), link
}

// procStart reads the start time (field 22 of /proc/<pid>/stat) and state
// (field 3) of process pid.
func procStart(pid int) (start string, state byte, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, false
	}
	// The command name (field 2) is in parentheses and may hold spaces and
	// parentheses itself: the fields after it start past the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return "", 0, false
	}
	return f[19], f[0][0], true
}

// holderGone reports whether id (a procIdentity written by a lease's
// holder) names a process of this machine's boot and pid namespace that no
// longer runs: its pid is free, taken by a later process, or a zombie
// (killed, not yet reaped). An identity that cannot be compared is not
// gone, nor is this process (another reader in it, or this one).
func holderGone(id string) bool {
	parts := strings.Split(id, "/")
	if len(parts) != 4 {
		return false
	}
	boot, ns := machineScope()
	if boot == "" || parts[0] != boot || parts[1] != ns {
		return false
	}
	pid, err := strconv.Atoi(parts[2])
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	start, state, ok := procStart(pid)
	if !ok {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return os.IsNotExist(err)
	}
	return start != parts[3] || state == 'Z' || state == 'X'
}
