//! `[cache]` configuration. Durations are written the way operators write them ("90s", "50ms").

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A `[cache]` setting `Cache::new` could not work with (reported at config load).
#[derive(Debug, thiserror::Error)]
pub enum CacheConfigError {
    #[error("cache.max_entry_bytes ({entry}) exceeds cache.l1_max_bytes ({l1})")]
    EntryAboveL1 { entry: usize, l1: u64 },
    /// A value out of its range; the message names the setting and the range.
    #[error("{0}")]
    Invalid(&'static str),
    #[error("cache.redis: invalid URL '{url}': {source}")]
    RedisUrl {
        url: String,
        source: redis::RedisError,
    },
}

/// Result-cache settings. Unknown keys are errors (a typo must not silently keep a default).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Master switch (default false): when off, `lookup` always misses and `fill` stores nothing.
    pub enabled: bool,
    /// TTL the caller uses when a statement has no TTL of its own (default 90 s).
    #[serde(with = "duration")]
    pub default_ttl: Duration,
    /// Longest TTL a `cache_ttl=` comment hint may ask for (default 5 min): hints are written
    /// by application developers, not the DBA, and a long one would keep serving a result whose
    /// invalidation is missed (a write the sidecar never sees). Rules' TTLs are not capped.
    #[serde(with = "duration")]
    pub max_hint_ttl: Duration,
    /// Bound of the in-process cache, in bytes of stored results plus overhead (default 64 MiB).
    pub l1_max_bytes: u64,
    /// Larger results are not cached (default 1 MiB).
    pub max_entry_bytes: usize,
    /// `redis://host:port`, or several comma-separated URLs (`redis://a,redis://b`) which mean
    /// the seed nodes of a Redis Cluster. None: L1 only, no cross-sidecar invalidation.
    pub redis: Option<String>,
    /// Force Redis Cluster mode even with a single URL (default false).
    pub cluster: bool,
    /// Bound of every Redis call, including connecting (default 50 ms).
    #[serde(with = "duration")]
    pub redis_timeout: Duration,
    /// Prefix of every Redis key (default "pgsidecar").
    pub key_prefix: String,
    /// Consecutive Redis failures that open the circuit breaker (default 5).
    pub breaker_failures: u32,
    /// How long an open breaker bypasses Redis before one probe (default 5 s).
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
    /// Pub/sub channel carrying invalidations (default "pgsidecar:invalidate").
    pub invalidation_channel: String,
    /// Longest a lookup waits for another task's in-flight fill of the same key before it runs
    /// the query itself (default 2 s).
    #[serde(with = "duration")]
    pub flight_wait: Duration,
    /// A secret shared by the sidecars of a fleet (at least 32 characters; default none). Set,
    /// every entry written to Redis carries an HMAC-SHA256 of its Redis key and content, and an
    /// entry read back is served only if it verifies: whoever can write to Redis without the
    /// key can flush or evict entries, never have a forged or moved one served to a client.
    /// Sidecars with and without it (or with another key) share no entries.
    pub signing_key: Option<String>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            default_ttl: Duration::from_secs(90),
            max_hint_ttl: Duration::from_secs(300),
            l1_max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
            redis: None,
            cluster: false,
            redis_timeout: Duration::from_millis(50),
            key_prefix: "pgsidecar".into(),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            invalidation_channel: "pgsidecar:invalidate".into(),
            flight_wait: Duration::from_secs(2),
            signing_key: None,
        }
    }
}

impl CacheConfig {
    /// The Redis URLs, split on commas (empty when Redis is not configured).
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis
            .as_deref()
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Cluster mode: the `cluster` flag, or more than one URL.
    pub fn is_cluster(&self) -> bool {
        self.cluster || self.redis_urls().len() > 1
    }

    /// Checks what `Cache::new` cannot report (it never fails): call at config load.
    pub fn validate(&self) -> Result<(), CacheConfigError> {
        use CacheConfigError as E;
        if self.max_entry_bytes as u64 > self.l1_max_bytes {
            return Err(E::EntryAboveL1 {
                entry: self.max_entry_bytes,
                l1: self.l1_max_bytes,
            });
        }
        if self.max_entry_bytes > u32::MAX as usize / 2 {
            return Err(E::Invalid("cache.max_entry_bytes must be below 2 GiB"));
        }
        if self.redis_timeout.is_zero() {
            return Err(E::Invalid("cache.redis_timeout must be positive"));
        }
        if self.breaker_failures == 0 {
            return Err(E::Invalid("cache.breaker_failures must be at least 1"));
        }
        if self.key_prefix.is_empty() || self.invalidation_channel.is_empty() {
            return Err(E::Invalid(
                "cache.key_prefix and cache.invalidation_channel must not be empty",
            ));
        }
        if self.signing_key.as_ref().is_some_and(|k| k.len() < 32) {
            return Err(E::Invalid(
                "cache.signing_key must be at least 32 characters",
            ));
        }
        if self.redis.is_some() {
            let urls = self.redis_urls();
            if urls.is_empty() {
                return Err(E::Invalid("cache.redis is set but holds no URL"));
            }
            for u in &urls {
                redis::Client::open(u.as_str()).map_err(|source| E::RedisUrl {
                    url: u.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

/// `humantime` durations for serde (the crate's `config::duration` is private to `config`).
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration '{s}': {e}")))
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signing_key_shorter_than_32_characters_is_refused() {
        let short = CacheConfig {
            signing_key: Some("too short".into()),
            ..CacheConfig::default()
        };
        assert!(short
            .validate()
            .unwrap_err()
            .to_string()
            .contains("signing_key"));
        let fine = CacheConfig {
            signing_key: Some("x".repeat(32)),
            ..CacheConfig::default()
        };
        assert!(fine.validate().is_ok());
    }
}
