//! Choosing and borrowing a backend for the request a client has completed, waiting (briefly)
//! for a replica to catch up with writes the read must see, and retrying a failed replica read
//! elsewhere when nothing of it reached the client yet.

use std::sync::Arc;
use std::time::Duration;

use super::attachment::Attached;
use super::inbound::is_dispatch;
use super::relay::Session;
use super::track::Expect;
use super::SessionError;
use crate::analyze::{Analysis, TxnControl};
use crate::config::{ReadYourWrites, RouteTo};
use crate::pool::{Checkout, Pool, PoolKey};
use crate::route::{self, Choice, Intent, Lsn, Node};
use crate::wire::msg::{self, Severity};
use crate::wire::sqlstate;
use crate::wire::tag::{front, txn};

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
            .backend
            .pools_seen
            .lock()
            .iter()
            .find(|(n, _)| Arc::ptr_eq(n, &node.addr))
        {
            return p.clone();
        }
        let key = PoolKey {
            node: node.addr.clone(),
            database: self.identity.database.clone(),
            user: self.identity.user.clone(),
        };
        let pool = self.ctx.pools.get(&key, || self.identity.login.clone());
        self.backend
            .pools_seen
            .lock()
            .push((node.addr.clone(), pool.clone()));
        pool
    }

    /// The distinct statements of the pending request (a Parse and its Bind share one).
    /// Monotonic reads from a replica to the primary. With synchronous standbys, a commit is
    /// visible on a standby that applied it before it is on the primary (which shows it once
    /// the standby's acknowledgement is back): a session that read it on a replica and then
    /// reads the primary could go back in time (found by the long consistency run under
    /// `remote_apply`: a serializable transaction, which only the primary runs, returned the
    /// version before the one the session had just read on a replica, 7 times in 1,040,194
    /// operations). So a request that reads on the primary after any request of the session
    /// ran on a replica (since the last such wait) first waits for the writes announced now on the tables it reads (all
    /// tables for a transaction's BEGIN) to end: each ends only once its commit is done on
    /// the primary. Not with a primary verified to have no synchronous standby, nor for
    /// writes (they see the latest committed rows anyway).
    async fn primary_after_replica(&mut self, analyses: &[Arc<Analysis>], primary: &Arc<Node>) {
        // Not only when the very last request ran on a replica: the long run found a read on
        // a replica, then a write on the primary (another row), then a serializable read of
        // the first row on the primary that went back in time.
        if !self.commit.replica_unsettled
            || primary
                .no_sync_standbys
                .load(std::sync::atomic::Ordering::Relaxed)
            || analyses.iter().any(|a| {
                a.kind.is_write() || a.hidden_writes.is_some() || !a.tables_written.is_empty()
            })
        {
            return;
        }
        let begins = analyses.iter().any(|a| {
            a.txn_controls()
                .any(|t| matches!(t, TxnControl::Begin { .. }))
        });
        let keyed: Vec<String> = analyses
            .iter()
            .flat_map(|a| a.tables_read.iter())
            .map(|t| crate::cache::table_key(&self.identity.database, &t.name))
            .collect();
        if keyed.is_empty() && !begins {
            return;
        }
        // Settled by this wait: what was in flight when the replica answered has ended now,
        // or is waited for below (a later write is not one the replica could have shown).
        self.commit.replica_unsettled = false;
        let refs: Vec<&str> = keyed.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let waited = self
            .ctx
            .cache
            .await_writes_in_flight((!begins).then_some(&refs[..]))
            .await;
        tracing::debug!(waited, took = ?started.elapsed(), "read on the primary after a replica: writes in flight awaited");
    }

    /// `route::classify`, remembered per statement (`memo.rs`).
    fn intent(&self, analyses: &[Arc<Analysis>]) -> Arc<Intent> {
        let rules = self.ctx.rules.load();
        self.stmts
            .memo
            .intent(analyses, &rules, &self.identity.who())
    }

    /// The WAL position a read must see, per `routing.read_your_writes`.
    fn required_lsn(&self, analyses: &[Arc<Analysis>]) -> Lsn {
        match self.ctx.config.load().routing.read_your_writes {
            ReadYourWrites::Off => 0,
            ReadYourWrites::Session => self.commit.last_write_lsn.max(self.ctx.write_log.floor()),
            ReadYourWrites::Sidecar => {
                // Other sidecars' positions are complete only in the fleet, once caught up.
                if !self.ctx.fleet_caught_up() {
                    return route::OUT_OF_FLEET;
                }
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
                self.commit.last_write_lsn.max(log)
            }
        }
    }

    /// Whether a request pipelined behind a replica read may run on that replica too. Inside a
    /// (read-only) transaction on the replica everything stays there, COMMIT included.
    pub(super) fn replica_can_take_pending(&self) -> bool {
        if self
            .backend
            .attached
            .as_ref()
            .is_some_and(|a| a.in_txn || a.server.txn_status != txn::IDLE)
        {
            return true;
        }
        if self.request.unsynced && self.request.error_since_rfq {
            // The replica skips everything up to the client's next Sync after an error, as
            // Postgres must: another backend would run it.
            return true;
        }
        let analyses = self.request.pending_analyses();
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
        let between_transactions = self.backend.attached.is_none();
        if between_transactions {
            self.env.gate = None;
        }
        let mut rx = self.ctx.paused.subscribe();
        loop {
            let paused = match &*rx.borrow() {
                None => false,
                Some(None) => true,
                Some(Some(db)) => *db == self.identity.database,
            };
            if !paused || *self.ctx.drain.borrow() || rx.changed().await.is_err() {
                break;
            }
        }
        if between_transactions && self.env.gate.is_none() && !self.enter().await {
            // Its session state could not move to the new environment: it was told so.
            return Err(SessionError::Closed("pinned session closed after SWITCH"));
        }
        Ok(())
    }

    /// A request of only Parses of statements already known valid, then Sync, is answered here:
    /// the statement will be prepared on whichever backend runs it, and no backend has to be
    /// borrowed (and possibly waited for) just to say ParseComplete. (Closes are not answered
    /// here: doing so desynchronized a client whose read was being retried after its replica
    /// shut down — see the closing note of session 8.)
    fn answer_known_parses(&mut self) -> bool {
        let Some((last, parses)) = self.request.pending.split_last() else {
            return false;
        };
        if last.frame.tag != front::SYNC
            || parses.is_empty()
            || parses
                .iter()
                .any(|m| m.frame.tag != front::PARSE || m.fail.is_some())
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
            self.client.cout.extend_from_slice(msg::PARSE_COMPLETE);
        }
        msg::ready_for_query(&mut self.client.cout, txn::IDLE);
        self.request.pending.clear();
        true
    }

    /// Routes and starts the pending request.
    pub(super) async fn dispatch(&mut self) -> Result<(), SessionError> {
        if self.answer_known_parses() {
            return Ok(());
        }
        self.time.timings.request_complete();
        self.wait_while_paused().await?;
        self.resolve_limits();
        let analyses = self.request.pending_analyses();
        let executed = self.request.executed_analyses();
        self.announce_before_commit(&executed).await;
        self.release_dropped_databases(&analyses).await;
        let pinned_or_session =
            self.backend.pinned.is_some() || self.backend.mode == crate::config::PoolMode::Session;
        let intent = if pinned_or_session {
            Arc::new(Intent::new(
                RouteTo::Primary,
                "session pooling or pinned session",
            ))
        } else if self.vars.settings.serializable_by_default() {
            Arc::new(Intent::new(
                RouteTo::Primary,
                "default_transaction_isolation is serializable: hot standbys refuse it",
            ))
        } else {
            self.intent(&analyses)
        };
        self.time.timings.next_intent = Some(intent.clone());
        self.mirror_plan(&analyses);
        let mark = self.client.cout.len();
        if !pinned_or_session && self.try_cache(&analyses, intent.cache_ttl).await {
            tracing::debug!("answered from the result cache");
            let answer = self.client.cout.split_off(mark);
            self.cache_hit_answered(&analyses, &answer);
            self.client.cout.unsplit(answer);
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
        self.commit.reads_replicas |= intent.to != RouteTo::Primary;
        let choice = route::choose(&intent, &topo, routing, min_lsn, self.commit.seen.as_ref());
        let is_read = intent.to != RouteTo::Primary;
        let (node, server, reason) = match choice {
            Choice::Node { node, reason } => {
                let replica = !Arc::ptr_eq(&node, topo.primary());
                // A statement to revalidate needs a backend of its own (`revalidate`).
                if !self.request.needs_revalidation() && self.try_pipeline(&node, replica).await? {
                    return Ok(());
                }
                if !replica && !is_read {
                    // A write or a new transaction: held through a short primary outage.
                    match self.checkout_primary().await {
                        Ok((node, s)) => (node, s, reason),
                        Err(r) => return self.refuse(r.code, r.message),
                    }
                } else if !replica {
                    // A read with no replica to take it: the primary, or while that is
                    // restarting, a replica once one has replayed what the read must see.
                    match self.read_without_replica(min_lsn).await {
                        Ok((node, s, "primary")) => (node, s, reason),
                        Ok((node, s, how)) => (node, s, format!("{reason} → {how}")),
                        Err(r) => return self.refuse(r.code, r.message),
                    }
                } else {
                    let pool = self.pool_for(&node);
                    match pool.checkout_within(self.time.limits.query_wait).await {
                        Ok(s) => (node, s, reason),
                        Err(e) => {
                            // A replica that cannot lend a connection: the primary can serve
                            // the read.
                            tracing::debug!(node = %node.addr.display(), error = %e, "replica unavailable; reading from the primary");
                            match self.read_without_replica(min_lsn).await {
                                Ok((node, s, how)) => {
                                    (node, s, format!("{reason} → {how} (replica unavailable)"))
                                }
                                Err(r) => return self.refuse(r.code, r.message),
                            }
                        }
                    }
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
                None => match self.read_without_replica(min_lsn).await {
                    Ok((node, s, how)) => (
                        node,
                        s,
                        format!(
                            "{} → {how} (no replica caught up within max_wait)",
                            intent.reason
                        ),
                    ),
                    Err(r) => return self.refuse(r.code, r.message),
                },
            },
            Choice::Refuse(message) => {
                return self.refuse(sqlstate::CANNOT_CONNECT_NOW.to_string(), message)
            }
        };
        let replica = !Arc::ptr_eq(&node, topo.primary());
        if !replica {
            self.primary_after_replica(&analyses, topo.primary()).await;
        }
        tracing::debug!(node = %node.addr.display(), replica, %reason, "routed");
        crate::metrics::routed(replica);
        self.attach(node, server, replica, reason);
        self.revalidate_pending().await?;
        if self.backend.attached.is_none() {
            return Ok(()); // that backend was lost: the request is dispatched again
        }
        // A read the primary took only for want of a replica is kept too: if the primary
        // goes away before answering (a restart), a replica runs it (`retry_elsewhere`).
        let retry = (replica || is_read) && routing.retry_reads;
        let msgs = std::mem::take(&mut self.request.pending);
        if retry {
            let copy = msgs.clone();
            if let Some(att) = self.backend.attached.as_mut() {
                att.retry = Some(copy);
            }
        }
        self.request.pending = msgs;
        self.forward_group()
    }

    fn attach(&mut self, node: Arc<Node>, server: Checkout, replica: bool, reason: String) {
        self.backend
            .cancel
            .set(server.node.clone(), server.pid, server.secret);
        let inflight = node.begin_request();
        let in_txn = self
            .request
            .pending
            .iter()
            .filter_map(|m| m.analysis.as_ref())
            .any(|a| {
                a.txn_controls()
                    .any(|t| matches!(t, crate::analyze::TxnControl::Begin { .. }))
            });
        self.backend.attached = Some(Attached {
            server,
            node,
            replica,
            _inflight: inflight,
            retry: None,
            in_txn,
            reason: Arc::from(reason),
            requests: 0,
            unnamed_ready: false,
            position: None,
            capture_after: 0,
            ran_statements: false,
        });
        self.sync_settings();
    }

    /// Brings the attached backend's settings to the client's, with one swallowed query sent
    /// ahead of the client's next message.
    pub(super) fn sync_settings(&mut self) {
        let Some(att) = self.backend.attached.as_mut() else {
            return;
        };
        if let Some(sql) = self.vars.settings.diff_from(&att.server.settings) {
            crate::metrics::round_trips::count(crate::metrics::Trip::SettingsQueued);
            msg::query(&mut self.client.sout, &sql);
            self.backend.tracker.push(Expect::Query {
                swallow: true,
                group: Vec::new(),
            });
            att.server.settings = self.vars.settings.as_applied();
        }
    }

    /// Answers every request in `pending` with an error; the session goes on.
    fn refuse(&mut self, code: String, message: String) -> Result<(), SessionError> {
        self.commit.filling = None;
        self.time.timings.forget_next();
        tracing::warn!(%code, %message, "request refused");
        let waiting = self
            .request
            .pending
            .iter()
            .filter(|m| {
                matches!(
                    m.frame.tag,
                    front::SYNC | front::QUERY | front::FUNCTION_CALL
                )
            })
            .count();
        self.request.pending.clear();
        if waiting == 0 {
            msg::error_response(&mut self.client.cout, Severity::Error, &code, &message);
        }
        for _ in 0..waiting {
            msg::error_response(&mut self.client.cout, Severity::Error, &code, &message);
            msg::ready_for_query(&mut self.client.cout, txn::IDLE);
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

    pub(super) async fn poll_replicas(
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
                let sent = std::time::Instant::now();
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
                node.observe(sent, lsn);
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
        let Some(att) = self.backend.attached.as_mut() else {
            return Ok(false);
        };
        let Some(msgs) = att.retry.take() else {
            return Ok(false);
        };
        let from_replica = att.replica;
        if from_replica {
            tracing::info!(node = %att.node.addr.display(), %why, "read failed on a replica before answering; retrying on the primary");
        } else {
            tracing::info!(node = %att.node.addr.display(), %why, "a read the primary took for want of a replica failed before answering; running it again (on a replica if one has replayed what it must see)");
        }
        self.backend.attached = None; // dropping the checkout closes the connection
        self.backend.retry_hold.clear(); // the failed attempt's preamble: the retry sends its own
        self.commit.filling = None;
        self.backend.fatal_forwarded = false;
        self.backend.cancel.clear();
        self.backend.tracker.clear();
        self.time.timings.restart();
        self.request.group.clear();
        self.request.unsynced = false;
        self.request.error_since_rfq = false;
        self.client.sout.clear();
        let analyses: Vec<Arc<Analysis>> = msgs.iter().filter_map(|m| m.analysis.clone()).collect();
        let min_lsn = self.required_lsn(&analyses);
        let found = if from_replica {
            self.read_without_replica(min_lsn).await
        } else {
            let hold = self.ctx.config.load().upstream.outage_hold;
            self.replica_during_outage(min_lsn, hold)
                .await
                .map(|(node, s, on_replica)| {
                    (node, s, if on_replica { "replica" } else { "primary" })
                })
                .map_err(|last| match last {
                    Some(e) => super::outage::Refusal::from_pool(&e),
                    None => super::outage::Refusal {
                        code: sqlstate::CANNOT_CONNECT_NOW.to_string(),
                        message: format!(
                            "pgsidecar: the primary went away during this read and no replica \
                             had replayed what it must see within upstream.outage_hold ({hold:?})"
                        ),
                    },
                })
        };
        let (node, server, how) = match found {
            Ok(f) => f,
            Err(r) => {
                self.request.pending = msgs;
                self.refuse(r.code, r.message)?;
                return Ok(true);
            }
        };
        let replica = !Arc::ptr_eq(&node, self.ctx.topology.load().primary());
        self.attach(
            node,
            server,
            replica,
            format!("retried on the {how}: {why}"),
        );
        for m in msgs {
            debug_assert!(is_dispatch(m.frame.tag) || m.frame.tag != front::TERMINATE);
            self.forward(m)?;
        }
        Ok(true)
    }
}
