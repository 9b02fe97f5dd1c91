#!/usr/bin/env bash
# Installs the Debian packages that pgsidecar's tests, benchmarks and demo
# need, and only those that are missing (idempotent; `apt-get update` runs
# only when something must be installed).
#
#   scripts/install-deps.sh            # servers + driver-test toolchains
#   scripts/install-deps.sh --minimal  # servers only (what `cargo test` needs)
#
# Also stops Debian's own Postgres cluster (port 5432) and keeps it from
# autostarting: the test lab runs its own servers on free ports.
set -euo pipefail

minimal=false
for arg in "$@"; do
  case "$arg" in
    --minimal) minimal=true ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# need PACKAGE [COMMAND]: PACKAGE is missing unless dpkg has it or, when
# COMMAND is given, COMMAND is already on PATH (e.g. a nodejs from another
# source that bundles npm, which Debian's npm package would conflict with).
missing=()
need() {
  if [ $# -ge 2 ] && command -v "$2" >/dev/null 2>&1; then return 0; fi
  installed "$1" || missing+=("$1")
}

# Servers and the tools the lab and scripts use (pkill, pgrep, killall).
need postgresql
need postgresql-contrib
need redis-server redis-server
need redis-tools redis-cli
need pgbouncer pgbouncer
need pgpool2 pgpool
need psmisc killall
need procps pkill
need curl curl # tests/it/bluegreen.rs reads /metrics as the runbook does
if ! $minimal; then
  # Driver compatibility tests: JDBC, node-postgres, psycopg.
  need default-jdk-headless javac
  need libpostgresql-jdbc-java
  need nodejs node
  need npm npm
  need python3-venv
fi

if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run this script as root" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting services (Debian's postgresql,
  # redis, pgbouncer...): nothing of ours uses them. Only if no policy is
  # in place already, and removed again afterwards.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's postgresql package creates a cluster on 5432 and may start it.
# Stop it and mark it manual so it does not come back on boot.
if command -v pg_lsclusters >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  pg_lsclusters --no-header 2>/dev/null | while read -r ver cluster _port status _rest; do
    if [ "$status" = online ] || [[ "$status" == online,* ]]; then
      echo "install-deps: stopping Debian's Postgres cluster $ver/$cluster"
      pg_ctlcluster "$ver" "$cluster" stop -m fast || true
    fi
    conf="/etc/postgresql/$ver/$cluster/start.conf"
    if [ -f "$conf" ] && ! grep -qx manual "$conf"; then
      echo manual >"$conf"
    fi
  done
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
fi

# Sanity: the lab needs initdb & co (not on PATH on Debian) and redis.
bindir=""
for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
  if [ -x "$dir/initdb" ]; then bindir=$dir; break; fi
done
if [ -z "$bindir" ] && command -v pg_config >/dev/null 2>&1; then
  dir=$(pg_config --bindir)
  [ -x "$dir/initdb" ] && bindir=$dir
fi
[ -n "$bindir" ] || { echo "install-deps: no Postgres server binaries (initdb) found" >&2; exit 1; }
for tool in redis-server redis-cli pgbench; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$bindir/$tool" ] || {
    echo "install-deps: $tool not found after install" >&2; exit 1; }
done
id postgres >/dev/null 2>&1 || { echo "install-deps: no 'postgres' user" >&2; exit 1; }
echo "install-deps: ok (Postgres binaries in $bindir)"
