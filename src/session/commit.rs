//! Commit tracking: what this client wrote and read, and where, so that its next reads see it.

use std::sync::Arc;

use bytes::BytesMut;

use super::caching::{Filling, Invalidation};
use super::effects::TxnState;
use crate::route::{Lsn, Node, Seen};

/// The session's consistency state. It exists because read-your-writes and monotonic reads
/// (and a result cache that never serves what a commit made stale) depend on what this client
/// did before, across requests and backends: the transaction it is in, the commit position of
/// its last write, where its last read ran, and the answers held back until a commit's
/// position is known.
#[derive(Default)]
pub(super) struct CommitTracking {
    pub txn: TxnState,
    /// Commit position of this client's last write (read-your-writes).
    pub last_write_lsn: Lsn,
    /// Where the last request ran and when its backend was given back (monotonic reads).
    pub seen: Option<Seen>,
    /// A request ran on a replica since the session last read the primary after waiting for
    /// the writes in flight (`primary_after_replica`): a write on the primary in between does
    /// not settle it.
    pub replica_unsettled: bool,
    /// This session has sent a request that may run on a replica: its reads on the primary
    /// then carry a position capture, so that its next read need not stay on the primary
    /// (monotonic reads).
    pub reads_replicas: bool,
    /// The request is wrapped in BEGIN … COMMIT: its commit position is captured after COMMIT.
    pub no_predicted_capture: bool,
    /// Responses held back until the commit position of a write is known: no client may hear
    /// of a commit before a read that must see it can be routed accordingly.
    pub held: Option<BytesMut>,
    /// Cached results a committed write made stale, dropped before the commit is acknowledged.
    pub invalidation: Option<Invalidation>,
    /// A cache miss whose answer is being captured.
    pub filling: Option<Filling>,
}

impl CommitTracking {
    /// After a SWITCH: a commit position of the old environment says nothing about the new
    /// one; the write log's floor now stands for it.
    pub fn forget_positions(&mut self) {
        self.last_write_lsn = 0;
        self.seen = None;
    }

    /// A request ran on `node` (its backend given back now): where the next read must not go
    /// back in time from (`route::Seen`).
    pub fn ran_on(&mut self, node: Arc<Node>, replica: bool, position: Option<Lsn>) {
        self.replica_unsettled |= replica;
        self.seen = Some(crate::route::Seen {
            node,
            released: std::time::Instant::now(),
            position,
        });
    }
}
