//! Operating the sidecar: graceful drain on SIGTERM, hot reload (console and SIGHUP, invalid
//! files changing nothing), and a restart under load through SO_REUSEPORT that aborts no
//! transaction.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{
    code, lab, Node, Sidecar, SidecarConfig, APP_PASSWORD, APP_USER, SUPERUSER, SUPERUSER_PASSWORD,
};

/// A sidecar in front of the lab's primary alone, draining for at most 10 s.
fn config() -> SidecarConfig {
    SidecarConfig::primary(lab()).set("listen.shutdown_timeout", "10s")
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_transactions_finish_and_closes_idle_clients_with_57p01() {
    let db = lab().fresh_db("ops_drain");
    lab().psql(Node::Primary, &db, "CREATE TABLE d(id int primary key, n int); INSERT INTO d VALUES (1, 0); GRANT ALL ON d TO app").unwrap();
    let sc = config().start();
    let url = sc.url(APP_USER, APP_PASSWORD, &db);
    let busy = connect(&url).await.unwrap();
    let idle = connect(&url).await.unwrap();
    idle.simple_query("SELECT 1").await.unwrap();
    busy.simple_query("BEGIN; UPDATE d SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
    sc.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New clients are refused while draining.
    assert!(
        connect(&url).await.is_err(),
        "a draining sidecar accepted a new client"
    );
    // The transaction in flight finishes and commits.
    busy.simple_query("UPDATE d SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
    busy.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        lab().psql(Node::Primary, &db, "SELECT n FROM d").unwrap(),
        "2"
    );
    // The idle client was told 57P01 and closed.
    let err = idle
        .simple_query("SELECT 1")
        .await
        .expect_err("idle client must be closed");
    assert!(code(&err) == "57P01" || idle.is_closed(), "{err}");
    let status = sc
        .wait_exit(Duration::from_secs(10))
        .expect("sidecar must exit after draining");
    assert!(status.success(), "exit status {status:?}\n{}", sc.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_valid_file_and_an_invalid_one_changes_nothing() {
    let db = lab().fresh_db("ops_reload");
    let cfg = config();
    let sc = cfg.clone().set("pool.max_size", 20).start();
    let file = sc.dir().join("pgsidecar.toml");
    assert!(file.exists(), "the test needs the sidecar's config file");
    let app = connect(&sc.url(APP_USER, APP_PASSWORD, &db)).await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    let admin = connect(&sc.url(SUPERUSER, SUPERUSER_PASSWORD, "pgsidecar"))
        .await
        .unwrap();
    let max_size = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get("max").map(str::to_string),
                _ => None,
            })
            .collect()
    };
    std::fs::write(&file, cfg.clone().set("pool.max_size", 3).to_toml()).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    assert_eq!(
        max_size(admin.simple_query("SHOW POOLS").await.unwrap()),
        vec!["3"]
    );
    // An invalid file: the console says why, nothing changes.
    let invalid = cfg.clone().set("pool.max_size", 0).set("pool.bogus", 1);
    std::fs::write(&file, invalid.to_toml()).unwrap();
    let err = admin
        .simple_query("RELOAD")
        .await
        .expect_err("invalid file must be rejected");
    assert!(
        err.to_string().contains("bogus") || format!("{err:?}").contains("bogus"),
        "{err:?}"
    );
    assert_eq!(
        max_size(admin.simple_query("SHOW POOLS").await.unwrap()),
        vec!["3"]
    );
    // SIGHUP does the same as RELOAD.
    std::fs::write(&file, cfg.set("pool.max_size", 7).to_toml()).unwrap();
    sc.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while max_size(admin.simple_query("SHOW POOLS").await.unwrap()) != vec!["7"] {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload\n{}",
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_with_so_reuseport_aborts_no_transaction() {
    restart_under_load_aborts_no_transaction(None).await;
}

/// The same on the Unix socket: the successor's socket replaces the old one's, clients
/// reconnecting on it reach the successor, and the old process's exit leaves it in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_on_the_unix_socket_aborts_no_transaction() {
    let dir = lab()
        .dir()
        .join(format!("ops-sock-{}", support::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    restart_under_load_aborts_no_transaction(Some(&dir)).await;
}

async fn restart_under_load_aborts_no_transaction(socket_dir: Option<&std::path::Path>) {
    let db = lab().fresh_db("ops_restart");
    lab().psql(Node::Primary, &db, "CREATE TABLE acct(id int primary key, a int, b int); INSERT INTO acct SELECT g, 0, 0 FROM generate_series(1, 8) g; GRANT ALL ON acct TO app").unwrap();
    let mut cfg = config();
    if let Some(dir) = socket_dir {
        cfg = cfg.set("listen.unix_socket_dir", dir.display().to_string());
    }
    let port = cfg.port();
    let old = cfg.start();
    let url = match socket_dir {
        Some(dir) => format!(
            "host={} port={port} user={APP_USER} password={APP_PASSWORD} dbname={db}",
            dir.display()
        ),
        None => old.url(APP_USER, APP_PASSWORD, &db),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (committed, reconnects) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for id in 1..=8i32 {
        let (url, stop, committed, reconnects) = (
            url.clone(),
            stop.clone(),
            committed.clone(),
            reconnects.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut aborted = Vec::new();
            let mut c: Option<tokio_postgres::Client> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(client) = c.as_ref().filter(|c| !c.is_closed()) else {
                    match connect(&url).await {
                        Ok(n) => c = Some(n),
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                // Failing to *start* is fine (the client reconnects, as apps do on 57P01);
                // failing once the transaction has begun would be an aborted transaction.
                if client.simple_query("BEGIN").await.is_err() {
                    c = None;
                    continue;
                }
                let r = async {
                    client
                        .execute("UPDATE acct SET a = a + 1 WHERE id = $1", &[&id])
                        .await?;
                    client
                        .execute("UPDATE acct SET b = b + 1 WHERE id = $1", &[&id])
                        .await?;
                    client.simple_query("COMMIT").await
                }
                .await;
                match r {
                    Ok(_) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        aborted.push(e.to_string());
                        c = None;
                    }
                }
            }
            aborted
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The successor binds the same port (SO_REUSEPORT) and socket, then the old one drains.
    let new = cfg.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !new.log().contains("pgsidecar listening") {
        assert!(
            Instant::now() < deadline,
            "successor never listened\n{}",
            new.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = committed.load(Ordering::Relaxed);
    old.terminate();
    let status = old
        .wait_exit(Duration::from_secs(15))
        .expect("old sidecar must exit");
    assert!(status.success(), "{status:?}\n{}", old.log());
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut aborted = Vec::new();
    for c in clients {
        aborted.extend(c.await.unwrap());
    }
    let after = committed.load(Ordering::Relaxed);
    println!(
        "committed {before} before the restart, {after} in all; {} reconnects",
        reconnects.load(Ordering::Relaxed)
    );
    assert!(
        aborted.is_empty(),
        "transactions aborted across the restart: {aborted:?}"
    );
    assert!(after > before, "no transaction ran through the successor");
    if socket_dir.is_some() {
        let c = connect(&url).await.unwrap_or_else(|e| {
            panic!(
                "the old process took the successor's socket: {e}\n{}",
                new.log()
            )
        });
        c.simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(
        lab()
            .psql(
                Node::Primary,
                &db,
                "SELECT sum(a)::text || ' ' || sum(b)::text FROM acct"
            )
            .unwrap(),
        format!("{after} {after}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_until_resume_and_lets_running_ones_finish() {
    let db = lab().fresh_db("ops_pause");
    let sc = config().start();
    let url = sc.url(APP_USER, APP_PASSWORD, &db);
    let running = connect(&url).await.unwrap();
    let waiting = connect(&url).await.unwrap();
    running.simple_query("BEGIN").await.unwrap();
    let admin = connect(&sc.url(SUPERUSER, SUPERUSER_PASSWORD, "pgsidecar"))
        .await
        .unwrap();
    admin.simple_query(&format!("PAUSE {db}")).await.unwrap();
    // A transaction already running carries on.
    running.simple_query("SELECT 1").await.unwrap();
    running.simple_query("COMMIT").await.unwrap();
    // A new one waits…
    let held = tokio::spawn(async move {
        waiting
            .simple_query("SELECT 'went through'")
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a new transaction ran while paused");
    // …and goes through, without an error, on RESUME.
    admin.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released after RESUME")
        .unwrap()
        .unwrap();
}

/// The sidecar's log lines that are slow-query entries (JSON format).
fn slow_entries(sc: &Sidecar) -> Vec<String> {
    sc.log()
        .lines()
        .filter(|l| l.contains("\"slow query\""))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_query_log_records_slow_requests_with_route_and_no_literals_and_follows_reload() {
    let l = lab();
    let db = l.fresh_db("ops_slow");
    let cfg = SidecarConfig::routed(l).http().set("log.format", "json");
    let sc = cfg.clone().set("log.slow_query", "1s").start();
    let app = connect(&format!(
        "{}?application_name=slow-test",
        sc.url(APP_USER, APP_PASSWORD, &db)
    ))
    .await
    .unwrap();
    let admin = connect(&sc.url(SUPERUSER, SUPERUSER_PASSWORD, "pgsidecar"))
        .await
        .unwrap();
    support::wait_roles_verified(&sc, 2).await;

    // Fast: far below the threshold, never logged.
    app.simple_query("SELECT 42 AS fast_marker").await.unwrap();
    // Slow on the primary (a hint sends it there), with a literal that must not be logged.
    app.simple_query(
        "/* pgsidecar: route=primary */ SELECT pg_sleep(1.2), 'secret-literal-value' AS on_primary",
    )
    .await
    .unwrap();
    // Slow on a replica (read-only: the analysis sends it there), extended protocol.
    app.query("SELECT pg_sleep($1::float8) AS on_replica", &[&1.2f64])
        .await
        .unwrap();
    // Slow inside a transaction: it runs where the transaction's first statement was routed.
    app.batch_execute("BEGIN").await.unwrap();
    app.simple_query("SELECT pg_sleep(1.2) AS in_transaction")
        .await
        .unwrap();
    app.batch_execute("COMMIT").await.unwrap();

    let entries = support::eventually(
        "three slow-query entries in the log",
        Duration::from_secs(10),
        || async {
            let e = slow_entries(&sc);
            if e.len() >= 3 {
                Ok(e)
            } else {
                Err(sc.log())
            }
        },
    )
    .await;
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert!(
        !entries.iter().any(|e| e.contains("fast_marker")),
        "{entries:#?}"
    );
    assert!(
        !sc.log().contains("secret-literal-value"),
        "a literal value reached the log"
    );
    let primary = &entries[0];
    for field in [
        "\"statement\":\"select pg_sleep(?), ? as on_primary\"",
        "\"route\":\"primary\"",
        &format!("\"node\":\"127.0.0.1:{}\"", l.primary_port()),
        "\"cache\":\"not cached\"",
        "\"user\":\"app\"",
        &format!("\"database\":\"{db}\""),
        "\"application_name\":\"slow-test\"",
    ] {
        assert!(primary.contains(field), "{field} missing in {primary}");
    }
    assert!(
        primary.contains("\"reason\":\"hint route=primary\""),
        "{primary}"
    );
    let replica = &entries[1];
    assert!(replica.contains("on_replica"), "{replica}");
    assert!(replica.contains("\"route\":\"replica\""), "{replica}");
    // After a read on the primary a replica may first have to show it replayed as far
    // (monotonic reads): the reason then says it waited.
    assert!(
        replica.contains("\"reason\":\"provably read-only"),
        "{replica}"
    );
    let replica_node = l
        .replica_ports()
        .iter()
        .any(|p| replica.contains(&format!("\"node\":\"127.0.0.1:{p}\"")));
    assert!(replica_node, "{replica}");
    let in_txn = &entries[2];
    assert!(in_txn.contains("in_transaction"), "{in_txn}");
    assert!(in_txn.contains("\"route\":\"primary\""), "{in_txn}");
    assert!(
        in_txn.contains("\"reason\":\"same backend as the open transaction or pinned session"),
        "{in_txn}"
    );

    // Reload without the option: the log stops.
    std::fs::write(sc.dir().join("pgsidecar.toml"), cfg.to_toml()).unwrap();
    let summary = admin.simple_query("RELOAD").await.unwrap();
    let said = format!("{summary:?}");
    assert!(said.contains("slow_query off"), "{said}");
    app.simple_query("SELECT pg_sleep(1.2) AS after_reload")
        .await
        .unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    assert_eq!(slow_entries(&sc).len(), 3, "{}", sc.log());
    assert_eq!(sc.metric("pgsidecar_slow_queries_total "), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_given_by_hostname_serves_clients_and_is_monitored() {
    let l = lab();
    let db = l.fresh_db("ops_dns");
    let replicas: Vec<String> = l
        .replica_ports()
        .iter()
        .map(|p| format!("postgres://localhost:{p}"))
        .collect();
    let sc = SidecarConfig::new()
        .upstream(&format!(
            "postgres://{APP_USER}:{APP_PASSWORD}@localhost:{}/postgres",
            l.primary_port()
        ))
        .set("upstream.replicas", replicas)
        .set("routing.health_interval", "100ms")
        .start();
    // The monitors reached both replicas by name.
    support::wait_roles_verified(&sc, 2).await;
    let app = connect(&sc.url(APP_USER, APP_PASSWORD, &db)).await.unwrap();
    app.batch_execute("CREATE TABLE t(id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let row = app.query_one("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert!(
        !sc.log().contains("last good addresses"),
        "localhost resolved, no fallback expected\n{}",
        sc.log()
    );
}
