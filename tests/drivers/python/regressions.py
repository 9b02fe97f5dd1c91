"""Issue 17 regressions: driver sequences that once made a client wait forever (or fail) through
pgsidecar with replicas configured. Run by `tests/it/nohang.rs`, one case per process:

    PGSIDECAR_DSN=postgres://user:pw@host:port/db python regressions.py CASE [TIMEOUT_S]

Prints `ok CASE` and exits 0 when the case did what Postgres alone does; any failure raises
(exit 1). A case still running after TIMEOUT_S (default 30) dumps its stack ("Timeout") and
exits 1 too: a hang.
"""

import asyncio
import faulthandler
import os
import sys

DSN = os.environ["PGSIDECAR_DSN"]

# Checks of what was written read on the primary: they verify the data, not routing
# (read-your-writes under synchronous_commit = off is issue 13's, tested elsewhere).
PRIMARY = "/* pgsidecar: route=primary */ "


def settle():
    """After DDL, before a replica reads the new objects: longer than wal_writer_delay, so the
    replicas have them whatever synchronous_commit says (the commit position the sidecar waits
    for under `off` is issue 13's)."""
    import time

    time.sleep(0.5)


# ---- asyncpg ---------------------------------------------------------------------------------
async def copy_records():
    """copy_records_to_table: asyncpg prepares `SELECT cols FROM t LIMIT 1` (a read: a replica
    runs it) and then sends `COPY "t" FROM STDIN (FORMAT binary)` as a simple Query."""
    import asyncpg

    con = await asyncpg.connect(DSN, timeout=10)
    try:
        await con.execute("DROP TABLE IF EXISTS nh_copy")
        await con.execute("CREATE TABLE nh_copy (id int, v numeric)")
        settle()
        for round_ in range(3):
            res = await con.copy_records_to_table(
                "nh_copy", records=[(i, i) for i in range(3000)], timeout=20
            )
            assert res == "COPY 3000", res
            n = await con.fetchval(PRIMARY + "SELECT count(*) FROM nh_copy")
            assert n == 3000 * (round_ + 1), n
        # The same through a pool (statement cache shared, backends vary).
        pool = await asyncpg.create_pool(DSN, min_size=2, max_size=4, timeout=10)
        try:
            async def one(k):
                async with pool.acquire() as c:
                    await c.copy_records_to_table(
                        "nh_copy", records=[(k, k)] * 100, columns=["id", "v"], timeout=20
                    )
            await asyncio.gather(*(one(k) for k in range(8)))
        finally:
            await pool.close()
        n = await con.fetchval(PRIMARY + "SELECT count(*) FROM nh_copy")
        assert n == 9000 + 800, n
    finally:
        await con.close(timeout=5)


async def enum_recreate_asyncpg():
    """A statement prepared (and cached by asyncpg) before an enum type is dropped and
    recreated under the same name, prepared again after it: SQLAlchemy's asyncpg dialect calls
    `reload_schema_state()` after DDL, which drops asyncpg's statement cache, so asyncpg parses
    the same text again. Against Postgres alone that Parse plans against the new type."""
    import asyncpg

    con = await asyncpg.connect(DSN, timeout=10)
    other = await asyncpg.connect(DSN, timeout=10)
    try:
        for i in range(5):
            await con.execute("DROP TABLE IF EXISTS nh_enum_t")
            await con.execute("DROP TYPE IF EXISTS nh_mood")
            await con.execute("CREATE TYPE nh_mood AS ENUM ('sad', 'ok', 'happy')")
            await con.execute("CREATE TABLE nh_enum_t (id int, m nh_mood)")
            settle()
            await con.reload_schema_state()
            await other.reload_schema_state()
            for c in (con, other):
                await c.execute("INSERT INTO nh_enum_t VALUES ($1, $2)", i, "ok")
                # On a replica (the statement's enum parameter planned there too).
                got = await c.fetch("SELECT m FROM nh_enum_t WHERE id = $1 AND m = $2", i, "ok")
                assert all(r[0] == "ok" for r in got), got
                got = await c.fetch(PRIMARY + "SELECT m FROM nh_enum_t WHERE id = $1", i)
                assert [r[0] for r in got] in (["ok"], ["ok", "ok"]), got
    finally:
        await con.close(timeout=5)
        await other.close(timeout=5)


# ---- psycopg 3 -------------------------------------------------------------------------------
def pipeline_executemany():
    """psycopg's pipeline mode: executemany (which uses the pipeline by itself), explicit
    pipelines mixing reads and writes, and prepared statements past prepare_threshold."""
    import psycopg

    with psycopg.connect(DSN, autocommit=True, connect_timeout=10) as c:
        c.execute("DROP TABLE IF EXISTS nh_pipe")
        c.execute("CREATE TABLE nh_pipe (id int PRIMARY KEY, v text)")
        settle()
        with c.cursor() as cur:
            cur.executemany(
                "INSERT INTO nh_pipe (id, v) VALUES (%s, %s)", [(i, f"v{i}") for i in range(200)]
            )
            cur.executemany(
                "INSERT INTO nh_pipe (id, v) VALUES (%s, %s) RETURNING id",
                [(i, f"r{i}") for i in range(200, 260)],
                returning=True,
            )
            got = []
            while True:
                got.append(cur.fetchone()[0])
                if not cur.nextset():
                    break
            assert got == list(range(200, 260)), got[:5]
            # Explicit pipeline: reads (replica-eligible) and writes interleaved, several times,
            # past prepare_threshold so psycopg prepares named statements inside the pipeline.
            for round_ in range(8):
                with c.pipeline():
                    cur.execute("SELECT count(*) FROM nh_pipe")
                    cur.execute("UPDATE nh_pipe SET v = %s WHERE id = %s", (f"u{round_}", round_))
                    cur.execute(PRIMARY + "SELECT v FROM nh_pipe WHERE id = %s", (round_,))
                    assert cur.fetchone() == (f"u{round_}",)
            cur.execute(PRIMARY + "SELECT count(*) FROM nh_pipe")
            assert cur.fetchone() == (260,)
            # A read fetched inside the pipeline (psycopg sends Flush, not Sync: the read runs
            # on a replica, its batch left open), then a write in the same pipeline.
            for round_ in range(4):
                with c.pipeline():
                    cur.execute("SELECT %s::int + 1", (round_,))  # a replica read
                    assert cur.fetchone() == (round_ + 1,)
                    cur.execute(
                        "UPDATE nh_pipe SET v = %s WHERE id = %s", (f"f{round_}", 150 + round_)
                    )
                cur.execute(PRIMARY + "SELECT v FROM nh_pipe WHERE id = %s", (150 + round_,))
                assert cur.fetchone() == (f"f{round_}",)
        # Inside a transaction.
        with c.transaction(), c.cursor() as cur:
            cur.executemany(
                "UPDATE nh_pipe SET v = %s WHERE id = %s", [(f"t{i}", i) for i in range(50)]
            )
        with c.cursor() as cur:
            cur.execute(PRIMARY + "SELECT count(*) FROM nh_pipe WHERE v LIKE 't%%'")
            assert cur.fetchone() == (50,)
            # An error inside a pipeline: the rest of it is skipped, the connection usable.
            try:
                with c.pipeline():
                    cur.execute("SELECT 1")
                    cur.execute("SELECT 1/0")
                    cur.execute("SELECT 2")
                raise AssertionError("division by zero not raised")
            except psycopg.errors.DivisionByZero:
                pass
            cur.execute("SELECT 3")
            assert cur.fetchone() == (3,)


def enum_recreate_psycopg():
    """psycopg prepares a statement after prepare_threshold (5) runs. A DROP makes psycopg
    discard its prepared statements (DEALLOCATE ALL); the enum is recreated under the same
    name and the same statements are prepared again — against Postgres alone, planned with
    the new type. A second connection's statements must not be stale either."""
    import psycopg

    conns = [psycopg.connect(DSN, autocommit=True, connect_timeout=10) for _ in range(2)]
    try:
        c = conns[0]
        for i in range(6):
            # Each DROP text new to psycopg, so that it sees the DROP and deallocates.
            c.execute(f"DROP TABLE IF EXISTS nh_enum_p /* {i} */")
            c.execute(f"DROP TYPE IF EXISTS nh_mood_p /* {i} */")
            c.execute("CREATE TYPE nh_mood_p AS ENUM ('sad', 'ok', 'happy')")
            c.execute("CREATE TABLE nh_enum_p (id int, m nh_mood_p)")
            settle()
            for k, conn in enumerate(conns):
                if k:
                    conn.execute(f"DROP TABLE IF EXISTS nh_nothing /* {i} */")  # deallocates
                for j in range(7):
                    conn.execute("INSERT INTO nh_enum_p VALUES (%s, %s)", (j, "happy"))
                    got = conn.execute(
                        PRIMARY + "SELECT m::text FROM nh_enum_p WHERE id = %s LIMIT 1", (j,)
                    ).fetchone()
                    assert got == ("happy",), got
                    # On a replica: the enum-typed parameter planned there.
                    conn.execute("SELECT count(*) FROM nh_enum_p WHERE m = %s", ("happy",))
            got = c.execute(
                PRIMARY + "SELECT count(*) FROM nh_enum_p WHERE m = %s", ("happy",)
            ).fetchone()
            assert got == (14,), got
    finally:
        for conn in conns:
            conn.close()


def enum_array_executemany():
    """compat finding F1 (SQLAlchemy's ArrayEnum / ArrayRoundTrip tests): a fresh connection per
    round drops and recreates an enum, then executemany (psycopg prepares it) inserts arrays of
    it. The proxy-wide statement is the same text every round; the backends hold old plans."""
    import psycopg

    for round_ in range(4):
        with psycopg.connect(DSN, autocommit=True, connect_timeout=10) as c:
            c.execute("DROP TABLE IF EXISTS nh_t_enum; DROP TYPE IF EXISTS nh_e_enum")
            c.execute("CREATE TYPE nh_e_enum AS ENUM ('a', 'b')")
            c.execute("CREATE TABLE nh_t_enum (x nh_e_enum[])")
            settle()
            c.cursor().executemany(
                "INSERT INTO nh_t_enum (x) VALUES (%s::nh_e_enum[])", [(["a"],), (["a", "b"],)] * 4
            )
            got = c.execute(PRIMARY + "SELECT count(*) FROM nh_t_enum").fetchone()
            assert got == (8,), got


def external_ddl_heal():
    """DDL made outside the sidecar (PRIMARY_DSN: the primary itself) drops and recreates an
    enum under statements prepared through the sidecar on replica backends. The sidecar cannot
    know in advance; the replica answers `cache lookup failed`, and the read — nothing of which
    reached the client — runs again on the primary, re-prepared."""
    import time

    import psycopg

    ddl = (
        "DROP TABLE IF EXISTS nh_ext; DROP TYPE IF EXISTS nh_ext_e; "
        "CREATE TYPE nh_ext_e AS ENUM ('a', 'b'); CREATE TABLE nh_ext (m nh_ext_e); "
        "INSERT INTO nh_ext VALUES ('a'), ('a'), ('b'); "
        "SET synchronous_commit = on; SELECT pg_current_wal_insert_lsn()"
    )
    with psycopg.connect(os.environ["PRIMARY_DSN"], autocommit=True) as d, psycopg.connect(
        DSN, autocommit=True, connect_timeout=10
    ) as c:
        d.execute(ddl)
        for round_ in range(3):
            time.sleep(1.0)  # replicas replay the DDL
            for _ in range(12):  # prepared after 5 runs; several replica backends
                got = c.execute("SELECT count(*) FROM nh_ext WHERE m = %s", ("a",)).fetchone()
                assert got == (2,), got
            d.execute(ddl)


CASES = {
    "copy_records": copy_records,
    "enum_recreate_asyncpg": enum_recreate_asyncpg,
    "pipeline_executemany": pipeline_executemany,
    "enum_recreate_psycopg": enum_recreate_psycopg,
    "enum_array_executemany": enum_array_executemany,
    "external_ddl_heal": external_ddl_heal,
}


def main():
    case = sys.argv[1]
    limit = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    faulthandler.dump_traceback_later(limit, exit=True)
    fn = CASES[case]
    if asyncio.iscoroutinefunction(fn):
        asyncio.run(fn())
    else:
        fn()
    faulthandler.cancel_dump_traceback_later()
    print(f"ok {case}", flush=True)


if __name__ == "__main__":
    main()
