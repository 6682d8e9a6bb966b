// Package testrun holds what the test packages' TestMain functions share.
package testrun

import (
	"flag"
	"os"
	"strconv"
	"testing"
	"time"
)

// Parallel makes go test run n of the package's parallel tests at once,
// unless the command line set -parallel. go test's default is one per
// core, two on a small machine: too few for tests that spend most of
// their time waiting on servers, processes and timeouts. Call it first in
// TestMain.
func Parallel(n int) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", strconv.Itoa(n))
	}
}

// Seed returns the seed of a random test: TABLECAST_SEED when set, else
// the time. It logs it, so that a failing run can be repeated.
func Seed(t testing.TB) int64 {
	t.Helper()
	seed := time.Now().UnixNano()
	if v, err := strconv.ParseInt(os.Getenv("TABLECAST_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("seed %d (TABLECAST_SEED=%d repeats this run)", seed, seed)
	return seed
}
