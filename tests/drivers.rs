//! Driver compatibility matrix: real client drivers (psql, pgbench, psycopg 3, asyncpg,
//! node-postgres, pgjdbc, tokio-postgres, sqlx), each running the shared scenario of
//! `tests/drivers/README.md` through a sidecar in transaction pooling mode with 4 backend
//! connections, 20 client connections per driver. `tests/drivers/run.sh` installs what is
//! missing (pinned versions), runs them and prints one line per driver.
//!
//! Run alone: `cargo test --test drivers -- --nocapture`. Subset: `DRIVERS="psql sqlx"`.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Instant;

use support::{free_port, Lab, LabOptions, Sidecar, SUPERUSER, SUPERUSER_PASSWORD};

#[test]
fn every_driver_passes_the_shared_scenario_through_the_sidecar() {
    // Postgres only: no replica or Redis is involved in the scenario.
    let lab = Lab::start(LabOptions {
        replicas: 0,
        redis: false,
        ..LabOptions::default()
    });
    let db = lab.fresh_db("drivers");
    let listen = format!("127.0.0.1:{}", free_port());
    let primary = format!("postgres://127.0.0.1:{}", lab.primary_port());
    let sidecar = Sidecar::start_args(&[
        "--listen",
        &listen,
        "--primary",
        &primary,
        "--pool-mode",
        "transaction",
        "--pool-size",
        "4",
    ]);
    let dsn = sidecar.url(SUPERUSER, SUPERUSER_PASSWORD, &db);
    // pgjdbc's checkout step (x-checkout) runs through a second sidecar, configured like the
    // first plus an inventory lock rule, so the other drivers keep the plain data path.
    let locks_port = free_port();
    let locking = Sidecar::start(&format!(
        "[listen]\naddr = \"127.0.0.1:{locks_port}\"\n[upstream]\nprimary = \"{primary}\"\ntls = \"disable\"\n\
         [pool]\nmode = \"transaction\"\nmax_size = 4\n\
         [[locks]]\ntable = \"drv_jdbc_inventory\"\nkey = [\"sku_id\", \"warehouse_id\"]\n"
    ));
    let locks_dsn = locking.url(SUPERUSER, SUPERUSER_PASSWORD, &db);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/run.sh");
    let began = Instant::now();
    let mut child = Command::new("bash")
        .arg(script)
        .arg(&dsn)
        .env("DRIVER_LOCKS_DSN", &locks_dsn)
        .env(
            "DRIVER_TIMEOUT",
            std::env::var("DRIVER_TIMEOUT").unwrap_or_else(|_| "180".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/drivers/run.sh");
    // Stream run.sh's output as it comes (visible with --nocapture), and keep it for the verdict.
    let mut stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut output = String::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.unwrap_or_else(|e| format!("<unreadable output: {e}>"));
        println!("{line}");
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait().expect("wait for run.sh");
    let errors = err_reader.join().unwrap_or_default();
    if !errors.trim().is_empty() {
        println!("--- run.sh stderr ---\n{errors}");
    }
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
