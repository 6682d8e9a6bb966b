#!/usr/bin/env bash
# bench-cdc.sh — tablecast's reader beside pg_recvlogical on the same workload.
#
# For each workload, two slots are created before the rows are written, so
# both readers find the same WAL waiting for them:
#   - pg_recvlogical (pgoutput, proto 1) reads its slot to the workload's end
#     LSN into /dev/null: PostgreSQL's walsender alone sets its pace;
#   - tablecast cdc reads the other slot into JetStream (file storage):
#     decoded, encoded, published and acknowledged.
# Both clocks run from the reader's launch to its last change: pg_recvlogical's
# exit at the end LSN, and the time JetStream stored tablecast's last event
# (the stream's own timestamp). With NATS=embedded (default) JetStream runs
# inside tablecast, sharing its core; with NATS=external it is a separate
# nats-server process, and the peak memory reported is the reader's alone.
# Workloads: 1,000,000 rows in 1,000-row transactions ("many"), and
# 1,000,000 rows in a single transaction ("one"), for which the reader's
# peak resident memory (VmHWM, embedded NATS included) is reported too.
#
# Usage: [NATS=embedded|external] scripts/bench-cdc.sh [rows]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
NATS=${NATS:-embedded}
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
[ "$NATS" = external ] && go build -o bin/nats-server github.com/nats-io/nats-server/v2

work=$(mktemp -d)
reader_pid=
nats_pid=
cleanup() {
  [ -n "$reader_pid" ] && kill "$reader_pid" 2>/dev/null && wait "$reader_pid" 2>/dev/null
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

run_workload() { # name, SQL that writes ROWS rows
  local name=$1 sql=$2
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ('bench_recv','bench_tc')" >/dev/null
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "CREATE DATABASE $DB"
  "${PSQL[@]}" -d "$BASEURL/$DB" >/dev/null <<SQL
CREATE TABLE bench (id bigint PRIMARY KEY, qty int, label text, price numeric(12,2), at timestamptz, flag boolean);
CREATE PUBLICATION bench FOR TABLE bench WITH (publish_via_partition_root = true);
SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput');
SELECT pg_create_logical_replication_slot('bench_tc', 'pgoutput');
SQL
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "$sql"
  local endpos
  endpos=$("${PSQL[@]}" -d "$BASEURL/$DB" -At -c "SELECT pg_current_wal_lsn()")

  # pg_recvlogical
  local t0 t1 recv_s
  t0=$(date +%s.%N)
  "$RECV" -d "$BASEURL/$DB" --slot bench_recv --start --endpos "$endpos" -o proto_version=1 -o publication_names=bench -f /dev/null --no-loop
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
  if [ -n "$nats_pid" ]; then kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true; nats_pid=; fi
  local tc_s
  tc_s=$(echo "$2 + $3 - $t0" | bc -l)
  printf '%-6s %9d rows | pg_recvlogical %6.2fs %9.0f/s | tablecast %6.2fs %9.0f/s | ratio %.2f | peak RSS %d MiB\n' \
    "$name" "$ROWS" "$recv_s" "$(echo "$ROWS / $recv_s" | bc -l)" "$tc_s" "$(echo "$ROWS / $tc_s" | bc -l)" \
    "$(echo "($ROWS / $tc_s) / ($ROWS / $recv_s)" | bc -l)" $((peak / 1024))
}

echo "NATS $NATS; workload | pg_recvlogical (launch → end LSN) | tablecast (launch → last event stored in JetStream) | ratio of rates | peak RSS"
run_workload many "DO \$\$ BEGIN FOR i IN 0..$((ROWS / 1000 - 1)) LOOP
  INSERT INTO bench SELECT g, g % 1000, 'label-' || g, g * 0.01, now(), g % 2 = 0 FROM generate_series(i*1000+1, i*1000+1000) g;
  COMMIT; END LOOP; END \$\$"
run_workload one "INSERT INTO bench SELECT g, g % 1000, 'label-' || g, g * 0.01, now(), g % 2 = 0 FROM generate_series(1, $ROWS) g"
"${PSQL[@]}" -d "$BASEURL/postgres" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ('bench_recv','bench_tc')" >/dev/null
"${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
