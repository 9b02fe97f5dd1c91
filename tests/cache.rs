//! The result cache in the data path, against a real primary, replicas and Redis: hits are
//! byte-identical to misses, writes through any sidecar invalidate before they are
//! acknowledged, writes that bypass the sidecars invalidate through NOTIFY, Redis failures
//! cause neither errors nor stale reads, and one role's results never reach another.

mod support;

use std::time::{Duration, Instant};

use support::{data_rows, lab, Lab, LabOptions, Node, Raw, Sidecar, LEGACY_PASSWORD, LEGACY_USER};

const SCHEMA: &str = "CREATE TABLE prices(sku_id int primary key, amount numeric(12,2), note text);
    INSERT INTO prices SELECT g, g * 1.5, 'Grüße ' || g FROM generate_series(1, 100) g;
    GRANT ALL ON prices TO app;";

fn cached_sidecar(l: &Lab, extra: &str, routing_extra: &str) -> Sidecar {
    let port = support::free_port();
    Sidecar::start(&format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n\
         {}\
         [cache]\nenabled = true\nredis = \"{}\"\n{extra}\n\
         [routing]\nhealth_interval = \"100ms\"\n{routing_extra}\
         [[routing.rules]]\nname = \"catalog prices\"\ntables = [\"prices\"]\ncache_ttl = \"90s\"\n",
        support::upstream_section(l),
        l.redis_url()
    ))
}

/// The NOTIFY listener starts by invalidating everything (it cannot know what it missed), so
/// fills that race its start are rightly rejected: tests that count on a hit wait for it.
fn wait_for_listener(sc: &Sidecar) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sc.log().contains("listening for invalidations") {
        assert!(
            Instant::now() < deadline,
            "invalidation listener never started\n{}",
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

use support::app_client as connect;

async fn amount(c: &tokio_postgres::Client, sku: i32) -> String {
    c.query_one("SELECT amount::text FROM prices WHERE sku_id = $1", &[&sku])
        .await
        .unwrap()
        .get(0)
}

#[test]
fn a_hit_is_byte_identical_to_the_miss_in_simple_and_extended_protocol() {
    let l = lab();
    let db = l.fresh_db("cache_bytes");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    let sc = cached_sidecar(l, "", "");
    wait_for_listener(&sc);
    let mut r = Raw::login(&sc, &db);
    let sql = "SELECT sku_id, amount, note FROM prices WHERE sku_id = 7";
    let miss = r.simple(sql);
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
        let miss = r.extended(sql, &["8"], format);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_sidecar_are_never_followed_by_a_stale_cached_read() {
    let l = lab();
    let db = l.fresh_db("cache_ryw");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    let a = cached_sidecar(l, "", "");
    let b = cached_sidecar(l, "", "");
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
        for (who, c) in [
            ("writer", &writer),
            ("same sidecar", &same_sidecar),
            ("other sidecar", &other_sidecar),
        ] {
            let got = amount(c, 1).await;
            if got != price {
                stale.push(format!("{who} read {got} after {price} was acknowledged"));
            }
        }
    }
    assert!(stale.is_empty(), "stale reads: {stale:?}");
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
    let sc = cached_sidecar(l, "", &format!("monitor_database = \"{db}\"\n"));
    let c = connect(&sc, &db).await;
    wait_for_listener(&sc);
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
    });
    let db = l.fresh_db("cache_redis");
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    l.wait_replicas_caught_up();
    let sc = cached_sidecar(
        &l,
        "redis_timeout = \"50ms\"\nbreaker_cooldown = \"500ms\"\n",
        "",
    );
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
    assert!(sc.is_running() && !sc.log().contains("panicked"));
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
    let sc = cached_sidecar(l, "", "");
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
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
}
