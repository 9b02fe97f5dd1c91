//! Time as a session keeps it: the timeouts in force, the slow-query log's timings, and the
//! watchdog for requests that make no progress.

use super::slowlog::Timings;
use super::timeouts::{Clock, Limits};

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
