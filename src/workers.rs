//! Session workers: one single-threaded tokio runtime per core, each owning its clients and, as
//! far as the pool allows, the backend connections those clients use.
//!
//! Why not tokio's work-stealing runtime: a proxy's work is tiny slices between socket events.
//! With stealing workers, every readiness event on one worker wakes an idle sibling to steal, and
//! a client socket registered on one worker's reactor is served by a task that another worker
//! polls; measured with pgbench -S on 2 cores, that made 1.4–1.6 context switches per
//! transaction against 0.9–1.2 here. Here a client and (preferably) its backend live on one
//! thread, so an event wakes exactly the thread that handles it — PgBouncer's property — while
//! every core still serves clients (a single worker measured 12–26 % fewer TPS: BENCHMARKS.md).
//!
//! The accept loop and background tasks (monitors, pool maintenance, HTTP, cache pub/sub) stay
//! on the main runtime; the Redis command connections are per worker (`cache::l2`). Without [`start`] (tests, embedders), sessions run on the caller's
//! runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;

use crate::listen::ClientSocket;

/// Worker id of threads that are not session workers (the main runtime, blocking threads).
pub const MAIN: usize = usize::MAX;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(MAIN) };
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

pub struct Workers {
    handles: Vec<Handle>,
    /// Sessions each worker is serving: new clients go to the least busy one.
    sessions: Arc<Vec<AtomicUsize>>,
}

/// How many session workers run (0 before [`start`], or without it).
pub fn count() -> usize {
    WORKERS.get().map_or(0, |w| w.handles.len())
}

/// The worker this code runs on, or [`MAIN`].
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// Starts `n` worker threads. Called once, by the binary, before the server runs.
/// `idle_spin`: how long an idle worker polls before it sleeps (`idle_spin.rs`; zero = never).
pub fn start(n: usize, idle_spin: std::time::Duration) -> std::io::Result<()> {
    let mut handles = Vec::with_capacity(n);
    for id in 0..n.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(crate::idle_spin::before_park)
            .on_thread_unpark(crate::idle_spin::after_unpark)
            .build()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("pgsidecar-worker-{id}"))
            .spawn(move || {
                CURRENT.with(|c| c.set(id));
                // Runs until the process exits; the main runtime decides when that is (after
                // the drain), so sessions here are never cut short by a runtime shutdown.
                // The never-ending `block_on` future is the idle spinner (`idle_spin`).
                rt.block_on(async move { crate::idle_spin::IdleSpin::new(idle_spin).await });
            })?;
    }
    let sessions = Arc::new((0..handles.len()).map(|_| AtomicUsize::new(0)).collect());
    let _ = WORKERS.set(Workers { handles, sessions });
    Ok(())
}

/// Runs a client session on the least busy worker (or on the current runtime when there are no
/// workers). The socket is moved to that worker's reactor, so its events wake that thread only.
pub fn spawn_session<F, Fut>(socket: ClientSocket, serve: F)
where
    F: FnOnce(ClientSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(w) = WORKERS.get() else {
        tokio::spawn(serve(socket));
        return;
    };
    let detached = match socket.detach() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not hand a client to a worker");
            return;
        }
    };
    let id = (0..w.handles.len())
        .min_by_key(|&i| w.sessions[i].load(Ordering::Relaxed))
        .unwrap_or(0);
    let sessions = w.sessions.clone();
    sessions[id].fetch_add(1, Ordering::Relaxed);
    w.handles[id].spawn(async move {
        match detached.attach() {
            Ok(socket) => serve(socket).await,
            Err(e) => tracing::warn!(error = %e, "could not register a client socket"),
        }
        sessions[id].fetch_sub(1, Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients are spread over the workers and served on a worker thread, not the acceptor's.
    #[tokio::test]
    async fn sessions_run_on_the_least_busy_worker_thread() {
        start(2, std::time::Duration::ZERO).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (server_side, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            spawn_session(ClientSocket::Tcp(server_side), move |socket| async move {
                let _ = tx.send(current());
                // Stay open until the client goes: a worker's count covers its live sessions.
                let mut buf = [0u8; 1];
                let mut stream = crate::tls::Stream::from(socket);
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(rx.recv().await.unwrap());
        }
        assert!(seen.iter().all(|&w| w != MAIN), "{seen:?}");
        for w in 0..2 {
            assert_eq!(seen.iter().filter(|&&s| s == w).count(), 2, "{seen:?}");
        }
        drop(clients);
    }
}
