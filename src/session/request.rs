//! The client's request being assembled: extended-protocol messages held back until a Sync
//! (or Flush, or a simple Query) completes it.

use std::sync::Arc;

use super::inbound::Msg;
use super::SessionError;
use crate::analyze::Analysis;
use crate::config::ListenConfig;
use crate::wire::tag::front;

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
    /// The backend answered with an error since its last ReadyForQuery: it skips what the
    /// client sends up to its next Sync.
    pub error_since_rfq: bool,
}

impl RequestBuffer {
    /// The statements the pending request runs (a Parse alone prepares; a Bind or a Query
    /// runs), for announcing its writes before it is sent.
    pub fn executed_analyses(&self) -> Vec<Arc<Analysis>> {
        self.pending
            .iter()
            .filter(|m| matches!(m.frame.tag, front::QUERY | front::BIND))
            .filter_map(|m| m.analysis.clone())
            .collect()
    }

    /// The statements of the pending request, each once.
    pub fn pending_analyses(&self) -> Vec<Arc<Analysis>> {
        let mut out: Vec<Arc<Analysis>> = Vec::with_capacity(2);
        for a in self.pending.iter().filter_map(|m| m.analysis.as_ref()) {
            if !out.iter().any(|b| Arc::ptr_eq(a, b)) {
                out.push(a.clone());
            }
        }
        out
    }

    /// Bounds what a client may make the proxy buffer before its Sync/Flush: past
    /// `listen.max_unsynced_bytes` or `max_unsynced_messages` the session ends with 54000
    /// (messages already dropped cannot be answered in order, so it cannot go on).
    pub fn admit_pending(&mut self, m: &Msg, listen: &ListenConfig) -> Result<(), SessionError> {
        if self.pending.is_empty() {
            self.pending_bytes = 0;
        }
        self.pending_bytes += m.frame.bytes.len();
        let (max_bytes, max_msgs) = (listen.max_unsynced_bytes, listen.max_unsynced_messages);
        if self.pending_bytes > max_bytes || self.pending.len() >= max_msgs {
            crate::metrics::security_event("limit_unsynced");
            return Err(SessionError::Limit {
                code: crate::wire::sqlstate::PROGRAM_LIMIT_EXCEEDED,
                message: format!(
                    "too much sent without Sync: {} messages, {} bytes buffered (pgsidecar \
                     listen.max_unsynced_messages = {max_msgs}, max_unsynced_bytes = {max_bytes})",
                    self.pending.len() + 1,
                    self.pending_bytes
                ),
            });
        }
        Ok(())
    }
}
