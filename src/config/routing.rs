//! `[routing]`: read/write splitting, replica selection, read-your-writes, DBA rules.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    LeastOutstanding,
    RoundRobin,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NoReplica {
    /// Serve the read from the primary.
    #[default]
    Primary,
    /// Fail the read with SQLSTATE 57P03.
    Error,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReadYourWrites {
    /// A read waits for the client's own last write, and for every write through this sidecar
    /// to the tables it reads.
    #[default]
    Sidecar,
    /// A read waits only for the client's own last write.
    Session,
    /// No guarantee beyond the lag limits.
    Off,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RouteTo {
    Primary,
    Replica,
    Any,
}

/// One DBA rule. Every condition given must match; the first matching rule applies.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown by `explain` and in metrics.
    pub name: Option<String>,
    /// read, write, ddl, transaction, session, utility, unknown.
    pub kind: Option<String>,
    /// Globs; the rule matches when the statement touches (reads or writes) any of them.
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub functions: Vec<String>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    /// Regex on the normalised statement text (literals replaced by `?`): a last resort.
    pub pattern: Option<String>,
    pub route: Option<RouteTo>,
    /// Cache results of matching read-only statements for this long (needs `[cache] enabled`).
    #[serde(default, with = "duration::option")]
    pub cache_ttl: Option<Duration>,
    /// Timeouts for matching requests instead of `[pool]`'s ("0s" = none). A rule with only
    /// `user`/`database`/`application_name` conditions sets them for those clients' sessions
    /// (the only way to set `client_idle_timeout` and `query_wait_timeout` per user or
    /// database); with statement conditions, for the requests (and the transactions they
    /// begin) it matches. Each timeout comes from the first matching rule that sets it. A rule
    /// that only sets timeouts takes no part in routing or caching.
    #[serde(default, with = "duration::option")]
    pub query_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    pub transaction_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    pub idle_in_transaction_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    pub client_idle_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    pub query_wait_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub enabled: bool,
    pub balance: Balance,
    pub max_lag_bytes: u64,
    #[serde(with = "duration")]
    pub max_lag: Duration,
    pub no_replica: NoReplica,
    pub read_your_writes: ReadYourWrites,
    /// How long a read may wait for a replica to replay the writes it must see before it goes
    /// to the primary instead.
    #[serde(with = "duration")]
    pub max_wait: Duration,
    #[serde(with = "duration")]
    pub health_interval: Duration,
    /// Retry a read that failed on a replica before any row reached the client, once, elsewhere.
    pub retry_reads: bool,
    /// A session's read never sees an older state than its previous request did (its next
    /// replica must have replayed as far as the last one had; until that is known, the same
    /// replica or the primary serves).
    pub monotonic_reads: bool,
    /// Database the monitor connects to (default: the primary URL's, else "postgres").
    pub monitor_database: Option<String>,
    /// How often every database's `pg_proc` and view list is read again (default 60 s; `0s`:
    /// only at start and after DDL through this sidecar), for DDL run elsewhere.
    #[serde(with = "duration")]
    pub catalog_refresh: Duration,
    /// Statements longer than this (bytes) are not analysed: they go to the primary as they
    /// are, never cached; one that may name a `[[locks]]` table takes that rule's undeterminable
    /// path (default: the table-wide lock).
    pub max_analyzed_statement: usize,
    pub rules: Vec<RuleConfig>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            balance: Balance::LeastOutstanding,
            max_lag_bytes: 16 << 20,
            max_lag: Duration::from_secs(5),
            no_replica: NoReplica::Primary,
            read_your_writes: ReadYourWrites::Sidecar,
            max_wait: Duration::from_millis(50),
            health_interval: Duration::from_millis(500),
            retry_reads: true,
            monotonic_reads: true,
            monitor_database: None,
            catalog_refresh: Duration::from_secs(60),
            max_analyzed_statement: super::DEFAULT_MAX_ANALYZED,
            rules: Vec::new(),
        }
    }
}

const KINDS: &[&str] = &[
    "read",
    "write",
    "ddl",
    "transaction",
    "session",
    "utility",
    "unknown",
];

impl RoutingConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!(
                "routing.rules[{i}]{}",
                r.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            if let Some(k) = &r.kind {
                if !KINDS.contains(&k.as_str()) {
                    p.push(format!(
                        "{at}: kind '{k}' is not one of {}",
                        KINDS.join(", ")
                    ));
                }
            }
            for g in r.tables.iter().chain(&r.functions) {
                if let Err(e) = globset::Glob::new(g) {
                    p.push(format!("{at}: bad glob '{g}': {e}"));
                }
            }
            if let Some(re) = &r.pattern {
                if let Err(e) = regex::Regex::new(re) {
                    p.push(format!("{at}: bad pattern: {e}"));
                }
            }
        }
        p
    }
}
