//! The result cache in the data path, against a real primary, replicas and Redis: hits are
//! byte-identical to misses, writes through any sidecar invalidate before they are
//! acknowledged, writes that bypass the sidecars invalidate through NOTIFY, Redis failures
//! cause neither errors nor stale reads, and one role's results never reach another.

use crate::support;

use crate::support::wait_until_reads_reach_replicas;

use std::time::{Duration, Instant};

use crate::support::{
    assert_no_panic, code, data_rows, lab, Lab, LabOptions, Node, Raw, Sidecar, SidecarConfig,
    LEGACY_PASSWORD, LEGACY_USER,
};

const SCHEMA: &str = "CREATE TABLE prices(sku_id int primary key, amount numeric(12,2), note text);
    INSERT INTO prices SELECT g, g * 1.5, 'Grüße ' || g FROM generate_series(1, 100) g;
    GRANT ALL ON prices TO app;";

/// A sidecar in front of `l` caching `prices` on `l`'s Redis.
fn cached(l: &Lab) -> SidecarConfig {
    cached_on(l, &l.redis_url())
}

/// A sidecar in front of `l` caching `prices` on the Redis (or Redis Cluster seed URLs) `redis`.
fn cached_on(l: &Lab, redis: &str) -> SidecarConfig {
    SidecarConfig::routed(l)
        .cache(redis)
        .cache_rule("catalog prices", &["prices"], "90s")
}

use crate::support::app_client as connect;

async fn amount(c: &tokio_postgres::Client, sku: i32) -> String {
    c.query_one("SELECT amount::text FROM prices WHERE sku_id = $1", &[&sku])
        .await
        .unwrap()
        .get(0)
}

/// Reads with `read` until the sidecar has stored an answer it missed, and returns that
/// answer. A fill can rightly be turned away: the replica that answered may not be known yet
/// to have replayed a position the cache must demand, and the other tests of this area keep
/// writing to the same lab. The row does not change meanwhile, so every answer is the same.
fn read_until_filled(
    sc: &Sidecar,
    rt: &tokio::runtime::Runtime,
    mut read: impl FnMut() -> Vec<u8>,
) -> Vec<u8> {
    let fills = || -> u64 { rt.block_on(cache_stat(sc, "fills")).parse().unwrap() };
    let before = fills();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = read();
        // The fill lands just after the answer went out: give it a moment before reading again.
        let settle = Instant::now() + Duration::from_secs(1);
        while Instant::now() < settle {
            if fills() > before {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            Instant::now() < deadline,
            "no answer was ever stored\n{}",
            sc.log()
        );
    }
}

#[test]
fn a_hit_is_byte_identical_to_the_miss_in_simple_and_extended_protocol() {
    let l = lab();
    let db = l.fresh_db("cache_bytes");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    let sc = cached(l).start();
    sc.wait_for_invalidation_listener();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut r = Raw::login(&sc, &db);
    let sql = "SELECT sku_id, amount, note FROM prices WHERE sku_id = 7";
    let miss = read_until_filled(&sc, &rt, || r.simple(sql));
    // Change the row behind the cache's back (no trigger installed): only a hit still says 10.50.
    l.psql(
        Node::Primary,
        &db,
        "UPDATE prices SET amount = 999 WHERE sku_id = 7",
    )
    .unwrap();
    l.wait_replicas_caught_up();
    let hit = r.simple(sql);
    assert_eq!(hit, miss, "simple-protocol hit differs from the miss");
    assert_eq!(
        data_rows(&hit)[0][1].as_deref(),
        Some("10.50"),
        "second read was not served from the cache"
    );
    for format in [0i16, 1] {
        let sql = "SELECT sku_id, amount, note FROM prices WHERE sku_id = $1";
        let miss = read_until_filled(&sc, &rt, || r.extended(sql, &["8"], format));
        l.psql(
            Node::Primary,
            &db,
            "UPDATE prices SET note = 'changed' WHERE sku_id = 8",
        )
        .unwrap();
        l.wait_replicas_caught_up();
        let hit = r.extended(sql, &["8"], format);
        assert_eq!(
            hit, miss,
            "extended-protocol hit differs from the miss (result format {format})"
        );
        l.psql(
            Node::Primary,
            &db,
            "UPDATE prices SET note = 'Grüße 8' WHERE sku_id = 8",
        )
        .unwrap();
    }
    // Different parameters are different entries.
    let other = r.extended(
        "SELECT sku_id, amount, note FROM prices WHERE sku_id = $1",
        &["9"],
        0,
    );
    assert_eq!(data_rows(&other)[0][0].as_deref(), Some("9"));
}

/// Read-after-write on a hot cached row, through the writer's sidecar (same session and
/// another session) and through another sidecar sharing Redis: no read after the
/// acknowledgement is stale. The other sidecar learns of the write by pub/sub; the writer's
/// client hears of the commit only once every subscribed sidecar has applied it
/// (`Inner::await_acks`). Before that wait existed this test failed about once in twenty runs
/// on a loaded machine ("other sidecar read 38.00 after 39.00 was acknowledged").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_sidecar_are_never_followed_by_a_stale_cached_read() {
    let l = lab();
    let db = l.fresh_db("cache_ryw");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    let a = cached(l).start();
    let b = cached(l).start();
    let writer = connect(&a, &db).await;
    let same_sidecar = connect(&a, &db).await;
    let other_sidecar = connect(&b, &db).await;
    let mut stale = Vec::new();
    for n in 1..=40 {
        let price = format!("{n}.00");
        writer
            .execute(
                "UPDATE prices SET amount = $1::text::numeric WHERE sku_id = 1",
                &[&price],
            )
            .await
            .unwrap();
        // The other sidecar first: right after the acknowledgement is when it could be behind.
        for (who, c) in [
            ("other sidecar", &other_sidecar),
            ("writer", &writer),
            ("same sidecar", &same_sidecar),
        ] {
            let got = amount(c, 1).await;
            if got != price {
                stale.push(format!("{who} read {got} after {price} was acknowledged"));
            }
        }
    }
    assert!(stale.is_empty(), "stale reads: {stale:?}");
    // The acknowledgements arrive: the writes did not merely wait out the timeout.
    let timeouts: u64 = cache_stat(&a, "ack_timeouts").await.parse().unwrap();
    assert!(
        timeouts < 20,
        "{timeouts} of 40 writes fenced a live sidecar\n{}",
        a.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_directly_on_the_primary_invalidates_through_notify() {
    let l = lab();
    let db = l.fresh_db("cache_notify");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    let triggers =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/invalidation.sql"))
            .unwrap();
    l.psql(
        Node::Primary,
        &db,
        &format!("{triggers}\nSELECT pgsidecar_watch('prices');"),
    )
    .unwrap();
    l.wait_replicas_caught_up();
    // NOTIFY does not cross databases: the listener must watch the application's database.
    let sc = cached(l)
        .set("routing.monitor_database", db.as_str())
        .start();
    let c = connect(&sc, &db).await;
    sc.wait_for_invalidation_listener();
    assert_eq!(amount(&c, 2).await, "3.00");
    assert_eq!(amount(&c, 2).await, "3.00");
    l.psql(
        Node::Primary,
        &db,
        "UPDATE prices SET amount = 42 WHERE sku_id = 2",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while amount(&c, 2).await != "42.00" {
        assert!(
            Instant::now() < deadline,
            "a write that bypassed the sidecar was never invalidated\n{}",
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_flushed_and_restarted_under_load_causes_no_error_and_no_stale_read() {
    let l = Lab::start(LabOptions {
        replicas: 1,
        redis: true,
        ..LabOptions::default()
    });
    let db = l.fresh_db("cache_redis");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    let sc = cached(&l)
        .set("cache.redis_timeout", "50ms")
        .set("cache.breaker_cooldown", "500ms")
        .start();
    let writer = connect(&sc, &db).await;
    let reader = connect(&sc, &db).await;
    let mut errors = Vec::new();
    let mut stale = 0;
    for n in 1..=60 {
        match n {
            15 => {
                l.redis_cmd(&["FLUSHALL"]).unwrap();
            }
            25 => l.stop_redis(),
            45 => l.start_redis(),
            _ => {}
        }
        let price = format!("{n}.00");
        if let Err(e) = writer
            .execute(
                "UPDATE prices SET amount = $1::text::numeric WHERE sku_id = 3",
                &[&price],
            )
            .await
        {
            errors.push(format!("write {n}: {e}"));
        }
        for _ in 0..3 {
            match reader
                .query_one("SELECT amount::text FROM prices WHERE sku_id = 3", &[])
                .await
            {
                Ok(row) => stale += (row.get::<_, String>(0) != price) as usize,
                Err(e) => errors.push(format!("read {n}: {e}")),
            }
        }
    }
    assert!(
        errors.is_empty(),
        "client errors while Redis failed: {errors:?}"
    );
    assert_eq!(stale, 0, "stale reads while Redis failed");
    assert_no_panic(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_cached_for_one_role_is_never_served_to_another() {
    let l = lab();
    let db = l.fresh_db("cache_roles");
    l.psql(
        Node::Primary,
        &db,
        &format!(
            "{SCHEMA}\nREVOKE ALL ON prices FROM PUBLIC; REVOKE ALL ON prices FROM {LEGACY_USER};"
        ),
    )
    .unwrap();
    l.wait_replicas_caught_up();
    let sc = cached(l).start();
    let app = connect(&sc, &db).await;
    assert_eq!(amount(&app, 4).await, "6.00");
    assert_eq!(amount(&app, 4).await, "6.00");
    let (legacy, conn) = tokio_postgres::connect(
        &sc.url(LEGACY_USER, LEGACY_PASSWORD, &db),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let err = legacy
        .query_one(
            "SELECT amount::text FROM prices WHERE sku_id = $1",
            &[&4i32],
        )
        .await
        .expect_err("a role without SELECT on prices must not get the cached row");
    assert_eq!(code(&err), "42501", "{err}");
}

/// One counter of the admin console's SHOW CACHE.
async fn cache_stat(sc: &Sidecar, name: &str) -> String {
    support::console_value(sc, "SHOW CACHE", name)
        .await
        .unwrap_or_else(|| panic!("{name} in SHOW CACHE"))
}

async fn wait_stat(sc: &Sidecar, name: &str, want: impl Fn(&str) -> bool) -> String {
    let what = format!("SHOW CACHE {name} as expected\n{}", sc.log());
    support::eventually(&what, Duration::from_secs(15), || async {
        let v = cache_stat(sc, name).await;
        if want(&v) {
            Ok(v)
        } else {
            Err(v)
        }
    })
    .await
}

/// A write through one sidecar clears the other's L1 copy (which only a pub/sub message can).
async fn write_reaches_other_l1(
    writer: &tokio_postgres::Client,
    reader_sidecar: &Sidecar,
    reader: &tokio_postgres::Client,
    sku: i32,
    new_amount: &str,
) {
    let before: u64 = cache_stat(reader_sidecar, "invalidation_messages")
        .await
        .parse()
        .unwrap();
    writer
        .execute(
            "UPDATE prices SET amount = $1::text::numeric WHERE sku_id = $2",
            &[&new_amount, &sku],
        )
        .await
        .unwrap();
    wait_stat(reader_sidecar, "invalidation_messages", |v| {
        v.parse::<u64>().is_ok_and(|n| n > before)
    })
    .await;
    assert_eq!(amount(reader, sku).await, new_amount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_shares_hits_and_invalidations_between_two_sidecars() {
    let l = lab();
    let cluster = support::RedisCluster::start();
    let db = l.fresh_db("cache_cluster");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    // A's first seed is a dead port: commands and the subscriber must use the other seeds.
    let dead = format!("redis://127.0.0.1:{},", support::free_port());
    let a = cached_on(l, &(dead + &cluster.urls()))
        .set("cache.redis_timeout", "500ms")
        .start();
    let b = cached_on(l, &cluster.urls())
        .set("cache.redis_timeout", "500ms")
        .start();
    for sc in [&a, &b] {
        sc.wait_for_invalidation_listener();
        wait_stat(sc, "pubsub_connected", |v| v == "true").await;
    }
    let ca = connect(&a, &db).await;
    let cb = connect(&b, &db).await;

    // A fills; the row then changes behind both caches' backs (no trigger installed), so only
    // an entry from Redis can still say 10.50 to B, which never read it before.
    assert_eq!(amount(&ca, 7).await, "10.50");
    wait_stat(&a, "l2_writes", |v| v != "0").await;
    l.psql(
        Node::Primary,
        &db,
        "UPDATE prices SET amount = 777 WHERE sku_id = 7",
    )
    .unwrap();
    l.wait_replicas_caught_up();
    assert_eq!(
        amount(&cb, 7).await,
        "10.50",
        "B did not hit A's fill in the cluster"
    );
    assert_eq!(cache_stat(&b, "l2_hits").await, "1");
    // The entry and the tokens really are spread over the cluster's masters.
    let keys: usize = cluster
        .nodes
        .iter()
        .map(|n| n.cmd(&["DBSIZE"]).unwrap().parse::<usize>().unwrap())
        .filter(|&k| k > 0)
        .count();
    eprintln!("cluster masters holding keys: {keys}");

    // B's copy is now in its L1, which only a pub/sub message can clear: a write through A.
    assert_eq!(amount(&cb, 7).await, "10.50");
    write_reaches_other_l1(&ca, &b, &cb, 7, "12.25").await;
    assert_eq!(amount(&ca, 7).await, "12.25");
    assert_eq!(cache_stat(&b, "redis_errors").await, "0", "{}", b.log());
    assert_eq!(cache_stat(&a, "redis_errors").await, "0", "{}", a.log());

    // And the other way round: a write through B reaches A's L1 (A listens on a live seed).
    assert_eq!(amount(&ca, 8).await, "12.00");
    assert_eq!(amount(&ca, 8).await, "12.00");
    write_reaches_other_l1(&cb, &a, &ca, 8, "8.75").await;
}

/// The cache's counters reach Prometheus: hits, misses, fills and invalidations move with the
/// traffic that causes them, and the L1 gauges show what is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_metrics_move_with_hits_misses_fills_and_invalidations() {
    let l = lab();
    let db = l.fresh_db("cache_metrics");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    let sc = cached(l).http().start();
    sc.wait_for_invalidation_listener();
    let event = |e: &str| sc.metric(&format!("pgsidecar_cache_events_total{{event=\"{e}\"}} "));
    let before = (event("l1_hit"), event("miss"), event("invalidation"));
    let c = connect(&sc, &db).await;
    let first = amount(&c, 3).await;
    // A fill right after start can rightly be turned away (see `read_until_filled`): read
    // again until one is stored.
    support::eventually(
        "a read fills the cache",
        Duration::from_secs(10),
        || async {
            let fills = event("fill");
            if fills >= 1.0 {
                Ok(())
            } else {
                assert_eq!(amount(&c, 3).await, first);
                Err(format!("{fills} fills"))
            }
        },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(amount(&c, 3).await, first);
    }
    assert!(event("miss") >= before.1 + 1.0);
    assert!(
        event("l1_hit") >= before.0 + 5.0,
        "five repeated reads are L1 hits"
    );
    assert!(sc.metric("pgsidecar_cache_l1_entries ") >= 1.0);
    assert!(sc.metric("pgsidecar_cache_l1_bytes ") > 0.0);
    c.execute(
        "UPDATE prices SET amount = amount + 1 WHERE sku_id = 3",
        &[],
    )
    .await
    .unwrap();
    assert!(
        event("invalidation") >= before.2 + 1.0,
        "the write invalidated prices"
    );
    assert_ne!(
        amount(&c, 3).await,
        first,
        "and the next read is not the cached one"
    );
}

/// Lag limits wide open (only the commit positions keep paused replicas away), short waits.
fn lagging_ok(cfg: SidecarConfig) -> SidecarConfig {
    cfg.no_lag_limits().set("routing.max_wait", "20ms")
}

/// Sidecars A and B sharing `l`'s Redis (B's invalidation listener on `b_monitor_database`,
/// when given), both listening for invalidations, and a client of each whose reads reach
/// replicas.
async fn two_sidecars_reading_replicas(
    l: &Lab,
    db: &str,
    b_monitor_database: Option<&str>,
) -> (
    Sidecar,
    Sidecar,
    tokio_postgres::Client,
    tokio_postgres::Client,
) {
    let a = lagging_ok(cached(l)).start();
    let mut b = lagging_ok(cached(l));
    if let Some(monitor) = b_monitor_database {
        b = b.set("routing.monitor_database", monitor);
    }
    let b = b.start();
    for sc in [&a, &b] {
        sc.wait_for_invalidation_listener();
        wait_stat(sc, "pubsub_connected", |v| v == "true").await;
    }
    let ca = connect(&a, db).await;
    let cb = connect(&b, db).await;
    wait_until_reads_reach_replicas(&ca).await;
    wait_until_reads_reach_replicas(&cb).await;
    (a, b, ca, cb)
}

/// Invalidation messages the sidecar has applied so far.
async fn invalidation_messages(sc: &Sidecar) -> u64 {
    cache_stat(sc, "invalidation_messages")
        .await
        .parse()
        .unwrap()
}

/// Waits until the sidecar has applied an invalidation message after the first `before`.
async fn wait_invalidation_after(sc: &Sidecar, before: u64) {
    wait_stat(sc, "invalidation_messages", |v| {
        v.parse::<u64>().is_ok_and(|n| n > before)
    })
    .await;
}

/// Reads SKU `sku`'s price 20 times through each of sidecars A and B; every answer that is not
/// `want`, described.
async fn reads_other_than(
    ca: &tokio_postgres::Client,
    cb: &tokio_postgres::Client,
    sku: i32,
    want: &str,
) -> Vec<String> {
    let mut old = Vec::new();
    for i in 0..20 {
        for (who, c) in [("A", ca), ("B", cb)] {
            let got = amount(c, sku).await;
            if got != want {
                old.push(format!("read {i} through {who}: {got}"));
            }
        }
    }
    old
}

/// Issue #5: sidecar A learns of a write through sidecar B from B's invalidation message, not
/// from its own write log. With replay paused on every replica, A's reads must still return
/// the new value (from the primary, since no replica has it), and must never fill the cache,
/// shared through Redis, with the replicas' old row under the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_another_sidecar_is_never_read_old_from_paused_replicas() {
    let l = Lab::start(LabOptions {
        replicas: 2,
        redis: true,
        ..LabOptions::default()
    });
    let db = l.fresh_db("cache_lag");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    let (a, _b, ca, cb) = two_sidecars_reading_replicas(&l, &db, None).await;
    assert_eq!(amount(&ca, 8).await, "12.00");
    assert_eq!(amount(&ca, 8).await, "12.00");

    l.pause_replay(0);
    l.pause_replay(1);
    // B's write reaches A only as B's invalidation message (carrying B's commit position).
    let before = invalidation_messages(&a).await;
    cb.execute("UPDATE prices SET amount = 8.75 WHERE sku_id = 8", &[])
        .await
        .unwrap();
    wait_invalidation_after(&a, before).await;
    let old = reads_other_than(&ca, &cb, 8, "8.75").await;
    l.resume_replay(0);
    l.resume_replay(1);
    assert!(
        old.is_empty(),
        "a paused replica's old row was served after the write: {old:?}\nA:\n{}",
        a.log()
    );
    l.wait_replicas_caught_up();
    assert_eq!(amount(&ca, 8).await, "8.75");
}

async fn qty(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT qty FROM stock WHERE sku_id = 8", &[])
        .await
        .unwrap()
        .get(0)
}

/// A sidecar cut off from Redis without noticing (a network path that drops packets: its
/// connections stay open, and PUBLISH still counts it as a receiver) must not answer from
/// before a write acknowledged through another sidecar: neither with an L1 hit of the old row
/// nor from a replica that has not replayed the write. The writer fences it once it has been
/// silent for `FENCE_AFTER` and waits out its lease; by then the cut-off sidecar trusts
/// neither its L1 nor the commit positions it knows, and reads from the primary. Before
/// leases, the writer waited a fixed time for acknowledgements and then let its client go:
/// the other sidecar served its cached old price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_cut_off_from_redis_serves_nothing_older_than_an_acknowledged_write() {
    let l = Lab::start(LabOptions {
        replicas: 2,
        redis: true,
        ..LabOptions::default()
    });
    let db = l.fresh_db("cache_cutoff");
    l.psql(
        Node::Primary,
        &db,
        &format!(
            "{SCHEMA}\nCREATE TABLE stock(sku_id int primary key, qty int);\n\
             INSERT INTO stock SELECT g, 100 FROM generate_series(1, 10) g;\n\
             GRANT ALL ON stock TO app;"
        ),
    )
    .unwrap();
    l.wait_replicas_caught_up();
    let path = support::Forwarder::start(([127, 0, 0, 1], l.redis_port()).into());
    let a = lagging_ok(cached(&l)).start();
    let b = lagging_ok(cached_on(&l, &format!("redis://127.0.0.1:{}", path.port))).start();
    for sc in [&a, &b] {
        wait_stat(sc, "in_fleet", |v| v == "true").await;
        wait_stat(sc, "fleet_members", |v| v == "2").await;
    }
    let ca = connect(&a, &db).await;
    let cb = connect(&b, &db).await;
    wait_until_reads_reach_replicas(&cb).await;
    // B holds the price in its L1, and reads stock from the replicas.
    support::eventually(
        "B serves the price from its L1",
        Duration::from_secs(15),
        || async {
            assert_eq!(amount(&cb, 8).await, "12.00");
            match cache_stat(&b, "l1_hits").await.parse::<u64>() {
                Ok(n) if n > 0 => Ok(()),
                other => Err(format!("l1_hits {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(qty(&cb).await, 100);

    l.pause_replay(0);
    l.pause_replay(1);
    path.freeze(true);
    for sql in [
        "UPDATE prices SET amount = 8.75 WHERE sku_id = 8",
        "UPDATE stock SET qty = 7 WHERE sku_id = 8",
    ] {
        tokio::time::timeout(Duration::from_secs(30), ca.execute(sql, &[]))
            .await
            .expect("a write waits a bounded time for a silent sidecar")
            .unwrap();
    }
    // Acknowledged: B must not answer from before either write.
    let price = tokio::time::timeout(Duration::from_secs(30), amount(&cb, 8))
        .await
        .expect("B answers while cut off from Redis");
    let stock = tokio::time::timeout(Duration::from_secs(30), qty(&cb))
        .await
        .expect("B answers while cut off from Redis");
    path.freeze(false);
    l.resume_replay(0);
    l.resume_replay(1);
    assert_eq!(
        (price.as_str(), stock),
        ("8.75", 7),
        "B answered from before writes acknowledged through A\nB:\n{}",
        b.log()
    );
    let fenced: u64 = cache_stat(&a, "fenced").await.parse().unwrap();
    assert!(fenced >= 1, "A's write did not fence the silent sidecar");
    // Back on the path, B is told it was fenced, flushes, and joins again.
    wait_stat(&b, "fleet_joins", |v| v.parse::<u64>().unwrap() >= 2).await;
    wait_stat(&b, "in_fleet", |v| v == "true").await;
    assert_eq!(amount(&cb, 8).await, "8.75");
}

/// A write straight on the primary (no sidecar sees it) reaches sidecar A only through sidecar
/// B's NOTIFY listener and B's invalidation message. The message carries the primary's position
/// B asked for after the NOTIFY arrived, so A does not read (or cache) the paused replicas'
/// old row either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_bypassed_every_sidecar_is_never_read_old_from_paused_replicas() {
    let l = Lab::start(LabOptions {
        replicas: 2,
        redis: true,
        ..LabOptions::default()
    });
    let db = l.fresh_db("cache_lag_notify");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    let triggers =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/invalidation.sql"))
            .unwrap();
    l.psql(
        Node::Primary,
        &db,
        &format!("{triggers}\nSELECT pgsidecar_watch('prices');"),
    )
    .unwrap();
    l.wait_replicas_caught_up();
    // Only B listens on the application's database (NOTIFY does not cross databases).
    let (a, b, ca, cb) = two_sidecars_reading_replicas(&l, &db, Some(&db)).await;
    assert_eq!(amount(&ca, 2).await, "3.00");
    assert_eq!(amount(&ca, 2).await, "3.00");

    l.pause_replay(0);
    l.pause_replay(1);
    let before = invalidation_messages(&a).await;
    l.psql(
        Node::Primary,
        &db,
        "UPDATE prices SET amount = 42 WHERE sku_id = 2",
    )
    .unwrap();
    wait_invalidation_after(&a, before).await;
    let old = reads_other_than(&ca, &cb, 2, "42.00").await;
    l.resume_replay(0);
    l.resume_replay(1);
    assert!(
        old.is_empty(),
        "a paused replica's old row was served after the NOTIFY: {old:?}\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
}
