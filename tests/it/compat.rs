//! Third-party ORM test suites, directly against Postgres and through pgsidecar, in one run
//! (issue 17). SQLAlchemy's own PostgreSQL dialect tests (from its PyPI source distribution,
//! pinned in `tests/compat/setup.sh`), with psycopg 3 and with asyncpg, run file by file twice
//! at once: against the primary, and through a sidecar in the full topology (primary, two
//! streaming replicas, Redis; `config/pgsidecar.toml`'s cache rules and `[[locks]]`;
//! transaction pooling). Every test has a time limit. The verdict: no test hits its limit, and
//! the sidecar side passes every test the direct side passes, except the transaction-pooling
//! limits listed in `tests/compat/known_limits.txt`, which must then pass through a sidecar in
//! session pooling.
//!
//! `cargo test --test it compat:: -- --nocapture` runs the fixed CI subset (`COMPAT_SET=ci`);
//! `scripts/compat.sh` runs the whole suite (`COMPAT_SET=full`). Other knobs: `COMPAT_DRIVERS`
//! (`psycopg,asyncpg`), `COMPAT_FILES` (comma-separated test files, overrides the set),
//! `COMPAT_TIMEOUT` (per test, 60 s), `COMPAT_SYNCHRONOUS_COMMIT` (on), `COMPAT_LOG_DIR`.
//!
//! `scripts/compat.sh django` runs the ignored test here: Django's own `backends` and
//! `postgres_tests` (its sdist, psycopg 3; the same two sides and verdict).

use crate::support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::support::{free_port, Lab, LabOptions, Sidecar, APP_PASSWORD, APP_USER, SUPERUSER};
use crate::support::{Node, SUPERUSER_PASSWORD};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn sqlalchemy_postgresql_suite_passes_through_the_sidecar_as_it_does_directly() {
    suite_passes_through_the_sidecar_as_it_does_directly("sqlalchemy");
}

/// Opt-in (`scripts/compat.sh django`): another venv and sdist, and minutes more per run.
#[test]
#[ignore = "long: run by scripts/compat.sh django"]
fn django_postgresql_suites_pass_through_the_sidecar_as_they_do_directly() {
    suite_passes_through_the_sidecar_as_it_does_directly("django");
}

fn suite_passes_through_the_sidecar_as_it_does_directly(suite: &str) {
    let began = Instant::now();
    let suite = suite.to_owned();
    let src = setup(&suite);
    let lab = Lab::start(LabOptions::default());
    enable_two_phase_commit(&lab);
    let sync_commit = env_or("COMPAT_SYNCHRONOUS_COMMIT", "on");
    let direct_db = suite_db(&lab, "compat_direct", &sync_commit);
    let sidecar_db = suite_db(&lab, "compat_sidecar", &sync_commit);
    lab.wait_replicas_caught_up();

    let sidecar = full_topology_sidecar(&lab, "transaction");
    let log_dir = env_or(
        "COMPAT_LOG_DIR",
        &format!("{ROOT}/tests/compat/.logs/{}", std::process::id()),
    );
    let set = env_or("COMPAT_SET", "ci");
    let mut args = vec![
        "--suite".to_owned(),
        suite.clone(),
        "--src".to_owned(),
        src.clone(),
        "--direct".to_owned(),
        format!("127.0.0.1:{}", lab.primary_port()),
        "--sidecar".to_owned(),
        format!("127.0.0.1:{}", sidecar.port()),
        "--user".to_owned(),
        SUPERUSER.to_owned(),
        "--password".to_owned(),
        SUPERUSER_PASSWORD.to_owned(),
        "--direct-db".to_owned(),
        direct_db,
        "--sidecar-db".to_owned(),
        sidecar_db.clone(),
        "--set".to_owned(),
        set.clone(),
        "--drivers".to_owned(),
        env_or("COMPAT_DRIVERS", "psycopg,asyncpg"),
        "--timeout".to_owned(),
        env_or("COMPAT_TIMEOUT", "60"),
        "--log-dir".to_owned(),
        log_dir.clone(),
    ];
    if let Ok(files) = std::env::var("COMPAT_FILES") {
        args.extend(["--files".to_owned(), files]);
    }
    let (ok, output) = run_py(&suite, &args);
    println!(
        "compat: set {set}, synchronous_commit {sync_commit}, {:.0}s in all; logs in {log_dir}",
        began.elapsed().as_secs_f64()
    );
    // The verdict lines and the first differences (all of them were printed above).
    let differs = output.lines().filter(|l| l.starts_with("  differs: "));
    let verdicts: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("compat "))
        .chain(differs.take(20))
        .collect();
    assert!(
        ok,
        "the suite does not pass through the sidecar as it does directly:\n{}\n--- sidecar log (tail) ---\n{}",
        verdicts.join("\n"),
        tail(&sidecar.log(), 60)
    );
    assert!(
        output.lines().filter(|l| l.ends_with(": PASS")).count() >= 1,
        "run.py succeeded without a verdict:\n{output}"
    );
    drop(sidecar);

    // The known transaction-pooling limits pass when the client keeps its backend.
    let limits = format!("{ROOT}/tests/compat/known_limits.txt");
    if listed(&limits) {
        let session = full_topology_sidecar(&lab, "session");
        let mut only = args.clone();
        let at = only.iter().position(|a| a == "--sidecar").unwrap() + 1;
        only[at] = format!("127.0.0.1:{}", session.port());
        only.extend(["--only".to_owned(), limits]);
        let (ok, output) = run_py(&suite, &only);
        assert!(
            ok,
            "known transaction-pooling limits fail under session pooling too:\n{output}\n--- sidecar log (tail) ---\n{}",
            tail(&session.log(), 60)
        );
    }
}

/// Installs (or reuses) the suite's venv and its unpacked sdist; the sdist's directory.
fn setup(suite: &str) -> String {
    let out = Command::new("bash")
        .arg(format!("{ROOT}/tests/compat/setup.sh"))
        .arg(suite)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/compat/setup.sh");
    assert!(out.status.success(), "tests/compat/setup.sh failed");
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert!(
        Path::new(&dir).join("PKG-INFO").exists(),
        "setup.sh gave {dir:?}"
    );
    dir
}

/// SQLAlchemy's two-phase tests need `max_prepared_transactions` (0 by default), and a hot
/// standby needs at least the primary's value: replicas first, then the primary.
fn enable_two_phase_commit(lab: &Lab) {
    let set = "ALTER SYSTEM SET max_prepared_transactions = 20";
    for i in 0..lab.replica_ports().len() {
        lab.psql(Node::Replica(i), "postgres", set)
            .unwrap_or_else(|e| panic!("replica {i}: {e}"));
        lab.stop_replica(i);
        lab.start_replica(i);
    }
    lab.psql(Node::Primary, "postgres", set)
        .unwrap_or_else(|e| panic!("primary: {e}"));
    lab.restart_primary();
}

/// A database as SQLAlchemy's suite expects it (README.unittests.rst): its two extra schemas,
/// the extensions it uses, English full-text search; `synchronous_commit` as asked.
fn suite_db(lab: &Lab, prefix: &str, sync_commit: &str) -> String {
    let db = lab.fresh_db(prefix);
    lab.psql(
        Node::Primary,
        "postgres",
        &format!(
            "ALTER DATABASE \"{db}\" SET default_text_search_config = 'pg_catalog.english';\
             ALTER DATABASE \"{db}\" SET synchronous_commit = '{sync_commit}';"
        ),
    )
    .unwrap_or_else(|e| panic!("configure {db}: {e}"));
    lab.psql(
        Node::Primary,
        &db,
        "CREATE SCHEMA test_schema; CREATE SCHEMA test_schema_2;\
         CREATE EXTENSION IF NOT EXISTS hstore; CREATE EXTENSION IF NOT EXISTS citext;",
    )
    .unwrap_or_else(|e| panic!("prepare {db}: {e}"));
    db
}

/// `config/pgsidecar.toml` as shipped (its cache rules, `[[locks]]`, pipelining), with the
/// lab's addresses: primary, both replicas and Redis (which turns the cache on).
fn full_topology_sidecar(lab: &Lab, pool_mode: &str) -> Sidecar {
    let listen = format!("127.0.0.1:{}", free_port());
    let primary = format!(
        "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/postgres",
        lab.primary_port()
    );
    let mut args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        format!("{ROOT}/config/pgsidecar.toml"),
        "--listen".to_owned(),
        listen.clone(),
        "--primary".to_owned(),
        primary,
        "--redis".to_owned(),
        lab.redis_url(),
        "--pool-mode".to_owned(),
        pool_mode.to_owned(),
    ];
    for port in lab.replica_ports() {
        args.extend([
            "--replica".to_owned(),
            format!("postgres://127.0.0.1:{port}"),
        ]);
    }
    Sidecar::spawn(&args, listen.parse().unwrap(), &[])
}

/// Runs `tests/compat/run.py` in the suite's venv, streaming its output (visible with
/// --nocapture).
fn run_py(suite: &str, args: &[String]) -> (bool, String) {
    let venv = if suite == "django" {
        ".venv-django"
    } else {
        ".venv"
    };
    let (status, mut output, errors) = support::run_streaming(
        Command::new(format!("{ROOT}/tests/compat/{venv}/bin/python"))
            .arg(format!("{ROOT}/tests/compat/run.py"))
            .args(args),
        "run.py",
    );
    output.push_str(&errors);
    (status.success(), output)
}

/// Whether the file lists at least one test id.
fn listed(path: &str) -> bool {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .unwrap_or(false)
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
