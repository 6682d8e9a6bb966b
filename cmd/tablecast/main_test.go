package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/internal/pgtest"
	"github.com/tablecast/tablecast/internal/testrun"
)

// These tests run the real binary, as a user or an init system would.

func TestMain(m *testing.M) {
	testrun.Parallel(parallelTests) // see "Parallel tests" below
	pgtest.Main(m, build.remove, plainBuild.remove)
}

type builtBinary struct {
	once sync.Once
	dir  string // made for it, removed after the tests
	path string
	err  error
}

func (b *builtBinary) remove() {
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
}

var build, plainBuild builtBinary

// binary builds tablecast once per test run (with the race detector when
// the tests have it) and returns its path.
func binary(t testing.TB) string {
	t.Helper()
	return build.get(t, raceEnabled)
}

// plainBinary is tablecast built without the race detector, for tests
// that measure the process's memory: the detector's shadow memory grows
// with the heap's address range and is never returned, which says
// nothing about what tablecast holds.
func plainBinary(t testing.TB) string {
	t.Helper()
	if !raceEnabled {
		return binary(t)
	}
	return plainBuild.get(t, false)
}

func (b *builtBinary) get(t testing.TB, race bool) string {
	t.Helper()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "tablecast-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.dir = dir
		b.path = filepath.Join(dir, "tablecast")
		args := []string{"build", "-o", b.path}
		if race {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// runBinary runs tablecast to completion with env added to a clean
// environment, and returns its exit code, stdout and stderr.
func runBinary(t *testing.T, timeout time.Duration, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = append(baseEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("tablecast %v did not finish within %s; stderr:\n%s", args, timeout, stderr.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run tablecast: %v", err)
	}
	return code, stdout.String(), stderr.String()
}

// baseEnv is the environment without any TABLECAST_ variable of the
// developer's, so that tests see the defaults, but for the admin API,
// which is off: processes of tests running at once would all want its
// default address. Tests of the admin API set TABLECAST_ADMIN_ADDR after
// (the last value of a variable wins).
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TABLECAST_") {
			env = append(env, kv)
		}
	}
	return append(env, "TABLECAST_ADMIN_ADDR=off")
}

// natsServer is the shared test NATS; the tablecast processes under test
// connect to it, and it outlives them.
type natsServer struct {
	*natstest.Server
}

func startNATS(t testing.TB) *natsServer { return &natsServer{natstest.Start(t)} }

// events decodes every message of the stream, in order.
func (n *natsServer) events(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, m := range n.ReadAll(t, "TABLECAST") {
		var e map[string]any
		if err := json.Unmarshal(m.Data, &e); err != nil {
			t.Fatalf("event %q: %v", m.Data, err)
		}
		out = append(out, e)
	}
	return out
}

func (n *natsServer) count(testing.TB) uint64 { return n.Count("TABLECAST") }

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

func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

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

func TestHelpListsEveryVariable(t *testing.T) {
	code, out, _ := runBinary(t, time.Minute, nil, "help")
	if code != 0 {
		t.Fatalf("help exited %d", code)
	}
	for _, v := range []string{"TABLECAST_DATABASE_URL", "TABLECAST_PUBLICATION", "TABLECAST_TABLES", "TABLECAST_SLOT",
		"TABLECAST_NATS_URL", "TABLECAST_NATS_LISTEN", "TABLECAST_DATA_DIR", "TABLECAST_SUBJECT_PREFIX", "TABLECAST_HTTP_ADDR",
		"TABLECAST_DUPLICATE_WINDOW", "TABLECAST_MAX_IN_FLIGHT"} {
		if !strings.Contains(out, v) {
			t.Errorf("help does not mention %s", v)
		}
	}
	if !strings.Contains(out, "127.0.0.1:4222") || !strings.Contains(out, "./data") {
		t.Errorf("help does not show defaults:\n%s", out)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runBinary(t, time.Minute, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "tablecast ") {
		t.Fatalf("version: exit %d, %q", code, out)
	}
}

// TestMisconfigurationExits: each problem a retry cannot fix ends the
// process with a non-zero code and a one-line reason.
func TestMisconfigurationExits(t *testing.T) {
	c := pgtest.Require(t)
	name, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY); DROP ROLE IF EXISTS tc_cmd_norepl; CREATE ROLE tc_cmd_norepl LOGIN`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `DROP ROLE IF EXISTS tc_cmd_norepl`) })
	n := startNATS(t)
	base := []string{"TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_HTTP_ADDR=127.0.0.1:0", "TABLECAST_SLOT=tc_cmd_bad", "TABLECAST_PUBLICATION=tc_cmd_bad"}
	repeatedKeys := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(repeatedKeys, []byte(`[{"name":"a","hash":"sha256:`+strings.Repeat("0", 64)+`","claims":{},"claims":{"tablecast":{"tables":{"*":["*"]}}}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = name

	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"no database url", nil, "TABLECAST_DATABASE_URL is empty"},
		{"unreachable database", []string{"TABLECAST_DATABASE_URL=postgres://postgres@127.0.0.1:1/x"}, "connect to PostgreSQL"},
		{"missing table", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_TABLES=public.items,public.nope"}, "do not exist: public.nope"},
		{"role without replication", []string{"TABLECAST_DATABASE_URL=" + strings.Replace(url, "postgres://postgres@", "postgres://tc_cmd_norepl@", 1)}, "lacks the REPLICATION attribute"},
		{"bad duration", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_DUPLICATE_WINDOW=soon"}, "TABLECAST_DUPLICATE_WINDOW"},
		{"bad prefix", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_SUBJECT_PREFIX=a.*"}, "TABLECAST_SUBJECT_PREFIX"},
		{"bad slot name", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_SLOT=Bad Slot"}, "TABLECAST_SLOT"},
		{"bad snapshot mode", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_SNAPSHOT=sometimes"}, "TABLECAST_SNAPSHOT"},
		{"bad heartbeat", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_HEARTBEAT_INTERVAL=often"}, "TABLECAST_HEARTBEAT_INTERVAL"},
		{"in-flight beyond the publisher's limit", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_MAX_IN_FLIGHT=100000"}, "TABLECAST_MAX_IN_FLIGHT 100000: must be between 1 and 65536"},
		{"in-flight zero", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_MAX_IN_FLIGHT=0"}, "TABLECAST_MAX_IN_FLIGHT 0"},
		{"mistyped URL scheme", []string{"TABLECAST_DATABASE_URL=postgre://postgres:pw@127.0.0.1/x"}, `scheme "postgre" is not postgres://`},
		{"empty topic role", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_TOPIC_ROLES=app,,other"}, "TABLECAST_TOPIC_ROLES: an empty role name"},
		{"control subject prefix", []string{"TABLECAST_DATABASE_URL=" + url, "TABLECAST_SUBJECT_PREFIX=_TABLECAST.x"}, "the token _TABLECAST starts tablecast's control subjects"},
		{"unknown command", []string{}, "unknown command"},
		{"gateway anonymous off loopback", []string{"TABLECAST_HTTP_ADDR=0.0.0.0:0"}, "not a loopback address and no authentication is configured"},
		{"gateway short JWT secret", []string{"TABLECAST_JWT_SECRET=short"}, "TABLECAST_JWT_SECRET"},
		{"gateway TLS key without cert", []string{"TABLECAST_TLS_KEY=/nonexistent"}, "TABLECAST_TLS_CERT and TABLECAST_TLS_KEY go together"},
		{"gateway bad origin", []string{"TABLECAST_ALLOWED_ORIGINS=example.com"}, "TABLECAST_ALLOWED_ORIGINS"},
		{"gateway zero rate", []string{"TABLECAST_WS_MESSAGES_PER_SECOND=0"}, "TABLECAST_WS_MESSAGES_PER_SECOND 0: must be positive"},
		{"gateway zero replays", []string{"TABLECAST_WS_MAX_REPLAYS=0"}, "TABLECAST_WS_MAX_REPLAYS 0: must be positive"},
		{"gateway negative replays per connection", []string{"TABLECAST_WS_MAX_REPLAYS_PER_CONNECTION=-1"}, "TABLECAST_WS_MAX_REPLAYS_PER_CONNECTION -1: must be positive"},
		{"gateway bad replay rate", []string{"TABLECAST_WS_REPLAY_RATE=fast"}, "TABLECAST_WS_REPLAY_RATE"},
		{"gateway bad timeout", []string{"TABLECAST_WS_READ_TIMEOUT=soon"}, "TABLECAST_WS_READ_TIMEOUT"},
		{"gateway allowed host with scheme", []string{"TABLECAST_ALLOWED_HOSTS=localhost,http://app.example"}, "TABLECAST_ALLOWED_HOSTS \"http://app.example\""},
		{"gateway allowed host with port", []string{"TABLECAST_ALLOWED_HOSTS=app.example:443"}, "TABLECAST_ALLOWED_HOSTS"},
		{"gateway zero per-address limit", []string{"TABLECAST_HTTP_MAX_UNAUTHENTICATED_PER_ADDR=0"}, "TABLECAST_HTTP_MAX_UNAUTHENTICATED_PER_ADDR 0: must be positive, or -1"},
		{"gateway tiny header limit", []string{"TABLECAST_HTTP_MAX_HEADER_BYTES=100"}, "TABLECAST_HTTP_MAX_HEADER_BYTES 100"},
		{"gateway zero idle timeout", []string{"TABLECAST_HTTP_IDLE_TIMEOUT=0s"}, "TABLECAST_HTTP_IDLE_TIMEOUT 0s: must be positive"},
		{"gateway zero handshakes", []string{"TABLECAST_HTTP_MAX_HANDSHAKES=0"}, "TABLECAST_HTTP_MAX_HANDSHAKES 0: must be positive"},
		{"gateway missing keys file", []string{"TABLECAST_JWT_KEYS=/nonexistent/keys.pem"}, "TABLECAST_JWT_KEYS"},
		{"gateway missing API keys file", []string{"TABLECAST_API_KEYS_FILE=/nonexistent/keys.json"}, "TABLECAST_API_KEYS_FILE"},
		{"gateway API keys file repeating a member", []string{"TABLECAST_API_KEYS_FILE=" + repeatedKeys}, `TABLECAST_API_KEYS_FILE: not a JSON list of {name, hash, claims}: member "claims" is repeated`},
		{"gateway bad anonymous grants", []string{`TABLECAST_ANONYMOUS_GRANTS={"tables":{"public.prices":["select"]}}`}, `TABLECAST_ANONYMOUS_GRANTS: tables["public.prices"]: unknown operation "select"`},
		{"gateway anonymous grants with a claim", []string{`TABLECAST_ANONYMOUS_GRANTS={"tables":{"*":["*"]},"policies":{"*":{"t":{"eq":{"claim":"tenant"}}}}}`}, "TABLECAST_ANONYMOUS_GRANTS: the row policy of * refers to a claim"},
		{"gateway missing anonymous grants file", []string{"TABLECAST_ANONYMOUS_GRANTS=@/nonexistent/public.json"}, "TABLECAST_ANONYMOUS_GRANTS"},
		{"gateway anonymous twice", []string{"TABLECAST_ALLOW_ANONYMOUS=true", `TABLECAST_ANONYMOUS_GRANTS={"tables":{"*":["read"]}}`}, "contradict"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"cdc"}
			switch {
			case tt.name == "unknown command":
				args = []string{"frobnicate"}
			case strings.HasPrefix(tt.name, "gateway "):
				args = []string{"gateway"}
			}
			code, _, stderr := runBinary(t, time.Minute, append(append([]string{}, base...), tt.env...), args...)
			last := lastLine(stderr)
			if code == 0 || !strings.HasPrefix(last, "tablecast: ") || !strings.Contains(last, tt.want) {
				t.Fatalf("exit %d, last line %q; want non-zero and a line containing %q\nstderr:\n%s", code, last, tt.want, stderr)
			}
		})
	}

	// wal_level last: it restarts this package's cluster.
	t.Run("wal_level not logical", func(t *testing.T) {
		setWalLevel(t, c, conn, "replica")
		defer setWalLevel(t, c, nil, "logical")
		code, _, stderr := runBinary(t, time.Minute, append(base, "TABLECAST_DATABASE_URL="+url), "cdc")
		if last := lastLine(stderr); code == 0 || !strings.Contains(last, `wal_level is "replica"`) {
			t.Fatalf("exit %d, last line %q; want non-zero and the wal_level reason", code, last)
		}
	})
}

func setWalLevel(t *testing.T, c *pgtest.Cluster, conn *pgx.Conn, level string) {
	t.Helper()
	var err error
	if conn == nil {
		conn, err = pgx.Connect(context.Background(), c.URL("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
	}
	if _, err := conn.Exec(context.Background(), "ALTER SYSTEM SET wal_level = "+level); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(context.Background()); err != nil {
		t.Fatalf("restart PostgreSQL: %v", err)
	}
}

// lastLine is the line the process ended with: its last "tablecast: …"
// line (how main reports an error), or its last line when it has none. A
// log line written by a connection's close handler may land after the
// error line, so the error line is looked for rather than taken as last.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "tablecast: ") {
			return lines[i]
		}
	}
	return lines[len(lines)-1]
}

func pgtestRequire(t testing.TB) *pgtest.Cluster { return pgtest.Require(t) }

// Parallel tests: a few of the package's longest tests (TestJSClient,
// TestAdminCommands, TestExactlyOnceBeyondDuplicateWindow, TestConsole,
// TestFullDiskRecovers) and TestAdminRefusesRebindingWhenAnonymous share
// nothing with the others but the PostgreSQL cluster, each with a
// database, a NATS server, a directory and ports of its own, and spend
// most of their time waiting on processes. They run in parallel, all at
// once (parallelTests; go test's default would be one per core, two here:
// four took 60 s where two at a time took 100), after the package's other
// tests, when the other packages of make test are mostly done;
// timing-sensitive tests (failover, leases, latency) stay sequential.
const parallelTests = 6
