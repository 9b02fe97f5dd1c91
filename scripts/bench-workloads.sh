#!/usr/bin/env bash
# Catalog and checkout workloads against the running demo (deploy/local/demo.sh up), direct
# Postgres vs pgsidecar vs Pgpool-II with its in-memory query cache, in one run:
#   point lookup (zipf over 80,000 SKUs, product + price join), category page (join, ORDER BY,
#   LIMIT 24), and checkout (lock, decrement, insert order and line; locks only via pgsidecar).
# Prints TPS, mean latency, the ratio to direct, each proxy's cache hit ratio over the run
# (pgsidecar: admin console SHOW CACHE; Pgpool-II: SHOW POOL_CACHE) and pgsidecar/Pgpool-II.
#
# Pgpool-II (Debian package pgpool2) is started here, in a temp dir on a free port, as user
# postgres when run as root: streaming-replication mode with load balancing over the demo's
# primary and both replicas, memory_cache_enabled = on, memqcache_method = 'shmem'
# (memqcache_expire = 90 s, as the demo's cache_ttl). It is stopped on exit. PGPOOL=0 skips it.
#
# Env: CLIENTS (16), DURATION (10), MODE (prepared: the application's usual extended protocol
# with statement reuse), PGPOOL (1), DEMO_PRIMARY_PORT/DEMO_REPLICA1_PORT/DEMO_REPLICA2_PORT
# (15432/15433/15434, as the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-10}
MODE=${MODE:-prepared}
PGPOOL=${PGPOOL:-1}
PRIMARY_PORT=${DEMO_PRIMARY_PORT:-15432}
REPLICA_PORTS="${DEMO_REPLICA1_PORT:-15433} ${DEMO_REPLICA2_PORT:-15434}"
DIRECT=${DIRECT:-postgres://shop:shop@127.0.0.1:$PRIMARY_PORT/shop}
SIDECAR=${SIDECAR:-postgres://shop:shop@127.0.0.1:6432/shop}
SIDECAR_ADMIN=${SIDECAR_ADMIN:-${SIDECAR%/*}/pgsidecar}
psql "$SIDECAR" -Atc 'SELECT 1' >/dev/null || { echo "the demo is not running: deploy/local/demo.sh up" >&2; exit 1; }

# --- Pgpool-II ------------------------------------------------------------------------------
start_pgpool() {
  command -v pgpool >/dev/null || { echo "pgpool is not installed (apt-get install pgpool2), or PGPOOL=0" >&2; exit 1; }
  POOL_DIR=$(mktemp -d /tmp/pgsidecar-pgpool-XXXXXX)
  POOL_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
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
  for _ in $(seq 100); do psql "$PGPOOL_URL" -Atc 'SELECT 1' >/dev/null 2>&1 && return; sleep 0.2; done
  echo "pgpool did not start; its log:" >&2
  cat "$POOL_DIR/pgpool.log" >&2
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
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# --- measurements ---------------------------------------------------------------------------
run() { # script url -> "tps latency transactions"
  local out
  out=$(pgbench -n -M "$MODE" -c "$CLIENTS" -j 2 -T "$DURATION" -f "scripts/workloads/$1" "$2" 2>&1) || { echo "0 0 0"; return; }
  echo "$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | tail -1) $(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")" \
    "$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")"
}
# Cumulative "hits lookups" of each proxy's cache; a run's hit ratio comes from the difference.
sidecar_cache() {
  psql "$SIDECAR_ADMIN" -Atc 'SHOW CACHE' | awk -F'|' '
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
measure() { # script url cache-fn -> "tps latency hit%" (hit ratio "-" for a script without SELECT)
  local before after tps lat txns
  before=$($3)
  read -r tps lat txns <<<"$(run "$1" "$2")"
  after=$($3)
  grep -qi '^select' "scripts/workloads/$1" || txns=0 after=$before
  echo "$tps $lat $(hit_ratio "$before" "$after" "$txns")"
}

trap stop_pgpool EXIT
if [ "$PGPOOL" = 1 ]; then
  start_pgpool
  echo "Pgpool-II $(pgpool --version 2>&1 | awk '{print $3}') on $POOL_PORT, nodes (id, port, role, lb_weight):"
  psql "$PGPOOL_URL" -AtF' ' -c 'SHOW POOL_NODES' | awk '{print "  " $1, $3, $7, $6}'
fi
no_pool=(0 0 -)

printf '%-14s %10s %8s | %10s %8s %6s %6s | %10s %8s %6s %6s | %s\n' workload direct_tps ms \
  sidecar_tps ms ratio hit pgpool_tps ms ratio hit sidecar/pgpool
for w in point-lookup category-page checkout; do
  read -r dt dl _ <<<"$(run "$w.sql" "$DIRECT")"
  read -r st sl sh <<<"$(measure "$w.sql" "$SIDECAR" sidecar_cache)"
  if [ "$PGPOOL" = 1 ]; then read -r pt pl ph <<<"$(measure "$w.sql" "$PGPOOL_URL" pgpool_cache)"; else read -r pt pl ph <<<"${no_pool[*]}"; fi
  printf '%-14s %10s %8s | %10s %8s %5sx %6s | %10s %8s %5sx %6s | %sx\n' "$w" "$dt" "$dl" \
    "$st" "$sl" "$(ratio "$st" "$dt")" "$sh" "$pt" "$pl" "$(ratio "$pt" "$dt")" "$ph" "$(ratio "$st" "$pt")"
done
# One client, for cache-hit latency against a direct round trip.
read -r dt dl _ <<<"$(CLIENTS=1 run point-lookup.sql "$DIRECT")"
read -r st sl _ <<<"$(CLIENTS=1 run point-lookup.sql "$SIDECAR")"
line="1 client point lookup: direct ${dl} ms, pgsidecar ${sl} ms"
if [ "$PGPOOL" = 1 ]; then
  read -r pt pl _ <<<"$(CLIENTS=1 run point-lookup.sql "$PGPOOL_URL")"
  line+=", Pgpool-II ${pl} ms"
fi
echo "$line (mean latency)"
