//! Fleet membership: which sidecars a write must wait for, and when this sidecar may trust
//! what it has learnt by pub/sub.
//!
//! Why: another sidecar serves L1 hits against tokens, and routes reads against commit
//! positions, that it learns from the invalidation channel. A writer's client must not hear of
//! its commit while some sidecar could still answer a read from before it. Counting PUBLISH's
//! receivers and waiting a bounded time for their acknowledgements is not enough: a receiver
//! that is slow past the bound serves the old row (the CI failure "other sidecar read 4.00
//! after 5.00 was acknowledged"), one that lost its subscription is not counted at all, and
//! anyone may SUBSCRIBE without acknowledging. So trust is made explicit, with leases (as in
//! lease-based cache invalidation: the writer waits for an acknowledgement *or* for the lease
//! of the silent holder to run out):
//!
//! - A sidecar is a **member** while its entry in the sorted set `{prefix}:fleet` (score: the
//!   lease's end, Redis clock, ms) is current. Only the invalidation subscriber renews it, every
//!   [`RENEW_EVERY`] and only while subscribed, so a member whose messages stop being processed
//!   also stops renewing. Locally a sidecar trusts its L1 and its learnt positions only until
//!   its **local lease** ends: the instant it *sent* the renewal plus [`LEASE`] (before Redis
//!   granted it, so never later than Redis's end).
//! - A writer waits until every other current member has acknowledged its messages (`SADD` to
//!   `{prefix}:ack:{table}:{version}`). A member still silent after [`FENCE_AFTER`] is
//!   **fenced**: removed from the set (its next renewal fails, and it flushes everything and
//!   joins again), and the writer waits until the lease Redis last granted it has ended. So a
//!   write waits at most `FENCE_AFTER + LEASE` even with a member hung, and no acknowledged
//!   write can be followed by a stale answer from a member.
//! - When Redis cannot be reached the writer cannot publish: it waits until [`LEASE`] after the
//!   failure began (every lease granted before is over by then), then acknowledges.
//! - A sidecar out of the fleet (starting, subscription lost, fenced, lease expired) serves no
//!   L1 hit (L2 hits are checked against tokens read from Redis in the same round trip, so they
//!   stay) and, with `read_your_writes = "sidecar"`, reads go to the primary until it has joined
//!   again and caught up with the primary's current position (see `crate::route::lsn`).
//!
//! Not covered: a sidecar cut off from Redis while the others still reach it. Its writes are
//! not announced; the others learn of them through NOTIFY (`sql/invalidation.sql`) or the TTL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long a renewal keeps a member trusted.
pub const LEASE: Duration = Duration::from_millis(1000);

/// How often the subscriber renews this sidecar's lease: a quarter of it, so one or two lost
/// renewals (a busy CPU, a slow Redis reply) do not end it.
pub const RENEW_EVERY: Duration = Duration::from_millis(250);

/// How long a writer waits for a member's acknowledgement before fencing it. A live sidecar
/// answers in well under a millisecond when it gets the CPU; on a loaded 2-core machine
/// 50 ms was too short for 10–15 % of writes. Fencing costs the fenced sidecar its L1.
pub const FENCE_AFTER: Duration = Duration::from_millis(500);

/// Margin taken off the local lease for clock rates (the sidecar's monotonic clock against
/// Redis's): generous, since a lease is renewed four times over its life.
const MARGIN: Duration = Duration::from_millis(50);

/// Joins (score = now + lease) or renews: `ARGV[1]` member, `ARGV[2]` lease ms, `ARGV[3]`
/// "join" or "renew". A renewal of a member that is no longer there (fenced, expired and
/// purged, Redis flushed) fails: it returns -1, and the sidecar must resync before joining.
/// Expired members are purged on the way. Returns the number of current members otherwise.
pub(crate) const LEASE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == 'renew' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]) + 60000)
return redis.call('ZCARD', KEYS[1])
";

/// The current members with their lease ends, and the Redis clock (ms):
/// `{now, member1, end1, member2, end2, …}`.
pub(crate) const MEMBERS_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
local m = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #m do out[#out + 1] = m[i] end
return out
";

/// Fences the members `ARGV`: removes them, and returns how many ms remain of the longest
/// lease Redis had granted them (0 if none is left). A member no longer in the set (Redis
/// flushed it away, or it left) has an unknown lease: `2^31` stands for "the longest a lease
/// can run" (`L2::fence` caps the answer at [`LEASE`]).
pub(crate) const FENCE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = now
for i = 1, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s then
    if tonumber(s) > last then last = tonumber(s) end
    redis.call('ZREM', KEYS[1], ARGV[i])
  else
    last = now + 2147483648
  end
end
return last - now
";

/// This sidecar's side of the membership: its name and its local lease.
pub(crate) struct Fleet {
    /// Unique per process: the pid and random bits (a restarted process is a new member).
    pub(crate) id: String,
    /// Where the local lease ends, as ms after `base` (0: no lease).
    lease_end_ms: AtomicU64,
    /// Counts the joins, so routing can tell it has caught up with the latest one.
    joins: AtomicU64,
    /// Current members (this one included) at the last renewal, for `SHOW CACHE`.
    pub(crate) members: AtomicU64,
    /// When Redis calls began failing (ms after `base`; 0: they do not), for writers that
    /// cannot publish (see the module doc).
    failing_since_ms: AtomicU64,
    /// When this sidecar last left the fleet by [`Fleet::lost`] (ms after `base`; 0: never).
    lost_at_ms: AtomicU64,
    /// When its last join was sent (ms after `base`; 0: never joined).
    joined_at_ms: AtomicU64,
    base: Instant,
}

impl Fleet {
    pub(crate) fn new() -> Fleet {
        Fleet {
            id: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            lease_end_ms: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            members: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            lost_at_ms: AtomicU64::new(0),
            joined_at_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// ms since `base`, never 0 (0 means "none" in the atomics).
    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64 + 1
    }

    /// True while this sidecar's lease runs: what it learnt by pub/sub is complete up to now.
    #[inline]
    pub(crate) fn trusted(&self) -> bool {
        self.trusted_at(Instant::now())
    }

    fn trusted_at(&self, now: Instant) -> bool {
        let end = self.lease_end_ms.load(Ordering::Acquire);
        end != 0 && self.ms(now) < end
    }

    /// A renewal (or join) sent at `sent` was granted.
    pub(crate) fn granted(&self, sent: Instant, joined: bool, members: u64) {
        if joined {
            self.joined_at_ms.store(self.ms(sent), Ordering::Relaxed);
            self.joins.fetch_add(1, Ordering::AcqRel);
        }
        self.members.store(members, Ordering::Relaxed);
        let end = self.ms(sent + LEASE.saturating_sub(MARGIN));
        self.lease_end_ms.store(end, Ordering::Release);
    }

    /// The lease is over (fenced, subscription lost, shutting down).
    pub(crate) fn lost(&self) {
        self.lost_at(Instant::now())
    }

    fn lost_at(&self, now: Instant) {
        self.lease_end_ms.store(0, Ordering::Release);
        self.lost_at_ms.store(self.ms(now), Ordering::Relaxed);
    }

    /// A writer found this sidecar missing from the fleet's set: it is out of the fleet
    /// (starting, fenced, its subscription lost) or Redis lost the set (restarted, flushed).
    /// Either way the set may have been flushed moments ago, dropping members that still
    /// trust leases granted before the flush, and a writer outside the set cannot tell: wait
    /// until every lease granted before now is over. (Before, a writer that had lost its own
    /// lease counted from that loss: the second long consistency run found a sidecar,
    /// reconnecting after a Redis restart and not yet joined, acknowledging a write right
    /// after a FLUSHALL while the other sidecar, joined to the restarted Redis just before the
    /// flush, still trusted its lease and read the old row on a replica.) Cost: a write made
    /// outside the fleet (about a renewal interval after start or a fault) waits a lease.
    pub(crate) fn forgotten_wait(&self) -> Duration {
        LEASE
    }

    /// How long a writer must still wait because this sidecar lost its lease less than
    /// [`LEASE`] ago, even if it has joined again since. The loss may mean Redis forgot the
    /// whole fleet (restarted empty, flushed): a writer that rejoined the new set at once sees
    /// itself as a member and nobody else, while members of the forgotten set that have not
    /// noticed yet still trust leases granted before. Those were all granted before this
    /// sidecar noticed its own loss, so they are over [`LEASE`] after it. (The long
    /// consistency run found this: stale reads through the other sidecar right after a Redis
    /// restart, when the writer had rejoined before writing.)
    pub(crate) fn recent_loss_wait(&self) -> Duration {
        self.recent_loss_wait_at(Instant::now())
    }

    ///
    /// The same holds for a sidecar that joined less than [`LEASE`] ago, whatever it lost
    /// before: the set it joined may have been flushed (or Redis restarted empty) just before,
    /// while members of the old set still trust leases it granted, ending at most [`LEASE`]
    /// after the flush, so before its join plus [`LEASE`]. (The second long consistency run
    /// found this: a sidecar reconnected after a Redis restart joined right after a FLUSHALL,
    /// saw itself alone, and acknowledged a write the other sidecar, still trusting its lease
    /// from before the flush, read old through a replica.) Cost: writes within a lease of a
    /// sidecar's (re)join, at start or after a fault, wait out the rest of it.
    fn recent_loss_wait_at(&self, at: Instant) -> Duration {
        let since = self
            .lost_at_ms
            .load(Ordering::Relaxed)
            .max(self.joined_at_ms.load(Ordering::Relaxed));
        match since {
            0 => Duration::ZERO,
            since => Duration::from_millis(
                (since + LEASE.as_millis() as u64).saturating_sub(self.ms(at)),
            ),
        }
    }

    /// The number of the join the current lease belongs to; None while out of the fleet.
    pub(crate) fn join_seq(&self) -> Option<u64> {
        self.join_seq_at(Instant::now())
    }

    fn join_seq_at(&self, at: Instant) -> Option<u64> {
        self.trusted_at(at)
            .then(|| self.joins.load(Ordering::Acquire))
    }

    /// Records the outcome of a Redis call.
    pub(crate) fn redis_answered(&self, ok: bool) {
        self.redis_answered_at(ok, Instant::now())
    }

    fn redis_answered_at(&self, ok: bool, at: Instant) {
        if ok {
            if self.failing_since_ms.load(Ordering::Relaxed) != 0 {
                self.failing_since_ms.store(0, Ordering::Relaxed);
            }
        } else {
            let now = self.ms(at);
            let _ = self.failing_since_ms.compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// How long a writer that could not publish must still wait: until every lease that Redis
    /// may have granted before it became unreachable is over.
    pub(crate) fn unannounced_wait(&self) -> Duration {
        self.unannounced_wait_at(Instant::now())
    }

    fn unannounced_wait_at(&self, at: Instant) -> Duration {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        let now = self.ms(at);
        let since = if since == 0 { now } else { since };
        Duration::from_millis((since + LEASE.as_millis() as u64).saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lease_is_trusted_until_it_ends_counted_from_when_the_renewal_was_sent() {
        let f = Fleet::new();
        let t0 = Instant::now();
        assert!(!f.trusted_at(t0), "no lease before the first join");
        assert_eq!(f.join_seq_at(t0), None);
        // Sent at t0, granted 300 ms later: the lease still counts from t0.
        f.granted(t0, true, 2);
        let end = t0 + LEASE - MARGIN;
        assert!(f.trusted_at(t0 + 300 * MS));
        assert_eq!(f.join_seq_at(t0 + 300 * MS), Some(1));
        assert!(f.trusted_at(end - 2 * MS));
        assert!(!f.trusted_at(end + MS), "the lease ended");
        assert_eq!(f.join_seq_at(end + MS), None);
        f.granted(end, false, 2);
        assert_eq!(f.join_seq_at(end + MS), Some(1), "a renewal is not a join");
        f.lost_at(end + MS);
        assert!(!f.trusted_at(end + 2 * MS));
    }

    #[test]
    fn a_writer_that_rejoined_right_after_losing_its_lease_still_waits_out_the_old_leases() {
        let f = Fleet::new();
        let t0 = Instant::now();
        assert_eq!(
            f.recent_loss_wait_at(t0),
            Duration::ZERO,
            "never joined, never lost"
        );
        f.granted(t0, true, 2);
        f.lost_at(t0 + 1100 * MS);
        f.granted(t0 + 1120 * MS, true, 1);
        assert!(f.trusted_at(t0 + 1130 * MS), "a member again");
        assert_eq!(f.recent_loss_wait_at(t0 + 1130 * MS), LEASE - 10 * MS);
        assert_eq!(
            f.recent_loss_wait_at(t0 + 1120 * MS + LEASE),
            Duration::ZERO
        );
    }

    /// A sidecar that joins a set Redis lost moments before (flushed, restarted empty) sees
    /// itself alone while the old set's members still trust their leases: whatever it lost
    /// before, it waits out a lease from its join.
    #[test]
    fn a_writer_that_joined_less_than_a_lease_ago_waits_out_the_rest_of_it() {
        let f = Fleet::new();
        let t0 = Instant::now();
        f.lost_at(t0);
        f.granted(t0 + 1300 * MS, true, 1);
        assert_eq!(f.recent_loss_wait_at(t0 + 1310 * MS), LEASE - 10 * MS);
        assert_eq!(
            f.recent_loss_wait_at(t0 + 1300 * MS + LEASE),
            Duration::ZERO
        );
        // Renewals are not joins: they start no wait.
        f.granted(t0 + 3000 * MS, false, 1);
        assert_eq!(f.recent_loss_wait_at(t0 + 3000 * MS), Duration::ZERO);
    }

    #[test]
    fn a_writer_that_cannot_publish_waits_until_every_earlier_lease_is_over() {
        let f = Fleet::new();
        let t0 = Instant::now();
        assert_eq!(f.unannounced_wait_at(t0), LEASE, "failing from now on");
        f.redis_answered_at(false, t0);
        f.redis_answered_at(false, t0 + 400 * MS);
        assert_eq!(f.unannounced_wait_at(t0 + 400 * MS), LEASE - 400 * MS);
        assert_eq!(f.unannounced_wait_at(t0 + LEASE + MS), Duration::ZERO);
        f.redis_answered_at(true, t0 + LEASE);
        assert_eq!(
            f.unannounced_wait_at(t0 + LEASE),
            LEASE,
            "a new failure starts anew"
        );
    }
}
