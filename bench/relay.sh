#!/usr/bin/env bash
# End-to-end relay benchmark (issues 5 and 6): the same generated 50 KB HTML
# newsletters (multipart/alternative, ~30 links), from examples/smtp_load with
# SESS concurrent sessions, into
#   (a) raw:       the sink directly (the ceiling of load tool + sink on this box)
#   (b) postfix:   a private Postfix instance relaying to the sink (no TLS, no
#                  rewriting, no signing; stock defaults otherwise)
#   (c) trackrelay: release build, click + open tracking, RSA-2048 DKIM,
#                  delivery.routes -> the sink
#   (d) trackrelay+webhooks (WEBHOOKS=1): (c) plus a [[webhooks]] endpoint with
#                  events ["*"] at examples/webhook_sink
# Per run and system: accept rate (messages / time until the load tool got every
# 250) and end-to-end rate (messages / time until the sink counted them all).
# Runs are interleaved (a b c d, a b c d, ...), each after a quiet-box wait.
# Afterwards: trackrelay's store has every recipient delivered, and one sample
# message (sent to a second, saving sink) carries a DKIM-Signature that
# verifies (dkimpy, if installed) and tracked links + the pixel.
#
#   bench/relay.sh                       # RUNS=3 MSGS=5000 SESS=20 SIZE=50000
#   RUNS=1 MSGS=500 bench/relay.sh       # smoke
#
# Env: RUNS MSGS SESS SIZE LINKS PER_CONN WARMUP WEBHOOKS=0|1 SKIP_POSTFIX=1 SKIP_RAW=1
#      TR_PER_DEST=20 (trackrelay's max_per_destination; Postfix's default is 20)
#      TR_DELIVERY_EXTRA='max_messages_per_connection = 10' (more keys for trackrelay's [delivery])
#      OWN_SINK=1 (use examples/smtp_sink instead of smtp-sink) PERF=1 (perf record trackrelay)
#      PERF_CALLGRAPH='--call-graph dwarf' (default -g: frame pointers, which most of the graph lacks)
#      ports: SINK_PORT PF_PORT TR_PORT TR_TRACK_PORT TR_API_PORT CHECK_PORT HOOK_PORT
#      QUIET_MAX_BUSY=15 QUIET_TIMEOUT=300 SKIP_BUILD=1 KEEP_WORK=1
# Output: a summary on stdout; JSON lines and logs in bench/out/relay-<time>/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MSGS=${MSGS:-5000}
SESS=${SESS:-20}
SIZE=${SIZE:-50000}
LINKS=${LINKS:-30}
PER_CONN=${PER_CONN:-1}
WARMUP=${WARMUP:-200}
WEBHOOKS=${WEBHOOKS:-0}
SKIP_RAW=${SKIP_RAW:-0}
SKIP_POSTFIX=${SKIP_POSTFIX:-0}
SINK_PORT=${SINK_PORT:-12626}
PF_PORT=${PF_PORT:-12525}
TR_PORT=${TR_PORT:-12587}
TR_TRACK_PORT=${TR_TRACK_PORT:-18080}
TR_API_PORT=${TR_API_PORT:-18025}
CHECK_PORT=${CHECK_PORT:-12627}
HOOK_PORT=${HOOK_PORT:-18099}
TIMEOUT=${TIMEOUT:-900}

for b in python3 ss curl sqlite3 cargo; do
  command -v $b >/dev/null || die "missing $b (apt-get install python3 iproute2 curl sqlite3; cargo from rustup)"
done
if [ "$SKIP_POSTFIX" != 1 ] && ! have_postfix; then
  log "SKIPPING the Postfix baseline:"; postfix_hint; SKIP_POSTFIX=1
fi
[ "$(id -u)" = 0 ] || { [ "$SKIP_POSTFIX" = 1 ] || { log "SKIPPING the Postfix baseline: a private Postfix instance needs root"; SKIP_POSTFIX=1; }; }

OUT=$ROOT/bench/out/relay-$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/trackrelay-bench-relay.XXXXXX)
chmod 755 "$WORK"   # Postfix daemons (user postfix) must reach their dirs in it
trap bench_cleanup EXIT INT TERM
need_ports "$SINK_PORT" "$PF_PORT" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT" "$CHECK_PORT" "$HOOK_PORT"

build_release --example smtp_load --example smtp_sink --example webhook_sink
LOAD=$REL/examples/smtp_load

# Keys and secrets for this run only (in $WORK, removed on exit).
"$REL/trackrelay" dkim-keygen --domain example.com --selector bench --out "$WORK/dkim.pem" >"$WORK/dkim.txt"
API_TOKEN=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
API_HASH=$(printf '%s\n' "$API_TOKEN" | "$REL/trackrelay" hash-password)
HOOK_SECRET="whsec_$(head -c 24 /dev/urandom | base64)"

start_sink "$SINK_PORT" "$WORK/sink.log"
log "sink: $SINK_KIND on 127.0.0.1:$SINK_PORT"
"$REL/examples/smtp_sink" --listen "127.0.0.1:$CHECK_PORT" --save-dir "$WORK/check" --save-max 5 >"$WORK/check-sink.log" 2>&1 &
bench_track $!
wait_port "$CHECK_PORT" $! 10 || die "check sink did not start"
if [ "$WEBHOOKS" = 1 ]; then
  "$REL/examples/webhook_sink" --listen "127.0.0.1:$HOOK_PORT" --secret "$HOOK_SECRET" >"$WORK/hooks.log" 2>&1 &
  HOOK_PID=$!
  bench_track "$HOOK_PID"
  wait_port "$HOOK_PORT" "$HOOK_PID" 10 || die "webhook sink did not start"
fi
if [ "$SKIP_POSTFIX" != 1 ]; then
  start_postfix "$WORK/postfix" "$PF_PORT" "$SINK_PORT"
  log "postfix $(postconf -c "$PF_CONF" -h mail_version) on 127.0.0.1:$PF_PORT (master $PF_MASTER)"
fi

LOADARGS=(--sessions "$SESS" --messages "$MSGS" --per-conn "$PER_CONN" --size "$SIZE" --links "$LINKS"
          --from news@example.com --to user@example.net --timeout "$TIMEOUT")
ROUTES="\"example.net\" = \"127.0.0.1:$SINK_PORT\", \"check.example.net\" = \"127.0.0.1:$CHECK_PORT\""

{
  echo "# relay benchmark $(date -u +%FT%TZ) host=$(hostname) cores=$(nproc) kernel=$(uname -r)"
  echo "# trackrelay $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') RUNS=$RUNS MSGS=$MSGS SESS=$SESS SIZE=$SIZE LINKS=$LINKS PER_CONN=$PER_CONN WARMUP=$WARMUP WEBHOOKS=$WEBHOOKS TR_PER_DEST=${TR_PER_DEST:-20} sink=$SINK_KIND"
  if [ "$SKIP_POSTFIX" != 1 ]; then echo "# postfix $(postconf -c "$PF_CONF" -h mail_version)"; fi
} | tee "$OUT/header.txt"

# measure NAME ADDR: one timed load against ADDR with e2e via the sink counter
measure() {
  local name=$1 addr=$2 busy s res
  busy=$(quiet_wait)
  s=$(cpu_sample)
  res=$("$LOAD" --addr "$addr" "${LOADARGS[@]}" --sink-counter "$WORK/sink.log") || true
  case $res in "{"*) ;; *) res='{"error": "the load tool failed"}' ;; esac
  res=$(add_fields "$res" "system=$name" "busy_before=$busy" "busy_during=$(busy_since "$s")")
  echo "$res"
}

warmup() {             # warmup ADDR: WARMUP messages, to the sink, untimed
  [ "$WARMUP" -gt 0 ] || return 0
  "$LOAD" --addr "$1" --sessions "$SESS" --messages "$WARMUP" --size "$SIZE" --links "$LINKS" \
    --from news@example.com --to user@example.net --sink-counter "$WORK/sink.log" --timeout 300 >/dev/null \
    || log "warm-up against $1 had failures"
}

hooks_received() { curl -s "http://127.0.0.1:$HOOK_PORT/count" | grep -o '"received":[0-9]*' | cut -d: -f2; }

# run_trackrelay NAME RUN EXTRA_CONFIG: a fresh trackrelay (own data dir) per run
run_trackrelay() {
  local name=$1 i=$2 extra=${3:-} dir=$WORK/$1-$2
  mkdir -p "$dir"
  write_tr_config "$dir/config.toml" "$dir/data" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT" \
    "$WORK/dkim.pem" "$API_HASH" "$ROUTES" "$extra"
  start_trackrelay "$dir/config.toml" "$TR_PORT" "$dir/trackrelay.log"
  warmup "127.0.0.1:$TR_PORT"
  local hooks_base=0 cpu0 perf_pid=
  if [ "$WEBHOOKS" = 1 ] && [ "$name" = trackrelay+webhooks ]; then
    # the warm-up's webhooks first, so they do not count in this run
    local want=$((2 * WARMUP)) k
    for k in $(seq 600); do
      hooks_base=$(hooks_received)
      [ "$hooks_base" -ge "$((HOOKS_SEEN + want))" ] && break; sleep 0.1
    done
  fi
  cpu0=$(proc_cpu_s "$TR_PID")
  local ctxt0
  ctxt0=$(proc_ctxt "$TR_PID")
  if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
    perf record ${PERF_CALLGRAPH:--g} -o "$OUT/perf-$name-$i.data" -p "$TR_PID" >/dev/null 2>&1 &
    perf_pid=$!
    bench_track "$perf_pid"
  fi
  local t0 res
  t0=$(date +%s.%N)
  res=$(measure "$name" "127.0.0.1:$TR_PORT")
  local cpu1
  cpu1=$(proc_cpu_s "$TR_PID")
  res=$(add_fields "$res" "ctxt_per_msg=$(awk -v a="$ctxt0" -v b="$(proc_ctxt "$TR_PID")" -v n="$MSGS" 'BEGIN{printf "%.1f", (b-a)/n}')")
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; untrack_pid "$perf_pid"; fi
  res=$(add_fields "$res" "tr_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.2f", b-a}')")
  if [ "$WEBHOOKS" = 1 ] && [ "$name" = trackrelay+webhooks ]; then
    # every message makes email.sent + email.delivered
    local want=$((hooks_base + 2 * MSGS)) got=0 k hook_s=""
    for k in $(seq $((TIMEOUT * 10))); do
      got=$(hooks_received)
      if [ "$got" -ge "$want" ]; then hook_s=$(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN{printf "%.3f", t1-t0}'); break; fi
      sleep 0.1
    done
    HOOKS_SEEN=$got
    res=$(add_fields "$res" "webhooks=$((got - hooks_base))" "webhooks_s=${hook_s:-timeout}" \
          "webhooks_rate=$(awk -v n="$MSGS" -v s="$hook_s" 'BEGIN{ if (s > 0) printf "%.1f", n/s; else print "n/a" }')")
  fi
  # outbound SMTP sessions (warm-up included): messages per connection to the sink
  local sessions
  sessions=$(curl -s -H "Authorization: Bearer $API_TOKEN" "http://127.0.0.1:$TR_API_PORT/metrics" \
    | awk '/^trackrelay_tls_policy_sessions_total/ {n += $NF} END {print n + 0}')
  res=$(add_fields "$res" "out_sessions=$sessions")
  # correctness: every recipient delivered (warm-up included)
  local st
  st=$(sqlite3 "$dir/data/trackrelay.sqlite3" "SELECT status || '=' || COUNT(*) FROM recipients GROUP BY status" 2>&1 | paste -sd' ')
  res=$(add_fields "$res" "store=${st// /,}")
  echo "$res" | tee -a "$OUT/runs.jsonl"
  echo "# $name run $i store: $st (expected delivered=$((MSGS + WARMUP)))" >&2
  LAST_TR_DIR=$dir
  stop_tracked "$TR_PID"
}

HOOKS_SEEN=0
: >"$OUT/runs.jsonl"
for i in $(seq "$RUNS"); do
  log "=== run $i/$RUNS"
  if [ "$SKIP_RAW" != 1 ]; then
    warmup "127.0.0.1:$SINK_PORT"
    measure raw "127.0.0.1:$SINK_PORT" | tee -a "$OUT/runs.jsonl"
  fi
  if [ "$SKIP_POSTFIX" != 1 ]; then
    warmup "127.0.0.1:$PF_PORT"; pf_wait_empty || true
    res=$(measure postfix "127.0.0.1:$PF_PORT")
    pf_wait_empty || true
    echo "$res" | tee -a "$OUT/runs.jsonl"
  fi
  run_trackrelay trackrelay "$i"
  if [ "$WEBHOOKS" = 1 ]; then
    run_trackrelay trackrelay+webhooks "$i" "
[[webhooks]]
url = \"http://127.0.0.1:$HOOK_PORT/hooks\"
secret = \"$HOOK_SECRET\"
events = [\"*\"]"
  fi
done

# ---------------------------------------------------------------- sample check
log "sample check: one message through trackrelay to the saving sink"
dir=$WORK/check; mkdir -p "$dir"
write_tr_config "$dir/config.toml" "$dir/data" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT" "$WORK/dkim.pem" "$API_HASH" "$ROUTES"
start_trackrelay "$dir/config.toml" "$TR_PORT" "$dir/trackrelay.log"
"$LOAD" --addr "127.0.0.1:$TR_PORT" --sessions 1 --messages 1 --size "$SIZE" --links "$LINKS" \
  --from news@example.com --to check@check.example.net --timeout 60 >/dev/null || log "sample message not accepted"
for _ in $(seq 200); do [ -s "$WORK/check/msg-0001.eml" ] && break; sleep 0.1; done
CHECK=$(python3 "$BENCH_DIR/check_message.py" "$WORK/check/msg-0001.eml" "$WORK/dkim.txt" "$LINKS" 2>&1) || true
echo "$CHECK" | tee "$OUT/sample-check.txt"
stop_tracked "$TR_PID"
if [ "$WEBHOOKS" = 1 ]; then curl -s "http://127.0.0.1:$HOOK_PORT/count" | tee "$OUT/webhook-sink-count.json"; fi

# ---------------------------------------------------------------- summary
{
  echo
  echo "## relay summary: $MSGS msgs x ${SIZE} B, $SESS sessions, $RUNS run(s); median and min-max (msg/s)"
  python3 "$BENCH_DIR/summary.py" "$OUT/runs.jsonl" rate:accept/s e2e_rate:e2e/s data_reply_ms_p99:250_p99_ms \
    webhooks_s:all_hooks_s tr_cpu_s:tr_cpu_s busy_before busy_during failed \
    --ratio trackrelay/postfix:rate --ratio trackrelay/postfix:e2e_rate --ratio trackrelay/raw:e2e_rate \
    --ratio trackrelay+webhooks/postfix:rate --ratio trackrelay+webhooks/postfix:e2e_rate
  if [ "$SKIP_POSTFIX" != 1 ]; then
    echo "postfix maillog: sent=$(grep -c 'status=sent' "$WORK/postfix/maillog" || true)" \
         "deferred=$(grep -c 'status=deferred' "$WORK/postfix/maillog" || true)" \
         "bounced=$(grep -c 'status=bounced' "$WORK/postfix/maillog" || true)"
  fi
  echo "sample: $(echo "$CHECK" | tail -1)"
  echo "(runs: $OUT/runs.jsonl)"
} | tee "$OUT/summary.txt"
