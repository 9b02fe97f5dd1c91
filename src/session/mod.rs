//! One application client: startup and authentication (`startup`, which also proves console
//! logins), then the relay loop (`relay`) that lends the client a backend per transaction.
//! `frontend::serve` takes each connection through the handshake and hands it here or to the
//! admin console.

mod answers;
mod attachment;
mod caching;
mod client;
mod commit;
mod dispatch;
mod dropdb;
mod effects;
mod environment;
mod identity;
mod inbound;
mod lexing;
mod locking;
mod loss;
mod memo;
mod mirroring;
mod outage;
mod outbound;
mod pipelined;
pub mod relay;
mod request;
mod revalidate;
pub mod settings;
mod slowlog;
pub mod startup;
pub mod statements;
mod stats;
mod timeouts;
pub mod track;
mod vars;
mod watchdog;

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::context::Context;
use crate::wire::msg::{self, Severity};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client protocol error: {0}")]
    Frame(#[from] crate::wire::FrameError),
    #[error("client protocol violation: {0}")]
    Protocol(String),
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("startup packet not received within {0:?}")]
    StartupTimeout(std::time::Duration),
    #[error("authentication not completed within {0:?} (listen.auth_timeout)")]
    AuthTimeout(std::time::Duration),
    #[error("TLS handshake with client failed: {0}")]
    Tls(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("server connection lost: {0}")]
    ServerLost(String),
    /// The proxy could not match the backend's answers to the client's requests inside a
    /// transaction (which it cannot finish for the client): the session ends with 08P01.
    #[error("lost track of the server's answers: {0}")]
    LostTrack(String),
    /// A per-client limit (docs/SECURITY.md): the client is told `code` and `message`.
    #[error("{message}")]
    Limit { code: &'static str, message: String },
    /// Ended by the proxy at a transaction boundary, the client already told why.
    #[error("session closed: {0}")]
    Closed(&'static str),
}

impl SessionError {
    /// Whether the client is told of it: not when its connection is what failed, nor when it
    /// was told already (a refused login, a session the proxy closed).
    pub(crate) fn reaches_client(&self) -> bool {
        !matches!(
            self,
            SessionError::Io(_)
                | SessionError::Tls(_)
                | SessionError::Auth(_)
                | SessionError::Closed(_)
        )
    }
}

impl crate::error::ClientFacing for SessionError {
    fn sqlstate(&self) -> &str {
        use crate::wire::sqlstate::*;
        match self {
            SessionError::Frame(crate::wire::FrameError::TooLarge { .. }) => PROGRAM_LIMIT_EXCEEDED,
            SessionError::ServerLost(_) | SessionError::Io(_) => CONNECTION_FAILURE,
            SessionError::Limit { code, .. } => code,
            SessionError::Auth(_) => INVALID_AUTHORIZATION,
            SessionError::Closed(_) => ADMIN_SHUTDOWN,
            _ => PROTOCOL_VIOLATION,
        }
    }

    /// Internal detail (the server's address, the I/O error) stays in the log.
    fn client_message(&self) -> String {
        match self {
            SessionError::Frame(crate::wire::FrameError::TooLarge { len, max }) => {
                format!("message of {len} bytes exceeds pgsidecar's listen.max_message_size ({max} bytes)")
            }
            SessionError::StartupTimeout(_) => "incomplete startup packet (timeout)".into(),
            SessionError::ServerLost(_) => "server closed the connection unexpectedly".into(),
            SessionError::Protocol(m) | SessionError::LostTrack(m) => m.clone(),
            SessionError::Limit { message, .. } => message.clone(),
            SessionError::AuthTimeout(_) => {
                "canceling authentication due to timeout (pgsidecar listen.auth_timeout)".into()
            }
            other => other.to_string(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            SessionError::Frame(crate::wire::FrameError::TooLarge { .. }) => {
                "session_message_too_large"
            }
            SessionError::Frame(_) | SessionError::Protocol(_) => "session_protocol",
            SessionError::StartupTimeout(_) => "session_startup_timeout",
            SessionError::AuthTimeout(_) => "session_auth_timeout",
            SessionError::ServerLost(_) => "session_server_lost",
            SessionError::LostTrack(_) => "session_lost_track",
            SessionError::Limit { .. } => "session_limit",
            SessionError::Io(_) => "session_io",
            SessionError::Tls(_) => "session_tls",
            SessionError::Auth(_) => "session_auth",
            SessionError::Closed(_) => "session_closed",
        }
    }
}

/// Runs an authenticated application client (not a console one: `frontend::serve` chose)
/// until it leaves: its per-user and per-database places, a cancel key, then the relay loop.
/// `client_id` is its entry in SHOW CLIENTS, under which SHOW LOCKS lists its keys. Never
/// panics on client input; errors end only this session.
pub async fn run(ctx: Arc<Context>, accepted: startup::Accepted, client_id: u64) {
    let _quota = match ctx.quotas.admit(
        &ctx.config.load().listen,
        &accepted.user,
        &accepted.database,
    ) {
        Ok(q) => q,
        Err(refused) => {
            crate::metrics::security_event("limit_clients_per_user_or_database");
            let mut io = accepted.reader.io;
            let _ = io
                .write_all(&msg::error_bytes(
                    Severity::Fatal,
                    crate::wire::sqlstate::TOO_MANY_CONNECTIONS,
                    &refused.to_string(),
                ))
                .await;
            return;
        }
    };
    let registration = ctx.cancels.register();
    let _locks = ctx.lock_registry.guard(client_id);
    let mut session = relay::Session::new(ctx.clone(), accepted, registration.slot.clone());
    session.identity.client_id = client_id;
    if let Err(e) = session.start(registration.pid, registration.secret).await {
        tracing::debug!(error = %e, "could not finish startup");
        return;
    }
    match session.run().await {
        Ok(()) => tracing::debug!("client left"),
        // The proxy's own decision, already explained to the client: not an error.
        Err(SessionError::Closed(why)) => tracing::debug!(why, "session closed by the proxy"),
        Err(e) => {
            tracing::debug!(error = %e, "session ended with an error");
            crate::metrics::session_error("session");
            if e.reaches_client() {
                session.client.fatal_error(&e).await;
            }
            if matches!(e, SessionError::Limit { .. }) {
                session.client.linger().await;
            }
        }
    }
    session.cleanup().await;
}
