//! Which proxy-wide prepared statements a backend connection holds, bounded by LRU.
//!
//! A hand-written map instead of the `lru` crate: the set is small (hundreds), eviction is
//! rare, and eviction must skip statements the current request still needs — a constraint a
//! generic LRU does not express.

use std::collections::HashMap;

use bytes::Bytes;

#[derive(Default, Debug)]
pub struct PreparedSet {
    names: HashMap<Bytes, u64>,
    tick: u64,
}

impl PreparedSet {
    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.contains_key(name)
    }

    /// Marks `name` as present and recently used; returns the current tick so callers can
    /// protect everything touched by one request from eviction.
    pub fn touch(&mut self, name: &Bytes) -> u64 {
        self.tick += 1;
        self.names.insert(name.clone(), self.tick);
        self.tick
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.names.remove(name);
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Picks the least recently used statement not touched since `protect_from`, when the set
    /// is over `cap`. The caller closes it on the backend.
    pub fn evict_candidate(&mut self, cap: usize, protect_from: u64) -> Option<Bytes> {
        if self.names.len() <= cap {
            return None;
        }
        let victim = self
            .names
            .iter()
            .filter(|(_, &t)| t < protect_from)
            .min_by_key(|(_, &t)| t)?
            .0
            .clone();
        self.names.remove(&victim);
        Some(victim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_takes_the_least_recently_used_unprotected_name() {
        let mut s = PreparedSet::default();
        let a = Bytes::from_static(b"a");
        let b = Bytes::from_static(b"b");
        let c = Bytes::from_static(b"c");
        s.touch(&a);
        s.touch(&b);
        let protect = s.touch(&c);
        s.touch(&a);
        assert_eq!(s.evict_candidate(2, protect), Some(b.clone()));
        assert!(!s.contains(b"b"));
        assert_eq!(s.evict_candidate(2, protect), None);
    }
}
