//! Makes an asynchronous commit reach the replicas now rather than when the WAL writer gets to
//! it, for reads that wait for it.
//!
//! Why: a commit's position is the primary's WAL insert position ([`super::lsn::COMMIT_POSITION_SQL`]).
//! Under `synchronous_commit = off` the primary acknowledges a commit before writing its
//! record, and streams WAL only once it is flushed: the WAL writer does that every
//! `wal_writer_delay` (200 ms by default). A read that must see such a commit would wait on
//! every replica for up to that long, longer than `max_wait`, and land on the primary. So
//! when a read starts waiting for a position the primary may not have flushed, one background
//! connection to the primary checks its flush position and, only if it is short, commits one
//! transaction under `synchronous_commit = local` that writes a WAL record (an empty
//! transactional `pg_logical_emit_message`, which any role may call and no decoder needs): its
//! commit flushes all WAL before it. (A transaction that only takes an xid is not enough:
//! Postgres commits a transaction that wrote no WAL asynchronously whatever the setting, and
//! there is no SQL function that just flushes, before Postgres 17's `flush` argument of
//! `pg_logical_emit_message`.) The read then waits about one round trip plus replay (2–3 ms
//! in the test lab) instead of the WAL writer's delay.
//!
//! Cost: nothing on the write path; for waiting reads, at most one query in flight per sidecar
//! (requests made meanwhile are served by the next one, which covers all of them), and one
//! xid, ~100 bytes of WAL and a flush only when the WAL was not flushed already (never under `synchronous_commit`
//! on, local or remote_*, whose commits are flushed before they are acknowledged, unless the
//! position is that of other sessions' concurrent WAL). Failures only cost the reads their
//! replica: they wait `max_wait` as before, then go to the primary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::topology::{format_lsn, Lsn};
use crate::backend::Server;
use crate::config::NodeAddr;
use crate::context::Context;

/// Longest a flush query may take before the connection is dropped (and made again next time).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause after a failure (no login yet, primary down, a role refused the function).
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Positions that waiting reads want flushed on the active primary.
#[derive(Default)]
pub struct Flusher {
    /// The highest position asked for.
    wanted: AtomicU64,
    /// A position the primary is known to have flushed (0 after a change of primary).
    flushed: AtomicU64,
    wake: Notify,
    /// Flush queries sent, and those that had to commit (for SHOW STATS and the docs' figures).
    pub checks: AtomicU64,
    pub commits: AtomicU64,
    /// The latest fleet join (`crate::cache::Cache::fleet_join`) whose catch-up position is
    /// asked for, and the latest one caught up (`WriteLog::caught_up`).
    catch_up: AtomicU64,
}

impl Flusher {
    /// A read waits for `lsn`: have the primary flush its WAL up to it, if it has not already.
    /// Never blocks.
    pub fn want(&self, lsn: Lsn) {
        if lsn <= self.flushed.load(Ordering::Relaxed) {
            return;
        }
        self.wanted.fetch_max(lsn, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// This sidecar (re)joined the fleet sharing Redis (join number `join`): have the primary's
    /// current commit position recorded for every table, then mark that join caught up. Writes
    /// through other sidecars acknowledged while it was out of the fleet (their messages
    /// possibly missed) all committed before that position. Never blocks.
    pub fn catch_up(&self, join: u64) {
        if self.catch_up.fetch_max(join, Ordering::Relaxed) < join {
            self.wake.notify_one();
        }
    }
}

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

/// The primary's current commit position ([`super::lsn::COMMIT_POSITION_SQL`]).
async fn catch_up(
    ctx: &Context,
    primary: &Arc<NodeAddr>,
    conn: &mut Option<(Arc<NodeAddr>, Server)>,
) -> Result<Lsn, String> {
    let s = connection(ctx, primary, conn).await?;
    let rows = tokio::time::timeout(
        QUERY_TIMEOUT,
        s.query_column(super::lsn::COMMIT_POSITION_SQL),
    )
    .await
    .map_err(|_| "position query timed out".to_string())?
    .map_err(|e| e.to_string())?;
    rows.into_iter()
        .next()
        .flatten()
        .as_deref()
        .and_then(super::topology::parse_lsn)
        .ok_or_else(|| "position query gave no answer".into())
}

/// The flusher's connection to `primary`, made on first use.
async fn connection<'a>(
    ctx: &Context,
    primary: &Arc<NodeAddr>,
    conn: &'a mut Option<(Arc<NodeAddr>, Server)>,
) -> Result<&'a mut Server, String> {
    if conn.is_none() {
        let spec = ctx
            .monitor_spec(primary.clone(), "pgsidecar-flush")
            .ok_or("no monitor login yet")?;
        let mut s = Server::connect(&spec).await.map_err(|e| e.to_string())?;
        // Flush locally, wait for no standby: only the primary's flush matters here.
        if let Some(e) = s
            .simple("SET synchronous_commit = local")
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(e.message);
        }
        *conn = Some((primary.clone(), s));
    }
    match conn.as_mut() {
        Some((_, s)) => Ok(s),
        None => Err("no connection".into()),
    }
}

/// Brings the primary's flush position to `want`; true when that took a commit.
async fn flush(
    ctx: &Context,
    primary: &Arc<NodeAddr>,
    conn: &mut Option<(Arc<NodeAddr>, Server)>,
    want: Lsn,
) -> Result<bool, String> {
    let s = connection(ctx, primary, conn).await?;
    // One statement, so a record is written (and an xid taken) only when needed.
    let sql = format!(
        "SELECT CASE WHEN pg_current_wal_flush_lsn() >= '{}'::pg_lsn THEN 'flushed' \
         ELSE pg_logical_emit_message(true, 'pgsidecar', '')::text END",
        format_lsn(want)
    );
    let rows = tokio::time::timeout(QUERY_TIMEOUT, s.query_column(&sql))
        .await
        .map_err(|_| "flush query timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match rows.into_iter().next().flatten() {
        Some(v) => Ok(v != "flushed"),
        None => Err("flush query gave no answer".into()),
    }
}
