#!/usr/bin/env bash
# THE test command for pgsidecar (CI runs it through .ci/run):
#   1. installs missing Debian packages (scripts/install-deps.sh, as root);
#   2. cargo build --all-targets;
#   3. cargo test --all-targets (unit + integration tests against the
#      real-service lab: Postgres primary/replicas, Redis);
#   4. (the driver matrix, tests/drivers/run.sh, runs inside cargo test via tests/drivers.rs,
#      which gives it a lab and a sidecar);
#   5. sweeps any lab process or temp dir a crashed test left behind.
# Exits non-zero if any step fails. Works from any directory.
# Env: TEST_THREADS (default 4), SKIP_INSTALL_DEPS=1 to skip step 1.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

lab_tmp="${PGSIDECAR_LAB_TMP:-/tmp}"
lab_prefix="pgsidecar-lab-"

# Kills every process whose command line or working directory is inside a
# lab temp root of a test process that is gone (postmasters, their
# children, redis, sidecars, watchdogs), then removes those temp roots. The
# tests clean up after themselves; this catches what a hard crash left.
running() { # PID -> true if it exists and is not a zombie
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ]
}
owner_gone() { # ROOT-ish string -> true if the test process owning it exited
  [[ "$1" =~ $lab_prefix([0-9]+)- ]] && ! running "${BASH_REMATCH[1]}"
}
sweep_lab() {
  local postmasters=() others=() p pid cwd cmd root
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = $$ ] && continue
    cwd=$(readlink "$p/cwd" 2>/dev/null || true)
    cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline" || true)
    case "$cwd $cmd" in
      *"$lab_tmp/$lab_prefix"*) ;;
      *) continue ;;
    esac
    owner_gone "$cwd $cmd" || continue
    if [ "$(cat "$p/comm" 2>/dev/null)" = postgres ] && [[ "$cmd" == *" -D "* ]]; then
      postmasters+=("$pid")
    else
      others+=("$pid")
    fi
  done
  if ((${#postmasters[@]} + ${#others[@]})); then
    echo "test.sh: stopping leftover lab processes: ${postmasters[*]} ${others[*]}"
    # SIGQUIT = immediate shutdown: the postmaster stops its children.
    ((${#postmasters[@]})) && kill -QUIT "${postmasters[@]}" 2>/dev/null
    for _ in $(seq 50); do
      local alive=0
      for pid in "${postmasters[@]}"; do running "$pid" && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    kill -KILL "${postmasters[@]}" "${others[@]}" 2>/dev/null || true
  fi
  for root in "$lab_tmp/$lab_prefix"*; do
    [ -d "$root" ] && owner_gone "$root" && rm -rf "$root"
  done
  return 0
}
trap sweep_lab EXIT

if [ "${SKIP_INSTALL_DEPS:-0}" != 1 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    scripts/install-deps.sh
  else
    scripts/install-deps.sh --minimal || {
      echo "test.sh: missing packages; run scripts/install-deps.sh as root" >&2; exit 1; }
  fi
fi

status=0
step() {
  echo
  echo "==> $*"
  if ! "$@"; then
    echo "test.sh: FAILED: $*" >&2
    status=1
  fi
}

echo "==> cargo build --all-targets"
cargo build --all-targets

# Threads via RUST_TEST_THREADS, not `-- --test-threads`: criterion bench
# binaries (run once each by --all-targets) may reject libtest flags.
# --no-fail-fast: one failing test binary must not hide the others.
export RUST_TEST_THREADS="${TEST_THREADS:-4}"
step cargo test --all-targets --no-fail-fast

if [ "$status" -ne 0 ]; then
  echo "test.sh: some suites failed" >&2
else
  echo "test.sh: all suites passed"
fi
exit "$status"
