//! The task behind [`crate::route::flush::Flusher`]: one connection to the primary that flushes
//! its WAL for waiting reads and reads its commit position after a fleet join (why: see
//! `route/flush.rs`). It lives here, above `Context`, because it follows the active topology,
//! the monitor login and the write log.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::TaskError;
use crate::backend::Server;
use crate::config::NodeAddr;
use crate::context::Context;
use crate::route::topology::{format_lsn, parse_lsn, Lsn};

/// Longest a flush query may take before the connection is dropped (and made again next time).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause after a failure (no login yet, primary down, a role refused the function).
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Starts the flushing task for `ctx.flusher`; it runs until shutdown.
pub fn spawn(ctx: Arc<Context>) {
    tokio::spawn(run(ctx));
}

async fn run(ctx: Arc<Context>) {
    let f = &ctx.flusher;
    let mut shutdown = ctx.shutdown.clone();
    let mut conn: Option<(Arc<NodeAddr>, Server)> = None;
    loop {
        tokio::select! {
            _ = f.wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        let want = f.wanted.load(Ordering::Relaxed);
        let primary = ctx.topology.load().primary().addr.clone();
        if conn.as_ref().is_some_and(|(addr, _)| *addr != primary) {
            conn = None; // a switch or a reload moved the primary: its positions start anew
            f.flushed.store(0, Ordering::Relaxed);
        }
        let join = f.catch_up.load(Ordering::Relaxed);
        if join > ctx.write_log.caught_up() {
            match catch_up(&ctx, &primary, &mut conn).await {
                Ok(lsn) => {
                    ctx.write_log.record_everything(lsn);
                    ctx.write_log.set_caught_up(join);
                    tracing::info!(position = %format_lsn(lsn), "caught up with the primary after joining the fleet");
                }
                Err(e) => {
                    conn = None;
                    tracing::warn!(error = %e, "could not read the primary's position after joining the fleet; reads stay on the primary meanwhile");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = shutdown.changed() => return,
                    }
                    f.wake.notify_one();
                    continue;
                }
            }
        }
        if want <= f.flushed.load(Ordering::Relaxed) {
            continue;
        }
        match flush(&ctx, &primary, &mut conn, want).await {
            Ok(committed) => {
                f.checks.fetch_add(1, Ordering::Relaxed);
                if committed {
                    f.commits.fetch_add(1, Ordering::Relaxed);
                }
                f.flushed.fetch_max(want, Ordering::Relaxed);
            }
            Err(e) => {
                conn = None;
                tracing::warn!(error = %e, "could not ask the primary to flush its WAL; reads wait for the WAL writer meanwhile");
                // Reads wait max_wait and use the primary meanwhile; do not hammer it.
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// The primary's current commit position ([`crate::route::lsn::COMMIT_POSITION_SQL`]).
async fn catch_up(
    ctx: &Context,
    primary: &Arc<NodeAddr>,
    conn: &mut Option<(Arc<NodeAddr>, Server)>,
) -> Result<Lsn, TaskError> {
    let s = connection(ctx, primary, conn).await?;
    let rows = tokio::time::timeout(
        QUERY_TIMEOUT,
        s.query_column(crate::route::lsn::COMMIT_POSITION_SQL),
    )
    .await
    .map_err(|_| TaskError::Timeout("position query"))??;
    rows.into_iter()
        .next()
        .flatten()
        .as_deref()
        .and_then(parse_lsn)
        .ok_or(TaskError::NoAnswer("position query gave no answer"))
}

/// The flusher's connection to `primary`, made on first use.
async fn connection<'a>(
    ctx: &Context,
    primary: &Arc<NodeAddr>,
    conn: &'a mut Option<(Arc<NodeAddr>, Server)>,
) -> Result<&'a mut Server, TaskError> {
    if conn.is_none() {
        let spec = ctx
            .monitor_spec(primary.clone(), "pgsidecar-flush")
            .ok_or(TaskError::NoLogin("no monitor login yet"))?;
        let mut s = Server::connect(&spec).await?;
        // Flush locally, wait for no standby: only the primary's flush matters here.
        if let Some(e) = s.simple("SET synchronous_commit = local").await? {
            return Err(TaskError::Refused(e.message));
        }
        *conn = Some((primary.clone(), s));
    }
    match conn.as_mut() {
        Some((_, s)) => Ok(s),
        None => Err(TaskError::NoConnection),
    }
}

/// Brings the primary's flush position to `want`; true when that took a commit.
async fn flush(
    ctx: &Context,
    primary: &Arc<NodeAddr>,
    conn: &mut Option<(Arc<NodeAddr>, Server)>,
    want: Lsn,
) -> Result<bool, TaskError> {
    let s = connection(ctx, primary, conn).await?;
    // One statement, so a record is written (and an xid taken) only when needed.
    let sql = format!(
        "SELECT CASE WHEN pg_current_wal_flush_lsn() >= '{}'::pg_lsn THEN 'flushed' \
         ELSE pg_logical_emit_message(true, 'pgsidecar', '')::text END",
        format_lsn(want)
    );
    let rows = tokio::time::timeout(QUERY_TIMEOUT, s.query_column(&sql))
        .await
        .map_err(|_| TaskError::Timeout("flush query"))??;
    match rows.into_iter().next().flatten() {
        Some(v) => Ok(v != "flushed"),
        None => Err(TaskError::NoAnswer("flush query gave no answer")),
    }
}
