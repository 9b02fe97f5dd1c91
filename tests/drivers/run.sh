#!/usr/bin/env bash
# pgsidecar driver compatibility matrix: real client drivers, installed from their registries at
# pinned versions, each running the shared scenario (see README.md) against one DSN.
#
#   tests/drivers/run.sh postgres://user:password@127.0.0.1:PORT/db
#
# Prints each driver's steps, then one line per driver
#   driver <name> <version>: PASS|FAIL (<what failed>)
# and finally `N passed, M failed` (N, M = drivers). Exits non-zero if any driver failed.
#
# Installs what is missing first (as root: Debian packages; always: the venv under
# tests/drivers/.venv, node_modules under tests/drivers/node, the Java class files, the Rust
# program under tests/drivers/rust/target). Normally run by `cargo test --test drivers`, which
# starts Postgres and a sidecar (transaction pooling, pool size 4) and passes its DSN.
#
# Env: DRIVERS="psql pgbench ..." runs a subset (names as printed), DRIVER_TIMEOUT (s, default 180)
# per driver, DRIVER_CONNECTIONS (default 20) concurrent connections per driver,
# DRIVERS_LOG_DIR keeps every driver's full output there (default: a temp dir, removed).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
began_all=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

setup_python() {
  local venv=$here/.venv req=$here/python/requirements.txt sum py=python3
  sum=$(sha256sum "$req" | cut -d' ' -f1)
  if stamp_ok "$venv/.installed" "$sum" && "$venv/bin/python" -c 'import psycopg, asyncpg' 2>/dev/null; then
    echo "venv up to date"
    return 0
  fi
  python3 -c 'import venv, ensurepip' 2>/dev/null || py=/usr/bin/python3
  rm -rf "$venv"
  "$py" -m venv "$venv" || { echo "python3 -m venv failed"; return 1; }
  "$venv/bin/pip" install --disable-pip-version-check --no-input -q -r "$req" || { echo "pip install failed"; return 1; }
  echo "$sum" >"$venv/.installed"
}

# `run.sh --setup-python`: only make (or keep) the venv, for the tests that share it
# (tests/it/nohang.rs runs tests/drivers/python/regressions.py in it).
if [ "${1:-}" = --setup-python ]; then
  setup_python
  exit
fi

DSN=${1:-${PGSIDECAR_DSN:-}}
if [ -z "$DSN" ]; then
  echo "drivers: no DSN given, nothing to run. The matrix runs from \`cargo test --test drivers\`"
  echo "drivers: (which starts Postgres and a sidecar), or by hand: tests/drivers/run.sh postgres://user:pw@host:port/db"
  exit 0
fi

ALL_DRIVERS="psql pgbench psycopg asyncpg node-postgres pgjdbc tokio-postgres sqlx"
DRIVERS=${DRIVERS:-$ALL_DRIVERS}
DRIVER_TIMEOUT=${DRIVER_TIMEOUT:-180}
export DRIVER_CONNECTIONS=${DRIVER_CONNECTIONS:-20}

if [ -n "${DRIVERS_LOG_DIR:-}" ]; then
  logs=$DRIVERS_LOG_DIR
  mkdir -p "$logs"
else
  logs=$(mktemp -d "${TMPDIR:-/tmp}/pgsidecar-drivers.XXXXXX")
  trap 'rm -rf "$logs"' EXIT
fi

# ---- the DSN, also as libpq variables --------------------------------------------------------
parts=$(python3 - "$DSN" <<'PY'
import sys, urllib.parse as u
d = u.urlsplit(sys.argv[1])
if d.scheme not in ("postgres", "postgresql") or not d.hostname:
    sys.exit("not a postgres://user:password@host:port/db URL: " + sys.argv[1])
print(d.hostname, d.port or 5432, u.unquote(d.username or ""), u.unquote(d.password or ""), u.unquote(d.path.lstrip("/")) or u.unquote(d.username or ""), sep="\n")
PY
) || { echo "drivers: bad DSN" >&2; exit 2; }
{ read -r PGHOST; read -r PGPORT; read -r PGUSER; read -r PGPASSWORD; read -r PGDATABASE; } <<<"$parts"
export PGSIDECAR_DSN=$DSN PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
unset PGSERVICE PGOPTIONS PGAPPNAME PGSSLMODE PGTZ PGDATESTYLE PGCLIENTENCODING
echo "drivers: DSN postgres://$PGUSER:***@$PGHOST:$PGPORT/$PGDATABASE, $DRIVER_CONNECTIONS connections per driver"

wants() { [[ " $DRIVERS " == *" $1 "* ]]; }

# ---- 1. Debian packages (one apt run, before anything else uses them) ------------------------
apt_missing=()
need_pkg() { # PACKAGE COMMAND-OR-TEST...: PACKAGE is missing unless the test passes
  local pkg=$1
  shift
  "$@" >/dev/null 2>&1 || apt_missing+=("$pkg")
}
has() { command -v "$1"; }
pg_tool() { command -v "$1" || ls /usr/lib/postgresql/*/bin/"$1"; }
wants psql && need_pkg postgresql-client pg_tool psql
wants pgbench && need_pkg postgresql pg_tool pgbench
if wants psycopg || wants asyncpg; then need_pkg python3-venv python3 -c 'import venv, ensurepip'; fi
if wants node-postgres; then
  need_pkg nodejs has node
  need_pkg npm has npm
fi
if wants pgjdbc; then
  need_pkg default-jdk-headless has javac
  need_pkg libpostgresql-jdbc-java test -f /usr/share/java/postgresql.jar
fi
if ((${#apt_missing[@]})); then
  if [ "$(id -u)" -eq 0 ]; then
    echo "drivers: installing Debian packages: ${apt_missing[*]}"
    began=$(date +%s.%N)
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d # keep package scripts from starting services
    made_policy=false
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=true
    fi
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${apt_missing[@]}"; } >"$logs/apt.log" 2>&1 ||
      { echo "drivers: apt-get failed:"; tail -5 "$logs/apt.log"; }
    $made_policy && rm -f "$policy"
    echo "drivers: apt done in $(since "$began")s"
  else
    echo "drivers: missing Debian packages (${apt_missing[*]}); run as root to install them"
  fi
fi

# ---- 2. per-driver toolchains, in parallel (each driver waits only for its own) --------------
# setup_<x> writes its log to $logs/setup-<x>.log and exits non-zero with a reason on its last line.
setup_node() {
  local dir=$here/node sum
  command -v npm >/dev/null || { echo "npm not found"; return 1; }
  sum=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if stamp_ok "$dir/node_modules/.installed" "$sum"; then
    echo "node_modules up to date"
    return 0
  fi
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed"; return 1; }
  echo "$sum" >"$dir/node_modules/.installed"
}

setup_java() {
  local dir=$here/java jar=/usr/share/java/postgresql.jar
  [ -f "$jar" ] || { echo "$jar not found (Debian package libpostgresql-jdbc-java)"; return 1; }
  command -v javac >/dev/null || { echo "javac not found"; return 1; }
  if [ "$dir/build/DriverScenario.class" -nt "$dir/DriverScenario.java" ] && [ "$dir/build/DriverScenario.class" -nt "$jar" ]; then
    echo "classes up to date"
    return 0
  fi
  mkdir -p "$dir/build"
  javac -encoding UTF-8 -cp "$jar" -d "$dir/build" "$dir/DriverScenario.java" || { echo "javac failed"; return 1; }
}

setup_rust() {
  local cargo=cargo
  command -v cargo >/dev/null || cargo=$HOME/.cargo/bin/cargo
  command -v "$cargo" >/dev/null || { echo "cargo not found"; return 1; }
  # Its own target dir, whatever CARGO_TARGET_DIR says: never shares the main crate's build.
  CARGO_TARGET_DIR=$here/rust/target "$cargo" build --locked --manifest-path "$here/rust/Cargo.toml" ||
    { echo "cargo build of tests/drivers/rust failed"; return 1; }
}

declare -A setup_of=([psql]="" [pgbench]="" [psycopg]=python [asyncpg]=python [node-postgres]=node [pgjdbc]=java [tokio-postgres]=rust [sqlx]=rust)
declare -A setup_pid=()
for d in $DRIVERS; do
  s=${setup_of[$d]-unknown}
  if [ "$s" = unknown ]; then
    echo "drivers: unknown driver '$d' (known: $ALL_DRIVERS)" >&2
    exit 2
  fi
  if [ -n "$s" ] && [ -z "${setup_pid[$s]:-}" ]; then
    ( began=$(date +%s.%N); "setup_$s"; rc=$?; echo "setup took $(since "$began")s"; exit $rc ) >"$logs/setup-$s.log" 2>&1 &
    setup_pid[$s]=$!
  fi
done
declare -A setup_rc=()
wait_setup() { # NAME -> 0 if ready
  local s=$1
  [ -z "$s" ] && return 0
  if [ -z "${setup_rc[$s]:-}" ]; then
    wait "${setup_pid[$s]}"
    setup_rc[$s]=$?
    echo "drivers: setup $s: $([ "${setup_rc[$s]}" = 0 ] && echo ok || echo FAILED) ($(tail -1 "$logs/setup-$s.log"))"
  fi
  return "${setup_rc[$s]}"
}

# ---- 3. the drivers, one after the other ---------------------------------------------------
command_of() {
  case $1 in
    psql) echo "bash $here/psql/scenario.sh" ;;
    pgbench) echo "bash $here/pgbench/scenario.sh" ;;
    psycopg) echo "$here/.venv/bin/python $here/python/scenario_psycopg.py" ;;
    asyncpg) echo "$here/.venv/bin/python $here/python/scenario_asyncpg.py" ;;
    node-postgres) echo "node $here/node/scenario.js" ;;
    pgjdbc) echo "java -cp $here/java/build:/usr/share/java/postgresql.jar DriverScenario" ;;
    tokio-postgres) echo "$here/rust/target/debug/driver-matrix tokio-postgres" ;;
    sqlx) echo "$here/rust/target/debug/driver-matrix sqlx" ;;
  esac
}

passed=0
failed=0
summary=()
for d in $DRIVERS; do
  echo
  echo "== $d"
  out=$logs/$d.out
  err=$logs/$d.err
  s=${setup_of[$d]}
  if ! wait_setup "$s"; then
    sed 's/^/    setup: /' "$logs/setup-$s.log" | tail -15
    line="driver $d ?: FAIL (setup: $(tail -2 "$logs/setup-$s.log" | head -1))"
    summary+=("$line")
    failed=$((failed + 1))
    continue
  fi
  began=$(date +%s.%N)
  # shellcheck disable=SC2046
  (cd "$here" && timeout --kill-after=10 "$DRIVER_TIMEOUT" $(command_of "$d")) 2>"$err" | tee "$out" | grep --line-buffered -v ': START$' | sed -u 's/^/    /'
  rc=${PIPESTATUS[0]}
  took=$(since "$began")
  version=$(head -1 "$out" | awk '{print $2}' | tr -d ',')
  reasons=$(grep -E '^step [^ ]+: FAIL' "$out" | sed -E 's/^step ([^ ]+): FAIL \([0-9.]+s\) /\1: /' | cut -c1-300 | awk 'NR > 1 { printf " // " } { printf "%s", $0 }')
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    running=$(grep -E '^step [^ ]+: START$' "$out" | tail -1 | awk '{print $2}' | tr -d ':')
    reasons="timed out after ${DRIVER_TIMEOUT}s in step ${running:-?}${reasons:+; $reasons}"
  elif [ "$rc" != 0 ] && [ -z "$reasons" ]; then
    reasons="exit $rc: $(tail -3 "$err" | tr '\n' ' ' | cut -c1-300)"
  fi
  if [ "$rc" = 0 ]; then
    line="driver $d ${version:-?}: PASS"
    passed=$((passed + 1))
  else
    line="driver $d ${version:-?}: FAIL ($reasons)"
    failed=$((failed + 1))
    echo "    --- $d stderr (last 25 lines) ---"
    tail -25 "$err" | cut -c1-400 | sed 's/^/    | /'
  fi
  echo "    ($d took ${took}s)"
  summary+=("$line")
done

echo
echo "== driver compatibility matrix ($(since "$began_all")s in all)"
for line in "${summary[@]}"; do echo "$line"; done
for s in python node java rust; do
  [ -f "$logs/setup-$s.log" ] && echo "setup $s: $(tail -1 "$logs/setup-$s.log")"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
