"""The shared driver scenario for psycopg 3 (plus pipeline mode, a server-side cursor and
executemany). Everything at the driver's defaults: prepare_threshold=5, text-format params.

    PGSIDECAR_DSN=postgres://user:pw@host:port/db python scenario_psycopg.py
"""

import concurrent.futures as cf
import threading
import time

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb

from common import (
    BIGINT, BYTES, CONCURRENCY, DSN, INTS, JSON, NUMERIC, REPEAT, TEXT, TEXTS, TS, Report,
    SETTINGS_TRANSACTIONS, check_server_row, copy_rows, expect, first_difference, expect_sqlstate, one_line, server_check_sql, settings_verdict, types_table_sql,
)

P = "drv_psycopg"


def connect(autocommit=True, **kw):
    return psycopg.connect(DSN, autocommit=autocommit, connect_timeout=10, **kw)


def setup():
    with connect() as c:
        for stmt in [
            f"DROP TABLE IF EXISTS {P}_types, {P}_items, {P}_copy, {P}_pipe, {P}_many",
            f"DROP SCHEMA IF EXISTS {P}_g CASCADE",
            types_table_sql(f"{P}_types"),
            f"CREATE TABLE {P}_items (id int PRIMARY KEY, name text NOT NULL)",
            f"CREATE TABLE {P}_copy (id int PRIMARY KEY, name text, note text)",
            f"CREATE TABLE {P}_pipe (id int PRIMARY KEY, v text)",
            f"CREATE TABLE {P}_many (id int PRIMARY KEY, v text, n numeric)",
            f"CREATE SCHEMA {P}_g",
            f"CREATE TABLE {P}_g.probe (v text)",
            f"INSERT INTO {P}_g.probe VALUES ('{P}')",
        ]:
            c.execute(stmt)


# ---- (a) -----------------------------------------------------------------------------------
def step_types():
    values = (NUMERIC, Jsonb(JSON), TS, INTS, TEXTS, BYTES, None, TEXT, True, BIGINT)
    names = ["numeric", "jsonb", "timestamptz", "int[]", "text[]", "bytea", "null", "text", "bool", "bigint"]
    want = [NUMERIC, JSON, TS, INTS, TEXTS, BYTES, None, TEXT, True, BIGINT]
    with connect() as c:
        c.execute(
            f"INSERT INTO {P}_types (id, n, j, ts, ia, ta, b, nul, t, bo, bi)"
            " VALUES (1, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            values,
        )
        row = c.execute(f"SELECT n, j, ts, ia, ta, b, nul, t, bo, bi FROM {P}_types WHERE id = %s", (1,)).fetchone()
        for name, got, w in zip(names, row, want):
            expect(f"stored {name}", got, w)
        check_server_row(c.execute(server_check_sql(f"{P}_types")).fetchone())
        echo = (
            "SELECT %s::numeric, %s::jsonb, %s::timestamptz, %s::int[], %s::text[], %s::bytea,"
            " %s::text, %s::text, %s::bool, %s::bigint"
        )
        for binary in (False, True):
            with c.cursor(binary=binary) as cur:
                row = cur.execute(echo, values).fetchone()
                for name, got, w in zip(names, row, want):
                    expect(f"echo ({'binary' if binary else 'text'} results) {name}", got, w)


# ---- (b) -----------------------------------------------------------------------------------
def step_prepared_concurrency():
    barrier = threading.Barrier(CONCURRENCY)
    query = "SELECT %s::int * 2 AS doubled, %s::text AS tag, pg_backend_pid() AS pid /* drv_psycopg b */"

    def worker(n):
        pids = []
        with connect() as c:
            barrier.wait(timeout=60)
            for i in range(REPEAT):
                args = (n * 1000 + i, f"c{n}-{i}")
                if i % 10 == 9:
                    with c.transaction():
                        row = c.execute(query, args).fetchone()
                else:
                    row = c.execute(query, args).fetchone()
                if row[0] != 2 * args[0] or row[1] != args[1]:
                    raise AssertionError(f"connection {n} iteration {i}: got {row[:2]!r}, expected ({2 * args[0]}, {args[1]!r})")
                pids.append(row[2])
            if not c._prepared._names:  # psycopg keeps its prepared-statement names here
                raise AssertionError(f"connection {n}: psycopg never prepared the statement (threshold {c.prepare_threshold})")
        return pids

    with cf.ThreadPoolExecutor(CONCURRENCY) as ex:
        results = list(ex.map(worker, range(CONCURRENCY)))
    backends = {p for pids in results for p in pids}
    moved = sum(1 for pids in results if len(set(pids)) > 1)
    return f"{CONCURRENCY}x{REPEAT} executions on {len(backends)} backends; {moved}/{CONCURRENCY} connections moved between backends"


# ---- (c) -----------------------------------------------------------------------------------
def step_transactions():
    with connect(autocommit=False) as c, connect() as other:
        c.execute(f"INSERT INTO {P}_items VALUES (%s, %s)", (1, "rolled back"))
        expect("own uncommitted insert visible", c.execute(f"SELECT count(*) FROM {P}_items WHERE id = 1").fetchone()[0], 1)
        c.rollback()
        expect("after rollback (same connection)", c.execute(f"SELECT count(*) FROM {P}_items WHERE id = 1").fetchone()[0], 0)
        c.commit()
        expect("after rollback (other connection)", other.execute(f"SELECT count(*) FROM {P}_items WHERE id = 1").fetchone()[0], 0)
        c.execute(f"INSERT INTO {P}_items VALUES (%s, %s)", (2, "committed"))
        c.commit()
        expect("after commit (other connection)", other.execute(f"SELECT name FROM {P}_items WHERE id = 2").fetchone()[0], "committed")
        # Savepoints: the inner block rolls back, the outer commits.
        with c.transaction():
            c.execute(f"INSERT INTO {P}_items VALUES (3, 'outer')")
            try:
                with c.transaction():
                    c.execute(f"INSERT INTO {P}_items VALUES (4, 'inner')")
                    raise psycopg.Rollback()
            except psycopg.Rollback:
                pass
        c.commit()
        got = other.execute(f"SELECT array_agg(id ORDER BY id) FROM {P}_items WHERE id IN (3, 4)").fetchone()[0]
        expect("savepoint rollback", got, [3])
        # psycopg's default: a ROLLBACK on a connection holding prepared statements makes it send
        # DEALLOCATE ALL. That must not destroy statements other clients prepared (under
        # transaction pooling they share backends with this one).
        for _ in range(6):
            c.execute("SELECT %s::int + 0", (1,))
        c.rollback()
        c.execute("SELECT 1")
        c.commit()
    prepared_by_others_still_work("after a client's ROLLBACK + DEALLOCATE ALL")
    rolled_back_connections_share_backends()


def rolled_back_connections_share_backends():
    # CONCURRENCY idle connections that each rolled back with prepared statements (so each sent
    # DEALLOCATE ALL) must not each keep a backend: with more of them than the proxy has
    # backends, they must all still be able to run a statement.
    conns = [connect(autocommit=False) for _ in range(CONCURRENCY)]
    try:
        for n, c in enumerate(conns):
            try:
                for _ in range(6):
                    c.execute("SELECT %s::int + 0 /* drv_psycopg rollback */", (1,))
                c.rollback()
            except psycopg.Error as e:
                raise AssertionError(
                    f"connection {n} of {CONCURRENCY} could not run a statement ({type(e).__name__}: {e}) while the"
                    f" {n} before it sat idle after ROLLBACK + DEALLOCATE ALL: they keep their backends") from e
        for n, c in enumerate(conns):
            try:
                expect("statement after ROLLBACK + DEALLOCATE ALL", c.execute("SELECT %s::int", (n,)).fetchone()[0], n)
                c.commit()
            except psycopg.Error as e:
                raise AssertionError(
                    f"{CONCURRENCY} idle connections that had rolled back: connection {n} could not run a statement"
                    f" ({type(e).__name__}: {e}); the earlier ones keep their backends") from e
    finally:
        for c in conns:
            c.close()


def prepared_by_others_still_work(when):
    query = "SELECT %s::int * 2 AS doubled, %s::text AS tag, pg_backend_pid() AS pid /* drv_psycopg b */"  # step (b)'s

    def worker(n):
        with connect() as c:
            for i in range(12):
                row = c.execute(query, (i, "x")).fetchone()
                if row[0] != 2 * i:
                    raise AssertionError(f"{when}: got {row[0]}")

    with cf.ThreadPoolExecutor(8) as ex:
        for f in [ex.submit(worker, n) for n in range(8)]:
            try:
                f.result()
            except psycopg.Error as e:
                raise AssertionError(f"{when}, another client's prepared statement failed: {type(e).__name__}: {e}") from e


# ---- (d) -----------------------------------------------------------------------------------
def step_errors():
    with connect() as c:
        try:
            c.execute("SELECT 1/0")
            raise AssertionError("SELECT 1/0 succeeded")
        except errors.DivisionByZero as e:
            expect_sqlstate(e, "22012", "division by zero")
        expect("statement after error", c.execute("SELECT 41 + 1").fetchone()[0], 42)
        c.execute(f"INSERT INTO {P}_items VALUES (100, 'x')")
        try:
            c.execute(f"INSERT INTO {P}_items VALUES (%s, %s)", (100, "dup"))
            raise AssertionError("duplicate insert succeeded")
        except errors.UniqueViolation as e:
            expect_sqlstate(e, "23505", "unique violation")
        expect("statement after unique violation", c.execute("SELECT %s::int", (7,)).fetchone()[0], 7)
        # A prepared statement (past the threshold) that fails, then succeeds again.
        q = "SELECT 100 / %s::int"
        for _ in range(6):
            c.execute(q, (5,))
        try:
            c.execute(q, (0,))
            raise AssertionError("100/0 succeeded")
        except errors.DivisionByZero as e:
            expect_sqlstate(e, "22012", "prepared statement division by zero")
        expect("prepared statement after its error", c.execute(q, (4,)).fetchone()[0], 25)
    with connect(autocommit=False) as c:
        c.execute("SELECT 1")
        try:
            c.execute("SELECT 1/0")
        except errors.DivisionByZero:
            pass
        try:
            c.execute("SELECT 1")
            raise AssertionError("statement in an aborted transaction succeeded")
        except errors.InFailedSqlTransaction as e:
            expect_sqlstate(e, "25P02", "statement in aborted transaction")
        c.rollback()
        expect("statement after rollback of failed transaction", c.execute("SELECT 'ok'").fetchone()[0], "ok")
        c.commit()


# ---- (e) -----------------------------------------------------------------------------------
def wait_active(probe, marker, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()"
            " AND query LIKE %s",
            (f"%{marker}%",),
        ).fetchone()[0]
        if n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the pg_sleep query ({marker}) never showed up as active in pg_stat_activity")


def step_cancel():
    marker = f"{P}_cancel_marker"
    with connect() as c, connect() as probe:
        outcome = {}

        def sleeper():
            began = time.monotonic()
            try:
                c.execute(f"/* pgsidecar: route=primary */ SELECT pg_sleep(10) /* {marker} */")
                outcome["error"] = None
            except Exception as e:  # noqa: BLE001
                outcome["error"] = e
            outcome["ended"] = time.monotonic()
            outcome["began"] = began

        t = threading.Thread(target=sleeper)
        t.start()
        wait_active(probe, marker)
        cancelled_at = time.monotonic()
        c.cancel_safe(timeout=5)
        t.join(15)
        if t.is_alive():
            raise AssertionError("pg_sleep(10) still running 15 s after the cancel")
        e = outcome["error"]
        if e is None:
            raise AssertionError(f"pg_sleep(10) was not cancelled (ran {outcome['ended'] - outcome['began']:.1f}s)")
        expect_sqlstate(e, "57014", "cancelled statement")
        took = outcome["ended"] - cancelled_at
        if took > 5:
            raise AssertionError(f"cancel took {took:.1f}s (> 5 s)")
        expect("statement after cancel", c.execute("SELECT 'alive'").fetchone()[0], "alive")
        return f"cancelled after {took:.2f}s"


# ---- (f) -----------------------------------------------------------------------------------
def step_copy():
    rows = copy_rows()
    with connect() as c:
        with c.cursor() as cur:
            with cur.copy(f"COPY {P}_copy (id, name, note) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
            expect("rows after COPY FROM", cur.execute(f"SELECT count(*) FROM {P}_copy").fetchone()[0], 1000)
            expect(
                "a copied row",
                cur.execute(f"SELECT name, note FROM {P}_copy WHERE id = 8").fetchone(),
                (rows[7][1], rows[7][2]),
            )
            got = []
            with cur.copy(f"COPY (SELECT id, name, note FROM {P}_copy ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text", "text"])
                for r in copy.rows():
                    got.append(r)
            diff = first_difference(got, rows)
            if diff:
                raise AssertionError(f"COPY TO STDOUT: {diff}")
        expect("connection after COPY", c.execute("SELECT 1").fetchone()[0], 1)


# ---- (g) -----------------------------------------------------------------------------------
SETTINGS_SQL = [
    f"SET application_name = '{P}_g'",
    "SET TIME ZONE 'Asia/Tokyo'",
    f"SET search_path = public, {P}_g",
    "SET statement_timeout = '31s'",
]
WANT = {"application_name": f"{P}_g", "TimeZone": "Asia/Tokyo", "search_path": f"public, {P}_g", "statement_timeout": "31s"}


def step_settings():
    stop = threading.Event()
    errors_seen = []

    def noise(n):
        # Other clients with their own, different settings, in many short transactions.
        try:
            with connect() as c:
                c.execute(f"SET application_name = 'noise_{n}'")
                c.execute("SET TIME ZONE 'America/New_York'")
                c.execute("SET statement_timeout = '32s'")
                while not stop.is_set():
                    with c.transaction():
                        app = c.execute("SHOW application_name").fetchone()[0]
                        tz = c.execute("SHOW TimeZone").fetchone()[0]
                        c.execute("SELECT pg_sleep(0.005)")
                    if app != f"noise_{n}" or tz != "America/New_York":
                        raise AssertionError(f"noise client {n} saw application_name={app!r} TimeZone={tz!r}")
        except Exception as e:  # noqa: BLE001
            errors_seen.append(f"noise {n}: {e}")

    def clean(n):
        # A client that never SETs anything must see the defaults, not someone else's settings.
        try:
            with connect(application_name=f"clean_{n}") as c:
                default_tz = c.execute("SHOW TimeZone").fetchone()[0]  # the session's own, at connect
                while not stop.is_set():
                    with c.transaction():
                        app = c.execute("SHOW application_name").fetchone()[0]
                        tz = c.execute("SHOW TimeZone").fetchone()[0]
                        st = c.execute("SHOW statement_timeout").fetchone()[0]
                    if app != f"clean_{n}" or tz != default_tz or st != "0":
                        raise AssertionError(
                            f"clean client {n} saw application_name={app!r} TimeZone={tz!r} statement_timeout={st!r}"
                            f" (expected clean_{n}, {default_tz}, 0): another session's settings leaked")
                    time.sleep(0.005)
        except Exception as e:  # noqa: BLE001
            errors_seen.append(f"clean {n}: {e}")

    threads = [threading.Thread(target=noise, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=clean, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    problems = []
    try:
        with connect() as c:
            before = [c.execute(f"SHOW {n}").fetchone()[0] for n in ("TimeZone", "DateStyle")]
            for s in SETTINGS_SQL:
                c.execute(s)
            for i in range(SETTINGS_TRANSACTIONS):
                bad = []
                try:
                    with c.transaction():
                        for name, want in WANT.items():
                            got = c.execute(f"SHOW {name}").fetchone()[0]
                            if got != want:
                                bad.append(f"SHOW {name} = {got!r}, expected {want!r}")
                        offset = c.execute("SELECT extract(timezone FROM now())::int").fetchone()[0]
                        if offset != 9 * 3600:
                            bad.append(f"now() is at UTC offset {offset}s, expected 32400s")
                        probe = c.execute("SELECT v FROM probe").fetchone()[0]
                        if probe != P:
                            bad.append(f"unqualified table 'probe' gave {probe!r}")
                except psycopg.Error as e:
                    bad.append(one_line(e))
                if bad:
                    problems.append((i + 1, bad))
                time.sleep(0.02)
            c.execute("RESET ALL")
            with c.transaction():
                after = [c.execute(f"SHOW {n}").fetchone()[0] for n in ("TimeZone", "DateStyle")]
            if after != before:
                errors_seen.append(f"after RESET ALL: TimeZone, DateStyle = {after}, expected the session's own {before}")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    settings_verdict(problems, errors_seen)


# ---- extras ----------------------------------------------------------------------------------
def step_pipeline():
    with connect(autocommit=False) as c:
        with c.pipeline():
            with c.cursor() as cur:
                for i in range(200):
                    cur.execute(f"INSERT INTO {P}_pipe VALUES (%s, %s)", (i, f"v{i}"))
                selects = []
                for i in range(0, 200, 20):
                    s = c.cursor()
                    s.execute(f"SELECT v FROM {P}_pipe WHERE id = %s", (i,))
                    selects.append((i, s))
            for i, s in selects:
                expect(f"pipelined select {i}", s.fetchone()[0], f"v{i}")
        c.commit()
        expect("rows inserted in pipeline", c.execute(f"SELECT count(*) FROM {P}_pipe").fetchone()[0], 200)
        c.commit()
        # An error inside a pipeline, then the connection goes on.
        try:
            with c.pipeline():
                c.execute("SELECT 1")
                c.execute("SELECT 1/0")
                c.execute("SELECT 2")
            raise AssertionError("pipeline with 1/0 succeeded")
        except errors.DivisionByZero:
            pass
        c.rollback()
        expect("after failed pipeline", c.execute("SELECT 3").fetchone()[0], 3)
        c.commit()


def step_server_cursor():
    with connect(autocommit=False) as c:
        with c.transaction():
            with c.cursor(name=f"{P}_ssc") as cur:
                cur.execute("SELECT g, repeat('x', g % 10) FROM generate_series(1, 5000) g")
                total, count = 0, 0
                while True:
                    batch = cur.fetchmany(700)
                    if not batch:
                        break
                    total += sum(r[0] for r in batch)
                    count += len(batch)
        expect("server-side cursor row count", count, 5000)
        expect("server-side cursor sum", total, 5000 * 5001 // 2)


def step_executemany():
    rows = [(i, f"many {i} Grüße", NUMERIC + i) for i in range(500)]
    with connect() as c:
        with c.cursor() as cur:
            cur.executemany(f"INSERT INTO {P}_many (id, v, n) VALUES (%s, %s, %s)", rows)
            got = cur.execute(f"SELECT count(*), sum(n) FROM {P}_many").fetchone()
            expect("executemany rows", got[0], 500)
            expect("executemany sum", got[1], sum(r[2] for r in rows))
            cur.executemany(f"SELECT v FROM {P}_many WHERE id = %s", [(i,) for i in range(5)], returning=True)
            vals = []
            while True:
                vals.append(cur.fetchone()[0])
                if not cur.nextset():
                    break
            expect("executemany returning", vals, [f"many {i} Grüße" for i in range(5)])


def main():
    r = Report("psycopg")
    print(f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version()})", flush=True)
    r.step("setup", setup)
    r.step("a-types", step_types)
    r.step("b-prepared-x20", step_prepared_concurrency)
    r.step("c-transactions", step_transactions)
    r.step("d-errors", step_errors)
    r.step("e-cancel", step_cancel)
    r.step("f-copy", step_copy)
    r.step("g-settings", step_settings)
    r.step("x-pipeline", step_pipeline)
    r.step("x-server-cursor", step_server_cursor)
    r.step("x-executemany", step_executemany)
    r.exit()


if __name__ == "__main__":
    main()
