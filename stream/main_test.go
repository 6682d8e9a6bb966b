package stream

import (
	"flag"
	"os"
	"strconv"
	"testing"
)

// parallelTests is how many of the package's parallel tests run at once:
// all of them. They are the ones that spend most of their time waiting (a
// cluster electing leaders, requests refused by timing out, a full disk
// being noticed), each with servers and directories of its own; go test's
// default, one per core, would run them two at a time. Timing-sensitive
// tests (fencing with a paused leader, a stalled fetch) stay sequential.
const parallelTests = 5

func TestMain(m *testing.M) {
	flag.Parse()
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		_ = flag.Set("test.parallel", strconv.Itoa(parallelTests))
	}
	os.Exit(m.Run())
}
