#!/usr/bin/env bash
# SHOW QUERIES beside pgbench's own counts: runs the catalog workloads (scripts/workloads:
# point lookup, category page, checkout) through pgsidecar with a fixed number of transactions
# per client, then prints pgbench's per-script transaction counts and per-statement latencies
# (-r) next to the console's SHOW QUERIES, and checks that they agree: every statement of a
# script runs once per transaction of that script, so each statement's `calls` must equal
# the transactions pgbench counted for its script. Exit 1 if a count disagrees.
#
# Needs a running pgsidecar in front of the demo schema (deploy/local/demo.sh up). RESET
# QUERIES is run first, so other traffic through the same sidecar during the run would be
# counted too: run it on a quiet sidecar.
#
# Env: SIDECAR (postgres://shop:shop@127.0.0.1:6432/shop), SIDECAR_ADMIN (same host, database
# pgsidecar, as an admin.users user: postgres://postgres:postgres@…/pgsidecar by default with
# the demo's password in PGPASSWORD), CLIENTS (8), TRANSACTIONS (per client, 500), MODE
# (prepared), WORKLOADS (point-lookup category-page checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
SIDECAR=${SIDECAR:-postgres://shop:shop@127.0.0.1:${DEMO_PROXY_PORT:-6432}/shop}
SIDECAR_ADMIN=${SIDECAR_ADMIN:-${SIDECAR%/*}/pgsidecar}
CLIENTS=${CLIENTS:-8}
TRANSACTIONS=${TRANSACTIONS:-500}
MODE=${MODE:-prepared}
WORKLOADS=${WORKLOADS:-point-lookup category-page checkout}
PGBENCH=${PGBENCH:-pgbench}

psql "$SIDECAR" -Atc 'SELECT 1' >/dev/null || { echo "pgsidecar does not answer at $SIDECAR (deploy/local/demo.sh up)" >&2; exit 1; }
console() { psql "$SIDECAR_ADMIN" -X -A -F $'\t' -P footer=off -c "$1"; }

files=()
for w in $WORKLOADS; do files+=(-f "scripts/workloads/$w.sql"); done
console 'RESET QUERIES' >/dev/null
report=$(mktemp /tmp/pgsidecar-queries-XXXXXX)
trap 'rm -f "$report" "$report.q"' EXIT
"$PGBENCH" -n -r -M "$MODE" -c "$CLIENTS" -j 2 -t "$TRANSACTIONS" "${files[@]}" "$SIDECAR" >"$report" 2>&1 || {
  cat "$report" >&2; exit 1; }
console 'SHOW QUERIES' >"$report.q"

echo "== pgbench: $CLIENTS clients x $TRANSACTIONS transactions, -M $MODE"
grep -E '^(number of (transactions actually processed|failed transactions)|latency average|tps)' "$report" || true
echo
echo "== pgbench per script: transactions, then per-statement latency (ms, client side)"
sed -n '/^SQL script/,$p' "$report"
echo
echo "== SHOW QUERIES (proxy side: from the client's Sync/Query to its ReadyForQuery)"
cut -f1,2,3,4,6,7,8,9,10,11,13,14,17,18 "$report.q" | column -t -s $'\t'
echo

# Transactions pgbench counted per script file ("SQL script N: <file>" then " - K transactions").
declare -A txns
single=$(awk '/^number of transactions actually processed:/ {split($6, a, "/"); print a[1]}' "$report")
if [ "$(echo "$WORKLOADS" | wc -w)" = 1 ]; then
  txns[$WORKLOADS]=$single
else
  while read -r file count; do txns[$(basename "$file" .sql)]=$count; done < <(
    awk '/^SQL script [0-9]+:/ {file=$4} /^ - [0-9]+ transactions/ {print file, $2}' "$report")
fi

# Each workload's statements, by a phrase of their normalized text (SHOW QUERIES lower-cases
# and replaces literals; -M prepared keeps $n parameters).
check() { # workload, phrase
  local w=$1 phrase=$2 calls
  calls=$(awk -F'\t' -v p="$phrase" 'NR > 1 && index($1, p) { n += $2 } END { print n + 0 }' "$report.q")
  local want=${txns[$w]:-0}
  if [ "$calls" = "$want" ]; then
    printf 'agree     %-14s %-42s calls %8s = pgbench transactions %8s\n' "$w" "$phrase" "$calls" "$want"
  else
    printf 'DISAGREE  %-14s %-42s calls %8s ≠ pgbench transactions %8s\n' "$w" "$phrase" "$calls" "$want"
    bad=1
  fi
}
bad=0
echo "== agreement"
for w in $WORKLOADS; do
  case $w in
    point-lookup) check "$w" "p.brand, pr.amount, pr.currency" ;;
    category-page) check "$w" "order by pr.amount, p.sku_id limit" ;;
    checkout)
      check "$w" "update inventory set on_hand"
      check "$w" "insert into orders (customer_id"
      check "$w" "insert into order_lines"
      ;;
  esac
done
exit $bad
