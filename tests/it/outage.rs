//! Primary outages (issue #15 items 0 and 1), against a real primary, two streaming replicas
//! and Redis, with cache rules and `[[locks]]` on: the primary fast-stopped and started again
//! under load fails no read and no write begun after it went down (held by
//! `upstream.outage_hold`), a transaction in flight when it goes is never replayed, and past
//! the hold the client gets a clear error instead of a hang.
//!
//! `PGSIDECAR_OUTAGE_ROUNDS` sets how many restarts the load test makes (2 by default, to
//! keep CI short; `scripts/outage.sh` runs 5) and `PGSIDECAR_TEST_OUTAGE_HOLD` its
//! `upstream.outage_hold` (20 s by default, so a slow machine's restart does not fail it; the
//! script uses the shipped 5 s).

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{
    code, console_value, wait_until_reads_reach_replicas, Answer, Console, Lab, LabOptions, Node,
    Sidecar, SidecarConfig,
};

const SCHEMA: &str = "CREATE TABLE w(id serial primary key, n int not null);
    CREATE INDEX ON w(n);
    CREATE TABLE items(id int primary key, v text);
    INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;
    CREATE TABLE inventory(sku_id int, warehouse_id int, qty int, primary key (sku_id, warehouse_id));
    INSERT INTO inventory SELECT g, 1, 0 FROM generate_series(1, 10) g;";

/// A sidecar in the full topology (both replicas, the Redis cache with a rule, `[[locks]]`),
/// holding requests up to `outage_hold` while the primary is away.
fn topology(l: &Lab, outage_hold: &str) -> SidecarConfig {
    SidecarConfig::full_topology(l)
        .cache_rule("items", &["items"], "90s")
        .set("upstream.outage_hold", outage_hold)
}

/// A lab of its own (its primary is stopped), in the full topology: primary, 2 replicas, Redis.
fn outage_lab() -> (Lab, String) {
    let l = Lab::start(LabOptions::default());
    let db = l.fresh_db("outage");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    (l, db)
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
}

/// Issue #15's fault: 6 readers and 1 writer through the sidecar while the primary is
/// stopped with `pg_ctl -m fast` and started again, several times. Without the hold, every
/// write during a restart fails (08006/57P03) and reads that fall back to the primary fail
/// with "the database system is shutting down". A client connecting while the primary is down
/// waits for it too, then writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_restarts_under_load_fail_no_read_and_no_write_begun_during_the_outage() {
    let rounds: usize = std::env::var("PGSIDECAR_OUTAGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let (l, db) = outage_lab();
    // Generous: a restart takes 1-4 s here, longer on a loaded machine; the test proves the
    // hold, not its default.
    // A short max_wait: reads of what the writer just wrote often fall back to the primary,
    // as they did in the run on a loaded machine.
    let hold = std::env::var("PGSIDECAR_TEST_OUTAGE_HOLD").unwrap_or_else(|_| "20s".into());
    let sc = topology(&l, &hold).set("routing.max_wait", "2ms").start();
    let probe = support::app_client(&sc, &db).await;
    wait_until_reads_reach_replicas(&probe).await;
    let stop = Arc::new(AtomicBool::new(false));
    // When the primary was last fully down (pg_ctl stop returned), as an Instant.
    let down_since: Arc<parking_lot::Mutex<Option<Instant>>> = Default::default();
    let mut readers = Vec::new();
    for i in 0..6 {
        let c = support::app_client(&sc, &db).await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            // Half read what the writer writes (read-your-writes makes them wait for replay
            // and fall back to the primary under load), half the cached catalog.
            let sql = if i % 2 == 0 {
                "SELECT count(*)::int FROM w WHERE n >= $1"
            } else {
                "SELECT length(v) FROM items WHERE id = $1"
            };
            let stmt = c.prepare(sql).await.unwrap();
            let mut t = Tally::default();
            let mut k = 0i32;
            while !stop.load(Ordering::Relaxed) {
                k = (k + 1) % 100;
                let arg = k + 1;
                match tokio::time::timeout(Duration::from_secs(60), c.query_one(&stmt, &[&arg]))
                    .await
                {
                    Ok(Ok(_)) => t.ok += 1,
                    Ok(Err(e)) => t.failed.push(format!("{} {e}", code(&e))),
                    Err(_) => t.failed.push("no answer within 60 s".into()),
                }
                if c.is_closed() {
                    t.failed.push("connection closed".into());
                    break;
                }
            }
            t
        }));
    }
    let writer = {
        let c = support::app_client(&sc, &db).await;
        let (stop, down_since) = (stop.clone(), down_since.clone());
        tokio::spawn(async move {
            let insert = c.prepare("INSERT INTO w(n) VALUES ($1)").await.unwrap();
            let stock = c
                .prepare(
                    "UPDATE inventory SET qty = qty + 1 WHERE sku_id = $1 AND warehouse_id = 1",
                )
                .await
                .unwrap();
            // (n, acknowledged, began after the primary was down, error)
            let mut log: Vec<(i32, bool, bool, String)> = Vec::new();
            let mut n = 0i32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let began = Instant::now();
                let after_down = down_since.lock().is_some_and(|d| began >= d);
                let r = if n % 2 == 0 {
                    c.execute(&insert, &[&n]).await
                } else {
                    c.execute(&stock, &[&(n % 10 + 1)]).await
                };
                match r {
                    Ok(_) => log.push((n, true, after_down, String::new())),
                    Err(e) => log.push((n, false, after_down, format!("{} {e}", code(&e)))),
                }
                if c.is_closed() {
                    // A session closed after its write: the application would see it on its
                    // next one.
                    let after_down = down_since.lock().is_some();
                    log.push((n + 1, false, after_down, "connection closed".into()));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            log
        })
    };
    let mut outages = Vec::new();
    let mut newcomers = Vec::new();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        tokio::task::block_in_place(|| l.stop_primary());
        *down_since.lock() = Some(Instant::now());
        // An application opening a connection while the primary is down: its login waits for
        // the primary like a new transaction, then it writes.
        let url = sc.url(support::APP_USER, support::APP_PASSWORD, &db);
        let n = -(round as i32) - 1;
        newcomers.push(tokio::spawn(async move {
            let c = support::client(&url)
                .await
                .map_err(|e| format!("connect: {} {e}", code(&e)))?;
            c.execute("INSERT INTO w(n) VALUES ($1)", &[&n])
                .await
                .map_err(|e| format!("write: {} {e}", code(&e)))?;
            Ok::<i32, String>(n)
        }));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| l.start_primary());
        outages.push(started.elapsed());
        *down_since.lock() = None;
    }
    let mut connected = Vec::new();
    for c in newcomers {
        let r = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("a client connecting during the outage got no answer")
            .unwrap();
        connected.push(r);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reads = Tally::default();
    for r in readers {
        let t = r.await.unwrap();
        reads.ok += t.ok;
        reads.failed.extend(t.failed);
    }
    let writes = writer.await.unwrap();
    assert!(
        connected.iter().all(|r| r.is_ok()),
        "clients connecting while the primary was down failed: {connected:?}\n{}",
        sc.log()
    );
    let acked = writes.iter().filter(|w| w.1).count();
    let failed_during: Vec<_> = writes.iter().filter(|w| !w.1 && w.2).collect();
    let failed_other: Vec<_> = writes.iter().filter(|w| !w.1 && !w.2).collect();
    let acked_during = writes.iter().filter(|w| w.1 && w.2).count();
    let holds = console_value(&sc, "SHOW STATS", "outage_holds_resumed").await;
    let served_by_replica = console_value(&sc, "SHOW STATS", "outage_holds_replica").await;
    println!(
        "{rounds} primary restarts ({outages:?}): reads {} ok, {} failed; writes {} acknowledged \
         ({acked_during} begun while the primary was down), {} failed after the primary was \
         down, {} failed in flight as it went down; holds resumed {holds:?}, reads served by a \
         replica during an outage {served_by_replica:?}",
        reads.ok,
        reads.failed.len(),
        acked,
        failed_during.len(),
        failed_other.len()
    );
    let mut in_flight_errors: Vec<&str> = failed_other.iter().map(|w| w.3.as_str()).collect();
    in_flight_errors.dedup();
    println!("writes in flight as the primary went down failed with: {in_flight_errors:?}");
    assert!(reads.ok > 100, "the readers hardly ran: {}", reads.ok);
    assert!(
        reads.failed.is_empty(),
        "reads failed during primary restarts: {:?}\n{}",
        &reads.failed[..reads.failed.len().min(10)],
        sc.log()
    );
    assert!(
        failed_during.is_empty(),
        "writes begun while the primary was down failed: {failed_during:?}\n{}",
        sc.log()
    );
    // Writes recovered without restarting anything: the last ones succeeded.
    assert!(
        writes.iter().rev().take(3).all(|w| w.1),
        "writes did not recover: {:?}",
        &writes[writes.len().saturating_sub(3)..]
    );
    let held: u64 = holds.unwrap().parse().unwrap();
    assert!(held > 0, "no request was held during {rounds} restarts");
    // Every acknowledged insert is there exactly once; nothing was applied twice.
    let rows = l
        .psql(
            Node::Primary,
            &db,
            "SELECT n, count(*) FROM w GROUP BY n HAVING count(*) > 1",
        )
        .unwrap();
    assert!(rows.trim().is_empty(), "rows written twice: {rows}");
    let newcomer_rows = l
        .psql(Node::Primary, &db, "SELECT count(*) FROM w WHERE n < 0")
        .unwrap();
    assert_eq!(newcomer_rows.trim(), rounds.to_string());
    for (n, ok, _, _) in writes.iter().filter(|w| w.1 && w.0 % 2 == 0) {
        let c = l
            .psql(
                Node::Primary,
                &db,
                &format!("SELECT count(*) FROM w WHERE n = {n}"),
            )
            .unwrap();
        assert_eq!(c.trim(), "1", "acknowledged insert {n} ({ok}) missing");
    }
    support::assert_no_panic(&sc);
}

/// A write in flight when the primary stops (here: still running) may have committed for all
/// the proxy knows, so it must fail with the server's error and never run again when the
/// primary is back — whatever the hold does for requests that had not reached it; an
/// autocommit write's session goes on (also one on a `[[locks]]` table, which the proxy wraps
/// in a transaction of its own). A transaction idle at that moment is gone too: its next
/// statement must not be held and run on a fresh backend outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_in_flight_when_the_primary_stops_fails_and_is_not_replayed() {
    let (l, db) = outage_lab();
    let sc = topology(&l, "20s").start();
    let autocommit = support::app_client(&sc, &db).await;
    let txn = support::app_client(&sc, &db).await;
    let idle = support::app_client(&sc, &db).await;
    let locked = support::app_client(&sc, &db).await;
    txn.batch_execute("BEGIN; INSERT INTO w(n) VALUES (1)")
        .await
        .unwrap();
    idle.batch_execute("BEGIN; INSERT INTO w(n) VALUES (5)")
        .await
        .unwrap();
    let in_txn = tokio::spawn(async move {
        let r = txn
            .simple_query("INSERT INTO w(n) SELECT 2 FROM pg_sleep(30)")
            .await;
        (r.map(drop), txn)
    });
    let running = tokio::spawn(async move {
        let r = autocommit
            .simple_query("INSERT INTO w(n) SELECT 3 FROM pg_sleep(30)")
            .await;
        (r.map(drop), autocommit)
    });
    let locking = tokio::spawn(async move {
        let r = locked
            .simple_query(
                "UPDATE inventory SET qty = qty + 1 \
                 WHERE sku_id = 1 AND warehouse_id = 1 AND pg_sleep(30) IS NOT NULL",
            )
            .await;
        (r.map(drop), locked)
    });
    // The three statements are running on the primary before it stops.
    support::eventually("the writes running", Duration::from_secs(20), || async {
        let n = l
            .psql(
                Node::Primary,
                &db,
                "SELECT count(*) FROM pg_stat_activity WHERE (query LIKE 'INSERT INTO w(n) SELECT%' OR query LIKE 'UPDATE inventory%') AND state = 'active'",
            )?;
        (n.trim() == "3").then_some(()).ok_or(n)
    })
    .await;
    tokio::task::block_in_place(|| l.stop_primary());
    let (r, txn) = tokio::time::timeout(Duration::from_secs(30), in_txn)
        .await
        .expect("the transaction's client got no answer")
        .unwrap();
    let e = r.expect_err("a transaction whose server stopped must fail");
    assert!(
        code(&e).starts_with("57P") || code(&e).starts_with("08") || e.is_closed(),
        "unclear error for the transaction: {e}"
    );
    let mut sessions = Vec::new();
    for (what, write) in [("autocommit", running), ("[[locks]]", locking)] {
        let (r, c) = tokio::time::timeout(Duration::from_secs(30), write)
            .await
            .unwrap_or_else(|_| panic!("the {what} write's client got no answer"))
            .unwrap();
        let e = r.expect_err("a write in flight when its server stopped must fail");
        assert!(
            code(&e).starts_with("57P") || code(&e).starts_with("08"),
            "unclear error for the {what} write in flight: {e}"
        );
        sessions.push((what, c));
    }
    tokio::task::block_in_place(|| l.start_primary());
    for (what, c) in &sessions {
        assert!(!c.is_closed(), "the {what} write's session was closed");
        c.simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("the {what} write's session does not go on: {e}"));
    }
    // The idle transaction's next statements: an error, not a new transaction of their own.
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        idle.batch_execute("INSERT INTO w(n) VALUES (6); COMMIT"),
    )
    .await
    .expect("the idle transaction's client got no answer");
    let e = r.expect_err("a transaction whose server restarted must not go on");
    assert!(
        code(&e).starts_with("57P") || code(&e).starts_with("08") || e.is_closed(),
        "unclear error for the idle transaction: {e}"
    );
    // Longer than anything the sidecar could still be holding, then nothing of them exists.
    let fresh = support::app_client(&sc, &db).await;
    fresh
        .simple_query("INSERT INTO w(n) VALUES (4)")
        .await
        .expect("writes work again once the primary is back");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = l
        .psql(Node::Primary, &db, "SELECT n FROM w ORDER BY n")
        .unwrap();
    assert_eq!(
        rows.split_whitespace().collect::<Vec<_>>(),
        ["4"],
        "a write in flight during the outage was replayed or committed"
    );
    let qty = l
        .psql(
            Node::Primary,
            &db,
            "SELECT qty FROM inventory WHERE sku_id = 1 AND warehouse_id = 1",
        )
        .unwrap();
    assert_eq!(
        qty.trim(),
        "0",
        "the [[locks]] write in flight was replayed"
    );
    drop(txn);
    support::assert_no_panic(&sc);
}

/// Past `upstream.outage_hold`, a held write gets 08006 (nothing answers at the primary's
/// address) with a message naming the setting: bounded, never a hang. And while the primary
/// is down the hold shows in the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_longer_than_outage_hold_gets_a_clear_error() {
    let (l, db) = outage_lab();
    let sc = topology(&l, "2s").start();
    let c = support::app_client(&sc, &db).await;
    c.simple_query("INSERT INTO w(n) VALUES (1)").await.unwrap();
    // The console login's password is checked by the primary once (passthrough), then
    // remembered: the console stays reachable while the primary is down.
    assert_eq!(
        console_value(&sc, "SHOW STATS", "outage_held_now")
            .await
            .as_deref(),
        Some("0")
    );
    tokio::task::block_in_place(|| l.stop_primary());
    let write = tokio::spawn(async move {
        let r = c.simple_query("INSERT INTO w(n) VALUES (2)").await;
        (r.map(drop), c)
    });
    support::eventually(
        "the write shows as held",
        Duration::from_secs(10),
        || async {
            let v = console_value(&sc, "SHOW STATS", "outage_held_now").await;
            match v.as_deref() {
                Some("1") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let (r, c) = tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .expect("a held write must end within the hold")
        .unwrap();
    let e = r.expect_err("the primary is still down");
    assert_eq!(code(&e), "08006", "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("outage_hold"), "{e:?}");
    assert_eq!(
        console_value(&sc, "SHOW STATS", "outage_holds_expired")
            .await
            .as_deref(),
        Some("1")
    );
    tokio::task::block_in_place(|| l.start_primary());
    // The same client connection goes on once the primary is back.
    c.simple_query("INSERT INTO w(n) VALUES (3)")
        .await
        .expect("writes recover without restarting anything");
    support::assert_no_panic(&sc);
}

/// A standby that restarts comes back consistent at its minimum recovery point, which can be
/// behind what it had replayed and shown before. A read that loses its replica connection
/// (here: both replicas stopped under it) is answered by the primary, and the replica's last
/// known position stops counting until it is read again: before, it was kept until the next
/// health probe, so a read needing that position could be sent to a replica not there yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lost_under_a_read_is_not_trusted_with_its_old_position() {
    let (l, db) = outage_lab();
    // Probed once at start, then not again during the test: only the sidecar's own handling
    // of the lost connection can change what it believes.
    let sc = SidecarConfig::full_topology(&l)
        .set("routing.health_interval", "1h")
        .start();
    let positions = || async {
        replica_positions(&sc)
            .await
            .into_iter()
            .map(|(_, lsn)| lsn)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let p = positions().await;
        if p.len() == 2 && p.iter().all(|p| !p.is_empty() && p != "0/0") {
            break p;
        }
        assert!(Instant::now() < deadline, "replicas never probed: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = support::client(&sc.url(support::APP_USER, support::APP_PASSWORD, &db))
        .await
        .expect("connect");
    wait_until_reads_reach_replicas(&c).await;
    let read = tokio::spawn(async move {
        tokio::time::timeout(
            Duration::from_secs(60),
            c.simple_query("SELECT pg_last_wal_replay_lsn() IS NOT NULL, pg_sleep(2)"),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| {
        l.stop_replica(0);
        l.stop_replica(1);
    });
    let answered = read
        .await
        .expect("join")
        .expect("the read answered in time");
    assert!(
        answered.is_ok(),
        "the read lost with its replica was not answered by the primary: {answered:?}\n{}",
        sc.log()
    );
    let after = positions().await;
    assert!(
        after.iter().any(|p| p == "0/0"),
        "the replica lost under the read kept its old position: {before:?} → {after:?}\n{}",
        sc.log()
    );
    support::assert_no_panic(&sc);
}

/// A replica that restarts comes back at its minimum recovery point, which can be behind what
/// it showed before. Stopped while no session was connected to it, and with probes an hour
/// apart, its last known position must still stop counting at once: the monitor's idle
/// connection hears the server go (before, the old position was trusted until the next
/// probe, so a read needing it could be sent to a replica not there yet). Started again, it
/// is probed again without waiting for the next interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarting_with_no_session_on_it_is_not_trusted_with_its_old_position() {
    let (l, _db) = outage_lab();
    let sc = SidecarConfig::full_topology(&l)
        .set("routing.health_interval", "1h")
        .start();
    support::wait_roles_verified(&sc, 2).await;
    let port = format!(":{}", l.port(Node::Replica(0)));
    let position = || async {
        replica_positions(&sc)
            .await
            .into_iter()
            .find(|(address, _)| address.ends_with(&port))
            .map(|(_, lsn)| lsn)
            .unwrap_or_default()
    };
    let before = position().await;
    assert!(
        !before.is_empty() && before != "0/0",
        "replica 0 never probed: {before:?}"
    );
    tokio::task::block_in_place(|| l.stop_replica(0));
    support::eventually(
        &format!(
            "replica 0's position ({before}) forgotten once it stopped\n{}",
            sc.log()
        ),
        Duration::from_secs(10),
        || async {
            match position().await {
                p if p == "0/0" => Ok(()),
                p => Err(p),
            }
        },
    )
    .await;
    tokio::task::block_in_place(|| l.start_replica(0));
    support::eventually(
        &format!("replica 0 probed again once it was back\n{}", sc.log()),
        Duration::from_secs(30),
        || async {
            match position().await {
                p if !p.is_empty() && p != "0/0" => Ok(()),
                p => Err(p),
            }
        },
    )
    .await;
    support::assert_no_panic(&sc);
}

/// Each configured replica's address and last known position (`SHOW REPLICAS`; "" when
/// unknown).
async fn replica_positions(sc: &Sidecar) -> Vec<(String, String)> {
    let a = Console::connect(sc).await.show("SHOW REPLICAS").await;
    a.rows
        .iter()
        .filter(|r| Answer::value(r, "configured_role") == "replica")
        .map(|r| {
            let lsn = r.get("lsn").cloned().flatten().unwrap_or_default();
            (Answer::value(r, "address").to_string(), lsn)
        })
        .collect()
}
