#!/usr/bin/env bash
# Installs what the third-party suites need, pinned, and reuses it when up to date:
#   tests/compat/.venv            pytest, pytest-timeout, psycopg 3, asyncpg (requirements.txt)
#   tests/compat/.src/sqlalchemy-$SQLALCHEMY_VERSION
#                                 SQLAlchemy's PyPI source distribution, unpacked: its test/
#                                 suite ships only there; its conftest runs lib/ from the tree.
# Prints the unpacked source directory on its last line. Idempotent; safe to run concurrently
# with nothing else touching tests/compat/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SQLALCHEMY_VERSION=2.0.59
venv=$here/.venv req=$here/requirements.txt
src=$here/.src
sum="$(sha256sum "$req" | cut -c1-16)"

if [ -f "$venv/.installed" ] && [ "$(cat "$venv/.installed")" = "$sum" ] &&
  "$venv/bin/python" -c 'import psycopg, asyncpg, pytest, pytest_timeout, greenlet' 2>/dev/null; then
  echo "compat venv up to date" >&2
else
  py=python3
  python3 -c 'import venv, ensurepip' 2>/dev/null || {
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y -q python3-venv >&2; fi
  }
  rm -rf "$venv"
  "$py" -m venv "$venv" >&2
  "$venv/bin/pip" install --disable-pip-version-check --no-input -q -r "$req" >&2
  echo "$sum" >"$venv/.installed"
fi

dir=$src/sqlalchemy-$SQLALCHEMY_VERSION
if [ ! -f "$dir/PKG-INFO" ] || [ ! -d "$dir/test/dialect/postgresql" ]; then
  mkdir -p "$src/dl"
  # The sdist only (no build, no dependencies): pip downloads it and prepares its metadata.
  "$venv/bin/pip" download --disable-pip-version-check --no-input -q --no-deps \
    --no-binary sqlalchemy "sqlalchemy==$SQLALCHEMY_VERSION" -d "$src/dl" >&2
  rm -rf "$dir"
  tar -xzf "$src/dl/sqlalchemy-$SQLALCHEMY_VERSION.tar.gz" -C "$src"
fi
echo "$dir"
