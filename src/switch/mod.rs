//! Blue-green environments: which named database setup (a primary and its replicas) traffic
//! goes to, and the gate that lets `SWITCH` move it between transactions.
//!
//! Every transaction holds a read side of one `tokio::sync::RwLock` from its first message to
//! its boundary; SWITCH takes the write side. tokio's lock is fair, so once SWITCH waits, new
//! transactions queue behind it while those in flight finish: no transaction is ever cut, and
//! a client that arrives during the switch simply waits and then runs on the new environment.
//! Dropping the pending write (timeout) lets the queued transactions through on the old one.
//!
//! The SWITCH procedure itself (warm, gate, flip, rollback window) needs the whole `Context`
//! and is `tasks::cutover`; this module holds the environments and the gate it works on.

pub mod mirror;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, OwnedRwLockReadGuard, RwLock};

pub use mirror::MirrorConfig;

use crate::route::Topology;

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("environment \"{0}\" is not defined (defined: {1})")]
    Unknown(String, String),
    #[error("another SWITCH is in progress")]
    Busy,
    #[error(
        "SWITCH {to} aborted: {running} transaction(s) still running after {waited:?} \
         (upstream.switch_timeout); traffic stays on \"{from}\" and has resumed"
    )]
    Timeout {
        from: String,
        to: String,
        running: usize,
        waited: Duration,
    },
    #[error(
        "SWITCH {to} aborted: {to}'s primary {node} cannot be used ({error}); traffic stays on \
         \"{from}\""
    )]
    Unreachable {
        from: String,
        to: String,
        node: String,
        error: String,
    },
}

impl crate::error::ClientFacing for SwitchError {
    fn sqlstate(&self) -> &str {
        match self {
            SwitchError::Unknown(..) => crate::wire::sqlstate::UNDEFINED_OBJECT,
            SwitchError::Busy => "55006",
            SwitchError::Timeout { .. } => "55000",
            SwitchError::Unreachable { .. } => "08001",
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            SwitchError::Unknown(..) => "switch_unknown",
            SwitchError::Busy => "switch_busy",
            SwitchError::Timeout { .. } => "switch_timeout",
            SwitchError::Unreachable { .. } => "switch_unreachable",
        }
    }
}

/// An environment switched away from, kept ready for a quick `SWITCH` back.
pub(crate) struct Warm {
    pub(crate) topology: Arc<Topology>,
    pub(crate) until: Instant,
    /// Identifies this stay, so a timer from an earlier one does not close a later one.
    pub(crate) ticket: u64,
}

/// Live state of the environments; the active topology itself is `Context::topology`.
pub struct Environments {
    pub(crate) gate: Arc<RwLock<()>>,
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// Bumped by every switch; sessions compare it to forget positions of the old environment
    /// and to close backends they cannot move.
    pub(crate) epoch: watch::Sender<u64>,
    pub(crate) warm: Mutex<HashMap<String, Warm>>,
    pub(crate) tickets: AtomicU64,
    /// Set once a SWITCH chose the active environment: a reload must not undo that.
    pub(crate) switched: std::sync::atomic::AtomicBool,
    pub(crate) last_pause_micros: AtomicU64,
    /// One SWITCH at a time.
    pub(crate) switching: tokio::sync::Mutex<()>,
}

impl Default for Environments {
    fn default() -> Self {
        Environments {
            gate: Arc::new(RwLock::new(())),
            in_flight: Arc::default(),
            epoch: watch::channel(0).0,
            warm: Mutex::default(),
            tickets: AtomicU64::new(0),
            switched: Default::default(),
            last_pause_micros: AtomicU64::new(0),
            switching: tokio::sync::Mutex::new(()),
        }
    }
}

/// Held by a session while it runs a transaction; SWITCH waits for all of them.
pub struct TxnGuard {
    _read: OwnedRwLockReadGuard<()>,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for TxnGuard {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `SHOW ENVIRONMENTS` prints for one environment that is not the active one.
pub struct WarmInfo {
    pub name: String,
    pub remaining: Duration,
}

impl Environments {
    /// Waits while a SWITCH is in progress, then marks a transaction as running.
    pub async fn enter(&self) -> TxnGuard {
        let read = match self.gate.clone().try_read_owned() {
            Ok(r) => r,
            Err(_) => self.gate.clone().read_owned().await,
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        TxnGuard {
            _read: read,
            in_flight: self.in_flight.clone(),
        }
    }

    /// Held by a reload, so a SWITCH cannot flip the topology while the reload replaces it
    /// (which could send traffic back). None while a SWITCH runs.
    pub fn exclusive(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.switching.try_lock().ok()
    }

    pub fn epoch(&self) -> u64 {
        *self.epoch.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn switched(&self) -> bool {
        self.switched.load(Ordering::Relaxed)
    }

    pub fn last_pause(&self) -> Option<Duration> {
        match self.last_pause_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Environments kept warm now, with the time left before they are closed.
    pub fn warm(&self) -> Vec<WarmInfo> {
        let now = Instant::now();
        let mut v: Vec<WarmInfo> = self
            .warm
            .lock()
            .iter()
            .map(|(name, w)| WarmInfo {
                name: name.clone(),
                remaining: w.until.saturating_duration_since(now),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Closes warm environments for which `keep` says no (a reload changed or removed them).
    pub fn retire_warm_unless(&self, keep: impl Fn(&str, &Topology) -> bool) -> Vec<Arc<Topology>> {
        let mut warm = self.warm.lock();
        let gone: Vec<String> = warm
            .iter()
            .filter(|(n, w)| !keep(n, &w.topology))
            .map(|(n, _)| n.clone())
            .collect();
        gone.iter()
            .filter_map(|n| warm.remove(n))
            .map(|w| {
                w.topology
                    .retired
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                w.topology
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The property SWITCH relies on: while it waits, new transactions queue behind it, and
    /// when it gives up they go on.
    #[tokio::test]
    async fn a_waiting_switch_holds_new_transactions_and_giving_up_releases_them() {
        let envs = Arc::new(Environments::default());
        let running = envs.enter().await;
        assert_eq!(envs.in_flight(), 1);
        let switch = envs.gate.clone();
        let attempt = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(200), switch.write_owned())
                .await
                .is_ok()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = envs.clone();
        let newcomer = tokio::spawn(async move {
            let _g = e.enter().await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !newcomer.is_finished(),
            "a new transaction started during a switch"
        );
        assert!(
            !attempt.await.unwrap(),
            "the switch cut a running transaction"
        );
        tokio::time::timeout(Duration::from_secs(5), newcomer)
            .await
            .expect("an abandoned switch must release held transactions")
            .unwrap();
        drop(running);
        assert_eq!(envs.in_flight(), 0);
        let _switch = envs.gate.clone().try_write_owned().expect("nothing runs");
    }
}
