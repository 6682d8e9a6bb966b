#!/usr/bin/env bash
# bench-latency.sh — how much time tablecast adds to what PostgreSQL's
# walsender takes to deliver a commit, under a steady load.
#
# Each run writes a steady load of transactions with pgbench (RATE
# transactions a second, ROWS rows each, synchronous_commit=on, Poisson
# arrivals), into a fresh database, and measures in the same run:
#   - walsender: scripts/walfloor on a slot of its own notes when each
#     commit message arrives (commit → receipt: PostgreSQL's own latency);
#   - JetStream: `tablecast run` (embedded NATS, or NATS=external) reads
#     another slot; after the load, scripts/cdclat reads the stream and
#     takes the time JetStream stored each event (the server's own
#     timestamp), so nothing measures while the load runs;
#   - WebSocket: scripts/cdclat holds one gateway connection subscribed to
#     the table and notes when each event's frame arrives.
# A transaction counts by its last event. Only the transactions committed in
# the DURATION seconds after WARM seconds of warm-up are measured. Printed:
# p50 / p99 / max of each, the difference of tablecast's percentiles and the
# walsender's (what tablecast adds), and the CPU each process used in that
# window, in percent of one core (the machine's busy share in percent of all
# of its cores), and tablecast's peak resident memory. WORST=n lists the n slowest transactions into JetStream with
# their commit times, and the warnings tablecast logged are shown: a stall
# shows as a run of slow transactions. LOG_DIR keeps tablecast's log of each
# run. WS=0 runs `tablecast cdc` (the reader alone) and no WebSocket client.
# Each walsender's CPU, and how far behind the WAL it was (written, not yet
# sent, sampled every 100 ms), tell a stall of PostgreSQL from one of tablecast;
# so does tablecast's own histogram of how late its reader received each
# commit (tablecast_cdc_commit_receipt_seconds, read before and after the
# window: the bucket bounds of its p50 and p99). The gateway's histograms,
# read the same way, split the WebSocket leg: how old each event was when
# the gateway's feed received it from NATS (JetStream's own delivery), and
# how long the feed took to queue its frames for the client.
#
# Usage: [CONFIGS="1000x1 1000x10"] [DURATION=30] [WARM=5] [REPEAT=1]
#        [BINS="bin/tablecast other/tablecast"] [NATS=embedded|external]
#        [WORST=n] [LOG_DIR=dir] [WS=0] scripts/bench-latency.sh
# CONFIGS lists RATExROWS pairs (transactions a second × rows each); BINS
# compares tablecast binaries, run after one another on the same
# configuration (the order rotates each repetition); the default builds
# bin/tablecast from this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIGS=${CONFIGS:-1000x1 1000x10}
DURATION=${DURATION:-30}
WARM=${WARM:-5}
REPEAT=${REPEAT:-1}
NATS=${NATS:-embedded}
CLIENTS=${CLIENTS:-8}
WS=${WS:-1}
for v in DURATION WARM REPEAT CLIENTS; do
  case "${!v}" in '' | *[!0-9]*) echo "bench-latency.sh: $v must be a whole number, not '${!v}'" >&2; exit 2 ;; esac
done
case "$NATS" in embedded | external) ;; *) echo "bench-latency.sh: NATS must be embedded or external, not '$NATS'" >&2; exit 2 ;; esac
read -r -a configs <<<"$CONFIGS"
for c in "${configs[@]}"; do
  [[ "$c" =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || { echo "bench-latency.sh: config '$c' is not RATExROWS (such as 1000x10)" >&2; exit 2; }
done

export TABLECAST_PG_PORT=${TABLECAST_PG_PORT:-54329}
scripts/pg.sh start >/dev/null
PGURL=$(scripts/pg.sh url)
BASEURL=${PGURL%/*}
PGDATA_DIR=${TABLECAST_PG_DIR:-.data/pg}
DB=tc_lat
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1)
PGBENCH=$PGBIN/pgbench
if [ -z "${BINS:-}" ]; then
  go build -o bin/tablecast ./cmd/tablecast
  BINS=bin/tablecast
fi
read -r -a bins <<<"$BINS"
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "bench-latency.sh: $b is not an executable" >&2; exit 2; }
done
go build -o bin/walfloor ./scripts/walfloor
go build -o bin/cdclat ./scripts/cdclat
if [ "$NATS" = external ]; then go build -o bin/nats-server github.com/nats-io/nats-server/v2; fi
PM_PID=$(head -1 "$PGDATA_DIR/postmaster.pid")
TICKS=$(getconf CLK_TCK)
HTTP=127.0.0.1:18081
hists="tablecast_cdc_commit_receipt_seconds tablecast_gateway_event_age_seconds tablecast_gateway_fanout_seconds"
NATS_ADDR=127.0.0.1:14223

work=$(mktemp -d)
pids=()
stop_pid() { # pid: end a process this script started, and reap it
  if [ -n "${1:-}" ]; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
drop_slots() {
  local q="FROM pg_replication_slots WHERE slot_name IN ('lat_floor','lat_tc')" try
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
  local p
  for p in "${pids[@]}"; do stop_pid "$p"; done
  rm -rf "$work"
  drop_slots 2>/dev/null || true
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# proc_ticks pid: the process's CPU time (utime + stime), in clock ticks.
proc_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }
  awk '{print $12 + $13}' <<<"$stat"
}
# pg_ticks: PostgreSQL's CPU time so far: the postmaster's own, its live
# children's, and its reaped children's. A child that exits between two
# readings moves from live to reaped with the CPU it had, so differences
# between readings are right to within what it used since the first one.
# One awk reads every process's stat file: a process per child (as this
# once forked) is a burst of CPU at the window's start, which delayed the
# transactions measured first.
# (getline, because a process gone before its file is read must not end
# the reading, as a missing input file ends mawk's.)
pg_ticks() {
  awk -v pm="$PM_PID" 'BEGIN {
    for (i = 1; i < ARGC; i++) {
      if ((getline line < ARGV[i]) > 0) {
        sub(/^.*\) /, "", line); split(line, f, " ")
        # f[1] is field 3 (state): ppid f[2], utime f[12], stime f[13],
        # reaped children f[14] and f[15].
        if (ARGV[i] == "/proc/" pm "/stat") t += f[12] + f[13] + f[14] + f[15]
        else if (f[2] == pm) t += f[12] + f[13]
      }
      close(ARGV[i])
    }
    print t + 0
  }' /proc/[0-9]*/stat
}
# machine_ticks: "busy total" of all CPUs, in clock ticks.
machine_ticks() {
  awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}
pct() { # ticks seconds: percent of one core
  printf '%.0f' "$(echo "100 * $1 / $TICKS / $2" | bc -l)"
}
# pos_report file from to column pct|max: per slot, the percentiles (or the
# maximum) of one column of the position samples taken between from and to,
# in KiB.
pos_report() {
  local slot
  for slot in lat_floor lat_tc; do
    awk -v from="$2" -v to="$3" -v slot="$slot" -v col="$4" '$1 >= from && $1 <= to && $2 == slot { print $col }' "$1" | sort -n |
      awk -v slot="$slot" -v how="$5" '{ a[NR] = $1 } END {
        if (NR == 0) { printf " %s -", slot; exit }
        if (how == "max") printf " %s %.0f KiB", slot, a[NR] / 1024
        else printf " %s %.0f / %.0f / %.0f KiB", slot, a[int(NR * 0.5) + 1] / 1024, a[int(NR * 0.99) + 1] / 1024, a[NR] / 1024
      }'
  done
}

# hist_buckets metric: one of tablecast's histograms as "le count" lines;
# empty when the binary has no such histogram. The reader's
# tablecast_cdc_commit_receipt_seconds: how late it received each commit
# (commit time by PostgreSQL's clock → commit message read); the gateway's
# tablecast_gateway_event_age_seconds: how old each event was when its feed
# received it (stored by JetStream → arrived from NATS), and
# tablecast_gateway_fanout_seconds: arrived → its frames queued for the
# client.
hist_buckets() {
  curl -sf "http://$HTTP/metrics" 2>/dev/null |
    awk -F'[{}" ]+' -v m="$1_bucket" '$1 == m { for (i = 2; i < NF; i++) if ($i == "le=") print $(i + 1), $NF }'
}
# hist_report what before after: from two hist_buckets snapshots, the
# bucket bounds that hold the p50 and p99 over the window, and how many
# observations were over 16 ms (when 16 ms is a bound).
hist_report() {
  [ -s "$2" ] && [ -s "$3" ] || return 0
  awk -v what="$1" 'NR == FNR { c0[$1] = $2; next } { le[++n] = $1; c[n] = $2 - c0[$1] } END {
    total = c[n]; if (total <= 0) exit
    upto16 = -1
    for (i = 1; i <= n; i++) {
      if (p50 == "" && c[i] >= total * 0.5) p50 = le[i]
      if (p99 == "" && c[i] >= total * 0.99) p99 = le[i]
      if (le[i] + 0 == 0.016) upto16 = c[i]
    }
    printf "   %s (its histogram): p50 ≤ %s ms, p99 ≤ %s ms", what,
      (p50 == "+Inf" ? "inf" : p50 * 1000), (p99 == "+Inf" ? "inf" : p99 * 1000)
    if (upto16 >= 0) printf "; %d of %d over 16 ms", total - upto16, total
    printf "\n"
  }' "$2" "$3"
}

# run_one rate rows bin rep: one measured run; prints its report.
run_one() {
  local rate=$1 rows=$2 bin=$3 rep=$4
  drop_slots
  PGOPTIONS="-c client_min_messages=warning" "${PSQL[@]}" -d "$BASEURL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  "${PSQL[@]}" -d "$BASEURL/postgres" -c "CREATE DATABASE $DB"
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "CREATE TABLE lat (id bigserial PRIMARY KEY, n int, v text, at timestamptz DEFAULT now())" \
    -c "CREATE PUBLICATION lat_pub FOR TABLE lat WITH (publish_via_partition_root = true)"
  "${PSQL[@]}" -d "$BASEURL/$DB" -c "SELECT pg_create_logical_replication_slot('lat_floor', 'pgoutput')" \
    -c "SELECT pg_create_logical_replication_slot('lat_tc', 'pgoutput')" >/dev/null
  if [ "$rows" -eq 1 ]; then
    echo "INSERT INTO lat (n, v) VALUES (1, 'x');" >"$work/load.sql"
  else
    echo "INSERT INTO lat (n, v) SELECT g, 'x' FROM generate_series(1, $rows) g;" >"$work/load.sql"
  fi

  rm -rf "$work/nats" "$work"/*.txt
  local nats_url= nats_pid= command=run
  [ "$WS" = 1 ] || command=cdc
  if [ "$NATS" = external ]; then
    bin/nats-server -a 127.0.0.1 -p "${NATS_ADDR##*:}" -js -sd "$work/nats" >/dev/null 2>&1 &
    nats_pid=$!
    pids+=("$nats_pid")
    nats_url=nats://$NATS_ADDR
    sleep 0.5
  fi
  TABLECAST_DATABASE_URL="$BASEURL/$DB" TABLECAST_SLOT=lat_tc TABLECAST_PUBLICATION=lat_pub \
  TABLECAST_NATS_URL="$nats_url" TABLECAST_NATS_LISTEN=$NATS_ADDR TABLECAST_DATA_DIR="$work/nats" \
  TABLECAST_HTTP_ADDR=$HTTP TABLECAST_LOG_LEVEL=warn TABLECAST_SNAPSHOT=never \
    "$bin" "$command" 2>"$work/tablecast.log" &
  local tc_pid=$!
  pids+=("$tc_pid")
  local i
  for i in $(seq 1 200); do
    curl -sf "http://$HTTP/readyz" >/dev/null 2>&1 && break
    kill -0 "$tc_pid" 2>/dev/null || { cat "$work/tablecast.log" >&2; echo "bench-latency.sh: tablecast exited" >&2; exit 1; }
    sleep 0.1
  done
  bin/walfloor -db "$BASEURL/$DB" -slot lat_floor -publication lat_pub -commits "$work/floor.txt" &
  local floor_pid=$!
  pids+=("$floor_pid")
  local ws_pid=
  if [ "$WS" = 1 ]; then
    bin/cdclat ws -url "ws://$HTTP/ws" -table public.lat -out "$work/ws.txt" >"$work/ws.out" &
    ws_pid=$!
    pids+=("$ws_pid")
    for i in $(seq 1 200); do
      grep -q subscribed "$work/ws.out" 2>/dev/null && break
      kill -0 "$ws_pid" 2>/dev/null || { echo "bench-latency.sh: the WebSocket client exited" >&2; exit 1; }
      sleep 0.1
    done
  fi

  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  local t0 from to
  t0=$(date +%s.%N)
  from=$(echo "$t0 + $WARM" | bc -l)
  to=$(echo "$from + $DURATION" | bc -l)
  PGOPTIONS="-c synchronous_commit=on" "$PGBENCH" -n -c "$CLIENTS" -j 2 -R "$rate" -T "$((WARM + DURATION))" -M prepared \
    -f "$work/load.sql" "$BASEURL/$DB" >"$work/pgbench.out" 2>&1 &
  local pgb_pid=$!
  pids+=("$pgb_pid")
  # Where each slot's changes wait, every 100 ms: written to the WAL but not
  # yet sent by the slot's walsender (PostgreSQL behind; a reader that does
  # not read leaves it behind too, once the socket is full), and sent but not
  # yet confirmed (tablecast confirms what JetStream stored, about once a
  # second). A stall that the walsender shares shows in the first.
  "$PGBIN/psql" -X -q -A -t -F" " -d "$BASEURL/postgres" >"$work/pos.txt" 2>/dev/null <<'SQL' &
SELECT extract(epoch FROM clock_timestamp()), s.slot_name, pg_current_wal_insert_lsn() - r.sent_lsn, r.sent_lsn - s.confirmed_flush_lsn
  FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name IN ('lat_floor', 'lat_tc')
\watch 0.1
SQL
  local pos_pid=$!
  pids+=("$pos_pid")
  # The two walsenders, for their CPU (walfloor may still be starting).
  local senders=
  for i in $(seq 1 50); do
    senders=$("${PSQL[@]}" -A -t -F" " -d "$BASEURL/postgres" -c "SELECT slot_name, active_pid FROM pg_replication_slots WHERE slot_name IN ('lat_floor', 'lat_tc') AND active_pid IS NOT NULL ORDER BY slot_name")
    [ "$(wc -l <<<"$senders")" -eq 2 ] && break
    sleep 0.1
  done
  sleep "$WARM"
  local m0 pg0 tc0 fl0 ws0 pb0 n0 c0
  local s0=() s1=() slot spid
  while read -r slot spid; do s0+=("$(proc_ticks "$spid")"); done <<<"$senders"
  m0=$(machine_ticks); pg0=$(pg_ticks); tc0=$(proc_ticks "$tc_pid"); fl0=$(proc_ticks "$floor_pid")
  ws0=0; [ -z "$ws_pid" ] || ws0=$(proc_ticks "$ws_pid")
  pb0=$(proc_ticks "$pgb_pid")
  if [ -n "$nats_pid" ]; then n0=$(proc_ticks "$nats_pid"); fi
  c0=$(date +%s.%N)
  for h in $hists; do hist_buckets "$h" >"$work/$h.0"; done
  # pgbench's own CPU is read just before it ends.
  local pb1=0
  while kill -0 "$pgb_pid" 2>/dev/null; do
    pb1=$(proc_ticks "$pgb_pid")
    sleep 0.5
  done
  wait "$pgb_pid" || { cat "$work/pgbench.out" >&2; echo "bench-latency.sh: pgbench failed" >&2; exit 1; }
  local m1 pg1 tc1 fl1 ws1 n1 c1 secs rss
  m1=$(machine_ticks); pg1=$(pg_ticks); tc1=$(proc_ticks "$tc_pid"); fl1=$(proc_ticks "$floor_pid")
  while read -r slot spid; do s1+=("$(proc_ticks "$spid")"); done <<<"$senders"
  rss=$(awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$tc_pid/status")
  ws1=0; [ -z "$ws_pid" ] || ws1=$(proc_ticks "$ws_pid")
  if [ -n "$nats_pid" ]; then n1=$(proc_ticks "$nats_pid"); fi
  c1=$(date +%s.%N)
  for h in $hists; do hist_buckets "$h" >"$work/$h.1"; done
  secs=$(echo "$c1 - $c0" | bc -l)
  # Let the last transactions arrive everywhere.
  sleep 3
  stop_pid "$pos_pid"
  stop_pid "$floor_pid"
  stop_pid "$ws_pid"
  bin/cdclat js -url "nats://$NATS_ADDR" -stream TABLECAST -out "$work/js.txt"
  stop_pid "$tc_pid"
  stop_pid "$nats_pid"

  local tps
  tps=$(awk '/^tps/ {printf "%.0f", $3}' "$work/pgbench.out")
  local mb mt
  read -r mb mt <<<"$m0"
  local m1b m1t
  read -r m1b m1t <<<"$m1"
  printf '== %s tx/s × %s rows (%s tx/s done), %s, %s, run %s, load %s\n' "$rate" "$rows" "$tps" "$NATS" "$bin" "$rep" "$load"
  local wsfile=
  [ -z "$ws_pid" ] || wsfile="$work/ws.txt"
  bin/cdclat report -floor "$work/floor.txt" -js "$work/js.txt" ${wsfile:+-ws "$wsfile"} -from "$from" -to "$to" -worst "${WORST:-0}" | sed 's/^/   /'
  hist_report "tablecast received commits" "$work/tablecast_cdc_commit_receipt_seconds.0" "$work/tablecast_cdc_commit_receipt_seconds.1"
  hist_report "the gateway received events, age since stored" "$work/tablecast_gateway_event_age_seconds.0" "$work/tablecast_gateway_event_age_seconds.1"
  hist_report "the gateway queued them for the client" "$work/tablecast_gateway_fanout_seconds.0" "$work/tablecast_gateway_fanout_seconds.1"
  local cpu
  cpu="tablecast $(pct $((tc1 - tc0)) "$secs")%"
  if [ -n "$nats_pid" ]; then cpu+=" nats-server $(pct $((n1 - n0)) "$secs")%"; fi
  cpu+=" postgres $(pct $((pg1 - pg0)) "$secs")% pgbench $(pct $((pb1 - pb0)) "$secs")% walfloor $(pct $((fl1 - fl0)) "$secs")% ws-client $(pct $((ws1 - ws0)) "$secs")%"
  printf '   CPU (%% of one core): %s; machine %s%% busy (of %s cores); tablecast peak RSS %s MiB\n' "$cpu" \
    "$(printf '%.0f' "$(echo "100 * ($m1b - $mb) / ($m1t - $mt)" | bc -l)")" "$(nproc)" "$rss"
  local k=0 senders_cpu=
  while read -r slot spid; do
    senders_cpu+=" $slot $(pct $((s1[k] - s0[k])) "$secs")%"
    k=$((k + 1))
  done <<<"$senders"
  printf '   walsender CPU (%% of one core):%s; WAL written, not yet sent (p50 / p99 / max):%s; sent, not yet confirmed (max):%s\n' \
    "$senders_cpu" "$(pos_report "$work/pos.txt" "$from" "$to" 3 pct)" "$(pos_report "$work/pos.txt" "$from" "$to" 4 max)"
  if [ -n "${LOG_DIR:-}" ]; then
    mkdir -p "$LOG_DIR"
    cp "$work/tablecast.log" "$LOG_DIR/tablecast-${rate}x$rows-$(basename "$bin")-$rep.log"
  fi
  # What tablecast warned about (a session that ended explains a spike).
  grep -E 'level=(WARN|ERROR)' "$work/tablecast.log" | grep -v 'no position record' | cut -c1-300 | head -5 | sed 's/^/   tablecast: /' || true
  pids=()
}

for ((rep = 1; rep <= REPEAT; rep++)); do
  for c in "${configs[@]}"; do
    n=${#bins[@]}
    for ((k = 0; k < n; k++)); do
      run_one "${c%x*}" "${c#*x}" "${bins[$(((k + rep - 1) % n))]}" "$rep"
    done
  done
done
