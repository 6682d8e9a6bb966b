package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoPostgres means no PostgreSQL server binaries were found. Callers decide whether
// that skips their tests or fails them; [Main] and [New] skip, unless CI is set.
var ErrNoPostgres = errors.New("pgtest: PostgreSQL server binaries not found (run scripts/pg.sh install, or set TABLECAST_PG_BIN)")

// Tuning.
const (
	// pgctlWait bounds how long pg_ctl waits for the server to start or stop. A cluster
	// with fsync=off starts in well under a second; a minute covers a loaded CI machine.
	pgctlWait = 60 * time.Second
	// startAttempts bounds how often Start picks another port when the free one it found
	// was taken before the server could bind it.
	startAttempts = 5
	// sqlTimeout bounds each statement run by Exec, CreateDatabase and the database drop.
	sqlTimeout = 30 * time.Second
	// maxSocketDir is the longest socket directory used: a unix socket path
	// (dir + "/.s.PGSQL.NNNNN") must fit in 107 bytes. Beyond it the cluster listens on TCP only.
	maxSocketDir = 90
)

// Cluster is a private PostgreSQL cluster in a temporary directory, with
// wal_level=logical, listening on a free loopback port. Its methods are safe for
// concurrent use; Stop, Start and Restart affect every test using the cluster.
type Cluster struct {
	// Dir is the cluster's temporary directory: the data directory Dir/data, the unix
	// socket and the server log Dir/postgres.log. Close removes it.
	Dir string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// BinDir holds the server binaries used (pg_ctl, initdb, postgres).
	BinDir string

	cred *syscall.Credential // the postgres user, when we are root; nil otherwise
	env  []string            // environment of every child process

	mu      sync.Mutex // serialises pg_ctl start and stop
	dbSeq   atomic.Int64
	closing sync.Once

	watchdog     *exec.Cmd
	watchdogPipe *os.File // write end; closing it (or our death) triggers the watchdog
}

// Start initialises and starts a new cluster. It uses the server binaries in
// $TABLECAST_PG_BIN, or else the newest /usr/lib/postgresql/*/bin, or else pg_ctl's
// directory on $PATH; when there are none it returns [ErrNoPostgres].
//
// When the process runs as root the server runs as the "postgres" user, which owns
// the cluster's directory. Should the process die without calling [Cluster.Close],
// a watchdog process stops the cluster and removes its directory.
func Start(ctx context.Context) (*Cluster, error) {
	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{BinDir: bin, env: childEnv()}
	if os.Geteuid() == 0 {
		if c.cred, err = postgresUser(); err != nil {
			return nil, err
		}
	}
	if c.Dir, err = os.MkdirTemp("", "tablecast-pgtest-"); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := c.setUp(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) setUp(ctx context.Context) error {
	if c.cred != nil {
		if err := os.Chown(c.Dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		if err := reachable(filepath.Dir(c.Dir), c.cred); err != nil {
			return err
		}
	}
	if err := c.startWatchdog(); err != nil {
		return err
	}
	if out, err := c.run(ctx, "initdb", "-D", c.dataDir(), "--no-sync", "--auth=trust", "-U", "postgres",
		"-E", "UTF8", "--locale=C", "--no-instructions"); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	// --auth=trust already makes pg_hba.conf trust every local and loopback
	// connection, replication connections included.
	conf := filepath.Join(c.dataDir(), "postgresql.conf")
	if err := appendFile(conf, "\ninclude 'pgtest.conf'\n"); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	var err error
	for range startAttempts {
		if c.Port, err = freePort(); err != nil {
			return fmt.Errorf("pgtest: find a free port: %w", err)
		}
		if err := c.writeConfig(); err != nil {
			return err
		}
		c.mu.Lock()
		err = c.start(ctx)
		c.mu.Unlock()
		if !errors.Is(err, errPortTaken) {
			return err
		}
	}
	return err
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }
func (c *Cluster) logFile() string { return filepath.Join(c.Dir, "postgres.log") }

// writeConfig writes the settings that make this a logical-replication test cluster.
// They sit in their own file so that ALTER SYSTEM (postgresql.auto.conf) still
// overrides them, as tests that change wal_level expect.
func (c *Cluster) writeConfig() error {
	socketDir := c.Dir
	if len(socketDir) > maxSocketDir {
		socketDir = "" // TCP only
	}
	conf := fmt.Sprintf(`# Written by internal/pgtest.
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_connections = 200
# Two-phase commit, so that tests can prepare transactions.
max_prepared_transactions = 16
# A throwaway test cluster: crash safety buys nothing here, speed does.
fsync = off
synchronous_commit = off
full_page_writes = off
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
timezone = 'UTC'
`, c.Port, strings.ReplaceAll(socketDir, "'", "''"))
	path := filepath.Join(c.dataDir(), "pgtest.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if c.cred != nil {
		if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	return nil
}

// errPortTaken reports that the server could not bind its port.
var errPortTaken = errors.New("port taken")

// start starts the server unless it runs already; c.mu is held.
func (c *Cluster) start(ctx context.Context) error {
	if c.running(ctx) {
		return nil
	}
	logStart := fileSize(c.logFile())
	out, err := c.run(ctx, "pg_ctl", "-D", c.dataDir(), "-l", c.logFile(), "-w",
		"-t", strconv.Itoa(int(pgctlWait.Seconds())), "-s", "start")
	if err == nil {
		return nil
	}
	log := readFrom(c.logFile(), logStart)
	if strings.Contains(log, "Address already in use") {
		return fmt.Errorf("pgtest: start PostgreSQL on port %d: %w", c.Port, errPortTaken)
	}
	return fmt.Errorf("pgtest: start PostgreSQL: %w\n%s%s", err, out, log)
}

// stop stops the server if it runs; c.mu is held.
func (c *Cluster) stop(ctx context.Context, mode string) error {
	out, err := c.run(ctx, "pg_ctl", "-D", c.dataDir(), "-m", mode, "-w",
		"-t", strconv.Itoa(int(pgctlWait.Seconds())), "-s", "stop")
	if err != nil && c.running(ctx) {
		return fmt.Errorf("pgtest: stop PostgreSQL: %w\n%s", err, out)
	}
	return nil
}

// running reports whether pg_ctl finds the server running.
func (c *Cluster) running(ctx context.Context) bool {
	_, err := c.run(ctx, "pg_ctl", "-D", c.dataDir(), "status")
	return err == nil
}

// Stop shuts the server down (pg_ctl -m fast stop). Stopping a stopped cluster does nothing.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stop(ctx, "fast")
}

// Start starts the server again after [Cluster.Stop], with the same directory and port,
// and returns once it accepts connections. Starting a running cluster does nothing.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.start(ctx)
}

// Restart stops the server and starts it again, as tests of reconnection need and as a
// change to a setting such as wal_level requires.
func (c *Cluster) Restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.stop(ctx, "fast"); err != nil {
		return err
	}
	return c.start(ctx)
}

// Close stops the server and removes the cluster's directory. It is safe to call more
// than once; it reports nothing, as it runs at the end of tests.
func (c *Cluster) Close() {
	c.closing.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), pgctlWait)
		defer cancel()
		c.mu.Lock()
		if c.stop(ctx, "fast") != nil {
			_ = c.stop(ctx, "immediate")
		}
		c.mu.Unlock()
		if c.watchdog != nil {
			_ = c.watchdog.Process.Kill()
			_ = c.watchdog.Wait()
			_ = c.watchdogPipe.Close()
		}
		_ = os.RemoveAll(c.Dir)
	})
}

// URL returns the URL of a database on this cluster, as the superuser postgres.
func (c *Cluster) URL(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, database)
}

// CreateDatabase creates a fresh, uniquely named database for the test and drops it when
// the test ends: its sessions are ended, its replication slots dropped (they would
// keep it from being dropped), then DROP DATABASE ... WITH (FORCE). The name is
// tc_<test name>_<n>: lower case, other characters as '_', at most 63 bytes.
func (c *Cluster) CreateDatabase(t testing.TB) (name, url string) {
	t.Helper()
	name = databaseName(t.Name(), c.dbSeq.Add(1))
	c.Exec(t, c.URL("postgres"), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	t.Cleanup(func() {
		if err := c.dropDatabase(name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return name, c.URL(name)
}

// dropDatabase drops a database made by CreateDatabase. A stopped cluster is left
// alone: its directory goes at Close anyway.
func (c *Cluster) dropDatabase(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		if !c.running(ctx) {
			return nil
		}
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	// A replication slot, active or not, keeps its database from being dropped, and an
	// active one cannot be dropped until its walsender has gone: end the sessions, drop
	// the slots, and try again while a session is still on its way out.
	for {
		_, err = conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = $1 AND pid <> pg_backend_pid()`, name)
		if err == nil {
			_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name)
				FROM pg_replication_slots WHERE database = $1`, name)
		}
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" { // object_in_use
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop database %s: %w", name, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("drop database %s: drop its replication slots: %w", name, err)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// Exec runs sql with args on the database at url, in a connection of its own, and
// fails the test on error. Several statements may be given when args is empty.
func (c *Cluster) Exec(t testing.TB, url, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("pgtest: connect %s: %v", url, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: exec %q: %v", sql, err)
	}
}

// Connect opens a connection to the database at url, closed when the test ends, and
// fails the test on error.
func (c *Cluster) Connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("pgtest: connect %s: %v", url, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// databaseName makes tc_<sanitised test name>_<n>, at most 63 bytes (NAMEDATALEN-1).
func databaseName(test string, n int64) string {
	var b strings.Builder
	under := true // no leading '_', no runs of '_'
	for _, r := range strings.ToLower(test) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			under = false
		} else if !under {
			b.WriteByte('_')
			under = true
		}
	}
	suffix := "_" + strconv.FormatInt(n, 10)
	body := strings.TrimRight(b.String(), "_")
	if limit := 63 - len("tc_") - len(suffix); len(body) > limit {
		body = strings.TrimRight(body[:limit], "_")
	}
	return "tc_" + body + suffix
}

// run runs one of the cluster's binaries as the cluster's user and returns its output.
func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.Env = c.env
	cmd.Dir = c.Dir // the cluster's user may not be able to enter our working directory
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.Bytes(), err
}

// startWatchdog starts a process that waits for the write end of a pipe that only this
// process holds to close, which happens when Close kills it first or, should this
// process die without Close (a test timeout, a kill), when the kernel closes our
// files. Then it stops the server and removes the cluster's directory, so that a
// crashed test run leaves no server behind. It has a process group of its own, out of
// reach of the terminal's Ctrl-C, which would otherwise end it before us.
func (c *Cluster) startWatchdog() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pgtest: watchdog: %w", err)
	}
	defer r.Close()
	cmd := exec.Command("/bin/sh", "-c",
		`read -r _; "$0" -D "$1" -m immediate -s stop >/dev/null 2>&1; rm -rf "$2"`,
		filepath.Join(c.BinDir, "pg_ctl"), c.dataDir(), c.Dir)
	cmd.Stdin = r
	cmd.Env = c.env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("pgtest: watchdog: %w", err)
	}
	c.watchdog, c.watchdogPipe = cmd, w
	return nil
}

// findBinDir finds the directory of the PostgreSQL server binaries.
func findBinDir() (string, error) {
	if dir := os.Getenv("TABLECAST_PG_BIN"); dir != "" {
		if !hasServer(dir) {
			return "", fmt.Errorf("%w: TABLECAST_PG_BIN=%s holds no pg_ctl, initdb and postgres", ErrNoPostgres, dir)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { // newest version first: 15 before 9.6
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	if pgctl, err := exec.LookPath("pg_ctl"); err == nil {
		dirs = append(dirs, filepath.Dir(pgctl))
	}
	for _, dir := range dirs {
		if hasServer(dir) {
			return dir, nil
		}
	}
	return "", ErrNoPostgres
}

func hasServer(dir string) bool {
	for _, name := range []string{"pg_ctl", "initdb", "postgres"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// compareVersions compares dotted version numbers such as "15" and "9.6".
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(as), len(bs)) {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

// postgresUser returns the credentials of the user "postgres", which runs the server
// when we are root (PostgreSQL refuses to run as root).
func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, and PostgreSQL refuses to: no user postgres to run it as: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgtest: user postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// reachable checks that the user of cred may enter every directory from dir up to /,
// so that it can reach the cluster's directory inside dir.
func reachable(dir string, cred *syscall.Credential) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		perm := fi.Mode().Perm()
		switch {
		case !ok, perm&0o001 != 0,
			st.Uid == cred.Uid && perm&0o100 != 0,
			st.Gid == cred.Gid && perm&0o010 != 0:
		default:
			return fmt.Errorf("pgtest: user postgres cannot enter %s, so cannot reach a cluster in %s; point TMPDIR at a directory it can reach", d, dir)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// childEnv is our environment without the PG* variables, which would point
// PostgreSQL's tools at another server, user or data directory, and with C messages,
// which start reads.
func childEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_ALL=")
	})
	return append(env, "LC_ALL=C")
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	return errors.Join(err, f.Close())
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the end of a file from offset on, at most 4 KiB of it.
func readFrom(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if size := fileSize(path); size-offset > 4096 {
		offset = size - 4096
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, offset, 4096))
	return string(b)
}

// The package's shared cluster, set by Main before any test runs.
var (
	shared  *Cluster
	missing error // why there is no shared cluster, when PostgreSQL is missing
)

// Main is for TestMain: it starts the package's cluster, runs the tests, closes the
// cluster and exits with the tests' code:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// When PostgreSQL is not installed and the environment variable CI is true, Main fails
// the run (exit 1) saying to run scripts/pg.sh install; otherwise the tests run
// without a cluster and [Require] skips them. Any other failure to start fails the run.
//
// atExit run after the tests, before the exit, whatever their outcome: for
// what the package's tests made outside t.TempDir (a binary built once for
// every test), which would otherwise outlive the run.
func Main(m *testing.M, atExit ...func()) {
	code := runMain(m)
	for _, f := range atExit {
		f()
	}
	os.Exit(code)
}

func runMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*pgctlWait)
	c, err := Start(ctx)
	cancel()
	switch {
	case errors.Is(err, ErrNoPostgres) && !inCI():
		missing = err
	case errors.Is(err, ErrNoPostgres):
		fmt.Fprintf(os.Stderr, "%v\nCI is set, so tests that need PostgreSQL must not be skipped: run scripts/pg.sh install in the CI job first.\n", err)
		return 1
	case err != nil:
		fmt.Fprintln(os.Stderr, err)
		return 1
	default:
		shared = c
		defer c.Close()
	}
	return m.Run()
}

// Shared returns the package's cluster started by [Main], or nil if there is none.
func Shared() *Cluster { return shared }

// Require returns the package's cluster started by [Main]. It skips the test when
// PostgreSQL is not installed (in CI, Main has already failed the run instead) and
// fails it when TestMain did not call Main.
func Require(t testing.TB) *Cluster {
	t.Helper()
	switch {
	case shared != nil:
		return shared
	case missing != nil:
		t.Skip(missing)
	default:
		t.Fatal("pgtest: no cluster: the package's TestMain must call pgtest.Main(m)")
	}
	return nil
}

// New starts a cluster of the test's own, closed when the test ends, for tests that
// stop or reconfigure PostgreSQL and must not disturb the package's shared cluster.
// It skips the test when PostgreSQL is not installed, unless CI is set.
func New(t testing.TB) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*pgctlWait)
	defer cancel()
	c, err := Start(ctx)
	switch {
	case errors.Is(err, ErrNoPostgres) && !inCI():
		t.Skip(err)
	case err != nil:
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// inCI reports whether the CI environment variable says we run in CI.
func inCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}
