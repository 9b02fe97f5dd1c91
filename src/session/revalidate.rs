//! A client's prepared statement after DDL answers as Postgres would answer it.
//!
//! Postgres fixes a prepared statement's parameter types and result type when it is prepared
//! (`plancache.c`): after DDL it plans the statement again, but a new result type is refused
//! with 0A000 "cached plan must not change result type", and the parameter types it reported
//! stay bound (a type dropped since: XX000 `cache lookup failed for type`). Drivers rely on that
//! error: asyncpg (and SQLAlchemy on top) clears its statement and type caches on it and
//! prepares again.
//!
//! The proxy parses statements again after DDL (`backend::prepared`: proxy-wide statements
//! outlive the DDL on pooled backends), which would silently run the new plan. So for a client
//! statement whose shape the client was told (Describe: ParameterDescription, RowDescription)
//! before the last schema change, its first use after it (Bind) first asks the backend, in a
//! round trip of the proxy's own (Parse with the told parameter types, Describe, Sync), what
//! the statement is now: an error is the client's error at its Bind (Postgres' own words); a
//! different result shape is answered with 0A000 at its Bind, as Postgres does, on every use
//! until the client prepares it again; the same shape makes the client's name point at the
//! statement with the told parameter types, valid as of now. Statements never described
//! (psycopg's) are re-parsed silently, as before: the proxy does not know what the client
//! was told.
//!
//! The round trip is made only where nothing of the client's batch has reached the backend
//! yet, after the answers to the client's earlier batches; otherwise (a batch already partly
//! sent, a COPY, a failed transaction) the statement is re-parsed silently.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::inbound::Msg;
use super::relay::Session;
use super::request::RequestBuffer;
use super::statements::Statement;
use super::SessionError;
use crate::backend::prepared::current_epoch;
use crate::wire::msg::{self, Target};
use crate::wire::sqlstate;
use crate::wire::tag::{back, field, front, target, txn};

/// What a statement's first use after a schema change becomes.
#[derive(Clone)]
enum Verdict {
    /// Same shape: use this statement (the told parameter types fixed).
    Same(Arc<Statement>),
    /// The client's Bind fails with this ErrorResponse.
    Fail(Bytes),
    /// Not checked (unusable statement text): re-parsed silently.
    Skip,
}

/// Records what the client is told about its statement: a ParameterDescription (`t`), a
/// RowDescription (`T`) or NoData (`n`) answering its Describe.
pub(super) fn told(stmt: &Statement, tag: u8, body: &[u8]) {
    let mut shape = stmt.shape.lock();
    if tag == back::PARAMETER_DESCRIPTION {
        shape.params = Some(Bytes::copy_from_slice(body));
    } else {
        shape.rows = Some(row_shape(tag, body));
    }
}

/// The part of a RowDescription (`T`; NoData `n`) that Postgres' check compares: the number of
/// columns and each one's name, type and type modifier. Not the table and column a value
/// comes from: a table dropped and created again alike gives the same result type.
pub(super) fn row_shape(tag: u8, body: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[tag]);
    if tag == back::ROW_DESCRIPTION && !hash_fields(&mut h, body) {
        h.update(body); // malformed: compared whole
    }
    h.digest()
}

fn hash_fields(h: &mut xxhash_rust::xxh3::Xxh3, body: &[u8]) -> bool {
    let Some((count, mut rest)) = body.split_first_chunk::<2>() else {
        return false;
    };
    h.update(count);
    for _ in 0..u16::from_be_bytes(*count) {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return false;
        };
        // name \0, table oid (4), column (2), type oid (4), type length (2), modifier (4), format (2)
        let Some(fixed) = rest.get(end + 1..end + 19) else {
            return false;
        };
        h.update(&rest[..=end]);
        h.update(&fixed[6..10]);
        h.update(&fixed[12..16]);
        rest = &rest[end + 19..];
    }
    true
}

/// A Bind (or Describe) of a client statement described before the last schema change.
fn needs_check(m: &Msg, now: u64) -> bool {
    matches!(m.frame.tag, front::BIND | front::DESCRIBE)
        && m.fail.is_none()
        && m.stmt.as_ref().is_some_and(|s| {
            let shape = s.shape.lock();
            shape.epoch < now && (shape.params.is_some() || shape.rows.is_some())
        })
}

impl RequestBuffer {
    /// Whether some message of the pending request uses a statement to check first.
    pub fn needs_revalidation(&self) -> bool {
        let now = current_epoch();
        self.pending.iter().any(|m| needs_check(m, now))
    }
}

impl Session {
    /// [`Self::revalidate`] for the pending request, before any of it is forwarded.
    pub(super) async fn revalidate_pending(&mut self) -> Result<(), SessionError> {
        if !self.request.needs_revalidation() {
            return Ok(());
        }
        let mut msgs = std::mem::take(&mut self.request.pending);
        let r = self.revalidate(&mut msgs).await;
        msgs.append(&mut self.request.pending);
        self.request.pending = msgs;
        r
    }

    /// Checks the statements `msgs` use that were described before the last schema change,
    /// on the attached backend, and rewrites the messages accordingly (see the module doc).
    /// May lose the backend (`self.backend.attached` is then `None` and nothing was sent).
    pub(super) async fn revalidate(&mut self, msgs: &mut [Msg]) -> Result<(), SessionError> {
        let now = current_epoch();
        if !msgs.iter().any(|m| needs_check(m, now)) || !self.ready_to_revalidate().await? {
            return Ok(());
        }
        let mut done: Vec<(Arc<Statement>, Verdict)> = Vec::new();
        for m in msgs.iter_mut() {
            let Some(stmt) = m.stmt.clone() else {
                continue;
            };
            let known = done.iter().find(|(s, _)| Arc::ptr_eq(s, &stmt));
            let verdict = match known {
                Some((_, v)) => v.clone(),
                None if needs_check(m, now) => {
                    let v = self.check(&stmt).await?;
                    if self.backend.attached.is_none() {
                        return Ok(());
                    }
                    done.push((stmt, v.clone()));
                    v
                }
                None => continue,
            };
            match verdict {
                Verdict::Same(s) => m.stmt = Some(s),
                Verdict::Fail(e) if m.frame.tag == front::BIND => m.fail = Some(e),
                Verdict::Fail(_) | Verdict::Skip => {}
            }
        }
        Ok(())
    }

    /// The backend must have answered everything and nothing of the client's batch may have
    /// been sent yet, so that the proxy's round trip, Sync included, changes nothing the client
    /// could see. Earlier batches the client pipelined (tokio-postgres sends its next request
    /// as soon as the previous one's error arrives, before its ReadyForQuery) are waited for
    /// here, their answers relayed as the main loop relays them: otherwise a statement refused
    /// once would run silently on its very next use, where Postgres refuses it every time.
    async fn ready_to_revalidate(&mut self) -> Result<bool, SessionError> {
        if self.backend.attached.is_none()
            || self.request.unsynced
            || self.backend.tracker.in_copy_in()
        {
            return Ok(false);
        }
        self.flush_server().await?;
        // Bounded: the main loop's timers (query timeout, watchdog, …) do not run while this
        // waits, so past the first of them it gives up (the statement is re-parsed silently,
        // as without the check) and the loop handles whatever is due.
        let stuck = self.ctx.config.load().pool.stuck_request_timeout;
        let mut give_up =
            tokio::time::Instant::now() + stuck.max(std::time::Duration::from_secs(1));
        if let Some((due, _)) = self.next_timeout() {
            give_up = give_up.min(due);
        }
        loop {
            self.on_server_data()?;
            if self.backend.lost_track.is_some() || self.backend.retry_requested.is_some() {
                return Ok(false);
            }
            self.run_invalidation().await;
            self.flush_server().await?;
            self.flush_client().await?;
            let Some(att) = self.backend.attached.as_mut() else {
                return Ok(false);
            };
            if self.backend.tracker.is_idle() {
                // What the earlier batches left: a failed transaction refuses the proxy's
                // Parse with its own error; answers held for a capture are not the client's yet.
                return Ok(att.server.txn_status != txn::FAILED && self.commit.held.is_none());
            }
            let srv = &mut *att.server;
            let read = super::relay::read_more(&mut srv.stream, &mut srv.rbuf);
            let why = match tokio::time::timeout_at(give_up, read).await {
                Err(_) => return Ok(false),
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => "end of stream".to_string(),
                Ok(Err(e)) => e.to_string(),
            };
            self.server_lost(why).await?;
            return Ok(false);
        }
    }

    /// One statement's round trip: Parse (with the parameter types the client was told) unless
    /// this backend has it from after the last schema change, Describe, Sync.
    async fn check(&mut self, stmt: &Arc<Statement>) -> Result<Verdict, SessionError> {
        let now = current_epoch();
        let told = stmt.shape.lock().clone();
        let cand = match &told.params {
            Some(params) if !stmt.has_param_types(params) => match stmt.with_param_types(params) {
                Some(s) => Arc::new(s),
                None => return Ok(Verdict::Skip),
            },
            _ => stmt.clone(),
        };
        let server = self.backend.server_mut()?;
        let mut out = BytesMut::with_capacity(cand.parse.len() + 64);
        if server.prepared.stale(&cand.global) {
            Target::encode(front::CLOSE, target::STATEMENT, &cand.global, &mut out);
            server.prepared.remove(&cand.global);
        }
        let parse = !server.prepared.contains(&cand.global);
        if parse {
            out.extend_from_slice(&cand.parse);
        }
        Target::encode(front::DESCRIBE, target::STATEMENT, &cand.global, &mut out);
        out.extend_from_slice(msg::SYNC);
        let answer = async {
            server.stream.write_all(&out).await?;
            let (mut parsed, mut rows, mut error) = (false, None, None);
            loop {
                let f = server.read_frame().await?;
                match f.tag {
                    back::PARSE_COMPLETE => parsed = true,
                    back::ROW_DESCRIPTION | back::NO_DATA => {
                        rows = Some(row_shape(f.tag, f.body()))
                    }
                    back::ERROR_RESPONSE if error.is_none() => error = Some(f.bytes.clone()),
                    back::PARAMETER_STATUS => {
                        if let Some((k, v)) = msg::decode_parameter_status(f.body()) {
                            server.set_param(k, v);
                        }
                    }
                    back::READY_FOR_QUERY => {
                        server.txn_status = f.body().first().copied().unwrap_or(txn::IDLE);
                        return Ok::<_, crate::backend::BackendError>((parsed, rows, error));
                    }
                    _ => {}
                }
            }
        };
        let (parsed, rows, error) = match answer.await {
            Ok(a) => a,
            Err(e) => {
                self.server_lost(e.to_string()).await?;
                return Ok(Verdict::Skip);
            }
        };
        let server = self.backend.server_mut()?;
        if parsed || !parse {
            server.prepared.touch(&cand.global);
        }
        if let Some(error) = error {
            tracing::debug!(statement = %cand.query, "a statement prepared before a schema change fails now");
            return Ok(Verdict::Fail(error));
        }
        if told.rows.is_some_and(|told| rows != Some(told)) {
            tracing::debug!(statement = %cand.query, "a statement prepared before a schema change has another result type now: 0A000");
            crate::metrics::stale_statement_refused();
            return Ok(Verdict::Fail(result_type_changed()));
        }
        cand.shape.lock().epoch = now;
        if !Arc::ptr_eq(&cand, stmt) {
            self.stmts.named.replace(stmt, &cand);
        }
        Ok(Verdict::Same(cand))
    }
}

/// Postgres' own ErrorResponse for a changed result type, routine field included: asyncpg
/// tells this error from any other 0A000 by its routine (`RevalidateCachedQuery`, not the
/// localizable message) and only then raises `InvalidCachedStatementError`, on which it and
/// SQLAlchemy clear their statement caches.
fn result_type_changed() -> Bytes {
    let mut b = BytesMut::with_capacity(128);
    b.extend_from_slice(&[back::ERROR_RESPONSE, 0, 0, 0, 0]);
    for (kind, value) in [
        (field::SEVERITY, "ERROR"),
        (field::SEVERITY_NONLOCALIZED, "ERROR"),
        (field::CODE, sqlstate::FEATURE_NOT_SUPPORTED),
        (field::MESSAGE, "cached plan must not change result type"),
        (field::FILE, "plancache.c"),
        (field::ROUTINE, "RevalidateCachedQuery"),
    ] {
        b.extend_from_slice(&[kind]);
        b.extend_from_slice(value.as_bytes());
        b.extend_from_slice(&[0]);
    }
    b.extend_from_slice(&[0]);
    let len = (b.len() - 1) as u32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_description(cols: &[(&str, u32, i32, u32)]) -> Vec<u8> {
        let mut b = (cols.len() as u16).to_be_bytes().to_vec();
        for (name, ty, typmod, table) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&table.to_be_bytes());
            b.extend_from_slice(&1u16.to_be_bytes());
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b.extend_from_slice(&typmod.to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
        }
        b
    }

    #[test]
    fn a_result_type_differs_by_column_name_type_or_modifier_not_by_source_table() {
        let base = row_shape(
            back::ROW_DESCRIPTION,
            &row_description(&[("id", 23, -1, 1), ("name", 1043, 34, 1)]),
        );
        let same_elsewhere = row_shape(
            back::ROW_DESCRIPTION,
            &row_description(&[("id", 23, -1, 9), ("name", 1043, 34, 9)]),
        );
        assert_eq!(base, same_elsewhere, "a table created again alike");
        for other in [
            row_description(&[("id", 23, -1, 1), ("name", 1043, 24, 1)]),
            row_description(&[("id", 23, -1, 1), ("nom", 1043, 34, 1)]),
            row_description(&[("id", 20, -1, 1), ("name", 1043, 34, 1)]),
            row_description(&[("id", 23, -1, 1)]),
        ] {
            assert_ne!(base, row_shape(back::ROW_DESCRIPTION, &other));
        }
        assert_ne!(
            row_shape(back::NO_DATA, &[]),
            row_shape(back::ROW_DESCRIPTION, &0u16.to_be_bytes())
        );
    }
}
