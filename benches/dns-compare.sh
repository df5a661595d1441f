#!/usr/bin/env bash
# dnsperf against vigie, Unbound and dnsmasq, each holding the same blocklist
# (vigie: a `domains` list blocked with block_mode = "nxdomain"; Unbound: one
# `local-zone: "d." always_nxdomain` per domain; dnsmasq: one `address=/d/` per
# domain), forwarding everything else to the same upstream (an Unbound on loopback
# that answers every name under bench.test), with the same query file.
#
# Each server is pinned to one CPU with taskset (SERVER_CPU), dnsperf and the upstream
# to the other (CLIENT_CPU). Loopback only; every run is bounded in time.
#
#   benches/dns-compare.sh                 # 1,000,000 domains, 1,000,000 queries
#   N_DOMAINS=100000 DURATION=5 benches/dns-compare.sh
#   SERVERS="vigie unbound" benches/dns-compare.sh
#
# Needs: cargo, python3, unbound, dnsmasq, dnsperf, dig (../shared/tools/install-peers dns).
# Prints per server: list load time, qps, average latency (full load), p99 latency
# (at a fixed QPS_P99 rate, from dnsperf -v), RSS after the run, and ratios to Unbound.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS:-$ROOT/../shared/tools}
[ -x "$TOOLS/make-bench-data" ] || TOOLS=/work/shared/tools
OUT=$ROOT/target/bench/dns
N_DOMAINS=${N_DOMAINS:-1000000}
N_QUERIES=${N_QUERIES:-1000000}
BLOCKED=${BLOCKED:-0.3}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-5}
QPS_P99=${QPS_P99:-20000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SERVERS=${SERVERS:-"vigie unbound dnsmasq"}
MODE=${MODE:-udp}   # dnsperf transport: udp or tcp
UPSTREAM_PORT=5400
declare -A PORT=([vigie]=5401 [unbound]=5402 [dnsmasq]=5403)
ADMIN_PORT=5480

mkdir -p "$OUT"
# Two cores shared with builds make numbers meaningless: say so.
load1=$(cut -d' ' -f1 /proc/loadavg)
if [ "$(echo "$load1 > 0.5" | bc)" = 1 ]; then
  echo "warning: load average $load1 before the run; figures will be low" >&2
fi
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

domains=$OUT/domains-$N_DOMAINS.txt
queries=$OUT/queries-$N_QUERIES-$BLOCKED.txt
[ -s "$domains" ] || python3 "$TOOLS/make-bench-data" domains "$N_DOMAINS" "$domains"
[ -s "$queries" ] || python3 "$TOOLS/make-bench-data" queries "$N_QUERIES" "$BLOCKED" "$queries"


# VIGIE=/path/to/vigie skips the build (e.g. to compare two builds).
if [ -z "${VIGIE:-}" ]; then
  (cd "$ROOT" && cargo build --profile appliance --bin vigie >&2)
  VIGIE=$ROOT/target/appliance/vigie
fi

# ---- the shared upstream ----
cat >"$OUT/upstream.conf" <<EOF
server:
  interface: 127.0.0.1
  port: $UPSTREAM_PORT
  num-threads: 1
  username: ""
  chroot: ""
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  # Everything else (the query file's blocked share holds a few names no list
  # keeps, like bare IPs) gets a quick NXDOMAIN instead of a recursion timeout.
  local-zone: "." static
  local-zone: "bench.test." redirect
  local-data: "bench.test. 3600 IN A 192.0.2.1"
EOF
taskset -c "$CLIENT_CPU" unbound -d -c "$OUT/upstream.conf" &
PIDS+=($!)

# ---- configs ----
# The generated list keeps UT1's oddities (bare IPs, leading dots) that Unbound refuses
# to load: all three servers get the same cleaned list.
clean=$OUT/domains-$N_DOMAINS.clean.txt
if [ ! -s "$clean" ]; then
  grep -E '^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.[a-z][a-z0-9-]*[a-z0-9]$' "$domains" >"$clean"
  awk '{printf "local-zone: \"%s.\" always_nxdomain\n", $1}' "$clean" >"$OUT/unbound-zones-$N_DOMAINS.conf"
  awk '{printf "address=/%s/\n", $1}' "$clean" >"$OUT/dnsmasq-$N_DOMAINS.conf"
fi
domains=$clean
echo "== data: $(wc -l <"$domains") domains (cleaned), $(wc -l <"$queries") queries" >&2
cat >"$OUT/unbound.conf" <<EOF
server:
  interface: 127.0.0.1
  port: ${PORT[unbound]}
  num-threads: 1
  username: ""
  chroot: ""
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  qname-minimisation: no
  include: "$OUT/unbound-zones-$N_DOMAINS.conf"
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@$UPSTREAM_PORT
EOF
cat >"$OUT/vigie.toml" <<EOF
client_networks = ["127.0.0.0/8"]
default_profile = "bench"

[dns]
upstreams = ["127.0.0.1:$UPSTREAM_PORT"]
rate_limit_qps = 0

[[categories]]
id = "bench"
fr = "Banc d'essai"
en = "Benchmark"

[[lists]]
category = "bench"
format = "domains"
path = "$domains"

[profiles.bench]
block = ["bench"]
block_mode = "nxdomain"
EOF

# vigie records every blocked query in its audit log and keeps its compiled-list
# cache there, as it does on the appliance.
rm -rf "$OUT/vigie-data"
start_server() { # name -> sets SPID
  case $1 in
    vigie) taskset -c "$SERVER_CPU" "$VIGIE" --config "$OUT/vigie.toml" run \
             --dns-listen "127.0.0.1:${PORT[vigie]}" --admin-listen "127.0.0.1:$ADMIN_PORT" --proxy-listen 127.0.0.1:0 \
             --data-dir "$OUT/vigie-data" --user root \
             >"$OUT/vigie.out" 2>"$OUT/vigie.log" & ;;
    unbound) taskset -c "$SERVER_CPU" unbound -d -c "$OUT/unbound.conf" 2>"$OUT/unbound.log" & ;;
    dnsmasq) taskset -c "$SERVER_CPU" dnsmasq -k --no-resolv --no-hosts --user=root \
               --listen-address=127.0.0.1 --bind-interfaces --port="${PORT[dnsmasq]}" \
               --server="127.0.0.1#$UPSTREAM_PORT" --cache-size=10000 \
               --conf-file="$OUT/dnsmasq-$N_DOMAINS.conf" 2>"$OUT/dnsmasq.log" & ;;
  esac
  SPID=$!
  PIDS+=("$SPID")
}

# A name of the list, to know when a server has loaded it.
probe=$(head -1 "$domains")
wait_ready() { # port -> seconds waited, or fails after 300 s
  local t0 t1
  t0=$(date +%s.%N)
  for _ in $(seq 1 3000); do
    kill -0 "$SPID" 2>/dev/null || return 1
    if dig @127.0.0.1 -p "$1" "$probe" A +time=1 +tries=1 2>/dev/null | grep -q "status: NXDOMAIN"; then
      t1=$(date +%s.%N)
      echo "$t1 - $t0" | bc
      return 0
    fi
    sleep 0.1
  done
  return 1
}

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

declare -A R_QPS R_AVG R_P99 R_RSS R_LOAD
for s in $SERVERS; do
  echo "== $s" >&2
  start_server "$s"
  if ! load=$(wait_ready "${PORT[$s]}"); then
    echo "$s did not answer within 300 s; see $OUT/$s.log" >&2
    exit 1
  fi
  R_LOAD[$s]=$load
  if [ "$s" = vigie ] && [ "${VIGIE_WARM:-1}" = 1 ]; then
    # The appliance starts from its compiled-list cache (written by the cold start
    # just measured); measure the process as it usually runs. VIGIE_WARM=0 measures
    # the cold-built process instead (its RSS keeps the build's peak: +10-15 MB).
    kill "$SPID"; wait "$SPID" 2>/dev/null || true
    start_server vigie
    if ! warm=$(wait_ready "${PORT[vigie]}"); then
      echo "vigie did not restart; see $OUT/vigie.log" >&2
      exit 1
    fi
    echo "  vigie: cold load ${load} s, warm load (compiled-list cache) ${warm} s" >&2
  fi
  # Warm the cache with the same query mix, then measure.
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "${PORT[$s]}" -m "$MODE" -d "$queries" -l "$WARMUP" -q 200 >/dev/null 2>&1 || true
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "${PORT[$s]}" -m "$MODE" -d "$queries" -l "$DURATION" -q 200 >"$OUT/$s.dnsperf" 2>&1
  R_QPS[$s]=$(awk '/Queries per second/ {printf "%.0f", $4}' "$OUT/$s.dnsperf")
  R_AVG[$s]=$(awk '/Average Latency/ && !done {printf "%.3f", $4*1000; done = 1}' "$OUT/$s.dnsperf")
  # p99 at a fixed rate well under every server's capacity (dnsperf -v per query).
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "${PORT[$s]}" -m "$MODE" -d "$queries" -l 5 -Q "$QPS_P99" -v 2>/dev/null \
    | awk '$1 == ">" {print $NF}' | sort -g >"$OUT/$s.latencies"
  n=$(wc -l <"$OUT/$s.latencies")
  R_P99[$s]=$(awk -v n="$n" 'NR == int(n*0.99) {printf "%.3f", $1*1000}' "$OUT/$s.latencies")
  R_RSS[$s]=$(rss_mb "$SPID")
  if [ "$s" = vigie ]; then
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^vigie_audit_(events|dropped)_total' | sed 's/^/  vigie: /' >&2 || true
  fi
  kill "$SPID"; wait "$SPID" 2>/dev/null || true
  grep -E "Queries (sent|completed|lost)" "$OUT/$s.dnsperf" | sed "s/^/  $s: /" >&2
done

printf "\n%-8s %10s %12s %12s %14s %10s\n" server qps "avg ms" "p99 ms" "rss MB" "load s"
for s in $SERVERS; do
  printf "%-8s %10s %12s %12s %14s %10.2f\n" "$s" "${R_QPS[$s]}" "${R_AVG[$s]}" "${R_P99[$s]:-?}" "${R_RSS[$s]}" "${R_LOAD[$s]}"
done
if [[ " $SERVERS " == *" vigie "* && " $SERVERS " == *" unbound "* ]]; then
  echo
  echo "vigie/unbound: qps $(echo "scale=2; ${R_QPS[vigie]} / ${R_QPS[unbound]}" | bc)x," \
       "rss $(echo "scale=3; ${R_RSS[vigie]} / ${R_RSS[unbound]}" | bc)x," \
       "load $(echo "scale=2; ${R_LOAD[vigie]} / ${R_LOAD[unbound]}" | bc)x"
fi
echo "(MODE=$MODE N_DOMAINS=$N_DOMAINS N_QUERIES=$N_QUERIES BLOCKED=$BLOCKED DURATION=${DURATION}s, server on CPU $SERVER_CPU, dnsperf + upstream on CPU $CLIENT_CPU, p99 at $QPS_P99 qps)"
