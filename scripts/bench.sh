#!/usr/bin/env bash
# Pass-through benchmark: pgbench -S against direct Postgres, pgsidecar and PgBouncer
# (transaction pooling) in one run, on one private Postgres started here.
#
#   scripts/bench.sh                 # 16 clients, 10 s per run, 2 rounds, simple+extended+prepared
#   CLIENTS=32 DURATION=20 ROUNDS=3 MODES="simple extended" scripts/bench.sh
#   ROUTING=0 scripts/bench.sh       # without the routing on/off comparison
#   PIPELINE_AB=1 scripts/bench.sh   # also a `no-pipeline` pgsidecar ([pool] pipeline = false)
#   UNIX=0 scripts/bench.sh          # without the Unix-socket rows
#   BASELINE=/path/to/old/pgsidecar scripts/bench.sh
#                                    # also a `baseline` pgsidecar from another build, same
#                                    # flags: a same-run A/B of a change (`baseline-unix` too)
#
# Unix sockets (UNIX=1, the default): `pgsidecar-unix` and `pgbouncer-unix` are the same
# pgsidecar and PgBouncer reached on their Unix sockets (pgsidecar's `listen.unix_socket_dir`,
# PgBouncer's `unix_socket_dir`), as an application beside its sidecar would; both still reach
# Postgres over TCP, as a sidecar does a remote database. `direct-unix` is pgbench on Postgres'
# own socket, for reference only: a remote database has none. Every ratio is against `direct`
# (TCP), the way an application reaches its database without a sidecar.
#
# Routing on vs off (ROUTING=1, the default): a streaming replica of that Postgres is started
# too, and two more pgsidecars that both know it: `routing-off` ([routing] enabled = false:
# statements are still analysed, everything goes to the primary) and `routing-on` (reads go to
# the replica). They differ only in that switch, so their ratio is the cost of routing. The
# `replica` row is pgbench straight to the replica: what the replica itself serves, so a gap
# between routing-on and routing-off can be told apart from a slower standby.
#
# Prints TPS and mean latency per target and the ratio to direct Postgres; the best round of
# each target counts (the machine is shared and noisy; the best is the least disturbed).
# Results also go to target/bench/passthrough.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SCALE=${SCALE:-10}
MODES=${MODES:-"simple extended prepared"}
POOL=${POOL:-20}
ROUTING=${ROUTING:-1}
PIPELINE_AB=${PIPELINE_AB:-0}
UNIX=${UNIX:-1}
BASELINE=${BASELINE:-}

[ -x scripts/install-deps.sh ] && scripts/install-deps.sh >/dev/null
command -v pgbouncer >/dev/null || { echo "pgbouncer is not installed (apt-get install pgbouncer)" >&2; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release --quiet
SIDECAR="$ROOT/target/release/pgsidecar"

WORK=$(mktemp -d /tmp/pgsidecar-bench-XXXXXX)
chown postgres "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); SC_PORT=$(free_port); PB_PORT=$(free_port)
RP_PORT=$(free_port); ON_PORT=$(free_port); OFF_PORT=$(free_port)
as_pg() { runuser -u postgres -- "$@"; }
PG_OPTS="-k $WORK -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off"
SC_PIDS=()

cleanup() {
  for pid in "${SC_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/pgbouncer.pid" ] && kill "$(cat "$WORK/pgbouncer.pid")" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$WORK/replica" stop -m immediate >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== setting up Postgres on $PG_PORT, pgsidecar on $SC_PORT, PgBouncer on $PB_PORT"
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start -o "-p $PG_PORT $PG_OPTS" >/dev/null
export PGPASSWORD=bench
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1

# A pgsidecar on the private Postgres (BIN= another binary), with EXTRA (TOML) in its config.
# The private Postgres trusts every login (as PgBouncer's auth_type below), and passthrough
# refuses a primary that checks no password, so every sidecar here trusts its clients too (and
# its console, which never inherits trust from a wildcard rule). The primary URL names a user so
# the monitor can log in before any client does (it verifies that the replica is one; without
# it routing-on would send every read to the primary).
sidecar() { # name port extra-toml [flags…]
  local name=$1 port=$2 extra=$3
  shift 3
  printf '%s\n[[auth.rules]]\ndatabase = "pgsidecar"\nmethod = "trust"\n[[auth.rules]]\nmethod = "trust"\n' \
    "$extra" >"$WORK/$name.toml"
  "${BIN:-$SIDECAR}" run --config "$WORK/$name.toml" --listen "127.0.0.1:$port" --primary "postgres://postgres@127.0.0.1:$PG_PORT/postgres" --pool-size "$POOL" \
    --log-level warn "$@" >"$WORK/$name.log" 2>&1 &
  SC_PIDS+=($!)
}
TARGETS="direct pgsidecar pgbouncer"
declare -A PORT=([direct]=$PG_PORT [pgsidecar]=$SC_PORT [pgbouncer]=$PB_PORT)
declare -A HOST=()
PB_SOCK=
if [ "$UNIX" = 1 ]; then
  mkdir -p "$WORK/sc-sock" "$WORK/pb-sock"
  chown postgres "$WORK/pb-sock"
  PB_SOCK="$WORK/pb-sock"
  sidecar pgsidecar "$SC_PORT" "$(printf '[listen]\nunix_socket_dir = "%s"' "$WORK/sc-sock")"
  TARGETS="direct direct-unix pgsidecar pgsidecar-unix pgbouncer pgbouncer-unix"
  PORT+=([direct-unix]=$PG_PORT [pgsidecar-unix]=$SC_PORT [pgbouncer-unix]=$PB_PORT)
  HOST+=([direct-unix]=$WORK [pgsidecar-unix]=$WORK/sc-sock [pgbouncer-unix]=$WORK/pb-sock)
else
  sidecar pgsidecar "$SC_PORT" ""
fi
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
  BL_PORT=$(free_port)
  if [ "$UNIX" = 1 ]; then
    mkdir -p "$WORK/bl-sock"
    BIN=$BASELINE sidecar baseline "$BL_PORT" "$(printf '[listen]\nunix_socket_dir = "%s"' "$WORK/bl-sock")"
    TARGETS="$TARGETS baseline baseline-unix"
    PORT+=([baseline]=$BL_PORT [baseline-unix]=$BL_PORT)
    HOST+=([baseline-unix]=$WORK/bl-sock)
  else
    BIN=$BASELINE sidecar baseline "$BL_PORT" ""
    TARGETS="$TARGETS baseline"
    PORT+=([baseline]=$BL_PORT)
  fi
fi
if [ "$PIPELINE_AB" = 1 ]; then
  NP_PORT=$(free_port)
  sidecar no-pipeline "$NP_PORT" "$(printf '[pool]\npipeline = false')"
  TARGETS="$TARGETS no-pipeline"
  PORT+=([no-pipeline]=$NP_PORT)
fi

if [ "$ROUTING" = 1 ]; then
  echo "== streaming replica on $RP_PORT, pgsidecar routing-off on $OFF_PORT, routing-on on $ON_PORT"
  as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$WORK/replica" -R -X stream -c fast
  as_pg "$PGBIN/pg_ctl" -D "$WORK/replica" -l "$WORK/replica.log" -w start -o "-p $RP_PORT $PG_OPTS" >/dev/null
  sidecar routing-off "$OFF_PORT" "$(printf '[routing]\nenabled = false')" --replica "postgres://127.0.0.1:$RP_PORT"
  sidecar routing-on "$ON_PORT" "" --replica "postgres://127.0.0.1:$RP_PORT"
  TARGETS="$TARGETS replica routing-off routing-on"
  PORT+=([replica]=$RP_PORT [routing-off]=$OFF_PORT [routing-on]=$ON_PORT)
fi

cat >"$WORK/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PB_PORT
unix_socket_dir = $PB_SOCK
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 1000
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
INI
echo '"postgres" ""' >"$WORK/userlist.txt"
chown postgres "$WORK"/pgbouncer.ini "$WORK"/userlist.txt
as_pg pgbouncer -d "$WORK/pgbouncer.ini"
for p in "${PORT[@]}"; do
  for _ in $(seq 50); do psql -h 127.0.0.1 -p "$p" -U postgres -Atc 'select 1' postgres >/dev/null 2>&1 && break; sleep 0.1; done
done
admin() { psql -h 127.0.0.1 -p "$1" -U postgres -d pgsidecar -Atc "$2"; }
if [ "$ROUTING" = 1 ]; then # until routing-on has verified the replica (else reads go to the primary)
  for _ in $(seq 100); do
    admin "$ON_PORT" 'SHOW REPLICAS' | awk -F'|' '$2 == "replica" && $3 == "replica" && $4 ~ /^t/ {ok=1} END {exit !ok}' && break
    sleep 0.1
  done
fi

PGB_VERSION=$(pgbouncer --version | head -1)
OUT="$ROOT/target/bench/passthrough.txt"
mkdir -p "$(dirname "$OUT")"
{
  echo "# pgbench -S, $CLIENTS clients, $THREADS threads, ${DURATION}s x $ROUNDS rounds (best), scale $SCALE, pool $POOL"
  echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $("$PGBIN/postgres" --version), $PGB_VERSION"
} | tee "$OUT"

run() { # mode port host -> "tps latency_ms failed"
  local out
  out=$(pgbench -n -S -M "$1" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h "$3" -p "$2" -U postgres postgres 2>&1) || true
  local tps lat failed
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | tail -1)
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
  if [ -z "$tps" ]; then tps=0; lat=0; failed="error: $(grep -m1 -iE 'error|fatal' <<<"$out" | cut -c1-80)"; fi
  echo "$tps ${lat:-0} ${failed:-0}"
}

printf '%-9s %-14s %12s %12s %9s %s\n' mode target tps latency_ms vs_direct failed | tee -a "$OUT"
for mode in $MODES; do
  declare -A best_tps=() best_lat=() fails=()
  for round in $(seq "$ROUNDS"); do
    for target in $TARGETS; do
      read -r tps lat failed <<<"$(run "$mode" "${PORT[$target]}" "${HOST[$target]:-127.0.0.1}")"
      if awk "BEGIN{exit !($tps > ${best_tps[$target]:-0})}"; then best_tps[$target]=$tps; best_lat[$target]=$lat; fi
      fails[$target]=$failed
    done
  done
  for target in $TARGETS; do
    ratio=$(awk "BEGIN{ d=${best_tps[direct]:-0}; printf \"%.2f\", (d>0 ? ${best_tps[$target]:-0}/d : 0) }")
    printf '%-9s %-14s %12s %12s %8sx %s\n' "$mode" "$target" "${best_tps[$target]:-0}" "${best_lat[$target]:-0}" "$ratio" "${fails[$target]}" | tee -a "$OUT"
  done
  if [ "$ROUTING" = 1 ]; then
    ratio=$(awk "BEGIN{ o=${best_tps[routing-off]:-0}; printf \"%.2f\", (o>0 ? ${best_tps[routing-on]:-0}/o : 0) }")
    printf '%-9s routing on / routing off: %sx\n' "$mode" "$ratio" | tee -a "$OUT"
  fi
  if [ -n "$BASELINE" ]; then
    for pair in "pgsidecar baseline" "pgsidecar-unix baseline-unix"; do
      read -r new old <<<"$pair"
      [ -n "${best_tps[$old]:-}" ] || continue
      ratio=$(awk "BEGIN{ o=${best_tps[$old]:-0}; printf \"%.2f\", (o>0 ? ${best_tps[$new]:-0}/o : 0) }")
      printf '%-9s %s / %s: %sx\n' "$mode" "$new" "$old" "$ratio" | tee -a "$OUT"
    done
  fi
  unset best_tps best_lat fails
done
if [ "$ROUTING" = 1 ]; then # proof that routing-on did route, and routing-off did not
  for target in routing-off routing-on; do
    stats=$(admin "${PORT[$target]}" 'SHOW STATS')
    echo "$target: $(sed -n 's/^requests_replica|//p' <<<"$stats") requests to the replica, $(sed -n 's/^requests_primary|//p' <<<"$stats") to the primary" | tee -a "$OUT"
  done
fi
