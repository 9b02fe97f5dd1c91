//! State shared by every session: configuration, topology, pools, credentials, cancel keys.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::analyze::{Analysis, Analyzer};
use crate::auth::{PassthroughCache, Secret, UserList};
use crate::backend::Login;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::pool::Pools;
use crate::route::{Rules, Topology, WriteLog};

/// The login the background monitor uses to watch the servers.
pub struct MonitorLogin {
    pub user: String,
    pub database: String,
    pub login: Login,
}

pub struct Context {
    pub config: ArcSwap<Config>,
    pub pools: Arc<Pools>,
    /// The active environment's servers; SWITCH replaces it (see `switch`).
    pub topology: ArcSwap<Topology>,
    /// Warm standby environments and the transaction gate a SWITCH closes.
    pub envs: crate::switch::Environments,
    pub rules: ArcSwap<Rules>,
    pub analyzer: Analyzer,
    /// Shared with the cache, which records the positions other sidecars' tokens carry.
    pub write_log: Arc<WriteLog>,
    /// Asks the primary to flush WAL that waiting reads need (asynchronous commits).
    pub flusher: crate::route::flush::Flusher,
    pub monitor_login: ArcSwapOption<MonitorLogin>,
    /// Client secrets (`auth.users_file`).
    pub users: ArcSwapOption<UserList>,
    /// Backend secrets (`upstream.credentials_file`).
    pub backend_credentials: ArcSwapOption<UserList>,
    pub passthrough: PassthroughCache,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `tls-server-end-point` hash of `listen.tls_cert`: SCRAM clients on TLS are offered
    /// SCRAM-SHA-256-PLUS bound to it. `None` without TLS or for a certificate that allows no
    /// binding.
    pub tls_end_point: Option<Vec<u8>>,
    pub cancels: CancelRegistry,
    /// Makes mock SCRAM exchanges for unknown users look like real ones.
    pub mock_secret: [u8; 32],
    pub clients: AtomicUsize,
    /// Authenticated clients per user and per database (`listen.max_clients_per_*`).
    pub quotas: crate::quota::ClientQuotas,
    /// Accepted clients, for the admin console's SHOW CLIENTS.
    pub sessions: crate::clients::ClientRegistry,
    /// Advisory keys sessions wait for or hold, for SHOW LOCKS.
    pub lock_registry: crate::locks::LockRegistry,
    /// Set while the process drains before exiting: /readyz then answers 503.
    pub draining: AtomicBool,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// One passthrough password check per user at a time: a burst of new clients with the same
    /// password costs one login to the primary, not one each.
    /// Proxy-wide statement names that some backend parsed successfully: a Parse+Sync for one of
    /// them can be answered without borrowing a backend (pgbench -M prepared and drivers that
    /// prepare eagerly would otherwise need a free backend just to hear "ParseComplete").
    pub known_statements: parking_lot::RwLock<std::collections::HashSet<bytes::Bytes>>,
    pub cache: crate::cache::Cache,
    /// Fires when the sidecar starts draining (sessions close at their next idle moment).
    pub drain: tokio::sync::watch::Sender<bool>,
    /// Databases whose new transactions wait (`PAUSE`): `Some(None)` pauses all of them.
    pub paused: tokio::sync::watch::Sender<Option<Option<String>>>,
    pub verify_locks: parking_lot::Mutex<
        std::collections::HashMap<crate::auth::PassthroughKey, Arc<tokio::sync::Mutex<()>>>,
    >,
    /// Databases whose function catalog DDL through this sidecar changed.
    pub catalog_reload: crate::route::functions::Reload,
    /// Statement statistics for `SHOW QUERIES` and `pgsidecar_query_*`.
    pub queries: crate::stats::QueryStats,
    /// Reads copied to another environment to compare answers (`[switch] mirror_*`).
    pub mirror: crate::switch::mirror::Mirror,
}

impl Context {
    /// How to log in to backends as `user` when the client's own authentication gave the proxy
    /// nothing to reuse: the upstream URL's credentials, then the credentials file.
    pub fn configured_login(&self, user: &str) -> Option<Login> {
        let topo = self.topology.load();
        let primary = &topo.nodes[0].addr;
        if primary.user.as_deref() == Some(user) {
            if let Some(pw) = &primary.password {
                return Some(Login::Password(pw.clone()));
            }
        }
        let creds = self.backend_credentials.load();
        match creds.as_ref().and_then(|c| c.get(user)) {
            Some(Secret::Plain(pw)) => Some(Login::Password(pw.clone())),
            Some(Secret::Md5(h)) => Some(Login::Md5Stored(h.clone())),
            _ => None,
        }
    }

    pub fn known_statement(&self, name: bytes::Bytes) {
        if self.known_statements.read().contains(&name) {
            return;
        }
        let mut set = self.known_statements.write();
        if set.len() > 100_000 {
            set.clear(); // bounded: forgetting only costs a backend round trip
        }
        set.insert(name);
    }

    /// Connection settings for the proxy's own background connections (monitor, pg_proc
    /// loader, NOTIFY listener) to `node`, with the monitor login; None until there is one.
    pub fn monitor_spec(
        &self,
        node: Arc<crate::config::NodeAddr>,
        application_name: &str,
    ) -> Option<crate::backend::ConnectSpec> {
        let m = self.monitor_login.load_full()?;
        let cfg = self.config.load();
        Some(crate::backend::ConnectSpec {
            node,
            database: cfg
                .routing
                .monitor_database
                .clone()
                .unwrap_or_else(|| m.database.clone()),
            user: m.user.clone(),
            login: m.login.clone(),
            tls: cfg.upstream.tls,
            tls_connector: self.pools.shared.tls_connector.clone(),
            connect_timeout: cfg.pool.connect_timeout,
            auth_policy: self.pools.shared.auth_policy.load_full(),
            startup_params: vec![("application_name".into(), application_name.into())],
        })
    }

    pub fn verify_lock(&self, key: &crate::auth::PassthroughKey) -> Arc<tokio::sync::Mutex<()>> {
        self.verify_locks
            .lock()
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Drops `key`'s lock once nobody holds or waits for it: these exist before a client is
    /// authenticated, so made-up user names must not accumulate.
    pub fn release_verify_lock(&self, key: &crate::auth::PassthroughKey) {
        let mut locks = self.verify_locks.lock();
        if locks.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(key);
        }
    }

    /// Analysis of a statement's text (cached by text).
    /// True when this sidecar knows every commit position other sidecars announced: it holds
    /// a lease in the fleet sharing Redis and has caught up since it joined (always true
    /// without Redis). Asks the flusher for the catch-up when it is due.
    pub fn fleet_caught_up(&self) -> bool {
        match self.cache.fleet_join() {
            None => false,
            Some(join) if join > self.write_log.caught_up() => {
                self.flusher.catch_up(join);
                false
            }
            Some(_) => true,
        }
    }

    pub fn analyze(&self, sql: &[u8]) -> Arc<Analysis> {
        self.analyzer.analyze_bytes(sql)
    }

    /// [`Context::analyze`] under a session's lexing rules.
    pub fn analyze_for(&self, sql: &[u8], lex: crate::analyze::LexSettings) -> Arc<Analysis> {
        self.analyzer.analyze_for(sql, lex)
    }

    /// Without configured monitor credentials, the first client whose login the proxy can reuse
    /// lends it to the monitor, so replicas become eligible without extra configuration.
    pub fn offer_monitor_login(&self, user: &str, database: &str, login: &Login) {
        if self.monitor_login.load().is_some() || matches!(login, Login::None) {
            return;
        }
        self.monitor_login.store(Some(Arc::new(MonitorLogin {
            user: user.to_string(),
            database: database.to_string(),
            login: login.clone(),
        })));
    }
}
