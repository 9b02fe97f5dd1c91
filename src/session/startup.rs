//! Startup: TLS negotiation, the startup packet, cancel requests, and client authentication.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::relay::Session;
use super::SessionError;
use crate::auth::{self, AuthMethod, PasswordChallenge};
use crate::backend::Login;
use crate::context::Context;
use crate::error::ClientFacing;
use crate::listen::{ClientSocket, Peer};
use crate::pool::{PoolError, PoolKey};
use crate::tls::Stream;
use crate::wire::frame::{take_cstr_bytes, FrameReader, StartupPacket};
use crate::wire::msg::{self, Severity};
use crate::wire::sqlstate;
use crate::wire::tag::{front, ssl, txn};

/// A client that has authenticated, with what the proxy needs to serve it.
pub struct Accepted {
    pub reader: FrameReader<Stream>,
    pub params: Vec<(String, String)>,
    pub user: String,
    pub database: String,
    pub peer: Peer,
    pub login: Login,
    /// ParameterStatus values for the client (a backend's, with the client's own overrides).
    pub server_params: Vec<(String, String)>,
}

impl Accepted {
    /// The client's startup `application_name` ("" when it sent none).
    pub fn application_name(&self) -> &str {
        application_name(&self.params)
    }
}

/// `application_name` among startup parameters ("" when absent): the logs, SHOW CLIENTS and
/// the rules all name a client by it.
pub fn application_name(params: &[(String, String)]) -> &str {
    params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map_or("", |(_, v)| v.as_str())
}

impl Session {
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
        msg::ready_for_query(&mut out, txn::IDLE);
        self.client.reader.io.write_all(&out).await?;
        Ok(())
    }
}

type Failure = (Option<Stream>, SessionError);

fn fail<T>(stream: Stream, e: SessionError) -> Result<T, Failure> {
    Err((Some(stream), e))
}

/// The startup `database` that selects the admin console instead of the relay.
pub const CONSOLE_DATABASE: &str = "pgsidecar";

/// Runs the startup phase. `Ok(None)` means the connection was a cancel request or the client
/// left quietly; errors carry the stream (when there still is one) so the caller can say why.
pub async fn handshake(
    ctx: &Arc<Context>,
    socket: ClientSocket,
    peer: Peer,
) -> Result<Option<Accepted>, Failure> {
    let cfg = ctx.config.load_full();
    let deadline = tokio::time::Instant::now() + cfg.listen.startup_timeout;
    let mut reader = FrameReader::new(Stream::from(socket), cfg.listen.max_message_size);
    let mut tls_done = false;
    let params = loop {
        let packet = match tokio::time::timeout_at(deadline, reader.startup()).await {
            Err(_) => {
                return fail(
                    reader.io,
                    SessionError::StartupTimeout(cfg.listen.startup_timeout),
                )
            }
            Ok(Err(e)) => return fail(reader.io, e.into()),
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(p))) => p,
        };
        match packet {
            StartupPacket::Ssl if !tls_done => {
                if !reader.buf.is_empty() {
                    // Bytes sent before the TLS handshake could be injected by a man in the middle.
                    return fail(
                        reader.io,
                        SessionError::Protocol(
                            "received unencrypted data after SSL request".into(),
                        ),
                    );
                }
                let acceptor = ctx
                    .tls
                    .clone()
                    .filter(|_| matches!(reader.io, Stream::Plain(_)));
                let Some(acceptor) = acceptor else {
                    if let Err(e) = reader.io.write_all(&[ssl::UNWILLING]).await {
                        return Err((None, e.into()));
                    }
                    continue;
                };
                let Stream::Plain(mut tcp) = reader.io else {
                    return Err((
                        None,
                        SessionError::Protocol("SSL request on an encrypted connection".into()),
                    ));
                };
                if let Err(e) = tcp.write_all(&[ssl::WILLING]).await {
                    return Err((None, e.into()));
                }
                match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        reader = FrameReader::new(
                            Stream::Server(Box::new(tls)),
                            cfg.listen.max_message_size,
                        )
                    }
                    Ok(Err(e)) => return Err((None, SessionError::Tls(e.to_string()))),
                    Err(_) => {
                        return Err((
                            None,
                            SessionError::StartupTimeout(cfg.listen.startup_timeout),
                        ))
                    }
                }
                tls_done = true;
            }
            StartupPacket::GssEnc if !tls_done => {
                if let Err(e) = reader.io.write_all(&[ssl::UNWILLING]).await {
                    return Err((None, e.into()));
                }
            }
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                return fail(
                    reader.io,
                    SessionError::Protocol("duplicate encryption request".into()),
                )
            }
            StartupPacket::Cancel { pid, secret } => {
                ctx.cancels.cancel(pid, secret).await;
                return Ok(None);
            }
            StartupPacket::Startup { params } => break params,
        }
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        return reject(
            reader.io,
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
        .await;
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return reject(
            reader.io,
            sqlstate::FEATURE_NOT_SUPPORTED,
            "pgsidecar does not proxy replication connections",
        )
        .await;
    }

    let rules = effective_rules(ctx);
    let method = if database == CONSOLE_DATABASE {
        admin_method(ctx, &rules, &user, peer)
    } else {
        auth::select_method(&rules, &user, &database, peer.ip())
    };
    // Every read of the password exchange is bounded: a client that sends a startup packet and
    // never answers would otherwise hold a `max_clients` slot forever.
    let auth_timeout = cfg.listen.auth_timeout;
    let authenticating = authenticate(ctx, &mut reader, method, &user, &database, peer);
    let login = match tokio::time::timeout(auth_timeout, authenticating).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return Err((Some(reader.io), e)),
        Err(_) => {
            crate::metrics::security_event("auth_timeout");
            return Err((Some(reader.io), SessionError::AuthTimeout(auth_timeout)));
        }
    };
    // The admin console has no backend database to verify (see `verify_console_password`).
    let verified = if database == CONSOLE_DATABASE {
        verify_console_password(ctx, &user, login).await
    } else {
        super::outage::through_outage(ctx, "login", || {
            verify_backend(ctx, &user, &database, login.clone())
        })
        .await
        .map_err(|g| g.error)
    };
    let (login, server_params) = match verified {
        Ok(x) => x,
        Err(e) => {
            let stream = reader.io;
            return send_backend_error(stream, e).await;
        }
    };
    Ok(Some(Accepted {
        reader,
        params,
        user,
        database,
        peer,
        login,
        server_params,
    }))
}

/// With no rules configured: SCRAM against the users file if there is one, else passthrough.
fn effective_rules(ctx: &Context) -> Vec<auth::AuthRule> {
    let cfg = ctx.config.load();
    if !cfg.auth.rules.is_empty() {
        return cfg.auth.rules.clone();
    }
    let method = if ctx.users.load().is_some() {
        AuthMethod::ScramSha256
    } else {
        AuthMethod::Passthrough
    };
    vec![auth::AuthRule {
        user: "*".into(),
        database: "*".into(),
        address: "*".into(),
        method,
    }]
}

/// The console's method: the rules still say who may connect at all (a `reject` stays a
/// reject), but `admin.auth` decides how; unset, a `trust` the console would only inherit from a
/// rule whose database is a wildcard becomes a password method (SCRAM against the users file,
/// else passthrough): SHUTDOWN and SHOW CONFIG need more than "the app's subnet is trusted".
fn admin_method(ctx: &Context, rules: &[auth::AuthRule], user: &str, peer: Peer) -> AuthMethod {
    let Some(rule) = auth::select_rule(rules, user, CONSOLE_DATABASE, peer.ip()) else {
        return AuthMethod::Reject;
    };
    if rule.method == AuthMethod::Reject {
        return AuthMethod::Reject;
    }
    if let Some(method) = ctx.config.load().admin.auth {
        return method;
    }
    let names_console = rule
        .database
        .split(',')
        .any(|d| d.trim() == CONSOLE_DATABASE);
    match rule.method {
        AuthMethod::Trust if !names_console => {
            if ctx.users.load().is_some() {
                AuthMethod::ScramSha256
            } else {
                AuthMethod::Passthrough
            }
        }
        m => m,
    }
}

async fn reject<T>(mut stream: Stream, code: &str, message: &str) -> Result<T, Failure> {
    let _ = stream
        .write_all(&msg::error_bytes(Severity::Fatal, code, message))
        .await;
    Err((None, SessionError::Auth(message.to_string())))
}

async fn send_backend_error<T>(mut stream: Stream, e: PoolError) -> Result<T, Failure> {
    let bytes = match &e {
        // The server's own words (wrong password, unknown database…), exactly as Postgres sent them.
        PoolError::Backend(crate::backend::BackendError::Server { raw, .. }) => {
            crate::metrics::client_error(e.metric_label());
            raw.bytes.clone()
        }
        other => crate::error::response(Severity::Fatal, other),
    };
    let _ = stream.write_all(&bytes).await;
    Err((None, SessionError::Auth(e.to_string())))
}

async fn read_password_frame(
    reader: &mut FrameReader<Stream>,
) -> Result<crate::wire::Frame, SessionError> {
    match reader.next().await? {
        Some(f) if f.tag == front::PASSWORD => Ok(f),
        Some(f) => Err(SessionError::Protocol(format!(
            "expected password response, got message type '{}'",
            f.tag as char
        ))),
        None => Err(SessionError::Auth(
            "client closed the connection during authentication".into(),
        )),
    }
}

async fn send(reader: &mut FrameReader<Stream>, buf: &BytesMut) -> Result<(), SessionError> {
    reader.io.write_all(buf).await.map_err(SessionError::Io)
}

async fn password_failed(
    reader: &mut FrameReader<Stream>,
    user: &str,
    why: String,
) -> SessionError {
    let m = format!("password authentication failed for user \"{user}\"");
    let _ = reader
        .io
        .write_all(&msg::error_bytes(
            Severity::Fatal,
            sqlstate::INVALID_PASSWORD,
            &m,
        ))
        .await;
    SessionError::Auth(why)
}

/// What the client's authentication exchange established.
#[derive(Clone)]
pub enum ClientLogin {
    /// The client is authenticated (or trusted); log in to backends with this.
    Ready(Login),
    /// Passthrough: the client sent this password, which only the primary can vouch for.
    Passthrough(String),
}

/// Runs the client's authentication exchange; returns how to log in to backends as this user.
async fn authenticate(
    ctx: &Context,
    reader: &mut FrameReader<Stream>,
    method: AuthMethod,
    user: &str,
    database: &str,
    peer: Peer,
) -> Result<ClientLogin, SessionError> {
    let configured = ctx.configured_login(user);
    let mut buf = BytesMut::new();
    match method {
        AuthMethod::Reject => {
            let m = format!(
                "no pgsidecar auth rule for host \"{peer_host}\", user \"{user}\", database \"{database}\"",
                peer_host = peer.ip().map_or_else(|| "[local]".to_string(), |ip| ip.to_string())
            );
            let _ = reader
                .io
                .write_all(&msg::error_bytes(
                    Severity::Fatal,
                    sqlstate::INVALID_AUTHORIZATION,
                    &m,
                ))
                .await;
            Err(SessionError::Auth(m))
        }
        AuthMethod::Trust => Ok(ClientLogin::Ready(configured.unwrap_or(Login::None))),
        AuthMethod::Passthrough => {
            msg::auth_request(&mut buf, msg::AUTH_CLEARTEXT, &[]);
            send(reader, &buf).await?;
            let f = read_password_frame(reader).await?;
            let mut body = f.body();
            let password = take_cstr_bytes(&mut body)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .ok_or_else(|| SessionError::Protocol("malformed password message".into()))?;
            // Verified against the primary in `verify_backend` (unless already known good).
            Ok(ClientLogin::Passthrough(password))
        }
        AuthMethod::ScramSha256 | AuthMethod::Md5 => {
            let users = ctx.users.load_full();
            let empty = auth::UserList::default();
            let list = users.as_deref().unwrap_or(&empty);
            let Some(plan) = auth::plan_password_auth(method, user, list, &ctx.mock_secret) else {
                return Err(SessionError::Auth(
                    "no password challenge for method".into(),
                ));
            };
            match plan {
                PasswordChallenge::Md5 {
                    challenge,
                    stored_md5,
                } => {
                    msg::auth_request(&mut buf, msg::AUTH_MD5, &challenge.salt());
                    send(reader, &buf).await?;
                    let f = read_password_frame(reader).await?;
                    let mut body = f.body();
                    let resp = take_cstr_bytes(&mut body).unwrap_or_default();
                    if let Err(e) = challenge.verify(&stored_md5, resp) {
                        return Err(password_failed(reader, user, e.to_string()).await);
                    }
                    Ok(ClientLogin::Ready(
                        configured.unwrap_or(Login::Md5Stored(stored_md5)),
                    ))
                }
                PasswordChallenge::Scram(server) => {
                    // Over TLS, offer SCRAM-SHA-256-PLUS bound to our certificate as well.
                    let mut server = match (&reader.io, &ctx.tls_end_point) {
                        (Stream::Server(_), Some(hash)) => {
                            server.offer_channel_binding(hash.clone())
                        }
                        _ => server,
                    };
                    msg::auth_request(&mut buf, msg::AUTH_SASL, server.sasl_mechanisms());
                    send(reader, &buf).await?;
                    let f = read_password_frame(reader).await?;
                    let mut body = f.body();
                    let mech = take_cstr_bytes(&mut body).unwrap_or_default();
                    if mech != b"SCRAM-SHA-256" && mech != b"SCRAM-SHA-256-PLUS" {
                        let m = format!(
                            "client selected SASL mechanism \"{}\", pgsidecar offers only SCRAM-SHA-256 (and SCRAM-SHA-256-PLUS over TLS)",
                            String::from_utf8_lossy(mech)
                        );
                        let _ = reader
                            .io
                            .write_all(&msg::error_bytes(
                                Severity::Fatal,
                                sqlstate::PROTOCOL_VIOLATION,
                                &m,
                            ))
                            .await;
                        return Err(SessionError::Auth(m));
                    }
                    if let Err(e) = server.select_mechanism(mech) {
                        return Err(scram_error(reader, user, e).await);
                    }
                    let data = body.get(4..).unwrap_or_default();
                    let first = match server.handle_client_first(data) {
                        Ok(r) => r,
                        Err(e) => return Err(scram_error(reader, user, e).await),
                    };
                    buf.clear();
                    msg::auth_request(&mut buf, msg::AUTH_SASL_CONTINUE, &first);
                    send(reader, &buf).await?;
                    let f = read_password_frame(reader).await?;
                    let success = match server.handle_client_final(f.body()) {
                        Ok(s) => s,
                        Err(e) => return Err(scram_error(reader, user, e).await),
                    };
                    buf.clear();
                    msg::auth_request(&mut buf, msg::AUTH_SASL_FINAL, &success.server_final);
                    send(reader, &buf).await?;
                    // Real verifiers give pass-through keys, plaintext entries their password.
                    let login = configured.unwrap_or_else(|| {
                        server
                            .backend_credentials(&success)
                            .map(Login::Scram)
                            .unwrap_or(Login::None)
                    });
                    Ok(ClientLogin::Ready(login))
                }
            }
        }
    }
}

async fn scram_error(
    reader: &mut FrameReader<Stream>,
    user: &str,
    e: auth::AuthError,
) -> SessionError {
    if e.sqlstate() == sqlstate::INVALID_PASSWORD {
        return password_failed(reader, user, e.to_string()).await;
    }
    let _ = reader
        .io
        .write_all(&crate::error::response(Severity::Fatal, &e))
        .await;
    SessionError::Auth(e.to_string())
}

/// Makes sure the backend accepts this user and database (and, for passthrough, the password),
/// and learns the server's ParameterStatus values. The connection used for this goes back to
/// the pool, so it is not wasted. The pool is created only once the client is authenticated.
async fn verify_backend(
    ctx: &Context,
    user: &str,
    database: &str,
    login: ClientLogin,
) -> Result<(Login, Vec<(String, String)>), PoolError> {
    let key = PoolKey {
        node: ctx.topology.load().primary().addr.clone(),
        database: database.to_string(),
        user: user.to_string(),
    };
    let login = match login {
        ClientLogin::Ready(login) => {
            let pool = ctx.pools.get(&key, || login.clone());
            pool.set_login(login.clone());
            let s = pool.checkout().await?;
            // Not `params`: a pooled connection still carries the last client's settings until
            // the next sync (its standard_conforming_strings would mislead how this client's
            // text is lexed).
            let params = s.initial_params.clone();
            s.release();
            ctx.offer_monitor_login(user, database, &login);
            return Ok((login, params));
        }
        ClientLogin::Passthrough(pw) => pw,
    };
    let spec = ctx.pools.spec_for(&key, Login::Password(login.clone()));
    let probe = prove_password(ctx, spec).await?;
    let login = Login::Password(login);
    let pool = ctx.pools.get(&key, || login.clone());
    pool.set_login(login.clone());
    let Some(probe) = probe else {
        // Known good: any connection of the pool will do (its settings as at connect).
        let s = pool.checkout().await?;
        let params = s.initial_params.clone();
        s.release();
        return Ok((login, params));
    };
    let params = probe.initial_params.clone();
    pool.adopt(probe);
    ctx.offer_monitor_login(user, database, &login);
    Ok((login, params))
}

/// Passthrough: proves a client's password by logging in to the primary with it (`spec`), unless
/// the cache knows it as good for this (user, database, server). `Ok(None)`: known good;
/// `Ok(Some(server))`: proven just now on `server`. The password counts only if the server
/// asked for it in a way that checks it (see `Server::checked_password`); a server that lets the
/// sidecar in regardless makes this fail with 28P01 and a log line saying what to change.
/// One check per key at a time: a burst of clients with the same password costs one login.
pub async fn prove_password(
    ctx: &Context,
    spec: crate::backend::ConnectSpec,
) -> Result<Option<crate::backend::Server>, PoolError> {
    let Login::Password(pw) = &spec.login else {
        return Ok(None);
    };
    let key = auth::PassthroughKey::new(&spec.user, &spec.database, &spec.node.display());
    let lock = ctx.verify_lock(&key);
    let result = async {
        let _one_at_a_time = lock.lock().await;
        if let auth::PassthroughCheck::Accepted(_) = ctx.passthrough.check(&key, pw.as_bytes()) {
            return Ok(None);
        }
        let probe = match crate::backend::Server::connect(&spec).await {
            Ok(p) => p,
            Err(e) => {
                ctx.passthrough.forget(&key);
                return Err(PoolError::Backend(e));
            }
        };
        if let Err(how) = probe.checked_password() {
            ctx.passthrough.forget(&key);
            crate::metrics::security_event("passthrough_unverified");
            let e = crate::backend::BackendError::PasswordNotChecked {
                addr: spec.node.display(),
                user: spec.user.clone(),
                how,
            };
            tracing::error!(user = %spec.user, database = %spec.database, error = %e,
                "passthrough refused a client");
            tokio::spawn(probe.terminate());
            return Err(PoolError::Backend(e));
        }
        ctx.passthrough.remember(&key, pw.as_bytes());
        Ok(Some(probe))
    }
    .await;
    drop(lock);
    ctx.release_verify_lock(&key);
    result
}

/// `server_version` of the primary, learnt when a console login was verified there, so psql
/// does not warn about a version mismatch.
static SERVER_VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The primary's `server_version` once a console login was proven there (the console reports it).
pub fn primary_server_version() -> Option<&'static str> {
    SERVER_VERSION.get().map(String::as_str)
}

/// Stands in for the relay's backend verification: the console has no backend database, so
/// only a passthrough password is proven, on the primary's `postgres` database, under the same
/// rule as the relay's (the primary must really check it; see `startup::prove_password`).
pub async fn verify_console_password(
    ctx: &Context,
    user: &str,
    login: ClientLogin,
) -> Result<(Login, Vec<(String, String)>), PoolError> {
    let pw = match login {
        ClientLogin::Ready(login) => return Ok((login, Vec::new())),
        ClientLogin::Passthrough(pw) => pw,
    };
    let cfg = ctx.config.load();
    let login = Login::Password(pw);
    let spec = crate::backend::ConnectSpec {
        node: ctx.topology.load().primary().addr.clone(),
        database: "postgres".into(),
        user: user.to_string(),
        login: login.clone(),
        tls: cfg.upstream.tls,
        tls_connector: ctx.pools.shared.tls_connector.clone(),
        connect_timeout: cfg.pool.connect_timeout,
        auth_policy: ctx.pools.shared.auth_policy.load_full(),
        startup_params: vec![("application_name".into(), "pgsidecar-admin-login".into())],
    };
    let Some(probe) = prove_password(ctx, spec).await? else {
        return Ok((login, Vec::new()));
    };
    ctx.offer_monitor_login(user, "postgres", &login);
    let params = probe.params.clone();
    if let Some((_, v)) = params.iter().find(|(k, _)| k == "server_version") {
        let _ = SERVER_VERSION.set(v.clone());
    }
    tokio::spawn(probe.terminate());
    Ok((login, params))
}
