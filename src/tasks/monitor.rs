//! Watches every node: role (`pg_is_in_recovery()`), WAL position, replication lag, health.
//! One task per node, each with its own connection, reconnecting with backoff by itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TaskError;
use crate::backend::Server;
use crate::context::Context;
use crate::route::topology::{parse_lsn, Node, Role, Topology};
use crate::wire::tag::back;

/// One text column: "<p|r> <lsn> <seconds behind while replay lags receive>", and for the
/// primary " s" when it has synchronous standbys (`synchronous_standby_names` set).
const PROBE: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN 'r ' || COALESCE(pg_last_wal_replay_lsn()::text, '0/0') || ' ' \
    || COALESCE(CASE WHEN pg_is_wal_replay_paused() OR pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn() \
    THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END, 0)::text \
    ELSE 'p ' || pg_current_wal_insert_lsn()::text || ' 0' \
    || CASE WHEN current_setting('synchronous_standby_names') <> '' THEN ' s' ELSE '' END END";

/// Starts a monitor for each node of the current topology.
pub fn spawn_all(ctx: &Arc<Context>) {
    spawn_for(ctx, ctx.topology.load_full());
}

/// Starts a monitor for each node of `topo`; they run until it is retired.
pub fn spawn_for(ctx: &Arc<Context>, topo: Arc<Topology>) {
    if topo.nodes.len() < 2 {
        return; // nothing to choose between: the primary's own errors say enough
    }
    for node in &topo.nodes {
        tokio::spawn(run(ctx.clone(), topo.clone(), node.clone()));
    }
}

async fn run(ctx: Arc<Context>, topo: Arc<Topology>, node: Arc<Node>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut conn: Option<Server> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        // A topology replaced by a reload, or closed after its rollback window, is not
        // watched any more; a warm standby environment still is, so switching back finds
        // its replicas verified.
        if topo.is_retired() {
            return;
        }
        let interval = ctx.config.load().routing.health_interval;
        if ctx.monitor_login.load().is_none() {
            // No credentials yet (flags-only start): the first client's login will lend them.
            // Until then replicas stay unverified and reads go to the primary.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = shutdown.changed() => return,
            }
        }
        let wait = match probe(&ctx, &topo, &node, &mut conn).await {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                interval
            }
            Err(e) => {
                conn = None;
                if node.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(node = %node.addr.display(), error = %e, "node is unhealthy");
                }
                *node.last_error.lock() = Some(e.to_string());
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff.min(interval.max(Duration::from_millis(100)) * 4)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            heard = between_probes(&mut conn) => {
                if heard == Heard::Ended {
                    // A replica that restarts comes back at its minimum recovery point, which
                    // can be behind the position probed before: that position must not count
                    // until a probe reads the real one (the probe below, or its retries).
                    conn = None;
                    if node.role() == Role::Replica {
                        node.forget_position();
                    }
                    tracing::info!(node = %node.addr.display(), "monitor connection ended between probes (restart or shutdown?): position forgotten, probing again");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// What the node said on the monitor's idle connection between two probes.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    /// A report (ParameterStatus after a reload or a promotion, a notice): probe again now.
    Report,
    /// A FATAL, the end of the connection, or anything else: the node is going away.
    Ended,
}

/// Waits for the node to speak on the monitor's idle connection (never, without one).
///
/// Why: a replica that restarts while no session is connected to it would otherwise keep its
/// old position until the next probe (`routing.health_interval`), and reads needing that
/// position could be sent to it while it is still behind. Postgres sends an idle session
/// nothing but reports, or a FATAL as it shuts down, so the monitor's own connection hears
/// of a restart as it begins, without polling. Cancel-safe: a message half read stays in the
/// connection's buffer for the next read.
async fn between_probes(conn: &mut Option<Server>) -> Heard {
    let Some(server) = conn.as_mut() else {
        return std::future::pending().await;
    };
    match server.read_frame().await {
        Ok(f) if f.tag == back::PARAMETER_STATUS || f.tag == back::NOTICE_RESPONSE => Heard::Report,
        _ => Heard::Ended,
    }
}

async fn probe(
    ctx: &Context,
    topo: &Topology,
    node: &Node,
    conn: &mut Option<Server>,
) -> Result<(), TaskError> {
    if conn.is_none() {
        let Some(spec) = ctx.monitor_spec(node.addr.clone(), "pgsidecar-monitor") else {
            return Err(TaskError::NoLogin("no credentials to monitor with yet (set a user/password in upstream.primary, or wait for a client to log in)"));
        };
        *conn = Some(Server::connect(&spec).await?);
    }
    let Some(server) = conn.as_mut() else {
        return Err(TaskError::NoConnection);
    };
    let sent = Instant::now();
    let row = tokio::time::timeout(Duration::from_secs(2), server.query_column(PROBE))
        .await
        .map_err(|_| TaskError::Timeout("probe"))??;
    let text = row
        .into_iter()
        .next()
        .flatten()
        .ok_or(TaskError::NoAnswer("probe returned no row"))?;
    let mut parts = text.split(' ');
    let (role, lsn, secs, sync) = (
        parts.next(),
        parts.next().and_then(parse_lsn),
        parts.next().and_then(|s| s.parse::<f64>().ok()),
        parts.next() == Some("s"),
    );
    let (Some(role), Some(lsn)) = (role, lsn) else {
        return Err(TaskError::UnexpectedProbe(text));
    };
    let was_recovery = node.in_recovery.swap(role == "r", Ordering::Relaxed);
    if node.checked.swap(true, Ordering::Relaxed) && was_recovery != (role == "r") {
        tracing::warn!(node = %node.addr.display(), in_recovery = role == "r", "node changed role");
    }
    node.lsn.store(lsn, Ordering::Relaxed);
    node.observe(sent, lsn);
    if role == "r" {
        let primary_lsn = topo.primary().lsn.load(Ordering::Relaxed);
        node.lag_bytes
            .store(primary_lsn.saturating_sub(lsn), Ordering::Relaxed);
        node.lag_micros.store(
            (secs.unwrap_or(0.0).max(0.0) * 1e6) as u64,
            Ordering::Relaxed,
        );
    } else {
        node.lag_bytes.store(0, Ordering::Relaxed);
        node.lag_micros.store(0, Ordering::Relaxed);
        node.no_sync_standbys.store(!sync, Ordering::Relaxed);
    }
    if !node.healthy.swap(true, Ordering::Relaxed) {
        tracing::info!(node = %node.addr.display(), role = if role == "r" { "replica" } else { "primary" }, "node is healthy");
    }
    *node.last_check.lock() = Some(Instant::now());
    *node.last_error.lock() = None;
    Ok(())
}
