// Package testrun holds what the test packages' TestMain functions share.
package testrun

import (
	"flag"
	"strconv"
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
