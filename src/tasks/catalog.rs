//! The pg_proc loader: reads function volatility and view names from every database of the
//! primary (the queries and the row format are `route::functions`), installs them in the
//! analyzer, and keeps them current after DDL and every `routing.catalog_refresh`. It lives
//! here, above `Context`, because it needs the topology, the monitor login and the analyzer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::TaskError;
use crate::analyze::FunctionCatalog;
use crate::backend::Server;
use crate::context::Context;
use crate::route::functions::{merged, parse_rows, DATABASES, QUERY};

/// Loads the catalog in the background, retrying until it succeeds, then keeps it current
/// (DDL through this sidecar, `routing.catalog_refresh`) until the process stops.
pub fn spawn_loader(ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut shutdown = ctx.shutdown.clone();
        let mut wait = Duration::from_millis(200);
        let mut per_db = loop {
            match load_all(&ctx).await {
                Ok(loaded) => {
                    install(&ctx, &loaded);
                    break loaded;
                }
                Err(e) => tracing::debug!(error = %e, "function catalog not loaded yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        };
        let mut last_full = tokio::time::Instant::now();
        loop {
            let every = ctx.config.load().routing.catalog_refresh;
            let next_full = if every.is_zero() {
                None
            } else {
                Some(last_full + every)
            };
            tokio::select! {
                _ = ctx.catalog_reload.wake.notified() => {
                    let primary = ctx.topology.load().primary().addr.clone();
                    let mut changed = false;
                    for db in ctx.catalog_reload.take() {
                        match fetch_database(&ctx, primary.clone(), &db).await {
                            Ok(c) => {
                                changed |= per_db.get(&db) != Some(&c);
                                per_db.insert(db, c);
                            }
                            // The periodic reload reads it again; until then the old entries stand.
                            Err(e) => tracing::warn!(database = %db, error = %e, "reloading pg_proc after DDL failed"),
                        }
                    }
                    if changed {
                        install(&ctx, &per_db);
                    }
                }
                _ = sleep_until(next_full) => {
                    last_full = tokio::time::Instant::now();
                    match load_all(&ctx).await {
                        Ok(loaded) => {
                            if loaded != per_db {
                                per_db = loaded;
                                install(&ctx, &per_db);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "periodic pg_proc reload failed"),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    });
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Installs the union of the databases' catalogs (cached analyses are dropped).
fn install(ctx: &Context, per_db: &HashMap<String, FunctionCatalog>) {
    let catalog = merged(per_db.values());
    let n = catalog.len();
    ctx.analyzer.set_catalog(catalog);
    tracing::info!(
        functions = n,
        databases = per_db.len(),
        "loaded function volatility from pg_proc"
    );
}

/// Loads every database of the primary now (used at start and by `load`).
async fn load_all(ctx: &Context) -> Result<HashMap<String, FunctionCatalog>, TaskError> {
    fetch_all(ctx, ctx.topology.load().primary().addr.clone()).await
}

pub async fn load(ctx: &Context) -> Result<usize, TaskError> {
    let per_db = load_all(ctx).await?;
    let catalog = merged(per_db.values());
    let n = catalog.len();
    ctx.analyzer.set_catalog(catalog);
    Ok(n)
}

/// The catalog of the server at `node`, every database merged (SWITCH reads the target's
/// before pausing anyone).
pub async fn fetch(
    ctx: &Context,
    node: Arc<crate::config::NodeAddr>,
) -> Result<FunctionCatalog, TaskError> {
    Ok(merged(fetch_all(ctx, node).await?.values()))
}

async fn fetch_all(
    ctx: &Context,
    node: Arc<crate::config::NodeAddr>,
) -> Result<HashMap<String, FunctionCatalog>, TaskError> {
    let spec = ctx
        .monitor_spec(node.clone(), "pgsidecar-monitor")
        .ok_or(TaskError::NoLogin("no login to read pg_proc with yet"))?;
    let mut server = Server::connect(&spec).await?;
    let names = server.query_column(DATABASES).await;
    server.terminate().await;
    let mut out = HashMap::new();
    for db in names?.into_iter().flatten() {
        // A database the monitor login may not connect to fails the whole load: a catalog
        // missing one database's functions could take its user's `upper` for the built-in.
        let c = fetch_database(ctx, node.clone(), &db)
            .await
            .map_err(|e| TaskError::Database {
                database: db.clone(),
                source: Box::new(e),
            })?;
        out.insert(db, c);
    }
    Ok(out)
}

async fn fetch_database(
    ctx: &Context,
    node: Arc<crate::config::NodeAddr>,
    database: &str,
) -> Result<FunctionCatalog, TaskError> {
    let mut spec = ctx
        .monitor_spec(node, "pgsidecar-monitor")
        .ok_or(TaskError::NoLogin("no login to read pg_proc with yet"))?;
    spec.database = database.to_owned();
    let mut server = Server::connect(&spec).await?;
    let rows = server.query_column(QUERY).await;
    server.terminate().await;
    Ok(parse_rows(rows?.iter().flatten().map(String::as_str)))
}
