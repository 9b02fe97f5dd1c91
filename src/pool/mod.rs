//! Backend connection pools, one per (server, database, user).
//!
//! A semaphore bounds the connections in use; idle connections wait in a LIFO stack (the most
//! recently used one has the warmest caches). Checkout waits at most `query_wait_timeout` and
//! then fails with SQLSTATE 53300 instead of hanging. A connection idle for longer than
//! `health_check_after_idle` is probed before reuse, so a restarted server costs a reconnect,
//! not a client error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendError, ConnectSpec, Login, Server};
use crate::config::{NodeAddr, PoolConfig, TlsMode};
use crate::wire::tag::txn;

pub mod pipeline;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "pgsidecar: no server connection available for database \"{database}\" user \"{user}\" within {waited:?} \
         (pool.max_size = {max}, pool.query_wait_timeout); raise pool.max_size or shorten transactions"
    )]
    Exhausted {
        database: String,
        user: String,
        max: usize,
        waited: Duration,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl crate::error::ClientFacing for PoolError {
    fn sqlstate(&self) -> &str {
        match self {
            PoolError::Exhausted { .. } => crate::wire::sqlstate::TOO_MANY_CONNECTIONS,
            PoolError::Backend(e) => e.sqlstate(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            PoolError::Exhausted { .. } => self.to_string(),
            PoolError::Backend(e) => e.client_message(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            PoolError::Exhausted { .. } => "pool_exhausted",
            PoolError::Backend(e) => e.metric_label(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: Arc<NodeAddr>,
    pub database: String,
    pub user: String,
}

/// Counters for the admin console and metrics.
#[derive(Default, Debug)]
pub struct PoolStats {
    pub checkouts: AtomicU64,
    pub waits: AtomicU64,
    pub wait_micros: AtomicU64,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub discarded: AtomicU64,
}

pub struct Pool {
    pub key: PoolKey,
    idle: Mutex<Vec<Server>>,
    permits: Arc<Semaphore>,
    max: Mutex<usize>,
    login: RwLock<Login>,
    shared: Arc<Shared>,
    pub stats: PoolStats,
    /// Connections lent to pipelining (`pipeline.rs`); at most half the pool, so requests
    /// that need a connection of their own always find room.
    pipelined: AtomicUsize,
    /// A checkout is waiting: a pipelining connection should drain and come back.
    reclaim: AtomicBool,
    /// The checkout count the upkeep last saw, and since when it has not moved: an unused pool
    /// is forgotten ([`Pools::forget_unused`]). Kept by the 5-second upkeep from
    /// `stats.checkouts`, so a checkout pays nothing for it.
    unused: Mutex<(u64, Instant)>,
}

/// Settings common to every pool, swapped atomically on reload.
pub struct Shared {
    pub cfg: ArcSwap<PoolConfig>,
    pub tls: TlsMode,
    pub tls_connector: Option<tokio_rustls::TlsConnector>,
    /// `upstream.channel_binding` / `require_auth`, swapped on reload.
    pub auth_policy: ArcSwap<crate::backend::AuthPolicy>,
}

/// A checked-out connection. Dropping it without [`Checkout::release`] closes the connection:
/// a connection in an unknown state must never reach another client.
pub struct Checkout {
    server: Option<Server>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Checkout {
    type Target = Server;
    fn deref(&self) -> &Server {
        self.server.as_ref().expect("server present until release")
    }
}

impl std::ops::DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut Server {
        self.server.as_mut().expect("server present until release")
    }
}

impl Checkout {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns the connection to the pool if it is clean (idle, not broken, young enough).
    pub fn release(mut self) {
        if let Some(mut s) = self.server.take() {
            let cfg = self.pool.shared.cfg.load();
            if s.broken
                || s.txn_status != txn::IDLE
                || s.created.elapsed() > cfg.max_lifetime
                || !s.rbuf.is_empty()
            {
                self.pool.stats.discarded.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(s.terminate());
                return;
            }
            s.last_used = Instant::now();
            self.pool.idle.lock().push(s);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.pool.stats.discarded.fetch_add(1, Ordering::Relaxed);
            // The socket closes when `s` drops; Postgres then rolls back whatever was open.
            drop(s);
        }
    }
}

/// The most recently used idle connection registered on `worker`'s reactor, else the most
/// recently used one: a connection of another worker works, but each of its events costs a
/// wake-up of that worker's thread too.
fn take_idle(idle: &mut Vec<Server>, worker: usize) -> Option<Server> {
    let at = idle
        .iter()
        .rposition(|s| s.worker == worker)
        .or_else(|| idle.len().checked_sub(1))?;
    Some(idle.remove(at))
}

impl Pool {
    fn new(key: PoolKey, login: Login, shared: Arc<Shared>) -> Self {
        let max = shared.cfg.load().max_size;
        Self {
            key,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
            max: Mutex::new(max),
            login: RwLock::new(login),
            shared,
            stats: PoolStats::default(),
            pipelined: AtomicUsize::new(0),
            reclaim: AtomicBool::new(false),
            unused: Mutex::new((0, Instant::now())),
        }
    }

    pub fn set_login(&self, login: Login) {
        *self.login.write() = login;
    }

    /// The login new connections of this pool use (to open the same pool elsewhere).
    pub fn login(&self) -> Login {
        self.login.read().clone()
    }

    /// Opens connections until `n` are idle or in use (at most `max_size`), so the first
    /// clients after a SWITCH do not each wait for a connect and authentication. Stops at
    /// the first error, which it returns: a server that refuses the sidecar is worth knowing
    /// about before traffic moves there.
    pub async fn warm(&self, n: usize) -> Result<usize, PoolError> {
        let target = n.min(self.max_size());
        let mut opened = 0;
        while self.idle_count() + self.active_count() < target {
            let s = self.connect().await?;
            self.idle.lock().push(s);
            opened += 1;
        }
        Ok(opened)
    }

    fn spec(&self) -> ConnectSpec {
        self.spec_with(self.login.read().clone())
    }

    /// Connection settings of this pool with another login (to prove a password first).
    pub fn spec_with(&self, login: Login) -> ConnectSpec {
        let cfg = self.shared.cfg.load();
        ConnectSpec {
            node: self.key.node.clone(),
            database: self.key.database.clone(),
            user: self.key.user.clone(),
            login,
            tls: self.shared.tls,
            tls_connector: self.shared.tls_connector.clone(),
            connect_timeout: cfg.connect_timeout,
            auth_policy: self.shared.auth_policy.load_full(),
            startup_params: Vec::new(),
        }
    }

    /// Takes a connection opened outside the pool (the one that verified a password) as idle,
    /// if there is room.
    pub fn adopt(&self, s: Server) {
        let mut idle = self.idle.lock();
        if idle.len() + self.active_count() < self.max_size() {
            idle.push(s);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    pub fn active_count(&self) -> usize {
        self.max
            .lock()
            .saturating_sub(self.permits.available_permits())
    }

    pub fn max_size(&self) -> usize {
        *self.max.lock()
    }

    /// Adapts the permit count to a reloaded `max_size` without disturbing connections in use.
    fn resize(&self, new_max: usize) {
        let mut max = self.max.lock();
        if new_max > *max {
            self.permits.add_permits(new_max - *max);
        } else if new_max < *max {
            self.permits.forget_permits(*max - new_max);
        }
        *max = new_max;
    }

    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        self.checkout_within(None).await
    }

    /// [`Pool::checkout`] waiting at most `wait` for a free connection (a per-user or
    /// per-database `query_wait_timeout`), else `pool.query_wait_timeout`.
    pub async fn checkout_within(
        self: &Arc<Self>,
        wait: Option<Duration>,
    ) -> Result<Checkout, PoolError> {
        let cfg = self.shared.cfg.load_full();
        let wait = wait.unwrap_or(cfg.query_wait_timeout);
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.stats.waits.fetch_add(1, Ordering::Relaxed);
                if self.pipelined.load(Ordering::Relaxed) > 0 {
                    // Pipelining holds connections that serve many clients each; one of them
                    // gives its connection back rather than this request waiting or timing out.
                    self.reclaim.store(true, Ordering::Relaxed);
                }
                let started = Instant::now();
                let p = tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await;
                self.stats
                    .wait_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                match p {
                    Ok(Ok(p)) => p,
                    _ => {
                        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::timeout("query_wait");
                        return Err(PoolError::Exhausted {
                            database: self.key.database.clone(),
                            user: self.key.user.clone(),
                            max: self.max_size(),
                            waited: wait,
                        });
                    }
                }
            }
        };
        self.lend(permit, &cfg).await
    }

    /// A connection for pipelining, only if one may be lent right away (no waiting for
    /// another client to give one back) and pipelining holds less than half the pool;
    /// else the request takes the normal path. Pair with [`Pool::pipeline_returned`].
    pub async fn checkout_for_pipeline(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        let cfg = self.shared.cfg.load_full();
        let share = (self.max_size() / 2).max(1);
        let held = self.pipelined.fetch_add(1, Ordering::Relaxed);
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) if held < share => p,
            _ => {
                self.pipelined.fetch_sub(1, Ordering::Relaxed);
                return Err(PoolError::Exhausted {
                    database: self.key.database.clone(),
                    user: self.key.user.clone(),
                    max: self.max_size(),
                    waited: Duration::ZERO,
                });
            }
        };
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        match self.lend(permit, &cfg).await {
            Ok(c) => Ok(c),
            Err(e) => {
                self.pipelined.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// A pipelining connection's task ended (its connection released or closed).
    pub fn pipeline_returned(&self) {
        self.pipelined.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a pipelining connection should retire now because a checkout is waiting
    /// (true for one caller per waiting episode).
    pub fn take_reclaim(&self) -> bool {
        self.reclaim.load(Ordering::Relaxed) && self.reclaim.swap(false, Ordering::Relaxed)
    }

    /// An idle connection (probed if it idled long), else a new one, under `permit`.
    async fn lend(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        cfg: &PoolConfig,
    ) -> Result<Checkout, PoolError> {
        loop {
            let candidate = take_idle(&mut self.idle.lock(), crate::workers::current());
            let Some(mut s) = candidate else { break };
            if s.created.elapsed() > cfg.max_lifetime {
                tokio::spawn(s.terminate());
                continue;
            }
            if s.ended_while_idle().await {
                tracing::debug!(server = s.id, "idle connection was closed by the server");
                self.stats.discarded.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if s.last_used.elapsed() > cfg.health_check_after_idle {
                let probe = tokio::time::timeout(Duration::from_secs(2), s.simple("")).await;
                if !matches!(probe, Ok(Ok(None))) || s.txn_status != txn::IDLE {
                    tracing::debug!(
                        server = s.id,
                        "idle connection failed its health check; reconnecting"
                    );
                    continue;
                }
            }
            return Ok(Checkout {
                server: Some(s),
                pool: self.clone(),
                _permit: permit,
            });
        }
        let s = self.connect().await?;
        Ok(Checkout {
            server: Some(s),
            pool: self.clone(),
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Server, PoolError> {
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        Server::connect(&self.spec()).await.map_err(|e| {
            self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            PoolError::Backend(e)
        })
    }

    /// Closes idle connections past `idle_timeout` or `max_lifetime` and tops the pool up to
    /// `min_size`. Runs from the maintenance task.
    async fn maintain(self: &Arc<Self>) {
        let cfg = self.shared.cfg.load_full();
        let expired: Vec<Server> = {
            let mut idle = self.idle.lock();
            let (keep, drop): (Vec<_>, Vec<_>) = idle.drain(..).partition(|s| {
                s.last_used.elapsed() < cfg.idle_timeout && s.created.elapsed() < cfg.max_lifetime
            });
            *idle = keep;
            drop
        };
        for s in expired {
            s.terminate().await;
        }
        while self.idle_count() + self.active_count() < cfg.min_size {
            match self.connect().await {
                Ok(s) => self.idle.lock().push(s),
                Err(e) => {
                    tracing::warn!(pool = %self.key.node.display(), error = %e, "cannot open min_size connections");
                    break;
                }
            }
        }
    }

    /// How long no connection was lent, as of the upkeep's calls (the first call after a
    /// checkout restarts the clock).
    fn unused_for(&self) -> Duration {
        let checkouts = self.stats.checkouts.load(Ordering::Relaxed);
        let mut unused = self.unused.lock();
        if unused.0 != checkouts {
            *unused = (checkouts, Instant::now());
        }
        unused.1.elapsed()
    }

    pub async fn close_idle(&self) {
        let idle: Vec<Server> = std::mem::take(&mut *self.idle.lock());
        for s in idle {
            s.terminate().await;
        }
    }
}

/// All pools of the process.
pub struct Pools {
    map: RwLock<HashMap<PoolKey, Arc<Pool>>>,
    pub shared: Arc<Shared>,
}

impl Pools {
    pub fn new(
        cfg: PoolConfig,
        tls: TlsMode,
        tls_connector: Option<tokio_rustls::TlsConnector>,
        auth_policy: crate::backend::AuthPolicy,
    ) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            shared: Arc::new(Shared {
                cfg: ArcSwap::from_pointee(cfg),
                tls,
                tls_connector,
                auth_policy: ArcSwap::from_pointee(auth_policy),
            }),
        }
    }

    /// Connection settings for `key` without creating its pool: a client's password is proven
    /// on such a connection before any per-user state exists.
    pub fn spec_for(&self, key: &PoolKey, login: Login) -> ConnectSpec {
        let cfg = self.shared.cfg.load();
        ConnectSpec {
            node: key.node.clone(),
            database: key.database.clone(),
            user: key.user.clone(),
            login,
            tls: self.shared.tls,
            tls_connector: self.shared.tls_connector.clone(),
            connect_timeout: cfg.connect_timeout,
            auth_policy: self.shared.auth_policy.load_full(),
            startup_params: Vec::new(),
        }
    }

    /// The pool for `key`, created with `login` on first use.
    pub fn get(&self, key: &PoolKey, login: impl FnOnce() -> Login) -> Arc<Pool> {
        if let Some(p) = self.map.read().get(key) {
            return p.clone();
        }
        let mut map = self.map.write();
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(Pool::new(key.clone(), login(), self.shared.clone())))
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map.read().values().cloned().collect()
    }

    /// Forgets the pools of `nodes` and closes their idle connections. A connection still
    /// lent out closes when it comes back (its pool is gone, so nobody borrows it again).
    pub async fn close_nodes(&self, nodes: &[Arc<NodeAddr>]) {
        let gone: Vec<Arc<Pool>> = {
            let mut map = self.map.write();
            let keys: Vec<PoolKey> = map
                .keys()
                .filter(|k| nodes.iter().any(|n| **n == *k.node))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for p in gone {
            p.close_idle().await;
        }
    }

    /// Closes the idle connections to `database` on every node (it is about to be dropped:
    /// `session::dropdb`); how many.
    pub async fn close_database(&self, database: &str) -> usize {
        let pools: Vec<Arc<Pool>> = self
            .map
            .read()
            .iter()
            .filter(|(k, _)| k.database == database)
            .map(|(_, p)| p.clone())
            .collect();
        let mut closed = 0;
        for p in pools {
            closed += p.idle_count();
            p.close_idle().await;
        }
        closed
    }

    pub fn reconfigure(&self, cfg: PoolConfig) {
        let max = cfg.max_size;
        self.shared.cfg.store(Arc::new(cfg));
        for p in self.all() {
            p.resize(max);
        }
    }

    /// Forgets the pools that nothing holds (no client session of theirs, no connection lent,
    /// no pipelined connection) and that lent nothing for `idle_timeout`, and closes their idle
    /// connections. Users come and go (and under passthrough every name that once logged in
    /// gets a pool): without this, each left a pool, its `min_size` connections and its
    /// `/metrics` series behind for the life of the process. A client of that user who comes
    /// back gets a new pool. Returns how many were forgotten.
    pub async fn forget_unused(&self) -> usize {
        let idle_timeout = self.shared.cfg.load().idle_timeout;
        let gone: Vec<Arc<Pool>> = {
            let mut map = self.map.write();
            // Under the write lock no `get` can hand one out meanwhile; the map's own reference
            // is the only one of a pool nobody uses.
            let keys: Vec<PoolKey> = map
                .iter()
                .filter(|(_, p)| {
                    Arc::strong_count(p) == 1
                        && p.active_count() == 0
                        && p.unused_for() >= idle_timeout
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for p in &gone {
            tracing::info!(pool = %p.key.node.display(), database = %p.key.database, user = %p.key.user,
                "pool unused for pool.idle_timeout and held by no client: forgotten");
            p.close_idle().await;
        }
        gone.len()
    }

    /// Background upkeep; ends when `shutdown` fires.
    pub async fn maintenance(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.forget_unused().await;
                    for p in self.all() {
                        p.maintain().await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(idle_timeout: Duration) -> Pools {
        let cfg = PoolConfig {
            idle_timeout,
            ..PoolConfig::default()
        };
        Pools::new(cfg, TlsMode::Disable, None, Default::default())
    }

    fn key(user: &str) -> PoolKey {
        PoolKey {
            node: Arc::new(NodeAddr::parse("postgres://127.0.0.1:1/shop").unwrap()),
            database: "shop".into(),
            user: user.into(),
        }
    }

    #[tokio::test]
    async fn a_pool_nobody_holds_is_forgotten_once_unused_for_idle_timeout() {
        let pools = pools(Duration::ZERO);
        let held = pools.get(&key("stays"), || Login::None);
        drop(pools.get(&key("left"), || Login::None));
        assert_eq!(pools.all().len(), 2);

        assert_eq!(pools.forget_unused().await, 1);
        let left: Vec<String> = pools.all().iter().map(|p| p.key.user.clone()).collect();
        assert_eq!(left, ["stays"], "the pool a session still holds stays");

        drop(held);
        assert_eq!(pools.forget_unused().await, 1);
        assert!(pools.all().is_empty());
        // A client of that user coming back gets a pool again.
        assert_eq!(pools.get(&key("left"), || Login::None).key.user, "left");
    }

    #[tokio::test]
    async fn a_pool_used_within_idle_timeout_is_kept() {
        let pools = pools(Duration::from_secs(600));
        drop(pools.get(&key("recent"), || Login::None));
        assert_eq!(pools.forget_unused().await, 0);
        assert_eq!(pools.all().len(), 1);
    }
}
