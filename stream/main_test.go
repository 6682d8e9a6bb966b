package stream

import (
	"os"
	"testing"

	"github.com/tablecast/tablecast/internal/testrun"
)

// parallelTests is how many of the package's parallel tests run at once:
// all of them. They are the ones that spend most of their time waiting (a
// cluster electing leaders, requests refused by timing out, a full disk
// being noticed), each with servers and directories of its own; go test's
// default, one per core, would run them two at a time. Timing-sensitive
// tests (fencing with a paused leader, a stalled fetch) stay sequential.
const parallelTests = 5

func TestMain(m *testing.M) {
	testrun.Parallel(parallelTests)
	os.Exit(m.Run())
}
