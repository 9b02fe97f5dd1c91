//! The admin console (`psql -d pgsidecar`) and the HTTP endpoint (/metrics, /healthz,
//! /readyz), through real clients against the lab: tokio-postgres `simple_query`, psql, and
//! plain HTTP/1.1 over a socket.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::{
    self, app_client as app, assert_no_panic, code, http_get, lab, must_fail, psql_console, Answer,
    Console, Node, Rule, SidecarConfig, APP_PASSWORD, APP_USER, SUPERUSER, SUPERUSER_PASSWORD,
};

/// A sidecar in front of the lab's primary and both replicas, with the HTTP endpoint on.
fn routed() -> SidecarConfig {
    SidecarConfig::routed(lab()).http()
}

/// A sidecar in front of the Postgres on `primary_port` alone (so no monitor runs), with the
/// HTTP endpoint on.
fn lone(primary_port: u16) -> SidecarConfig {
    SidecarConfig::primary_at(primary_port).http()
}

/// The inventory lock rule, waiting up to 30 s for a key.
fn inventory_lock(cfg: SidecarConfig) -> SidecarConfig {
    cfg.lock_with(
        "inventory",
        &["sku_id", "warehouse_id"],
        &[("lock_timeout", "30s".into())],
    )
}

// ---- console ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_lists_the_pool_with_its_checkouts_after_traffic() {
    let db = lab().fresh_db("adm_pools");
    // Primary only, and reads only: one checkout per query (after a write the relay keeps the
    // backend a moment longer, to learn the commit position). Without pipelining, which
    // would carry most of them on one long checkout.
    let sc = lone(lab().primary_port())
        .set("pool.pipeline", false)
        .start();
    let c = app(&sc, &db).await;
    for _ in 0..5 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let a = sc.console().await.show("SHOW POOLS").await;
    a.assert_columns(&[
        "node",
        "database",
        "user",
        "active",
        "idle",
        "max",
        "checkouts",
        "waits",
        "wait_ms_total",
        "timeouts",
        "connects",
        "connect_errors",
    ]);
    let pool = a
        .find("database", &db)
        .unwrap_or_else(|| panic!("no pool for {db}: {:?}", a.rows));
    assert_eq!(Answer::value(pool, "user"), APP_USER);
    assert_eq!(
        Answer::value(pool, "node"),
        format!("127.0.0.1:{}", lab().primary_port())
    );
    assert!(Answer::number(pool, "checkouts") >= 5, "{pool:?}");
    // The connection that proved the password was adopted by the pool, not connected by it.
    assert!(
        Answer::number(pool, "idle") + Answer::number(pool, "active") >= 1,
        "{pool:?}"
    );
    Answer::number(pool, "connects");
    assert_eq!(Answer::number(pool, "max"), 20);
    assert_eq!(Answer::number(pool, "timeouts"), 0);
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_replicas_reports_both_replicas_healthy_within_seconds() {
    let sc = routed().start();
    let c = sc.console().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let a = loop {
        let a = c.show("show replicas;").await;
        let healthy = a
            .rows
            .iter()
            .filter(|r| {
                Answer::value(r, "configured_role") == "replica"
                    && Answer::value(r, "healthy") == "true"
            })
            .count();
        // The primary's own first probe may come after the replicas' on a loaded machine.
        let verified = a
            .rows
            .iter()
            .all(|r| Answer::value(r, "verified_role") != "unknown");
        if healthy == 2 && verified {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never became healthy: {:?}\n{}",
            a.rows,
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    a.assert_columns(&[
        "address",
        "configured_role",
        "verified_role",
        "healthy",
        "lsn",
        "lag_bytes",
        "lag_ms",
        "outstanding",
        "served",
        "last_error",
    ]);
    assert_eq!(a.rows.len(), 3, "{:?}", a.rows);
    for r in &a.rows {
        let configured = Answer::value(r, "configured_role");
        assert_eq!(Answer::value(r, "verified_role"), configured, "{r:?}");
        assert!(Answer::value(r, "lsn").contains('/'), "{r:?}");
        assert_eq!(r.get("last_error"), Some(&None), "{r:?}");
        Answer::number(r, "lag_bytes");
        Answer::number(r, "lag_ms");
    }
    let primary = a.find("configured_role", "primary").expect("primary row");
    assert_eq!(
        Answer::value(primary, "address"),
        format!("127.0.0.1:{}", lab().primary_port())
    );
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_rules_counts_hits_after_matching_queries() {
    let db = lab().fresh_db("adm_rules");
    let sc = routed()
        .rule(
            Rule::named("orders_on_primary")
                .tables(&["orders"])
                .set("route", "primary"),
        )
        .rule(
            Rule::unnamed()
                .set("kind", "read")
                .set("user", "report*")
                .set("route", "replica"),
        )
        .start();
    lab()
        .psql(
            Node::Primary,
            &db,
            "CREATE TABLE orders(id int); CREATE TABLE other(id int)",
        )
        .unwrap();
    lab().wait_replicas_caught_up();
    let c = app(&sc, &db).await;
    let console = sc.console().await;
    let before = console.show("SHOW RULES").await;
    before.assert_columns(&["name", "conditions", "route", "hits"]);
    let hits = |a: &Answer, name: &str| {
        Answer::number(
            a.find("name", name)
                .unwrap_or_else(|| panic!("no rule {name}")),
            "hits",
        )
    };
    let start = hits(&before, "orders_on_primary");
    for _ in 0..3 {
        c.simple_query("SELECT count(*) FROM orders").await.unwrap();
    }
    c.simple_query("SELECT count(*) FROM other").await.unwrap();
    let after = console.show("SHOW RULES").await;
    assert!(
        hits(&after, "orders_on_primary") >= start + 3,
        "{:?}",
        after.rows
    );
    let orders = after.find("name", "orders_on_primary").unwrap();
    assert_eq!(Answer::value(orders, "conditions"), "tables=orders");
    assert_eq!(Answer::value(orders, "route"), "primary");
    // An unnamed rule is numbered; its user condition keeps `app` from matching it.
    let second = after.find("name", "rule #2").expect("unnamed rule listed");
    assert_eq!(
        Answer::value(second, "conditions"),
        "kind=read user=report*"
    );
    assert_eq!(Answer::number(second, "hits"), 0);
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_lists_each_connected_client_until_it_leaves() {
    let db = lab().fresh_db("adm_clients");
    let sc = routed().start();
    let url = format!(
        "{}?application_name=billing-worker",
        sc.url(APP_USER, APP_PASSWORD, &db)
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    c.simple_query("SELECT 1").await.unwrap();
    let console = sc.console().await;
    let a = console.show("SHOW CLIENTS").await;
    a.assert_columns(&[
        "id",
        "user",
        "database",
        "peer",
        "application_name",
        "connected_at",
        "state",
    ]);
    let worker = a
        .find("application_name", "billing-worker")
        .unwrap_or_else(|| panic!("{:?}", a.rows));
    assert_eq!(Answer::value(worker, "user"), APP_USER);
    assert_eq!(Answer::value(worker, "database"), db);
    assert_eq!(Answer::value(worker, "state"), "connected");
    assert!(
        Answer::value(worker, "peer").starts_with("127.0.0.1:"),
        "{worker:?}"
    );
    assert!(
        Answer::value(worker, "connected_at").ends_with('Z'),
        "{worker:?}"
    );
    let me = a
        .find("database", "pgsidecar")
        .expect("the console lists itself");
    assert_eq!(Answer::value(me, "state"), "admin");

    drop(c);
    let _ = conn.await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while console
        .show("SHOW CLIENTS")
        .await
        .find("application_name", "billing-worker")
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "client still listed after it left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_stats_servers_config_version_and_help_answer_with_rows() {
    let db = lab().fresh_db("adm_misc");
    let sc = routed().start();
    let c = app(&sc, &db).await;
    c.simple_query("SELECT 1").await.unwrap();
    let console = sc.console().await;

    let stats = console.show("SHOW STATS").await;
    stats.assert_columns(&["stat", "value"]);
    assert!(
        stats.get("clients").parse::<u64>().unwrap() >= 1,
        "{:?}",
        stats.rows
    );
    assert!(
        stats.get("requests_primary").parse::<u64>().unwrap()
            + stats.get("requests_replica").parse::<u64>().unwrap()
            >= 1
    );
    for key in [
        "read_retries",
        "errors_startup",
        "errors_session",
        "pool_timeouts",
        "server_connect_errors",
    ] {
        stats
            .get(key)
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{key} is not a number"));
    }

    let servers = console.show("SHOW SERVERS").await;
    servers.assert_columns(&[
        "node",
        "role",
        "database",
        "user",
        "active",
        "idle",
        "total",
        "max",
        "discarded",
    ]);
    let pool = servers
        .find("database", &db)
        .unwrap_or_else(|| panic!("{:?}", servers.rows));
    assert!(Answer::number(pool, "total") >= 1, "{pool:?}");

    let config = console.show("SHOW CONFIG").await;
    config.assert_columns(&["key", "value"]);
    assert_eq!(config.get("pool.max_size"), "20");
    assert_eq!(config.get("routing.health_interval"), "100ms");
    assert_eq!(config.get("admin.users"), "postgres");
    assert!(config
        .get("upstream.primary")
        .contains(&format!("127.0.0.1:{}", lab().primary_port())));
    let everything: Vec<String> = config
        .rows
        .iter()
        .flat_map(|r| r.values().flatten().cloned())
        .collect();
    assert!(
        !everything.iter().any(|v| v.contains(APP_PASSWORD)),
        "SHOW CONFIG leaks a password: {everything:?}"
    );

    let version = console.show("show version").await;
    version.assert_columns(&["version"]);
    assert!(Answer::value(&version.rows[0], "version").starts_with("pgsidecar "));

    let help = console.show("SHOW HELP").await;
    help.assert_columns(&["command", "description"]);
    for cmd in [
        "SHOW POOLS",
        "SHOW REPLICAS",
        "EXPLAIN <statement>",
        "RELOAD",
    ] {
        assert!(
            help.find("command", cmd).is_some(),
            "{cmd} missing from SHOW HELP"
        );
    }
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_routing_decision_with_the_live_rules() {
    let sc = routed()
        .rule(
            Rule::named("audit_on_primary")
                .tables(&["audit_*"])
                .set("route", "primary"),
        )
        .start();
    let console = sc.console().await;
    let a = console
        .show("EXPLAIN SELECT * FROM audit_log WHERE id = 1")
        .await;
    a.assert_columns(&["explain"]);
    let lines: Vec<&str> = a.rows.iter().map(|r| Answer::value(r, "explain")).collect();
    assert!(lines.contains(&"rule: audit_on_primary"), "{lines:?}");
    assert!(lines.contains(&"route: primary"), "{lines:?}");
    let plain = console.show("explain select 1;").await;
    let lines: Vec<&str> = plain
        .rows
        .iter()
        .map(|r| Answer::value(r, "explain"))
        .collect();
    assert!(lines.contains(&"route: replica"), "{lines:?}");
    // A dry run is not a hit.
    let rules = console.show("SHOW RULES").await;
    assert_eq!(
        Answer::number(rules.find("name", "audit_on_primary").unwrap(), "hits"),
        0
    );
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_admin_commands_and_prints_result_sets() {
    let db = lab().fresh_db("adm_psql");
    let sc = routed()
        .rule(
            Rule::named("reports")
                .set("user", "report*")
                .set("route", "replica"),
        )
        .start();
    app(&sc, &db).await.simple_query("SELECT 1").await.unwrap();
    let cases: &[(&str, &str)] = &[
        ("SHOW POOLS", "node|database|user|active|idle|max|checkouts|waits|wait_ms_total|timeouts|connects|connect_errors"),
        ("show clients;", "id|user|database|peer|application_name|connected_at|state"),
        ("SHOW SERVERS", "node|role|database|user|active|idle|total|max|discarded"),
        ("SHOW STATS", "stat|value"),
        ("SHOW REPLICAS", "address|configured_role|verified_role|healthy|lsn|lag_bytes|lag_ms|outstanding|served|last_error"),
        ("SHOW RULES", "name|conditions|route|hits"),
        ("SHOW CONFIG", "key|value"),
        ("SHOW VERSION", "version"),
        ("SHOW HELP", "command|description"),
        ("EXPLAIN SELECT 1", "explain"),
    ];
    for (command, header) in cases {
        let stdout = psql_console(&sc, command).unwrap_or_else(|e| panic!("psql {command:?}: {e}"));
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some(*header), "psql {command:?}:\n{stdout}");
        assert!(
            lines.next().is_some(),
            "psql {command:?} printed no rows:\n{stdout}"
        );
    }
    let stdout = psql_console(&sc, "SHOW POOLS").unwrap();
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&format!("|{db}|{APP_USER}|"))),
        "{stdout}"
    );

    let stderr = psql_console(&sc, "SHOW NONSENSE").expect_err("SHOW NONSENSE must fail");
    assert!(
        stderr.contains("unknown admin command") && stderr.contains("SHOW HELP"),
        "{stderr}"
    );
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_gets_42601_and_the_console_keeps_working() {
    let sc = routed().start();
    let console = sc.console().await;
    for bad in ["SHOW TABLES", "SELECT 1", "DROP DATABASE x", "SWITCH"] {
        let e = must_fail(console.try_show(bad).await, bad);
        assert_eq!(code(&e), "42601", "{bad}: {e}");
        assert!(
            e.to_string().contains("SHOW HELP") || format!("{e:?}").contains("SHOW HELP"),
            "{bad}: {e:?}"
        );
    }
    console.show("SHOW VERSION").await;
    // An empty query is fine, as in Postgres.
    console.show("").await;
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_without_environments_names_the_only_one_with_42704() {
    let sc = routed().start();
    let console = sc.console().await;
    let e = must_fail(console.try_show("SWITCH staging").await, "SWITCH staging");
    assert_eq!(code(&e), "42704", "{e}");
    let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
    assert!(
        message.contains("\"staging\" is not defined (defined: default)"),
        "{e:?}"
    );
    console.show("SHOW VERSION").await;
    assert_no_panic(&sc);
}

/// Polls SHOW LOCKS until `done` accepts the answer (the lock statement travels on its own).
async fn show_locks_until(console: &Console, what: &str, done: impl Fn(&Answer) -> bool) -> Answer {
    support::eventually(what, Duration::from_secs(20), || async {
        let a = console.show("SHOW LOCKS").await;
        if done(&a) {
            Ok(a)
        } else {
            Err(format!("{:?}", a.rows))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_locks_lists_held_and_waiting_inventory_keys_until_commit() {
    let l = lab();
    let db = l.fresh_db("adm_locks");
    l.psql(
        Node::Primary,
        &db,
        "CREATE TABLE inventory(sku_id bigint, warehouse_id int, on_hand int NOT NULL, PRIMARY KEY (sku_id, warehouse_id));
         INSERT INTO inventory VALUES (7, 1, 10), (8, 1, 10);
         GRANT ALL ON inventory TO app;",
    )
    .unwrap();
    let sc = inventory_lock(lone(l.primary_port())).start();
    let url = |app: &str| {
        format!(
            "{}?application_name={app}",
            sc.url(APP_USER, APP_PASSWORD, &db)
        )
    };
    let holder = support::client(&url("checkout-a")).await.unwrap();
    let console = sc.console().await;
    assert!(console.show("SHOW LOCKS").await.rows.is_empty());

    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute(
            "UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = $1 AND warehouse_id = 1",
            &[&7i64],
        )
        .await
        .unwrap();
    let a = console.show("SHOW LOCKS").await;
    a.assert_columns(&[
        "client_id",
        "user",
        "database",
        "client_addr",
        "application_name",
        "lock_table",
        "key_columns",
        "key_values",
        "lock_key",
        "advisory_key",
        "state",
        "since",
        "backend_pid",
        "primary_pg_locks",
    ]);
    assert_eq!(a.rows.len(), 1, "{:?}", a.rows);
    let row = &a.rows[0];
    assert_eq!(Answer::value(row, "user"), APP_USER);
    assert_eq!(Answer::value(row, "database"), db);
    assert_eq!(Answer::value(row, "application_name"), "checkout-a");
    assert_eq!(Answer::value(row, "lock_table"), "inventory");
    assert_eq!(Answer::value(row, "key_columns"), "sku_id, warehouse_id");
    assert_eq!(Answer::value(row, "key_values"), "7, 1");
    assert_eq!(Answer::value(row, "lock_key"), "inventory|7|1");
    assert_eq!(Answer::value(row, "state"), "held");
    // The advisory key is the documented formula, computed by Postgres.
    let expected_key = l
        .psql(
            Node::Primary,
            &db,
            "SELECT hashtextextended('inventory|7|1', 0)",
        )
        .unwrap();
    assert_eq!(Answer::value(row, "advisory_key"), expected_key.trim());
    let pid = Answer::value(row, "backend_pid").to_string();
    assert_eq!(
        Answer::value(row, "primary_pg_locks"),
        format!("{pid} granted"),
        "the primary sees the same backend holding the key"
    );

    // A second client wanting the same item waits, and is listed as waiting.
    let waiter = support::client(&url("checkout-b")).await.unwrap();
    let blocked = tokio::spawn(async move {
        waiter
            .execute(
                "UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = 7 AND warehouse_id = 1",
                &[],
            )
            .await
    });
    let a = show_locks_until(&console, "second client listed as waiting", |a| {
        a.find("state", "waiting").is_some()
    })
    .await;
    let w = a.find("state", "waiting").unwrap();
    assert_eq!(Answer::value(w, "application_name"), "checkout-b");
    assert_eq!(Answer::value(w, "lock_key"), "inventory|7|1");
    let waiting_pid = Answer::value(w, "backend_pid");
    assert!(
        Answer::value(w, "primary_pg_locks").contains(&format!("{waiting_pid} waiting")),
        "{w:?}"
    );

    // After COMMIT the holder's key is gone; the waiter gets it, finishes, and nothing is left.
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(blocked.await.unwrap().unwrap(), 1);
    show_locks_until(&console, "every lock released after both commits", |a| {
        a.rows.is_empty()
    })
    .await;
    let left = l
        .psql(
            Node::Primary,
            &db,
            "SELECT on_hand FROM inventory WHERE sku_id = 7",
        )
        .unwrap();
    assert_eq!(left.trim(), "8");
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_reload_invalidate_and_shutdown_commands_answer_with_rows() {
    let sc = routed().start();
    let console = sc.console().await;
    for cmd in ["SHOW CACHE", "INVALIDATE orders", "INVALIDATE ALL"] {
        let a = console.show(cmd).await;
        assert!(!a.rows.is_empty(), "{cmd} answered no rows");
    }
    // RELOAD needs a config file; this sidecar has one (Sidecar::start writes it).
    let a = console.show("RELOAD").await;
    assert!(!a.rows.is_empty());
    console.show("SHUTDOWN").await;
    let status = sc
        .wait_exit(std::time::Duration::from_secs(15))
        .expect("SHUTDOWN must drain and stop the sidecar");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_is_refused_with_0a000_and_simple_queries_still_work() {
    let sc = routed().start();
    let console = sc.console().await;
    let e = must_fail(
        console.0.query("SHOW POOLS", &[]).await,
        "the extended protocol",
    );
    assert_eq!(code(&e), "0A000", "{e}");
    console.show("SHOW POOLS").await;
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_user_is_refused_with_42501_and_admin_users_is_configurable() {
    let sc = routed().start();
    let e = must_fail(
        Console::connect_as(&sc, APP_USER, APP_PASSWORD).await,
        "app is not an admin",
    );
    assert_eq!(code(&e), "42501", "{e}");
    assert!(
        format!("{e:?}").contains("not allowed to use the pgsidecar admin console"),
        "{e:?}"
    );
    // Authentication still comes first: a wrong password is a password error.
    let e = must_fail(
        Console::connect_as(&sc, SUPERUSER, "wrong").await,
        "wrong password",
    );
    assert_eq!(code(&e), "28P01", "{e}");

    let only_app = lone(lab().primary_port())
        .set("admin.users", vec![APP_USER])
        .start();
    let c = Console::connect_as(&only_app, APP_USER, APP_PASSWORD)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", only_app.log()));
    c.show("SHOW VERSION").await;
    let e = must_fail(
        Console::connect_as(&only_app, SUPERUSER, SUPERUSER_PASSWORD).await,
        "postgres is no longer an admin",
    );
    assert_eq!(code(&e), "42501", "{e}");
    assert_no_panic(&sc);
    assert_no_panic(&only_app);
}

// ---- HTTP ---------------------------------------------------------------------------------

/// `/metrics` on `http`, served as OpenMetrics text, parsed.
fn scrape(http: u16) -> HashMap<String, f64> {
    let r = http_get(http, "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        r.headers
    );
    support::parse_prometheus(&r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_prometheus_text_that_moves_with_traffic() {
    let db = lab().fresh_db("adm_metrics");
    let sc = routed().start();
    let http = sc.http_port();
    let routed = |m: &HashMap<String, f64>| {
        ["primary", "replica"]
            .iter()
            .map(|r| {
                m.get(&format!("pgsidecar_requests_routed_total{{route=\"{r}\"}}"))
                    .copied()
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let before = scrape(http);
    let c = app(&sc, &db).await;
    for _ in 0..5 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let after = scrape(http);
    let moved = routed(&after) - routed(&before);
    assert!(moved >= 5.0, "requests_routed moved by {moved}: {after:?}");
    assert!(
        after.get("pgsidecar_clients").copied().unwrap_or(0.0) >= 1.0,
        "{after:?}"
    );
    let pool = format!(
        "pgsidecar_pool_idle{{database=\"{db}\",node=\"127.0.0.1:{}\",user=\"{APP_USER}\"}}",
        lab().primary_port()
    );
    assert!(after.contains_key(&pool), "no {pool}: {after:?}");
    let primary_node = format!(
        "pgsidecar_node_healthy{{node=\"127.0.0.1:{}\"}}",
        lab().primary_port()
    );
    assert!(after.contains_key(&primary_node), "{after:?}");
    for p in lab().replica_ports() {
        assert!(
            after.contains_key(&format!(
                "pgsidecar_replica_lag_bytes{{node=\"127.0.0.1:{p}\"}}"
            )),
            "{after:?}"
        );
        assert!(
            after.contains_key(&format!(
                "pgsidecar_replica_lag_seconds{{node=\"127.0.0.1:{p}\"}}"
            )),
            "{after:?}"
        );
    }
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_are_200_with_a_reachable_primary_and_unknown_paths_404() {
    let sc = routed().start();
    let http = sc.http_port();
    let health = http_get(http, "/healthz");
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    // The monitor needs a moment for its first probe; TCP reachability answers before it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http_get(http, "/readyz");
        if ready.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {} {}\n{}",
            ready.status,
            ready.body,
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(http, "/nope").status, 404);

    // Without replicas there is no monitor: readiness comes from a TCP connect to the primary.
    let lone = lone(lab().primary_port()).start();
    let ready = http_get(lone.http_port(), "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_no_panic(&sc);
    assert_no_panic(&lone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_with_a_reason_when_the_primary_is_unreachable() {
    let closed = support::free_port();
    let sc = lone(closed).start();
    let http = sc.http_port();
    let ready = http_get(http, "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body.lines().count(), 1, "{}", ready.body);
    assert!(
        ready.body.contains(&format!("127.0.0.1:{closed}")),
        "{}",
        ready.body
    );
    // Alive all the same: liveness must not restart a sidecar whose database is down.
    assert_eq!(http_get(http, "/healthz").status, 200);
    assert_no_panic(&sc);
}

// ---- statement statistics ---------------------------------------------------------------------

/// The full topology for SHOW QUERIES: both replicas, Redis with a cache rule on `prices`, and
/// advisory locks on `inventory`.
fn full_sidecar() -> SidecarConfig {
    inventory_lock(
        routed()
            .cache_rule("catalog prices", &["prices"], "90s")
            .cache(&lab().redis_url()),
    )
}

/// The SHOW QUERIES row of a normalized statement.
fn query_row<'a>(a: &'a Answer, text: &str) -> &'a HashMap<String, Option<String>> {
    a.find("query", text).unwrap_or_else(|| {
        let listed: Vec<&str> = a.rows.iter().map(|r| Answer::value(r, "query")).collect();
        panic!("{text:?} not in SHOW QUERIES: {listed:#?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_queries_counts_calls_and_rows_per_statement_shape_and_reset_queries_empties_it() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let db = lab().fresh_db("adm_queries");
        let sc = full_sidecar().start();
        let http = sc.http_port();
        lab()
            .psql(
                Node::Primary,
                &db,
                "CREATE TABLE prices(id int PRIMARY KEY, price int);
                 INSERT INTO prices SELECT g, g * 10 FROM generate_series(1, 10) g;
                 CREATE TABLE inventory(sku_id int, warehouse_id int, qty int,
                     PRIMARY KEY (sku_id, warehouse_id));
                 INSERT INTO inventory VALUES (1, 1, 100), (2, 1, 100);
                 CREATE TABLE orders(id serial PRIMARY KEY, note text);
                 GRANT ALL ON ALL TABLES IN SCHEMA public TO app;
                 GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app;",
            )
            .unwrap();
        lab().wait_replicas_caught_up();
        let c = app(&sc, &db).await;
        support::wait_until_reads_reach_replicas(&c).await;
        let console = sc.console().await;
        // Only the workload below is counted.
        let reset = console.show("RESET QUERIES").await;
        assert_eq!(reset.rows.len(), 1);

        // 1 call, 5 rows written.
        c.execute(
            "INSERT INTO orders(note) SELECT 'n' || g FROM generate_series(1, 5) g",
            &[],
        )
        .await
        .unwrap();
        // 4 calls of one shape (the literal differs), 1 + 2 + 3 + 4 rows.
        for k in 1..=4 {
            c.simple_query(&format!("SELECT note FROM orders WHERE id <= {k}"))
                .await
                .unwrap();
        }
        // 7 executions of a prepared, cached read, one row each.
        let stmt = c
            .prepare("SELECT id, price FROM prices WHERE id = $1")
            .await
            .unwrap();
        for id in [1, 2, 3, 1, 2, 1, 4] {
            assert_eq!(c.query(&stmt, &[&id]).await.unwrap().len(), 1);
        }
        // 3 lock-table writes, one row each, each behind its advisory lock.
        let upd = c
            .prepare("UPDATE inventory SET qty = qty - 1 WHERE sku_id = $1 AND warehouse_id = $2")
            .await
            .unwrap();
        for sku in [1, 2, 1] {
            assert_eq!(c.execute(&upd, &[&sku, &1]).await.unwrap(), 1);
        }

        let q = console.show("SHOW QUERIES").await;
        assert_eq!(
            q.columns,
            [
                "query",
                "calls",
                "total_ms",
                "mean_ms",
                "max_ms",
                "rows",
                "primary",
                "replica",
                "cache",
                "replica_share",
                "rule",
                "reason",
                "cache_hits",
                "cache_misses",
                "cache_fills",
                "cache_rejects",
                "lock_waits",
                "lock_wait_ms",
                "tracked_since_evicted_ms"
            ]
        );
        assert_eq!(
            q.rows.len(),
            4,
            "exactly the four shapes sent: {:#?}",
            q.rows
        );
        let n = Answer::number;

        let insert = query_row(
            &q,
            "insert into orders(note) select ? || g from generate_series(?, ?) g",
        );
        assert_eq!((n(insert, "calls"), n(insert, "rows")), (1, 5));
        assert_eq!(n(insert, "primary"), 1);

        let read = query_row(&q, "select note from orders where id <= ?");
        assert_eq!((n(read, "calls"), n(read, "rows")), (4, 10));
        assert_eq!(n(read, "primary") + n(read, "replica"), 4);
        assert_eq!(
            n(read, "cache_hits") + n(read, "cache_misses"),
            0,
            "no cache rule"
        );

        let cached = query_row(&q, "select id, price from prices where id = $1");
        assert_eq!((n(cached, "calls"), n(cached, "rows")), (7, 7));
        assert_eq!(Answer::value(cached, "rule"), "catalog prices");
        assert_eq!(n(cached, "cache_hits") + n(cached, "cache_misses"), 7);
        assert_eq!(n(cached, "cache"), n(cached, "cache_hits"));
        assert_eq!(
            n(cached, "primary") + n(cached, "replica"),
            n(cached, "cache_misses")
        );
        assert_eq!(
            n(cached, "cache_fills") + n(cached, "cache_rejects"),
            n(cached, "cache_misses")
        );
        assert!(n(cached, "cache_misses") >= 4, "4 distinct ids: {cached:?}");

        let locked = query_row(
            &q,
            "update inventory set qty = qty - ? where sku_id = $1 and warehouse_id = $2",
        );
        assert_eq!((n(locked, "calls"), n(locked, "rows")), (3, 3));
        assert_eq!(n(locked, "lock_waits"), 3);
        assert_eq!(n(locked, "primary"), 3);
        assert_eq!(Answer::value(locked, "replica_share"), "0.00");

        // Most total time first; mean = total / calls.
        let totals: Vec<f64> = q
            .rows
            .iter()
            .map(|r| Answer::value(r, "total_ms").parse().unwrap())
            .collect();
        assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
        for r in &q.rows {
            let total: f64 = Answer::value(r, "total_ms").parse().unwrap();
            let mean: f64 = Answer::value(r, "mean_ms").parse().unwrap();
            assert!(total > 0.0);
            assert!((mean * n(r, "calls") as f64 - total).abs() < 0.01 * n(r, "calls") as f64);
        }

        // EXPLAIN shows the rule and the statistics of the statement's shape.
        let explained = console
            .show("EXPLAIN SELECT note FROM orders WHERE id <= 2")
            .await;
        let text: Vec<&str> = explained
            .rows
            .iter()
            .map(|r| Answer::value(r, "explain"))
            .collect();
        assert!(
            text.iter()
                .any(|l| l.contains("calls 4,") && l.contains("rows 10")),
            "{text:#?}"
        );
        let explained = console
            .show("EXPLAIN SELECT id, price FROM prices WHERE id = $1")
            .await;
        let text: Vec<&str> = explained
            .rows
            .iter()
            .map(|r| Answer::value(r, "explain"))
            .collect();
        assert!(text.iter().any(|l| l.contains("calls 7,")), "{text:#?}");
        assert!(
            text.iter().any(|l| l.contains("by rule catalog prices")),
            "{text:#?}"
        );

        // The same numbers as Prometheus series, and the per-route latency histograms.
        let body = http_get(http, "/metrics").body;
        assert!(
            body.lines()
                .any(|l| l
                    == "pgsidecar_query_calls{query=\"select note from orders where id <= ?\"} 4"),
            "{body}"
        );
        assert!(
            body.lines().any(|l| l
                == "pgsidecar_query_rows{query=\"select id, price from prices where id = $1\"} 7"),
            "{body}"
        );
        let count = |route: &str| {
            body.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "pgsidecar_request_duration_seconds_count{{route=\"{route}\"}} "
                    ))
                })
                .map(|v| v.parse::<f64>().unwrap())
                .unwrap_or(0.0)
        };
        assert!(count("primary") >= 4.0, "{body}");
        assert!(
            count("primary") + count("replica") + count("cache") >= 15.0,
            "{body}"
        );

        // RESET QUERIES empties it; counting starts over.
        console.show("RESET QUERIES").await;
        assert_eq!(console.show("SHOW QUERIES").await.rows.len(), 0);
        c.simple_query("SELECT note FROM orders WHERE id <= 3")
            .await
            .unwrap();
        let q = console.show("SHOW QUERIES").await;
        assert_eq!(q.rows.len(), 1);
        let read = query_row(&q, "select note from orders where id <= ?");
        assert_eq!((n(read, "calls"), n(read, "rows")), (1, 3));
        assert_no_panic(&sc);
    })
    .await
    .expect("test timed out");
}
