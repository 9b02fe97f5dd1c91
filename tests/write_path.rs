//! What a committed write costs beyond the client's own requests (issue #18), in the full
//! topology (primary, 2 replicas, Redis, a cache rule, `[[locks]]`): the round trips the proxy
//! adds to Postgres and Redis, counted by the proxy itself (`SHOW STATS` `round_trips_*`), and
//! that the advisory lock sent in the same write as the statement it guards never lets that
//! statement run unlocked.

mod support;

use std::time::Duration;

use support::{app_client, console_value, eventually, lab, Node, Sidecar};

const SCHEMA: &str = "CREATE TABLE inventory(sku_id bigint, warehouse_id int, on_hand int NOT NULL, PRIMARY KEY (sku_id, warehouse_id));
    CREATE TABLE orders(id bigserial primary key, sku_id bigint, warehouse_id int, qty int);
    CREATE SEQUENCE probe;
    CREATE TABLE prices(sku_id bigint primary key, amount numeric(12,2));
    INSERT INTO inventory SELECT s, w, 100 FROM generate_series(1, 10) s, generate_series(1, 3) w;
    INSERT INTO prices SELECT s, s * 1.5 FROM generate_series(1, 10) s;
    GRANT ALL ON ALL TABLES IN SCHEMA public TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app;";

/// A sidecar in the full topology, alone in its fleet (its own key prefix and channel in the
/// lab's shared Redis): caching `prices`, locking `inventory` writes by (sku, warehouse).
fn full_sidecar(fleet: &str, extra_cache: &str, extra_lock: &str) -> Sidecar {
    let l = lab();
    let port = support::free_port();
    Sidecar::start(&format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n{}\
         [cache]\nenabled = true\nredis = \"{}\"\nkey_prefix = \"{fleet}\"\ninvalidation_channel = \"{fleet}:inv\"\n{extra_cache}\n\
         [routing]\nhealth_interval = \"100ms\"\n\
         [[routing.rules]]\nname = \"prices\"\ntables = [\"prices\"]\ncache_ttl = \"90s\"\n\
         [[locks]]\ntable = \"inventory\"\nkey = [\"sku_id\", \"warehouse_id\"]\n{extra_lock}",
        support::upstream_section(l),
        l.redis_url(),
    ))
}

fn inventory_db(prefix: &str) -> String {
    let db = lab().fresh_db(prefix);
    lab().psql(Node::Primary, &db, SCHEMA).unwrap();
    lab().wait_replicas_caught_up();
    db
}

/// The `round_trips_*` rows of `SHOW STATS`, by name.
async fn round_trips(sc: &Sidecar) -> Vec<(String, u64)> {
    let admin =
        support::client(&sc.url(support::SUPERUSER, support::SUPERUSER_PASSWORD, "pgsidecar"))
            .await
            .expect("admin console login");
    tokio::time::timeout(Duration::from_secs(30), admin.simple_query("SHOW STATS"))
        .await
        .expect("SHOW STATS within 30 s")
        .expect("SHOW STATS")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                let name = r.get(0)?.strip_prefix("round_trips_")?.to_string();
                Some((name, r.get(1)?.parse().ok()?))
            }
            _ => None,
        })
        .collect()
}

/// What changed between two `round_trips` readings, leaving out the lease renewals the
/// invalidation subscriber makes on its own clock, off every client's path.
fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .filter(|(n, _)| n != "redis_lease")
        .filter_map(|(n, a)| {
            let b = before.iter().find(|(m, _)| m == n).map_or(0, |(_, b)| *b);
            (a > &b).then(|| (n.clone(), a - b))
        })
        .collect()
}

/// The sidecar has joined its fleet (its subscriber is up and holds a lease).
async fn wait_fleet_joined(sc: &Sidecar) {
    eventually(
        "the sidecar joins its fleet",
        Duration::from_secs(20),
        || async {
            match console_value(sc, "SHOW CACHE", "in_fleet").await.as_deref() {
                Some("true") | Some("t") => Ok(()),
                other => Err(format!("in_fleet = {other:?}")),
            }
        },
    )
    .await
}

/// `SHOW CACHE` `invalidation_messages`: messages the subscriber has applied.
async fn invalidation_messages(sc: &Sidecar) -> u64 {
    console_value(sc, "SHOW CACHE", "invalidation_messages")
        .await
        .and_then(|v| v.parse().ok())
        .expect("invalidation_messages in SHOW CACHE")
}

/// The checkout of the benchmark: BEGIN; UPDATE inventory … on_hand > 0; INSERT INTO
/// orders; COMMIT, each statement its own request (extended protocol, as pgbench -M extended).
async fn checkout(c: &tokio_postgres::Client, sku: i64, warehouse: i32) {
    c.batch_execute("BEGIN").await.unwrap();
    let n = c
        .execute(
            "UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = $1 AND warehouse_id = $2 AND on_hand > 0",
            &[&sku, &warehouse],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    c.execute(
        "INSERT INTO orders(sku_id, warehouse_id, qty) VALUES ($1, $2, 1)",
        &[&sku, &warehouse],
    )
    .await
    .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
}

/// One checkout with `[[locks]]` and Redis on, alone in its fleet, costs exactly: the lock
/// statement and the commit-position capture, both queued in the same write as the client's
/// own request (no extra Postgres round trip), and two Redis round trips: the announcement of
/// the tables it writes before its COMMIT goes (the cache's step 8: no sidecar stores or
/// serves an older result of them once the commit can be seen) and the token bump after it
/// (with the commit position); each also returns the fleet's other members. Its own
/// subscriber applies the write's messages but does not acknowledge them: nobody waits for
/// those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_costs_no_extra_postgres_round_trip_and_two_redis_round_trips_when_alone() {
    let db = inventory_db("rt_checkout");
    let sc = full_sidecar("rt_checkout", "", "");
    let c = app_client(&sc, &db).await;
    support::wait_until_reads_reach_replicas(&c).await;
    wait_fleet_joined(&sc).await;
    // Warm up: the statements are prepared and the backend's settings synced once.
    checkout(&c, 1, 1).await;
    let before = round_trips(&sc).await;
    let messages = invalidation_messages(&sc).await;
    checkout(&c, 2, 1).await;
    // Its subscriber has applied the write's four messages (two tables, announced and
    // invalidated; and acknowledged them, if it does).
    eventually(
        "the checkout's messages applied",
        Duration::from_secs(20),
        || async {
            let now = invalidation_messages(&sc).await;
            (now >= messages + 4).then_some(()).ok_or(format!("{now}"))
        },
    )
    .await;
    let after = round_trips(&sc).await;
    let got = delta(&before, &after);
    let want: Vec<(String, u64)> = [
        ("postgres_capture_queued", 1),
        ("postgres_lock_queued", 1),
        ("redis_announce", 1),
        ("redis_invalidate", 1),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), *v))
    .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(
        got_sorted,
        want,
        "round trips of one checkout\n{}",
        sc.log()
    );
    support::assert_no_panic(&sc);
}

/// The delta of one request, sorted.
async fn cost_of<F, Fut>(sc: &Sidecar, run: F) -> Vec<(String, u64)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = round_trips(sc).await;
    run().await;
    let mut got = delta(&before, &round_trips(sc).await);
    got.sort();
    got
}

fn named(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

/// An autocommit write to a lock table is wrapped in BEGIN … COMMIT for its lock: the lock,
/// the statement, the COMMIT and the commit-position capture all go in one write (before,
/// the capture waited for the COMMIT's answer: one more Postgres round trip per write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autocommit_locked_write_sends_lock_statement_commit_and_capture_in_one_write() {
    let db = inventory_db("rt_autocommit");
    let sc = full_sidecar("rt_autocommit", "", "");
    let c = app_client(&sc, &db).await;
    support::wait_until_reads_reach_replicas(&c).await;
    wait_fleet_joined(&sc).await;
    let update = "UPDATE inventory SET on_hand = on_hand - 1 WHERE sku_id = $1 AND warehouse_id = $2 AND on_hand > 0";
    assert_eq!(c.execute(update, &[&3i64, &1i32]).await.unwrap(), 1);
    let got = cost_of(&sc, || async {
        assert_eq!(c.execute(update, &[&3i64, &2i32]).await.unwrap(), 1);
    })
    .await;
    assert_eq!(
        got,
        named(&[
            ("postgres_capture_queued", 1),
            ("postgres_lock_queued", 1),
            ("postgres_wrap_commit_queued", 1),
            ("redis_announce", 1),
            ("redis_invalidate", 1),
        ]),
        "{}",
        sc.log()
    );
    // The capture's position was used: a read of the write through the sidecar sees it.
    let on_hand: i32 = c
        .query_one(
            "SELECT on_hand FROM inventory WHERE sku_id = 3 AND warehouse_id = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_hand, 99);
    support::assert_no_panic(&sc);
}

/// The lock statement goes in the same write as the UPDATE it guards, inside the client's
/// transaction: when it fails (lock_timeout, the key held elsewhere) Postgres aborts the
/// transaction and the UPDATE never runs — not even to be rolled back. The UPDATE calls
/// `nextval`, which no rollback undoes, so the sequence tells whether it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lock_statement_in_the_same_write_never_lets_the_guarded_update_run() {
    let db = inventory_db("rt_lockfail");
    let sc = full_sidecar("rt_lockfail", "", "lock_timeout = \"300ms\"\n");
    let c = app_client(&sc, &db).await;
    wait_fleet_joined(&sc).await;
    let holder = support::client(&support::url(
        lab().primary_port(),
        support::APP_USER,
        support::APP_PASSWORD,
        &db,
    ))
    .await
    .unwrap();
    holder
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('inventory|4|1', 0))")
        .await
        .unwrap();
    let update = "UPDATE inventory SET on_hand = on_hand - 1 + 0 * nextval('probe') WHERE sku_id = $1 AND warehouse_id = $2";
    c.batch_execute("BEGIN").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), c.execute(update, &[&4i64, &1i32]))
        .await
        .expect("an answer within 30 s")
        .expect_err("the lock is held elsewhere");
    assert_eq!(support::code(&err), "55P03", "{err}");
    // The transaction is aborted: nothing else runs in it.
    let err = c.execute("SELECT 1", &[]).await.expect_err("aborted");
    assert_eq!(support::code(&err), "25P02", "{err}");
    c.batch_execute("ROLLBACK").await.unwrap();
    let probe = lab()
        .psql(Node::Primary, &db, "SELECT is_called FROM probe")
        .unwrap();
    assert_eq!(probe.trim(), "f", "the guarded UPDATE ran unlocked");
    // Once the key is free the same transaction runs, and the probe shows it did.
    holder.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(c.execute(update, &[&4i64, &1i32]).await.unwrap(), 1);
    c.batch_execute("COMMIT").await.unwrap();
    let probe = lab()
        .psql(Node::Primary, &db, "SELECT is_called FROM probe")
        .unwrap();
    assert_eq!(probe.trim(), "t");
    support::assert_no_panic(&sc);
}
