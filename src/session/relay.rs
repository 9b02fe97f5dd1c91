//! The relay loop: buffers a client's extended-protocol messages until a Sync (or Flush, or a
//! simple Query), lets `dispatch` choose and borrow a backend, forwards raw bytes both ways, and
//! gives the backend back at the end of the transaction (transaction pooling) or session.
//!
//! This file keeps the session's state and its loop; what each event does lives beside it, one
//! file per direction: `inbound` (client messages), `outbound` (to the backend), `answers`
//! (from the backend), `loss` (a backend lost while the client waits).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::inbound::{is_dispatch, Msg};
use super::loss::Lost;
use super::settings::Settings;
use super::startup::Accepted;
use super::statements::Statements;
use super::track::{Expect, Tracker};
use super::SessionError;
use crate::analyze::Analysis;
use crate::backend::Login;
use crate::cancel::Slot;
use crate::config::PoolMode;
use crate::context::Context;
use crate::pool::Checkout;
use crate::route::topology::InFlight;
use crate::route::{Lsn, Node};
use crate::tls::Stream;
use crate::wire::frame::{check, Frame};
use crate::wire::msg::{self, Severity};

/// The backend lent to this client and what it is doing.
pub(super) struct Attached {
    pub server: Checkout,
    pub node: Arc<Node>,
    pub replica: bool,
    pub _inflight: InFlight,
    /// The request as sent, kept while a replica has not yet answered anything, so a failure
    /// there can be retried elsewhere.
    pub retry: Option<Vec<Msg>>,
    /// A transaction began on this attachment: everything up to its end stays here.
    pub in_txn: bool,
    /// Why the router chose this node (slow-query log).
    pub reason: Arc<str>,
    /// This backend holds the client's unnamed statement: its Parse was sent here since the
    /// last Sync (after which the proxy may inject queries, which destroy it).
    pub unnamed_ready: bool,
    /// Client requests sent on this attachment so far.
    pub requests: u32,
    /// The commit position captured behind request number `.1`: everything that request saw
    /// is at or before it (monotonic reads, `route::Seen`), if no request followed it here.
    pub position: Option<(Lsn, u32)>,
    /// The number of the request the capture in flight follows.
    pub capture_after: u32,
    /// A statement ran here (not only Sync, Close or Describe of a portal): only then does
    /// where the session was say anything about what it saw.
    pub ran_statements: bool,
}

pub struct Session {
    pub(super) ctx: Arc<Context>,
    pub(super) client: Stream,
    pub(super) cbuf: BytesMut,
    pub(super) cout: BytesMut,
    pub(super) sout: BytesMut,
    pub(super) max_message: usize,
    pub user: String,
    pub database: String,
    pub(super) application_name: String,
    pub(super) params: Vec<(String, String)>,
    pub(super) server_params: Vec<(String, String)>,
    pub(super) login: Login,
    pub(super) mode: PoolMode,
    pub(super) attached: Option<Attached>,
    /// Messages held back until a Sync/Flush/Query completes the request.
    pub(super) pending: Vec<Msg>,
    /// Bytes of `pending` since it was last empty (`admit_pending`).
    pub(super) pending_bytes: usize,
    /// A request that needs the primary arrived while a replica still answers an earlier one.
    pub(super) deferred: bool,
    pub(super) tracker: Tracker,
    /// Extended-protocol messages sent since the last Sync: the backend is not reusable yet.
    pub(super) unsynced: bool,
    pub(super) statements: Statements,
    /// Analysis of the unnamed statement, for the Binds that follow its Parse.
    pub(super) unnamed: Option<Arc<Analysis>>,
    /// The client's last Parse of the unnamed statement, re-sent to a backend that lacks it (it
    /// lives until the next unnamed Parse or simple Query, across backends under pooling).
    pub(super) unnamed_parse: Option<Bytes>,
    pub(super) settings: Settings,
    pub(super) pinned: Option<&'static str>,
    pub(super) cancel: Arc<Slot>,
    /// Statements of the Sync group being forwarded; they travel with its Sync in the tracker.
    pub(super) group: Vec<Arc<Analysis>>,
    pub(super) error_since_rfq: bool,
    pub(super) txn: super::effects::TxnState,
    /// Commit position of this client's last write (read-your-writes).
    pub(super) last_write_lsn: Lsn,
    /// Where the last request ran and when its backend was given back (monotonic reads).
    pub(super) seen: Option<crate::route::Seen>,
    /// A request ran on a replica since the session last read the primary after waiting for
    /// the writes in flight (`primary_after_replica`): a write on the primary in between does
    /// not settle it.
    pub(super) replica_unsettled: bool,
    /// This session has sent a request that may run on a replica: its reads on the primary
    /// then carry a position capture, so that its next read need not stay on the primary
    /// (monotonic reads).
    pub(super) reads_replicas: bool,
    /// A replica refused a read in a way worth retrying elsewhere (its SQLSTATE).
    pub(super) retry_requested: Option<String>,
    /// Responses held back until the commit position of a write is known: no client may hear
    /// of a commit before a read that must see it can be routed accordingly.
    pub(super) held: Option<BytesMut>,
    /// A cache miss whose answer is being captured.
    pub(super) filling: Option<super::caching::Filling>,
    /// Cached results a committed write made stale, dropped before the commit is acknowledged.
    pub(super) invalidation: Option<super::caching::Invalidation>,
    /// Advisory lock keys the current transaction holds (not taken twice).
    pub(super) locks_held: std::collections::HashSet<String>,
    /// SHOW LOCKS lists entries of this session (released at the transaction's end).
    pub(super) locks_registered: bool,
    /// This client's id in SHOW CLIENTS, under which SHOW LOCKS lists its advisory keys.
    pub client_id: u64,
    /// The request is wrapped in BEGIN … COMMIT: its commit position is captured after COMMIT.
    pub(super) no_predicted_capture: bool,
    drain: tokio::sync::watch::Receiver<bool>,
    /// Held from a transaction's first message to its boundary, so SWITCH can wait for it.
    pub(super) gate: Option<crate::switch::TxnGuard>,
    /// The switch epoch this session last saw: positions and backends of older ones belong
    /// to another environment.
    pub(super) env_epoch: u64,
    switched: tokio::sync::watch::Receiver<u64>,
    /// A replica read's first answers (ParseComplete, BindComplete, descriptions), held back so
    /// the read can still be retried elsewhere if the replica dies before sending rows.
    pub(super) retry_hold: BytesMut,
    /// A backend's FATAL was passed on as an ERROR: the end of stream that follows needs no
    /// second error.
    pub(super) fatal_forwarded: bool,
    /// When the advisory-lock statement in flight was sent (lock-wait metrics).
    pub(super) lock_started: Option<std::time::Instant>,
    /// Client requests in flight, timed for the slow-query log.
    pub(super) timings: super::slowlog::Timings,
    pub(super) pools_seen:
        parking_lot::Mutex<Vec<(Arc<crate::config::NodeAddr>, Arc<crate::pool::Pool>)>>,
    /// Intents and cache table names of recent statements.
    pub(super) memo: super::memo::Memo,
    /// How the server lexes this client's text (standard_conforming_strings, client_encoding).
    pub(super) lex: super::lexing::LexState,
    /// The backend sent something no outstanding request explains: what, for the log.
    pub(super) lost_track: Option<String>,
    /// Last time the client's request in flight made progress (watchdog).
    pub(super) progress_at: tokio::time::Instant,
    /// The watchdog already reported the request in flight this many times.
    pub(super) stuck_reports: u32,
    /// Timeouts in force (`timeouts.rs`), resolved per request.
    pub(super) limits: super::timeouts::Limits,
    pub(super) clock: super::timeouts::Clock,
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
            client: a.reader.io,
            cbuf: a.reader.buf,
            cout: BytesMut::with_capacity(16 * 1024),
            sout: BytesMut::with_capacity(4 * 1024),
            max_message: cfg.listen.max_message_size,
            user: a.user,
            database: a.database,
            application_name,
            params: a.params,
            server_params: a.server_params,
            login: a.login,
            mode: cfg.pool.mode,
            attached: None,
            pending: Vec::new(),
            pending_bytes: 0,
            deferred: false,
            tracker: Tracker::default(),
            unsynced: false,
            statements: Statements::default(),
            unnamed: None,
            unnamed_parse: None,
            settings,
            pinned: None,
            cancel,
            group: Vec::new(),
            error_since_rfq: false,
            txn: Default::default(),
            last_write_lsn: 0,
            seen: None,
            replica_unsettled: false,
            reads_replicas: false,
            retry_requested: None,
            held: None,
            filling: None,
            invalidation: None,
            locks_held: Default::default(),
            locks_registered: false,
            client_id: 0,
            no_predicted_capture: false,
            drain: ctx.drain.subscribe(),
            gate: None,
            env_epoch: ctx.envs.epoch(),
            switched: ctx.envs.subscribe(),
            lock_started: None,
            timings: Default::default(),
            retry_hold: BytesMut::new(),
            fatal_forwarded: false,
            pools_seen: Default::default(),
            memo: Default::default(),
            lex,
            lost_track: None,
            progress_at: tokio::time::Instant::now(),
            stuck_reports: 0,
            limits: Default::default(),
            clock: Default::default(),
            ctx,
        }
    }

    /// Completes startup: AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery.
    pub async fn start(&mut self, pid: i32, secret: i32) -> Result<(), SessionError> {
        let mut out = BytesMut::with_capacity(512);
        msg::auth_request(&mut out, msg::AUTH_OK, &[]);
        for (name, value) in &self.server_params {
            // The client sees its own startup values for what it set (application_name, DateStyle…).
            let own = self
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v);
            msg::parameter_status(&mut out, name, own.unwrap_or(value));
        }
        msg::backend_key_data(&mut out, pid, secret);
        msg::ready_for_query(&mut out, b'I');
        self.client.write_all(&out).await?;
        Ok(())
    }

    /// Between transactions, with nothing pending or in flight.
    fn at_boundary(&self) -> bool {
        self.pending.is_empty()
            && self.cbuf.is_empty()
            && match self.attached.as_ref() {
                None => true,
                Some(att) => {
                    self.tracker.is_idle() && !self.unsynced && att.server.txn_status == b'I'
                }
            }
    }

    /// Like [`Self::at_boundary`], but a partly received next message does not count: the
    /// transaction it starts has not begun until it is complete.
    fn between_transactions(&self) -> bool {
        self.pending.is_empty()
            && match self.attached.as_ref() {
                None => true,
                Some(att) => {
                    self.tracker.is_idle() && !self.unsynced && att.server.txn_status == b'I'
                }
            }
    }

    /// Starts a transaction: waits while a SWITCH runs, then catches up with one that
    /// happened. False when this session must end (its backend cannot follow).
    pub(super) async fn enter(&mut self) -> bool {
        self.gate = Some(self.ctx.envs.enter().await);
        let epoch = self.ctx.envs.epoch();
        if epoch == self.env_epoch {
            return true;
        }
        self.env_epoch = epoch;
        // A commit position of the old environment says nothing about the new one; the
        // write log's floor now stands for it.
        self.last_write_lsn = 0;
        self.seen = None;
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
        let Some(att) = self.attached.as_ref() else {
            return false;
        };
        let topo = self.ctx.topology.load();
        if topo.nodes.iter().any(|n| *n.addr == *att.node.addr) {
            return false;
        }
        if self.pinned.is_some() || self.mode != PoolMode::Transaction {
            return true;
        }
        self.cancel.clear();
        if let Some(att) = self.attached.take() {
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
            .write_all(&msg::error_bytes(Severity::Fatal, code, message))
            .await;
    }

    /// After a FATAL for a limit the client overran: stop writing and swallow what it still
    /// sends, briefly, before closing. Closing a socket with unread input makes the kernel send
    /// a reset, which can destroy the error in flight before the client reads it.
    pub async fn linger(&mut self) {
        use tokio::io::AsyncReadExt;
        let _ = self.client.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let mut total = 0usize;
            while total < LINGER_MAX_BYTES {
                match self.client.read(&mut sink).await {
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
            if self.attached.is_none()
                && self
                    .pending
                    .last()
                    .is_some_and(|m| is_dispatch(m.frame.tag))
            {
                self.deferred = false;
                self.dispatch().await?;
            }
            // 2. Everything the client has already sent.
            while !self.deferred {
                let Some(total) = check(&self.cbuf, self.max_message)? else {
                    break;
                };
                let bytes = self.cbuf.split_to(total).freeze();
                let frame = Frame {
                    tag: bytes[0],
                    bytes,
                };
                if frame.tag == b'X' {
                    return Ok(());
                }
                if self.gate.is_none() && !self.enter().await {
                    return Ok(());
                }
                let m = self.annotate(frame)?;
                self.on_client_message(m).await?;
                self.progressed();
            }
            if self.deferred {
                self.settle_for_deferred();
                if self.attached.is_none() {
                    continue; // released: the deferred request goes now (step 1)
                }
            }
            self.flush_server().await?;
            self.tracker.drain_synthetic(&mut self.cout);
            self.flush_client().await?;

            // 3. Wait for more.
            self.tick_clock();
            self.expired_transaction().await?;
            if self.between_transactions() {
                self.gate = None; // a SWITCH may happen while this client thinks
                drop(self.switched.borrow_and_update());
                if self.backend_elsewhere() {
                    self.close_after_switch().await;
                    return Ok(());
                }
            }
            if *self.drain.borrow() && self.at_boundary() {
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
            let Some(att) = self.attached.as_mut() else {
                let (due, kind) = timeout.unzip();
                tokio::select! {
                    r = read_more(&mut self.client, &mut self.cbuf) => {
                        if !r? {
                            return Ok(());
                        }
                        self.clock.client_seen = tokio::time::Instant::now();
                    }
                    _ = self.drain.changed() => {}
                    () = sleep_until_some(due) => {
                        if let Some(kind) = kind {
                            self.on_timeout(kind).await?;
                        }
                    }
                }
                continue;
            };
            let srv = &mut *att.server;
            let deferred = self.deferred;
            let idle = self.gate.is_none();
            let bound = self.ctx.config.load().pool.stuck_request_timeout;
            let watch = !bound.is_zero() && (!self.tracker.is_idle() || deferred);
            let stuck_at = self.progress_at + bound * (self.stuck_reports + 1);
            let event = tokio::select! {
                r = read_more(&mut self.client, &mut self.cbuf), if !deferred => Event::Client(r),
                r = read_more(&mut srv.stream, &mut srv.rbuf) => Event::Server(r),
                // A pinned backend idles here between transactions: a switch must close it now.
                Ok(()) = self.switched.changed(), if idle => continue,
                () = tokio::time::sleep_until(stuck_at), if watch => Event::Stuck,
                () = sleep_until_some(timeout.map(|(at, _)| at)) => Event::Timeout,
            };
            match event {
                Event::Client(Ok(true)) => self.clock.client_seen = tokio::time::Instant::now(),
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
                    self.progressed();
                    self.on_server_data()?;
                    if let Some(why) = self.lost_track.take() {
                        self.abandon_backend(why, Lost::Track).await?;
                        self.flush_server().await?;
                        self.flush_client().await?;
                        continue;
                    }
                    if let Some(code) = self.retry_requested.take() {
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
        let Some(att) = self.attached.as_ref() else {
            return;
        };
        if !self.tracker.is_idle() || !att.server.rbuf.is_empty() {
            return; // answers still due: they come from the backend
        }
        if self.unsynced {
            self.sout.extend_from_slice(msg::SYNC);
            self.tracker.push(Expect::Query {
                swallow: true,
                group: Vec::new(),
            });
            self.unsynced = false;
            self.unnamed_spent();
        } else {
            self.maybe_release();
        }
    }

    /// The client's request in flight moved: the watchdog starts over.
    fn progressed(&mut self) {
        self.progress_at = tokio::time::Instant::now();
        self.stuck_reports = 0;
    }

    /// The watchdog: the request in flight made no progress for `bound` (again). It is logged
    /// with what the proxy still expects, and counted. Then the backend is asked about: a
    /// statement still running there (`active` in `pg_stat_activity`) is left alone, but a
    /// backend waiting for input while the client waits for an answer means the proxy lost
    /// track of the request — the client gets 08P01 and the connection is closed.
    async fn on_stuck(&mut self, bound: std::time::Duration) -> Result<(), SessionError> {
        self.stuck_reports += 1;
        let Some(att) = self.attached.as_ref() else {
            return Ok(());
        };
        let node = att.node.clone();
        let pid = att.server.pid;
        let waited = self.progress_at.elapsed();
        crate::metrics::stuck_request();
        let pending: String = self
            .pending
            .iter()
            .map(|m| char::from(m.frame.tag))
            .collect();
        let pending_sql: Vec<&str> = self
            .pending
            .iter()
            .filter_map(|m| m.analysis.as_ref().map(|a| a.normalized.as_str()))
            .collect();
        tracing::warn!(
            node = %node.addr.display(),
            pid,
            waited = ?waited,
            bound = ?bound,
            expected = %self.tracker.describe(),
            deferred = self.deferred,
            unsynced = self.unsynced,
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
        if self.sout.is_empty() {
            return Ok(());
        }
        let Some(att) = self.attached.as_mut() else {
            self.sout.clear();
            return Ok(());
        };
        if let Err(e) = att.server.stream.write_all(&self.sout).await {
            self.sout.clear();
            return Box::pin(self.server_lost(e.to_string())).await;
        }
        self.sout.clear();
        Ok(())
    }

    pub(super) async fn flush_client(&mut self) -> Result<(), SessionError> {
        if self.held.is_none() {
            self.deferred_answered();
        }
        if !self.cout.is_empty() {
            self.client.write_all(&self.cout).await?;
            self.cout.clear();
        }
        Ok(())
    }

    /// After the client is gone: a backend with an open transaction is rolled back before it is
    /// reused; one with a request in flight is closed (Postgres then aborts the work).
    pub async fn cleanup(&mut self) {
        self.cancel.clear();
        self.abandon_announced();
        let Some(att) = self.attached.take() else {
            return;
        };
        let mut server = att.server;
        if !self.tracker.is_idle() || self.unsynced {
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
        if self.mode == PoolMode::Session || self.pinned.is_some() {
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
