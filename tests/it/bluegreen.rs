//! Blue-green switching against two independent real clusters (blue and green, each a primary
//! and a streaming replica): a 16-client pgbench write load survives SWITCH green and SWITCH
//! blue with no failed transaction and every row on the environment that was active; cached
//! reads never cross environments; a switch that cannot drain gives up without cutting
//! anything; pinned sessions are closed with 57P01; a reload keeps the switch; the
//! environment left behind is closed after its rollback window. The admin commands run
//! through psql, exactly as `deploy/RUNBOOK.md` gives them.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{Lab, LabOptions, Node, Sidecar, APP_PASSWORD, APP_USER};

const CLIENTS: usize = 16;
/// Transactions per pgbench client: the run ends by count, so every phase is sure to get some
/// whatever the machine's speed (the switches wait for rows, not for the clock).
const PER_CLIENT: usize = 1000;
/// Rows a phase writes before the test switches away from it.
const PHASE_ROWS: u64 = 1500;

const SCHEMA: &str = "CREATE TABLE bg_writes(id bigserial PRIMARY KEY, client int NOT NULL,
        at timestamptz NOT NULL DEFAULT clock_timestamp());
    CREATE TABLE bg_counters(client int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
    INSERT INTO bg_counters(client) SELECT g FROM generate_series(0, 63) g;
    CREATE TABLE bg_env(name text);
    GRANT ALL ON bg_writes, bg_counters, bg_env TO app;
    GRANT ALL ON SEQUENCE bg_writes_id_seq TO app;";

/// One transaction: a row per transaction, a counter per client (updated in place), and a
/// read inside the transaction, so each one spans several round trips.
const SCRIPT: &str = "BEGIN;
INSERT INTO bg_writes(client) VALUES (:client_id);
UPDATE bg_counters SET n = n + 1 WHERE client = :client_id;
SELECT n FROM bg_counters WHERE client = :client_id;
COMMIT;
";

/// Blue and green: two independent clusters, shared by the tests of this module. Each test
/// works in its own database, created with the same name on both.
fn envs() -> &'static (Lab, Lab) {
    static ENVS: OnceLock<(Lab, Lab)> = OnceLock::new();
    ENVS.get_or_init(|| {
        std::thread::scope(|s| {
            let blue = s.spawn(|| {
                Lab::start(LabOptions {
                    replicas: 1,
                    redis: true,
                    ..LabOptions::default()
                })
            });
            let green = Lab::start(LabOptions {
                replicas: 1,
                redis: false,
                ..LabOptions::default()
            });
            let blue = blue.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (blue, green)
        })
    })
}

/// The same database, schema and `bg_env` marker ('blue' / 'green') on both clusters.
fn database(name: &str) {
    let (blue, green) = envs();
    for (lab, marker) in [(blue, "blue"), (green, "green")] {
        lab.psql(
            Node::Primary,
            "postgres",
            &format!("CREATE DATABASE {name} OWNER {APP_USER}"),
        )
        .unwrap();
        lab.psql(
            Node::Primary,
            name,
            &format!("{SCHEMA}\nINSERT INTO bg_env VALUES ('{marker}');"),
        )
        .unwrap();
        lab.wait_replicas_caught_up();
    }
}

fn environment(name: &str, lab: &Lab) -> String {
    format!(
        "[environments.{name}]\nprimary = \"postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/postgres\"\n\
         replicas = [\"postgres://127.0.0.1:{}\"]\n",
        lab.primary_port(),
        lab.replica_ports()[0]
    )
}

/// Database `db` on both clusters, and a sidecar with environments blue (active) and green,
/// the result cache on for `bg_env`, and the HTTP endpoint on the port returned.
fn started(db: &str, upstream_extra: &str, more_environments: &str) -> (Sidecar, u16) {
    database(db);
    let http = support::free_port();
    (sidecar(http, upstream_extra, more_environments), http)
}

fn sidecar(http: u16, upstream_extra: &str, more_environments: &str) -> Sidecar {
    let (blue, green) = envs();
    Sidecar::start(&format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n\
         [upstream]\nactive = \"blue\"\ntls = \"disable\"\n{upstream_extra}\n\
         {more_environments}{}{}\
         [pool]\nmax_size = 40\n\
         [admin]\nhttp_addr = \"127.0.0.1:{http}\"\n\
         [cache]\nenabled = true\nredis = \"{}\"\n\
         [routing]\nhealth_interval = \"100ms\"\n\
         [[routing.rules]]\nname = \"environment marker\"\ntables = [\"bg_env\"]\ncache_ttl = \"90s\"\n",
        support::free_port(),
        environment("blue", blue),
        environment("green", green),
        blue.redis_url(),
    ))
}

/// An admin console command through psql, as an operator types it: a header line, then one
/// `|`-separated line per row.
fn console(sc: &Sidecar, command: &str) -> Result<String, String> {
    support::psql(
        sc.port(),
        "pgsidecar",
        &format!("\\pset tuples_only off\n\\pset footer off\n{command}"),
    )
}

/// Column `name` of row `row` (0 = first after the header) of a [`console`] answer.
fn column(answer: &str, name: &str, row: usize) -> String {
    let mut lines = answer.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('|').collect();
    let i = header
        .iter()
        .position(|h| *h == name)
        .unwrap_or_else(|| panic!("no column {name} in {answer}"));
    lines
        .nth(row)
        .unwrap_or_default()
        .split('|')
        .nth(i)
        .unwrap_or_default()
        .to_string()
}

/// SWITCH's answer as `name=value` pairs, for the log.
fn switch_row(answer: &str) -> String {
    let header = answer.lines().next().unwrap_or_default();
    header
        .split('|')
        .map(|h| format!("{h}={}", column(answer, h, 0)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn rows(answer: &str) -> usize {
    answer.lines().count().saturating_sub(1)
}

/// `SHOW ENVIRONMENTS` as (name, state) pairs.
fn states(sc: &Sidecar) -> Vec<(String, String)> {
    let answer = console(sc, "SHOW ENVIRONMENTS").unwrap();
    (0..rows(&answer))
        .map(|r| {
            (
                column(&answer, "environment", r),
                column(&answer, "state", r),
            )
        })
        .collect()
}

fn state(sc: &Sidecar, environment: &str) -> String {
    states(sc)
        .into_iter()
        .find(|(name, _)| name == environment)
        .map(|(_, state)| state)
        .unwrap_or_else(|| panic!("no environment {environment}"))
}

/// `connects` of the app's pool on `node` (`host:port`) for `db`, from SHOW POOLS.
fn pool_connects(sc: &Sidecar, node: &str, db: &str) -> u64 {
    let answer = console(sc, "SHOW POOLS").unwrap();
    let r = (0..rows(&answer))
        .find(|&r| column(&answer, "node", r) == node && column(&answer, "database", r) == db)
        .unwrap_or_else(|| panic!("no pool for {node}/{db}:\n{answer}"));
    column(&answer, "connects", r).parse().unwrap()
}

fn app_sql(sc: &Sidecar, db: &str, sql: &str) -> Result<String, String> {
    support::psql_as(sc.port(), APP_USER, APP_PASSWORD, db, sql)
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn metrics(http: u16) -> String {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{http}/metrics")])
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Per-transaction latencies from pgbench's `-l` logs: (completion time, latency seconds).
fn transaction_log(dir: &Path) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            // client_id transaction_no time script_no time_epoch time_us
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let (Ok(lat), Ok(s), Ok(us)) = (
                f[2].parse::<f64>(),
                f[4].parse::<f64>(),
                f[5].parse::<f64>(),
            ) else {
                continue;
            };
            out.push((s + us / 1e6, lat / 1e6));
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn switch_to_green_and_back_under_a_16_client_pgbench_load_fails_no_transaction() {
    let (blue, green) = envs();
    let db = "bg_load";
    let (sc, http) = started(db, "switch_timeout = \"10s\"", "");
    assert_eq!(
        states(&sc),
        vec![
            ("blue".into(), "active".into()),
            ("green".into(), "cold".into())
        ]
    );

    // A cached read on blue: the second answer comes from the cache (blue's row changed
    // behind the sidecar's back, and the cache still says 'blue').
    let marker = |sc: &Sidecar| app_sql(sc, db, "SELECT name FROM bg_env").unwrap();
    assert_eq!(marker(&sc), "blue");
    blue.psql(
        Node::Primary,
        db,
        "UPDATE bg_env SET name = 'blue (changed behind the cache)'",
    )
    .unwrap();
    blue.wait_replicas_caught_up();
    assert_eq!(
        marker(&sc),
        "blue",
        "the marker read was not cached on blue"
    );

    let logs = sc.dir().join("pgbench-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let script = sc.dir().join("bluegreen.sql");
    std::fs::write(&script, SCRIPT).unwrap();
    let load = Command::new(support::pgbench())
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &sc.port().to_string(),
            "-U",
            APP_USER,
        ])
        .args([
            "-c",
            &CLIENTS.to_string(),
            "-j",
            "4",
            "-t",
            &PER_CLIENT.to_string(),
            "-M",
            "prepared",
        ])
        .args(["--progress", "1", "-l"])
        .arg(format!("--log-prefix={}", logs.join("tx").display()))
        .arg("-f")
        .arg(&script)
        .arg(db)
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGSSLMODE", "disable")
        .current_dir(&logs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pgbench");

    let count = |lab: &Lab| -> u64 {
        lab.psql(Node::Primary, db, "SELECT count(*) FROM bg_writes")
            .unwrap()
            .parse()
            .unwrap()
    };
    let wait_rows = |lab: &Lab, at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while count(lab) < at_least {
            assert!(Instant::now() < deadline, "the load stalled\n{}", sc.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_rows(blue, PHASE_ROWS);
    let green_started = now_epoch();
    let to_green = console(&sc, "SWITCH green").unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    let green_done = now_epoch();
    // Green's replica serves the marker: green's row, not blue's cached one.
    assert_eq!(
        marker(&sc),
        "green",
        "a cached blue answer was served on green"
    );
    wait_rows(green, PHASE_ROWS);
    let blue_primary = format!("127.0.0.1:{}", blue.primary_port());
    let connects_before = pool_connects(&sc, &blue_primary, db);
    let blue_started = now_epoch();
    let to_blue = console(&sc, "SWITCH blue").unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    let blue_done = now_epoch();
    // The 16 clients resume on blue's warm connections.
    std::thread::sleep(Duration::from_secs(1));
    let connects_after = pool_connects(&sc, &blue_primary, db);

    let out = load.wait_with_output().expect("wait for pgbench");
    let (_, processed) = support::pgbench_completed(&out, "under SWITCH green / SWITCH blue");

    let back = marker(&sc);
    assert!(
        back.starts_with("blue"),
        "after SWITCH blue the marker read gave {back:?}"
    );

    // Every row is on the environment that was active when it was written.
    let rows = |lab: &Lab, filter: &str| -> u64 {
        lab.psql(
            Node::Primary,
            db,
            &format!("SELECT count(*) FROM bg_writes WHERE {filter}"),
        )
        .unwrap()
        .parse()
        .unwrap()
    };
    let at = "extract(epoch FROM at)";
    let blue_before = rows(blue, &format!("{at} < {green_done}"));
    let blue_after = rows(blue, &format!("{at} > {blue_started}"));
    let blue_all = rows(blue, "true");
    let green_all = rows(green, "true");
    let green_inside = rows(
        green,
        &format!("{at} > {green_started} AND {at} < {blue_done}"),
    );
    assert_eq!(
        blue_before + blue_after,
        blue_all,
        "rows written on blue while green was active"
    );
    assert_eq!(green_inside, green_all, "rows on green outside its phase");
    assert!(
        blue_before > 0 && green_all > 0 && blue_after > 0,
        "each phase wrote rows: blue {blue_before}, green {green_all}, blue again {blue_after}"
    );
    // Nothing acknowledged was lost, nothing was written twice: one row and one counter
    // increment per transaction pgbench counted.
    let counted = |lab: &Lab| -> u64 {
        lab.psql(Node::Primary, db, "SELECT sum(n) FROM bg_counters")
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        blue_all + green_all,
        processed,
        "rows vs pgbench's transactions"
    );
    assert_eq!(counted(blue) + counted(green), processed);
    assert_eq!(
        processed,
        (CLIENTS * PER_CLIENT) as u64,
        "pgbench lost transactions"
    );

    // Switching back found blue's primary pool warm: neither the switch nor the 16 clients
    // that resumed on blue opened a connection to it. (A pool blue never had, e.g. for its
    // replica when every blue read was served by the primary or the cache, is opened.)
    assert_eq!(
        connects_after,
        connects_before,
        "blue's primary pool connected again after SWITCH blue\n{}",
        console(&sc, "SHOW POOLS").unwrap()
    );
    let m = metrics(http);
    assert!(
        m.contains("pgsidecar_switch_pause_seconds_count 2"),
        "switch histogram:\n{m}"
    );
    assert!(
        m.contains("pgsidecar_active_environment{environment=\"blue\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pgsidecar_active_environment{environment=\"green\"} 0"),
        "{m}"
    );

    // Measured, not asserted: the pause SWITCH reports, and what clients saw. A transaction
    // "overlaps" a window when it ran at any time inside it. Windows: the hold itself
    // (`paused_at` + `pause_ms` from SWITCH's answer: every transaction held by it is in
    // there), and the whole console command (which also opens green's connections first).
    let log = transaction_log(&logs);
    let overlaps =
        |(done, lat): &(f64, f64), (from, to): (f64, f64)| *done >= from && done - lat <= to;
    let summary = |window: Option<(f64, f64)>, outside: &[(f64, f64)]| {
        let mut v: Vec<f64> = log
            .iter()
            .filter(|t| window.is_none_or(|w| overlaps(t, w)))
            .filter(|t| !outside.iter().any(|w| overlaps(t, *w)))
            .map(|t| t.1)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        format!(
            "{} tx, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            v.len(),
            percentile(&v, 0.5) * 1e3,
            percentile(&v, 0.99) * 1e3,
            v.last().copied().unwrap_or(0.0) * 1e3
        )
    };
    let hold = |answer: &str| {
        let at = humantime::parse_rfc3339(&column(answer, "paused_at", 0)).unwrap();
        let from = at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let ms: f64 = column(answer, "pause_ms", 0).parse().unwrap();
        (from, from + ms / 1e3)
    };
    let commands = [(green_started, green_done), (blue_started, blue_done)];
    eprintln!(
        "bluegreen: {processed} transactions, {CLIENTS} clients, 0 failed; rows blue {blue_before}+{blue_after}, green {green_all}\n\
         bluegreen: SWITCH green (command {:.0} ms): {}\n\
         bluegreen: SWITCH blue  (command {:.0} ms): {}\n\
         bluegreen: latency of transactions overlapping the hold of SWITCH green: {}; of those starting in it: {}\n\
         bluegreen: latency of transactions overlapping the hold of SWITCH blue:  {}; of those starting in it: {}\n\
         bluegreen: latency during the whole SWITCH green command: {}\n\
         bluegreen: latency during the whole SWITCH blue command:  {}\n\
         bluegreen: latency at other times: {}",
        (green_done - green_started) * 1e3,
        switch_row(&to_green),
        (blue_done - blue_started) * 1e3,
        switch_row(&to_blue),
        summary(Some(hold(&to_green)), &[]),
        summary(Some(hold(&to_green)), &[(0.0, hold(&to_green).0)]),
        summary(Some(hold(&to_blue)), &[]),
        summary(Some(hold(&to_blue)), &[(0.0, hold(&to_blue).0)]),
        summary(Some(commands[0]), &[]),
        summary(Some(commands[1]), &[]),
        summary(None, &commands),
    );
}

#[test]
fn pause_switch_resume_moves_waiting_clients_to_the_new_environment() {
    let db = "bg_pause";
    let (sc, _http) = started(db, "switch_timeout = \"3s\"\n", "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = sc.url(APP_USER, APP_PASSWORD, db);
        let c = support::client(&url).await.unwrap();
        let marker = "SELECT name FROM bg_env ORDER BY name LIMIT 1";
        let before: String = c.query_one(marker, &[]).await.unwrap().get(0);
        assert_eq!(before, "blue");
        console(&sc, "PAUSE").unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
        // A request arriving while paused waits for RESUME…
        let waiting = tokio::spawn(async move {
            let row = c
                .query_one(marker, &[])
                .await
                .map(|r| r.get::<_, String>(0));
            (c, row)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a request ran while paused");
        // …and does not hold the switch up: it holds no transaction.
        let switched = tokio::task::spawn_blocking({
            let port = sc.port();
            move || support::psql(port, "pgsidecar", "SWITCH green")
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("SWITCH while paused: {e}\n{}", sc.log()));
        assert!(switched.contains("green"), "{switched}");
        assert!(!waiting.is_finished(), "SWITCH resumed a paused request");
        console(&sc, "RESUME").unwrap();
        let (_c, row) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the paused request never ran after RESUME")
            .unwrap();
        assert_eq!(
            row.unwrap(),
            "green",
            "the held request ran on the old environment"
        );
    });
}

#[test]
fn a_switch_waits_for_open_transactions_gives_up_without_cutting_them_and_closes_pinned_sessions() {
    let (blue, green) = envs();
    let db = "bg_ops";
    // "dead": an environment whose primary is not running.
    let dead = format!(
        "[environments.dead]\nprimary = \"postgres://127.0.0.1:{}\"\n",
        support::free_port()
    );
    let (sc, http) = started(
        db,
        "switch_timeout = \"1s\"\nrollback_window = \"8s\"\n",
        &dead,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = sc.url(APP_USER, APP_PASSWORD, db);
        let open = support::client(&url).await.unwrap();
        let pinned = support::client(&url).await.unwrap();
        pinned
            .batch_execute("CREATE TEMP TABLE scratch(x int)")
            .await
            .unwrap();
        open.batch_execute("BEGIN; INSERT INTO bg_writes(client) VALUES (100)")
            .await
            .unwrap();

        // The open transaction outlasts switch_timeout: the switch gives up, nothing moves.
        let started = Instant::now();
        let err = tokio::task::spawn_blocking({
            let port = sc.port();
            move || support::psql(port, "pgsidecar", "SWITCH green")
        });
        // A client arriving during the attempt waits, then runs on blue.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let during = support::client(&url).await.unwrap();
        during
            .batch_execute("INSERT INTO bg_writes(client) VALUES (101)")
            .await
            .unwrap();
        let err = err
            .await
            .unwrap()
            .expect_err("SWITCH must fail while a transaction runs");
        assert!(
            err.contains("still running") && err.contains("stays on \"blue\""),
            "{err}"
        );
        eprintln!(
            "bluegreen: aborted switch after {:?}: {err}",
            started.elapsed()
        );
        open.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            blue.psql(
                Node::Primary,
                db,
                "SELECT count(*) FROM bg_writes WHERE client IN (100, 101)"
            )
            .unwrap(),
            "2",
            "the open transaction and the held one both committed on blue"
        );
        assert_eq!(state(&sc, "blue"), "active");
        assert!(
            metrics(http).contains("pgsidecar_switches_total{result=\"aborted\"} 1"),
            "{}",
            metrics(http)
        );

        // A target whose primary cannot be reached: refused before anyone is paused.
        let e = console(&sc, "SWITCH dead").unwrap_err();
        assert!(
            e.contains("SWITCH dead aborted") && e.contains("traffic stays on \"blue\""),
            "{e}"
        );
        open.batch_execute("SELECT 1").await.unwrap();
        assert_eq!(state(&sc, "blue"), "active");
        assert_eq!(state(&sc, "dead"), "cold");

        // Green's replica stops replaying; a row lands on green's primary (the migration's
        // last write). After the switch, reads must not come from the lagging replica.
        green.pause_replay(0);
        green
            .psql(Node::Primary, db, "INSERT INTO bg_env VALUES ('migrated')")
            .unwrap();
        let switched = console(&sc, "SWITCH green").unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
        assert_eq!(column(&switched, "to", 0), "green");
        let seen = app_sql(
            &sc,
            db,
            "SELECT count(*) FROM bg_env WHERE name = 'migrated'",
        )
        .unwrap();
        green.resume_replay(0);
        assert_eq!(
            seen, "1",
            "a replica behind green's primary served a read after the switch"
        );

        // The pinned session (temp table) cannot move: 57P01, and it reconnects to green.
        let e = pinned
            .simple_query("SELECT 1")
            .await
            .expect_err("a pinned session must be closed after a switch");
        assert!(
            e.code().map(|c| c.code()) == Some("57P01") || pinned.is_closed(),
            "{e}"
        );
        let again = support::client(&url).await.unwrap();
        let name: String = again
            .query_one("SELECT name FROM bg_env ORDER BY name LIMIT 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "green");
    });

    // Unknown environment, non-admin user: clear refusals.
    let e = console(&sc, "SWITCH purple").unwrap_err();
    assert!(
        e.contains("\"purple\" is not defined (defined: blue, dead, green)"),
        "{e}"
    );
    let e = support::psql_as(
        sc.port(),
        APP_USER,
        APP_PASSWORD,
        "pgsidecar",
        "SWITCH blue",
    )
    .unwrap_err();
    assert!(
        e.contains("not allowed to use the pgsidecar admin console"),
        "{e}"
    );

    // A reload keeps the switch, and says how to persist it.
    let note = console(&sc, "RELOAD").unwrap();
    assert!(
        note.contains("SWITCH made \"green\" active: kept"),
        "{note}"
    );
    assert_eq!(state(&sc, "green"), "active");
    let file = sc.dir().join("pgsidecar.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("active = \"blue\"", "active = \"green\""),
    )
    .unwrap();
    let note = console(&sc, "RELOAD").unwrap();
    assert!(!note.contains("upstream.active"), "{note}");

    // Blue stays warm for its rollback window, then its pools are closed.
    assert_eq!(state(&sc, "blue"), "warm");
    let blue_primary = format!("127.0.0.1:{}", blue.primary_port());
    assert!(console(&sc, "SHOW POOLS").unwrap().contains(&blue_primary));
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(&sc, "blue") != "cold" {
        assert!(Instant::now() < deadline, "blue never closed\n{}", sc.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let pools = console(&sc, "SHOW POOLS").unwrap();
    assert!(
        !pools.contains(&blue_primary),
        "blue's pools remain:\n{pools}"
    );

    // Decommission: blue leaves the file. Removing the active environment instead is refused.
    let text = std::fs::read_to_string(&file).unwrap();
    let section = |name: &str, next: &str| {
        let start = text.find(&format!("[environments.{name}]")).unwrap();
        let end = text.find(next).unwrap();
        text[start..end].to_string()
    };
    let (blue_section, green_section) = (
        section("blue", "[environments.green]"),
        section("green", "[pool]"),
    );
    let without_green = text
        .replace(&green_section, "")
        .replace("active = \"green\"", "active = \"blue\"");
    std::fs::write(&file, without_green).unwrap();
    let e = console(&sc, "RELOAD").unwrap_err();
    assert!(
        e.contains("the active environment \"green\" is not defined"),
        "{e}"
    );
    std::fs::write(&file, text.replace(&blue_section, "")).unwrap();
    console(&sc, "RELOAD").unwrap();
    assert_eq!(
        states(&sc),
        vec![
            ("dead".into(), "cold".into()),
            ("green".into(), "active".into())
        ]
    );
}

/// A `stat|value` row of a console answer (SHOW MIRROR).
fn stat(sc: &Sidecar, command: &str, name: &str) -> String {
    let answer = console(sc, command).unwrap_or_else(|e| panic!("{command}: {e}"));
    answer
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}|")))
        .unwrap_or_else(|| panic!("no {name} in {command}:\n{answer}"))
        .to_string()
}

/// Waits (up to 30 s) until SHOW MIRROR has compared `n` reads.
fn mirrored(sc: &Sidecar, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: u64 = stat(sc, "SHOW MIRROR", "requests").parse().unwrap();
        assert!(done <= n, "more reads compared ({done}) than sent ({n})");
        if done == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} mirrored reads compared\n{}\n{}",
            console(sc, "SHOW MIRROR").unwrap_or_default(),
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mirroring_to_green_counts_no_difference_on_equal_data_and_each_read_of_a_row_changed_on_green() {
    let db = "bg_mirror";
    let (sc, http) = started(db, "", "");
    let (_, green) = envs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(180), async {
            let url = sc.url(APP_USER, APP_PASSWORD, db);
            let c = support::client(&url).await.unwrap();
            let affected = "SELECT client, n FROM bg_counters WHERE client < 10";
            let others = c
                .prepare("SELECT client, n FROM bg_counters WHERE client >= $1")
                .await
                .unwrap();
            // Off by default: nothing is mirrored.
            c.simple_query(affected).await.unwrap();
            assert_eq!(stat(&sc, "SHOW MIRROR", "mirror_to"), "(off)");
            assert_eq!(stat(&sc, "SHOW MIRROR", "requests"), "0");

            // Turned on by a reload: every eligible read is copied to green.
            let file = sc.dir().join("pgsidecar.toml");
            let text = std::fs::read_to_string(&file).unwrap();
            std::fs::write(
                &file,
                format!("[switch]\nmirror_to = \"green\"\nmirror_sample = 1.0\n{text}"),
            )
            .unwrap();
            let note = console(&sc, "RELOAD").unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
            assert!(note.contains("switch.mirror_sample = 1 to green"), "{note}");

            // Same data on blue and green: no difference.
            for _ in 0..10 {
                let rows = c.simple_query(affected).await.unwrap();
                let rows = rows
                    .iter()
                    .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                    .count();
                assert_eq!(rows, 10);
                assert_eq!(c.query(&others, &[&20i32]).await.unwrap().len(), 44);
            }
            mirrored(&sc, 20);
            assert_eq!(stat(&sc, "SHOW MIRROR", "differences"), "0");
            assert_eq!(stat(&sc, "SHOW MIRROR", "errors"), "0");
            assert_eq!(stat(&sc, "SHOW MIRROR", "dropped"), "0");

            // A row changed on green only: each read that returns it differs there, the others
            // do not; clients still get blue's answer.
            green
                .psql(
                    Node::Primary,
                    db,
                    "UPDATE bg_counters SET n = 7 WHERE client = 3",
                )
                .unwrap();
            // Prepared once: a statement dropped after each use would send its Close right
            // before the next read, which then runs on the same backend without a new routing
            // decision, and only reads routed on their own are mirrored.
            let changed = c
                .prepare("SELECT n FROM bg_counters WHERE client = $1 AND n >= 0")
                .await
                .unwrap();
            for _ in 0..5 {
                let n: i64 = c.query_one(&changed, &[&3i32]).await.unwrap().get(0);
                assert_eq!(n, 0, "the client reads blue");
                assert_eq!(c.query(&others, &[&20i32]).await.unwrap().len(), 44);
            }
            mirrored(&sc, 30);
            assert_eq!(stat(&sc, "SHOW MIRROR", "differences"), "5");
            assert!(
                stat(&sc, "SHOW MIRROR", "last_difference")
                    .contains("select n from bg_counters where client = $1 and n >= ?"),
                "{}",
                console(&sc, "SHOW MIRROR").unwrap()
            );
            let log = sc.log();
            assert_eq!(
                log.matches("mirrored read answered differently").count(),
                5,
                "{log}"
            );
            assert!(
                log.contains("select n from bg_counters where client = $1 and n >= ?"),
                "{log}"
            );
            let m = metrics(http);
            for line in [
                "pgsidecar_mirror_requests_total 30",
                "pgsidecar_mirror_differences_total 5",
                "pgsidecar_mirror_dropped_total 0",
            ] {
                assert!(m.lines().any(|l| l == line), "{line} not in\n{m}");
            }
        })
        .await
        .expect("test timed out");
    });
    support::assert_no_panic(&sc);
}
