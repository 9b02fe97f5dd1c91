//! The relay loop: buffers a client's extended-protocol messages until a Sync (or Flush, or a
//! simple Query), borrows a backend, forwards raw bytes both ways, and gives the backend back
//! at the end of the transaction (transaction pooling) or of the session (session pooling).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::settings::Settings;
use super::startup::{client_message, Accepted};
use super::statements::Statements;
use super::track::{Action, Expect, Tracker, SYNTH_CLOSE_COMPLETE, SYNTH_PARSE_COMPLETE};
use super::SessionError;
use crate::backend::MAX_BACKEND_MESSAGE;
use crate::cancel::Slot;
use crate::config::PoolMode;
use crate::context::Context;
use crate::pool::{Checkout, Pool, PoolKey};
use crate::tls::Stream;
use crate::wire::frame::{check, Frame};
use crate::wire::msg::{self, Bind, Parse, Severity, Target};

pub struct Session {
    ctx: Arc<Context>,
    client: Stream,
    /// Bytes from the client not yet processed.
    cbuf: BytesMut,
    /// Bytes for the client, written after each batch.
    cout: BytesMut,
    /// Bytes for the backend, written after each batch.
    sout: BytesMut,
    max_message: usize,
    pub user: String,
    pub database: String,
    params: Vec<(String, String)>,
    server_params: Vec<(String, String)>,
    pool: Arc<Pool>,
    mode: PoolMode,
    server: Option<Checkout>,
    /// Client messages held back until a Sync/Flush/Query completes the request.
    pending: Vec<Frame>,
    tracker: Tracker,
    /// Extended-protocol messages sent since the last Sync: the backend is not reusable yet.
    unsynced: bool,
    statements: Statements,
    settings: Settings,
    /// Why this client keeps its backend for the rest of the session, if it must.
    pinned: Option<&'static str>,
    cancel: Arc<Slot>,
}

impl Session {
    pub fn new(ctx: Arc<Context>, a: Accepted, cancel: Arc<Slot>) -> Self {
        let cfg = ctx.config.load_full();
        let key = PoolKey { node: ctx.primary.load_full(), database: a.database.clone(), user: a.user.clone() };
        let login = a.login.clone();
        let pool = ctx.pools.get(&key, || login);
        let settings = Settings::from_startup(&a.params);
        Self {
            client: a.reader.io,
            cbuf: a.reader.buf,
            cout: BytesMut::with_capacity(16 * 1024),
            sout: BytesMut::with_capacity(4 * 1024),
            max_message: cfg.listen.max_message_size,
            user: a.user,
            database: a.database,
            params: a.params,
            server_params: a.server_params,
            pool,
            mode: cfg.pool.mode,
            server: None,
            pending: Vec::new(),
            tracker: Tracker::default(),
            unsynced: false,
            statements: Statements::default(),
            settings,
            pinned: None,
            cancel,
            ctx,
        }
    }

    /// Completes startup: AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery.
    pub async fn start(&mut self, pid: i32, secret: i32) -> Result<(), SessionError> {
        let mut out = BytesMut::with_capacity(512);
        msg::auth_request(&mut out, msg::AUTH_OK, &[]);
        for (name, value) in &self.server_params {
            // The client sees its own startup values for what it set (application_name, DateStyle…).
            let own = self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
            msg::parameter_status(&mut out, name, own.unwrap_or(value));
        }
        msg::backend_key_data(&mut out, pid, secret);
        msg::ready_for_query(&mut out, b'I');
        self.client.write_all(&out).await?;
        Ok(())
    }

    /// Sends a FATAL error if the client can still hear it.
    pub async fn fatal(&mut self, code: &str, message: &str) {
        let _ = self.client.write_all(&msg::error_bytes(Severity::Fatal, code, message)).await;
    }

    pub async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            // 1. Everything the client has already sent.
            while let Some(total) = check(&self.cbuf, self.max_message)? {
                let bytes = self.cbuf.split_to(total).freeze();
                let frame = Frame { tag: bytes[0], bytes };
                if frame.tag == b'X' {
                    return Ok(());
                }
                if self.server.is_some() {
                    self.forward(frame)?;
                } else if is_dispatch(frame.tag) {
                    self.pending.push(frame);
                    if !self.attach().await? {
                        continue;
                    }
                    for f in std::mem::take(&mut self.pending) {
                        self.forward(f)?;
                    }
                } else if matches!(frame.tag, b'd' | b'c' | b'f') {
                    // COPY messages outside COPY are ignored, as Postgres does after an error.
                } else if is_extended(frame.tag) {
                    self.pending.push(frame);
                } else {
                    return Err(SessionError::Protocol(format!("invalid frontend message type {}", frame.tag)));
                }
            }
            self.flush_server().await?;
            self.tracker.drain_synthetic(&mut self.cout);
            self.flush_client().await?;

            // 2. Wait for more.
            match self.server.as_mut() {
                None => {
                    if !read_more(&mut self.client, &mut self.cbuf).await? {
                        return Ok(());
                    }
                }
                Some(server) => {
                    let srv = &mut **server;
                    let from_client = tokio::select! {
                        r = read_more(&mut self.client, &mut self.cbuf) => Some(r),
                        r = read_more(&mut srv.stream, &mut srv.rbuf) => {
                            match r {
                                Ok(true) => None,
                                Ok(false) => return Err(SessionError::ServerLost("end of stream".into())),
                                Err(e) => return Err(SessionError::ServerLost(e.to_string())),
                            }
                        }
                    };
                    match from_client {
                        Some(Ok(true)) => {}
                        Some(Ok(false)) => return Ok(()),
                        Some(Err(e)) => return Err(e.into()),
                        None => {
                            self.on_server_data()?;
                            self.flush_client().await?;
                            self.maybe_release();
                        }
                    }
                }
            }
        }
    }

    /// Borrows a backend for the request now pending. On failure the client gets an error for
    /// each request it is waiting on, and the session goes on.
    async fn attach(&mut self) -> Result<bool, SessionError> {
        match self.pool.checkout().await {
            Ok(mut server) => {
                self.cancel.set(server.node.clone(), server.pid, server.secret);
                if let Some(sql) = self.settings.diff_from(&server.settings) {
                    msg::query(&mut self.sout, &sql);
                    self.tracker.push(Expect::Query { swallow: true });
                    server.settings = self.settings.clone();
                }
                self.server = Some(server);
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no backend for request");
                let message = client_message(&e);
                let waiting = self.pending.iter().filter(|f| matches!(f.tag, b'S' | b'Q' | b'F')).count();
                self.pending.clear();
                if waiting == 0 {
                    // A Flush with nothing to answer still deserves to hear why nothing happens.
                    msg::error_response(&mut self.cout, Severity::Error, e.sqlstate(), &message);
                }
                for _ in 0..waiting {
                    msg::error_response(&mut self.cout, Severity::Error, e.sqlstate(), &message);
                    msg::ready_for_query(&mut self.cout, b'I');
                }
                Ok(false)
            }
        }
    }

    /// Forwards one client message to the attached backend, rewriting statement names.
    fn forward(&mut self, f: Frame) -> Result<(), SessionError> {
        let bad = |what: &str| SessionError::Protocol(format!("malformed {what} message"));
        match f.tag {
            b'P' => {
                let p = Parse::decode(f.body()).ok_or_else(|| bad("Parse"))?;
                self.unsynced = true;
                if p.name.is_empty() {
                    self.sout.extend_from_slice(&f.bytes);
                    self.tracker.push(Expect::Parse { swallow: false, name: None });
                } else {
                    let stmt = self.statements.register(&p, self.settings.fingerprint());
                    let server = self.server_mut()?;
                    if server.prepared.contains(&stmt.global) {
                        server.prepared.touch(&stmt.global);
                        self.tracker.push(Expect::Synthetic(SYNTH_PARSE_COMPLETE));
                    } else {
                        self.send_parse(&stmt.global, &stmt.parse, false)?;
                    }
                }
            }
            b'B' => {
                let b = Bind::decode(f.body()).ok_or_else(|| bad("Bind"))?;
                self.unsynced = true;
                match self.ensure_prepared(b.statement)? {
                    Some(global) => b.encode_renamed(&mut self.sout, &global),
                    None => self.sout.extend_from_slice(&f.bytes),
                }
                self.tracker.push(Expect::Bind);
            }
            b'D' => {
                let t = Target::decode(f.body()).ok_or_else(|| bad("Describe"))?;
                self.unsynced = true;
                if t.kind == b'S' {
                    match self.ensure_prepared(t.name)? {
                        Some(global) => Target::encode(b'D', b'S', &global, &mut self.sout),
                        None => self.sout.extend_from_slice(&f.bytes),
                    }
                    self.tracker.push(Expect::DescribeStatement);
                } else {
                    self.sout.extend_from_slice(&f.bytes);
                    self.tracker.push(Expect::DescribePortal);
                }
            }
            b'C' => {
                let t = Target::decode(f.body()).ok_or_else(|| bad("Close"))?;
                self.unsynced = true;
                if t.kind == b'S' && !t.name.is_empty() && self.statements.get(t.name).is_some() {
                    // Other clients may share the server-side statement: only forget the mapping.
                    self.statements.remove(t.name);
                    self.tracker.push(Expect::Synthetic(SYNTH_CLOSE_COMPLETE));
                } else {
                    self.sout.extend_from_slice(&f.bytes);
                    self.tracker.push(Expect::Close { swallow: false });
                }
            }
            b'E' => {
                self.unsynced = true;
                self.sout.extend_from_slice(&f.bytes);
                self.tracker.push(Expect::Execute);
            }
            b'H' => {
                self.sout.extend_from_slice(&f.bytes);
            }
            b'S' => {
                self.unsynced = false;
                self.sout.extend_from_slice(&f.bytes);
                self.tracker.push(Expect::Sync);
            }
            b'Q' => {
                self.sout.extend_from_slice(&f.bytes);
                self.tracker.push(Expect::Query { swallow: false });
            }
            b'F' => {
                self.sout.extend_from_slice(&f.bytes);
                self.tracker.push(Expect::FunctionCall);
            }
            b'd' | b'c' | b'f' => self.sout.extend_from_slice(&f.bytes),
            other => return Err(SessionError::Protocol(format!("invalid frontend message type {other}"))),
        }
        Ok(())
    }

    fn server_mut(&mut self) -> Result<&mut Checkout, SessionError> {
        self.server.as_mut().ok_or_else(|| SessionError::Protocol("internal: no backend attached".into()))
    }

    /// The backend-side name for a client's statement, preparing it there first if needed.
    /// `None` for the unnamed statement or a name the client never prepared (the backend then
    /// reports the error in Postgres' own words).
    fn ensure_prepared(&mut self, client_name: &[u8]) -> Result<Option<Bytes>, SessionError> {
        if client_name.is_empty() {
            return Ok(None);
        }
        let Some(stmt) = self.statements.get(client_name).cloned() else {
            return Ok(None);
        };
        let server = self.server_mut()?;
        if server.prepared.contains(&stmt.global) {
            server.prepared.touch(&stmt.global);
        } else {
            self.send_parse(&stmt.global, &stmt.parse, true)?;
        }
        Ok(Some(stmt.global.clone()))
    }

    /// Sends a Parse for a proxy-wide statement, evicting the least recently used one when the
    /// backend holds too many.
    fn send_parse(&mut self, global: &Bytes, parse: &Bytes, swallow: bool) -> Result<(), SessionError> {
        let cap = self.ctx.config.load().pool.max_prepared_per_backend;
        let server = self.server.as_mut().ok_or_else(|| SessionError::Protocol("internal: no backend attached".into()))?;
        let tick = server.prepared.touch(global);
        while let Some(victim) = server.prepared.evict_candidate(cap, tick) {
            Target::encode(b'C', b'S', &victim, &mut self.sout);
            self.tracker.push(Expect::Close { swallow: true });
        }
        self.sout.extend_from_slice(parse);
        self.tracker.push(Expect::Parse { swallow, name: Some(global.clone()) });
        Ok(())
    }

    /// Attributes and forwards what the backend sent.
    fn on_server_data(&mut self) -> Result<(), SessionError> {
        let Some(server) = self.server.as_mut() else { return Ok(()) };
        loop {
            let total = match check(&server.rbuf, MAX_BACKEND_MESSAGE) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => return Err(SessionError::ServerLost(format!("bad message from server: {e}"))),
            };
            self.tracker.drain_synthetic(&mut self.cout);
            let tag = server.rbuf[0];
            let action = self.tracker.on_backend(tag);
            match tag {
                b'Z' => server.txn_status = server.rbuf.get(5).copied().unwrap_or(b'I'),
                b'S' => {
                    if let Some((k, v)) = msg::decode_parameter_status(&server.rbuf[5..total]) {
                        server.set_param(k, v);
                    }
                }
                _ => {}
            }
            if action == Action::Forward {
                self.cout.extend_from_slice(&server.rbuf[..total]);
            }
            let _ = server.rbuf.split_to(total);
        }
        for name in self.tracker.failed_parses.drain(..) {
            server.prepared.remove(&name);
        }
        if self.tracker.confused {
            server.broken = true;
        }
        self.tracker.drain_synthetic(&mut self.cout);
        Ok(())
    }

    /// Gives the backend back once the transaction is over and nothing is in flight.
    fn maybe_release(&mut self) {
        if self.mode != PoolMode::Transaction || self.pinned.is_some() || self.unsynced || !self.tracker.is_idle() {
            return;
        }
        let Some(server) = self.server.as_ref() else { return };
        if server.txn_status != b'I' || !server.rbuf.is_empty() {
            return;
        }
        self.cancel.clear();
        if let Some(s) = self.server.take() {
            s.release();
        }
    }

    async fn flush_server(&mut self) -> Result<(), SessionError> {
        if self.sout.is_empty() {
            return Ok(());
        }
        let Some(server) = self.server.as_mut() else {
            self.sout.clear();
            return Ok(());
        };
        if let Err(e) = server.stream.write_all(&self.sout).await {
            return Err(SessionError::ServerLost(e.to_string()));
        }
        self.sout.clear();
        Ok(())
    }

    async fn flush_client(&mut self) -> Result<(), SessionError> {
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
        let Some(mut server) = self.server.take() else { return };
        if !self.tracker.is_idle() || self.unsynced {
            tracing::debug!("client left with a request in flight; closing its server connection");
            return; // dropping the checkout closes the connection
        }
        if server.txn_status != b'I' {
            let rolled_back =
                tokio::time::timeout(std::time::Duration::from_secs(2), server.simple("ROLLBACK")).await;
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

/// Messages that complete a request and let the proxy choose a backend.
fn is_dispatch(tag: u8) -> bool {
    matches!(tag, b'S' | b'H' | b'Q' | b'F')
}

fn is_extended(tag: u8) -> bool {
    matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C')
}

async fn read_more(io: &mut Stream, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(32 * 1024);
    }
    Ok(io.read_buf(buf).await? > 0)
}
