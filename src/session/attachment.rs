//! The client's tie to a backend: which one is lent to it, what the proxy still expects from
//! it, and what happens when it fails.

use std::sync::Arc;

use bytes::BytesMut;

use super::inbound::Msg;
use super::relay::Session;
use super::settings::Settings;
use super::track::Tracker;
use super::SessionError;
use crate::cancel::Slot;
use crate::config::{NodeAddr, PoolMode};
use crate::pool::{Checkout, Pool};
use crate::route::topology::InFlight;
use crate::route::{Lsn, Node};
use crate::wire::tag::txn;

/// The backend lent to this client and what it is doing.
pub(super) struct Attached {
    pub server: Checkout,
    pub node: Arc<Node>,
    pub replica: bool,
    pub _inflight: InFlight,
    /// The request as sent, kept while a replica has not yet answered anything, so a failure
    /// there can be retried elsewhere.
    pub retry: Option<Vec<Msg>>,
    /// A transaction began on this attachment: everything up to its end stays here.
    pub in_txn: bool,
    /// Why the router chose this node (slow-query log).
    pub reason: Arc<str>,
    /// This backend holds the client's unnamed statement: its Parse was sent here since the
    /// last Sync (after which the proxy may inject queries, which destroy it).
    pub unnamed_ready: bool,
    /// Client requests sent on this attachment so far.
    pub requests: u32,
    /// The commit position captured behind request number `.1`: everything that request saw
    /// is at or before it (monotonic reads, `route::Seen`), if no request followed it here.
    pub position: Option<(Lsn, u32)>,
    /// The number of the request the capture in flight follows.
    pub capture_after: u32,
    /// A statement ran here (not only Sync, Close or Describe of a portal): only then does
    /// where the session was say anything about what it saw.
    pub ran_statements: bool,
}

/// The attachment to a backend. It exists so that everything about the borrowed server
/// connection — lending and giving back (pool mode, pinning), matching its answers to the
/// client's requests (the tracker), retrying a replica's failure elsewhere and the loss of the
/// backend — is owned in one place, apart from the client's own state, which outlives any
/// one backend.
pub(super) struct Backend {
    /// The pool mode in force for this session (`pool.mode`).
    pub mode: PoolMode,
    pub attached: Option<Attached>,
    /// What the attached backend still owes the client, in order.
    pub tracker: Tracker,
    /// Why this session keeps its backend for good (session state that cannot move).
    pub pinned: Option<&'static str>,
    /// Where a cancel request for this client finds its backend.
    pub cancel: Arc<Slot>,
    /// This client's pool per node (`pool_for`).
    pub pools_seen: parking_lot::Mutex<Vec<(Arc<NodeAddr>, Arc<Pool>)>>,
    /// A replica read's first answers (ParseComplete, BindComplete, descriptions), held back so
    /// the read can still be retried elsewhere if the replica dies before sending rows.
    pub retry_hold: BytesMut,
    /// A replica refused a read in a way worth retrying elsewhere (its SQLSTATE).
    pub retry_requested: Option<String>,
    /// A backend's FATAL was passed on as an ERROR: the end of stream that follows needs no
    /// second error.
    pub fatal_forwarded: bool,
    /// The backend sent something no outstanding request explains: what, for the log.
    pub lost_track: Option<String>,
}

impl Backend {
    pub fn new(mode: PoolMode, cancel: Arc<Slot>) -> Self {
        Backend {
            mode,
            attached: None,
            tracker: Tracker::default(),
            pinned: None,
            cancel,
            pools_seen: Default::default(),
            retry_hold: BytesMut::new(),
            retry_requested: None,
            fatal_forwarded: false,
            lost_track: None,
        }
    }

    /// No backend, or one that has answered everything, is synced (`unsynced` false) and is
    /// outside a transaction: nothing ties the client to it.
    pub fn settled(&self, unsynced: bool) -> bool {
        match self.attached.as_ref() {
            None => true,
            Some(att) => self.tracker.is_idle() && !unsynced && att.server.txn_status == txn::IDLE,
        }
    }

    pub fn server_mut(&mut self) -> Result<&mut Checkout, SessionError> {
        self.attached
            .as_mut()
            .map(|a| &mut a.server)
            .ok_or_else(|| SessionError::Protocol("internal: no backend attached".into()))
    }

    /// The proxy may inject queries after this point: the unnamed statement must be re-sent.
    pub fn unnamed_spent(&mut self) {
        if let Some(att) = self.attached.as_mut() {
            att.unnamed_ready = false;
        }
    }
}

impl Session {
    /// After the client is gone: a backend with an open transaction is rolled back before it is
    /// reused; one with a request in flight is closed (Postgres then aborts the work).
    pub async fn cleanup(&mut self) {
        self.backend.cancel.clear();
        self.commit.abandon_announced(&self.ctx.cache);
        let Some(att) = self.backend.attached.take() else {
            return;
        };
        let mut server = att.server;
        if !self.backend.tracker.is_idle() || self.request.unsynced {
            tracing::debug!("client left with a request in flight; closing its server connection");
            return; // dropping the checkout closes the connection
        }
        if server.txn_status != txn::IDLE {
            let rolled_back =
                tokio::time::timeout(std::time::Duration::from_secs(2), server.simple("ROLLBACK"))
                    .await;
            if !matches!(rolled_back, Ok(Ok(None))) {
                return;
            }
        }
        if self.backend.mode == PoolMode::Session || self.backend.pinned.is_some() {
            // Nothing of this client's session may reach the next one.
            if !matches!(server.simple("DISCARD ALL").await, Ok(None)) {
                return;
            }
            server.prepared.clear();
            server.settings = Settings::default();
        }
        server.release();
    }
}
