//! The registry behind `SHOW LOCKS`: which advisory keys each client session waits for or
//! holds. Sessions report as they send their lock statement, hear its answer, and end their
//! transaction; a guard removes a session's entries when it ends by whatever path, so no entry
//! can outlive the transaction that took it. One mutex-protected map: touched a few times per
//! locking transaction and read only by the admin console.

use std::collections::HashMap;
use std::time::SystemTime;

use parking_lot::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    /// The lock statement was sent and has not answered yet.
    Waiting,
    Held,
}

impl LockState {
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Waiting => "waiting",
            LockState::Held => "held",
        }
    }
}

/// One advisory key of one session.
#[derive(Clone, Debug)]
pub struct LockEntry {
    pub client: u64,
    /// The key text (`inventory|1|2`, or `inventory` for a table-wide key).
    pub key: String,
    pub state: LockState,
    /// When the session entered this state.
    pub since: SystemTime,
    /// Process id of the primary backend taking the lock (matches `pg_locks.pid`).
    pub backend_pid: i32,
    /// Which lock statement of the session took it (pipelined requests send several, answered
    /// in order).
    statement: u64,
}

#[derive(Default)]
pub struct LockRegistry {
    by_client: Mutex<HashMap<u64, Vec<LockEntry>>>,
    statements: std::sync::atomic::AtomicU64,
}

impl LockRegistry {
    /// The session sent a statement taking `keys`.
    pub fn waiting(&self, client: u64, keys: &[String], backend_pid: i32) {
        let now = SystemTime::now();
        let statement = self
            .statements
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut map = self.by_client.lock();
        let entries = map.entry(client).or_default();
        entries.extend(keys.iter().map(|k| LockEntry {
            client,
            key: k.clone(),
            state: LockState::Waiting,
            since: now,
            backend_pid,
            statement,
        }));
    }

    /// The session's oldest lock statement in flight answered: its keys are held if it
    /// succeeded, else not taken at all.
    pub fn answered(&self, client: u64, ok: bool) {
        let now = SystemTime::now();
        let mut map = self.by_client.lock();
        let Some(entries) = map.get_mut(&client) else {
            return;
        };
        let Some(oldest) = entries
            .iter()
            .filter(|e| e.state == LockState::Waiting)
            .map(|e| e.statement)
            .min()
        else {
            return;
        };
        let this = |e: &LockEntry| e.state == LockState::Waiting && e.statement == oldest;
        if ok {
            for e in entries.iter_mut().filter(|e| this(e)) {
                e.state = LockState::Held;
                e.since = now;
            }
        } else {
            entries.retain(|e| !this(e));
        }
        if entries.is_empty() {
            map.remove(&client);
        }
    }

    /// The session's transaction ended (or its backend is gone): transaction-level advisory
    /// locks are released with it.
    pub fn release(&self, client: u64) {
        self.by_client.lock().remove(&client);
    }

    /// Every entry, by client then key.
    pub fn snapshot(&self) -> Vec<LockEntry> {
        let mut all: Vec<LockEntry> = self.by_client.lock().values().flatten().cloned().collect();
        all.sort_by(|a, b| (a.client, &a.key).cmp(&(b.client, &b.key)));
        all
    }

    /// Removes the session's entries when it ends, however it ends.
    pub fn guard(&self, client: u64) -> LockGuard<'_> {
        LockGuard {
            registry: self,
            client,
        }
    }
}

pub struct LockGuard<'a> {
    registry: &'a LockRegistry,
    client: u64,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.registry.release(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(r: &LockRegistry) -> Vec<(u64, String, &'static str)> {
        r.snapshot()
            .into_iter()
            .map(|e| (e.client, e.key, e.state.as_str()))
            .collect()
    }

    #[test]
    fn keys_wait_then_are_held_until_the_transaction_ends() {
        let r = LockRegistry::default();
        r.waiting(2, &["inventory|1|1".into()], 10);
        r.waiting(1, &["inventory|1|1".into(), "inventory|2|1".into()], 11);
        r.answered(1, true);
        assert_eq!(
            states(&r),
            vec![
                (1, "inventory|1|1".into(), "held"),
                (1, "inventory|2|1".into(), "held"),
                (2, "inventory|1|1".into(), "waiting"),
            ]
        );
        r.release(1);
        assert_eq!(states(&r), vec![(2, "inventory|1|1".into(), "waiting")]);
    }

    #[test]
    fn a_failed_lock_statement_leaves_only_what_was_held_before() {
        let r = LockRegistry::default();
        r.waiting(1, &["inventory|1|1".into()], 10);
        r.answered(1, true);
        r.waiting(1, &["inventory|2|1".into()], 10);
        r.answered(1, false);
        assert_eq!(states(&r), vec![(1, "inventory|1|1".into(), "held")]);
    }

    #[test]
    fn pipelined_lock_statements_are_answered_in_order() {
        let r = LockRegistry::default();
        r.waiting(1, &["inventory|1|1".into()], 10);
        r.waiting(1, &["inventory|2|1".into()], 10);
        r.answered(1, true);
        assert_eq!(
            states(&r),
            vec![
                (1, "inventory|1|1".into(), "held"),
                (1, "inventory|2|1".into(), "waiting"),
            ]
        );
        r.answered(1, false);
        assert_eq!(states(&r), vec![(1, "inventory|1|1".into(), "held")]);
    }

    #[test]
    fn a_session_that_ends_leaves_nothing_behind() {
        let r = LockRegistry::default();
        {
            let _g = r.guard(7);
            r.waiting(7, &["inventory".into()], 10);
        }
        assert!(r.snapshot().is_empty());
    }
}
