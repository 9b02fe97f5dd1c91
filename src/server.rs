//! The listener: accepts clients, builds the shared context, runs background tasks, and stops
//! cleanly.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{watch, Semaphore};

use crate::analyze::{Analyzer, FunctionCatalog};
use crate::auth::{PassthroughCache, UserList};
use crate::config::Config;
use crate::context::Context;
use crate::listen::{bind_tcp, ClientSocket, Listener};
use crate::pool::Pools;
use crate::route::{Rules, Topology};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration:\n{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Bind(#[from] crate::listen::BindError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("{0}")]
    Upstream(String),
    #[error(transparent)]
    Url(#[from] crate::config::UrlError),
}

pub fn build_context(
    cfg: Config,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<Context>, ServerError> {
    cfg.validate()?;
    for w in cfg.warnings() {
        tracing::warn!("configuration: {w}");
    }
    let active = cfg.upstream.active_environment().to_string();
    let (primary, replicas) = cfg
        .environment(&active)
        .ok_or_else(|| ServerError::Upstream(format!("environment \"{active}\" is not defined")))?
        .addrs()?;
    let monitor_login = primary.user.clone().map(|user| {
        Arc::new(crate::context::MonitorLogin {
            user,
            database: primary
                .database
                .clone()
                .unwrap_or_else(|| "postgres".into()),
            login: primary
                .password
                .clone()
                .map(crate::backend::Login::Password)
                .unwrap_or(crate::backend::Login::None),
        })
    });
    let tls_connector = match cfg.upstream.tls {
        crate::config::TlsMode::Disable => None,
        _ => Some(crate::tls::connector(cfg.upstream.ca_file.as_deref())?),
    };
    let tls = match (&cfg.listen.tls_cert, &cfg.listen.tls_key) {
        (Some(c), Some(k)) => Some(crate::tls::acceptor(c, k)?),
        _ => None,
    };
    // SCRAM-SHA-256-PLUS is offered to TLS clients only when our certificate allows
    // tls-server-end-point binding (not RSA-PSS or EdDSA signatures).
    let tls_end_point = match (&tls, &cfg.listen.tls_cert) {
        (Some(_), Some(cert)) => match crate::tls::certificate_end_point(cert) {
            Ok(hash) => Some(hash),
            Err(e) => {
                tracing::warn!(cert = %cert.display(), error = %e,
                    "SCRAM channel binding not offered to clients");
                None
            }
        },
        _ => None,
    };
    let users = cfg
        .auth
        .users_file
        .as_deref()
        .map(UserList::load_and_warn)
        .transpose()?;
    let creds = cfg
        .upstream
        .credentials_file
        .as_deref()
        .map(UserList::load_and_warn)
        .transpose()?;
    let pools = Arc::new(Pools::new(
        cfg.pool.clone(),
        cfg.upstream.tls,
        tls_connector,
        crate::backend::AuthPolicy::from_config(&cfg.upstream),
    ));
    let mock_secret = crate::auth::mock_secret(cfg.auth.users_file.as_deref());
    let rules = Rules::compile(&cfg.routing.rules);
    let write_log: Arc<crate::route::WriteLog> = Default::default();
    let cache = crate::cache::Cache::with_positions(
        cfg.cache.clone(),
        "default".into(),
        Some(write_log.clone()),
    );
    let stats_capacity = cfg.stats.max_queries;
    let mirror_queue = cfg.switch.mirror_queue;
    Ok(Arc::new(Context {
        rules: ArcSwap::from_pointee(rules),
        pools,
        topology: ArcSwap::from_pointee(Topology::for_environment(&active, primary, replicas)),
        envs: Default::default(),
        analyzer: {
            let a = Analyzer::new(FunctionCatalog::builtin());
            a.set_max_analyzed(cfg.routing.max_analyzed_statement);
            a
        },
        write_log,
        flusher: Default::default(),
        monitor_login: ArcSwapOption::from(monitor_login),
        users: ArcSwapOption::from(users.map(Arc::new)),
        backend_credentials: ArcSwapOption::from(creds.map(Arc::new)),
        passthrough: PassthroughCache::new(cfg.auth.passthrough_ttl),
        tls,
        tls_end_point,
        cancels: Default::default(),
        mock_secret,
        config: ArcSwap::from_pointee(cfg),
        clients: Default::default(),
        quotas: Default::default(),
        sessions: Default::default(),
        lock_registry: Default::default(),
        draining: Default::default(),
        shutdown,
        verify_locks: Default::default(),
        catalog_reload: Default::default(),
        drain: watch::channel(false).0,
        paused: watch::channel(None).0,
        cache,
        known_statements: Default::default(),
        queries: crate::stats::QueryStats::new(stats_capacity, crate::stats::SHARDS),
        mirror: crate::switch::mirror::Mirror::new(mirror_queue),
    }))
}

/// Runs until SIGTERM/SIGINT (drain, then exit) or a SHUTDOWN from the console.
pub async fn run(cfg: Config) -> Result<(), ServerError> {
    // Handlers first: once the port is bound, connections are accepted by the kernel and a
    // supervisor may signal; an uncaught SIGHUP or SIGTERM would kill the process outright.
    let signals = Signals::install();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The socket first: the kernel accepts TCP clients from `listen` on, so whoever sees the
    // port open (a supervisor, a test, the app) may rely on the socket being there too.
    let mut listeners = Vec::with_capacity(2);
    if let Some(dir) = &cfg.listen.unix_socket_dir {
        let port = cfg.listen.port();
        listeners.push(Listener::Unix(crate::listen::bind_unix(
            dir,
            port,
            cfg.listen.unix_socket_mode,
        )?));
    }
    listeners.push(Listener::Tcp(bind_tcp(&cfg.listen.addr)?));
    let ctx = build_context(cfg, shutdown_rx.clone())?;
    let unix = listeners.iter().find_map(|l| match l {
        Listener::Unix(u) => Some(u.path().display().to_string()),
        Listener::Tcp(_) => None,
    });
    tracing::info!(addr = %ctx.config.load().listen.addr, unix = unix.as_deref().unwrap_or("-"), primary = %ctx.topology.load().primary().addr.display(), "pgsidecar listening");
    tokio::spawn(ctx.pools.clone().maintenance(shutdown_rx.clone()));
    crate::tasks::monitor::spawn_all(&ctx);
    crate::tasks::mirror::spawn(&ctx);
    crate::tasks::flush::spawn(ctx.clone());
    crate::tasks::catalog::spawn_loader(ctx.clone());
    if ctx.cache.config().enabled || ctx.cache.config().redis.is_some() {
        ctx.cache.start(shutdown_rx.clone());
        crate::tasks::notify::spawn(ctx.clone());
    }
    if let Some(addr) = ctx.config.load().admin.http_addr.clone() {
        tokio::spawn(crate::http::serve(
            ctx.clone(),
            bind_tcp(&addr)?,
            shutdown_rx.clone(),
        ));
    }
    let (stop_accepting_tx, stop_accepting_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(ctx.config.load().listen.max_clients));
    let accepts: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(accept_loop(
                ctx.clone(),
                l,
                limit.clone(),
                stop_accepting_rx.clone(),
            ))
        })
        .collect();
    signals.wait(&ctx).await;
    // Drain: readiness fails, the listener closes (a successor sharing the port via
    // SO_REUSEPORT takes the new clients), sessions finish their transactions.
    crate::lifecycle::start_drain(&ctx);
    let _ = stop_accepting_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(accepts)).await;
    let deadline = tokio::time::Instant::now() + ctx.config.load().listen.shutdown_timeout;
    while ctx.clients.load(std::sync::atomic::Ordering::Relaxed) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = ctx.clients.load(std::sync::atomic::Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            clients = left,
            "shutdown_timeout reached; closing the remaining sessions"
        );
    }
    let _ = shutdown_tx.send(true);
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP, caught from installation on (signals arriving before
/// [`Signals::wait`] runs are kept, not lost).
struct Signals(
    Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
);

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(t), Ok(i), Ok(h)) => Signals(Some((t, i, h))),
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SHUTDOWN in the console");
                Signals(None)
            }
        }
    }

    /// Waits for a reason to stop; SIGHUP reloads meanwhile.
    async fn wait(self, ctx: &Arc<Context>) {
        let mut drain = ctx.drain.subscribe();
        let Some((mut term, mut int, mut hup)) = self.0 else {
            let _ = drain.changed().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = drain.changed() => return,
                _ = hup.recv() => {
                    let _ = crate::lifecycle::reload(ctx).await;
                }
            }
        }
    }
}

/// Accepts on one listener until told to stop; `limit` (listen.max_clients) is shared by all
/// listeners. Dropping the listener on return stops the kernel from queueing more clients (and
/// removes a Unix socket file this process still owns).
pub async fn accept_loop(
    ctx: Arc<Context>,
    listener: Listener,
    limit: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff = Duration::from_millis(5);
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tokio::spawn(refuse(socket));
                    continue;
                };
                let ctx = ctx.clone();
                crate::workers::spawn_session(socket, move |socket| async move {
                    crate::frontend::serve(ctx, socket, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning, and keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn refuse(socket: ClientSocket) {
    use tokio::io::AsyncWriteExt;
    let msg = crate::wire::msg::error_bytes(
        crate::wire::msg::Severity::Fatal,
        crate::wire::sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already (pgsidecar listen.max_clients)",
    );
    let _ = crate::tls::Stream::from(socket).write_all(&msg).await;
}
