//! DBA routing rules, compiled once per configuration load.

use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use globset::{Glob, GlobMatcher};
use regex::Regex;

use crate::analyze::{Analysis, StatementKind};
use crate::config::{RouteTo, RuleConfig};

/// Who is asking, for rules that match on it.
pub struct Who<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub application_name: &'a str,
}

pub struct Rule {
    pub name: String,
    kind: Option<String>,
    tables: Vec<GlobMatcher>,
    functions: Vec<GlobMatcher>,
    user: Option<GlobMatcher>,
    database: Option<GlobMatcher>,
    application_name: Option<GlobMatcher>,
    pattern: Option<Regex>,
    pub route: Option<RouteTo>,
    pub cache_ttl: Option<std::time::Duration>,
    pub timeouts: RuleTimeouts,
    /// Conditions on who asks only (user, database, application_name): its timeouts apply to
    /// whole sessions.
    who_only: bool,
    pub hits: AtomicU64,
}

/// Timeouts a rule sets (`None`: not set by this rule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleTimeouts {
    pub query: Option<Duration>,
    pub transaction: Option<Duration>,
    pub idle_in_transaction: Option<Duration>,
    pub client_idle: Option<Duration>,
    pub query_wait: Option<Duration>,
}

impl RuleTimeouts {
    fn is_empty(&self) -> bool {
        *self == RuleTimeouts::default()
    }

    /// Fills what is still unset from `other`: the first rule that sets a timeout wins.
    fn fill_from(&mut self, other: &RuleTimeouts) {
        self.query = self.query.or(other.query);
        self.transaction = self.transaction.or(other.transaction);
        self.idle_in_transaction = self.idle_in_transaction.or(other.idle_in_transaction);
        self.client_idle = self.client_idle.or(other.client_idle);
        self.query_wait = self.query_wait.or(other.query_wait);
    }
}

fn glob(s: &str) -> Option<GlobMatcher> {
    Glob::new(s).ok().map(|g| g.compile_matcher())
}

impl Rule {
    /// Compiles a validated rule (invalid globs or regexes were rejected by `Config::validate`).
    pub fn compile(i: usize, c: &RuleConfig) -> Rule {
        Rule {
            name: c.name.clone().unwrap_or_else(|| format!("rule #{}", i + 1)),
            kind: c.kind.clone(),
            tables: c.tables.iter().filter_map(|g| glob(g)).collect(),
            functions: c.functions.iter().filter_map(|g| glob(g)).collect(),
            user: c.user.as_deref().and_then(glob),
            database: c.database.as_deref().and_then(glob),
            application_name: c.application_name.as_deref().and_then(glob),
            pattern: c.pattern.as_deref().and_then(|p| Regex::new(p).ok()),
            route: c.route,
            cache_ttl: c.cache_ttl,
            timeouts: RuleTimeouts {
                query: c.query_timeout,
                transaction: c.transaction_timeout,
                idle_in_transaction: c.idle_in_transaction_timeout,
                client_idle: c.client_idle_timeout,
                query_wait: c.query_wait_timeout,
            },
            who_only: c.kind.is_none()
                && c.tables.is_empty()
                && c.functions.is_empty()
                && c.pattern.is_none(),
            hits: AtomicU64::new(0),
        }
    }

    /// A rule that only sets timeouts does not route or cache: it must not hide the routing
    /// rules after it.
    fn routes(&self) -> bool {
        self.route.is_some() || self.cache_ttl.is_some() || self.timeouts.is_empty()
    }

    fn matches_who(&self, who: &Who<'_>) -> bool {
        let opt = |m: &Option<GlobMatcher>, v: &str| m.as_ref().is_none_or(|g| g.is_match(v));
        opt(&self.user, who.user)
            && opt(&self.database, who.database)
            && opt(&self.application_name, who.application_name)
    }

    pub fn matches(&self, a: &Analysis, who: &Who<'_>) -> bool {
        if let Some(k) = &self.kind {
            let kind = match &a.kind {
                StatementKind::Read => "read",
                StatementKind::Write => "write",
                StatementKind::Ddl => "ddl",
                StatementKind::Transaction(_) => "transaction",
                StatementKind::Session(_) => "session",
                StatementKind::Utility => "utility",
                StatementKind::Unknown => "unknown",
            };
            if k != kind {
                return false;
            }
        }
        if !self.tables.is_empty() {
            let touched = a.tables_read.iter().chain(&a.tables_written);
            let any = touched.into_iter().any(|t| {
                let bare = t.name.as_str();
                let full = t.to_string();
                self.tables
                    .iter()
                    .any(|g| g.is_match(bare) || g.is_match(&full))
            });
            if !any {
                return false;
            }
        }
        if !self.functions.is_empty()
            && !a
                .functions
                .iter()
                .any(|f| self.functions.iter().any(|g| g.is_match(f)))
        {
            return false;
        }
        if !self.matches_who(who) {
            return false;
        }
        if let Some(re) = &self.pattern {
            if !re.is_match(&a.normalized) {
                return false;
            }
        }
        true
    }
}

pub struct Rules(pub Vec<Rule>);

impl Rules {
    /// Whether any rule sets a timeout (else the `[pool]` ones apply, with no rule matching
    /// per request).
    pub fn has_timeouts(&self) -> bool {
        self.0.iter().any(|r| !r.timeouts.is_empty())
    }

    /// Timeouts for a client's whole session: from rules with conditions on who asks only.
    pub fn session_timeouts(&self, who: &Who<'_>) -> RuleTimeouts {
        let mut t = RuleTimeouts::default();
        for r in self
            .0
            .iter()
            .filter(|r| r.who_only && !r.timeouts.is_empty())
        {
            if r.matches_who(who) {
                t.fill_from(&r.timeouts);
            }
        }
        t
    }

    /// Timeouts for one request: from every rule matching one of its statements, in rule
    /// order (the shortest when different statements match different rules).
    pub fn request_timeouts(
        &self,
        analyses: &[std::sync::Arc<Analysis>],
        who: &Who<'_>,
    ) -> RuleTimeouts {
        let mut out = RuleTimeouts::default();
        for a in analyses {
            let mut t = RuleTimeouts::default();
            for r in self.0.iter().filter(|r| !r.timeouts.is_empty()) {
                if r.matches(a, who) {
                    t.fill_from(&r.timeouts);
                }
            }
            let min = |x: Option<Duration>, y: Option<Duration>| match (x, y) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
            out.query = min(out.query, t.query);
            out.transaction = min(out.transaction, t.transaction);
            out.idle_in_transaction = min(out.idle_in_transaction, t.idle_in_transaction);
            out.client_idle = min(out.client_idle, t.client_idle);
            out.query_wait = min(out.query_wait, t.query_wait);
        }
        out
    }

    pub fn compile(cfg: &[RuleConfig]) -> Rules {
        Rules(
            cfg.iter()
                .enumerate()
                .map(|(i, c)| Rule::compile(i, c))
                .collect(),
        )
    }

    /// Counts a use of rule `i` that [`Rules::first`] found earlier for the same statement and
    /// client (a remembered classification; `SHOW RULES` counts every use).
    pub fn count_hit(&self, i: usize) {
        if let Some(r) = self.0.get(i) {
            r.hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The first matching rule, counted.
    pub fn first(&self, a: &Analysis, who: &Who<'_>) -> Option<(usize, &Rule)> {
        let found = self
            .0
            .iter()
            .enumerate()
            .find(|(_, r)| r.routes() && r.matches(a, who));
        if let Some((_, r)) = found {
            r.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::analyze::{analyze, FunctionCatalog};
    use crate::config::RuleConfig;

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    fn who(user: &'static str) -> Who<'static> {
        Who {
            user,
            database: "shop",
            application_name: "app",
        }
    }

    /// Per-user timeouts come from rules with only conditions on who asks, the first rule
    /// that sets each one winning; a rule on statements sets them per request only; and a
    /// rule that only sets timeouts leaves routing to the rules after it.
    #[test]
    fn timeouts_come_per_user_from_who_rules_and_per_request_from_statement_rules() {
        let rules = Rules::compile(&[
            RuleConfig {
                name: Some("batch".into()),
                user: Some("batch".into()),
                query_timeout: secs(600),
                idle_in_transaction_timeout: secs(30),
                ..Default::default()
            },
            RuleConfig {
                name: Some("everyone".into()),
                query_timeout: secs(5),
                client_idle_timeout: secs(60),
                ..Default::default()
            },
            RuleConfig {
                name: Some("reports".into()),
                tables: vec!["orders".into()],
                query_timeout: secs(120),
                ..Default::default()
            },
            RuleConfig {
                name: Some("orders to replicas".into()),
                tables: vec!["orders".into()],
                route: Some(RouteTo::Replica),
                ..Default::default()
            },
        ]);
        assert!(rules.has_timeouts());
        let batch = rules.session_timeouts(&who("batch"));
        assert_eq!(batch.query, secs(600));
        assert_eq!(batch.idle_in_transaction, secs(30));
        assert_eq!(batch.client_idle, secs(60), "filled from the next rule");
        let app = rules.session_timeouts(&who("app"));
        assert_eq!(app.query, secs(5));
        assert_eq!(app.idle_in_transaction, None);

        let funcs = FunctionCatalog::default();
        let report = analyze("SELECT sum(total) FROM orders", &funcs);
        let other = analyze("SELECT 1 FROM items", &funcs);
        let t = rules.request_timeouts(std::slice::from_ref(&report), &who("app"));
        assert_eq!(t.query, secs(5), "the first matching rule that sets it");
        let t = rules.request_timeouts(&[report.clone(), other], &who("batch"));
        assert_eq!(t.query, secs(600));
        // Routing skips the timeout-only rules.
        let (i, r) = rules.first(&report, &who("app")).expect("a routing rule");
        assert_eq!(i, 3);
        assert_eq!(r.route, Some(RouteTo::Replica));
        assert!(!Rules::compile(&[]).has_timeouts());
    }
}
