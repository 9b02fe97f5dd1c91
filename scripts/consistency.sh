#!/usr/bin/env bash
# Long run of the consistency history checker (tests/it/consistency.rs, issue #13): the same code
# as the short pass `cargo test` runs, for longer, release build.
#
#   scripts/consistency.sh [--minutes N] [--settings off,on,remote_apply] [--clients N] [--show N]
#                          [--debug]
#
#   --minutes N    total workload time, split evenly over the settings (default 5)
#   --settings L   synchronous_commit settings of the primary to run, comma-separated, from
#                  off, local, on, remote_write, remote_apply (default: all five)
#   --clients N    client sessions per sidecar (two sidecars; default 5)
#   --show N       also print the first N anomalies of each setting in full (default 0)
#   --debug        debug build instead of release (faster to build, slower to run)
#
# Each setting gets its own lab (primary, 2 streaming replicas, Redis) and two sidecars sharing
# the Redis; faults are injected throughout (replica stop/start, replay pause, Redis restart and
# flush, wal_writer_delay raised). Prints, per setting, operations checked, errors (unknown
# outcomes), anomalies and the smallest history for each kind of anomaly; then a total.
# The full output is kept in target/consistency-<time>.log. Exits non-zero on any anomaly.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

minutes=5
settings="off,local,on,remote_write,remote_apply"
clients=5
profile=(--release)
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --settings) settings="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --show) export PGSIDECAR_CONSISTENCY_SHOW="$2"; shift 2 ;;
    --debug) profile=(); shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "consistency.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

IFS=, read -r -a list <<<"$settings"
tests=()
for s in "${list[@]}"; do
  case "$s" in
    off|local|on|remote_write|remote_apply) ;;
    *) echo "consistency.sh: $s is not a synchronous_commit setting" >&2; exit 2 ;;
  esac
  tests+=("consistency::history_has_no_stale_non_monotonic_or_lost_operation_with_synchronous_commit_$s")
done
secs=$(awk -v m="$minutes" -v n="${#list[@]}" 'BEGIN { s = int(m * 60 / n); if (s < 5) s = 5; print s }')

export PGSIDECAR_CONSISTENCY_SECS="$secs"
export PGSIDECAR_CONSISTENCY_CLIENTS="$clients"
# The sessions' debug lines (routing, cache hits, waits), for the log excerpt printed with an
# anomaly.
export PGSIDECAR_CONSISTENCY_LOG="${PGSIDECAR_CONSISTENCY_LOG:-pgsidecar::session=debug,info}"
PGSIDECAR_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  PGSIDECAR_COMMIT="$PGSIDECAR_COMMIT+dirty"
fi
export PGSIDECAR_COMMIT

mkdir -p target
log="target/consistency-$(date -u +%Y%m%dT%H%M%SZ).log"
echo "consistency: ${#list[@]} setting(s) [$settings] × ${secs}s, $clients clients per sidecar, commit $PGSIDECAR_COMMIT; log: $log"

cargo test "${profile[@]}" --test it --no-run
status=0
cargo test "${profile[@]}" --test it -- --exact --include-ignored --test-threads=1 \
  --nocapture "${tests[@]}" 2>&1 | tee "$log" || status=$?

echo
echo "==== consistency: summary (commit $PGSIDECAR_COMMIT) ===="
grep '^SUMMARY ' "$log" || echo "no setting completed"
awk '/^SUMMARY / {
       for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2] }
       n++
     }
     END {
       if (n) printf "TOTAL settings=%d ops=%d reads_ok=%d writes_acked=%d unknown=%d unexcused_errors=%d anomalies=%d\n",
         n, v["ops"], v["reads_ok"], v["writes_acked"], v["unknown"], v["unexcused_errors"], v["anomalies"]
     }' "$log"
exit "$status"
