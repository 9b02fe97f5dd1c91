#!/usr/bin/env bash
# Installs what the third-party suites need, pinned, and reuses it when up to date:
#   setup.sh [sqlalchemy]         tests/compat/.venv: pytest, pytest-timeout, psycopg 3, asyncpg
#                                 (requirements.txt); tests/compat/.src/sqlalchemy-$SQLALCHEMY_VERSION,
#                                 SQLAlchemy's PyPI source distribution, unpacked: its test/
#                                 suite ships only there; its conftest runs lib/ from the tree.
#   setup.sh django               tests/compat/.venv-django: psycopg 3 and Django's dependencies
#                                 (requirements-django.txt); tests/compat/.src/django-$DJANGO_VERSION,
#                                 Django's sdist unpacked (its tests/ and runtests.py ship there).
# Prints the unpacked source directory on its last line. Idempotent; safe to run concurrently
# with nothing else touching tests/compat/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SQLALCHEMY_VERSION=2.0.59
DJANGO_VERSION=5.2.20
suite="${1:-sqlalchemy}"
src=$here/.src
case "$suite" in
sqlalchemy)
  venv=$here/.venv req=$here/requirements.txt
  imports='import psycopg, asyncpg, pytest, pytest_timeout, greenlet'
  name=sqlalchemy version=$SQLALCHEMY_VERSION probe=test/dialect/postgresql
  ;;
django)
  venv=$here/.venv-django req=$here/requirements-django.txt
  imports='import psycopg, psycopg_pool, asgiref, sqlparse'
  name=django version=$DJANGO_VERSION probe=tests/postgres_tests
  ;;
*)
  echo "usage: setup.sh [sqlalchemy|django]" >&2
  exit 2
  ;;
esac
sum="$(sha256sum "$req" | cut -c1-16)"

if [ -f "$venv/.installed" ] && [ "$(cat "$venv/.installed")" = "$sum" ] &&
  "$venv/bin/python" -c "$imports" 2>/dev/null; then
  echo "compat venv ($suite) up to date" >&2
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

dir=$src/$name-$version
if [ ! -f "$dir/PKG-INFO" ] || [ ! -d "$dir/$probe" ]; then
  mkdir -p "$src/dl"
  # The sdist only (no build, no dependencies): pip downloads it and prepares its metadata.
  "$venv/bin/pip" download --disable-pip-version-check --no-input -q --no-deps \
    --no-binary "$name" "$name==$version" -d "$src/dl" >&2
  rm -rf "$dir"
  tar -xzf "$src/dl/$name-$version.tar.gz" -C "$src"
fi
echo "$dir"
