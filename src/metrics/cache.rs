//! The result cache's own counters (`crate::cache::CacheStats`) as Prometheus series.
//!
//! The cache keeps plain atomics because it is also used without this registry (tests, the
//! admin console's `SHOW CACHE`). At scrape time the counters here advance by what the cache
//! counted since the previous scrape, so they stay true Prometheus counters (`rate()` and
//! resets behave) without the cache knowing about Prometheus.

use std::collections::HashMap;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    pub reason: &'static str,
}

pub struct CacheMetrics {
    events: Family<EventLabel, Counter>,
    rejected: Family<RejectLabel, Counter>,
    l1_bytes: Gauge,
    l1_entries: Gauge,
    /// The snapshot values already added to the counters, by series.
    seen: Mutex<HashMap<&'static str, u64>>,
}

impl CacheMetrics {
    pub fn register(registry: &mut Registry) -> CacheMetrics {
        let m = CacheMetrics {
            events: Family::default(),
            rejected: Family::default(),
            l1_bytes: Gauge::default(),
            l1_entries: Gauge::default(),
            seen: Mutex::default(),
        };
        registry.register(
            "cache_events",
            "Result-cache events: l1_hit, l2_hit, miss, fill, l2_write, l2_bad_signature (an entry \
             refused: cache.signing_key), invalidation (tables), \
             invalidation_message (pub/sub), invalidation_ack_timeout (a write fenced silent \
             sidecars), fenced (sidecars fenced), unannounced_wait (a write held: Redis \
             unreachable), fleet_join, resync (L1 flushed after possibly missed invalidations), eviction, expiration, flight_wait, flight_timeout, redis_error, \
             breaker_open",
            m.events.clone(),
        );
        registry.register(
            "cache_rejected_fills",
            "Cache fills refused, by reason (invalidated: a write raced the query; too_large; \
             lagging: the replica had not replayed the tables' last writes)",
            m.rejected.clone(),
        );
        registry.register(
            "cache_l1_bytes",
            "Bytes held by the in-process cache (moka's weighted size)",
            m.l1_bytes.clone(),
        );
        registry.register(
            "cache_l1_entries",
            "Entries in the in-process cache",
            m.l1_entries.clone(),
        );
        m
    }

    /// Brings the series up to the totals given (the cache names them:
    /// `CacheStatsSnapshot::events` and `rejected`).
    pub fn observe(
        &self,
        events: &[(&'static str, u64)],
        rejected: &[(&'static str, &'static str, u64)],
        l1_bytes: u64,
        l1_entries: u64,
    ) {
        let mut seen = self.seen.lock();
        let mut advance = |series: &'static str, counter: &Counter, now: u64| {
            let before = seen.insert(series, now).unwrap_or(0);
            counter.inc_by(now.saturating_sub(before));
        };
        for &(event, now) in events {
            advance(
                event,
                &self.events.get_or_create(&EventLabel { event }),
                now,
            );
        }
        for &(reason, series, now) in rejected {
            advance(
                series,
                &self.rejected.get_or_create(&RejectLabel { reason }),
                now,
            );
        }
        self.l1_bytes
            .set(i64::try_from(l1_bytes).unwrap_or(i64::MAX));
        self.l1_entries
            .set(i64::try_from(l1_entries).unwrap_or(i64::MAX));
    }
}
