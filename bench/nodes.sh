#!/usr/bin/env bash
# One node vs PostgreSQL vs two nodes (issue 14): the same generated 50 KB HTML
# newsletters as relay.sh (examples/smtp_load, SESS sessions in all) into
#   (a) postfix:      the private Postfix baseline of relay.sh, relaying to the sink
#   (b) tr-sqlite:    one trackrelay node on SQLite (the default store)
#   (c) tr-pg:        one trackrelay node on PostgreSQL
#   (d) tr-pg-2nodes: two trackrelay nodes on the same PostgreSQL database, the
#                     load split over both nodes' submission ports (MSGS/2 and
#                     SESS/2 each, started together)
# Every trackrelay: click + open tracking, RSA-2048 DKIM, delivery.routes to the
# sink, a fresh store per run (a new data dir, or a new database on the
# script's own PostgreSQL server: fsync on, synchronous_commit on, i.e. the
# durability the product promises, with pg_stat_statements loaded).
# Runs are interleaved (a b c d, a b c d, ...), each after a quiet-box wait.
#
# Per run and system: accept rate (MSGS / time until every 250) and end-to-end
# rate (MSGS / time until the sink counted MSGS more messages); trackrelay's CPU
# (all nodes) and PostgreSQL's (postmaster + every child, exited ones included)
# per message, from the start of the load until the store shows every recipient
# delivered; PostgreSQL statements per message (sum of pg_stat_statements calls
# of trackrelay's role, BEGIN/COMMIT included), transactions per message
# (pg_stat_database xact_commit delta; write transactions from the xid
# counter), WAL bytes per message, and the server's
# execution time per message; the top statements go to pgss-<system>-<run>.txt.
# Correctness, or the run is marked failed: every recipient delivered in the
# store (warm-up included), and the sink (smtp-sink -c -d, dumping each delivery
# to tmpfs) got each Message-ID of the run exactly once: `dups` counts extra
# copies, `missing` the ones that never came.
# At the end (PostgreSQL): a pgbench probe of one-row commits, 1 and 20 clients,
# for the server's own commit latency on this disk.
#
#   bench/nodes.sh                                 # RUNS=3 MSGS=2000 SESS=20 SIZE=50000
#   SKIP_PG=1 RUNS=1 MSGS=300 QUIET_TIMEOUT=0 bench/nodes.sh   # smoke, SQLite + Postfix only
#
# Env: RUNS MSGS SESS SIZE LINKS WARMUP SKIP_PG=1 SKIP_POSTFIX=1 TR_PER_DEST=20
#      PG_BIN (default: the newest /usr/lib/postgresql/*/bin) PG_POOL (pool_size, default 16)
#      ports: SINK_PORT PF_PORT PG_PORT A_PORT A_TRACK_PORT A_API_PORT B_PORT B_TRACK_PORT B_API_PORT
#      QUIET_MAX_BUSY=15 QUIET_TIMEOUT=300 SKIP_BUILD=1 KEEP_WORK=1 TIMEOUT=600
# Output: a summary on stdout; JSON lines and logs in bench/out/nodes-<time>/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MSGS=${MSGS:-2000}
SESS=${SESS:-20}
SIZE=${SIZE:-50000}
LINKS=${LINKS:-30}
WARMUP=${WARMUP:-200}
SKIP_PG=${SKIP_PG:-0}
SKIP_POSTFIX=${SKIP_POSTFIX:-0}
PG_POOL=${PG_POOL:-16}
SINK_PORT=${SINK_PORT:-12636}
PF_PORT=${PF_PORT:-12535}
PG_PORT=${PG_PORT:-15433}
A_PORT=${A_PORT:-12597} A_TRACK_PORT=${A_TRACK_PORT:-18180} A_API_PORT=${A_API_PORT:-18125}
B_PORT=${B_PORT:-12598} B_TRACK_PORT=${B_TRACK_PORT:-18181} B_API_PORT=${B_API_PORT:-18126}
TIMEOUT=${TIMEOUT:-600}

for b in python3 ss sqlite3 cargo; do
  command -v $b >/dev/null || die "missing $b (apt-get install python3 iproute2 sqlite3; cargo from rustup)"
done
command -v smtp-sink >/dev/null || die "smtp-sink is needed: it dumps each delivery for the duplicate check (apt-get install postfix)"
if [ "$SKIP_POSTFIX" != 1 ] && ! have_postfix; then
  log "SKIPPING the Postfix baseline:"; postfix_hint; SKIP_POSTFIX=1
fi
[ "$(id -u)" = 0 ] || { [ "$SKIP_POSTFIX" = 1 ] || { log "SKIPPING the Postfix baseline: a private Postfix instance needs root"; SKIP_POSTFIX=1; }; }
if [ "$SKIP_PG" != 1 ]; then
  PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
  [ -x "${PG_BIN:-/nonexistent}/postgres" ] && command -v psql >/dev/null \
    || die "PostgreSQL is needed (apt-get install postgresql), or SKIP_PG=1"
  if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 || die "as root, PostgreSQL runs as the user postgres, which does not exist"; fi
fi

OUT=$ROOT/bench/out/nodes-$STAMP
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/trackrelay-bench-nodes.XXXXXX)
chmod 755 "$WORK"   # Postfix's and PostgreSQL's users must reach their dirs in it
# The sink's dumps (50 KB per delivery) go to memory when there is a tmpfs, so
# that the check does not add disk writes to the measurement.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then DUMP=$(mktemp -d /dev/shm/trackrelay-bench-nodes.XXXXXX); else DUMP=$WORK/dump; fi
cleanup() { bench_cleanup; [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$DUMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
PORTS=("$SINK_PORT" "$A_PORT" "$A_TRACK_PORT" "$A_API_PORT" "$B_PORT" "$B_TRACK_PORT" "$B_API_PORT")
[ "$SKIP_POSTFIX" = 1 ] || PORTS+=("$PF_PORT")
[ "$SKIP_PG" = 1 ] || PORTS+=("$PG_PORT")
need_ports "${PORTS[@]}"

build_release --example smtp_load
LOAD=$REL/examples/smtp_load

"$REL/trackrelay" dkim-keygen --domain example.com --selector bench --out "$WORK/dkim.pem" >"$WORK/dkim.txt"
API_TOKEN=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
API_HASH=$(printf '%s\n' "$API_TOKEN" | "$REL/trackrelay" hash-password)
ROUTES="\"example.net\" = \"127.0.0.1:$SINK_PORT\""

# ---------------------------------------------------------------- PostgreSQL
AS_PG=()
pg_q() {               # pg_q DB SQL: as the role `bench` (not trackrelay's, so pg_stat_statements can tell them apart)
  psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U bench -d "$1" -c "$2"
}
start_pg() {
  local d=$WORK/pg
  mkdir -p "$d"
  if [ "$(id -u)" = 0 ]; then chown postgres "$d"; AS_PG=(runuser -u postgres --); fi
  "${AS_PG[@]}" "$PG_BIN/initdb" -D "$d/data" -A trust -U trackrelay >"$OUT/pg-initdb.log" 2>&1 \
    || { cat "$OUT/pg-initdb.log" >&2; die "initdb failed"; }
  # fsync and synchronous_commit are the defaults; said explicitly because they
  # are what is measured: a 250 only after the commit is on disk.
  "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$d/data" -l "$d/log" -w -t 60 \
    -o "-p $PG_PORT -k $d -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_utility=on" \
    start >&2 || { tail -20 "$d/log" >&2; die "PostgreSQL did not start"; }
  PG_PID=$(head -1 "$d/data/postmaster.pid")
  bench_track "$PG_PID"   # SIGTERM: a smart shutdown, once the nodes (stopped first) are gone
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U trackrelay -d postgres \
    -c "CREATE ROLE bench SUPERUSER LOGIN" -c "CREATE EXTENSION pg_stat_statements" >&2
  PG_VERSION=$(pg_q postgres "SHOW server_version")
  log "PostgreSQL $PG_VERSION on 127.0.0.1:$PG_PORT (postmaster $PG_PID), data in $d"
}

pg_cpu_s() {           # CPU s of the postmaster, its live children, and its reaped children
  { cat "/proc/$PG_PID/stat"; for c in $(pgrep -P "$PG_PID"); do cat "/proc/$c/stat" 2>/dev/null || true; done; } |
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); t += $12 + $13; if (NR == 1) t += $14 + $15 } END { printf "%.2f\n", t / hz }'
}

# pg_settled DB: xact_commit of DB once every backend has flushed its
# statistics. PostgreSQL 15 flushes a backend's counters when it goes idle,
# but at most once a second, and one that was too early retries only 10 s
# later: so equal readings 11 s apart (at most 4 tries).
pg_settled() {
  local db=$1 prev=-1 cur k
  for k in $(seq 4); do
    cur=$(pg_q postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'")
    if [ "$cur" = "$prev" ]; then break; fi
    prev=$cur
    [ "$k" = 4 ] || sleep 11
  done
  echo "$cur"
}
# pg_xmax: the next transaction id (not assigning one): its delta counts the
# transactions that wrote, at once, in every database of the server.
pg_xmax() { pg_q postgres "SELECT pg_snapshot_xmax(pg_current_snapshot())"; }

# ---------------------------------------------------------------- sink
sink_count() { tail -c 512 "$WORK/sink.log" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 || echo 0; }

# sink_check WANT: "total unique dups missing" over the dumped deliveries
# (each message of the run carries its own Message-ID).
sink_check() {
  python3 - "$DUMP" "$1" <<'PY'
import collections, os, sys
d, want = sys.argv[1], int(sys.argv[2])
ids = collections.Counter()
for name in os.listdir(d):
    with open(os.path.join(d, name), "rb") as f:
        head = f.read(32768)
    mid = b"?"
    for line in head.split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            mid = line.split(b":", 1)[1].strip()
            break
        if line.strip() == b"":
            break
    ids[mid] += 1
total = sum(ids.values())
print(total, len(ids), total - len(ids), max(0, want - len(ids)))
PY
}
clear_dump() { find "$DUMP" -mindepth 1 -type f -delete; }

# e2e_waiter BASE N OUTFILE: writes the epoch time at which the sink's counter
# reached BASE + N (polling every 5 ms, like smtp_load), or "timeout".
e2e_waiter() {
  python3 - "$WORK/sink.log" "$1" "$2" "$3" "$TIMEOUT" <<'PY' &
import re, sys, time
path, base, n, out, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
end = time.time() + timeout
res = "timeout"
while time.time() < end:
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 512))
        m = re.findall(rb"mesg=(\d+)", f.read())
    if m and int(m[-1]) >= base + n:
        res = f"{time.time():.3f}"
        break
    time.sleep(0.005)
open(out, "w").write(res + "\n")
PY
  WAITER_PID=$!
  bench_track "$WAITER_PID"
}

# ---------------------------------------------------------------- load
LOADARGS=(--per-conn 1 --size "$SIZE" --links "$LINKS" --from news@example.com --to user@example.net)

warmup() {             # warmup ADDR...: WARMUP messages split over ADDRs, fully delivered, untimed
  [ "$WARMUP" -gt 0 ] || return 0
  local n=$# a
  for a in "$@"; do
    "$LOAD" --addr "$a" --sessions "$SESS" --messages $((WARMUP / n)) "${LOADARGS[@]}" \
      --sink-counter "$WORK/sink.log" --timeout 300 >/dev/null || log "warm-up against $a had failures"
  done
}

# measure NAME ADDR...: MSGS split over the ADDRs (SESS sessions in all),
# loaders started together; one JSON line into $WORK/measure.json, and
# MEASURE_BUSY / MEASURE_S (busy% before, cpu_sample at the start) for the caller.
measure() {
  local name=$1; shift
  local n=$# k busy s base t0 pids=() files=()
  busy=$(quiet_wait)
  base=$(sink_count); base=${base:-0}
  s=$(cpu_sample)
  t0=$(date +%s.%N)
  e2e_waiter "$base" "$MSGS" "$WORK/e2e.txt"
  for ((k = 0; k < n; k++)); do
    local addr=${@:k+1:1} per=$((MSGS / n)) sess=$((SESS / n))
    [ "$k" -gt 0 ] || per=$((per + MSGS % n))
    "$LOAD" --addr "$addr" --sessions "$sess" --messages "$per" "${LOADARGS[@]}" --timeout "$TIMEOUT" \
      >"$WORK/load-$k.json" 2>"$WORK/load-$k.err" &
    pids+=($!); files+=("$WORK/load-$k.json")
  done
  for k in "${pids[@]}"; do wait "$k" || true; done
  local accepted
  accepted=$(python3 -c 'import json,sys; print(sum(json.load(open(f)).get("accepted", 0) for f in sys.argv[1:]))' "${files[@]}" 2>/dev/null || echo 0)
  if [ "$accepted" -lt "$MSGS" ]; then
    # Not every message was accepted: the sink will never count MSGS more.
    stop_pid "$WAITER_PID"; echo timeout >"$WORK/e2e.txt"
  fi
  wait "$WAITER_PID" 2>/dev/null || true
  untrack_pid "$WAITER_PID"
  (python3 - "$name" "$t0" "$MSGS" "$(cat "$WORK/e2e.txt" 2>/dev/null || echo timeout)" "${files[@]}" <<'PY'
import json, sys
name, t0, msgs, e2e = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = []
for f in sys.argv[5:]:
    try:
        runs.append(json.load(open(f)))
    except Exception:
        runs.append({"accepted": 0, "failed": None, "errors": ["the load tool failed"]})
acc = sum(r.get("accepted", 0) for r in runs)
secs = max((r.get("seconds") or 0) for r in runs) or None
d = {"system": name, "loaders": len(runs), "accepted": acc,
     "failed": sum((r.get("failed") or 0) for r in runs) + (msgs - acc if acc < msgs else 0),
     "seconds": secs, "rate": round(acc / secs, 1) if secs else None,
     "data_reply_ms_p99": max((r.get("data_reply_ms_p99") or 0) for r in runs)}
if e2e != "timeout":
    d["e2e_seconds"] = round(float(e2e) - t0, 3)
    d["e2e_rate"] = round(msgs / d["e2e_seconds"], 1)
else:
    d["e2e_seconds"] = None
errs = [e for r in runs for e in r.get("errors", [])]
if errs:
    d["errors"] = errs[:5]
print(json.dumps(d))
PY
  ) >"$WORK/measure.json"
  MEASURE_BUSY=$busy MEASURE_S=$s
}

# ---------------------------------------------------------------- nodes
NODE_PIDS=()
# start_node DIR NODE_ID SMTP TRACK API STORE_TOML
start_node() {
  local dir=$1 id=$2 smtp=$3 track=$4 api=$5 store=$6
  mkdir -p "$dir"
  write_tr_config "$dir/config.toml" "$dir/data" "$smtp" "$track" "$api" "$WORK/dkim.pem" "$API_HASH" "$ROUTES" "$store"
  sed -i "/^\[server\]/a node_id = \"$id\"" "$dir/config.toml"
  start_trackrelay "$dir/config.toml" "$smtp" "$dir/trackrelay.log"
  NODE_PIDS+=("$TR_PID")
}
nodes_cpu_s() { local p t=0; for p in "${NODE_PIDS[@]}"; do t=$(awk -v a="$t" -v b="$(proc_cpu_s "$p")" 'BEGIN{printf "%.2f", a+b}'); done; echo "$t"; }

# store_status BACKEND DIR DB: "status=count ..." of every recipient
store_status() {
  if [ "$1" = sqlite ]; then
    sqlite3 "$2/data/trackrelay.sqlite3" "SELECT status || '=' || COUNT(*) FROM recipients GROUP BY status ORDER BY status" 2>&1 | paste -sd' '
  else
    # In a transaction rolled back, so that the check adds nothing to xact_commit.
    psql -X -q -t -A -h 127.0.0.1 -p "$PG_PORT" -U bench -d "$3" \
      -c "BEGIN; SELECT status || '=' || COUNT(*) FROM recipients GROUP BY status ORDER BY status; ROLLBACK" 2>&1 | grep -v '^$' | paste -sd' '
  fi
}
# wait_delivered BACKEND DIR DB WANT: bounded (120 s); prints the last status
wait_delivered() {
  local st k
  for k in $(seq 240); do
    st=$(store_status "$1" "$2" "$3")
    [ "$st" = "delivered=$4" ] && break
    sleep 0.5
  done
  echo "$st"
}

div() { awk -v a="$1" -v b="$2" -v p="${3:-3}" 'BEGIN{ if (b > 0) printf "%.*f", p, a / b; else print "n/a" }'; }

# run_tr NAME RUN BACKEND NODES: fresh store, start, warm up, measure, check, stop
run_tr() {
  local name=$1 i=$2 backend=$3 nodes=$4 dir=$WORK/$1-$2 db="" store=""
  mkdir -p "$dir"
  if [ "$backend" = postgres ]; then
    db="b_${name//-/_}_$i"
    pg_q postgres "CREATE DATABASE $db OWNER trackrelay" >/dev/null
    store="
[store]
backend = \"postgres\"
url = \"postgres://trackrelay@127.0.0.1:$PG_PORT/$db\"
pool_size = $PG_POOL"
  fi
  NODE_PIDS=()
  local addrs=("127.0.0.1:$A_PORT")
  start_node "$dir/a" node-a "$A_PORT" "$A_TRACK_PORT" "$A_API_PORT" "$store"
  if [ "$nodes" = 2 ]; then
    start_node "$dir/b" node-b "$B_PORT" "$B_TRACK_PORT" "$B_API_PORT" "$store"
    addrs+=("127.0.0.1:$B_PORT")
  fi
  warmup "${addrs[@]}"
  local want=$((MSGS + WARMUP / nodes * nodes))
  wait_delivered "$backend" "$dir/a" "$db" $((WARMUP / nodes * nodes)) >/dev/null
  clear_dump
  local x0=0 wal0="" pg0=0 xid0=0
  if [ "$backend" = postgres ]; then
    x0=$(pg_settled "$db")
    pg_q postgres "SELECT pg_stat_statements_reset()" >/dev/null
    wal0=$(pg_q postgres "SELECT pg_current_wal_lsn()")
    xid0=$(pg_xmax)
    pg0=$(pg_cpu_s)
  fi
  local tr0 res st
  tr0=$(nodes_cpu_s)
  measure "$name" "${addrs[@]}"
  res=$(cat "$WORK/measure.json")
  st=$(wait_delivered "$backend" "$dir/a" "$db" "$want")
  local tr1 busy_during
  tr1=$(nodes_cpu_s)
  busy_during=$(busy_since "$MEASURE_S")
  res=$(add_fields "$res" "run=$i" "nodes=$nodes" "backend=$backend" "busy_before=$MEASURE_BUSY" "busy_during=$busy_during" \
    "tr_cpu_s=$(awk -v a="$tr0" -v b="$tr1" 'BEGIN{printf "%.2f", b-a}')" \
    "tr_cpu_ms_per_msg=$(div "$(awk -v a="$tr0" -v b="$tr1" 'BEGIN{print (b-a)*1000}')" "$MSGS")" \
    "store=${st// /,}")
  if [ "$backend" = postgres ]; then
    local pg1 x1 xid1 wal calls exec_ms
    pg1=$(pg_cpu_s)
    xid1=$(pg_xmax)
    x1=$(pg_settled "$db")
    wal=$(pg_q postgres "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$wal0')")
    local who="dbid = (SELECT oid FROM pg_database WHERE datname = '$db') AND userid = (SELECT oid FROM pg_roles WHERE rolname = 'trackrelay')"
    calls=$(pg_q postgres "SELECT COALESCE(SUM(calls), 0) FROM pg_stat_statements WHERE $who")
    exec_ms=$(pg_q postgres "SELECT COALESCE(ROUND(SUM(total_exec_time)::numeric, 1), 0) FROM pg_stat_statements WHERE $who")
    pg_q postgres "SELECT calls, ROUND(calls::numeric / $MSGS, 2) AS per_msg, rows, ROUND(total_exec_time::numeric, 1) AS ms,
                          LEFT(REGEXP_REPLACE(query, '\\s+', ' ', 'g'), 200)
                   FROM pg_stat_statements WHERE $who ORDER BY calls DESC LIMIT 40" >"$OUT/pgss-$name-$i.txt"
    res=$(add_fields "$res" \
      "pg_cpu_s=$(awk -v a="$pg0" -v b="$pg1" 'BEGIN{printf "%.2f", b-a}')" \
      "pg_cpu_ms_per_msg=$(div "$(awk -v a="$pg0" -v b="$pg1" 'BEGIN{print (b-a)*1000}')" "$MSGS")" \
      "pg_stmts_per_msg=$(div "$calls" "$MSGS" 2)" \
      "pg_xacts_per_msg=$(div $((x1 - x0)) "$MSGS" 2)" \
      "pg_write_xacts_per_msg=$(div $((xid1 - xid0)) "$MSGS" 2)" \
      "pg_wal_kb_per_msg=$(div "$wal" $((MSGS * 1024)) 1)" \
      "pg_exec_ms_per_msg=$(div "$exec_ms" "$MSGS")")
  fi
  res=$(check_sink "$res" "$st" "$want")
  echo "$res" | tee -a "$OUT/runs.jsonl"
  log "$name run $i store: $st (expected delivered=$want)"
  local p
  for p in "${NODE_PIDS[@]}"; do stop_tracked "$p"; done
  NODE_PIDS=()
}

# check_sink JSON STORE_STATUS WANT_DELIVERED: adds the sink's counts and ok=0|1
check_sink() {
  local res=$1 st=$2 want=$3 total uniq dups missing ok=1
  sleep 0.5   # a duplicate would arrive after the originals: give a late one a moment
  read -r total uniq dups missing <<<"$(sink_check "$MSGS")"
  [ "$dups" = 0 ] && [ "$missing" = 0 ] && [ "$uniq" = "$MSGS" ] || ok=0
  if [ -n "$st" ] && [ "$st" != "delivered=$want" ]; then ok=0; fi
  case $res in *'"failed": 0,'*) ;; *) ok=0 ;; esac
  add_fields "$res" "sink_total=$total" "sink_unique=$uniq" "dups=$dups" "missing=$missing" "ok=$ok"
}

run_postfix() {
  local i=$1 res
  warmup "127.0.0.1:$PF_PORT"; pf_wait_empty || true
  clear_dump
  measure postfix "127.0.0.1:$PF_PORT"
  res=$(cat "$WORK/measure.json")
  pf_wait_empty || true
  res=$(add_fields "$res" "run=$i" "busy_before=$MEASURE_BUSY" "busy_during=$(busy_since "$MEASURE_S")")
  res=$(check_sink "$res" "" "")
  echo "$res" | tee -a "$OUT/runs.jsonl"
}

# ---------------------------------------------------------------- main
start_dump_sink "$SINK_PORT" "$WORK/sink.log" "$DUMP"
log "sink: $SINK_KIND on 127.0.0.1:$SINK_PORT, dumps in $DUMP"
if [ "$SKIP_POSTFIX" != 1 ]; then
  start_postfix "$WORK/postfix" "$PF_PORT" "$SINK_PORT"
  log "postfix $(postconf -c "$PF_CONF" -h mail_version) on 127.0.0.1:$PF_PORT (master $PF_MASTER)"
fi
[ "$SKIP_PG" = 1 ] || start_pg

{
  echo "# nodes benchmark $(date -u +%FT%TZ) host=$(hostname) cores=$(nproc) mem=$(awk '/MemTotal/{printf "%.0fGiB", $2/1048576}' /proc/meminfo) kernel=$(uname -r) load=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# trackrelay $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') RUNS=$RUNS MSGS=$MSGS SESS=$SESS SIZE=$SIZE LINKS=$LINKS WARMUP=$WARMUP TR_PER_DEST=${TR_PER_DEST:-20} PG_POOL=$PG_POOL sink=$SINK_KIND"
  if [ "$SKIP_POSTFIX" != 1 ]; then echo "# postfix $(postconf -c "$PF_CONF" -h mail_version)"; fi
  if [ "$SKIP_PG" != 1 ]; then echo "# postgresql $PG_VERSION fsync=$(pg_q postgres 'SHOW fsync') synchronous_commit=$(pg_q postgres 'SHOW synchronous_commit') shared_buffers=$(pg_q postgres 'SHOW shared_buffers') wal_level=$(pg_q postgres 'SHOW wal_level')"; fi
} | tee "$OUT/header.txt"

: >"$OUT/runs.jsonl"
for i in $(seq "$RUNS"); do
  log "=== run $i/$RUNS"
  [ "$SKIP_POSTFIX" = 1 ] || run_postfix "$i"
  run_tr tr-sqlite "$i" sqlite 1
  if [ "$SKIP_PG" != 1 ]; then
    run_tr tr-pg "$i" postgres 1
    run_tr tr-pg-2nodes "$i" postgres 2
  fi
done

# ---------------------------------------------------------------- commit probe
# What one durable commit costs on this disk, and what serialises commits:
# plain one-row inserts (1 and 20 clients: the server's group commit), the
# same with a NOTIFY in the transaction (as accept does: a notifying
# transaction holds a cluster-wide lock through its commit), and an upsert
# of one shared row (as the hourly rollup of every event is).
if [ "$SKIP_PG" != 1 ]; then
  log "pgbench: commit probes, 1 and 20 clients, 4 s each"
  pg_q postgres "CREATE DATABASE probe" >/dev/null
  pg_q probe "CREATE TABLE p (x int); CREATE TABLE h (k int PRIMARY KEY, n bigint)" >/dev/null
  printf 'INSERT INTO p VALUES (1);\n' >"$WORK/insert.sql"
  printf 'BEGIN;\nINSERT INTO p VALUES (1);\nSELECT pg_notify(%s, %s);\nEND;\n' "'probe'" "''" >"$WORK/notify.sql"
  printf 'INSERT INTO h VALUES (1, 1) ON CONFLICT (k) DO UPDATE SET n = h.n + 1;\n' >"$WORK/hotrow.sql"
  for probe in insert notify hotrow; do
    for c in 1 20; do
      "$PG_BIN/pgbench" -n -T 4 -c "$c" -j 1 -f "$WORK/$probe.sql" -h 127.0.0.1 -p "$PG_PORT" -U bench probe \
        >"$OUT/pgbench-$probe-c$c.txt" 2>&1 || true
      echo "pgbench $probe, $c client(s): $(grep -E '^(latency average|tps)' "$OUT/pgbench-$probe-c$c.txt" | sed 's/ (without initial connection time)//' | paste -sd' ')"
    done
  done | tee "$OUT/pgbench.txt"
fi

# ---------------------------------------------------------------- summary
{
  echo
  echo "## nodes summary: $MSGS msgs x ${SIZE} B, $SESS sessions, $RUNS run(s); median [min-max]"
  python3 "$BENCH_DIR/summary.py" "$OUT/runs.jsonl" rate:accept/s e2e_rate:e2e/s \
    tr_cpu_ms_per_msg:tr_ms/msg pg_cpu_ms_per_msg:pg_ms/msg pg_stmts_per_msg:stmts/msg \
    pg_xacts_per_msg:xacts/msg pg_write_xacts_per_msg:write_xacts/msg pg_wal_kb_per_msg:wal_KB/msg dups missing ok busy_before busy_during \
    --ratio tr-sqlite/postfix:rate --ratio tr-sqlite/postfix:e2e_rate \
    --ratio tr-pg/postfix:rate --ratio tr-pg/postfix:e2e_rate \
    --ratio tr-pg-2nodes/postfix:rate --ratio tr-pg-2nodes/postfix:e2e_rate \
    --ratio tr-pg/tr-sqlite:e2e_rate --ratio tr-pg-2nodes/tr-pg:e2e_rate
  [ ! -s "$OUT/pgbench.txt" ] || cat "$OUT/pgbench.txt"
  echo "(runs: $OUT/runs.jsonl; top statements per run: $OUT/pgss-*.txt)"
} | tee "$OUT/summary.txt"
if grep -q '"ok": 0' "$OUT/runs.jsonl"; then
  echo "FAILED: a run lost, duplicated or left undelivered mail (ok=0 in runs.jsonl)" >&2
  exit 1
fi
