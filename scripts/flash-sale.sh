#!/usr/bin/env bash
# Flash-sale demo: the same naive checkout code, once directly on Postgres and
# once through pgsidecar, while shoppers browse the catalog.
#
#   scripts/flash-sale.sh [--direct DSN] [--sidecar DSN] [--buyers 32] [--shoppers 16]
#                         [--hot-skus 3] [--stock 10] [--seconds 15] [--think-ms 1]
#                         [--admin DSN] [--out FILE] [--expect-no-oversell]
#
#   --direct DSN     the primary, bypassing the proxy  [postgres://shop:shop@127.0.0.1:15432/shop]
#   --sidecar DSN    the same database through pgsidecar [postgres://shop:shop@127.0.0.1:6432/shop]
#   --buyers N       pgbench clients running scripts/flash-sale/checkout.sql [32]
#   --shoppers N     pgbench clients running scripts/flash-sale/browse.sql (0 = none) [16]
#   --hot-skus N     SKUs 1..N are on sale, in warehouse 1 [3]
#   --stock N        units of each hot SKU at the start of a run [10]
#   --seconds N      length of each run [15]
#   --think-ms N     app latency between the stock read and the write (0 = none) [1]
#   --admin DSN      pgsidecar admin console for SHOW CACHE [the sidecar DSN, database pgsidecar]
#   --out FILE       where the results and pgbench reports go [target/flash-sale.txt]
#   --expect-no-oversell   exit 1 if the run through pgsidecar oversold
#
# Before each run, DIRECTLY ON THE PRIMARY (--direct): the previous flash-sale
# orders are deleted (payments tagged external_ref 'flash-sale:<order_id>', their
# orders and order lines) and the hot SKUs' warehouse-1 stock is set to --stock:
#   UPDATE inventory SET on_hand = STOCK WHERE sku_id <= HOT AND warehouse_id = 1
# Afterwards the database keeps the last run's orders and stock, for inspection.
# Needs the demo catalog (sql/schema.sql + sql/demo-data.sql, or any data with
# prices, warehouse-1 inventory for SKUs 1..HOT and at least one customer).
#
# Oversold = sum over hot SKUs of max(0, orders for the SKU - STOCK). The naive
# checkout writes back the value it read, so lost updates hide the oversell in
# the stock column (on_hand stays >= 0 while orders exceed the stock); on_hand
# < 0 is reported too.
#
# Exit status: 0 done; 1 --expect-no-oversell and the pgsidecar run oversold;
# 2 usage error, unreachable database, missing data, or a pgbench run failed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prog="scripts/flash-sale.sh"
scripts="$repo/scripts/flash-sale"

DIRECT="postgres://shop:shop@127.0.0.1:15432/shop"
SIDECAR="postgres://shop:shop@127.0.0.1:6432/shop"
ADMIN=""
BUYERS=32
SHOPPERS=16
HOT=3
STOCK=10
SECONDS_=15
THINK_MS=1
OUT="$repo/target/flash-sale.txt"
EXPECT_NO_OVERSELL=0

usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 2; }
say() { printf '%s\n' "$*"; }

need_arg() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }
need_int() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer, got '$2'"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --direct) need_arg "$@"; DIRECT=$2; shift 2 ;;
    --sidecar) need_arg "$@"; SIDECAR=$2; shift 2 ;;
    --admin) need_arg "$@"; ADMIN=$2; shift 2 ;;
    --buyers) need_arg "$@"; need_int "$1" "$2"; BUYERS=$2; shift 2 ;;
    --shoppers) need_arg "$@"; need_int "$1" "$2"; SHOPPERS=$2; shift 2 ;;
    --hot-skus) need_arg "$@"; need_int "$1" "$2"; HOT=$2; shift 2 ;;
    --stock) need_arg "$@"; need_int "$1" "$2"; STOCK=$2; shift 2 ;;
    --seconds) need_arg "$@"; need_int "$1" "$2"; SECONDS_=$2; shift 2 ;;
    --think-ms) need_arg "$@"; need_int "$1" "$2"; THINK_MS=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --expect-no-oversell) EXPECT_NO_OVERSELL=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) printf '%s: unknown argument: %s\n' "$prog" "$1" >&2; usage >&2; exit 2 ;;
  esac
done
[ "$BUYERS" -ge 1 ] || die "--buyers must be at least 1"
[ "$HOT" -ge 1 ] || die "--hot-skus must be at least 1"
[ "$SECONDS_" -ge 1 ] || die "--seconds must be at least 1"

# Tools: PATH first, else the newest Debian server bindir.
PGBIN=""
for t in psql pgbench; do
  if ! command -v "$t" >/dev/null 2>&1; then
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$PGBIN" ] && [ -x "$PGBIN/$t" ] || die "$t not found (apt-get install postgresql-client)"
  fi
done
[ -n "$PGBIN" ] && export PATH="$PGBIN:$PATH"
for f in checkout.sql browse.sql; do [ -f "$scripts/$f" ] || die "missing $scripts/$f"; done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flash-sale-XXXXXX")
BG_PIDS=()
cleanup() {
  local pid
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The DSN with its password masked, for printing.
mask() { printf '%s' "$1" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#; s#(password=)[^ ]*#\1***#'; }

# DSN with another database: postgres://…/db?x → postgres://…/DB?x; key=value form: append dbname.
with_db() { # DSN DB
  if [[ "$1" =~ ^(postgres(ql)?://[^/?]*)(/[^?]*)?(\?.*)?$ ]]; then
    printf '%s/%s%s' "${BASH_REMATCH[1]}" "$2" "${BASH_REMATCH[4]}"
  else
    printf '%s dbname=%s' "$1" "$2"
  fi
}

# q DSN SQL: one query, unaligned, no headers; stops at the first error.
q() { PGCONNECT_TIMEOUT=5 psql -X -q -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }

# --- preflight -----------------------------------------------------------------

TARGETS=(direct sidecar)
declare -A DSN=([direct]=$DIRECT [sidecar]=$SIDECAR)
declare -A NAME=([direct]="direct Postgres" [sidecar]="through pgsidecar")
declare -A WHAT=([direct]="Postgres (--direct)" [sidecar]="pgsidecar (--sidecar)")
for t in "${TARGETS[@]}"; do
  err=$(q "${DSN[$t]}" 'SELECT 1' 2>&1 >/dev/null) ||
    die "cannot connect to ${WHAT[$t]} at $(mask "${DSN[$t]}"): ${err:-psql failed}
  (the demo: deploy/local/demo.sh up; or pass --direct/--sidecar)"
done

facts=$(q "$DIRECT" "
SELECT (SELECT count(*) FROM inventory i JOIN prices p USING (sku_id)
         WHERE i.sku_id BETWEEN 1 AND $HOT AND i.warehouse_id = 1),
       (SELECT coalesce(max(customer_id), 0) FROM customers),
       (SELECT coalesce(max(sku_id), 0) FROM products),
       (SELECT coalesce(min(category_id), 0) || '|' || coalesce(max(category_id), 0) FROM products)" 2>&1) ||
  die "reading the catalog on the primary failed (sql/schema.sql loaded?): $facts"
IFS='|' read -r hot_rows CUSTOMERS SKUS CAT_LO CAT_HI <<<"$facts"
[ "$hot_rows" = "$HOT" ] ||
  die "SKUs 1..$HOT need a price and an inventory row in warehouse 1; found $hot_rows (demo data loaded?)"
[ "$CUSTOMERS" -ge 1 ] || die "the customers table is empty: orders need a customer"

# --- one run -------------------------------------------------------------------

declare -A R   # R[target.metric]

reset_sale() {
  q "$DIRECT" "
BEGIN;
CREATE TEMP TABLE flash_sale_orders ON COMMIT DROP AS
  SELECT order_id FROM payments WHERE external_ref LIKE 'flash-sale:%';
DELETE FROM payments WHERE external_ref LIKE 'flash-sale:%';
DELETE FROM orders WHERE order_id IN (SELECT order_id FROM flash_sale_orders);
UPDATE inventory SET on_hand = $STOCK, updated_at = now() WHERE sku_id <= $HOT AND warehouse_id = 1;
COMMIT;" >/dev/null
}

# Orders and stock of the hot SKUs, read on the primary:
# orders|units|final_on_hand|min_on_hand|oversold|skus_below_zero
tally() {
  q "$DIRECT" "
SELECT sum(coalesce(o.orders, 0)), sum(coalesce(o.units, 0)), sum(i.on_hand), min(i.on_hand),
       sum(greatest(coalesce(o.orders, 0) - $STOCK, 0)), count(*) FILTER (WHERE i.on_hand < 0)
  FROM inventory i
  LEFT JOIN (SELECT ol.sku_id, count(DISTINCT ol.order_id) AS orders, sum(ol.qty) AS units
               FROM order_lines ol JOIN payments p USING (order_id)
              WHERE p.external_ref LIKE 'flash-sale:%'
              GROUP BY ol.sku_id) o USING (sku_id)
 WHERE i.sku_id BETWEEN 1 AND $HOT AND i.warehouse_id = 1"
}

# SHOW CACHE on the admin console -> "hits misses ratio" (ratio "-" if not shown), or nothing
# when it fails or says nothing recognizable. Understands columns (hits, l1_hits, l2_hits...
# summed; misses; hit_ratio) and name/value rows with those names.
cache_probe() { # ADMIN_DSN
  local out
  out=$(PGCONNECT_TIMEOUT=5 psql -X -q -A -F $'\t' -v ON_ERROR_STOP=1 -d "$1" -c 'SHOW CACHE' 2>/dev/null) || return 0
  printf '%s\n' "$out" >"$WORK/show-cache.last"
  printf '%s\n' "$out" | awk -F'\t' '
    function kind(name) { name = tolower(name)
      if (name ~ /hit_?(ratio|rate)/) return "r"; if (name ~ /(^|_)hits?$/) return "h"
      if (name ~ /(^|_)miss(es)?$/) return "m"; return "" }
    NR == 1 { for (i = 1; i <= NF; i++) col[i] = kind($i); next }
    /^\([0-9]+ rows?\)$/ { next }
    { for (i = 1; i <= NF; i++) {
        if (col[i] == "h") hits += $i; else if (col[i] == "m") misses += $i
        else if (col[i] == "r" && ratio == "") ratio = $i }
      k = ""
      if (NF >= 2) { k = kind($1)
        if (k == "h") hits += $2; else if (k == "m") misses += $2; else if (k == "r" && ratio == "") ratio = $2 }
      seen = seen || k != "" }
    END { for (i in col) if (col[i] != "") seen = 1
          if (seen) printf "%d %d %s\n", hits, misses, (ratio == "" ? "-" : ratio) }'
}

# Percentile (nearest rank) of a sorted file of microseconds, in ms.
pct() { # FILE P
  awk -v p="$2" '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit }
    r = int(NR * p / 100); if (r < NR * p / 100) r++; if (r < 1) r = 1; printf "%.2f", v[r] / 1000 }' "$1"
}

# The average latency (ms) of the first statement in pgbench -r output matching REGEX.
stmt_ms() { # REPORT REGEX
  awk -v re="$2" '/statement latencies/ { on = 1; next } on && $0 ~ re { print $1; exit }' "$1"
}

pgbench_field() { # REPORT REGEX -> first number after the match
  sed -nE "s/^$2[^0-9]*([0-9.]+).*/\1/p" "$1" | head -1
}
round1() { [ -n "$1" ] && awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }

run_sale() { # TARGET
  local t=$1 dsn=${DSN[$1]} threads_b threads_s brc=0 src=0 bp sp admin before after
  say ""
  say "== ${NAME[$t]}: $(mask "$dsn")"
  say "   resetting on the primary: $HOT hot SKUs x $STOCK units, previous flash-sale orders deleted"
  reset_sale || die "resetting the sale on the primary failed"
  if [ "$t" = sidecar ]; then
    admin=${ADMIN:-$(with_db "$dsn" pgsidecar)}
    before=$(cache_probe "$admin")
  fi
  threads_b=$(( BUYERS < 2 ? BUYERS : 2 ))
  say "   $BUYERS buyers (checkout.sql) + $SHOPPERS shoppers (browse.sql) for ${SECONDS_}s..."
  pgbench -n -r -c "$BUYERS" -j "$threads_b" -T "$SECONDS_" \
    -D hot_skus="$HOT" -D customers="$CUSTOMERS" -D think_ms="$THINK_MS" \
    -f "$scripts/checkout.sql" "$dsn" >"$WORK/$t-buyers.txt" 2>&1 &
  bp=$!; BG_PIDS+=("$bp")
  if [ "$SHOPPERS" -gt 0 ]; then
    threads_s=$(( SHOPPERS < 2 ? SHOPPERS : 2 ))
    pgbench -n -r -c "$SHOPPERS" -j "$threads_s" -T "$SECONDS_" \
      -D skus="$SKUS" -D cat_lo="$CAT_LO" -D cat_hi="$CAT_HI" \
      --log --log-prefix="$WORK/$t-browse" \
      -f "$scripts/browse.sql" "$dsn" >"$WORK/$t-shoppers.txt" 2>&1 &
    sp=$!; BG_PIDS+=("$sp")
    wait "$sp" || src=$?
  fi
  wait "$bp" || brc=$?
  BG_PIDS=()

  local errors=""
  if [ "$brc" != 0 ]; then
    errors+="buyers: pgbench exit $brc; "
    say "   buyers' pgbench failed (exit $brc):"; grep -iE 'error|abort|fatal' "$WORK/$t-buyers.txt" | head -5 | sed 's/^/     /'
  fi
  if [ "$src" != 0 ]; then
    errors+="shoppers: pgbench exit $src; "
    say "   shoppers' pgbench failed (exit $src):"; grep -iE 'error|abort|fatal' "$WORK/$t-shoppers.txt" | head -5 | sed 's/^/     /'
  fi
  R[$t.errors]=${errors%; }

  local tal orders units final minoh oversold neg
  tal=$(tally) || die "reading the results on the primary failed"
  IFS='|' read -r orders units final minoh oversold neg <<<"$tal"
  R[$t.orders]=$orders
  R[$t.units]=$units
  R[$t.stock_sold]=$(( HOT * STOCK - final ))
  R[$t.oversold]=$oversold
  R[$t.min_on_hand]=$minoh
  R[$t.negative]=$neg
  R[$t.lost_updates]=$(( orders - (HOT * STOCK - final) ))
  R[$t.checkout_tps]=$(round1 "$(pgbench_field "$WORK/$t-buyers.txt" 'tps = ')")
  R[$t.checkout_failed]=$(pgbench_field "$WORK/$t-buyers.txt" 'number of failed transactions: ')
  R[$t.select_ms]=$(stmt_ms "$WORK/$t-buyers.txt" 'SELECT on_hand FROM inventory')
  R[$t.update_ms]=$(stmt_ms "$WORK/$t-buyers.txt" 'UPDATE inventory')

  if [ "$SHOPPERS" -gt 0 ]; then
    cat "$WORK/$t-browse".* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { print $3 }' | sort -n >"$WORK/$t-lat.txt"
    R[$t.pages_ps]=$(round1 "$(pgbench_field "$WORK/$t-shoppers.txt" 'tps = ')")
    R[$t.p50]=$(pct "$WORK/$t-lat.txt" 50)
    R[$t.p99]=$(pct "$WORK/$t-lat.txt" 99)
  fi

  R[$t.cache]="n/a"
  if [ "$t" = sidecar ]; then
    after=$(cache_probe "$admin")
    if [ -n "$after" ]; then
      local h0=0 m0=0 h1 m1 ratio
      [ -n "$before" ] && read -r h0 m0 _ <<<"$before"
      read -r h1 m1 ratio <<<"$after"
      if [ $(( (h1 - h0) + (m1 - m0) )) -gt 0 ]; then
        R[$t.cache]=$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) 'BEGIN { printf "%.1f%%", 100 * h / (h + m) }')
      elif [ "$ratio" != "-" ]; then
        R[$t.cache]=$ratio
      fi
    fi
  fi
  say "   done: ${orders} orders for $((HOT * STOCK)) units, oversold ${oversold}"
}

# --- main ----------------------------------------------------------------------

say "flash sale: $HOT hot SKUs x $STOCK units in warehouse 1, $BUYERS buyers + $SHOPPERS shoppers, ${SECONDS_}s per run, think time ${THINK_MS} ms"
for t in "${TARGETS[@]}"; do run_sale "$t"; done

v() { local x=${R[$1]:-}; printf '%s' "${x:-n/a}"; }
yesno_neg() { # TARGET
  if [ "${R[$1.negative]:-0}" -gt 0 ]; then printf 'YES (%s SKUs, min %s)' "${R[$1.negative]}" "${R[$1.min_on_hand]}"
  else printf 'no (min %s)' "$(v "$1.min_on_hand")"; fi
}
flag_oversold() { # TARGET
  if [ "${R[$1.oversold]:-0}" -gt 0 ]; then printf '%s  OVERSOLD' "${R[$1.oversold]}"; else printf '0'; fi
}

table() {
  row() { printf '%-38s %-22s %-22s\n' "$@"; }
  printf '%s\n' "flash sale: $HOT hot SKUs x $STOCK units = $((HOT * STOCK)) units; $BUYERS buyers + $SHOPPERS shoppers; ${SECONDS_}s; think ${THINK_MS} ms"
  printf '%s\n' "$(date '+%F %T')  direct: $(mask "$DIRECT")  sidecar: $(mask "$SIDECAR")"
  printf '\n'
  row "" "direct Postgres" "through pgsidecar"
  row "orders placed" "$(v direct.orders)" "$(v sidecar.orders)"
  row "units in order lines" "$(v direct.units)" "$(v sidecar.units)"
  row "stock sold (initial - final on_hand)" "$(v direct.stock_sold)" "$(v sidecar.stock_sold)"
  row "lost updates (orders - stock sold)" "$(v direct.lost_updates)" "$(v sidecar.lost_updates)"
  row "oversold (orders - stock, floor 0)" "$(flag_oversold direct)" "$(flag_oversold sidecar)"
  row "final on_hand < 0" "$(yesno_neg direct)" "$(yesno_neg sidecar)"
  row "checkout tx/s (incl. sold out)" "$(v direct.checkout_tps)" "$(v sidecar.checkout_tps)"
  row "  SELECT on_hand avg ms" "$(v direct.select_ms)" "$(v sidecar.select_ms)"
  row "  UPDATE inventory avg ms" "$(v direct.update_ms)" "$(v sidecar.update_ms)"
  row "catalog pages/s" "$(v direct.pages_ps)" "$(v sidecar.pages_ps)"
  row "catalog p50 latency ms" "$(v direct.p50)" "$(v sidecar.p50)"
  row "catalog p99 latency ms" "$(v direct.p99)" "$(v sidecar.p99)"
  row "cache hit ratio" "$(v direct.cache)" "$(v sidecar.cache)"
  row "failed checkout transactions" "$(v direct.checkout_failed)" "$(v sidecar.checkout_failed)"
  local t
  for t in "${TARGETS[@]}"; do
    [ -n "${R[$t.errors]:-}" ] && printf '%-38s %s\n' "errors (${NAME[$t]})" "${R[$t.errors]}"
  done
  printf '\n'
  for t in "${TARGETS[@]}"; do
    if [ "${R[$t.oversold]:-0}" -gt 0 ]; then
      printf '%-18s OVERSOLD: %s orders for %s units (%s units oversold; %s lost stock updates)\n' \
        "${NAME[$t]}:" "${R[$t.orders]}" "$((HOT * STOCK))" "${R[$t.oversold]}" "${R[$t.lost_updates]}"
    else
      printf '%-18s no oversell: %s orders for %s units\n' "${NAME[$t]}:" "${R[$t.orders]}" "$((HOT * STOCK))"
    fi
  done
  if [ "${R[sidecar.oversold]:-0}" -gt 0 ]; then
    printf '%s\n' "(pgsidecar prevents this only with inventory locks configured:" \
                  "   [[locks]]" "   table = \"inventory\"" "   key = [\"sku_id\", \"warehouse_id\"] )"
  fi
}

mkdir -p "$(dirname "$OUT")" 2>/dev/null || true
say ""
table | tee "$WORK/table.txt"
{
  cat "$WORK/table.txt"
  for t in "${TARGETS[@]}"; do
    printf '\n===== %s: buyers (pgbench -r, checkout.sql) =====\n' "${NAME[$t]}"
    cat "$WORK/$t-buyers.txt" 2>/dev/null
    if [ "$SHOPPERS" -gt 0 ]; then
      printf '\n===== %s: shoppers (pgbench -r, browse.sql) =====\n' "${NAME[$t]}"
      cat "$WORK/$t-shoppers.txt" 2>/dev/null
    fi
  done
  if [ -f "$WORK/show-cache.last" ]; then
    printf '\n===== SHOW CACHE (after the pgsidecar run) =====\n'; cat "$WORK/show-cache.last"
  fi
} >"$OUT" 2>/dev/null
if [ -s "$OUT" ]; then
  say ""; say "results and full pgbench reports (per-statement latencies): $OUT"
else
  say "warning: could not write $OUT" >&2
fi

if [ "$EXPECT_NO_OVERSELL" = 1 ] && { [ "${R[sidecar.oversold]:-0}" -gt 0 ] || [ "${R[sidecar.negative]:-0}" -gt 0 ]; }; then
  say "$prog: FAIL: the run through pgsidecar oversold (--expect-no-oversell)" >&2
  exit 1
fi
for t in "${TARGETS[@]}"; do
  [ -n "${R[$t.errors]:-}" ] && { say "$prog: a pgbench run failed (${NAME[$t]}: ${R[$t.errors]}); see $OUT" >&2; exit 2; }
done
exit 0
