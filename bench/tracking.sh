#!/usr/bin/env bash
# Tracking listener benchmark (issues 4 and 9): wrk against trackrelay's click
# redirect and open pixel with VALID tokens, beside nginx answering a static
# 302 / empty_gif (the ceiling), in the same run, interleaved, each after a
# quiet-box wait. Three scenarios, nginx getting the very same request lines:
#   click  RCPTS x LINKS distinct click tokens (10,000 by default, made with
#          `trackrelay preview --no-sign`), every request from a client of its
#          own (a User-Agent numbered per request): no hit repeats another, so
#          none is folded and this measures how fast clicks are recorded;
#   open   the same for RCPTS open tokens (OPEN=1);
#   one    one click URL from one client (wrk without a script): a link
#          fetched in a loop, which the flood rule folds (ONE=1).
# After each trackrelay run (once the recorder has flushed) it checks, from
# the deltas of /metrics and of the events table:
#   stored + aggregated = answered   (answered = trackrelay_clicks_total +
#                                     trackrelay_opens_total; aggregated =
#                                     trackrelay_tracking_hits_aggregated_total)
#   trackrelay_event_queue_overflow_total = 0, _events_store_failed_total = 0
# wrk does not count responses still in flight when it stops (at most one per
# connection), so answered >= wrk's count is expected.
#
#   bench/tracking.sh                                  # RUNS=3 DUR=15s CONNS=64 THREADS=2
#   RUNS=1 DUR=5s bench/tracking.sh                    # smoke
#
# Env: RUNS DUR CONNS THREADS RCPTS=100 LINKS=100 OPEN=1 ONE=1 SKIP_NGINX=1
#      NGINX_PORT TR_PORT TR_TRACK_PORT TR_API_PORT PERF=1 (perf record trackrelay)
#      QUIET_MAX_BUSY=15 QUIET_TIMEOUT=300 SKIP_BUILD=1 KEEP_WORK=1
# Needs: wrk (apt-get install wrk), nginx for the baseline (apt-get install nginx-light),
#        curl, sqlite3, python3.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DUR=${DUR:-15s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
RCPTS=${RCPTS:-100}
LINKS=${LINKS:-100}
OPEN=${OPEN:-1}
ONE=${ONE:-1}
SKIP_NGINX=${SKIP_NGINX:-0}
NGINX_PORT=${NGINX_PORT:-18088}
TR_PORT=${TR_PORT:-14587}
TR_TRACK_PORT=${TR_TRACK_PORT:-18280}
TR_API_PORT=${TR_API_PORT:-18225}
HOST_HDR=links.example.com

for b in python3 ss curl sqlite3 cargo; do
  command -v $b >/dev/null || die "missing $b (apt-get install python3 iproute2 curl sqlite3; cargo from rustup)"
done
command -v wrk >/dev/null || die "missing wrk: apt-get install wrk"
if [ "$SKIP_NGINX" != 1 ] && ! command -v nginx >/dev/null; then
  log "SKIPPING the nginx baseline: nginx is not installed (apt-get install nginx-light;"
  log "  in a container whose policy-rc.d forbids starting services it installs without starting one)"
  SKIP_NGINX=1
fi

OUT=$ROOT/bench/out/tracking-$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/trackrelay-bench-tracking.XXXXXX)
trap bench_cleanup EXIT INT TERM
need_ports "$NGINX_PORT" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT"

build_release

# ---------------------------------------------------------------- trackrelay
API_TOKEN=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
API_HASH=$(printf '%s\n' "$API_TOKEN" | "$REL/trackrelay" hash-password)
"$REL/trackrelay" dkim-keygen --domain example.com --selector bench --out "$WORK/dkim.pem" >/dev/null
write_tr_config "$WORK/config.toml" "$WORK/data" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT" \
  "$WORK/dkim.pem" "$API_HASH" "\"example.net\" = \"127.0.0.1:9\""
start_trackrelay "$WORK/config.toml" "$TR_PORT" "$WORK/trackrelay.log"
wait_port "$TR_TRACK_PORT" "$TR_PID" 10 || die "tracking listener not up"
DB=$WORK/data/trackrelay.sqlite3

# Tokens: one HTML message with LINKS links, previewed for RCPTS recipients
# (each preview is a new email id, so every token is distinct).
{
  printf 'From: News <news@example.com>\nTo: user@example.net\nSubject: tokens\nMIME-Version: 1.0\n'
  printf 'Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n<html><body>\n'
  for l in $(seq "$LINKS"); do
    printf '<p><a href="https://www.example.org/products/%d?utm_source=news&amp;utm_campaign=spring">item %d</a></p>\n' "$l" "$l"
  done
  printf '</body></html>\n'
} >"$WORK/links.eml"
: >"$WORK/click.paths"; : >"$WORK/open.paths"
for r in $(seq "$RCPTS"); do
  "$REL/trackrelay" preview --no-sign --config "$WORK/config.toml" --rcpt "user$r@example.net" \
    <"$WORK/links.eml" 2>/dev/null >"$WORK/preview.eml"
  grep -o '/v1/track/click/[A-Za-z0-9_-]*' "$WORK/preview.eml" >>"$WORK/click.paths" || true
  grep -o '/v1/track/open/[A-Za-z0-9_-]*' "$WORK/preview.eml" >>"$WORK/open.paths" || true
done
NCLICK=$(sort -u "$WORK/click.paths" | wc -l); NOPEN=$(sort -u "$WORK/open.paths" | wc -l)
[ "$NCLICK" -ge "$LINKS" ] || die "preview gave only $NCLICK click tokens (see $WORK/preview.eml)"
one=$(head -1 "$WORK/click.paths")
head -1 "$WORK/click.paths" >"$WORK/one.paths"
check=$(curl -s -o /dev/null -H "Host: $HOST_HDR" -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$TR_TRACK_PORT$one")
[ "${check%% *}" = 302 ] || die "a valid token did not get 302 (got: $check)"
bad=$(curl -s -o /dev/null -H "Host: $HOST_HDR" -w '%{http_code}' "http://127.0.0.1:$TR_TRACK_PORT${one%?}A")
log "tokens: $NCLICK click, $NOPEN open; check: $check; tampered token: $bad"

cat >"$WORK/paths.lua" <<'EOF'
-- cycles through the request paths in $PATHS (one per line), each thread
-- from its own offset, with the tracking host's Host header and a
-- User-Agent numbered per request: every request is a client of its own, so
-- no hit repeats an earlier one and none is folded. The fixed part of each
-- request is formatted once in init(); per request only the number is
-- appended (building whole requests in Lua costs wrk more than the fastest
-- server's answer).
local paths = {}
for line in io.lines(os.getenv("PATHS")) do paths[#paths + 1] = line end
local host = os.getenv("HOST_HDR")
local heads, n, i, c = {}, 0, 0, 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("start", math.random(1, #paths))
  thread:set("tid", threads)
end
function init(args)
  for k, p in ipairs(paths) do
    heads[k] = "GET " .. p .. " HTTP/1.1\r\nHost: " .. host
      .. "\r\nUser-Agent: Mozilla/5.0 (bench; client " .. (tid or 0) .. "-"
  end
  n = #heads
  i = start or 0
end
function request()
  i = i + 1
  if i > n then i = 1 end
  c = c + 1
  return heads[i] .. c .. ")\r\n\r\n"
end
EOF

# ---------------------------------------------------------------- nginx
if [ "$SKIP_NGINX" != 1 ]; then
  mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  access_log off;
  keepalive_requests 1000000;
  server_tokens off;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /v1/track/click/ { return 302 https://example.com/; }
    location /v1/track/open/ { empty_gif; add_header Cache-Control no-store; }
  }
}
EOF
  nginx -t -q -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" || die "nginx -t failed"
  nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
  NGINX_PID=$!
  bench_track "$NGINX_PID" nginx
  wait_port "$NGINX_PORT" "$NGINX_PID" 10 || die "nginx did not start"
fi

{
  echo "# tracking benchmark $(date -u +%FT%TZ) host=$(hostname) cores=$(nproc)"
  echo "# trackrelay $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') RUNS=$RUNS wrk -t$THREADS -c$CONNS -d$DUR --latency; tokens: $NCLICK click, $NOPEN open"
  if [ "$SKIP_NGINX" != 1 ]; then echo "# $(nginx -v 2>&1), worker_processes auto, access_log off"; fi
} | tee "$OUT/header.txt"

# metric NAME: a counter from the admin API's /metrics; empty when the API is not there
metric() {
  { curl -sf -H "Authorization: Bearer $API_TOKEN" "http://127.0.0.1:$TR_API_PORT/metrics" 2>/dev/null || true; } \
    | awk -v n="$1" '$1 == n {print $2}'
}
stored() { sqlite3 "$DB" "SELECT COUNT(*) FROM events WHERE type IN ('email.clicked', 'email.opened')"; }

parse_wrk() {          # parse_wrk FILE: JSON with rps, requests, p50/p99 (ms), errors
  python3 - "$1" <<'PY'
import json, re, sys
t = open(sys.argv[1]).read()
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
lat = {p: round(float(v) * unit[u], 3) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", t, re.M)}
req = re.search(r"(\d+) requests in", t)
rps = re.search(r"Requests/sec:\s+([\d.]+)", t)
non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
sock = re.search(r"Socket errors:(.*)", t)
print(json.dumps({"rps": float(rps.group(1)) if rps else None, "requests": int(req.group(1)) if req else None,
                  "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
                  "non_2xx_3xx": int(non.group(1)) if non else 0,
                  "socket_errors": sock.group(1).strip() if sock else ""}))
PY
}

# wrk_run NAME PORT PATHS [static]: one measured wrk run, prints a JSON line; with
# "static", wrk sends the first path only, without a Lua script: one URL, one client
wrk_run() {
  local name=$1 port=$2 paths=$3 busy s
  busy=$(quiet_wait)
  s=$(cpu_sample)
  if [ "${4:-}" = static ]; then
    wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency -H "Host: $HOST_HDR" \
      "http://127.0.0.1:$port$(head -1 "$paths")" >"$OUT/wrk-$name-$RUN.txt" 2>&1 || true
  else
    PATHS=$paths HOST_HDR=$HOST_HDR wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency -s "$WORK/paths.lua" \
      "http://127.0.0.1:$port" >"$OUT/wrk-$name-$RUN.txt" 2>&1 || true
  fi
  add_fields "$(parse_wrk "$OUT/wrk-$name-$RUN.txt")" "system=$name" "busy_before=$busy" "busy_during=$(busy_since "$s")"
}

# answered: valid hits the server counted (clicks + opens)
answered() {
  local c o
  c=$(metric trackrelay_clicks_total); o=$(metric trackrelay_opens_total)
  if [ -n "$c" ] && [ -n "$o" ]; then echo $((c + o)); fi
}

# tr_run KIND (click|open|one): trackrelay run plus the event accounting
tr_run() {
  local kind=$1 res a0 e0 g0 o0 f0 a1 e1 g1 o1 f1 cpu0 cpu1 perf_pid= prev=-1 k static=
  [ "$kind" = one ] && static=static
  a0=$(answered); e0=$(stored); g0=$(metric trackrelay_tracking_hits_aggregated_total)
  o0=$(metric trackrelay_event_queue_overflow_total); f0=$(metric trackrelay_events_store_failed_total)
  [ -n "$a0" ] && [ -n "$g0" ] && [ -n "$o0" ] && [ -n "$f0" ] \
    || die "no tracking counters from /metrics on port $TR_API_PORT"
  cpu0=$(proc_cpu_s "$TR_PID")
  if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
    perf record -g -o "$OUT/perf-$kind-$RUN.data" -p "$TR_PID" >/dev/null 2>&1 &
    perf_pid=$!; bench_track "$perf_pid"
  fi
  res=$(wrk_run "trackrelay-$kind" "$TR_TRACK_PORT" "$WORK/$kind.paths" $static)
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; untrack_pid "$perf_pid"; fi
  cpu1=$(proc_cpu_s "$TR_PID")
  # The recorder commits every 100 ms, and a full queue takes a few commits to
  # drain: wait (bounded, 60 s) until every answered hit is stored or
  # aggregated, or the stored count has not grown for 2 s.
  for k in $(seq 120); do
    sleep 0.5
    a1=$(answered); e1=$(stored); g1=$(metric trackrelay_tracking_hits_aggregated_total)
    [ $((e1 - e0 + g1 - g0)) -ge $((a1 - a0)) ] && break
    if [ $((k % 4)) = 0 ]; then
      [ "$e1" = "$prev" ] && break
      prev=$e1
    fi
  done
  a1=$(answered); e1=$(stored); g1=$(metric trackrelay_tracking_hits_aggregated_total)
  o1=$(metric trackrelay_event_queue_overflow_total); f1=$(metric trackrelay_events_store_failed_total)
  add_fields "$res" "tr_cpu_s=$(python3 -c "print(round($cpu1 - $cpu0, 2))")" \
    "answered=$((a1 - a0))" "stored=$((e1 - e0))" "aggregated=$((g1 - g0))" \
    "overflow=$((o1 - o0))" "store_failed=$((f1 - f0))" \
    "missing=$((a1 - a0 - (e1 - e0) - (g1 - g0)))" "scenario=$kind"
}

: >"$OUT/runs.jsonl"
KINDS=(click)
if [ "$OPEN" = 1 ]; then KINDS+=(open); fi
if [ "$ONE" = 1 ]; then KINDS+=(one); fi
for RUN in $(seq "$RUNS"); do
  log "=== run $RUN/$RUNS"
  for kind in "${KINDS[@]}"; do
    static=
    [ "$kind" = one ] && static=static
    if [ "$SKIP_NGINX" != 1 ]; then
      wrk_run "nginx-$kind" "$NGINX_PORT" "$WORK/$kind.paths" $static | tee -a "$OUT/runs.jsonl"
    fi
    tr_run "$kind" | tee -a "$OUT/runs.jsonl"
  done
done

{
  echo
  echo "## tracking summary: wrk -t$THREADS -c$CONNS -d$DUR, $RUNS run(s); median and min-max"
  python3 "$BENCH_DIR/summary.py" "$OUT/runs.jsonl" rps:req/s p99_ms p50_ms non_2xx_3xx busy_before busy_during tr_cpu_s \
    --ratio trackrelay-click/nginx-click:rps --ratio trackrelay-open/nginx-open:rps \
    --ratio trackrelay-one/nginx-one:rps
  echo "(click/open: $NCLICK/$NOPEN distinct tokens, a client of its own per request; one: one URL, one client)"
  echo "(runs: $OUT/runs.jsonl; raw wrk output beside it)"
  echo "accounting per trackrelay run (answered = valid clicks + opens the server counted):"
  python3 - "$OUT/runs.jsonl" <<'PY'
import json, sys
bad = 0
for l in open(sys.argv[1]):
    r = json.loads(l)
    if not r.get("system", "").startswith("trackrelay-"):
        continue
    ok = r["missing"] == 0 and r["overflow"] == 0 and r["store_failed"] == 0
    bad += not ok
    print(f"  {r['scenario']:5} wrk={r['requests']} answered={r['answered']} stored={r['stored']} "
          f"aggregated={r['aggregated']} overflow={r['overflow']} store_failed={r['store_failed']} "
          f"answered-stored-aggregated={r['missing']}: {'OK' if ok else 'HITS LOST'}")
print("verdict:", "stored + aggregated = answered, overflow 0, in every run" if bad == 0
      else f"{bad} run(s) FAILED")
sys.exit(1 if bad else 0)
PY
} | tee "$OUT/summary.txt"
