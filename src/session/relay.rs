//! The relay loop: buffers a client's extended-protocol messages until a Sync (or Flush, or a
//! simple Query), lets `dispatch` choose and borrow a backend, forwards raw bytes both ways, and
//! gives the backend back at the end of the transaction (transaction pooling) or session.
//!
//! This file keeps the session (a handful of components, each owning one part of its state in a
//! file of its own) and its loop; what each event does lives beside it, one file per direction:
//! `inbound` (client messages), `outbound` (to the backend), `answers` (from the backend),
//! `loss` (a backend lost while the client waits).

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::attachment::Backend;
use super::client::ClientConn;
use super::consistency::CommitTracking;
use super::environment::Environment;
use super::identity::Identity;
use super::inbound::is_dispatch;
use super::locking::LockState;
use super::loss::Lost;
use super::request::RequestBuffer;
use super::settings::Settings;
use super::startup::Accepted;
use super::statements::ClientStatements;
use super::track::Expect;
use super::vars::ClientVars;
use super::watchdog::Timekeeping;
use super::SessionError;
use crate::cancel::Slot;
use crate::config::PoolMode;
use crate::context::Context;
use crate::tls::Stream;
use crate::wire::frame::{check, Frame};
use crate::wire::msg::{self, Severity};

/// One client's session. Each field is a component owning one part of its state; what the
/// session does with them lives in the files beside this one.
pub struct Session {
    pub(super) ctx: Arc<Context>,
    pub(super) client: ClientConn,
    pub(super) identity: Identity,
    pub(super) request: RequestBuffer,
    pub(super) stmts: ClientStatements,
    pub(super) vars: ClientVars,
    pub(super) backend: Backend,
    pub(super) commit: CommitTracking,
    pub(super) locks: LockState,
    pub(super) time: Timekeeping,
    pub(super) env: Environment,
}

impl Session {
    pub fn new(ctx: Arc<Context>, a: Accepted, cancel: Arc<Slot>) -> Self {
        let cfg = ctx.config.load_full();
        let settings = Settings::from_startup(&a.params);
        let lex = super::lexing::LexState::from_startup(&a.server_params, &a.params);
        let application_name = a
            .params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Self {
            client: ClientConn::new(a.reader.io, a.reader.buf, cfg.listen.max_message_size),
            identity: Identity {
                user: a.user,
                database: a.database,
                application_name,
                params: a.params,
                server_params: a.server_params,
                login: a.login,
                client_id: 0,
            },
            request: RequestBuffer::default(),
            stmts: ClientStatements::default(),
            vars: ClientVars { settings, lex },
            backend: Backend::new(cfg.pool.mode, cancel),
            commit: CommitTracking::default(),
            locks: LockState::default(),
            time: Timekeeping::default(),
            env: Environment::new(&ctx),
            ctx,
        }
    }

    /// Completes startup: AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery.
    pub async fn start(&mut self, pid: i32, secret: i32) -> Result<(), SessionError> {
        let mut out = BytesMut::with_capacity(512);
        msg::auth_request(&mut out, msg::AUTH_OK, &[]);
        for (name, value) in &self.identity.server_params {
            // The client sees its own startup values for what it set (application_name, DateStyle…).
            let own = self
                .identity
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v);
            msg::parameter_status(&mut out, name, own.unwrap_or(value));
        }
        msg::backend_key_data(&mut out, pid, secret);
        msg::ready_for_query(&mut out, b'I');
        self.client.io.write_all(&out).await?;
        Ok(())
    }

    /// Between transactions, with nothing pending or in flight.
    fn at_boundary(&self) -> bool {
        self.request.pending.is_empty()
            && self.client.rbuf.is_empty()
            && match self.backend.attached.as_ref() {
                None => true,
                Some(att) => {
                    self.backend.tracker.is_idle()
                        && !self.request.unsynced
                        && att.server.txn_status == b'I'
                }
            }
    }

    /// Like [`Self::at_boundary`], but a partly received next message does not count: the
    /// transaction it starts has not begun until it is complete.
    fn between_transactions(&self) -> bool {
        self.request.pending.is_empty()
            && match self.backend.attached.as_ref() {
                None => true,
                Some(att) => {
                    self.backend.tracker.is_idle()
                        && !self.request.unsynced
                        && att.server.txn_status == b'I'
                }
            }
    }

    /// Starts a transaction: waits while a SWITCH runs, then catches up with one that
    /// happened. False when this session must end (its backend cannot follow).
    pub(super) async fn enter(&mut self) -> bool {
        self.env.gate = Some(self.ctx.envs.enter().await);
        let epoch = self.ctx.envs.epoch();
        if epoch == self.env.epoch {
            return true;
        }
        self.env.epoch = epoch;
        // A commit position of the old environment says nothing about the new one; the
        // write log's floor now stands for it.
        self.commit.last_write_lsn = 0;
        self.commit.seen = None;
        if self.backend_elsewhere() {
            self.close_after_switch().await;
            return false;
        }
        true
    }

    /// A backend this session keeps (pinned, session pooling) is on a server that is no
    /// longer part of the active environment. An idle backend that merely was not given back
    /// yet is let go instead: nothing ties the client to it.
    fn backend_elsewhere(&mut self) -> bool {
        let Some(att) = self.backend.attached.as_ref() else {
            return false;
        };
        let topo = self.ctx.topology.load();
        if topo.nodes.iter().any(|n| *n.addr == *att.node.addr) {
            return false;
        }
        if self.backend.pinned.is_some() || self.backend.mode != PoolMode::Transaction {
            return true;
        }
        self.backend.cancel.clear();
        if let Some(att) = self.backend.attached.take() {
            att.server.release();
        }
        false
    }

    /// Session state (temp tables, LISTEN, session settings…) cannot move to another
    /// environment: the client is told 57P01 between transactions and reconnects there.
    async fn close_after_switch(&mut self) {
        let env = self.ctx.topology.load().environment.clone();
        tracing::info!(environment = %env, "closing a pinned session after SWITCH");
        self.fatal(
            crate::wire::sqlstate::ADMIN_SHUTDOWN,
            &format!(
                "terminating connection because pgsidecar switched to environment \"{env}\" and \
                 this session's state cannot move; reconnect to continue there"
            ),
        )
        .await;
    }

    /// Sends a FATAL error if the client can still hear it.
    pub async fn fatal(&mut self, code: &str, message: &str) {
        let _ = self
            .client
            .io
            .write_all(&msg::error_bytes(Severity::Fatal, code, message))
            .await;
    }

    /// After a FATAL for a limit the client overran: stop writing and swallow what it still
    /// sends, briefly, before closing. Closing a socket with unread input makes the kernel send
    /// a reset, which can destroy the error in flight before the client reads it.
    pub async fn linger(&mut self) {
        use tokio::io::AsyncReadExt;
        let _ = self.client.io.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let mut total = 0usize;
            while total < LINGER_MAX_BYTES {
                match self.client.io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }

    pub async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            // 1. A request held back earlier may go now.
            if self.backend.attached.is_none()
                && self
                    .request
                    .pending
                    .last()
                    .is_some_and(|m| is_dispatch(m.frame.tag))
            {
                self.request.deferred = false;
                self.dispatch().await?;
            }
            // 2. Everything the client has already sent.
            while !self.request.deferred {
                let Some(total) = check(&self.client.rbuf, self.client.max_message)? else {
                    break;
                };
                let bytes = self.client.rbuf.split_to(total).freeze();
                let frame = Frame {
                    tag: bytes[0],
                    bytes,
                };
                if frame.tag == b'X' {
                    return Ok(());
                }
                if self.env.gate.is_none() && !self.enter().await {
                    return Ok(());
                }
                let m = self.annotate(frame)?;
                self.on_client_message(m).await?;
                self.time.progressed();
            }
            if self.request.deferred {
                self.settle_for_deferred();
                if self.backend.attached.is_none() {
                    continue; // released: the deferred request goes now (step 1)
                }
            }
            self.flush_server().await?;
            self.backend.tracker.drain_synthetic(&mut self.client.cout);
            self.flush_client().await?;

            // 3. Wait for more.
            self.tick_clock();
            self.expired_transaction().await?;
            if self.between_transactions() {
                self.env.gate = None; // a SWITCH may happen while this client thinks
                drop(self.env.switched.borrow_and_update());
                if self.backend_elsewhere() {
                    self.close_after_switch().await;
                    return Ok(());
                }
            }
            if *self.env.drain.borrow() && self.at_boundary() {
                // Draining: this client is between transactions, so it can go without losing
                // anything; 57P01 tells pools and drivers to reconnect (to the successor).
                self.fatal(
                    crate::wire::sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection because pgsidecar is shutting down",
                )
                .await;
                return Ok(());
            }
            let timeout = self.next_timeout();
            let Some(att) = self.backend.attached.as_mut() else {
                let (due, kind) = timeout.unzip();
                tokio::select! {
                    r = read_more(&mut self.client.io, &mut self.client.rbuf) => {
                        if !r? {
                            return Ok(());
                        }
                        self.time.clock.client_seen = tokio::time::Instant::now();
                    }
                    _ = self.env.drain.changed() => {}
                    () = sleep_until_some(due) => {
                        if let Some(kind) = kind {
                            self.on_timeout(kind).await?;
                        }
                    }
                }
                continue;
            };
            let srv = &mut *att.server;
            let deferred = self.request.deferred;
            let idle = self.env.gate.is_none();
            let bound = self.ctx.config.load().pool.stuck_request_timeout;
            let watch = !bound.is_zero() && (!self.backend.tracker.is_idle() || deferred);
            let stuck_at = self.time.progress_at + bound * (self.time.stuck_reports + 1);
            let event = tokio::select! {
                r = read_more(&mut self.client.io, &mut self.client.rbuf), if !deferred => Event::Client(r),
                r = read_more(&mut srv.stream, &mut srv.rbuf) => Event::Server(r),
                // A pinned backend idles here between transactions: a switch must close it now.
                Ok(()) = self.env.switched.changed(), if idle => continue,
                () = tokio::time::sleep_until(stuck_at), if watch => Event::Stuck,
                () = sleep_until_some(timeout.map(|(at, _)| at)) => Event::Timeout,
            };
            match event {
                Event::Client(Ok(true)) => {
                    self.time.clock.client_seen = tokio::time::Instant::now()
                }
                Event::Timeout => {
                    if let Some((_, kind)) = timeout {
                        self.on_timeout(kind).await?;
                    }
                }
                Event::Client(Ok(false)) => return Ok(()),
                Event::Client(Err(e)) => return Err(e.into()),
                Event::Stuck => {
                    self.on_stuck(bound).await?;
                    self.flush_server().await?;
                    self.flush_client().await?;
                }
                Event::Server(Ok(true)) => {
                    self.time.progressed();
                    self.on_server_data()?;
                    if let Some(why) = self.backend.lost_track.take() {
                        self.abandon_backend(why, Lost::Track).await?;
                        self.flush_server().await?;
                        self.flush_client().await?;
                        continue;
                    }
                    if let Some(code) = self.backend.retry_requested.take() {
                        self.retry_elsewhere(&format!("SQLSTATE {code}")).await?;
                    }
                    self.run_invalidation().await;
                    self.flush_server().await?;
                    self.flush_client().await?;
                    self.maybe_release();
                    self.tick_clock();
                    self.expired_transaction().await?;
                }
                Event::Server(r) => {
                    let why = r
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "end of stream".into());
                    self.server_lost(why).await?;
                }
            }
        }
    }

    /// A request deferred behind a replica's answer goes once that backend is given back. A
    /// request the client ended with Flush instead of Sync (asyncpg prepares with Parse,
    /// Describe, Flush) leaves the replica answered but unsynced, so nothing more would ever
    /// arrive from it: the proxy ends that batch with its own Sync (its ReadyForQuery
    /// swallowed), after which the backend is released and the deferred request dispatched.
    fn settle_for_deferred(&mut self) {
        let Some(att) = self.backend.attached.as_ref() else {
            return;
        };
        if !self.backend.tracker.is_idle() || !att.server.rbuf.is_empty() {
            return; // answers still due: they come from the backend
        }
        if self.request.unsynced {
            self.client.sout.extend_from_slice(msg::SYNC);
            self.backend.tracker.push(Expect::Query {
                swallow: true,
                group: Vec::new(),
            });
            self.request.unsynced = false;
            self.unnamed_spent();
        } else {
            self.maybe_release();
        }
    }

    /// The watchdog: the request in flight made no progress for `bound` (again). It is logged
    /// with what the proxy still expects, and counted. Then the backend is asked about: a
    /// statement still running there (`active` in `pg_stat_activity`) is left alone, but a
    /// backend waiting for input while the client waits for an answer means the proxy lost
    /// track of the request — the client gets 08P01 and the connection is closed.
    async fn on_stuck(&mut self, bound: std::time::Duration) -> Result<(), SessionError> {
        self.time.stuck_reports += 1;
        let Some(att) = self.backend.attached.as_ref() else {
            return Ok(());
        };
        let node = att.node.clone();
        let pid = att.server.pid;
        let waited = self.time.progress_at.elapsed();
        crate::metrics::stuck_request();
        let pending: String = self
            .request
            .pending
            .iter()
            .map(|m| char::from(m.frame.tag))
            .collect();
        let pending_sql: Vec<&str> = self
            .request
            .pending
            .iter()
            .filter_map(|m| m.analysis.as_ref().map(|a| a.normalized.as_str()))
            .collect();
        tracing::warn!(
            node = %node.addr.display(),
            pid,
            waited = ?waited,
            bound = ?bound,
            expected = %self.backend.tracker.describe(),
            deferred = self.request.deferred,
            unsynced = self.request.unsynced,
            pending = %pending,
            pending_sql = ?pending_sql,
            "a client request made no progress for longer than pool.stuck_request_timeout"
        );
        let state = match self.pool_for(&node).checkout().await {
            Ok(mut s) => {
                let sql = format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}");
                let r = s.query_column(&sql).await;
                if r.is_ok() {
                    s.release();
                }
                r.ok().map(|rows| rows.into_iter().next().flatten())
            }
            Err(_) => None,
        };
        let state = match state {
            // Unknown (no connection to ask on): keep waiting, ask again after another bound.
            None => return Ok(()),
            Some(None) => "gone".to_string(),
            Some(Some(s)) if s == "active" => return Ok(()), // a statement still running
            Some(Some(s)) => s,
        };
        self.abandon_backend(
            format!("no progress for {waited:?} while the server's backend is {state}"),
            Lost::Track,
        )
        .await
    }

    pub(super) async fn flush_server(&mut self) -> Result<(), SessionError> {
        if self.client.sout.is_empty() {
            return Ok(());
        }
        let Some(att) = self.backend.attached.as_mut() else {
            self.client.sout.clear();
            return Ok(());
        };
        if let Err(e) = att.server.stream.write_all(&self.client.sout).await {
            self.client.sout.clear();
            return Box::pin(self.server_lost(e.to_string())).await;
        }
        self.client.sout.clear();
        Ok(())
    }

    pub(super) async fn flush_client(&mut self) -> Result<(), SessionError> {
        if self.commit.held.is_none() {
            self.deferred_answered();
        }
        if !self.client.cout.is_empty() {
            self.client.io.write_all(&self.client.cout).await?;
            self.client.cout.clear();
        }
        Ok(())
    }

    /// After the client is gone: a backend with an open transaction is rolled back before it is
    /// reused; one with a request in flight is closed (Postgres then aborts the work).
    pub async fn cleanup(&mut self) {
        self.backend.cancel.clear();
        self.abandon_announced();
        let Some(att) = self.backend.attached.take() else {
            return;
        };
        let mut server = att.server;
        if !self.backend.tracker.is_idle() || self.request.unsynced {
            tracing::debug!("client left with a request in flight; closing its server connection");
            return; // dropping the checkout closes the connection
        }
        if server.txn_status != b'I' {
            let rolled_back =
                tokio::time::timeout(std::time::Duration::from_secs(2), server.simple("ROLLBACK"))
                    .await;
            if !matches!(rolled_back, Ok(Ok(None))) {
                return;
            }
        }
        if self.backend.mode == PoolMode::Session || self.backend.pinned.is_some() {
            // Nothing of this client's session may reach the next one.
            if !matches!(server.simple("DISCARD ALL").await, Ok(None)) {
                return;
            }
            server.prepared.clear();
            server.settings = Settings::default();
        }
        server.release();
    }
}

enum Event {
    Client(std::io::Result<bool>),
    Server(std::io::Result<bool>),
    /// The request in flight made no progress for `pool.stuck_request_timeout`.
    Stuck,
    /// A timeout of `timeouts.rs` is due.
    Timeout,
}

/// Sleeps until `at`, or forever without one (a `select!` arm that never fires).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// At most this much input is read and dropped by [`Session::linger`].
const LINGER_MAX_BYTES: usize = 512 << 20;

pub(super) async fn read_more(io: &mut Stream, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(32 * 1024);
    }
    Ok(io.read_buf(buf).await? > 0)
}
