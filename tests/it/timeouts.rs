//! Timeouts (issue #15 item 2) against the real lab (primary, 2 replicas, Redis cache rules,
//! `[[locks]]`): each gives the client Postgres' SQLSTATE for it and leaves the pool clean —
//! the next client on the very same backend (one connection per pool here) finds no
//! transaction, no lock, nothing running. Pipelining is off in these sidecars so that the
//! "same backend" is certain.

use crate::support;
use pgsidecar::wire::tag::{back, front};

use std::time::Duration;

use crate::support::{
    code, console_value, data_rows, errors, lab, wait_until_reads_reach_replicas, Node, Raw, Rule,
    Sidecar, SidecarConfig,
};

const SCHEMA: &str = "CREATE TABLE t(id serial primary key, v text);
    CREATE TABLE inventory(sku_id int, warehouse_id int, qty int, primary key (sku_id, warehouse_id));
    INSERT INTO inventory VALUES (1, 1, 0);";

/// The full topology caching reads of `inventory`, one backend per pool, not pipelining:
/// the "same backend" of the next client is certain.
fn config() -> SidecarConfig {
    SidecarConfig::full_topology(lab())
        .set("pool.max_size", 1)
        .set("pool.pipeline", false)
        .rule(
            Rule::named("catalog")
                .tables(&["inventory"])
                .set("kind", "read")
                .set("cache_ttl", "90s"),
        )
}

/// The sidecar of `cfg` and a fresh database with the schema.
fn sidecar(cfg: SidecarConfig) -> (Sidecar, String) {
    let db = lab().fresh_db("timeouts");
    lab().psql(Node::Primary, &db, SCHEMA).unwrap();
    (cfg.start(), db)
}

/// The pid of the primary backend a simple query ran on, from its first row.
fn pid_of(answer: &[u8]) -> String {
    data_rows(answer)[0][0].clone().expect("a pid")
}

/// What the next client through the sidecar finds on the (only) primary backend: its pid,
/// whether a transaction id is assigned, and the locks it holds.
async fn next_client_sees(sc: &Sidecar, db: &str) -> (String, String, String) {
    let c = support::app_client(sc, db).await;
    let row = tokio::time::timeout(
        Duration::from_secs(30),
        c.query_one(
            "/* pgsidecar: route=primary */ SELECT pg_backend_pid()::text, \
             (txid_current_if_assigned() IS NULL)::text, \
             (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype <> 'virtualxid' AND locktype <> 'relation')::text",
            &[],
        ),
    )
    .await
    .expect("the next client got no answer")
    .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// A statement running past `query_timeout` is cancelled on the server (nothing keeps running
/// there) and the client gets 57014; the session goes on, on the same clean backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_statement_on_the_server_with_57014() {
    let (sc, db) = sidecar(config().set("pool.query_timeout", "500ms"));
    let mut a = Raw::login(&sc, &db);
    let pid = pid_of(&a.simple("/* pgsidecar: route=primary */ SELECT pg_backend_pid()"));
    let answer = a.simple("/* pgsidecar: route=primary */ SELECT pg_sleep(20)");
    assert_eq!(
        errors(&answer).first().map(|(c, _)| c.as_str()),
        Some("57014"),
        "{:?}",
        errors(&answer)
    );
    let running = lab()
        .psql(
            Node::Primary,
            &db,
            &format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .unwrap();
    assert_eq!(
        running.trim(),
        "idle",
        "the statement still runs on the server"
    );
    // The same client carries on.
    let again = a.simple("/* pgsidecar: route=primary */ SELECT pg_backend_pid()");
    assert_eq!(pid_of(&again), pid);
    drop(a);
    assert_eq!(
        next_client_sees(&sc, &db).await,
        (pid, "true".into(), "0".into())
    );
    assert_eq!(
        console_value(&sc, "SHOW STATS", "timeouts_query")
            .await
            .as_deref(),
        Some("1")
    );
    support::assert_no_panic(&sc);
}

/// A read that ran fast before is pipelined (`pool.pipeline`: it shares a backend with other
/// clients' reads, which cannot be cancelled for one of them) — unless a `query_timeout` is in
/// force: then it takes a backend of its own, so when it turns out slow it is cancelled on the
/// server with 57014 like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_also_cancels_a_read_that_ran_fast_before() {
    let (sc, db) = sidecar(
        config()
            .set("pool.query_timeout", "500ms")
            .set("pool.pipeline", true)
            .set("pool.pipeline_fast", "5s"),
    );
    let c = support::app_client(&sc, &db).await;
    wait_until_reads_reach_replicas(&c).await;
    let count = c
        .prepare("SELECT count(*) FROM generate_series(1, $1::int)")
        .await
        .unwrap();
    for _ in 0..3 {
        let n: i64 = c.query_one(&count, &[&10i32]).await.unwrap().get(0);
        assert_eq!(n, 10);
    }
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        c.query_one(&count, &[&2_000_000_000i32]),
    )
    .await
    .expect("the slow read was not cancelled")
    .expect_err("the slow read must be cancelled");
    assert_eq!(code(&e), "57014", "{e}");
    let n: i64 = c.query_one(&count, &[&10i32]).await.unwrap().get(0);
    assert_eq!(n, 10, "the session goes on");
    for node in [Node::Primary, Node::Replica(0), Node::Replica(1)] {
        let active = lab()
            .psql(
                node,
                &db,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT count(*) FROM generate_series%' AND state = 'active'",
            )
            .unwrap();
        assert_eq!(active.trim(), "0", "the read still runs on {node:?}");
    }
    support::assert_no_panic(&sc);
}

/// A client idle inside a transaction past `idle_in_transaction_timeout` is disconnected with
/// 25P03 (as Postgres does); its transaction — a write and an advisory lock of `[[locks]]` —
/// is rolled back and the backend given to the next client clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_timeout_disconnects_with_25p03_and_rolls_the_backend_back() {
    let (sc, db) = sidecar(config().set("pool.idle_in_transaction_timeout", "500ms"));
    let mut a = Raw::login(&sc, &db);
    a.simple("BEGIN");
    a.simple("UPDATE inventory SET qty = 5 WHERE sku_id = 1 AND warehouse_id = 1");
    let pid = pid_of(&a.simple("INSERT INTO t(v) VALUES ('lost') RETURNING pg_backend_pid()"));
    assert_eq!(a.error_code().as_deref(), Some("25P03"));
    assert!(a.closed(), "the client stays connected");
    assert_eq!(
        next_client_sees(&sc, &db).await,
        (pid, "true".into(), "0".into())
    );
    let rows = lab()
        .psql(
            Node::Primary,
            &db,
            "SELECT (SELECT count(*) FROM t)::text || ' ' || (SELECT qty FROM inventory)::text",
        )
        .unwrap();
    assert_eq!(
        rows.trim(),
        "0 0",
        "the idle transaction was not rolled back"
    );
    support::assert_no_panic(&sc);
}

/// A transaction older than `transaction_timeout` ends with 25P04, also while a statement of
/// it runs (cancelled first): rolled back, the backend reused clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_timeout_ends_a_running_transaction_with_25p04_and_rolls_it_back() {
    let (sc, db) = sidecar(config().set("pool.transaction_timeout", "1s"));
    let mut a = Raw::login(&sc, &db);
    a.simple("BEGIN");
    let pid = pid_of(&a.simple("INSERT INTO t(v) VALUES ('lost') RETURNING pg_backend_pid()"));
    a.send(front::QUERY, b"SELECT pg_sleep(20)\0");
    let mut codes = Vec::new();
    while let Some((tag, body)) = a.read_msg() {
        if tag == back::ERROR_RESPONSE {
            let text = String::from_utf8_lossy(&body).to_string();
            codes.extend(
                text.split('\0')
                    .find_map(|f| f.strip_prefix('C').map(str::to_string)),
            );
        }
        if codes.iter().any(|c| c == "25P04") {
            break;
        }
    }
    assert!(codes.iter().any(|c| c == "25P04"), "{codes:?}");
    assert!(a.closed(), "the client stays connected");
    assert_eq!(
        next_client_sees(&sc, &db).await,
        (pid, "true".into(), "0".into())
    );
    let rows = lab()
        .psql(Node::Primary, &db, "SELECT count(*) FROM t")
        .unwrap();
    assert_eq!(
        rows.trim(),
        "0",
        "the timed-out transaction was not rolled back"
    );
    assert_eq!(
        console_value(&sc, "SHOW STATS", "timeouts_transaction")
            .await
            .as_deref(),
        Some("1")
    );
    support::assert_no_panic(&sc);
}

/// A client idle between transactions past `client_idle_timeout` is disconnected with 57P05.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_disconnects_an_idle_client_with_57p05() {
    let (sc, db) = sidecar(config().set("pool.client_idle_timeout", "500ms"));
    let mut a = Raw::login(&sc, &db);
    a.simple("SELECT 1");
    assert_eq!(a.error_code().as_deref(), Some("57P05"));
    assert!(a.closed());
    support::assert_no_panic(&sc);
}

/// Timeouts per rule and per database: a rule matching a statement's text gives it its own
/// `query_timeout` (others run unbounded), a rule with only a `database` condition gives that
/// database's clients a `query_wait_timeout` (53300 when the one connection is busy, counted
/// as `query_wait`), and a reload changes them for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_set_timeouts_per_statement_and_database_and_a_reload_changes_them() {
    let base = config();
    let with_rules = |sleep: &str| {
        base.clone()
            .rule(
                Rule::named("reports")
                    .set("pattern", "pg_sleep")
                    .set("query_timeout", sleep),
            )
            .rule(
                Rule::named("this database")
                    .set("database", "timeouts_*")
                    .set("query_wait_timeout", "300ms"),
            )
    };
    let (sc, db) = sidecar(with_rules("300ms"));
    let c = support::app_client(&sc, &db).await;
    // Connected first: a new client's startup needs a primary connection too.
    let other = support::app_client(&sc, &db).await;
    let e = c
        .simple_query("/* pgsidecar: route=primary */ SELECT pg_sleep(10)")
        .await
        .expect_err("the rule's query_timeout applies");
    assert_eq!(code(&e), "57014");
    // Statements the rule does not match have no timeout.
    c.simple_query(
        "/* pgsidecar: route=primary */ SELECT count(*) FROM generate_series(1, 3000000)",
    )
    .await
    .expect("no timeout for other statements");
    // The only primary connection is busy in a transaction: this database waits 300 ms.
    c.batch_execute("BEGIN; INSERT INTO t(v) VALUES ('x')")
        .await
        .unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        other.simple_query("INSERT INTO t(v) VALUES ('y')"),
    )
    .await
    .expect("query_wait_timeout bounds the wait")
    .expect_err("no connection free");
    assert_eq!(code(&e), "53300");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        console_value(&sc, "SHOW STATS", "timeouts_query_wait")
            .await
            .as_deref(),
        Some("1")
    );
    // Reloaded: the rule's timeout is now long enough.
    std::fs::write(sc.dir().join("pgsidecar.toml"), with_rules("30s").to_toml()).unwrap();
    let admin =
        support::client(&sc.url(support::SUPERUSER, support::SUPERUSER_PASSWORD, "pgsidecar"))
            .await
            .unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    c.simple_query("/* pgsidecar: route=primary */ SELECT pg_sleep(0.6)")
        .await
        .expect("the reloaded rule allows 30 s");
    support::assert_no_panic(&sc);
}
