//! Where the Postgres servers are and how to log in to them.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP (the sidecar usually talks to Postgres on a private network).
    Disable,
    /// TLS when the server offers it.
    #[default]
    Prefer,
    /// TLS or no connection. Certificates are verified against `ca_file` (or the system roots).
    Require,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `postgres://[user[:password]@]host[:port][/database]`
    pub primary: String,
    pub replicas: Vec<String>,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// PgBouncer-style userlist with secrets (plaintext or md5) for backend logins of users
    /// who do not authenticate by SCRAM pass-through or passthrough.
    pub credentials_file: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            primary: "postgres://127.0.0.1:5432".into(),
            replicas: Vec::new(),
            tls: TlsMode::Prefer,
            ca_file: None,
            credentials_file: None,
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

impl NodeAddr {
    pub fn parse(url: &str) -> Result<Self, String> {
        let u = url::Url::parse(url).map_err(|e| format!("'{}' is not a URL: {e}", redact(url)))?;
        if u.scheme() != "postgres" && u.scheme() != "postgresql" {
            return Err(format!("'{}': scheme must be postgres://", redact(url)));
        }
        let host = u
            .host_str()
            .ok_or_else(|| format!("'{}' has no host", redact(url)))?
            .to_string();
        let decode = |s: &str| percent_decode(s);
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
                Some((_, w)) => w
                    .parse()
                    .map_err(|_| format!("'{}': weight must be a whole number", redact(url)))?,
                None => 1,
            },
        })
    }

    /// `host:port`, safe to log and show.
    pub fn display(&self) -> String {
        format!("{}:{}", self.host, self.port)
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
    pub fn primary_addr(&self) -> Result<NodeAddr, String> {
        NodeAddr::parse(&self.primary)
    }

    pub fn replica_addrs(&self) -> Result<Vec<NodeAddr>, String> {
        self.replicas.iter().map(|r| NodeAddr::parse(r)).collect()
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = self.primary_addr() {
            p.push(format!("upstream.primary: {e}"));
        }
        for (i, r) in self.replicas.iter().enumerate() {
            if let Err(e) = NodeAddr::parse(r) {
                p.push(format!("upstream.replicas[{i}]: {e}"));
            }
        }
        p
    }
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

    #[test]
    fn errors_never_show_the_password() {
        let e = NodeAddr::parse("mysql://app:topsecret@h/").unwrap_err();
        assert!(!e.contains("topsecret"), "{e}");
    }
}
