// Package pgtest gives each test package a private, throwaway PostgreSQL cluster with
// wal_level=logical, so that tests which restart PostgreSQL, change its settings or run
// alongside other packages' tests never meet each other.
//
// # Use
//
// A package whose tests need PostgreSQL starts its cluster in TestMain, and each test
// asks for it and makes a database of its own:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		c := pgtest.Require(t)            // skips the test if PostgreSQL is not installed
//		_, url := c.CreateDatabase(t)     // tc_testsomething_1, dropped when the test ends
//		c.Exec(t, url, `CREATE TABLE items (id int PRIMARY KEY)`)
//		conn := c.Connect(t, url)         // closed when the test ends
//		...
//	}
//
// A test that stops or reconfigures the server while other tests of its package run in
// parallel takes a cluster of its own with [New] instead of the shared one.
//
// # PostgreSQL missing
//
// The server binaries are looked for in $TABLECAST_PG_BIN, then the newest
// /usr/lib/postgresql/*/bin (Debian, Ubuntu), then beside pg_ctl on $PATH. Without
// them [Start] returns [ErrNoPostgres], and the tests that call [Require] or [New] are
// skipped, so that `go test ./...` works on a machine without PostgreSQL. In CI
// (environment variable CI=true) a skipped database test would hide a gap, so [Main]
// and [New] fail instead, telling to run scripts/pg.sh install.
//
// # The cluster
//
// Each cluster lives in a new directory under os.TempDir(): the data directory, the
// unix socket and the server log (postgres.log, worth reading when a test fails
// strangely). It listens on 127.0.0.1 on a port that was free when it started; the
// superuser postgres may connect without a password, replication connections
// included. [Cluster.URL] gives
//
//	postgres://postgres@127.0.0.1:PORT/DATABASE?sslmode=disable
//
// Settings: wal_level=logical, 64 replication slots and WAL senders, 200 connections,
// 16 prepared transactions,
// time zone UTC, and fsync, synchronous_commit and full_page_writes off: a test cluster
// is thrown away after a crash, so durability only costs time. initdb and start take
// about a second. The settings sit in a file of their own included by
// postgresql.conf, so ALTER SYSTEM followed by [Cluster.Restart] overrides them.
//
// Running as root, which PostgreSQL refuses, the server and its tools run as the
// user postgres, who owns the cluster's directory; os.TempDir() must be reachable by it.
// Child processes get the environment without its PG* variables, so that PGHOST or
// PGDATA set for some other server cannot redirect them.
//
// # Clean-up
//
// [Cluster.Close] (which Main calls after the tests) stops the server and removes the
// directory. A test binary that dies without closing — a panic, a -timeout, a kill —
// leaves nothing behind either: each cluster has a watchdog process, waiting on a pipe
// whose only writer is the test process, that stops the server and removes the
// directory when the pipe closes.
//
// # Concurrency
//
// A Cluster's methods are safe for concurrent use by parallel tests. Stop, Start and
// Restart are serialised and affect every test using the cluster; CreateDatabase hands
// out distinct names. Main sets the shared cluster before any test runs.
package pgtest
