//! Issue 17: no client ever waits forever, and prepared statements survive DDL — in the full
//! topology (primary, 2 streaming replicas, Redis, the example config's cache rules and
//! `[[locks]]`, transaction pooling, a pool of 4).
//!
//! The driver reproductions run `tests/drivers/python/regressions.py` in the venv that
//! `tests/drivers/run.sh` sets up (tests/drivers/.venv); each is bounded by its own timeout.
//!
//! Run alone: `cargo test --test it nohang:: -- --nocapture`.

use crate::support;
use pgsidecar::wire::tag::{back, front};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{lab, Lab, Node, Sidecar, SidecarConfig, APP_PASSWORD, APP_USER};

/// Longest a driver case may run before it counts as a hang.
const CASE_LIMIT: Duration = Duration::from_secs(60);

/// The example config (`config/pgsidecar.toml`) in front of the shared lab: its routing and
/// cache rules, Redis, the inventory lock, transaction pooling with 4 backends per pool.
fn full_sidecar(l: &Lab) -> Sidecar {
    SidecarConfig::example_topology(l)
        .set("pool.mode", "transaction")
        .set("pool.max_size", 4)
        .set("routing.max_wait", "50ms")
        .set("log.level", "pgsidecar=debug,info")
        .start()
}

/// A fresh database whose sessions commit with `synchronous_commit = sc`.
fn db_with_commit(l: &Lab, prefix: &str, sc: &str) -> String {
    let db = l.fresh_db(prefix);
    l.psql(
        Node::Primary,
        "postgres",
        &format!("ALTER DATABASE \"{db}\" SET synchronous_commit = '{sc}'"),
    )
    .expect("set synchronous_commit");
    db
}

/// Runs one case of regressions.py through `sc`; panics (with the sidecar's log) unless it
/// printed `ok CASE` within [`CASE_LIMIT`].
fn run_case(sc: &Sidecar, db: &str, case: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/drivers/python/regressions.py"
    );
    let began = Instant::now();
    let out = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(format!("{}", CASE_LIMIT.as_secs() + 5))
        .arg(support::driver_python())
        .arg(script)
        .arg(case)
        .arg(format!("{}", CASE_LIMIT.as_secs()))
        .env("PGSIDECAR_DSN", sc.url(APP_USER, APP_PASSWORD, db))
        .env(
            "PRIMARY_DSN",
            lab().url(Node::Primary, APP_USER, APP_PASSWORD, db),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run regressions.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "{case}: {:?} in {:.1}s\n{stdout}{stderr}",
        out.status,
        began.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success() && stdout.contains(&format!("ok {case}")),
        "{case} failed ({}):\n{stdout}\n{stderr}\n--- sidecar log (tail) ---\n{}",
        out.status,
        tail(&sc.log(), 60)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn asyncpg_copy_records_to_table_completes_with_two_replicas() {
    let l = lab();
    let sc = full_sidecar(l);
    for sync in ["off", "on", "remote_apply"] {
        let db = db_with_commit(l, "nh_copy", sync);
        run_case(&sc, &db, "copy_records");
    }
}

#[test]
fn psycopg_pipeline_executemany_works_with_two_replicas() {
    let l = lab();
    let sc = full_sidecar(l);
    for sync in ["off", "on", "remote_apply"] {
        let db = db_with_commit(l, "nh_pipe", sync);
        run_case(&sc, &db, "pipeline_executemany");
    }
}

#[test]
fn statements_prepared_before_an_enum_is_recreated_still_run() {
    let l = lab();
    let sc = full_sidecar(l);
    for sync in ["off", "on"] {
        let db = db_with_commit(l, "nh_enum", sync);
        run_case(&sc, &db, "enum_recreate_psycopg");
        run_case(&sc, &db, "enum_recreate_asyncpg");
        run_case(&sc, &db, "enum_array_executemany");
    }
}

#[test]
fn a_replica_read_planned_before_ddl_made_elsewhere_is_run_again_re_prepared() {
    let l = lab();
    let sc = full_sidecar(l);
    let db = db_with_commit(l, "nh_ext", "on");
    run_case(&sc, &db, "external_ddl_heal");
}

/// The same DDL made outside the sidecar, with no replica configured: every read goes to the
/// primary for want of one, and the proxy's statement prepared there before the DDL fails with
/// `cache lookup failed for type`. Nothing of the read reached the client, so it runs again
/// re-prepared, as it does when a replica fails it. Before, the error reached the client
/// (found when the full suite's load made the replicas miss `max_wait` in the test above).
#[test]
fn a_read_the_primary_took_for_want_of_a_replica_is_run_again_re_prepared_after_outside_ddl() {
    let l = lab();
    let sc = SidecarConfig::new()
        .upstream(&format!(
            "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/postgres",
            l.primary_port()
        ))
        .set("pool.mode", "transaction")
        .set("pool.max_size", 4)
        .cache(&l.redis_url())
        .lock("inventory", &["sku_id", "warehouse_id"])
        .set("log.level", "pgsidecar=debug,info")
        .start();
    let db = db_with_commit(l, "nh_ext_primary", "on");
    run_case(&sc, &db, "external_ddl_heal");
}

// ---- a backend that breaks response matching on purpose --------------------------------------

/// A tiny fake Postgres (md5 login accepting any password, simple queries only) whose answers can be made wrong on
/// purpose: `pgsc_desync` is answered with a BindComplete where a query's answer belongs,
/// `pgsc_silent` is never answered (the backend then reports itself `idle` in
/// `pg_stat_activity`, as a real one waiting for input would). Anything else: one row.
fn fake_backend() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let msg = |tag: u8, body: &[u8]| {
                    let mut m = vec![tag];
                    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
                    m.extend_from_slice(body);
                    m
                };
                let row = |text: &str| {
                    let mut out = Vec::new();
                    let mut t = 1i16.to_be_bytes().to_vec();
                    t.extend_from_slice(b"x\0");
                    t.extend_from_slice(&0i32.to_be_bytes());
                    t.extend_from_slice(&0i16.to_be_bytes());
                    t.extend_from_slice(&25i32.to_be_bytes());
                    t.extend_from_slice(&(-1i16).to_be_bytes());
                    t.extend_from_slice(&(-1i32).to_be_bytes());
                    t.extend_from_slice(&0i16.to_be_bytes());
                    out.extend(msg(back::ROW_DESCRIPTION, &t));
                    let mut d = 1i16.to_be_bytes().to_vec();
                    d.extend_from_slice(&(text.len() as i32).to_be_bytes());
                    d.extend_from_slice(text.as_bytes());
                    out.extend(msg(back::DATA_ROW, &d));
                    out.extend(msg(back::COMMAND_COMPLETE, b"SELECT 1\0"));
                    out.extend(msg(back::READY_FOR_QUERY, b"I"));
                    out
                };
                // Startup (after an SSLRequest, refused).
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut body = vec![0u8; i32::from_be_bytes(len) as usize - 4];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    if body[..4] == 80877103i32.to_be_bytes() {
                        let _ = s.write_all(b"N");
                        continue;
                    }
                    break;
                }
                // Ask for an md5 password (any answer will do): passthrough auth accepts a
                // client only once the server has actually checked a password.
                let mut ask = 5i32.to_be_bytes().to_vec();
                ask.extend_from_slice(b"salt");
                if s.write_all(&msg(back::AUTHENTICATION, &ask)).is_err() {
                    return;
                }
                let mut head = [0u8; 5];
                if s.read_exact(&mut head).is_err() || head[0] != front::PASSWORD {
                    return;
                }
                let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                let mut password = vec![0u8; len.saturating_sub(4)];
                if s.read_exact(&mut password).is_err() {
                    return;
                }
                let mut hello = msg(back::AUTHENTICATION, &0i32.to_be_bytes());
                for (k, v) in [
                    ("server_version", "15.0"),
                    ("client_encoding", "UTF8"),
                    ("DateStyle", "ISO, MDY"),
                    ("integer_datetimes", "on"),
                    ("standard_conforming_strings", "on"),
                ] {
                    hello.extend(msg(
                        back::PARAMETER_STATUS,
                        format!("{k}\0{v}\0").as_bytes(),
                    ));
                }
                hello.extend(msg(back::BACKEND_KEY_DATA, &[0, 0, 0, 7, 0, 0, 0, 7]));
                hello.extend(msg(back::READY_FOR_QUERY, b"I"));
                if s.write_all(&hello).is_err() {
                    return;
                }
                loop {
                    let mut head = [0u8; 5];
                    if s.read_exact(&mut head).is_err() {
                        return;
                    }
                    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                    let mut body = vec![0u8; len - 4];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let sql = String::from_utf8_lossy(&body).to_lowercase();
                    let answer = match head[0] {
                        front::TERMINATE => return,
                        front::QUERY if sql.contains("pgsc_desync") => {
                            let mut a = msg(back::BIND_COMPLETE, b"");
                            a.extend(msg(back::READY_FOR_QUERY, b"I"));
                            a
                        }
                        front::QUERY if sql.contains("pgsc_silent") => Vec::new(),
                        front::QUERY if sql.contains("pg_stat_activity") => row("idle"),
                        front::QUERY if sql.contains("pg_proc") => {
                            let mut a = msg(back::COMMAND_COMPLETE, b"SELECT 0\0");
                            a.extend(msg(back::READY_FOR_QUERY, b"I"));
                            a
                        }
                        front::QUERY => row("1"),
                        _ => Vec::new(),
                    };
                    if s.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_backend_answer_that_matches_no_request_gets_the_client_an_error() {
    let fake = fake_backend();
    let sc = SidecarConfig::primary_at(fake)
        .set("pool.mode", "transaction")
        .set("pool.max_size", 4)
        .start();
    let mut c = support::Raw::login(&sc, "fake");
    let began = Instant::now();
    let answer = c.simple("SELECT pgsc_desync");
    assert_eq!(
        support::first_error(&answer).as_deref(),
        Some("08P01"),
        "tags {:?}\n{}",
        support::tags(&answer),
        sc.log()
    );
    assert!(began.elapsed() < Duration::from_secs(5));
    assert!(
        sc.log().contains("lost track of a backend's answers"),
        "{}",
        sc.log()
    );
    // The session goes on, on another backend.
    let next = c.simple("SELECT 1");
    assert_eq!(support::data_rows(&next), vec![vec![Some("1".to_string())]]);
}

#[test]
fn a_request_its_backend_never_answers_gets_an_error_within_the_bound() {
    let fake = fake_backend();
    let sc = SidecarConfig::primary_at(fake)
        .set("pool.mode", "transaction")
        .set("pool.max_size", 4)
        .set("pool.stuck_request_timeout", "1s")
        .start();
    let mut c = support::Raw::login(&sc, "fake");
    let began = Instant::now();
    let answer = c.simple("SELECT pgsc_silent");
    let took = began.elapsed();
    assert_eq!(
        support::first_error(&answer).as_deref(),
        Some("08P01"),
        "tags {:?}\n{}",
        support::tags(&answer),
        sc.log()
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    let log = sc.log();
    assert!(
        log.contains("made no progress for longer than pool.stuck_request_timeout")
            && log.contains("pgsc_silent"),
        "the watchdog logs the request with its statement:\n{log}"
    );
    let next = c.simple("SELECT 1");
    assert_eq!(support::data_rows(&next), vec![vec![Some("1".to_string())]]);
}

// ---- prepared statements after DDL answer as Postgres would ----------------------------------

/// Binds its text whatever the parameter's type (an enum's binary form is its label).
#[derive(Debug)]
struct Label(&'static str);

impl tokio_postgres::types::ToSql for Label {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// What a client sees of its statements prepared (and so described) before DDL another
/// connection makes: an index (same shape), the table created again with a narrower column
/// (the SELECT's result type changes), the enum dropped and created again (the INSERT's
/// parameter type is gone). Each outcome as `ok` or SQLSTATE and message without numbers
/// (type OIDs differ between databases).
async fn statements_across_ddl(stmt_url: &str, ddl_url: &str) -> Vec<String> {
    let ddl = support::client(ddl_url).await.expect("connect (ddl)");
    let c = support::client(stmt_url)
        .await
        .expect("connect (statements)");
    fn seen(r: Result<u64, tokio_postgres::Error>) -> String {
        match r {
            Ok(n) => format!("ok {n}"),
            Err(e) => {
                let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
                let message: String = message.chars().filter(|c| !c.is_ascii_digit()).collect();
                // asyncpg tells a stale plan from other 0A000s by the error's routine.
                let routine = e.as_db_error().and_then(|d| d.routine());
                match routine.filter(|_| support::code(&e) == "0A000") {
                    Some(r) => format!("{} {message} ({r})", support::code(&e)),
                    None => format!("{} {message}", support::code(&e)),
                }
            }
        }
    }
    let table = |name_len: u32| {
        format!(
            "CREATE TABLE rv_t (id int, name varchar({name_len}), m rv_mood); \
             INSERT INTO rv_t SELECT g, 'n' || g, 'ok' FROM generate_series(1, 50) g"
        )
    };
    let mood = "CREATE TYPE rv_mood AS ENUM ('sad', 'ok')";
    ddl.batch_execute(&format!("{mood}; {}", table(30)))
        .await
        .expect("setup");
    let select_sql = "SELECT id, name FROM rv_t WHERE id % 17 = $1";
    let insert_sql = "INSERT INTO rv_t (id, m) VALUES ($1, $2)";
    let select = c.prepare(select_sql).await.expect("prepare select");
    let insert = c.prepare(insert_sql).await.expect("prepare insert");
    let mut out = Vec::new();
    out.push(seen(c_query(&c, &select).await));
    out.push(seen(c.execute(&insert, &[&100i32, &Label("ok")]).await));

    ddl.batch_execute("CREATE INDEX ON rv_t (id)")
        .await
        .expect("index");
    out.push(seen(c_query(&c, &select).await));
    out.push(seen(c.execute(&insert, &[&101i32, &Label("ok")]).await));

    ddl.batch_execute(&format!("DROP TABLE rv_t; {}", table(20)))
        .await
        .expect("narrower column");
    out.push(seen(c_query(&c, &select).await));
    out.push(seen(c_query(&c, &select).await));
    // Pipelined: the second is sent before the first is answered. Postgres refuses both.
    let (first, second) = tokio::join!(c_query(&c, &select), c_query(&c, &select));
    out.push(seen(first));
    out.push(seen(second));
    out.push(seen(c.execute(&insert, &[&102i32, &Label("ok")]).await));
    let again = c.prepare(select_sql).await.expect("prepare select again");
    out.push(seen(c_query(&c, &again).await));

    ddl.batch_execute(&format!(
        "DROP TABLE rv_t; DROP TYPE rv_mood; {mood}; {}",
        table(20)
    ))
    .await
    .expect("enum again");
    out.push(seen(c.execute(&insert, &[&103i32, &Label("ok")]).await));
    let again = c.prepare(insert_sql).await.expect("prepare insert again");
    out.push(seen(c.execute(&again, &[&104i32, &Label("ok")]).await));
    out.push(seen(c_query(&c, &select).await));
    out
}

async fn c_query(
    c: &tokio_postgres::Client,
    s: &tokio_postgres::Statement,
) -> Result<u64, tokio_postgres::Error> {
    c.query(s, &[&6i32]).await.map(|rows| rows.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_before_ddl_fails_as_postgres_fails_it_then_works_once_prepared_again()
{
    let l = lab();
    let sc = full_sidecar(l);
    let direct_db = l.fresh_db("rv_direct");
    let sidecar_db = l.fresh_db("rv_sidecar");
    let limit = Duration::from_secs(120);
    let direct = tokio::time::timeout(
        limit,
        statements_across_ddl(
            &l.url(Node::Primary, APP_USER, APP_PASSWORD, &direct_db),
            &l.url(Node::Primary, APP_USER, APP_PASSWORD, &direct_db),
        ),
    )
    .await
    .expect("direct: within the limit");
    let url = sc.url(APP_USER, APP_PASSWORD, &sidecar_db);
    let through = tokio::time::timeout(limit, statements_across_ddl(&url, &url))
        .await
        .unwrap_or_else(|_| panic!("through the sidecar: within the limit\n{}", sc.log()));
    println!("direct:  {direct:?}\nsidecar: {through:?}");
    // The scenario means something: Postgres refuses the changed result type and the dropped
    // parameter type, and accepts the same shape.
    assert!(direct
        .iter()
        .any(|o| o == "0A000 cached plan must not change result type (RevalidateCachedQuery)"));
    assert!(direct
        .iter()
        .any(|o| o == "XX000 cache lookup failed for type "));
    assert_eq!(direct[2], "ok 3", "{direct:?}");
    assert_eq!(
        through,
        direct,
        "the client sees what Postgres itself answers\n{}",
        tail(&sc.log(), 80)
    );
    support::assert_no_panic(&sc);
}

// ---- test runners drop the databases they created ---------------------------------------------

/// Django's test runner (and others) creates `test_…`, runs its tests in it, closes its
/// connections and drops it. Through the sidecar the backends those clients used stay pooled,
/// idle: they must not make the DROP fail (55006 "being accessed by other users") where it
/// succeeds directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_its_clients_have_left_can_be_dropped_through_the_sidecar() {
    let l = lab();
    let sc = full_sidecar(l);
    let db = l.fresh_db("dropped_after_use");
    let limit = Duration::from_secs(60);
    tokio::time::timeout(limit, async {
        // Several clients at once, so the pools to it (primary and replicas) hold several
        // backends: writes, reads, prepared statements.
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(
                support::client(&sc.url(APP_USER, APP_PASSWORD, &db))
                    .await
                    .expect("connect to the database"),
            );
        }
        clients[0]
            .batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10)")
            .await
            .expect("write");
        let (a, b, c) = tokio::join!(
            clients[0].query("SELECT count(*) FROM t", &[]),
            clients[1].query("SELECT id FROM t WHERE id = $1", &[&3i32]),
            clients[2].simple_query("SELECT 1"),
        );
        a.expect("read a");
        b.expect("read b");
        c.expect("read c");
        drop(clients);
        tokio::time::sleep(Duration::from_millis(200)).await; // the clients' Terminate
        let admin = support::client(&sc.url(APP_USER, APP_PASSWORD, "postgres"))
            .await
            .expect("connect to postgres");
        let dropped = admin
            .batch_execute(&format!("DROP DATABASE \"{db}\""))
            .await;
        assert!(
            dropped.is_ok(),
            "DROP DATABASE through the sidecar: {:?}\n{}",
            dropped.as_ref().err().map(support::code),
            tail(&sc.log(), 40)
        );
        let left = l
            .psql(
                Node::Primary,
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
            )
            .expect("pg_database");
        assert_eq!(left.trim(), "0", "the database is gone");
    })
    .await
    .expect("within the limit");
    support::assert_no_panic(&sc);
}
