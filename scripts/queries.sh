#!/usr/bin/env bash
# SHOW QUERIES beside pgbench's own counts: runs the catalog workloads (scripts/workloads:
# point lookup, category page, checkout) through pgsidecar with a fixed number of transactions
# per client, then prints pgbench's per-script transaction counts and per-statement latencies
# (-r) next to the console's SHOW QUERIES, and checks that they agree: every statement of a
# script runs once per transaction of that script, so each statement's `calls` must equal
# the transactions pgbench counted for its script. Exit 1 if a count disagrees.
# Times are printed beside each other, not compared: pgbench's per-statement latency is the
# client's (network hop and pgbench's own scheduling included), SHOW QUERIES' the proxy's.
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

# Matching ignores case and spaces: SHOW QUERIES lower-cases, replaces literals (-M prepared
# keeps $n parameters) and respaces (`orders (customer_id` → `orders(customer_id`), pgbench -r
# prints the script's text. A phrase starting with `=` must be the whole statement.
squash() { tr '[:upper:]' '[:lower:]' | tr -d ' \t;'; }
# SHOW QUERIES rows as "squashed-text<TAB>calls<TAB>total_ms<TAB>mean_ms".
awk -F'\t' 'NR > 1 { print $1 "\t" $2 "\t" $3 "\t" $4 }' "$report.q" |
  while IFS=$'\t' read -r text calls total mean; do
    printf '%s\t%s\t%s\t%s\n' "$(printf '%s' "$text" | squash)" "$calls" "$total" "$mean"
  done >"$report.sq"
# pgbench -r statement lines as "script<TAB>squashed-text<TAB>latency_ms" (one script: no header).
awk -v only="$(echo "$WORKLOADS" | awk '{print $1}')" '
  BEGIN { script = only }
  /^SQL script [0-9]+:/ { n = split($4, p, "/"); script = p[n]; sub(/\.sql$/, "", script) }
  /^ +[0-9.]+ +[0-9]+ +[^ ]/ && !/\\set/ {
    lat = $1; text = $0; sub(/^ +[0-9.]+ +[0-9]+ +/, "", text); print script "\t" text "\t" lat }
' "$report" | while IFS=$'\t' read -r s text lat; do
  printf '%s\t%s\t%s\n' "$s" "$(printf '%s' "$text" | squash)" "$lat"
done >"$report.pb"
trap 'rm -f "$report" "$report.q" "$report.sq" "$report.pb"' EXIT

check() { # workload, phrase
  local w=$1 phrase=$2 exact=0 p calls total mean lat
  case $phrase in =*) exact=1; phrase=${phrase#=} ;; esac
  p=$(printf '%s' "$phrase" | squash)
  read -r calls total mean < <(awk -F'\t' -v p="$p" -v exact=$exact '
    (exact ? $1 == p : index($1, p)) { c += $2; t += $3 }
    END { printf "%d %.3f %.3f\n", c, t, c ? t / c : 0 }' "$report.sq")
  lat=$(awk -F'\t' -v w="$w" -v p="$p" -v exact=$exact '
    $1 == w && (exact ? $2 == p : index($2, p)) { print $3; exit }' "$report.pb")
  local want=${txns[$w]:-0} verdict=agree
  if [ "$calls" != "$want" ]; then verdict=DISAGREE; bad=1; fi
  printf '%-9s %-14s %-34s %8s %8s   %9s %9s\n' "$verdict" "$w" "${phrase:0:34}" "$want" "$calls" \
    "${lat:--}" "$mean"
}
bad=0
echo "== agreement: each statement runs once per transaction of its script"
printf '%-9s %-14s %-34s %8s %8s   %9s %9s\n' "" workload statement "pgbench" "calls" \
  "pgbench" "proxy"
printf '%-9s %-14s %-34s %8s %8s   %9s %9s\n' "" "" "" "txns" "" "lat ms" "mean ms"
for w in $WORKLOADS; do
  case $w in
    point-lookup) check "$w" "p.brand, pr.amount, pr.currency" ;;
    category-page) check "$w" "where p.category_id =" ;;
    checkout)
      check "$w" "=begin"
      check "$w" "update inventory set on_hand"
      check "$w" "insert into orders (customer_id"
      check "$w" "insert into order_lines"
      check "$w" "=commit"
      ;;
  esac
done
echo
echo "pgbench's latency is the client's (its network hop to the sidecar and pgbench's own"
echo "scheduling included); the proxy's mean is from the request's Sync/Query to its ReadyForQuery."
exit $bad
