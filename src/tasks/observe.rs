//! Metrics observation: reads the live `Context` (clients, cache, statement statistics, pools,
//! environments, nodes) into the gauges right before `/metrics` encodes them. It lives here,
//! above `Context`, so that `metrics` takes values and imports nothing it measures.

use std::sync::atomic::Ordering;

use crate::context::Context;
use crate::metrics;

/// Refreshes the gauges from the live context; call right before [`metrics::encode`].
pub fn observe(ctx: &Context) {
    metrics::observe_clients(ctx.clients.load(Ordering::Relaxed));
    metrics::observe_cache(&ctx.cache.stats());
    let top = ctx.config.load().stats.metrics_queries;
    let mut queries = ctx.queries.snapshot();
    queries.truncate(top);
    metrics::observe_queries(&queries);
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
