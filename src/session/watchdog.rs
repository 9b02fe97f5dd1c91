//! Time as a session keeps it: the timeouts in force, the slow-query log's timings, and the
//! watchdog for requests that make no progress.

use super::loss::Lost;
use super::relay::Session;
use super::slowlog::Timings;
use super::timeouts::{Clock, Limits};
use super::SessionError;

/// The session's timekeeping. It exists so that everything measured against the clock — when
/// the request in flight last progressed and how often the watchdog reported it, which
/// timeouts apply and where the client stands in them, what the slow-query log times — is
/// owned together.
pub(super) struct Timekeeping {
    /// Client requests in flight, timed for the slow-query log.
    pub timings: Timings,
    /// Last time the client's request in flight made progress (watchdog).
    pub progress_at: tokio::time::Instant,
    /// The watchdog already reported the request in flight this many times.
    pub stuck_reports: u32,
    /// Timeouts in force (`timeouts.rs`), resolved per request.
    pub limits: Limits,
    pub clock: Clock,
}

impl Default for Timekeeping {
    fn default() -> Self {
        Timekeeping {
            timings: Default::default(),
            progress_at: tokio::time::Instant::now(),
            stuck_reports: 0,
            limits: Default::default(),
            clock: Default::default(),
        }
    }
}

impl Timekeeping {
    /// The client's request in flight moved: the watchdog starts over.
    pub fn progressed(&mut self) {
        self.progress_at = tokio::time::Instant::now();
        self.stuck_reports = 0;
    }
}

impl Session {
    /// The watchdog: the request in flight made no progress for `bound` (again). It is logged
    /// with what the proxy still expects, and counted. Then the backend is asked about: a
    /// statement still running there (`active` in `pg_stat_activity`) is left alone, but a
    /// backend waiting for input while the client waits for an answer means the proxy lost
    /// track of the request — the client gets 08P01 and the connection is closed.
    pub(super) async fn on_stuck(
        &mut self,
        bound: std::time::Duration,
    ) -> Result<(), SessionError> {
        self.time.stuck_reports += 1;
        let Some(att) = self.backend.attached.as_ref() else {
            return Ok(());
        };
        let node = att.node.clone();
        let pid = att.server.pid;
        let waited = self.time.progress_at.elapsed();
        crate::metrics::stuck_request();
        let pending: String = self
            .request
            .pending
            .iter()
            .map(|m| char::from(m.frame.tag))
            .collect();
        let pending_sql: Vec<&str> = self
            .request
            .pending
            .iter()
            .filter_map(|m| m.analysis.as_ref().map(|a| a.normalized.as_str()))
            .collect();
        tracing::warn!(
            node = %node.addr.display(),
            pid,
            waited = ?waited,
            bound = ?bound,
            expected = %self.backend.tracker.describe(),
            deferred = self.request.deferred,
            unsynced = self.request.unsynced,
            pending = %pending,
            pending_sql = ?pending_sql,
            "a client request made no progress for longer than pool.stuck_request_timeout"
        );
        let state = match self.pool_for(&node).checkout().await {
            Ok(mut s) => {
                let sql = format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}");
                let r = s.query_column(&sql).await;
                if r.is_ok() {
                    s.release();
                }
                r.ok().map(|rows| rows.into_iter().next().flatten())
            }
            Err(_) => None,
        };
        let state = match state {
            // Unknown (no connection to ask on): keep waiting, ask again after another bound.
            None => return Ok(()),
            Some(None) => "gone".to_string(),
            Some(Some(s)) if s == "active" => return Ok(()), // a statement still running
            Some(Some(s)) => s,
        };
        self.abandon_backend(
            format!("no progress for {waited:?} while the server's backend is {state}"),
            Lost::Track,
        )
        .await
    }
}
