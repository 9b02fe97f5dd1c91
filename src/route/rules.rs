//! DBA routing rules, compiled once per configuration load.

use std::sync::atomic::{AtomicU64, Ordering};

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
    pub hits: AtomicU64,
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
            hits: AtomicU64::new(0),
        }
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
        let opt = |m: &Option<GlobMatcher>, v: &str| m.as_ref().is_none_or(|g| g.is_match(v));
        if !opt(&self.user, who.user)
            || !opt(&self.database, who.database)
            || !opt(&self.application_name, who.application_name)
        {
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
        let found = self.0.iter().enumerate().find(|(_, r)| r.matches(a, who));
        if let Some((_, r)) = found {
            r.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }
}
