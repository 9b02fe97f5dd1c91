"""Shared pieces of the Python scenarios (psycopg 3, asyncpg): expected values and reporting.

Output protocol shared by every driver of the matrix (run.sh reads it):
    step <name>: START
    step <name>: PASS (<seconds>s)[ <info>]
    step <name>: FAIL (<seconds>s) <error>
and the exit status is non-zero if any step failed.
"""

import datetime
import decimal
import os
import sys
import time
import traceback

DSN = os.environ.get("PGSIDECAR_DSN", "")
if not DSN:
    sys.exit("PGSIDECAR_DSN is not set (the proxy's postgres:// URL)")

CONCURRENCY = int(os.environ.get("DRIVER_CONNECTIONS", "20"))
REPEAT = 50

# ---- the values of step (a), identical in every driver --------------------------------------
NUMERIC = decimal.Decimal("12345.6789")
JSON = {"a": [1, 2, {"b": None}], "s": "Grüße 東京 🚀", "n": 1.5}
TS = datetime.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=datetime.timezone.utc)
INTS = [1, 2, 3, -4, 2147483647]
TEXTS = ["a", "b c", "Grüße", "x,y", 'q"q', "東京"]
BYTES = b"\x00\x01\x02\xff\x00ABC\x00"
TEXT = "Grüße 東京 🚀"
BIGINT = 9223372036854775807


def types_table_sql(table):
    return (
        f"CREATE TABLE {table} (id int PRIMARY KEY, n numeric, j jsonb, ts timestamptz, ia int[],"
        " ta text[], b bytea, nul text, t text, bo bool, bi bigint)"
    )


def server_check_sql(table):
    """What the server stored, checked against literals (so a symmetric encode/decode bug in the
    driver or the proxy cannot hide)."""
    return (
        "SELECT n = 12345.6789 AS numeric,"
        """ j = '{"a": [1, 2, {"b": null}], "s": "Grüße 東京 🚀", "n": 1.5}'::jsonb AS jsonb,"""
        " ts = '2024-02-29 13:14:15.123456+00'::timestamptz AS timestamptz,"
        " ia = '{1,2,3,-4,2147483647}'::int[] AS int_array,"
        """ ta = ARRAY['a','b c','Grüße','x,y','q"q','東京'] AS text_array,"""
        " b = '\\x000102ff0041424300'::bytea AS bytea,"
        " nul IS NULL AS null,"
        " t = 'Grüße 東京 🚀' AS text,"
        " bo IS TRUE AS bool,"
        " bi = 9223372036854775807 AS bigint"
        f" FROM {table} WHERE id = 1"
    )


SERVER_CHECK_NAMES = [
    "numeric", "jsonb", "timestamptz", "int_array", "text_array", "bytea", "null", "text", "bool", "bigint",
]


def expect(what, got, want):
    if got != want or type(got) is not type(want):
        raise AssertionError(f"{what}: got {got!r} ({type(got).__name__}), expected {want!r} ({type(want).__name__})")


def check_server_row(row):
    bad = [name for name, ok in zip(SERVER_CHECK_NAMES, row) if ok is not True]
    if bad:
        raise AssertionError("server-side comparison failed for: " + ", ".join(bad))


def sqlstate_of(exc):
    return getattr(exc, "sqlstate", None)


def expect_sqlstate(exc, want, what):
    got = sqlstate_of(exc)
    if got != want:
        raise AssertionError(f"{what}: expected SQLSTATE {want}, got {got!r}: {type(exc).__name__}: {exc}")


def one_line(exc):
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, AssertionError) else str(exc)
    return " ".join(text.split())[:400]


class Report:
    def __init__(self, driver):
        self.driver = driver
        self.failed = []

    def _start(self, name):
        print(f"step {name}: START", flush=True)
        return time.monotonic()

    def _done(self, name, began, info, exc):
        took = time.monotonic() - began
        if exc is None:
            extra = f" {info}" if info else ""
            print(f"step {name}: PASS ({took:.1f}s){extra}", flush=True)
        else:
            self.failed.append(name)
            print(f"step {name}: FAIL ({took:.1f}s) {one_line(exc)}", flush=True)
            traceback.print_exception(exc, file=sys.stderr)

    def step(self, name, fn):
        began = self._start(name)
        try:
            info = fn()
        except BaseException as e:  # noqa: BLE001 - a failing step must not stop the others
            if isinstance(e, KeyboardInterrupt):
                raise
            self._done(name, began, None, e)
        else:
            self._done(name, began, info, None)

    async def astep(self, name, coro_fn):
        began = self._start(name)
        try:
            info = await coro_fn()
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            self._done(name, began, None, e)
        else:
            self._done(name, began, info, None)

    def exit(self):
        if self.failed:
            print(f"{self.driver}: failed steps: {', '.join(self.failed)}", flush=True)
            sys.exit(1)
        print(f"{self.driver}: all steps passed", flush=True)
        sys.exit(0)


def copy_rows():
    """Rows of step (f): NULLs, non-ASCII, tabs, newlines and backslashes."""
    return [
        (i, None if i % 7 == 0 else f"name {i} Grüße 東京 🚀", f"tab\there\nnewline \\ backslash {i}")
        for i in range(1, 1001)
    ]


_COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def parse_copy_text(data):
    """Parses COPY ... TO STDOUT text format (tab-separated, \\N for NULL) into tuples of str/None."""
    out = []
    for line in data.decode("utf-8").split("\n"):
        if not line:
            continue
        fields = []
        for raw in line.split("\t"):
            if raw == "\\N":
                fields.append(None)
                continue
            s, i = [], 0
            while i < len(raw):
                ch = raw[i]
                if ch == "\\" and i + 1 < len(raw):
                    s.append(_COPY_ESCAPES.get(raw[i + 1], raw[i + 1]))
                    i += 2
                else:
                    s.append(ch)
                    i += 1
            fields.append("".join(s))
        out.append(tuple(fields))
    return out


def first_difference(got, want):
    if len(got) != len(want):
        return f"{len(got)} rows, expected {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"row {i}: got {a!r}, expected {b!r}"
    return None


SETTINGS_TRANSACTIONS = 20


def settings_verdict(problems, side_errors):
    """Step (g)'s failure message: how many of the 20 transactions saw wrong settings (and the
    first one's details), plus what the other clients saw."""
    parts = []
    if problems:
        n, bad = problems[0]
        parts.append(
            f"settings wrong in {len(problems)}/{SETTINGS_TRANSACTIONS} transactions;"
            f" first (transaction {n}): {'; '.join(bad)}")
    parts.extend(side_errors)
    if parts:
        raise AssertionError(" | ".join(parts))
