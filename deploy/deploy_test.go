// Package deploy holds tablecast's deployment files (image, compose,
// Kubernetes, systemd, NATS cluster, dashboards and alerts) and the tests
// that keep each of them true: every file here is parsed the way its tool
// parses it, checked for what matters, and run where it can be run (the
// image's build stage, the compose file's settings against real
// PostgreSQL, a 3-node NATS cluster and a TLS proxy).
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/internal/pgtest"
	"github.com/tablecast/tablecast/stream"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, func() {
		if built.tmp != "" {
			_ = os.RemoveAll(built.tmp)
		}
	})
}

// repoRoot is the repository's root, the image's build context.
func repoRoot(t testing.TB) string {
	t.Helper()
	abs, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// variables reads the TABLECAST_ variables tablecast knows from `tablecast
// help` of the binary the image's build stage makes: the list every file
// here is checked against.
var variables struct {
	once  sync.Once
	names map[string]bool
	err   error
}

var helpVariable = regexp.MustCompile(`^  (TABLECAST_[A-Z0-9_]+)\s`)

func knownVariables(t testing.TB) map[string]bool {
	t.Helper()
	bin := tablecastBinary(t)
	variables.once.Do(func() {
		out, err := exec.Command(bin, "help").Output()
		if err != nil {
			variables.err = fmt.Errorf("tablecast help: %w", err)
			return
		}
		variables.names = map[string]bool{}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if m := helpVariable.FindStringSubmatch(sc.Text()); m != nil {
				variables.names[m[1]] = true
			}
		}
		if len(variables.names) < 20 {
			variables.err = fmt.Errorf("tablecast help lists only %d variables:\n%s", len(variables.names), out)
		}
	})
	if variables.err != nil {
		t.Fatal(variables.err)
	}
	return variables.names
}

// checkVariables fails t for every name that starts with TABLECAST_ and is
// not a variable `tablecast help` lists: a misspelt setting is silently
// ignored by tablecast, so it is refused here. Names without the prefix
// are not tablecast's and pass. where says which file the names are from.
func checkVariables(t testing.TB, where string, names []string) {
	t.Helper()
	known := knownVariables(t)
	for _, n := range names {
		if strings.HasPrefix(n, "TABLECAST_") && !known[n] {
			t.Errorf("%s sets %s, which is not a tablecast variable (tablecast help)", where, n)
		}
	}
}

// tablecastVariables returns the names in text that look like tablecast
// variables, for files that mention them in free text (unit files,
// environment files).
func tablecastVariables(text string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`\bTABLECAST_[A-Z0-9_]+`).FindAllString(text, -1) {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}

// TestCheckVariablesRefusesUnknownNames: the helper every file's test uses
// refuses a misspelt variable and accepts real ones and other names.
func TestCheckVariablesRefusesUnknownNames(t *testing.T) {
	known := knownVariables(t)
	for _, v := range []string{"TABLECAST_DATABASE_URL", "TABLECAST_NATS_URL", "TABLECAST_STREAM_REPLICAS", "TABLECAST_ALLOWED_HOSTS", "TABLECAST_HTTP_ADDR"} {
		if !known[v] {
			t.Errorf("tablecast help does not list %s", v)
		}
	}
	rec := &recorder{TB: t}
	checkVariables(rec, "a test", []string{"TABLECAST_DATABASE_URL", "PGHOST", "TABLECAST_DATABSE_URL"})
	if len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "TABLECAST_DATABSE_URL") {
		t.Errorf("checkVariables reported %q, want one error naming TABLECAST_DATABSE_URL", rec.errors)
	}
}

// recorder is a testing.TB that records errors instead of failing, to
// test the checks themselves.
type recorder struct {
	testing.TB
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
func (r *recorder) Error(args ...any) { r.errors = append(r.errors, fmt.Sprint(args...)) }
func (r *recorder) Helper()           {}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func freePort(t testing.TB) string {
	_, port, _ := net.SplitHostPort(freeAddr(t))
	return port
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpGet(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// process is a command started for a test, stopped with SIGTERM when the
// test ends; its output is kept for the failure message.
type process struct {
	cmd *exec.Cmd
	out *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs name with args and exactly env (no variable of the test's
// own environment leaks in), until the test ends.
func start(t *testing.T, env []string, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), out: &lockedBuffer{}}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil && !t.Failed() {
				t.Errorf("%s %v did not exit cleanly on SIGTERM: %v\n%s", filepath.Base(name), args, err, p.out)
			}
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			t.Errorf("%s %v did not stop within 20s of SIGTERM", filepath.Base(name), args)
		}
		if t.Failed() {
			t.Logf("output of %s %v:\n%s", filepath.Base(name), args, p.out)
		}
	})
	return p
}

// run runs name to completion with exactly env and returns its exit code
// and combined output.
func run(t testing.TB, timeout time.Duration, env []string, name string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish within %s:\n%s", name, args, timeout, out)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatalf("run %s: %v", name, err)
	}
	return 0, string(out)
}

// systemEnv is the part of the test's environment a child needs to run
// (PATH, HOME), without any TABLECAST_ variable.
func systemEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "PATH" || k == "HOME" || k == "TMPDIR" || k == "LANG" {
			env = append(env, kv)
		}
	}
	return env
}

func pgRequire(t testing.TB) *pgtest.Cluster { return pgtest.Require(t) }

// dropSlotAtCleanup drops the slot before pgtest drops the database.
func dropSlotAtCleanup(t testing.TB, url, slot string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		for ctx.Err() == nil {
			_, err := c.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
			if err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond) // still held by a dying walsender
		}
	})
}

// natsNames are tablecast's JetStream streams and buckets, whose names
// look like variables.
var natsNames = map[string]bool{
	stream.DeadLetterStreamName(stream.DefaultStreamName): true,
	stream.DefaultPayloadBucket:                           true,
	stream.DefaultSchemaBucket:                            true,
	stream.DefaultTopicBucket:                             true,
	stream.RowsStreamName(stream.DefaultStreamName):       true,
	"TABLECAST_STATE":                                     true,
}

// TestEveryFileNamesRealVariables: no file under deploy/ (configuration,
// manifests, dashboards, alert texts, examples) names a TABLECAST_
// variable that tablecast does not have (its streams' and buckets' names
// aside).
func TestEveryFileNamesRealVariables(t *testing.T) {
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		names := slices.DeleteFunc(tablecastVariables(string(b)), func(n string) bool { return natsNames[n] })
		checkVariables(t, path, names)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
