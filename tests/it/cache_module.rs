//! The result cache against a real Redis: two `Cache` instances stand for two sidecars that
//! share Redis. Each test uses its own key prefix and channel, so tests sharing the lab's Redis
//! do not see each other; the tests that flush, pause or stop Redis run on a Redis of their own.

use pgsidecar::wire::tag::front;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgsidecar::cache::{
    BreakerState, Cache, CacheConfig, CacheKey, Fill, FillOutcome, KeyParts, Lookup, INTENT_HOLD,
};
use tokio::sync::watch;

use crate::support::{lab, Redis};

const TTL: Duration = Duration::from_secs(60);

fn prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "cachetest-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(url: &str, prefix: &str) -> CacheConfig {
    CacheConfig {
        enabled: true,
        redis: Some(url.to_owned()),
        key_prefix: prefix.to_owned(),
        invalidation_channel: format!("{prefix}:invalidate"),
        // Generous for a loaded CI machine; the outage test sets its own.
        redis_timeout: Duration::from_millis(500),
        ..CacheConfig::default()
    }
}

/// A started cache ("sidecar") whose subscriber is connected.
struct Sidecar {
    cache: Cache,
    _shutdown: watch::Sender<bool>,
}

async fn sidecar(cfg: CacheConfig) -> Sidecar {
    let cache = Cache::new(cfg, "test".into());
    let (tx, rx) = watch::channel(false);
    cache.start(rx);
    wait_until(
        "subscriber connected, in the fleet",
        Duration::from_secs(10),
        || {
            let s = cache.stats();
            s.pubsub_connected && s.in_fleet
        },
    )
    .await;
    Sidecar {
        cache,
        _shutdown: tx,
    }
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn key(sql: &str) -> CacheKey {
    KeyParts {
        environment: "test",
        database: "app",
        role: None,
        search_path: "public",
        statement_text: sql.as_bytes(),
        param_formats: &[],
        params: &[],
        result_formats: &[],
        settings: &[("TimeZone", "UTC")],
        protocol: front::QUERY,
    }
    .key()
}

async fn miss(c: &Cache, k: &CacheKey, tables: &[&str]) -> Fill {
    match c.lookup(k, tables).await {
        Lookup::Miss(f) => f,
        Lookup::Hit(b) => panic!(
            "expected a miss, got a hit: {:?}",
            String::from_utf8_lossy(&b)
        ),
    }
}

/// Looks `k` up, which must miss, and offers `body` as the result read for it: what the cache
/// did with it.
async fn miss_then_fill(
    c: &Cache,
    k: &CacheKey,
    tables: &[&str],
    body: &'static [u8],
) -> FillOutcome {
    let f = miss(c, k, tables).await;
    c.fill(f, Bytes::from_static(body), TTL).await
}

async fn hit(c: &Cache, k: &CacheKey, tables: &[&str]) -> Bytes {
    match c.lookup(k, tables).await {
        Lookup::Hit(b) => b,
        Lookup::Miss(_) => panic!("expected a hit; stats {:?}", c.stats()),
    }
}

async fn is_hit(c: &Cache, k: &CacheKey, tables: &[&str]) -> bool {
    matches!(c.lookup(k, tables).await, Lookup::Hit(_))
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("test: connect to Redis")
}

const PRICES: &[&str] = &["public.prices"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_in_one_sidecar_is_an_l2_hit_in_another() {
    let lab = lab();
    let p = prefix();
    let a = sidecar(config(&lab.redis_url(), &p)).await;
    let b = sidecar(config(&lab.redis_url(), &p)).await;
    let k = key("SELECT * FROM prices");

    assert_eq!(
        miss_then_fill(&a.cache, &k, PRICES, b"rows v1").await,
        FillOutcome::Stored
    );
    assert_eq!(a.cache.stats().l2_writes, 1);

    assert_eq!(&hit(&b.cache, &k, PRICES).await[..], b"rows v1");
    assert_eq!(b.cache.stats().l2_hits, 1);
    // The L2 hit filled B's L1.
    assert_eq!(&hit(&b.cache, &k, PRICES).await[..], b"rows v1");
    let s = b.cache.stats();
    assert_eq!(
        (s.l1_hits, s.l2_hits, s.misses, s.redis_errors),
        (1, 1, 0, 0)
    );
    assert_eq!(s.breaker, Some(BreakerState::Closed));
}

/// With `cache.signing_key`, a result is served from Redis only if a sidecar holding the key
/// stored it under that very key. The entry format is public: whoever can write to Redis can
/// make a sidecar without the key serve any bytes for any statement, not one with it (nor can
/// they move a genuine entry under another statement's key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_signing_key_only_entries_signed_for_their_key_are_served() {
    let lab = lab();
    let p = prefix();
    let signed = CacheConfig {
        signing_key: Some("a fleet's shared secret, 32 chars+".into()),
        ..config(&lab.redis_url(), &p)
    };
    let a = sidecar(signed.clone()).await;
    let b = sidecar(signed).await;
    let plain = sidecar(config(&lab.redis_url(), &p)).await;
    let genuine = key("SELECT * FROM prices");
    let target = key("SELECT id FROM prices");

    assert_eq!(
        miss_then_fill(&a.cache, &genuine, PRICES, b"rows v1").await,
        FillOutcome::Stored
    );
    assert_eq!(&hit(&b.cache, &genuine, PRICES).await[..], b"rows v1");
    // Without the key a signed entry is no entry: a miss, never its bytes.
    let f = miss(&plain.cache, &genuine, PRICES).await;
    drop(f);

    // A forged entry, in the format an unsigned sidecar writes (as anyone could).
    assert_eq!(
        miss_then_fill(&plain.cache, &target, PRICES, b"forged").await,
        FillOutcome::Stored
    );
    assert_eq!(
        plain.cache.stats().l2_writes,
        1,
        "the forgery reached Redis"
    );
    let f = miss(&b.cache, &target, PRICES).await;
    drop(f);
    assert_eq!(b.cache.stats().l2_bad_signatures, 1);

    // A genuine signed entry moved under another statement's key.
    let mut conn = redis_conn(&lab.redis_url()).await;
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(format!("{p}:e:{}", genuine.hex()))
        .query_async(&mut conn)
        .await
        .expect("GET");
    let _: () = redis::cmd("SET")
        .arg(format!("{p}:e:{}", target.hex()))
        .arg(raw)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let f = miss(&b.cache, &target, PRICES).await;
    drop(f);
    assert_eq!(b.cache.stats().l2_bad_signatures, 2);
    assert_eq!(
        b.cache.stats().l2_hits,
        1,
        "only the genuine entry was served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_in_one_sidecar_reaches_the_other_through_pubsub() {
    let lab = lab();
    let p = prefix();
    let a = sidecar(config(&lab.redis_url(), &p)).await;
    let b = sidecar(config(&lab.redis_url(), &p)).await;
    let k = key("SELECT * FROM prices");
    let other = key("SELECT * FROM products");

    miss_then_fill(&a.cache, &k, PRICES, b"rows v1").await;
    miss_then_fill(&a.cache, &other, &["public.products"], b"products").await;
    hit(&b.cache, &k, PRICES).await; // L2 hit: now in B's L1
    hit(&b.cache, &other, &["public.products"]).await;
    assert_eq!(b.cache.stats().l2_hits, 2);

    a.cache.invalidate(PRICES, 0).await;
    // B's L1 entry can only go away through the message (L1 hits never ask Redis).
    let began = Instant::now();
    while is_hit(&b.cache, &k, PRICES).await {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "B never saw the invalidation"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "invalidation reached the other sidecar in {:?}",
        began.elapsed()
    );
    assert!(b.cache.stats().invalidation_messages >= 1);
    // A misses at once (its own tokens changed before the call returned).
    miss(&a.cache, &k, PRICES).await;
    // Unrelated tables keep their entries.
    hit(&b.cache, &other, &["public.products"]).await;

    // A new fill after the invalidation is shared again.
    assert_eq!(
        miss_then_fill(&b.cache, &k, PRICES, b"rows v2").await,
        FillOutcome::Stored
    );
    let fresh = Cache::new(config(&lab.redis_url(), &p), "test".into());
    assert_eq!(&hit(&fresh, &k, PRICES).await[..], b"rows v2");

    // INVALIDATE ALL reaches everyone too.
    b.cache.invalidate_all(0).await;
    let began = Instant::now();
    while is_hit(&a.cache, &other, &["public.products"]).await {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "A never saw INVALIDATE ALL"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // (`fresh` has no subscriber, so its own L1 copy is only bounded by its TTL: always
    // `start()` a cache that shares Redis. A new one reads the current tokens.)
    let newer = Cache::new(config(&lab.redis_url(), &p), "test".into());
    miss(&newer, &k, PRICES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_a_sidecar_without_subscriber_through_tokens() {
    let lab = lab();
    let p = prefix();
    let a = sidecar(config(&lab.redis_url(), &p)).await;
    let k = key("SELECT * FROM prices");

    miss_then_fill(&a.cache, &k, PRICES, b"rows v1").await;
    a.cache.invalidate(PRICES, 0).await;

    // B never subscribed and has nothing in memory: the v1 entry is still in Redis, but it
    // carries the old token and Redis holds the new one.
    let b = Cache::new(config(&lab.redis_url(), &p), "test".into());
    let f = miss(&b, &k, PRICES).await;
    assert_eq!(b.stats().l2_hits, 0);
    assert_eq!(
        b.fill(f, Bytes::from_static(b"rows v2"), TTL).await,
        FillOutcome::Stored
    );
    // ...and A takes B's fill, which carries the current token.
    wait_until("A's own publish came back", Duration::from_secs(5), || {
        a.cache.stats().invalidation_messages >= 1
    })
    .await;
    assert_eq!(&hit(&a.cache, &k, PRICES).await[..], b"rows v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_with_redis() {
    let lab = lab();
    let p = prefix();
    let a = sidecar(config(&lab.redis_url(), &p)).await;
    let k = key("SELECT count(*) FROM prices");
    let queries = std::sync::Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (c, q) = (a.cache.clone(), queries.clone());
        tasks.push(tokio::spawn(async move {
            match c.lookup(&k, PRICES).await {
                Lookup::Hit(b) => b,
                Lookup::Miss(f) => {
                    q.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    c.fill(f, Bytes::from_static(b"42"), TTL).await;
                    Bytes::from_static(b"42")
                }
            }
        }));
    }
    for t in tasks {
        assert_eq!(&t.await.unwrap()[..], b"42");
    }
    assert_eq!(queries.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_never_revives_an_old_entry() {
    let redis = Redis::start();
    let p = prefix();
    let url = redis.url();
    let a = sidecar(config(&url, &p)).await;
    let k = key("SELECT * FROM prices");
    miss_then_fill(&a.cache, &k, PRICES, b"before flush").await;

    let mut r = redis_conn(&url).await;
    let entry_key = format!("{p}:e:{}", k.hex());
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(&entry_key)
        .query_async(&mut r)
        .await
        .unwrap();
    let old_token: String = redis::cmd("GET")
        .arg(format!("{p}:tok:public.prices"))
        .query_async(&mut r)
        .await
        .unwrap();

    redis.cmd(&["FLUSHALL"]).expect("FLUSHALL");
    // Worst case: the entry comes back without its tokens (a replica promoted with part of the
    // data, a partial eviction, a restore): put it back by hand.
    let _: () = redis::cmd("SET")
        .arg(&entry_key)
        .arg(&raw)
        .query_async(&mut r)
        .await
        .unwrap();

    // A sidecar with nothing in memory creates new tokens: the old entry cannot match them.
    let b = sidecar(config(&url, &p)).await;
    let f = miss(&b.cache, &k, PRICES).await;
    let new_token: String = redis::cmd("GET")
        .arg(format!("{p}:tok:public.prices"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_ne!(
        new_token, old_token,
        "a recreated token is never an old one"
    );
    assert_eq!(b.cache.stats().l2_hits, 0);
    assert_eq!(
        b.cache
            .fill(f, Bytes::from_static(b"after flush"), TTL)
            .await,
        FillOutcome::Stored
    );

    // A still trusts its in-memory token (nothing was invalidated) for its own L1 entry, but as
    // soon as it reads Redis it moves to the newer token and no longer takes the old entry.
    let fresh_key = key("SELECT * FROM prices ORDER BY 1");
    miss(&a.cache, &fresh_key, PRICES).await; // an L1 miss: reads the current token
    assert_eq!(&hit(&a.cache, &k, PRICES).await[..], b"after flush");

    // Only the token deleted (e.g. evicted): same outcome.
    let _: () = redis::cmd("SET")
        .arg(&entry_key)
        .arg(&raw)
        .query_async(&mut r)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{p}:tok:public.prices"))
        .query_async(&mut r)
        .await
        .unwrap();
    let c = Cache::new(config(&url, &p), "test".into());
    miss(&c, &k, PRICES).await;
    assert_eq!(c.stats().l2_hits, 0);
}

/// Redis stopped, slow, restarted: never an error, bounded latency, the breaker opens and
/// closes, and L1 is flushed when the subscriber reconnects. Out of the fleet (its lease not
/// renewed), a sidecar serves no L1 hit: other sidecars' writes may not have reached it. Back
/// in, it serves them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_never_errors_and_no_l1_hit_is_served_out_of_the_fleet() {
    let redis = Redis::start();
    let url = redis.url();
    let p = prefix();
    let cfg = CacheConfig {
        redis_timeout: Duration::from_millis(50),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
        ..config(&url, &p)
    };
    let a = sidecar(cfg.clone()).await;
    let k0 = key("SELECT 0");
    miss_then_fill(&a.cache, &k0, PRICES, b"zero").await;
    assert_eq!(a.cache.stats().l2_writes, 1);

    // Slow Redis: every call is cut at redis_timeout, then the breaker bypasses Redis.
    redis
        .cmd(&["CLIENT", "PAUSE", "1500", "ALL"])
        .expect("CLIENT PAUSE");
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let k = key(&format!("SELECT {i} -- slow"));
        let began = Instant::now();
        let f = miss(&a.cache, &k, PRICES).await;
        worst = worst.max(began.elapsed());
        assert_eq!(
            a.cache.fill(f, Bytes::from_static(b"x"), TTL).await,
            FillOutcome::Stored
        );
    }
    let s = a.cache.stats();
    eprintln!(
        "slow Redis: worst lookup {worst:?}, breaker {:?}, errors {}",
        s.breaker, s.redis_errors
    );
    assert!(
        worst < Duration::from_secs(1),
        "lookup took {worst:?} with a paused Redis"
    );
    assert!(s.breaker_opens >= 1);
    wait_until("the lease ran out", Duration::from_secs(5), || {
        !a.cache.stats().in_fleet
    })
    .await;
    assert!(
        !is_hit(&a.cache, &k0, PRICES).await,
        "out of the fleet, L1 is not trusted"
    );
    wait_until("back in the fleet", Duration::from_secs(10), || {
        a.cache.stats().in_fleet
    })
    .await;

    // Stopped Redis.
    redis.stop();
    wait_until("subscriber noticed", Duration::from_secs(10), || {
        !a.cache.stats().pubsub_connected
    })
    .await;
    let resyncs_down = a.cache.stats().resyncs;
    let mut worst = Duration::ZERO;
    let during = key("SELECT 1 -- during outage");
    for i in 0..20 {
        let k = if i == 0 {
            during
        } else {
            key(&format!("SELECT {i} -- outage"))
        };
        let began = Instant::now();
        let f = miss(&a.cache, &k, PRICES).await;
        let outcome = a.cache.fill(f, Bytes::from_static(b"during"), TTL).await;
        worst = worst.max(began.elapsed());
        // Stored in L1, or held while announcements of writes may have been missed (the
        // cache's step 8): never an error, and never served out of the fleet.
        assert!(
            matches!(
                outcome,
                FillOutcome::Stored | FillOutcome::Rejected(pgsidecar::cache::Reason::Invalidated)
            ),
            "{outcome:?}"
        );
        assert!(
            !is_hit(&a.cache, &k, PRICES).await,
            "no L1 hit out of the fleet"
        );
    }
    // Invalidation without Redis: local at once, no error; the write is held at most until
    // every lease granted before Redis went away has run out (no other sidecar can still
    // trust what it learnt), then let go.
    let unannounced = a.cache.stats().unannounced_waits;
    a.cache.invalidate(&["public.other"], 0).await;
    let k_other = key("SELECT * FROM other");
    miss_then_fill(&a.cache, &k_other, &["public.other"], b"o1").await;
    a.cache.invalidate(&["public.other"], 0).await;
    miss(&a.cache, &k_other, &["public.other"]).await;
    let s = a.cache.stats();
    assert!(
        s.unannounced_waits <= unannounced + 2,
        "only writes within a lease of the outage's start are held: {s:?}"
    );
    eprintln!(
        "stopped Redis: worst call {worst:?}, breaker {:?}, errors {}",
        s.breaker, s.redis_errors
    );
    assert!(
        worst < Duration::from_secs(1),
        "a call took {worst:?} with Redis down"
    );
    assert!(s.redis_errors >= 3);

    // Back: the subscriber reconnects and flushes L1 (messages may have been missed).
    redis.start_again();
    wait_until("subscriber reconnected", Duration::from_secs(15), || {
        let s = a.cache.stats();
        s.pubsub_connected && s.resyncs > resyncs_down
    })
    .await;
    miss(&a.cache, &during, PRICES).await;

    // L2 is used again once the breaker lets a probe through (tokens self-heal: tables
    // that got local tokens while Redis was away adopt the shared ones on their next read).
    let writes = a.cache.stats().l2_writes;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    let k = loop {
        let k = key(&format!("SELECT {i} -- after"));
        i += 1;
        miss_then_fill(&a.cache, &k, PRICES, b"after").await;
        if a.cache.stats().l2_writes > writes {
            break k;
        }
        assert!(
            Instant::now() < deadline,
            "L2 never used again: {:?}",
            a.cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(a.cache.stats().breaker, Some(BreakerState::Closed));
    wait_until("back in the fleet", Duration::from_secs(10), || {
        a.cache.stats().in_fleet
    })
    .await;
    assert_eq!(
        &hit(&a.cache, &k, PRICES).await[..],
        b"after",
        "L1 hits again"
    );
    let b = Cache::new(cfg, "test".into());
    assert_eq!(&hit(&b, &k, PRICES).await[..], b"after");
}

/// The cache's step 8 across sidecars: once a write is announced (before its commit), no
/// other sidecar serves an entry of its table from before it, or stores one, until the
/// commit's invalidation ends the announcement; a sidecar that joins meanwhile reads the
/// announcement from Redis. Without it, a session that already saw the committed write on a
/// node could be served an older result of another statement from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_write_holds_every_sidecars_cache_of_its_table_until_its_commit_is_invalidated(
) {
    let lab = lab();
    let p = prefix();
    let a = sidecar(config(&lab.redis_url(), &p)).await;
    let b = sidecar(config(&lab.redis_url(), &p)).await;
    let k = key("SELECT * FROM prices");
    let other = key("SELECT * FROM products");
    const PRODUCTS: &[&str] = &["public.products"];
    for (k, t) in [(&k, PRICES), (&other, PRODUCTS)] {
        let f = miss(&b.cache, k, t).await;
        assert_eq!(
            b.cache.fill(f, Bytes::from_static(b"v1"), TTL).await,
            FillOutcome::Stored
        );
        hit(&b.cache, k, t).await;
    }

    let announced = a.cache.announce(PRICES).await;
    // Returned once B applied it: no waiting here.
    miss(&b.cache, &k, PRICES).await;
    hit(&b.cache, &other, PRODUCTS).await;
    assert_eq!(
        miss_then_fill(&b.cache, &k, PRICES, b"read during the write").await,
        FillOutcome::Rejected(pgsidecar::cache::Reason::Invalidated),
        "B stored a result read while the write was in flight"
    );
    // A sidecar joining now was not sent the announcement: it reads it from Redis.
    let c = sidecar(config(&lab.redis_url(), &p)).await;
    assert_eq!(
        miss_then_fill(&c.cache, &k, PRICES, b"read during the write").await,
        FillOutcome::Rejected(pgsidecar::cache::Reason::Invalidated),
        "a sidecar that joined during the write stored a result read while it was in flight"
    );
    assert_eq!(
        miss_then_fill(&c.cache, &key("SELECT name FROM products"), PRODUCTS, b"v1").await,
        FillOutcome::Stored,
        "only the announced table is held"
    );

    a.cache
        .invalidate_announced(PRICES, 0x3000060, announced)
        .await;
    // Acknowledged by B and C before it returned: both store again.
    for (s, sql) in [(&b, "SELECT * FROM prices"), (&c, "SELECT id FROM prices")] {
        assert_eq!(
            miss_then_fill(&s.cache, &key(sql), PRICES, b"v2").await,
            FillOutcome::Stored
        );
    }
    assert_eq!(&hit(&a.cache, &k, PRICES).await[..], b"v2");
}

/// A commit can wait for a synchronous standby longer than an announcement holds (a standby
/// just restarted counts only once it caught up) while a replica that applied it already
/// shows it. Its announcement is renewed while it is in flight: another sidecar, and one
/// joining meanwhile, still store nothing of the table past the first announcement's hold,
/// and the commit's single end releases them. Before, the hold expired after 5 s and the long
/// consistency run under `remote_apply` read a version on a replica that the primary did not
/// show yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_past_its_hold_is_renewed_and_still_holds_every_sidecar() {
    let lab = lab();
    let p = prefix();
    let a = sidecar(config(&lab.redis_url(), &p)).await;
    let b = sidecar(config(&lab.redis_url(), &p)).await;
    let k = key("SELECT * FROM prices");
    let mut announced = a.cache.announce(PRICES).await;
    let first_ends = Instant::now() + INTENT_HOLD;
    let mut renewals = 0;
    while Instant::now() < first_ends + Duration::from_millis(500) {
        let due = announced.renewal_due().expect("announced");
        tokio::time::sleep_until(due.into()).await;
        a.cache.renew(&mut announced).await;
        renewals += 1;
    }
    assert!(renewals >= 2, "{renewals}");
    assert_eq!(
        miss_then_fill(&b.cache, &k, PRICES, b"from a replica").await,
        FillOutcome::Rejected(pgsidecar::cache::Reason::Invalidated),
        "the announcement expired while its write was still in flight"
    );
    let c = sidecar(config(&lab.redis_url(), &p)).await;
    assert_eq!(
        miss_then_fill(&c.cache, &k, PRICES, b"from a replica").await,
        FillOutcome::Rejected(pgsidecar::cache::Reason::Invalidated),
        "a joiner did not read the renewed announcement"
    );

    a.cache.invalidate_announced(PRICES, 0, announced).await;
    for (s, sql) in [(&b, "SELECT * FROM prices"), (&c, "SELECT id FROM prices")] {
        assert_eq!(
            miss_then_fill(&s.cache, &key(sql), PRICES, b"v2").await,
            FillOutcome::Stored,
            "the commit's end did not release every renewal"
        );
    }
}

/// A writer outside the fleet (starting, fenced, reconnecting) cannot tell whether Redis was
/// just flushed, dropping members that still trust their leases: it waits every lease granted
/// before its write out (counted as an `unannounced_wait`). Before, one that had never joined,
/// or had lost its lease more than a lease ago, went on at once: the long consistency run
/// found a write acknowledged that way right after a FLUSHALL and read old through the other
/// sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_outside_the_fleet_waits_out_every_lease_a_flush_may_have_dropped() {
    let lab = lab();
    let p = prefix();
    let member = sidecar(config(&lab.redis_url(), &p)).await;
    // Not started: never subscribed, never a member.
    let outside = Cache::new(config(&lab.redis_url(), &p), "test".into());
    outside.invalidate(PRICES, 0x3000060).await;
    assert_eq!(
        outside.stats().unannounced_waits,
        1,
        "a write from outside the fleet went on without waiting out the leases"
    );
    // A member alone in a set it joined long enough ago does not wait.
    wait_until(
        "a lease after the member's join",
        Duration::from_secs(10),
        || member.cache.stats().in_fleet,
    )
    .await;
    tokio::time::sleep(pgsidecar::cache::LEASE).await;
    member.cache.invalidate(PRICES, 0x3000070).await;
    assert_eq!(member.cache.stats().unannounced_waits, 0);
}
