//! Driver compatibility matrix: real client drivers (psql, pgbench, psycopg 3, asyncpg,
//! node-postgres, pgjdbc, tokio-postgres, sqlx), each running the shared scenario of
//! `tests/drivers/README.md` through a sidecar in the full topology pgsidecar exists for: a
//! primary and 2 streaming replicas, Redis, the example config's routing and cache rules and
//! `[[locks]]`, transaction pooling with 4 backend connections, 20 client connections per
//! driver. `tests/drivers/run.sh` installs what is missing (pinned versions), runs them and
//! prints one line per driver; every driver is bounded by DRIVER_TIMEOUT.
//!
//! Run alone: `cargo test --test drivers -- --nocapture`. Subset: `DRIVERS="psql sqlx"`.
//!
//! Its own test binary, not a module of `tests/it` (where every other integration test is): the
//! matrix runs third-party drivers whose own time limits (pg-pool's 10 s wait for a pooled
//! client, `DRIVER_TIMEOUT` per driver) assume the machine to itself, and inside `tests/it`
//! three other tests run beside it on a lab holding every area's databases (each sidecar reads
//! pg_proc from all of them): there node-postgres' 400 pooled transactions outwaited pg-pool's
//! limit. As its own binary it runs alone, on a lab of its own, as it always did.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Instant;

use support::{lab, SidecarConfig, SUPERUSER, SUPERUSER_PASSWORD};

#[test]
fn every_driver_passes_the_shared_scenario_through_the_sidecar() {
    let lab = lab(); // primary, 2 replicas, Redis
    let db = lab.fresh_db("drivers");
    // config/pgsidecar.toml's rules, Redis cache, its inventory lock, plus the lock rule of
    // pgjdbc's checkout step (x-checkout).
    let sidecar = SidecarConfig::example_topology(lab)
        .set("pool.mode", "transaction")
        .set("pool.max_size", 4)
        .lock("drv_jdbc_inventory", &["sku_id", "warehouse_id"])
        .start();
    let dsn = sidecar.url(SUPERUSER, SUPERUSER_PASSWORD, &db);
    let locks_dsn = dsn.clone();

    // The venv nohang.rs's cases share: made once, before either runs a driver in it.
    support::driver_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/run.sh");
    let began = Instant::now();
    let (status, output, _) = support::run_streaming(
        Command::new("bash")
            .arg(script)
            .arg(&dsn)
            .env("DRIVER_LOCKS_DSN", &locks_dsn)
            .env(
                "DRIVER_TIMEOUT",
                std::env::var("DRIVER_TIMEOUT").unwrap_or_else(|_| "180".into()),
            ),
        "run.sh",
    );
    println!("driver matrix: {:.1}s", began.elapsed().as_secs_f64());

    let verdicts: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("driver "))
        .collect();
    assert!(
        status.success(),
        "driver compatibility matrix failed ({status}):\n{}\n--- sidecar log (tail) ---\n{}",
        verdicts.join("\n"),
        tail(&sidecar.log(), 40)
    );
    assert!(
        output.lines().any(|l| l.ends_with(" passed, 0 failed")) && verdicts.len() >= 8,
        "run.sh succeeded without reporting every driver:\n{output}"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
