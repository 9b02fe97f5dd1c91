#!/usr/bin/env bash
# Catalog and checkout workloads against the running demo (deploy/local/demo.sh up), direct
# Postgres vs pgsidecar, in one run:
#   point lookup (zipf over 80,000 SKUs, product + price join), category page (join, ORDER BY,
#   LIMIT 24), and checkout (lock, decrement, insert order and line; locks only via pgsidecar).
# Prints TPS, mean latency and the ratio to direct. Env: CLIENTS (16), DURATION (10), MODE
# (prepared: the application's usual extended protocol with statement reuse).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-10}
MODE=${MODE:-prepared}
DIRECT=${DIRECT:-postgres://shop:shop@127.0.0.1:15432/shop}
SIDECAR=${SIDECAR:-postgres://shop:shop@127.0.0.1:6432/shop}
psql "$SIDECAR" -Atc 'SELECT 1' >/dev/null || { echo "the demo is not running: deploy/local/demo.sh up" >&2; exit 1; }
run() { # script url -> "tps latency"
  local out
  out=$(pgbench -n -M "$MODE" -c "$CLIENTS" -j 2 -T "$DURATION" -f "scripts/workloads/$1" "$2" 2>&1) || { echo "0 0"; return; }
  echo "$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | tail -1) $(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")"
}
printf '%-16s %12s %10s %12s %10s %8s\n' workload direct_tps direct_ms sidecar_tps sidecar_ms ratio
for w in point-lookup category-page checkout; do
  read -r dt dl <<<"$(run "$w.sql" "$DIRECT")"
  read -r st sl <<<"$(run "$w.sql" "$SIDECAR")"
  printf '%-16s %12s %10s %12s %10s %7sx\n' "$w" "$dt" "$dl" "$st" "$sl" "$(awk "BEGIN{printf \"%.2f\", ($dt>0 ? $st/$dt : 0)}")"
done
# One client, for cache-hit latency against a direct round trip.
read -r dt dl <<<"$(CLIENTS=1 run point-lookup.sql "$DIRECT")"
read -r st sl <<<"$(CLIENTS=1 run point-lookup.sql "$SIDECAR")"
echo "1 client point lookup: direct ${dl} ms, pgsidecar ${sl} ms (mean latency)"
