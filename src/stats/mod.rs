//! Statement statistics (`SHOW QUERIES`, `RESET QUERIES`, `pgsidecar_query_*`): per normalized
//! statement shape, how often it ran, how long it took, how many rows it returned or changed,
//! where it was routed and why, what the result cache and the advisory locks did to it. A DBA
//! tunes routing rules with it: which shapes cost the primary most, which rule sent them there.
//!
//! Memory is bounded: at most `stats.max_queries` shapes are tracked, kept by the
//! *Space-Saving* algorithm (Metwally et al.) weighted by time: a new shape takes the place of
//! the shape with the least accumulated time and inherits that time as its `error` (an upper
//! bound on what it may have cost before it was tracked). Any shape that took more than
//! 1/N of the total time is guaranteed to be tracked; its counters are exact from the moment
//! it was (re)admitted, which `SHOW QUERIES` shows in `tracked_since_evicted_ms`.
//!
//! The hot path takes one of [`SHARDS`] small locks chosen by the shape's hash (never one
//! global lock), holds it for a map lookup and a few additions, and allocates only when a shape
//! is seen for the first time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::analyze::Analysis;

/// Independent parts of the table; a request locks only the one its shape hashes to.
pub const SHARDS: usize = 16;

/// The longest statement text kept per shape (the key is the hash of the whole text).
const MAX_TEXT: usize = 4096;

pub use crate::config::StatsConfig;

/// Where a request was answered from (defined with the series it labels).
pub use crate::metrics::Route;

/// What the result cache did for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Not looked up (not covered by a cache rule, or not cacheable).
    None,
    Hit,
    Miss,
}

/// One answered request, as the session saw it.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub route: Route,
    pub took: Duration,
    /// Rows returned or changed (the counts of its CommandCompletes).
    pub rows: u64,
    pub cache: CacheOutcome,
    /// Advisory-lock statements run for it, and how long they waited.
    pub lock_waits: u32,
    pub lock_wait: Duration,
    /// Why the router sent it there (the rule name is in `rule`).
    pub reason: &'a str,
    /// A later request of a transaction or pinned session: it went where that already was.
    pub later: bool,
    pub rule: Option<&'a str>,
}

/// The counters of one statement shape.
#[derive(Debug, Clone, Default)]
pub struct QueryEntry {
    pub text: Arc<str>,
    /// Space-Saving weight: `error` plus the time seen since admission, in µs.
    weight_us: u64,
    /// Time inherited from the shape this one evicted (0: tracked since the first call).
    pub error_us: u64,
    pub calls: u64,
    pub total_us: u64,
    pub max_us: u64,
    pub rows: u64,
    pub primary: u64,
    pub replica: u64,
    pub cache: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_fills: u64,
    pub cache_rejects: u64,
    pub lock_waits: u64,
    pub lock_wait_us: u64,
    pub last_reason: Option<Arc<str>>,
    pub last_later: bool,
    pub last_rule: Option<Arc<str>>,
}

impl QueryEntry {
    pub fn mean_ms(&self) -> f64 {
        self.total_us as f64 / 1000.0 / self.calls.max(1) as f64
    }

    /// Share of the backend-served calls that ran on a replica.
    pub fn replica_share(&self) -> f64 {
        self.replica as f64 / (self.primary + self.replica).max(1) as f64
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, QueryEntry>,
}

impl Shard {
    /// The entry for `key`, admitting it (and evicting the lightest one beyond `capacity`).
    fn entry(
        &mut self,
        key: u64,
        text: impl FnOnce() -> Arc<str>,
        capacity: usize,
    ) -> &mut QueryEntry {
        if !self.map.contains_key(&key) {
            let mut error = 0;
            while self.map.len() >= capacity.max(1) {
                let Some((&victim, v)) = self.map.iter().min_by_key(|(_, e)| e.weight_us) else {
                    break;
                };
                error = error.max(v.weight_us);
                self.map.remove(&victim);
                crate::metrics::query_evicted();
            }
            self.map.insert(
                key,
                QueryEntry {
                    text: text(),
                    weight_us: error,
                    error_us: error,
                    ..Default::default()
                },
            );
        }
        self.map.get_mut(&key).expect("just inserted")
    }
}

/// The statement statistics of the process. Cheap to share (`Context::queries`).
pub struct QueryStats {
    shards: Box<[Mutex<Shard>]>,
    /// Total shapes to keep (`stats.max_queries`), read at every admission: a reload applies
    /// at once (a shard over its share shrinks as new shapes arrive).
    capacity: AtomicUsize,
    reset_at: Mutex<SystemTime>,
}

impl Default for QueryStats {
    fn default() -> Self {
        QueryStats::new(StatsConfig::default().max_queries, SHARDS)
    }
}

/// The key and the text of a request's statements (joined as the slow-query log does).
fn shape(statements: &[Arc<Analysis>]) -> Option<(u64, String)> {
    match statements {
        [] => None,
        [one] => {
            let t = one.loggable_text();
            Some((xxhash_rust::xxh3::xxh3_64(t.as_bytes()), t.to_string()))
        }
        many => {
            let t: Vec<&str> = many.iter().map(|a| a.loggable_text()).collect();
            let t = t.join("; ");
            Some((xxhash_rust::xxh3::xxh3_64(t.as_bytes()), t))
        }
    }
}

/// The hash of a single statement's shape, without building its text.
fn key_of(statements: &[Arc<Analysis>]) -> Option<u64> {
    match statements {
        [one] => Some(xxhash_rust::xxh3::xxh3_64(one.loggable_text().as_bytes())),
        _ => shape(statements).map(|(k, _)| k),
    }
}

fn bounded(mut text: String) -> Arc<str> {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    Arc::from(text)
}

impl QueryStats {
    pub fn new(capacity: usize, shards: usize) -> QueryStats {
        QueryStats {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            capacity: AtomicUsize::new(capacity),
            reset_at: Mutex::new(SystemTime::now()),
        }
    }

    pub fn set_capacity(&self, n: usize) {
        self.capacity.store(n, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.capacity.load(Ordering::Relaxed) > 0
    }

    fn shard_capacity(&self) -> usize {
        self.capacity
            .load(Ordering::Relaxed)
            .div_ceil(self.shards.len())
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        &self.shards[(key >> 32) as usize % self.shards.len()]
    }

    /// Records one answered request.
    pub fn record(&self, statements: &[Arc<Analysis>], o: &Outcome<'_>) {
        if !self.enabled() {
            return;
        }
        let Some(key) = key_of(statements) else {
            return;
        };
        let us = u64::try_from(o.took.as_micros()).unwrap_or(u64::MAX);
        let cap = self.shard_capacity();
        let mut shard = self.shard(key).lock();
        let e = shard.entry(
            key,
            || bounded(shape(statements).map(|(_, t)| t).unwrap_or_default()),
            cap,
        );
        e.weight_us = e.weight_us.saturating_add(us);
        e.calls += 1;
        e.total_us = e.total_us.saturating_add(us);
        e.max_us = e.max_us.max(us);
        e.rows += o.rows;
        match o.route {
            Route::Primary => e.primary += 1,
            Route::Replica => e.replica += 1,
            Route::Cache => e.cache += 1,
        }
        match o.cache {
            CacheOutcome::None => {}
            CacheOutcome::Hit => e.cache_hits += 1,
            CacheOutcome::Miss => e.cache_misses += 1,
        }
        if o.lock_waits > 0 {
            e.lock_waits += u64::from(o.lock_waits);
            e.lock_wait_us += u64::try_from(o.lock_wait.as_micros()).unwrap_or(u64::MAX);
        }
        if e.last_reason.as_deref() != Some(o.reason) {
            e.last_reason = Some(Arc::from(o.reason));
        }
        e.last_later = o.later;
        if (o.rule.is_some() || !o.later) && e.last_rule.as_deref() != o.rule {
            e.last_rule = o.rule.map(Arc::from);
        }
    }

    /// A cache miss of this statement ended: its answer was offered to the cache (`filled`) or
    /// not (an error, too big, or a replica behind the writes it must reflect).
    pub fn cache_fill(&self, statement: &Arc<Analysis>, filled: bool) {
        if !self.enabled() {
            return;
        }
        let key = xxhash_rust::xxh3::xxh3_64(statement.loggable_text().as_bytes());
        if let Some(e) = self.shard(key).lock().map.get_mut(&key) {
            if filled {
                e.cache_fills += 1;
            } else {
                e.cache_rejects += 1;
            }
        }
    }

    /// Every tracked shape, most total time first.
    pub fn snapshot(&self) -> Vec<QueryEntry> {
        let mut all: Vec<QueryEntry> = Vec::new();
        for s in self.shards.iter() {
            all.extend(s.lock().map.values().cloned());
        }
        all.sort_by(|a, b| b.total_us.cmp(&a.total_us).then(a.text.cmp(&b.text)));
        all
    }

    /// The entry of one statement's shape, if tracked.
    pub fn get(&self, statement: &Arc<Analysis>) -> Option<QueryEntry> {
        let key = key_of(std::slice::from_ref(statement))?;
        self.shard(key).lock().map.get(&key).cloned()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `RESET QUERIES`: forgets every shape.
    pub fn reset(&self) {
        for s in self.shards.iter() {
            s.lock().map.clear();
        }
        *self.reset_at.lock() = SystemTime::now();
    }

    pub fn reset_at(&self) -> SystemTime {
        *self.reset_at.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{analyze, FunctionCatalog};

    fn outcome(ms: u64) -> Outcome<'static> {
        Outcome {
            route: Route::Replica,
            took: Duration::from_millis(ms),
            rows: 1,
            cache: CacheOutcome::None,
            lock_waits: 0,
            lock_wait: Duration::ZERO,
            reason: "provably read-only",
            later: false,
            rule: None,
        }
    }

    fn stmt(i: usize) -> Arc<Analysis> {
        analyze(
            &format!("SELECT * FROM t{i} WHERE id = {i}"),
            &FunctionCatalog::builtin(),
        )
    }

    #[test]
    fn literals_do_not_make_new_shapes() {
        let s = QueryStats::new(10, 1);
        let cat = FunctionCatalog::builtin();
        for id in 0..5 {
            s.record(
                &[analyze(&format!("SELECT * FROM t WHERE id = {id}"), &cat)],
                &outcome(1),
            );
        }
        let all = s.snapshot();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].calls, 5);
        assert_eq!(all[0].rows, 5);
        assert_eq!(&*all[0].text, "select * from t where id = ?");
    }

    #[test]
    fn eviction_keeps_at_most_max_queries_shapes() {
        let s = QueryStats::new(64, SHARDS);
        for i in 0..10_000 {
            s.record(&[stmt(i)], &outcome(1));
        }
        assert!(s.len() <= 64, "{} shapes tracked", s.len());
        assert!(s.len() >= 64 - SHARDS, "{} shapes tracked", s.len());
    }

    #[test]
    fn a_heavy_shape_survives_a_flood_of_light_ones() {
        // Space-Saving: a shape with more than 1/N of the total time is never evicted.
        let s = QueryStats::new(8, 1);
        let heavy = stmt(1_000_000);
        for i in 0..2_000 {
            s.record(&[stmt(i)], &outcome(1));
            if i % 10 == 0 {
                s.record(std::slice::from_ref(&heavy), &outcome(50));
            }
        }
        assert_eq!(s.len(), 8);
        let top = &s.snapshot()[0];
        assert_eq!(&*top.text, heavy.loggable_text());
        assert_eq!(top.calls, 200, "the heavy shape was never evicted");
        assert_eq!(top.error_us, 0);
    }

    #[test]
    fn an_admitted_shape_inherits_the_evicted_weight_as_its_error() {
        let s = QueryStats::new(1, 1);
        s.record(&[stmt(1)], &outcome(3));
        s.record(&[stmt(2)], &outcome(1));
        let all = s.snapshot();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].calls, 1);
        assert_eq!(all[0].error_us, 3000);
    }

    #[test]
    fn shrinking_the_capacity_applies_at_the_next_admission() {
        let s = QueryStats::new(10, 1);
        for i in 0..10 {
            s.record(&[stmt(i)], &outcome(1));
        }
        s.set_capacity(3);
        s.record(&[stmt(99)], &outcome(1));
        assert_eq!(s.len(), 3);
        s.set_capacity(0);
        s.record(&[stmt(100)], &outcome(1));
        assert_eq!(s.len(), 3, "0 turns recording off");
    }

    #[test]
    fn reset_forgets_everything() {
        let s = QueryStats::new(10, 4);
        s.record(&[stmt(1)], &outcome(1));
        s.cache_fill(&stmt(1), true);
        assert_eq!(s.snapshot()[0].cache_fills, 1);
        s.reset();
        assert!(s.is_empty());
    }

    #[test]
    fn ordered_by_total_time() {
        let s = QueryStats::new(10, 4);
        s.record(&[stmt(1)], &outcome(1));
        s.record(&[stmt(2)], &outcome(5));
        s.record(&[stmt(3)], &outcome(2));
        let t: Vec<u64> = s.snapshot().iter().map(|e| e.total_us).collect();
        assert_eq!(t, vec![5000, 2000, 1000]);
    }
}
