#!/usr/bin/env bash
# vigie's forward proxy against Squid and e2guardian, each holding the same
# 1,000,000-domain blocklist (vigie: a `domains` list, taken as it comes; Squid: a
# `dstdomain` ACL file, with overlapping subdomains removed because Squid refuses
# them; e2guardian: its `bannedsitelist`), in front of the same nginx origin.
#
# Each proxy is pinned to one CPU with taskset (SERVER_CPU); wrk, curl, the idle-
# connection client and nginx share the other (CLIENT_CPU). Loopback only; every run
# is bounded in time. Each proxy is measured only once it filters: the time until
# its port opens and until a listed name is refused are reported (e2guardian opens
# its port before its lists are loaded). Measured per proxy:
#   - requests/s and p50/p99 latency, keep-alive, CONNS connections, 1 KiB responses
#     (wrk with a Lua script sending absolute-form requests);
#   - p50/p99 at light load (LIGHT_CONNS connections), and the same straight to nginx,
#     so the added latency shows;
#   - CONNECT tunnel throughput of a 1 GiB HTTPS download (curl), against the same
#     download straight from nginx;
#   - RSS per idle connection, with IDLE idle client connections held open;
#   - p50/p99 at half of the proxy's own peak rate, open loop (benches/openloop.rs:
#     requests sent on schedule over OPEN_CONNS connections, latency from when each
#     was due), and straight to nginx at the same rate: the latency the proxy adds
#     when it is not saturated. HALF_RUNS pairs (default 3), each nginx alone then
#     the proxy; the table shows the pair with the median p99 added, and every
#     pair's p99 added (this machine's tail swings by milliseconds between runs).
# `vigie` records every request in its SQLite audit store (the product's default);
# `vigie_noaudit` is the same binary with `[audit] store = "none"` and allowed
# requests not recorded, so the cost of the audit trail shows.
#
#   benches/proxy-compare.sh
#   N_DOMAINS=100000 DURATION=5 SERVERS="vigie squid" benches/proxy-compare.sh
#
# Needs: cargo, python3, nginx, squid, e2guardian, wrk, curl, openssl
# (../shared/tools/install-peers proxy, plus nginx-light).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS:-$ROOT/../shared/tools}
[ -x "$TOOLS/make-bench-data" ] || TOOLS=/work/shared/tools
OUT=$ROOT/target/bench/proxy
N_DOMAINS=${N_DOMAINS:-1000000}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
LIGHT_CONNS=${LIGHT_CONNS:-4}
IDLE=${IDLE:-10000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SERVERS=${SERVERS:-"vigie vigie_noaudit squid e2guardian"}
OPEN_CONNS=${OPEN_CONNS:-64}
HALF_RUNS=${HALF_RUNS:-3}
ORIGIN_PORT=18081
ORIGIN_TLS_PORT=18443
declare -A PORT=([vigie]=3401 [squid]=3402 [e2guardian]=3403 [vigie_noaudit]=3404)

mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$OUT/nginx.pid" ] && kill "$(cat "$OUT/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- data ----
domains=$OUT/domains-$N_DOMAINS.txt
[ -s "$domains" ] || python3 "$TOOLS/make-bench-data" domains "$N_DOMAINS" "$domains"
squid_domains=$OUT/squid-domains-$N_DOMAINS.txt
[ -s "$squid_domains" ] || python3 - "$domains" "$squid_domains" <<'EOF'
import sys
# Squid's dstdomain refuses a subdomain of a listed domain: keep the shortest.
names = sorted({l.strip().lower().rstrip('.') for l in open(sys.argv[1]) if l.strip()}, key=lambda d: d.count('.'))
kept = set()
for d in names:
    labels = d.split('.')
    if not any('.'.join(labels[i:]) in kept for i in range(1, len(labels))):
        kept.add(d)
with open(sys.argv[2], 'w') as f:
    for d in sorted(kept):
        f.write('.' + d + '\n')
EOF
echo "== data: $(wc -l <"$domains") domains ($(wc -l <"$squid_domains") for Squid after removing overlaps)" >&2

if [ -z "${VIGIE:-}" ]; then
  (cd "$ROOT" && cargo build --profile appliance --bin vigie >&2)
  VIGIE=$ROOT/target/appliance/vigie
fi
# The open-loop client (benches/openloop.rs), built in the bench profile.
if [ -z "${OPENLOOP:-}" ]; then
  OPENLOOP=$(cd "$ROOT" && cargo bench --bench openloop --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "openloop" and m.get("executable"):
        print(m["executable"])')
fi
[ -x "$OPENLOOP" ] || { echo "cannot build benches/openloop.rs" >&2; exit 1; }

# ---- the origin: nginx, 1 KiB over HTTP, 1 GiB over HTTPS ----
mkdir -p "$OUT/www" "$OUT/nginx"
head -c 1024 /dev/zero | tr '\0' 'x' >"$OUT/www/1k"
[ -s "$OUT/www/1g" ] || head -c $((1 << 30)) /dev/zero >"$OUT/www/1g"
[ -s "$OUT/origin.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 30 \
  -keyout "$OUT/origin.key" -out "$OUT/origin.pem" 2>/dev/null
cat >"$OUT/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon on;
pid $OUT/nginx.pid;
error_log $OUT/nginx/error.log;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  sendfile on;
  server {
    listen 127.0.0.1:$ORIGIN_PORT; listen [::1]:$ORIGIN_PORT;
    listen 127.0.0.1:$ORIGIN_TLS_PORT ssl; listen [::1]:$ORIGIN_TLS_PORT ssl;
    ssl_certificate $OUT/origin.pem; ssl_certificate_key $OUT/origin.key;
    root $OUT/www;
  }
}
EOF
taskset -c "$CLIENT_CPU" nginx -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx"

# ---- configs ----
cat >"$OUT/vigie.toml" <<EOF
default_profile = "eleves"
client_networks = ["127.0.0.0/8", "::1/128"]
lists_dir = "$OUT"
data_dir = "$OUT/vigie-data"
[dns]
rate_limit_qps = 0
[proxy]
allow_loopback_origins = true
connect_ports = [443, $ORIGIN_TLS_PORT]
header_timeout_ms = 120000
max_connections = 60000
# Every client of the benchmark is 127.0.0.1, and IDLE of them hold a connection.
max_connections_per_client = 0
log_allowed = true
[[categories]]
id = "bench"
fr = "Banc d'essai"
en = "Benchmark"
[[lists]]
category = "bench"
format = "domains"
path = "$(basename "$domains")"
[profiles.eleves]
block = ["bench"]
bare_ip = "allow"
EOF

# The same without the audit trail.
sed -e 's/^log_allowed = true/log_allowed = false/' -e "s#^data_dir = .*#data_dir = \"$OUT/vigie-noaudit-data\"#" \
  "$OUT/vigie.toml" >"$OUT/vigie-noaudit.toml"
printf '[audit]\nstore = "none"\n' >>"$OUT/vigie-noaudit.toml"
rm -rf "$OUT/vigie-data" "$OUT/vigie-noaudit-data"

mkdir -p "$OUT/squid"
cat >"$OUT/squid/squid.conf" <<EOF
http_port 127.0.0.1:${PORT[squid]}
pid_filename $OUT/squid/squid.pid
cache deny all
cache_mem 8 MB
cache_dir null /tmp
access_log none
cache_log $OUT/squid/cache.log
coredump_dir $OUT/squid
max_filedescriptors 65536
workers 1
acl SSL_ports port 443 $ORIGIN_TLS_PORT
acl CONNECT method CONNECT
acl blocked dstdomain "$squid_domains"
http_access deny CONNECT !SSL_ports
http_access deny blocked
http_access allow localhost
http_access deny all
via on
forwarded_for delete
EOF

E2=$OUT/e2guardian
rm -rf "$E2" && cp -r /etc/e2guardian "$E2"
find "$E2" -type f -name '*.conf' -exec sed -i "s#/etc/e2guardian#$E2#g" {} +
find "$E2" -type f -name '*.story' -exec sed -i "s#/etc/e2guardian#$E2#g" {} +
sed -i -e "s/^filterports = .*/filterports = ${PORT[e2guardian]}/" -e "s/^filterip =.*/filterip = 127.0.0.1/" \
  -e "s/^nodaemon = .*/nodaemon = on/" -e "s/^httpworkers = .*/httpworkers = $(( $(ulimit -n) / 2 - 200 ))/" \
  -e "s/^loglevel = .*/loglevel = 0/" "$E2/e2guardian.conf"
grep -q '^pidfilename' "$E2/e2guardian.conf" || echo "pidfilename = '$E2/e2guardian.pid'" >>"$E2/e2guardian.conf"
grep -q '^loglocation' "$E2/e2guardian.conf" || echo "loglocation = '$E2/access.log'" >>"$E2/e2guardian.conf"
cp "$domains" "$E2/lists/bannedsitelist"
# e2guardian drops to its own user and must write its log there.
chown -R e2guardian:e2guardian "$E2" 2>/dev/null || true

# ---- helpers ----
wait_port() { # port seconds
  local end=$((SECONDS + $2))
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ $SECONDS -ge $end ] && return 1
    sleep 0.1
  done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # utime + stime
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cat >"$OUT/abs.lua" <<EOF
wrk.path = "http://localhost:$ORIGIN_PORT/1k"
wrk.headers["Host"] = "localhost:$ORIGIN_PORT"
EOF
wrk_run() { # conns url [script]
  local script=()
  [ -n "${3:-}" ] && script=(-s "$3")
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$1" -d"${DURATION}s" --latency "${script[@]}" "$2" 2>&1
}
# Open-loop load at a fixed rate (benches/openloop.rs; wrk is closed-loop and wrk2
# is not packaged): requests leave on schedule whatever the answers, over OPEN_CONNS
# keep-alive connections, and latency counts from when each was due.
open_run() { # rate [proxy port] → "sent … p50_us … p99_us …"
  local via=()
  [ -n "${2:-}" ] && via=(--proxy "127.0.0.1:$2")
  taskset -c "$CLIENT_CPU" "$OPENLOOP" --rate "$1" --secs "$DURATION" --conns "$OPEN_CONNS" \
    --url "http://localhost:$ORIGIN_PORT/1k" "${via[@]}"
}
ofield() { # openloop output, key (p50_us, p99_us, p999_us, errors) → number
  awk -v k="$2" '{for (i = 1; i < NF; i++) if ($i == k) print $(i + 1)}' <<<"$1"
}
field() { # wrk output, what: rps|p50|p99 → number (µs for latencies)
  case $2 in
    rps) awk '/Requests\/sec/ {print int($2)}' <<<"$1" ;;
    p50|p99) awk -v q="$([ "$2" = p50 ] && echo 50% || echo 99%)" '$1 == q {
        v=$2; u=v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "ms") v *= 1000; else if (u == "s") v *= 1000000; print int(v) }' <<<"$1" ;;
  esac
}
idle_client() { # port n → holds n idle connections until stdin closes
  python3 - "$1" "$2" <<'EOF'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(); s.connect(("127.0.0.1", port)); socks.append(s)
print("open", flush=True)
time.sleep(4)
EOF
}

declare -A RPS P50 P99 LP50 LP99 LOAD FILTERING TPUT IDLE_KIB CPU_US HRATE HP50 HP99 DP50 DP99 HERR HALL
direct=$(wrk_run "$CONNS" "http://localhost:$ORIGIN_PORT/1k")
RPS[direct]=$(field "$direct" rps)
light=$(wrk_run "$LIGHT_CONNS" "http://localhost:$ORIGIN_PORT/1k")
LP50[direct]=$(field "$light" p50)
LP99[direct]=$(field "$light" p99)
TPUT[direct]=$(taskset -c "$CLIENT_CPU" curl -sk -o /dev/null -w '%{speed_download}' "https://localhost:$ORIGIN_TLS_PORT/1g" | cut -d. -f1)

for s in $SERVERS; do
  port=${PORT[$s]}
  started=$(date +%s.%N)
  case $s in
    vigie|vigie_noaudit)
      conf=$OUT/vigie.toml
      [ "$s" = vigie_noaudit ] && conf=$OUT/vigie-noaudit.toml
      taskset -c "$SERVER_CPU" "$VIGIE" --config "$conf" run --proxy-listen "127.0.0.1:$port" \
        --dns-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --upstream 127.0.0.1:9 --user root >"$OUT/$s.out" 2>"$OUT/$s.log" &
      ;;
    squid)
      rm -f "$OUT/squid/squid.pid"
      taskset -c "$SERVER_CPU" squid -N -f "$OUT/squid/squid.conf" >"$OUT/squid/out.log" 2>&1 &
      ;;
    e2guardian)
      taskset -c "$SERVER_CPU" e2guardian -c "$E2/e2guardian.conf" >"$OUT/e2guardian.out" 2>&1 &
      ;;
  esac
  pid=$!
  PIDS+=("$pid")
  if ! wait_port "$port" 300; then
    echo "== $s did not start; see $OUT" >&2
    continue
  fi
  LOAD[$s]=$(echo "$(date +%s.%N) - $started" | bc)
  # A blocked name must be refused, an allowed one served (sanity). A proxy may open
  # its port before its lists are loaded (e2guardian does): measure only once the
  # blocked name is refused (status 403, or e2guardian's block page, which it
  # answers with status 200), waiting up to 120 s.
  blocked=$(grep -m1 '[a-z]' "$domains")
  code_b=none
  for _ in $(seq 240); do
    code_b=$(curl -s -o "$OUT/probe.html" -w '%{http_code}' -x "http://127.0.0.1:$port" "http://$blocked/" || true)
    if [ "$code_b" = 403 ] || grep -q 'Access Denied' "$OUT/probe.html" 2>/dev/null; then
      code_b="$code_b (refused)"
      break
    fi
    sleep 0.5
  done
  FILTERING[$s]=$(echo "$(date +%s.%N) - $started" | bc)
  code_a=$(curl -s -o /dev/null -w '%{http_code}' -x "http://127.0.0.1:$port" "http://localhost:$ORIGIN_PORT/1k" || true)
  echo "== $s: port open in ${LOAD[$s]} s, filtering in ${FILTERING[$s]} s; blocked $blocked → $code_b, allowed → $code_a" >&2
  # Squid and e2guardian fork: measure the process that serves.
  server_pid=$pid
  [ "$s" = squid ] && server_pid=$(pgrep -n -f "squid.*$OUT/squid/squid.conf" || echo "$pid")
  [ "$s" = e2guardian ] && server_pid=$(pgrep -n -f "e2guardian -c $E2/e2guardian.conf" || echo "$pid")
  cpu0=$(cpu_ticks "$server_pid")
  out=$(wrk_run "$CONNS" "http://127.0.0.1:$port/" "$OUT/abs.lua")
  cpu1=$(cpu_ticks "$server_pid")
  RPS[$s]=$(field "$out" rps); P50[$s]=$(field "$out" p50); P99[$s]=$(field "$out" p99)
  # CPU time per request: steadier than req/s when other work shares the machine.
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  CPU_US[$s]=$(echo "scale=1; ($cpu1 - $cpu0) * 1000000 / $(getconf CLK_TCK) / ${reqs:-1}" | bc)
  light=$(wrk_run "$LIGHT_CONNS" "http://127.0.0.1:$port/" "$OUT/abs.lua")
  LP50[$s]=$(field "$light" p50); LP99[$s]=$(field "$light" p99)
  half=$(( ${RPS[$s]:-0} / 2 ))
  if [ "$half" -gt 0 ]; then
    # nginx alone at the same rate, just before: what the proxy adds is the
    # difference. Each pair as "added p50_direct p99_direct p50_proxy p99_proxy".
    pairs=()
    for _ in $(seq "$HALF_RUNS"); do
      d=$(open_run "$half")
      o=$(open_run "$half" "$port")
      echo "   ½ peak via $s: $o (nginx alone: $(ofield "$d" p50_us) / $(ofield "$d" p99_us) µs)" >&2
      HERR[$s]=$(( ${HERR[$s]:-0} + $(ofield "$o" errors) ))
      pairs+=("$(( $(ofield "$o" p99_us) - $(ofield "$d" p99_us) )) $(ofield "$d" p50_us) $(ofield "$d" p99_us) $(ofield "$o" p50_us) $(ofield "$o" p99_us)")
    done
    sorted=$(printf '%s\n' "${pairs[@]}" | sort -n)
    read -r _ DP50[$s] DP99[$s] HP50[$s] HP99[$s] <<<"$(sed -n "$(( (HALF_RUNS + 1) / 2 ))p" <<<"$sorted")"
    HALL[$s]=$(printf '%s\n' "${pairs[@]}" | awk '{printf "%s%s", (NR > 1 ? ", " : ""), $1}')
    HRATE[$s]=$half
  fi
  TPUT[$s]=$(taskset -c "$CLIENT_CPU" curl -sk -x "http://127.0.0.1:$port" -o /dev/null -w '%{speed_download}' \
    "https://localhost:$ORIGIN_TLS_PORT/1g" | cut -d. -f1 || echo 0)
  # Idle connections: RSS before, and while IDLE connections are held open.
  before=$(rss_kib "$server_pid")
  exec {idle_fd}< <(taskset -c "$CLIENT_CPU" bash -c "$(declare -f idle_client); idle_client $port $IDLE")
  read -r -t 60 _ <&"$idle_fd" || true
  sleep 1
  after=$(rss_kib "$server_pid")
  exec {idle_fd}<&-
  IDLE_KIB[$s]=$(echo "scale=1; ($after - $before) / $IDLE" | bc)
  kill "$pid" 2>/dev/null || true
  # Squid and e2guardian leave children: stop each process this run started, by id.
  case $s in
    squid) for p in $(pgrep -f "squid.*$OUT/squid/squid.conf"); do kill "$p" 2>/dev/null || true; done ;;
    e2guardian) for p in $(pgrep -f "e2guardian -c $E2/e2guardian.conf"); do kill "$p" 2>/dev/null || true; done ;;
  esac
  wait "$pid" 2>/dev/null || true
  sleep 1
done

# ---- report ----
printf '\n| server | port open / filtering s | req/s (c=%s) | CPU µs/req | p50 µs | p99 µs | p50 µs (c=%s) | p99 µs (c=%s) | CONNECT MB/s | KiB/idle conn | ½-peak req/s (open loop) | p50/p99 µs at ½ peak | nginx alone p50/p99 µs at that rate | p99 added µs (median pair) | p99 added µs, every pair |\n' "$CONNS" "$LIGHT_CONNS" "$LIGHT_CONNS"
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
printf '| direct (nginx) | | %s | | | | %s | %s | %s | | | | | | |\n' "${RPS[direct]}" "${LP50[direct]}" "${LP99[direct]}" "$((${TPUT[direct]:-0} / 1000000))"
for s in $SERVERS; do
  [ -n "${RPS[$s]:-}" ] || continue
  added=""
  [ -n "${HP99[$s]:-}" ] && [ -n "${DP99[$s]:-}" ] && added=$(( HP99[$s] - DP99[$s] ))
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s | %s |\n' "$s" "${LOAD[$s]} / ${FILTERING[$s]}" "${RPS[$s]}" "${CPU_US[$s]}" "${P50[$s]}" "${P99[$s]}" \
    "${LP50[$s]}" "${LP99[$s]}" "$((${TPUT[$s]:-0} / 1000000))" "${IDLE_KIB[$s]}" "${HRATE[$s]:-}" "${HP50[$s]:-}" "${HP99[$s]:-}" "${DP50[$s]:-}" "${DP99[$s]:-}" "$added" "${HALL[$s]:-}"
done
