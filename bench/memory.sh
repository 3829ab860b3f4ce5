#!/usr/bin/env bash
# Peak RSS of trackrelay under connection and submission load (issue 9).
#
#   bench/memory.sh [idle] [auth] [data]      (default: all three)
#
# Each scenario starts a fresh release binary and prints one JSON line with
# the process's peak RSS (VmHWM from /proc/PID/status) in MB:
#   idle  1,000 idle SMTP sessions (banner + EHLO, then nothing)   target <= 64 MB
#   auth  150 AUTH PLAIN attempts at once with wrong passwords, from 50
#         loopback addresses (127.0.0.2..51; 3 connections each), each for
#         its own user name so every attempt costs an argon2 check    target <= 128 MB
#   data  50 clients each sending a 20 MB message while a backlog of
#         5,000 messages (10 KB) is delivered to a sink                target <= 512 MB
#
# Variables: SMTP_PORT (2597), TRACK_PORT (2598), API_PORT (2599),
# SINK_PORT (2596); IDLE (1000), AUTHS (150), SOURCES (50), BACKLOG (5000),
# BIG (50), BIG_SIZE (20000000); SKIP_BUILD=1; KEEP_WORK=1.
# BASELINE=/path/to/an/older/trackrelay also runs the idle and auth
# scenarios with that binary, right after this one's, for comparison.
# Everything listens on 127.0.0.1; every process started is stopped by PID.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

SMTP_PORT=${SMTP_PORT:-2597}
TRACK_PORT=${TRACK_PORT:-2598}
API_PORT=${API_PORT:-2599}
SINK_PORT=${SINK_PORT:-2596}
IDLE=${IDLE:-1000}
AUTHS=${AUTHS:-150}
SOURCES=${SOURCES:-50}
BACKLOG=${BACKLOG:-5000}
BIG=${BIG:-50}
BIG_SIZE=${BIG_SIZE:-20000000}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(idle auth data)

WORK=$(mktemp -d /tmp/trackrelay-bench-memory-XXXXXX)
trap bench_cleanup EXIT INT TERM
need_ports "$SMTP_PORT" "$TRACK_PORT" "$API_PORT" "$SINK_PORT"

build_release
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release -j "${JOBS:-2}" --example conn_load --example smtp_load --example smtp_sink) >&2 \
    || die "cargo build of the examples failed"
fi
EX=$REL/examples
HASH=$(printf 'correct horse battery staple\n' | "$REL/trackrelay" hash-password)

# write_config FILE EXTRA_SUBMISSION_KEYS EXTRA_DELIVERY_KEYS
write_config() {
  cat >"$1" <<EOF
[server]
hostname = "relay.bench.test"
data_dir = "$WORK/data"
shutdown_grace = "10s"

[submission]
listen = ["127.0.0.1:$SMTP_PORT"]
listen_tls = []
plaintext_auth_networks = ["127.0.0.0/8"]
max_connections = 2000
max_connections_per_ip = 1100
max_message_size = 26214400
$2

[[submission.users]]
name = "app"
password_hash = "$HASH"
domains = ["example.com"]

[tracking]
listen = ["127.0.0.1:$TRACK_PORT"]
scheme = "http"

[[domains]]
name = "example.com"

[delivery]
routes = { "example.net" = "127.0.0.1:$SINK_PORT" }
$3

[api]
listen = ["127.0.0.1:$API_PORT"]
EOF
}

hwm_mb() { awk '/^VmHWM:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status"; }

# report SCENARIO TARGET_MB PID 'JSON fields'
report() {
  local hwm
  hwm=$(hwm_mb "$3")
  local ok=false
  awk -v h="$hwm" -v t="$2" 'BEGIN { exit !(h <= t) }' && ok=true
  echo "{\"scenario\": \"$1\", \"binary\": \"$LABEL\", \"peak_rss_mb\": $hwm, \"target_mb\": $2, \"within_target\": $ok, \"date\": \"$(date -u +%FT%TZ)\", $4}"
}

start_relay() { # start_relay LOG
  TRACKRELAY_LOG=${TRACKRELAY_LOG:-warn} "$BIN" serve --config "$WORK/config.toml" >"$1" 2>&1 &
  TR_PID=$!
  bench_track "$TR_PID"
  wait_port "$SMTP_PORT" "$TR_PID" 60 || { tail -20 "$1" >&2; die "trackrelay did not start"; }
}

scenario_idle() {
  rm -rf "$WORK/data"
  write_config "$WORK/config.toml" "" ""
  start_relay "$WORK/idle.log"
  "$EX/conn_load" idle --addr "127.0.0.1:$SMTP_PORT" --count "$IDLE" --hold 300 >"$WORK/idle.out" &
  local load=$!
  bench_track "$load"
  local i
  for ((i = 0; i < 1200; i++)); do
    grep -q '"open"' "$WORK/idle.out" 2>/dev/null && break
    kill -0 "$load" 2>/dev/null || break
    sleep 0.1
  done
  local opened
  opened=$(cat "$WORK/idle.out")
  [ -n "$opened" ] || die "the idle clients did not open their sessions in 120 s"
  report idle 64 "$TR_PID" "\"sessions\": $IDLE, \"clients\": $opened"
  stop_tracked "$load"
  stop_tracked "$TR_PID"
}

scenario_auth() {
  rm -rf "$WORK/data"
  write_config "$WORK/config.toml" "" ""
  start_relay "$WORK/auth.log"
  local out
  out=$(timeout 600 "$EX/conn_load" auth --addr "127.0.0.1:$SMTP_PORT" --count "$AUTHS" \
    --sources "$SOURCES" --first 127.0.0.2 --user guess --pass wrong --distinct-users --timeout 500)
  report auth 128 "$TR_PID" "\"attempts\": $AUTHS, \"addresses\": $SOURCES, \"clients\": $out"
  stop_tracked "$TR_PID"
}

sink_count() { grep -o 'mesg=[0-9]*' "$WORK/sink.log" 2>/dev/null | tail -1 | cut -d= -f2; }

scenario_data() {
  rm -rf "$WORK/data"
  # Phase 1: queue the backlog while the sink is down (deliveries fail fast
  # and come due again every 5 s); then restart, so the peak measured is
  # the delivery of the backlog and the big submissions only.
  write_config "$WORK/config.toml" 'trusted_networks = ["127.0.0.0/8"]' 'retry = ["5s"]
expire_after = "1d"'
  start_relay "$WORK/data1.log"
  log "queueing a backlog of $BACKLOG messages"
  timeout 900 "$EX/smtp_load" --addr "127.0.0.1:$SMTP_PORT" --sessions 20 --messages "$BACKLOG" \
    --size 10000 --links 5 --timeout 850 >"$WORK/backlog.json" || die "queueing the backlog failed: $(cat "$WORK/backlog.json")"
  stop_tracked "$TR_PID"
  start_sink "$SINK_PORT" "$WORK/sink.log"
  start_relay "$WORK/data2.log"
  log "sending $BIG messages of $BIG_SIZE bytes while the backlog is delivered"
  local big
  big=$(timeout 900 "$EX/smtp_load" --addr "127.0.0.1:$SMTP_PORT" --sessions "$BIG" --messages "$BIG" \
    --size "$BIG_SIZE" --links 5 --timeout 850 || true)
  # Messages refused with 452 4.3.1 (the in-flight data budget) are the
  # client's to retry; wait for what was accepted.
  local accepted
  accepted=$(printf '%s' "${big:-}" | sed -n 's/.*"accepted":\([0-9]*\).*/\1/p')
  local want=$((BACKLOG + ${accepted:-$BIG})) i n=0
  for ((i = 0; i < 6000; i++)); do # at most 10 minutes
    n=$(sink_count)
    [ "${n:-0}" -ge "$want" ] && break
    kill -0 "$TR_PID" 2>/dev/null || break
    sleep 0.1
  done
  report data 512 "$TR_PID" "\"backlog\": $BACKLOG, \"big_messages\": $BIG, \"big_size\": $BIG_SIZE, \"delivered_to_sink\": ${n:-0}, \"expected_at_sink\": $want, \"big_clients\": ${big:-null}"
  stop_tracked "$TR_PID"
  stop_tracked "$SINK_PID"
}

log "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo); shared and busy: figures are indicative"
for s in "${SCENARIOS[@]}"; do
  case $s in
    idle | auth | data) ;;
    *) die "unknown scenario $s (idle, auth, data)" ;;
  esac
  BIN=$REL/trackrelay LABEL=this
  "scenario_$s"
  if [ -n "${BASELINE:-}" ] && [ "$s" != data ]; then
    BIN=$BASELINE LABEL=baseline
    "scenario_$s"
  fi
done
