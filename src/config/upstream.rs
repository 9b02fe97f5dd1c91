//! Where the Postgres servers are and how to log in to them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP (the sidecar usually talks to Postgres on a private network).
    Disable,
    /// TLS when the server offers it.
    #[default]
    Prefer,
    /// TLS or no connection. With `ca_file`, the certificate chain and host name are verified
    /// against it; without, the certificate is not verified (encryption only).
    Require,
    /// TLS or no connection, certificate chain and host name verified against `ca_file`
    /// (required): a machine in the middle cannot pose as the server to collect passwords.
    #[serde(rename = "verify-full")]
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `postgres://[user[:password]@]host[:port][/database]`; a Unix socket directory as
    /// `?host=/run/postgresql` or `%2Frun%2Fpostgresql` in place of the host (as libpq).
    pub primary: String,
    pub replicas: Vec<String>,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// SCRAM channel binding (`tls-server-end-point`) when logging in to servers over TLS, as
    /// libpq's `channel_binding`: `disable`, `prefer` (bind when the server offers
    /// SCRAM-SHA-256-PLUS), `require` (refuse any other login).
    pub channel_binding: crate::auth::ChannelBindingMode,
    /// Authentication methods a server may ask the sidecar for, as libpq's `require_auth`
    /// (`none`, `password`, `md5`, `scram-sha-256`; all prefixed with `!` to list refused
    /// ones instead). Empty: whatever the server asks.
    pub require_auth: Vec<String>,
    /// PgBouncer-style userlist with secrets (plaintext or md5) for backend logins of users
    /// who do not authenticate by SCRAM pass-through or passthrough.
    pub credentials_file: Option<PathBuf>,
    /// With `[environments.NAME]`: the one traffic goes to at start. `SWITCH` changes it at run
    /// time; a reload never does (see `switch`), so edit this to make a switch outlive a restart.
    pub active: Option<String>,
    /// How long the environment switched away from keeps its pools and monitors, so switching
    /// back is immediate; then they are closed.
    #[serde(with = "super::duration")]
    pub rollback_window: Duration,
    /// How long `SWITCH` waits for transactions in flight before it gives up and resumes on
    /// the environment it started from.
    #[serde(with = "super::duration")]
    pub switch_timeout: Duration,
    /// While the primary cannot be reached or is restarting (connection refused, 57P01/57P03),
    /// new transactions and autocommit writes wait up to this long for it (or for a promoted
    /// replica) instead of failing, and reads that would fall back to it wait for a replica
    /// that has replayed what they must see. "0s": fail at once, as before.
    #[serde(with = "super::duration")]
    pub outage_hold: Duration,
}

/// `[environments.NAME]`: one complete database setup (a primary and its replicas) that
/// `SWITCH NAME` can move traffic to.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// The name of the one environment of a configuration without `[environments]`.
pub const DEFAULT_ENVIRONMENT: &str = "default";

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            primary: "postgres://127.0.0.1:5432".into(),
            replicas: Vec::new(),
            tls: TlsMode::Prefer,
            ca_file: None,
            channel_binding: crate::auth::ChannelBindingMode::Prefer,
            require_auth: Vec::new(),
            credentials_file: None,
            active: None,
            rollback_window: Duration::from_secs(600),
            switch_timeout: Duration::from_secs(5),
            outage_hold: Duration::from_secs(5),
        }
    }
}

/// One Postgres server's address and optional login.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    /// Share of reads for a replica (`?weight=N` in its URL).
    pub weight: u32,
}

/// Why an upstream URL was refused. Each names the URL with its password redacted.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("'{url}' is not a URL: {source}")]
    NotAUrl {
        url: String,
        source: url::ParseError,
    },
    #[error("'{0}': scheme must be postgres://")]
    Scheme(String),
    #[error("'{0}' has no host")]
    NoHost(String),
    #[error("'{0}': a Unix socket directory must be an absolute path")]
    RelativeSocket(String),
    #[error("'{0}': weight must be a whole number")]
    Weight(String),
}

impl NodeAddr {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let u = url::Url::parse(url).map_err(|source| UrlError::NotAUrl {
            url: redact(url),
            source,
        })?;
        if u.scheme() != "postgres" && u.scheme() != "postgresql" {
            return Err(UrlError::Scheme(redact(url)));
        }
        let decode = |s: &str| percent_decode(s);
        // libpq's two spellings of a Unix-socket directory: `?host=/run/postgresql`, or the
        // host percent-encoded (`postgres://%2Frun%2Fpostgresql/db`).
        let host = u
            .query_pairs()
            .find(|(k, _)| k == "host")
            .map(|(_, h)| h.into_owned())
            .or_else(|| u.host_str().map(decode))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| UrlError::NoHost(redact(url)))?;
        if host.contains('/') && !host.starts_with('/') {
            return Err(UrlError::RelativeSocket(redact(url)));
        }
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: u.port().unwrap_or(5432),
            user: (!u.username().is_empty()).then(|| decode(u.username())),
            password: u.password().map(decode),
            database: u
                .path()
                .strip_prefix('/')
                .filter(|d| !d.is_empty())
                .map(decode),
            weight: match u.query_pairs().find(|(k, _)| k == "weight") {
                Some((_, w)) => w.parse().map_err(|_| UrlError::Weight(redact(url)))?,
                None => 1,
            },
        })
    }

    /// `host:port` (or the socket file's path), safe to log and show.
    pub fn display(&self) -> String {
        match self.unix_socket() {
            Some(path) => path.display().to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// The socket file when the host is a directory (starts with `/`), as libpq decides.
    pub fn unix_socket(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| crate::listen::socket_path(std::path::Path::new(&self.host), self.port))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Hides a password in a URL before it reaches a message or a log.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl UpstreamConfig {
    /// Whether the link to a server is encrypted and the server's certificate verified.
    pub fn verified_tls(&self) -> bool {
        match self.tls {
            TlsMode::VerifyFull => true,
            TlsMode::Require => self.ca_file.is_some(),
            TlsMode::Disable | TlsMode::Prefer => false,
        }
    }

    pub fn problems(&self, environments: &BTreeMap<String, EnvironmentConfig>) -> Vec<String> {
        let mut p = Vec::new();
        if self.tls == TlsMode::VerifyFull && self.ca_file.is_none() {
            p.push("upstream.tls = \"verify-full\" needs upstream.ca_file (the CA that signed the servers' certificates)".into());
        }
        if let Err(e) = crate::auth::RequireAuth::parse(&self.require_auth) {
            p.push(format!("upstream.require_auth: {e}"));
        }
        if self.channel_binding == crate::auth::ChannelBindingMode::Require
            && self.tls == TlsMode::Disable
        {
            p.push("upstream.channel_binding = \"require\" needs TLS to the servers (upstream.tls other than \"disable\")".into());
        }
        let check = |p: &mut Vec<String>, what: &str, primary: &str, replicas: &[String]| {
            if let Err(e) = NodeAddr::parse(primary) {
                p.push(format!("{what}.primary: {e}"));
            }
            for (i, r) in replicas.iter().enumerate() {
                if let Err(e) = NodeAddr::parse(r) {
                    p.push(format!("{what}.replicas[{i}]: {e}"));
                }
            }
        };
        if environments.is_empty() {
            check(&mut p, "upstream", &self.primary, &self.replicas);
            if let Some(a) = &self.active {
                p.push(format!(
                    "upstream.active = \"{a}\" names no environment: define [environments.{a}]"
                ));
            }
            return p;
        }
        for (name, env) in environments {
            check(
                &mut p,
                &format!("environments.{name}"),
                &env.primary,
                &env.replicas,
            );
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                p.push(format!(
                    "environments.{name}: a name is letters, digits, '_' and '-' only"
                ));
            }
        }
        // Two places for the servers would leave the reader guessing which one is used.
        if self.primary != UpstreamConfig::default().primary || !self.replicas.is_empty() {
            p.push(
                "upstream.primary/replicas must not be set when [environments] are defined: \
                 give each environment its primary and replicas"
                    .into(),
            );
        }
        match &self.active {
            None => p.push(format!(
                "upstream.active must name the environment to start on (one of: {})",
                names(environments)
            )),
            Some(a) if !environments.contains_key(a) => p.push(format!(
                "upstream.active = \"{a}\" is not a defined environment (defined: {})",
                names(environments)
            )),
            Some(_) => {}
        }
        if self.switch_timeout.is_zero() {
            p.push("upstream.switch_timeout must be more than 0".into());
        }
        p
    }

    /// The servers of environment `name` (`DEFAULT_ENVIRONMENT` without `[environments]`).
    pub fn environment(
        &self,
        environments: &BTreeMap<String, EnvironmentConfig>,
        name: &str,
    ) -> Option<EnvironmentConfig> {
        if environments.is_empty() {
            return (name == DEFAULT_ENVIRONMENT).then(|| EnvironmentConfig {
                primary: self.primary.clone(),
                replicas: self.replicas.clone(),
            });
        }
        environments.get(name).cloned()
    }

    /// The environment traffic goes to at start.
    pub fn active_environment(&self) -> &str {
        self.active.as_deref().unwrap_or(DEFAULT_ENVIRONMENT)
    }
}

impl EnvironmentConfig {
    pub fn addrs(&self) -> Result<(NodeAddr, Vec<NodeAddr>), UrlError> {
        let primary = NodeAddr::parse(&self.primary)?;
        let replicas = self
            .replicas
            .iter()
            .map(|r| NodeAddr::parse(r))
            .collect::<Result<_, _>>()?;
        Ok((primary, replicas))
    }
}

fn names(environments: &BTreeMap<String, EnvironmentConfig>) -> String {
    environments.keys().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_credentials_and_database_parses() {
        let n = NodeAddr::parse("postgres://app:s%40cret@127.0.0.1:5433/shop").unwrap();
        assert_eq!(n.host, "127.0.0.1");
        assert_eq!(n.port, 5433);
        assert_eq!(n.user.as_deref(), Some("app"));
        assert_eq!(n.password.as_deref(), Some("s@cret"));
        assert_eq!(n.database.as_deref(), Some("shop"));
    }

    /// Both of libpq's URL spellings of a socket directory reach the same socket file.
    #[test]
    fn unix_socket_urls_name_the_socket_file() {
        let q =
            NodeAddr::parse("postgres://app@localhost/shop?host=/run/postgresql&weight=2").unwrap();
        let p = NodeAddr::parse("postgresql://app@%2Frun%2Fpostgresql:5432/shop").unwrap();
        let bare = NodeAddr::parse("postgres:///shop?host=/run/postgresql").unwrap();
        for n in [&q, &p, &bare] {
            assert_eq!(n.host, "/run/postgresql");
            assert_eq!(
                n.unix_socket().unwrap(),
                std::path::Path::new("/run/postgresql/.s.PGSQL.5432")
            );
            assert_eq!(n.display(), "/run/postgresql/.s.PGSQL.5432");
            assert_eq!(n.database.as_deref(), Some("shop"));
        }
        assert_eq!(q.weight, 2);
        let tcp = NodeAddr::parse("postgres://db.internal:5433/shop").unwrap();
        assert_eq!(tcp.unix_socket(), None);
        assert!(NodeAddr::parse("postgres:///shop").is_err());
        assert!(NodeAddr::parse("postgres:///shop?host=run/pg").is_err());
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = NodeAddr::parse("mysql://app:topsecret@h/").unwrap_err();
        assert!(!e.to_string().contains("topsecret"), "{e}");
    }
}
