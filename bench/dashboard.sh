#!/usr/bin/env bash
# Dashboard benchmark (issue 12): the overview and the email search on a
# store that has lived for a year (the store bench/queries.sh generates:
# examples/gen_store, 1 M emails / 10 M events by default, reused when it
# exists). The release binary serves it; one dashboard session logs in
# with curl; wrk (Lua, the session cookie, paths cycled) measures:
#   - the overview: 24 h, 30 d, 30 d for one domain, 305 custom 30-day windows
#   - the email search: newest 50, by recipient (5,000 random), by tag,
#     by subject (5,000 random, mostly rare: a scan), by a status no email
#     has (the worst case: every email is looked at)
#   - an email's page (5,000 random emails)
# Target (issue 12): p99 <= 100 ms for the overview and the search.
#
#   bench/dashboard.sh                                   # 1 M emails, 10 M events
#   EMAILS=20000 EVENTS=200000 HOT=50000 RUNS=1 DUR=5s bench/dashboard.sh   # smoke
#
# Env: EMAILS EVENTS HOT STORE_DIR DUR=10s CONNS=8 THREADS=2 RUNS API_PORT SMTP_PORT TRACK_PORT
#      QUIET_MAX_BUSY QUIET_TIMEOUT SKIP_BUILD=1 KEEP_WORK=1
# Needs: wrk, sqlite3, python3, curl.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

EMAILS=${EMAILS:-1000000}
EVENTS=${EVENTS:-10000000}
HOT=${HOT:-1000000}
DUR=${DUR:-10s}
CONNS=${CONNS:-8}
THREADS=${THREADS:-2}
API_PORT=${API_PORT:-18235}
SMTP_PORT=${SMTP_PORT:-13697}
TRACK_PORT=${TRACK_PORT:-18290}
STORE_DIR=${STORE_DIR:-/tmp/trackrelay-bench-queries-$EMAILS-$EVENTS}

for b in wrk sqlite3 python3 curl cargo; do
  command -v $b >/dev/null || die "missing $b (apt-get install wrk sqlite3 python3 curl)"
done

OUT=$ROOT/bench/out/dashboard-$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/trackrelay-bench-dashboard.XXXXXX)
trap bench_cleanup EXIT INT TERM
need_ports "$API_PORT" "$SMTP_PORT" "$TRACK_PORT"

gen_store_ready

serve_gen_store

# ---------------------------------------------------------------- session
BASE=http://127.0.0.1:$API_PORT
JAR=$WORK/cookies
FORM=$(curl -sf -c "$JAR" "$BASE/login")
CSRF=$(printf '%s' "$FORM" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
[ -n "$CSRF" ] || die "no CSRF token in the login form"
curl -sf -b "$JAR" -c "$JAR" -o /dev/null --data-urlencode "csrf=$CSRF" --data-urlencode "token=$TOKEN" "$BASE/login" \
  || die "login failed"
SESSION=$(awk '$6 == "trackrelay_session" {print $7}' "$JAR")
[ -n "$SESSION" ] || die "no session cookie"
curl -sf -o /dev/null -H "Cookie: trackrelay_session=$SESSION" "$BASE/" || die "the overview does not answer"

# ---------------------------------------------------------------- paths
python3 - "$IDS" "$EMAILS" "$WORK" <<'PY'
import random, sys, time
ids, emails, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rnd = random.Random(12)
sample = [l.strip() for l in open(ids)][1:]
def write(name, paths):
    with open(f"{work}/{name}.paths", "w") as f:
        f.write("\n".join(paths) + "\n")
day = 86400
now = int(time.time())
def date(t):
    return time.strftime("%Y-%m-%d", time.gmtime(t))
write("overview_24h", ["/?range=24h"])
write("overview_30d", ["/?range=30d"])
write("overview_30d_domain", ["/?range=30d&domain=example.com"])
write("overview_custom", [f"/?range=custom&since={date(now - d * day)}&until={date(now - (d - 30) * day)}"
                          for d in range(60, 365)])
write("search_newest", ["/emails"])
write("search_recipient", [f"/emails?recipient=r{rnd.randrange(emails)}%40x.test" for _ in range(5000)])
write("search_tag", ["/emails?tag=bench"])
write("search_subject", [f"/emails?subject=Newsletter+{rnd.randrange(emails)}" for _ in range(5000)])
write("search_status_none", ["/emails?status=bounced"])
write("email_page", [f"/emails/{i}" for i in sample[:5000]])
PY

write_paths_lua "$WORK/paths.lua"


{
  echo "# dashboard benchmark $(date -u +%FT%TZ) host=$(hostname) cores=$(nproc) mem=$(awk '/MemTotal/{printf "%.0fG", $2/1048576}' /proc/meminfo)"
  echo "# trackrelay $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') store: $(du -sh "$DB" | cut -f1), $(sqlite3 "$DB" 'SELECT COUNT(*) FROM emails') emails, $(sqlite3 "$DB" 'SELECT max(id) FROM events') events"
  echo "# wrk -t$THREADS -c$CONNS -d$DUR --latency; RUNS=$RUNS"
} | tee "$OUT/header.txt"

NAMES="overview_24h overview_30d overview_30d_domain overview_custom search_newest search_recipient search_tag search_subject search_status_none email_page"
for RUN in $(seq "$RUNS"); do
  for name in $NAMES; do
    busy=$(quiet_wait)
    s=$(cpu_sample)
    PATHS=$WORK/$name.paths HEADER_NAME=Cookie HEADER_VALUE="trackrelay_session=$SESSION" timeout 300 wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency \
      -s "$WORK/paths.lua" "$BASE" >"$OUT/wrk-$name-$RUN.txt" 2>&1 || true
    add_fields "$(parse_wrk "$OUT/wrk-$name-$RUN.txt")" "what=$name" "run=$RUN" \
      "busy_before=$busy" "busy_during=$(busy_since "$s")" | tee -a "$OUT/runs.jsonl"
  done
done

python3 - "$OUT/runs.jsonl" <<'PY' | tee "$OUT/summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["what"], []).append(r)
for what, rs in by.items():
    p99 = [r["p99_ms"] for r in rs if r["p99_ms"] is not None]
    p50 = [r["p50_ms"] for r in rs if r["p50_ms"] is not None]
    rps = [r["rps"] for r in rs if r["rps"] is not None]
    errs = sum(r["non_2xx"] for r in rs)
    print(f"{what:20} p99 ms median {statistics.median(p99):.2f} (min {min(p99):.2f}, max {max(p99):.2f}), "
          f"p50 {statistics.median(p50):.2f}, req/s {statistics.median(rps):.0f}, non-2xx {errs}; "
          f"busy_before {[r['busy_before'] for r in rs]}")
PY
log "outputs in $OUT"
