#!/usr/bin/env bash
# Runs each property-test target of the decoders of untrusted input (src/proptests.rs, and the
# Redis formats in src/cache/stored.rs) for a fixed time, in batches of random cases, and prints
# how many cases each ran and whether any failed (a failure prints proptest's minimal input).
#
#   scripts/fuzz.sh            # 600 s per target (the record in docs/SECURITY.md)
#   FUZZ_SECONDS=30 scripts/fuzz.sh   # a short pass
#
# cargo-fuzz (libFuzzer) needs a nightly toolchain (or RUSTC_BOOTSTRAP=1) and cargo-fuzz, which
# this environment does not have; proptest runs on stable and is part of `cargo test`.
set -u
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${FUZZ_SECONDS:-600}
BATCH=${FUZZ_BATCH:-20000}
TARGETS=(
  proptests::frame_check_never_panics_and_bounds_lengths
  proptests::startup_packets_never_panic
  proptests::extended_protocol_messages_never_panic
  proptests::bind_params_with_counts_never_panic
  proptests::scram_server_never_panics_on_client_messages
  proptests::scram_client_never_panics_on_server_messages
  proptests::certificate_end_point_never_panics
  proptests::md5_and_userlist_never_panic
  proptests::analysis_of_any_text_never_panics
  proptests::analysis_of_sql_like_text_with_hints_never_panics
  proptests::the_tracker_never_panics_on_any_backend_sequence
  cache::stored::tests::redis_entries_tokens_and_messages_never_panic
)
cargo test --lib --no-run -q || exit 1
status=0
for t in "${TARGETS[@]}"; do
  start=$(date +%s)
  cases=0
  result=ok
  while (( $(date +%s) - start < SECONDS_PER_TARGET )); do
    if ! PROPTEST_CASES=$BATCH cargo test -q --lib "$t" -- --exact >/tmp/fuzz-$$.log 2>&1; then
      result=FAILED
      status=1
      tail -30 /tmp/fuzz-$$.log
      break
    fi
    cases=$((cases + BATCH))
  done
  printf '%-75s %10d cases %5ds  %s\n' "$t" "$cases" "$(( $(date +%s) - start ))" "$result"
done
rm -f /tmp/fuzz-$$.log
exit $status
