//! Per-session memo of what every execution of the same statement would otherwise recompute on
//! the hot path: its routing intent (rule matching with globs and regexes, reason strings) and
//! the names its tables' cache tokens live under (one `format!` per table).
//!
//! Why it is exact: an intent depends only on the statement's analysis (immutable, shared by
//! statement text), the compiled rules (replaced as a whole on reload) and who asks. An entry
//! keeps the very `Arc`s it was computed from and is used only while both are the same objects
//! and user, database and application_name (which `SET` can change) are equal, so a reload or
//! a re-analysis simply misses. Rule hit counters (`SHOW RULES`) still count every use.
//!
//! Bounded: a few entries per session, replaced round robin; an application cycling through
//! more statements than that only loses the saving, never correctness.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::analyze::Analysis;
use crate::route::{self, Intent, Rules, Who};

/// Statements remembered per session.
const SLOTS: usize = 16;

struct IntentEntry {
    analysis: Arc<Analysis>,
    rules: Arc<Rules>,
    user: String,
    database: String,
    application_name: String,
    intent: Arc<Intent>,
    /// The rule that matched, counted again on every use.
    rule: Option<usize>,
}

/// The tables a statement reads: plain names (the write log's and the fill's) and the names
/// their cache tokens live under in this session's database.
pub(super) struct CacheTables {
    pub names: Arc<[String]>,
    pub keyed: Arc<[String]>,
}

struct TablesEntry {
    analysis: Arc<Analysis>,
    database: String,
    tables: Arc<CacheTables>,
}

/// A small round-robin list (linear search over at most [`SLOTS`] pointer comparisons is
/// cheaper than hashing here).
struct Ring<T> {
    items: Vec<T>,
    next: usize,
}

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Ring {
            items: Vec::new(),
            next: 0,
        }
    }
}

impl<T> Ring<T> {
    fn put(&mut self, item: T) {
        if self.items.len() < SLOTS {
            self.items.push(item);
        } else {
            self.items[self.next] = item;
            self.next = (self.next + 1) % SLOTS;
        }
    }
}

/// Behind a mutex only because the session's `&self` methods use it; one session's task is
/// the only user, so it is never contended.
#[derive(Default)]
pub(super) struct Memo {
    intents: Mutex<Ring<IntentEntry>>,
    tables: Mutex<Ring<TablesEntry>>,
}

impl Memo {
    /// `route::classify` of the request, remembered for single-statement requests.
    pub(super) fn intent(
        &self,
        analyses: &[Arc<Analysis>],
        rules: &Arc<Rules>,
        who: &Who<'_>,
    ) -> Arc<Intent> {
        let [a] = analyses else {
            return Arc::new(route::classify(analyses, rules, who));
        };
        let mut ring = self.intents.lock();
        if let Some(e) = ring.items.iter().find(|e| {
            Arc::ptr_eq(&e.analysis, a)
                && Arc::ptr_eq(&e.rules, rules)
                && e.user == who.user
                && e.database == who.database
                && e.application_name == who.application_name
        }) {
            if let Some(i) = e.rule {
                rules.count_hit(i);
            }
            return e.intent.clone();
        }
        // For one statement, `classify` is `classify_one`.
        let (intent, rule) = route::classify_one_indexed(a, rules, who);
        let intent = Arc::new(intent);
        ring.put(IntentEntry {
            analysis: a.clone(),
            rules: rules.clone(),
            user: who.user.to_owned(),
            database: who.database.to_owned(),
            application_name: who.application_name.to_owned(),
            intent: intent.clone(),
            rule,
        });
        intent
    }

    /// The tables `a` reads, for the cache, in `database`.
    pub(super) fn cache_tables(&self, a: &Arc<Analysis>, database: &str) -> Arc<CacheTables> {
        let mut ring = self.tables.lock();
        if let Some(e) = ring
            .items
            .iter()
            .find(|e| Arc::ptr_eq(&e.analysis, a) && e.database == database)
        {
            return e.tables.clone();
        }
        let names: Arc<[String]> = a.tables_read.iter().map(|t| t.name.clone()).collect();
        let keyed: Arc<[String]> = names
            .iter()
            .map(|t| crate::cache::table_key(database, t))
            .collect();
        let tables = Arc::new(CacheTables { names, keyed });
        ring.put(TablesEntry {
            analysis: a.clone(),
            database: database.to_owned(),
            tables: tables.clone(),
        });
        tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{analyze, FunctionCatalog};
    use crate::config::RuleConfig;

    fn catalog_rules() -> Arc<Rules> {
        Arc::new(Rules::compile(&[RuleConfig {
            name: Some("catalog".into()),
            kind: Some("read".into()),
            tables: vec!["products".into()],
            cache_ttl: Some(std::time::Duration::from_secs(90)),
            ..Default::default()
        }]))
    }

    /// A catalog read and the client that sends it.
    fn product_read() -> (Arc<Analysis>, Who<'static>) {
        let a = analyze(
            "SELECT name FROM products WHERE sku_id = $1",
            &FunctionCatalog::default(),
        );
        let who = Who {
            user: "shop",
            database: "shop",
            application_name: "app",
        };
        (a, who)
    }

    fn hits(rules: &Rules, a: &Analysis, who: &Who<'_>) -> u64 {
        let (_, r) = rules.first(a, who).expect("the rule matches");
        // `first` counted this probe too.
        r.hits.load(std::sync::atomic::Ordering::Relaxed) - 1
    }

    #[test]
    fn remembered_intent_equals_classify_and_still_counts_rule_hits() {
        let memo = Memo::default();
        let rules = catalog_rules();
        let (a, who) = product_read();
        let fresh = route::classify(std::slice::from_ref(&a), &rules, &who);
        let first = memo.intent(std::slice::from_ref(&a), &rules, &who);
        let second = memo.intent(std::slice::from_ref(&a), &rules, &who);
        assert!(Arc::ptr_eq(&first, &second), "the second use is remembered");
        assert_eq!(second.to, fresh.to);
        assert_eq!(second.reason, fresh.reason);
        assert_eq!(second.rule, fresh.rule);
        assert_eq!(second.cache_ttl, fresh.cache_ttl);
        assert_eq!(hits(&rules, &a, &who), 3, "classify, then both memo uses");
    }

    #[test]
    fn reloaded_rules_or_another_application_name_are_classified_again() {
        let memo = Memo::default();
        let (a, who) = product_read();
        let old = catalog_rules();
        let first = memo.intent(std::slice::from_ref(&a), &old, &who);
        let reloaded = Arc::new(Rules::compile(&[]));
        let after_reload = memo.intent(std::slice::from_ref(&a), &reloaded, &who);
        assert_eq!(first.cache_ttl, Some(std::time::Duration::from_secs(90)));
        assert_eq!(after_reload.cache_ttl, None, "the new rules apply at once");
        let renamed = Who {
            application_name: "batch",
            ..who
        };
        let other = memo.intent(std::slice::from_ref(&a), &old, &renamed);
        assert!(!Arc::ptr_eq(&first, &other), "who asks is part of the key");
    }

    #[test]
    fn cache_tables_are_keyed_by_database() {
        let memo = Memo::default();
        let a = analyze(
            "SELECT p.name FROM products p JOIN prices pr ON pr.sku_id = p.sku_id",
            &FunctionCatalog::default(),
        );
        let shop = memo.cache_tables(&a, "shop");
        assert_eq!(&shop.names[..], ["products", "prices"]);
        assert_eq!(&shop.keyed[..], ["shop.products", "shop.prices"]);
        let other = memo.cache_tables(&a, "other");
        assert_eq!(&other.keyed[..], ["other.products", "other.prices"]);
    }

    #[test]
    fn ring_keeps_at_most_slots_entries_replacing_the_oldest() {
        let mut r: Ring<usize> = Ring::default();
        for i in 0..SLOTS + 3 {
            r.put(i);
        }
        assert_eq!(r.items.len(), SLOTS);
        assert!(!r.items.contains(&0) && !r.items.contains(&2));
        assert!(r.items.contains(&(SLOTS + 2)) && r.items.contains(&3));
    }
}
