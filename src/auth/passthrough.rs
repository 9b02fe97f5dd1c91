//! Cache for the `passthrough` method: clients send a cleartext password,
//! the caller proves it by logging in to the primary with it, and we
//! remember it so that
//! 1. more backend connections for that user can log in, and
//! 2. the next client with the same password is accepted without a round
//!    trip to the primary (until `ttl` runs out).
//!
//! Why keep the plaintext at all: backends may ask for SCRAM with a salt we
//! have never seen, md5 or cleartext, and only the password answers all of
//! them. It lives in one place, [`BackendLogin`], whose `Debug` is redacted.
//!
//! Why also a salted hash: checking a client compares an HMAC of its
//! password (keyed with a random per-entry key) in constant time, instead of
//! comparing plaintexts, whose lengths and early mismatches leak through
//! timing. It is not a defence against reading memory (the plaintext sits
//! next to it), so a fast keyed hash is enough; no PBKDF2 on the hot path.
//!
//! Why a ttl: the primary is the authority. A password revoked or changed
//! there must stop working here too, so an entry is only trusted for
//! clients for `ttl` after the primary last accepted it.
//!
//! Why keyed by (user, database, server): pg_hba.conf decides per database
//! and per server whether a password is checked at all, so a password proven
//! for one says nothing about another. Only successes are stored; a failed
//! verification forgets the entry (the password may just have been revoked),
//! and a reload forgets everything.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::scram::hmac;

/// What a cache entry is valid for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PassthroughKey {
    pub user: String,
    pub database: String,
    /// The server that checked the password (its address, as configured).
    pub server: String,
}

impl PassthroughKey {
    pub fn new(user: &str, database: &str, server: &str) -> PassthroughKey {
        PassthroughKey {
            user: user.to_owned(),
            database: database.to_owned(),
            server: server.to_owned(),
        }
    }
}

/// What pgsidecar logs in to backends with, for one user.
pub struct BackendLogin {
    user: String,
    password: Vec<u8>,
}

impl BackendLogin {
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The cleartext password (for a backend's cleartext/md5/SCRAM request).
    pub fn password(&self) -> &[u8] {
        &self.password
    }
}

impl fmt::Debug for BackendLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendLogin")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Result of [`PassthroughCache::check`].
#[derive(Debug)]
pub enum PassthroughCheck {
    /// Same password the primary accepted less than `ttl` ago: let the
    /// client in.
    Accepted(Arc<BackendLogin>),
    /// Unknown user, expired entry or a different password: log in to the
    /// primary with it; on success call [`PassthroughCache::remember`], on
    /// failure reject the client (and leave the cache alone, so a wrong
    /// password cannot evict the right one).
    VerifyWithPrimary,
}

struct Entry {
    hash_key: [u8; 32],
    hash: [u8; 32],
    verified_at: Instant,
    login: Arc<BackendLogin>,
}

/// Thread-safe per-user cache of passwords the primary accepted.
/// `Default` uses [`DEFAULT_TTL`].
pub struct PassthroughCache {
    ttl: Duration,
    entries: RwLock<HashMap<PassthroughKey, Entry>>,
}

impl fmt::Debug for PassthroughCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassthroughCache")
            .field("ttl", &self.ttl)
            .field("users", &self.entries.read().len())
            .finish()
    }
}

/// How long a password the primary accepted is trusted for new clients by
/// default: long enough that connection storms cost one primary round trip,
/// short enough that a revoked password stops working soon.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

impl Default for PassthroughCache {
    fn default() -> Self {
        PassthroughCache::new(DEFAULT_TTL)
    }
}

impl PassthroughCache {
    /// `ttl`: how long a password verified by the primary is accepted from
    /// clients without asking the primary again.
    pub fn new(ttl: Duration) -> PassthroughCache {
        PassthroughCache {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// Checks a client's cleartext password (µs; no I/O, no PBKDF2).
    pub fn check(&self, key: &PassthroughKey, password: impl AsRef<[u8]>) -> PassthroughCheck {
        let entries = self.entries.read();
        let Some(entry) = entries.get(key) else {
            return PassthroughCheck::VerifyWithPrimary;
        };
        let same = bool::from(hmac(&entry.hash_key, &[password.as_ref()]).ct_eq(&entry.hash));
        if same && entry.verified_at.elapsed() < self.ttl {
            PassthroughCheck::Accepted(Arc::clone(&entry.login))
        } else {
            PassthroughCheck::VerifyWithPrimary
        }
    }

    /// `check(..)` as a bool: true means accept the client without asking
    /// the primary.
    pub fn is_known(&self, key: &PassthroughKey, password: impl AsRef<[u8]>) -> bool {
        matches!(self.check(key, password), PassthroughCheck::Accepted(_))
    }

    /// Records that the primary just accepted `password` for `user`,
    /// replacing any older password. Returns the login for backends.
    pub fn remember(&self, key: &PassthroughKey, password: impl AsRef<[u8]>) -> Arc<BackendLogin> {
        let password = password.as_ref();
        let user = key.user.as_str();
        let mut hash_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut hash_key);
        let login = Arc::new(BackendLogin {
            user: user.to_owned(),
            password: password.to_vec(),
        });
        let entry = Entry {
            hash_key,
            hash: hmac(&hash_key, &[password]),
            verified_at: Instant::now(),
            login: Arc::clone(&login),
        };
        self.entries.write().insert(key.clone(), entry);
        login
    }

    /// The last password the primary accepted for `user`, to open more
    /// backend connections. Ignores `ttl`: the backend checks it anyway.
    pub fn backend_login(&self, key: &PassthroughKey) -> Option<Arc<BackendLogin>> {
        self.entries
            .read()
            .get(key)
            .map(|entry| Arc::clone(&entry.login))
    }

    /// Drops `key`'s entry; call when the server rejects (or no longer checks) the password.
    pub fn forget(&self, key: &PassthroughKey) {
        self.entries.write().remove(key);
    }

    /// Drops every entry (on reload: the rules or servers that proved them may have changed).
    pub fn clear(&self) {
        self.entries.write().clear();
    }

    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn k(user: &str) -> PassthroughKey {
        PassthroughKey::new(user, "app", "db1:5432")
    }

    fn accepted(check: PassthroughCheck) -> Option<Arc<BackendLogin>> {
        match check {
            PassthroughCheck::Accepted(login) => Some(login),
            PassthroughCheck::VerifyWithPrimary => None,
        }
    }

    #[test]
    fn unknown_user_must_be_verified_with_primary() {
        let cache = PassthroughCache::default();
        assert!(accepted(cache.check(&k("alice"), "pw")).is_none());
        assert!(!cache.is_known(&k("alice"), &b"pw"[..]));
        assert!(cache.backend_login(&k("alice")).is_none());
    }

    #[test]
    fn same_password_is_accepted_without_round_trip() {
        let cache = PassthroughCache::new(HOUR);
        cache.remember(&k("alice"), "pw");
        let login = accepted(cache.check(&k("alice"), "pw")).expect("accepted");
        assert!(cache.is_known(&k("alice"), &b"pw"[..]));
        assert_eq!((login.user(), login.password()), ("alice", &b"pw"[..]));
        assert_eq!(
            cache.backend_login(&k("alice")).expect("login").password(),
            b"pw"
        );
    }

    #[test]
    fn different_password_must_be_reverified_and_does_not_evict() {
        let cache = PassthroughCache::new(HOUR);
        cache.remember(&k("alice"), "pw");
        for other in ["pW", "pw ", "p", ""] {
            assert!(
                accepted(cache.check(&k("alice"), other)).is_none(),
                "{other:?}"
            );
        }
        assert!(
            accepted(cache.check(&k("alice"), "pw")).is_some(),
            "wrong guesses evict nothing"
        );
        assert!(
            accepted(cache.check(&k("bob"), "pw")).is_none(),
            "entries are per user"
        );
    }

    #[test]
    fn newly_verified_password_replaces_the_old_one() {
        let cache = PassthroughCache::new(HOUR);
        let old = cache.remember(&k("alice"), "old");
        cache.remember(&k("alice"), "new");
        assert!(accepted(cache.check(&k("alice"), "old")).is_none());
        assert!(accepted(cache.check(&k("alice"), "new")).is_some());
        assert_eq!(old.password(), b"old", "holders of the old login keep it");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn expired_entry_must_be_reverified_but_still_logs_in_to_backends() {
        let cache = PassthroughCache::new(Duration::ZERO);
        cache.remember(&k("alice"), "pw");
        assert!(accepted(cache.check(&k("alice"), "pw")).is_none());
        assert!(cache.backend_login(&k("alice")).is_some());
        cache.forget(&k("alice"));
        assert!(cache.backend_login(&k("alice")).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn entries_are_per_database_and_server_and_clear_forgets_all() {
        let cache = PassthroughCache::new(HOUR);
        cache.remember(&k("alice"), "pw");
        let other_db = PassthroughKey::new("alice", "other", "db1:5432");
        let other_server = PassthroughKey::new("alice", "app", "db2:5432");
        assert!(accepted(cache.check(&other_db, "pw")).is_none());
        assert!(accepted(cache.check(&other_server, "pw")).is_none());
        assert!(accepted(cache.check(&k("alice"), "pw")).is_some());
        cache.clear();
        assert!(accepted(cache.check(&k("alice"), "pw")).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn debug_output_never_shows_passwords() {
        let cache = PassthroughCache::new(HOUR);
        let login = cache.remember(&k("alice"), "hunter2");
        let dbg = format!(
            "{cache:?} {login:?} {:?}",
            cache.check(&k("alice"), "hunter2")
        );
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("104, 117"),
            "{dbg}"
        );
    }

    #[test]
    fn cache_is_shareable_across_threads() {
        let cache = Arc::new(PassthroughCache::new(HOUR));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    let user = format!("user{}", i % 2);
                    for _ in 0..100 {
                        cache.remember(&k(&user), "pw");
                        assert!(accepted(cache.check(&k(&user), "pw")).is_some());
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("thread");
        }
        assert_eq!(cache.len(), 2);
    }
}
