#!/usr/bin/env bash
# pg.sh manages tablecast's local development PostgreSQL: a private cluster with
# wal_level=logical in <repo>/.data/pg, listening on 127.0.0.1 only, on its own port and
# its own unix socket directory, so it never touches a system cluster.
#
#   scripts/pg.sh install          find (or apt-get install) the PostgreSQL server binaries
#   scripts/pg.sh start            initialise if needed, start, create database "tablecast", print its URL
#   scripts/pg.sh stop             fast shutdown; fine when not running or never created
#   scripts/pg.sh restart          stop, then start
#   scripts/pg.sh status           exit 0 when running
#   scripts/pg.sh url              print the connection URL
#   scripts/pg.sh psql [args...]   psql connected to database "tablecast"
#
# Environment:
#   TABLECAST_PG_DIR   data directory (default <repo>/.data/pg)
#   TABLECAST_PG_PORT  TCP port (default 54329)
#   TABLECAST_PG_BIN   directory holding pg_ctl, initdb and postgres (default: the newest
#                      /usr/lib/postgresql/*/bin, then $PATH)
#
# PostgreSQL refuses to run as root: when this script runs as root the server and its
# tools run as the "postgres" user, which then owns the data and socket directories.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data_dir="${TABLECAST_PG_DIR:-$repo/.data/pg}"
port="${TABLECAST_PG_PORT:-54329}"
socket_dir="${data_dir%/}-socket"
log_file="$data_dir/postgres.log"
database=tablecast
url="postgres://postgres@127.0.0.1:$port/$database?sslmode=disable"

# Variables that would point PostgreSQL tools at some other server or user.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE PGSERVICE \
	PGSERVICEFILE PGSSLMODE PGDATA PGOPTIONS PGTARGETSESSIONATTRS

die() {
	echo "pg.sh: $*" >&2
	exit 1
}

# as_pg runs a command as the user that owns the cluster: "postgres" when we are root,
# ourselves otherwise.
as_pg() {
	if [[ $EUID -eq 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

has_server() { [[ -x "$1/pg_ctl" && -x "$1/initdb" && -x "$1/postgres" ]]; }

# find_bin prints the directory of the server binaries, or fails quietly.
find_bin() {
	if [[ -n "${TABLECAST_PG_BIN:-}" ]]; then
		has_server "$TABLECAST_PG_BIN" || die "TABLECAST_PG_BIN=$TABLECAST_PG_BIN holds no pg_ctl, initdb and postgres"
		echo "$TABLECAST_PG_BIN"
		return
	fi
	# An existing cluster must keep the major version that created it.
	if [[ -r "$data_dir/PG_VERSION" ]]; then
		local v
		v="$(<"$data_dir/PG_VERSION")"
		if has_server "/usr/lib/postgresql/$v/bin"; then
			echo "/usr/lib/postgresql/$v/bin"
			return
		fi
	fi
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -rV); do
		if has_server "$d"; then
			echo "$d"
			return
		fi
	done
	d="$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")"
	if has_server "$d"; then
		echo "$d"
		return
	fi
	return 1
}

cmd_install() {
	if [[ -n "${TABLECAST_PG_BIN:-}" ]]; then
		bin="$(find_bin)" || exit 1
		return
	fi
	if bin="$(find_bin)"; then
		return
	fi
	command -v apt-get >/dev/null || die "PostgreSQL server binaries not found and apt-get is unavailable: install PostgreSQL 14 or later, or set TABLECAST_PG_BIN"
	local sudo=()
	if [[ $EUID -ne 0 ]]; then
		command -v sudo >/dev/null || die "PostgreSQL server binaries not found: run this as root, or install the 'postgresql' package"
		sudo=(sudo)
	fi
	echo "pg.sh: PostgreSQL server binaries not found; installing the Debian 'postgresql' package (apt-get)..." >&2
	"${sudo[@]}" apt-get update -qq >&2
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
	bin="$(find_bin)" || die "installed the 'postgresql' package but still found no server binaries"
}

is_running() {
	[[ -f "$data_dir/PG_VERSION" ]] || return 1
	bin="$(find_bin)" || return 1
	as_pg "$bin/pg_ctl" -D "$data_dir" status >/dev/null 2>&1
}

# make_dir creates a directory that the cluster's user owns.
make_dir() {
	mkdir -p "$1"
	if [[ $EUID -eq 0 ]]; then
		chown postgres:postgres "$1"
	fi
	chmod "$2" "$1"
}

init_cluster() {
	if [[ -f "$data_dir/PG_VERSION" ]]; then
		return
	fi
	if [[ -d "$data_dir" && -n "$(ls -A "$data_dir")" ]]; then
		die "$data_dir exists, is not empty and holds no PostgreSQL cluster; remove it or set TABLECAST_PG_DIR"
	fi
	if [[ $EUID -eq 0 ]]; then
		id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run PostgreSQL as"
	fi
	mkdir -p "$(dirname "$data_dir")"
	make_dir "$data_dir" 700
	if [[ $EUID -eq 0 ]] && ! runuser -u postgres -- test -w "$data_dir"; then
		die "user postgres cannot reach $data_dir (a parent directory is not traversable); set TABLECAST_PG_DIR to a directory it can reach"
	fi
	local out
	if ! out="$(as_pg "$bin/initdb" -D "$data_dir" --auth=trust -U postgres -E UTF8 --locale=C --no-sync --no-instructions 2>&1)"; then
		echo "$out" >&2
		die "initdb failed"
	fi
}

write_config() {
	# Written on every start so that a changed TABLECAST_PG_PORT takes effect.
	as_pg tee "$data_dir/tablecast.conf" >/dev/null <<EOF
# Written by scripts/pg.sh on every start; edit the script, not this file.
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_connections = 200
# Development only: trade crash safety for speed. Never use these settings for real data.
fsync = off
synchronous_commit = off
full_page_writes = off
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$socket_dir'
timezone = 'UTC'
EOF
	as_pg tee "$data_dir/pg_hba.conf" >/dev/null <<'EOF'
# Written by scripts/pg.sh: a development cluster on loopback, anyone local may connect.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
EOF
	if ! grep -q "^include_if_exists = 'tablecast.conf'" "$data_dir/postgresql.conf"; then
		printf "\n# Added by scripts/pg.sh.\ninclude_if_exists = 'tablecast.conf'\n" |
			as_pg tee -a "$data_dir/postgresql.conf" >/dev/null
	fi
}

create_database() {
	local exists
	exists="$("$bin/psql" -X -q -h "$socket_dir" -p "$port" -U postgres -d postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname = '$database'")"
	if [[ "$exists" != 1 ]]; then
		"$bin/psql" -X -q -h "$socket_dir" -p "$port" -U postgres -d postgres \
			-c "CREATE DATABASE $database" >/dev/null
	fi
}

# start_server runs pg_ctl start with nothing open but stdin, stdout and stderr, so that the
# long-lived server holds neither our lock (fd 9, which would block every later start)
# nor descriptors inherited from our caller, such as make's jobserver pipes.
start_server() (
	local fd
	for fd in /proc/$BASHPID/fd/*; do
		fd="${fd##*/}"
		if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
			eval "exec $fd>&-"
		fi
	done
	as_pg "$bin/pg_ctl" -D "$data_dir" -l "$log_file" -w -s start >/dev/null
)

cmd_start() {
	cmd_install
	lock
	init_cluster
	if ! is_running; then
		make_dir "$socket_dir" 755
		write_config
		if ! start_server; then
			tail -n 20 "$log_file" >&2 || true
			die "PostgreSQL did not start (log: $log_file)"
		fi
	fi
	create_database
	echo "$url"
}

cmd_stop() {
	[[ -f "$data_dir/PG_VERSION" ]] || return 0
	lock
	if is_running; then
		as_pg "$bin/pg_ctl" -D "$data_dir" -m fast -w -s stop >/dev/null
	fi
}

cmd_status() {
	if is_running; then
		echo "running: $url"
		return 0
	fi
	echo "not running ($data_dir)" >&2
	return 1
}

cmd_psql() {
	is_running || die "not running; start it with scripts/pg.sh start"
	local psql="$bin/psql"
	[[ -x "$psql" ]] || psql=psql
	exec "$psql" "$url" "$@"
}

# lock serialises start and stop between concurrent invocations (say two make targets).
lock() {
	mkdir -p "$(dirname "$data_dir")"
	exec 9>"${data_dir%/}.lock"
	flock 9
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart)
	cmd_stop
	exec 9>&- # release the lock before start takes it again
	cmd_start
	;;
status) cmd_status ;;
url) echo "$url" ;;
psql)
	shift
	cmd_psql "$@"
	;;
*)
	echo "usage: $0 install|start|stop|restart|status|url|psql [args]" >&2
	exit 2
	;;
esac
