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
use super::commit::CommitTracking;
use super::environment::Environment;
use super::identity::Identity;
use super::inbound::is_dispatch;
use super::locking::AdvisoryLocks;
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
use crate::context::Context;
use crate::tls::Stream;
use crate::wire::msg;
use crate::wire::tag::front;

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
    pub(super) locks: AdvisoryLocks,
    pub(super) time: Timekeeping,
    pub(super) env: Environment,
}

impl Session {
    pub fn new(ctx: Arc<Context>, a: Accepted, cancel: Arc<Slot>) -> Self {
        let cfg = ctx.config.load_full();
        let settings = Settings::from_startup(&a.params);
        let lex = super::lexing::LexState::from_startup(&a.server_params, &a.params);
        Self {
            client: ClientConn::new(a.reader.io, a.reader.buf, cfg.listen.max_message_size),
            identity: Identity::new(a.user, a.database, a.params, a.server_params, a.login),
            request: RequestBuffer::default(),
            stmts: ClientStatements::default(),
            vars: ClientVars { settings, lex },
            backend: Backend::new(cfg.pool.mode, cancel),
            commit: CommitTracking::default(),
            locks: AdvisoryLocks::default(),
            time: Timekeeping::default(),
            env: Environment::new(&ctx),
            ctx,
        }
    }

    /// Between transactions, with nothing pending or in flight.
    fn at_boundary(&self) -> bool {
        self.request.pending.is_empty()
            && self.client.reader.buf.is_empty()
            && self.backend.settled(self.request.unsynced)
    }

    /// Like [`Self::at_boundary`], but a partly received next message does not count: the
    /// transaction it starts has not begun until it is complete.
    fn between_transactions(&self) -> bool {
        self.request.pending.is_empty() && self.backend.settled(self.request.unsynced)
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
                let Some(frame) = self.client.reader.try_next()? else {
                    break;
                };
                if frame.tag == front::TERMINATE {
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
                self.env.leave();
                if self.backend_elsewhere() {
                    self.close_after_switch().await;
                    return Ok(());
                }
            }
            if self.env.draining() && self.at_boundary() {
                // Draining: this client is between transactions, so it can go without losing
                // anything; 57P01 tells pools and drivers to reconnect (to the successor).
                self.client
                    .fatal(
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
                    r = self.client.read_more() => {
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
                r = self.client.read_more(), if !deferred => Event::Client(r),
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
            self.backend.unnamed_spent();
        } else {
            self.maybe_release();
        }
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
            self.client.reader.io.write_all(&self.client.cout).await?;
            self.client.cout.clear();
        }
        Ok(())
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

pub(super) async fn read_more(io: &mut Stream, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(32 * 1024);
    }
    Ok(io.read_buf(buf).await? > 0)
}
