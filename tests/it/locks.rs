//! Inventory advisory locks through the sidecar, against a real primary: naive checkouts do not
//! oversell (and do against direct Postgres), opposite key orders do not deadlock, lock_timeout
//! gives 55P03 and changes nothing, keys come from literals and bound parameters, and the
//! documented key formula is the one the proxy uses; pgjdbc-style batches, which carry BEGIN
//! with the transaction's first statement, are locked inside their transaction.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    code, data_rows, errors, lab, status, tags, Node, Raw, Sidecar, SidecarConfig, APP_PASSWORD,
    APP_USER,
};

const SCHEMA: &str = "CREATE TABLE inventory(sku_id bigint, warehouse_id int, on_hand int NOT NULL, PRIMARY KEY (sku_id, warehouse_id));
    CREATE TABLE order_lines(id bigserial primary key, sku_id bigint, warehouse_id int, qty int);
    INSERT INTO inventory SELECT s, w, 10 FROM generate_series(1, 3) s, generate_series(1, 2) w;
    GRANT ALL ON ALL TABLES IN SCHEMA public TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app;";

/// A sidecar in front of the lab's primary locking `inventory` writes by (sku, warehouse), with
/// `more` settings of that lock rule.
fn locking(more: &[(&str, toml::Value)]) -> SidecarConfig {
    SidecarConfig::primary(lab()).lock_with("inventory", &["sku_id", "warehouse_id"], more)
}

/// A fresh database with 3 items × 2 warehouses of 10 units.
fn inventory_db(prefix: &str) -> String {
    let db = lab().fresh_db(prefix);
    lab().psql(Node::Primary, &db, SCHEMA).unwrap();
    db
}

/// Units of item `sku` in warehouse 1.
fn on_hand(db: &str, sku: i64) -> String {
    lab()
        .psql(
            Node::Primary,
            db,
            &format!("SELECT on_hand FROM inventory WHERE sku_id = {sku} AND warehouse_id = 1"),
        )
        .unwrap()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    c
}

/// Typical checkout code: read the stock, check it, write the new value, record the order.
async fn naive_checkouts(url: String, buyers: usize, attempts: usize) -> usize {
    let mut tasks = Vec::new();
    for b in 0..buyers {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let mut orders = 0;
            for i in 0..attempts {
                let sku = ((b + i) % 3 + 1) as i64;
                c.batch_execute("BEGIN").await.unwrap();
                let on_hand: i32 = c
                    .query_one(
                        "SELECT on_hand FROM inventory WHERE sku_id = $1 AND warehouse_id = 1",
                        &[&sku],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if on_hand > 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await; // the app thinks
                    c.execute(
                        "UPDATE inventory SET on_hand = $1 WHERE sku_id = $2 AND warehouse_id = 1",
                        &[&(on_hand - 1), &sku],
                    )
                    .await
                    .unwrap();
                    c.execute(
                        "INSERT INTO order_lines(sku_id, warehouse_id, qty) VALUES ($1, 1, 1)",
                        &[&sku],
                    )
                    .await
                    .unwrap();
                    orders += 1;
                }
                c.batch_execute("COMMIT").await.unwrap();
            }
            orders
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_checkout_oversells_directly_but_never_through_the_sidecar() {
    let l = lab();
    let direct_db = inventory_db("lock_direct");
    let direct = support::url(l.primary_port(), APP_USER, APP_PASSWORD, &direct_db);
    let direct_orders = naive_checkouts(direct, 32, 4).await;
    assert!(
        direct_orders > 30,
        "direct Postgres sold {direct_orders} of 30 units: the test cannot show overselling"
    );

    let db = inventory_db("lock_sidecar");
    let sc = locking(&[]).start();
    let orders = naive_checkouts(sc.url(APP_USER, APP_PASSWORD, &db), 32, 4).await;
    println!("direct: {direct_orders} orders for 30 units");
    assert_sold_exactly_the_stock(&db, orders);
}

/// 30 orders, 30 order lines, nothing left in warehouse 1.
fn assert_sold_exactly_the_stock(db: &str, orders: usize) {
    let l = lab();
    let left = l
        .psql(
            Node::Primary,
            db,
            "SELECT sum(on_hand) FROM inventory WHERE warehouse_id = 1",
        )
        .unwrap();
    let lines = l
        .psql(Node::Primary, db, "SELECT count(*) FROM order_lines")
        .unwrap();
    println!("sidecar: {orders} orders, {left} left");
    assert_eq!(orders, 30, "sidecar sold {orders} of 30 units");
    assert_eq!(left, "0");
    assert_eq!(lines, "30");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_item_upserts_in_opposite_key_orders_never_deadlock() {
    let l = lab();
    let db = inventory_db("lock_order");
    let sc = locking(&[]).start();
    let url = sc.url(APP_USER, APP_PASSWORD, &db);
    let mut tasks = Vec::new();
    for order in [
        ["(1, 1, 0)", "(2, 1, 0)", "(3, 1, 0)"],
        ["(3, 1, 0)", "(2, 1, 0)", "(1, 1, 0)"],
    ] {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let sql = format!(
                "INSERT INTO inventory VALUES {} ON CONFLICT (sku_id, warehouse_id) DO UPDATE SET on_hand = inventory.on_hand + 1",
                order.join(", ")
            );
            let mut deadlocks = 0;
            for _ in 0..150 {
                if let Err(e) = c.batch_execute(&sql).await {
                    assert_eq!(code(&e), "40P01", "{e}");
                    deadlocks += 1;
                }
            }
            deadlocks
        }));
    }
    let mut deadlocks = 0;
    for t in tasks {
        deadlocks += t.await.unwrap();
    }
    assert_eq!(deadlocks, 0);
    assert_eq!(
        l.psql(
            Node::Primary,
            &db,
            "SELECT sum(on_hand) FROM inventory WHERE warehouse_id = 1"
        )
        .unwrap(),
        "930"
    );
}

/// Holds `key` with the documented formula on a direct connection, as a DBA would in psql.
async fn hold_by_hand(db: &str, key: &str) -> tokio_postgres::Client {
    let c = connect(&support::url(
        lab().primary_port(),
        APP_USER,
        APP_PASSWORD,
        db,
    ))
    .await;
    c.batch_execute(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('{key}', 0))"
    ))
    .await
    .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_gives_55p03_changes_nothing_and_uses_the_documented_key() {
    let db = inventory_db("lock_timeout");
    let sc = locking(&[("lock_timeout", "300ms".into())]).http().start();
    let c = connect(&sc.url(APP_USER, APP_PASSWORD, &db)).await;
    let dba = hold_by_hand(&db, "inventory|1|1").await;
    // Literal keys, simple protocol.
    let err = c
        .batch_execute(
            "UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = 1 AND warehouse_id = 1",
        )
        .await
        .expect_err("must wait");
    assert_eq!(code(&err), "55P03", "{err}");
    // Bound parameters, extended protocol: the held key blocks, another key does not.
    let err = c
        .execute(
            "UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = $1 AND warehouse_id = $2",
            &[&1i64, &1i32],
        )
        .await
        .expect_err("must wait");
    assert_eq!(code(&err), "55P03", "{err}");
    let n = c
        .execute(
            "UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = $1 AND warehouse_id = $2",
            &[&2i64, &1i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Nothing of the timed-out statements was written; the session is idle and usable.
    assert_eq!(on_hand(&db, 1), "10");
    dba.batch_execute("COMMIT").await.unwrap();
    c.batch_execute(
        "UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = 1 AND warehouse_id = 1",
    )
    .await
    .unwrap();
    assert_eq!(on_hand(&db, 1), "9");
    // Both timeouts were counted, and every lock statement's wait was observed.
    assert_eq!(sc.metric("pgsidecar_lock_timeouts_total "), 2.0);
    assert!(sc.metric("pgsidecar_lock_wait_seconds_count ") >= 4.0);
    // The client's own lock_timeout is untouched by the proxy's.
    assert_eq!(
        c.query_one("SHOW lock_timeout", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeterminable_keys_follow_the_rule_mode() {
    let db = inventory_db("lock_modes");
    let sql = "UPDATE inventory SET on_hand = on_hand WHERE on_hand < 5";
    let dba = Arc::new(hold_by_hand(&db, "inventory").await);
    for (mode, expect) in [
        ("table", Some("55P03")),
        ("pass", None),
        ("reject", Some("55000")),
    ] {
        let sc = locking(&[
            ("lock_timeout", "300ms".into()),
            ("undeterminable", mode.into()),
        ])
        .start();
        let c = connect(&sc.url(APP_USER, APP_PASSWORD, &db)).await;
        let got = c.batch_execute(sql).await.err().map(|e| code(&e));
        assert_eq!(got.as_deref(), expect, "undeterminable = {mode}");
        c.batch_execute("SELECT 1").await.unwrap();
    }
    dba.batch_execute("COMMIT").await.unwrap();
}

fn plain_sidecar() -> Sidecar {
    SidecarConfig::primary(lab()).start()
}

/// pgjdbc's checkout with autocommit off: `BEGIN` goes in the same Parse/Bind/Execute … Sync
/// batch as the stock read; the write, the order line and COMMIT follow in one more batch.
/// Returns the orders placed.
fn jdbc_style_checkouts(sc: &Sidecar, db: &str, buyers: usize, attempts: usize) -> usize {
    let threads: Vec<_> = (0..buyers)
        .map(|b| {
            let mut r = Raw::login(sc, db);
            std::thread::spawn(move || {
                let mut orders = 0;
                for i in 0..attempts {
                    let sku = ((b + i) % 3 + 1).to_string();
                    r.statement("BEGIN", &[]);
                    r.parse(
                        "",
                        "SELECT on_hand FROM inventory WHERE sku_id = $1 AND warehouse_id = 1",
                    );
                    r.bind("", "", &[&sku]);
                    r.describe_portal("");
                    r.execute("");
                    let read = r.sync();
                    assert_eq!(tags(&read), ['1', '2', 'C', '1', '2', 'T', 'D', 'C', 'Z']);
                    assert_eq!(status(&read), 'T');
                    let on_hand: i32 = data_rows(&read)[0][0].as_deref().unwrap().parse().unwrap();
                    if on_hand > 0 {
                        std::thread::sleep(Duration::from_millis(2)); // the app thinks
                        let left = (on_hand - 1).to_string();
                        r.statement(
                            "UPDATE inventory SET on_hand = $1 WHERE sku_id = $2 AND warehouse_id = 1",
                            &[&left, &sku],
                        );
                        r.statement(
                            "INSERT INTO order_lines(sku_id, warehouse_id, qty) VALUES ($1, 1, 1)",
                            &[&sku],
                        );
                        orders += 1;
                    }
                    r.statement("COMMIT", &[]);
                    let done = r.sync();
                    assert!(errors(&done).is_empty(), "{:?}", errors(&done));
                    assert_eq!(status(&done), 'I');
                }
                orders
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

#[test]
fn jdbc_style_batches_with_begin_oversell_without_locks_and_never_with_them() {
    let unlocked_db = inventory_db("lock_jdbc_off");
    let unlocked = plain_sidecar();
    let oversold = jdbc_style_checkouts(&unlocked, &unlocked_db, 32, 4);
    assert!(
        oversold > 30,
        "without [[locks]] the batches sold {oversold} of 30 units: the test cannot show overselling"
    );

    let db = inventory_db("lock_jdbc");
    let sc = locking(&[]).start();
    let orders = jdbc_style_checkouts(&sc, &db, 32, 4);
    println!("without locks: {oversold} orders for 30 units");
    assert_sold_exactly_the_stock(&db, orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_locked_after_its_begin_times_out_like_its_own_statement_failing() {
    let l = lab();
    let db = inventory_db("lock_jdbc_timeout");
    let sc = locking(&[("lock_timeout", "300ms".into())]).http().start();
    let dba = hold_by_hand(&db, "inventory|1|1").await;
    let update =
        "UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = $1 AND warehouse_id = $2";
    let mut r = Raw::login(&sc, &db);
    r.statement("BEGIN", &[]);
    r.statement(update, &["1", "1"]);
    let got = tokio::task::block_in_place(|| r.sync());
    // BEGIN ran; the lock, taken inside its transaction, timed out; the UPDATE was skipped.
    assert_eq!(tags(&got), ['1', '2', 'C', 'E', 'Z']);
    assert_eq!(errors(&got)[0].0, "55P03");
    assert_eq!(status(&got), 'E');
    let rolled_back = tokio::task::block_in_place(|| r.simple("ROLLBACK"));
    assert_eq!(status(&rolled_back), 'I');
    assert_eq!(on_hand(&db, 1), "10");
    assert_eq!(sc.metric("pgsidecar_lock_timeouts_total "), 1.0);
    dba.batch_execute("COMMIT").await.unwrap();
    // Free now: the same batch, then a second one updating another key and committing.
    r.statement("BEGIN", &[]);
    r.statement(update, &["1", "1"]);
    let got = tokio::task::block_in_place(|| r.sync());
    assert_eq!(tags(&got), ['1', '2', 'C', '1', '2', 'C', 'Z']);
    assert_eq!(status(&got), 'T');
    r.statement(update, &["2", "1"]);
    r.statement("COMMIT", &[]);
    let got = tokio::task::block_in_place(|| r.sync());
    assert_eq!(tags(&got), ['1', '2', 'C', '1', '2', 'C', 'Z']);
    assert_eq!(status(&got), 'I');
    assert_eq!(
        l.psql(
            Node::Primary,
            &db,
            "SELECT string_agg(on_hand::text, ',' ORDER BY sku_id) FROM inventory WHERE warehouse_id = 1"
        )
        .unwrap(),
        "9,9,10"
    );
}

/// One simple-protocol string with BEGIN, a lock-table write and COMMIT leaves no place for a
/// lock between its statements: a rule in "reject" mode refuses it (changing nothing), and the
/// default mode runs it unlocked but counts it where operators look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_query_string_mixing_begin_with_a_lock_table_write_is_refused_or_counted() {
    let db = inventory_db("lock_simple_txn");
    let sql = "BEGIN; UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = 2 AND warehouse_id = 1; COMMIT";
    let sc = locking(&[("undeterminable", "reject".into())]).start();
    let c = connect(&sc.url(APP_USER, APP_PASSWORD, &db)).await;
    let err = c.batch_execute(sql).await.unwrap_err();
    assert_eq!(code(&err), "55000", "{err}");
    assert_eq!(on_hand(&db, 2), "10", "a refused request changes nothing");
    c.batch_execute("SELECT 1").await.unwrap();

    let sc = locking(&[]).http().start();
    let c = connect(&sc.url(APP_USER, APP_PASSWORD, &db)).await;
    let before = sc.metric("pgsidecar_lock_undeterminable_total ");
    c.batch_execute(sql).await.unwrap();
    assert_eq!(on_hand(&db, 2), "9");
    assert_eq!(
        sc.metric("pgsidecar_lock_undeterminable_total "),
        before + 1.0
    );
}
