"""The shared driver scenario for asyncpg (plus a pool, executemany and explicit prepared
statements). Everything at the driver's defaults: every query is a named prepared statement
from asyncpg's statement cache, binary format.

    PGSIDECAR_DSN=postgres://user:pw@host:port/db python scenario_asyncpg.py
"""

import asyncio
import json
import time

import asyncpg
from asyncpg import exceptions as exc

from common import (
    BIGINT, BYTES, CONCURRENCY, DSN, INTS, JSON, NUMERIC, REPEAT, TEXT, TEXTS, TS, Report,
    SETTINGS_TRANSACTIONS, check_server_row, copy_rows, expect, expect_sqlstate, first_difference, parse_copy_text,
    one_line, server_check_sql, settings_verdict, types_table_sql,
)

P = "drv_asyncpg"


async def connect(**kw):
    return await asyncpg.connect(DSN, timeout=10, **kw)


class conn_ctx:  # noqa: N801 - async context manager closing the connection
    def __init__(self, **kw):
        self.kw = kw

    async def __aenter__(self):
        self.c = await connect(**self.kw)
        return self.c

    async def __aexit__(self, *a):
        await self.c.close(timeout=5)


async def setup():
    async with conn_ctx() as c:
        for stmt in [
            f"DROP TABLE IF EXISTS {P}_types, {P}_items, {P}_copy, {P}_many, {P}_pool",
            f"DROP SCHEMA IF EXISTS {P}_g CASCADE",
            types_table_sql(f"{P}_types"),
            f"CREATE TABLE {P}_items (id int PRIMARY KEY, name text NOT NULL)",
            f"CREATE TABLE {P}_copy (id int PRIMARY KEY, name text, note text)",
            f"CREATE TABLE {P}_many (id int PRIMARY KEY, v text, n numeric)",
            f"CREATE TABLE {P}_pool (id int PRIMARY KEY, worker int)",
            f"CREATE SCHEMA {P}_g",
            f"CREATE TABLE {P}_g.probe (v text)",
            f"INSERT INTO {P}_g.probe VALUES ('{P}')",
        ]:
            await c.execute(stmt)


# ---- (a) -----------------------------------------------------------------------------------
NAMES = ["numeric", "jsonb", "timestamptz", "int[]", "text[]", "bytea", "null", "text", "bool", "bigint"]


async def step_types():
    # asyncpg's default jsonb codec is text: it takes and returns JSON as str.
    values = (NUMERIC, json.dumps(JSON), TS, INTS, TEXTS, BYTES, None, TEXT, True, BIGINT)
    want = [NUMERIC, JSON, TS, INTS, TEXTS, BYTES, None, TEXT, True, BIGINT]

    def compare(prefix, row):
        got = list(row)
        got[1] = json.loads(got[1])
        for name, g, w in zip(NAMES, got, want):
            expect(f"{prefix} {name}", g, w)

    async with conn_ctx() as c:
        await c.execute(
            f"INSERT INTO {P}_types (id, n, j, ts, ia, ta, b, nul, t, bo, bi)"
            " VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            *values,
        )
        compare("stored", await c.fetchrow(f"SELECT n, j, ts, ia, ta, b, nul, t, bo, bi FROM {P}_types WHERE id = $1", 1))
        check_server_row(await c.fetchrow(server_check_sql(f"{P}_types")))
        row = await c.fetchrow(
            "SELECT $1::numeric, $2::jsonb, $3::timestamptz, $4::int[], $5::text[], $6::bytea,"
            " $7::text, $8::text, $9::bool, $10::bigint",
            *values,
        )
        compare("echo", row)


# ---- (b) -----------------------------------------------------------------------------------
async def step_prepared_concurrency():
    query = "SELECT $1::int * 2 AS doubled, $2::text AS tag, pg_backend_pid() AS pid /* drv_asyncpg b */"
    conns = await asyncio.gather(*[connect() for _ in range(CONCURRENCY)])
    try:
        async def worker(n, c):
            pids = []
            for i in range(REPEAT):
                args = (n * 1000 + i, f"c{n}-{i}")
                if i % 10 == 9:
                    async with c.transaction():
                        row = await c.fetchrow(query, *args)
                else:
                    row = await c.fetchrow(query, *args)
                if row[0] != 2 * args[0] or row[1] != args[1]:
                    raise AssertionError(f"connection {n} iteration {i}: got {tuple(row)[:2]!r}, expected ({2 * args[0]}, {args[1]!r})")
                pids.append(row[2])
            return pids

        results = await asyncio.gather(*[worker(n, c) for n, c in enumerate(conns)])
    finally:
        await asyncio.gather(*[c.close(timeout=5) for c in conns], return_exceptions=True)
    backends = {p for pids in results for p in pids}
    moved = sum(1 for pids in results if len(set(pids)) > 1)
    return f"{CONCURRENCY}x{REPEAT} executions on {len(backends)} backends; {moved}/{CONCURRENCY} connections moved between backends"


# ---- (c) -----------------------------------------------------------------------------------
async def step_transactions():
    async with conn_ctx() as c, conn_ctx() as other:
        tr = c.transaction()
        await tr.start()
        await c.execute(f"INSERT INTO {P}_items VALUES ($1, $2)", 1, "rolled back")
        expect("own uncommitted insert visible", await c.fetchval(f"SELECT count(*) FROM {P}_items WHERE id = 1"), 1)
        await tr.rollback()
        expect("after rollback (same connection)", await c.fetchval(f"SELECT count(*) FROM {P}_items WHERE id = 1"), 0)
        expect("after rollback (other connection)", await other.fetchval(f"SELECT count(*) FROM {P}_items WHERE id = 1"), 0)
        async with c.transaction():
            await c.execute(f"INSERT INTO {P}_items VALUES ($1, $2)", 2, "committed")
        expect("after commit (other connection)", await other.fetchval(f"SELECT name FROM {P}_items WHERE id = 2"), "committed")
        async with c.transaction():
            await c.execute(f"INSERT INTO {P}_items VALUES (3, 'outer')")
            inner = c.transaction()
            await inner.start()
            await c.execute(f"INSERT INTO {P}_items VALUES (4, 'inner')")
            await inner.rollback()
        got = await other.fetchval(f"SELECT array_agg(id ORDER BY id) FROM {P}_items WHERE id IN (3, 4)")
        expect("savepoint rollback", got, [3])


# ---- (d) -----------------------------------------------------------------------------------
async def step_errors():
    async with conn_ctx() as c:
        try:
            await c.fetchval("SELECT 1/0")
            raise AssertionError("SELECT 1/0 succeeded")
        except exc.DivisionByZeroError as e:
            expect_sqlstate(e, "22012", "division by zero")
        expect("statement after error", await c.fetchval("SELECT 41 + 1"), 42)
        await c.execute(f"INSERT INTO {P}_items VALUES (100, 'x')")
        try:
            await c.execute(f"INSERT INTO {P}_items VALUES ($1, $2)", 100, "dup")
            raise AssertionError("duplicate insert succeeded")
        except exc.UniqueViolationError as e:
            expect_sqlstate(e, "23505", "unique violation")
        expect("statement after unique violation", await c.fetchval("SELECT $1::int", 7), 7)
        q = "SELECT 100 / $1::int"
        for _ in range(6):
            await c.fetchval(q, 5)
        try:
            await c.fetchval(q, 0)
            raise AssertionError("100/0 succeeded")
        except exc.DivisionByZeroError as e:
            expect_sqlstate(e, "22012", "prepared statement division by zero")
        expect("prepared statement after its error", await c.fetchval(q, 4), 25)
        tr = c.transaction()
        await tr.start()
        try:
            await c.fetchval("SELECT 1/0")
        except exc.DivisionByZeroError:
            pass
        try:
            await c.fetchval("SELECT 1")
            raise AssertionError("statement in an aborted transaction succeeded")
        except exc.InFailedSQLTransactionError as e:
            expect_sqlstate(e, "25P02", "statement in aborted transaction")
        await tr.rollback()
        expect("statement after rollback of failed transaction", await c.fetchval("SELECT 'ok'"), "ok")


# ---- (e) -----------------------------------------------------------------------------------
async def sleeping(probe, marker):
    return await probe.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE $1",
        f"%{marker}%",
    )


async def step_cancel():
    # asyncpg has no cancel() method: its cancel API is asyncio cancellation (or a timeout), on
    # which it sends a CancelRequest and waits for the server to abort the statement. The 57014
    # the server answers is consumed by asyncpg, so we check its effects: the statement stops on
    # the server within 5 s and the connection is usable.
    marker = f"{P}_cancel_marker"
    async with conn_ctx() as c, conn_ctx() as probe:
        task = asyncio.create_task(c.execute(f"/* pgsidecar: route=primary */ SELECT pg_sleep(10) /* {marker} */"))
        deadline = time.monotonic() + 10
        while not await sleeping(probe, marker):
            if time.monotonic() > deadline or task.done():
                raise AssertionError("the pg_sleep query never showed up as active in pg_stat_activity")
            await asyncio.sleep(0.05)
        began = time.monotonic()
        task.cancel()
        try:
            await asyncio.wait_for(task, 15)
            raise AssertionError("pg_sleep(10) completed despite the cancel")
        except asyncio.CancelledError:
            pass
        while await sleeping(probe, marker):
            if time.monotonic() - began > 5:
                raise AssertionError("pg_sleep(10) still running on the server 5 s after the cancel")
            await asyncio.sleep(0.05)
        expect("statement after cancel", await asyncio.wait_for(c.fetchval("SELECT 'alive'"), 10), "alive")
        took = time.monotonic() - began
        if took > 5:
            raise AssertionError(f"cancel took {took:.1f}s (> 5 s)")
        # The same through a statement timeout (asyncpg cancels on the server, then raises).
        began = time.monotonic()
        try:
            await c.execute(f"/* pgsidecar: route=primary */ SELECT pg_sleep(10) /* {marker} */", timeout=0.5)
            raise AssertionError("pg_sleep(10) with timeout=0.5 completed")
        except asyncio.TimeoutError:
            pass
        expect("statement after timeout", await asyncio.wait_for(c.fetchval("SELECT 'alive'"), 10), "alive")
        took2 = time.monotonic() - began
        if took2 > 5:
            raise AssertionError(f"timeout-cancel took {took2:.1f}s (> 5 s)")
        return f"cancelled after {took:.2f}s, timeout-cancelled after {took2:.2f}s"


# ---- (f) -----------------------------------------------------------------------------------
async def step_copy():
    rows = copy_rows()
    async with conn_ctx() as c:
        await c.copy_records_to_table(f"{P}_copy", records=rows, columns=["id", "name", "note"])
        expect("rows after COPY FROM", await c.fetchval(f"SELECT count(*) FROM {P}_copy"), 1000)
        expect("a copied row", tuple(await c.fetchrow(f"SELECT name, note FROM {P}_copy WHERE id = 8")), rows[7][1:])
        chunks = []

        async def sink(data):
            chunks.append(bytes(data))

        await c.copy_from_query(f"SELECT id, name, note FROM {P}_copy ORDER BY id", output=sink)
        got = [(int(r[0]), r[1], r[2]) for r in parse_copy_text(b"".join(chunks))]
        diff = first_difference(got, rows)
        if diff:
            raise AssertionError(f"copy_from_query: {diff}")
        # And COPY FROM a text stream (copy_to_table).
        await c.execute(f"DELETE FROM {P}_copy")
        import io
        await c.copy_to_table(f"{P}_copy", source=io.BytesIO(b"1\tone\t\\N\n2\ttwo\tx\\ty\n"))
        got = [tuple(r) for r in await c.fetch(f"SELECT id, name, note FROM {P}_copy ORDER BY id")]
        expect("copy_to_table rows", got, [(1, "one", None), (2, "two", "x\ty")])
        expect("connection after COPY", await c.fetchval("SELECT 1"), 1)


# ---- (g) -----------------------------------------------------------------------------------
SETTINGS_SQL = [
    f"SET application_name = '{P}_g'",
    "SET TIME ZONE 'Asia/Tokyo'",
    f"SET search_path = public, {P}_g",
    "SET statement_timeout = '31s'",
]
WANT = {"application_name": f"{P}_g", "TimeZone": "Asia/Tokyo", "search_path": f"public, {P}_g", "statement_timeout": "31s"}


async def step_settings():
    stop = asyncio.Event()
    errors_seen = []

    async def noise(n):
        try:
            async with conn_ctx() as c:
                await c.execute(f"SET application_name = 'noise_{n}'")
                await c.execute("SET TIME ZONE 'America/New_York'")
                await c.execute("SET statement_timeout = '32s'")
                while not stop.is_set():
                    async with c.transaction():
                        app = await c.fetchval("SHOW application_name")
                        tz = await c.fetchval("SHOW TimeZone")
                        await c.execute("SELECT pg_sleep(0.005)")
                    if app != f"noise_{n}" or tz != "America/New_York":
                        raise AssertionError(f"noise client {n} saw application_name={app!r} TimeZone={tz!r}")
        except Exception as e:  # noqa: BLE001
            errors_seen.append(f"noise {n}: {e}")

    async def clean(n):
        try:
            async with conn_ctx(server_settings={"application_name": f"clean_{n}"}) as c:
                default_tz = await c.fetchval("SHOW TimeZone")  # the session's own, at connect
                while not stop.is_set():
                    async with c.transaction():
                        app = await c.fetchval("SHOW application_name")
                        tz = await c.fetchval("SHOW TimeZone")
                        st = await c.fetchval("SHOW statement_timeout")
                    if app != f"clean_{n}" or tz != default_tz or st != "0":
                        raise AssertionError(
                            f"clean client {n} saw application_name={app!r} TimeZone={tz!r} statement_timeout={st!r}"
                            f" (expected clean_{n}, {default_tz}, 0): another session's settings leaked")
                    await asyncio.sleep(0.005)
        except Exception as e:  # noqa: BLE001
            errors_seen.append(f"clean {n}: {e}")

    others = [asyncio.create_task(noise(n)) for n in range(4)] + [asyncio.create_task(clean(n)) for n in range(2)]
    problems = []
    try:
        async with conn_ctx() as c:
            before = [await c.fetchval(f"SHOW {n}") for n in ("TimeZone", "DateStyle")]
            for s in SETTINGS_SQL:
                await c.execute(s)
            for i in range(SETTINGS_TRANSACTIONS):
                bad = []
                try:
                    async with c.transaction():
                        for name, want in WANT.items():
                            got = await c.fetchval(f"SHOW {name}")
                            if got != want:
                                bad.append(f"SHOW {name} = {got!r}, expected {want!r}")
                        offset = await c.fetchval("SELECT extract(timezone FROM now())::int")
                        if offset != 9 * 3600:
                            bad.append(f"now() is at UTC offset {offset}s, expected 32400s")
                        probe = await c.fetchval("SELECT v FROM probe")
                        if probe != P:
                            bad.append(f"unqualified table 'probe' gave {probe!r}")
                except asyncpg.PostgresError as e:
                    bad.append(one_line(e))
                if bad:
                    problems.append((i + 1, bad))
                await asyncio.sleep(0.02)
            await c.execute("RESET ALL")
            async with c.transaction():
                after = [await c.fetchval(f"SHOW {n}") for n in ("TimeZone", "DateStyle")]
            if after != before:
                errors_seen.append(f"after RESET ALL: TimeZone, DateStyle = {after}, expected the session's own {before}")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 30)
    settings_verdict(problems, errors_seen)


# ---- extras ----------------------------------------------------------------------------------
async def step_pool():
    pool = await asyncpg.create_pool(DSN, min_size=5, max_size=CONCURRENCY, timeout=10)
    try:
        async def job(i):
            async with pool.acquire() as c:
                async with c.transaction():
                    await c.execute(f"INSERT INTO {P}_pool VALUES ($1, $2)", i, i % 7)
                    v = await c.fetchval("SELECT $1::int + 1", i)
                    if v != i + 1:
                        raise AssertionError(f"pool job {i}: got {v}")
            return await pool.fetchval(f"SELECT worker FROM {P}_pool WHERE id = $1", i)

        got = await asyncio.gather(*[job(i) for i in range(300)])
        expect("pool results", got, [i % 7 for i in range(300)])
        expect("pool rows", await pool.fetchval(f"SELECT count(*) FROM {P}_pool"), 300)
    finally:
        await asyncio.wait_for(pool.close(), 15)
    return "300 pooled transactions"


async def step_executemany():
    rows = [(i, f"many {i} Grüße", NUMERIC + i) for i in range(500)]
    async with conn_ctx() as c:
        await c.executemany(f"INSERT INTO {P}_many (id, v, n) VALUES ($1, $2, $3)", rows)
        got = await c.fetchrow(f"SELECT count(*), sum(n) FROM {P}_many")
        expect("executemany rows", got[0], 500)
        expect("executemany sum", got[1], sum(r[2] for r in rows))


async def step_prepare():
    async with conn_ctx() as c:
        stmt = await c.prepare("SELECT v, n FROM drv_asyncpg_many WHERE id = $1")
        for i in range(100):
            if i % 2:
                async with c.transaction():
                    row = await stmt.fetchrow(i)
            else:
                row = await stmt.fetchrow(i)
            expect(f"prepared row {i}", (row[0], row[1]), (f"many {i} Grüße", NUMERIC + i))
        expect("prepared statement columns", [a.name for a in stmt.get_attributes()], ["v", "n"])
        cur_rows = []
        async with c.transaction():
            async for r in stmt.cursor(3):
                cur_rows.append(r[0])
        expect("cursor over prepared statement", cur_rows, ["many 3 Grüße"])


async def main():
    r = Report("asyncpg")
    print(f"asyncpg {asyncpg.__version__}", flush=True)
    await r.astep("setup", setup)
    await r.astep("a-types", step_types)
    await r.astep("b-prepared-x20", step_prepared_concurrency)
    await r.astep("c-transactions", step_transactions)
    await r.astep("d-errors", step_errors)
    await r.astep("e-cancel", step_cancel)
    await r.astep("f-copy", step_copy)
    await r.astep("g-settings", step_settings)
    await r.astep("x-pool", step_pool)
    await r.astep("x-executemany", step_executemany)
    await r.astep("x-prepare", step_prepare)
    r.exit()


if __name__ == "__main__":
    asyncio.run(main())
