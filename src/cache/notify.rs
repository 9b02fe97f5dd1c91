//! Invalidation for writes that bypass every sidecar (another service, psql on the primary,
//! cascades and triggers): `sql/invalidation.sql` makes the primary `pg_notify` the changed
//! table on channel `pgsidecar_invalidate`, and this task LISTENs for it on a dedicated
//! connection to the monitor database (`routing.monitor_database`: set it to the application's
//! database; NOTIFY does not cross databases). Notifications missed while disconnected cannot be recovered, so every
//! (re)connection starts by invalidating everything.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::backend::{ConnectSpec, Server};
use crate::context::Context;
use crate::wire::frame::take_cstr;
use crate::wire::msg;

pub const CHANNEL: &str = "pgsidecar_invalidate";

pub fn spawn(ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut shutdown = ctx.shutdown.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                r = listen_once(&ctx) => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "invalidation listener disconnected; reconnecting");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

async fn listen_once(ctx: &Context) -> Result<(), String> {
    let login = ctx
        .monitor_login
        .load_full()
        .ok_or("no login to LISTEN with yet")?;
    let cfg = ctx.config.load_full();
    let spec = ConnectSpec {
        node: ctx.topology.load().primary().addr.clone(),
        database: cfg
            .routing
            .monitor_database
            .clone()
            .unwrap_or_else(|| login.database.clone()),
        user: login.user.clone(),
        login: login.login.clone(),
        tls: cfg.upstream.tls,
        tls_connector: ctx.pools.shared.tls_connector.clone(),
        connect_timeout: cfg.pool.connect_timeout,
        startup_params: vec![("application_name".into(), "pgsidecar-listener".into())],
    };
    let database = spec.database.clone();
    let mut server = Server::connect(&spec).await.map_err(|e| e.to_string())?;
    if let Some(e) = server
        .simple(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| e.to_string())?
    {
        return Err(e.message);
    }
    // Anything written while this process was not listening may be in its L1: start afresh.
    // (Redis-held tokens were kept current by sidecars that were listening; with none, a table
    // written during the gap can be stale in L2 until its TTL: the documented backstop.)
    ctx.cache.resync_local();
    tracing::info!("listening for invalidations on channel {CHANNEL}");
    loop {
        let f = tokio::time::timeout(Duration::from_secs(30), server.read_frame()).await;
        let f = match f {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => {
                // Idle: prove the connection is alive, or reconnect.
                let mut q = BytesMut::new();
                msg::query(&mut q, "");
                server
                    .stream
                    .write_all(&q)
                    .await
                    .map_err(|e| e.to_string())?;
                continue;
            }
        };
        if f.tag != b'A' {
            continue;
        }
        let mut body = f.body().get(4..).unwrap_or_default();
        let _channel = take_cstr(&mut body);
        let Some(payload) = take_cstr(&mut body) else {
            continue;
        };
        let table = payload.rsplit('.').next().unwrap_or(&payload).to_string();
        tracing::debug!(%table, "invalidation from the primary");
        ctx.cache
            .invalidate(&[crate::cache::table_key(&database, &table).as_str()])
            .await;
    }
}
