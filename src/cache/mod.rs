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

mod breaker;
mod config;
mod fleet;
mod flight;
mod invalidate;
mod key;
mod l1;
mod l2;
pub mod notify;
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

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

pub use breaker::BreakerState;
pub use config::CacheConfig;
pub use fleet::{FENCE_AFTER, LEASE, RENEW_EVERY};
pub use key::{CacheKey, KeyParts};
pub use stats::{CacheStats, CacheStatsSnapshot};
pub use tokens::INTENT_HOLD;

use flight::{FlightGuard, Flights, Role};
use l1::{L1Entry, L1};
use l2::L2;
use stored::{decode_entry, encode_entry, unix_ms, Mark};
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

/// A write announced before its commit ([`Cache::announce`]): per table, the token its
/// announcement was published with. Hand it to [`Cache::invalidate_announced`] once the write
/// committed, or to [`Cache::abandon`] if it did not (or its outcome is unknown).
#[derive(Debug, Default)]
pub struct Announced {
    ids: Vec<(Arc<str>, u64)>,
    /// When the oldest of these announcements was made.
    since: Option<std::time::Instant>,
}

/// The table name that stands for every table ([`Cache::invalidate_all`]), for
/// [`Cache::announce`] of a write whose tables are unknown.
pub const ALL_TABLES: &str = GLOBAL;

impl Announced {
    /// Whether a write to `table` is covered (announced itself, or everything was), by an
    /// announcement young enough to still hold everywhere when the commit follows.
    pub fn covers(&self, table: &str) -> bool {
        self.is_fresh()
            && self
                .ids
                .iter()
                .any(|(t, _)| &**t == table || &**t == GLOBAL)
    }

    /// Young enough to still hold everywhere when the commit follows; an older one is renewed
    /// ([`Cache::renew`]) before the transaction writes again or commits.
    pub fn is_fresh(&self) -> bool {
        self.since.is_some_and(|s| s.elapsed() < INTENT_HOLD / 2)
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Adds another announcement of the same transaction.
    pub fn merge(&mut self, other: Announced) {
        self.ids.extend(other.ids);
        self.since = match (self.since, other.since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// When a write still in flight should be announced again ([`Cache::renew`]): half an
    /// [`INTENT_HOLD`] after its announcement, so that it never expires anywhere meanwhile.
    pub fn renewal_due(&self) -> Option<std::time::Instant> {
        self.since.map(|s| s + INTENT_HOLD / 2)
    }

    /// The announcement of `table` (one per table: a transaction's later writes to it renew
    /// it rather than announcing it again).
    fn id_for(&self, table: &str) -> Option<u64> {
        self.ids
            .iter()
            .find(|(t, _)| &**t == table)
            .map(|(_, id)| *id)
    }
}

/// What a bump of tables' tokens does besides invalidating them (step 8 of the module doc).
#[derive(Clone, Copy)]
enum Bump<'a> {
    /// Announces a write about to be sent.
    Announce,
    /// Holds a write still in flight anew.
    Renew(&'a Announced),
    /// Invalidates after a commit, ending the write's announcement if it had one.
    Invalidate(&'a Announced),
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

    /// Invalidates tables after a write (or DDL): new tokens here at once (so this sidecar
    /// never serves an older result again), then in Redis with a message on the invalidation
    /// channel for every other sidecar. Works without Redis (L1 only); never fails. Call it
    /// after the write is committed (or, inside a transaction, at commit). `lsn`: the primary's
    /// WAL position at or after that commit (0 if unknown); it travels with the new tokens so
    /// that every sidecar demands it of the replicas whose results it caches.
    pub async fn invalidate(&self, tables: &[&str], lsn: u64) {
        self.invalidate_announced(tables, lsn, Announced::default())
            .await;
    }

    /// Announces a write to `tables` before the request that may commit it is sent (step 8 of
    /// the module doc): their entries are retired everywhere and no fill of them is stored
    /// until the write is invalidated again with the returned [`Announced`] (or
    /// [`INTENT_HOLD`] passes). Returns once every other member of the fleet has applied it.
    pub async fn announce(&self, tables: &[&str]) -> Announced {
        if !self.inner.cfg.enabled && self.inner.l2.is_none() {
            return Announced::default();
        }
        let since = Some(std::time::Instant::now());
        let uniq = dedup(tables);
        let ids = self.inner.bump_tables(&uniq, 0, Bump::Announce).await;
        Announced { ids, since }
    }

    /// Announces again the tables of a write still in flight (`announced` is due:
    /// [`Announced::renewal_due`]). A commit can wait for a synchronous standby for longer
    /// than [`INTENT_HOLD`] (one just restarted, still catching up, is not yet a synchronous
    /// one) while a replica that applied it already shows it: were the announcement let
    /// expire, a fill from that replica could be stored and served before the primary shows
    /// the commit, and a primary read after it would go back in time.
    pub async fn renew(&self, announced: &mut Announced) {
        if announced.is_empty() {
            return;
        }
        let since = std::time::Instant::now();
        let tables = dedup(&announced.ids.iter().map(|(t, _)| &**t).collect::<Vec<_>>());
        self.inner
            .bump_tables(&tables, 0, Bump::Renew(announced))
            .await;
        // Every table is held anew: the whole write is covered from now.
        announced.since = Some(since);
    }

    /// [`Cache::invalidate`] of a write announced with [`Cache::announce`]: also ends the
    /// announcement (its tables, if not among `tables`, are bumped too).
    pub async fn invalidate_announced(&self, tables: &[&str], lsn: u64, announced: Announced) {
        let mut uniq = dedup(tables);
        for (t, _) in &announced.ids {
            if !uniq.contains(&&**t) {
                uniq.push(t);
            }
        }
        self.inner
            .bump_tables(&uniq, lsn, Bump::Invalidate(&announced))
            .await;
        self.inner.end_local(&announced);
    }

    /// Waits (at most [`INTENT_HOLD`]) until the writes announced now on `tables` (None: on
    /// any table) have ended: committed and invalidated, or given up. Under synchronous
    /// replication a commit is visible on a standby that applied it before it is on the
    /// primary (the primary shows it once a synchronous standby's acknowledgement came back):
    /// a session that read it on a replica and reads the primary next would go back in time.
    /// Returns whether it had to wait.
    pub async fn await_writes_in_flight(&self, tables: Option<&[&str]>) -> bool {
        let tokens = &self.inner.tokens;
        let pending = tokens.outstanding(tables);
        if pending.is_empty() {
            return false;
        }
        // A commit a standby already shows is done on the primary once a synchronous standby
        // acknowledged it: usually a reply later, but a standby that just restarted counts only
        // once it caught up (found by the long run under `remote_apply`: a lease was not
        // enough). The bound is the announcement's own life, renewed while the write is in
        // flight; a reader waits at most that.
        let deadline = Instant::now() + INTENT_HOLD;
        loop {
            let ended = tokens.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !tokens.any_outstanding(&pending) || Instant::now() >= deadline {
                return true;
            }
            // Expiry is by time, not by a wake-up: look again now and then.
            let _ = tokio::time::timeout(Duration::from_millis(5), ended).await;
        }
    }

    /// An announced write that did not commit, or whose outcome is unknown: its tables are
    /// invalidated again (without a position, in the background) to end the announcement.
    pub fn abandon(&self, announced: Announced) {
        if announced.is_empty() {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            let tables: Vec<Arc<str>> = announced.ids.iter().map(|(t, _)| t.clone()).collect();
            let refs: Vec<&str> = tables.iter().map(|t| &**t).collect();
            cache.invalidate_announced(&refs, 0, announced).await;
        });
    }

    /// Invalidates everything, in every sidecar sharing Redis: admin `INVALIDATE ALL` (`lsn`
    /// 0), or a committed write whose tables are unknown (its commit position).
    pub async fn invalidate_all(&self, lsn: u64) {
        let none = Announced::default();
        self.inner
            .bump_tables(&[GLOBAL], lsn, Bump::Invalidate(&none))
            .await;
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

    /// Bumps the tables' tokens, here and (with Redis) for every sidecar, and returns once
    /// every other member has applied the messages. `ends`: None announces a write (the bumps
    /// are marked as intents, noted here, and the published tokens returned as their ids);
    /// Some ends those of its announcements that are among `tables` (the commit's bump).
    async fn bump_tables(&self, tables: &[&str], lsn: u64, bump: Bump<'_>) -> Vec<(Arc<str>, u64)> {
        for t in tables {
            self.learned(t, lsn);
        }
        let epoch = self.tokens.epoch();
        let intent = matches!(bump, Bump::Announce);
        if let Bump::Renew(a) = bump {
            for (t, id) in &a.ids {
                self.tokens.note_own_intent(t, *id);
            }
        }
        // Noted before the local tokens move, so that no fill can be stored between the two.
        // With Redis the ids are the tokens published, known only once they moved: a
        // placeholder holds the tables meanwhile.
        let mut ids: Vec<(Arc<str>, u64)> = Vec::new();
        if intent {
            ids = tables
                .iter()
                .map(|t| (Arc::from(*t), rand::random()))
                .collect();
            for (t, id) in &ids {
                self.tokens.note_own_intent(t, *id);
            }
        }
        let pubs = self.tokens.local_invalidate(tables, self.l2.is_some());
        if intent && self.l2.is_some() {
            for (t, id) in &pubs {
                self.tokens.note_own_intent(t, *id);
            }
            for (t, placeholder) in std::mem::replace(&mut ids, pubs.clone()) {
                self.tokens.end_intent(&t, placeholder);
            }
        }
        for t in tables {
            self.l1.drop_table(t).await;
        }
        if let Bump::Invalidate(_) = bump {
            self.stats
                .invalidations
                .fetch_add(tables.len() as u64, Ordering::Relaxed);
        }
        let Some(l2) = &self.l2 else { return ids };
        {
            let mut own = self.own_tokens.lock();
            for (_, token) in &pubs {
                if own.len() >= OWN_TOKENS {
                    own.pop_front();
                }
                own.push_back(*token);
            }
        }
        let items: Vec<(Arc<str>, u64, Mark)> = pubs
            .iter()
            .map(|(t, token)| {
                let mark = match bump {
                    Bump::Announce => Mark::Intent,
                    Bump::Renew(a) => a.id_for(t).map_or(Mark::None, Mark::Renews),
                    Bump::Invalidate(a) => a.id_for(t).map_or(Mark::None, Mark::Ends),
                };
                (t.clone(), *token, mark)
            })
            .collect();
        match l2.bump(&self.env, &items, lsn).await {
            Ok(bumped) => {
                let mut waits = Vec::with_capacity(bumped.stored.len());
                for ((t, _), (tok, _receivers)) in pubs.iter().zip(bumped.stored) {
                    if self.tokens.observe(Some(epoch), t, tok.version, tok.token) {
                        self.l1.drop_table(t).await;
                    }
                    waits.push((&**t, tok.version));
                }
                self.await_acks(l2, &waits, bumped.others, bumped.me).await;
            }
            // The tables keep private tokens until their messages come back or a resync.
            Err(e) => {
                tracing::debug!(error = %e, ?tables, "cache: invalidation not published");
                // Nobody heard of this write: hold its client until no sidecar can still trust
                // what it learnt before Redis became unreachable.
                self.unannounced(l2).await;
            }
        }
        ids
    }

    /// Ends this sidecar's record of its own announcements (after their second bump).
    fn end_local(&self, announced: &Announced) {
        for (t, id) in &announced.ids {
            self.tokens.end_intent(t, *id);
        }
    }

    /// Waits until every other member of the fleet has applied the invalidation messages
    /// (`(table, version)`; `missing`: the other members the bump saw, `me`: whether this
    /// sidecar was one), fencing those silent for [`FENCE_AFTER`] and then waiting out
    /// their leases (see `fleet`): after this returns, no member can answer a read from
    /// before the write. The writer's client hears of the commit only then (its ReadyForQuery
    /// is held until this returns).
    ///
    /// Cost: no round trip at all without other members (the bump returned them); otherwise
    /// usually one or two Redis round trips (the members apply a message within about one). Only registered members count:
    /// a plain `SUBSCRIBE` on the channel, or a sidecar of an older release, is not waited for.
    async fn await_acks(&self, l2: &L2, waits: &[(&str, u64)], mut missing: Vec<String>, me: bool) {
        // Redis forgot the fleet (restart, flush) or fenced this sidecar, now (not a member)
        // or moments ago (a member again): members of the old set may not know yet and still
        // trust what they have.
        let forgotten = if me {
            Duration::ZERO
        } else {
            l2.fleet.forgotten_wait()
        };
        let wait = forgotten.max(l2.fleet.recent_loss_wait());
        if !wait.is_zero() {
            CacheStats::inc(&self.stats.unannounced_waits);
            tokio::time::sleep(wait).await;
        }
        let fence_at = Instant::now() + FENCE_AFTER;
        let mut pause = Duration::from_millis(1);
        let mut polls = 0u32;
        while !missing.is_empty() {
            let Ok(acked) = l2.acked(waits).await else {
                return self.unannounced(l2).await;
            };
            missing.retain(|m| !acked.iter().all(|set| set.contains(m)));
            if missing.is_empty() {
                return;
            }
            if Instant::now() >= fence_at {
                CacheStats::inc(&self.stats.ack_timeouts);
                self.stats
                    .fenced
                    .fetch_add(missing.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    ?missing,
                    ?waits,
                    "cache: sidecars did not acknowledge an invalidation in time; fenced (they flush their caches and rejoin)"
                );
                match l2.fence(&missing).await {
                    Ok(lease_left) => tokio::time::sleep(lease_left).await,
                    Err(_) => self.unannounced(l2).await,
                }
                return;
            }
            // The first polls go back to back (each is a Redis round trip, and
            // acknowledgements usually come within one); then the pause doubles up to 5 ms.
            polls += 1;
            if polls < 4 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause.min(fence_at.saturating_duration_since(Instant::now())))
                    .await;
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        }
    }

    /// Redis failed while a write's invalidation was being announced: wait until no member
    /// can still trust what it learnt before (see `fleet`).
    async fn unannounced(&self, l2: &L2) {
        let wait = l2.fleet.unannounced_wait();
        if !wait.is_zero() {
            CacheStats::inc(&self.stats.unannounced_waits);
            tokio::time::sleep(wait).await;
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
