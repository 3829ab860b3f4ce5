#!/usr/bin/env bash
# Inbound benchmark (issue 11): reports per second the return-path MX
# ([inbound]) accepts, against the submission rate of the same binary in the
# same run. Postfix's smtp-source drives both with 20 concurrent sessions:
#   inbound:    smtp-source -s 20 -m N -f '' -t bounces+bench@bounces.example.com -F DSN  ADDR
#   submission: smtp-source -s 20 -m N -l LEN -f a@example.com -t b@example.net         ADDR
# DSN is Postfix's "User unknown" bounce from tests/fixtures/feedback
# (~1.3 KB); LEN defaults to the same size, so both store messages of the
# same length with a durable (fsync'ed group commit) 250. Submission relays
# what it accepts to a sink meanwhile, as in submission.sh.
#
# After each inbound measurement the script also waits (at most
# PROCESS_TIMEOUT s) until no report is pending
# (`SELECT COUNT(*) FROM inbound_reports WHERE processed_at IS NULL` is 0;
# processed rows are marked or deleted) and reports that as the processed
# rate, counted from the start of the send. Without a feedback processor
# (nothing pending ever goes away within STALL_TIMEOUT s) it says so and
# records no processed rate. The DSN's token does not verify (it is the
# fixture's), so what gets processed is parse + verify + discard.
#
#   bench/inbound.sh                       # RUNS=3 MSGS=5000 SESS=20
#   RUNS=1 MSGS=500 QUIET_TIMEOUT=0 bench/inbound.sh   # smoke
#
# Env: RUNS MSGS SESS LEN WARMUP=200 PROCESS_TIMEOUT=300 STALL_TIMEOUT=15
#      SINK_PORT IN_PORT TR_PORT TR_TRACK_PORT TR_API_PORT
#      QUIET_MAX_BUSY=15 QUIET_TIMEOUT=300 SKIP_BUILD=1 KEEP_WORK=1
# Needs: smtp-source and smtp-sink (apt-get install postfix, see the hint it prints), python3, sqlite3.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DSN=$ROOT/tests/fixtures/feedback/postfix_user_unknown.eml
MSGS=${MSGS:-5000}
SESS=${SESS:-20}
LEN=${LEN:-$(wc -c <"$DSN")}
WARMUP=${WARMUP:-200}
PROCESS_TIMEOUT=${PROCESS_TIMEOUT:-300}
STALL_TIMEOUT=${STALL_TIMEOUT:-15}
SINK_PORT=${SINK_PORT:-14626}
IN_PORT=${IN_PORT:-14525}
TR_PORT=${TR_PORT:-14587}
TR_TRACK_PORT=${TR_TRACK_PORT:-18280}
TR_API_PORT=${TR_API_PORT:-18225}
RCPT=bounces+bench@bounces.example.com

for b in python3 ss sqlite3 cargo; do
  command -v $b >/dev/null || die "missing $b (apt-get install python3 iproute2 sqlite3; cargo from rustup)"
done
if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null; then
  log "smtp-source and smtp-sink are needed to drive this benchmark."
  postfix_hint; exit 2
fi

OUT=$ROOT/bench/out/inbound-$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/trackrelay-bench-inbound.XXXXXX)
trap bench_cleanup EXIT INT TERM
need_ports "$SINK_PORT" "$IN_PORT" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT"

build_release
"$REL/trackrelay" dkim-keygen --domain example.com --selector bench --out "$WORK/dkim.pem" >/dev/null
API_HASH=$(head -c 18 /dev/urandom | base64 | "$REL/trackrelay" hash-password)
start_sink "$SINK_PORT" "$WORK/sink.log"

db() { sqlite3 -cmd ".timeout 10000" "$DB" "$1"; }
pending() { db "SELECT COUNT(*) FROM inbound_reports WHERE processed_at IS NULL"; }

# wait_processed T0: until nothing is pending; prints the seconds since T0,
# or nothing when pending rows stop going away (no processor) or time is up.
wait_processed() {
  local t0=$1 last n still=0 i
  last=$(pending)
  for ((i = 0; i < PROCESS_TIMEOUT * 10; i++)); do
    n=$(pending)
    if [ "$n" -eq 0 ]; then
      python3 -c "import sys,time; print(round(time.time() - float(sys.argv[1]), 3))" "$t0"
      return 0
    fi
    if [ "$n" -lt "$last" ]; then still=0; last=$n; else still=$((still + 1)); fi
    if [ "$still" -ge $((STALL_TIMEOUT * 10)) ]; then
      log "$n reports still pending and none processed in ${STALL_TIMEOUT}s: no feedback processor on this build"
      return 0
    fi
    sleep 0.1
  done
  log "$n reports still pending after ${PROCESS_TIMEOUT}s"
}

# source_args NAME: smtp-source's message arguments for inbound or submission
source_args() {
  if [ "$1" = inbound ]; then
    ARGS=(-f '' -t "$RCPT" -F "$DSN")
  else
    ARGS=(-l "$LEN" -f a@example.com -t b@example.net)
  fi
}

warmup() {             # warmup NAME ADDR: WARMUP untimed messages
  source_args "$1"
  smtp-source -s "$SESS" -m "$WARMUP" "${ARGS[@]}" "$2" >/dev/null 2>&1 || log "warm-up against $2 had errors"
}

# send NAME ADDR N: one timed smtp-source run after a quiet-box wait; prints a JSON line
send() {
  local name=$1 addr=$2 n=$3 busy t0 t1 rc=0
  source_args "$name"
  local args=("${ARGS[@]}")
  busy=$(quiet_wait)
  local s; s=$(cpu_sample)
  t0=$(date +%s.%N)
  smtp-source -s "$SESS" -m "$n" "${args[@]}" "$addr" >/dev/null 2>"$WORK/source.err" || rc=$?
  t1=$(date +%s.%N)
  local during; during=$(busy_since "$s")
  python3 - "$name" "$t0" "$t1" "$rc" "$n" "$busy" "$during" "$(wc -l <"$WORK/source.err")" <<'PY'
import json, sys
name, t0, t1, rc, n, busy, during, errs = sys.argv[1:]
s = float(t1) - float(t0)
print(json.dumps({"system": name, "t0": float(t0), "seconds": round(s, 3), "rate": round(int(n) / s, 1),
                  "rc": int(rc), "stderr_lines": int(errs), "busy_before": int(busy), "busy_during": int(during)}))
PY
  if [ -s "$WORK/source.err" ]; then head -3 "$WORK/source.err" >&2; fi
}

{
  echo "# inbound benchmark $(date -u +%FT%TZ) host=$(hostname) cores=$(nproc)"
  echo "# trackrelay $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') RUNS=$RUNS: smtp-source -s $SESS -m $MSGS; DSN $(wc -c <"$DSN") B from <> to $RCPT vs -l $LEN to submission; sink=$SINK_KIND"
} | tee "$OUT/header.txt"

: >"$OUT/runs.jsonl"
ROUTES="\"example.net\" = \"127.0.0.1:$SINK_PORT\""
INBOUND="[inbound]
listen = [\"127.0.0.1:$IN_PORT\"]
max_connections_per_ip = 1000"
for i in $(seq "$RUNS"); do
  log "=== run $i/$RUNS"
  dir=$WORK/run-$i; mkdir -p "$dir/data"
  DB=$dir/data/trackrelay.sqlite3
  write_tr_config "$dir/config.toml" "$dir/data" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT" "$WORK/dkim.pem" "$API_HASH" "$ROUTES" "$INBOUND"
  # The return path of example.com is bounces.example.com: the MX accepts RCPT there.
  sed -i 's/^name = "example.com"$/&\nreturn_path = "bounces"/' "$dir/config.toml"
  start_trackrelay "$dir/config.toml" "$TR_PORT" "$dir/trackrelay.log"
  wait_port "$IN_PORT" "$TR_PID" 30 || die "no inbound listener on $IN_PORT"
  # Untimed warm-up of both listeners; then let the warm-up reports be processed.
  if [ "$WARMUP" -gt 0 ]; then
    warmup inbound "127.0.0.1:$IN_PORT"
    warmup submission "127.0.0.1:$TR_PORT"
    wait_processed "$(date +%s.%N)" >/dev/null
  fi
  before=$(db "SELECT COUNT(*) FROM inbound_reports")
  res=$(send inbound "127.0.0.1:$IN_PORT" "$MSGS")
  t0=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["t0"])' "$res")
  done_s=$(wait_processed "$t0")
  stored=$(( $(db "SELECT COUNT(*) FROM inbound_reports") - before ))
  extra=("stored_reports=$stored")
  if [ -n "$done_s" ]; then
    extra+=("processed_seconds=$done_s" "processed_rate=$(python3 -c "print(round($MSGS / $done_s, 1))")")
  fi
  echo "$(add_fields "$res" "${extra[@]}")" | tee -a "$OUT/runs.jsonl"
  e0=$(db "SELECT COUNT(*) FROM emails")
  res=$(send submission "127.0.0.1:$TR_PORT" "$MSGS")
  emails=$(( $(db "SELECT COUNT(*) FROM emails") - e0 ))
  echo "$(add_fields "$res" "stored_emails=$emails")" | tee -a "$OUT/runs.jsonl"
  stop_tracked "$TR_PID"
done

{
  echo
  echo "## inbound summary: smtp-source -s $SESS -m $MSGS, $RUNS run(s); accepted msg/s, median and min-max"
  python3 "$BENCH_DIR/summary.py" "$OUT/runs.jsonl" rate:accepted/s processed_rate:processed/s seconds busy_before busy_during stderr_lines \
    --ratio inbound/submission:rate
  echo "(runs: $OUT/runs.jsonl)"
} | tee "$OUT/summary.txt"
