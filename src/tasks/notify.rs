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

use super::TaskError;
use crate::backend::Server;
use crate::context::Context;
use crate::wire::frame::take_cstr;
use crate::wire::msg;
use crate::wire::tag::back;

pub const CHANNEL: &str = "pgsidecar_invalidate";

pub fn spawn(ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut shutdown = ctx.shutdown.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                r = listen_once(&ctx, &mut backoff) => r,
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

/// Listens until the connection fails; `backoff` is reset once listening, so a connection that
/// worked for hours is retried promptly, not after the delay earlier failures had reached.
async fn listen_once(ctx: &Context, backoff: &mut Duration) -> Result<(), TaskError> {
    // Notifications and positions belong to one environment: after a SWITCH, listen anew on
    // the new primary (and never record an old position in the new write log).
    let mut switched = ctx.envs.subscribe();
    let epoch = *switched.borrow_and_update();
    let spec = ctx
        .monitor_spec(
            ctx.topology.load().primary().addr.clone(),
            "pgsidecar-listener",
        )
        .ok_or(TaskError::NoLogin("no login to LISTEN with yet"))?;
    let database = spec.database.clone();
    let mut server = Server::connect(&spec).await?;
    if let Some(e) = server.simple(&format!("LISTEN {CHANNEL}")).await? {
        return Err(TaskError::Refused(e.message));
    }
    // Anything written while this process was not listening may be in its L1: start afresh.
    // (Redis-held tokens were kept current by sidecars that were listening; with none, a table
    // written during the gap can be stale in L2 until its TTL: the documented backstop.)
    ctx.cache.resync_local();
    *backoff = Duration::from_millis(100);
    tracing::info!("listening for invalidations on channel {CHANNEL}");
    loop {
        let f = tokio::select! {
            f = tokio::time::timeout(Duration::from_secs(30), server.read_frame()) => f,
            _ = switched.changed() => return Err(TaskError::Switched),
        };
        let f = match f {
            Ok(r) => r?,
            Err(_) => {
                // Idle: prove the connection is alive, or reconnect.
                let mut q = BytesMut::new();
                msg::query(&mut q, "");
                server.stream.write_all(&q).await?;
                continue;
            }
        };
        let Some(first) = notified_table(&f) else {
            continue;
        };
        let mut tables = vec![first];
        while !tables.is_empty() {
            let (position, later) = primary_position(&mut server, &mut tables).await?;
            invalidate(ctx, epoch, &database, tables, position).await?;
            tables = later;
        }
    }
}

/// The write behind a notification committed before the notification arrived, at a position no
/// replica may have replayed yet: asks the primary for its WAL *insert* position now (one query
/// for the batch), which is at or after every such commit record, even an asynchronous commit's
/// that is not written yet (the write position, `pg_current_wal_lsn()`, can be before it). Notifications arriving before the answer
/// join `tables`; those after it (their commits may be later than the position) are returned
/// for the next round.
async fn primary_position(
    server: &mut Server,
    tables: &mut Vec<String>,
) -> Result<(u64, Vec<String>), TaskError> {
    let mut q = BytesMut::new();
    msg::query(&mut q, crate::route::lsn::COMMIT_POSITION_SQL);
    server.stream.write_all(&q).await?;
    let mut lsn = None;
    let mut later = Vec::new();
    loop {
        let f = server.read_frame().await?;
        match f.tag {
            back::NOTIFICATION if lsn.is_none() => tables.extend(notified_table(&f)),
            back::NOTIFICATION => later.extend(notified_table(&f)),
            back::DATA_ROW => {
                let b = f.body();
                lsn = Some(
                    b.get(6..)
                        .and_then(|v| {
                            crate::route::topology::parse_lsn(&String::from_utf8_lossy(v))
                        })
                        .unwrap_or(0),
                );
            }
            back::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    Ok((lsn.unwrap_or(0), later))
}

/// Invalidates the notified tables with the primary's position: the cache records it in the
/// write log first (reads and cache fills then demand a replica that has it) and publishes it
/// with the new tokens, so other sidecars demand it too.
async fn invalidate(
    ctx: &Context,
    epoch: u64,
    database: &str,
    mut tables: Vec<String>,
    lsn: u64,
) -> Result<(), TaskError> {
    tables.sort();
    tables.dedup();
    tracing::debug!(?tables, lsn, "invalidation from the primary");
    // Held like a transaction, so no SWITCH lands between the check and the record.
    let _txn = ctx.envs.enter().await;
    if ctx.envs.epoch() != epoch {
        return Err(TaskError::Switched);
    }
    let keys: Vec<String> = tables
        .iter()
        .map(|t| crate::cache::table_key(database, t))
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    ctx.cache.invalidate(&refs, lsn).await;
    Ok(())
}

/// Longest payload taken as a table name: `schema.table`, each at most NAMEDATALEN - 1 bytes.
const MAX_NOTIFY_PAYLOAD: usize = 2 * 63 + 1;

/// The bare table name a NotificationResponse carries (`schema.table`). Any database user can
/// NOTIFY the channel with any payload: one that cannot be a table name (too long, empty) is
/// dropped and counted, so made-up names cannot grow the token map and Redis without bound.
fn notified_table(f: &crate::wire::Frame) -> Option<String> {
    if f.tag != back::NOTIFICATION {
        return None;
    }
    let mut body = f.body().get(4..)?;
    let _channel = take_cstr(&mut body)?;
    let payload = take_cstr(&mut body)?;
    let table = payload.rsplit('.').next().unwrap_or(&payload);
    if payload.len() > MAX_NOTIFY_PAYLOAD || table.is_empty() || table.contains('\0') {
        crate::metrics::security_event("invalidation_rejected");
        tracing::warn!(
            len = payload.len(),
            "cache: NOTIFY payload that cannot be a table name ignored"
        );
        return None;
    }
    Some(table.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(payload: &str) -> crate::wire::Frame {
        let mut body = 42i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"pgsidecar_invalidate\0");
        body.extend_from_slice(payload.as_bytes());
        body.push(0);
        let mut bytes = vec![back::NOTIFICATION];
        bytes.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        bytes.extend_from_slice(&body);
        crate::wire::Frame {
            tag: back::NOTIFICATION,
            bytes: bytes.into(),
        }
    }

    #[test]
    fn notify_payloads_that_cannot_be_table_names_are_ignored() {
        assert_eq!(
            notified_table(&notification("public.prices")).as_deref(),
            Some("prices")
        );
        assert!(notified_table(&notification(&"x".repeat(10_000))).is_none());
        assert!(notified_table(&notification("public.")).is_none());
        assert!(notified_table(&notification("")).is_none());
    }
}
