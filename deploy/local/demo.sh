#!/usr/bin/env bash
# pgsidecar local demo: one command from a fresh machine to a running stack.
#
#   deploy/local/demo.sh up       install what is missing, build pgsidecar, start
#                                 a Postgres primary + 2 streaming replicas, Redis
#                                 and pgsidecar, load the demo catalog (first time)
#   deploy/local/demo.sh status   what runs, replication state; exit 0 if all is up
#   deploy/local/demo.sh down     stop everything (data is kept: the next `up` is fast)
#   deploy/local/demo.sh destroy  `down`, then delete .demo/ (the next `up` starts over)
#
# Everything lives in .demo/ at the repo root:
#   .demo/pg/{primary,replica1,replica2}/   data directories
#   .demo/pg/{primary,replica1,replica2}.log  server logs
#   .demo/pg/run/                            Unix sockets
#   .demo/redis/{redis.pid,redis.log}
#   .demo/pgsidecar.{pid,log}
#   .demo/pgbench-catalog.sql                a pgbench script (product/category pages)
#
#   primary    127.0.0.1:15432   replicas 127.0.0.1:15433, 127.0.0.1:15434
#              (pg_basebackup -R -X stream, physical slots replica1/replica2)
#   redis      127.0.0.1:16379   (cache only: no persistence, 256 MB LRU)
#   pgsidecar  127.0.0.1:6432    postgres://shop:shop@127.0.0.1:6432/shop
#              and its Unix socket  .demo/sidecar/.s.PGSQL.6432
#                                   postgres://shop:shop@localhost:6432/shop?host=<repo>/.demo/sidecar
#
# Roles: `shop` / password `shop` owns database `shop` (the app);
# `replicator` / `replicator` streams to the replicas. TCP logins use
# scram-sha-256; the Unix socket admits only the server's OS user (peer).
# As root, the Postgres servers and Redis run as user `postgres` (Postgres
# refuses root); otherwise as the invoking user. pgsidecar runs as the invoker.
#
# `up` is idempotent: it starts only what is stopped, creates only what is
# missing, re-applies sql/schema.sql and sql/invalidation.sql (both
# idempotent) and loads sql/demo-data.sql only into an empty catalog (or
# when DEMO_RELOAD_DATA=1: that TRUNCATEs and regenerates the demo tables).
# A pgsidecar whose binary was rebuilt, or whose ports changed, since it
# started is restarted; a server running on another port than requested
# (DEMO_*_PORT changed) is an error: `down` first.
#
# pgsidecar is started with --config config/demo.toml if that file exists,
# plus --listen/--primary/--replica/--redis flags: this script owns the
# addresses (they are overridable below and used for its health checks), and
# flags override the file. Without the file: flags only.
#
# Environment (defaults in brackets):
#   DEMO_DIR [<repo>/.demo]          DEMO_PROXY_PORT [6432]
#   DEMO_PRIMARY_PORT [15432]        DEMO_REPLICA1_PORT [15433]
#   DEMO_REPLICA2_PORT [15434]       DEMO_REDIS_PORT [16379]
#   PGBIN [newest /usr/lib/postgresql/*/bin]
#   DEMO_RELOAD_DATA=1               reload the demo data on `up`
#   DEMO_SKIP_INSTALL=1              don't check/install packages
#   DEMO_SKIP_BUILD=1                don't run cargo build (use the existing binary)
set -euo pipefail
set -E  # the ERR trap also fires inside functions

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
prog="deploy/local/demo.sh"

DEMO_DIR="${DEMO_DIR:-$repo/.demo}"
HOST=127.0.0.1
PRIMARY_PORT="${DEMO_PRIMARY_PORT:-15432}"
REPLICA1_PORT="${DEMO_REPLICA1_PORT:-15433}"
REPLICA2_PORT="${DEMO_REPLICA2_PORT:-15434}"
REDIS_PORT="${DEMO_REDIS_PORT:-16379}"
PROXY_PORT="${DEMO_PROXY_PORT:-6432}"

APP_USER=shop
APP_PASSWORD=shop
APP_DB=shop
REPL_USER=replicator
REPL_PASSWORD=replicator

PG_DIR="$DEMO_DIR/pg"
REDIS_DIR="$DEMO_DIR/redis"
PROXY_PID="$DEMO_DIR/pgsidecar.pid"
PROXY_LOG="$DEMO_DIR/pgsidecar.log"
PROXY_BIN="$repo/target/release/pgsidecar"
DEMO_CONFIG="$repo/config/demo.toml"
APP_URL="postgres://$APP_USER:$APP_PASSWORD@$HOST:$PROXY_PORT/$APP_DB"
# pgsidecar's Unix socket directory (what an application beside it would use); /tmp when the
# path would be too long for a socket address.
PROXY_SOCK_DIR="$DEMO_DIR/sidecar"
[ $((${#PROXY_SOCK_DIR} + 20)) -gt 100 ] && PROXY_SOCK_DIR="/tmp/pgsidecar-demo-sidecar-$(id -u)"
APP_SOCKET_URL="postgres://$APP_USER:$APP_PASSWORD@localhost:$PROXY_PORT/$APP_DB?host=$PROXY_SOCK_DIR"

step="starting"
t0=$(date +%s.%N)

# --- output helpers ----------------------------------------------------------

elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%5.1fs", b - a }'; }
say() { printf '[%s] %s\n' "$(elapsed)" "$*"; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
on_error() {
  local rc=$? line=$1
  printf '%s: error: failed while %s (line %s, exit status %s).\n' "$prog" "$step" "$line" "$rc" >&2
  printf '%s: logs are in %s (pg/*.log, redis/redis.log, pgsidecar.log).\n' "$prog" "$DEMO_DIR" >&2
  exit "$rc"
}
trap 'on_error $LINENO' ERR

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

# --- environment -------------------------------------------------------------

is_root() { [ "$(id -u)" -eq 0 ]; }

# The OS user the servers run as: postgres when we are root, else ourselves.
srv_user() { if is_root; then echo postgres; else id -un; fi; }

# as_srv CMD...: run CMD as the server user, from / (the postgres user may
# not be able to read the invoker's working directory).
as_srv() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

find_pgbin() {
  if [ -n "${PGBIN:-}" ]; then
    [ -x "$PGBIN/initdb" ] || die "PGBIN=$PGBIN has no initdb"
    return
  fi
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
    if [ -x "$dir/initdb" ]; then PGBIN=$dir; return; fi
  done
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    PGBIN=$(pg_config --bindir); return
  fi
  if command -v initdb >/dev/null 2>&1; then PGBIN=$(dirname "$(command -v initdb)"); return; fi
  PGBIN=""
}

# Unix socket directory: inside .demo/ unless that path is too long for a
# socket address (~107 bytes on Linux).
sock_dir() {
  local d="$PG_DIR/run"
  if [ $((${#d} + 20)) -gt 100 ]; then d="/tmp/pgsidecar-demo-$(id -u "$(srv_user)")"; fi
  echo "$d"
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Fails with a clear message if PORT is taken (by something that is not the
# component we are about to start).
require_free_port() { # PORT WHAT ENVVAR
  if port_busy "$1"; then
    local who=""
    command -v ss >/dev/null 2>&1 && who=$(ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -1)
    die "cannot start $2: port $HOST:$1 is already in use${who:+ by $who}. Stop that process or pick another port: $3=<port> $prog up"
  fi
}

# --- step: packages & build ---------------------------------------------------

install_packages() {
  step="checking/installing packages"
  if [ "${DEMO_SKIP_INSTALL:-}" = 1 ]; then
    find_pgbin
    return
  fi
  local deps="$repo/scripts/install-deps.sh"
  if [ -f "$deps" ]; then
    local args=()
    # Only the servers: the demo needs no driver-test toolchains.
    grep -q -- '--minimal)' "$deps" && args=(--minimal)
    say "checking packages (scripts/install-deps.sh ${args[*]})"
    bash "$deps" "${args[@]}" || die "scripts/install-deps.sh failed (see above)"
  else
    find_pgbin
    local missing=()
    [ -n "$PGBIN" ] || missing+=(postgresql)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    if ((${#missing[@]})); then
      is_root || die "missing packages: ${missing[*]}. Install them (sudo apt-get install ${missing[*]}) or run as root."
      say "installing ${missing[*]} (apt-get)"
      export DEBIAN_FRONTEND=noninteractive
      # Keep the packages' own services from starting: the demo runs its own.
      local policy=/usr/sbin/policy-rc.d created=0
      if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created=1; fi
      apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}" || {
        [ "$created" = 1 ] && rm -f "$policy"; die "apt-get install ${missing[*]} failed"; }
      [ "$created" = 1 ] && rm -f "$policy"
    fi
  fi
  find_pgbin
  [ -n "$PGBIN" ] || die "no Postgres server binaries (initdb) found; install postgresql or set PGBIN"
  local tool
  for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found; install redis-server and redis-tools"
  done
  for tool in initdb pg_ctl postgres pg_basebackup psql; do
    [ -x "$PGBIN/$tool" ] || die "$PGBIN/$tool not found"
  done
  if is_root; then
    id postgres >/dev/null 2>&1 || die "user 'postgres' does not exist (installing the postgresql package creates it)"
  fi
}

build_proxy() {
  step="building pgsidecar (cargo build --release)"
  if [ "${DEMO_SKIP_BUILD:-}" = 1 ]; then
    [ -x "$PROXY_BIN" ] || die "DEMO_SKIP_BUILD=1 but $PROXY_BIN does not exist"
    return
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install a Rust toolchain >= 1.80 with rustup (Debian's cargo is too old)"
  say "building pgsidecar (cargo build --release; the first build takes a few minutes)"
  if ! (cd "$repo" && cargo build --release); then
    local hint=""
    [ -x "$PROXY_BIN" ] && hint=" To run the demo with the binary of the last successful build, $PROXY_BIN: DEMO_SKIP_BUILD=1 $prog up"
    die "cargo build --release failed (see the compiler output above).$hint"
  fi
  [ -x "$PROXY_BIN" ] || die "cargo build succeeded but $PROXY_BIN is missing"
}

# --- Postgres ----------------------------------------------------------------

pg_running() { as_srv "$PGBIN/pg_ctl" status -D "$1" >/dev/null 2>&1; }
pg_pid() { head -1 "$1/postmaster.pid" 2>/dev/null || true; }

# psql as the superuser over the Unix socket (peer auth).
psql_super() { # PORT ARGS...
  local port=$1; shift
  as_srv "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$(sock_dir)" -p "$port" -d postgres "$@"
}

# psql as the app role over TCP (scram-sha-256), directly to a server.
psql_app() { # PORT ARGS...
  local port=$1; shift
  PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=5 "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 \
    -h "$HOST" -p "$port" -U "$APP_USER" -d "$APP_DB" "$@"
}

pg_start() { # NAME DATADIR PORT
  local name=$1 data=$2 port=$3
  if pg_running "$data"; then
    local running_port
    running_port=$(sed -n 4p "$data/postmaster.pid" 2>/dev/null)
    if [ -n "$running_port" ] && [ "$running_port" != "$port" ]; then
      die "Postgres $name is running on port $running_port, not $port (DEMO_${name^^}_PORT changed?). Run '$prog down' first, then 'up' again."
    fi
    say "$name already running (pid $(pg_pid "$data"), port $port)"
    return
  fi
  require_free_port "$port" "Postgres $name" "DEMO_${name^^}_PORT"
  step="starting Postgres $name on port $port"
  # Port and socket directory as options, not in postgresql.conf: the ports
  # can change between runs (DEMO_*_PORT).
  as_srv "$PGBIN/pg_ctl" start -D "$data" -l "$PG_DIR/$name.log" -w -t 120 \
    -o "-p $port -k $(sock_dir)" >/dev/null 9>&- ||
    die "Postgres $name did not start; last lines of $PG_DIR/$name.log:
$(tail -n 20 "$PG_DIR/$name.log" 2>/dev/null)"
  say "$name started (pid $(pg_pid "$data"), port $port)"
}

pg_stop() { # NAME DATADIR
  local name=$1 data=$2
  if [ ! -d "$data" ]; then return; fi
  if pg_running "$data"; then
    as_srv "$PGBIN/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null ||
      die "could not stop Postgres $name (data directory $data)"
    say "stopped Postgres $name"
  else
    say "Postgres $name not running"
  fi
}

prepare_dirs() {
  step="creating $DEMO_DIR"
  case "$DEMO_DIR" in *[[:space:]]*) die "DEMO_DIR must not contain spaces: '$DEMO_DIR'";; esac
  mkdir -p "$DEMO_DIR"
  local user; user=$(srv_user)
  if is_root; then
    # The servers run as postgres: it must be able to reach .demo/.
    runuser -u postgres -- test -x "$DEMO_DIR" ||
      die "user postgres cannot access $DEMO_DIR (a parent directory is not world-executable); set DEMO_DIR to a path it can reach, e.g. DEMO_DIR=/var/tmp/pgsidecar-demo"
    install -d -o "$user" -m 0700 "$PG_DIR"
    install -d -o "$user" -m 0700 "$REDIS_DIR"
  else
    install -d -m 0700 "$PG_DIR" "$REDIS_DIR"
  fi
  local sock; sock=$(sock_dir)
  if is_root; then install -d -o "$user" -m 0700 "$sock"; else install -d -m 0700 "$sock"; fi
}

create_primary() {
  local data="$PG_DIR/primary"
  if [ -f "$data/PG_VERSION" ]; then return; fi
  step="creating the primary (initdb)"
  say "creating the primary cluster (initdb)"
  local tmp="$PG_DIR/primary.tmp"
  as_srv rm -rf "$tmp"
  as_srv "$PGBIN/initdb" -D "$tmp" -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 ||
    die "initdb failed; see $PG_DIR/initdb.log:
$(tail -n 20 "$PG_DIR/initdb.log")"
  # Copied to the replicas by pg_basebackup.
  as_srv tee -a "$tmp/postgresql.conf" >/dev/null <<'EOF'

# --- pgsidecar demo (deploy/local/demo.sh); port and socket dir are pg_ctl options ---
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = 256MB
effective_cache_size = 1GB
random_page_cost = 1.1                  # SSD / cached: lets the planner use index nested loops
password_encryption = 'scram-sha-256'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on               # replicas: don't cancel long reads
log_line_prefix = '%m [%p] %q%u@%d '
log_connections = off
EOF
  as_srv mv "$tmp" "$data"
}

bootstrap_roles() {
  step="creating roles and database"
  psql_super "$PRIMARY_PORT" <<EOF
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$APP_USER') THEN
        CREATE ROLE $APP_USER LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$REPL_USER') THEN
        CREATE ROLE $REPL_USER LOGIN REPLICATION;
    END IF;
END
\$\$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE $APP_USER LOGIN PASSWORD '$APP_PASSWORD';
ALTER ROLE $REPL_USER LOGIN REPLICATION PASSWORD '$REPL_PASSWORD';
SELECT 'CREATE DATABASE $APP_DB OWNER $APP_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$APP_DB')\gexec
EOF
}

load_sql() {
  step="applying sql/schema.sql and sql/invalidation.sql"
  local f
  for f in schema invalidation; do
    [ -f "$repo/sql/$f.sql" ] || die "missing $repo/sql/$f.sql"
    PGOPTIONS="-c client_min_messages=warning" psql_app "$PRIMARY_PORT" -f "$repo/sql/$f.sql" ||
      die "sql/$f.sql failed (see above)"
  done
  step="loading the demo data (sql/demo-data.sql)"
  local n
  n=$(psql_app "$PRIMARY_PORT" -Atc 'SELECT count(*) FROM products')
  if [ "$n" != 0 ] && [ "${DEMO_RELOAD_DATA:-}" != 1 ]; then
    say "demo data already loaded ($n products; DEMO_RELOAD_DATA=1 reloads it)"
    return
  fi
  say "loading demo data (80,000 SKUs, 320,000 inventory rows)..."
  local a b
  a=$(date +%s.%N)
  PGOPTIONS="-c client_min_messages=warning" psql_app "$PRIMARY_PORT" -f "$repo/sql/demo-data.sql" >/dev/null ||
    die "sql/demo-data.sql failed (see above)"
  b=$(date +%s.%N)
  say "demo data loaded in $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", b - a }')s"
}

# drop_slot_if_unused SLOT: a slot left by a replica whose directory was deleted.
drop_slot_if_unused() {
  psql_super "$PRIMARY_PORT" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$1' AND NOT active" >/dev/null
}

create_replica() { # NAME
  local name=$1 data="$PG_DIR/$1"
  if [ -f "$data/PG_VERSION" ]; then return; fi
  step="creating $name (pg_basebackup from the primary)"
  say "creating $name (pg_basebackup -R -X stream)"
  local tmp="$PG_DIR/$name.tmp"
  as_srv rm -rf "$tmp"
  drop_slot_if_unused "$name"
  PGPASSWORD=$REPL_PASSWORD as_srv "$PGBIN/pg_basebackup" -h "$HOST" -p "$PRIMARY_PORT" -U "$REPL_USER" \
    -D "$tmp" -R -X stream -C -S "$name" -c fast --no-password >"$PG_DIR/$name-basebackup.log" 2>&1 ||
    die "pg_basebackup for $name failed; see $PG_DIR/$name-basebackup.log:
$(tail -n 20 "$PG_DIR/$name-basebackup.log")"
  # Names the replica in pg_stat_replication (-R writes the conninfo).
  as_srv sed -i -E "s/^(primary_conninfo = ')/\1application_name=$name /" "$tmp/postgresql.auto.conf"
  as_srv mv "$tmp" "$data"
}

# The primary's port may have changed since the replica was created.
fix_replica_conninfo() { # DATADIR
  as_srv sed -i -E "/^primary_conninfo/ s/port=[0-9]+/port=$PRIMARY_PORT/" "$1/postgresql.auto.conf"
}

wait_replicas_caught_up() {
  step="waiting for the replicas to catch up"
  local lsn name port ok
  lsn=$(psql_super "$PRIMARY_PORT" -Atc 'SELECT pg_current_wal_lsn()')
  for name in replica1 replica2; do
    port=$([ "$name" = replica1 ] && echo "$REPLICA1_PORT" || echo "$REPLICA2_PORT")
    ok=""
    for _ in $(seq 1 240); do
      if [ "$(psql_super "$port" -Atc "SELECT coalesce(pg_last_wal_replay_lsn() >= '$lsn', false)" 2>/dev/null)" = t ]; then
        ok=1; break
      fi
      sleep 0.25
    done
    [ -n "$ok" ] || die "$name has not replayed the primary's WAL up to $lsn after 60s; see $PG_DIR/$name.log"
  done
  say "replicas caught up with the primary (WAL $lsn)"
}

# --- Redis -------------------------------------------------------------------

redis_pid() { # -> pid of OUR redis (whatever its port), if it runs
  local pid
  pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "redis-server" || return 1
  echo "$pid"
}
redis_port_of() { # PID -> the port in its process title ("redis-server 127.0.0.1:16379")
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | sed -n 's/.*:\([0-9][0-9]*\).*/\1/p'
}

redis_start() {
  local pid
  if pid=$(redis_pid); then
    local running_port; running_port=$(redis_port_of "$pid")
    if [ -n "$running_port" ] && [ "$running_port" != "$REDIS_PORT" ]; then
      die "Redis is running on port $running_port, not $REDIS_PORT (DEMO_REDIS_PORT changed?). Run '$prog down' first, then 'up' again."
    fi
    say "redis already running (pid $pid, port $REDIS_PORT)"
    return
  fi
  require_free_port "$REDIS_PORT" "Redis" DEMO_REDIS_PORT
  step="starting Redis on port $REDIS_PORT"
  as_srv rm -f "$REDIS_DIR/redis.pid"
  # A cache: no RDB/AOF persistence, bounded memory with LRU eviction.
  as_srv redis-server --bind "$HOST" --port "$REDIS_PORT" --daemonize yes \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" --dir "$REDIS_DIR" \
    --save "" --appendonly no --maxmemory 256mb --maxmemory-policy allkeys-lru >/dev/null 9>&- ||
    die "redis-server failed to start; see $REDIS_DIR/redis.log"
  for _ in $(seq 1 50); do
    [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] ||
    die "Redis does not answer PING on $HOST:$REDIS_PORT; see $REDIS_DIR/redis.log"
  say "redis started (pid $(redis_pid || echo '?'), port $REDIS_PORT)"
}

redis_stop() {
  local pid
  if pid=$(redis_pid); then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && die "Redis (pid $pid) did not stop within 10s"
    say "stopped Redis"
  else
    say "Redis not running"
  fi
}

# --- pgsidecar ---------------------------------------------------------------

proxy_pid() { # -> pid of OUR pgsidecar, if it runs
  local pid
  pid=$(cat "$PROXY_PID" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "pgsidecar run" || return 1
  echo "$pid"
}

proxy_answers() {
  PGCONNECT_TIMEOUT=3 "$PGBIN/psql" -X -Atc 'SELECT 1' "$APP_URL" 2>&1
}

proxy_stop() {
  local pid
  if pid=$(proxy_pid); then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    if [ -d "/proc/$pid" ]; then
      warn "pgsidecar (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    rm -f "$PROXY_PID"
    say "stopped pgsidecar"
  else
    rm -f "$PROXY_PID"
    say "pgsidecar not running"
  fi
}

proxy_start() {
  local pid
  local args=(run)
  if [ -f "$DEMO_CONFIG" ]; then
    step="checking config/demo.toml"
    "$PROXY_BIN" check --config "$DEMO_CONFIG" >/dev/null 2>"$DEMO_DIR/config-check.txt" ||
      die "config/demo.toml is invalid ($PROXY_BIN check --config config/demo.toml):
$(cat "$DEMO_DIR/config-check.txt")"
    args+=(--config "$DEMO_CONFIG")
  fi
  mkdir -p "$PROXY_SOCK_DIR"
  args+=(--listen "$HOST:$PROXY_PORT"
         --unix-socket-dir "$PROXY_SOCK_DIR"
         --primary "postgres://$HOST:$PRIMARY_PORT"
         --replica "postgres://$HOST:$REPLICA1_PORT"
         --replica "postgres://$HOST:$REPLICA2_PORT"
         --redis "redis://$HOST:$REDIS_PORT")
  if pid=$(proxy_pid); then
    # Stateless: restart it whenever it would not be what a fresh start gives.
    if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == *"(deleted)" ]]; then
      say "pgsidecar binary was rebuilt since pid $pid started: restarting it"
      proxy_stop
    elif [ "$(tr '\0' ' ' <"/proc/$pid/cmdline")" != "$PROXY_BIN ${args[*]} " ]; then
      say "pgsidecar (pid $pid) runs with other arguments (ports changed?): restarting it"
      proxy_stop
    else
      say "pgsidecar already running (pid $pid, port $PROXY_PORT)"
      return
    fi
  fi
  require_free_port "$PROXY_PORT" "pgsidecar" DEMO_PROXY_PORT
  step="starting pgsidecar on port $PROXY_PORT"
  printf '\n=== %s: %s %s\n' "$(date '+%F %T')" "$PROXY_BIN" "${args[*]}" >>"$PROXY_LOG"
  # setsid: own session, so a Ctrl-C in this terminal does not reach it.
  setsid "$PROXY_BIN" "${args[@]}" >>"$PROXY_LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$PROXY_PID"
  local out=""
  for _ in $(seq 1 60); do
    if [ ! -d "/proc/$pid" ]; then
      rm -f "$PROXY_PID"
      die "pgsidecar exited right after starting; last lines of $PROXY_LOG:
$(tail -n 20 "$PROXY_LOG")"
    fi
    if out=$(proxy_answers) && [ "$out" = 1 ]; then
      say "pgsidecar started (pid $pid, port $PROXY_PORT) and answers queries"
      return
    fi
    sleep 0.5
  done
  die "pgsidecar (pid $pid, still running) does not answer 'SELECT 1' on $APP_URL after 30s.
  last psql error: $out
  last lines of $PROXY_LOG:
$(tail -n 20 "$PROXY_LOG")
  (left running for inspection; '$prog down' stops it)"
}

write_pgbench_script() {
  cat >"$DEMO_DIR/pgbench-catalog.sql" <<'EOF'
-- pgbench script: a product page and a category page (see sql/schema.sql).
\set sku random(1, 80000)
\set cat random(13, 200)
SELECT p.sku_id, p.name, p.brand, p.attributes, pr.amount, pr.list_amount
  FROM products p JOIN prices pr USING (sku_id) WHERE p.sku_id = :sku;
SELECT warehouse_id, on_hand - reserved AS available FROM inventory WHERE sku_id = :sku;
SELECT p.sku_id, p.name, pr.amount
  FROM products p JOIN prices pr USING (sku_id)
 WHERE p.category_id = :cat ORDER BY p.name, p.sku_id LIMIT 24;
EOF
}

# --- commands ----------------------------------------------------------------

cmd_up() {
  install_packages
  build_proxy
  prepare_dirs
  # Serializes concurrent `up`s. The servers started below must not inherit
  # fd 9 (each start closes it), or they would hold the lock forever.
  exec 9>"$DEMO_DIR/.lock"
  flock -n 9 || die "another '$prog up' is running (lock $DEMO_DIR/.lock)"

  create_primary
  pg_start primary "$PG_DIR/primary" "$PRIMARY_PORT"
  bootstrap_roles
  load_sql

  local name port
  for name in replica1 replica2; do
    port=$([ "$name" = replica1 ] && echo "$REPLICA1_PORT" || echo "$REPLICA2_PORT")
    create_replica "$name"
    pg_running "$PG_DIR/$name" || fix_replica_conninfo "$PG_DIR/$name"
    pg_start "$name" "$PG_DIR/$name" "$port"
  done
  wait_replicas_caught_up

  redis_start
  proxy_start
  write_pgbench_script
  step="done"

  cat <<EOF

pgsidecar demo is up ($(elapsed | tr -d ' ')).

  Connect through pgsidecar:   $APP_URL
  or on its Unix socket:       $APP_SOCKET_URL

  psql $APP_URL -c 'SELECT count(*) FROM products'
  psql $APP_URL -c "SELECT p.name, pr.amount FROM products p JOIN prices pr USING (sku_id) WHERE p.category_id = 42 ORDER BY p.name LIMIT 24"
  pgbench -n -c 8 -j 2 -T 15 -f $DEMO_DIR/pgbench-catalog.sql $APP_URL

  Flash sale (naive checkout code, direct Postgres vs through pgsidecar, side by side):
  $repo/scripts/flash-sale.sh --direct postgres://$APP_USER:$APP_PASSWORD@$HOST:$PRIMARY_PORT/$APP_DB --sidecar $APP_URL

  Directly (bypassing the proxy):
    primary   postgres://$APP_USER:$APP_PASSWORD@$HOST:$PRIMARY_PORT/$APP_DB
    replicas  postgres://$APP_USER:$APP_PASSWORD@$HOST:$REPLICA1_PORT/$APP_DB   postgres://$APP_USER:$APP_PASSWORD@$HOST:$REPLICA2_PORT/$APP_DB
    redis     redis-cli -p $REDIS_PORT
  Cache invalidations (writes that bypass the proxy), in psql on the primary:
    LISTEN pgsidecar_invalidate;  UPDATE prices SET amount = amount WHERE sku_id = 1;

  Logs: $DEMO_DIR/pgsidecar.log, $PG_DIR/*.log, $REDIS_DIR/redis.log
  $prog status | down | destroy
EOF
  if [ "${DEMO_FLASH_SALE:-1}" = 1 ] && [ -x "$repo/scripts/flash-sale.sh" ]; then
    say "running the flash sale (DEMO_FLASH_SALE=0 skips it)"
    "$repo/scripts/flash-sale.sh" --seconds 10 \
      --direct "postgres://$APP_USER:$APP_PASSWORD@$HOST:$PRIMARY_PORT/$APP_DB" --sidecar "$APP_URL" ||
      say "flash sale reported a problem (see target/flash-sale.txt)"
  fi
}

cmd_down() {
  find_pgbin
  if [ ! -d "$DEMO_DIR" ]; then say "nothing to stop ($DEMO_DIR does not exist)"; return; fi
  step="stopping pgsidecar"; proxy_stop
  if [ -n "$PGBIN" ]; then
    step="stopping the replicas"
    pg_stop replica2 "$PG_DIR/replica2"
    pg_stop replica1 "$PG_DIR/replica1"
    step="stopping the primary"
    pg_stop primary "$PG_DIR/primary"
  elif [ -d "$PG_DIR" ]; then
    warn "no Postgres binaries found (PGBIN): cannot stop the Postgres servers"
  fi
  step="stopping Redis"; redis_stop
}

cmd_destroy() {
  cmd_down
  step="deleting $DEMO_DIR"
  local sock; sock=$(sock_dir)
  rm -rf "$DEMO_DIR"
  case "$sock" in "$DEMO_DIR"/*) ;; *) rm -rf "$sock" ;; esac
  say "deleted $DEMO_DIR"
}

cmd_status() {
  find_pgbin
  local down=0 name port data pid
  printf '%-10s %-17s %s\n' COMPONENT ADDRESS STATE
  for name in primary replica1 replica2; do
    case $name in
      primary) port=$PRIMARY_PORT;; replica1) port=$REPLICA1_PORT;; replica2) port=$REPLICA2_PORT;;
    esac
    data="$PG_DIR/$name"
    if [ -z "$PGBIN" ]; then
      printf '%-10s %-17s %s\n' "$name" "$HOST:$port" "unknown (no Postgres binaries)"; down=1
    elif [ ! -f "$data/PG_VERSION" ]; then
      printf '%-10s %-17s %s\n' "$name" "$HOST:$port" "not created"; down=1
    elif pg_running "$data"; then
      local extra=""
      if [ "$name" != primary ]; then
        extra=$(psql_super "$PRIMARY_PORT" -Atc "SELECT state || ', replay lag ' || coalesce(pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), '?') FROM pg_stat_replication WHERE application_name = '$name'" 2>/dev/null || true)
        extra=", ${extra:-not connected to the primary}"
      fi
      printf '%-10s %-17s %s\n' "$name" "$HOST:$port" "running (pid $(pg_pid "$data"))$extra"
    else
      printf '%-10s %-17s %s\n' "$name" "$HOST:$port" "stopped"; down=1
    fi
  done
  if pid=$(redis_pid); then
    printf '%-10s %-17s %s\n' redis "$HOST:$REDIS_PORT" "running (pid $pid)"
  else
    printf '%-10s %-17s %s\n' redis "$HOST:$REDIS_PORT" "stopped"; down=1
  fi
  if pid=$(proxy_pid); then
    local state="running (pid $pid)" out
    if [ -n "$PGBIN" ] && out=$(proxy_answers) && [ "$out" = 1 ]; then
      state+=", answers queries"
    else
      state+=", NOT answering: ${out:-?}"; down=1
    fi
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == *"(deleted)" ]] && state+=" (binary rebuilt since start: '$prog up' restarts it)"
    printf '%-10s %-17s %s\n' pgsidecar "$HOST:$PROXY_PORT" "$state"
  else
    printf '%-10s %-17s %s\n' pgsidecar "$HOST:$PROXY_PORT" "stopped"; down=1
  fi
  [ "$down" = 0 ] && echo "connect: $APP_URL"
  return $((down * 3))
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  destroy) cmd_destroy ;;
  status) trap - ERR; cmd_status ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) printf '%s: unknown command: %s\n' "$prog" "$1" >&2; usage >&2; exit 2 ;;
esac
