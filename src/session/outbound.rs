//! What goes to the attached backend: client messages with their statement names rewritten to
//! the proxy-wide ones (`backend::prepared`), the Parses a backend lacks, and the expectations
//! the tracker matches its answers against.

use std::sync::Arc;

use bytes::Bytes;

use super::inbound::Msg;
use super::relay::Session;
use super::statements::Statement;
use super::track::{Expect, SYNTH_CLOSE_COMPLETE};
use super::SessionError;
use crate::wire::msg::{self, Bind, Parse, Severity, Target};
use crate::wire::tag::{front, target};

impl Session {
    /// Forwards one client message to the attached backend, rewriting statement names.
    pub(super) fn forward(&mut self, m: Msg) -> Result<(), SessionError> {
        let Msg {
            frame: f,
            analysis,
            fail,
            stmt,
        } = m;
        let bad = |what: &str| SessionError::Protocol(format!("malformed {what} message"));
        if let Some(error) = fail {
            self.provoke(error);
            return Ok(());
        }
        match f.tag {
            front::PARSE => {
                let p = Parse::decode(f.body()).ok_or_else(|| bad("Parse"))?;
                self.request.unsynced = true;
                if p.name.is_empty() {
                    if let Some(att) = self.backend.attached.as_mut() {
                        att.unnamed_ready = true;
                    }
                }
                match stmt {
                    None => {
                        self.client.sout.extend_from_slice(&f.bytes);
                        self.backend.tracker.push(Expect::Parse {
                            swallow: false,
                            name: None,
                            client: None,
                        });
                    }
                    Some(stmt) => {
                        self.close_if_stale(&stmt.global)?;
                        let server = self.backend.server_mut()?;
                        if server.prepared.contains(&stmt.global) {
                            server.prepared.touch(&stmt.global);
                            self.backend.tracker.push(Expect::KnownParse {
                                client: Bytes::copy_from_slice(p.name),
                                global: stmt.global.clone(),
                            });
                        } else {
                            self.send_parse(&stmt.global, &stmt.parse, Some(p.name))?;
                        }
                    }
                }
            }
            front::BIND => {
                let b = Bind::decode(f.body()).ok_or_else(|| bad("Bind"))?;
                self.request.unsynced = true;
                if b.statement.is_empty() && !self.ensure_unnamed()? {
                    return Ok(());
                }
                match self.ensure_prepared(stmt)? {
                    Some(global) => b.encode_renamed(&mut self.client.sout, &global),
                    None => self.client.sout.extend_from_slice(&f.bytes),
                }
                self.backend.tracker.push(Expect::Bind);
                self.request.group.extend(analysis);
            }
            front::DESCRIBE => {
                let t = Target::decode(f.body()).ok_or_else(|| bad("Describe"))?;
                self.request.unsynced = true;
                if t.kind == target::STATEMENT {
                    if t.name.is_empty() && !self.ensure_unnamed()? {
                        return Ok(());
                    }
                    match self.ensure_prepared(stmt.clone())? {
                        Some(global) => Target::encode(
                            front::DESCRIBE,
                            target::STATEMENT,
                            &global,
                            &mut self.client.sout,
                        ),
                        None => self.client.sout.extend_from_slice(&f.bytes),
                    }
                    self.backend.tracker.push(Expect::DescribeStatement(stmt));
                } else {
                    self.client.sout.extend_from_slice(&f.bytes);
                    self.backend.tracker.push(Expect::DescribePortal);
                }
            }
            front::CLOSE => {
                let t = Target::decode(f.body()).ok_or_else(|| bad("Close"))?;
                self.request.unsynced = true;
                if stmt.is_some() {
                    // Its name was forgotten in `annotate`; the server-side statement stays.
                    self.backend
                        .tracker
                        .push(Expect::Synthetic(SYNTH_CLOSE_COMPLETE));
                } else {
                    if t.kind == target::STATEMENT && t.name.is_empty() {
                        self.stmts.unnamed_parse = None;
                    }
                    self.client.sout.extend_from_slice(&f.bytes);
                    self.backend.tracker.push(Expect::Close { swallow: false });
                }
            }
            front::EXECUTE => {
                self.request.unsynced = true;
                self.client.sout.extend_from_slice(&f.bytes);
                self.backend.tracker.push(Expect::Execute);
            }
            front::FLUSH => self.client.sout.extend_from_slice(&f.bytes),
            front::SYNC => {
                self.time.clock.request_sent();
                self.request.unsynced = false;
                self.backend.unnamed_spent();
                self.client.sout.extend_from_slice(&f.bytes);
                let group = std::mem::take(&mut self.request.group);
                self.time_request(&group);
                let capture = !self.backend.tracker.in_copy_in() && self.wants_capture(&group);
                self.backend.tracker.push_sync(group);
                if capture {
                    self.send_capture();
                }
            }
            front::QUERY => {
                self.time.clock.request_sent();
                // A simple query destroys the unnamed statement, for the client as in Postgres.
                self.stmts.unnamed_parse = None;
                self.backend.unnamed_spent();
                self.client.sout.extend_from_slice(&f.bytes);
                let group: Vec<_> = analysis.into_iter().collect();
                self.time_request(&group);
                let capture = self.wants_capture(&group);
                self.backend.tracker.push(Expect::Query {
                    swallow: false,
                    group,
                });
                if capture {
                    self.send_capture();
                }
            }
            front::FUNCTION_CALL => {
                self.time.clock.request_sent();
                self.backend.unnamed_spent();
                self.client.sout.extend_from_slice(&f.bytes);
                self.time_request(&[]);
                self.backend.tracker.push(Expect::FunctionCall);
            }
            front::COPY_DATA => self.client.sout.extend_from_slice(&f.bytes),
            front::COPY_DONE | front::COPY_FAIL => {
                self.client.sout.extend_from_slice(&f.bytes);
                self.backend.tracker.client_copy_end();
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "invalid frontend message type {other}"
                )))
            }
        }
        Ok(())
    }

    /// The backend-side name for a client's statement, preparing it there first if needed.
    /// `None` for the unnamed statement or a name the client never prepared (the backend then
    /// reports the error in Postgres' own words).
    pub(super) fn ensure_prepared(
        &mut self,
        stmt: Option<Arc<Statement>>,
    ) -> Result<Option<Bytes>, SessionError> {
        let Some(stmt) = stmt else {
            return Ok(None);
        };
        self.close_if_stale(&stmt.global)?;
        let server = self.backend.server_mut()?;
        if server.prepared.contains(&stmt.global) {
            server.prepared.touch(&stmt.global);
        } else {
            self.send_parse(&stmt.global, &stmt.parse, None)?;
        }
        Ok(Some(stmt.global.clone()))
    }

    /// A statement this backend parsed before the last schema change (DDL through the sidecar,
    /// or a stale-plan error) may depend on objects that are gone: it is closed here (answer
    /// swallowed) so that the caller parses it again, as a client reconnecting would.
    pub(super) fn close_if_stale(&mut self, global: &Bytes) -> Result<(), SessionError> {
        let server = self.backend.server_mut()?;
        if !server.prepared.stale(global) {
            return Ok(());
        }
        server.prepared.remove(global);
        tracing::debug!(statement = %String::from_utf8_lossy(global), "re-preparing a statement parsed before a schema change");
        Target::encode(
            front::CLOSE,
            target::STATEMENT,
            global,
            &mut self.client.sout,
        );
        self.backend.tracker.push(Expect::Close { swallow: true });
        Ok(())
    }

    /// Makes sure the backend holds the client's unnamed statement before a Bind or Describe
    /// of it, re-sending its Parse (answer swallowed) to a backend that may not. False when the
    /// client has no unnamed statement: the backend is then made to fail as Postgres would
    /// (rather than run whatever unnamed statement another client left there).
    pub(super) fn ensure_unnamed(&mut self) -> Result<bool, SessionError> {
        if self
            .backend
            .attached
            .as_ref()
            .is_some_and(|a| a.unnamed_ready)
        {
            return Ok(true);
        }
        let Some(parse) = self.stmts.unnamed_parse.clone() else {
            self.provoke(msg::error_bytes(
                Severity::Error,
                crate::wire::sqlstate::UNDEFINED_PSTATEMENT,
                "unnamed prepared statement does not exist",
            ));
            return Ok(false);
        };
        self.client.sout.extend_from_slice(&parse);
        self.backend.tracker.push(Expect::Parse {
            swallow: true,
            name: None,
            client: None,
        });
        if let Some(att) = self.backend.attached.as_mut() {
            att.unnamed_ready = true;
        }
        Ok(true)
    }

    /// Makes the backend fail at this point of the batch, the client seeing `error`: the backend
    /// then skips to Sync and aborts a transaction exactly as for the client's own message.
    pub(super) fn provoke(&mut self, error: Bytes) {
        self.request.unsynced = true;
        Target::encode(
            front::DESCRIBE,
            target::STATEMENT,
            b"pgsc_no_such_statement",
            &mut self.client.sout,
        );
        self.backend.tracker.push(Expect::Fail(error));
    }

    /// Sends a Parse for a proxy-wide statement, evicting the least recently used one when the
    /// backend holds too many.
    /// `client` names the client's own Parse (answered to it), else the Parse is the proxy's.
    pub(super) fn send_parse(
        &mut self,
        global: &Bytes,
        parse: &Bytes,
        client: Option<&[u8]>,
    ) -> Result<(), SessionError> {
        let cap = self.ctx.config.load().pool.max_prepared_per_backend;
        let server = self.backend.server_mut()?;
        let tick = server.prepared.touch(global);
        let mut victims = Vec::new();
        while let Some(victim) = server.prepared.evict_candidate(cap, tick) {
            victims.push(victim);
        }
        for victim in victims {
            Target::encode(
                front::CLOSE,
                target::STATEMENT,
                &victim,
                &mut self.client.sout,
            );
            self.backend.tracker.push(Expect::Close { swallow: true });
        }
        self.client.sout.extend_from_slice(parse);
        self.backend.tracker.push(Expect::Parse {
            swallow: client.is_none(),
            name: Some(global.clone()),
            client: client.map(Bytes::copy_from_slice),
        });
        Ok(())
    }
}
