//! Unit tests of the cache without Redis (L1, tokens, single flight, keys, config).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::wire::tag::front;

fn cfg() -> CacheConfig {
    CacheConfig {
        enabled: true,
        ..CacheConfig::default()
    }
}

fn cache() -> Cache {
    Cache::new(cfg(), "test".into())
}

fn key(n: u128) -> CacheKey {
    CacheKey(n)
}

const TTL: Duration = Duration::from_secs(60);

async fn miss(c: &Cache, k: &CacheKey, tables: &[&str]) -> Fill {
    match c.lookup(k, tables).await {
        Lookup::Miss(f) => f,
        Lookup::Hit(b) => panic!("expected a miss, got a hit of {} bytes", b.len()),
    }
}

async fn hit(c: &Cache, k: &CacheKey, tables: &[&str]) -> Bytes {
    match c.lookup(k, tables).await {
        Lookup::Hit(b) => b,
        Lookup::Miss(_) => panic!("expected a hit"),
    }
}

#[test]
fn cache_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Cache>();
    assert_send::<Fill>();
    assert_send::<Lookup>();
}

#[tokio::test]
async fn hit_after_fill() {
    let c = cache();
    let k = key(1);
    let f = miss(&c, &k, &["public.prices"]).await;
    assert!(f.is_leader());
    let bytes = Bytes::from_static(b"T\x00\x00\x00\x06\x00\x00D...C...Z");
    assert_eq!(c.fill(f, bytes.clone(), TTL).await, FillOutcome::Stored);
    assert_eq!(hit(&c, &k, &["public.prices"]).await, bytes);
    let s = c.stats();
    assert_eq!((s.l1_hits, s.misses, s.fills), (1, 1, 1));
    // A different key misses.
    miss(&c, &key(2), &["public.prices"]).await;
}

#[tokio::test]
async fn token_change_rejects_fill_and_hides_old_entries() {
    let c = cache();
    let k = key(1);
    // Invalidation between lookup and fill: the result may predate the write.
    let f = miss(&c, &k, &["public.a", "public.b"]).await;
    c.invalidate(&["public.b"], 0).await;
    assert_eq!(
        c.fill(f, Bytes::from_static(b"old"), TTL).await,
        FillOutcome::Rejected(Reason::Invalidated)
    );
    miss(&c, &k, &["public.a", "public.b"]).await; // nothing was stored

    let f = miss(&c, &k, &["public.a", "public.b"]).await;
    assert_eq!(
        c.fill(f, Bytes::from_static(b"v1"), TTL).await,
        FillOutcome::Stored
    );
    assert_eq!(&hit(&c, &k, &["public.a", "public.b"]).await[..], b"v1");
    // Unrelated table: still a hit.
    c.invalidate(&["public.c"], 0).await;
    assert_eq!(&hit(&c, &k, &["public.a", "public.b"]).await[..], b"v1");
    // Any table of the entry: gone.
    c.invalidate(&["public.a"], 0).await;
    miss(&c, &k, &["public.a", "public.b"]).await;

    // invalidate_all hides everything.
    let f = miss(&c, &key(3), &[]).await;
    assert_eq!(
        c.fill(f, Bytes::from_static(b"x"), TTL).await,
        FillOutcome::Stored
    );
    hit(&c, &key(3), &[]).await;
    c.invalidate_all(0).await;
    miss(&c, &key(3), &[]).await;
    assert_eq!(c.stats().rejected_invalidated, 1);
}

#[tokio::test]
async fn entry_is_hidden_when_stale_even_if_inserted_after_the_invalidation() {
    // Step 3/4: simulate the interleaving "check passes → invalidation (and its eager
    // removal) → insert" by inserting an entry with retired tokens directly.
    let c = cache();
    let k = key(9);
    let f = miss(&c, &k, &["t"]).await;
    let snap = f.snap.clone();
    c.invalidate(&["t"], 0).await;
    c.inner
        .l1
        .insert(
            k,
            Arc::new(l1::L1Entry {
                bytes: Bytes::from_static(b"stale"),
                tables: snap.into(),
                ttl: TTL,
                filled: std::time::Instant::now(),
            }),
        )
        .await;
    assert!(
        c.inner.l1.get(&k).await.is_some(),
        "the stale entry is physically there"
    );
    drop(f);
    miss(&c, &k, &["t"]).await; // ...but never served
    assert!(
        c.inner.l1.get(&k).await.is_none(),
        "and the failed hit check removed it"
    );
}

#[tokio::test]
async fn requested_tables_must_be_covered_by_the_entry() {
    let c = cache();
    let k = key(4);
    let f = miss(&c, &k, &["a"]).await;
    c.fill(f, Bytes::from_static(b"x"), TTL).await;
    hit(&c, &k, &["a"]).await;
    // Same key but the caller now says it also reads "b": the entry never tracked "b".
    miss(&c, &k, &["a", "b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_runs_one_query() {
    let c = cache();
    let k = key(42);
    let misses = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, misses) = (c.clone(), misses.clone());
        tasks.push(tokio::spawn(async move {
            match c.lookup(&k, &["public.t"]).await {
                Lookup::Hit(b) => b,
                Lookup::Miss(f) => {
                    misses.fetch_add(1, Ordering::SeqCst);
                    // The "query" takes a while; everyone else must wait, not query.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let b = Bytes::from_static(b"result");
                    assert_eq!(c.fill(f, b.clone(), TTL).await, FillOutcome::Stored);
                    b
                }
            }
        }));
    }
    for t in tasks {
        assert_eq!(&t.await.unwrap()[..], b"result");
    }
    assert_eq!(misses.load(Ordering::SeqCst), 1);
    let s = c.stats();
    assert_eq!(s.misses, 1);
    assert_eq!(s.l1_hits, 49);
    assert!(s.flight_waits >= 1);
    assert_eq!(c.inner.flights.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_fill_releases_waiters() {
    // A long flight_wait: if a dropped Fill did not release the waiters, this would hang.
    let c = Cache::new(
        CacheConfig {
            flight_wait: Duration::from_secs(60),
            ..cfg()
        },
        "test".into(),
    );
    let k = key(7);
    let leader = miss(&c, &k, &["t"]).await;
    let queries = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, queries) = (c.clone(), queries.clone());
        tasks.push(tokio::spawn(async move {
            match c.lookup(&k, &["t"]).await {
                Lookup::Hit(b) => b,
                Lookup::Miss(f) => {
                    queries.fetch_add(1, Ordering::SeqCst);
                    let b = Bytes::from_static(b"second try");
                    c.fill(f, b.clone(), TTL).await;
                    b
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        queries.load(Ordering::SeqCst),
        0,
        "waiters wait while the leader runs"
    );
    drop(leader); // the query failed
    let all = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(tasks))
        .await
        .expect("waiters released");
    for r in all {
        assert_eq!(&r.unwrap()[..], b"second try");
    }
    assert_eq!(
        queries.load(Ordering::SeqCst),
        1,
        "one waiter took over, the others hit its fill"
    );
}

#[tokio::test]
async fn flight_wait_is_bounded() {
    let c = Cache::new(
        CacheConfig {
            flight_wait: Duration::from_millis(100),
            ..cfg()
        },
        "test".into(),
    );
    let k = key(8);
    let leader = miss(&c, &k, &["t"]).await;
    let began = Instant::now();
    let own = miss(&c, &k, &["t"]).await;
    assert!(began.elapsed() >= Duration::from_millis(90));
    assert!(!own.is_leader());
    assert_eq!(c.stats().flight_timeouts, 1);
    // Both may fill; the second overwrites with equally fresh data.
    assert_eq!(
        c.fill(own, Bytes::from_static(b"a"), TTL).await,
        FillOutcome::Stored
    );
    assert_eq!(
        c.fill(leader, Bytes::from_static(b"b"), TTL).await,
        FillOutcome::Stored
    );
    assert_eq!(&hit(&c, &k, &["t"]).await[..], b"b");
}

#[tokio::test]
async fn rejections() {
    let c = Cache::new(
        CacheConfig {
            max_entry_bytes: 10,
            ..cfg()
        },
        "test".into(),
    );
    let f = miss(&c, &key(1), &["t"]).await;
    assert_eq!(
        c.fill(f, Bytes::from(vec![0u8; 11]), TTL).await,
        FillOutcome::Rejected(Reason::TooLarge)
    );
    let f = miss(&c, &key(1), &["t"]).await;
    assert_eq!(
        c.reject(f, Reason::Lagging),
        FillOutcome::Rejected(Reason::Lagging)
    );
    let f = miss(&c, &key(1), &["t"]).await;
    assert_eq!(
        c.fill(f, Bytes::from_static(b"ok"), Duration::ZERO).await,
        FillOutcome::Rejected(Reason::NoTtl)
    );
    let s = c.stats();
    assert_eq!((s.rejected_too_large, s.rejected_lagging), (1, 1));

    let off = Cache::new(CacheConfig::default(), "test".into());
    let f = miss(&off, &key(1), &["t"]).await;
    assert_eq!(
        off.fill(f, Bytes::from_static(b"x"), TTL).await,
        FillOutcome::Rejected(Reason::Disabled)
    );
    miss(&off, &key(1), &["t"]).await;

    // A ticket of another cache is refused.
    let f = miss(&c, &key(5), &["t"]).await;
    let other = cache();
    assert_eq!(
        other.fill(f, Bytes::from_static(b"x"), TTL).await,
        FillOutcome::Rejected(Reason::Invalidated)
    );
}

#[tokio::test]
async fn ttl_expiry() {
    let c = cache();
    let k = key(1);
    let f = miss(&c, &k, &["t"]).await;
    c.fill(f, Bytes::from_static(b"short"), Duration::from_millis(200))
        .await;
    let f = miss(&c, &key(2), &["t"]).await;
    c.fill(f, Bytes::from_static(b"long"), TTL).await;
    hit(&c, &k, &["t"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    miss(&c, &k, &["t"]).await;
    hit(&c, &key(2), &["t"]).await;
    // (The `expirations` counter follows moka's timer wheel, about a second behind.)
}

#[tokio::test]
async fn byte_bound_eviction() {
    let max = 64 * 1024;
    let c = Cache::new(
        CacheConfig {
            l1_max_bytes: max,
            max_entry_bytes: 8192,
            ..cfg()
        },
        "test".into(),
    );
    for i in 0..64u128 {
        let f = miss(&c, &key(i), &["t"]).await;
        assert_eq!(
            c.fill(f, Bytes::from(vec![i as u8; 4096]), TTL).await,
            FillOutcome::Stored
        );
        c.run_pending_tasks().await;
    }
    c.run_pending_tasks().await;
    let s = c.stats();
    assert!(
        s.l1_bytes <= max,
        "L1 holds {} bytes, bound {max}",
        s.l1_bytes
    );
    assert!(s.evictions > 0);
    assert!(
        s.l1_entries < 64 && s.l1_entries > 0,
        "{} entries",
        s.l1_entries
    );
}

#[tokio::test]
async fn eager_removal_frees_memory() {
    let c = cache();
    for i in 0..10u128 {
        let f = miss(&c, &key(i), &[if i % 2 == 0 { "even" } else { "odd" }]).await;
        c.fill(f, Bytes::from(vec![0u8; 1000]), TTL).await;
    }
    c.run_pending_tasks().await;
    assert_eq!(c.stats().l1_entries, 10);
    c.invalidate(&["even"], 0).await;
    c.run_pending_tasks().await;
    assert_eq!(c.stats().l1_entries, 5);
    hit(&c, &key(1), &["odd"]).await;
}

/// Linearizability check of fill vs invalidate: a writer bumps a "database version", then
/// invalidates; readers fill with the version they read. A hit must never return a version
/// older than one whose invalidation had completed before the lookup started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stale_hit_under_concurrent_invalidation() {
    let c = cache();
    let db = Arc::new(AtomicU64::new(0));
    let invalidated = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_millis(400);
    let writer = {
        let (c, db, invalidated) = (c.clone(), db.clone(), invalidated.clone());
        tokio::spawn(async move {
            while Instant::now() < stop {
                let v = db.fetch_add(1, Ordering::SeqCst) + 1; // commit
                c.invalidate(&["t"], 0).await;
                invalidated.store(v, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    let mut readers = Vec::new();
    for r in 0..8u128 {
        let (c, db, invalidated) = (c.clone(), db.clone(), invalidated.clone());
        readers.push(tokio::spawn(async move {
            let mut hits = 0u64;
            while Instant::now() < stop {
                let k = key(r % 2);
                let floor = invalidated.load(Ordering::SeqCst);
                match c.lookup(&k, &["t"]).await {
                    Lookup::Hit(b) => {
                        let v = u64::from_le_bytes(b[..8].try_into().unwrap());
                        assert!(v >= floor, "stale hit: version {v} < {floor}");
                        hits += 1;
                    }
                    Lookup::Miss(f) => {
                        let v = db.load(Ordering::SeqCst); // the query reads
                        tokio::task::yield_now().await;
                        c.fill(f, Bytes::copy_from_slice(&v.to_le_bytes()), TTL)
                            .await;
                    }
                }
            }
            hits
        }));
    }
    writer.await.unwrap();
    let mut hits = 0;
    for r in readers {
        hits += r.await.unwrap();
    }
    assert!(hits > 0, "the test exercised hits");
}

#[test]
fn key_framing_is_unambiguous() {
    let base = KeyParts {
        environment: "prod",
        database: "app",
        role: None,
        search_path: "\"$user\", public",
        statement_text: b"SELECT * FROM prices WHERE id = $1",
        param_formats: &[0],
        params: &[Some(b"42")],
        result_formats: &[1],
        settings: &[("TimeZone", "UTC"), ("DateStyle", "ISO, MDY")],
        protocol: front::EXECUTE,
    };
    let k0 = base.key();
    assert_eq!(k0, base.key(), "deterministic");
    assert_eq!(k0.hex().len(), 32);
    let variants: Vec<KeyParts> = vec![
        KeyParts {
            environment: "pro",
            database: "dapp",
            ..base
        },
        KeyParts {
            role: Some(""),
            ..base
        },
        KeyParts {
            role: Some("alice"),
            ..base
        },
        KeyParts {
            search_path: "public",
            ..base
        },
        KeyParts {
            statement_text: b"SELECT * FROM prices WHERE id = $1 ",
            ..base
        },
        KeyParts {
            param_formats: &[1],
            ..base
        },
        KeyParts {
            param_formats: &[],
            ..base
        },
        KeyParts {
            params: &[None],
            ..base
        },
        KeyParts {
            params: &[Some(b"")],
            ..base
        },
        KeyParts {
            params: &[Some(b"4"), Some(b"2")],
            ..base
        },
        KeyParts {
            params: &[Some(b"42"), None],
            ..base
        },
        KeyParts {
            result_formats: &[0],
            ..base
        },
        KeyParts {
            result_formats: &[],
            ..base
        },
        KeyParts {
            settings: &[("TimeZone", "UTC"), ("DateStyle", "ISO, DMY")],
            ..base
        },
        KeyParts {
            settings: &[("TimeZon", "eUTC"), ("DateStyle", "ISO, MDY")],
            ..base
        },
        KeyParts {
            settings: &[("TimeZone", "UTC")],
            ..base
        },
        KeyParts {
            protocol: front::QUERY,
            ..base
        },
    ];
    let mut seen = std::collections::HashSet::new();
    seen.insert(k0);
    for (i, v) in variants.iter().enumerate() {
        assert!(seen.insert(v.key()), "variant {i} collides");
    }
    // Bytes moving between adjacent fields.
    let a = KeyParts {
        database: "ab",
        search_path: "c",
        ..base
    };
    let b = KeyParts {
        database: "a",
        search_path: "bc",
        ..base
    };
    assert_ne!(a.key(), b.key());
    let a = KeyParts {
        statement_text: b"SELECT 1",
        params: &[],
        param_formats: &[],
        ..base
    };
    let b = KeyParts {
        statement_text: b"SELECT ",
        params: &[Some(b"1")],
        param_formats: &[],
        ..base
    };
    assert_ne!(a.key(), b.key());
}

#[test]
fn config_parses_durations_and_rejects_unknown_keys() {
    let c: CacheConfig = toml::from_str(
        r#"
        enabled = true
        default_ttl = "2m"
        redis_timeout = "20ms"
        redis = "redis://127.0.0.1:6379"
        breaker_cooldown = "1s"
        "#,
    )
    .unwrap();
    assert!(c.enabled);
    assert_eq!(c.default_ttl, Duration::from_secs(120));
    assert_eq!(c.redis_timeout, Duration::from_millis(20));
    assert_eq!(c.l1_max_bytes, 64 << 20);
    assert!(!c.is_cluster());
    c.validate().unwrap();
    assert!(toml::from_str::<CacheConfig>("enabeld = true").is_err());
    assert!(toml::from_str::<CacheConfig>("default_ttl = \"soon\"").is_err());
    let c: CacheConfig = toml::from_str("redis = \"redis://a:1, redis://b:2\"").unwrap();
    assert_eq!(c.redis_urls(), vec!["redis://a:1", "redis://b:2"]);
    assert!(c.is_cluster());
    let d = CacheConfig::default();
    assert_eq!(
        (
            d.enabled,
            d.default_ttl,
            d.max_entry_bytes,
            d.redis_timeout,
            d.breaker_failures,
            d.breaker_cooldown
        ),
        (
            false,
            Duration::from_secs(90),
            1 << 20,
            Duration::from_millis(50),
            5,
            Duration::from_secs(5)
        )
    );
    assert_eq!(
        (d.key_prefix.as_str(), d.invalidation_channel.as_str()),
        ("pgsidecar", "pgsidecar:invalidate")
    );
}

/// Not an assertion: prints what an L1 hit costs (run with --release --nocapture).
#[tokio::test]
async fn l1_hit_cost() {
    let c = cache();
    let k = key(77);
    let tables = ["public.prices", "public.products"];
    let f = miss(&c, &k, &tables).await;
    c.fill(f, Bytes::from(vec![7u8; 2048]), TTL).await;
    let n = 200_000u32;
    let began = Instant::now();
    for _ in 0..n {
        match c.lookup(&k, &tables).await {
            Lookup::Hit(b) => assert_eq!(b.len(), 2048),
            Lookup::Miss(_) => panic!("miss"),
        }
    }
    let per = began.elapsed() / n;
    eprintln!("cache: L1 hit (2 tables, 2 KiB) costs {per:?} per lookup");
}

/// Step 8 of the module doc (the write side, `write.rs`).
mod announce;
