//! What the client sends: each message decoded once, as far as the proxy must know it
//! (`annotate`), answered locally where the proxy can (`DEALLOCATE`), bounded, buffered until a
//! Sync (or Flush, or a simple Query) and then dispatched, or forwarded behind a request already
//! on its backend.

use std::sync::Arc;

use bytes::Bytes;

use super::relay::Session;
use super::statements::Statement;
use super::SessionError;
use crate::analyze::Analysis;
use crate::wire::frame::Frame;
use crate::wire::msg::{self, Bind, Parse, Severity, Target};
use crate::wire::tag::{front, target, txn};

impl Session {
    /// Decodes what must be known about a message before it is buffered or forwarded.
    pub(super) fn annotate(&mut self, frame: Frame) -> Result<Msg, SessionError> {
        let bad = |what: &str| SessionError::Protocol(format!("malformed {what} message"));
        let mut fail = None;
        let mut stmt = None;
        let analysis = match frame.tag {
            front::QUERY => Some(self.analyze_text(msg::query_text(frame.body()))),
            front::PARSE => {
                let p = Parse::decode(frame.body()).ok_or_else(|| bad("Parse"))?;
                if !p.name.is_empty() && self.stmts.named.get(p.name).is_some() {
                    // Postgres refuses to redefine a statement; the old one stays.
                    fail = Some(msg::error_bytes(
                        Severity::Error,
                        crate::wire::sqlstate::DUPLICATE_PSTATEMENT,
                        &format!(
                            "prepared statement \"{}\" already exists",
                            String::from_utf8_lossy(p.name)
                        ),
                    ));
                    None
                } else if !p.name.is_empty()
                    && self.stmts.named.len()
                        >= self.ctx.config.load().listen.max_prepared_statements
                {
                    crate::metrics::security_event("limit_prepared_statements");
                    fail = Some(msg::error_bytes(
                        Severity::Error,
                        crate::wire::sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                        &format!(
                            "too many prepared statements: {} (pgsidecar \
                             listen.max_prepared_statements); close some first",
                            self.stmts.named.len()
                        ),
                    ));
                    None
                } else {
                    let a = self.analyze_text(p.query);
                    if p.name.is_empty() {
                        self.stmts.unnamed = Some(a.clone());
                        self.stmts.unnamed_parse = Some(frame.bytes.clone());
                    } else {
                        stmt = Some(self.stmts.named.register(
                            &p,
                            self.vars.settings.fingerprint(),
                            a.clone(),
                        ));
                    }
                    Some(a)
                }
            }
            front::BIND => {
                let b = Bind::decode(frame.body()).ok_or_else(|| bad("Bind"))?;
                if b.statement.is_empty() {
                    self.stmts.unnamed.clone()
                } else {
                    stmt = self.stmts.named.get(b.statement).cloned();
                    stmt.as_ref().map(|s| s.analysis.clone())
                }
            }
            front::DESCRIBE | front::CLOSE => {
                let t = Target::decode(frame.body()).ok_or_else(|| bad("Describe/Close"))?;
                if t.kind == target::STATEMENT && !t.name.is_empty() {
                    stmt = if frame.tag == front::CLOSE {
                        // Other clients may share the server-side statement: only the client's
                        // name goes (answered by the proxy when the Close is forwarded).
                        self.stmts.named.remove(t.name)
                    } else {
                        self.stmts.named.get(t.name).cloned()
                    };
                }
                None
            }
            _ => None,
        };
        Ok(Msg {
            frame,
            analysis,
            fail,
            stmt,
        })
    }

    /// SQL `DEALLOCATE` of statements the client prepared through the protocol (psycopg sends
    /// `DEALLOCATE ALL` after a rollback) is answered here: those statements are the client's
    /// names for proxy-wide ones that other clients share, so it must not reach a backend.
    pub(super) fn answer_deallocate(&mut self, m: &Msg) -> bool {
        let Some(a) = m.analysis.as_ref() else {
            return false;
        };
        if m.frame.tag != front::QUERY
            || self.backend.pinned.is_some()
            || a.statements.len() != 1
            || a.statements[0].verb != "DEALLOCATE"
        {
            return false;
        }
        let status = match self.backend.attached.as_ref() {
            None => txn::IDLE,
            Some(att) if self.backend.tracker.is_idle() && !self.request.unsynced => {
                att.server.txn_status
            }
            Some(_) => return false,
        };
        let words: Vec<&str> = a
            .normalized
            .trim_end_matches(';')
            .split_whitespace()
            .collect();
        let target = match words.as_slice() {
            [_, "prepare", name] | [_, name] => name.trim_matches('"'),
            _ => return false,
        };
        if target == "all" {
            self.stmts.named.clear();
            msg::command_complete(&mut self.client.cout, "DEALLOCATE ALL");
        } else if self.stmts.named.get(target.as_bytes()).is_some() {
            self.stmts.named.remove(target.as_bytes());
            msg::command_complete(&mut self.client.cout, "DEALLOCATE");
        } else {
            return false; // a SQL-level PREPAREd name, or unknown: the server answers
        }
        msg::ready_for_query(&mut self.client.cout, status);
        true
    }

    pub(super) async fn on_client_message(&mut self, mut m: Msg) -> Result<(), SessionError> {
        if self.answer_deallocate(&m) {
            return Ok(());
        }
        let tag = m.frame.tag;
        if let Some(att) = self.backend.attached.as_mut().filter(|a| !a.replica) {
            // A read kept to run again on a replica if the primary goes away: what the client
            // sends behind it goes straight to the primary and would not be sent again, so
            // from here on it is not retried.
            att.retry = None;
        }
        let on_replica = self.backend.attached.as_ref().is_some_and(|a| a.replica);
        let after_capture = self.only_capture_outstanding();
        let buffer_groups = on_replica || after_capture || self.locks_configured();
        if self.backend.attached.is_some() && !buffer_groups {
            if tag == front::BIND {
                // A statement described before DDL answers as Postgres would (`revalidate`).
                self.revalidate(std::slice::from_mut(&mut m)).await?;
            }
            if self.backend.attached.is_some() {
                if let Some(a) = m
                    .analysis
                    .clone()
                    .filter(|_| matches!(tag, front::QUERY | front::BIND))
                {
                    self.announce_before_commit(&[a]).await;
                }
                return self.forward(m);
            }
        }
        if self.backend.attached.is_some()
            && matches!(tag, front::COPY_DATA | front::COPY_DONE | front::COPY_FAIL)
        {
            return self.forward(m);
        }
        if is_dispatch(tag) || is_extended(tag) {
            self.request
                .admit_pending(&m, &self.ctx.config.load().listen)?;
            self.request.pending.push(m);
            if is_dispatch(tag) {
                if on_replica {
                    // Pipelined behind a read on a replica: it may follow only if it is a read too.
                    if self.replica_can_take_pending() {
                        // A statement described before DDL is checked first, once the reads
                        // ahead of it are answered (`revalidate`).
                        self.revalidate_pending().await?;
                        if self.backend.attached.is_none() {
                            return self.dispatch().await; // the backend was lost meanwhile
                        }
                        for m in std::mem::take(&mut self.request.pending) {
                            // While the read ahead of it may still be retried elsewhere, this
                            // one goes with it: a retry re-sends everything the replica had
                            // been given, or the client would wait for answers never asked.
                            if let Some(copy) = self
                                .backend
                                .attached
                                .as_mut()
                                .and_then(|a| a.retry.as_mut())
                            {
                                copy.push(m.clone());
                            }
                            self.forward(m)?;
                        }
                    } else {
                        self.request.deferred = true;
                    }
                } else if after_capture {
                    // Routed afresh once the capture has answered and the backend is let go.
                    self.request.deferred = true;
                } else if self.backend.attached.is_some() {
                    self.revalidate_pending().await?;
                    if self.backend.attached.is_some() {
                        let analyses = self.request.executed_analyses();
                        self.announce_before_commit(&analyses).await;
                        self.forward_group()?;
                    } else {
                        self.dispatch().await?; // the backend was lost meanwhile
                    }
                } else {
                    self.dispatch().await?;
                }
            }
            return Ok(());
        }
        if matches!(tag, front::COPY_DATA | front::COPY_DONE | front::COPY_FAIL) {
            if self.backend.attached.is_some() {
                return self.forward(m);
            }
            // COPY messages outside COPY are ignored, as Postgres does after an error.
            return Ok(());
        }
        Err(SessionError::Protocol(format!(
            "invalid frontend message type {tag}"
        )))
    }
}

/// A client message with what the analyser made of the statement it runs, if anything.
#[derive(Clone)]
pub(super) struct Msg {
    pub frame: Frame,
    pub analysis: Option<Arc<Analysis>>,
    /// The error Postgres would raise for this message (ErrorResponse bytes), which the proxy
    /// knows before any backend sees it (a Parse of a name already in use).
    pub fail: Option<Bytes>,
    /// The client's named statement this message defines, uses or closes, resolved in the
    /// client's order (a batch may close a name and parse it again before any of it is sent).
    pub stmt: Option<Arc<Statement>>,
}

/// Messages that complete a request and let the proxy choose a backend.
pub(super) fn is_dispatch(tag: u8) -> bool {
    matches!(
        tag,
        front::SYNC | front::FLUSH | front::QUERY | front::FUNCTION_CALL
    )
}

/// The extended-protocol messages buffered until one of [`is_dispatch`].
pub(super) fn is_extended(tag: u8) -> bool {
    matches!(
        tag,
        front::PARSE | front::BIND | front::DESCRIBE | front::EXECUTE | front::CLOSE
    )
}
