#!/usr/bin/env bash
# Catalog and checkout workloads against the running demo (deploy/local/demo.sh up), direct
# Postgres vs pgsidecar vs Pgpool-II with its in-memory query cache, in one run:
#   point lookup (zipf over 80,000 SKUs, product + price join), category page (join, ORDER BY,
#   LIMIT 24), checkout (lock, decrement, insert order and line; locks only via pgsidecar), and
#   checkout-hot (issue #18's: zipf over 500 SKUs × 3 warehouses, so checkouts queue on rows;
#   its rows are restocked first), and tpcb-like (pgbench's built-in write transaction on its own
#   tables, scale 10, created in the demo database on first use); the last two are not in the
#   default set: WORKLOADS="checkout-hot tpcb-like" MODE=extended runs them beside PgBouncer.
#
# Each target runs each workload ROUNDS times back to back (default 2): the first round is
# reported as "cold" (caches, and Postgres' shared buffers, start as the previous runs left
# them), the last as "warm" (what a production cache that has been serving for a while sees).
# Direct Postgres gets the same warm-up as the proxies. Per round: TPS, mean latency, p50 and
# p99 from pgbench's per-transaction log (-l, latency column in µs; a SAMPLE fraction of the
# transactions is logged with several clients, every one with 1 client), each proxy's cache hit
# ratio over that round (pgsidecar: admin console SHOW CACHE deltas; Pgpool-II: SHOW
# POOL_CACHE) and, for pgsidecar and PgBouncer (one process each), the proxy's CPU time
# (user + sys) per transaction from /proc.
# Right after each read workload's warm round, a 1-client run of it per target gives the cache
# hit latency: its p50 with that run's hit ratio, against direct Postgres' p50.
#
# Pgpool-II (Debian package pgpool2) is started here, in a temp dir on a free port, as user
# postgres when run as root: streaming-replication mode with load balancing over the demo's
# primary and both replicas, memory_cache_enabled = on, memqcache_method = 'shmem'
# (memqcache_expire = 90 s, as the demo's cache_ttl). It is stopped on exit. PGPOOL=0 skips it.
#
# PgBouncer (Debian package, `pgbouncer`) is started here too, in transaction pooling in front of
# the primary with the sidecar's pool size (20), as the plain pooler an application would
# otherwise put there; no cache, no routing, no locks. PgBouncer before 1.21 cannot keep
# prepared statements under transaction pooling, so with MODE=prepared it is skipped (run
# MODE=extended for the same-run comparison with it). PGBOUNCER=0 skips it.
#
# `pgsidecar-unix` is the same pgsidecar reached on its Unix socket (the demo starts it with
# --unix-socket-dir .demo/sidecar), as an application beside its sidecar would; UNIX=0 skips it.
# Direct Postgres is reached over TCP, as an application reaches a database on another host.
#
# BASELINE=<pgsidecar binary> adds `baseline`: that build started beside the demo's sidecar with
# the same arguments and config on another port (its own Redis key prefix, so that neither
# waits for the other's acknowledgements), for a same-run A/B of a change. BASELINE_SED=<sed
# expression> edits the baseline's copy of the config, for an A/B of a setting with one binary
# (BASELINE=target/release/pgsidecar BASELINE_SED='s/^idle_spin = .*/idle_spin = "0s"/'), and
# BASELINE_ENV="NAME=value ..." its environment (BASELINE_ENV=PGSIDECAR_WORKER_THREADS=1). For every sidecar
# target, the round trips it made per transaction on its own account (SHOW STATS round_trips_*,
# those the client waits for and those it does not) are printed after each round.
#
# Env: CLIENTS (16), DURATION (10), ROUNDS (2), SAMPLE (0.1), WORKLOADS (point-lookup
# category-page checkout), MODE (prepared: the application's usual extended protocol with
# statement reuse), PGPOOL (1), PGBOUNCER (1), SIDECAR_PID (from .demo/pgsidecar.pid),
# DEMO_PRIMARY_PORT/DEMO_REPLICA1_PORT/DEMO_REPLICA2_PORT (15432/15433/15434, as the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-10}
MODE=${MODE:-prepared}
PGPOOL=${PGPOOL:-1}
PGBOUNCER=${PGBOUNCER:-1}
ROUNDS=${ROUNDS:-2}
SAMPLE=${SAMPLE:-0.1}
WORKLOADS=${WORKLOADS:-point-lookup category-page checkout}
SIDECAR_PID=${SIDECAR_PID:-$(cat .demo/pgsidecar.pid 2>/dev/null || true)}
PRIMARY_PORT=${DEMO_PRIMARY_PORT:-15432}
REPLICA_PORTS="${DEMO_REPLICA1_PORT:-15433} ${DEMO_REPLICA2_PORT:-15434}"
DIRECT=${DIRECT:-postgres://shop:shop@127.0.0.1:$PRIMARY_PORT/shop}
SIDECAR=${SIDECAR:-postgres://shop:shop@127.0.0.1:6432/shop}
SIDECAR_ADMIN=${SIDECAR_ADMIN:-${SIDECAR%/*}/pgsidecar}
UNIX=${UNIX:-1}
BASELINE=${BASELINE:-}
SIDECAR_SOCK_DIR=${SIDECAR_SOCK_DIR:-$(pwd)/.demo/sidecar}
[ $((${#SIDECAR_SOCK_DIR} + 20)) -gt 100 ] && SIDECAR_SOCK_DIR="/tmp/pgsidecar-demo-sidecar-$(id -u)"
SIDECAR_UNIX=${SIDECAR_UNIX:-postgres://shop:shop@localhost:6432/shop?host=$SIDECAR_SOCK_DIR}
psql "$SIDECAR" -Atc 'SELECT 1' >/dev/null || { echo "the demo is not running: deploy/local/demo.sh up" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- Pgpool-II ------------------------------------------------------------------------------
start_pgpool() {
  command -v pgpool >/dev/null || { echo "pgpool is not installed (apt-get install pgpool2), or PGPOOL=0" >&2; exit 1; }
  POOL_DIR=$(mktemp -d /tmp/pgsidecar-pgpool-XXXXXX)
  POOL_PORT=$(free_port)
  mkdir "$POOL_DIR/oiddir"
  local i=0 port
  {
    cat <<CONF
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $POOL_PORT
unix_socket_directories = '$POOL_DIR'
pcp_listen_addresses = ''
pcp_socket_dir = '$POOL_DIR'
pid_file_name = '$POOL_DIR/pgpool.pid'
logdir = '$POOL_DIR'
log_min_messages = warning
num_init_children = $((CLIENTS + 4))
max_pool = 1
enable_pool_hba = on
pool_passwd = '$POOL_DIR/pool_passwd'
load_balance_mode = on
sr_check_period = 10
sr_check_user = 'shop'
health_check_period = 0
memory_cache_enabled = on
memqcache_method = 'shmem'
memqcache_total_size = 64MB
memqcache_expire = 90
memqcache_oiddir = '$POOL_DIR/oiddir'
CONF
    for port in "$PRIMARY_PORT" $REPLICA_PORTS; do
      printf "backend_hostname%d = '127.0.0.1'\nbackend_port%d = %d\nbackend_weight%d = 1\n" "$i" "$i" "$port" "$i"
      i=$((i + 1))
    done
  } >"$POOL_DIR/pgpool.conf"
  # Clients log in with SCRAM like the demo's servers ask for; pool_passwd holds the password
  # pgpool needs to answer them and the backends.
  echo 'host all all 127.0.0.1/32 scram-sha-256' >"$POOL_DIR/pool_hba.conf"
  echo 'shop:TEXTshop' >"$POOL_DIR/pool_passwd"
  touch "$POOL_DIR/pcp.conf"
  chmod 600 "$POOL_DIR/pool_passwd"
  [ "$(id -u)" = 0 ] && chown -R postgres "$POOL_DIR"
  as_postgres pgpool -n -f "$POOL_DIR/pgpool.conf" -F "$POOL_DIR/pcp.conf" -a "$POOL_DIR/pool_hba.conf" \
    >"$POOL_DIR/pgpool.log" 2>&1 &
  POOL_PID=$!
  PGPOOL_URL="postgres://shop:shop@127.0.0.1:$POOL_PORT/shop"
  await_up pgpool "$PGPOOL_URL" "$POOL_DIR/pgpool.log"
}
await_up() { # name url log: until a query answers there (20 s), else its log and exit 1
  for _ in $(seq 100); do psql "$2" -Atc 'SELECT 1' >/dev/null 2>&1 && return; sleep 0.2; done
  echo "$1 did not start; its log:" >&2
  cat "$3" >&2
  exit 1
}
stop_pgpool() {
  [ -n "${POOL_DIR:-}" ] || return 0
  as_postgres pgpool -f "$POOL_DIR/pgpool.conf" -m fast stop >/dev/null 2>&1 || true
  if [ -n "${POOL_PID:-}" ]; then
    for _ in $(seq 50); do kill -0 "$POOL_PID" 2>/dev/null || break; sleep 0.2; done
    kill "$POOL_PID" 2>/dev/null || true
  fi
  rm -rf "$POOL_DIR"
}
# --- PgBouncer ------------------------------------------------------------------------------
start_pgbouncer() {
  command -v pgbouncer >/dev/null || { echo "pgbouncer is not installed (apt-get install pgbouncer), or PGBOUNCER=0" >&2; exit 1; }
  PB_DIR=$(mktemp -d /tmp/pgsidecar-pgbouncer-XXXXXX)
  PB_PORT=$(free_port)
  # The demo's servers ask for SCRAM; a plain-text password in auth_file lets PgBouncer answer
  # them and check its clients with SCRAM as well.
  cat >"$PB_DIR/pgbouncer.ini" <<INI
[databases]
shop = host=127.0.0.1 port=$PRIMARY_PORT dbname=shop
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $PB_DIR/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 1000
logfile = $PB_DIR/pgbouncer.log
pidfile = $PB_DIR/pgbouncer.pid
INI
  echo '"shop" "shop"' >"$PB_DIR/userlist.txt"
  chmod 600 "$PB_DIR/userlist.txt"
  [ "$(id -u)" = 0 ] && chown -R postgres "$PB_DIR"
  as_postgres pgbouncer -d "$PB_DIR/pgbouncer.ini"
  PGBOUNCER_URL="postgres://shop:shop@127.0.0.1:$PB_PORT/shop"
  await_up pgbouncer "$PGBOUNCER_URL" "$PB_DIR/pgbouncer.log"
}
stop_pgbouncer() {
  [ -n "${PB_DIR:-}" ] || return 0
  [ -f "$PB_DIR/pgbouncer.pid" ] && kill "$(cat "$PB_DIR/pgbouncer.pid")" 2>/dev/null || true
  rm -rf "$PB_DIR"
}
pgbouncer_has_prepared() { # PgBouncer 1.21 added prepared statements in transaction pooling
  pgbouncer --version | head -1 | awk '{split($2, v, "."); exit !(v[1] > 1 || v[2] >= 21)}'
}
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# --- a baseline pgsidecar (BASELINE=<binary>) ------------------------------------------------
start_baseline() {
  [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
  [ -r "/proc/$SIDECAR_PID/cmdline" ] || { echo "BASELINE needs the demo's sidecar pid (SIDECAR_PID)" >&2; exit 1; }
  BL_DIR=$(mktemp -d /tmp/pgsidecar-baseline-XXXXXX)
  BL_PORT=$(free_port)
  local args=() a next="" config=""
  mapfile -d '' -t a <"/proc/$SIDECAR_PID/cmdline"
  for arg in "${a[@]:1}"; do
    case "$next" in
      --listen) args+=("127.0.0.1:$BL_PORT"); next=""; continue ;;
      --unix-socket-dir) args+=("$BL_DIR"); next=""; continue ;;
      --config) config=$arg; args+=("$BL_DIR/config.toml"); next=""; continue ;;
    esac
    args+=("$arg"); next=$arg
  done
  # Its own fleet and metrics port; everything else as the demo's sidecar.
  { [ -n "$config" ] && sed -e "s/^http_addr = .*/http_addr = \"127.0.0.1:$(free_port)\"/" \
      -e 's/^\[cache\]$/[cache]\nkey_prefix = "pgsidecar-baseline"\ninvalidation_channel = "pgsidecar-baseline:inv"/' \
      ${BASELINE_SED:+-e "$BASELINE_SED"} "$config"; } >"$BL_DIR/config.toml"
  # shellcheck disable=SC2086 # BASELINE_ENV is a list of NAME=value words
  env ${BASELINE_ENV:-} "$BASELINE" "${args[@]}" >"$BL_DIR/pgsidecar.log" 2>&1 </dev/null &
  BL_PID=$!
  BASELINE_URL="${SIDECAR%@*}@127.0.0.1:$BL_PORT/${SIDECAR##*/}"
  await_up baseline "$BASELINE_URL" "$BL_DIR/pgsidecar.log"
}
stop_baseline() {
  [ -n "${BL_PID:-}" ] && kill "$BL_PID" 2>/dev/null && wait "$BL_PID" 2>/dev/null
  [ -n "${BL_DIR:-}" ] && rm -rf "$BL_DIR"
  return 0
}

# --- measurements ---------------------------------------------------------------------------
LOG_DIR=$(mktemp -d /tmp/pgsidecar-bench-XXXXXX)
run() { # script url [clients] -> "tps mean_ms p50_ms p99_ms transactions"
  local out clients=${3:-$CLIENTS} rate=$SAMPLE
  [ "$clients" = 1 ] && rate=1
  rm -f "$LOG_DIR"/tx*
  local script=(-f "$PWD/scripts/workloads/$1")
  [ "$1" = tpcb-like.sql ] && script=(-b tpcb-like)
  out=$(cd "$LOG_DIR" && pgbench -n -M "$MODE" -c "$clients" -j "$((clients < 2 ? 1 : 2))" -T "$DURATION" \
    -l --log-prefix=tx --sampling-rate="$rate" "${script[@]}" "$2" 2>&1) || { echo "0 0 0 0 0"; return; }
  echo "$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | tail -1)" \
    "$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")" \
    "$(cat "$LOG_DIR"/tx* | awk '{print $3}' | sort -n | awk '{v[NR] = $1}
      END { if (NR == 0) { print "- -"; exit }
            printf "%.3f %.3f", v[int((NR + 1) * 0.5)] / 1000, v[int((NR - 1) * 0.99) + 1] / 1000 }')" \
    "$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")"
}
# CPU time (user + sys, clock ticks) a proxy process has used; "-" without its pid.
sidecar_ticks() { # [pid]
  local pid=${1:-$SIDECAR_PID}
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || { echo -; return; }
  awk '{print $14 + $15}' "/proc/$pid/stat"
}
# The round trips a pgsidecar made on its own account so far: "name=count ..." (SHOW STATS).
sidecar_trips() { # admin url
  psql "$1" -Atc 'SHOW STATS' | awk -F'|' '$1 ~ /^round_trips_/ && $2 > 0 {
    sub(/^round_trips_/, "", $1); printf "%s=%s ", $1, $2 }'
}
# Per transaction between two sidecar_trips readings: "name=0.00 ..." (off-path ones included).
trips_per_tx() { # before after transactions
  awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {
    k = split(a, x, " "); for (i = 1; i <= k; i++) { split(x[i], kv, "="); was[kv[1]] = kv[2] }
    k = split(b, y, " "); for (i = 1; i <= k; i++) { split(y[i], kv, "=");
      d = kv[2] - was[kv[1]]; if (d > 0 && n > 0) printf "%s=%.2f ", kv[1], d / n } }'
}
# Cumulative "hits lookups" of each proxy's cache; a run's hit ratio comes from the difference.
sidecar_cache() { # [admin url]
  psql "${1:-$SIDECAR_ADMIN}" -Atc 'SHOW CACHE' | awk -F'|' '
    $1 == "l1_hits" || $1 == "l2_hits" {h += $2} $1 == "misses" {m = $2} END {print h, h + m}'
}
# Pgpool-II 4.3's num_selects counts only misses under the simple protocol but every execution
# under the extended one (hits included), so its own cache_hit_ratio is not a hit ratio there:
# "-" makes hit_ratio divide the hits by the SELECTs pgbench ran (one per transaction).
pgpool_cache() { psql "$PGPOOL_URL" -AtF' ' -c 'SHOW POOL_CACHE' | awk '{print $1, "-"}'; }
hit_ratio() { # "hits0 lookups0" "hits1 lookups1" transactions -> percentage
  awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { split(a, x, " "); split(b, y, " ");
    n = (y[2] == "-") ? t : y[2] - x[2];
    if (n > 0) printf "%.1f%%", 100 * (y[1] - x[1]) / n; else printf "-" }'
}
ratio() { awk "BEGIN{printf \"%.2f\", ($2>0 ? $1/$2 : 0)}"; }
measure() { # script url cache-fn admin-url pid [clients] -> "tps mean p50 p99 hit% cpu_us/tx trips/tx"
  local before after tps lat p50 p99 txns selects t0 t1 cpu=- trips0 trips=-
  before=$($3 "$4")
  t0=$(sidecar_ticks "$5")
  [ "$4" = - ] || trips0=$(sidecar_trips "$4")
  read -r tps lat p50 p99 txns <<<"$(run "$1" "$2" "${6:-}")"
  t1=$(sidecar_ticks "$5")
  after=$($3 "$4")
  selects=$txns
  grep -qsi '^select' "scripts/workloads/$1" || selects=0 after=$before
  if [ "$t0" != - ] && [ "${txns:-0}" -gt 0 ]; then
    cpu=$(awk -v a="$t0" -v b="$t1" -v n="$txns" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", (b - a) * 1e6 / hz / n}')
  fi
  if [ "$4" != - ] && [ "${txns:-0}" -gt 0 ]; then
    trips=$(trips_per_tx "$trips0" "$(sidecar_trips "$4")" "$txns" | sed 's/ $//; s/ /,/g')
    trips=${trips:-none}
  fi
  local hit=-
  [ "$3" = no_cache ] || hit=$(hit_ratio "$before" "$after" "$selects")
  echo "$tps $lat $p50 $p99 $hit $cpu $trips"
}
no_cache() { echo "0 -"; }
# pgbench's own tables (scale 10) in the demo's database, for its built-in tpcb-like write
# transaction (3 UPDATEs, a SELECT and an INSERT; the 10 branch rows are the contended ones).
init_tpcb() {
  psql "$DIRECT" -Atc "SELECT 1 FROM pgbench_branches LIMIT 1" >/dev/null 2>&1 ||
    pgbench -i -q -s 10 "$DIRECT" >/dev/null 2>&1 || { echo "pgbench -i failed" >&2; exit 1; }
}
# Rows of the hot checkout, restocked so that `on_hand > 0` keeps matching through every round.
restock_hot() { psql "$DIRECT" -qAtc 'UPDATE inventory SET on_hand = 1000000 WHERE sku_id <= 500 AND warehouse_id <= 3' >/dev/null; }

trap 'stop_pgpool; stop_pgbouncer; stop_baseline; rm -rf "$LOG_DIR"' EXIT
if [ "$PGBOUNCER" = 1 ] && [ "$MODE" = prepared ] && ! pgbouncer_has_prepared; then
  echo "$(pgbouncer --version | head -1): no prepared statements under transaction pooling; skipped with MODE=prepared (MODE=extended compares it)"
  PGBOUNCER=0
fi
if [ "$PGBOUNCER" = 1 ]; then
  start_pgbouncer
  echo "$(pgbouncer --version | head -1) on $PB_PORT (transaction pooling, pool of 20, primary only)"
fi
if [ "$PGPOOL" = 1 ]; then
  start_pgpool
  echo "Pgpool-II $(pgpool --version 2>&1 | awk '{print $3}') on $POOL_PORT, nodes (id, port, role, lb_weight):"
  psql "$PGPOOL_URL" -AtF' ' -c 'SHOW POOL_NODES' | awk '{print "  " $1, $3, $7, $6}'
fi
# name url cache-fn admin-url pid
targets=("direct $DIRECT no_cache - -" "pgsidecar $SIDECAR sidecar_cache $SIDECAR_ADMIN ${SIDECAR_PID:--}")
if [ "$UNIX" = 1 ]; then
  psql "$SIDECAR_UNIX" -Atc 'SELECT 1' >/dev/null ||
    { echo "pgsidecar has no Unix socket in $SIDECAR_SOCK_DIR (restart the demo, or UNIX=0)" >&2; exit 1; }
  targets+=("pgsidecar-unix $SIDECAR_UNIX sidecar_cache $SIDECAR_ADMIN ${SIDECAR_PID:--}")
fi
if [ -n "$BASELINE" ]; then
  start_baseline
  echo "baseline: $BASELINE on $BL_PORT (the demo sidecar's arguments and config, its own fleet)"
  targets+=("baseline $BASELINE_URL sidecar_cache ${BASELINE_URL%/*}/pgsidecar $BL_PID")
fi
[ "$PGPOOL" = 1 ] && targets+=("pgpool $PGPOOL_URL pgpool_cache - -")
# PgBouncer is one process: its CPU per transaction is comparable with pgsidecar's.
[ "$PGBOUNCER" = 1 ] && targets+=("pgbouncer $PGBOUNCER_URL no_cache - $(cat "$PB_DIR/pgbouncer.pid" 2>/dev/null || echo -)")

echo "MODE=$MODE CLIENTS=$CLIENTS DURATION=${DURATION}s ROUNDS=$ROUNDS; $(uptime | sed 's/.*load/load/')"
fmt='%-14s %-14s %-6s %7s %10s %8s %8s %8s %7s %7s %6s %s\n'
# shellcheck disable=SC2059
printf "$fmt" workload target round clients tps mean_ms p50_ms p99_ms hit cpu_us/tx load1 "proxy round trips/tx"
declare -A tps_of p50_of
for w in $WORKLOADS; do
  for t in "${targets[@]}"; do
    read -r name url cachefn admin pid <<<"$t"
    for r in $(seq "$ROUNDS"); do
      round=warm; [ "$r" = 1 ] && round=cold
      [ "$ROUNDS" = 1 ] && round=only
      [ "$w" = checkout-hot ] && restock_hot
      [ "$w" = tpcb-like ] && init_tpcb
      read -r tps lat p50 p99 hit cpu trips <<<"$(measure "$w.sql" "$url" "$cachefn" "$admin" "$pid")"
      # shellcheck disable=SC2059
      printf "$fmt" "$w" "$name" "$round" "$CLIENTS" "$tps" "$lat" "$p50" "$p99" "$hit" "$cpu" "$(cut -d' ' -f1 /proc/loadavg)" "$trips"
      tps_of[$w.$name.$round]=$tps
    done
    if [[ "$w" != checkout* && "$w" != tpcb-like ]]; then
      # Cache-hit latency: one client on the now-warm cache.
      read -r tps lat p50 p99 hit cpu trips <<<"$(measure "$w.sql" "$url" "$cachefn" "$admin" "$pid" 1)"
      # shellcheck disable=SC2059
      printf "$fmt" "$w" "$name" "1-cli" 1 "$tps" "$lat" "$p50" "$p99" "$hit" "$cpu" "$(cut -d' ' -f1 /proc/loadavg)" "$trips"
      p50_of[$w.$name]=$p50
    fi
  done
done
echo "ratios to direct (TPS; 1-client p50):"
for w in $WORKLOADS; do
  for round in cold warm only; do
    d=${tps_of[$w.direct.$round]:-}
    [ -n "$d" ] || continue
    line="  $w $round: pgsidecar $(ratio "${tps_of[$w.pgsidecar.$round]}" "$d")x"
    [ "$UNIX" = 1 ] && line+=", pgsidecar-unix $(ratio "${tps_of[$w.pgsidecar-unix.$round]}" "$d")x"
    [ -n "$BASELINE" ] && line+=", baseline $(ratio "${tps_of[$w.baseline.$round]}" "$d")x, pgsidecar/baseline $(ratio "${tps_of[$w.pgsidecar.$round]}" "${tps_of[$w.baseline.$round]}")x"
    if [ "$PGPOOL" = 1 ]; then
      line+=", Pgpool-II $(ratio "${tps_of[$w.pgpool.$round]}" "$d")x, pgsidecar/Pgpool-II $(ratio "${tps_of[$w.pgsidecar.$round]}" "${tps_of[$w.pgpool.$round]}")x"
    fi
    if [ "$PGBOUNCER" = 1 ]; then
      line+=", PgBouncer $(ratio "${tps_of[$w.pgbouncer.$round]}" "$d")x, pgsidecar/PgBouncer $(ratio "${tps_of[$w.pgsidecar.$round]}" "${tps_of[$w.pgbouncer.$round]}")x"
    fi
    echo "$line"
  done
done
for w in $WORKLOADS; do
  [ -n "${p50_of[$w.direct]:-}" ] || continue
  line="  $w 1-client p50: pgsidecar $(ratio "${p50_of[$w.pgsidecar]}" "${p50_of[$w.direct]}")x direct"
  [ "$UNIX" = 1 ] && line+=", pgsidecar-unix $(ratio "${p50_of[$w.pgsidecar-unix]}" "${p50_of[$w.direct]}")x"
  [ "$PGPOOL" = 1 ] && line+=", Pgpool-II $(ratio "${p50_of[$w.pgpool]}" "${p50_of[$w.direct]}")x"
  echo "$line"
done
echo "$(uptime | sed 's/.*load/load/') at the end"
