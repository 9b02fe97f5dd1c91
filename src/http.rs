//! The HTTP endpoint (`admin.http_addr`) for orchestrators and Prometheus:
//!
//! - `GET /metrics`: Prometheus text exposition, gauges refreshed at scrape time;
//! - `GET /healthz`: 200 while the process runs (liveness: restart only a wedged process);
//! - `GET /readyz`: 200 while the sidecar can serve — listener open, not draining, primary
//!   reachable — else 503 with the reason on one line (readiness: stop sending traffic).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::Context;

/// How long a TCP reachability answer for the primary is reused: probes may come often, and
/// one connect per probe would be noise on the server.
const REACH_CACHE: Duration = Duration::from_secs(1);
const REACH_TIMEOUT: Duration = Duration::from_millis(500);

/// Largest request head buffered (hyper's minimum is 8 KiB).
const MAX_BUF: usize = 16 * 1024;

/// Why the sidecar should not get traffic now: the text after "not ready: " in `/readyz`.
#[derive(Debug, Clone, thiserror::Error)]
enum NotReady {
    #[error("shutting down")]
    ShuttingDown,
    #[error("draining")]
    Draining,
    /// The monitor's last probe of the primary failed.
    #[error("primary {addr} is unhealthy: {why}")]
    Unhealthy { addr: String, why: String },
    #[error("primary {addr} is unreachable: {source}")]
    Unreachable {
        addr: String,
        source: Arc<std::io::Error>,
    },
    #[error("primary {addr} did not accept a connection within {within:?}")]
    NoConnection { addr: String, within: Duration },
}

/// The last TCP check of the primary.
struct Reach {
    addr: String,
    at: Instant,
    outcome: Result<(), NotReady>,
}

struct Endpoint {
    ctx: Arc<Context>,
    reach: Mutex<Option<Reach>>,
    /// Serializes scrapes: refreshing gauges clears and refills label sets.
    scrape: Mutex<()>,
}

/// Serves HTTP on `listener` until `shutdown` fires.
pub async fn serve(ctx: Arc<Context>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let endpoint = Arc::new(Endpoint {
        ctx,
        reach: Mutex::new(None),
        scrape: Mutex::new(()),
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP endpoint listening (/metrics, /healthz, /readyz)");
    }
    // The limits of `[admin]`: the connection count as the endpoint starts, the timeouts as
    // each connection is accepted (so a reload changes them).
    let max_connections = endpoint.ctx.config.load().admin.http_max_connections;
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Bounded: beyond `http_max_connections` a new connection is closed at once (a
        // scraper retries), so nobody can pile up tasks and sockets here.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            crate::metrics::security_event("limit_http_connections");
            drop(tcp);
            continue;
        };
        let endpoint = endpoint.clone();
        let (header_timeout, lifetime) = {
            let cfg = endpoint.ctx.config.load();
            (
                cfg.admin.http_header_timeout,
                cfg.admin.http_connection_lifetime,
            )
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(endpoint.handle(req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_BUF)
                .serve_connection(io, service);
            // Every connection ends within its lifetime, kept alive or not.
            match tokio::time::timeout(lifetime, conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended with an error"),
                Err(_) => crate::metrics::security_event("http_connection_timeout"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Endpoint {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "not found; try /metrics, /healthz or /readyz\n",
            );
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
        }
        match path {
            "/metrics" => {
                // moka counts entries and bytes lazily: settle them so the gauges are current.
                self.ctx.cache.run_pending_tasks().await;
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics(),
                )
            }
            "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
            _ => match self.ready().await {
                Ok(()) => reply(StatusCode::OK, TEXT, "ready\n"),
                Err(why) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: {why}\n"),
                ),
            },
        }
    }

    fn metrics(&self) -> String {
        let _one_at_a_time = self.scrape.lock();
        crate::tasks::observe::observe(&self.ctx);
        crate::metrics::encode()
    }

    /// Why the sidecar should not get traffic now, if it should not.
    async fn ready(&self) -> Result<(), NotReady> {
        if *self.ctx.shutdown.borrow() {
            return Err(NotReady::ShuttingDown);
        }
        if self.ctx.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(NotReady::Draining);
        }
        let primary = self.ctx.topology.load().primary().clone();
        // Once the monitor has probed the primary, its verdict is the freshest there is.
        // Before that (no replicas, so no monitors; or no credentials yet), a TCP connect.
        if primary.last_check.lock().is_some() {
            if primary.is_healthy() {
                return Ok(());
            }
            let why = primary
                .last_error
                .lock()
                .clone()
                .unwrap_or_else(|| "unhealthy".into());
            return Err(NotReady::Unhealthy {
                addr: primary.addr.display(),
                why,
            });
        }
        self.reachable(&primary.addr).await
    }

    async fn reachable(&self, node: &crate::config::NodeAddr) -> Result<(), NotReady> {
        let addr = node.display();
        if let Some(last) = self
            .reach
            .lock()
            .as_ref()
            .filter(|r| r.addr == addr && r.at.elapsed() < REACH_CACHE)
        {
            return last.outcome.clone();
        }
        let outcome =
            match tokio::time::timeout(REACH_TIMEOUT, crate::backend::connect_node(node)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(NotReady::Unreachable {
                    addr: addr.clone(),
                    source: Arc::new(e),
                }),
                Err(_) => Err(NotReady::NoConnection {
                    addr: addr.clone(),
                    within: REACH_TIMEOUT,
                }),
            };
        *self.reach.lock() = Some(Reach {
            addr,
            at: Instant::now(),
            outcome: outcome.clone(),
        });
        outcome
    }
}
