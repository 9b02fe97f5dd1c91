//! The relay loop: buffers a client's extended-protocol messages until a Sync (or Flush, or a
//! simple Query), lets `dispatch` choose and borrow a backend, forwards raw bytes both ways, and
//! gives the backend back at the end of the transaction (transaction pooling) or session.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::settings::Settings;
use super::startup::Accepted;
use super::statements::{Statement, Statements};
use super::track::{Action, Expect, Tracker, SYNTH_CLOSE_COMPLETE};
use super::SessionError;
use crate::analyze::Analysis;
use crate::backend::{Login, MAX_BACKEND_MESSAGE};
use crate::cancel::Slot;
use crate::config::PoolMode;
use crate::context::Context;
use crate::pool::Checkout;
use crate::route::topology::InFlight;
use crate::route::{Lsn, Node};
use crate::tls::Stream;
use crate::wire::frame::{check, Frame};
use crate::wire::msg::{self, Bind, Parse, Severity, Target};

/// A client message with what the analyser made of the statement it runs, if anything.
#[derive(Clone)]
pub(super) struct Msg {
    pub frame: Frame,
    pub analysis: Option<Arc<Analysis>>,
    /// The error Postgres would raise for this message (ErrorResponse bytes), which the proxy
    /// knows before any backend sees it (a Parse of a name already in use).
    pub fail: Option<Bytes>,
    /// The client's named statement this message defines, uses or closes, resolved in the
    /// client's order (a batch may close a name and parse it again before any of it is sent).
    pub stmt: Option<Arc<Statement>>,
}

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
    pending_bytes: usize,
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

    /// Decodes what must be known about a message before it is buffered or forwarded.
    fn annotate(&mut self, frame: Frame) -> Result<Msg, SessionError> {
        let bad = |what: &str| SessionError::Protocol(format!("malformed {what} message"));
        let mut fail = None;
        let mut stmt = None;
        let analysis = match frame.tag {
            b'Q' => Some(self.analyze_text(msg::query_text(frame.body()))),
            b'P' => {
                let p = Parse::decode(frame.body()).ok_or_else(|| bad("Parse"))?;
                if !p.name.is_empty() && self.statements.get(p.name).is_some() {
                    // Postgres refuses to redefine a statement; the old one stays.
                    fail = Some(msg::error_bytes(
                        Severity::Error,
                        crate::wire::sqlstate::DUPLICATE_PSTATEMENT,
                        &format!(
                            "prepared statement \"{}\" already exists",
                            String::from_utf8_lossy(p.name)
                        ),
                    ));
                    None
                } else if !p.name.is_empty()
                    && self.statements.len()
                        >= self.ctx.config.load().listen.max_prepared_statements
                {
                    crate::metrics::security_event("limit_prepared_statements");
                    fail = Some(msg::error_bytes(
                        Severity::Error,
                        crate::wire::sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                        &format!(
                            "too many prepared statements: {} (pgsidecar \
                             listen.max_prepared_statements); close some first",
                            self.statements.len()
                        ),
                    ));
                    None
                } else {
                    let a = self.analyze_text(p.query);
                    if p.name.is_empty() {
                        self.unnamed = Some(a.clone());
                        self.unnamed_parse = Some(frame.bytes.clone());
                    } else {
                        stmt = Some(self.statements.register(
                            &p,
                            self.settings.fingerprint(),
                            a.clone(),
                        ));
                    }
                    Some(a)
                }
            }
            b'B' => {
                let b = Bind::decode(frame.body()).ok_or_else(|| bad("Bind"))?;
                if b.statement.is_empty() {
                    self.unnamed.clone()
                } else {
                    stmt = self.statements.get(b.statement).cloned();
                    stmt.as_ref().map(|s| s.analysis.clone())
                }
            }
            b'D' | b'C' => {
                let t = Target::decode(frame.body()).ok_or_else(|| bad("Describe/Close"))?;
                if t.kind == b'S' && !t.name.is_empty() {
                    stmt = if frame.tag == b'C' {
                        // Other clients may share the server-side statement: only the client's
                        // name goes (answered by the proxy when the Close is forwarded).
                        self.statements.remove(t.name)
                    } else {
                        self.statements.get(t.name).cloned()
                    };
                }
                None
            }
            _ => None,
        };
        Ok(Msg {
            frame,
            analysis,
            fail,
            stmt,
        })
    }

    /// SQL `DEALLOCATE` of statements the client prepared through the protocol (psycopg sends
    /// `DEALLOCATE ALL` after a rollback) is answered here: those statements are the client's
    /// names for proxy-wide ones that other clients share, so it must not reach a backend.
    fn answer_deallocate(&mut self, m: &Msg) -> bool {
        let Some(a) = m.analysis.as_ref() else {
            return false;
        };
        if m.frame.tag != b'Q'
            || self.pinned.is_some()
            || a.statements.len() != 1
            || a.statements[0].verb != "DEALLOCATE"
        {
            return false;
        }
        let status = match self.attached.as_ref() {
            None => b'I',
            Some(att) if self.tracker.is_idle() && !self.unsynced => att.server.txn_status,
            Some(_) => return false,
        };
        let words: Vec<&str> = a
            .normalized
            .trim_end_matches(';')
            .split_whitespace()
            .collect();
        let target = match words.as_slice() {
            [_, "prepare", name] | [_, name] => name.trim_matches('"'),
            _ => return false,
        };
        if target == "all" {
            self.statements.clear();
            msg::command_complete(&mut self.cout, "DEALLOCATE ALL");
        } else if self.statements.get(target.as_bytes()).is_some() {
            self.statements.remove(target.as_bytes());
            msg::command_complete(&mut self.cout, "DEALLOCATE");
        } else {
            return false; // a SQL-level PREPAREd name, or unknown: the server answers
        }
        msg::ready_for_query(&mut self.cout, status);
        true
    }

    async fn on_client_message(&mut self, mut m: Msg) -> Result<(), SessionError> {
        if self.answer_deallocate(&m) {
            return Ok(());
        }
        let tag = m.frame.tag;
        if let Some(att) = self.attached.as_mut().filter(|a| !a.replica) {
            // A read kept to run again on a replica if the primary goes away: what the client
            // sends behind it goes straight to the primary and would not be sent again, so
            // from here on it is not retried.
            att.retry = None;
        }
        let on_replica = self.attached.as_ref().is_some_and(|a| a.replica);
        let after_capture = self.only_capture_outstanding();
        let buffer_groups = on_replica || after_capture || self.locks_configured();
        if self.attached.is_some() && !buffer_groups {
            if tag == b'B' {
                // A statement described before DDL answers as Postgres would (`revalidate`).
                self.revalidate(std::slice::from_mut(&mut m)).await?;
            }
            if self.attached.is_some() {
                if let Some(a) = m.analysis.clone().filter(|_| matches!(tag, b'Q' | b'B')) {
                    self.announce_before_commit(&[a]).await;
                }
                return self.forward(m);
            }
        }
        if self.attached.is_some() && matches!(tag, b'd' | b'c' | b'f') {
            return self.forward(m);
        }
        if is_dispatch(tag) || is_extended(tag) {
            self.admit_pending(&m)?;
            self.pending.push(m);
            if is_dispatch(tag) {
                if on_replica {
                    // Pipelined behind a read on a replica: it may follow only if it is a read too.
                    if self.replica_can_take_pending() {
                        // A statement described before DDL is checked first, once the reads
                        // ahead of it are answered (`revalidate`).
                        self.revalidate_pending().await?;
                        if self.attached.is_none() {
                            return self.dispatch().await; // the backend was lost meanwhile
                        }
                        for m in std::mem::take(&mut self.pending) {
                            // While the read ahead of it may still be retried elsewhere, this
                            // one goes with it: a retry re-sends everything the replica had
                            // been given, or the client would wait for answers never asked.
                            if let Some(copy) =
                                self.attached.as_mut().and_then(|a| a.retry.as_mut())
                            {
                                copy.push(m.clone());
                            }
                            self.forward(m)?;
                        }
                    } else {
                        self.deferred = true;
                    }
                } else if after_capture {
                    // Routed afresh once the capture has answered and the backend is let go.
                    self.deferred = true;
                } else if self.attached.is_some() {
                    self.revalidate_pending().await?;
                    if self.attached.is_some() {
                        let analyses = self.executed_analyses();
                        self.announce_before_commit(&analyses).await;
                        self.forward_group()?;
                    } else {
                        self.dispatch().await?; // the backend was lost meanwhile
                    }
                } else {
                    self.dispatch().await?;
                }
            }
            return Ok(());
        }
        if matches!(tag, b'd' | b'c' | b'f') {
            if self.attached.is_some() {
                return self.forward(m);
            }
            // COPY messages outside COPY are ignored, as Postgres does after an error.
            return Ok(());
        }
        Err(SessionError::Protocol(format!(
            "invalid frontend message type {tag}"
        )))
    }

    /// Bounds what a client may make the proxy buffer before its Sync/Flush: past
    /// `listen.max_unsynced_bytes` or `max_unsynced_messages` the session ends with 54000
    /// (messages already dropped cannot be answered in order, so it cannot go on).
    fn admit_pending(&mut self, m: &Msg) -> Result<(), SessionError> {
        if self.pending.is_empty() {
            self.pending_bytes = 0;
        }
        self.pending_bytes += m.frame.bytes.len();
        let cfg = self.ctx.config.load();
        let (max_bytes, max_msgs) = (
            cfg.listen.max_unsynced_bytes,
            cfg.listen.max_unsynced_messages,
        );
        if self.pending_bytes > max_bytes || self.pending.len() >= max_msgs {
            crate::metrics::security_event("limit_unsynced");
            return Err(SessionError::Limit {
                code: crate::wire::sqlstate::PROGRAM_LIMIT_EXCEEDED,
                message: format!(
                    "too much sent without Sync: {} messages, {} bytes buffered (pgsidecar \
                     listen.max_unsynced_messages = {max_msgs}, max_unsynced_bytes = {max_bytes})",
                    self.pending.len() + 1,
                    self.pending_bytes
                ),
            });
        }
        Ok(())
    }

    /// Forwards one client message to the attached backend, rewriting statement names.
    pub(super) fn forward(&mut self, m: Msg) -> Result<(), SessionError> {
        let Msg {
            frame: f,
            analysis,
            fail,
            stmt,
        } = m;
        let bad = |what: &str| SessionError::Protocol(format!("malformed {what} message"));
        if let Some(error) = fail {
            self.provoke(error);
            return Ok(());
        }
        match f.tag {
            b'P' => {
                let p = Parse::decode(f.body()).ok_or_else(|| bad("Parse"))?;
                self.unsynced = true;
                if p.name.is_empty() {
                    if let Some(att) = self.attached.as_mut() {
                        att.unnamed_ready = true;
                    }
                }
                match stmt {
                    None => {
                        self.sout.extend_from_slice(&f.bytes);
                        self.tracker.push(Expect::Parse {
                            swallow: false,
                            name: None,
                            client: None,
                        });
                    }
                    Some(stmt) => {
                        self.close_if_stale(&stmt.global)?;
                        let server = self.server_mut()?;
                        if server.prepared.contains(&stmt.global) {
                            server.prepared.touch(&stmt.global);
                            self.tracker.push(Expect::KnownParse {
                                client: Bytes::copy_from_slice(p.name),
                                global: stmt.global.clone(),
                            });
                        } else {
                            self.send_parse(&stmt.global, &stmt.parse, Some(p.name))?;
                        }
                    }
                }
            }
            b'B' => {
                let b = Bind::decode(f.body()).ok_or_else(|| bad("Bind"))?;
                self.unsynced = true;
                if b.statement.is_empty() && !self.ensure_unnamed()? {
                    return Ok(());
                }
                match self.ensure_prepared(stmt)? {
                    Some(global) => b.encode_renamed(&mut self.sout, &global),
                    None => self.sout.extend_from_slice(&f.bytes),
                }
                self.tracker.push(Expect::Bind);
                self.group.extend(analysis);
            }
            b'D' => {
                let t = Target::decode(f.body()).ok_or_else(|| bad("Describe"))?;
                self.unsynced = true;
                if t.kind == b'S' {
                    if t.name.is_empty() && !self.ensure_unnamed()? {
                        return Ok(());
                    }
                    match self.ensure_prepared(stmt.clone())? {
                        Some(global) => Target::encode(b'D', b'S', &global, &mut self.sout),
                        None => self.sout.extend_from_slice(&f.bytes),
                    }
                    self.tracker.push(Expect::DescribeStatement(stmt));
                } else {
                    self.sout.extend_from_slice(&f.bytes);
                    self.tracker.push(Expect::DescribePortal);
                }
            }
            b'C' => {
                let t = Target::decode(f.body()).ok_or_else(|| bad("Close"))?;
                self.unsynced = true;
                if stmt.is_some() {
                    // Its name was forgotten in `annotate`; the server-side statement stays.
                    self.tracker.push(Expect::Synthetic(SYNTH_CLOSE_COMPLETE));
                } else {
                    if t.kind == b'S' && t.name.is_empty() {
                        self.unnamed_parse = None;
                    }
                    self.sout.extend_from_slice(&f.bytes);
                    self.tracker.push(Expect::Close { swallow: false });
                }
            }
            b'E' => {
                self.unsynced = true;
                self.sout.extend_from_slice(&f.bytes);
                self.tracker.push(Expect::Execute);
            }
            b'H' => self.sout.extend_from_slice(&f.bytes),
            b'S' => {
                self.request_sent();
                self.unsynced = false;
                self.unnamed_spent();
                self.sout.extend_from_slice(&f.bytes);
                let group = std::mem::take(&mut self.group);
                self.time_request(&group);
                let capture = !self.tracker.copy_in && self.wants_capture(&group);
                self.tracker.push_sync(group);
                if capture {
                    self.send_capture();
                }
            }
            b'Q' => {
                self.request_sent();
                // A simple query destroys the unnamed statement, for the client as in Postgres.
                self.unnamed_parse = None;
                self.unnamed_spent();
                self.sout.extend_from_slice(&f.bytes);
                let group: Vec<_> = analysis.into_iter().collect();
                self.time_request(&group);
                let capture = self.wants_capture(&group);
                self.tracker.push(Expect::Query {
                    swallow: false,
                    group,
                });
                if capture {
                    self.send_capture();
                }
            }
            b'F' => {
                self.request_sent();
                self.unnamed_spent();
                self.sout.extend_from_slice(&f.bytes);
                self.time_request(&[]);
                self.tracker.push(Expect::FunctionCall);
            }
            b'd' => self.sout.extend_from_slice(&f.bytes),
            b'c' | b'f' => {
                self.sout.extend_from_slice(&f.bytes);
                self.tracker.client_copy_end();
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "invalid frontend message type {other}"
                )))
            }
        }
        Ok(())
    }

    pub(super) fn server_mut(&mut self) -> Result<&mut Checkout, SessionError> {
        self.attached
            .as_mut()
            .map(|a| &mut a.server)
            .ok_or_else(|| SessionError::Protocol("internal: no backend attached".into()))
    }

    /// The backend-side name for a client's statement, preparing it there first if needed.
    /// `None` for the unnamed statement or a name the client never prepared (the backend then
    /// reports the error in Postgres' own words).
    fn ensure_prepared(
        &mut self,
        stmt: Option<Arc<Statement>>,
    ) -> Result<Option<Bytes>, SessionError> {
        let Some(stmt) = stmt else {
            return Ok(None);
        };
        self.close_if_stale(&stmt.global)?;
        let server = self.server_mut()?;
        if server.prepared.contains(&stmt.global) {
            server.prepared.touch(&stmt.global);
        } else {
            self.send_parse(&stmt.global, &stmt.parse, None)?;
        }
        Ok(Some(stmt.global.clone()))
    }

    /// A statement this backend parsed before the last schema change (DDL through the sidecar,
    /// or a stale-plan error) may depend on objects that are gone: it is closed here (answer
    /// swallowed) so that the caller parses it again, as a client reconnecting would.
    fn close_if_stale(&mut self, global: &Bytes) -> Result<(), SessionError> {
        let server = self.server_mut()?;
        if !server.prepared.stale(global) {
            return Ok(());
        }
        server.prepared.remove(global);
        tracing::debug!(statement = %String::from_utf8_lossy(global), "re-preparing a statement parsed before a schema change");
        Target::encode(b'C', b'S', global, &mut self.sout);
        self.tracker.push(Expect::Close { swallow: true });
        Ok(())
    }

    /// Makes sure the backend holds the client's unnamed statement before a Bind or Describe
    /// of it, re-sending its Parse (answer swallowed) to a backend that may not. False when the
    /// client has no unnamed statement: the backend is then made to fail as Postgres would
    /// (rather than run whatever unnamed statement another client left there).
    fn ensure_unnamed(&mut self) -> Result<bool, SessionError> {
        if self.attached.as_ref().is_some_and(|a| a.unnamed_ready) {
            return Ok(true);
        }
        let Some(parse) = self.unnamed_parse.clone() else {
            self.provoke(msg::error_bytes(
                Severity::Error,
                crate::wire::sqlstate::UNDEFINED_PSTATEMENT,
                "unnamed prepared statement does not exist",
            ));
            return Ok(false);
        };
        self.sout.extend_from_slice(&parse);
        self.tracker.push(Expect::Parse {
            swallow: true,
            name: None,
            client: None,
        });
        if let Some(att) = self.attached.as_mut() {
            att.unnamed_ready = true;
        }
        Ok(true)
    }

    /// The proxy may inject queries after this point: the unnamed statement must be re-sent.
    pub(super) fn unnamed_spent(&mut self) {
        if let Some(att) = self.attached.as_mut() {
            att.unnamed_ready = false;
        }
    }

    /// Makes the backend fail at this point of the batch, the client seeing `error`: the backend
    /// then skips to Sync and aborts a transaction exactly as for the client's own message.
    fn provoke(&mut self, error: Bytes) {
        self.unsynced = true;
        Target::encode(b'D', b'S', b"pgsc_no_such_statement", &mut self.sout);
        self.tracker.push(Expect::Fail(error));
    }

    /// Sends a Parse for a proxy-wide statement, evicting the least recently used one when the
    /// backend holds too many.
    /// `client` names the client's own Parse (answered to it), else the Parse is the proxy's.
    fn send_parse(
        &mut self,
        global: &Bytes,
        parse: &Bytes,
        client: Option<&[u8]>,
    ) -> Result<(), SessionError> {
        let cap = self.ctx.config.load().pool.max_prepared_per_backend;
        let server = self.server_mut()?;
        let tick = server.prepared.touch(global);
        let mut victims = Vec::new();
        while let Some(victim) = server.prepared.evict_candidate(cap, tick) {
            victims.push(victim);
        }
        for victim in victims {
            Target::encode(b'C', b'S', &victim, &mut self.sout);
            self.tracker.push(Expect::Close { swallow: true });
        }
        self.sout.extend_from_slice(parse);
        self.tracker.push(Expect::Parse {
            swallow: client.is_none(),
            name: Some(global.clone()),
            client: client.map(Bytes::copy_from_slice),
        });
        Ok(())
    }

    /// Sends bytes on towards the client: held while a replica read may still be retried and
    /// only its preamble has arrived; otherwise (after any held preamble) to the client.
    fn emit(&mut self, bytes: &[u8], tag: u8) {
        let retrying = self.attached.as_ref().is_some_and(|a| a.retry.is_some());
        if retrying && matches!(tag, 0 | b'1' | b'2' | b't' | b'T' | b'n') {
            self.retry_hold.extend_from_slice(bytes);
            return;
        }
        if let Some(att) = self.attached.as_mut() {
            att.retry = None; // something reaches the client: no retry from here on
        }
        if !self.retry_hold.is_empty() {
            let held = std::mem::take(&mut self.retry_hold);
            self.capture(&held, 0);
            self.out().extend_from_slice(&held);
        }
        self.capture(bytes, tag);
        self.stats_saw(bytes, tag);
        self.out().extend_from_slice(bytes);
    }

    /// Where forwarded bytes go: held back while a commit position is being captured.
    fn out(&mut self) -> &mut BytesMut {
        self.held.as_mut().unwrap_or(&mut self.cout)
    }

    /// Attributes and forwards what the backend sent.
    pub(super) fn on_server_data(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(att) = self.attached.as_mut() else {
                return Ok(());
            };
            let server = &mut att.server;
            let total = match check(&server.rbuf, MAX_BACKEND_MESSAGE) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => {
                    return Err(SessionError::ServerLost(format!(
                        "bad message from server: {e}"
                    )))
                }
            };
            let tag = server.rbuf[0];
            if tag == b'E' && att.retry.is_some() {
                let f = msg::ErrorFields::decode(&server.rbuf[5..total]);
                let stale = stale_plan_error(&f);
                // A read on the primary (for want of a replica) is run again on a replica
                // only when the primary is going away.
                let again = if att.replica {
                    super::dispatch::retryable(&f.code)
                } else {
                    super::outage::outage_code(&f.code)
                };
                if (stale && att.replica) || again {
                    if stale {
                        // A plan or type went away (DDL made elsewhere): nothing of the read
                        // reached the client, so it runs again on the primary, re-prepared.
                        crate::backend::prepared::schema_changed();
                    }
                    self.retry_requested = Some(f.code);
                    return Ok(());
                }
            }
            let capturing = self.tracker.capturing();
            let frame = server.rbuf.split_to(total);
            if tag == b'E' && stale_plan_error(&msg::ErrorFields::decode(&frame[5..])) {
                // The schema changed behind the proxy's back (DDL not made through it): no
                // statement prepared so far can be trusted. Drivers that re-prepare on this
                // error (asyncpg) then get a fresh Parse rather than the same stale one.
                tracing::info!(
                    "a backend reports a stale plan or type; re-preparing statements before reuse"
                );
                crate::backend::prepared::schema_changed();
            }
            if tag == b'E' && self.tracker.is_idle() {
                // Nobody asked: the server is ending that backend session on its own (shutdown,
                // idle_session_timeout, pg_terminate_backend). A pooled client between
                // transactions loses nothing and must not hear of it: drivers treat an
                // ErrorResponse they did not ask for as a broken connection and close it.
                server.broken = true;
                let f = msg::ErrorFields::decode(&frame[5..]);
                tracing::info!(node = %att.node.addr.display(), code = %f.code, message = %f.message, "idle backend ended by the server");
                if self.mode == PoolMode::Transaction
                    && self.pinned.is_none()
                    && server.txn_status == b'I'
                {
                    continue;
                }
                // The client's session state lived there: it hears what Postgres said.
                self.emit(&frame, tag);
                continue;
            }
            if tag == b'E'
                && self.tracker.locking()
                && msg::ErrorFields::decode(&frame[5..]).code
                    == crate::wire::sqlstate::LOCK_NOT_AVAILABLE
            {
                crate::metrics::lock_timeout();
            }
            let mut ready = None;
            match tag {
                b'Z' => {
                    let status = frame.get(5).copied().unwrap_or(b'I');
                    server.txn_status = status;
                    if !capturing {
                        ready = Some((status, !self.error_since_rfq));
                        self.error_since_rfq = false;
                    }
                }
                b'E' if !capturing => self.error_since_rfq = true,
                b'S' => {
                    if let Some((k, v)) = msg::decode_parameter_status(&frame[5..]) {
                        self.lex.observe(&k, &v);
                        server.set_param(k, v);
                    }
                }
                b'D' if capturing => self.txn.captured = data_row_text(&frame[5..]),
                _ => {}
            }
            let mut synthetic = BytesMut::new();
            self.tracker.drain_synthetic(&mut synthetic);
            if !synthetic.is_empty() {
                self.emit(&synthetic, 0);
            }
            if matches!(tag, b't' | b'T' | b'n') {
                if let Some(stmt) = self.tracker.describing() {
                    super::revalidate::told(stmt, tag, &frame[5..]);
                }
            }
            let action = self.tracker.on_backend(tag);
            if self.tracker.confused {
                // Forwarding it (or anything after it) could only mislead the client: the
                // run loop answers what the client waits for with an error instead.
                self.lost_track = Some(format!(
                    "the server sent '{}' where no outstanding request explains it; still expected: {}",
                    char::from(tag),
                    self.tracker.describe()
                ));
                return Ok(());
            }
            for name in self.tracker.parsed_ok.drain(..) {
                self.ctx.known_statement(name);
            }
            self.lock_statements_answered();
            if let Some((status, ok)) = ready {
                // Decided before this ReadyForQuery goes out: it may have to wait for a capture.
                self.on_ready(status, ok);
            }
            if action != Action::Swallow {
                let mut frame = match action {
                    Action::Replace(bytes) => BytesMut::from(&bytes[..]),
                    _ => frame,
                };
                if tag == b'E' {
                    let f = msg::ErrorFields::decode(&frame[5..]);
                    if f.severity == "FATAL" || f.severity == "PANIC" {
                        // That backend session is over, not the client's: pass it on as an
                        // ERROR, and let the end of stream decide what the client keeps.
                        frame = msg::error_bytes(Severity::Error, &f.code, &f.message).into();
                        self.fatal_forwarded = true;
                        if let Some(att) = self.attached.as_mut() {
                            att.server.broken = true;
                        }
                    }
                }
                if tag == b'Z' && std::mem::take(&mut self.tracker.rewrite_idle) {
                    // The client's autocommit statement ends idle, as it would have without the
                    // proxy's BEGIN … COMMIT around it.
                    if let Some(s) = frame.get_mut(5) {
                        *s = b'I';
                    }
                }
                self.emit(&frame, tag);
                if tag == b'Z' {
                    self.request_answered();
                }
                if ready.is_some() {
                    self.finish_capture();
                }
            }
            if tag == b'Z' && capturing {
                self.on_captured();
            }
        }
        let Some(att) = self.attached.as_mut() else {
            return Ok(());
        };
        for name in self.tracker.failed_parses.drain(..) {
            att.server.prepared.remove(&name);
        }
        for (client, global) in self.tracker.unparsed.drain(..) {
            // As in Postgres, a statement whose Parse failed or was skipped does not exist.
            if self
                .statements
                .get(&client)
                .is_some_and(|s| s.global == global)
            {
                self.statements.remove(&client);
            }
        }
        if self.tracker.confused {
            att.server.broken = true;
        }
        let mut synthetic = BytesMut::new();
        self.tracker.drain_synthetic(&mut synthetic);
        if !synthetic.is_empty() {
            self.emit(&synthetic, 0);
        }
        if !self.retry_hold.is_empty() && self.tracker.outstanding == 0 {
            // Nothing more comes without the client (a Flush, not a Sync): it must see what
            // it asked for now, and the read can no longer be retried.
            self.emit(&[], b'!');
        }
        Ok(())
    }

    /// The client's requests are all answered and the primary backend is kept only for the
    /// proxy's position capture behind them: the client's next request waits for it to be let
    /// go and is routed afresh (a read after a read on the primary may go to a replica).
    fn only_capture_outstanding(&self) -> bool {
        self.mode == PoolMode::Transaction
            && self.pinned.is_none()
            && !self.unsynced
            && self.tracker.capture_next()
            && self.tracker.client_rfqs() == 0
            && self
                .attached
                .as_ref()
                .is_some_and(|a| !a.replica && a.server.txn_status == b'I')
    }

    /// Gives the backend back once the transaction is over and nothing is in flight.
    pub(super) fn maybe_release(&mut self) {
        if self.mode != PoolMode::Transaction
            || self.pinned.is_some()
            || self.unsynced
            || !self.tracker.is_idle()
        {
            return;
        }
        let Some(att) = self.attached.as_ref() else {
            return;
        };
        if att.server.txn_status != b'I' || !att.server.rbuf.is_empty() {
            return;
        }
        self.cancel.clear();
        if let Some(att) = self.attached.take() {
            if !att.ran_statements {
                att.server.release();
                return;
            }
            self.seen = Some(crate::route::Seen {
                position: att
                    .position
                    .filter(|&(_, after)| after == att.requests)
                    .map(|(lsn, _)| lsn),
                node: att.node,
                released: std::time::Instant::now(),
            });
            att.server.release();
        }
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

    /// The backend connection died. A replica read that has not answered yet is retried on the
    /// primary. Otherwise, outside a transaction the client gets an error for what it is waiting
    /// on and carries on (its next request gets a fresh connection); inside one, its transaction
    /// is gone, which only closing the session can say.
    pub(super) async fn server_lost(&mut self, why: String) -> Result<(), SessionError> {
        self.abandon_backend(why, Lost::Connection).await
    }

    /// Gives up the attached backend while the client waits for it (`server_lost`, or the
    /// proxy lost track of its answers): a replica read not yet answered is retried on the
    /// primary; otherwise whatever the client waits for is answered with an error (outside a
    /// transaction; inside one the session ends, its transaction being gone) and the
    /// connection is closed. Never leaves the client waiting.
    async fn abandon_backend(&mut self, why: String, lost: Lost) -> Result<(), SessionError> {
        if lost == Lost::Track {
            crate::metrics::desynced();
            let (node, pid) = self
                .attached
                .as_ref()
                .map(|a| (a.node.addr.display().to_string(), a.server.pid))
                .unwrap_or_default();
            tracing::warn!(%node, pid, %why, "lost track of a backend's answers: the client gets 08P01 and the connection is closed");
            if let Some(att) = self.attached.as_mut() {
                att.server.broken = true;
            }
            self.sout.clear();
        }
        if self.retry_elsewhere(&why).await? {
            return self.flush_server().await;
        }
        let Some(mut att) = self.attached.take() else {
            return Err(match lost {
                Lost::Connection => SessionError::ServerLost(why),
                Lost::Track => SessionError::LostTrack(LOST_TRACK_MESSAGE.into()),
            });
        };
        if lost == Lost::Connection {
            tracing::warn!(node = %att.node.addr.display(), %why, "server connection lost");
            // Its idle siblings probably died with it (a restart): reconnect rather than fail
            // again.
            let pool = att.server.pool().clone();
            tokio::spawn(async move { pool.close_idle().await });
        }
        att.server.broken = true;
        // An autocommit write wrapped for its advisory locks: the client is not in a
        // transaction, so its session goes on (with an error for the write).
        let was_idle = att.server.txn_status == b'I' || self.tracker.wrapping();
        let unasked = self.tracker.is_idle() && !self.unsynced && self.held.is_none();
        let unsynced = self.unsynced;
        drop(att);
        self.cancel.clear();
        // Transaction-level advisory locks died with the backend: the next request on the same
        // keys must take them again on its new backend.
        self.forget_locks();
        // A committed write whose position was being captured is invalidated all the same
        // (position unknown), before its answer can reach the client.
        self.invalidate_now().await;
        // Writes announced for a commit whose outcome is now unknown: invalidated again.
        self.abandon_announced();
        if !was_idle || self.pinned.is_some() || self.mode == PoolMode::Session {
            return Err(match lost {
                Lost::Connection => SessionError::ServerLost(why),
                Lost::Track => SessionError::LostTrack(LOST_TRACK_MESSAGE.into()),
            });
        }
        if unasked && lost == Lost::Connection {
            // An idle backend closed between requests: the next request gets a fresh one, and
            // an answer to nothing would break the client's protocol state.
            self.fatal_forwarded = false;
            return Ok(());
        }
        // A commit whose position was being captured did happen: its answer, held back until
        // then, is the client's and goes out before anything else.
        if let Some(held) = self.held.take() {
            self.cout.extend_from_slice(&held);
        }
        let waiting = self.tracker.client_rfqs();
        self.tracker.clear();
        self.timings.clear();
        self.group.clear();
        self.unsynced = false;
        self.error_since_rfq = false;
        self.txn = Default::default();
        self.deferred = false;
        if waiting == 0 && !unsynced && lost == Lost::Connection {
            // Only the proxy's own statements were in flight (the commit-position capture
            // behind a write's answer, which has just gone out — a primary stopping right after
            // a commit): the client is owed nothing, and an error now would reach it unasked,
            // which drivers take as a broken connection.
            self.fatal_forwarded = false;
            return Ok(());
        }
        if lost == Lost::Track {
            // Requests the client sent behind the lost one never reached a backend; they are
            // answered with the same error, in order.
            let behind = std::mem::take(&mut self.pending);
            let more = behind
                .iter()
                .filter(|m| matches!(m.frame.tag, b'S' | b'Q' | b'F'))
                .count();
            msg::error_response(
                &mut self.cout,
                Severity::Error,
                crate::wire::sqlstate::PROTOCOL_VIOLATION,
                LOST_TRACK_MESSAGE,
            );
            for _ in 0..waiting {
                msg::ready_for_query(&mut self.cout, b'I');
            }
            for _ in 0..more {
                msg::error_response(
                    &mut self.cout,
                    Severity::Error,
                    crate::wire::sqlstate::PROTOCOL_VIOLATION,
                    LOST_TRACK_MESSAGE,
                );
                msg::ready_for_query(&mut self.cout, b'I');
            }
            self.fatal_forwarded = false;
            return Ok(());
        }
        if !std::mem::take(&mut self.fatal_forwarded) {
            msg::error_response(
                &mut self.cout,
                Severity::Error,
                crate::wire::sqlstate::CONNECTION_FAILURE,
                "pgsidecar lost the connection to the database server while running this request; \
             it may or may not have taken effect",
            );
        }
        for _ in 0..waiting {
            msg::ready_for_query(&mut self.cout, b'I');
        }
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

/// Why a backend is given up while the client waits for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// The connection died.
    Connection,
    /// Its answers no longer match the client's requests (or it waits for input the proxy
    /// will never send): it cannot be trusted with anything more.
    Track,
}

/// What a client hears when the proxy could not match a backend's answers to its requests.
const LOST_TRACK_MESSAGE: &str = "pgsidecar lost track of the database server's answers to this \
     request (the connection was closed); it may or may not have taken effect";

/// An error saying a prepared statement's plan or a type it was planned with went away.
pub(super) fn stale_plan_error(f: &msg::ErrorFields) -> bool {
    (f.code == "XX000" && f.message.starts_with("cache lookup failed for"))
        || (f.code == "0A000"
            && f.message
                .contains("cached plan must not change result type"))
}

/// First column of a DataRow as text.
fn data_row_text(body: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let v = body.get(6..6 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(v).into_owned())
}

/// Messages that complete a request and let the proxy choose a backend.
/// At most this much input is read and dropped by [`Session::linger`].
const LINGER_MAX_BYTES: usize = 512 << 20;

pub(super) fn is_dispatch(tag: u8) -> bool {
    matches!(tag, b'S' | b'H' | b'Q' | b'F')
}

fn is_extended(tag: u8) -> bool {
    matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C')
}

pub(super) async fn read_more(io: &mut Stream, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(32 * 1024);
    }
    Ok(io.read_buf(buf).await? > 0)
}
