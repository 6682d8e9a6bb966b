#!/usr/bin/env bash
# bench-cdc.sh — tablecast's reader beside pg_recvlogical on the same workload.
#
# For each workload, two slots are created before the rows are written, so
# both readers find the same WAL waiting for them:
#   - pg_recvlogical (pgoutput, proto 1) reads its slot to the workload's end
#     LSN into /dev/null: PostgreSQL's walsender alone sets its pace;
#   - tablecast cdc (embedded NATS, file storage) reads the other slot, and
#     the clock runs from the first event JetStream stored to the last
#     (JetStream's own timestamps), i.e. decoded, encoded, published and
#     acknowledged.
# Workloads: 1,000,000 rows in 1,000-row transactions ("many"), and
# 1,000,000 rows in a single transaction ("one"), for which the reader's
# peak resident memory (VmHWM, embedded NATS included) is reported too.
#
# Usage: scripts/bench-cdc.sh [rows]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
export TABLECAST_PG_PORT=${TABLECAST_PG_PORT:-54329}
scripts/pg.sh start >/dev/null
PGURL=$(scripts/pg.sh url)
BASEURL=${PGURL%/*}
DB=tc_bench
PSQL=(scripts/pg.sh psql -X -q -v ON_ERROR_STOP=1)
RECV=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/pg_recvlogical
go build -o bin/tablecast ./cmd/tablecast
go build -o bin/jsinfo ./scripts/jsinfo

work=$(mktemp -d)
reader_pid=
cleanup() {
  [ -n "$reader_pid" ] && kill "$reader_pid" 2>/dev/null && wait "$reader_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

run_workload() { # name, SQL that writes ROWS rows
  local name=$1 sql=$2
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
  "${PSQL[@]}" -d postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ('bench_recv','bench_tc')" >/dev/null
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB"
  "${PSQL[@]}" -d $DB <<SQL
CREATE TABLE bench (id bigint PRIMARY KEY, qty int, label text, price numeric(12,2), at timestamptz, flag boolean);
CREATE PUBLICATION bench FOR TABLE bench WITH (publish_via_partition_root = true);
SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput');
SELECT pg_create_logical_replication_slot('bench_tc', 'pgoutput');
SQL
  "${PSQL[@]}" -d $DB -c "$sql"
  local endpos
  endpos=$("${PSQL[@]}" -d $DB -At -c "SELECT pg_current_wal_lsn()")

  # pg_recvlogical
  local t0 t1 recv_s
  t0=$(date +%s.%N)
  "$RECV" -d "$BASEURL/$DB" --slot bench_recv --start --endpos "$endpos" -o proto_version=1 -o publication_names=bench -f /dev/null --no-loop
  t1=$(date +%s.%N)
  recv_s=$(echo "$t1 - $t0" | bc -l)

  # tablecast
  rm -rf "$work/nats"
  TABLECAST_DATABASE_URL="$BASEURL/$DB" TABLECAST_SLOT=bench_tc TABLECAST_PUBLICATION=bench \
  TABLECAST_NATS_LISTEN=127.0.0.1:14222 TABLECAST_DATA_DIR="$work/nats" TABLECAST_HTTP_ADDR=127.0.0.1:18080 \
  TABLECAST_LOG_LEVEL=warn TABLECAST_STREAM_MAX_BYTES=-1 \
    bin/tablecast cdc &
  reader_pid=$!
  local peak=0 out
  while :; do
    sleep 0.2
    kill -0 "$reader_pid" 2>/dev/null || { echo "tablecast exited early" >&2; exit 1; }
    hwm=$(awk '/VmHWM/ {print $2}' /proc/$reader_pid/status)
    [ "${hwm:-0}" -gt "$peak" ] && peak=$hwm
    out=$(bin/jsinfo -url nats://127.0.0.1:14222 -stream TABLECAST 2>/dev/null) || continue
    set -- $out
    [ "$1" -ge "$ROWS" ] && break
  done
  kill "$reader_pid"; wait "$reader_pid" 2>/dev/null || true; reader_pid=
  local tc_s=$3
  printf '%-6s %9d rows | pg_recvlogical %6.2fs %9.0f/s | tablecast %6.2fs %9.0f/s | ratio %.2f | tablecast peak RSS %d MiB\n' \
    "$name" "$ROWS" "$recv_s" "$(echo "$ROWS / $recv_s" | bc -l)" "$tc_s" "$(echo "$ROWS / $tc_s" | bc -l)" \
    "$(echo "($ROWS / $tc_s) / ($ROWS / $recv_s)" | bc -l)" $((peak / 1024))
}

echo "workload | pg_recvlogical | tablecast (first → last event stored in JetStream) | ratio of rates | reader peak memory"
run_workload many "DO \$\$ BEGIN FOR i IN 0..$((ROWS / 1000 - 1)) LOOP
  INSERT INTO bench SELECT g, g % 1000, 'label-' || g, g * 0.01, now(), g % 2 = 0 FROM generate_series(i*1000+1, i*1000+1000) g;
  COMMIT; END LOOP; END \$\$"
run_workload one "INSERT INTO bench SELECT g, g % 1000, 'label-' || g, g * 0.01, now(), g % 2 = 0 FROM generate_series(1, $ROWS) g"
"${PSQL[@]}" -d postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ('bench_recv','bench_tc')" >/dev/null
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
