//! The foundation through real clients: tokio-postgres, psql and pgbench against a real
//! Postgres, through the pgsidecar binary. The shared lab; each test uses its own
//! database and its own sidecar process.

use crate::support;
use pgsidecar::wire::tag::front;

use crate::support::{assert_no_panic, code};

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    data_rows, errors, lab, status, tags, Node, Raw, Sidecar, SidecarConfig, APP_PASSWORD, APP_USER,
};

/// A sidecar in front of the lab's primary alone; a client must finish its startup within 1 s.
fn sidecar() -> SidecarConfig {
    SidecarConfig::primary(lab()).set("listen.startup_timeout", "1s")
}

use crate::support::app_client as connect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_protocol_round_trip_values() {
    let db = lab().fresh_db("fnd_basic");
    let sc = sidecar().start();
    let c = connect(&sc, &db).await;
    let rows = c.simple_query("CREATE TABLE t(id int primary key, v text); INSERT INTO t VALUES (1,'a'),(2,'b'); SELECT count(*) FROM t").await.unwrap();
    let counts: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(counts, vec!["2"]);
    let stmt = c
        .prepare("SELECT v, $1::int + id FROM t WHERE id = $2")
        .await
        .unwrap();
    for i in 0..20 {
        let row = c.query_one(&stmt, &[&i, &1i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "a");
        assert_eq!(row.get::<_, i32>(1), i + 1);
    }
    let row = c
        .query_one(
            "SELECT $1::text, $2::float8, $3::bytea",
            &[&"Grüße 🚀", &1.5f64, &vec![0u8, 1, 2]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Grüße 🚀");
    assert_eq!(row.get::<_, Vec<u8>>(2), vec![0, 1, 2]);
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_rejected_with_28p01() {
    let db = lab().fresh_db("fnd_pw");
    let sc = sidecar().start();
    let err = tokio_postgres::connect(
        &sc.url(APP_USER, "not-the-password", &db),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("wrong password must fail"));
    assert_eq!(code(&err), "28P01", "{err}");
    // The right password still works afterwards.
    let c = connect(&sc, &db).await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_answers_53300_instead_of_hanging() {
    let db = lab().fresh_db("fnd_exhaust");
    let sc = sidecar()
        .set("pool.max_size", 2)
        .set("pool.checkout_timeout", "500ms")
        .start();
    let a = connect(&sc, &db).await;
    let b = connect(&sc, &db).await;
    let c = connect(&sc, &db).await;
    a.simple_query("BEGIN").await.unwrap();
    b.simple_query("BEGIN").await.unwrap();
    let started = Instant::now();
    let err = c
        .simple_query("SELECT 1")
        .await
        .expect_err("third client has no backend");
    assert_eq!(code(&err), "53300", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited {:?}",
        started.elapsed()
    );
    a.simple_query("COMMIT").await.unwrap();
    // The client that got the error carries on once a backend is free.
    c.simple_query("SELECT 1").await.unwrap();
    b.simple_query("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_transaction_leaves_no_lock_and_no_open_transaction() {
    let db = lab().fresh_db("fnd_kill");
    lab().psql(Node::Primary, &db, "CREATE TABLE k(id int primary key, n int); INSERT INTO k VALUES (1, 0); GRANT ALL ON k TO app").unwrap();
    let sc = sidecar().set("pool.max_size", 1).start();
    {
        let (client, conn) =
            tokio_postgres::connect(&sc.url(APP_USER, APP_PASSWORD, &db), tokio_postgres::NoTls)
                .await
                .unwrap();
        let handle = tokio::spawn(conn);
        client
            .simple_query("BEGIN; UPDATE k SET n = 99 WHERE id = 1")
            .await
            .unwrap();
        handle.abort(); // the socket closes without Terminate, mid-transaction
        drop(client);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The only backend (pool of 1) is usable and the row lock is gone.
    let c = connect(&sc, &db).await;
    c.simple_query("SET lock_timeout = '2s'").await.unwrap();
    c.simple_query("UPDATE k SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
    let n: i32 = c
        .query_one("SELECT n FROM k WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 1,
        "the killed client's update must have been rolled back"
    );
    let open = lab()
        .psql(Node::Primary, "postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND state LIKE 'idle in transaction%'"))
        .unwrap();
    assert_eq!(open, "0");
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_interrupts_pg_sleep() {
    let db = lab().fresh_db("fnd_cancel");
    let sc = sidecar().start();
    let c = connect(&sc, &db).await;
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = Instant::now();
    let err = c
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("sleep must be cancelled");
    assert_eq!(code(&err), "57014", "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap().unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_value_round_trips_intact() {
    let db = lab().fresh_db("fnd_big");
    let sc = sidecar().start();
    let c = connect(&sc, &db).await;
    let big: String = (0..10 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let row = c
        .query_one("SELECT $1::text, length($1::text)", &[&big])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1) as usize, big.len());
    assert!(row.get::<_, String>(0) == big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_idle_clients_share_a_pool_of_twenty() {
    let db = lab().fresh_db("fnd_many");
    let sc = sidecar().set("pool.max_size", 20).start();
    let mut clients = Vec::new();
    for chunk in 0..10 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let url = sc.url(APP_USER, APP_PASSWORD, &db);
            set.spawn(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await?;
                Ok::<_, tokio_postgres::Error>(client)
            });
        }
        while let Some(r) = set.join_next().await {
            clients.push(
                r.unwrap()
                    .unwrap_or_else(|e| panic!("client in chunk {chunk}: {e:?}")),
            );
        }
    }
    assert_eq!(clients.len(), 1000);
    let backends: i64 = lab()
        .psql(Node::Primary, "postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name <> 'pgsidecar-monitor'"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        backends <= 20,
        "{backends} backend connections for a pool of 20"
    );
    // Every one of them is still served.
    let mut set = tokio::task::JoinSet::new();
    for c in clients {
        set.spawn(async move { c.simple_query("SELECT 2").await.map(|_| ()) });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_the_server_ends_between_transactions_cost_the_clients_nothing() {
    let db = lab().fresh_db("fnd_terminated");
    let sc = sidecar().set("pool.max_size", 4).start();
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&sc, &db).await);
    }
    for round in 0..8 {
        // Every client has used a backend, so the pool holds idle ones (and a client may
        // still have one attached) when the server ends them all, as a restart or
        // pg_terminate_backend would.
        for c in &clients {
            c.simple_query("SELECT 1").await.unwrap();
        }
        let ended = lab()
            .psql(
                Node::Primary,
                "postgres",
                &format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = '{db}' AND application_name <> 'pgsidecar-monitor'"
                ),
            )
            .unwrap();
        assert_ne!(ended, "0", "round {round}: no backend to end");
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (i, c) in clients.iter().enumerate() {
            let row = c
                .query_one("SELECT $1::int + 1", &[&(i as i32)])
                .await
                .unwrap_or_else(|e| panic!("round {round}, client {i}: {e:?}\n{}", sc.log()));
            assert_eq!(row.get::<_, i32>(0), i as i32 + 1);
        }
    }
    assert_no_panic(&sc);
}

/// A sidecar beside the application on Unix sockets at both ends: a client reaches it with
/// libpq's `host=<dir>`, it reaches Postgres the same way, the client shows as `[local]`, and a
/// `local` auth rule covers socket clients only (TCP clients here meet the `reject` rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_carry_clients_and_backends() {
    let db = lab().fresh_db("fnd_unix");
    let dir = lab()
        .dir()
        .join(format!("sidecar-sock-{}", support::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let sc = SidecarConfig::new()
        .set("listen.unix_socket_dir", dir.display().to_string())
        .set("listen.unix_socket_mode", 0o700)
        .set(
            "upstream.primary",
            format!(
                "postgres://localhost:{}/?host={}",
                lab().primary_port(),
                lab().dir().join("sock").display()
            ),
        )
        .auth_rule(&[("address", "local"), ("method", "trust")])
        .auth_rule(&[("address", "*"), ("method", "reject")])
        .set("admin.users", vec![APP_USER])
        .set("admin.auth", "trust")
        .start();
    let port = sc.port();
    let socket = dir.join(format!(".s.PGSQL.{port}"));
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::metadata(&socket).expect("the sidecar made no socket file");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }
    let local = |database: &str| {
        format!(
            "host={} port={port} user={APP_USER} dbname={database}",
            dir.display()
        )
    };
    let c = support::client(&local(&db))
        .await
        .unwrap_or_else(|e| panic!("connect on the Unix socket: {e}\n{}", sc.log()));
    c.batch_execute("CREATE TABLE t(id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'ü')")
        .await
        .unwrap();
    for i in 0..20 {
        let row = c
            .query_one("SELECT v, $1::int FROM t WHERE id = 1", &[&i])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "ü");
    }
    // The backends really are on Postgres' socket: it reports no client address for them.
    let on_socket = lab()
        .psql(
            Node::Primary,
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
                 AND client_addr IS NULL AND application_name <> 'pgsidecar-monitor'"
            ),
        )
        .unwrap();
    assert_ne!(
        on_socket, "0",
        "no backend of the sidecar on the Unix socket"
    );
    let console = support::client(&local("pgsidecar")).await.unwrap();
    let clients = console.simple_query("SHOW CLIENTS").await.unwrap();
    let peers: Vec<String> = clients
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => (0..r.len())
                .filter_map(|i| r.get(i))
                .find(|v| v.starts_with('[')),
            _ => None,
        })
        .map(str::to_string)
        .collect();
    assert!(peers.iter().any(|p| p == "[local]"), "{peers:?}");
    let tcp = support::client(&sc.url(APP_USER, APP_PASSWORD, &db)).await;
    let Err(err) = tcp else {
        panic!("a TCP client passed the reject rule");
    };
    assert_eq!(code(&err), "28000", "{err}");
    assert_no_panic(&sc);
    drop((c, console));
    sc.terminate();
    assert!(
        sc.wait_exit(Duration::from_secs(20)).is_some(),
        "{}",
        sc.log()
    );
    assert!(!socket.exists(), "the stopped sidecar left its socket file");
}

fn psql(sc: &Sidecar, db: &str, args: &[&str]) -> std::process::Output {
    Command::new("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &sc.port().to_string(),
            "-U",
            APP_USER,
            "-d",
            db,
        ])
        .args(args)
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .expect("run psql")
}

#[test]
fn psql_multi_statement_and_copy_round_trip() {
    let db = lab().fresh_db("fnd_psql");
    let sc = sidecar().start();
    let out = psql(&sc, &db, &["-c", "CREATE TABLE c(id int, v text); INSERT INTO c SELECT g, 'v' || g FROM generate_series(1, 1000) g; SELECT count(*) FROM c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim().lines().last(),
        Some("1000")
    );
    let file = sc.dir().join("c.csv");
    let out = psql(
        &sc,
        &db,
        &["-c", &format!("\\copy c TO '{}' CSV", file.display())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(
        &sc,
        &db,
        &["-c", &format!("\\copy c FROM '{}' CSV", file.display())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(
        &sc,
        &db,
        &["-c", "SELECT count(*), count(DISTINCT id) FROM c"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2000|1000");
    // A failing COPY leaves the session usable.
    let out = psql(&sc, &db, &["-c", "COPY c FROM STDIN"]);
    let _ = out;
    let out = psql(&sc, &db, &["-c", "SELECT 1"]);
    assert!(out.status.success());
}

#[test]
fn pgbench_simple_and_extended_complete_without_failures() {
    let db = lab().fresh_db("fnd_pgbench");
    let sc = sidecar().set("pool.max_size", 4).start();
    let base = ["-h", "127.0.0.1", "-U", APP_USER];
    let port = sc.port().to_string();
    let init = Command::new("pgbench")
        .args(base)
        .args(["-p", &port, "-i", "-s", "1", &db])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "pgbench -i through the sidecar: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended"] {
        let out = Command::new("pgbench")
            .args(base)
            .args([
                "-p", &port, "-n", "-M", mode, "-c", "8", "-j", "2", "-T", "3", &db,
            ])
            .env("PGPASSWORD", APP_PASSWORD)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pgbench -M {mode}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("number of failed transactions: 0"),
            "pgbench -M {mode}: {text}"
        );
        let tx = support::pgbench_processed(&text).unwrap_or(0);
        assert!(tx > 0, "no transactions in pgbench -M {mode}: {text}");
    }
    assert_no_panic(&sc);
}

// ---- bad input ----------------------------------------------------------------------------

async fn still_serves(sc: &Sidecar, db: &str) {
    let c = connect(sc, db).await;
    c.simple_query("SELECT 1").await.unwrap();
    assert_no_panic(sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_or_a_clean_close_and_others_keep_working() {
    let db = lab().fresh_db("fnd_bad");
    // A pool of 2: a backend leaked by any bad client would show below.
    let sc = sidecar()
        .set("pool.max_size", 2)
        .set("pool.checkout_timeout", "3s")
        .start();
    let bystander = connect(&sc, &db).await;
    bystander.simple_query("BEGIN").await.unwrap();

    // Garbage before startup (an HTTP request): protocol error, connection closed.
    let mut r = Raw::connect(&sc);
    r.0.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let c = r.error_code();
    assert!(c.is_none() || c.as_deref() == Some("08P01"), "{c:?}");

    // A 2 GB length field: refused at once with 54000, never buffered.
    let mut r = Raw::login(&sc, &db);
    r.0.write_all(&[front::QUERY, 0x7f, 0xff, 0xff, 0xff])
        .unwrap();
    assert_eq!(r.error_code().as_deref(), Some("54000"));

    // A length below 4: protocol violation.
    let mut r = Raw::login(&sc, &db);
    r.0.write_all(&[front::QUERY, 0, 0, 0, 2]).unwrap();
    assert_eq!(r.error_code().as_deref(), Some("08P01"));

    // An unknown message type: protocol violation.
    let mut r = Raw::login(&sc, &db);
    r.send(b'?', b"hello");
    assert_eq!(r.error_code().as_deref(), Some("08P01"));

    // A truncated frame, then the client vanishes.
    let mut r = Raw::login(&sc, &db);
    r.0.write_all(&[front::QUERY, 0, 0, 0, 100, b'S', b'E'])
        .unwrap();
    drop(r);

    // A malformed Bind (names not terminated) gets 08P01, not a panic.
    let mut r = Raw::login(&sc, &db);
    r.send(front::BIND, b"portal-without-terminator");
    r.send(front::SYNC, b"");
    assert_eq!(r.error_code().as_deref(), Some("08P01"));

    // A client that never finishes startup is closed after startup_timeout (1 s here).
    let mut r = Raw::connect(&sc);
    r.0.write_all(&[0, 0, 0, 50]).unwrap();
    let started = Instant::now();
    assert!(r.closed(), "half-started client must be closed");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );

    // A startup packet with an absurd length.
    let mut r = Raw::connect(&sc);
    r.0.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .unwrap();
    assert!(r.closed());

    // The bystander's transaction and new clients are unaffected.
    bystander.simple_query("SELECT 1").await.unwrap();
    bystander.simple_query("COMMIT").await.unwrap();
    still_serves(&sc, &db).await;
    // No backend leaked: two transactions at once need the whole pool.
    let (a, b) = (connect(&sc, &db).await, connect(&sc, &db).await);
    for c in [&a, &b] {
        c.simple_query("BEGIN; SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("a backend leaked after bad input: {e}"));
    }
    for c in [&a, &b] {
        c.simple_query("COMMIT").await.unwrap();
    }
    assert_no_panic(&sc);
}

#[test]
fn flags_alone_are_enough_for_a_quick_start() {
    let db = lab().fresh_db("fnd_flags");
    let port = support::free_port();
    let sc = Sidecar::start_args(&[
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--primary".to_string(),
        format!("postgres://127.0.0.1:{}", lab().primary_port()),
    ]);
    let out = psql(&sc, &db, &["-c", "SELECT current_user"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sc.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), APP_USER);
}

#[test]
fn check_reports_unknown_keys_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[listen]\naddr = \"127.0.0.1:1\"\n\n[pool]\nmax_sise = 3\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5") && err.contains("max_sise"), "{err}");
    let ok = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgsidecar.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// One backend shared by every client: whatever one client leaves on it, the next one meets.
fn one_backend_sidecar() -> Sidecar {
    sidecar()
        .set("pool.mode", "transaction")
        .set("pool.max_size", 1)
        .start()
}

#[test]
fn parse_of_a_name_in_use_gets_42p05_and_keeps_the_old_statement() {
    let db = lab().fresh_db("fnd_dup_parse");
    let sc = one_backend_sidecar();
    let mut r = Raw::login(&sc, &db);
    r.parse("s1", "SELECT 1");
    assert_eq!(tags(&r.sync()), ['1', 'Z']);
    // Redefining it fails where Postgres fails; the rest of the batch is skipped.
    r.parse("s1", "SELECT 2");
    r.bind("", "s1", &[]);
    r.execute("");
    let got = r.sync();
    assert_eq!(tags(&got), ['E', 'Z']);
    assert_eq!(
        errors(&got),
        [(
            "42P05".to_string(),
            "prepared statement \"s1\" already exists".to_string()
        )]
    );
    assert_eq!(status(&got), 'I');
    r.bind("", "s1", &[]);
    r.execute("");
    assert_eq!(data_rows(&r.sync()), [[Some("1".to_string())]]);
    // Inside a transaction the error aborts it, as in Postgres.
    r.simple("BEGIN");
    r.parse("s1", "SELECT 3");
    let got = r.sync();
    assert_eq!(errors(&got)[0].0, "42P05");
    assert_eq!(status(&got), 'E');
    assert_eq!(status(&r.simple("ROLLBACK")), 'I');
    // A Parse that failed, or was skipped after an error, defined nothing: the name is free.
    r.parse("s2", "SELEC 1");
    assert_eq!(errors(&r.sync())[0].0, "42601");
    r.statement("SELECT 1/0", &[]);
    r.parse("s3", "SELECT 3");
    assert_eq!(errors(&r.sync())[0].0, "22012");
    r.parse("s2", "SELECT 2");
    r.parse("s3", "SELECT 3");
    r.bind("", "s2", &[]);
    r.execute("");
    r.bind("", "s3", &[]);
    r.execute("");
    let got = r.sync();
    assert!(errors(&got).is_empty(), "{:?}", errors(&got));
    assert_eq!(
        data_rows(&got),
        [[Some("2".to_string())], [Some("3".to_string())]]
    );
    // Closed, the name can be used again.
    r.send(front::CLOSE, b"Ss1\0");
    r.parse("s1", "SELECT 4");
    r.bind("", "s1", &[]);
    r.execute("");
    assert_eq!(data_rows(&r.sync()), [[Some("4".to_string())]]);
    assert_no_panic(&sc);
}

#[test]
fn the_unnamed_statement_follows_its_client_to_another_backend() {
    let db = lab().fresh_db("fnd_unnamed");
    let sc = one_backend_sidecar();
    let mut a = Raw::login(&sc, &db);
    let mut b = Raw::login(&sc, &db);
    a.parse("", "SELECT $1::int + 1");
    assert_eq!(tags(&a.sync()), ['1', 'Z']);
    // Another client's unnamed statement now sits on the only backend.
    b.parse("", "SELECT 'b''s statement'");
    assert_eq!(tags(&b.sync()), ['1', 'Z']);
    a.bind("", "", &["41"]);
    a.describe_portal("");
    a.execute("");
    let got = a.sync();
    assert_eq!(tags(&got), ['2', 'T', 'D', 'C', 'Z']);
    assert_eq!(data_rows(&got), [[Some("42".to_string())]]);
    // Bound again later, and described as a statement: still the client's own.
    b.bind("", "", &[]);
    b.execute("");
    assert_eq!(data_rows(&b.sync()), [[Some("b's statement".to_string())]]);
    a.send(front::DESCRIBE, b"S\0");
    a.bind("", "", &["1"]);
    a.execute("");
    let got = a.sync();
    assert_eq!(tags(&got), ['t', 'T', '2', 'D', 'C', 'Z']);
    assert_eq!(data_rows(&got), [[Some("2".to_string())]]);
    // A simple query ends the unnamed statement, as in Postgres: then it does not exist,
    // whatever another client left on the backend.
    a.simple("SELECT 1");
    b.parse("", "SELECT 'b again'");
    b.sync();
    a.bind("", "", &["1"]);
    a.execute("");
    let got = a.sync();
    assert_eq!(tags(&got), ['E', 'Z']);
    assert_eq!(
        errors(&got),
        [(
            "26000".to_string(),
            "unnamed prepared statement does not exist".to_string()
        )]
    );
    assert_no_panic(&sc);
}
