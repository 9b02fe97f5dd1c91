//! Configuration: a TOML file layered over defaults, then `PGSIDECAR_*` environment variables
//! and command-line flags (see `main.rs`). Unknown keys are errors: a typo in a pool size must
//! not silently leave the default in place.

mod cache;
pub(crate) mod duration;
mod locks;
mod mirror;
mod routing;
mod stats;
mod upstream;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use cache::{CacheConfig, CacheConfigError};
pub use locks::{LockRule, Undeterminable};
pub use mirror::MirrorConfig;
pub use routing::{Balance, NoReplica, ReadYourWrites, RouteTo, RoutingConfig, RuleConfig};
pub use stats::StatsConfig;
pub use upstream::{
    redact, EnvironmentConfig, NodeAddr, TlsMode, UpstreamConfig, UrlError, DEFAULT_ENVIRONMENT,
};

/// The longest `workers.idle_spin` accepted: beyond this a spin costs more CPU than any
/// wake-up it could save (`idle_spin.rs`).
pub const MAX_IDLE_SPIN: Duration = Duration::from_millis(1);

/// Default of `routing.max_analyzed_statement` (`analyze`).
pub const DEFAULT_MAX_ANALYZED: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    /// Named database setups for blue-green switching; empty means `[upstream]` is the one.
    pub environments: std::collections::BTreeMap<String, EnvironmentConfig>,
    pub pool: PoolConfig,
    pub auth: AuthConfig,
    pub routing: RoutingConfig,
    pub cache: CacheConfig,
    pub locks: Vec<LockRule>,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub workers: WorkersConfig,
    /// Statement statistics (`SHOW QUERIES`).
    pub stats: StatsConfig,
    /// Rehearsing a blue-green switch: mirroring reads to another environment.
    pub switch: MirrorConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    pub addr: String,
    /// PEM certificate chain and key; when both are set, clients may negotiate TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(with = "duration")]
    pub startup_timeout: Duration,
    /// On SIGTERM, how long transactions in flight may take to finish before the sidecar exits.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    pub max_message_size: usize,
    pub max_clients: usize,
    /// Also listen on a Unix-domain socket in this directory, named `.s.PGSQL.<port of addr>`
    /// as libpq expects (`host=<dir>`): for applications on the same host or pod, it skips the
    /// loopback TCP stack (see `listen`).
    pub unix_socket_dir: Option<PathBuf>,
    /// Permissions of the socket file (who may connect), as Postgres' unix_socket_permissions.
    pub unix_socket_mode: u32,
    /// From the startup packet to the end of authentication (password exchange and the
    /// primary's verification): a client that never answers the password request holds a
    /// `max_clients` slot for at most this long.
    #[serde(with = "duration")]
    pub auth_timeout: Duration,
    /// TCP keepalive on client sockets: a client whose host vanished is noticed after about
    /// this idle time plus a few probes. "0s" turns it off.
    #[serde(with = "duration")]
    pub tcp_keepalive: Duration,
    /// Per client: bytes of extended-protocol messages buffered without a Sync/Flush (54000
    /// and the connection closed beyond it).
    pub max_unsynced_bytes: usize,
    /// Per client: messages buffered without a Sync/Flush.
    pub max_unsynced_messages: usize,
    /// Per client: named prepared statements at once (53400 beyond it; the client may Close
    /// some and go on).
    pub max_prepared_statements: usize,
    /// Authenticated clients at once per user and per database (0 = no limit); beyond: 53300.
    pub max_clients_per_user: usize,
    pub max_clients_per_database: usize,
}

impl ListenConfig {
    /// The port of `addr`, which also names the Unix socket.
    pub fn port(&self) -> u16 {
        self.addr
            .parse::<std::net::SocketAddr>()
            .map_or(6432, |a| a.port())
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:6432".into(),
            tls_cert: None,
            tls_key: None,
            startup_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            max_message_size: 64 << 20,
            max_clients: 10_000,
            unix_socket_dir: None,
            unix_socket_mode: 0o777,
            auth_timeout: Duration::from_secs(30),
            tcp_keepalive: Duration::from_secs(60),
            max_unsynced_bytes: 128 << 20,
            max_unsynced_messages: 100_000,
            max_prepared_statements: 10_000,
            max_clients_per_user: 0,
            max_clients_per_database: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub mode: PoolMode,
    pub min_size: usize,
    pub max_size: usize,
    /// How long a request waits for a free backend before SQLSTATE 53300 (PgBouncer's name;
    /// `checkout_timeout`, its old name here, is still accepted). Per user/database: a
    /// `[[routing.rules]]` entry with only `user`/`database` conditions.
    #[serde(with = "duration", alias = "checkout_timeout")]
    pub query_wait_timeout: Duration,
    /// Timeouts the proxy enforces (`session::timeouts`), "0s" = off. Each can be set per
    /// rule, user or database in `[[routing.rules]]`. A request running longer than
    /// `query_timeout` is cancelled on the server (57014).
    #[serde(with = "duration")]
    pub query_timeout: Duration,
    /// A transaction (or autocommit request) holding its backend longer than this: the client
    /// gets FATAL 25P04, the backend is rolled back and returned to the pool.
    #[serde(with = "duration")]
    pub transaction_timeout: Duration,
    /// A client idle inside a transaction longer than this: FATAL 25P03, backend rolled back
    /// and returned (an idle transaction holds a backend and its locks from everyone else).
    #[serde(with = "duration")]
    pub idle_in_transaction_timeout: Duration,
    /// A client idle between transactions longer than this is disconnected (FATAL 57P05).
    #[serde(with = "duration")]
    pub client_idle_timeout: Duration,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    #[serde(with = "duration")]
    pub max_lifetime: Duration,
    #[serde(with = "duration")]
    pub health_check_after_idle: Duration,
    pub max_prepared_per_backend: usize,
    /// Pipelining (`pool::pipeline`): several clients' autocommit reads share one backend
    /// connection, each write and read carrying many of them. Only single-statement plain
    /// reads seen to take less than `pipeline_fast`, from clients that changed no setting,
    /// outside transactions. Default on: measured faster (BENCHMARKS.md), whole suite green.
    pub pipeline: bool,
    /// A statement is pipelined only if its last run took less than this, and a pipelined
    /// backend takes new requests only while its oldest one is younger than this (so a slow
    /// statement holds others back at most this long).
    #[serde(with = "duration")]
    pub pipeline_fast: Duration,
    /// Backend connections each session worker keeps for pipelining, per pool (they count
    /// against `max_size`).
    pub pipeline_backends_per_worker: usize,
    /// A client request with no progress (no answer from its backend) for this long is logged
    /// with its messages and counted (`pgsidecar_stuck_requests_total`); if its backend is
    /// then found waiting for input (`pg_stat_activity` not `active`), the proxy has lost
    /// track of it: the client gets 08P01 and the connection is closed. A statement still
    /// running is left alone. "0s" turns the watchdog off.
    #[serde(with = "duration")]
    pub stuck_request_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::Transaction,
            min_size: 0,
            max_size: 20,
            query_wait_timeout: Duration::from_secs(5),
            query_timeout: Duration::ZERO,
            transaction_timeout: Duration::ZERO,
            idle_in_transaction_timeout: Duration::ZERO,
            client_idle_timeout: Duration::ZERO,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            health_check_after_idle: Duration::from_secs(30),
            max_prepared_per_backend: 500,
            pipeline: true,
            pipeline_fast: Duration::from_millis(2),
            pipeline_backends_per_worker: 2,
            stuck_request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub users_file: Option<PathBuf>,
    pub rules: Vec<crate::auth::AuthRule>,
    /// How long a password the primary checked is accepted from new clients without asking it
    /// again (a revoked password keeps working at most this long).
    #[serde(with = "duration")]
    pub passthrough_ttl: Duration,
    /// Refuse to start (or reload) when passthrough could send a client's password to a
    /// non-local primary over a link that is not verified TLS (`upstream.tls = "verify-full"`,
    /// or `"require"` with `ca_file`): the warning of `pgsidecar check` made an error.
    pub passthrough_require_tls: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            users_file: None,
            rules: Vec::new(),
            passthrough_ttl: crate::auth::passthrough::DEFAULT_TTL,
            passthrough_require_tls: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    /// Requests taking at least this long are logged (target `pgsidecar::slow_query`) with
    /// their normalized text and routing decision; unset = off.
    #[serde(with = "duration::option")]
    pub slow_query: Option<Duration>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Human,
            slow_query: None,
        }
    }
}

/// `[workers]`: the session worker threads (`workers.rs`). Read at start only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// After serving something, a worker polls its sockets this long before it sleeps, so a
    /// request arriving right after the previous answer needs no wake-up (`idle_spin.rs`);
    /// "0s" = sleep at once.
    #[serde(with = "duration")]
    pub idle_spin: Duration,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            // Off: measured on 2 vCPUs it cut one client's cache-hit p50 2.5× but cost ~8 %
            // of pass-through TPS at 16 clients (BENCHMARKS.md); a latency choice to opt into.
            idle_spin: Duration::ZERO,
        }
    }
}

/// `[admin]`: the admin console (`psql -d pgsidecar`) and the HTTP endpoint for probes and
/// Prometheus.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Users who may open the admin console.
    pub users: Vec<String>,
    /// How console users authenticate (`[[auth.rules]]` still decide who may connect at all).
    /// Unset: the matching rule's method, except that `trust` from a rule whose database is a
    /// wildcard becomes scram-sha-256 (with a users file) or passthrough.
    pub auth: Option<crate::auth::AuthMethod>,
    /// `IP:port` serving /metrics, /healthz and /readyz; unset means no HTTP endpoint.
    pub http_addr: Option<String>,
    /// HTTP connections served at once (scrapers and probes need a handful); more are closed
    /// at once. Read when the endpoint starts.
    pub http_max_connections: usize,
    /// A request's headers must arrive within this (slowloris).
    #[serde(with = "duration")]
    pub http_header_timeout: Duration,
    /// No HTTP connection lives longer, however it is used.
    #[serde(with = "duration")]
    pub http_connection_lifetime: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            users: vec!["postgres".into()],
            auth: None,
            http_addr: None,
            http_max_connections: 64,
            http_header_timeout: Duration::from_secs(5),
            http_connection_lifetime: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Parses TOML text; errors name the line and column, as `pgsidecar check` prints them.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })
    }

    /// The servers of environment `name`, if it is defined.
    pub fn environment(&self, name: &str) -> Option<EnvironmentConfig> {
        self.upstream.environment(&self.environments, name)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Settings that work but expose secrets; `pgsidecar check` prints them and the server logs
    /// them at startup and reload. Today: passwords (passthrough clients', or the proxy's own
    /// from the URL or credentials file) that can cross a link to a non-local server that is
    /// not encrypted with a verified certificate, where a machine in the middle can read them
    /// (a cleartext request) or answer in the server's place.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let passthrough = (self.auth.users_file.is_none() && self.auth.rules.is_empty())
            || self
                .auth
                .rules
                .iter()
                .any(|r| r.method == crate::auth::AuthMethod::Passthrough)
            || self.admin.auth == Some(crate::auth::AuthMethod::Passthrough);
        let own = self.upstream.credentials_file.is_some();
        if self.upstream.verified_tls() {
            return w;
        }
        let mut envs: Vec<(String, EnvironmentConfig)> = self
            .environments
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        if envs.is_empty() {
            envs.push((
                DEFAULT_ENVIRONMENT.into(),
                EnvironmentConfig {
                    primary: self.upstream.primary.clone(),
                    replicas: self.upstream.replicas.clone(),
                },
            ));
        }
        for (name, env) in envs {
            let Ok((primary, _)) = env.addrs() else {
                continue;
            };
            let local = primary.unix_socket().is_some()
                || primary
                    .host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
                || primary.host == "localhost";
            if local || !(passthrough || own || primary.password.is_some()) {
                continue;
            }
            w.push(format!(
                "passwords can cross an unencrypted or unverified link to {host} (environment \
                 {name}, upstream.tls = \"{tls}\"): anyone in the middle can read a cleartext \
                 or md5 login or pose as the server; set upstream.tls = \"verify-full\" and \
                 upstream.ca_file",
                host = primary.host,
                tls = format!("{:?}", self.upstream.tls).to_lowercase(),
            ));
        }
        w
    }

    /// Checks what serde cannot: addresses, URLs, sizes and cross-field rules. Every problem is
    /// reported, not just the first, so one `pgsidecar check` run shows all of them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.listen.addr.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "listen.addr: '{}' is not an IP:port address",
                self.listen.addr
            ));
        }
        if self.listen.tls_cert.is_some() != self.listen.tls_key.is_some() {
            problems.push("listen.tls_cert and listen.tls_key must be set together".into());
        }
        if self.listen.unix_socket_mode > 0o777 {
            problems.push(format!(
                "listen.unix_socket_mode {:o} is not a permission mode: write it in octal, e.g. 0o770",
                self.listen.unix_socket_mode
            ));
        }
        if let Some(dir) = &self.listen.unix_socket_dir {
            // sun_path holds 108 bytes; a longer path fails at bind with a cryptic error.
            let len = crate::listen::socket_path(dir, self.listen.port())
                .as_os_str()
                .len();
            if len + ".123456789.tmp".len() >= 108 {
                problems.push(format!(
                    "listen.unix_socket_dir '{}' is too long for a Unix socket path (at most ~80 bytes)",
                    dir.display()
                ));
            }
        }
        if self.listen.max_message_size < 1024 {
            problems.push("listen.max_message_size must be at least 1024 bytes".into());
        }
        if self.pool.max_size == 0 {
            problems.push("pool.max_size must be at least 1".into());
        }
        if self.pool.min_size > self.pool.max_size {
            problems.push(format!(
                "pool.min_size ({}) is larger than pool.max_size ({})",
                self.pool.min_size, self.pool.max_size
            ));
        }
        if let Some(addr) = self
            .admin
            .http_addr
            .as_deref()
            .filter(|a| a.parse::<std::net::SocketAddr>().is_err())
        {
            problems.push(format!(
                "admin.http_addr: '{addr}' is not an IP:port address"
            ));
        }
        if self.admin.http_max_connections == 0
            || self.admin.http_header_timeout.is_zero()
            || self.admin.http_connection_lifetime.is_zero()
        {
            problems.push(
                "admin.http_max_connections, http_header_timeout and http_connection_lifetime must be positive"
                    .into(),
            );
        }
        if self.workers.idle_spin > MAX_IDLE_SPIN {
            problems.push(format!(
                "workers.idle_spin: at most {:?} (a longer spin costs more CPU than the wake-up it saves)",
                MAX_IDLE_SPIN
            ));
        }
        problems.extend(self.upstream.problems(&self.environments));
        let envs: Vec<String> = self.environments.keys().cloned().collect();
        problems.extend(
            self.switch
                .problems(&envs, self.upstream.active_environment()),
        );
        problems.extend(self.routing.problems());
        for (i, l) in self.locks.iter().enumerate() {
            problems.extend(l.problems(i));
        }
        if let Err(e) = self.cache.validate() {
            problems.push(format!("cache: {e}"));
        }
        for (i, rule) in self.auth.rules.iter().enumerate() {
            if let Err(e) = rule.validate() {
                problems.push(format!("auth.rules[{i}]: {e}"));
            }
        }
        if self.auth.passthrough_require_tls {
            problems.extend(
                self.warnings()
                    .into_iter()
                    .map(|w| format!("auth.passthrough_require_tls: {w}")),
            );
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            problems.push(format!("log.level: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("\n")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", "t").unwrap();
        assert_eq!(c.pool.max_size, 20);
        assert_eq!(c.pool.mode, PoolMode::Transaction);
    }

    #[test]
    fn unknown_key_is_an_error_with_line_number() {
        let err = Config::from_toml("[pool]\nmax_size = 5\nmax_sise = 6\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("max_sise"), "{err}");
    }

    #[test]
    fn durations_accept_human_units() {
        let c = Config::from_toml(
            "[pool]\ncheckout_timeout = \"250ms\"\nidle_timeout = \"10m\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.pool.query_wait_timeout, Duration::from_millis(250));
        assert_eq!(c.pool.idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn admin_console_defaults_to_postgres_without_http() {
        let c = Config::from_toml("", "t").unwrap();
        assert_eq!(c.admin.users, vec!["postgres".to_string()]);
        assert!(c.admin.http_addr.is_none());
        let bad = Config::from_toml("[admin]\nhttp_addr = \"9930\"\n", "t").unwrap();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("admin.http_addr"));
    }

    const TWO_ENVIRONMENTS: &str = "[upstream]\nactive = \"blue\"\n\
        [environments.blue]\nprimary = \"postgres://b:5432\"\n\
        [environments.green]\nprimary = \"postgres://g:5432\"\nreplicas = [\"postgres://g2:5432\"]\n";

    #[test]
    fn environments_are_optional_and_upstream_is_then_the_default_one() {
        let c = Config::from_toml("[upstream]\nprimary = \"postgres://p:1\"\n", "t").unwrap();
        c.validate().unwrap();
        assert_eq!(c.upstream.active_environment(), DEFAULT_ENVIRONMENT);
        assert_eq!(c.environment("default").unwrap().primary, "postgres://p:1");
        assert_eq!(c.upstream.rollback_window, Duration::from_secs(600));
    }

    #[test]
    fn named_environments_need_an_active_one_that_exists() {
        let c = Config::from_toml(TWO_ENVIRONMENTS, "t").unwrap();
        c.validate().unwrap();
        assert_eq!(c.environment("green").unwrap().replicas.len(), 1);
        assert!(c.environment("default").is_none());
        let wrong = TWO_ENVIRONMENTS.replace("active = \"blue\"", "active = \"purple\"");
        let err = Config::from_toml(&wrong, "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("purple") && err.contains("blue, green"),
            "{err}"
        );
        let none = TWO_ENVIRONMENTS.replace("active = \"blue\"", "");
        let err = Config::from_toml(&none, "t")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("upstream.active"), "{err}");
    }

    #[test]
    fn environments_reject_unknown_keys_and_a_second_upstream() {
        let typo = TWO_ENVIRONMENTS.replace("replicas =", "replica =");
        assert!(Config::from_toml(&typo, "t")
            .unwrap_err()
            .to_string()
            .contains("replica"));
        let both = TWO_ENVIRONMENTS.replace(
            "active = \"blue\"",
            "active = \"blue\"\nprimary = \"postgres://x:1\"",
        );
        let err = Config::from_toml(&both, "t")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("must not be set"), "{err}");
    }

    #[test]
    fn a_password_link_that_is_not_verified_tls_is_warned_about() {
        let parse = |t: &str| Config::from_toml(t, "test").unwrap();
        let remote =
            parse("[upstream]\nprimary = \"postgres://db.internal:5432\"\ntls = \"prefer\"\n");
        let w = remote.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("db.internal") && w[0].contains("verify-full"),
            "{w:?}"
        );
        let verified = parse(
            "[upstream]\nprimary = \"postgres://db.internal:5432\"\ntls = \"verify-full\"\nca_file = \"/ca.pem\"\n",
        );
        assert!(verified.warnings().is_empty());
        assert!(verified.validate().is_ok());
        let local = parse("[upstream]\nprimary = \"postgres://127.0.0.1:5432\"\n");
        assert!(local.warnings().is_empty());
        let no_ca =
            parse("[upstream]\nprimary = \"postgres://db.internal:5432\"\ntls = \"verify-full\"\n");
        let e = no_ca.validate().unwrap_err().to_string();
        assert!(e.contains("ca_file"), "{e}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let c =
            Config::from_toml("[listen]\naddr = \"nope\"\n[pool]\nmax_size = 0\n", "t").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("listen.addr") && err.contains("pool.max_size"),
            "{err}"
        );
    }
}
