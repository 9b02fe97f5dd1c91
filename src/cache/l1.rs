//! L1: the in-process cache (moka's future cache: the crate enables moka's `future` feature
//! only), bounded by bytes, with a per-entry TTL.
//!
//! Entries are immutable `Arc<L1Entry>` (a hit clones one Arc, then the `Bytes`). An index
//! table → keys allows eager removal on invalidation; it only frees memory sooner: correctness
//! comes from the token check at lookup, so the index may be briefly incomplete.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache as Moka;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::Expiry;
use parking_lot::Mutex;

use super::key::CacheKey;
use super::stats::CacheStats;
use super::tokens::{Snap, GLOBAL};

pub(crate) struct L1Entry {
    pub bytes: Bytes,
    /// Tokens at fill time, [`GLOBAL`] included.
    pub tables: Box<[Snap]>,
    pub ttl: Duration,
    /// When the entry was made: the near cache ends it at `filled + ttl`, as L1 does.
    pub filled: Instant,
}

/// Per-entry TTL: the one given at insert (an update replaces it too).
struct PerEntryTtl;

impl Expiry<CacheKey, Arc<L1Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, v: &Arc<L1Entry>, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        v: &Arc<L1Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

type Index = Mutex<HashMap<Arc<str>, HashSet<CacheKey>>>;

pub(crate) struct L1 {
    cache: Moka<CacheKey, Arc<L1Entry>>,
    index: Arc<Index>,
    /// Per-worker recent hits in front of moka; flushed with it.
    pub(crate) near: super::near::Near,
}

/// Weight of an entry: its bytes plus a rough per-entry overhead.
fn weight(v: &L1Entry) -> u32 {
    let tables: usize = v.tables.iter().map(|s| s.table.len() + 48).sum();
    (v.bytes.len() + tables + 128).min(u32::MAX as usize) as u32
}

impl L1 {
    pub(crate) fn new(max_bytes: u64, stats: Arc<CacheStats>) -> L1 {
        let index: Arc<Index> = Arc::default();
        let idx = index.clone();
        let cache = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|_k, v: &Arc<L1Entry>| weight(v))
            .expire_after(PerEntryTtl)
            .eviction_listener(move |k: Arc<CacheKey>, v: Arc<L1Entry>, cause| {
                match cause {
                    RemovalCause::Size => stats.evictions.fetch_add(1, Ordering::Relaxed),
                    RemovalCause::Expired => stats.expirations.fetch_add(1, Ordering::Relaxed),
                    // The new value of a replaced key is indexed on insert.
                    RemovalCause::Replaced => return,
                    RemovalCause::Explicit => 0,
                };
                let mut index = idx.lock();
                for s in v.tables.iter() {
                    if let Some(set) = index.get_mut(&*s.table) {
                        set.remove(&*k);
                        if set.is_empty() {
                            index.remove(&*s.table);
                        }
                    }
                }
            })
            .build();
        L1 {
            cache,
            index,
            // A quarter of L1's budget: the maps mostly share L1's entries (one Arc each);
            // what they hold beyond L1 (entries L1 evicted since) stays within this.
            near: super::near::Near::new(max_bytes / 4),
        }
    }

    #[inline]
    pub(crate) async fn get(&self, key: &CacheKey) -> Option<Arc<L1Entry>> {
        self.cache.get(key).await
    }

    pub(crate) async fn insert(&self, key: CacheKey, entry: Arc<L1Entry>) {
        {
            let mut index = self.index.lock();
            for s in entry.tables.iter().filter(|s| &*s.table != GLOBAL) {
                index.entry(s.table.clone()).or_default().insert(key);
            }
        }
        self.cache.insert(key, entry).await;
    }

    /// Removes `key` only if it still holds this very entry (a newer fill may have replaced it).
    pub(crate) async fn remove_if_same(&self, key: &CacheKey, entry: &Arc<L1Entry>) {
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|cur| {
                let op = match cur {
                    Some(e) if Arc::ptr_eq(e.value(), entry) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Eagerly removes the entries that depend on `table` (all of them for [`GLOBAL`]).
    pub(crate) async fn drop_table(&self, table: &str) {
        if table == GLOBAL {
            return self.clear();
        }
        let keys = self.index.lock().remove(table);
        for k in keys.into_iter().flatten() {
            self.cache.invalidate(&k).await;
        }
    }

    pub(crate) fn clear(&self) {
        self.near.flush();
        self.index.lock().clear();
        self.cache.invalidate_all();
    }

    pub(crate) async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}
