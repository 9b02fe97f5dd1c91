//! The admin console's result sets, built from the live context. Every value is text, as
//! psql prints it; nothing here blocks or touches a server.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use crate::config::{redact, Config, RuleConfig};
use crate::context::Context;
use crate::route::topology::format_lsn;

/// A result set: column names and rows of text (`None` is SQL NULL).
#[derive(Debug, Default)]
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row<I: IntoIterator<Item = Option<String>>>(&mut self, values: I) {
        self.rows.push(values.into_iter().collect());
    }

    /// A two-column key/value row.
    fn kv(&mut self, key: &str, value: impl ToString) {
        self.row([Some(key.to_string()), Some(value.to_string())]);
    }
}

pub(super) fn some(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

pub fn pools(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        "node",
        "database",
        "user",
        "active",
        "idle",
        "max",
        "checkouts",
        "waits",
        "wait_ms_total",
        "timeouts",
        "connects",
        "connect_errors",
    ]);
    let mut pools = ctx.pools.all();
    pools.sort_by_key(|p| {
        (
            p.key.node.display(),
            p.key.database.clone(),
            p.key.user.clone(),
        )
    });
    for p in pools {
        let s = &p.stats;
        let n = |c: &std::sync::atomic::AtomicU64| some(c.load(Ordering::Relaxed));
        t.row([
            some(p.key.node.display()),
            some(&p.key.database),
            some(&p.key.user),
            some(p.active_count()),
            some(p.idle_count()),
            some(p.max_size()),
            n(&s.checkouts),
            n(&s.waits),
            some(s.wait_micros.load(Ordering::Relaxed) / 1000),
            n(&s.timeouts),
            n(&s.connects),
            n(&s.connect_errors),
        ]);
    }
    t
}

/// Per pool, the backend connections by state. The pool does not expose its connections one
/// by one, so this is counts.
pub fn servers(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        "node",
        "role",
        "database",
        "user",
        "active",
        "idle",
        "total",
        "max",
        "discarded",
    ]);
    let topo = ctx.topology.load();
    let mut pools = ctx.pools.all();
    pools.sort_by_key(|p| {
        (
            p.key.node.display(),
            p.key.database.clone(),
            p.key.user.clone(),
        )
    });
    for p in pools {
        let role = topo
            .nodes
            .iter()
            .find(|n| n.addr == p.key.node)
            .map(|n| verified_role(n))
            .unwrap_or("unknown");
        let (active, idle) = (p.active_count(), p.idle_count());
        t.row([
            some(p.key.node.display()),
            some(role),
            some(&p.key.database),
            some(&p.key.user),
            some(active),
            some(idle),
            some(active + idle),
            some(p.max_size()),
            some(p.stats.discarded.load(Ordering::Relaxed)),
        ]);
    }
    t
}

pub fn clients(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        "id",
        "user",
        "database",
        "peer",
        "application_name",
        "connected_at",
        "state",
    ]);
    for c in ctx.sessions.snapshot() {
        t.row([
            some(c.id),
            some(&c.user),
            some(&c.database),
            some(c.peer),
            some(&c.application_name),
            some(timestamp(c.connected_at)),
            some(c.state().as_str()),
        ]);
    }
    t
}

pub fn stats(ctx: &Context) -> Table {
    let pools = ctx.pools.all();
    let sum =
        |f: fn(&crate::pool::PoolStats) -> u64| pools.iter().map(|p| f(&p.stats)).sum::<u64>();
    let mut t = Table::new(&["stat", "value"]);
    t.kv("clients", ctx.clients.load(Ordering::Relaxed));
    t.kv("clients_registered", ctx.sessions.len());
    t.kv("requests_primary", crate::metrics::routed_total(false));
    t.kv("requests_replica", crate::metrics::routed_total(true));
    t.kv("read_retries", crate::metrics::get().read_retries.get());
    t.kv(
        "wal_flush_checks",
        ctx.flusher.checks.load(Ordering::Relaxed),
    );
    t.kv(
        "wal_flush_commits",
        ctx.flusher.commits.load(Ordering::Relaxed),
    );
    let (pipelined, writes, batched) = crate::metrics::pipeline_totals();
    t.kv("requests_pipelined", pipelined);
    t.kv("pipeline_writes", writes);
    t.kv(
        "pipeline_avg_batch",
        format!("{:.2}", batched as f64 / writes.max(1) as f64),
    );
    t.kv(
        "errors_startup",
        crate::metrics::session_errors_total("startup"),
    );
    t.kv(
        "errors_session",
        crate::metrics::session_errors_total("session"),
    );
    t.kv(
        "pool_checkouts",
        sum(|s| s.checkouts.load(Ordering::Relaxed)),
    );
    t.kv("pool_timeouts", sum(|s| s.timeouts.load(Ordering::Relaxed)));
    t.kv(
        "server_connects",
        sum(|s| s.connects.load(Ordering::Relaxed)),
    );
    t.kv(
        "server_connect_errors",
        sum(|s| s.connect_errors.load(Ordering::Relaxed)),
    );
    t.kv("outage_held_now", crate::metrics::held_now());
    for outcome in ["resumed", "replica", "expired"] {
        t.kv(
            &format!("outage_holds_{outcome}"),
            crate::metrics::holds_total(outcome),
        );
    }
    for kind in TIMEOUT_KINDS {
        t.kv(
            &format!("timeouts_{kind}"),
            crate::metrics::timeouts_total(kind),
        );
    }
    for (trip, n) in crate::metrics::round_trips::totals() {
        t.kv(&format!("round_trips_{}_{}", trip.to(), trip.why()), n);
    }
    t
}

/// Every kind `pgsidecar_timeouts_total` counts, as SHOW STATS lists them.
const TIMEOUT_KINDS: [&str; 5] = [
    "query",
    "transaction",
    "idle_in_transaction",
    "client_idle",
    "query_wait",
];

fn verified_role(n: &crate::route::Node) -> &'static str {
    if n.checked.load(Ordering::Relaxed) {
        n.role().as_str()
    } else {
        "unknown"
    }
}

pub fn replicas(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        "address",
        "configured_role",
        "verified_role",
        "healthy",
        "lsn",
        "lag_bytes",
        "lag_ms",
        "outstanding",
        "served",
        "last_error",
    ]);
    for n in &ctx.topology.load().nodes {
        let checked = n.checked.load(Ordering::Relaxed);
        let (bytes, time) = n.lag();
        t.row([
            some(n.addr.display()),
            some(n.configured.as_str()),
            some(verified_role(n)),
            some(n.is_healthy()),
            checked.then(|| format_lsn(n.replayed())),
            some(bytes),
            some(time.as_millis()),
            some(n.outstanding.load(Ordering::Relaxed)),
            some(n.served.load(Ordering::Relaxed)),
            n.last_error.lock().clone(),
        ]);
    }
    t
}

pub fn rules(ctx: &Context) -> Table {
    let mut t = Table::new(&["name", "conditions", "route", "hits"]);
    let cfg = ctx.config.load();
    let rules = ctx.rules.load();
    for (i, rule) in rules.0.iter().enumerate() {
        // Compiled rules keep no source text; the configuration's entry at the same index
        // describes it, unless a reload swapped one and not yet the other.
        let conditions = cfg
            .routing
            .rules
            .get(i)
            .filter(|c| c.name.clone().unwrap_or_else(|| format!("rule #{}", i + 1)) == rule.name)
            .map(summarize)
            .unwrap_or_else(|| "(configuration is being reloaded)".into());
        let route = rule.route.map(|r| kebab(&format!("{r:?}")));
        t.row([
            some(&rule.name),
            some(conditions),
            route,
            some(rule.hits.load(Ordering::Relaxed)),
        ]);
    }
    t
}

/// A rule's conditions in one line: `kind=read tables=orders,order_* user=app*`.
fn summarize(c: &RuleConfig) -> String {
    let mut parts = Vec::new();
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    };
    add("kind", c.kind.clone());
    add("tables", (!c.tables.is_empty()).then(|| c.tables.join(",")));
    add(
        "functions",
        (!c.functions.is_empty()).then(|| c.functions.join(",")),
    );
    add("user", c.user.clone());
    add("database", c.database.clone());
    add("application_name", c.application_name.clone());
    add("pattern", c.pattern.as_ref().map(|p| format!("/{p}/")));
    if parts.is_empty() {
        "(always)".into()
    } else {
        parts.join(" ")
    }
}

/// The main options of the running configuration. Upstream URLs are redacted; no other option
/// holds a secret (secrets live in the users and credentials files, shown by path only).
pub fn config(cfg: &Config) -> Table {
    let mut t = Table::new(&["key", "value"]);
    let d = |v: std::time::Duration| humantime::format_duration(v).to_string();
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let e = |v: &dyn std::fmt::Debug| kebab(&format!("{v:?}"));
    let l = &cfg.listen;
    t.kv("listen.addr", &l.addr);
    t.kv("listen.tls", l.tls_cert.is_some() && l.tls_key.is_some());
    t.kv("listen.startup_timeout", d(l.startup_timeout));
    t.kv("listen.max_message_size", l.max_message_size);
    t.kv("listen.max_clients", l.max_clients);
    let u = &cfg.upstream;
    t.kv("upstream.primary", redact(&u.primary));
    t.kv(
        "upstream.replicas",
        u.replicas
            .iter()
            .map(|r| redact(r))
            .collect::<Vec<_>>()
            .join(", "),
    );
    t.kv("upstream.active", u.active_environment());
    t.kv("upstream.rollback_window", d(u.rollback_window));
    t.kv("upstream.switch_timeout", d(u.switch_timeout));
    t.kv("upstream.outage_hold", d(u.outage_hold));
    for (name, env) in &cfg.environments {
        t.kv(
            &format!("environments.{name}.primary"),
            redact(&env.primary),
        );
        t.kv(
            &format!("environments.{name}.replicas"),
            env.replicas
                .iter()
                .map(|r| redact(r))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    t.kv("upstream.tls", e(&u.tls));
    t.kv("upstream.ca_file", path(&u.ca_file));
    t.kv("upstream.credentials_file", path(&u.credentials_file));
    let p = &cfg.pool;
    t.kv("pool.mode", e(&p.mode));
    t.kv("pool.min_size", p.min_size);
    t.kv("pool.max_size", p.max_size);
    t.kv("pool.query_wait_timeout", d(p.query_wait_timeout));
    t.kv("pool.query_timeout", d(p.query_timeout));
    t.kv("pool.transaction_timeout", d(p.transaction_timeout));
    t.kv(
        "pool.idle_in_transaction_timeout",
        d(p.idle_in_transaction_timeout),
    );
    t.kv("pool.client_idle_timeout", d(p.client_idle_timeout));
    t.kv("pool.connect_timeout", d(p.connect_timeout));
    t.kv("pool.idle_timeout", d(p.idle_timeout));
    t.kv("pool.max_lifetime", d(p.max_lifetime));
    t.kv("pool.health_check_after_idle", d(p.health_check_after_idle));
    t.kv("pool.max_prepared_per_backend", p.max_prepared_per_backend);
    t.kv("pool.pipeline", p.pipeline);
    t.kv("pool.pipeline_fast", format!("{:?}", p.pipeline_fast));
    t.kv(
        "pool.pipeline_backends_per_worker",
        p.pipeline_backends_per_worker,
    );
    t.kv("pool.stuck_request_timeout", d(p.stuck_request_timeout));
    t.kv("auth.users_file", path(&cfg.auth.users_file));
    t.kv("auth.rules", cfg.auth.rules.len());
    let r = &cfg.routing;
    t.kv("routing.enabled", r.enabled);
    t.kv("routing.balance", e(&r.balance));
    t.kv("routing.max_lag_bytes", r.max_lag_bytes);
    t.kv("routing.max_lag", d(r.max_lag));
    t.kv("routing.no_replica", e(&r.no_replica));
    t.kv("routing.read_your_writes", e(&r.read_your_writes));
    t.kv("routing.max_wait", d(r.max_wait));
    t.kv("routing.health_interval", d(r.health_interval));
    t.kv("routing.retry_reads", r.retry_reads);
    t.kv("routing.monotonic_reads", r.monotonic_reads);
    t.kv(
        "routing.monitor_database",
        r.monitor_database.clone().unwrap_or_default(),
    );
    t.kv("routing.rules", r.rules.len());
    t.kv("log.level", &cfg.log.level);
    t.kv("log.format", e(&cfg.log.format));
    t.kv(
        "log.slow_query",
        cfg.log.slow_query.map(d).unwrap_or_else(|| "off".into()),
    );
    t.kv("admin.users", cfg.admin.users.join(", "));
    t.kv(
        "admin.http_addr",
        cfg.admin.http_addr.clone().unwrap_or_default(),
    );
    t
}

pub fn explain(ctx: &Context, sql: &str, who: &crate::route::Who<'_>) -> Table {
    let cfg = ctx.config.load();
    // Rules compiled afresh from the running configuration: the same rules as the live ones,
    // but a dry run must not count hits on the live rules that SHOW RULES reports.
    let rules = crate::route::Rules::compile(&cfg.routing.rules);
    let text = crate::explain::explain_with(&cfg, &rules, &ctx.analyzer.catalog(), sql, who);
    let mut t = Table::new(&["explain"]);
    for line in text.lines() {
        t.row([some(line)]);
    }
    t
}

pub fn version() -> Table {
    let mut t = Table::new(&["version"]);
    t.row([some(super::VERSION)]);
    t
}

pub fn help() -> Table {
    let mut t = Table::new(&["command", "description"]);
    for (usage, what) in super::command::HELP {
        t.row([some(usage), some(what)]);
    }
    t
}

/// `LeastOutstanding` → `least-outstanding`: config enums are spelled in kebab-case in TOML,
/// and their Debug names are the CamelCase of that.
fn kebab(debug: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// RFC 3339 in UTC, to the second.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Result-cache counters.
pub fn cache(ctx: &Context) -> Table {
    let st = ctx.cache.stats();
    let mut t = Table::new(&["stat", "value"]);
    t.row([
        Some("enabled".to_string()),
        Some(ctx.cache.config().enabled.to_string()),
    ]);
    for (k, v) in format!("{st:#?}")
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').split_once(": "))
    {
        t.row([Some(k.to_string()), Some(v.to_string())]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_read_as_in_the_config_file() {
        assert_eq!(kebab("LeastOutstanding"), "least-outstanding");
        assert_eq!(kebab("Transaction"), "transaction");
    }

    #[test]
    fn config_never_shows_passwords() {
        let mut cfg = Config::default();
        cfg.upstream.primary = "postgres://app:hunter2@db:5432/shop".into();
        cfg.upstream.replicas = vec!["postgres://app:hunter3@r1:5432/shop?weight=2".into()];
        cfg.environments.insert(
            "green".into(),
            crate::config::EnvironmentConfig {
                primary: "postgres://app:hunter4@green:5432/shop".into(),
                replicas: vec!["postgres://app:hunter5@green-r1:5432".into()],
            },
        );
        let t = config(&cfg);
        let all: String = t
            .rows
            .iter()
            .flatten()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            !["hunter2", "hunter3", "hunter4", "hunter5"]
                .iter()
                .any(|p| all.contains(p)),
            "{all}"
        );
        assert!(
            all.contains("db:5432") && all.contains("green-r1:5432"),
            "{all}"
        );
    }

    #[test]
    fn rule_conditions_fit_one_line() {
        let c = RuleConfig {
            kind: Some("read".into()),
            tables: vec!["orders".into(), "order_*".into()],
            ..Default::default()
        };
        assert_eq!(summarize(&c), "kind=read tables=orders,order_*");
        assert_eq!(summarize(&RuleConfig::default()), "(always)");
    }
}
