#!/usr/bin/env bash
# Queue backlog benchmark (issue 9, "Queue"): N recipients (20,000 by default)
# queued for one destination, delivered by trackrelay (RSA-2048 DKIM, click
# and open tracking) to bench/backlog_sink.py, which counts every RCPT it
# accepted a message for. Reports duplicates at the sink (must be 0), the
# store's final statuses (all delivered, one email.delivered event each) and
# throughput (recipients / time from the first submission to the last one
# counted at the sink). The lease is short (LEASE, 5s) so that a working
# connection must renew it many times over the run.
#
#   bench/backlog.sh                          # N=20000 PER_MSG=100
#   N=2000 bench/backlog.sh                   # smaller
#
# Env: N PER_MSG LEASE DELAY_MS (sink's delay per message) TR_PER_DEST
#      PER_CONN (max_messages_per_connection) PROFILE=release|debug SKIP_BUILD=1
#      ports: SINK_PORT TR_PORT TR_TRACK_PORT TR_API_PORT   TIMEOUT (s, 1800)
# Output: a summary on stdout; a JSON line and logs in bench/out/backlog-<time>/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-20000}
PER_MSG=${PER_MSG:-100}
LEASE=${LEASE:-5s}
DELAY_MS=${DELAY_MS:-0}
PER_CONN=${PER_CONN:-100}
SINK_PORT=${SINK_PORT:-12640}
TR_PORT=${TR_PORT:-12641}
TR_TRACK_PORT=${TR_TRACK_PORT:-12642}
TR_API_PORT=${TR_API_PORT:-12643}
TIMEOUT=${TIMEOUT:-1800}
if [ "${PROFILE:-release}" = debug ]; then REL=$TARGET_DIR/debug; fi

for b in python3 ss sqlite3; do
  command -v $b >/dev/null || die "missing $b (apt-get install python3 iproute2 sqlite3)"
done
need_ports "$SINK_PORT" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT"

OUT=$ROOT/bench/out/backlog-$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/trackrelay-bench-backlog.XXXXXX)
trap 'bench_cleanup; [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"' EXIT INT TERM

if [ "${PROFILE:-release}" = release ]; then build_release; else
  [ -x "$REL/trackrelay" ] || die "no $REL/trackrelay: cargo build -j 2 first"; fi

"$REL/trackrelay" dkim-keygen --domain example.com --selector bench --out "$WORK/dkim.pem" >/dev/null
API_HASH=$(printf '%s\n' "bench-token" | "$REL/trackrelay" hash-password)

python3 "$BENCH_DIR/backlog_sink.py" --port "$SINK_PORT" --stats "$WORK/sink.json" \
  --delay-ms "$DELAY_MS" >"$OUT/sink.log" 2>&1 &
SINK_PID=$!
bench_track "$SINK_PID"
wait_port "$SINK_PORT" "$SINK_PID" 10 || die "the sink did not start"

CONF=$WORK/config.toml
write_tr_config "$CONF" "$WORK/data" "$TR_PORT" "$TR_TRACK_PORT" "$TR_API_PORT" \
  "$WORK/dkim.pem" "$API_HASH" "\"example.net\" = \"127.0.0.1:$SINK_PORT\""
# The keys this benchmark is about, under [delivery].
sed -i "/^\[delivery\]/a lease_time = \"$LEASE\"\nmax_messages_per_connection = $PER_CONN" "$CONF"
start_trackrelay "$CONF" "$TR_PORT" "$OUT/trackrelay.log"

sink() { python3 -c "import json,sys; print(json.load(open('$WORK/sink.json'))[sys.argv[1]])" "$1" 2>/dev/null || echo 0; }

log "submitting $N recipients ($PER_MSG per message) for example.net"
START=$(date +%s.%N)
python3 - "$TR_PORT" "$N" "$PER_MSG" <<'PY'
import smtplib, sys
port, n, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = ("From: News <news@example.com>\r\nTo: list@example.net\r\nSubject: backlog\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<html><body><p>Hello</p><a href=\"https://example.org/a\">a</a>"
        + "<p>lorem ipsum dolor sit amet</p>" * 60 + "</body></html>\r\n")
s = smtplib.SMTP("127.0.0.1", port, timeout=60)
for first in range(0, n, per):
    rcpts = ["r%d@example.net" % i for i in range(first, min(n, first + per))]
    s.sendmail("news@example.com", rcpts, body)
s.quit()
PY
SUBMITTED=$(date +%s.%N)
log "submitted in $(echo "$SUBMITTED - $START" | bc) s; waiting for the sink (at most $TIMEOUT s)"

deadline=$(( $(date +%s) + TIMEOUT ))
while [ "$(sink distinct)" -lt "$N" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || die "timed out: the sink saw $(sink distinct) of $N"
  kill -0 "$TR_PID" 2>/dev/null || die "trackrelay exited: $(tail -5 "$OUT/trackrelay.log")"
  sleep 0.2
done
END=$(date +%s.%N)
DB=$WORK/data/trackrelay.sqlite3
# The last outcomes are written as their transactions end: bounded wait.
for _ in $(seq 300); do
  left=$(sqlite3 "$DB" "SELECT COUNT(*) FROM recipients WHERE status != 'delivered'")
  [ "$left" -eq 0 ] && break; sleep 0.2
done
sleep 1   # let a late duplicate, if any, reach the sink before counting
stop_tracked "$TR_PID"

messages=$(sink messages); distinct=$(sink distinct); dups=$(sink duplicates)
statuses=$(sqlite3 "$DB" "SELECT group_concat(status || '=' || n, ' ') FROM (SELECT status, COUNT(*) n FROM recipients GROUP BY status)")
events=$(sqlite3 "$DB" "SELECT COUNT(*) FROM events WHERE type = 'email.delivered'")
attempts=$(sqlite3 "$DB" "SELECT COALESCE(MAX(attempts), 0) FROM recipients")
elapsed=$(echo "$END - $START" | bc)
rate=$(echo "scale=1; $N / $elapsed" | bc)
json=$(printf '{"n":%d,"sink_messages":%d,"sink_distinct":%d,"duplicates":%d,"delivered_events":%d,"max_attempts":%d,"seconds":%.2f,"rcpt_per_s":%.1f,"lease":"%s","per_conn":%d,"per_dest":%d,"delay_ms":%d,"profile":"%s"}' \
  "$N" "$messages" "$distinct" "$dups" "$events" "$attempts" "$elapsed" "$rate" "$LEASE" "$PER_CONN" "${TR_PER_DEST:-20}" "$DELAY_MS" "${PROFILE:-release}")
echo "$json" >"$OUT/result.json"
echo "backlog: $N recipients to one destination, lease $LEASE, ${PROFILE:-release} build"
echo "  sink: $messages messages, $distinct distinct recipients, duplicates $dups"
echo "  store: $statuses; email.delivered events $events; max attempts $attempts"
echo "  time: ${elapsed}s from first submission to last delivery = $rate recipients/s"
[ "$dups" -eq 0 ] && [ "$distinct" -eq "$N" ] && [ "$events" -eq "$N" ] || die "not exactly once"
