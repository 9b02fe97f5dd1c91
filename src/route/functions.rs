//! Loads function volatility from the primary's `pg_proc`, so user functions are classified by
//! what they declare (a STABLE lookup function may run on a replica; a VOLATILE one may not).
//! Until it has loaded, unknown functions count as volatile: routing errs towards the primary.

use std::sync::Arc;
use std::time::Duration;

use crate::analyze::FunctionCatalog;
use crate::backend::Server;
use crate::context::Context;

const QUERY: &str = "SELECT n.nspname || chr(9) || p.proname || chr(9) || p.provolatile::text \
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace ORDER BY 1";

/// Loads the catalog in the background, retrying until it succeeds or the process stops.
pub fn spawn_loader(ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut shutdown = ctx.shutdown.clone();
        let mut wait = Duration::from_millis(200);
        loop {
            match load(&ctx).await {
                Ok(n) => {
                    tracing::info!(functions = n, "loaded function volatility from pg_proc");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "function catalog not loaded yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    });
}

pub async fn load(ctx: &Context) -> Result<usize, String> {
    let catalog = fetch(ctx, ctx.topology.load().primary().addr.clone()).await?;
    let n = catalog.len();
    ctx.analyzer.set_catalog(catalog);
    Ok(n)
}

/// The catalog of the server at `node` (SWITCH reads the target's before pausing anyone).
pub async fn fetch(
    ctx: &Context,
    node: Arc<crate::config::NodeAddr>,
) -> Result<FunctionCatalog, String> {
    let spec = ctx
        .monitor_spec(node, "pgsidecar-monitor")
        .ok_or("no login to read pg_proc with yet")?;
    let mut server = Server::connect(&spec).await.map_err(|e| e.to_string())?;
    let rows = server
        .query_column(QUERY)
        .await
        .map_err(|e| e.to_string())?;
    server.terminate().await;
    let mut catalog = FunctionCatalog::builtin();
    catalog.extend_rows(rows.iter().flatten().filter_map(|r| {
        let mut p = r.split('\t');
        Some((p.next()?, p.next()?, p.next()?.chars().next()?))
    }));
    Ok(catalog)
}
