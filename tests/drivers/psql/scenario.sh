#!/usr/bin/env bash
# The shared driver scenario for psql (libpq, simple query protocol only: psql has no bind
# parameters before Postgres 16, so "parameters" are psql variables interpolated client-side with
# :'var' quoting). Plus: a multi-statement -c string, \copy, \set / \gset variables.
#
#   PGSIDECAR_DSN=postgres://user:pw@host:port/db PGHOST=... PGPORT=... PGUSER=... PGPASSWORD=... \
#     PGDATABASE=... bash scenario.sh
set -uo pipefail

: "${PGSIDECAR_DSN:?PGSIDECAR_DSN is not set}"
: "${PGHOST:?}" "${PGPORT:?}" "${PGUSER:?}" "${PGDATABASE:?}"
export PGCLIENTENCODING=UTF8 PGCONNECT_TIMEOUT=10
P=drv_psql
CONCURRENCY=${DRIVER_CONNECTIONS:-20}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drv_psql.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FAILED=()

since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

# psql, no psqlrc, stop at the first error, unaligned tuples-only output, UTF-8.
q() { psql -X -q -v ON_ERROR_STOP=1 -A -t "$@"; }

fail() { echo "$*" >"$WORK/why"; return 1; }

step() { # NAME FUNCTION
  local name=$1 fn=$2 began info
  echo "step $name: START"
  began=$(date +%s.%N)
  rm -f "$WORK/why" "$WORK/info"
  if "$fn" >"$WORK/step.log" 2>&1; then
    info=""; [ -s "$WORK/info" ] && info=" $(cat "$WORK/info")"
    printf 'step %s: PASS (%.1fs)%s\n' "$name" "$(since "$began")" "$info"
  else
    FAILED+=("$name")
    local why
    why=$(cat "$WORK/why" 2>/dev/null || tail -5 "$WORK/step.log")
    printf 'step %s: FAIL (%.1fs) %s\n' "$name" "$(since "$began")" "$(echo "$why" | tr '\n' ' ' | cut -c1-600)"
    sed 's/^/    /' "$WORK/step.log" >&2
  fi
}

setup() {
  q <<SQL || fail "setup: $(tail -1 "$WORK/step.log")"
DROP TABLE IF EXISTS ${P}_types, ${P}_items, ${P}_copy;
DROP SCHEMA IF EXISTS ${P}_g CASCADE;
CREATE TABLE ${P}_types (id int PRIMARY KEY, n numeric, j jsonb, ts timestamptz, ia int[], ta text[], b bytea, nul text, t text, bo bool, bi bigint);
CREATE TABLE ${P}_items (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE ${P}_copy (id int PRIMARY KEY, name text, note text);
CREATE SCHEMA ${P}_g;
CREATE TABLE ${P}_g.probe (v text);
INSERT INTO ${P}_g.probe VALUES ('${P}');
SQL
}

# ---- (a) ---------------------------------------------------------------------------------------
types() {
  local out want
  out=$(q -F '|' <<SQL
\set n 12345.6789
\set j '{"a": [1, 2, {"b": null}], "s": "Grüße 東京 🚀", "n": 1.5}'
\set ts '2024-02-29 13:14:15.123456+00'
\set ia '{1,2,3,-4,2147483647}'
\set ta '{a,"b c",Grüße,"x,y","q\\\\"q",東京}'
\set b '\\\\x000102ff0041424300'
\set t 'Grüße 東京 🚀'
\set bo true
\set bi 9223372036854775807
SET TIME ZONE 'UTC';
INSERT INTO ${P}_types (id, n, j, ts, ia, ta, b, nul, t, bo, bi)
  VALUES (1, :n, :'j', :'ts', :'ia', :'ta', :'b', NULL, :'t', :'bo', :bi);
\pset null '<NULL>'
SELECT n, j, ts, ia, ta, b, nul, t, bo, bi FROM ${P}_types WHERE id = 1;
SELECT n = 12345.6789, j = '{"a": [1, 2, {"b": null}], "s": "Grüße 東京 🚀", "n": 1.5}'::jsonb,
  ts = '2024-02-29 13:14:15.123456+00'::timestamptz, ia = '{1,2,3,-4,2147483647}'::int[],
  ta = ARRAY['a','b c','Grüße','x,y','q"q','東京'], b = '\x000102ff0041424300'::bytea,
  nul IS NULL, t = 'Grüße 東京 🚀', bo IS TRUE, bi = 9223372036854775807
  FROM ${P}_types WHERE id = 1;
SQL
  ) || fail "types: $(tail -2 "$WORK/step.log" | tr '\n' ' ') $out"
  want='12345.6789|{"a": [1, 2, {"b": null}], "n": 1.5, "s": "Grüße 東京 🚀"}|2024-02-29 13:14:15.123456+00|{1,2,3,-4,2147483647}|{a,"b c",Grüße,"x,y","q\"q",東京}|\x000102ff0041424300|<NULL>|Grüße 東京 🚀|t|9223372036854775807
t|t|t|t|t|t|t|t|t|t'
  [ "$out" = "$want" ] || fail "types: got $(printf %q "$out"), expected $(printf %q "$want")"
}

# ---- (b) ---------------------------------------------------------------------------------------
one_client() { # N: 50 statements on one psql session (simple protocol: psql never prepares)
  local n=$1 i
  {
    for ((i = 0; i < 50; i++)); do
      if ((i % 10 == 9)); then echo "BEGIN;"; fi
      echo "SELECT ($n * 1000 + $i) * 2, 'c$n-$i', pg_backend_pid() /* $P b */;"
      if ((i % 10 == 9)); then echo "COMMIT;"; fi
    done
  } | q -F '|' >"$WORK/b.$n.out" 2>"$WORK/b.$n.err"
}

concurrency() {
  local n i pids=() bad=0
  for ((n = 0; n < CONCURRENCY; n++)); do one_client "$n" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
  ((bad == 0)) || fail "$bad of $CONCURRENCY psql sessions failed: $(cat "$WORK"/b.*.err | head -3 | tr '\n' ' ')"
  for ((n = 0; n < CONCURRENCY; n++)); do
    for ((i = 0; i < 50; i++)); do
      line=$(sed -n "$((i + 1))p" "$WORK/b.$n.out")
      [ "${line%|*}" = "$(((n * 1000 + i) * 2))|c$n-$i" ] || fail "connection $n iteration $i: got '$line'"
    done
  done
  local backends moved=0
  backends=$(cut -d'|' -f3 "$WORK"/b.*.out | sort -u | wc -l)
  for ((n = 0; n < CONCURRENCY; n++)); do
    [ "$(cut -d'|' -f3 "$WORK/b.$n.out" | sort -u | wc -l)" -gt 1 ] && moved=$((moved + 1))
  done
  echo "${CONCURRENCY}x50 statements on $backends backends; $moved/$CONCURRENCY connections moved between backends" >"$WORK/info"
}

# ---- (c) ---------------------------------------------------------------------------------------
transactions() {
  local out
  out=$(q <<SQL
BEGIN;
INSERT INTO ${P}_items VALUES (1, 'rolled back');
SELECT count(*) FROM ${P}_items WHERE id = 1;
ROLLBACK;
SELECT count(*) FROM ${P}_items WHERE id = 1;
BEGIN;
INSERT INTO ${P}_items VALUES (2, 'committed');
COMMIT;
BEGIN;
INSERT INTO ${P}_items VALUES (3, 'outer');
SAVEPOINT s1;
INSERT INTO ${P}_items VALUES (4, 'inner');
ROLLBACK TO SAVEPOINT s1;
COMMIT;
SQL
  ) || fail "transactions: $(tail -2 "$WORK/step.log" | tr '\n' ' ')"
  [ "$out" = $'1\n0' ] || fail "rollback: counts inside/after were $(printf %q "$out"), expected 1 then 0"
  out=$(q -c "SELECT string_agg(id::text, ',' ORDER BY id) FROM ${P}_items") || fail "transactions: other session failed"
  [ "$out" = "2,3" ] || fail "other session sees ids '$out', expected '2,3' (1 rolled back, 2 and 3 committed, 4 rolled back to savepoint)"
}

# ---- (d) ---------------------------------------------------------------------------------------
errors() {
  local out err
  out=$(psql -X -q -A -t -v ON_ERROR_STOP=0 2>"$WORK/d.err" <<SQL
\set VERBOSITY verbose
SELECT 1/0;
SELECT 41 + 1;
INSERT INTO ${P}_items VALUES (100, 'x');
INSERT INTO ${P}_items VALUES (100, 'dup');
SELECT 'after unique violation';
BEGIN;
SELECT 1/0;
SELECT 1;
ROLLBACK;
SELECT 'after rollback';
SQL
  )
  err=$(cat "$WORK/d.err")
  grep -q 'ERROR:  22012: division by zero' "$WORK/d.err" || fail "no SQLSTATE 22012 for 1/0: $err"
  grep -q 'ERROR:  23505: duplicate key' "$WORK/d.err" || fail "no SQLSTATE 23505 for the duplicate: $err"
  grep -q 'ERROR:  25P02: current transaction is aborted' "$WORK/d.err" || fail "no SQLSTATE 25P02 in the aborted transaction: $err"
  [ "$out" = $'42\nafter unique violation\nafter rollback' ] || fail "statements after errors printed $(printf %q "$out")"
}

# ---- (e) ---------------------------------------------------------------------------------------
cancel() {
  # psql's cancel API is SIGINT: it sends a CancelRequest for the running statement. (A script
  # then stops, by psql's design; a new session must work and the statement must be gone.)
  local marker=${P}_cancel_marker pid began n took
  printf '\\set VERBOSITY verbose\n/* pgsidecar: route=primary */ SELECT pg_sleep(10) /* %s */;\n' "$marker" >"$WORK/e.sql"
  psql -X -A -t -f "$WORK/e.sql" >"$WORK/e.out" 2>"$WORK/e.err" &
  pid=$!
  for _ in $(seq 200); do
    n=$(q -c "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%${marker}%' AND query NOT LIKE '%pg_stat_activity%'")
    [ "$n" = 1 ] && break
    sleep 0.05
  done
  [ "$n" = 1 ] || { kill "$pid" 2>/dev/null; wait "$pid"; fail "the pg_sleep query never showed up as active"; return 1; }
  began=$(date +%s.%N)
  kill -INT "$pid"
  wait "$pid"
  took=$(since "$began")
  grep -q 'ERROR:  57014: canceling statement due to user request' "$WORK/e.err" ||
    fail "no SQLSTATE 57014 after SIGINT (took ${took}s): $(cat "$WORK/e.err" "$WORK/e.out" | tr '\n' ' ')"
  awk -v t="$took" 'BEGIN { exit !(t > 5) }' && fail "cancel took ${took}s (> 5 s)"
  n=$(q -c "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%${marker}%' AND query NOT LIKE '%pg_stat_activity%'")
  [ "$n" = 0 ] || fail "the cancelled pg_sleep is still running on the server"
  [ "$(q -c "SELECT 'alive'")" = alive ] || fail "a new session after the cancel failed"
  printf 'cancelled after %.2fs' "$took" >"$WORK/info"
}

# ---- (f) ---------------------------------------------------------------------------------------
copy() {
  local i nm
  for ((i = 1; i <= 1000; i++)); do
    if ((i % 7 == 0)); then nm='\N'; else nm="name $i Grüße 東京 🚀"; fi
    printf '%s\t%s\t%s\n' "$i" "$nm" "tab\\there\\nnewline \\\\ backslash $i"
  done >"$WORK/copy.in"
  q <<SQL || fail "\\copy: $(tail -2 "$WORK/step.log" | tr '\n' ' ')"
\\copy ${P}_copy (id, name, note) FROM '$WORK/copy.in'
\\copy (SELECT id, name, note FROM ${P}_copy ORDER BY id) TO '$WORK/copy.out'
SQL
  [ "$(q -c "SELECT count(*) FROM ${P}_copy")" = 1000 ] || fail "row count after \\copy FROM is not 1000"
  [ "$(q -c "SELECT note FROM ${P}_copy WHERE id = 8")" = $'tab\there\nnewline \\ backslash 8' ] || fail "a copied row differs"
  cmp -s "$WORK/copy.in" "$WORK/copy.out" || fail "\\copy TO output differs from what was copied in: $(diff "$WORK/copy.in" "$WORK/copy.out" | head -3 | tr '\n' ' ')"
}

# ---- (g) ---------------------------------------------------------------------------------------
settings() {
  local i pids=() out bad="" problems=0 first="" side=()
  # Other clients: 4 with their own settings, 2 that set nothing; many short transactions.
  for n in 0 1 2 3; do
    {
      echo "SET application_name = 'noise_$n'; SET TIME ZONE 'America/New_York'; SET statement_timeout = '32s';"
      for ((i = 0; i < 60; i++)); do printf '%s\n' "BEGIN; SHOW application_name; SHOW TimeZone;" "SELECT pg_sleep(0.01) \\g /dev/null" "COMMIT;"; done
    } | q >"$WORK/g.noise$n" 2>&1 &
    pids+=($!)
  done
  for n in 0 1; do
    {
      echo "SHOW TimeZone;"
      for ((i = 0; i < 60; i++)); do printf '%s\n' "BEGIN; SHOW application_name; SHOW TimeZone; SHOW statement_timeout; COMMIT;" "SELECT pg_sleep(0.01) \\g /dev/null"; done
    } | PGAPPNAME=clean_$n q >"$WORK/g.clean$n" 2>&1 &
    pids+=($!)
  done
  {
    echo '\echo == before'
    echo "SHOW TimeZone; SHOW DateStyle;"
    echo "SET application_name = '${P}_g';"
    echo "SET TIME ZONE 'Asia/Tokyo';"
    echo "SET search_path = public, ${P}_g;"
    echo "SET statement_timeout = '31s';"
    echo '\set ON_ERROR_STOP 0'
    for ((i = 1; i <= 20; i++)); do
      echo "\\echo == $i"
      echo "BEGIN; SHOW application_name; SHOW TimeZone; SHOW search_path; SHOW statement_timeout;"
      printf '%s\n' "SELECT extract(timezone FROM now())::int; SELECT v FROM probe; COMMIT;" "SELECT pg_sleep(0.02) \\g /dev/null"
    done
    echo "RESET ALL;"
    echo '\echo == after'
    echo "BEGIN; SHOW TimeZone; SHOW DateStyle; COMMIT;"
  } | q >"$WORK/g.main" 2>&1
  for p in "${pids[@]}"; do wait "$p"; done
  local want=$'drv_psql_g\nAsia/Tokyo\npublic, drv_psql_g\n31s\n32400\ndrv_psql'
  for ((i = 1; i <= 20; i++)); do
    out=$(awk -v n="== $i" '$0 == n {on = 1; next} /^== / {on = 0} on && $0 != ""' "$WORK/g.main")
    if [ "$out" != "$want" ]; then
      problems=$((problems + 1))
      [ -z "$first" ] && first="transaction $i: SHOW application_name|TimeZone|search_path|statement_timeout, UTC offset, probe gave '$(echo "$out" | head -6 | paste -sd'|' -)', expected '$(echo "$want" | paste -sd'|' -)'"
    fi
  done
  local before after
  before=$(awk '$0 == "== before" {on = 1; next} /^== / {on = 0} on && $0 != ""' "$WORK/g.main" | paste -sd'|' -)
  after=$(awk '$0 == "== after" {on = 1; next} /^== / {on = 0} on && $0 != ""' "$WORK/g.main" | paste -sd'|' -)
  [ "$after" = "$before" ] || side+=("after RESET ALL: TimeZone|DateStyle = '$after', expected the session's own '$before'")
  for n in 0 1 2 3; do
    bad=$(paste -d'|' - - <"$WORK/g.noise$n" | grep -v -x "noise_$n|America/New_York" | head -1)
    [ -n "$bad" ] && side+=("noise client $n saw '$bad' (expected noise_$n|America/New_York)")
  done
  for n in 0 1; do
    local tz
    tz=$(head -1 "$WORK/g.clean$n")
    bad=$(tail -n +2 "$WORK/g.clean$n" | paste -d'|' - - - | grep -v -x "clean_$n|$tz|0" | head -1)
    [ -n "$bad" ] && side+=("clean client $n saw '$bad' (expected clean_$n|$tz|0): another session's settings leaked")
  done
  if ((problems > 0)) || ((${#side[@]} > 0)); then
    local msg=""
    ((problems > 0)) && msg="settings wrong in $problems/20 transactions; first: $first"
    for s in "${side[@]}"; do msg="$msg | $s"; done
    fail "$msg"
  fi
}

# ---- extras ------------------------------------------------------------------------------------
multi_statement() {
  # One -c string = one simple Query message with three statements; psql prints the last result.
  local out
  out=$(q -c "CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1), (2); SELECT sum(x) FROM t") || fail "multi-statement -c failed"
  [ "$out" = 3 ] || fail "multi-statement -c printed '$out', expected 3"
  # \set, :var, :'var' and \gset round trips.
  out=$(q <<'SQL'
\set n 20
\set word 'it''s Grüße'
SELECT :n * 2 AS doubled, :'word' AS word \gset
\echo :doubled :word
SELECT :'word' = 'it''s Grüße';
SQL
  ) || fail "\\set/\\gset script failed"
  [ "$out" = $'40 it\'s Grüße\nt' ] || fail "\\set/\\gset printed $(printf %q "$out")"
}

echo "psql $(psql --version | awk '{print $3}') (libpq $(pg_config --version 2>/dev/null | awk '{print $2}'))"
step setup setup
step a-types types
step b-statements-x20 concurrency
step c-transactions transactions
step d-errors errors
step e-cancel cancel
step f-copy copy
step g-settings settings
step x-multi-statement-vars multi_statement
if ((${#FAILED[@]})); then
  echo "psql: failed steps: ${FAILED[*]}"
  exit 1
fi
echo "psql: all steps passed"
