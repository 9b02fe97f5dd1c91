//! A small sharded, weight-bounded cache keyed by a 128-bit hash, with CLOCK (second chance)
//! eviction. Reads take a shard read lock and set an atomic "referenced" bit; no allocation.
//!
//! (moka's `sync` cache is not enabled in this crate's features; this keeps the hot path to a
//! hash, a read lock and an `Arc` clone.)

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

const SHARDS: usize = 16;

/// The keys are already uniformly distributed hashes: use their low bits.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
}

struct Entry<V> {
    value: V,
    weight: usize,
    referenced: AtomicBool,
}

struct Shard<V> {
    map: HashMap<u128, Entry<V>, BuildHasherDefault<IdentityHasher>>,
    ring: VecDeque<u128>,
    weight: usize,
}

pub(crate) struct HashCache<V> {
    shards: Box<[RwLock<Shard<V>>]>,
    max_weight_per_shard: usize,
}

impl<V: Clone> HashCache<V> {
    pub(crate) fn new(max_weight: usize) -> HashCache<V> {
        let shards = (0..SHARDS)
            .map(|_| {
                RwLock::new(Shard {
                    map: HashMap::default(),
                    ring: VecDeque::new(),
                    weight: 0,
                })
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        HashCache {
            shards,
            max_weight_per_shard: (max_weight / SHARDS).max(1),
        }
    }

    #[inline]
    fn shard(&self, key: u128) -> &RwLock<Shard<V>> {
        &self.shards[((key >> 64) as usize) % SHARDS]
    }

    pub(crate) fn get(&self, key: u128) -> Option<V> {
        let s = self.shard(key).read();
        let e = s.map.get(&key)?;
        if !e.referenced.load(Ordering::Relaxed) {
            e.referenced.store(true, Ordering::Relaxed);
        }
        Some(e.value.clone())
    }

    pub(crate) fn insert(&self, key: u128, value: V, weight: usize) {
        if weight > self.max_weight_per_shard {
            return;
        }
        let mut s = self.shard(key).write();
        let s = &mut *s;
        if let Some(old) = s.map.insert(
            key,
            Entry {
                value,
                weight,
                referenced: AtomicBool::new(false),
            },
        ) {
            s.weight -= old.weight;
        } else {
            s.ring.push_back(key);
        }
        s.weight += weight;
        let mut budget = s.ring.len() * 2 + 1;
        while s.weight > self.max_weight_per_shard && budget > 0 {
            budget -= 1;
            let Some(k) = s.ring.pop_front() else { break };
            match s.map.get(&k) {
                None => {}
                Some(e) if e.referenced.load(Ordering::Relaxed) && k != key => {
                    e.referenced.store(false, Ordering::Relaxed);
                    s.ring.push_back(k);
                }
                Some(_) => {
                    if let Some(e) = s.map.remove(&k) {
                        s.weight -= e.weight;
                    }
                }
            }
        }
    }

    pub(crate) fn clear(&self) {
        for sh in self.shards.iter() {
            let mut s = sh.write();
            s.map.clear();
            s.ring.clear();
            s.weight = 0;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map.len()).sum()
    }

    #[allow(dead_code)]
    pub(crate) fn weight(&self) -> usize {
        self.shards.iter().map(|s| s.read().weight).sum()
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn evicts_to_stay_within_weight_and_keeps_referenced_entries() {
        let c: HashCache<u32> = HashCache::new(16 * 10);
        // All keys in shard 0 (high 64 bits = 0).
        for i in 0..10u128 {
            c.insert(i, i as u32, 1);
        }
        assert_eq!(c.get(0), Some(0));
        for i in 10..20u128 {
            c.insert(i, i as u32, 1);
        }
        assert!(c.weight() <= 10);
        assert_eq!(c.get(0), Some(0), "referenced entry survives one sweep");
        assert_eq!(c.get(19), Some(19));
        c.clear();
        assert_eq!(c.len(), 0);
    }
}
