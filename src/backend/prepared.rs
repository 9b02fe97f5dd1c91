//! Which proxy-wide prepared statements a backend connection holds, bounded by LRU.
//!
//! A hand-written map instead of the `lru` crate: the set is small (hundreds), eviction is
//! rare, and eviction must skip statements the current request still needs — a constraint a
//! generic LRU does not express.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// Schema generation of the whole process: bumped when DDL through the sidecar concludes (and
/// when a backend says a plan or type went away). A statement prepared on a backend before
/// the current generation may have been planned against objects that are gone (an enum
/// dropped and recreated has a new OID; Postgres then fails with `cache lookup failed`), so
/// it is closed and parsed again before its next use. Process-wide rather than per database:
/// DDL is rare, and re-preparing after it costs one Parse per statement and backend.
static SCHEMA_EPOCH: AtomicU64 = AtomicU64::new(0);

/// DDL concluded (or a backend reported a stale plan): every statement prepared so far is
/// re-prepared before its next use.
pub fn schema_changed() {
    let was = SCHEMA_EPOCH.fetch_add(1, Ordering::AcqRel);
    tracing::debug!(
        epoch = was + 1,
        "schema changed: prepared statements are parsed again before reuse"
    );
    crate::metrics::schema_epoch_bumped();
}

fn epoch() -> u64 {
    SCHEMA_EPOCH.load(Ordering::Acquire)
}

/// The current schema epoch (statements prepared by clients remember theirs).
pub fn current_epoch() -> u64 {
    epoch()
}

#[derive(Default, Debug)]
pub struct PreparedSet {
    /// Name → (last use tick, schema epoch when its Parse was sent).
    names: HashMap<Bytes, (u64, u64)>,
    tick: u64,
}

impl PreparedSet {
    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.contains_key(name)
    }

    /// Present and parsed after the last schema change: safe to use as it is.
    pub fn fresh(&self, name: &[u8]) -> bool {
        self.names.get(name).is_some_and(|&(_, e)| e >= epoch())
    }

    /// Present but parsed before the last schema change: to be closed and parsed again.
    pub fn stale(&self, name: &[u8]) -> bool {
        self.names.get(name).is_some_and(|&(_, e)| e < epoch())
    }

    /// Marks `name` as present and recently used (a new entry: its Parse is being sent now);
    /// returns the current tick so callers can protect everything touched by one request from
    /// eviction.
    pub fn touch(&mut self, name: &Bytes) -> u64 {
        self.tick += 1;
        let tick = self.tick;
        self.names
            .entry(name.clone())
            .and_modify(|e| e.0 = tick)
            .or_insert((tick, epoch()));
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
            .filter(|(_, &(t, _))| t < protect_from)
            .min_by_key(|(_, &(t, _))| t)?
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

    #[test]
    fn statements_parsed_before_a_schema_change_are_stale() {
        let mut s = PreparedSet::default();
        let a = Bytes::from_static(b"a");
        s.touch(&a);
        assert!(s.fresh(b"a") && !s.stale(b"a"));
        schema_changed();
        assert!(s.stale(b"a") && !s.fresh(b"a"));
        s.touch(&a); // used again: still the old Parse
        assert!(s.stale(b"a"));
        s.remove(b"a");
        s.touch(&a); // parsed again
        assert!(s.fresh(b"a"));
    }
}
