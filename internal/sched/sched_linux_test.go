//go:build linux

package sched

import (
	"runtime"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

const policyIdle = 5 // SCHED_IDLE

func mustSetPolicy(t *testing.T, tid, p int) {
	t.Helper()
	if err := setPolicy(tid, p); err != nil {
		t.Fatalf("set thread %d to policy %d: %v", tid, p, err)
	}
}

// lockedThreads starts n goroutines, each on a thread of its own (which
// makes the runtime start threads), and returns their thread ids and a
// function that ends them.
func lockedThreads(t *testing.T, n int) ([]int, func()) {
	t.Helper()
	tids := make(chan int, n)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			tids <- unix.Gettid()
			<-done
		}()
	}
	out := make([]int, n)
	for i := range out {
		out[i] = <-tids
	}
	var once sync.Once
	stop := func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return out, stop
}

func TestBatchSetsEveryThreadAndThoseStartedLater(t *testing.T) {
	before, _ := lockedThreads(t, 4)
	// Whatever policy the test was started under, every thread starts
	// this test under the default one, but for one an operator put under
	// SCHED_IDLE, which Batch must leave alone.
	all, err := Policies(0)
	if err != nil {
		t.Fatal(err)
	}
	for tid := range all {
		mustSetPolicy(t, tid, policyNormal)
	}
	idle := before[0]
	mustSetPolicy(t, idle, policyIdle)

	changed, err := Batch()
	if err != nil {
		t.Fatalf("Batch: %v", err)
	}
	if changed < len(all)-1 {
		t.Errorf("Batch changed %d threads, want at least the %d under the default policy", changed, len(all)-1)
	}
	check := func(when string) {
		t.Helper()
		got, err := Policies(0)
		if err != nil {
			t.Fatal(err)
		}
		for tid, p := range got {
			want := policyBatch
			if tid == idle {
				want = policyIdle
			}
			if p != want {
				t.Errorf("%s: thread %d is under policy %d, want %d", when, tid, p, want)
			}
		}
	}
	check("after Batch")

	// Threads the runtime starts from now on inherit SCHED_BATCH.
	later, _ := lockedThreads(t, 4)
	check("threads started after Batch")
	got, err := Policies(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range later {
		if _, ok := got[tid]; !ok {
			t.Errorf("thread %d, started after Batch, is not among the process's threads", tid)
		}
	}

	// Run again, nothing is left to change.
	if changed, err := Batch(); err != nil || changed != 0 {
		t.Errorf("Batch again = %d, %v; want 0, nil", changed, err)
	}
}

func TestParsePolicy(t *testing.T) {
	// A command name with spaces and parentheses; fields 3 to 52.
	rest := make([]byte, 0, 200)
	for i := 3; i <= 52; i++ {
		v := "7"
		if i == 41 {
			v = "3"
		}
		rest = append(rest, ' ')
		rest = append(rest, v...)
	}
	line := "1234 (a (b) c)" + string(rest) + "\n"
	if p, err := parsePolicy(line); err != nil || p != 3 {
		t.Errorf("parsePolicy(%q) = %d, %v; want 3", line, p, err)
	}
	for _, bad := range []string{"", "1234 a b c", "1234 (x) S 1 2 3", "1234 (x)" + string(rest[:len(rest)-40])} {
		if _, err := parsePolicy(bad); err == nil {
			t.Errorf("parsePolicy(%q) gave no error", bad)
		}
	}
}
