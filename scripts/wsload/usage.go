//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The benchmark machine is small and shared: every result says how much
// CPU wsload, the gateway and everything else on the machine used while it
// was measured, so that a reader can tell a slow gateway from a busy
// machine.

// usage is a snapshot of CPU times taken when a measurement starts.
type usage struct {
	self    time.Duration
	pid     int // the gateway's, or 0
	gw      time.Duration
	machine machineTimes
	procs   map[int]procSample
}

// procSample is one process's name and CPU time.
type procSample struct {
	comm string
	cpu  time.Duration
}

// machineTimes are the machine's CPU times, all CPUs, in clock ticks.
type machineTimes struct{ busy, total int64 }

// clockTicks is USER_HZ, the unit of /proc's times: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

func startUsage(pid int) usage {
	return usage{self: cpuTime(), pid: pid, gw: procCPU(pid), machine: machineCPU(), procs: allProcs()}
}

// report prints what was used since u over wall, and returns wsload's own
// CPU time:
//
//	wsload_cpu_s, wsload_cpu_pct    this process (percent of one core)
//	gateway_cpu_s, gateway_cpu_pct  the process -pid
//	machine_busy_pct                all CPUs, 100 = every core busy
//	others_cpu                      the busiest other processes, by name
func (u usage) report(out *report, wall time.Duration) time.Duration {
	cpu := cpuTime() - u.self
	pct := func(d time.Duration) string { return fmt.Sprintf("%.0f", 100*d.Seconds()/wall.Seconds()) }
	out.kv("wsload_cpu_s", fmt.Sprintf("%.2f", cpu.Seconds()))
	out.kv("wsload_cpu_pct", pct(cpu))
	if gw := procCPU(u.pid); gw > 0 {
		out.kv("gateway_cpu_s", fmt.Sprintf("%.2f", (gw-u.gw).Seconds()))
		out.kv("gateway_cpu_pct", pct(gw-u.gw))
	}
	if m := machineCPU(); m.total > u.machine.total {
		out.kv("machine_busy_pct", fmt.Sprintf("%.0f", 100*float64(m.busy-u.machine.busy)/float64(m.total-u.machine.total)))
	}
	// Other processes, summed by name (postgres has many); a process that
	// started meanwhile counts whole, one that ended is missed.
	byName := map[string]time.Duration{}
	self := os.Getpid()
	for pid, p := range allProcs() {
		if pid == self || pid == u.pid {
			continue
		}
		byName[p.comm] += p.cpu - u.procs[pid].cpu
	}
	names := make([]string, 0, len(byName))
	for name, d := range byName {
		if d.Seconds() >= 0.05*wall.Seconds() {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return int(byName[b] - byName[a]) })
	var parts []string
	for _, name := range names[:min(len(names), 4)] {
		parts = append(parts, name+" "+pct(byName[name])+"%")
	}
	if len(parts) == 0 {
		parts = []string{"none above 5%"}
	}
	out.kv("others_cpu", strings.Join(parts, ", "))
	return cpu
}

// cpuTime is the CPU time (user + system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineCPU reads the first line of /proc/stat: busy is everything but
// idle and iowait.
func machineCPU() machineTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return machineTimes{}
	}
	var t machineTimes
	for i, s := range f[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		t.total += v
		if i != 3 && i != 4 { // idle, iowait
			t.busy += v
		}
	}
	return t
}

// procCPU is the CPU time (user + system) process pid has used, 0 if it
// cannot be read.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	p, ok := readProc(pid)
	if !ok {
		return 0
	}
	return p.cpu
}

// allProcs reads every process's name and CPU time.
func allProcs() map[int]procSample {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	m := make(map[int]procSample, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			m[pid] = p
		}
	}
	return m
}

// readProc reads /proc/<pid>/stat.
func readProc(pid int) (procSample, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procSample{}, false
	}
	// The name (field 2) is in parentheses and may hold spaces; fields 14
	// and 15 (utime, stime) follow its closing parenthesis.
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return procSample{}, false
	}
	f := strings.Fields(string(b[j+1:]))
	if len(f) < 13 {
		return procSample{}, false
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return procSample{comm: string(b[i+1 : j]), cpu: time.Duration(ut+st) * time.Second / clockTicks}, true
}
