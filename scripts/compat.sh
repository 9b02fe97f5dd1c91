#!/usr/bin/env bash
# Third-party ORM test suites, directly against Postgres and through pgsidecar, in one run
# (issue 17): SQLAlchemy 2.0.59's PostgreSQL dialect suite (test/dialect/postgresql, from its
# PyPI source distribution) with psycopg 3 and with asyncpg.
#
#   scripts/compat.sh              the whole suite (every file), both drivers
#   scripts/compat.sh ci           the fixed subset `cargo test` runs (tests/it/compat.rs)
#   scripts/compat.sh django       Django 5.2's own `backends` and `postgres_tests` (its sdist,
#                                  psycopg 3), the same two sides and verdict
#
# It installs what is missing (tests/compat/setup.sh: a venv under tests/compat/.venv with
# pinned pytest, pytest-timeout, psycopg, asyncpg; the unpacked sdist under tests/compat/.src),
# then runs tests/it/compat.rs, which starts a lab like every integration test (Postgres primary +
# 2 streaming replicas + Redis, Postgres run as the `postgres` user when we are root) and a
# sidecar with config/pgsidecar.toml (cache rules, [[locks]], transaction pooling) in front of
# it, and runs each test file against both at once. Every test has a time limit (60 s).
# Printed per driver: both pass counts, and every test whose outcome differs.
# Exit status non-zero when the sidecar passes fewer tests than direct Postgres (except the
# transaction-pooling limits of tests/compat/known_limits.txt, which must then pass under
# session pooling) or any test hits its time limit.
#
# Env: COMPAT_DRIVERS (psycopg,asyncpg), COMPAT_FILES (comma-separated test files),
# COMPAT_TIMEOUT (60, per test), COMPAT_SYNCHRONOUS_COMMIT (on; off and remote_apply too),
# COMPAT_LOG_DIR (tests/compat/.logs/<pid>: every pytest's output, junit xml, report.json).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v redis-server >/dev/null 2>&1 || scripts/install-deps.sh
export RUST_TEST_THREADS=1
if [ "${1:-}" = django ]; then
  tests/compat/setup.sh django >/dev/null
  export COMPAT_SET=full
  exec cargo test --test it compat::django_ -- --ignored --nocapture
fi
tests/compat/setup.sh >/dev/null
export COMPAT_SET="${1:-full}"
exec cargo test --test it compat::sqlalchemy_ -- --nocapture
