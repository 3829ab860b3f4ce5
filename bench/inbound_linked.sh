#!/usr/bin/env bash
# Inbound benchmark with reports that link (issue 11): how fast the feedback
# processor applies real bounces (token verified, recipient -> bounced,
# `email.bounced`, hard_bounce suppression), against the submission rate of
# the same binary in the same run. bench/inbound.sh's fixture carries a
# token that does not verify, so there the processor only parses and drops.
#
# Per run, on a fresh data dir:
#  1. trackrelay with `[inbound] process = false` (reports stored, not
#     processed) and `return_path = "bounces"` on example.com.
#     submission (timed): smtp-source -N -s 20 -m N -l LEN -f a@example.com
#       -t b@example.net, to the submission port: N messages to N distinct
#       recipients (-N numbers them), relayed meanwhile to Postfix's
#       smtp-sink -d, which records each delivery's envelope sender:
#       bounces+{token}@bounces.example.com, one per recipient.
#     Then (untimed) bench/inbound_dsn.py builds one RFC 3464 DSN per
#       delivery (Action: failed, Status: 5.1.1, from <> to that return
#       path) and sends the N of them to the inbound port; all N are stored
#       pending.
#  2. The relay is stopped and started again on the same data with
#     `process = true`. linked (timed): from the start of the process until
#     no report is pending (`processed_at IS NULL`), i.e. processing alone,
#     startup included: `seconds` runs to the last batch's `processed_at`
#     (the store's clock, not the 0.1 s polling; `poll_s` is what polling
#     saw); `steady_rate` counts between the first and the last batch
#     (startup and the first batch of 16 excluded). Checked afterwards: N recipients bounced, N
#     `email.bounced` events, N hard_bounce suppressions, N reports kept
#     with outcome bounced.
#  3. inbound (timed), on that same relay, as bench/inbound.sh measures it:
#     smtp-source -s 20 -m N -f '' -t bounces+bench@bounces.example.com -F
#     the Postfix DSN fixture (accepted/s; processed/s = parse + drop).
# Ratio printed: linked (processed reports/s) / submission (accepted msg/s).
# WEBHOOKS=1: the processing relay also has a [[webhooks]] endpoint for
# `email.bounced` (bench/inbound_hooks.py, 204 to every POST), so each
# bounce also writes its outbox row in the same transaction (system
# `linked+hooks`; checked: N outbox rows; hooks_s = until all were posted).
#
#   bench/inbound_linked.sh                                  # RUNS=3 MSGS=5000 SESS=20
#   RUNS=1 MSGS=500 QUIET_TIMEOUT=0 bench/inbound_linked.sh  # smoke
#
# Env: RUNS MSGS SESS LEN WARMUP=200 DSN_CONNS=8 PROCESS_TIMEOUT=300
#      STALL_TIMEOUT=15 DELIVER_TIMEOUT=300 PERF=1 (perf record -g of the
#      processing relay into the output dir; PERF_CALLGRAPH=dwarf for Rust
#      callers, default fp) WEBHOOKS=1
#      SINK_PORT IN_PORT TR_PORT TR_TRACK_PORT TR_API_PORT HOOK_PORT
#      QUIET_MAX_BUSY=15 QUIET_TIMEOUT=300 SKIP_BUILD=1 KEEP_WORK=1
# Needs: smtp-source and smtp-sink (apt-get install postfix), python3, sqlite3.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

FIXTURE=$ROOT/tests/fixtures/feedback/postfix_user_unknown.eml
MSGS=${MSGS:-5000}
SESS=${SESS:-20}
LEN=${LEN:-$(wc -c <"$FIXTURE")}
WARMUP=${WARMUP:-200}
DSN_CONNS=${DSN_CONNS:-8}
PROCESS_TIMEOUT=${PROCESS_TIMEOUT:-300}
STALL_TIMEOUT=${STALL_TIMEOUT:-15}
DELIVER_TIMEOUT=${DELIVER_TIMEOUT:-300}
PERF=${PERF:-0}
WEBHOOKS=${WEBHOOKS:-0}
HOOK_PORT=${HOOK_PORT:-18291}
SINK_PORT=${SINK_PORT:-14636}
IN_PORT=${IN_PORT:-14535}
TR_PORT=${TR_PORT:-14597}
TR_TRACK_PORT=${TR_TRACK_PORT:-18290}
TR_API_PORT=${TR_API_PORT:-18235}
RCPT=bounces+bench@bounces.example.com

for b in python3 ss sqlite3 cargo; do
  command -v $b >/dev/null || die "missing $b (apt-get install python3 iproute2 sqlite3; cargo from rustup)"
done
if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null; then
  log "smtp-source and smtp-sink are needed to drive this benchmark."
  postfix_hint; exit 2
fi
if [ "$PERF" = 1 ]; then command -v perf >/dev/null || die "PERF=1 needs perf"; fi

OUT=$ROOT/bench/out/inbound_linked-$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/trackrelay-bench-inbound-linked.XXXXXX)
trap bench_cleanup EXIT
# bench_cleanup alone would let the script run on after a signal, with its work dir gone.
trap 'bench_cleanup; exit 143' INT TERM
need_ports "$SINK_PORT" "$IN_PORT" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT"
[ "$WEBHOOKS" != 1 ] || need_ports "$HOOK_PORT"

build_release
"$REL/trackrelay" dkim-keygen --domain example.com --selector bench --out "$WORK/dkim.pem" >/dev/null
API_HASH=$(head -c 18 /dev/urandom | base64 | "$REL/trackrelay" hash-password)
DUMP=$WORK/dump
start_dump_sink "$SINK_PORT" "$WORK/sink.log" "$DUMP"
LINKED=linked
HOOKS=""
if [ "$WEBHOOKS" = 1 ]; then
  python3 "$BENCH_DIR/inbound_hooks.py" "127.0.0.1:$HOOK_PORT" >"$WORK/hooks.log" 2>&1 &
  HOOK_PID=$!
  bench_track "$HOOK_PID"
  wait_port "$HOOK_PORT" "$HOOK_PID" 10 || die "webhook receiver did not start"
  LINKED=linked+hooks
  HOOKS="
[[webhooks]]
url = \"http://127.0.0.1:$HOOK_PORT/hooks\"
secret = \"whsec_$(head -c 24 /dev/urandom | base64)\"
events = [\"email.bounced\"]"
fi

db() { sqlite3 -cmd ".timeout 10000" "$DB" "$1"; }
pending() { db "SELECT COUNT(*) FROM inbound_reports WHERE processed_at IS NULL"; }
now() { date +%s.%N; }
since() { python3 -c "import sys,time; print(round(time.time() - float(sys.argv[1]), 3))" "$1"; }
dumped() { find "$DUMP" -type f -name 'm.*' | wc -l; }

# wait_processed T0: until nothing is pending; prints the seconds since T0,
# or nothing when pending rows stop going away or time is up (bounded).
wait_processed() {
  local t0=$1 last n still=0 i
  last=$(pending)
  for ((i = 0; i < PROCESS_TIMEOUT * 10; i++)); do
    n=$(pending)
    if [ "$n" -eq 0 ]; then since "$t0"; return 0; fi
    if [ "$n" -lt "$last" ]; then still=0; last=$n; else still=$((still + 1)); fi
    if [ "$still" -ge $((STALL_TIMEOUT * 10)) ]; then
      log "$n reports still pending and none processed in ${STALL_TIMEOUT}s"
      return 0
    fi
    sleep 0.1
  done
  log "$n reports still pending after ${PROCESS_TIMEOUT}s"
}

# wait_delivered N: until N recipients are delivered and the sink dumped as
# many files as it should (bounded by DELIVER_TIMEOUT).
wait_delivered() {
  local want=$1 i d
  for ((i = 0; i < DELIVER_TIMEOUT * 10; i++)); do
    d=$(db "SELECT COUNT(*) FROM recipients WHERE status = 'delivered'")
    [ "$d" -ge "$want" ] && return 0
    sleep 0.1
  done
  die "only $d of $want recipients delivered after ${DELIVER_TIMEOUT}s ($(db "SELECT status, COUNT(*) FROM recipients GROUP BY status" | tr '\n' ' '))"
}

json_line() {          # json_line NAME T0 T1 RC N BUSY DURING ERRS: the timed-phase JSON line
  python3 - "$@" <<'PY'
import json, sys
name, t0, t1, rc, n, busy, during, errs = sys.argv[1:]
s = float(t1) - float(t0)
print(json.dumps({"system": name, "t0": float(t0), "seconds": round(s, 3), "rate": round(int(n) / s, 1),
                  "rc": int(rc), "stderr_lines": int(errs), "busy_before": int(busy), "busy_during": int(during)}))
PY
}

# source_run NAME ADDR N ARGS...: one timed smtp-source run after a quiet-box wait; prints a JSON line
source_run() {
  local name=$1 addr=$2 n=$3 busy t0 t1 rc=0 s during
  shift 3
  busy=$(quiet_wait)
  s=$(cpu_sample)
  t0=$(now)
  smtp-source -s "$SESS" -m "$n" "$@" "$addr" >/dev/null 2>"$WORK/source.err" || rc=$?
  t1=$(now)
  during=$(busy_since "$s")
  json_line "$name" "$t0" "$t1" "$rc" "$n" "$busy" "$during" "$(wc -l <"$WORK/source.err")"
  if [ -s "$WORK/source.err" ]; then head -3 "$WORK/source.err" >&2; fi
}

{
  echo "# inbound linked benchmark $(date -u +%FT%TZ) host=$(hostname) cores=$(nproc)"
  echo "# trackrelay $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') RUNS=$RUNS: smtp-source -s $SESS -m $MSGS -l $LEN -N to submission (sink=$SINK_KIND); $MSGS linked DSNs processed; smtp-source -F $(basename "$FIXTURE") ($(wc -c <"$FIXTURE") B) to inbound"
} | tee "$OUT/header.txt"

: >"$OUT/runs.jsonl"
ROUTES="\"example.net\" = \"127.0.0.1:$SINK_PORT\""
inbound_section() {    # inbound_section true|false
  printf '[inbound]\nlisten = ["127.0.0.1:%s"]\nmax_connections_per_ip = 1000\nprocess = %s\n' "$IN_PORT" "$1"
}
for i in $(seq "$RUNS"); do
  log "=== run $i/$RUNS"
  dir=$WORK/run-$i; mkdir -p "$dir/data"
  DB=$dir/data/trackrelay.sqlite3
  for p in false true; do
    extra=$(inbound_section $p)
    if [ "$p" = true ]; then extra+=$HOOKS; fi
    write_tr_config "$dir/process-$p.toml" "$dir/data" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT" "$WORK/dkim.pem" "$API_HASH" "$ROUTES" "$extra"
    # The return path of example.com is bounces.example.com: the MX accepts RCPT there.
    sed -i 's/^name = "example.com"$/&\nreturn_path = "bounces"/' "$dir/process-$p.toml"
    "$REL/trackrelay" check-config --config "$dir/process-$p.toml" >&2 || die "check-config failed"
  done
  find "$DUMP" -type f -delete

  # ---- 1. store only: submission (timed), deliveries recorded, DSNs stored (untimed)
  start_trackrelay "$dir/process-false.toml" "$TR_PORT" "$dir/trackrelay-store.log"
  wait_port "$IN_PORT" "$TR_PID" 30 || die "no inbound listener on $IN_PORT"
  if [ "$WARMUP" -gt 0 ]; then
    smtp-source -N -s "$SESS" -m "$WARMUP" -l "$LEN" -f a@example.com -t w@example.net "127.0.0.1:$TR_PORT" >/dev/null 2>&1 \
      || log "warm-up had errors"
    wait_delivered "$WARMUP"
    find "$DUMP" -type f -delete
  fi
  e0=$(db "SELECT COUNT(*) FROM emails")
  res=$(source_run submission "127.0.0.1:$TR_PORT" "$MSGS" -N -l "$LEN" -f a@example.com -t b@example.net)
  emails=$(( $(db "SELECT COUNT(*) FROM emails") - e0 ))
  echo "$(add_fields "$res" "stored_emails=$emails")" | tee -a "$OUT/runs.jsonl"
  wait_delivered $((WARMUP + MSGS))
  for _ in $(seq 100); do [ "$(dumped)" -ge "$MSGS" ] && break; sleep 0.1; done
  [ "$(dumped)" -eq "$MSGS" ] || die "the sink dumped $(dumped) deliveries, expected $MSGS"
  sent=$(python3 "$BENCH_DIR/inbound_dsn.py" "$DUMP" "127.0.0.1:$IN_PORT" --conns "$DSN_CONNS" --expect "$MSGS") \
    || die "sending the DSNs failed: $sent"
  log "DSNs sent (untimed): $sent"
  n=$(pending)
  [ "$n" -eq "$MSGS" ] || die "$n reports pending after sending $MSGS DSNs, expected $MSGS"
  stop_tracked "$TR_PID"

  # ---- 2. linked (timed): a relay that processes, started on the stored reports
  busy=$(quiet_wait)
  s=$(cpu_sample)
  t0=$(now)
  TRACKRELAY_LOG=${TRACKRELAY_LOG:-warn} "$REL/trackrelay" serve --config "$dir/process-true.toml" >"$dir/trackrelay.log" 2>&1 &
  TR_PID=$!
  bench_track "$TR_PID"
  if [ "$PERF" = 1 ]; then
    perf record --call-graph "${PERF_CALLGRAPH:-fp}" -q -p "$TR_PID" -o "$OUT/perf-linked-$i.data" >/dev/null 2>&1 &
    PERF_PID=$!
    bench_track "$PERF_PID"
  fi
  done_s=$(wait_processed "$t0")
  t1=$(now)
  during=$(busy_since "$s")
  cpu=$(proc_cpu_s "$TR_PID")
  if [ "$PERF" = 1 ]; then kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; untrack_pid "$PERF_PID"; fi
  [ -n "$done_s" ] || die "the processor did not finish (see $dir/trackrelay.log)"
  wait_port "$TR_PORT" "$TR_PID" 30 || die "trackrelay did not start"
  res=$(json_line "$LINKED" "$t0" "$t1" 0 "$MSGS" "$busy" "$during" 0)
  bounced=$(db "SELECT COUNT(*) FROM recipients WHERE status = 'bounced'")
  events=$(db "SELECT COUNT(*) FROM events WHERE type = 'email.bounced'")
  supp=$(db "SELECT COUNT(*) FROM suppressions WHERE reason = 'hard_bounce' AND scope = 'example.com'")
  kept=$(db "SELECT COUNT(*) FROM inbound_reports WHERE kind = 'dsn' AND json_extract(outcome, '$.outcome') = 'bounced' AND json_extract(outcome, '$.changed')")
  # When the processor's first and last batch committed, from the rows themselves.
  span=$(db "SELECT (MIN(processed_at) / 1000.0 - $t0) || ' ' || ((MAX(processed_at) - MIN(processed_at)) / 1000.0) FROM inbound_reports")
  read -r first_s span_s <<<"$span"
  # rate: from exec to the last batch's write (the rows' own clock, so the
  # 0.1 s polling adds nothing); poll_s: until the script saw none pending.
  last_s=$(python3 -c "print(round($first_s + $span_s, 3))")
  echo "$(add_fields "$res" "seconds=$last_s" "rate=$(python3 -c "print(round($MSGS / $last_s, 1))")" "poll_s=$done_s" \
    "steady_rate=$(python3 -c "print(round(($MSGS - 16) / $span_s, 1) if $span_s > 0 else 0)")" \
    "tr_cpu_s=$cpu" "first_commit_s=$(printf '%.3f' "$first_s")" "commit_span_s=$(printf '%.3f' "$span_s")" \
    "bounced=$bounced" "bounced_events=$events" "suppressions=$supp" "reports_bounced=$kept")" | tee -a "$OUT/runs.jsonl"
  if [ "$bounced" -ne "$MSGS" ] || [ "$events" -ne "$MSGS" ] || [ "$supp" -ne "$MSGS" ] || [ "$kept" -ne "$MSGS" ]; then
    die "expected $MSGS bounced recipients, email.bounced events, suppressions and bounced reports; got $bounced, $events, $supp, $kept"
  fi
  log "checked: $bounced recipients bounced, $events email.bounced events, $supp hard_bounce suppressions, $kept reports kept as bounced"
  if [ "$WEBHOOKS" = 1 ]; then
    rows=$(db "SELECT COUNT(*) FROM webhook_outbox")
    [ "$rows" -eq "$MSGS" ] || die "expected $MSGS webhook outbox rows, got $rows"
    # Posted before the next phase, so the worker does not load it.
    for ((k = 0; k < PROCESS_TIMEOUT * 10; k++)); do
      [ "$(db "SELECT COUNT(*) FROM webhook_outbox WHERE status != 'delivered'")" -eq 0 ] && break
      sleep 0.1
    done
    hooks_s=$(since "$t0")
    left=$(db "SELECT COUNT(*) FROM webhook_outbox WHERE status != 'delivered'")
    log "webhooks: $rows outbox rows, all but $left posted ${hooks_s}s after the relay started"
    echo "$(add_fields "$(tail -1 "$OUT/runs.jsonl")" "outbox_rows=$rows" "hooks_s=$hooks_s" "hooks_left=$left")" >"$OUT/last.json"
    sed -i '$d' "$OUT/runs.jsonl" && cat "$OUT/last.json" >>"$OUT/runs.jsonl" && rm "$OUT/last.json"
  fi

  # ---- 3. inbound accept (timed), as bench/inbound.sh, on the processing relay
  res=$(source_run inbound "127.0.0.1:$IN_PORT" "$MSGS" -f '' -t "$RCPT" -F "$FIXTURE")
  t0=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["t0"])' "$res")
  done_s=$(wait_processed "$t0")
  extra=()
  if [ -n "$done_s" ]; then
    extra+=("processed_seconds=$done_s" "processed_rate=$(python3 -c "print(round($MSGS / $done_s, 1))")")
  fi
  echo "$(add_fields "$res" "${extra[@]}")" | tee -a "$OUT/runs.jsonl"
  stop_tracked "$TR_PID"
done

{
  echo
  echo "## inbound linked summary: $MSGS per phase, $RUNS run(s); median and min-max"
  echo "## rate: submission = accepted msg/s; linked = reports/s processed (bounced + event + suppression), exec to last write; inbound = DSNs accepted/s (unlinked fixture)"
  python3 "$BENCH_DIR/summary.py" "$OUT/runs.jsonl" rate:rate/s steady_rate:steady/s processed_rate:unlinked_processed/s \
    seconds poll_s tr_cpu_s first_commit_s hooks_s busy_before busy_during stderr_lines \
    --ratio "$LINKED/submission:rate" --ratio inbound/submission:rate
  echo "(runs: $OUT/runs.jsonl)"
} | tee "$OUT/summary.txt"
