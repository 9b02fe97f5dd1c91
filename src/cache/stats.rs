//! Counters of the cache: plain atomics, exported by the metrics module.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use super::breaker::BreakerState;

/// Live counters (monotonic unless noted). Read them with `Ordering::Relaxed`.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub l1_hits: AtomicU64,
    pub l2_hits: AtomicU64,
    /// Lookups that returned `Miss`.
    pub misses: AtomicU64,
    /// Lookups that waited for another task's fill of the same key.
    pub flight_waits: AtomicU64,
    /// Waits that gave up after `flight_wait` and returned their own `Miss`.
    pub flight_timeouts: AtomicU64,
    /// Fills stored in L1.
    pub fills: AtomicU64,
    /// Fills also stored in Redis.
    pub l2_writes: AtomicU64,
    /// Entries read from Redis and refused for their signature (`cache.signing_key`): unsigned,
    /// signed with another key, or changed (forged, or moved to another key).
    pub l2_bad_signatures: AtomicU64,
    pub rejected_invalidated: AtomicU64,
    pub rejected_too_large: AtomicU64,
    pub rejected_lagging: AtomicU64,
    /// Tables invalidated by this sidecar (`invalidate`; `invalidate_all` counts one).
    pub invalidations: AtomicU64,
    /// Invalidation messages received on the pub/sub channel (own ones included).
    pub invalidation_messages: AtomicU64,
    /// Writes whose invalidation some member did not acknowledge within `FENCE_AFTER` (those
    /// members were fenced and their leases waited out: see `cache::fleet`).
    pub ack_timeouts: AtomicU64,
    /// Members fenced by this sidecar's writes.
    pub fenced: AtomicU64,
    /// Writes held because their invalidation could not be announced (Redis unreachable).
    pub unannounced_waits: AtomicU64,
    /// Times this sidecar joined the fleet (the first join, and each after losing its lease).
    pub fleet_joins: AtomicU64,
    /// L1 flushes because invalidations may have been missed (pub/sub connected or lost).
    pub resyncs: AtomicU64,
    /// L1 entries evicted for size.
    pub evictions: AtomicU64,
    /// L1 entries expired (TTL).
    pub expirations: AtomicU64,
    /// Failed or timed-out Redis calls.
    pub redis_errors: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opens: AtomicU64,
    /// Gauge: the invalidation subscriber is connected.
    pub pubsub_connected: AtomicBool,
}

impl CacheStats {
    #[inline]
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A point-in-time copy of the counters, plus L1 size and the breaker state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheStatsSnapshot {
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    pub flight_waits: u64,
    pub flight_timeouts: u64,
    pub fills: u64,
    pub l2_writes: u64,
    pub l2_bad_signatures: u64,
    pub rejected_invalidated: u64,
    pub rejected_too_large: u64,
    pub rejected_lagging: u64,
    pub invalidations: u64,
    pub invalidation_messages: u64,
    pub ack_timeouts: u64,
    pub fenced: u64,
    pub unannounced_waits: u64,
    pub fleet_joins: u64,
    pub resyncs: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub redis_errors: u64,
    pub breaker_opens: u64,
    /// Bytes (weighted size) in L1; moka updates it lazily.
    pub l1_bytes: u64,
    pub l1_entries: u64,
    /// Tables with a known token.
    pub tables: u64,
    /// None when Redis is not configured.
    pub breaker: Option<BreakerState>,
    pub pubsub_connected: bool,
    /// This sidecar holds a lease in the fleet sharing Redis (see `cache::fleet`).
    pub in_fleet: bool,
    /// Members of the fleet (this one included) at the last renewal.
    pub fleet_members: u64,
}

impl CacheStats {
    pub(crate) fn snapshot(
        &self,
        l1_bytes: u64,
        l1_entries: u64,
        tables: u64,
        breaker: Option<BreakerState>,
        fleet: (bool, u64),
    ) -> CacheStatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStatsSnapshot {
            l1_hits: r(&self.l1_hits),
            l2_hits: r(&self.l2_hits),
            misses: r(&self.misses),
            flight_waits: r(&self.flight_waits),
            flight_timeouts: r(&self.flight_timeouts),
            fills: r(&self.fills),
            l2_writes: r(&self.l2_writes),
            l2_bad_signatures: r(&self.l2_bad_signatures),
            rejected_invalidated: r(&self.rejected_invalidated),
            rejected_too_large: r(&self.rejected_too_large),
            rejected_lagging: r(&self.rejected_lagging),
            invalidations: r(&self.invalidations),
            invalidation_messages: r(&self.invalidation_messages),
            ack_timeouts: r(&self.ack_timeouts),
            fenced: r(&self.fenced),
            unannounced_waits: r(&self.unannounced_waits),
            fleet_joins: r(&self.fleet_joins),
            resyncs: r(&self.resyncs),
            evictions: r(&self.evictions),
            expirations: r(&self.expirations),
            redis_errors: r(&self.redis_errors),
            breaker_opens: r(&self.breaker_opens),
            l1_bytes,
            l1_entries,
            tables,
            breaker,
            pubsub_connected: self.pubsub_connected.load(Ordering::Relaxed),
            in_fleet: fleet.0,
            fleet_members: fleet.1,
        }
    }
}

impl CacheStatsSnapshot {
    /// Each event counter under the `event` label of `pgsidecar_cache_events_total`.
    pub fn events(&self) -> [(&'static str, u64); 19] {
        [
            ("l1_hit", self.l1_hits),
            ("l2_hit", self.l2_hits),
            ("miss", self.misses),
            ("fill", self.fills),
            ("l2_write", self.l2_writes),
            ("l2_bad_signature", self.l2_bad_signatures),
            ("invalidation", self.invalidations),
            ("invalidation_message", self.invalidation_messages),
            ("invalidation_ack_timeout", self.ack_timeouts),
            ("fenced", self.fenced),
            ("unannounced_wait", self.unannounced_waits),
            ("fleet_join", self.fleet_joins),
            ("resync", self.resyncs),
            ("eviction", self.evictions),
            ("expiration", self.expirations),
            ("flight_wait", self.flight_waits),
            ("flight_timeout", self.flight_timeouts),
            ("redis_error", self.redis_errors),
            ("breaker_open", self.breaker_opens),
        ]
    }

    /// Each rejected-fill counter: its `reason` label and the series it advances.
    pub fn rejected(&self) -> [(&'static str, &'static str, u64); 3] {
        [
            (
                "invalidated",
                "rejected_invalidated",
                self.rejected_invalidated,
            ),
            ("too_large", "rejected_too_large", self.rejected_too_large),
            ("lagging", "rejected_lagging", self.rejected_lagging),
        ]
    }
}
