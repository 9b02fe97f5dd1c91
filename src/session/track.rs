//! Matching backend responses to the requests that caused them.
//!
//! The proxy sometimes sends requests the client did not (a Parse for a statement this backend
//! lacks, a SET restoring the client's settings, a Close evicting an old statement) and
//! sometimes answers requests itself (a Parse the backend already has). Both only work if
//! every response is attributed to its request, in order, including Postgres' rule that after
//! an error in the extended protocol everything up to the next Sync is skipped.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::wire::msg;

#[derive(Debug, Clone)]
pub enum Expect {
    /// ParseComplete; `name` is the proxy-wide statement name to forget if the Parse fails.
    Parse { swallow: bool, name: Option<Bytes> },
    Bind,
    Close { swallow: bool },
    DescribeStatement,
    DescribePortal,
    Execute,
    Sync,
    /// A simple query: everything up to ReadyForQuery belongs to it.
    Query { swallow: bool },
    FunctionCall,
    /// A response the proxy produces itself once every earlier response has gone out.
    Synthetic(&'static [u8]),
    /// The proxy's own `SELECT pg_current_wal_lsn()` after a commit: swallowed whole, errors
    /// included (the client never asked for it), its one value captured.
    Capture,
}

/// What to do with one backend message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    Swallow,
}

#[derive(Default, Debug)]
pub struct Tracker {
    queue: VecDeque<Expect>,
    /// ReadyForQuery messages still owed by the backend (Syncs and Queries in flight).
    pub outstanding: usize,
    /// Proxy-wide statements whose Parse failed, for the caller to drop from the backend's set.
    pub failed_parses: Vec<Bytes>,
    /// The backend said something that fits no outstanding request.
    pub confused: bool,
}

impl Tracker {
    pub fn push(&mut self, e: Expect) {
        if matches!(e, Expect::Sync | Expect::Query { .. } | Expect::FunctionCall | Expect::Capture) {
            self.outstanding += 1;
        }
        self.queue.push_back(e);
    }

    /// ReadyForQuery messages the client is still waiting for.
    pub fn client_rfqs(&self) -> usize {
        self.queue
            .iter()
            .filter(|e| matches!(e, Expect::Sync | Expect::Query { swallow: false } | Expect::FunctionCall))
            .count()
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.outstanding = 0;
        self.failed_parses.clear();
    }

    /// Emits proxy-made responses that are now due.
    pub fn drain_synthetic(&mut self, out: &mut BytesMut) {
        while let Some(Expect::Synthetic(bytes)) = self.queue.front() {
            out.extend_from_slice(bytes);
            self.queue.pop_front();
        }
    }

    fn in_swallowed_query(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Query { swallow: true }) | Some(Expect::Capture))
    }

    /// Whether the message now arriving answers the proxy's own capture query.
    pub fn capturing(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Capture))
    }

    /// Attributes one backend message (by tag) to the request at the head of the queue.
    pub fn on_backend(&mut self, tag: u8) -> Action {
        use Expect::*;
        let swallow_query = self.in_swallowed_query();
        if self.capturing() {
            if tag == b'Z' {
                self.queue.pop_front();
                self.outstanding = self.outstanding.saturating_sub(1);
            }
            return Action::Swallow;
        }
        let action = match tag {
            // Asynchronous messages belong to no request.
            b'N' | b'A' => return if swallow_query { Action::Swallow } else { Action::Forward },
            b'S' => return if swallow_query { Action::Swallow } else { Action::Forward },
            b'E' => {
                match self.queue.front() {
                    Some(Query { .. }) | Some(FunctionCall) | Some(Sync) => {}
                    Some(_) => {
                        // Extended protocol: the backend now skips to the next Sync.
                        while let Some(e) = self.queue.front() {
                            if matches!(e, Sync) {
                                break;
                            }
                            if let Some(Parse { name: Some(n), .. }) = self.queue.pop_front() {
                                self.failed_parses.push(n);
                            }
                        }
                    }
                    None => self.confused = true,
                }
                // An injected request that fails still tells the client why its own request
                // cannot proceed, so errors are always forwarded.
                return Action::Forward;
            }
            b'Z' => match self.queue.pop_front() {
                Some(Query { swallow }) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    if swallow {
                        Action::Swallow
                    } else {
                        Action::Forward
                    }
                }
                Some(Sync) | Some(FunctionCall) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    Action::Forward
                }
                other => {
                    self.unexpected(other);
                    Action::Forward
                }
            },
            b'1' => match self.queue.pop_front() {
                Some(Parse { swallow: true, .. }) => Action::Swallow,
                Some(Parse { .. }) => Action::Forward,
                other => self.unexpected(other),
            },
            b'2' => match self.queue.pop_front() {
                Some(Bind) => Action::Forward,
                other => self.unexpected(other),
            },
            b'3' => match self.queue.pop_front() {
                Some(Close { swallow: true }) => Action::Swallow,
                Some(Close { .. }) => Action::Forward,
                other => self.unexpected(other),
            },
            b't' => self.expect_front(|e| matches!(e, DescribeStatement)),
            b'T' | b'n' => match self.queue.front() {
                Some(DescribeStatement) | Some(DescribePortal) => {
                    self.queue.pop_front();
                    Action::Forward
                }
                Some(Query { swallow }) => Self::by(*swallow),
                other => {
                    let o = other.cloned();
                    self.unexpected(o)
                }
            },
            b'C' | b'I' | b's' => match self.queue.front() {
                Some(Execute) => {
                    self.queue.pop_front();
                    Action::Forward
                }
                Some(Query { swallow }) => Self::by(*swallow),
                other => {
                    let o = other.cloned();
                    self.unexpected(o)
                }
            },
            // Rows, COPY sub-protocol and function results belong to the request in progress.
            b'D' | b'd' | b'c' | b'G' | b'H' | b'W' | b'V' => match self.queue.front() {
                Some(Query { swallow }) => Self::by(*swallow),
                Some(Execute) | Some(FunctionCall) => Action::Forward,
                other => {
                    let o = other.cloned();
                    self.unexpected(o)
                }
            },
            _ => {
                self.confused = true;
                Action::Forward
            }
        };
        action
    }

    fn by(swallow: bool) -> Action {
        if swallow {
            Action::Swallow
        } else {
            Action::Forward
        }
    }

    fn expect_front(&mut self, ok: impl Fn(&Expect) -> bool) -> Action {
        match self.queue.front() {
            Some(e) if ok(e) => Action::Forward,
            _ => {
                self.confused = true;
                Action::Forward
            }
        }
    }

    fn unexpected(&mut self, got: Option<Expect>) -> Action {
        tracing::warn!(?got, "backend response does not match the outstanding request; the connection will not be reused");
        self.confused = true;
        Action::Forward
    }
}

/// Responses the proxy answers itself.
pub const SYNTH_PARSE_COMPLETE: &[u8] = msg::PARSE_COMPLETE;
pub const SYNTH_CLOSE_COMPLETE: &[u8] = msg::CLOSE_COMPLETE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_parse_complete_is_swallowed_and_client_parse_forwarded() {
        let mut t = Tracker::default();
        t.push(Expect::Parse { swallow: true, name: None });
        t.push(Expect::Bind);
        t.push(Expect::Execute);
        t.push(Expect::Sync);
        assert_eq!(t.on_backend(b'1'), Action::Swallow);
        assert_eq!(t.on_backend(b'2'), Action::Forward);
        assert_eq!(t.on_backend(b'D'), Action::Forward);
        assert_eq!(t.on_backend(b'C'), Action::Forward);
        assert_eq!(t.on_backend(b'Z'), Action::Forward);
        assert!(t.is_idle() && !t.confused && t.outstanding == 0);
    }

    #[test]
    fn synthetic_parse_complete_is_emitted_in_order() {
        let mut t = Tracker::default();
        t.push(Expect::Bind);
        t.push(Expect::Synthetic(SYNTH_PARSE_COMPLETE));
        t.push(Expect::Bind);
        let mut out = BytesMut::new();
        t.drain_synthetic(&mut out);
        assert!(out.is_empty(), "must wait for the first BindComplete");
        assert_eq!(t.on_backend(b'2'), Action::Forward);
        t.drain_synthetic(&mut out);
        assert_eq!(&out[..], SYNTH_PARSE_COMPLETE);
    }

    #[test]
    fn error_skips_to_sync_and_drops_pending_synthetic_answers() {
        let mut t = Tracker::default();
        t.push(Expect::Parse { swallow: false, name: Some(Bytes::from_static(b"g1")) });
        t.push(Expect::Synthetic(SYNTH_PARSE_COMPLETE));
        t.push(Expect::Bind);
        t.push(Expect::Sync);
        assert_eq!(t.on_backend(b'E'), Action::Forward);
        let mut out = BytesMut::new();
        t.drain_synthetic(&mut out);
        assert!(out.is_empty());
        assert_eq!(t.failed_parses, vec![Bytes::from_static(b"g1")]);
        assert_eq!(t.on_backend(b'Z'), Action::Forward);
        assert!(t.is_idle() && !t.confused);
    }

    #[test]
    fn capture_query_is_swallowed_even_when_it_fails() {
        let mut t = Tracker::default();
        t.push(Expect::Capture);
        for tag in [b'T', b'D', b'E', b'Z'] {
            assert_eq!(t.on_backend(tag), Action::Swallow);
        }
        assert!(t.is_idle() && t.outstanding == 0);
    }

    #[test]
    fn injected_query_is_swallowed_whole() {
        let mut t = Tracker::default();
        t.push(Expect::Query { swallow: true });
        t.push(Expect::Query { swallow: false });
        for tag in [b'S', b'C', b'Z'] {
            assert_eq!(t.on_backend(tag), Action::Swallow);
        }
        for tag in [b'T', b'D', b'C', b'Z'] {
            assert_eq!(t.on_backend(tag), Action::Forward);
        }
        assert!(t.is_idle() && !t.confused);
    }
}
