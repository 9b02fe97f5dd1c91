//! The gauges refreshed right before [`super::encode`], from values that `tasks::observe`
//! reads off the live `Context`: metrics takes plain values and imports nothing it measures,
//! so every module can report to it without a circle.

use super::{EnvironmentLabel, NodeLabel, PoolLabels, QueryRow, METRICS};

/// Clients connected now.
pub fn observe_clients(n: usize) {
    METRICS.gauges.clients.set(n as i64);
}

/// The result cache's counters: `(event, total)` for `pgsidecar_cache_events_total`,
/// `(reason, series, total)` for the rejected fills, and the in-process cache's size.
pub fn observe_cache(
    events: &[(&'static str, u64)],
    rejected: &[(&'static str, &'static str, u64)],
    l1_bytes: u64,
    l1_entries: u64,
) {
    METRICS
        .cache
        .observe(events, rejected, l1_bytes, l1_entries);
}

/// The statement shapes `pgsidecar_query_*` lists (already cut to `stats.metrics_queries`).
pub fn observe_queries(top: &[QueryRow<'_>]) {
    METRICS.queries.observe(top);
}

/// One pool's connections in use and idle.
pub fn observe_pool(node: String, database: String, user: String, active: usize, idle: usize) {
    let g = &METRICS.gauges;
    let labels = PoolLabels {
        node: node.into(),
        database: database.into(),
        user: user.into(),
    };
    g.pool_active.get_or_create(&labels).set(active as i64);
    g.pool_idle.get_or_create(&labels).set(idle as i64);
}

/// Every environment, 1 for the active one; environments a reload removed are dropped.
pub fn observe_environments<'a>(names: impl Iterator<Item = &'a String>, active: &str) {
    let g = &METRICS.gauges;
    g.active_environment.clear();
    for name in names {
        g.active_environment
            .get_or_create(&EnvironmentLabel {
                environment: name.clone().into(),
            })
            .set(i64::from(name == active));
    }
}

/// Forgets every node's series: nodes can change on reload, and those gone must not linger.
/// [`observe_node`] then sets those of the nodes there are.
pub fn clear_nodes() {
    let g = &METRICS.gauges;
    g.node_healthy.clear();
    g.replica_lag_bytes.clear();
    g.replica_lag_seconds.clear();
}

/// One node's health, and for a configured replica its lag (bytes, time).
pub fn observe_node(node: String, healthy: bool, lag: Option<(u64, std::time::Duration)>) {
    let g = &METRICS.gauges;
    let label = NodeLabel { node: node.into() };
    g.node_healthy.get_or_create(&label).set(i64::from(healthy));
    if let Some((bytes, time)) = lag {
        g.replica_lag_bytes
            .get_or_create(&label)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        g.replica_lag_seconds
            .get_or_create(&label)
            .set(time.as_secs_f64());
    }
}
