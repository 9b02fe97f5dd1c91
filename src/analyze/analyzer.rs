//! [`Analyzer`]: the analysis cache in front of [`analyze`] — by exact text, and by shape (a
//! string whose normalized form was analysed before reuses that analysis as a template with
//! its own literals), bounded by weight, with a doorkeeper so one-off literals do not evict.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use xxhash_rust::xxh3::xxh3_128;

use super::templates::{instantiate, Templates};
use super::{
    build_core, cache, finalize, lexer, not_analysed, uncertain, Analysis, FunctionCatalog,
    LexSettings, DEFAULT_MAX_ANALYZED,
};

/// Sizes of the [`Analyzer`] caches.
#[derive(Debug, Clone)]
pub struct AnalyzerConfig {
    /// Approximate bytes of analyses cached by exact text.
    pub max_cached_bytes: usize,
    /// Approximate bytes of shape templates.
    pub max_template_bytes: usize,
    /// Strings longer than this are analyzed but never cached.
    pub max_cached_statement_len: usize,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        AnalyzerConfig {
            max_cached_bytes: 64 << 20,
            max_template_bytes: 16 << 20,
            max_cached_statement_len: 64 << 10,
        }
    }
}

/// Counters since creation (relaxed atomics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnalyzerStats {
    /// Exact-text cache hits.
    pub hits: u64,
    /// Analyses built from a cached shape (no parse).
    pub template_hits: u64,
    /// Full analyses (lex + parse + walk).
    pub misses: u64,
    pub cached_entries: usize,
    pub cached_templates: usize,
}

struct State {
    catalog: Arc<FunctionCatalog>,
    exact: cache::HashCache<Arc<Analysis>>,
    templates: Templates,
}

/// Cached analyzer. Cheap to share (`Arc<Analyzer>`); all methods take `&self`.
pub struct Analyzer {
    state: RwLock<Arc<State>>,
    config: AnalyzerConfig,
    hits: AtomicU64,
    template_hits: AtomicU64,
    misses: AtomicU64,
    /// Doorkeeper for the exact-text cache (see [`Analyzer::seen_before`]).
    seen: Box<[AtomicU64]>,
    /// Texts longer than this are not analysed at all (`routing.max_analyzed_statement`).
    max_analyzed: std::sync::atomic::AtomicUsize,
}

/// Doorkeeper slots: enough that a text repeated within a few thousand other new texts counts
/// as repeated.
const SEEN_SLOTS: usize = 4096;

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for Analyzer {
    fn default() -> Self {
        Analyzer::new(FunctionCatalog::builtin())
    }
}

impl Analyzer {
    pub fn new(catalog: FunctionCatalog) -> Analyzer {
        Analyzer::with_config(catalog, AnalyzerConfig::default())
    }

    pub fn with_config(catalog: FunctionCatalog, config: AnalyzerConfig) -> Analyzer {
        let state = Arc::new(State {
            catalog: Arc::new(catalog),
            exact: cache::HashCache::new(config.max_cached_bytes),
            templates: Templates::new(config.max_template_bytes),
        });
        Analyzer {
            state: RwLock::new(state),
            config,
            hits: AtomicU64::new(0),
            template_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            seen: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            max_analyzed: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_ANALYZED),
        }
    }

    /// Sets the longest text analysed (`routing.max_analyzed_statement`).
    pub fn set_max_analyzed(&self, bytes: usize) {
        self.max_analyzed.store(bytes, Ordering::Relaxed);
    }

    /// Analysis of `sql`, from cache when possible.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        let max = self.max_analyzed.load(Ordering::Relaxed);
        if sql.len() > max {
            // Texts this long are not cached either, so a client re-sending one would make the
            // proxy lex and parse it in full every time: it goes to the primary as it is.
            crate::metrics::security_event("limit_statement_not_analysed");
            return Arc::new(not_analysed(Arc::from(sql), max));
        }
        let key = xxh3_128(sql.as_bytes());
        let state = {
            let guard = self.state.read();
            if let Some(a) = guard.exact.get(key) {
                if &*a.sql == sql {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return a;
                }
            }
            guard.clone()
        };
        let cacheable = sql.len() <= self.config.max_cached_statement_len;
        let sql_arc: Arc<str> = Arc::from(sql);
        let lexed = lexer::lex(&sql_arc);
        let mut from_template = false;
        let result = if lexed.error.is_none() && cacheable {
            let mut norm = String::with_capacity(sql.len());
            super::normalize::normalize_into(&sql_arc, &lexed, &mut norm);
            match state.templates.get(&norm) {
                Ok(t) => {
                    self.template_hits.fetch_add(1, Ordering::Relaxed);
                    from_template = true;
                    instantiate(&t, norm, sql_arc, &lexed)
                }
                Err(shape) => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    let core = build_core(&sql_arc, &lexed, &state.catalog, Some(norm));
                    state.templates.store(shape, core, sql_arc, &lexed)
                }
            }
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            let core = build_core(&sql_arc, &lexed, &state.catalog, None);
            Arc::new(finalize(core, sql_arc, &lexed))
        };
        // A text built from a known template costs a few µs to analyse again; caching every one
        // of them (simple-protocol clients send each literal once) would evict the texts that do
        // repeat. Such a text is cached on its second sighting only.
        if cacheable && (!from_template || self.seen_before(key)) {
            state.exact.insert(
                key,
                result.clone(),
                sql.len() * 2 + 512 + result.literals.len() * 16,
            );
        }
        result
    }

    /// Remembers `key` in a small direct-mapped table (a TinyLFU-style doorkeeper); true when
    /// it was already there. Collisions only make a text wait for one more sighting.
    fn seen_before(&self, key: u128) -> bool {
        let fingerprint = (key as u64) | 1;
        let slot = &self.seen[((key >> 64) as usize) % self.seen.len()];
        slot.swap(fingerprint, Ordering::Relaxed) == fingerprint
    }

    /// Like [`Analyzer::analyze`] for wire bytes: no copy when they are valid UTF-8 (the usual
    /// case); otherwise the lossy conversion is analyzed.
    pub fn analyze_bytes(&self, sql: &[u8]) -> Arc<Analysis> {
        match std::str::from_utf8(sql) {
            Ok(s) => self.analyze(s),
            Err(_) => self.analyze(&String::from_utf8_lossy(sql)),
        }
    }

    /// Like [`Analyzer::analyze_bytes`] for a session whose settings may make the server lex
    /// `sql` differently from the analyzer (see [`LexSettings`]): text that cannot be lexed
    /// with certainty is analysed as unparseable, never cached. Other text has one meaning
    /// under every setting, so its cached analysis is shared.
    pub fn analyze_for(&self, sql: &[u8], lex: LexSettings) -> Arc<Analysis> {
        if !lex.is_standard() {
            if let Some(why) = lex.ambiguity(sql) {
                crate::metrics::analysis_uncertain();
                return uncertain(sql, why);
            }
        }
        self.analyze_bytes(sql)
    }

    /// Replaces the function catalog and drops every cached analysis (volatility may change).
    pub fn set_catalog(&self, catalog: FunctionCatalog) {
        let state = Arc::new(State {
            catalog: Arc::new(catalog),
            exact: cache::HashCache::new(self.config.max_cached_bytes),
            templates: Templates::new(self.config.max_template_bytes),
        });
        *self.state.write() = state;
    }

    pub fn catalog(&self) -> Arc<FunctionCatalog> {
        self.state.read().catalog.clone()
    }

    /// Drops every cached analysis.
    pub fn clear(&self) {
        let s = self.state.read().clone();
        s.exact.clear();
        s.templates.clear();
    }

    pub fn stats(&self) -> AnalyzerStats {
        let s = self.state.read().clone();
        AnalyzerStats {
            hits: self.hits.load(Ordering::Relaxed),
            template_hits: self.template_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            cached_entries: s.exact.len(),
            cached_templates: s.templates.len(),
        }
    }
}

#[cfg(test)]
mod doorkeeper_tests {
    use super::*;

    #[test]
    fn a_text_built_from_a_template_is_cached_on_its_second_sighting_only() {
        let an = Analyzer::default();
        an.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1");
        assert_eq!(
            an.stats().cached_entries,
            1,
            "a brand-new shape is cached at once"
        );
        let once = "SELECT abalance FROM pgbench_accounts WHERE aid = 2";
        an.analyze(once);
        assert_eq!(an.stats().template_hits, 1);
        assert_eq!(
            an.stats().cached_entries,
            1,
            "a one-off literal is not cached"
        );
        an.analyze(once);
        assert_eq!(an.stats().cached_entries, 2, "seen twice: cached");
        let hits = an.stats().hits;
        assert_eq!(an.analyze(once).sql(), once);
        assert_eq!(
            an.stats().hits,
            hits + 1,
            "the third sighting is an exact hit"
        );
    }
}
