//go:build unix

package wsgate

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user + system) this process has used, so
// that benchmarks can report CPU per message, which a busy machine disturbs
// far less than throughput.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
