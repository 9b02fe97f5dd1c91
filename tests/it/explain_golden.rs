//! `pgsidecar explain` for a table of tricky statements, against the example configuration
//! (its routing rules, cache rule and inventory lock rule). The golden file is meant to be read
//! by a reviewer: it shows, per statement, the analysis, the rule, the route and why.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test --test it explain_golden::`.

use pgsidecar::config::Config;
use pgsidecar::route::Who;

const STATEMENTS: &[&str] = &[
    "SELECT p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = $1",
    "SELECT * FROM inventory WHERE sku_id = 1 AND warehouse_id = 2 FOR UPDATE",
    "SELECT nextval('orders_order_id_seq')",
    "SELECT 1 INTO new_table",
    "WITH gone AS (DELETE FROM carts WHERE id = 1 RETURNING *) SELECT count(*) FROM gone",
    "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent r JOIN customers c ON c.id = r.customer_id",
    "SELECT my_volatile_function()",
    "SELECT now(), random()",
    "EXPLAIN ANALYZE UPDATE prices SET amount = 1 WHERE sku_id = 1",
    "EXPLAIN SELECT * FROM products",
    "COPY inventory FROM STDIN",
    "COPY (SELECT * FROM products) TO STDOUT",
    "CALL refresh_stock()",
    "DO $$ BEGIN PERFORM 1; END $$",
    "LOCK TABLE inventory IN EXCLUSIVE MODE",
    "REFRESH MATERIALIZED VIEW category_counts",
    "LISTEN stock_changed",
    "NOTIFY stock_changed",
    "BEGIN READ ONLY",
    "SELECT gid FROM pg_prepared_xacts",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
    "BEGIN",
    "SET search_path TO shop, public",
    "SET LOCAL statement_timeout = '5s'",
    "CREATE TEMP TABLE scratch(id int)",
    "SELECT pg_advisory_lock(42)",
    "/* pgsidecar: route=replica */ SELECT * FROM orders WHERE id = 7",
    "/* pgsidecar: cache=off */ SELECT amount FROM prices WHERE sku_id = 3",
    "UPDATE inventory SET on_hand = on_hand - 1 WHERE (sku_id, warehouse_id) IN ((7, 1), (3, 2), (7, 1))",
    "INSERT INTO inventory (sku_id, warehouse_id, on_hand) VALUES (1, 1, 5), (2, 1, 5) ON CONFLICT (sku_id, warehouse_id) DO UPDATE SET on_hand = EXCLUDED.on_hand",
    "UPDATE inventory SET on_hand = 0 WHERE on_hand < 5",
    "SELECT on_hand FROM inventory WHERE sku_id = 9 AND warehouse_id = 1",
    "SELEC broken syntax here",
];

#[test]
fn explain_output_matches_the_golden_file() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cfg = Config::load(std::path::Path::new(&format!(
        "{root}/config/pgsidecar.toml"
    )))
    .expect("example config");
    cfg.upstream.replicas = vec![
        "postgres://replica-1:5432".into(),
        "postgres://replica-2:5432".into(),
    ];
    let who = Who {
        user: "app",
        database: "shop",
        application_name: "checkout",
    };
    let mut out = String::new();
    for sql in STATEMENTS {
        out.push_str(&format!("=== {sql}\n"));
        out.push_str(&pgsidecar::explain::explain(&cfg, sql, &who));
        out.push('\n');
    }
    let path = format!("{root}/tests/golden/explain.txt");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, &out).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .expect("golden file (run with UPDATE_GOLDEN=1 to create it)");
    if golden != out {
        let first = golden
            .lines()
            .zip(out.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "explain output changed at line {}:\n  golden: {:?}\n  now:    {:?}\n(UPDATE_GOLDEN=1 regenerates after review)",
            first + 1,
            golden.lines().nth(first),
            out.lines().nth(first)
        );
    }
}
