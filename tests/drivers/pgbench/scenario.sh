#!/usr/bin/env bash
# pgbench through the proxy: `pgbench -i` (COPY-loaded tables), then the built-in TPC-B-like
# script with 20 clients in each query mode: simple, extended (unnamed statements) and prepared
# (named statements P_0..P_n on every client: they must follow each transaction to whichever
# backend serves it). Zero failed transactions and every transaction processed, or FAIL.
#
#   PGHOST=... PGPORT=... PGUSER=... PGPASSWORD=... PGDATABASE=... bash scenario.sh
set -uo pipefail

: "${PGHOST:?}" "${PGPORT:?}" "${PGUSER:?}" "${PGDATABASE:?}"
export PGCONNECT_TIMEOUT=10
CLIENTS=${DRIVER_CONNECTIONS:-20}
TXNS=${PGBENCH_TRANSACTIONS:-50}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drv_pgbench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FAILED=()
HISTORY=0 # transactions committed so far (each adds one pgbench_history row)

since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

run_step() { # NAME COMMAND...
  local name=$1 began rc
  shift
  echo "step $name: START"
  began=$(date +%s.%N)
  "$@" >"$WORK/out" 2>&1
  rc=$?
  local took
  took=$(printf '%.1f' "$(since "$began")")
  if [ "$rc" -eq 0 ] && [ ! -s "$WORK/why" ]; then
    echo "step $name: PASS (${took}s)$([ -s "$WORK/info" ] && echo " $(cat "$WORK/info")")"
  else
    FAILED+=("$name")
    local why
    why=$(cat "$WORK/why" 2>/dev/null)
    [ -z "$why" ] && why="exit $rc: $(grep -v '^progress' "$WORK/out" | tail -3 | tr '\n' ' ')"
    echo "step $name: FAIL (${took}s) $(echo "$why" | tr '\n' ' ' | cut -c1-600)"
    sed 's/^/    /' "$WORK/out" >&2
  fi
  rm -f "$WORK/why" "$WORK/info"
}

init() {
  pgbench -i -s 1 -q --foreign-keys
}

bench() { # MODE [THREADS]
  local mode=$1 threads=${2:-2} out processed failed tps
  pgbench -M "$mode" -c "$CLIENTS" -j "$threads" -t "$TXNS" -n -r 2>&1 | tee "$WORK/bench.out"
  local rc=${PIPESTATUS[0]}
  out=$(cat "$WORK/bench.out")
  processed=$(sed -n 's/^number of transactions actually processed: \([0-9/]*\).*/\1/p' <<<"$out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
  local done_txns=${processed%%/*}
  HISTORY=$((HISTORY + ${done_txns:-0}))
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -1)
  if [ "$rc" -ne 0 ] || [ "$processed" != "$((CLIENTS * TXNS))/$((CLIENTS * TXNS))" ] || [ "${failed:-x}" != 0 ]; then
    echo "pgbench -M $mode -c $CLIENTS -j $threads exit $rc, processed ${processed:-?}, failed ${failed:-?}: $(grep -iE 'error|abort' <<<"$out" | head -2 | tr '\n' ' ')" >"$WORK/why"
    return 1
  fi
  echo "$processed transactions, 0 failed, ${tps} tps" >"$WORK/info"
}

check_totals() {
  # The TPC-B invariant: every transaction added the same delta to one account, teller and branch.
  local sums
  sums=$(psql -X -A -t -c "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(bbalance) FROM pgbench_branches)
    AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches)
    AND (SELECT count(*) FROM pgbench_history) = $HISTORY") || return 1
  [ "$sums" = t ] || { echo "balances of accounts/tellers/branches disagree, or pgbench_history does not have the $HISTORY rows of the processed transactions" >"$WORK/why"; return 1; }
}

echo "pgbench $(pgbench --version | awk '{print $3}')"
run_step init init
run_step simple bench simple
run_step extended bench extended
run_step prepared bench prepared
# The same with one pgbench thread per client: no client-side multiplexing (see README).
run_step prepared-thread-per-client bench prepared "$CLIENTS"
run_step totals check_totals
if ((${#FAILED[@]})); then
  echo "pgbench: failed steps: ${FAILED[*]}"
  exit 1
fi
echo "pgbench: all steps passed"
