//! Issue #13's read-after-write check, in the full topology (primary, two streaming replicas,
//! Redis, the example cache rule on `prices`, `[[locks]]` on `inventory`) under the primary's
//! `synchronous_commit` off, on and remote_apply: 300 times "write a new price, then read it
//! back" — through the same session, another session of the same sidecar, and a session of a
//! second sidecar sharing Redis — routing only and with the cache. No read may return an older
//! price than the acknowledged one, and reads must still mostly run on the replicas (read from
//! the sidecars' own `/metrics`), else "never stale" would be bought by reading the primary.

use crate::support;

use crate::support::wait_until_reads_reach_replicas;

use std::time::Instant;

use crate::support::{Answer, Lab, LabOptions, Node, Rule, Sidecar, SidecarConfig, SyncCommit};

const WRITES: usize = 300;
const SKUS: usize = 10;

const SCHEMA: &str = "CREATE TABLE prices(sku_id int primary key, amount int not null);
    INSERT INTO prices SELECT g, 0 FROM generate_series(1, 10) g;
    CREATE TABLE inventory(sku_id int, warehouse_id int, qty int, PRIMARY KEY (sku_id, warehouse_id));
    GRANT ALL ON prices, inventory TO app;";

/// A sidecar as the example config has it (cache rule for catalog reads, locks on inventory),
/// sharing the lab's Redis; the cache enabled or not. Its HTTP endpoint serves `/metrics`.
fn sidecar(l: &Lab, cached: bool) -> Sidecar {
    SidecarConfig::in_front_of(l)
        .cache(&l.redis_url())
        .set("cache.enabled", cached)
        .http()
        .set("routing.health_interval", "100ms")
        .rule(
            Rule::named("catalog reads")
                .set("kind", "read")
                .tables(&["products", "prices", "categories"])
                .set("cache_ttl", "90s"),
        )
        .lock("inventory", &["sku_id", "warehouse_id"])
        .start()
}

/// Reads that reached a replica, cache hits, reads that waited for a replica and found one,
/// reads that waited and went to the primary, and seconds waited, so far on the sidecar at
/// `http`.
fn where_reads_went(sc: &Sidecar) -> [f64; 5] {
    [
        sc.counter("pgsidecar_requests_routed_total{route=\"replica\"} "),
        sc.counter("pgsidecar_cache_lookups_total{result=\"hit\"} "),
        sc.counter("pgsidecar_replica_waits_total{result=\"replica\"} "),
        sc.counter("pgsidecar_replica_waits_total{result=\"primary\"} "),
        sc.counter("pgsidecar_replica_wait_seconds_sum "),
    ]
}

/// SHOW STATS rows about WAL flushes for waiting reads, as text.
async fn stats(sc: &Sidecar) -> String {
    let stats = sc.console().await.show("SHOW STATS").await;
    stats
        .rows
        .iter()
        .filter(|r| Answer::value(r, "stat").starts_with("wal_flush"))
        .map(|r| format!("{}={}", Answer::value(r, "stat"), Answer::value(r, "value")))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn price(c: &tokio_postgres::Client, read: &tokio_postgres::Statement, sku: i32) -> i32 {
    c.query_one(read, &[&sku]).await.unwrap().get(0)
}

#[derive(Default)]
struct Outcome {
    /// Per reader (same session, other session, other sidecar): stale reads, descriptions.
    stale: [Vec<String>; 3],
    reads: usize,
    on_replica: f64,
    hits: f64,
    waited_replica: f64,
    waited_primary: f64,
    waited_seconds: f64,
    /// Latency of every read, in microseconds.
    latencies: Vec<u128>,
}

const READERS: [&str; 3] = ["same session", "another session", "another sidecar"];

/// 300 writes through sidecar A, each read back by all three readers (who goes first rotates,
/// so each is first right after the acknowledgement for a third of the writes). A quarter of the
/// writes are explicit transactions, a quarter of those with `SET LOCAL synchronous_commit =
/// off` (asynchronous even where the server's setting is not), a quarter one simple-protocol
/// string with BEGIN and COMMIT.
async fn run(l: &Lab, db: &str, cached: bool, base: i32) -> Outcome {
    let a = sidecar(l, cached);
    let b = sidecar(l, cached);
    let writer = support::app_client(&a, db).await;
    let same_sidecar = support::app_client(&a, db).await;
    let other_sidecar = support::app_client(&b, db).await;
    for c in [&writer, &same_sidecar, &other_sidecar] {
        wait_until_reads_reach_replicas(c).await;
    }
    let write = writer
        .prepare("UPDATE prices SET amount = $1 WHERE sku_id = $2")
        .await
        .unwrap();
    let sql = "SELECT amount FROM prices WHERE sku_id = $1";
    let reads = [
        writer.prepare(sql).await.unwrap(),
        same_sidecar.prepare(sql).await.unwrap(),
        other_sidecar.prepare(sql).await.unwrap(),
    ];
    let readers = [&writer, &same_sidecar, &other_sidecar];
    let before = [where_reads_went(&a), where_reads_went(&b)];
    let mut out = Outcome::default();
    for i in 0..WRITES {
        let sku = (i % SKUS) as i32 + 1;
        let v = base + i as i32;
        match i % 8 {
            1 => {
                writer.batch_execute("BEGIN").await.unwrap();
                writer.execute(&write, &[&v, &sku]).await.unwrap();
                writer.batch_execute("COMMIT").await.unwrap();
            }
            3 => {
                writer
                    .batch_execute("BEGIN; SET LOCAL synchronous_commit = off")
                    .await
                    .unwrap();
                writer.execute(&write, &[&v, &sku]).await.unwrap();
                writer.batch_execute("COMMIT").await.unwrap();
            }
            5 => {
                writer
                    .batch_execute(&format!(
                        "BEGIN; UPDATE prices SET amount = {v} WHERE sku_id = {sku}; COMMIT"
                    ))
                    .await
                    .unwrap();
            }
            _ => {
                writer.execute(&write, &[&v, &sku]).await.unwrap();
            }
        }
        // Acknowledged: from now on, every reader must see at least `v`.
        for k in 0..3 {
            let r = (i + k) % 3;
            let started = Instant::now();
            let got = price(readers[r], &reads[r], sku).await;
            out.latencies.push(started.elapsed().as_micros());
            out.reads += 1;
            if got < v {
                out.stale[r].push(format!("write {i}: sku {sku} read {got} after {v}"));
            }
        }
    }
    let after = [where_reads_went(&a), where_reads_went(&b)];
    for s in 0..2 {
        let d: Vec<f64> = (0..5).map(|k| after[s][k] - before[s][k]).collect();
        out.on_replica += d[0];
        out.hits += d[1];
        out.waited_replica += d[2];
        out.waited_primary += d[3];
        out.waited_seconds += d[4];
    }
    assert!(!a.log().contains("panicked") && !b.log().contains("panicked"));
    for sc in [&a, &b] {
        println!("{}", stats(sc).await);
    }
    out
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

async fn read_after_write_is_never_stale(sync: SyncCommit) {
    let l = Lab::start(LabOptions {
        synchronous_commit: sync,
        ..LabOptions::default()
    });
    let db = l.fresh_db("raw");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    let mut failures = Vec::new();
    for (cached, base) in [(false, 1_000), (true, 100_000)] {
        let mode = if cached {
            "with the cache"
        } else {
            "routing only"
        };
        let mut out = run(&l, &db, cached, base).await;
        out.latencies.sort_unstable();
        let served = out.reads as f64 - out.hits;
        let share = out.on_replica / served.max(1.0);
        println!(
            "synchronous_commit={} {mode}: {WRITES} writes, {} reads, stale: same session {}, \
             another session {}, another sidecar {}; cache hits {}; reads on replicas {}/{} \
             ({:.1} %); reads that waited for replay: {} then on a replica, {} then on the \
             primary, {:.1} ms on average; read latency µs p50 {} p90 {} p99 {} max {}",
            sync.as_str(),
            out.reads,
            out.stale[0].len(),
            out.stale[1].len(),
            out.stale[2].len(),
            out.hits,
            out.on_replica,
            served,
            100.0 * share,
            out.waited_replica,
            out.waited_primary,
            1000.0 * out.waited_seconds / (out.waited_replica + out.waited_primary).max(1.0),
            percentile(&out.latencies, 0.5),
            percentile(&out.latencies, 0.9),
            percentile(&out.latencies, 0.99),
            percentile(&out.latencies, 1.0),
        );
        for (r, stale) in out.stale.iter().enumerate() {
            if !stale.is_empty() {
                failures.push(format!(
                    "{mode}, {}: {} stale reads, e.g. {:?}",
                    READERS[r],
                    stale.len(),
                    &stale[..stale.len().min(3)]
                ));
            }
        }
        if share < 0.8 {
            failures.push(format!(
                "{mode}: only {:.1} % of the reads that reached a server ran on a replica",
                100.0 * share
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "synchronous_commit={}: {failures:#?}",
        sync.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_acknowledged_writes_are_never_stale_and_mostly_on_replicas_with_synchronous_commit_off(
) {
    read_after_write_is_never_stale(SyncCommit::Off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_acknowledged_writes_are_never_stale_and_mostly_on_replicas_with_synchronous_commit_on(
) {
    read_after_write_is_never_stale(SyncCommit::On).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_acknowledged_writes_are_never_stale_and_mostly_on_replicas_with_synchronous_commit_remote_apply(
) {
    read_after_write_is_never_stale(SyncCommit::RemoteApply).await;
}
