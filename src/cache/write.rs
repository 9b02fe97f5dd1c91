//! The write side of the cache (steps 6–8 of the module doc of `super`): a write's tables
//! announced before its commit and held in every member until it ends (renewed while it is in
//! flight), invalidated after it with the commit position, and the other members'
//! acknowledgements awaited before the writer's client hears of the commit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::fleet::FENCE_AFTER;
use super::l2::L2;
use super::stats::CacheStats;
use super::stored::Mark;
use super::tokens::{GLOBAL, INTENT_HOLD};
use super::{dedup, Cache, Inner, OWN_TOKENS};

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

impl Cache {
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
}

impl Inner {
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
}
