//! Upstream host names, resolved at every connect with the last good answer kept per host:
//! a DNS outage (resolver down, SERVFAIL, a flapping internal zone) must not cut the sidecar
//! off from a database whose address has not changed. A lookup that fails, or answers
//! nothing, falls back to the addresses the last successful one returned, with a warning and
//! `pgsidecar_dns_fallbacks_total`; without any earlier success the failure is the caller's.
//!
//! Addresses are not cached beyond that: each connect asks the resolver first, so a host that
//! moves (failover by DNS) is followed as soon as DNS says so.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;

use parking_lot::Mutex;

/// Last good addresses, by `host:port`.
#[derive(Default)]
pub struct LastGood {
    by_host: Mutex<HashMap<(String, u16), Vec<SocketAddr>>>,
}

static PROCESS: LazyLock<LastGood> = LazyLock::new(LastGood::default);

/// Addresses for `host:port` through the system resolver, or the last good ones when it fails.
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    PROCESS
        .resolve_with(host, port, |h, p| async move {
            tokio::net::lookup_host((h.as_str(), p))
                .await
                .map(|it| it.collect())
        })
        .await
}

impl LastGood {
    /// `lookup` is the resolver (injected so the fallback can be tested without DNS).
    pub async fn resolve_with<F, Fut>(
        &self,
        host: &str,
        port: u16,
        lookup: F,
    ) -> io::Result<Vec<SocketAddr>>
    where
        F: FnOnce(String, u16) -> Fut,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let key = (host.to_string(), port);
        let error = match lookup(host.to_string(), port).await {
            Ok(addrs) if !addrs.is_empty() => {
                self.by_host.lock().insert(key, addrs.clone());
                return Ok(addrs);
            }
            Ok(_) => io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            Err(e) => e,
        };
        let last = self.by_host.lock().get(&key).cloned();
        match last {
            Some(addrs) => {
                tracing::warn!(%host, port, error = %error, addresses = ?addrs,
                    "resolving upstream host failed; using its last good addresses");
                crate::metrics::dns_fallback(host);
                Ok(addrs)
            }
            None => Err(io::Error::new(
                error.kind(),
                format!("resolving {host}: {error}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    async fn answer(r: io::Result<Vec<SocketAddr>>) -> io::Result<Vec<SocketAddr>> {
        r
    }

    #[tokio::test]
    async fn a_failed_lookup_uses_the_last_good_addresses() {
        let cache = LastGood::default();
        let good = vec![addr("10.0.0.5:5432"), addr("10.0.0.6:5432")];
        let got = cache
            .resolve_with("db.internal", 5432, |_, _| answer(Ok(good.clone())))
            .await
            .unwrap();
        assert_eq!(got, good);
        let failed = cache
            .resolve_with("db.internal", 5432, |_, _| {
                answer(Err(io::Error::other("SERVFAIL")))
            })
            .await
            .unwrap();
        assert_eq!(failed, good);
        let empty = cache
            .resolve_with("db.internal", 5432, |_, _| answer(Ok(Vec::new())))
            .await
            .unwrap();
        assert_eq!(empty, good);
    }

    #[tokio::test]
    async fn a_new_answer_replaces_the_last_good_one() {
        let cache = LastGood::default();
        let old = vec![addr("10.0.0.5:5432")];
        let new = vec![addr("10.0.0.9:5432")];
        cache
            .resolve_with("db", 5432, |_, _| answer(Ok(old)))
            .await
            .unwrap();
        cache
            .resolve_with("db", 5432, |_, _| answer(Ok(new.clone())))
            .await
            .unwrap();
        let got = cache
            .resolve_with("db", 5432, |_, _| answer(Err(io::Error::other("down"))))
            .await
            .unwrap();
        assert_eq!(got, new);
    }

    #[tokio::test]
    async fn without_an_earlier_success_the_failure_is_reported() {
        let cache = LastGood::default();
        let err = cache
            .resolve_with("nowhere", 5432, |_, _| {
                answer(Err(io::Error::other("NXDOMAIN")))
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("resolving nowhere"), "{err}");
        // Another port of the same host has its own entry.
        cache
            .resolve_with("db", 5432, |_, _| answer(Ok(vec![addr("10.0.0.5:5432")])))
            .await
            .unwrap();
        assert!(cache
            .resolve_with("db", 5433, |_, _| answer(Err(io::Error::other("down"))))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn ip_literals_need_no_lookup() {
        let cache = LastGood::default();
        let got = cache
            .resolve_with("::1", 5432, |_, _| {
                answer(Err(io::Error::other("an IP literal must not be looked up")))
            })
            .await
            .unwrap();
        assert_eq!(got, vec![addr("[::1]:5432")]);
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_system_resolver() {
        let got = resolve("localhost", 5432).await.unwrap();
        assert!(got.iter().all(|a| a.ip().is_loopback()), "{got:?}");
    }
}
