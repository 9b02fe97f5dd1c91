//! One table of tricky statements with their kind, read-only and cacheable verdicts.

use super::*;

#[test]
fn tricky_statement_table() {
    // (sql, kind tag, read_only, cacheable)
    let cases: &[(&str, &str, bool, bool)] = &[
        ("SELECT 1", "read", true, true),
        ("select * from stock where sku_id = $1", "read", true, true),
        ("SELECT * FROM stock FOR UPDATE", "read", false, false),
        (
            "SELECT * FROM stock FOR NO KEY UPDATE SKIP LOCKED",
            "read",
            false,
            false,
        ),
        ("SELECT * FROM stock FOR KEY SHARE", "read", false, false),
        ("SELECT * FROM stock FOR SHARE", "read", false, false),
        ("SELECT * INTO copy FROM stock", "write", false, false),
        (
            "WITH d AS (DELETE FROM stock RETURNING *) SELECT count(*) FROM d",
            "write",
            false,
            false,
        ),
        (
            "WITH u AS (UPDATE stock SET on_hand = 0 RETURNING *) SELECT 1",
            "write",
            false,
            false,
        ),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "read", true, true),
        ("SELECT nextval('s')", "read", false, false),
        ("SELECT currval('s')", "read", false, false),
        ("SELECT random()", "read", true, false),
        ("SELECT now()", "read", true, false),
        ("SELECT unknown_fn()", "read", false, false),
        ("SELECT pg_advisory_lock(1)", "read", false, false),
        ("SELECT pg_try_advisory_xact_lock(1)", "read", false, false),
        ("SELECT * FROM pg_locks", "read", true, false),
        ("VALUES (1)", "read", true, true),
        ("TABLE stock", "read", true, false),
        ("SHOW work_mem", "read", true, false),
        ("EXPLAIN SELECT * FROM stock", "read", true, false),
        ("EXPLAIN DELETE FROM stock", "read", true, false),
        ("EXPLAIN ANALYZE DELETE FROM stock", "write", false, false),
        (
            "EXPLAIN ANALYZE SELECT * FROM stock FOR UPDATE",
            "read",
            false,
            false,
        ),
        ("INSERT INTO stock VALUES (1)", "write", false, false),
        ("UPDATE stock SET on_hand = 1", "write", false, false),
        ("DELETE FROM stock", "write", false, false),
        (
            "MERGE INTO stock s USING x ON s.id = x.id WHEN MATCHED THEN DELETE",
            "write",
            false,
            false,
        ),
        ("TRUNCATE stock", "write", false, false),
        ("COPY stock FROM STDIN", "write", false, false),
        ("COPY stock TO STDOUT", "read", true, false),
        ("CALL p()", "write", false, false),
        ("DO $$ BEGIN END $$", "write", false, false),
        ("LOCK stock", "write", false, false),
        ("REFRESH MATERIALIZED VIEW mv", "write", false, false),
        ("LISTEN ch", "session", false, false),
        ("UNLISTEN ch", "session", false, false),
        ("NOTIFY ch", "write", false, false),
        ("CREATE TABLE t (a int)", "ddl", false, false),
        ("CREATE TEMP TABLE t (a int)", "ddl", false, false),
        ("DROP TABLE t", "ddl", false, false),
        ("ALTER TABLE t ADD b int", "ddl", false, false),
        ("CREATE SEQUENCE s", "ddl", false, false),
        ("ALTER SEQUENCE s RESTART", "ddl", false, false),
        ("BEGIN", "txn", false, false),
        ("BEGIN READ ONLY", "txn", false, false),
        ("COMMIT", "txn", false, false),
        ("ROLLBACK", "txn", false, false),
        ("SAVEPOINT a", "txn", false, false),
        ("PREPARE TRANSACTION 'x'", "txn", false, false),
        ("SET search_path = app", "session", false, false),
        ("SET LOCAL lock_timeout = '1s'", "session", false, false),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "txn",
            false,
            false,
        ),
        ("RESET ALL", "session", false, false),
        ("DISCARD ALL", "session", false, false),
        ("SET ROLE r", "session", false, false),
        ("SET SESSION AUTHORIZATION u", "session", false, false),
        ("PREPARE q AS SELECT 1", "session", false, false),
        ("EXECUTE q", "session", false, false),
        ("DEALLOCATE q", "session", false, false),
        ("LOAD 'x'", "session", false, false),
        ("VACUUM", "utility", false, false),
        ("CHECKPOINT", "utility", false, false),
        ("DECLARE c CURSOR FOR SELECT 1", "utility", false, false),
        ("FETCH ALL FROM c", "utility", false, false),
        ("SELECT 1; SELECT 2", "read", true, true),
        ("SELECT 1; DELETE FROM t", "write", false, false),
        ("GARBAGE", "unknown", false, false),
        ("SELECT * FROM", "unknown", false, false),
        ("UPDATE SET a = 1", "write", false, false),
    ];
    let tag = |k: &StatementKind| match k {
        StatementKind::Read => "read",
        StatementKind::Write => "write",
        StatementKind::Ddl => "ddl",
        StatementKind::Transaction(_) => "txn",
        StatementKind::Session(_) => "session",
        StatementKind::Utility => "utility",
        StatementKind::Unknown => "unknown",
    };
    assert!(cases.len() >= 60);
    let mut failures = Vec::new();
    for (sql, kind, ro, cacheable) in cases {
        let x = a(sql);
        if tag(&x.kind) != *kind || x.read_only != *ro || x.cacheable() != *cacheable {
            failures.push(format!(
                "{sql}: got kind={} read_only={} cacheable={} (want {kind} {ro} {cacheable}); {:?}",
                tag(&x.kind),
                x.read_only,
                x.cacheable(),
                x.parse_error
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
