//! The near cache: a small per-worker map in front of L1 holding the entries that worker hit
//! recently.
//!
//! Why: a moka lookup records the read for its admission and expiry policies, which costs
//! about a microsecond and touches state shared by every worker; on a cache-hit workload that
//! was ~11 % of the proxy's CPU (perf, pgbench point lookups). A hit here is a hash lookup
//! behind an uncontended lock. It changes nothing about correctness: an entry found here is
//! served only after the same checks as an L1 hit (its tables' tokens are current, its TTL has
//! not run out), and a flush of L1 (INVALIDATE ALL, reconnect after missed invalidations)
//! empties every near map too. Its memory is bounded per worker by entry count and bytes.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::key::CacheKey;
use super::l1::L1Entry;
use crate::analyze::IdentityHasher;

/// Entries per worker: the hot set of a skewed workload. At 1,024 a zipf(1.1) lookup over
/// 80,000 keys found its entry here for only about two thirds of its hits and went to moka for
/// the rest (moka was ~11 % of the proxy's CPU on that workload); 16,384 covers ~90 % of such
/// a workload's requests. The byte budget below bounds it too.
const MAX_ENTRIES: usize = 16 * 1024;
/// One map per session worker, plus one shared by every other thread.
const SLOTS: usize = 32;

#[derive(Default)]
struct Map {
    /// [`Near::flushes`] when this map was last emptied.
    generation: u64,
    bytes: usize,
    entries: HashMap<u128, Arc<L1Entry>, BuildHasherDefault<IdentityHasher>>,
}

pub(crate) struct Near {
    slots: Box<[Mutex<Map>]>,
    flushes: AtomicU64,
    max_bytes: usize,
}

impl Near {
    /// `max_bytes` is shared out between the maps in use (one per session worker, plus one).
    pub(crate) fn new(max_bytes: u64) -> Near {
        Near {
            slots: (0..SLOTS).map(|_| Mutex::default()).collect(),
            flushes: AtomicU64::new(0),
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Each map's share of the budget: the workers run (their number is known only once they
    /// have started, after the cache was built), plus the map of every other thread.
    fn max_bytes_per_slot(&self) -> usize {
        let maps = crate::workers::count().min(SLOTS - 1) + 1;
        self.max_bytes / maps
    }

    fn slot(&self) -> parking_lot::MutexGuard<'_, Map> {
        let worker = crate::workers::current();
        let i = if worker == crate::workers::MAIN {
            SLOTS - 1
        } else {
            worker % (SLOTS - 1)
        };
        let mut map = self.slots[i].lock();
        let flushes = self.flushes.load(Ordering::Acquire);
        if map.generation != flushes {
            map.entries.clear();
            map.bytes = 0;
            map.generation = flushes;
        }
        map
    }

    /// The entry this worker last saw for `key`, if its TTL has not run out. The caller still
    /// checks its tokens.
    pub(crate) fn get(&self, key: &CacheKey) -> Option<Arc<L1Entry>> {
        let mut map = self.slot();
        let e = map.entries.get(&key.0)?.clone();
        if e.filled.elapsed() < e.ttl {
            return Some(e);
        }
        map.bytes = map.bytes.saturating_sub(e.bytes.len());
        map.entries.remove(&key.0);
        None
    }

    /// Remembers an entry this worker just hit in L1.
    pub(crate) fn put(&self, key: &CacheKey, e: &Arc<L1Entry>) {
        let size = e.bytes.len();
        let max_bytes = self.max_bytes_per_slot();
        if size > max_bytes / 16 {
            return; // a large entry would push out many small ones; L1 serves it
        }
        let mut map = self.slot();
        while map.entries.len() >= MAX_ENTRIES || map.bytes + size > max_bytes {
            // Any victim will do: the map holds only recent hits, and a victim still in L1
            // costs one L1 lookup to come back.
            let Some(victim) = map.entries.keys().next().copied() else {
                break;
            };
            if let Some(old) = map.entries.remove(&victim) {
                map.bytes = map.bytes.saturating_sub(old.bytes.len());
            }
        }
        if let Some(old) = map.entries.insert(key.0, e.clone()) {
            map.bytes = map.bytes.saturating_sub(old.bytes.len());
        }
        map.bytes += size;
    }

    /// Empties every worker's map (each does so at its next access).
    pub(crate) fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops `key` from this worker's map (its entry turned out stale).
    pub(crate) fn forget(&self, key: &CacheKey) {
        let mut map = self.slot();
        if let Some(old) = map.entries.remove(&key.0) {
            map.bytes = map.bytes.saturating_sub(old.bytes.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn entry(len: usize, ttl: Duration) -> Arc<L1Entry> {
        Arc::new(L1Entry {
            bytes: bytes::Bytes::from(vec![0u8; len]),
            tables: Box::new([]),
            ttl,
            filled: Instant::now(),
        })
    }

    #[test]
    fn serves_until_ttl_or_flush_and_stays_within_bounds() {
        // Tests run without session workers: one map in use, with the whole budget.
        let near = Near::new(64 * 1024);
        let long = entry(100, Duration::from_secs(60));
        near.put(&CacheKey(1), &long);
        assert!(near.get(&CacheKey(1)).is_some());
        near.put(&CacheKey(2), &entry(100, Duration::ZERO));
        assert!(
            near.get(&CacheKey(2)).is_none(),
            "expired entries are not served"
        );
        near.flush();
        assert!(near.get(&CacheKey(1)).is_none(), "a flush empties the map");
        near.put(&CacheKey(3), &entry(64 * 1024, Duration::from_secs(60)));
        assert!(
            near.get(&CacheKey(3)).is_none(),
            "large entries stay in L1 only"
        );
        for k in 0..(MAX_ENTRIES as u128 + 10) {
            near.put(&CacheKey(k), &long);
        }
        let map = near.slot();
        assert!(map.entries.len() <= MAX_ENTRIES);
        assert!(map.bytes <= 64 * 1024);
        assert_eq!(map.bytes, map.entries.len() * 100);
    }
}
