#!/usr/bin/env bash
# Submission benchmark (issue 2): accepted messages per second for 50 KB
# messages from 20 concurrent sessions, driven by Postfix's smtp-source
#   smtp-source -s 20 -m 5000 -l 50000 -f a@example.com -t b@example.net ADDR
# against trackrelay (release build, trusted_networks = loopback, so no AUTH;
# durable 250 = fsync'ed group commit) and against a private Postfix
# instance, in the same run, interleaved, each after a quiet-box wait.
# Both relay what they accept to the same sink meanwhile (trackrelay with
# tracking and DKIM on, as in relay.sh), and the queue is drained before the
# next measurement; only the accept rate is reported here (end-to-end is
# relay.sh's job). smtp-source's message is a plain-text one, so
# trackrelay's link rewriting has nothing to do; relay.sh sends HTML.
#
#   bench/submission.sh                      # RUNS=3 MSGS=5000 SESS=20 LEN=50000
#   RUNS=1 MSGS=500 bench/submission.sh      # smoke
#   TR_STORE=/tmp/trackrelay-bench-queries-1000000-10000000/trackrelay.sqlite3 bench/submission.sh
#     also measures trackrelay on a copy of that prepared store (bench/queries.sh
#     makes one), as "trackrelay-big", beside trackrelay on an empty store
#
# Env: RUNS MSGS SESS LEN WARMUP=200 (untimed, before each measurement) SKIP_POSTFIX=1 SINK_PORT PF_PORT TR_PORT TR_TRACK_PORT TR_API_PORT
#      QUIET_MAX_BUSY=15 QUIET_TIMEOUT=300 SKIP_BUILD=1 KEEP_WORK=1
# Needs: smtp-source (apt-get install postfix, see the hint it prints), python3, sqlite3.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MSGS=${MSGS:-5000}
SESS=${SESS:-20}
LEN=${LEN:-50000}
WARMUP=${WARMUP:-200}
SKIP_POSTFIX=${SKIP_POSTFIX:-0}
SINK_PORT=${SINK_PORT:-13626}
PF_PORT=${PF_PORT:-13525}
TR_PORT=${TR_PORT:-13587}
TR_TRACK_PORT=${TR_TRACK_PORT:-18180}
TR_API_PORT=${TR_API_PORT:-18125}

for b in python3 ss sqlite3 cargo; do
  command -v $b >/dev/null || die "missing $b (apt-get install python3 iproute2 sqlite3; cargo from rustup)"
done
if ! command -v smtp-source >/dev/null; then
  log "smtp-source is needed to drive this benchmark (bench/relay.sh has its own load tool)."
  postfix_hint; exit 2
fi
[ "$(id -u)" = 0 ] || { [ "$SKIP_POSTFIX" = 1 ] || { log "SKIPPING the Postfix baseline: a private Postfix instance needs root"; SKIP_POSTFIX=1; }; }

OUT=$ROOT/bench/out/submission-$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/trackrelay-bench-submission.XXXXXX)
chmod 755 "$WORK"   # Postfix daemons (user postfix) must reach their dirs in it
trap bench_cleanup EXIT INT TERM
need_ports "$SINK_PORT" "$PF_PORT" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT"

build_release --example smtp_sink
"$REL/trackrelay" dkim-keygen --domain example.com --selector bench --out "$WORK/dkim.pem" >/dev/null
API_HASH=$(head -c 18 /dev/urandom | base64 | "$REL/trackrelay" hash-password)
start_sink "$SINK_PORT" "$WORK/sink.log"
[ "$SKIP_POSTFIX" = 1 ] || start_postfix "$WORK/postfix" "$PF_PORT" "$SINK_PORT"

sink_count() { tail -c 300 "$WORK/sink.log" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2; }
sink_wait() {          # sink_wait N: until the sink has counted N messages in all (bounded: 600 s)
  local i
  for i in $(seq 6000); do [ "${SINK_N:=0}" -ge "$1" ] && return 0; SINK_N=$(sink_count); SINK_N=${SINK_N:-0}; sleep 0.1; done
  log "the sink counted only $SINK_N of $1"; return 1
}
EXPECT=0

# warmup ADDR: WARMUP untimed messages, then wait until the sink has them
warmup() {
  [ "$WARMUP" -gt 0 ] || return 0
  smtp-source -s "$SESS" -m "$WARMUP" -l "$LEN" -f a@example.com -t b@example.net "$1" >/dev/null 2>&1 \
    || log "warm-up against $1 had errors"
  EXPECT=$((EXPECT + WARMUP)); sink_wait "$EXPECT" || true
}

# one_run NAME ADDR: times smtp-source, prints a JSON line
one_run() {
  local name=$1 addr=$2 busy t0 t1 rc=0
  busy=$(quiet_wait)
  local s; s=$(cpu_sample)
  t0=$(date +%s.%N)
  smtp-source -s "$SESS" -m "$MSGS" -l "$LEN" -f a@example.com -t b@example.net "$addr" \
    >/dev/null 2>"$WORK/source.err" || rc=$?
  t1=$(date +%s.%N)
  local during; during=$(busy_since "$s")
  python3 - "$name" "$t0" "$t1" "$rc" "$MSGS" "$busy" "$during" "$(wc -l <"$WORK/source.err")" <<'PY'
import json, sys
name, t0, t1, rc, n, busy, during, errs = sys.argv[1:]
s = float(t1) - float(t0)
print(json.dumps({"system": name, "seconds": round(s, 3), "rate": round(int(n) / s, 1), "rc": int(rc),
                  "stderr_lines": int(errs), "busy_before": int(busy), "busy_during": int(during)}))
PY
  if [ -s "$WORK/source.err" ]; then head -3 "$WORK/source.err" >&2; fi
  return 0
}

{
  echo "# submission benchmark $(date -u +%FT%TZ) host=$(hostname) cores=$(nproc)"
  echo "# trackrelay $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') RUNS=$RUNS: smtp-source -s $SESS -m $MSGS -l $LEN; sink=$SINK_KIND"
  if [ "$SKIP_POSTFIX" != 1 ]; then echo "# postfix $(postconf -c "$PF_CONF" -h mail_version)"; fi
} | tee "$OUT/header.txt"

: >"$OUT/runs.jsonl"
ROUTES="\"example.net\" = \"127.0.0.1:$SINK_PORT\""
for i in $(seq "$RUNS"); do
  log "=== run $i/$RUNS"
  if [ "$SKIP_POSTFIX" != 1 ]; then
    warmup "127.0.0.1:$PF_PORT"; pf_wait_empty || true
    one_run postfix "127.0.0.1:$PF_PORT" | tee -a "$OUT/runs.jsonl"
    EXPECT=$((EXPECT + MSGS)); sink_wait "$EXPECT" || true; pf_wait_empty || true
  fi
  for sys in trackrelay ${TR_STORE:+trackrelay-big}; do
  dir=$WORK/$sys-$i; mkdir -p "$dir/data"
  base=0
  if [ "$sys" = trackrelay-big ]; then
    # A copy per run, so every run starts from the same prepared store.
    cp "$TR_STORE" "$dir/data/trackrelay.sqlite3"
    base=$(sqlite3 "$dir/data/trackrelay.sqlite3" "SELECT COUNT(*) FROM emails")
  fi
  write_tr_config "$dir/config.toml" "$dir/data" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT" "$WORK/dkim.pem" "$API_HASH" "$ROUTES" \
    "$( [ "$sys" = trackrelay-big ] && printf '[store]\nretain_messages = "3650d"\nretain_events = "3650d"\n' )"
  start_trackrelay "$dir/config.toml" "$TR_PORT" "$dir/trackrelay.log"
  warmup "127.0.0.1:$TR_PORT"
  res=$(one_run "$sys" "127.0.0.1:$TR_PORT")
  EXPECT=$((EXPECT + MSGS)); sink_wait "$EXPECT" || true
  emails=$(( $(sqlite3 "$dir/data/trackrelay.sqlite3" "SELECT COUNT(*) FROM emails") - WARMUP - base ))
  st=$(sqlite3 "$dir/data/trackrelay.sqlite3" "SELECT status || '=' || COUNT(*) FROM recipients GROUP BY status" | paste -sd,)
  echo "$(add_fields "$res" "stored_emails=$emails" "store=$st")" | tee -a "$OUT/runs.jsonl"
  stop_tracked "$TR_PID"
  if [ "$sys" = trackrelay-big ]; then rm -rf "$dir/data"; fi
  done
done

{
  echo
  echo "## submission summary: smtp-source -s $SESS -m $MSGS -l $LEN, $RUNS run(s); accepted msg/s, median and min-max"
  python3 "$BENCH_DIR/summary.py" "$OUT/runs.jsonl" rate:accepted/s seconds busy_before busy_during stderr_lines \
    --ratio trackrelay/postfix:rate ${TR_STORE:+--ratio trackrelay-big/trackrelay:rate}
  echo "(runs: $OUT/runs.jsonl)"
} | tee "$OUT/summary.txt"
