//! Metrics observation: reads the live `Context` (clients, cache, statement statistics, pools,
//! environments, nodes) into the gauges right before `/metrics` encodes them. It lives here,
//! above `Context`, so that `metrics` takes values and imports nothing it measures.

use std::sync::atomic::Ordering;

use crate::context::Context;
use crate::metrics;

/// Refreshes the gauges from the live context; call right before [`metrics::encode`].
pub fn observe(ctx: &Context) {
    metrics::observe_clients(ctx.clients.load(Ordering::Relaxed));
    let cache = ctx.cache.stats();
    metrics::observe_cache(
        &cache.events(),
        &cache.rejected(),
        cache.l1_bytes,
        cache.l1_entries,
    );
    let top = ctx.config.load().stats.metrics_queries;
    let mut queries = ctx.queries.snapshot();
    queries.truncate(top);
    let rows: Vec<_> = queries
        .iter()
        .map(|e| metrics::QueryRow {
            text: &e.text,
            calls: e.calls,
            total_us: e.total_us,
            rows: e.rows,
            replica: e.replica,
            cache_hits: e.cache_hits,
            lock_wait_us: e.lock_wait_us,
        })
        .collect();
    metrics::observe_queries(&rows);
    for p in ctx.pools.all() {
        metrics::observe_pool(
            p.key.node.display(),
            p.key.database.clone(),
            p.key.user.clone(),
            p.active_count(),
            p.idle_count(),
        );
    }
    let active = ctx.topology.load().environment.clone();
    let cfg = ctx.config.load();
    metrics::observe_environments(
        cfg.environments.keys().chain(std::iter::once(&active)),
        &active,
    );
    metrics::clear_nodes();
    for n in &ctx.topology.load().nodes {
        let lag = (n.configured == crate::route::Role::Replica).then(|| n.lag());
        metrics::observe_node(n.addr.display(), n.is_healthy(), lag);
    }
}
