//! The client's request being assembled: extended-protocol messages held back until a Sync
//! (or Flush, or a simple Query) completes it.

use std::sync::Arc;

use super::inbound::Msg;
use crate::analyze::Analysis;

/// The request buffer. Messages are buffered until the request is complete so that the router
/// sees all of its statements before choosing a backend; this owns what has been received and
/// not yet sent, and where the exchange with the backend stands since its last Sync.
#[derive(Default)]
pub(super) struct RequestBuffer {
    /// Messages held back until a Sync/Flush/Query completes the request.
    pub pending: Vec<Msg>,
    /// Bytes of `pending` since it was last empty (`admit_pending`).
    pub pending_bytes: usize,
    /// A request that needs the primary arrived while a replica still answers an earlier one.
    pub deferred: bool,
    /// Statements of the Sync group being forwarded; they travel with its Sync in the tracker.
    pub group: Vec<Arc<Analysis>>,
    /// Extended-protocol messages sent since the last Sync: the backend is not reusable yet.
    pub unsynced: bool,
    /// The backend reported an error since its last ReadyForQuery.
    pub error_since_rfq: bool,
}
