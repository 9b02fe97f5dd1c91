//! Per-user and per-database limits on authenticated clients (`listen.max_clients_per_user`,
//! `listen.max_clients_per_database`): one user or one application's database must not take
//! every `max_clients` slot. Counted only after authentication, so made-up names never create
//! an entry, and an entry goes when its last client does.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::ListenConfig;

/// A client refused because its user or database already has its limit of clients.
#[derive(Debug, thiserror::Error)]
#[error(
    "too many connections for {what} \"{name}\" (pgsidecar listen.max_clients_per_{what} = {max})"
)]
pub struct QuotaExceeded {
    what: &'static str,
    name: String,
    max: usize,
}

#[derive(Default)]
pub struct ClientQuotas {
    counts: Arc<Mutex<HashMap<(Kind, String), usize>>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    User,
    Database,
}

/// Holds one client's place in both counts until dropped.
pub struct QuotaGuard {
    counts: Arc<Mutex<HashMap<(Kind, String), usize>>>,
    keys: Vec<(Kind, String)>,
}

impl ClientQuotas {
    /// Counts a client of `user` on `database`, or says which limit it would exceed.
    pub fn admit(
        &self,
        cfg: &ListenConfig,
        user: &str,
        database: &str,
    ) -> Result<QuotaGuard, QuotaExceeded> {
        let limits = [
            (Kind::User, user, cfg.max_clients_per_user, "user"),
            (
                Kind::Database,
                database,
                cfg.max_clients_per_database,
                "database",
            ),
        ];
        let mut counts = self.counts.lock();
        for (kind, name, max, what) in limits {
            let key = (kind, name.to_string());
            if max > 0 && counts.get(&key).copied().unwrap_or(0) >= max {
                return Err(QuotaExceeded {
                    what,
                    name: name.to_string(),
                    max,
                });
            }
        }
        let mut keys = Vec::new();
        for (kind, name, max, _) in limits {
            if max > 0 {
                let key = (kind, name.to_string());
                *counts.entry(key.clone()).or_default() += 1;
                keys.push(key);
            }
        }
        Ok(QuotaGuard {
            counts: self.counts.clone(),
            keys,
        })
    }

    /// Names currently counted (for tests: entries do not outlive their clients).
    pub fn tracked(&self) -> usize {
        self.counts.lock().len()
    }
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        for key in self.keys.drain(..) {
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_per_database_limits_count_and_release() {
        let cfg = ListenConfig {
            max_clients_per_user: 2,
            max_clients_per_database: 3,
            ..Default::default()
        };
        let q = ClientQuotas::default();
        let a = q.admit(&cfg, "alice", "shop").unwrap();
        let b = q.admit(&cfg, "alice", "shop").unwrap();
        let e = q.admit(&cfg, "alice", "other").err().unwrap().to_string();
        assert!(e.contains("user \"alice\""), "{e}");
        let c = q.admit(&cfg, "bob", "shop").unwrap();
        let e = q.admit(&cfg, "carol", "shop").err().unwrap().to_string();
        assert!(e.contains("database \"shop\""), "{e}");
        drop((a, b, c));
        assert_eq!(q.tracked(), 0, "entries go with their last client");
        let unlimited = ListenConfig::default();
        let _g = q.admit(&unlimited, "x", "y").unwrap();
        assert_eq!(q.tracked(), 0, "nothing tracked without limits");
    }
}
