#!/usr/bin/env bash
# Query benchmark (issue 9, "Queries"): the admin API and the CLI on a store
# that has lived for a year. examples/gen_store writes EMAILS emails and
# EVENTS events through the store's own write paths (one email with HOT
# click events); then the release binary serves it and wrk measures:
#   - GET /v1/emails/{id}/events for random ordinary emails    target p99 <= 20 ms
#   - paging: GET /v1/emails/{hot}/events?after=N&limit=100 at random N
#     inside the hot email, and GET /v1/events?after=N&limit=100  target p99 <= 20 ms
#   - GET /v1/stats?since=30d (all domains, and one domain)      target p99 <= 50 ms
# and `trackrelay events --email HOT --json` peak RSS (VmHWM via
# /usr/bin/time -v)                                              target <= 50 MB.
#
#   bench/queries.sh                                  # 1 M emails, 10 M events, hot 1 M
#   EMAILS=20000 EVENTS=200000 HOT=50000 DUR=5s bench/queries.sh    # smoke
#
# The generated store is kept in STORE_DIR (default
# /tmp/trackrelay-bench-queries-$EMAILS-$EVENTS) and reused by the next run,
# since generating 10 M events takes minutes; remove it to regenerate.
# Env: EMAILS EVENTS HOT STORE_DIR DUR=15s CONNS=8 THREADS=2 RUNS API_PORT SMTP_PORT TRACK_PORT
#      QUIET_MAX_BUSY QUIET_TIMEOUT SKIP_BUILD=1 KEEP_WORK=1
# Needs: wrk, sqlite3, python3, /usr/bin/time.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

EMAILS=${EMAILS:-1000000}
EVENTS=${EVENTS:-10000000}
HOT=${HOT:-1000000}
DUR=${DUR:-15s}
CONNS=${CONNS:-8}
THREADS=${THREADS:-2}
API_PORT=${API_PORT:-18225}
SMTP_PORT=${SMTP_PORT:-13687}
TRACK_PORT=${TRACK_PORT:-18280}
STORE_DIR=${STORE_DIR:-/tmp/trackrelay-bench-queries-$EMAILS-$EVENTS}

for b in wrk sqlite3 python3 /usr/bin/time cargo; do
  command -v $b >/dev/null || die "missing $b (apt-get install wrk sqlite3 python3 time)"
done

OUT=$ROOT/bench/out/queries-$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/trackrelay-bench-queries.XXXXXX)
trap bench_cleanup EXIT INT TERM
need_ports "$API_PORT" "$SMTP_PORT" "$TRACK_PORT"

gen_store_ready
HOT_ID=$(head -1 "$IDS")

serve_gen_store
api() { curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$API_PORT$1"; }
api "/v1/emails/$HOT_ID/events?limit=1" >/dev/null || die "the API does not answer"

# ---------------------------------------------------------------- paths
read -r HOT_LO HOT_HI < <(sqlite3 -separator ' ' "$DB" "SELECT min(id), max(id) FROM events WHERE email_id = '$HOT_ID'")
read -r ALL_HI < <(sqlite3 "$DB" "SELECT max(id) FROM events")
python3 - "$IDS" "$HOT_ID" "$HOT_LO" "$HOT_HI" "$ALL_HI" "$WORK" <<'PY'
import random, sys
ids, hot, lo, hi, top, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rnd = random.Random(9)
sample = [l.strip() for l in open(ids)][1:]
def write(name, paths):
    with open(f"{work}/{name}.paths", "w") as f:
        f.write("\n".join(paths) + "\n")
write("email", [f"/v1/emails/{i}/events" for i in sample[:5000]])
write("hotpage", [f"/v1/emails/{hot}/events?limit=100&after={rnd.randint(lo, hi)}" for _ in range(5000)])
write("page", [f"/v1/events?limit=100&after={rnd.randint(1, top)}" for _ in range(5000)])
write("stats", ["/v1/stats?since=30d"])
write("stats_domain", ["/v1/stats?since=30d&domain=example.com"])
write("stats_window", [f"/v1/stats?since={d}d&until={d - 30}d" for d in range(60, 365)])
PY

write_paths_lua "$WORK/paths.lua"


{
  echo "# queries benchmark $(date -u +%FT%TZ) host=$(hostname) cores=$(nproc) mem=$(awk '/MemTotal/{printf "%.0fG", $2/1048576}' /proc/meminfo)"
  echo "# trackrelay $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') store: $(du -sh "$DB" | cut -f1), $(sqlite3 "$DB" 'SELECT COUNT(*) FROM emails') emails, $(sqlite3 "$DB" 'SELECT max(id) FROM events') events; hot email $HOT_ID ($((HOT_HI - HOT_LO + 1)) id span)"
  echo "# wrk -t$THREADS -c$CONNS -d$DUR --latency; RUNS=$RUNS"
} | tee "$OUT/header.txt"

for RUN in $(seq "$RUNS"); do
  for name in email hotpage page stats stats_domain stats_window; do
    busy=$(quiet_wait)
    s=$(cpu_sample)
    PATHS=$WORK/$name.paths HEADER_NAME=Authorization HEADER_VALUE="Bearer $TOKEN" timeout 300 wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency \
      -s "$WORK/paths.lua" "http://127.0.0.1:$API_PORT" >"$OUT/wrk-$name-$RUN.txt" 2>&1 || true
    add_fields "$(parse_wrk "$OUT/wrk-$name-$RUN.txt")" "what=$name" "run=$RUN" \
      "busy_before=$busy" "busy_during=$(busy_since "$s")" | tee -a "$OUT/runs.jsonl"
  done
  busy=$(quiet_wait)
  timeout 600 /usr/bin/time -v "$REL/trackrelay" events --config "$WORK/config.toml" --email "$HOT_ID" --json \
    2>"$OUT/rss-$RUN.txt" | wc -l >"$OUT/rss-lines-$RUN.txt"
  rss=$(awk -F: '/Maximum resident set size/{gsub(/ /, "", $2); print $2}' "$OUT/rss-$RUN.txt")
  wall=$(awk '/Elapsed \(wall clock\)/{print $NF}' "$OUT/rss-$RUN.txt")
  echo "{\"what\": \"events_cli_rss\", \"run\": $RUN, \"max_rss_kb\": $rss, \"lines\": $(cat "$OUT/rss-lines-$RUN.txt"), \"wall\": \"$wall\", \"busy_before\": $busy}" \
    | tee -a "$OUT/runs.jsonl"
done

python3 - "$OUT/runs.jsonl" <<'PY' | tee "$OUT/summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["what"], []).append(r)
target = {"email": 20, "hotpage": 20, "page": 20, "stats": 50, "stats_domain": 50, "stats_window": 50}
for what, rs in by.items():
    if what == "events_cli_rss":
        v = [r["max_rss_kb"] / 1024 for r in rs]
        print(f"{what:14} peak RSS MB median {statistics.median(v):.1f} (min {min(v):.1f}, max {max(v):.1f}), "
              f"{rs[0]['lines']} lines; target <= 50 MB")
        continue
    p99 = [r["p99_ms"] for r in rs if r["p99_ms"] is not None]
    rps = [r["rps"] for r in rs if r["rps"] is not None]
    errs = sum(r["non_2xx"] for r in rs)
    print(f"{what:14} p99 ms median {statistics.median(p99):.2f} (min {min(p99):.2f}, max {max(p99):.2f}), "
          f"req/s median {statistics.median(rps):.0f}, non-2xx {errs}; target p99 <= {target[what]} ms; "
          f"busy_before {[r['busy_before'] for r in rs]}")
PY
log "outputs in $OUT"
