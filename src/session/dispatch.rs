//! Choosing and borrowing a backend for the request a client has completed, waiting (briefly)
//! for a replica to catch up with writes the read must see, and retrying a failed replica read
//! elsewhere when nothing of it reached the client yet.

use std::sync::Arc;
use std::time::Duration;

use super::relay::{is_dispatch, Attached, Session};
use super::startup::client_message;
use super::track::Expect;
use super::SessionError;
use crate::analyze::{Analysis, TxnControl};
use crate::config::{ReadYourWrites, RouteTo};
use crate::pool::{Checkout, Pool, PoolKey};
use crate::route::{self, Choice, Intent, Lsn, Node, Who};
use crate::wire::msg::{self, Severity};
use crate::wire::sqlstate;

/// SQLSTATEs after which a read that failed on a replica may run again elsewhere: the replica
/// refused (read-only, shutting down; 0A000: "cannot use serializable mode in a hot standby",
/// from a role's or database's `default_transaction_isolation`, which the proxy cannot see) or
/// cancelled it (recovery conflict).
const RETRYABLE: &[&str] = &[
    "25006", "40001", "57P01", "57P02", "57P03", "57P04", "53300", "0A000",
];

pub(super) fn retryable(code: &str) -> bool {
    RETRYABLE.contains(&code) || code.starts_with("08")
}

impl Session {
    /// This client's pool on `node`, remembered per node so the hot path does not build a key
    /// and search the process-wide map for every request.
    pub(super) fn pool_for(&self, node: &Arc<Node>) -> Arc<Pool> {
        if let Some((_, p)) = self
            .pools_seen
            .lock()
            .iter()
            .find(|(n, _)| Arc::ptr_eq(n, &node.addr))
        {
            return p.clone();
        }
        let key = PoolKey {
            node: node.addr.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
        };
        let pool = self.ctx.pools.get(&key, || self.login.clone());
        self.pools_seen
            .lock()
            .push((node.addr.clone(), pool.clone()));
        pool
    }

    fn who(&self) -> Who<'_> {
        Who {
            user: &self.user,
            database: &self.database,
            application_name: &self.application_name,
        }
    }

    /// The distinct statements of the pending request (a Parse and its Bind share one).
    fn pending_analyses(&self) -> Vec<Arc<Analysis>> {
        let mut out: Vec<Arc<Analysis>> = Vec::with_capacity(2);
        for a in self.pending.iter().filter_map(|m| m.analysis.as_ref()) {
            if !out.iter().any(|b| Arc::ptr_eq(a, b)) {
                out.push(a.clone());
            }
        }
        out
    }

    /// `route::classify`, remembered per statement (`memo.rs`).
    fn intent(&self, analyses: &[Arc<Analysis>]) -> Arc<Intent> {
        let rules = self.ctx.rules.load();
        self.memo.intent(analyses, &rules, &self.who())
    }

    /// The WAL position a read must see, per `routing.read_your_writes`.
    fn required_lsn(&self, analyses: &[Arc<Analysis>]) -> Lsn {
        match self.ctx.config.load().routing.read_your_writes {
            ReadYourWrites::Off => 0,
            ReadYourWrites::Session => self.last_write_lsn.max(self.ctx.write_log.floor()),
            ReadYourWrites::Sidecar => {
                // A transaction begun here stays on the node chosen now, and the tables its
                // later statements read are not known yet (`BEGIN READ ONLY` sent alone, as
                // drivers do): it must have replayed every write this sidecar knows of.
                let begins = analyses
                    .iter()
                    .flat_map(|a| a.txn_controls())
                    .any(|t| matches!(t, TxnControl::Begin { .. }));
                let log = if begins {
                    self.ctx.write_log.latest()
                } else {
                    self.ctx
                        .write_log
                        .required(analyses.iter().flat_map(|a| a.tables_read.iter()))
                };
                self.last_write_lsn.max(log)
            }
        }
    }

    /// Whether a request pipelined behind a replica read may run on that replica too. Inside a
    /// (read-only) transaction on the replica everything stays there, COMMIT included.
    pub(super) fn replica_can_take_pending(&self) -> bool {
        if self
            .attached
            .as_ref()
            .is_some_and(|a| a.in_txn || a.server.txn_status != b'I')
        {
            return true;
        }
        if self.unsynced && self.error_since_rfq {
            // The replica skips everything up to the client's next Sync after an error, as
            // Postgres must: another backend would run it.
            return true;
        }
        let analyses = self.pending_analyses();
        !analyses.is_empty() && self.intent(&analyses).to != RouteTo::Primary
    }

    /// `PAUSE`: a new transaction waits here, between transactions, until `RESUME` (or a
    /// drain, which ends the session at this boundary instead). A waiting session lets go of
    /// the environment gate, so `PAUSE`, `SWITCH`, `RESUME` moves traffic with nothing in
    /// flight; it enters again (on the new environment) when it goes on.
    async fn wait_while_paused(&mut self) -> Result<(), SessionError> {
        // Not paused (the usual case): no receiver to subscribe for every request.
        if self.ctx.paused.borrow().is_none() {
            return Ok(());
        }
        let between_transactions = self.attached.is_none();
        if between_transactions {
            self.gate = None;
        }
        let mut rx = self.ctx.paused.subscribe();
        loop {
            let paused = match &*rx.borrow() {
                None => false,
                Some(None) => true,
                Some(Some(db)) => *db == self.database,
            };
            if !paused || *self.ctx.drain.borrow() || rx.changed().await.is_err() {
                break;
            }
        }
        if between_transactions && self.gate.is_none() && !self.enter().await {
            // Its session state could not move to the new environment: it was told so.
            return Err(SessionError::Closed("pinned session closed after SWITCH"));
        }
        Ok(())
    }

    /// A request of only Parses of statements already known valid, then Sync, is answered here:
    /// the statement will be prepared on whichever backend runs it, and no backend has to be
    /// borrowed (and possibly waited for) just to say ParseComplete.
    fn answer_known_parses(&mut self) -> bool {
        let Some((last, parses)) = self.pending.split_last() else {
            return false;
        };
        if last.frame.tag != b'S'
            || parses.is_empty()
            || parses
                .iter()
                .any(|m| m.frame.tag != b'P' || m.fail.is_some())
        {
            return false;
        }
        let known = self.ctx.known_statements.read();
        let all_known = parses.iter().all(|m| {
            m.stmt
                .as_ref()
                .is_some_and(|stmt| known.contains(&stmt.global))
        });
        drop(known);
        if !all_known {
            return false;
        }
        for _ in parses {
            self.cout.extend_from_slice(msg::PARSE_COMPLETE);
        }
        msg::ready_for_query(&mut self.cout, b'I');
        self.pending.clear();
        true
    }

    /// Routes and starts the pending request.
    pub(super) async fn dispatch(&mut self) -> Result<(), SessionError> {
        if self.answer_known_parses() {
            return Ok(());
        }
        self.timings.request_complete();
        self.wait_while_paused().await?;
        let analyses = self.pending_analyses();
        self.release_dropped_databases(&analyses).await;
        let pinned_or_session =
            self.pinned.is_some() || self.mode == crate::config::PoolMode::Session;
        let intent = if pinned_or_session {
            Arc::new(Intent::new(
                RouteTo::Primary,
                "session pooling or pinned session",
            ))
        } else if self.settings.serializable_by_default() {
            Arc::new(Intent::new(
                RouteTo::Primary,
                "default_transaction_isolation is serializable: hot standbys refuse it",
            ))
        } else {
            self.intent(&analyses)
        };
        if !pinned_or_session && self.try_cache(&analyses, intent.cache_ttl).await {
            self.cache_hit_answered(&analyses);
            return Ok(());
        }
        let topo = self.ctx.topology.load_full();
        let cfg = self.ctx.config.load_full();
        let routing = &cfg.routing;
        let min_lsn = if intent.to == RouteTo::Primary {
            0
        } else {
            self.required_lsn(&analyses)
        };
        let choice = route::choose(&intent, &topo, routing, min_lsn);
        let (node, server, reason) = match choice {
            Choice::Node { node, reason } => {
                let replica = !Arc::ptr_eq(&node, topo.primary());
                // A statement to revalidate needs a backend of its own (`revalidate`).
                if !self.pending_needs_revalidation() && self.try_pipeline(&node, replica).await? {
                    return Ok(());
                }
                let pool = self.pool_for(&node);
                match pool.checkout().await {
                    Ok(s) => (node, s, reason),
                    Err(e) if !Arc::ptr_eq(&node, topo.primary()) => {
                        // A replica that cannot lend a connection: the primary can serve the read.
                        tracing::debug!(node = %node.addr.display(), error = %e, "replica unavailable; reading from the primary");
                        let primary = topo.primary().clone();
                        match self.pool_for(&primary).checkout().await {
                            Ok(s) => (
                                primary,
                                s,
                                format!("{reason} → primary (replica unavailable)"),
                            ),
                            Err(e) => {
                                return self.refuse(e.sqlstate().to_string(), client_message(&e))
                            }
                        }
                    }
                    Err(e) => return self.refuse(e.sqlstate().to_string(), client_message(&e)),
                }
            }
            Choice::WaitFor {
                candidates,
                min_lsn,
            } => match self
                .wait_for_replica(&candidates, min_lsn, routing.max_wait)
                .await
            {
                Some((node, s)) => (
                    node,
                    s,
                    format!(
                        "{} (waited for replay of {})",
                        intent.reason,
                        route::topology::format_lsn(min_lsn)
                    ),
                ),
                None => {
                    let primary = topo.primary().clone();
                    match self.pool_for(&primary).checkout().await {
                        Ok(s) => (
                            primary,
                            s,
                            format!(
                                "{} → primary (no replica caught up within max_wait)",
                                intent.reason
                            ),
                        ),
                        Err(e) => return self.refuse(e.sqlstate().to_string(), client_message(&e)),
                    }
                }
            },
            Choice::Refuse(message) => {
                return self.refuse(sqlstate::CANNOT_CONNECT_NOW.to_string(), message)
            }
        };
        let replica = !Arc::ptr_eq(&node, topo.primary());
        tracing::debug!(node = %node.addr.display(), replica, %reason, "routed");
        crate::metrics::routed(replica);
        self.attach(node, server, replica, reason);
        self.revalidate_pending().await?;
        if self.attached.is_none() {
            return Ok(()); // that backend was lost: the request is dispatched again
        }
        let retry = replica && routing.retry_reads;
        let msgs = std::mem::take(&mut self.pending);
        if retry {
            let copy = msgs.clone();
            if let Some(att) = self.attached.as_mut() {
                att.retry = Some(copy);
            }
        }
        self.pending = msgs;
        self.forward_group()
    }

    fn attach(&mut self, node: Arc<Node>, server: Checkout, replica: bool, reason: String) {
        self.cancel
            .set(server.node.clone(), server.pid, server.secret);
        let inflight = node.begin_request();
        let in_txn = self
            .pending
            .iter()
            .filter_map(|m| m.analysis.as_ref())
            .any(|a| {
                a.txn_controls()
                    .any(|t| matches!(t, crate::analyze::TxnControl::Begin { .. }))
            });
        self.attached = Some(Attached {
            server,
            node,
            replica,
            _inflight: inflight,
            retry: None,
            in_txn,
            reason: Arc::from(reason),
            requests: 0,
            unnamed_ready: false,
        });
        self.sync_settings();
    }

    /// Brings the attached backend's settings to the client's, with one swallowed query sent
    /// ahead of the client's next message.
    pub(super) fn sync_settings(&mut self) {
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        if let Some(sql) = self.settings.diff_from(&att.server.settings) {
            msg::query(&mut self.sout, &sql);
            self.tracker.push(Expect::Query {
                swallow: true,
                group: Vec::new(),
            });
            att.server.settings = self.settings.as_applied();
        }
    }

    /// Answers every request in `pending` with an error; the session goes on.
    fn refuse(&mut self, code: String, message: String) -> Result<(), SessionError> {
        self.filling = None;
        self.timings.forget_next();
        tracing::warn!(%code, %message, "request refused");
        let waiting = self
            .pending
            .iter()
            .filter(|m| matches!(m.frame.tag, b'S' | b'Q' | b'F'))
            .count();
        self.pending.clear();
        if waiting == 0 {
            msg::error_response(&mut self.cout, Severity::Error, &code, &message);
        }
        for _ in 0..waiting {
            msg::error_response(&mut self.cout, Severity::Error, &code, &message);
            msg::ready_for_query(&mut self.cout, b'I');
        }
        Ok(())
    }

    /// Polls the candidates' replay position on a pooled connection until one has replayed
    /// `min_lsn`, for at most `max_wait`. Returns that replica with the connection to use.
    async fn wait_for_replica(
        &self,
        candidates: &[Arc<Node>],
        min_lsn: Lsn,
        max_wait: Duration,
    ) -> Option<(Arc<Node>, Checkout)> {
        let started = std::time::Instant::now();
        let found = self.poll_replicas(candidates, min_lsn, max_wait).await;
        crate::metrics::replica_wait(started.elapsed(), found.is_some());
        found
    }

    async fn poll_replicas(
        &self,
        candidates: &[Arc<Node>],
        min_lsn: Lsn,
        max_wait: Duration,
    ) -> Option<(Arc<Node>, Checkout)> {
        let deadline = tokio::time::Instant::now() + max_wait;
        // An asynchronous commit reaches replicas only once the primary flushes it: ask for
        // that now rather than wait for the WAL writer (`route::flush`).
        self.ctx.flusher.want(min_lsn);
        let mut pause = Duration::from_micros(500);
        loop {
            for node in candidates {
                let Ok(mut s) = self.pool_for(node).checkout().await else {
                    continue;
                };
                let Ok(rows) = s.query_column("SELECT pg_last_wal_replay_lsn()").await else {
                    continue;
                };
                let Some(lsn) = rows
                    .into_iter()
                    .next()
                    .flatten()
                    .and_then(|t| route::topology::parse_lsn(&t))
                else {
                    s.release();
                    continue;
                };
                node.lsn
                    .fetch_max(lsn, std::sync::atomic::Ordering::Relaxed);
                if lsn >= min_lsn {
                    return Some((node.clone(), s));
                }
                s.release();
            }
            if tokio::time::Instant::now() + pause > deadline {
                return None;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(8));
        }
    }

    /// After a replica failed a read that has not answered the client yet: drop that
    /// connection and run the request on the primary. False when that is not possible.
    pub(super) async fn retry_elsewhere(&mut self, why: &str) -> Result<bool, SessionError> {
        let Some(att) = self.attached.as_mut() else {
            return Ok(false);
        };
        if !att.replica {
            return Ok(false);
        }
        let Some(msgs) = att.retry.take() else {
            return Ok(false);
        };
        tracing::info!(node = %att.node.addr.display(), %why, "read failed on a replica before answering; retrying on the primary");
        self.attached = None; // dropping the checkout closes the connection
        self.retry_hold.clear(); // the failed attempt's preamble: the retry sends its own
        self.filling = None;
        self.fatal_forwarded = false;
        self.cancel.clear();
        self.tracker.clear();
        self.timings.restart();
        self.group.clear();
        self.unsynced = false;
        self.error_since_rfq = false;
        self.sout.clear();
        let primary = self.ctx.topology.load().primary().clone();
        let server = match self.pool_for(&primary).checkout().await {
            Ok(s) => s,
            Err(e) => {
                self.pending = msgs;
                self.refuse(e.sqlstate().to_string(), client_message(&e))?;
                return Ok(true);
            }
        };
        self.attach(
            primary,
            server,
            false,
            format!("retried on the primary: {why}"),
        );
        for m in msgs {
            debug_assert!(is_dispatch(m.frame.tag) || m.frame.tag != b'X');
            self.forward(m)?;
        }
        Ok(true)
    }
}
