//! Result cache for read-only statements: "a result cache that never lies".
//!
//! The session computes a [`CacheKey`] ([`KeyParts::key`]) and calls [`Cache::lookup`] with
//! the tables the statement reads. A [`Lookup::Hit`] carries the exact backend response bytes
//! stored earlier. A [`Lookup::Miss`] carries a [`Fill`] ticket: the session runs the query,
//! captures the response and offers it with [`Cache::fill`] (or drops the ticket if the query
//! failed). Writes call [`Cache::invalidate`] with the tables they change.
//!
//! Layers: L1 is in-process (moka, bounded by bytes, per-entry TTL); L2 is Redis, shared by
//! every sidecar (optional, behind a circuit breaker: Redis down, slow or flushed is never a
//! client-visible error and never a stale hit, L1 keeps working).
//!
//! # Why a hit is never stale
//! Every table has a generation token (random u64, see `tokens.rs`); every entry records the
//! tokens of its tables (plus the global pseudo-table `*`) at fill time and is served only
//! while all of them are still current. Invalidation replaces tokens; it never has to find the
//! entries. The fill protocol:
//! 1. **Snapshot before the query.** `lookup` takes the ticket's tokens before the session runs
//!    the query. A write that commits after the query read its data invalidates after that,
//!    so it changes a token the ticket holds; a write before the snapshot is already visible
//!    to the query.
//! 2. **Check at store time.** `fill` stores only if every ticket token is still current
//!    (and the token epoch has not moved): a fill that raced an invalidation is rejected
//!    instead of storing a result that may predate the write.
//! 3. **Insert, then re-check.** An invalidation can land between the check and the L1 insert
//!    (and its eager removal can run before the insert). The entry still carries the old
//!    tokens, so it can never be served (4.), and the re-check removes it at once so it does
//!    not hold memory; it is also what reports `Rejected(Invalidated)` honestly.
//! 4. **Check at hit time.** Every L1 hit compares the entry's tokens with the current ones
//!    (a few hash lookups under a read lock). This, not eager removal, is what makes 1–3
//!    sufficient: no interleaving of fill and invalidation can make an entry with a retired
//!    token visible, so no "invalidate again after a delay" is needed.
//! 5. **Random tokens, forward-only versions.** A token is never reused, so a Redis restart,
//!    flush or eviction (which recreates tokens) cannot make an old entry look current; L2
//!    entries carry their tokens and are checked the same way. Versions (Redis clock) make
//!    the in-memory tokens move only forward whatever the order in which messages and reads
//!    arrive, and a local invalidation switches to a private token until its own publish
//!    comes back, so an in-flight older message cannot undo it.
//! 6. **Positions travel with tokens.** A token retired by a write carries that write's commit
//!    position (primary WAL LSN) in Redis and in its message; every sidecar hands it to its
//!    [`CommitPositions`] (the read-your-writes write log) *before* adopting the token. The
//!    session's fill check (the node that answered replayed every known position of the tables)
//!    then holds for writes through other sidecars and around them (NOTIFY), not only its own:
//!    otherwise a lagging replica's old row could be stored under the new token, everywhere.
//! 7. **Resync on pub/sub gaps.** Messages missed while the subscriber is down cannot be
//!    recovered, so losing or re-establishing the subscription flushes L1 and forgets tokens.
//! 8. **Writes are announced before they commit.** Steps 1–7 keep a hit from being older than
//!    a write whose invalidation was applied; between the commit and that moment, a session
//!    can already see the write (on the primary, or a replica that replayed it) and then be
//!    served an older result of another statement from the cache: its reads would go back in
//!    time. So a write is invalidated twice ([`Cache::announce`] before the request that
//!    commits it is sent, [`Cache::invalidate_announced`] after): the first bump retires every
//!    entry of its tables in every member (the writer waits for their acknowledgements, as
//!    for the second) and, until the second ends it or [`INTENT_HOLD`] passes, no fill of
//!    those tables is stored anywhere (the data it read may be what the write is changing).
//!    A sidecar that forgets its tokens (joins the fleet) reads the writes announced and not
//!    yet ended from Redis (`{prefix}:intents`); in a Redis Cluster, where they are not kept,
//!    it stores nothing for [`INTENT_HOLD`] instead.
//!
//! What remains is inherent: other sidecars learn of a write when its message arrives (about
//! a Redis round trip), and while Redis is unreachable, sidecars cannot tell each other about
//! writes, so their L1 entries can stay stale for at most their TTL.
//!
//! Files: this one holds lookups and fills; `write.rs` the write side (announce, renew,
//! invalidate, acknowledgements); `tokens.rs` the generation tokens and announcements held;
//! `fleet.rs` the leases; `l1.rs`, `l2.rs` (with `stored.rs`, the formats in Redis) the tiers.

mod breaker;
mod fleet;
mod flight;
mod invalidate;
mod key;
mod l1;
mod l2;
mod stored;

/// The name a table's generation token is kept under: per database, so a write to `prices` in
/// one database does not invalidate another database's `prices`.
pub fn table_key(database: &str, table: &str) -> String {
    format!("{database}.{table}")
}

/// Where the cache reports the commit positions it learns with tokens (from its own writes,
/// other sidecars' messages and tokens read from Redis). Called before the token is adopted,
/// so by the time an entry can be filled under a token, its position is on record.
pub trait CommitPositions: Send + Sync {
    /// `table`: a token name ([`table_key`], or `*` for every table); `lsn` is never 0.
    fn learned(&self, table: &str, lsn: u64);
}

mod near;
mod stats;
mod tokens;
mod write;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

pub use crate::config::{CacheConfig, CacheConfigError};
pub use breaker::BreakerState;
pub use fleet::{FENCE_AFTER, LEASE, RENEW_EVERY};
pub use key::{CacheKey, KeyParts};
pub use stats::{CacheStats, CacheStatsSnapshot};
pub use tokens::INTENT_HOLD;
pub use write::{Announced, ALL_TABLES};

use flight::{FlightGuard, Flights, Role};
use l1::{L1Entry, L1};
use l2::L2;
use stored::{decode_entry, encode_entry, unix_ms};
use tokens::{Snap, Tokens, GLOBAL};

/// The answer of [`Cache::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// The exact bytes stored by an earlier fill.
    Hit(Bytes),
    /// Run the query, then offer the response with [`Cache::fill`] (or drop the ticket).
    Miss(Fill),
}

/// Ticket for storing the result of a missed lookup: the token snapshot taken before the query
/// runs, and (for the one task running the query for this key) the single-flight lead.
/// Dropping it without [`Cache::fill`] (the query failed) releases the waiting lookups.
pub struct Fill {
    cache: usize,
    key: CacheKey,
    epoch: u64,
    snap: Vec<Snap>,
    guard: Option<FlightGuard>,
}

impl Fill {
    pub fn key(&self) -> CacheKey {
        self.key
    }

    /// True when other lookups of this key wait for this fill.
    pub fn is_leader(&self) -> bool {
        self.guard.is_some()
    }
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fill")
            .field("key", &self.key)
            .field(
                "tables",
                &self.snap.iter().map(|s| &*s.table).collect::<Vec<_>>(),
            )
            .field("leader", &self.guard.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// Stored in L1 (and in Redis when configured, reachable, and every token is shared).
    Stored,
    Rejected(Reason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A table was invalidated (or the tokens were reset) since the lookup: the result may
    /// predate a write.
    Invalidated,
    /// Larger than `max_entry_bytes`.
    TooLarge,
    /// The result came from a replica behind the session's last write (the session's LSN
    /// rule; reported through [`Cache::reject`]).
    Lagging,
    /// Zero TTL: nothing to store.
    NoTtl,
    /// The cache is disabled.
    Disabled,
}

/// The result cache; cheap to clone (one `Arc`), `Send + Sync`.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: CacheConfig,
    env: String,
    pub(crate) l1: L1,
    pub(crate) tokens: Tokens,
    pub(crate) l2: Option<L2>,
    flights: Arc<Flights>,
    pub(crate) stats: Arc<CacheStats>,
    started: AtomicBool,
    positions: Option<Arc<dyn CommitPositions>>,
    /// The random tokens of this sidecar's own recent bumps: its subscriber does not
    /// acknowledge their messages (only other members' writers wait for acknowledgements, and
    /// a writer never waits for itself), which saves a Redis round trip per written table.
    own_tokens: parking_lot::Mutex<std::collections::VecDeque<u64>>,
}

/// How many own tokens are remembered: a message comes back within a Redis round trip, so
/// this covers far more writes than can be in flight; an older one is just acknowledged.
const OWN_TOKENS: usize = 1024;

/// `tables` without duplicates.
fn dedup<'a>(tables: &[&'a str]) -> Vec<&'a str> {
    let mut uniq: Vec<&'a str> = Vec::with_capacity(tables.len());
    for t in tables {
        if !uniq.contains(t) {
            uniq.push(t);
        }
    }
    uniq
}

/// `tables` without duplicates, plus [`GLOBAL`].
fn with_global<'a>(tables: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&'a str> = Vec::with_capacity(tables.len() + 1);
    for t in tables.iter().copied().chain(std::iter::once(GLOBAL)) {
        if !v.contains(&t) {
            v.push(t);
        }
    }
    v
}

impl Cache {
    /// Builds the cache; cheap, spawns nothing and never fails: an unusable Redis setting is
    /// logged and the cache runs on L1 only (use [`CacheConfig::validate`] at config load).
    pub fn new(cfg: CacheConfig, environment: String) -> Cache {
        Cache::with_positions(cfg, environment, None)
    }

    /// [`Cache::new`], reporting the commit positions that come with tokens to `positions`
    /// (the sidecar passes its write log; see step 6 of the module doc).
    pub fn with_positions(
        cfg: CacheConfig,
        environment: String,
        positions: Option<Arc<dyn CommitPositions>>,
    ) -> Cache {
        let stats = Arc::new(CacheStats::default());
        let l2 = match cfg.redis {
            Some(_) => match L2::new(&cfg, stats.clone()) {
                Ok(l2) => Some(l2),
                Err(e) => {
                    tracing::error!(error = %e, "cache: Redis disabled, L1 only");
                    None
                }
            },
            None => None,
        };
        Cache {
            inner: Arc::new(Inner {
                l1: L1::new(cfg.l1_max_bytes, stats.clone()),
                tokens: Tokens::new(),
                l2,
                flights: Arc::default(),
                own_tokens: Default::default(),
                stats,
                started: AtomicBool::new(false),
                env: environment,
                cfg,
                positions,
            }),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.cfg
    }

    /// Spawns the background tasks (the invalidation subscriber, when Redis is configured, even
    /// with the cache disabled: other sidecars' messages carry their writes' commit positions,
    /// which read-your-writes needs for routing alone);
    /// they stop when `shutdown` turns true or its sender is dropped. Call once, inside the
    /// runtime; later calls do nothing. Without it, other sidecars' invalidations reach this
    /// L1 only through L2 reads, so a sidecar sharing Redis must call it.
    pub fn start(&self, shutdown: watch::Receiver<bool>) {
        if self.inner.l2.is_none() || self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(invalidate::run(self.inner.clone(), shutdown));
    }

    /// Looks `key` up: L1, then (once per key across concurrent lookups) Redis. `tables`: the
    /// tables the statement reads (schema-qualified names, as given to `invalidate`).
    pub async fn lookup(&self, key: &CacheKey, tables: &[&str]) -> Lookup {
        let inner = &self.inner;
        if !inner.cfg.enabled {
            return Lookup::Miss(Fill {
                cache: 0,
                key: *key,
                epoch: 0,
                snap: Vec::new(),
                guard: None,
            });
        }
        if let Some(b) = inner.l1_hit(key, tables).await {
            return Lookup::Hit(b);
        }
        let all = with_global(tables);
        let deadline = Instant::now() + inner.cfg.flight_wait;
        let mut waited = false;
        loop {
            match inner.flights.join_or_lead(*key) {
                Role::Leader(guard) => {
                    // A fill may have landed between the L1 check and taking the lead.
                    if let Some(b) = inner.l1_hit(key, tables).await {
                        return Lookup::Hit(b);
                    }
                    return self.miss(key, tables, &all, Some(guard)).await;
                }
                Role::Waiter(flight) => {
                    if !waited {
                        waited = true;
                        CacheStats::inc(&inner.stats.flight_waits);
                    }
                    let done = flight.wait(deadline).await;
                    if let Some(b) = inner.l1_hit(key, tables).await {
                        return Lookup::Hit(b);
                    }
                    if !done {
                        CacheStats::inc(&inner.stats.flight_timeouts);
                        return self.miss(key, tables, &all, None).await;
                    }
                    // The leader stored nothing (failed, rejected): try again, maybe as leader.
                }
            }
        }
    }

    async fn miss(
        &self,
        key: &CacheKey,
        tables: &[&str],
        all: &[&str],
        guard: Option<FlightGuard>,
    ) -> Lookup {
        let inner = &self.inner;
        if let Some(l2) = &inner.l2 {
            if let Some(b) = inner.l2_lookup(l2, key, tables, all).await {
                CacheStats::inc(&inner.stats.l2_hits);
                return Lookup::Hit(b);
            }
        }
        let (epoch, snap) = inner.tokens.snapshot(all);
        CacheStats::inc(&inner.stats.misses);
        Lookup::Miss(Fill {
            cache: self.id(),
            key: *key,
            epoch,
            snap,
            guard,
        })
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Stores a missed lookup's response (`bytes`, exactly as the backend sent them) for
    /// `ttl`, in L1 and then Redis, unless a table was invalidated since the lookup. Releases
    /// the lookups waiting for this key as soon as L1 holds the entry.
    pub async fn fill(&self, mut fill: Fill, bytes: Bytes, ttl: Duration) -> FillOutcome {
        let inner = &self.inner;
        if !inner.cfg.enabled || fill.cache != self.id() {
            return FillOutcome::Rejected(if inner.cfg.enabled {
                Reason::Invalidated
            } else {
                Reason::Disabled
            });
        }
        if bytes.len() > inner.cfg.max_entry_bytes {
            CacheStats::inc(&inner.stats.rejected_too_large);
            return FillOutcome::Rejected(Reason::TooLarge);
        }
        if ttl.is_zero() {
            return FillOutcome::Rejected(Reason::NoTtl);
        }
        // Step 2 (module doc): tokens still current at store time, and no write to these
        // tables announced and in flight (step 8)?
        if !inner.tokens.still_current(fill.epoch, &fill.snap)
            || inner.tokens.fills_held(&fill.snap)
        {
            CacheStats::inc(&inner.stats.rejected_invalidated);
            return FillOutcome::Rejected(Reason::Invalidated);
        }
        let entry = Arc::new(L1Entry {
            bytes: bytes.clone(),
            tables: fill.snap.clone().into_boxed_slice(),
            ttl,
            filled: std::time::Instant::now(),
        });
        inner.l1.insert(fill.key, entry.clone()).await;
        // Step 3: an invalidation (or an announcement) between the check and the insert.
        if !inner.tokens.still_current(fill.epoch, &fill.snap)
            || inner.tokens.fills_held(&fill.snap)
        {
            inner.l1.remove_if_same(&fill.key, &entry).await;
            CacheStats::inc(&inner.stats.rejected_invalidated);
            return FillOutcome::Rejected(Reason::Invalidated);
        }
        CacheStats::inc(&inner.stats.fills);
        // Waiters can hit L1 now; the Redis write below does not hold them up.
        drop(fill.guard.take());
        if let Some(l2) = &inner.l2 {
            // Only entries whose every token is shared mean anything to other sidecars.
            if fill.snap.iter().all(|s| s.shared)
                && inner.tokens.still_current(fill.epoch, &fill.snap)
            {
                if let Some(value) = encode_entry(&fill.snap, ttl, &bytes) {
                    if l2.write(&fill.key, value, ttl).await.is_ok() {
                        CacheStats::inc(&inner.stats.l2_writes);
                    }
                }
            }
        }
        FillOutcome::Stored
    }

    /// Gives a ticket back without storing (e.g. [`Reason::Lagging`]), counting the reason and
    /// releasing the waiting lookups.
    pub fn reject(&self, fill: Fill, reason: Reason) -> FillOutcome {
        let s = &self.inner.stats;
        match reason {
            Reason::Lagging => CacheStats::inc(&s.rejected_lagging),
            Reason::Invalidated => CacheStats::inc(&s.rejected_invalidated),
            Reason::TooLarge => CacheStats::inc(&s.rejected_too_large),
            Reason::NoTtl | Reason::Disabled => {}
        }
        drop(fill);
        FillOutcome::Rejected(reason)
    }

    /// Forgets this process's L1 and tokens (not other sidecars'): for when only this process
    /// may have missed invalidations, e.g. its NOTIFY listener was disconnected. Tokens are then
    /// re-read from Redis, which sidecars that were listening kept current.
    pub fn resync_local(&self) {
        // The subscription is intact: no announcement was missed.
        self.inner.resync_with(false);
    }

    /// Which join of the fleet this sidecar's lease belongs to (`Some(0)` without Redis:
    /// nothing to join); None while it is out of the fleet, when what it learnt by pub/sub may
    /// be incomplete (see `fleet`): reads that rely on other sidecars' commit positions must
    /// then go to the primary, and after a join they must first catch up.
    pub fn fleet_join(&self) -> Option<u64> {
        match &self.inner.l2 {
            None => Some(0),
            Some(l2) => l2.fleet.join_seq(),
        }
    }

    /// Live counters, for the metrics exporter.
    pub fn counters(&self) -> Arc<CacheStats> {
        self.inner.stats.clone()
    }

    pub fn stats(&self) -> CacheStatsSnapshot {
        let i = &self.inner;
        i.stats.snapshot(
            i.l1.weighted_size(),
            i.l1.entry_count(),
            i.tokens.len() as u64,
            i.l2.as_ref().map(|l2| l2.breaker_state()),
            i.l2.as_ref().map_or((false, 0), |l2| {
                (l2.fleet.trusted(), l2.fleet.members.load(Ordering::Relaxed))
            }),
        )
    }

    /// Runs L1's pending maintenance (evictions, expirations, size accounting) now; moka
    /// otherwise does it in small steps during other operations.
    pub async fn run_pending_tasks(&self) {
        self.inner.l1.run_pending_tasks().await;
    }
}

impl Inner {
    /// The hit path: L1 entry whose tokens are all current (step 4).
    #[inline]
    async fn l1_hit(&self, key: &CacheKey, tables: &[&str]) -> Option<Bytes> {
        // Sharing Redis, L1 is only as current as the invalidations this sidecar has applied:
        // out of the fleet (see `fleet`), it may have missed some.
        if self.l2.as_ref().is_some_and(|l2| !l2.fleet.trusted()) {
            return None;
        }
        if let Some(e) = self.l1.near.get(key) {
            if self.tokens.entry_current(&e.tables, tables) {
                CacheStats::inc(&self.stats.l1_hits);
                return Some(e.bytes.clone());
            }
            self.l1.near.forget(key);
        }
        let e = self.l1.get(key).await?;
        if self.tokens.entry_current(&e.tables, tables) {
            CacheStats::inc(&self.stats.l1_hits);
            self.l1.near.put(key, &e);
            Some(e.bytes.clone())
        } else {
            self.l1.remove_if_same(key, &e).await;
            None
        }
    }

    /// Reads the entry and the tables' shared tokens from Redis (one round trip), brings the
    /// in-memory tokens forward, and returns the entry if its tokens are the current ones.
    async fn l2_lookup(
        &self,
        l2: &L2,
        key: &CacheKey,
        tables: &[&str],
        all: &[&str],
    ) -> Option<Bytes> {
        let epoch = self.tokens.epoch();
        let read = l2.read(key, all).await.ok()?;
        let mut missing = Vec::new();
        for (t, tok) in all.iter().zip(read.tokens) {
            match tok {
                Some(tok) => {
                    self.learned(t, tok.lsn);
                    if self.tokens.observe(Some(epoch), t, tok.version, tok.token) {
                        self.l1.drop_table(t).await;
                    }
                }
                None => missing.push(*t),
            }
        }
        if !missing.is_empty() {
            // First use, or Redis lost the token (restart, flush, eviction): create it. No
            // entry can carry a token created now, so this lookup misses either way.
            if let Ok(created) = l2.create_tokens(&missing).await {
                for (t, tok) in missing.iter().zip(created) {
                    // Another sidecar may have bumped it meanwhile: the script returns that.
                    self.learned(t, tok.lsn);
                    if self.tokens.observe(Some(epoch), t, tok.version, tok.token) {
                        self.l1.drop_table(t).await;
                    }
                }
            }
            return None;
        }
        let d = decode_entry(read.entry?)?;
        let remaining = d.expires_at_ms.saturating_sub(unix_ms());
        if remaining == 0 {
            return None;
        }
        let snaps: Box<[Snap]> = d
            .tables
            .into_iter()
            .map(|(table, version, token)| Snap {
                table: table.into(),
                token,
                version,
                shared: true,
            })
            .collect();
        if !self.tokens.entry_current(&snaps, tables) || !snaps.iter().any(|s| &*s.table == GLOBAL)
        {
            return None;
        }
        let entry = Arc::new(L1Entry {
            bytes: d.bytes.clone(),
            tables: snaps,
            ttl: Duration::from_millis(remaining),
            filled: std::time::Instant::now(),
        });
        self.l1.insert(*key, entry.clone()).await;
        if !self.tokens.entry_current(&entry.tables, tables) {
            self.l1.remove_if_same(key, &entry).await;
        }
        Some(d.bytes)
    }

    /// Hands a commit position learned with a token to the write log (before the token is
    /// adopted: see step 6 of the module doc).
    pub(crate) fn learned(&self, table: &str, lsn: u64) {
        if lsn == 0 {
            return;
        }
        if let Some(p) = &self.positions {
            p.learned(table, lsn);
        }
    }

    /// Whether `token` is one of this sidecar's own recent bumps (forgotten once asked).
    pub(crate) fn own_token(&self, token: u64) -> bool {
        let mut own = self.own_tokens.lock();
        match own.iter().position(|t| *t == token) {
            Some(i) => {
                own.remove(i);
                true
            }
            None => false,
        }
    }

    /// Invalidations may have been missed: flush L1 and forget every token. Sharing Redis,
    /// announcements may have been missed too: nothing is stored until they are read again
    /// on joining the fleet (step 8 of the module doc).
    pub(crate) fn resync(&self) {
        self.resync_with(self.l2.is_some());
    }

    fn resync_with(&self, announcements_missed: bool) {
        self.tokens.reset(announcements_missed);
        self.l1.clear();
        CacheStats::inc(&self.stats.resyncs);
    }
}
