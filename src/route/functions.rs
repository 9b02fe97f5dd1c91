//! Loads function volatility (with argument counts) and view names from `pg_proc` and
//! `pg_class` of every database on the primary, so user functions are classified by what they
//! declare (a STABLE lookup function may run on a replica; a VOLATILE one may not, and a user's
//! `public.upper(int)` is not taken for the built-in) and reads of views are not cached.
//! Until it has loaded, unknown functions count as volatile: routing errs towards the primary.
//!
//! The catalog changes with DDL: a database is read again right after a DDL statement through
//! this sidecar commits there, and every database every `routing.catalog_refresh` (DDL run
//! elsewhere). Between a change and its reload, a new function is unknown (primary, uncached);
//! a changed one keeps its old volatility.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::analyze::FunctionCatalog;
use crate::backend::Server;
use crate::context::Context;

const DATABASES: &str = "SELECT datname FROM pg_catalog.pg_database \
    WHERE datallowconn AND NOT datistemplate ORDER BY 1";

/// One row per function (`f`, schema, name, provolatile, pronargs, pronargdefaults, variadic)
/// and per view (`v`, schema, name), tab-separated.
const QUERY: &str = "SELECT 'f' || chr(9) || n.nspname || chr(9) || p.proname || chr(9) || \
    p.provolatile::text || chr(9) || p.pronargs || chr(9) || p.pronargdefaults || chr(9) || \
    (p.provariadic <> 0)::int \
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
    UNION ALL SELECT 'v' || chr(9) || n.nspname || chr(9) || c.relname \
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Requests to read databases' catalogs again (DDL committed through this sidecar).
#[derive(Default)]
pub struct Reload {
    databases: Mutex<HashSet<String>>,
    wake: Notify,
}

impl Reload {
    /// DDL committed in `database`: read its catalog again soon.
    pub fn request(&self, database: &str) {
        self.databases.lock().insert(database.to_owned());
        self.wake.notify_one();
    }

    fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.databases.lock())
    }
}

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

fn merged<'a>(dbs: impl Iterator<Item = &'a FunctionCatalog>) -> FunctionCatalog {
    let mut catalog = FunctionCatalog::builtin();
    for c in dbs {
        catalog.merge(c);
    }
    catalog
}

/// Loads every database of the primary now (used at start and by `load`).
async fn load_all(ctx: &Context) -> Result<HashMap<String, FunctionCatalog>, String> {
    fetch_all(ctx, ctx.topology.load().primary().addr.clone()).await
}

pub async fn load(ctx: &Context) -> Result<usize, String> {
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
) -> Result<FunctionCatalog, String> {
    Ok(merged(fetch_all(ctx, node).await?.values()))
}

async fn fetch_all(
    ctx: &Context,
    node: Arc<crate::config::NodeAddr>,
) -> Result<HashMap<String, FunctionCatalog>, String> {
    let spec = ctx
        .monitor_spec(node.clone(), "pgsidecar-monitor")
        .ok_or("no login to read pg_proc with yet")?;
    let mut server = Server::connect(&spec).await.map_err(|e| e.to_string())?;
    let names = server
        .query_column(DATABASES)
        .await
        .map_err(|e| e.to_string());
    server.terminate().await;
    let mut out = HashMap::new();
    for db in names?.into_iter().flatten() {
        // A database the monitor login may not connect to fails the whole load: a catalog
        // missing one database's functions could take its user's `upper` for the built-in.
        let c = fetch_database(ctx, node.clone(), &db)
            .await
            .map_err(|e| format!("database {db}: {e}"))?;
        out.insert(db, c);
    }
    Ok(out)
}

async fn fetch_database(
    ctx: &Context,
    node: Arc<crate::config::NodeAddr>,
    database: &str,
) -> Result<FunctionCatalog, String> {
    let mut spec = ctx
        .monitor_spec(node, "pgsidecar-monitor")
        .ok_or("no login to read pg_proc with yet")?;
    spec.database = database.to_owned();
    let mut server = Server::connect(&spec).await.map_err(|e| e.to_string())?;
    let rows = server.query_column(QUERY).await.map_err(|e| e.to_string());
    server.terminate().await;
    Ok(parse_rows(rows?.iter().flatten().map(String::as_str)))
}

fn parse_rows<'a>(rows: impl Iterator<Item = &'a str>) -> FunctionCatalog {
    let mut catalog = FunctionCatalog::empty();
    for r in rows {
        let p: Vec<&str> = r.split('\t').collect();
        match p.as_slice() {
            ["f", schema, name, vol, nargs, ndefaults, variadic] => {
                let (Some(v), Ok(n), Ok(d)) = (
                    vol.chars().next(),
                    nargs.parse::<u16>(),
                    ndefaults.parse::<u16>(),
                ) else {
                    continue;
                };
                catalog.insert_proc(
                    schema,
                    name,
                    n,
                    d,
                    *variadic == "1",
                    crate::analyze::Volatility::from_provolatile(v),
                );
            }
            ["v", schema, name] => catalog.insert_view(schema, name),
            _ => {}
        }
    }
    catalog
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{TableRef, Volatility};

    #[test]
    fn rows_give_arity_aware_functions_and_views() {
        let c = parse_rows(
            [
                "f\tpg_catalog\tupper\ti\t1\t0\t0",
                "f\tpublic\tupper\tv\t1\t0\t0",
                "f\tpublic\tlog_hit\tv\t2\t1\t0",
                "f\tpublic\tconcat_all\ts\t1\t0\t1",
                "v\tpublic\tprice_list",
            ]
            .into_iter(),
        );
        assert_eq!(c.resolve(None, "upper", Some(1)), None, "ambiguous");
        assert_eq!(
            c.resolve(Some("pg_catalog"), "upper", Some(1)),
            Some(Volatility::Immutable)
        );
        assert_eq!(
            c.resolve(None, "log_hit", Some(1)),
            Some(Volatility::Volatile)
        );
        assert_eq!(c.resolve(None, "log_hit", Some(3)), None, "too many args");
        assert_eq!(
            c.resolve(None, "concat_all", Some(5)),
            Some(Volatility::Stable)
        );
        assert!(c.is_view(&TableRef::parse("price_list")));
        assert!(c.is_view(&TableRef::parse("public.price_list")));
        assert!(!c.is_view(&TableRef::parse("other.price_list")));
    }
}
