//! EXPLAIN, COPY and other commands, parse failures, multi-statement strings, names.

use super::*;

#[test]
fn explain_analyze_of_update_is_a_write() {
    let x = a("EXPLAIN ANALYZE UPDATE stock SET on_hand = 0 WHERE sku_id = 1");
    assert_eq!(x.kind, StatementKind::Write);
    assert!(!x.read_only);
    assert_eq!(x.tables_written, vec![t("stock")]);
    let x = a("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM stock");
    assert!(!x.read_only);
    let x = a("EXPLAIN (ANALYZE true, FORMAT JSON) INSERT INTO t (a) VALUES (1)");
    assert!(!x.read_only);
    let x = a("EXPLAIN ANALYZE SELECT nextval('s')");
    assert!(!x.read_only);
}

#[test]
fn explain_without_analyze_is_read_only() {
    let x = a("EXPLAIN UPDATE stock SET on_hand = 0");
    assert_eq!(x.kind, StatementKind::Read);
    assert!(x.read_only);
    assert!(!x.cacheable());
    assert_eq!(x.tables_read, vec![t("stock")]);
    assert!(x.tables_written.is_empty());
    assert!(a("EXPLAIN (ANALYZE false) DELETE FROM t").read_only);
    assert!(a("EXPLAIN (ANALYZE off, COSTS off) SELECT * FROM t").read_only);
    assert!(a("EXPLAIN ANALYZE SELECT * FROM t").read_only);
}

#[test]
fn copy_from_is_a_write_and_copy_to_stdout_a_read() {
    let x = a("COPY stock (sku_id, on_hand) FROM STDIN WITH (FORMAT csv)");
    assert_eq!(x.kind, StatementKind::Write);
    assert_eq!(x.tables_written, vec![t("stock")]);
    assert!(undeterminable(&x.lock_keys(&t("stock"), STOCK_KEY)));
    let x = a("COPY (SELECT * FROM stock WHERE on_hand > 0) TO STDOUT");
    assert_eq!(x.kind, StatementKind::Read);
    assert!(x.read_only);
    let x = a("COPY stock TO STDOUT");
    assert!(x.read_only);
    let x = a("COPY stock TO '/tmp/stock.csv'");
    assert!(!x.read_only);
}

#[test]
fn postgres_only_commands_are_not_read_only() {
    let cases: &[(&str, StatementKind)] = &[
        ("CALL restock(1, 2)", StatementKind::Write),
        (
            "DO $$ BEGIN UPDATE stock SET on_hand = 0; END $$",
            StatementKind::Write,
        ),
        (
            "LOCK TABLE stock IN ACCESS EXCLUSIVE MODE",
            StatementKind::Write,
        ),
        ("LOCK stock, skus", StatementKind::Write),
        (
            "REFRESH MATERIALIZED VIEW CONCURRENTLY stock_summary",
            StatementKind::Write,
        ),
        ("NOTIFY stock_changed, 'sku 1'", StatementKind::Write),
        ("TRUNCATE stock", StatementKind::Write),
        ("VACUUM ANALYZE stock", StatementKind::Utility),
        ("ANALYZE stock", StatementKind::Utility),
        ("CHECKPOINT", StatementKind::Utility),
        ("REINDEX TABLE stock", StatementKind::Utility),
        ("CLUSTER stock", StatementKind::Utility),
        ("FETCH 10 FROM c", StatementKind::Utility),
        ("CLOSE c", StatementKind::Utility),
        ("CREATE TABLE x (a int)", StatementKind::Ddl),
        ("CREATE UNLOGGED TABLE x (a int)", StatementKind::Ddl),
        ("ALTER TABLE stock ADD COLUMN note text", StatementKind::Ddl),
        ("DROP TABLE IF EXISTS x", StatementKind::Ddl),
        (
            "CREATE INDEX CONCURRENTLY ON stock (sku_id)",
            StatementKind::Ddl,
        ),
        ("CREATE SEQUENCE s", StatementKind::Ddl),
        ("GRANT SELECT ON stock TO reader", StatementKind::Ddl),
        ("COMMENT ON TABLE stock IS 'inventory'", StatementKind::Ddl),
    ];
    for (sql, kind) in cases {
        let x = a(sql);
        assert_eq!(&x.kind, kind, "{sql}");
        assert!(!x.read_only, "{sql}");
        assert!(!x.cacheable(), "{sql}");
    }
    let x = a("LOCK TABLE stock IN SHARE MODE");
    assert!(x.locking);
    assert!(undeterminable(&x.lock_keys(&t("stock"), STOCK_KEY)));
    assert_eq!(
        a("REFRESH MATERIALIZED VIEW stock_summary").tables_written,
        vec![t("stock_summary")]
    );
    assert_eq!(
        a("DROP MATERIALIZED VIEW IF EXISTS a.mv, mv2").tables_written,
        vec![t("a.mv"), t("mv2")]
    );
    assert!(a("DO $$ BEGIN END $$").hidden_writes.is_some());
    assert!(a("CALL restock(1)").hidden_writes.is_some());
}

#[test]
fn listen_notify_unlisten() {
    let x = a("LISTEN stock_changed");
    assert_eq!(
        x.kind,
        StatementKind::Session(SessionEffect::Pin(PinReason::Listen))
    );
    assert!(!x.read_only);
    // Releasing session state (asyncpg's pool reset) does not pin.
    assert!(!a("UNLISTEN *").pins_session());
    assert!(!a("SELECT pg_advisory_unlock_all()").pins_session());
    assert!(!a("SELECT pg_advisory_unlock_all()").read_only);
    assert!(!a("NOTIFY ch").read_only);
    assert!(!a("SELECT pg_notify('ch', 'x')").read_only);
}

#[test]
fn show_values_and_table_are_read_only() {
    for (sql, cacheable) in [
        ("SHOW search_path", false),
        ("SHOW ALL", false),
        ("VALUES (1, 'a'), (2, 'b')", true),
        ("TABLE stock", false),
        ("SELECT 1", true),
        ("(SELECT 1)", true),
    ] {
        let x = a(sql);
        assert_eq!(x.kind, StatementKind::Read, "{sql}");
        assert!(x.read_only, "{sql}");
        assert_eq!(x.cacheable(), cacheable, "{sql}");
    }
    assert_eq!(a("TABLE stock").tables_read, vec![t("stock")]);
    assert!(!a("TABLE stock FOR UPDATE").read_only);
}

#[test]
fn unparseable_sql_is_unknown_and_not_read_only() {
    let x = a("SELEC * FORM stock");
    assert_eq!(x.kind, StatementKind::Unknown);
    assert!(!x.read_only);
    assert!(!x.cacheable());
    assert!(x.parse_error.as_deref().unwrap_or("").contains("SELEC"));
    assert_eq!(x.statements[0].parse, ParseMode::Failed);
    assert!(undeterminable(&x.lock_keys(&t("stock"), STOCK_KEY)));
    let d = x.describe();
    assert!(
        d.contains("kind: unknown") && d.contains("parse_error:"),
        "{d}"
    );
}

#[test]
fn unterminated_literal_is_unknown() {
    for sql in [
        "SELECT 'abc",
        "SELECT \"abc",
        "SELECT 1 /* open",
        "SELECT $$abc",
    ] {
        let x = a(sql);
        assert_eq!(x.kind, StatementKind::Unknown, "{sql}");
        assert!(!x.read_only);
        assert!(x.parse_error.is_some());
    }
}

#[test]
fn empty_string_has_no_statements() {
    for sql in ["", "  ", ";", " -- only a comment\n", "/* x */ ; ;"] {
        let x = a(sql);
        assert!(x.statements.is_empty(), "{sql}");
        assert_eq!(x.kind, StatementKind::Utility);
        assert!(!x.cacheable());
    }
}

#[test]
fn multi_statement_string_with_a_write_is_a_write() {
    let x = a("SELECT 1; UPDATE stock SET on_hand = 1 WHERE sku_id = 2 AND warehouse_id = 3");
    assert_eq!(x.kind, StatementKind::Write);
    assert!(!x.read_only);
    assert!(!x.cacheable());
    assert_eq!(x.statements.len(), 2);
    assert!(x.statements[0].read_only);
    assert!(!x.statements[1].read_only);
    assert_eq!(x.tables_written, vec![t("stock")]);
}

#[test]
fn multi_statement_kinds_combine_by_strength() {
    assert_eq!(a("SELECT 1; SELECT 2").kind, StatementKind::Read);
    assert!(a("SELECT 1; SELECT 2").read_only);
    assert!(a("SELECT 1; SELECT 2").cacheable());
    assert_eq!(a("SET x = 1; SELECT 1").kind.strength(), 3);
    assert_eq!(
        a("BEGIN; SELECT 1").kind,
        StatementKind::Transaction(TxnControl::Begin {
            read_only: None,
            serializable: false
        })
    );
    assert_eq!(
        a("SELECT 1; CREATE TABLE x (a int); INSERT INTO x VALUES (1)").kind,
        StatementKind::Ddl
    );
    assert_eq!(a("SELECT 1; SELEC 2").kind, StatementKind::Unknown);
    let x = a("BEGIN; UPDATE t SET a = 1; COMMIT");
    assert_eq!(x.kind, StatementKind::Write);
    assert_eq!(
        x.txn,
        Some(TxnControl::Begin {
            read_only: None,
            serializable: false
        })
    );
    assert_eq!(x.txn_controls().count(), 2);
}

#[test]
fn system_catalog_reads_are_read_only_but_not_cacheable() {
    for sql in [
        "SELECT * FROM pg_catalog.pg_class",
        "SELECT * FROM pg_stat_activity",
        "SELECT table_name FROM information_schema.tables",
        "SELECT * FROM pg_temp.scratch",
    ] {
        let x = a(sql);
        assert!(x.touches_system_catalog(), "{sql}");
        assert!(x.read_only, "{sql}");
        assert!(!x.cacheable(), "{sql}");
    }
    assert!(!a("SELECT * FROM public.pgx").touches_system_catalog());
}

#[test]
fn table_names_are_normalized_like_postgres() {
    let x = a("SELECT * FROM Public.Stock s JOIN \"Mixed\".\"CaseTab\" m ON true JOIN db.sch.tab ON true JOIN \"a\"\"b\" ON true");
    assert_eq!(
        x.tables_read,
        vec![
            TableRef::new(Some("public"), "stock"),
            TableRef::new(Some("Mixed"), "CaseTab"),
            TableRef::new(Some("sch"), "tab"),
            TableRef::new(None, "a\"b"),
        ]
    );
    assert_eq!(x.tables_read[1].to_string(), "\"Mixed\".\"CaseTab\"");
    assert_eq!(
        TableRef::parse("\"Mixed\".\"CaseTab\""),
        TableRef::new(Some("Mixed"), "CaseTab")
    );
    assert_eq!(
        TableRef::parse("Public.STOCK"),
        TableRef::new(Some("public"), "stock")
    );
    assert!(t("stock").matches(&t("public.stock")));
    assert!(!t("other.stock").matches(&t("public.stock")));
}

#[test]
fn comments_do_not_break_parsing() {
    let x = a("/* leading */ SELECT -- trailing\n a /* nested /* inner */ still */ FROM t WHERE b = 1 -- end");
    assert_eq!(x.kind, StatementKind::Read);
    assert!(x.read_only);
    assert_eq!(x.tables_read, vec![t("t")]);
    assert_eq!(x.normalized, "select a from t where b = ?");
}
