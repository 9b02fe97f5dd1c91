//! Requests the proxy itself sends upstream, by destination and purpose:
//! `pgsidecar_upstream_round_trips_total{to, why}` and the `round_trips_*` rows of `SHOW STATS`.
//!
//! Why: the write path's cost is mostly round trips the client waits for (issue #18): the
//! commit-position capture, advisory locks, settings sync, Redis token bumps, membership reads
//! and acknowledgement polls. Counting each of them per purpose shows what a transaction costs
//! beyond the client's own requests, and a test can pin that cost so a regression shows.
//!
//! Postgres purposes ending in `_queued` travel in the same write as the client's own request
//! (Postgres answers in order): they cost the server a statement but the client no extra
//! round trip. Every Redis call is one round trip (a script counts once, whatever it does).
//! Counting is one relaxed atomic add: the counters are resolved once, not looked up by label.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TripLabels {
    pub to: &'static str,
    pub why: &'static str,
}

/// A request the proxy sends on its own account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trip {
    /// `SELECT pg_current_wal_insert_lsn()` sent after the write's answer: its own round trip.
    Capture,
    /// The same, queued right behind the request that commits.
    CaptureQueued,
    /// Advisory-lock statement queued in the same write as the statement it guards.
    LockQueued,
    /// The `COMMIT` closing an autocommit request wrapped in BEGIN … COMMIT for its locks.
    WrapCommitQueued,
    /// `SET …` bringing a backend to the client's settings, queued ahead of its request.
    SettingsQueued,
    /// The reset after code that may leave session state behind (sent behind the answer).
    Reset,
    /// Redis: entry and tokens of a lookup that missed L1.
    RedisLookup,
    /// Redis: creating tables' missing tokens.
    RedisCreateTokens,
    /// Redis: storing an entry.
    RedisFill,
    /// Redis: replacing a write's tokens (and publishing them), one script for all its tables.
    RedisInvalidate,
    /// Redis: announcing a write before its commit (the same script, marked as an intent).
    RedisAnnounce,
    /// Redis: reading the writes announced and not yet ended, on joining the fleet.
    RedisIntents,
    /// Redis: reading the fleet's members apart from a bump.
    RedisMembers,
    /// Redis: polling acknowledgements of a write's messages.
    RedisAcks,
    /// Redis: fencing silent members.
    RedisFence,
    /// Redis: acknowledging another sidecar's message (subscriber, off the client's path).
    RedisAck,
    /// Redis: joining or renewing the lease (subscriber, off the client's path).
    RedisLease,
    /// Redis: leaving the fleet.
    RedisLeave,
}

impl Trip {
    pub const ALL: [Trip; 18] = [
        Trip::Capture,
        Trip::CaptureQueued,
        Trip::LockQueued,
        Trip::WrapCommitQueued,
        Trip::SettingsQueued,
        Trip::Reset,
        Trip::RedisLookup,
        Trip::RedisCreateTokens,
        Trip::RedisFill,
        Trip::RedisInvalidate,
        Trip::RedisAnnounce,
        Trip::RedisIntents,
        Trip::RedisMembers,
        Trip::RedisAcks,
        Trip::RedisFence,
        Trip::RedisAck,
        Trip::RedisLease,
        Trip::RedisLeave,
    ];

    pub fn to(self) -> &'static str {
        match self {
            Trip::Capture
            | Trip::CaptureQueued
            | Trip::LockQueued
            | Trip::WrapCommitQueued
            | Trip::SettingsQueued
            | Trip::Reset => "postgres",
            _ => "redis",
        }
    }

    pub fn why(self) -> &'static str {
        match self {
            Trip::Capture => "capture",
            Trip::CaptureQueued => "capture_queued",
            Trip::LockQueued => "lock_queued",
            Trip::WrapCommitQueued => "wrap_commit_queued",
            Trip::SettingsQueued => "settings_queued",
            Trip::Reset => "reset",
            Trip::RedisLookup => "lookup",
            Trip::RedisCreateTokens => "create_tokens",
            Trip::RedisFill => "fill",
            Trip::RedisInvalidate => "invalidate",
            Trip::RedisAnnounce => "announce",
            Trip::RedisIntents => "intents",
            Trip::RedisMembers => "members",
            Trip::RedisAcks => "acks",
            Trip::RedisFence => "fence",
            Trip::RedisAck => "ack",
            Trip::RedisLease => "lease",
            Trip::RedisLeave => "leave",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub(super) struct RoundTrips {
    pub(super) family: Family<TripLabels, Counter>,
    counters: Vec<Counter>,
}

pub(super) static TRIPS: LazyLock<RoundTrips> = LazyLock::new(|| {
    let family = Family::<TripLabels, Counter>::default();
    let counters = Trip::ALL
        .iter()
        .map(|t| {
            family
                .get_or_create(&TripLabels {
                    to: t.to(),
                    why: t.why(),
                })
                .clone()
        })
        .collect();
    RoundTrips { family, counters }
});

/// Counts one request of purpose `t`.
#[inline]
pub fn count(t: Trip) {
    TRIPS.counters[t.index()].inc();
}

/// Every purpose with its count so far, for `SHOW STATS`.
pub fn totals() -> Vec<(Trip, u64)> {
    Trip::ALL
        .iter()
        .map(|t| (*t, TRIPS.counters[t.index()].get()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_purpose_has_its_own_counter_in_declaration_order() {
        for (i, t) in Trip::ALL.iter().enumerate() {
            assert_eq!(t.index(), i, "{t:?}");
        }
        let before = totals();
        count(Trip::RedisInvalidate);
        let after = totals();
        for ((t, b), (_, a)) in before.iter().zip(&after) {
            let want = u64::from(*t == Trip::RedisInvalidate);
            assert!(a - b >= want, "{t:?}");
        }
    }
}
