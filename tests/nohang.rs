//! Issue 17: no client ever waits forever, and prepared statements survive DDL — in the full
//! topology (primary, 2 streaming replicas, Redis, the example config's cache rules and
//! `[[locks]]`, transaction pooling, a pool of 4).
//!
//! The driver reproductions run `tests/drivers/python/regressions.py` in the venv that
//! `tests/drivers/run.sh` sets up (tests/drivers/.venv); each is bounded by its own timeout.
//!
//! Run alone: `cargo test --test nohang -- --nocapture`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, lab, upstream_section, Lab, Node, Sidecar, APP_PASSWORD, APP_USER};

/// Longest a driver case may run before it counts as a hang.
const CASE_LIMIT: Duration = Duration::from_secs(60);

/// The example config (`config/pgsidecar.toml`) in front of the shared lab: its routing and
/// cache rules, Redis, the inventory lock, transaction pooling with 4 backends per pool.
fn full_sidecar(l: &Lab, extra: &str) -> Sidecar {
    let port = free_port();
    Sidecar::start(&format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n{upstream}\
         [pool]\nmode = \"transaction\"\nmax_size = 4\n\
         [routing]\nmax_wait = \"50ms\"\n\
         [[routing.rules]]\nname = \"catalog reads\"\nkind = \"read\"\ntables = [\"products\", \"prices\", \"categories\"]\ncache_ttl = \"90s\"\n\
         [[routing.rules]]\nname = \"reports on the primary\"\napplication_name = \"reporting*\"\nroute = \"primary\"\n\
         [cache]\nenabled = true\nredis = \"{redis}\"\n\
         [[locks]]\ntable = \"inventory\"\nkey = [\"sku_id\", \"warehouse_id\"]\n\
         [log]\nlevel = \"pgsidecar=debug,info\"\n{extra}",
        upstream = upstream_section(l),
        redis = l.redis_url(),
    ))
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

fn venv_python() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let py = format!("{root}/tests/drivers/.venv/bin/python");
    if !std::path::Path::new(&py).exists() {
        // run.sh builds the venv (pinned psycopg/asyncpg) and nothing else when asked for
        // the python drivers without a DSN... it needs one, so build it the same way here.
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "cd {root}/tests/drivers && python3 -m venv .venv && .venv/bin/pip install \
                 --disable-pip-version-check --no-input -q -r python/requirements.txt"
            ))
            .status()
            .expect("create the driver venv");
        assert!(status.success(), "could not create tests/drivers/.venv");
    }
    py
}

/// Runs one case of regressions.py through `sc`; panics (with the sidecar's log) unless it
/// printed `ok CASE` within [`CASE_LIMIT`].
fn run_case(sc: &Sidecar, db: &str, case: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/python/regressions.py");
    let began = Instant::now();
    let out = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(format!("{}", CASE_LIMIT.as_secs() + 5))
        .arg(venv_python())
        .arg(script)
        .arg(case)
        .arg(format!("{}", CASE_LIMIT.as_secs()))
        .env("PGSIDECAR_DSN", sc.url(APP_USER, APP_PASSWORD, db))
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
    let sc = full_sidecar(l, "");
    for sync in ["off", "on", "remote_apply"] {
        let db = db_with_commit(l, "nh_copy", sync);
        run_case(&sc, &db, "copy_records");
    }
}

#[test]
fn psycopg_pipeline_executemany_works_with_two_replicas() {
    let l = lab();
    let sc = full_sidecar(l, "");
    for sync in ["off", "on", "remote_apply"] {
        let db = db_with_commit(l, "nh_pipe", sync);
        run_case(&sc, &db, "pipeline_executemany");
    }
}

#[test]
fn statements_prepared_before_an_enum_is_recreated_still_run() {
    let l = lab();
    let sc = full_sidecar(l, "");
    for sync in ["off", "on"] {
        let db = db_with_commit(l, "nh_enum", sync);
        run_case(&sc, &db, "enum_recreate_psycopg");
        run_case(&sc, &db, "enum_recreate_asyncpg");
    }
}

/// Not a test: keeps a lab and a full-topology sidecar up for `NOHANG_HOLD` seconds, printing
/// their addresses (for reproducing driver sequences by hand).
#[test]
#[ignore]
fn hold_a_lab_for_manual_runs() {
    let l = lab();
    let sc = full_sidecar(l, "");
    let db = l.fresh_db("nh_manual");
    println!("DSN {}", sc.url(APP_USER, APP_PASSWORD, &db));
    println!("LOG {}", sc.log_path().display());
    println!("PRIMARY {}", l.primary_port());
    let secs: u64 = std::env::var("NOHANG_HOLD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    std::thread::sleep(Duration::from_secs(secs));
}
