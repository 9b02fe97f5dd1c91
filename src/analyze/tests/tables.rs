//! Tables read and written, locking clauses, CTEs, aliases, joins and subqueries.

use super::*;

#[test]
fn plain_select_is_read_only_and_cacheable() {
    let x = a("SELECT id, name FROM products WHERE id = $1");
    assert_eq!(x.kind, StatementKind::Read);
    assert!(x.read_only);
    assert!(x.cacheable());
    assert_eq!(x.tables_read, vec![t("products")]);
    assert!(x.tables_written.is_empty());
    assert_eq!(x.volatility, Volatility::Immutable);
    assert!(x.parse_error.is_none());
}

#[test]
fn typical_oltp_join_reads_both_tables() {
    let x = a("SELECT p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = $1");
    assert_eq!(x.tables_read, vec![t("products"), t("prices")]);
    assert!(x.read_only && x.cacheable());
    // The join equality carries the key to `prices`.
    assert_eq!(
        x.lock_keys(&t("prices"), &["sku_id"]),
        KeyExtraction::Keys(vec![vec![KeyValue::Param(1)]])
    );
}

#[test]
fn select_for_update_is_not_read_only() {
    let x = a("SELECT * FROM stock WHERE sku_id = $1 FOR UPDATE");
    assert!(x.locking);
    assert!(!x.read_only);
    assert!(!x.cacheable());
    assert_eq!(x.kind, StatementKind::Read);
    assert!(x.reasons.iter().any(|r| r.contains("locking")));
}

#[test]
fn every_locking_strength_is_locking() {
    for sql in [
        "SELECT * FROM t FOR SHARE",
        "SELECT * FROM t FOR NO KEY UPDATE",
        "SELECT * FROM t FOR KEY SHARE NOWAIT",
        "SELECT * FROM t FOR UPDATE OF t SKIP LOCKED",
        "select * from t for no  key   update",
    ] {
        let x = a(sql);
        assert!(x.locking, "{sql}");
        assert!(!x.read_only, "{sql}");
        assert_eq!(
            x.statements[0].parse,
            ParseMode::Parsed,
            "{sql}: {:?}",
            x.parse_error
        );
    }
}

#[test]
fn only_before_a_relation_is_not_the_table_name() {
    let x = a("SELECT * FROM ONLY stock s JOIN ONLY skus ON skus.id = s.sku_id WHERE s.sku_id = 1");
    assert_eq!(x.tables_read, vec![t("stock"), t("skus")]);
    let x = a("UPDATE ONLY stock SET on_hand = 0 WHERE sku_id = 1 AND warehouse_id = 2");
    assert_eq!(x.tables_written, vec![t("stock")]);
    assert_eq!(
        x.lock_keys(&t("stock"), STOCK_KEY),
        KeyExtraction::Keys(vec![vec![lit("1"), lit("2")]])
    );
    let x = a("DELETE FROM ONLY stock WHERE sku_id = 1 AND warehouse_id = 2");
    assert_eq!(x.tables_written, vec![t("stock")]);
    let x = a("SELECT * FROM stock FETCH FIRST 1 ROWS ONLY");
    assert_eq!(x.tables_read, vec![t("stock")]);
    assert!(x.read_only);
}

#[test]
fn explain_analyse_spelling_is_analyze() {
    let x = a("EXPLAIN ANALYSE DELETE FROM stock");
    assert_eq!(x.kind, StatementKind::Write);
    assert_eq!(x.tables_written, vec![t("stock")]);
}

#[test]
fn select_into_creates_a_table_and_is_a_write() {
    let x = a("SELECT a, b INTO archive FROM t");
    assert_eq!(x.kind, StatementKind::Write);
    assert!(!x.read_only);
    assert_eq!(x.tables_written, vec![t("archive")]);
    assert_eq!(x.tables_read, vec![t("t")]);
    assert!(x.session.is_none());
}

#[test]
fn select_into_temp_pins_session() {
    let x = a("SELECT a INTO TEMP newt FROM t");
    assert_eq!(x.session, Some(SessionEffect::Pin(PinReason::TempObject)));
    assert!(x.pins_session());
}

#[test]
fn data_modifying_cte_is_a_write_to_the_deleted_table() {
    let x = a("WITH gone AS (DELETE FROM stock WHERE sku_id = 7 RETURNING *) SELECT * FROM gone");
    assert_eq!(x.kind, StatementKind::Write);
    assert!(!x.read_only);
    assert_eq!(x.tables_written, vec![t("stock")]);
    assert!(
        x.tables_read.is_empty(),
        "the CTE name is not a table: {:?}",
        x.tables_read
    );
    assert_eq!(x.statements[0].parse, ParseMode::Parsed);
    assert_eq!(
        x.lock_keys(&t("stock"), &["sku_id"]),
        KeyExtraction::Keys(vec![vec![lit("7")]])
    );
}

#[test]
fn data_modifying_cte_with_update_or_insert_is_a_write() {
    let x = a("WITH u AS (UPDATE stock SET on_hand = 0 WHERE sku_id = 1 RETURNING sku_id) SELECT * FROM u JOIN skus s ON s.id = u.sku_id");
    assert_eq!(x.kind, StatementKind::Write);
    assert_eq!(x.tables_written, vec![t("stock")]);
    assert_eq!(x.tables_read, vec![t("skus")]);
    let x = a("WITH i AS (INSERT INTO log (msg) VALUES ('x') RETURNING id) SELECT id FROM i");
    assert_eq!(x.tables_written, vec![t("log")]);
    assert!(!x.read_only);
}

#[test]
fn with_clause_before_delete_is_analyzed() {
    let x = a("WITH old AS (SELECT id FROM orders WHERE placed < $1) DELETE FROM order_lines WHERE order_id IN (SELECT id FROM old)");
    assert_eq!(x.kind, StatementKind::Write);
    assert_eq!(x.tables_written, vec![t("order_lines")]);
    assert_eq!(x.tables_read, vec![t("orders")]);
    assert_eq!(x.statements[0].verb, "DELETE");
}

#[test]
fn cte_name_is_not_a_table() {
    let x = a("WITH recent AS (SELECT * FROM orders WHERE placed > now() - interval '1 day') SELECT * FROM recent r JOIN customers c ON c.id = r.customer_id");
    assert_eq!(x.tables_read, vec![t("orders"), t("customers")]);
    assert!(!x.tables_read.contains(&t("recent")));
}

#[test]
fn cte_does_not_shadow_the_table_inside_its_own_body() {
    // Non-recursive: the inner `t` is the real table.
    let x = a("WITH t AS (SELECT * FROM t WHERE a > 1) SELECT * FROM t");
    assert_eq!(x.tables_read, vec![t("t")]);
    // A schema-qualified name is never a CTE.
    let x = a("WITH t AS (SELECT 1) SELECT * FROM t, public.t");
    assert_eq!(x.tables_read, vec![t("public.t")]);
}

#[test]
fn recursive_cte_self_reference_is_not_a_table() {
    let x = a("WITH RECURSIVE tree AS (SELECT id, parent FROM nodes WHERE id = $1 UNION ALL SELECT n.id, n.parent FROM nodes n JOIN tree ON n.parent = tree.id) SELECT * FROM tree");
    assert_eq!(x.tables_read, vec![t("nodes")]);
}

#[test]
fn alias_is_not_a_table() {
    let x =
        a("SELECT o.id FROM orders AS o JOIN customers c ON c.id = o.customer_id WHERE o.id = 1");
    assert_eq!(x.tables_read, vec![t("orders"), t("customers")]);
    assert!(!x.tables_read.contains(&t("o")) && !x.tables_read.contains(&t("c")));
}

#[test]
fn subqueries_joins_exists_lateral_and_set_ops_are_walked() {
    let x = a("SELECT * FROM a LEFT JOIN b ON b.id = a.id \
               WHERE a.x IN (SELECT y FROM c) AND EXISTS (SELECT 1 FROM d WHERE d.id = a.id) \
               UNION SELECT * FROM e, LATERAL (SELECT * FROM f WHERE f.k = e.k) lf \
               EXCEPT SELECT * FROM (SELECT * FROM g) sub");
    for name in ["a", "b", "c", "d", "e", "f", "g"] {
        assert!(
            x.tables_read.contains(&t(name)),
            "{name} missing from {:?}",
            x.tables_read
        );
    }
    assert_eq!(x.tables_read.len(), 7);
    assert!(x.read_only);
}

#[test]
fn scalar_subquery_in_projection_and_functions_in_from_are_walked() {
    let x = a("SELECT (SELECT max(amount) FROM prices WHERE prices.sku_id = s.id) FROM skus s, generate_series(1, 3) g, unnest($1::int[]) u");
    // FROM items are discovered first.
    assert_eq!(x.tables_read, vec![t("skus"), t("prices")]);
    assert!(x.functions.contains(&"generate_series".to_owned()));
    assert!(x.functions.contains(&"unnest".to_owned()));
    assert!(x.functions.contains(&"max".to_owned()));
}

#[test]
fn insert_select_reads_its_source_and_writes_its_target() {
    let x = a("INSERT INTO archive (id, total) SELECT o.id, sum(l.amount) FROM orders o JOIN lines l ON l.order_id = o.id GROUP BY o.id");
    assert_eq!(x.tables_written, vec![t("archive")]);
    assert_eq!(x.tables_read, vec![t("orders"), t("lines")]);
    assert_eq!(x.kind, StatementKind::Write);
}

#[test]
fn update_from_and_delete_using_read_the_other_tables() {
    let x = a("UPDATE stock s SET on_hand = s.on_hand - o.qty FROM orders o WHERE o.sku_id = s.sku_id AND o.id = $1");
    assert_eq!(x.tables_written, vec![t("stock")]);
    assert_eq!(x.tables_read, vec![t("orders")]);
    let x = a("DELETE FROM stock USING skus WHERE skus.id = stock.sku_id AND skus.retired");
    assert_eq!(x.tables_written, vec![t("stock")]);
    assert_eq!(x.tables_read, vec![t("skus")]);
}

#[test]
fn merge_writes_target_and_reads_source() {
    let x = a("MERGE INTO stock s USING incoming i ON s.sku_id = i.sku_id WHEN MATCHED THEN UPDATE SET on_hand = i.on_hand WHEN NOT MATCHED THEN INSERT (sku_id, on_hand) VALUES (i.sku_id, i.on_hand)");
    assert_eq!(x.kind, StatementKind::Write);
    assert_eq!(x.tables_written, vec![t("stock")]);
    assert_eq!(x.tables_read, vec![t("incoming")]);
}
