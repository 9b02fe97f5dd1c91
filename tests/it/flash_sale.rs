//! The flash-sale oversell: the naive checkout of scripts/flash-sale/checkout.sql (read the
//! stock, check it in the app, write back the value read minus one) run by 32 concurrent
//! pgbench buyers on 3 hot SKUs with 10 units each. Directly on Postgres it sells more than
//! the stock (the test proves the race is real, so the second test can fail); through a
//! sidecar with `[[locks]] table = "inventory"` it must sell exactly the stock.
//! Same script as scripts/flash-sale.sh; a small catalog (sql/schema.sql + a few rows), not the
//! 80,000-SKU demo data.

use crate::support;

use std::path::Path;
use std::process::Command;

use crate::support::{lab, pgbench, Node, SidecarConfig, APP_PASSWORD, APP_USER};

const HOT_SKUS: i64 = 3;
const STOCK: i64 = 10;
const CUSTOMERS: i64 = 50;
const BUYERS: u32 = 32;
const SECONDS: u32 = 5;
/// App latency between the stock read and the write (`\sleep :think_ms ms` in the script).
const THINK_MS: u32 = 1;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh database with the demo schema, owned and filled by `app`: 20 products (SKUs 1..3
/// hot), prices, 2 warehouses, stock in warehouse 1 (hot SKUs: STOCK units), 50 customers.
fn shop_db(prefix: &str) -> String {
    let l = lab();
    let db = l.fresh_db(prefix);
    let schema =
        std::fs::read_to_string(repo().join("sql/schema.sql")).expect("read sql/schema.sql");
    let app = |sql: &str| {
        support::psql_as(l.primary_port(), APP_USER, APP_PASSWORD, &db, sql)
            .unwrap_or_else(|e| panic!("setting up {db}: {e}"))
    };
    app(&format!("SET client_min_messages = warning;\n{schema}"));
    app(&format!(
        "INSERT INTO categories (category_id, name, slug) VALUES (1, 'Deals', 'deals');
         INSERT INTO products (sku_id, name, category_id)
           SELECT s, CASE WHEN s <= {HOT_SKUS} THEN 'Flash Deal: item ' ELSE 'Item ' END || s, 1
             FROM generate_series(1, 20) s;
         INSERT INTO prices (sku_id, amount, list_amount)
           SELECT s, CASE WHEN s <= {HOT_SKUS} THEN 9.99 ELSE 19.99 + s END,
                  CASE WHEN s <= {HOT_SKUS} THEN 49.99 END
             FROM generate_series(1, 20) s;
         INSERT INTO warehouses VALUES (1, 'EWR1', 'us-east'), (2, 'ORD1', 'us-central');
         INSERT INTO inventory (sku_id, warehouse_id, on_hand)
           SELECT s, w, CASE WHEN w = 1 AND s <= {HOT_SKUS} THEN {STOCK} WHEN s <= {HOT_SKUS} THEN 0 ELSE 100 END
             FROM generate_series(1, 20) s, generate_series(1, 2) w;
         INSERT INTO customers (email, full_name)
           SELECT 'customer' || c || '@example.com', 'Customer ' || c FROM generate_series(1, {CUSTOMERS}) c;"
    ));
    l.wait_replicas_caught_up();
    db
}

/// Runs checkout.sql with BUYERS clients for SECONDS against 127.0.0.1:`port` as `app`;
/// returns pgbench's report. Panics unless pgbench completed without failed transactions.
fn run_checkout(port: u16, db: &str, target: &str) -> String {
    let script = repo().join("scripts/flash-sale/checkout.sql");
    let out = Command::new(pgbench())
        .args([
            "-n",
            "-r",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            APP_USER,
        ])
        .args([
            "-c",
            &BUYERS.to_string(),
            "-j",
            "2",
            "-T",
            &SECONDS.to_string(),
        ])
        .args(["-D", &format!("hot_skus={HOT_SKUS}")])
        .args(["-D", &format!("customers={CUSTOMERS}")])
        .args(["-D", &format!("think_ms={THINK_MS}")])
        .arg("-f")
        .arg(&script)
        .arg(db)
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGSSLMODE", "disable")
        .env_remove("PGOPTIONS")
        .output()
        .expect("run pgbench");
    let (report, _) = support::pgbench_completed(&out, &format!("checkout.sql {target}"));
    report
}

#[derive(Debug)]
struct Tally {
    /// Orders placed for the hot SKUs (each one line of qty 1).
    orders: i64,
    /// Initial stock minus the final on_hand, summed over the hot SKUs.
    stock_sold: i64,
    /// Sum over hot SKUs of max(0, orders - STOCK).
    oversold: i64,
    min_on_hand: i64,
    per_sku: String,
}

/// Orders and stock of the hot SKUs, read on the primary (same query as flash-sale.sh).
fn tally(db: &str) -> Tally {
    let out = lab()
        .psql(
            Node::Primary,
            db,
            &format!(
                "SELECT i.sku_id, i.on_hand, coalesce(o.orders, 0)
                   FROM inventory i
                   LEFT JOIN (SELECT ol.sku_id, count(DISTINCT ol.order_id) AS orders
                                FROM order_lines ol JOIN payments p USING (order_id)
                               WHERE p.external_ref LIKE 'flash-sale:%'
                               GROUP BY ol.sku_id) o USING (sku_id)
                  WHERE i.sku_id BETWEEN 1 AND {HOT_SKUS} AND i.warehouse_id = 1
                  ORDER BY i.sku_id"
            ),
        )
        .unwrap_or_else(|e| panic!("tally: {e}"));
    let mut t = Tally {
        orders: 0,
        stock_sold: 0,
        oversold: 0,
        min_on_hand: i64::MAX,
        per_sku: String::new(),
    };
    for line in out.lines() {
        let f: Vec<i64> = line
            .split('|')
            .map(|v| v.parse().expect("integer column"))
            .collect();
        let (sku, on_hand, orders) = (f[0], f[1], f[2]);
        t.orders += orders;
        t.stock_sold += STOCK - on_hand;
        t.oversold += (orders - STOCK).max(0);
        t.min_on_hand = t.min_on_hand.min(on_hand);
        t.per_sku += &format!("sku {sku}: {orders} orders, on_hand {on_hand}; ");
    }
    assert_eq!(
        out.lines().count() as i64,
        HOT_SKUS,
        "tally: inventory rows of the hot SKUs:\n{out}"
    );
    // Every order line is also a payment of the right processor set and amount.
    let bad = lab()
        .psql(
            Node::Primary,
            db,
            "SELECT count(*) FROM orders o JOIN order_lines ol USING (order_id) JOIN payments p USING (order_id)
              WHERE o.total <> ol.unit_price OR p.amount <> o.total OR p.external_ref <> 'flash-sale:' || o.order_id",
        )
        .unwrap();
    assert_eq!(bad, "0", "orders, order lines and payments disagree");
    t
}

#[test]
fn naive_checkout_oversells_on_direct_postgres() {
    let db = shop_db("flash_direct");
    let report = run_checkout(lab().primary_port(), &db, "directly on the primary");
    let t = tally(&db);
    eprintln!("direct Postgres: {t:?}");
    assert!(
        t.oversold > 0,
        "the naive checkout did not oversell on direct Postgres ({} orders for {} units: {}); \
         the race is not being provoked, so the sidecar test proves nothing\n{report}",
        t.orders,
        HOT_SKUS * STOCK,
        t.per_sku
    );
    // The lost update: stock only went down by what it had, orders went beyond it.
    assert!(
        t.stock_sold <= HOT_SKUS * STOCK && t.orders > t.stock_sold,
        "{t:?}"
    );
}

#[test]
fn naive_checkout_does_not_oversell_through_the_sidecar() {
    let l = lab();
    let db = shop_db("flash_sidecar");
    let sc = SidecarConfig::primary(l)
        .replicas_of(l)
        .lock("inventory", &["sku_id", "warehouse_id"])
        .start();
    let report = run_checkout(sc.port(), &db, "through the sidecar");
    let t = tally(&db);
    eprintln!("through pgsidecar: {t:?}");
    support::assert_no_panic(&sc);
    assert_eq!(
        t.oversold,
        0,
        "oversold through the sidecar with inventory locks: {} orders for {} units ({})\n{report}",
        t.orders,
        HOT_SKUS * STOCK,
        t.per_sku
    );
    assert!(
        t.min_on_hand >= 0,
        "negative stock through the sidecar: {}",
        t.per_sku
    );
    assert_eq!(
        t.orders, t.stock_sold,
        "lost stock updates through the sidecar: {}",
        t.per_sku
    );
    // 32 buyers for 5 s against 30 units: everything sells.
    assert_eq!(
        t.orders,
        HOT_SKUS * STOCK,
        "the sale did not sell out: {}\n{report}",
        t.per_sku
    );
}
