package pgtest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func queryString(t *testing.T, url, sql string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestSettings(t *testing.T) {
	c := Require(t)
	for _, tt := range []struct{ setting, want string }{
		{"wal_level", "logical"},
		{"max_replication_slots", "64"},
		{"max_wal_senders", "64"},
		{"max_connections", "200"},
		{"fsync", "off"},
		{"listen_addresses", "127.0.0.1"},
		{"server_encoding", "UTF8"},
		{"TimeZone", "UTC"},
	} {
		t.Run(tt.setting, func(t *testing.T) {
			if got := queryString(t, c.URL("postgres"), "SHOW "+tt.setting); got != tt.want {
				t.Errorf("SHOW %s = %q, want %q", tt.setting, got, tt.want)
			}
		})
	}
}

func TestCreateDatabase(t *testing.T) {
	c := Require(t)
	name, url := c.CreateDatabase(t)
	if !strings.HasPrefix(name, "tc_testcreatedatabase_") {
		t.Errorf("name %q, want tc_testcreatedatabase_<n>", name)
	}
	if url != c.URL(name) {
		t.Errorf("url %q, want %q", url, c.URL(name))
	}
	c.Exec(t, url, "CREATE TABLE items (id int PRIMARY KEY, label text)")
	c.Exec(t, url, "INSERT INTO items VALUES ($1, $2)", 1, "one")
	if got := queryString(t, url, "SELECT current_database() || ':' || label FROM items"); got != name+":one" {
		t.Errorf("got %q", got)
	}
	if name2, _ := c.CreateDatabase(t); name2 == name {
		t.Errorf("second database has the same name %q", name2)
	}
}

// TestDropWithSlot: a database holding replication slots, one of them in use by a
// replication connection, is still dropped when the test ends.
func TestDropWithSlot(t *testing.T) {
	c := Require(t)
	var name string
	t.Run("make", func(t *testing.T) {
		var url string
		name, url = c.CreateDatabase(t)
		c.Exec(t, url, "SELECT pg_create_logical_replication_slot('idle_slot', 'pgoutput')")
		conn := c.Connect(t, url+"&replication=database")
		if err := conn.PgConn().Exec(context.Background(),
			"CREATE_REPLICATION_SLOT busy_slot TEMPORARY LOGICAL pgoutput").Close(); err != nil {
			t.Fatal(err)
		}
	})
	var n int
	conn := c.Connect(t, c.URL("postgres"))
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("database %s still exists after its test ended", name)
	}
}

func TestRestart(t *testing.T) {
	c := Require(t)
	_, url := c.CreateDatabase(t)
	c.Exec(t, url, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')")
	start := time.Now()
	if err := c.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart took %v", time.Since(start))
	if got := queryString(t, url, "SELECT v FROM kept"); got != "before" {
		t.Errorf("after restart got %q", got)
	}

	if err := c.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if conn, err := pgx.Connect(context.Background(), url); err == nil {
		conn.Close(context.Background())
		t.Fatal("connected to a stopped cluster")
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Errorf("second Start: %v", err)
	}
	if got := queryString(t, url, "SHOW wal_level"); got != "logical" {
		t.Errorf("after start wal_level = %q", got)
	}
}

// TestNewAndClose: a private cluster starts quickly, differs from the shared one, and
// Close stops it and removes its directory.
func TestNewAndClose(t *testing.T) {
	Require(t)
	start := time.Now()
	ctx := context.Background()
	c, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initdb and start took %v", time.Since(start))
	if c.Port == Shared().Port || c.Dir == Shared().Dir {
		t.Errorf("private cluster shares port or directory with the shared one")
	}
	if got := queryString(t, c.URL("postgres"), "SHOW wal_level"); got != "logical" {
		t.Errorf("wal_level = %q", got)
	}
	start = time.Now()
	c.Close()
	t.Logf("close took %v", time.Since(start))
	c.Close()
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s remains after Close: %v", c.Dir, err)
	}
	if conn, err := pgx.Connect(ctx, c.URL("postgres")); err == nil {
		conn.Close(ctx)
		t.Error("connected after Close")
	}
}

// TestWatchdog: when the process owning a cluster dies without Close, the cluster is
// stopped and its directory removed. The owner is this test binary run again as a
// child that starts a cluster, prints its directory and port, and is killed.
func TestWatchdog(t *testing.T) {
	if os.Getenv("PGTEST_WATCHDOG_CHILD") == "1" {
		c, err := Start(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		os.Stdout.WriteString(c.Dir + "\n" + c.URL("postgres") + "\n")
		time.Sleep(time.Minute)
		return
	}
	Require(t)
	if testing.Short() {
		t.Skip("short")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestWatchdog$")
	cmd.Env = append(os.Environ(), "PGTEST_WATCHDOG_CHILD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	buf := make([]byte, 4096)
	var got string
	for len(lines) < 3 {
		n, err := out.Read(buf)
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("child said %q, then: %v", got, err)
		}
		got += string(buf[:n])
		lines = strings.Split(got, "\n")
	}
	dir, url := lines[0], lines[1]
	if got := queryString(t, url, "SHOW wal_level"); got != "logical" {
		t.Errorf("child's cluster wal_level = %q", got)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	deadline := time.Now().Add(30 * time.Second)
	for {
		_, statErr := os.Stat(dir)
		conn, connErr := pgx.Connect(context.Background(), url)
		if connErr == nil {
			conn.Close(context.Background())
		}
		if errors.Is(statErr, os.ErrNotExist) && connErr != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after its owner died the cluster in %s remains (stat: %v, connect: %v)", dir, statErr, connErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMissingPostgres runs this test binary without PostgreSQL: its tests are skipped,
// unless CI is set, when the run fails saying what to do.
func TestMissingPostgres(t *testing.T) {
	for _, tt := range []struct {
		ci       string
		wantExit int
		want     string
	}{
		{"", 0, "--- SKIP: TestSettings"},
		{"true", 1, "run scripts/pg.sh install"},
	} {
		t.Run("CI="+tt.ci, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestSettings$", "-test.v")
			cmd.Env = append(os.Environ(), "TABLECAST_PG_BIN=/nonexistent", "CI="+tt.ci)
			out, err := cmd.CombinedOutput()
			exit := 0
			if ee, ok := errors.AsType[*exec.ExitError](err); ok {
				exit = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if exit != tt.wantExit || !strings.Contains(string(out), tt.want) {
				t.Errorf("exit %d, want %d and output containing %q; output:\n%s", exit, tt.wantExit, tt.want, out)
			}
		})
	}
}

func TestDatabaseName(t *testing.T) {
	for _, tt := range []struct {
		test string
		n    int64
		want string
	}{
		{"TestX", 1, "tc_testx_1"},
		{"TestReader/Resume after-crash", 12, "tc_testreader_resume_after_crash_12"},
		{"Test__Odd--Name__", 3, "tc_test_odd_name_3"},
		{"Test/ünïcode", 4, "tc_test_n_code_4"},
		{strings.Repeat("TestLong", 20), 123456, "tc_" + strings.Repeat("testlong", 20)[:53] + "_123456"},
	} {
		got := databaseName(tt.test, tt.n)
		if got != tt.want {
			t.Errorf("databaseName(%q, %d) = %q, want %q", tt.test, tt.n, got, tt.want)
		}
		if len(got) > 63 {
			t.Errorf("databaseName(%q, %d) = %q: %d bytes, more than 63", tt.test, tt.n, got, len(got))
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		sign int
	}{
		{"15", "9.6", 1},
		{"9.6", "15", -1},
		{"16", "16", 0},
		{"10", "9", 1},
	} {
		got := compareVersions(tt.a, tt.b)
		if (got > 0) != (tt.sign > 0) || (got < 0) != (tt.sign < 0) {
			t.Errorf("compareVersions(%q, %q) = %d, want sign %d", tt.a, tt.b, got, tt.sign)
		}
	}
}
