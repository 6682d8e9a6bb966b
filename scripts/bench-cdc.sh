#!/usr/bin/env bash
# bench-cdc.sh — tablecast's reader beside PostgreSQL's walsender on the same
# workload.
#
# For each workload, one slot per reader is created before the measured
# changes are written, so every reader finds the same WAL waiting for it:
#   - walsender: scripts/walfloor reads its slot with pgoutput (proto 1, as
#     pg_recvlogical would) and counts the changes, doing nothing else, until
#     the last one has arrived: the walsender alone sets its pace.
#     (pg_recvlogical --endpos is not used: it stops once a keepalive reports
#     the WAL past the end position, whether or not the changes were sent, and
#     on a transaction of a million rows receives none or most of them.)
#   - each tablecast binary (BINS) runs `cdc` on a slot of its own into
#     JetStream (file storage): decoded, encoded, published and acknowledged.
# Both clocks run from the reader's launch to its last change: walfloor's
# exit at the last change, and the time JetStream stored tablecast's last
# event (the stream's own timestamp). With NATS=embedded (default) JetStream
# runs inside tablecast, sharing its cores; with NATS=external it is a
# separate nats-server process, and the peak memory reported is the reader's
# alone; with NATS=cluster three nats-server processes form a JetStream
# cluster on loopback and the reader's stream and buckets have three
# replicas (TABLECAST_STREAM_REPLICAS=3), all on this machine's cores.
#
# Workloads (ROWS defaults to 1,000,000; the "rows" column is the number of
# changes measured):
#   many    ROWS inserts in 1,000-row transactions;
#   one     ROWS inserts in a single transaction;
#   update  ROWS rows loaded before the slots exist, then each updated once,
#           in 1,000-row transactions: ROWS updates are measured;
#   wide    ROWS/4 inserts into a 50-column table of mixed types (int, bigint,
#           numeric, text, timestamptz, boolean, jsonb, uuid, float8, date),
#           in 1,000-row transactions;
#   single  ROWS inserts, each its own transaction (not in the default
#           WORKLOADS: PostgreSQL commits a few thousand a second, so keep
#           ROWS to tens of thousands).
#
# With TABLECAST_TX_MARKERS=true in the environment the readers publish a
# transaction marker after each transaction, and a run waits for them too.
# Each line gives what the stream stores per change (bytes of the stream /
# changes), markers included.
#
# CPU, in CPU-seconds per million changes (utime + stime from /proc):
#   wal   the walsender serving walfloor (the postmaster's reaped children,
#         counted from walfloor's launch until its walsender is gone): what
#         PostgreSQL itself spends to deliver the changes;
#   tc    the tablecast process (reader, publisher and, embedded, JetStream);
#   nats  the nats-server process (NATS=external), the three together
#         (NATS=cluster);
#   pg    PostgreSQL's processes serving tablecast (its walsender and its
#         regular connections), counted the same way as wal.
# With PROFILE=1 each tablecast run is profiled for its middle seconds
# (TABLECAST_PPROF) and the line ends with the share of CPU of each part, from
# the profile's goroutine labels: reader (decode, encode, publish, acks),
# nats-client (the connection's reader and flusher), nats-server (JetStream),
# gc/other (the garbage collector's workers and unlabelled goroutines). The
# profiles, and a heap profile taken as the CPU profile ends, are kept in
# PROFILE_DIR (default .tmp/profiles). With TRACE=1 too, an execution trace
# of one second, two seconds into the run, is kept beside them (.trace):
# `go tool trace` on it, page "Goroutines", gives each goroutine's execution
# and scheduler-wait time, which shows the step that runs alone and bounds
# the rate (in tablecast, JetStream's ingest loop of the stream).
# Each line also gives the reader's peak resident memory (VmHWM, embedded
# NATS included), and the machine's one-minute load average when the line's
# readers started.
# With TABLECAST_ROW_STATE=true (in the environment, or set by a wrapper
# script given in BINS), each run lasts until the row state has applied the
# last event too: the CPU figures include the maintainer's work, and the
# line ends with "rows +Ns", how long after the last event was stored the
# state had applied it. The rate stays the reader's.
#
# With LOAD_TPS=n, a pgbench load (TPC-B-like, n transactions a second, on
# a database of its own) runs on the machine for the whole measurement, as
# other work on a shared database server would; the workloads' readers
# decode its WAL too.
#
# With NATS=external or cluster, each line also gives the nats-server
# processes' peak resident memory (summed), and NATS_GOGC=n runs them with
# GOGC=n (Go's collector; their default is 100): the server's collector is
# its operator's to tune.
#
# Usage: [NATS=embedded|external|cluster] [WORKLOADS="many one update wide single"] [REPEAT=1]
#        [BINS="bin/tablecast other/tablecast"] [PROFILE=1 [TRACE=1]] [LOAD_TPS=n] [NATS_GOGC=n]
#        scripts/bench-cdc.sh [rows]
# BINS compares tablecast binaries in the same run, each on the same WAL (the
# order rotates from one repetition to the next); the default builds
# bin/tablecast from this tree. REPEAT runs every workload that many times,
# interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
NATS=${NATS:-embedded}
WORKLOADS=${WORKLOADS:-many one update wide}
REPEAT=${REPEAT:-1}
LOAD_TPS=${LOAD_TPS:-}
PROFILE=${PROFILE:-}
PROFILE_DIR=${PROFILE_DIR:-.tmp/profiles}
NATS_GOGC=${NATS_GOGC:-}
case "$ROWS" in '' | *[!0-9]* | 0*) echo "bench-cdc.sh: rows must be a positive integer, not '$ROWS'" >&2; exit 2 ;; esac
case "$REPEAT" in '' | *[!0-9]* | 0*) echo "bench-cdc.sh: REPEAT must be a positive integer, not '$REPEAT'" >&2; exit 2 ;; esac
case "$LOAD_TPS" in *[!0-9]*) echo "bench-cdc.sh: LOAD_TPS must be a whole number, not '$LOAD_TPS'" >&2; exit 2 ;; esac
case "$NATS_GOGC" in *[!0-9]*) echo "bench-cdc.sh: NATS_GOGC must be a whole number, not '$NATS_GOGC'" >&2; exit 2 ;; esac
case "$NATS" in embedded | external | cluster) ;; *) echo "bench-cdc.sh: NATS must be embedded, external or cluster, not '$NATS'" >&2; exit 2 ;; esac
read -r -a workloads <<<"$WORKLOADS"
[ "${#workloads[@]}" -gt 0 ] || { echo "bench-cdc.sh: WORKLOADS is empty" >&2; exit 2; }
for w in "${workloads[@]}"; do
  case "$w" in many | one | update | wide | single) ;; *) echo "bench-cdc.sh: unknown workload '$w' (want many, one, update, wide, single)" >&2; exit 2 ;; esac
done
[ "$ROWS" -ge 4 ] || { echo "bench-cdc.sh: rows must be at least 4 (wide writes rows/4)" >&2; exit 2; }

export TABLECAST_PG_PORT=${TABLECAST_PG_PORT:-54329}
scripts/pg.sh start >/dev/null
PGURL=$(scripts/pg.sh url)
BASEURL=${PGURL%/*}
PGDATA_DIR=${TABLECAST_PG_DIR:-.data/pg}
DB=tc_bench
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1)
if [ -z "${BINS:-}" ]; then
  go build -o bin/tablecast ./cmd/tablecast
  BINS=bin/tablecast
fi
read -r -a bins <<<"$BINS"
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "bench-cdc.sh: $b is not an executable" >&2; exit 2; }
done
go build -o bin/jsinfo ./scripts/jsinfo
go build -o bin/walfloor ./scripts/walfloor
if [ "$NATS" != embedded ]; then go build -o bin/nats-server github.com/nats-io/nats-server/v2; fi
if [ -n "$PROFILE" ]; then mkdir -p "$PROFILE_DIR"; fi

# The postmaster: its reaped children's CPU time is how the walsenders'
# is counted (a walsender's own /proc entry is gone the moment it exits).
PM_PID=$(head -1 "$PGDATA_DIR/postmaster.pid")
TICKS=$(getconf CLK_TCK)

work=$(mktemp -d)
recv_pid=
reader_pid=
nats_pids=
prof_pid=
load_pid=
stop_pid() { # pid: end a process this script started, and reap it
  if [ -n "$1" ]; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
stop_nats() { # end the nats-server processes of the run
  local p
  for p in $nats_pids; do stop_pid "$p"; done
  nats_pids=
}
# start_cluster starts three nats-server processes clustered with JetStream
# on loopback (clients on 14222-14224) and waits until each says it is
# healthy, JetStream's meta group included.
start_cluster() {
  local i routes=nats://127.0.0.1:16222,nats://127.0.0.1:16223,nats://127.0.0.1:16224
  for i in 0 1 2; do
    env ${NATS_GOGC:+GOGC=$NATS_GOGC} bin/nats-server -a 127.0.0.1 -p $((14222 + i)) -m $((18222 + i)) -js -sd "$work/nats/n$i" -n "bench-n$i" \
      --cluster_name tcbench --cluster "nats://127.0.0.1:$((16222 + i))" --routes "$routes" >/dev/null 2>&1 &
    nats_pids+=" $!"
  done
  for i in 0 1 2; do
    local try=0
    until curl -sf "http://127.0.0.1:$((18222 + i))/healthz" >/dev/null 2>&1; do
      try=$((try + 1))
      [ "$try" -lt 150 ] || { echo "bench-cdc.sh: the NATS cluster did not become healthy in 30 s" >&2; exit 1; }
      sleep 0.2
    done
  done
}
slot_names() { # the slots of this run, quoted for SQL
  local i list="'bench_recv'"
  for ((i = 0; i < ${#bins[@]}; i++)); do list+=",'bench_tc$i'"; done
  echo "$list"
}
# drop_slots drops every bench slot, ending a walsender that still holds one
# (its reader has exited, but the walsender may not have noticed yet).
drop_slots() {
  local q="FROM pg_replication_slots WHERE slot_name IN ($(slot_names))" try
  for try in 1 2 3 4 5 6 7 8 9 10; do
    "${PSQL[@]}" -d "$BASEURL/postgres" -c "SELECT pg_terminate_backend(active_pid) $q AND active_pid IS NOT NULL" >/dev/null
    if "${PSQL[@]}" -d "$BASEURL/postgres" -c "SELECT pg_drop_replication_slot(slot_name) $q" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "SELECT pg_drop_replication_slot(slot_name) $q" >/dev/null
}
cleanup() {
  stop_pid "$recv_pid"
  stop_pid "$reader_pid"
  stop_nats
  stop_pid "$prof_pid"
  stop_pid "$load_pid"
  rm -rf "$work"
  # Leave no slot behind to hold WAL back, nor the bench database.
  drop_slots 2>/dev/null || true
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
  if [ -n "$LOAD_TPS" ]; then
    "${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS tc_load WITH (FORCE)" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# proc_ticks pid: the process's own CPU time (utime + stime), in clock ticks.
proc_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }
  awk '{print $12 + $13}' <<<"$stat"
}
# reaped_ticks: CPU time of the postmaster's reaped children, in clock ticks.
reaped_ticks() {
  local stat
  stat=$(cat "/proc/$PM_PID/stat")
  stat=${stat##*) }
  awk '{print $14 + $15}' <<<"$stat"
}
# wait_walsenders_gone: until the postmaster has reaped every walsender,
# so that their CPU time is in reaped_ticks.
wait_walsenders_gone() {
  local i
  for i in $(seq 1 100); do
    pgrep -P "$PM_PID" -f "walsender|$DB" >/dev/null || return 0
    sleep 0.05
  done
  echo "bench-cdc.sh: a walsender is still running; its CPU time is not counted" >&2
}
per_million() { # ticks changes: CPU-seconds per million changes
  echo "$1 / $TICKS * 1000000 / $2" | bc -l
}
# profile_split file: each part's share of a CPU profile, as percentages,
# from the goroutine labels (stream.ProfileLabel): reader, nats-client,
# nats-server (also the server's goroutines that label themselves by
# account), gc/other (no label: the garbage collector's workers, timers).
profile_split() {
  go tool pprof -raw "$1" 2>/dev/null | awk '
    function flush() { if (have) { by[part] += cur; total += cur; have = 0 } }
    /^Samples:/ { s = 1; next }
    s && /^Locations/ { flush(); s = 0 }
    !s { next }
    /^ *[0-9]+ +[0-9]+:/ { flush(); cur = $2 + 0; part = "gc/other"; have = 1; next }
    /tablecast:\[/ { if (match($0, /tablecast:\[[^]]*\]/)) part = substr($0, RSTART + 11, RLENGTH - 12); next }
    /account:\[/ { part = "nats-server"; next }
    END {
      flush()
      if (total == 0) { print "profile empty"; exit }
      printf "reader %.0f%% nats-client %.0f%% nats-server %.0f%% gc/other %.0f%%", 100*by["reader"]/total, 100*by["nats-client"]/total, 100*by["nats-server"]/total, 100*by["gc/other"]/total
    }'
}

# batched_insert n columns select-list: SQL inserting rows 1..n into bench,
# committing every 1,000 rows; select-list is written in terms of g, the id.
batched_insert() {
  local n=$1 cols=$2 vals=$3
  cat <<SQL
DO \$\$ BEGIN FOR i IN 0..$(((n + 999) / 1000 - 1)) LOOP
  INSERT INTO bench ($cols) SELECT $vals FROM generate_series(i*1000+1, least(i*1000+1000, $n)) g;
  COMMIT; END LOOP; END \$\$
SQL
}

# Autovacuum stays off the bench table: a worker that starts during a
# measurement would take CPU from the readers and add its own to the reaped
# children's.
NARROW_DDL="CREATE TABLE bench (id bigint PRIMARY KEY, qty int, label text, price numeric(12,2), at timestamptz, flag boolean) WITH (autovacuum_enabled = false)"
NARROW_COLS="id, qty, label, price, at, flag"
NARROW_VALS="g, g % 1000, 'label-' || g, g * 0.01, now(), g % 2 = 0"

# The wide table: id and 49 columns, built from (prefix, type, count, value
# expression with @K standing for the column's number within its type).
WIDE_SPEC=(
  "i|int|7|((g * @K) % 100000)::int"
  "b|bigint|5|g::bigint * 1000003 + @K"
  "n|numeric(14,2)|5|(g % 100000) * 0.01 + @K"
  "t|text|9|'text-@K-' || md5((g + @K)::text)"
  "ts|timestamptz|4|now() - ((g % 86400) + @K) * interval '1 second'"
  "f|boolean|4|(g + @K) % 2 = 0"
  "j|jsonb|3|jsonb_build_object('g', g, 'k', @K, 'tag', 'v' || (g % 7), 'list', jsonb_build_array(g, @K, true))"
  "u|uuid|3|gen_random_uuid()"
  "d|float8|5|g::float8 * @K / 7"
  "dt|date|4|date '2020-01-01' + ((g + @K) % 3650)::int"
)
WIDE_DDL="CREATE TABLE bench (id bigint PRIMARY KEY"
WIDE_COLS="id"
WIDE_VALS="g"
wide_ncols=1
for spec in "${WIDE_SPEC[@]}"; do
  IFS='|' read -r prefix type count expr <<<"$spec"
  for ((k = 1; k <= count; k++)); do
    WIDE_DDL+=", $prefix$k $type"
    WIDE_COLS+=", $prefix$k"
    WIDE_VALS+=", ${expr//@K/$k}"
    wide_ncols=$((wide_ncols + 1))
  done
done
WIDE_DDL+=") WITH (autovacuum_enabled = false)"
[ "$wide_ncols" -eq 50 ] || { echo "bench-cdc.sh: wide table has $wide_ncols columns, want 50" >&2; exit 1; }

# run_tablecast name changes slot bin rep: one tablecast run on slot through
# the WAL of the workload; prints its result line.
run_tablecast() {
  local name=$1 changes=$2 slot=$3 bin=$4 rep=$5 recv_s=$6 wal_ticks=$7
  # The stream's messages: the changes, and with markers one per transaction.
  local want=$changes
  if [ "${TABLECAST_TX_MARKERS:-false}" = true ]; then want=$((changes + txns)); fi
  rm -rf "$work/nats"
  local nats_url= load
  load=$(cut -d' ' -f1 /proc/loadavg)
  local replicas=1
  case "$NATS" in
  external)
    env ${NATS_GOGC:+GOGC=$NATS_GOGC} bin/nats-server -a 127.0.0.1 -p 14222 -js -sd "$work/nats" >/dev/null 2>&1 &
    nats_pids=$!
    nats_url=nats://127.0.0.1:14222
    sleep 0.5
    ;;
  cluster)
    start_cluster
    nats_url=nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224
    replicas=3
    ;;
  esac
  local pg0 t0 pprof=false
  [ -z "$PROFILE" ] || pprof=true
  pg0=$(reaped_ticks)
  t0=$(date +%s.%N)
  TABLECAST_DATABASE_URL="$BASEURL/$DB" TABLECAST_SLOT=$slot TABLECAST_PUBLICATION=bench \
  TABLECAST_NATS_URL="$nats_url" TABLECAST_NATS_LISTEN=127.0.0.1:14222 TABLECAST_DATA_DIR="$work/nats" TABLECAST_STREAM_REPLICAS=$replicas \
  TABLECAST_HTTP_ADDR=127.0.0.1:18080 TABLECAST_LOG_LEVEL=error TABLECAST_PPROF=$pprof \
    "$bin" cdc &
  reader_pid=$!
  local peak=0 hwm out msgs=0 first=0 span=0 bytes=0 tc_ticks=0 nats_ticks=0 prof=
  if [ -n "$PROFILE" ]; then
    # The middle of the run: after start-up, before the end. The length is
    # a guess from the walsender's time; tablecast is slower, not faster.
    prof="$PROFILE_DIR/$name-$(basename "$bin")-$rep.prof"
    local secs
    secs=$(printf '%.0f' "$(echo "$recv_s * 0.6 + 1" | bc -l)")
    (sleep 1; curl -s -o "$prof" "http://127.0.0.1:18080/debug/pprof/profile?seconds=$secs"
      curl -s -o "${prof%.prof}.heap" "http://127.0.0.1:18080/debug/pprof/heap") &
    prof_pid=$!
    if [ -n "${TRACE:-}" ]; then
      (sleep 2; curl -s -o "${prof%.prof}.trace" "http://127.0.0.1:18080/debug/pprof/trace?seconds=1") &
    fi
  fi
  while :; do
    sleep 0.2
    kill -0 "$reader_pid" 2>/dev/null || { echo "$name: tablecast exited early" >&2; exit 1; }
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$reader_pid/status" 2>/dev/null) || hwm=0
    [ "${hwm:-0}" -gt "$peak" ] && peak=$hwm
    out=$(bin/jsinfo -url nats://127.0.0.1:14222 -stream TABLECAST 2>/dev/null) || continue
    read -r msgs first span bytes <<<"$out"
    [ "$msgs" -ge "$want" ] && break
  done
  # With the row state on, the run goes on until the state has applied the
  # last event, so that the CPU figure holds all its cost; rows=+Ns says
  # how long after the last event stored that was.
  local rows_note= applied=0 marked=0 last_applied=0 still=0
  if read -r applied marked < <(bin/jsinfo -url nats://127.0.0.1:14222 -rows-db "$DB" 2>/dev/null); then
    while [ "$applied" -lt "$msgs" ]; do
      sleep 0.2
      read -r applied marked < <(bin/jsinfo -url nats://127.0.0.1:14222 -rows-db "$DB" 2>/dev/null) || true
      if [ "$applied" -gt "$last_applied" ]; then last_applied=$applied still=0; else still=$((still + 1)); fi
      [ "$still" -lt 50 ] || break
    done
    if [ "$applied" -ge "$msgs" ]; then
      rows_note=$(printf ' | rows +%.2fs' "$(echo "$marked - $first - $span" | bc -l)")
    else
      rows_note=" | rows stalled at $applied of $msgs"
    fi
  fi
  if [ -n "$prof_pid" ]; then wait "$prof_pid" 2>/dev/null || true; prof_pid=; fi
  tc_ticks=$(proc_ticks "$reader_pid")
  stop_pid "$reader_pid"; reader_pid=
  local p
  local nats_hwm=0
  for p in $nats_pids; do
    nats_ticks=$((nats_ticks + $(proc_ticks "$p")))
    nats_hwm=$((nats_hwm + $(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  stop_nats
  wait_walsenders_gone
  local pg_ticks=$(($(reaped_ticks) - pg0))
  if [ "$msgs" -ne "$want" ]; then
    echo "$name: JetStream holds $msgs messages, expected $want" >&2
  fi
  local tc_s cpu
  tc_s=$(echo "$first + $span - $t0" | bc -l)
  cpu=$(printf 'wal %.2f tc %.2f' "$(per_million "$wal_ticks" "$changes")" "$(per_million "$tc_ticks" "$changes")")
  if [ "$NATS" != embedded ]; then cpu+=$(printf ' nats %.2f' "$(per_million "$nats_ticks" "$changes")"); fi
  cpu+=$(printf ' pg %.2f' "$(per_million "$pg_ticks" "$changes")")
  printf '%-6s %9d rows | %-14s | walsender %6.2fs %7.0f/s | tablecast %6.2fs %7.0f/s | ratio %.2f | CPU s/M %s | peak RSS %d MiB | load %s' \
    "$name" "$changes" "$(basename "$(dirname "$bin")")/$(basename "$bin")" "$recv_s" "$(echo "$changes / $recv_s" | bc -l)" "$tc_s" "$(echo "$changes / $tc_s" | bc -l)" \
    "$(echo "($changes / $tc_s) / ($changes / $recv_s)" | bc -l)" "$cpu" $((peak / 1024)) "$load"
  printf ' | stream %.0f B/change' "$(echo "$bytes / $changes" | bc -l)"
  if [ "$NATS" != embedded ]; then printf ' | nats peak RSS %d MiB' $((nats_hwm / 1024)); fi
  printf '%s' "$rows_note"
  if [ -n "$prof" ] && [ -s "$prof" ]; then printf ' | %s' "$(profile_split "$prof")"; fi
  printf '\n'
}

# run_workload name changes ddl setup-sql measured-sql rep: creates the
# table, runs setup-sql (may be empty; not measured), creates the slots, runs
# measured-sql, which must produce exactly `changes` row changes, and times
# every reader through them.
run_workload() {
  local name=$1 changes=$2 ddl=$3 setup=$4 sql=$5 rep=$6 i
  drop_slots
  PGOPTIONS="-c client_min_messages=warning" "${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "CREATE DATABASE $DB"
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "$ddl"
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "CREATE PUBLICATION bench FOR TABLE bench WITH (publish_via_partition_root = true)"
  if [ -n "$setup" ]; then
    "${PSQL[@]}" -d "$BASEURL/$DB" -c "$setup"
  fi
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')" >/dev/null
  for ((i = 0; i < ${#bins[@]}; i++)); do
    "${PSQL[@]}" -d "$BASEURL/$DB" -c "SELECT pg_create_logical_replication_slot('bench_tc$i', 'pgoutput')" >/dev/null
  done
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "$sql"

  # The walsender alone (walfloor: reads and counts, does nothing else)
  local t0 t1 recv_s w0 wal_ticks
  wait_walsenders_gone
  w0=$(reaped_ticks)
  t0=$(date +%s.%N)
  bin/walfloor -db "$BASEURL/$DB" -slot bench_recv -publication bench -changes "$changes" >/dev/null &
  recv_pid=$!
  wait "$recv_pid"
  recv_pid=
  t1=$(date +%s.%N)
  recv_s=$(echo "$t1 - $t0" | bc -l)
  wait_walsenders_gone
  wal_ticks=$(($(reaped_ticks) - w0))

  # tablecast, each binary in turn, starting one further along each repetition
  local n=${#bins[@]} k
  for ((k = 0; k < n; k++)); do
    i=$(((k + rep - 1) % n))
    run_tablecast "$name" "$changes" "bench_tc$i" "${bins[$i]}" "$rep" "$recv_s" "$wal_ticks"
  done
}

if [ -n "$LOAD_TPS" ]; then
  PGOPTIONS="-c client_min_messages=warning" "${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS tc_load WITH (FORCE)"
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "CREATE DATABASE tc_load"
  "$PGBIN/pgbench" -i -q -s 10 "$BASEURL/tc_load" >/dev/null 2>&1
  "$PGBIN/pgbench" -n -c 4 -j 2 -R "$LOAD_TPS" -T 86400 "$BASEURL/tc_load" >/dev/null 2>&1 &
  load_pid=$!
  echo "pgbench load: $LOAD_TPS transactions a second (TPC-B-like, 4 clients) throughout"
fi
echo "NATS $NATS; workload | binary | walsender (walfloor: launch → last change received) | tablecast (launch → last event stored in JetStream) | ratio of rates | CPU-seconds per million changes | peak RSS | load"
for ((rep = 1; rep <= REPEAT; rep++)); do
  for w in "${workloads[@]}"; do
    # txns: the transactions of the measured changes (one marker each).
    case "$w" in
    many)
      txns=$(((ROWS + 999) / 1000))
      run_workload many "$ROWS" "$NARROW_DDL" "" "$(batched_insert "$ROWS" "$NARROW_COLS" "$NARROW_VALS")" "$rep" ;;
    one)
      txns=1
      run_workload one "$ROWS" "$NARROW_DDL" "" \
        "INSERT INTO bench ($NARROW_COLS) SELECT $NARROW_VALS FROM generate_series(1, $ROWS) g" "$rep" ;;
    update)
      txns=$(((ROWS + 999) / 1000))
      run_workload update "$ROWS" "$NARROW_DDL" \
        "INSERT INTO bench ($NARROW_COLS) SELECT $NARROW_VALS FROM generate_series(1, $ROWS) g" \
        "DO \$\$ BEGIN FOR i IN 0..$(((ROWS + 999) / 1000 - 1)) LOOP
  UPDATE bench SET qty = qty + 1, label = label || 'x' WHERE id BETWEEN i*1000+1 AND i*1000+1000;
  COMMIT; END LOOP; END \$\$" "$rep" ;;
    wide)
      txns=$(((ROWS / 4 + 999) / 1000))
      run_workload wide "$((ROWS / 4))" "$WIDE_DDL" "" "$(batched_insert "$((ROWS / 4))" "$WIDE_COLS" "$WIDE_VALS")" "$rep" ;;
    single)
      txns=$ROWS
      run_workload single "$ROWS" "$NARROW_DDL" "" \
        "DO \$\$ BEGIN FOR i IN 1..$ROWS LOOP
  INSERT INTO bench ($NARROW_COLS) SELECT $NARROW_VALS FROM generate_series(i, i) g;
  COMMIT; END LOOP; END \$\$" "$rep" ;;
    esac
  done
done
