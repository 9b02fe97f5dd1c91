//! What the attached backend answers: attributed to the client's requests by the tracker, sent
//! on (or held for a commit-position capture or a replica retry), and the backend given back
//! once the transaction is over.

use bytes::BytesMut;

use super::relay::Session;
use super::track::{Action, Event};
use super::SessionError;
use crate::backend::MAX_BACKEND_MESSAGE;
use crate::config::PoolMode;
use crate::wire::frame::check;
use crate::wire::msg::{self, Severity};
use crate::wire::tag::{back, txn};

impl Session {
    /// Sends bytes on towards the client: held while a replica read may still be retried and
    /// only its preamble has arrived; otherwise (after any held preamble) to the client.
    pub(super) fn emit(&mut self, bytes: &[u8], tag: u8) {
        let retrying = self
            .backend
            .attached
            .as_ref()
            .is_some_and(|a| a.retry.is_some());
        if retrying
            && matches!(
                tag,
                0 | back::PARSE_COMPLETE
                    | back::BIND_COMPLETE
                    | back::PARAMETER_DESCRIPTION
                    | back::ROW_DESCRIPTION
                    | back::NO_DATA
            )
        {
            self.backend.retry_hold.extend_from_slice(bytes);
            return;
        }
        if let Some(att) = self.backend.attached.as_mut() {
            att.retry = None; // something reaches the client: no retry from here on
        }
        if !self.backend.retry_hold.is_empty() {
            let held = std::mem::take(&mut self.backend.retry_hold);
            self.commit.capture(&held, 0, &self.ctx.cache);
            self.out().extend_from_slice(&held);
        }
        self.commit.capture(bytes, tag, &self.ctx.cache);
        self.time.timings.stats_saw(bytes, tag);
        self.out().extend_from_slice(bytes);
    }

    /// Where forwarded bytes go: held back while a commit position is being captured.
    pub(super) fn out(&mut self) -> &mut BytesMut {
        self.commit.held.as_mut().unwrap_or(&mut self.client.cout)
    }

    /// Attributes and forwards what the backend sent.
    pub(super) fn on_server_data(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(att) = self.backend.attached.as_mut() else {
                return Ok(());
            };
            let server = &mut att.server;
            let total = match check(&server.rbuf, MAX_BACKEND_MESSAGE) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => {
                    return Err(SessionError::ServerLost(format!(
                        "bad message from server: {e}"
                    )))
                }
            };
            let tag = server.rbuf[0];
            if tag == back::ERROR_RESPONSE && att.retry.is_some() {
                let f = msg::ErrorFields::decode(&server.rbuf[5..total]);
                let stale = stale_plan_error(&f);
                // A read on the primary (for want of a replica) is run again on a replica
                // only when the primary is going away.
                let again = if att.replica {
                    super::dispatch::retryable(&f.code)
                } else {
                    super::outage::outage_code(&f.code)
                };
                if att.replica && super::outage::outage_code(&f.code) {
                    att.node.forget_position(); // shutting down: a restart, probably
                }
                if stale || again {
                    if stale {
                        // A plan or type went away (DDL made elsewhere, the proxy's statement
                        // on this backend prepared before it): nothing of the read reached the
                        // client, so it runs again, re-prepared. Also on the primary, when it
                        // took the read for want of a replica.
                        crate::backend::prepared::schema_changed();
                    }
                    self.backend.retry_requested = Some(f.code);
                    return Ok(());
                }
            }
            let capturing = self.backend.tracker.capturing();
            let frame = server.rbuf.split_to(total);
            if tag == back::ERROR_RESPONSE
                && stale_plan_error(&msg::ErrorFields::decode(&frame[5..]))
            {
                // The schema changed behind the proxy's back (DDL not made through it): no
                // statement prepared so far can be trusted. Drivers that re-prepare on this
                // error (asyncpg) then get a fresh Parse rather than the same stale one.
                tracing::info!(
                    "a backend reports a stale plan or type; re-preparing statements before reuse"
                );
                crate::backend::prepared::schema_changed();
            }
            if tag == back::ERROR_RESPONSE && self.backend.tracker.is_idle() {
                // Nobody asked: the server is ending that backend session on its own (shutdown,
                // idle_session_timeout, pg_terminate_backend). A pooled client between
                // transactions loses nothing and must not hear of it: drivers treat an
                // ErrorResponse they did not ask for as a broken connection and close it.
                server.broken = true;
                let f = msg::ErrorFields::decode(&frame[5..]);
                tracing::info!(node = %att.node.addr.display(), code = %f.code, message = %f.message, "idle backend ended by the server");
                if self.backend.mode == PoolMode::Transaction
                    && self.backend.pinned.is_none()
                    && server.txn_status == txn::IDLE
                {
                    continue;
                }
                // The client's session state lived there: it hears what Postgres said.
                self.emit(&frame, tag);
                continue;
            }
            if tag == back::ERROR_RESPONSE
                && self.backend.tracker.locking()
                && msg::ErrorFields::decode(&frame[5..]).code
                    == crate::wire::sqlstate::LOCK_NOT_AVAILABLE
            {
                crate::metrics::lock_timeout();
            }
            let mut ready = None;
            match tag {
                back::READY_FOR_QUERY => {
                    let status = frame.get(5).copied().unwrap_or(txn::IDLE);
                    server.txn_status = status;
                    if !capturing {
                        ready = Some((status, !self.request.error_since_rfq));
                        self.request.error_since_rfq = false;
                    }
                }
                back::ERROR_RESPONSE if !capturing => self.request.error_since_rfq = true,
                back::PARAMETER_STATUS => {
                    if let Some((k, v)) = msg::decode_parameter_status(&frame[5..]) {
                        self.vars.lex.observe(&k, &v);
                        server.set_param(k, v);
                    }
                }
                back::DATA_ROW if capturing => {
                    self.commit.txn.captured = data_row_text(&frame[5..])
                }
                _ => {}
            }
            let mut synthetic = BytesMut::new();
            self.backend.tracker.drain_synthetic(&mut synthetic);
            if !synthetic.is_empty() {
                self.emit(&synthetic, 0);
            }
            if matches!(
                tag,
                back::PARAMETER_DESCRIPTION | back::ROW_DESCRIPTION | back::NO_DATA
            ) {
                if let Some(stmt) = self.backend.tracker.describing() {
                    super::revalidate::told(stmt, tag, &frame[5..]);
                }
            }
            let action = self.backend.tracker.on_backend(tag);
            if self.backend.tracker.is_confused() {
                // Forwarding it (or anything after it) could only mislead the client: the
                // run loop answers what the client waits for with an error instead.
                self.backend.lost_track = Some(format!(
                    "the server sent '{}' where no outstanding request explains it; still expected: {}",
                    char::from(tag),
                    self.backend.tracker.describe()
                ));
                return Ok(());
            }
            let mut concluded = Vec::new();
            let mut wrapped = false;
            let mut events = self.backend.tracker.take_events();
            for event in events.drain(..) {
                match event {
                    Event::Parsed(name) => self.ctx.known_statement(name),
                    Event::ParseFailed(name) => {
                        if let Some(att) = self.backend.attached.as_mut() {
                            att.server.prepared.remove(&name);
                        }
                    }
                    Event::Unparsed { client, global } => {
                        // As in Postgres, a statement whose Parse failed or was skipped does
                        // not exist.
                        if self
                            .stmts
                            .named
                            .get(&client)
                            .is_some_and(|s| s.global == global)
                        {
                            self.stmts.named.remove(&client);
                        }
                    }
                    Event::LockAnswered(ok) => self.lock_statement_answered(ok),
                    Event::Concluded { group, wrapped: w } => {
                        concluded = group;
                        wrapped = w;
                    }
                }
            }
            self.backend.tracker.recycle(events);
            if let Some((status, ok)) = ready {
                // Decided before this ReadyForQuery goes out: it may have to wait for a capture.
                self.on_ready(status, ok, concluded);
            }
            if action != Action::Swallow {
                let mut frame = match action {
                    Action::Replace(bytes) => BytesMut::from(&bytes[..]),
                    _ => frame,
                };
                if tag == back::ERROR_RESPONSE {
                    let f = msg::ErrorFields::decode(&frame[5..]);
                    if f.severity == "FATAL" || f.severity == "PANIC" {
                        // That backend session is over, not the client's: pass it on as an
                        // ERROR, and let the end of stream decide what the client keeps.
                        frame = msg::error_bytes(Severity::Error, &f.code, &f.message).into();
                        self.backend.fatal_forwarded = true;
                        if let Some(att) = self.backend.attached.as_mut() {
                            att.server.broken = true;
                        }
                    }
                }
                if tag == back::READY_FOR_QUERY && wrapped {
                    // The client's autocommit statement ends idle, as it would have without the
                    // proxy's BEGIN … COMMIT around it.
                    if let Some(s) = frame.get_mut(5) {
                        *s = txn::IDLE;
                    }
                }
                self.emit(&frame, tag);
                if tag == back::READY_FOR_QUERY {
                    self.request_answered();
                }
                if ready.is_some() {
                    self.finish_capture();
                }
            }
            if tag == back::READY_FOR_QUERY && capturing {
                self.on_captured();
            }
        }
        let Some(att) = self.backend.attached.as_mut() else {
            return Ok(());
        };
        if self.backend.tracker.is_confused() {
            att.server.broken = true;
        }
        let mut synthetic = BytesMut::new();
        self.backend.tracker.drain_synthetic(&mut synthetic);
        if !synthetic.is_empty() {
            self.emit(&synthetic, 0);
        }
        if !self.backend.retry_hold.is_empty() && self.backend.tracker.outstanding() == 0 {
            // Nothing more comes without the client (a Flush, not a Sync): it must see what
            // it asked for now, and the read can no longer be retried.
            self.emit(&[], b'!');
        }
        Ok(())
    }

    /// The client's requests are all answered and the primary backend is kept only for the
    /// proxy's position capture behind them: the client's next request waits for it to be let
    /// go and is routed afresh (a read after a read on the primary may go to a replica).
    pub(super) fn only_capture_outstanding(&self) -> bool {
        self.backend.mode == PoolMode::Transaction
            && self.backend.pinned.is_none()
            && !self.request.unsynced
            && self.backend.tracker.capture_next()
            && self.backend.tracker.client_rfqs() == 0
            && self
                .backend
                .attached
                .as_ref()
                .is_some_and(|a| !a.replica && a.server.txn_status == txn::IDLE)
    }

    /// Gives the backend back once the transaction is over and nothing is in flight.
    pub(super) fn maybe_release(&mut self) {
        if self.backend.mode != PoolMode::Transaction
            || self.backend.pinned.is_some()
            || self.request.unsynced
            || !self.backend.tracker.is_idle()
        {
            return;
        }
        let Some(att) = self.backend.attached.as_ref() else {
            return;
        };
        if att.server.txn_status != txn::IDLE || !att.server.rbuf.is_empty() {
            return;
        }
        self.backend.cancel.clear();
        if let Some(att) = self.backend.attached.take() {
            if !att.ran_statements {
                att.server.release();
                return;
            }
            let position = att
                .position
                .filter(|&(_, after)| after == att.requests)
                .map(|(lsn, _)| lsn);
            self.commit.ran_on(att.node, att.replica, position);
            att.server.release();
        }
    }
}

impl Session {}

/// An error saying a prepared statement's plan or a type it was planned with went away.
pub(super) fn stale_plan_error(f: &msg::ErrorFields) -> bool {
    (f.code == "XX000" && f.message.starts_with("cache lookup failed for"))
        || (f.code == "0A000"
            && f.message
                .contains("cached plan must not change result type"))
}

/// First column of a DataRow as text.
fn data_row_text(body: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let v = body.get(6..6 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(v).into_owned())
}
