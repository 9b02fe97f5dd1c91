//! Behaviour tests for statement analysis. Golden file: tests/analyze_golden/statements.txt
//! (regenerate with `UPDATE_GOLDEN=1 cargo test --lib analyze::`).
//! One file per behaviour area; the helpers and the golden file live here.

mod analyzer;
mod functions;
mod hints;
mod lexing;
mod lock_keys;
mod robustness;
mod session;
mod statements;
mod tables;
mod tricky;

use std::sync::Arc;

use super::*;

fn cat() -> FunctionCatalog {
    FunctionCatalog::builtin()
}

fn a(sql: &str) -> Arc<Analysis> {
    analyze(sql, &cat())
}

fn t(s: &str) -> TableRef {
    TableRef::parse(s)
}

fn lit(s: &str) -> KeyValue {
    KeyValue::Literal(s.to_owned())
}

fn keys(sql: &str, table: &str, cols: &[&str]) -> KeyExtraction {
    a(sql).lock_keys(&t(table), cols)
}

const STOCK_KEY: &[&str] = &["sku_id", "warehouse_id"];

fn stock_keys(sql: &str) -> KeyExtraction {
    keys(sql, "stock", STOCK_KEY)
}

fn undeterminable(k: &KeyExtraction) -> bool {
    matches!(k, KeyExtraction::Undeterminable(_))
}

// ------------------------------------------------------------------ golden file

const GOLDEN: &[&str] = &[
    "SELECT p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = $1",
    "SELECT * FROM stock WHERE sku_id = $1 AND warehouse_id = $2 FOR NO KEY UPDATE",
    "WITH gone AS (DELETE FROM stock WHERE sku_id = 7 RETURNING *) SELECT * FROM gone",
    "WITH old AS (SELECT id FROM orders WHERE placed < now() - interval '30 days') DELETE FROM order_lines WHERE order_id IN (SELECT id FROM old)",
    "INSERT INTO stock (sku_id, warehouse_id, on_hand) VALUES (1, 'W1', 5), ($1, $2, $3) ON CONFLICT (sku_id, warehouse_id) DO UPDATE SET on_hand = stock.on_hand + EXCLUDED.on_hand",
    "UPDATE stock SET on_hand = on_hand - $3 WHERE sku_id = ANY($1) AND warehouse_id = $2 AND on_hand >= $3",
    "UPDATE stock SET on_hand = 0 WHERE on_hand < 5",
    "DELETE FROM stock WHERE (sku_id, warehouse_id) IN ((1, 2), (3, 4))",
    "UPDATE stock s SET on_hand = s.on_hand - o.qty FROM orders o WHERE s.sku_id = o.sku_id AND o.id = $1",
    "MERGE INTO stock s USING incoming i ON s.sku_id = i.sku_id WHEN MATCHED THEN UPDATE SET on_hand = i.on_hand",
    "SELECT a, b INTO TEMP scratch FROM t",
    "SELECT nextval('order_seq'), now(), random()",
    "SELECT compute_discount(o.total) FROM orders o",
    "SELECT pg_advisory_lock(hashtext('stock'))",
    "SELECT set_config('search_path', 'app, public', false)",
    "EXPLAIN ANALYZE UPDATE stock SET on_hand = 0 WHERE sku_id = 1",
    "EXPLAIN (FORMAT JSON) DELETE FROM stock WHERE sku_id = 1",
    "COPY stock (sku_id, on_hand) FROM STDIN WITH (FORMAT csv)",
    "COPY (SELECT * FROM stock) TO STDOUT",
    "CALL restock(1, 2)",
    "DO $$ BEGIN UPDATE stock SET on_hand = 0; END $$",
    "LOCK TABLE stock IN SHARE ROW EXCLUSIVE MODE",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY stock_summary",
    "LISTEN stock_changed",
    "NOTIFY stock_changed, 'sku 1'",
    "BEGIN READ ONLY",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY",
    "SET TRANSACTION READ ONLY",
    "ABORT",
    "PREPARE TRANSACTION 'tx-42'",
    "COMMIT PREPARED 'tx-42'",
    "SET LOCAL statement_timeout = '5s'",
    "SET search_path TO \"$user\", public",
    "SET TIME ZONE 'UTC'",
    "SET NAMES 'UTF8'",
    "SET ROLE admin",
    "SET SESSION AUTHORIZATION bob",
    "RESET ALL",
    "DISCARD ALL",
    "CREATE TEMP TABLE scratch (a int)",
    "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM stock",
    "PREPARE get_stock (int) AS SELECT * FROM stock WHERE sku_id = $1",
    "LOAD 'auto_explain'",
    "SHOW search_path",
    "TABLE stock",
    "VALUES (1, 'a'), (2, 'b')",
    "SELECT * FROM pg_catalog.pg_class c JOIN information_schema.tables t ON t.table_name = c.relname",
    "/* pgsidecar: route=replica cache=on cache_ttl=30s lock=off shard=7 */ SELECT * FROM prices WHERE sku_id = $1",
    "SELECT 1; UPDATE stock SET on_hand = 1 WHERE sku_id = 2 AND warehouse_id = 3; COMMIT",
    "VACUUM ANALYZE stock",
    "SELEC * FORM stock",
    "",
];

fn golden_text() -> String {
    let mut out = String::from(
        "# Statement analysis golden file: input SQL, then Analysis::describe().\n\
         # Regenerate: UPDATE_GOLDEN=1 cargo test --lib analyze::tests::golden_file_matches\n\n",
    );
    for sql in GOLDEN {
        out.push_str("== ");
        out.push_str(sql);
        out.push('\n');
        out.push_str(&a(sql).describe());
        let k = a(sql).lock_keys(&t("stock"), STOCK_KEY);
        out.push_str(&format!(
            "lock_keys(stock; sku_id, warehouse_id): {k:?}\n\n"
        ));
    }
    out
}

#[test]
fn golden_file_matches() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/analyze_golden/statements.txt");
    let text = golden_text();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if want != text {
        let diff: Vec<String> = want
            .lines()
            .zip(text.lines())
            .enumerate()
            .filter(|(_, (w, g))| w != g)
            .take(10)
            .map(|(i, (w, g))| format!("line {}:\n  want: {w}\n  got:  {g}", i + 1))
            .collect();
        panic!(
            "golden file differs (UPDATE_GOLDEN=1 regenerates):\n{}",
            diff.join("\n")
        );
    }
}
