//! Timeouts the proxy enforces for a client: `query_timeout` (the statement is cancelled on
//! the server, which answers 57014), `transaction_timeout` (25P04) and
//! `idle_in_transaction_timeout` (25P03) — the client is disconnected as Postgres would, and
//! its backend rolled back and returned to the pool clean —, `client_idle_timeout` (57P05)
//! between transactions, and `query_wait_timeout` for a free backend (53300, in `pool`).
//!
//! Each comes from `[pool]`, overridden per user/database/application by rules with only those
//! conditions and per request by rules matching its statements (`route::rules`); all of it
//! is read from the live configuration, so a reload applies to the next request.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::attachment::Backend;
use super::relay::Session;
use super::SessionError;
use crate::wire::sqlstate;
use crate::wire::tag::txn;

/// Timeouts in force for the current request and session; zero = off.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Limits {
    /// `None`: the pool's `query_wait_timeout`.
    pub query_wait: Option<Duration>,
    pub query: Duration,
    pub transaction: Duration,
    pub idle_in_transaction: Duration,
    pub client_idle: Duration,
}

/// Where the client is in its timeouts.
#[derive(Debug)]
pub(super) struct Clock {
    /// The client's request in flight was sent to its backend at…
    pub query_since: Option<Instant>,
    /// …and has been cancelled for `query_timeout` already.
    pub query_cancelled: bool,
    /// The transaction (or autocommit request) holding a backend began at…
    pub txn_since: Option<Instant>,
    /// `transaction_timeout` passed while a request ran: it was cancelled, and the session
    /// ends once the backend has answered.
    pub txn_expired: bool,
    /// The backend last answered everything the client asked at…
    pub idle_since: Instant,
    /// The client last sent something at…
    pub client_seen: Instant,
}

impl Clock {
    /// A client request was sent to the backend: its query (and perhaps transaction) starts.
    pub fn request_sent(&mut self) {
        let now = Instant::now();
        if self.query_since.is_none() {
            self.query_since = Some(now);
            self.query_cancelled = false;
        }
        if self.txn_since.is_none() {
            self.txn_since = Some(now);
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        let now = Instant::now();
        Clock {
            query_since: None,
            query_cancelled: false,
            txn_since: None,
            txn_expired: false,
            idle_since: now,
            client_seen: now,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Query,
    Transaction,
    IdleInTransaction,
    ClientIdle,
    /// Not a timeout: a write announced to the cache is still in flight and its announcement
    /// must be renewed before it expires (`renew_announced`).
    Announcement,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Transaction => "transaction",
            Kind::IdleInTransaction => "idle_in_transaction",
            Kind::ClientIdle => "client_idle",
            Kind::Announcement => "announcement",
        }
    }
}

impl Backend {
    /// Asks the server to cancel what the attached backend runs, and waits (briefly) until the
    /// postmaster has passed it on, so the cancel cannot land on a later request: the backend
    /// is not given back before the request it was meant for has answered.
    pub async fn cancel_on_server(&mut self) {
        let Some(att) = self.attached.as_ref() else {
            return;
        };
        let (node, pid, secret) = (att.server.node.clone(), att.server.pid, att.server.secret);
        let sent = tokio::time::timeout(Duration::from_secs(2), async move {
            let mut conn = crate::backend::connect_node(&node).await?;
            crate::backend::send_cancel(&mut conn, pid, secret).await?;
            // The postmaster closes the connection once it has signalled the backend.
            let mut b = [0u8; 1];
            let _ = conn.read(&mut b).await;
            Ok::<_, std::io::Error>(())
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!(pid, "could not send a cancel request for a timeout");
        }
    }
}

impl Session {
    /// Resolves the timeouts for the request about to be dispatched (and the session's).
    pub(super) fn resolve_limits(&mut self) {
        let cfg = self.ctx.config.load();
        let p = &cfg.pool;
        let mut l = Limits {
            query_wait: None,
            query: p.query_timeout,
            transaction: p.transaction_timeout,
            idle_in_transaction: p.idle_in_transaction_timeout,
            client_idle: p.client_idle_timeout,
        };
        let rules = self.ctx.rules.load();
        if rules.has_timeouts() {
            let who = self.identity.who();
            let analyses: Vec<_> = self
                .request
                .pending
                .iter()
                .filter_map(|m| m.analysis.clone())
                .collect();
            let mut t = rules.request_timeouts(&analyses, &who);
            let session = rules.session_timeouts(&who);
            t.query = t.query.or(session.query);
            t.transaction = t.transaction.or(session.transaction);
            t.idle_in_transaction = t.idle_in_transaction.or(session.idle_in_transaction);
            t.client_idle = t.client_idle.or(session.client_idle);
            t.query_wait = t.query_wait.or(session.query_wait);
            l.query_wait = t.query_wait;
            l.query = t.query.unwrap_or(l.query);
            l.client_idle = t.client_idle.unwrap_or(l.client_idle);
            if self.time.clock.txn_since.is_none() {
                // A transaction keeps the limits of the request that began it.
                l.transaction = t.transaction.unwrap_or(l.transaction);
                l.idle_in_transaction = t.idle_in_transaction.unwrap_or(l.idle_in_transaction);
            } else {
                l.transaction = self.time.limits.transaction;
                l.idle_in_transaction = self.time.limits.idle_in_transaction;
            }
        }
        self.time.limits = l;
    }

    /// `client_idle_timeout` between transactions: the session's, as configured now.
    fn client_idle_limit(&self) -> Duration {
        let cfg = self.ctx.config.load();
        let rules = self.ctx.rules.load();
        if rules.has_timeouts() {
            let who = self.identity.who();
            if let Some(d) = rules.session_timeouts(&who).client_idle {
                return d;
            }
        }
        cfg.pool.client_idle_timeout
    }

    /// Keeps the clock in step with the backend after its answers: a request answered ends
    /// its query; a backend back to idle (or given back) ends the transaction.
    pub(super) fn tick_clock(&mut self) {
        let idle = self.backend.tracker.is_idle() && !self.request.unsynced;
        if idle && self.time.clock.query_since.take().is_some() {
            self.time.clock.idle_since = Instant::now();
            self.time.clock.query_cancelled = false;
        }
        let txn_over = match self.backend.attached.as_ref() {
            None => true,
            Some(att) => idle && att.server.txn_status == txn::IDLE,
        };
        if txn_over && !self.time.clock.txn_expired {
            self.time.clock.txn_since = None;
        }
    }

    /// The next timeout due, if any.
    pub(super) fn next_timeout(&self) -> Option<(Instant, Kind)> {
        let l = &self.time.limits;
        let mut next: Option<(Instant, Kind)> = None;
        let mut consider = |at: Instant, k: Kind| {
            if next.is_none_or(|(n, _)| at < n) {
                next = Some((at, k));
            }
        };
        let Some(att) = self.backend.attached.as_ref() else {
            let idle = self.client_idle_limit();
            if !idle.is_zero() && self.request.pending.is_empty() {
                consider(self.time.clock.client_seen + idle, Kind::ClientIdle);
            }
            return next;
        };
        if let Some(since) = self.time.clock.query_since {
            if !l.query.is_zero() && !self.time.clock.query_cancelled {
                consider(since + l.query, Kind::Query);
            }
        }
        if let Some(since) = self.time.clock.txn_since {
            if !l.transaction.is_zero() && !self.time.clock.txn_expired {
                consider(since + l.transaction, Kind::Transaction);
            }
        }
        if !self.backend.tracker.is_idle() {
            if let Some(due) = self.commit.txn.announced.renewal_due() {
                consider(Instant::from_std(due), Kind::Announcement);
            }
        }
        let quiet = self.backend.tracker.is_idle()
            && !self.request.unsynced
            && self.request.pending.is_empty();
        if quiet
            && matches!(att.server.txn_status, txn::IN_TRANSACTION | txn::FAILED)
            && !l.idle_in_transaction.is_zero()
        {
            let from = self.time.clock.idle_since.max(self.time.clock.client_seen);
            consider(from + l.idle_in_transaction, Kind::IdleInTransaction);
        }
        if quiet && att.server.txn_status == txn::IDLE {
            // Session pooling or a pinned session: the backend stays attached between
            // transactions.
            let idle = self.client_idle_limit();
            if !idle.is_zero() {
                consider(self.time.clock.client_seen + idle, Kind::ClientIdle);
            }
        }
        next
    }

    /// A timeout is due: cancels the running statement, or ends the session with Postgres'
    /// error for it (its backend is then rolled back and given back by `cleanup`).
    pub(super) async fn on_timeout(&mut self, kind: Kind) -> Result<(), SessionError> {
        let limit = match kind {
            Kind::Query => self.time.limits.query,
            Kind::Transaction => self.time.limits.transaction,
            Kind::IdleInTransaction => self.time.limits.idle_in_transaction,
            Kind::ClientIdle => self.client_idle_limit(),
            Kind::Announcement => {
                self.commit.renew_announced(&self.ctx.cache).await;
                return Ok(());
            }
        };
        crate::metrics::timeout(kind.label());
        let node = self
            .backend
            .attached
            .as_ref()
            .map(|a| a.node.addr.display())
            .unwrap_or_default();
        tracing::info!(kind = kind.label(), limit = ?limit, %node, user = %self.identity.user, database = %self.identity.database, "timeout");
        match kind {
            Kind::Query => {
                self.time.clock.query_cancelled = true;
                self.backend.cancel_on_server().await;
                Ok(())
            }
            Kind::Transaction if !self.backend.tracker.is_idle() || self.request.unsynced => {
                // The statement running is stopped first; the session ends once its backend
                // has answered (`expired_transaction`), so that backend can be rolled back.
                self.time.clock.txn_expired = true;
                self.time.clock.query_cancelled = true;
                self.backend.cancel_on_server().await;
                Ok(())
            }
            Kind::Transaction | Kind::IdleInTransaction | Kind::ClientIdle => {
                self.end_for(kind, limit).await
            }
            Kind::Announcement => Ok(()), // answered above
        }
    }

    /// `transaction_timeout` passed while a statement ran, and the backend has now answered.
    pub(super) async fn expired_transaction(&mut self) -> Result<(), SessionError> {
        if self.time.clock.txn_expired && self.backend.tracker.is_idle() && !self.request.unsynced {
            self.time.clock.txn_expired = false;
            return self
                .end_for(Kind::Transaction, self.time.limits.transaction)
                .await;
        }
        Ok(())
    }

    async fn end_for(&mut self, kind: Kind, limit: Duration) -> Result<(), SessionError> {
        let (code, what) = match kind {
            Kind::Transaction => (
                "25P04",
                "transaction timeout (pgsidecar transaction_timeout",
            ),
            Kind::IdleInTransaction => (
                "25P03",
                "idle-in-transaction timeout (pgsidecar idle_in_transaction_timeout",
            ),
            _ => (
                sqlstate::IDLE_SESSION_TIMEOUT,
                "idle-session timeout (pgsidecar client_idle_timeout",
            ),
        };
        self.flush_client().await?;
        self.client
            .fatal(
                code,
                &format!("terminating connection due to {what} = {limit:?})"),
            )
            .await;
        Err(SessionError::Closed(match kind {
            Kind::Transaction => "transaction_timeout",
            Kind::IdleInTransaction => "idle_in_transaction_timeout",
            _ => "client_idle_timeout",
        }))
    }
}
