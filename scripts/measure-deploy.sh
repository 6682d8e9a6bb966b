#!/usr/bin/env bash
# measure-deploy.sh — what the reader and a gateway use under a modest load,
# each in its own process as the deployment files run them, for sizing
# their requests and limits (deploy/kubernetes, README "Deploying").
#
# A stock nats-server (JetStream, its own process), `tablecast cdc` and
# `tablecast gateway` on it, the development PostgreSQL (scripts/pg.sh);
# IDLE idle WebSocket clients on the gateway (scripts/wsload -mode idle,
# subscribed to a table nothing changes), then scripts/wsload -mode e2e inserting RATE rows a second
# (one transaction each) for DURATION seconds with CLIENTS clients receiving every
# change. For each of the reader and the gateway it prints the CPU used
# while the load ran (percent of one core), resident memory at the end
# (VmRSS) and its peak (VmHWM), and the end-to-end latency wsload saw.
#
# Usage: [RATE=1000] [DURATION=30] [CLIENTS=100] [IDLE=2000] scripts/measure-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
DURATION=${DURATION:-30}
CLIENTS=${CLIENTS:-100}
IDLE=${IDLE:-2000}
NATS_PORT=${NATS_PORT:-14622}
CDC_PORT=${CDC_PORT:-18480}
GW_PORT=${GW_PORT:-18481}

scripts/pg.sh start >/dev/null
PGURL=$(scripts/pg.sh url)
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$PGURL")
go build -o bin/tablecast ./cmd/tablecast
go build -o bin/wsload ./scripts/wsload
go build -o bin/nats-server github.com/nats-io/nats-server/v2

work=$(mktemp -d)
pids=()
slot=measure_deploy
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for try in 1 2 3 4 5 6 7 8 9 10; do
    "${PSQL[@]}" -c "SELECT pg_drop_replication_slot('$slot') FROM pg_replication_slots WHERE slot_name = '$slot' AND NOT active" >/dev/null 2>&1 || true
    "${PSQL[@]}" -tAc "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$slot'" | grep -q 1 || break
    sleep 0.5
  done
  "${PSQL[@]}" -c "DROP PUBLICATION IF EXISTS $slot" -c "DROP TABLE IF EXISTS bench_deploy, bench_deploy_idle" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_ready() { # port
  for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "measure-deploy.sh: nothing ready on port $1" >&2
  exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mem_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

"${PSQL[@]}" -c "DROP TABLE IF EXISTS bench_deploy, bench_deploy_idle" -c "CREATE TABLE bench_deploy (id bigserial PRIMARY KEY, sent_ns bigint NOT NULL)" \
  -c "CREATE TABLE bench_deploy_idle (id bigserial PRIMARY KEY)" >/dev/null 2>&1
bin/nats-server -js -sd "$work/nats" -a 127.0.0.1 -p "$NATS_PORT" >"$work/nats.log" 2>&1 &
pids+=($!)
common=(TABLECAST_NATS_URL="nats://127.0.0.1:$NATS_PORT" TABLECAST_STREAM_MAX_BYTES=1073741824 TABLECAST_LOG_LEVEL=warn)
env "${common[@]}" TABLECAST_DATABASE_URL="$PGURL" TABLECAST_SLOT=$slot TABLECAST_PUBLICATION=$slot \
  TABLECAST_TABLES=public.bench_deploy,public.bench_deploy_idle TABLECAST_HTTP_ADDR="127.0.0.1:$CDC_PORT" bin/tablecast cdc 2>"$work/cdc.log" &
cdc_pid=$!
pids+=("$cdc_pid")
wait_ready "$CDC_PORT"
env "${common[@]}" TABLECAST_HTTP_ADDR="127.0.0.1:$GW_PORT" bin/tablecast gateway 2>"$work/gw.log" &
gw_pid=$!
pids+=("$gw_pid")
wait_ready "$GW_PORT"

# The tables' shapes are registered with their first change. The idle
# clients follow a table of their own that nothing changes.
"${PSQL[@]}" -c "INSERT INTO bench_deploy (sent_ns) VALUES (0)" -c "INSERT INTO bench_deploy_idle DEFAULT VALUES" >/dev/null
bin/wsload -mode idle -n "$IDLE" -url "ws://127.0.0.1:$GW_PORT/ws" -table public.bench_deploy_idle -local 127.0.0.2-127.0.0.9 >"$work/idle.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do grep -q '^ready' "$work/idle.out" && break; sleep 0.1; done
grep -q '^ready' "$work/idle.out" || { echo "measure-deploy.sh: idle clients not connected:" >&2; cat "$work/idle.out" >&2; exit 1; }

c0=$(cpu_ticks "$cdc_pid"); g0=$(cpu_ticks "$gw_pid"); t0=$(date +%s.%N)
bin/wsload -mode e2e -pg "$PGURL" -table public.bench_deploy -n "$CLIENTS" -rate "$RATE" -duration "${DURATION}s" \
  -url "ws://127.0.0.1:$GW_PORT/ws" -nats "nats://127.0.0.1:$NATS_PORT" -pid "$gw_pid" >"$work/e2e.out" 2>&1 && e2e=0 || e2e=$?
c1=$(cpu_ticks "$cdc_pid"); g1=$(cpu_ticks "$gw_pid"); t1=$(date +%s.%N)

pct() { awk -v a="$1" -v b="$2" -v t0="$t0" -v t1="$t1" 'BEGIN {printf "%.0f", (b - a) / 100 / (t1 - t0) * 100}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }
echo "load: $RATE rows/s (one transaction each) for ${DURATION}s, $CLIENTS clients receiving every change, $IDLE idle subscribed clients"
echo "| process | CPU (% of one core) | RSS at the end | peak RSS |"
echo "| --- | --- | --- | --- |"
echo "| tablecast cdc | $(pct "$c0" "$c1") | $(mib "$(mem_kib "$cdc_pid" VmRSS)") MiB | $(mib "$(mem_kib "$cdc_pid" VmHWM)") MiB |"
echo "| tablecast gateway | $(pct "$g0" "$g1") | $(mib "$(mem_kib "$gw_pid" VmRSS)") MiB | $(mib "$(mem_kib "$gw_pid" VmHWM)") MiB |"
echo
echo "wsload e2e:"
cat "$work/e2e.out"
exit "$e2e"
