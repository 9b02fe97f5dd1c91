//! Where an accepted connection goes: socket options, the session span, the handshake
//! (`session::startup`: TLS, startup packet, client authentication), then the admin console
//! or an application session. It sits above both so that neither imports the other: the
//! console uses startup's login types, and the session never needs the console.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use crate::context::Context;
use crate::listen::{ClientSocket, Peer};
use crate::session::startup;
use crate::wire::msg::Severity;

/// Serves one client connection until it leaves. Never panics on client input; errors end only
/// this connection.
pub async fn serve(ctx: Arc<Context>, socket: ClientSocket, peer: Peer) {
    if let ClientSocket::Tcp(tcp) = &socket {
        let _ = tcp.set_nodelay(true);
        // A client whose host vanished (no FIN, no RST) is otherwise kept until a write fails,
        // and an idle one never writes.
        let idle = ctx.config.load().listen.tcp_keepalive;
        if !idle.is_zero() {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(Duration::from_secs(10).min(idle))
                .with_retries(5);
            let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
        }
    }
    ctx.clients.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        %peer,
        user = tracing::field::Empty,
        db = tracing::field::Empty,
        app = tracing::field::Empty
    );
    async {
        let accepted = match startup::handshake(&ctx, socket, peer).await {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err((mut stream, e)) => {
                tracing::debug!(error = %e, "startup failed");
                crate::metrics::session_error("startup");
                if let Some(s) = stream.as_mut().filter(|_| e.reaches_client()) {
                    let _ = s
                        .write_all(&crate::error::response(Severity::Fatal, &e))
                        .await;
                }
                return;
            }
        };
        tracing::Span::current()
            .record("user", accepted.user.as_str())
            .record("db", accepted.database.as_str());
        let app = accepted.application_name();
        if !app.is_empty() {
            tracing::Span::current().record("app", app);
        }
        let listed = ctx.sessions.register(&accepted);
        if accepted.database == startup::CONSOLE_DATABASE {
            // Console sessions do not hold a drain open: they carry no application work.
            ctx.clients.fetch_sub(1, Ordering::Relaxed);
            crate::admin::serve(ctx.clone(), accepted).await;
            ctx.clients.fetch_add(1, Ordering::Relaxed);
            return;
        }
        crate::session::run(ctx.clone(), accepted, listed.id()).await;
    }
    .instrument(span)
    .await;
    ctx.clients.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
