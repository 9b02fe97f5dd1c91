//! Matching backend responses to the requests that caused them.
//!
//! The proxy sometimes sends requests the client did not (a Parse for a statement this backend
//! lacks, a SET restoring the client's settings, a Close evicting an old statement) and
//! sometimes answers requests itself (a Parse the backend already has). Both only work if
//! every response is attributed to its request, in order, including Postgres' rule that after
//! an error in the extended protocol everything up to the next Sync is skipped.

use std::collections::VecDeque;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::analyze::Analysis;
use crate::wire::msg;
use crate::wire::tag::back;

/// The statements a ReadyForQuery concludes (their effects apply when it arrives).
pub type Group = Vec<Arc<Analysis>>;

#[derive(Debug, Clone)]
pub enum Expect {
    /// ParseComplete; `name` is the proxy-wide statement name to forget if the Parse fails,
    /// `client` the client's name for it when the Parse is the client's own.
    Parse {
        swallow: bool,
        name: Option<Bytes>,
        client: Option<Bytes>,
    },
    /// The client's Parse of a statement this backend already has, answered by the proxy once
    /// every earlier response has gone out; skipped (the statement not created) after an error.
    KnownParse {
        client: Bytes,
        global: Bytes,
    },
    Bind,
    Close {
        swallow: bool,
    },
    /// Describe of a statement; the client's named statement, whose shape the answer tells it.
    DescribeStatement(Option<Arc<super::statements::Statement>>),
    DescribePortal,
    Execute,
    Sync(Group),
    /// A simple query: everything up to ReadyForQuery belongs to it.
    Query {
        swallow: bool,
        group: Group,
    },
    /// The client ended a COPY IN (CopyDone/CopyFail): Syncs it sent before this were ignored
    /// by the server. Not a response; skipped when it reaches the head.
    CopyEnd,
    FunctionCall,
    /// A response the proxy produces itself once every earlier response has gone out.
    Synthetic(&'static [u8]),
    /// The proxy's COMMIT closing an autocommit request it wrapped in BEGIN … COMMIT (to hold
    /// advisory locks): its errors and ReadyForQuery (made idle) stand for the client's own.
    WrapCommit,
    /// The proxy's advisory-lock statement: swallowed like an injected query (errors such as a
    /// lock timeout still reach the client), and observed for lock-wait metrics.
    Lock,
    /// The proxy's advisory-lock statement sent inside an extended-protocol batch (Close,
    /// Close, Parse, Bind, Execute of a named statement and portal, so the client's unnamed
    /// statement and portal survive): swallowed up to its CommandComplete; an error is the
    /// client's, and the backend then skips the rest of the batch as after any error.
    ExtLock,
    /// An error the proxy makes the backend raise at this point of the batch (by describing a
    /// statement that does not exist), so that the backend skips to Sync and aborts the
    /// transaction exactly as Postgres would for the client's message: the error the client
    /// sees is this one.
    Fail(Bytes),
    /// The proxy's own `SELECT pg_current_wal_lsn()` after a commit: swallowed whole, errors
    /// included (the client never asked for it), its one value captured.
    Capture,
}

/// What to do with one backend message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    Swallow,
    /// Forward these bytes instead (an error the proxy provoked, in Postgres' words).
    Replace(Bytes),
}

/// What attributing the backend's messages taught the session, in order. The tracker only
/// records them; the session applies each where it owns the state (statement registries, the
/// lock registry, the commit's effects), so no output is left in a field to be found later.
#[derive(Debug)]
pub enum Event {
    /// A Parse succeeded: the proxy-wide statement is known valid.
    Parsed(Bytes),
    /// A Parse failed or was skipped: drop the proxy-wide statement from the backend's set.
    ParseFailed(Bytes),
    /// A client Parse failed or was skipped: as in Postgres, the client's statement `client`
    /// (proxy-wide `global`) does not exist.
    Unparsed { client: Bytes, global: Bytes },
    /// An advisory-lock statement was answered: whether it took its locks.
    LockAnswered(bool),
    /// The ReadyForQuery just attributed concluded these statements. `wrapped`: it closes an
    /// autocommit request the proxy wrapped in BEGIN … COMMIT, to be forwarded as idle.
    Concluded { group: Group, wrapped: bool },
}

#[derive(Default, Debug)]
pub struct Tracker {
    queue: VecDeque<Expect>,
    /// ReadyForQuery messages still owed by the backend (Syncs and Queries in flight).
    outstanding: usize,
    /// The backend said something that fits no outstanding request.
    confused: bool,
    /// The server is in COPY IN and the client has not ended it: its Syncs get no answer.
    copy_in: bool,
    /// Statements of ignored Syncs waiting for the Sync that will conclude them.
    pending_carry: Group,
    /// The lock statement at the head has failed (its ReadyForQuery is still to come).
    lock_error: bool,
    /// Recorded and not yet taken by the session ([`Tracker::take_events`]).
    events: Vec<Event>,
}

impl Tracker {
    /// The events recorded since the last call, in order. Hand the emptied vector back with
    /// [`Tracker::recycle`] to keep its allocation.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn recycle(&mut self, mut events: Vec<Event>) {
        if self.events.is_empty() {
            events.clear();
            self.events = events;
        }
    }

    /// ReadyForQuery messages still owed by the backend.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The backend said something that fits no outstanding request.
    pub fn is_confused(&self) -> bool {
        self.confused
    }

    /// The server is in COPY IN and the client has not ended it.
    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    pub fn push(&mut self, mut e: Expect) {
        if let Expect::Sync(g) = &mut e {
            g.append(&mut self.pending_carry);
        }
        if matches!(
            e,
            Expect::Sync(_)
                | Expect::Query { .. }
                | Expect::FunctionCall
                | Expect::Capture
                | Expect::WrapCommit
        ) {
            self.outstanding += 1;
        }
        self.queue.push_back(e);
    }

    /// ReadyForQuery messages the client is still waiting for.
    pub fn client_rfqs(&self) -> usize {
        let requests = self
            .queue
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Expect::Sync(_) | Expect::Query { swallow: false, .. } | Expect::FunctionCall
                )
            })
            .count();
        // A wrapping COMMIT at the head: the client's own ReadyForQuery was swallowed, and the
        // COMMIT's stands for it. (Further back, its request's Sync still counts for it.)
        let wrap = matches!(self.queue.front(), Some(Expect::WrapCommit));
        requests + usize::from(wrap)
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether an autocommit request the proxy wrapped in BEGIN … COMMIT is in flight: the
    /// backend is in a transaction the client does not know about.
    pub fn wrapping(&self) -> bool {
        self.queue.iter().any(|e| matches!(e, Expect::WrapCommit))
    }

    /// The answers still expected, oldest first, for logs: each request's kind and, for the
    /// ones that end a request, its statements' normalized text.
    pub fn describe(&self) -> String {
        let texts = |g: &Group| {
            g.iter()
                .map(|a| {
                    let t = &a.normalized;
                    let cut = t.char_indices().nth(160).map_or(t.len(), |(i, _)| i);
                    format!("{:?}", &t[..cut])
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let parts: Vec<String> = self
            .queue
            .iter()
            .map(|e| match e {
                Expect::Sync(g) => format!("Sync[{}]", texts(g)),
                Expect::Query { swallow, group } => {
                    format!(
                        "Query{}[{}]",
                        if *swallow { "(proxy)" } else { "" },
                        texts(group)
                    )
                }
                Expect::Parse { swallow, .. } => {
                    if *swallow {
                        "Parse(proxy)".into()
                    } else {
                        "Parse".into()
                    }
                }
                Expect::KnownParse { .. } => "KnownParse".into(),
                Expect::Close { swallow } => {
                    if *swallow {
                        "Close(proxy)".into()
                    } else {
                        "Close".into()
                    }
                }
                Expect::Synthetic(_) => "Synthetic".into(),
                Expect::Fail(_) => "Fail".into(),
                Expect::DescribeStatement(_) => "DescribeStatement".into(),
                other => format!("{other:?}"),
            })
            .collect();
        format!(
            "[{}] outstanding={} copy_in={}",
            parts.join(", "),
            self.outstanding,
            self.copy_in
        )
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.confused = false;
        self.pending_carry.clear();
        self.outstanding = 0;
        self.events.clear();
        self.copy_in = false;
        self.lock_error = false;
    }

    /// A Sync from the client: answered by the server unless it arrives during COPY IN.
    pub fn push_sync(&mut self, group: Group) {
        if self.copy_in {
            // Ignored by the server; its statements belong to the next Sync that counts.
            self.carry_over(group);
            return;
        }
        self.push(Expect::Sync(group));
    }

    /// CopyDone/CopyFail from the client.
    pub fn client_copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else {
            self.queue.push_back(Expect::CopyEnd);
        }
    }

    fn carry_over(&mut self, group: Group) {
        if group.is_empty() {
            return;
        }
        if let Some(Expect::Sync(g) | Expect::Query { group: g, .. }) = self
            .queue
            .iter_mut()
            .rev()
            .find(|e| matches!(e, Expect::Sync(_) | Expect::Query { .. }))
        {
            g.extend(group);
        }
    }

    /// The server entered COPY IN for the request at the head: Syncs the client sent after it
    /// and before ending the copy will get no answer.
    fn server_copy_in(&mut self) {
        let mut i = 1;
        let mut ended = false;
        let mut dropped: Group = Vec::new();
        while i < self.queue.len() {
            match &self.queue[i] {
                Expect::CopyEnd => {
                    self.queue.remove(i);
                    ended = true;
                    break;
                }
                Expect::Sync(_) => {
                    if let Some(Expect::Sync(g)) = self.queue.remove(i) {
                        dropped.extend(g);
                    }
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                _ => i += 1,
            }
        }
        self.copy_in = !ended;
        // The COPY's own statements are concluded by the first Sync that is answered.
        if !dropped.is_empty() {
            match self
                .queue
                .iter_mut()
                .skip(1)
                .find(|e| matches!(e, Expect::Sync(_)))
            {
                Some(Expect::Sync(g)) => g.extend(dropped),
                _ => self.pending_carry = dropped,
            }
        }
    }

    /// Emits proxy-made responses that are now due (and skips spent markers).
    pub fn drain_synthetic(&mut self, out: &mut BytesMut) {
        loop {
            match self.queue.front() {
                Some(Expect::Synthetic(bytes)) => out.extend_from_slice(bytes),
                Some(Expect::KnownParse { .. }) => out.extend_from_slice(SYNTH_PARSE_COMPLETE),
                Some(Expect::CopyEnd) => {}
                _ => return,
            }
            self.queue.pop_front();
        }
    }

    fn in_swallowed_query(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Expect::Query { swallow: true, .. }) | Some(Expect::Capture)
        )
    }

    /// Whether a capture query is the next request after the one just answered.
    pub fn capture_next(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Capture))
    }

    /// The client's named statement whose description is arriving now, if any.
    pub fn describing(&self) -> Option<&Arc<super::statements::Statement>> {
        match self.queue.front() {
            Some(Expect::DescribeStatement(stmt)) => stmt.as_ref(),
            _ => None,
        }
    }

    /// Whether the message now arriving answers one of the proxy's advisory-lock statements.
    pub fn locking(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Lock | Expect::ExtLock))
    }

    /// Whether the message now arriving answers the proxy's own capture query.
    pub fn capturing(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Capture))
    }

    fn conclude(&mut self, group: Group) {
        self.events.push(Event::Concluded {
            group,
            wrapped: false,
        });
    }

    /// Attributes one backend message (by tag) to the request at the head of the queue.
    pub fn on_backend(&mut self, tag: u8) -> Action {
        use Expect::*;
        let swallow_query = self.in_swallowed_query();
        if self.capturing() {
            if tag == back::READY_FOR_QUERY {
                self.queue.pop_front();
                self.outstanding = self.outstanding.saturating_sub(1);
            }
            return Action::Swallow;
        }
        if matches!(self.queue.front(), Some(Expect::Lock)) {
            return match tag {
                back::ERROR_RESPONSE => {
                    self.lock_error = true;
                    Action::Forward
                }
                back::READY_FOR_QUERY => {
                    self.queue.pop_front();
                    self.outstanding = self.outstanding.saturating_sub(1);
                    let ok = !std::mem::take(&mut self.lock_error);
                    self.events.push(Event::LockAnswered(ok));
                    Action::Swallow
                }
                _ => Action::Swallow,
            };
        }
        if matches!(self.queue.front(), Some(Expect::ExtLock)) {
            match tag {
                back::PARSE_COMPLETE
                | back::BIND_COMPLETE
                | back::CLOSE_COMPLETE
                | back::DATA_ROW => return Action::Swallow,
                back::COMMAND_COMPLETE => {
                    self.queue.pop_front();
                    self.events.push(Event::LockAnswered(true));
                    return Action::Swallow;
                }
                _ => {} // errors skip to Sync below; notices are the client's
            }
        }
        if matches!(self.queue.front(), Some(Expect::WrapCommit)) {
            return match tag {
                back::ERROR_RESPONSE | back::NOTICE_RESPONSE => Action::Forward,
                back::READY_FOR_QUERY => {
                    self.queue.pop_front();
                    self.outstanding = self.outstanding.saturating_sub(1);
                    self.events.push(Event::Concluded {
                        group: Vec::new(),
                        wrapped: true,
                    });
                    Action::Forward
                }
                _ => Action::Swallow,
            };
        }
        let action = match tag {
            // Asynchronous messages belong to no request.
            back::NOTICE_RESPONSE | back::NOTIFICATION => {
                return if swallow_query {
                    Action::Swallow
                } else {
                    Action::Forward
                }
            }
            back::PARAMETER_STATUS => {
                return if swallow_query {
                    Action::Swallow
                } else {
                    Action::Forward
                }
            }
            back::ERROR_RESPONSE => {
                self.copy_in = false;
                let replace = match self.queue.front() {
                    Some(Fail(error)) => Some(error.clone()),
                    _ => None,
                };
                match self.queue.front() {
                    Some(Query { .. }) | Some(FunctionCall) | Some(Sync(_)) => {}
                    Some(_) => self.skip_to_sync(),
                    None => self.confused = true,
                }
                // An injected request that fails still tells the client why its own request
                // cannot proceed, so errors are always forwarded.
                return replace.map_or(Action::Forward, Action::Replace);
            }
            back::READY_FOR_QUERY => match self.queue.pop_front() {
                Some(Query { swallow, group }) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    self.conclude(group);
                    if swallow {
                        Action::Swallow
                    } else {
                        self.client_ready()
                    }
                }
                Some(Sync(group)) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    self.conclude(group);
                    self.client_ready()
                }
                Some(FunctionCall) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    self.conclude(Vec::new());
                    Action::Forward
                }
                other => {
                    self.unexpected_popped(other);
                    Action::Forward
                }
            },
            back::PARSE_COMPLETE => match self.queue.pop_front() {
                Some(Parse { swallow, name, .. }) => {
                    self.events.extend(name.map(Event::Parsed));
                    Self::by(swallow)
                }
                other => self.unexpected_popped(other),
            },
            back::BIND_COMPLETE => match self.queue.pop_front() {
                Some(Bind) => Action::Forward,
                other => self.unexpected_popped(other),
            },
            back::CLOSE_COMPLETE => match self.queue.pop_front() {
                Some(Close { swallow: true }) => Action::Swallow,
                Some(Close { .. }) => Action::Forward,
                other => self.unexpected_popped(other),
            },
            back::PARAMETER_DESCRIPTION => self.expect_front(|e| matches!(e, DescribeStatement(_))),
            back::ROW_DESCRIPTION | back::NO_DATA => {
                self.ends_front(|e| matches!(e, DescribeStatement(_) | DescribePortal))
            }
            back::COMMAND_COMPLETE | back::EMPTY_QUERY | back::PORTAL_SUSPENDED => {
                self.ends_front(|e| matches!(e, Execute))
            }
            // Rows, COPY sub-protocol and function results belong to the request in progress.
            back::DATA_ROW
            | back::COPY_DATA
            | back::COPY_DONE
            | back::COPY_IN_RESPONSE
            | back::COPY_OUT_RESPONSE
            | back::COPY_BOTH_RESPONSE
            | back::FUNCTION_CALL_RESPONSE => match self.queue.front() {
                Some(Query { swallow, .. }) => {
                    let a = Self::by(*swallow);
                    if tag == back::COPY_IN_RESPONSE {
                        self.server_copy_in();
                    }
                    a
                }
                Some(Execute) if tag == back::COPY_IN_RESPONSE => {
                    self.server_copy_in();
                    Action::Forward
                }
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

    /// After an error in the extended protocol the backend ignores everything up to the next
    /// Sync: so do the expectations, noting what that undoes.
    fn skip_to_sync(&mut self) {
        while let Some(e) = self.queue.front() {
            if matches!(e, Expect::Sync(_)) {
                break;
            }
            match self.queue.pop_front() {
                Some(Expect::Parse {
                    name: Some(n),
                    client,
                    ..
                }) => {
                    if let Some(c) = client {
                        self.events.push(Event::Unparsed {
                            client: c,
                            global: n.clone(),
                        });
                    }
                    self.events.push(Event::ParseFailed(n));
                }
                Some(Expect::KnownParse { client, global }) => {
                    self.events.push(Event::Unparsed { client, global })
                }
                Some(Expect::Lock | Expect::ExtLock) => {
                    self.events.push(Event::LockAnswered(false))
                }
                _ => {}
            }
        }
    }

    /// A client's ReadyForQuery; held back when the proxy's wrapping COMMIT still follows.
    fn client_ready(&self) -> Action {
        if matches!(self.queue.front(), Some(Expect::WrapCommit)) {
            Action::Swallow
        } else {
            Action::Forward
        }
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

    /// A message that ends the request at the head of the queue when `ends` says so (taken
    /// off the queue and forwarded); inside a simple Query it is the query's, forwarded or
    /// swallowed with it.
    fn ends_front(&mut self, ends: impl Fn(&Expect) -> bool) -> Action {
        match self.queue.front() {
            Some(e) if ends(e) => {
                self.queue.pop_front();
                Action::Forward
            }
            Some(Expect::Query { swallow, .. }) => Self::by(*swallow),
            other => {
                let o = other.cloned();
                self.unexpected(o)
            }
        }
    }

    /// The backend's message fits no outstanding request: the caller must give the backend up
    /// and answer the client's outstanding requests itself (see `Session::abandon_backend`).
    fn unexpected(&mut self, _got: Option<Expect>) -> Action {
        self.confused = true;
        Action::Forward
    }

    /// Like [`Self::unexpected`] for an expectation already taken off the queue: it is put
    /// back, so that the requests the client still waits for are all counted.
    fn unexpected_popped(&mut self, got: Option<Expect>) -> Action {
        if let Some(e) = got {
            self.queue.push_front(e);
        }
        self.unexpected(None)
    }
}

/// Responses the proxy answers itself.
pub const SYNTH_PARSE_COMPLETE: &[u8] = msg::PARSE_COMPLETE;
pub const SYNTH_CLOSE_COMPLETE: &[u8] = msg::CLOSE_COMPLETE;

#[cfg(test)]
mod tests;
