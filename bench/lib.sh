# Shared helpers for bench/*.sh (sourced, not run). Everything here listens
# on 127.0.0.1 only; every process started is recorded with its PID and
# stopped by bench_cleanup (called from the scripts' EXIT/INT/TERM trap).
# shellcheck shell=bash

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$TARGET_DIR/release
RUNS=${RUNS:-3}
QUIET_MAX_BUSY=${QUIET_MAX_BUSY:-15}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-300}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

log() { echo "# $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- processes
BENCH_PIDS=()          # "pid:how" (how = kill | postfix:CONFDIR | nginx)
bench_track() { BENCH_PIDS+=("$1:${2:-kill}"); }

stop_pid() {           # stop_pid PID [how]: by PID, politely, then firmly
  local pid=$1 how=${2:-kill}
  kill -0 "$pid" 2>/dev/null || return 0
  case $how in
    postfix:*) postfix -c "${how#postfix:}" stop >/dev/null 2>&1 || kill "$pid" ;;
    nginx) kill -QUIT "$pid" ;;
    *) kill -TERM "$pid" ;;
  esac
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
  wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
  set +e
  local i
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    local e=${BENCH_PIDS[i]}
    stop_pid "${e%%:*}" "${e#*:}"
  done
  BENCH_PIDS=()
  if [ -n "${WORK:-}" ] && [ "${KEEP_WORK:-0}" != 1 ] && [ -d "$WORK" ]; then rm -rf "$WORK"; fi
}

untrack_pid() {        # after stopping it yourself
  local pid=$1 keep=() e
  for e in "${BENCH_PIDS[@]}"; do [ "${e%%:*}" = "$pid" ] || keep+=("$e"); done
  BENCH_PIDS=("${keep[@]}")
}

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
need_ports() {
  local p
  for p in "$@"; do
    port_free "$p" || die "port $p on 127.0.0.1 is already in use (ss -ltnp); pick other ports through the *_PORT variables"
  done
}

wait_port() {          # wait_port PORT [PID] [seconds]: bounded
  local port=$1 pid=${2:-} t=${3:-30} i
  for ((i = 0; i < t * 20; i++)); do
    port_free "$port" || return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------- build
build_release() {      # build_release [extra cargo args]: trackrelay + the examples
  if [ "${SKIP_BUILD:-0}" = 1 ]; then
    log "SKIP_BUILD=1: using the binaries in $REL"
  else
    log "building (release) into $TARGET_DIR"
    (cd "$ROOT" && cargo build --release -j "${JOBS:-2}" --bin trackrelay "$@") >&2 \
      || die "cargo build failed"
  fi
  [ -x "$REL/trackrelay" ] || die "no $REL/trackrelay (set CARGO_TARGET_DIR or unset SKIP_BUILD)"
}

# ---------------------------------------------------------------- quiet box
cpu_sample() { awk '/^cpu /{t=0; for (i=2;i<=NF;i++) t+=$i; print t, $5+$6; exit}' /proc/stat; }

busy_since() {         # busy_since "TOTAL IDLE" (from cpu_sample): busy% since then
  local a b
  read -r a b <<<"$1"
  local c d
  read -r c d <<<"$(cpu_sample)"
  awk -v dt=$((c - a)) -v di=$((d - b)) 'BEGIN{ if (dt <= 0) print 0; else printf "%.0f\n", 100*(1-di/dt) }'
}

# quiet_wait: waits (at most QUIET_TIMEOUT s) until CPU busy over a 2 s window is
# <= QUIET_MAX_BUSY %, prints the last busy% seen on stdout (logs to stderr).
quiet_wait() {
  local start=$SECONDS busy s
  while :; do
    s=$(cpu_sample)
    if [ "$QUIET_TIMEOUT" -gt 0 ]; then sleep 2; else sleep 0.5; fi
    busy=$(busy_since "$s")
    if [ "$busy" -le "$QUIET_MAX_BUSY" ]; then
      log "quiet: busy=${busy}% after $((SECONDS - start))s"
      break
    fi
    if [ $((SECONDS - start)) -ge "$QUIET_TIMEOUT" ]; then
      log "quiet: NOT quiet (busy=${busy}%) after $((SECONDS - start))s, measuring anyway"
      break
    fi
  done
  echo "$busy"
}

proc_cpu_s() {         # proc_cpu_s PID: user+system CPU seconds used so far (all threads)
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

proc_ctxt() {          # proc_ctxt PID: context switches so far, all live threads (voluntary + not)
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}'
}

# ---------------------------------------------------------------- summaries
# add_fields 'JSON' key=value...: merge numeric or string fields into a JSON line
add_fields() {
  python3 - "$@" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    try:
        d[k] = float(v) if "." in v else int(v)
    except ValueError:
        d[k] = v
print(json.dumps(d))
PY
}

# ---------------------------------------------------------------- servers
have_postfix() { command -v postfix >/dev/null && command -v smtp-sink >/dev/null && command -v smtp-source >/dev/null; }
postfix_hint() {
  cat >&2 <<'EOF'
#   Postfix (and its smtp-source/smtp-sink) is not installed; install it without
#   configuring a system MTA:
#     echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
#     DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix
EOF
}

# start_sink PORT LOGFILE: Postfix's smtp-sink -c when installed, else examples/smtp_sink;
# both print mesg=N counters to LOGFILE. Sets SINK_PID and SINK_KIND.
start_sink() {
  local port=$1 logf=$2
  : >"$logf"
  if command -v smtp-sink >/dev/null && [ "${OWN_SINK:-0}" != 1 ]; then
    local u=()
    if [ "$(id -u)" = 0 ]; then u=(-u nobody); fi
    smtp-sink -c "${u[@]}" "127.0.0.1:$port" 1024 >"$logf" 2>&1 &
    SINK_PID=$!
    SINK_KIND="smtp-sink"
  else
    "$REL/examples/smtp_sink" --listen "127.0.0.1:$port" >"$logf" 2>&1 &
    SINK_PID=$!
    SINK_KIND="examples/smtp_sink"
  fi
  bench_track "$SINK_PID"
  wait_port "$port" "$SINK_PID" 10 || { cat "$logf" >&2; die "the sink did not start on $port"; }
}

# start_postfix BASE SMTPD_PORT RELAY_PORT: a private Postfix instance in BASE
# (own config, queue, data and log), relaying everything to 127.0.0.1:RELAY_PORT,
# no TLS, accepting from 127.0.0.0/8 without AUTH. Sets PF_CONF, PF_QUEUE, PF_MASTER.
start_postfix() {
  local base=$1 port=$2 relay=$3
  PF_CONF=$base/etc PF_QUEUE=$base/queue
  mkdir -p "$PF_CONF" "$PF_QUEUE" "$base/data"
  chown postfix "$base/data" 2>/dev/null || true
  cat >"$PF_CONF/main.cf" <<EOF
compatibility_level = 3.6
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
queue_directory = $PF_QUEUE
data_directory = $base/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:local delivery is off
alias_maps =
alias_database =
relayhost = [127.0.0.1]:$relay
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = none
smtp_tls_security_level = none
append_dot_mydomain = no
biff = no
# maillog_file must be under one of these prefixes, or 'postfix start' fails quietly
maillog_file_prefixes = /var, /dev/stdout, $base
maillog_file = $base/maillog
EOF
  # Postfix's standard services, no chroot, and our loopback listener instead of port 25.
  cat >"$PF_CONF/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup     unix n - n 60 1 pickup
cleanup    unix n - n - 0 cleanup
qmgr       unix n - n 300 1 qmgr
tlsmgr     unix - - n 1000? 1 tlsmgr
rewrite    unix - - n - - trivial-rewrite
bounce     unix - - n - 0 bounce
defer      unix - - n - 0 bounce
trace      unix - - n - 0 bounce
verify     unix - - n - 1 verify
flush      unix n - n 1000? 0 flush
proxymap   unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp       unix - - n - - smtp
relay      unix - - n - - smtp
showq      unix n - n - - showq
error      unix - - n - - error
retry      unix - - n - - error
discard    unix - - n - - discard
local      unix - n n - - local
virtual    unix - n n - - virtual
lmtp       unix - - n - - lmtp
anvil      unix - - n - 1 anvil
scache     unix - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
  postfix -c "$PF_CONF" check >&2 || true
  postfix -c "$PF_CONF" start >&2 \
    || die "postfix start failed (see $base/maillog; try: postconf -c $PF_CONF -e maillog_file=/dev/stdout)"
  local i
  for i in $(seq 100); do [ -s "$PF_QUEUE/pid/master.pid" ] && break; sleep 0.1; done
  PF_MASTER=$(tr -d ' ' <"$PF_QUEUE/pid/master.pid")
  bench_track "$PF_MASTER" "postfix:$PF_CONF"
  wait_port "$port" "$PF_MASTER" 10 || die "postfix does not listen on $port"
}

pf_queue_count() { find "$PF_QUEUE"/{maildrop,incoming,active,deferred,hold} -type f 2>/dev/null | wc -l; }
pf_wait_empty() {      # bounded: 300 s
  local i
  for i in $(seq 600); do [ "$(pf_queue_count)" -eq 0 ] && return 0; sleep 0.5; done
  log "postfix queue did not drain: $(pf_queue_count) files"; return 1
}

# write_tr_config FILE DATA_DIR SMTP_PORT TRACK_PORT API_PORT DKIM_KEY TOKEN_HASH ROUTES [EXTRA]
write_tr_config() {
  local f=$1 data=$2 smtp=$3 track=$4 api=$5 key=$6 hash=$7 routes=$8 extra=${9:-}
  cat >"$f" <<EOF
[server]
hostname = "relay.bench.test"
data_dir = "$data"
shutdown_grace = "10s"

[submission]
listen = ["127.0.0.1:$smtp"]
listen_tls = []
trusted_networks = ["127.0.0.0/8"]
max_connections = 2000
max_connections_per_ip = 1000

[tracking]
listen = ["127.0.0.1:$track"]
listen_tls = []
scheme = "https"
trusted_proxies = []

[[domains]]
name = "example.com"
open_tracking = true
click_tracking = true
tracking_subdomain = "links"
tls = "opportunistic"
dkim = [{ selector = "bench", private_key = "$key" }]

[delivery]
routes = { $routes }
max_concurrency = 200
max_per_destination = ${TR_PER_DEST:-20}
${TR_DELIVERY_EXTRA:-}

[api]
listen = ["127.0.0.1:$api"]
token_hash = "$hash"
$extra
EOF
}

# start_trackrelay CONFIG SMTP_PORT LOG: sets TR_PID
start_trackrelay() {
  local conf=$1 port=$2 logf=$3
  "$REL/trackrelay" check-config --config "$conf" >&2 || die "check-config failed for $conf"
  TRACKRELAY_LOG=${TRACKRELAY_LOG:-warn} "$REL/trackrelay" serve --config "$conf" >"$logf" 2>&1 &
  TR_PID=$!
  bench_track "$TR_PID"
  wait_port "$port" "$TR_PID" 30 || { tail -20 "$logf" >&2; die "trackrelay did not start"; }
}

stop_tracked() { stop_pid "$1"; untrack_pid "$1"; }

# start_dump_sink PORT LOGFILE DIR: Postfix's smtp-sink -c that also dumps each
# delivery to DIR/m.<random> (`-d`), the file starting with `X-Mail-Args:
# <envelope sender>` and `X-Rcpt-Args: <recipient>`. As root smtp-sink runs as
# nobody, so DIR is made theirs and its parent searchable. Sets SINK_PID, SINK_KIND.
start_dump_sink() {
  local port=$1 logf=$2 dir=$3 u=()
  command -v smtp-sink >/dev/null || die "smtp-sink is needed (apt-get install postfix)"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    u=(-u nobody)
    chown nobody "$dir"
    chmod o+x "$(dirname "$dir")"
  fi
  : >"$logf"
  smtp-sink -c "${u[@]}" -d "$dir/m." "127.0.0.1:$port" 1024 >"$logf" 2>&1 &
  SINK_PID=$!
  SINK_KIND="smtp-sink -d"
  bench_track "$SINK_PID"
  wait_port "$port" "$SINK_PID" 10 || { cat "$logf" >&2; die "the sink did not start on $port"; }
}

# --- wrk over many paths (queries.sh, dashboard.sh) -------------------------
# write_paths_lua FILE: a wrk script that cycles through the request paths
# in $PATHS (one per line), each thread from its own offset, sending the
# header $HEADER_NAME: $HEADER_VALUE; requests are formatted once in init().
write_paths_lua() {
  cat >"$1" <<'LUA'
local paths = {}
for line in io.lines(os.getenv("PATHS")) do paths[#paths + 1] = line end
local headers = { [os.getenv("HEADER_NAME")] = os.getenv("HEADER_VALUE") }
local reqs, n, i = {}, 0, 0
function setup(thread) thread:set("start", math.random(1, #paths)) end
function init(args)
  for k, p in ipairs(paths) do reqs[k] = wrk.format("GET", p, headers) end
  n = #reqs
  i = start or 0
end
function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end
LUA
}

# parse_wrk FILE: wrk --latency output as one JSON line (rps, requests,
# p50_ms, p99_ms, non_2xx).
parse_wrk() {
  python3 - "$1" <<'PY'
import json, re, sys
t = open(sys.argv[1]).read()
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
lat = {p: round(float(v) * unit[u], 3) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", t, re.M)}
req = re.search(r"(\d+) requests in", t)
rps = re.search(r"Requests/sec:\s+([\d.]+)", t)
non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
print(json.dumps({"rps": float(rps.group(1)) if rps else None, "requests": int(req.group(1)) if req else None,
                  "p50_ms": lat.get("50"), "p99_ms": lat.get("99"), "non_2xx": int(non.group(1)) if non else 0}))
PY
}

# --- the generated year-long store (queries.sh, dashboard.sh) ---------------
# gen_store_ready: makes (or reuses) $STORE_DIR with $EMAILS emails, $EVENTS
# events and a hot email with $HOT events, by examples/gen_store (built
# release); sets DB and IDS. Generation notes go to $OUT/gen*.txt.
gen_store_ready() {
  build_release --example gen_store
  DB=$STORE_DIR/trackrelay.sqlite3
  IDS=$STORE_DIR/trackrelay.ids
  if [ -s "$IDS" ]; then
    log "reusing $STORE_DIR"
    return
  fi
  rm -rf "$STORE_DIR"; mkdir -p "$STORE_DIR"
  log "generating $EMAILS emails, $EVENTS events (hot email: $HOT) into $STORE_DIR"
  local start=$SECONDS timer=()
  [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)
  "${timer[@]}" "$REL/examples/gen_store" "$DB" "$EMAILS" "$EVENTS" "$HOT" 2>"$OUT/gen.txt" \
    || { tail -20 "$OUT/gen.txt" >&2; rm -rf "$STORE_DIR"; die "gen_store failed"; }
  echo "generated in $((SECONDS - start)) s: $(grep '^done' "$OUT/gen.txt" || true)" | tee "$OUT/gen-summary.txt" >&2
}

# serve_gen_store: serves $STORE_DIR (ports $SMTP_PORT, $TRACK_PORT,
# $API_PORT) with a fresh admin token in TOKEN; nothing is pruned.
serve_gen_store() {
  TOKEN=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  local hash
  hash=$(printf '%s' "$TOKEN" | "$REL/trackrelay" hash-password)
  cat >"$WORK/config.toml" <<CONF
[server]
hostname = "relay.bench.test"
data_dir = "$STORE_DIR"

[submission]
listen = ["127.0.0.1:$SMTP_PORT"]
listen_tls = []
trusted_networks = ["127.0.0.0/8"]

[tracking]
listen = ["127.0.0.1:$TRACK_PORT"]
listen_tls = []

[api]
listen = ["127.0.0.1:$API_PORT"]
token_hash = "$hash"

[store]
# The generated store spans a year: nothing may be pruned while measuring.
retain_messages = "3650d"
retain_events = "3650d"
CONF
  # The first start on an older store migrates it (e.g. adds indexes).
  start_trackrelay "$WORK/config.toml" "$API_PORT" "$WORK/serve.log"
}
