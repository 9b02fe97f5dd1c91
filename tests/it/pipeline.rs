//! Pipelining (`[pool] pipeline = true`): several clients' fast autocommit reads share one
//! backend connection. Through the real binary and real Postgres: every client gets its own
//! answer, errors and dead backends stay with the requests they hit, slow or blocked
//! statements hold nobody back, and clients with their own settings keep them.

use crate::support;

use std::time::Duration;

use crate::support::{lab, Node, Sidecar, SidecarConfig, SUPERUSER, SUPERUSER_PASSWORD};

/// A sidecar in front of the lab's primary with pipelining on (reads under 50 ms) and its
/// HTTP endpoint (for the pipelining counters).
fn pipelining() -> SidecarConfig {
    SidecarConfig::primary(lab())
        .http()
        .set("pool.pipeline", true)
        .set("pool.pipeline_fast", "50ms")
}

/// `pgsidecar_pipeline_requests_total` now.
fn pipelined(sc: &Sidecar) -> u64 {
    sc.metric("pgsidecar_pipeline_requests_total ") as u64
}

async fn connect(sc: &Sidecar, db: &str) -> tokio_postgres::Client {
    support::app_client(sc, db).await
}

fn simple_value(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// Runs the three ways a client reads (simple query with a literal, unnamed extended
/// statement, prepared statement) `rounds` times with values only this client uses, and
/// checks each answer is its own.
async fn read_own_values(c: tokio_postgres::Client, client: i32, rounds: i32) {
    let prepared = c.prepare("SELECT $1::int * 2").await.unwrap();
    for i in 0..rounds {
        let v = client * 100_000 + i;
        let simple = c
            .simple_query(&format!("SELECT {v}::int + 1"))
            .await
            .unwrap();
        assert_eq!(simple_value(&simple), Some((v + 1).to_string()));
        let typed = c
            .query_typed(
                "SELECT $1::int + 2",
                &[(&v, tokio_postgres::types::Type::INT4)],
            )
            .await
            .unwrap();
        assert_eq!(typed[0].get::<_, i32>(0), v + 2);
        let row = c.query_one(&prepared, &[&v]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), v * 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_clients_each_get_their_own_answers() {
    let db = lab().fresh_db("pipe_own");
    let sc = pipelining().start();
    // First runs go the normal way and show the statements are fast.
    read_own_values(connect(&sc, &db).await, 0, 3).await;
    let before = pipelined(&sc);
    let mut tasks = Vec::new();
    for client in 1..=24 {
        let c = connect(&sc, &db).await;
        tasks.push(tokio::spawn(read_own_values(c, client, 100)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        pipelined(&sc) > before,
        "nothing was pipelined\n{}",
        sc.log()
    );
    assert!(sc.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_in_one_pipelined_read_leaves_other_clients_answers_alone() {
    let db = lab().fresh_db("pipe_err");
    let sc = pipelining().start();
    let warm = connect(&sc, &db).await;
    let stmt = "SELECT 1000000 / $1::int";
    for v in 1..4 {
        warm.query_one(stmt, &[&v]).await.unwrap();
    }
    let before = pipelined(&sc);
    let mut tasks = Vec::new();
    for client in 1..=16i32 {
        let c = connect(&sc, &db).await;
        tasks.push(tokio::spawn(async move {
            let s = c.prepare(stmt).await.unwrap();
            for i in 0..100 {
                // Every fourth client divides by zero now and then; the others never do.
                let divisor = if client % 4 == 0 && i % 3 == 0 {
                    0
                } else {
                    client
                };
                match c.query_one(&s, &[&divisor]).await {
                    Ok(row) => {
                        assert_ne!(divisor, 0, "division by zero answered with a row");
                        assert_eq!(row.get::<_, i32>(0), 1_000_000 / divisor);
                    }
                    Err(e) => {
                        assert_eq!(divisor, 0, "client {client} got another's error: {e}");
                        assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(pipelined(&sc) > before, "nothing was pipelined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipelined_backend_killed_mid_flight_gives_errors_or_right_answers_never_wrong_ones() {
    let db = lab().fresh_db("pipe_kill");
    let sc = pipelining().start();
    read_own_values(connect(&sc, &db).await, 0, 3).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 1..=16i32 {
        let c = connect(&sc, &db).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut i) = (0u32, 0i32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v = client * 1_000_000 + i;
                i += 1;
                match c.query("SELECT $1::int * 2", &[&v]).await {
                    Ok(rows) => {
                        assert_eq!(rows.len(), 1);
                        assert_eq!(rows[0].get::<_, i32>(0), v * 2, "client {client}: wrong");
                        ok += 1;
                    }
                    // An error is an acceptable answer, a closed connection too (it fails at
                    // once from then on: stop rather than spin and starve the test).
                    Err(_) if c.is_closed() => break,
                    Err(_) => tokio::task::yield_now().await,
                }
            }
            ok
        }));
    }
    let admin = support::client(&lab().url(Node::Primary, SUPERUSER, SUPERUSER_PASSWORD, &db))
        .await
        .unwrap();
    let before = pipelined(&sc);
    for _ in 0..5 {
        // Wait until something was pipelined since the last kill, then kill every backend of
        // this database: the pipelining ones among them are mid-flight.
        let seen = pipelined(&sc);
        let mut polls = 0;
        while pipelined(&sc) == seen {
            polls += 1;
            assert!(polls < 3000, "pipelining stopped\n{}", sc.log());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(pipelined(&sc) > before);
    assert!(
        sc.log().contains("pipelined server connection lost"),
        "no pipelining connection was hit\n{}",
        sc.log()
    );
    // The sidecar keeps serving, on new backends.
    let c = connect(&sc, &db).await;
    let row = c.query_one("SELECT $1::int * 2", &[&21i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert!(sc.is_running(), "{}", sc.log());
    assert!(!sc.log().contains("panicked"), "{}", sc.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipelined_read_that_blocks_holds_back_no_other_client_and_is_not_pipelined_again() {
    let db = lab().fresh_db("pipe_slow");
    let sc = pipelining().start();
    let admin = support::client(&lab().url(Node::Primary, SUPERUSER, SUPERUSER_PASSWORD, &db))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE TABLE t(id int primary key, v int); INSERT INTO t VALUES (1, 10); GRANT ALL ON t TO app")
        .await
        .unwrap();
    let a = connect(&sc, &db).await;
    // Prepared before the lock is taken: a Parse would wait for the lock too, on the
    // normal path; the point here is an execution that waits.
    let read = a.prepare("SELECT v FROM t WHERE id = $1").await.unwrap();
    for _ in 0..3 {
        a.query_one(&read, &[&1i32]).await.unwrap();
    }
    let seen = pipelined(&sc);
    a.query_one(&read, &[&1i32]).await.unwrap();
    assert_eq!(pipelined(&sc), seen + 1, "a fast read is pipelined");

    // Now the same read blocks: another session holds the table's lock.
    admin
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let blocked = tokio::spawn(async move {
        let row = a.query_one(&read, &[&1i32]).await.unwrap();
        (a, read, row.get::<_, i32>(0))
    });
    loop {
        let waiting = admin
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE c.relname = 't' AND NOT l.granted",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Other clients' fast reads are answered while that read waits.
    for client in 1..=8i32 {
        let c = connect(&sc, &db).await;
        for i in 0..20 {
            let v = client * 1000 + i;
            let row = c.query_one("SELECT $1::int + 1", &[&v]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), v + 1);
        }
    }
    assert!(!blocked.is_finished(), "the lock did not block the read");
    admin.batch_execute("COMMIT").await.unwrap();
    let (a, read, v) = blocked.await.unwrap();
    assert_eq!(v, 10);
    // It was seen slow: its next run takes the normal path.
    let seen = pipelined(&sc);
    a.query_one(&read, &[&1i32]).await.unwrap();
    assert_eq!(pipelined(&sc), seen, "a read seen slow was pipelined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_set_a_setting_are_not_pipelined_and_keep_their_own_value() {
    let db = lab().fresh_db("pipe_set");
    let sc = pipelining().start();
    let read = "SELECT current_setting('work_mem')";
    let warm = connect(&sc, &db).await;
    for _ in 0..3 {
        warm.query_one(read, &[]).await.unwrap();
    }
    let default: String = warm.query_one(read, &[]).await.unwrap().get(0);
    let before = pipelined(&sc);
    let mut tasks = Vec::new();
    for client in 0..12 {
        let c = connect(&sc, &db).await;
        let default = default.clone();
        tasks.push(tokio::spawn(async move {
            let own = if client % 3 == 0 {
                c.batch_execute("SET work_mem = '7MB'").await.unwrap();
                "7MB".to_string()
            } else {
                default
            };
            for _ in 0..50 {
                let v: String = c.query_one(read, &[]).await.unwrap().get(0);
                assert_eq!(v, own, "client {client} saw another session's setting");
                let show = c.simple_query("SHOW work_mem").await.unwrap();
                assert_eq!(simple_value(&show).as_deref(), Some(own.as_str()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(pipelined(&sc) > before, "nothing was pipelined");
}

/// Pipelining connections serve many clients each, but never the whole pool: with a pool of
/// two, transactions (which need a connection of their own) keep running while two dozen
/// clients read as fast as they can through pipelining — no 53300, no waiting out the
/// checkout timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelining_never_starves_requests_that_need_their_own_connection() {
    let db = lab().fresh_db("pipe_share");
    let sc = pipelining()
        .set("pool.max_size", 2)
        .set("pool.checkout_timeout", "3s")
        .start();
    let setup = connect(&sc, &db).await;
    setup
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 0)")
        .await
        .unwrap();
    read_own_values(connect(&sc, &db).await, 0, 3).await;
    let before = pipelined(&sc);
    let mut readers = Vec::new();
    for client in 1..=24 {
        let c = connect(&sc, &db).await;
        readers.push(tokio::spawn(read_own_values(c, client, 150)));
    }
    let mut writers = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&sc, &db).await;
        writers.push(tokio::spawn(async move {
            for _ in 0..40 {
                let tx = c.transaction().await?;
                tx.execute("UPDATE t SET n = n + 1 WHERE id = 1", &[])
                    .await?;
                tx.commit().await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for w in writers {
        if let Err(e) = w.await.unwrap() {
            panic!(
                "a transaction failed beside pipelined reads: {e}\n{}",
                sc.log()
            );
        }
    }
    for r in readers {
        r.await.unwrap();
    }
    let n: i32 = setup
        .query_one("SELECT n FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 80, "every committed increment is there");
    assert!(
        pipelined(&sc) > before,
        "nothing was pipelined\n{}",
        sc.log()
    );
    assert!(sc.is_running());
}
