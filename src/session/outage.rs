//! Riding out a short primary outage (a restart, a failover): new transactions and
//! autocommit writes wait for the primary (or a promoted replica) for up to
//! `upstream.outage_hold` instead of failing, and reads that would have fallen back to the
//! primary wait for a replica that has replayed what they must see.
//!
//! Only requests that never reached a server are held: a transaction in flight when the
//! primary went away fails with the server's error, since its writes may have committed and
//! running them again could apply them twice.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::relay::Session;
use crate::backend::BackendError;
use crate::error::ClientFacing;
use crate::pool::{Checkout, PoolError};
use crate::route::{Lsn, Node};
use crate::wire::sqlstate;

/// How often a held request tries the primary again: short enough that a restart of a
/// second or two costs little more than itself, long enough that a few hundred held clients
/// do not flood a server that is starting up with connection attempts.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// When the current outage was first noticed, so it is logged once, not per held request.
static OUTAGE: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// A request the proxy answers with an error itself.
pub(super) struct Refusal {
    pub code: String,
    pub message: String,
}

impl Refusal {
    pub(super) fn from_pool(e: &PoolError) -> Refusal {
        crate::metrics::client_error(e.metric_label());
        Refusal {
            code: e.sqlstate().to_string(),
            message: e.client_message(),
        }
    }

    /// The primary stayed out for the whole hold: 57P03 while it said it is starting up or
    /// shutting down, else 08006 (nothing answers).
    fn expired(last: &PoolError, hold: Duration) -> Refusal {
        let restarting = matches!(
            last,
            PoolError::Backend(BackendError::Server { fields, .. })
                if fields.code.starts_with("57P")
        );
        let code = if restarting {
            sqlstate::CANNOT_CONNECT_NOW
        } else {
            sqlstate::CONNECTION_FAILURE
        };
        Refusal {
            code: code.to_string(),
            message: format!(
                "pgsidecar: the primary database server was unavailable for {hold:?} \
                 (upstream.outage_hold): {}",
                last.client_message()
            ),
        }
    }
}

/// Whether a failure to get a connection means the server is down or restarting (worth
/// waiting for), as opposed to a refusal that waiting does not change (a bad password, an
/// unknown database, a full pool).
pub(super) fn is_outage(e: &PoolError) -> bool {
    match e {
        PoolError::Exhausted { .. } => false,
        PoolError::Backend(b) => match b {
            BackendError::Connect { .. }
            | BackendError::ConnectTimeout { .. }
            | BackendError::Io(_) => true,
            BackendError::Server { fields, .. } => outage_code(&fields.code),
            _ => false,
        },
    }
}

/// SQLSTATEs a server sends while it shuts down or starts up (57P01 admin shutdown, 57P02
/// crash shutdown, 57P03 cannot connect now), and connection failures.
pub(super) fn outage_code(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03") || code.starts_with("08")
}

fn outage_noticed(hold: Duration, error: &PoolError) {
    let mut o = OUTAGE.lock();
    if o.is_none() {
        *o = Some(std::time::Instant::now());
        tracing::warn!(error = %error, hold = ?hold, "primary unavailable: holding new transactions and writes (upstream.outage_hold) and serving reads from replicas");
    }
}

fn outage_over() {
    if let Some(since) = OUTAGE.lock().take() {
        tracing::info!(after = ?since.elapsed(), "primary available again: held requests resume");
    }
}

/// How [`through_outage`] gave up: the last error, and whether it was the hold that ran out
/// (rather than an error that is no outage, or a hold of zero).
pub(super) struct GaveUp {
    pub error: PoolError,
    pub expired: bool,
}

/// Runs `attempt` (something that needs the primary: a client's login, a connection for a new
/// transaction) again while it fails because the primary is down or restarting, for up to
/// `upstream.outage_hold`: a client connecting or writing during a restart waits for it
/// instead of failing. `what` names the attempt in the log line of an expired hold.
pub(super) async fn through_outage<T, F, Fut>(
    ctx: &crate::context::Context,
    what: &str,
    mut attempt: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PoolError>>,
{
    let first = match attempt().await {
        Ok(x) => return Ok(x),
        Err(e) => e,
    };
    let hold = ctx.config.load().upstream.outage_hold;
    if !is_outage(&first) || hold.is_zero() {
        return Err(GaveUp {
            error: first,
            expired: false,
        });
    }
    outage_noticed(hold, &first);
    let held = crate::metrics::Held::start();
    let deadline = Instant::now() + hold;
    let mut last = first;
    loop {
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(error = %last, hold = ?hold, "primary still unavailable after upstream.outage_hold: {what} refused");
            return Err(GaveUp {
                error: last,
                expired: true,
            });
        }
        tokio::time::sleep(RETRY_EVERY.min(deadline - now)).await;
        match attempt().await {
            Ok(x) => {
                outage_over();
                held.resumed(false);
                return Ok(x);
            }
            Err(e) if is_outage(&e) => last = e,
            Err(e) => {
                return Err(GaveUp {
                    error: e,
                    expired: false,
                })
            }
        }
    }
}

impl Session {
    /// A connection to the primary for a new transaction or autocommit request. While the
    /// primary is unreachable or restarting, waits (up to `upstream.outage_hold`) for it, or
    /// for a replica promoted meanwhile (the topology follows it), re-resolving the primary at
    /// every try.
    pub(super) async fn checkout_primary(&mut self) -> Result<(Arc<Node>, Checkout), Refusal> {
        let wait = self.time.limits.query_wait;
        let ctx = self.ctx.clone();
        through_outage(&ctx, "request", || {
            let primary = self.ctx.topology.load().primary().clone();
            let pool = self.pool_for(&primary);
            async move { pool.checkout_within(wait).await.map(|s| (primary, s)) }
        })
        .await
        .map_err(|g| {
            if g.expired {
                Refusal::expired(&g.error, ctx.config.load().upstream.outage_hold)
            } else {
                Refusal::from_pool(&g.error)
            }
        })
    }

    /// A connection for a read that no replica could take at once: the primary, or — while
    /// the primary is unreachable or restarting — the first replica to replay `min_lsn`,
    /// waiting up to `upstream.outage_hold`. Returns the node, the connection and what was
    /// done, for the routing reason.
    pub(super) async fn read_without_replica(
        &mut self,
        min_lsn: Lsn,
    ) -> Result<(Arc<Node>, Checkout, &'static str), Refusal> {
        let wait = self.time.limits.query_wait;
        let primary = self.ctx.topology.load().primary().clone();
        let first = match self.pool_for(&primary).checkout_within(wait).await {
            Ok(s) => return Ok((primary, s, "primary")),
            Err(e) => e,
        };
        let hold = self.ctx.config.load().upstream.outage_hold;
        if !is_outage(&first) || hold.is_zero() {
            return Err(Refusal::from_pool(&first));
        }
        outage_noticed(hold, &first);
        match self.replica_during_outage(min_lsn, hold).await {
            Ok((node, s, on_replica)) => Ok((
                node,
                s,
                if on_replica {
                    "replica that replayed the read's writes (primary unavailable)"
                } else {
                    "primary (back after an outage)"
                },
            )),
            Err(last) => Err(Refusal::expired(&last.unwrap_or(first), hold)),
        }
    }

    /// Polls replicas for one that has replayed `min_lsn` (the primary is down, so nothing
    /// newer is coming and most already have), trying the primary again in between, for at
    /// most `hold`. The flag says whether a replica serves.
    pub(super) async fn replica_during_outage(
        &mut self,
        min_lsn: Lsn,
        hold: Duration,
    ) -> Result<(Arc<Node>, Checkout, bool), Option<PoolError>> {
        let held = crate::metrics::Held::start();
        let deadline = Instant::now() + hold;
        let mut last = None;
        loop {
            let topo = self.ctx.topology.load_full();
            let routing = &self.ctx.config.load().routing;
            let candidates: Vec<Arc<Node>> = topo
                .eligible_replicas(routing.max_lag_bytes, routing.max_lag, 0)
                .into_iter()
                .cloned()
                .collect();
            let now = Instant::now();
            if now >= deadline {
                return Err(last);
            }
            let slice = RETRY_EVERY.min(deadline - now);
            if candidates.is_empty() {
                tokio::time::sleep(slice).await;
            } else if let Some((node, s)) = self.poll_replicas(&candidates, min_lsn, slice).await {
                held.resumed(true);
                return Ok((node, s, true));
            }
            let primary = self.ctx.topology.load().primary().clone();
            match self
                .pool_for(&primary)
                .checkout_within(self.time.limits.query_wait)
                .await
            {
                Ok(s) => {
                    outage_over();
                    held.resumed(false);
                    return Ok((primary, s, false));
                }
                Err(e) if is_outage(&e) => last = Some(e),
                Err(e) => return Err(Some(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> PoolError {
        let mut raw = bytes::BytesMut::new();
        crate::wire::msg::error_response(&mut raw, crate::wire::msg::Severity::Fatal, code, "x");
        let raw = raw.freeze();
        PoolError::Backend(BackendError::Server {
            fields: crate::wire::msg::ErrorFields::decode(&raw[5..]),
            raw: crate::wire::frame::Frame {
                tag: crate::wire::tag::back::ERROR_RESPONSE,
                bytes: raw,
            },
        })
    }

    #[test]
    fn restarting_or_unreachable_servers_are_outages_and_refusals_are_not() {
        assert!(is_outage(&server_error("57P03")));
        assert!(is_outage(&server_error("57P01")));
        assert!(is_outage(&PoolError::Backend(BackendError::Connect {
            addr: "x".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        })));
        assert!(!is_outage(&server_error("28P01")));
        assert!(!is_outage(&server_error("3D000")));
        assert!(!is_outage(&PoolError::Exhausted {
            database: "d".into(),
            user: "u".into(),
            max: 1,
            waited: Duration::ZERO,
        }));
    }

    #[test]
    fn an_expired_hold_says_57p03_while_restarting_else_08006() {
        let hold = Duration::from_secs(1);
        assert_eq!(Refusal::expired(&server_error("57P03"), hold).code, "57P03");
        let refused = PoolError::Backend(BackendError::Connect {
            addr: "x".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        let r = Refusal::expired(&refused, hold);
        assert_eq!(r.code, "08006");
        assert!(r.message.contains("outage_hold"), "{}", r.message);
    }
}
