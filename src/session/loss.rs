//! A backend lost while the client waits (its connection died, or its answers no longer match
//! the requests): a replica read is retried elsewhere; otherwise the client gets an error and
//! never waits forever.

use super::relay::Session;
use super::SessionError;
use crate::config::PoolMode;
use crate::wire::msg::{self, Severity};
use crate::wire::tag::{front, txn};

impl Session {
    /// The backend connection died. A replica read that has not answered yet is retried on the
    /// primary. Otherwise, outside a transaction the client gets an error for what it is waiting
    /// on and carries on (its next request gets a fresh connection); inside one, its transaction
    /// is gone, which only closing the session can say.
    pub(super) async fn server_lost(&mut self, why: String) -> Result<(), SessionError> {
        self.abandon_backend(why, Lost::Connection).await
    }

    /// Gives up the attached backend while the client waits for it (`server_lost`, or the
    /// proxy lost track of its answers): a replica read not yet answered is retried on the
    /// primary; otherwise whatever the client waits for is answered with an error (outside a
    /// transaction; inside one the session ends, its transaction being gone) and the
    /// connection is closed. Never leaves the client waiting.
    pub(super) async fn abandon_backend(
        &mut self,
        why: String,
        lost: Lost,
    ) -> Result<(), SessionError> {
        if lost == Lost::Track {
            crate::metrics::desynced();
            let (node, pid) = self
                .backend
                .attached
                .as_ref()
                .map(|a| (a.node.addr.display().to_string(), a.server.pid))
                .unwrap_or_default();
            tracing::warn!(%node, pid, %why, "lost track of a backend's answers: the client gets 08P01 and the connection is closed");
            if let Some(att) = self.backend.attached.as_mut() {
                att.server.broken = true;
            }
            self.client.sout.clear();
        }
        if let Some(att) = self.backend.attached.as_ref().filter(|a| a.replica) {
            if lost == Lost::Connection {
                att.node.forget_position(); // a restart, probably
            }
        }
        if self.retry_elsewhere(&why).await? {
            return self.flush_server().await;
        }
        let Some(mut att) = self.backend.attached.take() else {
            return Err(match lost {
                Lost::Connection => SessionError::ServerLost(why),
                Lost::Track => SessionError::LostTrack(LOST_TRACK_MESSAGE.into()),
            });
        };
        if lost == Lost::Connection {
            tracing::warn!(node = %att.node.addr.display(), %why, "server connection lost");
            // Its idle siblings probably died with it (a restart): reconnect rather than fail
            // again.
            let pool = att.server.pool().clone();
            tokio::spawn(async move { pool.close_idle().await });
        }
        att.server.broken = true;
        // An autocommit write wrapped for its advisory locks: the client is not in a
        // transaction, so its session goes on (with an error for the write).
        let was_idle = att.server.txn_status == txn::IDLE || self.backend.tracker.wrapping();
        let unasked =
            self.backend.tracker.is_idle() && !self.request.unsynced && self.commit.held.is_none();
        let unsynced = self.request.unsynced;
        drop(att);
        self.backend.cancel.clear();
        // Transaction-level advisory locks died with the backend: the next request on the same
        // keys must take them again on its new backend.
        self.locks
            .forget(&self.ctx.lock_registry, self.identity.client_id);
        // A committed write whose position was being captured is invalidated all the same
        // (position unknown), before its answer can reach the client.
        self.invalidate_now().await;
        // Writes announced for a commit whose outcome is now unknown: invalidated again.
        self.commit.abandon_announced(&self.ctx.cache);
        if !was_idle || self.backend.pinned.is_some() || self.backend.mode == PoolMode::Session {
            return Err(match lost {
                Lost::Connection => SessionError::ServerLost(why),
                Lost::Track => SessionError::LostTrack(LOST_TRACK_MESSAGE.into()),
            });
        }
        if unasked && lost == Lost::Connection {
            // An idle backend closed between requests: the next request gets a fresh one, and
            // an answer to nothing would break the client's protocol state.
            self.backend.fatal_forwarded = false;
            return Ok(());
        }
        // A commit whose position was being captured did happen: its answer, held back until
        // then, is the client's and goes out before anything else.
        if let Some(held) = self.commit.held.take() {
            self.client.cout.extend_from_slice(&held);
        }
        let waiting = self.backend.tracker.client_rfqs();
        self.backend.tracker.clear();
        self.time.timings.clear();
        self.request.group.clear();
        self.request.unsynced = false;
        self.request.error_since_rfq = false;
        self.commit.txn = Default::default();
        self.request.deferred = false;
        if waiting == 0 && !unsynced && lost == Lost::Connection {
            // Only the proxy's own statements were in flight (the commit-position capture
            // behind a write's answer, which has just gone out — a primary stopping right after
            // a commit): the client is owed nothing, and an error now would reach it unasked,
            // which drivers take as a broken connection.
            self.backend.fatal_forwarded = false;
            return Ok(());
        }
        if lost == Lost::Track {
            // Requests the client sent behind the lost one never reached a backend; they are
            // answered with the same error, in order.
            let behind = std::mem::take(&mut self.request.pending);
            let more = behind
                .iter()
                .filter(|m| {
                    matches!(
                        m.frame.tag,
                        front::SYNC | front::QUERY | front::FUNCTION_CALL
                    )
                })
                .count();
            msg::error_response(
                &mut self.client.cout,
                Severity::Error,
                crate::wire::sqlstate::PROTOCOL_VIOLATION,
                LOST_TRACK_MESSAGE,
            );
            for _ in 0..waiting {
                msg::ready_for_query(&mut self.client.cout, txn::IDLE);
            }
            for _ in 0..more {
                msg::error_response(
                    &mut self.client.cout,
                    Severity::Error,
                    crate::wire::sqlstate::PROTOCOL_VIOLATION,
                    LOST_TRACK_MESSAGE,
                );
                msg::ready_for_query(&mut self.client.cout, txn::IDLE);
            }
            self.backend.fatal_forwarded = false;
            return Ok(());
        }
        if !std::mem::take(&mut self.backend.fatal_forwarded) {
            msg::error_response(
                &mut self.client.cout,
                Severity::Error,
                crate::wire::sqlstate::CONNECTION_FAILURE,
                "pgsidecar lost the connection to the database server while running this request; \
             it may or may not have taken effect",
            );
        }
        for _ in 0..waiting {
            msg::ready_for_query(&mut self.client.cout, txn::IDLE);
        }
        Ok(())
    }
}

/// Why a backend is given up while the client waits for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Lost {
    /// The connection died.
    Connection,
    /// Its answers no longer match the client's requests (or it waits for input the proxy
    /// will never send): it cannot be trusted with anything more.
    Track,
}

/// What a client hears when the proxy could not match a backend's answers to its requests.
pub(super) const LOST_TRACK_MESSAGE: &str =
    "pgsidecar lost track of the database server's answers to this \
     request (the connection was closed); it may or may not have taken effect";
