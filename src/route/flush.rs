//! Makes an asynchronous commit reach the replicas now rather than when the WAL writer gets to
//! it, for reads that wait for it.
//!
//! Why: a commit's position is the primary's WAL insert position ([`super::lsn::COMMIT_POSITION_SQL`]).
//! Under `synchronous_commit = off` the primary acknowledges a commit before writing its
//! record, and streams WAL only once it is flushed: the WAL writer does that every
//! `wal_writer_delay` (200 ms by default). A read that must see such a commit would wait on
//! every replica for up to that long, longer than `max_wait`, and land on the primary. So
//! when a read starts waiting for a position the primary may not have flushed, one background
//! connection to the primary checks its flush position and, only if it is short, commits one
//! transaction under `synchronous_commit = local` that writes a WAL record (an empty
//! transactional `pg_logical_emit_message`, which any role may call and no decoder needs): its
//! commit flushes all WAL before it. (A transaction that only takes an xid is not enough:
//! Postgres commits a transaction that wrote no WAL asynchronously whatever the setting, and
//! there is no SQL function that just flushes, before Postgres 17's `flush` argument of
//! `pg_logical_emit_message`.) The read then waits about one round trip plus replay (2–3 ms
//! in the test lab) instead of the WAL writer's delay.
//!
//! Cost: nothing on the write path; for waiting reads, at most one query in flight per sidecar
//! (requests made meanwhile are served by the next one, which covers all of them), and one
//! xid, ~100 bytes of WAL and a flush only when the WAL was not flushed already (never under `synchronous_commit`
//! on, local or remote_*, whose commits are flushed before they are acknowledged, unless the
//! position is that of other sessions' concurrent WAL). Failures only cost the reads their
//! replica: they wait `max_wait` as before, then go to the primary.
//!
//! This file holds the requests; the task that serves them is `tasks::flush`.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use super::topology::Lsn;

/// Positions that waiting reads want flushed on the active primary.
#[derive(Default)]
pub struct Flusher {
    /// The highest position asked for.
    pub(crate) wanted: AtomicU64,
    /// A position the primary is known to have flushed (0 after a change of primary).
    pub(crate) flushed: AtomicU64,
    pub(crate) wake: Notify,
    /// Flush queries sent, and those that had to commit (for SHOW STATS and the docs' figures).
    pub checks: AtomicU64,
    pub commits: AtomicU64,
    /// The latest fleet join (`crate::cache::Cache::fleet_join`) whose catch-up position is
    /// asked for, and the latest one caught up (`WriteLog::caught_up`).
    pub(crate) catch_up: AtomicU64,
}

impl Flusher {
    /// A read waits for `lsn`: have the primary flush its WAL up to it, if it has not already.
    /// Never blocks.
    pub fn want(&self, lsn: Lsn) {
        if lsn <= self.flushed.load(Ordering::Relaxed) {
            return;
        }
        self.wanted.fetch_max(lsn, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// This sidecar (re)joined the fleet sharing Redis (join number `join`): have the primary's
    /// current commit position recorded for every table, then mark that join caught up. Writes
    /// through other sidecars acknowledged while it was out of the fleet (their messages
    /// possibly missed) all committed before that position. Never blocks.
    pub fn catch_up(&self, join: u64) {
        if self.catch_up.fetch_max(join, Ordering::Relaxed) < join {
            self.wake.notify_one();
        }
    }
}
