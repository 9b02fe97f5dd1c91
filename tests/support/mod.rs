//! Real-service test lab shared by every integration test (the `it` test binary,
//! `tests/it/main.rs`, is its one user).
//!
//! What it gives a test:
//! - [`lab()`]: one Postgres primary + streaming replicas + Redis per area
//!   (test file), started lazily on first use and shared by that area's tests.
//!   Tests isolate themselves with [`Lab::fresh_db`].
//! - [`Lab::start`]: a private lab for tests that stop, pause or restart
//!   servers (doing that to the shared lab would break concurrent tests), and
//!   [`Redis::start`], a private Redis.
//! - [`Sidecar`]: runs the `pgsidecar` binary under test.
//! - [`Console`], [`psql_console`]: the admin console; [`metric`], [`http_get`]:
//!   the HTTP endpoint; [`code`]: the SQLSTATE of a client error.
//! - [`psql`], [`psql_as`], [`url`], [`free_port`]: small sync helpers.
//!
//! Teardown: every process the lab or a sidecar starts is recorded under one
//! temp root per test process (`/tmp/pgsidecar-lab-<pid>-<random>`); an
//! `atexit` hook and a detached watchdog both stop them and delete the root,
//! so nothing outlives the test binary, even after a panic, abort or kill.
//! See `reaper.rs`.
#![allow(dead_code, unused_imports)]

mod bins;
mod config;
mod console;
mod drivers;
pub mod history;
mod http;
mod lab;
mod net;
mod pgbench;
mod postgres;
mod process;
mod raw;
mod reaper;
mod redis;
mod sidecar;

pub use config::{Rule, SidecarConfig};
pub use console::{console_value, psql_console, wait_roles_verified, Answer, Console, Row};
pub use drivers::driver_python;
pub use http::{
    counter, http_get, metric, metrics_text, parse_prometheus, try_http_get, try_metric, HttpReply,
};
pub use lab::{lab, Lab, LabOptions, Node, SyncCommit};
pub use net::{free_port, wait_tcp, Forwarder};
pub use pgbench::{completed as pgbench_completed, pgbench, processed as pgbench_processed};
pub use postgres::{psql, psql_as};
pub use process::{chown_to_postgres, run, run_streaming};
pub use raw::{data_rows, errors, first_error, status, tags, Raw};
pub use reaper::new_subdir;
pub use redis::{Redis, RedisCluster};
pub use sidecar::Sidecar;

/// Superuser of every lab cluster (SCRAM password).
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "postgres";
/// Ordinary login role; owner of every database made by [`Lab::fresh_db`].
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app_pw";
/// Login role whose password is stored as MD5 (pg_hba uses `md5` for it).
pub const LEGACY_USER: &str = "legacy";
pub const LEGACY_PASSWORD: &str = "legacy_pw";

/// `postgres://user:password@127.0.0.1:port/db`. No query parameters, so it
/// can be handed both to client drivers and to the sidecar's `--primary`.
pub fn url(port: u16, user: &str, password: &str, db: &str) -> String {
    format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}")
}

/// A client through `sc` as the app user (the driver runs on the test's runtime); panics with
/// the sidecar's log when it cannot connect.
pub async fn app_client(sc: &Sidecar, db: &str) -> tokio_postgres::Client {
    let url = sc.url(APP_USER, APP_PASSWORD, db);
    client(&url)
        .await
        .unwrap_or_else(|e| panic!("connect through sidecar: {e}\n{}", sc.log()))
}

/// A client for any URL, its connection driven in the background.
pub async fn client(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// Polls `check` every 50 ms until it gives `Some`, for at most `timeout`; then panics with
/// `what` and the last observation (`check`'s `Err`). For conditions a background task makes
/// true eventually; nothing is asserted about how long it took.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "{what}; last seen: {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The SQLSTATE of a client error (or why there is none), for assertions.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// The first column of the first row of a simple query, as text; panics on an error or no row.
pub async fn first_value(c: &tokio_postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// The error of what must fail (clients are not `Debug`, so no `expect_err`).
pub fn must_fail<T>(r: Result<T, tokio_postgres::Error>, what: &str) -> tokio_postgres::Error {
    match r {
        Ok(_) => panic!("{what} must fail"),
        Err(e) => e,
    }
}

/// The sidecar is still up and never panicked (bad input must get an error, not a crash).
pub fn assert_no_panic(sc: &Sidecar) {
    assert!(sc.is_running(), "sidecar died:\n{}", sc.log());
    assert!(
        !sc.log().contains("panicked"),
        "sidecar panicked:\n{}",
        sc.log()
    );
}

/// Waits (up to 20 s) until `c`'s autocommit reads land on a replica: the monitor has verified
/// the replicas and they are eligible. Panics past that.
pub async fn wait_until_reads_reach_replicas(c: &tokio_postgres::Client) {
    eventually(
        "reads reaching a replica",
        std::time::Duration::from_secs(20),
        || async {
            let rows = c
                .simple_query("SELECT (pg_last_wal_replay_lsn() IS NOT NULL)::text")
                .await
                .map_err(|e| e.to_string())?;
            let on_replica = rows.iter().any(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("true"),
                _ => false,
            });
            on_replica
                .then_some(())
                .ok_or_else(|| "primary".to_string())
        },
    )
    .await
}
