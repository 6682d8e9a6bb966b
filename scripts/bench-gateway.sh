#!/usr/bin/env bash
# bench-gateway.sh — the WebSocket gateway's numbers, as one markdown table.
#
# Measures, with clients in another process (scripts/wsload: a few epoll
# loops holding every connection, cheap enough not to be the bottleneck; its
# own CPU is reported beside each number):
#   filter      `where` evaluation, ns/op and allocs/op (Go benchmarks
#               Filter|Match in ./internal/query);
#   memory      the gateway's growth per idle subscribed connection at each of
#               CONNS: resident memory (VmRSS) and Go heap + stacks
#               (go_memstats_heap_inuse_bytes + go_memstats_stack_inuse_bytes
#               from /metrics), each after a forced GC, before and after the
#               clients connect, divided by their number. Kernel socket
#               buffers are not in either;
#   fan-out     one event published into JetStream → the last of
#               FANOUT_CLIENTS subscribers has its frame, FANOUT_EVENTS times
#               (after 3 unmeasured), p50/p99/max;
#   throughput  frames delivered per second to each of THROUGHPUT_CLIENTS
#               subscribers of one busy table, for THROUGHPUT_SECONDS: events
#               are published while fewer than 200,000 frames' worth are
#               undelivered; cross-checked with the gateway's
#               tablecast_gateway_frames_sent_total. wsload reads each
#               connection at most every 10 ms (-coalesce), so that a read
#               takes several frames: reading every frame as it comes costs
#               it 4-6 µs a frame with 10,000 connections, a third of this
#               machine;
#   e2e         PostgreSQL commit → WebSocket client, p50/p99, at each of RATES
#               changes/s for E2E_SECONDS (after 1 s unmeasured), with
#               `tablecast run` (reader, gateway, embedded NATS) against the
#               development PostgreSQL (scripts/pg.sh); every row is its own
#               transaction and carries its insert time, and E2E_CLIENTS
#               clients receive every change. "commit" is the event's
#               commit_time (PostgreSQL's clock, the same machine's); commit
#               → NATS (a plain NATS subscriber) splits it into the reader's
#               part and the gateway's. The inserting sessions run with
#               synchronous_commit=on: with pg.sh's off, WAL reaches the
#               walsender when the WAL writer flushes it, up to 200 ms later.
# Every line also gives the CPU used by the gateway (tablecast) and wsload,
# and how busy the whole machine was: other work on it moves the numbers.
# The gateway runs alone (`tablecast gateway`, embedded NATS, a fresh
# JetStream directory) for memory, fan-out and throughput, restarted for each
# measurement. Client sockets are spread over the loopback source addresses
# LOCAL, for ports. Each process may hold 20,000 files here: 19,000
# connections is about the most one gateway can take.
#
# Usage: [CONNS="5000 19000"] [FANOUT_CLIENTS=10000] [FANOUT_EVENTS=20]
#        [THROUGHPUT_CLIENTS="1000 10000"] [THROUGHPUT_SECONDS=10]
#        [RATES="1000 10000"] [E2E_SECONDS=10] [E2E_CLIENTS=2]
#        [SKIP_FILTER=1] [SKIP_MEMORY=1] [SKIP_FANOUT=1] [SKIP_THROUGHPUT=1] [SKIP_E2E=1]
#        scripts/bench-gateway.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-5000 19000}
FANOUT_CLIENTS=${FANOUT_CLIENTS:-10000}
FANOUT_EVENTS=${FANOUT_EVENTS:-20}
THROUGHPUT_CLIENTS=${THROUGHPUT_CLIENTS:-1000 10000}
THROUGHPUT_SECONDS=${THROUGHPUT_SECONDS:-10}
RATES=${RATES:-1000 10000}
E2E_SECONDS=${E2E_SECONDS:-10}
E2E_CLIENTS=${E2E_CLIENTS:-2}
SKIP_FILTER=${SKIP_FILTER:-0}
SKIP_MEMORY=${SKIP_MEMORY:-0}
SKIP_FANOUT=${SKIP_FANOUT:-0}
SKIP_THROUGHPUT=${SKIP_THROUGHPUT:-0}
SKIP_E2E=${SKIP_E2E:-0}
HTTP_PORT=${HTTP_PORT:-18380}
NATS_PORT=${NATS_PORT:-14522}
LOCAL=${LOCAL:-127.0.0.2-127.0.0.9}

die() { echo "bench-gateway.sh: $*" >&2; exit 2; }
posint() { case "$2" in '' | *[!0-9]* | 0*) die "$1 must be a positive integer, not '$2'" ;; esac; }
read -r -a conns_list <<<"$CONNS"
read -r -a throughput_list <<<"$THROUGHPUT_CLIENTS"
read -r -a rates_list <<<"$RATES"
for v in "${conns_list[@]}"; do posint CONNS "$v"; done
for v in "${throughput_list[@]}"; do posint THROUGHPUT_CLIENTS "$v"; done
for v in "${rates_list[@]}"; do posint RATES "$v"; done
posint FANOUT_CLIENTS "$FANOUT_CLIENTS"
posint FANOUT_EVENTS "$FANOUT_EVENTS"
posint THROUGHPUT_SECONDS "$THROUGHPUT_SECONDS"
posint E2E_SECONDS "$E2E_SECONDS"
posint E2E_CLIENTS "$E2E_CLIENTS"
posint HTTP_PORT "$HTTP_PORT"
posint NATS_PORT "$NATS_PORT"

# One fd per connection on each side, plus a few hundred for the rest.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
maxfd=$(ulimit -n)
for v in "${conns_list[@]}" "${throughput_list[@]}" "$FANOUT_CLIENTS"; do
  [ "$v" -le $((maxfd - 500)) ] || die "$v connections need more than this process's $maxfd open files (ulimit -Hn)"
done

go build -o bin/tablecast ./cmd/tablecast
go build -o .tmp/wsload ./scripts/wsload
WSLOAD=.tmp/wsload
BASE=http://127.0.0.1:$HTTP_PORT
WS=ws://127.0.0.1:$HTTP_PORT/ws
NATS=nats://127.0.0.1:$NATS_PORT

work=$(mktemp -d)
gw_pid=
ws_pid=
anchor_pid=
idle_pid=
pg_started=
slot=
publication=
PSQL=()
stop_pid() { # pid: end a process this script started, and reap it
  if [ -n "$1" ]; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
# drop_slot drops the e2e slot once its reader has stopped, ending a
# walsender that still holds it (the reader has exited, but the walsender
# may not have noticed yet).
drop_slot() {
  local q="FROM pg_replication_slots WHERE slot_name = '$slot'" try
  for try in 1 2 3 4 5 6 7 8 9 10; do
    "${PSQL[@]}" -c "SELECT pg_terminate_backend(active_pid) $q AND active_pid IS NOT NULL" >/dev/null
    if "${PSQL[@]}" -c "SELECT pg_drop_replication_slot(slot_name) $q" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  "${PSQL[@]}" -c "SELECT pg_drop_replication_slot(slot_name) $q" >/dev/null
}
cleanup() {
  stop_pid "$ws_pid"
  stop_pid "$anchor_pid"
  stop_pid "$idle_pid"
  stop_pid "$gw_pid"
  if [ -n "$pg_started" ]; then
    drop_slot 2>/dev/null || echo "bench-gateway.sh: could not drop replication slot $slot; drop it by hand" >&2
    "${PSQL[@]}" -c "DROP PUBLICATION IF EXISTS $publication" -c "DROP TABLE IF EXISTS bench_e2e" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rows=()
row() { rows+=("| $1 | $2 | $3 |"); echo "bench-gateway.sh: $1: $2" >&2; }
# val key file: the value of key=value in file (wsload's output).
val() { sed -n "s/^$1=//p" "$2" | tail -n 1; }
# cpu_ms_per key file n: CPU seconds (key in file) per n, in ms.
cpu_ms_per() { printf '%.1f' "$(echo "$(val "$1" "$2") * 1000 / $3" | bc -l)"; }
# num n: n with thousands separators.
num() { echo "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|[,.]\)/\1,\2\3/' -e 'ta'; }

# start_gateway cmd [env...]: starts `tablecast cmd` with an embedded NATS in
# a fresh data directory and waits for /readyz.
start_gateway() {
  local cmd=$1
  shift
  rm -rf "$work/nats"
  env TABLECAST_HTTP_ADDR=127.0.0.1:$HTTP_PORT TABLECAST_NATS_URL= TABLECAST_NATS_LISTEN=127.0.0.1:$NATS_PORT \
    TABLECAST_DATA_DIR="$work/nats" TABLECAST_PPROF=true TABLECAST_LOG_LEVEL=warn "$@" \
    bin/tablecast "$cmd" >>"$work/gateway.log" 2>&1 &
  gw_pid=$!
  local i
  for i in $(seq 1 200); do
    if curl -sf "$BASE/readyz" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "$gw_pid" 2>/dev/null || { tail -n 20 "$work/gateway.log" >&2; die "tablecast $cmd exited at start"; }
    sleep 0.1
  done
  tail -n 20 "$work/gateway.log" >&2
  die "tablecast $cmd not ready after 20s"
}
stop_gateway() {
  stop_pid "$gw_pid"
  gw_pid=
}

# wsload args...: runs wsload against the gateway, output in $work/out; on
# failure shows its errors and the gateway's log and stops.
wsload() {
  if ! "$WSLOAD" -url "$WS" -nats "$NATS" -metrics "$BASE/metrics" -pid "$gw_pid" -local "$LOCAL" "$@" >"$work/out" 2>"$work/err"; then
    cat "$work/out" "$work/err" >&2
    echo "--- gateway log (last 20 lines):" >&2
    tail -n 20 "$work/gateway.log" >&2
    die "wsload $* failed"
  fi
  cat "$work/err" >&2
}

# mem_sample: "<VmRSS KiB> <Go heap in use + stacks, bytes>" of the gateway,
# after a forced GC (pprof's heap profile with gc=1).
mem_sample() {
  curl -sf "$BASE/debug/pprof/heap?gc=1" >/dev/null
  local rss heap
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$gw_pid/status")
  heap=$(curl -sf "$BASE/metrics" | awk '$1 == "go_memstats_heap_inuse_bytes" || $1 == "go_memstats_stack_inuse_bytes" {s += $2} END {printf "%.0f", s}')
  echo "$rss $heap"
}

# start_idle n file: starts wsload -mode idle with n clients in the
# background (its pid in idle_pid, output in file and file.err) and waits
# until they are all subscribed.
start_idle() {
  local n=$1 file=$2
  "$WSLOAD" -mode idle -n "$n" -url "$WS" -nats "$NATS" -local "$LOCAL" </dev/null >"$file" 2>"$file.err" &
  idle_pid=$!
  while ! grep -q '^ready ' "$file" 2>/dev/null; do
    if ! kill -0 "$idle_pid" 2>/dev/null; then
      wait "$idle_pid" || true
      idle_pid=
      cat "$file" "$file.err" >&2
      echo "--- gateway log (last 20 lines):" >&2
      tail -n 20 "$work/gateway.log" >&2
      die "wsload -mode idle -n $n failed"
    fi
    sleep 0.2
  done
}

load=$(cut -d' ' -f1 /proc/loadavg)
echo "bench-gateway.sh: load average $load on $(nproc) cores at start" >&2

# 1. Filter evaluation.
if [ "$SKIP_FILTER" != 1 ]; then
  go test -run='^$' -bench='Filter|Match' -benchmem ./internal/query >"$work/bench.txt"
  while read -r name _ nsop _ _ _ allocs _; do
    name=${name#Benchmark}
    name=${name%-*}
    row "filter $name" "$nsop ns/op, $allocs allocs/op" "0 allocs/op"
  done < <(grep -E '^Benchmark.*allocs/op' "$work/bench.txt")
fi

# 2. Memory per idle subscribed connection.
if [ "$SKIP_MEMORY" != 1 ]; then
  for n in "${conns_list[@]}"; do
    start_gateway gateway
    # One client first (it registers the table, and its subscription starts
    # the table's feed), kept through the measurement: the baseline is a
    # gateway with the table followed, the growth is the connections'.
    start_idle 1 "$work/anchor"
    anchor_pid=$idle_pid idle_pid=
    read -r rss0 heap0 <<<"$(mem_sample)"
    start_idle "$n" "$work/idle"
    ws_pid=$idle_pid idle_pid=
    sleep 2 # let the handshakes' garbage go
    read -r rss1 heap1 <<<"$(mem_sample)"
    ready=$(sed -n 's/^ready //p' "$work/idle")
    connect_s=$(val connect_s "$work/idle")
    stop_pid "$ws_pid"; ws_pid=
    stop_pid "$anchor_pid"; anchor_pid=
    cat "$work/idle.err" >&2
    stop_gateway
    rss_per=$(echo "($rss1 - $rss0) / $ready" | bc -l)
    heap_per=$(echo "($heap1 - $heap0) / 1024 / $ready" | bc -l)
    row "gateway RSS per idle subscribed connection, $(num "$n") conns" \
      "$(printf '%.2f KiB (%d → %d MiB)' "$rss_per" $((rss0 / 1024)) $((rss1 / 1024)))" "≤ 2 KiB"
    row "gateway Go heap + stacks per idle subscribed connection, $(num "$n") conns" \
      "$(printf '%.2f KiB (%.1f → %.1f MiB; connected in %s s)' "$heap_per" "$(echo "$heap0 / 1048576" | bc -l)" "$(echo "$heap1 / 1048576" | bc -l)" "$connect_s")" "≤ 2 KiB"
  done
fi

# 3. Fan-out latency.
if [ "$SKIP_FANOUT" != 1 ]; then
  start_gateway gateway
  wsload -mode fanout -n "$FANOUT_CLIENTS" -events "$FANOUT_EVENTS"
  stop_gateway
  row "publish → last of $(num "$FANOUT_CLIENTS") subscribers has the event, p50 / p99 / max ($FANOUT_EVENTS events)" \
    "$(val fanout_p50_ms "$work/out") / $(val fanout_p99_ms "$work/out") / $(val fanout_max_ms "$work/out") ms (first subscriber p50 $(val first_p50_ms "$work/out") ms; CPU per event: gateway $(cpu_ms_per gateway_cpu_s "$work/out" $((FANOUT_EVENTS + 3))) ms, wsload $(cpu_ms_per wsload_cpu_s "$work/out" $((FANOUT_EVENTS + 3))) ms; others: $(val others_cpu "$work/out"))" \
    "≤ 30 ms"
fi

# 4. Delivered frames per second.
if [ "$SKIP_THROUGHPUT" != 1 ]; then
  for n in "${throughput_list[@]}"; do
    start_gateway gateway
    wsload -mode throughput -n "$n" -duration "${THROUGHPUT_SECONDS}s"
    stop_gateway
    o=$work/out
    row "frames delivered per second, $(num "$n") clients of one busy table" \
      "$(num "$(val frames_per_s "$o")")/s ($(num "$(val events_per_s "$o")") events/s, $(val mib_per_s "$o") MiB/s; gateway's counter $(num "$(val gateway_frames_per_s "$o")")/s; CPU: gateway $(val gateway_cpu_pct "$o")%, wsload $(val wsload_cpu_pct "$o")% ($(val wsload_ns_per_frame "$o") ns/frame), others: $(val others_cpu "$o"); machine $(val machine_busy_pct "$o")% busy)" \
      "≥ 500,000/s"
  done
fi

# 5. End to end, PostgreSQL commit → WebSocket client.
if [ "$SKIP_E2E" != 1 ]; then
  export TABLECAST_PG_PORT=${TABLECAST_PG_PORT:-54329}
  scripts/pg.sh start >/dev/null
  PGURL=$(scripts/pg.sh url)
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$PGURL")
  pg_started=1
  slot=bench_gw_$$
  publication=bench_gw_$$
  PGOPTIONS="-c client_min_messages=warning" "${PSQL[@]}" -c "DROP TABLE IF EXISTS bench_e2e" \
    -c "CREATE TABLE bench_e2e (id bigserial PRIMARY KEY, sent_ns bigint NOT NULL)"
  start_gateway run TABLECAST_DATABASE_URL="$PGURL" TABLECAST_TABLES=public.bench_e2e \
    TABLECAST_SLOT="$slot" TABLECAST_PUBLICATION="$publication" TABLECAST_SNAPSHOT=never
  for rate in "${rates_list[@]}"; do
    wsload -mode e2e -pg "$PGURL" -table public.bench_e2e -n "$E2E_CLIENTS" -rate "$rate" -duration "${E2E_SECONDS}s"
    o=$work/out
    row "PostgreSQL commit → WebSocket client, p50 / p99, $(num "$rate") changes/s" \
      "$(val commit_p50_ms "$o") / $(val commit_p99_ms "$o") ms (max $(val commit_max_ms "$o") ms; commit → NATS p50 / p99 $(val nats_commit_p50_ms "$o") / $(val nats_commit_p99_ms "$o") ms; $(num "$(val inserted_per_s "$o")") rows/s inserted; CPU: tablecast $(val gateway_cpu_pct "$o")%, wsload $(val wsload_cpu_pct "$o")%, others: $(val others_cpu "$o"); machine $(val machine_busy_pct "$o")% busy)" \
      "p99 < 20 ms"
  done
  stop_gateway
fi

echo
echo "| measure | value | target |"
echo "| --- | --- | --- |"
printf '%s\n' "${rows[@]}"
