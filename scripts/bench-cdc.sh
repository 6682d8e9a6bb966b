#!/usr/bin/env bash
# bench-cdc.sh — tablecast's reader beside pg_recvlogical on the same workload.
#
# For each workload, two slots are created before the measured changes are
# written, so both readers find the same WAL waiting for them:
#   - pg_recvlogical (pgoutput, proto 1) reads its slot to the workload's end
#     LSN into /dev/null: PostgreSQL's walsender alone sets its pace;
#   - tablecast cdc reads the other slot into JetStream (file storage):
#     decoded, encoded, published and acknowledged.
# Both clocks run from the reader's launch to its last change: pg_recvlogical's
# exit at the end LSN, and the time JetStream stored tablecast's last event
# (the stream's own timestamp). With NATS=embedded (default) JetStream runs
# inside tablecast, sharing its core; with NATS=external it is a separate
# nats-server process, and the peak memory reported is the reader's alone.
#
# Workloads (ROWS defaults to 1,000,000; the "rows" column is the number of
# changes measured):
#   many    ROWS inserts in 1,000-row transactions;
#   one     ROWS inserts in a single transaction;
#   update  ROWS rows loaded before the slots exist, then each updated once,
#           in 1,000-row transactions: ROWS updates are measured;
#   wide    ROWS/4 inserts into a 50-column table of mixed types (int, bigint,
#           numeric, text, timestamptz, boolean, jsonb, uuid, float8, date),
#           in 1,000-row transactions.
# Each line also gives the reader's peak resident memory (VmHWM, embedded NATS
# included).
#
# Usage: [NATS=embedded|external] [WORKLOADS="many one update wide"] scripts/bench-cdc.sh [rows]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
NATS=${NATS:-embedded}
WORKLOADS=${WORKLOADS:-many one update wide}
case "$ROWS" in '' | *[!0-9]* | 0*) echo "bench-cdc.sh: rows must be a positive integer, not '$ROWS'" >&2; exit 2 ;; esac
case "$NATS" in embedded | external) ;; *) echo "bench-cdc.sh: NATS must be embedded or external, not '$NATS'" >&2; exit 2 ;; esac
read -r -a workloads <<<"$WORKLOADS"
[ "${#workloads[@]}" -gt 0 ] || { echo "bench-cdc.sh: WORKLOADS is empty" >&2; exit 2; }
for w in "${workloads[@]}"; do
  case "$w" in many | one | update | wide) ;; *) echo "bench-cdc.sh: unknown workload '$w' (want many, one, update, wide)" >&2; exit 2 ;; esac
done
[ "$ROWS" -ge 4 ] || { echo "bench-cdc.sh: rows must be at least 4 (wide writes rows/4)" >&2; exit 2; }

export TABLECAST_PG_PORT=${TABLECAST_PG_PORT:-54329}
scripts/pg.sh start >/dev/null
PGURL=$(scripts/pg.sh url)
BASEURL=${PGURL%/*}
DB=tc_bench
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
RECV=$PGBIN/pg_recvlogical
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1)
go build -o bin/tablecast ./cmd/tablecast
go build -o bin/jsinfo ./scripts/jsinfo
if [ "$NATS" = external ]; then go build -o bin/nats-server github.com/nats-io/nats-server/v2; fi

work=$(mktemp -d)
recv_pid=
reader_pid=
nats_pid=
stop_pid() { # pid: end a process this script started, and reap it
  if [ -n "$1" ]; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
# drop_slots drops both bench slots, ending a walsender that still holds one
# (its reader has exited, but the walsender may not have noticed yet).
drop_slots() {
  local q="FROM pg_replication_slots WHERE slot_name IN ('bench_recv','bench_tc')" try
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
  stop_pid "$nats_pid"
  rm -rf "$work"
  # Leave no slot behind to hold WAL back, nor the bench database.
  drop_slots 2>/dev/null || true
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

NARROW_DDL="CREATE TABLE bench (id bigint PRIMARY KEY, qty int, label text, price numeric(12,2), at timestamptz, flag boolean)"
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
WIDE_DDL+=")"
[ "$wide_ncols" -eq 50 ] || { echo "bench-cdc.sh: wide table has $wide_ncols columns, want 50" >&2; exit 1; }

# run_workload name changes ddl setup-sql measured-sql: creates the table,
# runs setup-sql (may be empty; not measured), creates both slots, runs
# measured-sql, which must produce exactly `changes` row changes, and times
# both readers through them.
run_workload() {
  local name=$1 changes=$2 ddl=$3 setup=$4 sql=$5
  drop_slots
  PGOPTIONS="-c client_min_messages=warning" "${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "CREATE DATABASE $DB"
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "$ddl"
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "CREATE PUBLICATION bench FOR TABLE bench WITH (publish_via_partition_root = true)"
  if [ -n "$setup" ]; then
    "${PSQL[@]}" -d "$BASEURL/$DB" -c "$setup"
  fi
  "${PSQL[@]}" -d "$BASEURL/$DB" >/dev/null <<SQL
SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput');
SELECT pg_create_logical_replication_slot('bench_tc', 'pgoutput');
SQL
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "$sql"
  local endpos
  endpos=$("${PSQL[@]}" -d "$BASEURL/$DB" -At -c "SELECT pg_current_wal_lsn()")

  # pg_recvlogical
  local t0 t1 recv_s
  t0=$(date +%s.%N)
  "$RECV" -d "$BASEURL/$DB" --slot bench_recv --start --endpos "$endpos" -o proto_version=1 -o publication_names=bench -f /dev/null --no-loop &
  recv_pid=$!
  wait "$recv_pid"
  recv_pid=
  t1=$(date +%s.%N)
  recv_s=$(echo "$t1 - $t0" | bc -l)

  # tablecast
  rm -rf "$work/nats"
  local nats_url=
  if [ "$NATS" = external ]; then
    bin/nats-server -a 127.0.0.1 -p 14222 -js -sd "$work/nats" >/dev/null 2>&1 &
    nats_pid=$!
    nats_url=nats://127.0.0.1:14222
    sleep 0.5
  fi
  t0=$(date +%s.%N)
  TABLECAST_DATABASE_URL="$BASEURL/$DB" TABLECAST_SLOT=bench_tc TABLECAST_PUBLICATION=bench \
  TABLECAST_NATS_URL="$nats_url" TABLECAST_NATS_LISTEN=127.0.0.1:14222 TABLECAST_DATA_DIR="$work/nats" \
  TABLECAST_HTTP_ADDR=127.0.0.1:18080 TABLECAST_LOG_LEVEL=warn \
    bin/tablecast cdc &
  reader_pid=$!
  local peak=0 hwm out msgs=0 first=0 span=0
  while :; do
    sleep 0.2
    kill -0 "$reader_pid" 2>/dev/null || { echo "$name: tablecast exited early" >&2; exit 1; }
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$reader_pid/status" 2>/dev/null) || hwm=0
    [ "${hwm:-0}" -gt "$peak" ] && peak=$hwm
    out=$(bin/jsinfo -url nats://127.0.0.1:14222 -stream TABLECAST 2>/dev/null) || continue
    read -r msgs first span <<<"$out"
    [ "$msgs" -ge "$changes" ] && break
  done
  stop_pid "$reader_pid"; reader_pid=
  stop_pid "$nats_pid"; nats_pid=
  if [ "$msgs" -ne "$changes" ]; then
    echo "$name: JetStream holds $msgs messages, expected $changes" >&2
  fi
  local tc_s
  tc_s=$(echo "$first + $span - $t0" | bc -l)
  printf '%-6s %9d rows | pg_recvlogical %6.2fs %9.0f/s | tablecast %6.2fs %9.0f/s | ratio %.2f | peak RSS %d MiB\n' \
    "$name" "$changes" "$recv_s" "$(echo "$changes / $recv_s" | bc -l)" "$tc_s" "$(echo "$changes / $tc_s" | bc -l)" \
    "$(echo "($changes / $tc_s) / ($changes / $recv_s)" | bc -l)" $((peak / 1024))
}

echo "NATS $NATS; workload | pg_recvlogical (launch → end LSN) | tablecast (launch → last event stored in JetStream) | ratio of rates | peak RSS"
for w in "${workloads[@]}"; do
  case "$w" in
  many)
    run_workload many "$ROWS" "$NARROW_DDL" "" "$(batched_insert "$ROWS" "$NARROW_COLS" "$NARROW_VALS")" ;;
  one)
    run_workload one "$ROWS" "$NARROW_DDL" "" \
      "INSERT INTO bench ($NARROW_COLS) SELECT $NARROW_VALS FROM generate_series(1, $ROWS) g" ;;
  update)
    run_workload update "$ROWS" "$NARROW_DDL" \
      "INSERT INTO bench ($NARROW_COLS) SELECT $NARROW_VALS FROM generate_series(1, $ROWS) g" \
      "DO \$\$ BEGIN FOR i IN 0..$(((ROWS + 999) / 1000 - 1)) LOOP
  UPDATE bench SET qty = qty + 1, label = label || 'x' WHERE id BETWEEN i*1000+1 AND i*1000+1000;
  COMMIT; END LOOP; END \$\$" ;;
  wide)
    run_workload wide "$((ROWS / 4))" "$WIDE_DDL" "" "$(batched_insert "$((ROWS / 4))" "$WIDE_COLS" "$WIDE_VALS")" ;;
  esac
done
